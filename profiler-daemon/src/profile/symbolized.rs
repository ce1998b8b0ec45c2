//! A profile whose stacks are named frames: what every exporter consumes. Each distinct location
//! of the window is held once, in the profile's table; a stack holds indices into it (4 bytes
//! per frame where a location is 40: a window of 100,000 stacks over processes that run the
//! same code held 69 MiB of locations, one per frame).

use std::borrow::Cow;
use std::sync::Arc;

use crate::objfile::Module;
use crate::procfs::ProcessInfo;
use crate::symbolize::{Frame, Resolved};

/// One stack entry: an address, where it points and its names.
#[derive(Debug, Clone)]
pub struct Location {
    /// The file it is in; `None` for kernel frames and user addresses outside file mappings.
    pub module: Option<Arc<Module>>,
    /// Offset in `module`'s file, else the raw address.
    pub address: u64,
    pub kernel: bool,
    /// The function, then the functions inlined into it (innermost last); empty when no name
    /// was found.
    pub frames: Resolved,
}

impl Location {
    /// What a person reads for this location: its frames, or for an unnamed address one label
    /// saying where it points. Unnamed addresses are grouped by the file they are in
    /// (`[liblzma.so.5]`, `[kernel]`, `[unknown]`), as perf's and inferno's tools show them: a
    /// library without symbols is then one box with its whole share, not fifty boxes of one
    /// address each. `keep_addresses` keeps them apart (`[unknown] liblzma.so.5+0x1a2b`).
    #[must_use]
    pub fn shown_frames(&self, keep_addresses: bool) -> Cow<'_, [Frame]> {
        if !self.frames.is_empty() {
            return Cow::Borrowed(&self.frames);
        }
        let label = match (&self.module, self.kernel, keep_addresses) {
            (_, true, false) => "[kernel]".to_owned(),
            (Some(m), false, false) => format!("[{}]", m.name),
            (None, false, false) => "[unknown]".to_owned(),
            (_, true, true) => format!("[unknown] [kernel]+0x{:x}", self.address),
            (Some(m), false, true) => format!("[unknown] {}+0x{:x}", m.name, self.address),
            (None, false, true) => format!("[unknown] 0x{:x}", self.address),
        };
        Cow::Owned(vec![Frame::named(&label, None, None)])
    }
}

/// One aggregated stack with names.
#[derive(Debug, Clone)]
pub struct Stack {
    pub process: Arc<ProcessInfo>,
    pub tid: u32,
    pub thread: Arc<str>,
    /// User locations (indices into the profile's `locations`), root first.
    pub user: Box<[u32]>,
    /// Kernel locations (indices into the profile's `locations`), root first.
    pub kernel: Box<[u32]>,
    pub count: u64,
}

/// Every stack of a window, named.
#[derive(Debug, Clone, Default)]
pub struct SymbolizedProfile {
    pub stacks: Vec<Stack>,
    /// The window's distinct locations, which stacks index.
    pub locations: Vec<Location>,
    /// Sampling frequency (Hz), for the period.
    pub frequency: u32,
    /// Window start, real time (nanoseconds since the Unix epoch).
    pub start_unix_nano: u64,
    /// Window length.
    pub duration_nano: u64,
}

impl SymbolizedProfile {
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    /// The user locations of `stack`, root first.
    #[must_use]
    pub fn user<'a>(
        &'a self,
        stack: &'a Stack,
    ) -> impl DoubleEndedIterator<Item = &'a Location> + 'a {
        self.locations_of(&stack.user)
    }

    /// The kernel locations of `stack`, root first.
    #[must_use]
    pub fn kernel<'a>(
        &'a self,
        stack: &'a Stack,
    ) -> impl DoubleEndedIterator<Item = &'a Location> + 'a {
        self.locations_of(&stack.kernel)
    }

    /// Every location of `stack`, leaf first: the kernel's, then the user's (the order of the
    /// pprof and OTLP formats).
    pub fn leaf_first<'a>(&'a self, stack: &'a Stack) -> impl Iterator<Item = &'a Location> + 'a {
        self.kernel(stack).rev().chain(self.user(stack).rev())
    }

    fn locations_of<'a>(
        &'a self,
        indices: &'a [u32],
    ) -> impl DoubleEndedIterator<Item = &'a Location> + 'a {
        // Indices come from the profile's own builder; one out of range is skipped, not a panic.
        indices
            .iter()
            .filter_map(|&i| self.locations.get(i as usize))
    }

    /// The stacks an output shows: all of them, or all but the idle task's (pid 0).
    pub fn shown(&self, include_idle: bool) -> impl Iterator<Item = &Stack> {
        self.stacks
            .iter()
            .filter(move |s| include_idle || s.process.pid != 0)
    }
}
