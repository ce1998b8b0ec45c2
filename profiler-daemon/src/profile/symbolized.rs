//! A profile whose stacks are named frames: what every exporter consumes.

use std::sync::Arc;

use crate::symbolize::Resolved;

/// One aggregated stack with names.
#[derive(Debug, Clone)]
pub struct Stack {
    pub pid: u32,
    pub tid: u32,
    /// The process's name (thread group leader's comm).
    pub process: Arc<str>,
    pub thread: Arc<str>,
    /// User frames, root first (each entry one address, possibly several inlined frames).
    pub user: Vec<Resolved>,
    /// Kernel frames, root first.
    pub kernel: Vec<Resolved>,
    pub count: u64,
}

/// Every stack of a window, named.
#[derive(Debug, Clone, Default)]
pub struct SymbolizedProfile {
    pub stacks: Vec<Stack>,
    /// Sampling frequency (Hz), for the period.
    pub frequency: u32,
}

impl SymbolizedProfile {
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }
}
