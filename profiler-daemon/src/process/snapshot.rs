//! A snapshot of a process's executable mappings, taken when the process is first seen or execs,
//! and refreshed on a miss while it lives. Normalizing an address against the snapshot (address →
//! module and file offset) keeps working after the process exits.

use std::sync::Arc;

use super::UserLoc;
use crate::objfile::Module;

/// What an executable mapping is backed by.
#[derive(Debug, Clone)]
pub(super) enum Backing {
    /// A file, opened and identified (kept open through the `Module`).
    File(Arc<Module>),
    /// Anonymous or special (`[vdso]`, JIT code, a file that could not be opened): named through
    /// the live process (perf map, vDSO) if at all.
    Other,
}

/// One executable mapping.
#[derive(Debug, Clone)]
pub(super) struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub backing: Backing,
}

/// The executable mappings of one process image, sorted by address.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    mappings: Vec<Mapping>,
}

impl Snapshot {
    #[cfg(test)]
    #[must_use]
    pub(super) fn new(mut mappings: Vec<Mapping>) -> Self {
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    /// Every mapping, by address.
    pub(super) fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The mapping that contains `addr`.
    #[must_use]
    pub(super) fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Where `addr` points by these mappings: a file and offset, an executable mapping without a
    /// file, or none.
    #[must_use]
    pub(super) fn locate(&self, addr: u64) -> UserLoc {
        match self.find(addr) {
            Some(Mapping {
                start,
                offset,
                backing: Backing::File(module),
                ..
            }) => UserLoc::File {
                module: module.id,
                offset: addr - start + offset,
            },
            Some(_) => UserLoc::Process { addr },
            None => UserLoc::Unmapped { addr },
        }
    }

    /// Adds mappings not yet known (by start address), e.g. libraries loaded after exec.
    pub(super) fn merge(&mut self, fresh: Vec<Mapping>) {
        for m in fresh {
            if !self
                .mappings
                .iter()
                .any(|old| old.start == m.start && old.end == m.end)
            {
                self.mappings.push(m);
            }
        }
        self.mappings.sort_by_key(|m| m.start);
    }

    /// Whether `[start, end)` is mapped from the file at `path` already.
    #[must_use]
    pub(super) fn same_file_at(&self, start: u64, end: u64, path: &str) -> bool {
        self.mappings.iter().any(|m| {
            m.start == start
                && m.end == end
                && matches!(&m.backing, Backing::File(module) if module.path.as_os_str() == path)
        })
    }

    /// Puts `new` in, dropping the mappings it overlaps (they were unmapped before it came).
    pub(super) fn replace(&mut self, new: Mapping) {
        self.mappings
            .retain(|m| !(m.start < new.end && new.start < m.end));
        self.mappings.push(new);
        self.mappings.sort_by_key(|m| m.start);
    }

    /// Whether a file mapping overlaps `[start, end)`.
    #[must_use]
    pub(super) fn has_file_in(&self, start: u64, end: u64) -> bool {
        self.mappings
            .iter()
            .any(|m| m.start < end && start < m.end && matches!(m.backing, Backing::File(_)))
    }

    #[cfg(test)]
    #[must_use]
    pub(super) fn len(&self) -> usize {
        self.mappings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_merges() {
        let m = |start, end| Mapping {
            start,
            end,
            offset: 0,
            backing: Backing::Other,
        };
        let mut snap = Snapshot::new(vec![m(0x3000, 0x4000), m(0x1000, 0x2000)]);
        assert_eq!(snap.find(0x1000).unwrap().start, 0x1000);
        assert_eq!(snap.find(0x1fff).unwrap().start, 0x1000);
        assert!(snap.find(0x2000).is_none());
        assert!(snap.find(0x0fff).is_none());
        assert_eq!(snap.find(0x3500).unwrap().start, 0x3000);
        snap.merge(vec![m(0x5000, 0x6000), m(0x1000, 0x2000)]);
        assert_eq!(snap.len(), 3);
        assert_eq!(snap.find(0x5001).unwrap().start, 0x5000);
        // Only file mappings count for unmaps, and the ranges are half-open.
        assert!(!snap.has_file_in(0x1000, 0x7000));
        let module = crate::objfile::Module::at_path(
            crate::objfile::ModuleId(1),
            std::path::PathBuf::from("/nonexistent"),
            None,
        );
        snap.merge(vec![Mapping {
            backing: Backing::File(Arc::new(module)),
            ..m(0x8000, 0x9000)
        }]);
        assert!(snap.has_file_in(0x8fff, 0x9000));
        assert!(snap.has_file_in(0x7000, 0x10000));
        assert!(!snap.has_file_in(0x9000, 0xa000));
        assert!(!snap.has_file_in(0x7000, 0x8000));
    }
}
