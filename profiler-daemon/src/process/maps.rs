//! A snapshot of a process's executable mappings (`/proc/PID/maps`), taken when the process is
//! first seen or execs, and refreshed on a miss while it lives. Normalizing an address against
//! the snapshot (address → module and file offset) keeps working after the process exits.

use std::sync::Arc;

use crate::symbolize::Module;

/// What an executable mapping is backed by.
#[derive(Debug, Clone)]
pub enum Backing {
    /// A file, opened and identified (kept open through the `Module`).
    File(Arc<Module>),
    /// Anonymous or special (`[vdso]`, JIT code, a file that could not be opened): named through
    /// the live process (perf map, vDSO) if at all.
    Other,
}

/// One executable mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub backing: Backing,
}

/// One parsed line of `/proc/PID/maps` for an executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub inode: u64,
    /// Path as the process sees it, or `[vdso]`, `[anon:...]`, empty for anonymous memory.
    pub path: String,
}

/// Parses the executable mappings of a `/proc/PID/maps` text; malformed lines are skipped.
#[must_use]
pub fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let inode = fields.next()?;
            let path = fields.next().unwrap_or("").trim_start();
            if perms.as_bytes().get(2) != Some(&b'x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(MapsLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                inode: inode.parse().ok()?,
                path: path.trim_end_matches(" (deleted)").to_owned(),
            })
        })
        .collect()
}

/// The executable mappings of one process image, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    mappings: Vec<Mapping>,
}

impl Snapshot {
    #[must_use]
    pub fn new(mut mappings: Vec<Mapping>) -> Self {
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    /// The mapping that contains `addr`.
    #[must_use]
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Adds mappings not yet known (by start address), e.g. libraries loaded after exec.
    pub fn merge(&mut self, fresh: Vec<Mapping>) {
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

    #[must_use]
    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/app
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 1234                       /usr/bin/app
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
7f1000000000-7f1000100000 r-xp 00028000 fe:01 99                         /usr/lib/libc.so.6 (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn keeps_executable_mappings_only() {
        let lines = parse_maps(MAPS);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].path, "/usr/bin/app");
        assert_eq!(lines[0].offset, 0x1000);
        assert_eq!(lines[0].inode, 1234);
        assert_eq!(lines[1].path, "");
        assert_eq!(lines[2].path, "/usr/lib/libc.so.6");
        assert_eq!(lines[3].path, "[vdso]");
    }

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
    }
}
