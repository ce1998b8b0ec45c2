//! The named frame: what symbolization produces and the exporters consume.

use std::sync::Arc;

/// One frame of a stack after symbolization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Function name (demangled).
    pub name: Arc<str>,
    /// Source file, when debug info has it.
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// The frames one address stands for: the containing function first, then the functions inlined
/// into it, innermost last. Shared (cached) between all stacks that contain the address.
pub type Resolved = Arc<[Frame]>;

impl Frame {
    #[must_use]
    pub fn named(name: &str, file: Option<std::borrow::Cow<'_, str>>, line: Option<u32>) -> Self {
        Self {
            name: Arc::from(name),
            file: file.map(|f| Arc::from(f.as_ref())),
            line,
        }
    }
}

/// No name found: an empty list. Exporters decide how an unnamed address shows (a readable label
/// in local files, a bare address and mapping in OTLP, so that a backend can still name it).
#[must_use]
pub fn unnamed() -> Resolved {
    Arc::from([])
}
