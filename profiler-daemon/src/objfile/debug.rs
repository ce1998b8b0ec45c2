//! Split debug files found by build id (`DIR/.build-id/ab/cdef....debug`). blazesym looks there
//! only while following a debug link, so binaries without one are handled here.

use std::path::{Path, PathBuf};

/// A debug-only ELF file for a module, indexed by the module's virtual addresses.
#[derive(Debug, Clone)]
pub struct DebugFile {
    pub path: PathBuf,
}

/// Looks for `DIR/.build-id/ab/cdef....debug` in `dirs`.
#[must_use]
pub(super) fn find(dirs: &[PathBuf], build_id: &str) -> Option<DebugFile> {
    if build_id.len() < 4 {
        return None;
    }
    let (head, tail) = build_id.split_at(2);
    dirs.iter()
        .map(|d| d.join(".build-id").join(head).join(format!("{tail}.debug")))
        .find(|p| p.is_file())
        .map(|path| DebugFile { path })
}

/// The `PT_LOAD` segments of the ELF file at `path` that carry file data: (file offset, file
/// size, virtual address). Empty for a file that is not ELF or cannot be read.
#[must_use]
pub(super) fn load_segments(path: &Path) -> Vec<(u64, u64, u64)> {
    use object::{Object as _, ObjectSegment as _};
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Vec::new();
    };
    elf.segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .filter(|&(_, size, _)| size > 0)
        .collect()
}
