//! Unwind tables: for one ELF file, the rows (`profiler_common::UnwindRow`) the eBPF walker
//! binary-searches to unwind a user stack without frame pointers, built from the file's call
//! frame information (`.eh_frame`, and `.debug_frame` where the file has one).
//!
//! A stage of its own, keyed later by `objfile::ModuleId`: it reads a file by path and imports
//! no other daemon module. Bad input never costs more than a bounded amount of time and memory:
//! rows are capped (`Limits::max_rows`), sections too (`Limits::max_section_bytes`), and so is the
//! work spent on call frame programs; a damaged entry drops that function (counted in `stats`),
//! the rest of the table stands.
//!
//! - `elf`: the sections and addresses the builder needs, read from the file;
//! - `builder`: every FDE's rows, merged into one sorted table with markers at the gaps;
//! - `rules`: one DWARF row → one `UnwindRow` (which rules the walker can apply).

mod builder;
mod elf;
mod rules;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use profiler_common::UnwindRow;

/// Default for `Limits::max_rows`: the most the walker's fixed-step search supports.
pub const MAX_ROWS: usize = profiler_common::UNWIND_MAX_ROWS as usize;
/// Default for `Limits::max_section_bytes`. Real `.eh_frame` sections are a few MiB at most
/// (python3.11: 400 KiB); a header claiming more is damaged or hostile.
pub const MAX_SECTION_BYTES: u64 = 256 << 20;

/// Bounds on what one file may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most rows in a table (a file needing more is rejected with `UnwindError::TooManyRows`).
    pub max_rows: usize,
    /// Largest `.eh_frame` or `.debug_frame` read.
    pub max_section_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: MAX_ROWS,
            max_section_bytes: MAX_SECTION_BYTES,
        }
    }
}

/// The unwind table of one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnwindTable {
    /// Virtual address that row pcs are offsets from: the lowest executable `PT_LOAD` address.
    pub base: u64,
    /// Sorted by `pc`; see `UnwindRow` for the invariants.
    pub rows: Vec<UnwindRow>,
    pub stats: UnwindStats,
}

/// What building one table found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Rows in the table (markers included, duplicates merged).
    pub rows: usize,
    /// FDEs whose rows are in the table.
    pub fdes: usize,
    /// FDEs taken from `.debug_frame` (the rest are `.eh_frame`'s).
    pub debug_frame_fdes: usize,
    /// `CFA_INVALID` markers placed at function ends followed by a gap.
    pub gap_markers: usize,
    /// Rows marking the outermost frame (`CFA_END`).
    pub end_rows: usize,
    /// DWARF rows the walker cannot apply, by reason (before merging duplicates).
    pub invalid: InvalidRows,
    /// Rows whose caller's rbp cannot be recovered (`RBP_UNSUPPORTED`).
    pub rbp_unsupported: usize,
    /// FDEs left out, by reason.
    pub skipped: SkippedFdes,
    /// A section whose entries could not be walked to the end (a damaged length or CIE):
    /// the entries after the damage are missing.
    pub section_errors: usize,
    /// The work budget ran out: the entries after that point are missing.
    pub work_exhausted: bool,
    /// A compressed `.debug_frame` was left out (not supported).
    pub compressed_debug_frame: bool,
}

/// DWARF rows turned into `CFA_INVALID`, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvalidRows {
    /// The CFA is based on a register other than rsp or rbp (ld.so's `_dl_runtime_resolve`
    /// uses rbx, realigning prologues r10).
    pub cfa_register: usize,
    /// A CFA expression other than the PLT and `*(reg+a)+b` forms.
    pub cfa_expression: usize,
    /// An offset too large for the row's fields.
    pub offset_range: usize,
    /// A return address not at CFA-8 (nor undefined, nor the signal frame's).
    pub return_address: usize,
    /// A signal frame FDE whose rules are not the `sigcontext` shape.
    pub signal_frame: usize,
}

impl InvalidRows {
    /// All invalid rows.
    #[must_use]
    pub fn total(&self) -> usize {
        self.cfa_register
            + self.cfa_expression
            + self.offset_range
            + self.return_address
            + self.signal_frame
    }
}

/// FDEs left out of a table, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkippedFdes {
    /// The FDE, its CIE or its call frame program could not be parsed.
    pub parse: usize,
    /// It covers no address.
    pub empty: usize,
    /// Its range is outside the 4 GiB above the table's base.
    pub out_of_range: usize,
    /// It overlaps an FDE already taken (`.eh_frame` wins over `.debug_frame`).
    pub overlap: usize,
}

impl SkippedFdes {
    /// All skipped FDEs.
    #[must_use]
    pub fn total(&self) -> usize {
        self.parse + self.empty + self.out_of_range + self.overlap
    }
}

/// Why no table could be built for a file.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable ELF file: {source}")]
    Elf {
        path: PathBuf,
        source: object::Error,
    },
    #[error("unsupported architecture {0} (only x86-64 is unwound)")]
    Architecture(String),
    #[error("unsupported ELF kind {0} (only executables and shared objects are unwound)")]
    Kind(String),
    #[error("no executable segment")]
    NoExecutableSegment,
    #[error("no call frame information (.eh_frame or .debug_frame)")]
    NoUnwindInfo,
    #[error("section {section} is {size} bytes, over the limit of {limit}")]
    SectionTooLarge {
        section: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("section {section} cannot be read: {source}")]
    Section {
        section: &'static str,
        source: object::Error,
    },
    #[error("more than {limit} unwind rows")]
    TooManyRows { limit: usize },
    #[error("the call frame information cannot be parsed: {0}")]
    Cfi(gimli::Error),
}

impl UnwindTable {
    /// The row for the virtual address `vaddr` (the file's own address space): the last row
    /// starting at or below it. `None` below the first row or beyond the 4 GiB the rows can
    /// address. The row may be `CFA_INVALID` (a gap, or a rule the walker cannot apply).
    #[must_use]
    pub fn lookup(&self, vaddr: u64) -> Option<&UnwindRow> {
        let offset = u32::try_from(vaddr.checked_sub(self.base)?).ok()?;
        self.lookup_offset(offset)
    }

    /// The row for `pc`, an offset from `base`, by the search the BPF walker runs (see
    /// `UnwindRow`): `UNWIND_SEARCH_STEPS` halvings of the window `[base, base + n)` that holds
    /// the answer, each the same steps whatever the comparison says.
    #[must_use]
    pub fn lookup_offset(&self, pc: u32) -> Option<&UnwindRow> {
        let (mut base, mut n) = (0_usize, self.rows.len());
        if n == 0 {
            return None;
        }
        for _ in 0..profiler_common::UNWIND_SEARCH_STEPS {
            let half = n / 2;
            if self.rows.get(base + half)?.pc <= pc {
                base += half;
            }
            n -= half;
        }
        self.rows.get(base).filter(|row| row.pc <= pc)
    }

    /// Bytes the rows take in a BPF map.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.rows.len() * size_of::<UnwindRow>()
    }
}

/// Builds the unwind table of the ELF file at `path`, within the default `Limits`.
pub fn build(path: &Path) -> Result<UnwindTable, UnwindError> {
    build_with(path, &Limits::default())
}

/// Builds the unwind table of the ELF file at `path` within `limits`. The file is read through
/// a cache of the ranges parsed (headers, the frame sections), never whole.
pub fn build_with(path: &Path, limits: &Limits) -> Result<UnwindTable, UnwindError> {
    let file = std::fs::File::open(path).map_err(|source| UnwindError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cache = object::ReadCache::new(file);
    let object = object::File::parse(&cache).map_err(|source| UnwindError::Elf {
        path: path.to_path_buf(),
        source,
    })?;
    let input = elf::cfi_input(&object, limits)?;
    builder::build(&input, limits)
}
