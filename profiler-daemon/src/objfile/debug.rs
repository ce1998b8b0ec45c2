//! Split debug files found by build id (`DIR/.build-id/ab/cdef....debug`). blazesym looks there
//! only while following a debug link, so binaries without one are handled here.

use std::path::{Path, PathBuf};

/// A debug-only ELF file for a module, indexed by the module's virtual addresses.
#[derive(Debug, Clone)]
pub struct DebugFile {
    pub path: PathBuf,
    /// Its DWARF's size (see `Layout::dwarf_bytes`).
    pub dwarf_bytes: u64,
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
        .map(|path| DebugFile {
            dwarf_bytes: layout(&path).dwarf_bytes,
            path,
        })
}

/// What the daemon needs of an ELF file's headers, read in one parse.
#[derive(Debug, Default)]
pub(super) struct Layout {
    /// The `PT_LOAD` segments that carry file data: (file offset, file size, virtual address).
    pub segments: Vec<(u64, u64, u64)>,
    /// Uncompressed bytes of `.debug_info` and `.debug_line`, what blazesym's parse of the
    /// file's DWARF grows with (units, line rows, inlined functions; measured at about 1.2 times
    /// this), and of every other compressed debug section (inflated into memory when read): what
    /// the symbolizer's DWARF budget is counted in.
    pub dwarf_bytes: u64,
}

/// The layout of the ELF file at `path`; empty for a file that is not ELF or cannot be read.
#[must_use]
pub(super) fn layout(path: &Path) -> Layout {
    use object::{Object as _, ObjectSection as _, ObjectSegment as _};
    let Ok(file) = std::fs::File::open(path) else {
        return Layout::default();
    };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Layout::default();
    };
    let segments = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .filter(|&(_, size, _)| size > 0)
        .collect();
    let dwarf_bytes = elf
        .sections()
        .filter_map(|s| {
            let name = s.name().ok()?;
            let range = s.compressed_file_range().ok()?;
            let parsed = matches!(name, ".debug_info" | ".debug_line");
            // A compressed section is inflated into the heap whole when blazesym reads it.
            let inflated =
                name.starts_with(".debug_") && range.format != object::CompressionFormat::None;
            (parsed || inflated).then_some(range.uncompressed_size)
        })
        .sum();
    Layout {
        segments,
        dwarf_bytes,
    }
}
