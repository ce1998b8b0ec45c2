//! The named frame: what symbolization produces and the exporters consume.

use std::sync::Arc;

/// One frame of a stack after symbolization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Function name (demangled), or `[unknown] module+0xoffset`.
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

    fn bare(name: String) -> Resolved {
        Arc::from([Self {
            name: Arc::from(name),
            file: None,
            line: None,
        }])
    }
}

/// An address in a known file that has no symbol covering it.
#[must_use]
pub(super) fn unknown_in_module(module: &str, offset: u64) -> Resolved {
    Frame::bare(format!("[unknown] {module}+0x{offset:x}"))
}

/// A user address outside any file mapping.
#[must_use]
pub(super) fn unknown_addr(addr: u64) -> Resolved {
    Frame::bare(format!("[unknown] 0x{addr:x}"))
}

/// A kernel address kallsyms does not cover.
#[must_use]
pub(super) fn unknown_kernel(addr: u64) -> Resolved {
    Frame::bare(format!("[unknown] [kernel]+0x{addr:x}"))
}
