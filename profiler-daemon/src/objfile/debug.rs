//! Split debug files found by build id (`DIR/.build-id/ab/cdef....debug`). blazesym looks there
//! only while following a debug link, so binaries without one are handled here.

use std::fs::File;
use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSegment as _};

/// A debug-only ELF file for a module (its own segments carry no file data).
#[derive(Debug, Clone)]
pub struct DebugFile {
    pub path: PathBuf,
    /// The binary's `PT_LOAD` segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
}

impl DebugFile {
    /// The virtual address (as the debug file indexes it) of a file offset of the binary.
    #[must_use]
    pub fn virtual_address(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(start, size, _)| offset >= start && offset < start + size)
            .map(|&(start, _, vaddr)| vaddr + (offset - start))
    }
}

/// Looks for `DIR/.build-id/ab/cdef....debug` in `dirs` and reads the loadable segments of the
/// binary at `binary`.
#[must_use]
pub(super) fn find(dirs: &[PathBuf], build_id: &str, binary: &Path) -> Option<DebugFile> {
    if build_id.len() < 4 {
        return None;
    }
    let (head, tail) = build_id.split_at(2);
    let path = dirs
        .iter()
        .map(|d| d.join(".build-id").join(head).join(format!("{tail}.debug")))
        .find(|p| p.is_file())?;
    let file = File::open(binary).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .filter(|&(_, size, _)| size > 0)
        .collect();
    (!segments.is_empty()).then_some(DebugFile { path, segments })
}
