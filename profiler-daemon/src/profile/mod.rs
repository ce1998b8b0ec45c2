//! The in-memory profile model: sample counts per (process, thread, stack), bounded by the number
//! of distinct stacks. Stacks hold addresses; `symbolized` turns them into named frames.

mod symbolized;
mod table;

pub use symbolized::{Location, Stack, SymbolizedProfile};
pub use table::LocationTable;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Identity of one aggregated stack. Addresses are leaf first; return addresses (every frame but
/// the leaf) are already moved back one byte into the call instruction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackKey {
    /// The process image (a pid between exec/first sight and exec/exit).
    pub image: crate::process::ImageId,
    /// The process (tgid): labels the stack even if its image is unknown.
    pub pid: u32,
    pub tid: u32,
    pub kernel: Box<[u64]>,
    pub user: Box<[u64]>,
    /// The user stack's outermost frames are missing (`FLAG_USER_TRUNCATED`).
    pub truncated: bool,
}

/// Samples of one profiling window.
#[derive(Debug)]
pub struct Profile {
    counts: HashMap<StackKey, u64>,
    thread_names: HashMap<u32, String>,
    max_stacks: usize,
    samples: u64,
}

impl Profile {
    #[must_use]
    pub fn new(max_stacks: usize) -> Self {
        Self {
            counts: HashMap::new(),
            thread_names: HashMap::new(),
            max_stacks,
            samples: 0,
        }
    }

    /// Adds one sample; returns false (the caller counts the loss) when the stack table is full.
    pub fn add(&mut self, key: StackKey, thread_name: &str) -> bool {
        let len = self.counts.len();
        match self.counts.entry(key) {
            Entry::Occupied(mut e) => *e.get_mut() += 1,
            Entry::Vacant(e) => {
                if len >= self.max_stacks {
                    return false;
                }
                self.thread_names
                    .entry(e.key().tid)
                    .or_insert_with(|| thread_name.to_owned());
                e.insert(1);
            }
        }
        self.samples += 1;
        true
    }

    /// The bound on distinct stacks.
    #[must_use]
    pub fn max_stacks(&self) -> usize {
        self.max_stacks
    }

    /// Whether the window should close now to lose nothing: seven eighths of `max_stacks`
    /// held, the rest left for the samples of the drain under way.
    #[must_use]
    pub fn nearly_full(&self) -> bool {
        self.counts.len() >= self.max_stacks - self.max_stacks / 8
    }

    /// Samples held.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Distinct stacks held.
    #[must_use]
    pub fn stacks(&self) -> usize {
        self.counts.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StackKey, u64)> {
        self.counts.iter().map(|(k, &v)| (k, v))
    }

    #[must_use]
    pub fn thread_name(&self, tid: u32) -> &str {
        self.thread_names.get(&tid).map_or("", String::as_str)
    }
}

/// Moves return addresses (all but the leaf) back into their call instruction, so that the
/// caller's line and, after a `noreturn` call, the right function are named.
#[must_use]
pub fn call_sites(frames: &[u64]) -> Box<[u64]> {
    frames
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// Builders of symbolized profiles for the exporters' unit tests.
#[cfg(test)]
pub mod test_support {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::{Location, Stack, SymbolizedProfile};
    use crate::objfile::{Module, ModuleId};
    use crate::procfs::ProcessInfo;
    use crate::symbolize::Frame;

    /// A stack with its locations, before `profile` puts them in its table.
    pub struct TestStack {
        pub stack: Stack,
        /// Root first.
        pub user: Vec<Location>,
        /// Root first.
        pub kernel: Vec<Location>,
    }

    /// A stack of process `pid` ("app", or "swapper" for 0) whose user and kernel entries are
    /// given root first, each as its function then inlined functions.
    #[must_use]
    pub fn stack(
        pid: u32,
        tid: u32,
        user: &[&[&str]],
        kernel: &[&[&str]],
        count: u64,
    ) -> TestStack {
        let module = Arc::new(Module::at_path(
            ModuleId(1),
            PathBuf::from("/usr/bin/app"),
            Some(Arc::from("abcd")),
        ));
        let loc = |names: &&[&str], i: usize, kernel: bool| Location {
            module: (!kernel).then(|| Arc::clone(&module)),
            address: 0x1000 + i as u64,
            kernel,
            frames: names
                .iter()
                .map(|n| Frame::named(n, Some("app.c".into()), Some(10)))
                .collect::<Vec<_>>()
                .into(),
        };
        let name: Arc<str> = Arc::from(if pid == 0 { "swapper" } else { "app" });
        let stack = Stack {
            process: Arc::new(ProcessInfo {
                pid,
                name: Arc::clone(&name),
                exe_path: (pid != 0).then(|| Arc::from("/usr/bin/app")),
                exe_name: name,
                container_id: None,
                cgroup: None,
                pod_uid: None,
                service: None,
                unit: None,
                kernel_thread: pid == 0,
            }),
            tid,
            thread: Arc::from(format!("t{tid}")),
            user: Box::new([]),
            kernel: Box::new([]),
            count,
        };
        TestStack {
            stack,
            user: user
                .iter()
                .enumerate()
                .map(|(i, n)| loc(n, i, false))
                .collect(),
            kernel: kernel
                .iter()
                .enumerate()
                .map(|(i, n)| loc(n, i, true))
                .collect(),
        }
    }

    /// The profile of `stacks`, alike locations (side, address, frames) one table entry as the
    /// collector makes them.
    #[must_use]
    pub fn profile(stacks: Vec<TestStack>) -> SymbolizedProfile {
        let mut table = super::LocationTable::default();
        let mut add = |locs: Vec<Location>| -> Box<[u32]> {
            locs.into_iter()
                .map(|l| {
                    let key = (l.kernel, l.address, l.frames.to_vec());
                    table.index(key, || l)
                })
                .collect()
        };
        let stacks = stacks
            .into_iter()
            .map(|t| Stack {
                user: add(t.user),
                kernel: add(t.kernel),
                ..t.stack
            })
            .collect();
        SymbolizedProfile {
            stacks,
            locations: table.into_locations(),
            frequency: 99,
            start_unix_nano: 1_700_000_000_000_000_000,
            duration_nano: 10_000_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tid: u32, user: &[u64]) -> StackKey {
        StackKey {
            image: crate::process::ImageId(1),
            pid: 1,
            tid,
            kernel: Box::new([]),
            user: user.into(),
            truncated: false,
        }
    }

    #[test]
    fn aggregates_and_bounds() {
        let mut p = Profile::new(2);
        assert!(p.add(key(1, &[1, 2]), "a"));
        assert!(p.add(key(1, &[1, 2]), "a"));
        assert!(p.add(key(2, &[1, 2]), "b"));
        assert!(!p.add(key(3, &[1, 2]), "c"));
        assert!(
            p.add(key(2, &[1, 2]), "b"),
            "existing stacks still count when full"
        );
        assert_eq!(p.samples(), 4);
        assert_eq!(p.stacks(), 2);
        assert_eq!(p.thread_name(2), "b");
    }

    #[test]
    fn call_sites_adjusts_all_but_leaf() {
        assert_eq!(&*call_sites(&[10, 20, 30]), &[10, 19, 29]);
    }
}
