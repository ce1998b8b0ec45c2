//! Loader side of the table walker (`--unwind tables`, `profiler-ebpf/src/unwind.rs`): loads
//! the `sample_unwind` program (frame pointers when the kernel refuses it), sizes the rows array
//! by `--unwind-table-memory` and the per-process map, and hands the two maps to whoever fills
//! them (`pipeline::tables`).

use aya::EbpfLoader;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use profiler_common::{UnwindProcess, UnwindRow};

use super::{BpfError, Design};
use crate::config::{Limits, UnwindMode};

/// Processes with tables at most (`UNWIND_PROCS`, allocated on use: 5 KiB each).
pub const MAX_PROCESSES: u32 = 8192;

/// What the walker needs from the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnwindConfig {
    pub mode: UnwindMode,
    /// Bytes of the rows array (`--unwind-table-memory`).
    pub table_bytes: u64,
}

impl UnwindConfig {
    /// `--unwind` and `--unwind-table-memory`.
    #[must_use]
    pub fn of(limits: &Limits) -> Self {
        Self {
            mode: limits.unwind,
            table_bytes: limits.unwind_table_bytes,
        }
    }

    /// Rows the array holds: the kernel stores each in 16 bytes (a value size rounded up to 8),
    /// so that is what `--unwind-table-memory` is divided by.
    #[must_use]
    pub fn rows(&self) -> u32 {
        let rows = self.table_bytes / ROW_STRIDE as u64;
        u32::try_from(rows).unwrap_or(u32::MAX).max(1)
    }

    fn tables(&self) -> bool {
        self.mode != UnwindMode::Fp
    }
}

/// The sampler program with the table walker (the frame-pointer one is `Design::program`).
pub const PROGRAM: &str = "sample_unwind";

/// Sets the walker's map sizes on `loader` (tiny maps when the walker is off).
pub(super) fn configure(loader: &mut EbpfLoader<'_>, config: &UnwindConfig) {
    if config.tables() {
        loader
            .map_max_entries("UNWIND_ROWS", config.rows())
            .map_max_entries("UNWIND_PROCS", MAX_PROCESSES);
    } else {
        // The row cache (96 KiB per CPU with tables) shrinks to one slot too.
        loader
            .map_max_entries("UNWIND_ROWS", 1)
            .map_max_entries("UNWIND_PROCS", 1)
            .map_max_entries("UNWIND_CACHE", 1);
    }
    tracing::debug!(
        tables = config.tables(),
        rows = config.rows(),
        "unwind tables configured"
    );
}

/// Loads the sampler program: the table walker's when asked for and the kernel takes it (it
/// needs `bpf_loop`, Linux 5.17, and `bpf_task_pt_regs`, 5.15), else the design's. Returns the
/// program's name and the walker in force.
pub(super) fn load_sampler(
    ebpf: &mut aya::Ebpf,
    design: Design,
    config: &UnwindConfig,
) -> Result<(&'static str, UnwindConfig), BpfError> {
    if config.tables() && design == Design::RingBuf {
        match super::load_program(ebpf, PROGRAM) {
            Ok(_) => return Ok((PROGRAM, *config)),
            Err(err) => {
                refused(config.mode, &err);
            }
        }
    }
    super::load_program(ebpf, design.program())?;
    let fp = UnwindConfig {
        mode: UnwindMode::Fp,
        ..*config
    };
    Ok((design.program(), fp))
}

/// Says once that the walker is out: a warning when `--unwind tables` asked for it, a notice
/// under `auto` (frame pointers are what `auto` means on such a kernel).
pub(super) fn refused(mode: UnwindMode, err: &dyn std::fmt::Display) {
    const WHY: &str = "stacks are walked by frame pointers; `profiler check` lists the kernel's \
                       features";
    if mode == UnwindMode::Tables {
        tracing::warn!("this kernel refused the unwind-table walker: {WHY}");
    } else {
        tracing::info!("this kernel cannot run the unwind-table walker: {WHY}");
    }
    tracing::debug!("the walker's refusal: {err}");
}

/// Takes the walker's maps out of the loaded object (`None` when the walker is off).
pub(super) fn take_maps(
    ebpf: &mut aya::Ebpf,
    config: &UnwindConfig,
) -> Result<Option<UnwindMaps>, BpfError> {
    if !config.tables() {
        return Ok(None);
    }
    let map = super::take_map(ebpf, "UNWIND_ROWS")?;
    let mapped = match &map {
        aya::maps::Map::Array(data) => RowsMapping::new(data, config.rows()),
        _ => None,
    };
    let rows = Array::try_from(map).map_err(|source| BpfError::Map {
        name: "UNWIND_ROWS",
        source,
    })?;
    let procs = BpfHashMap::try_from(super::take_map(ebpf, "UNWIND_PROCS")?).map_err(|source| {
        BpfError::Map {
            name: "UNWIND_PROCS",
            source,
        }
    })?;
    Ok(Some(UnwindMaps {
        rows,
        mapped,
        procs,
        capacity: config.rows(),
    }))
}

/// The rows array, written through memory mappings (`BPF_F_MMAPABLE`): a table of 30,000 rows
/// is written with stores, where writing it row by row cost 30,000 `bpf()` calls (most of the
/// daemon's CPU time with tables). Only the pages a table covers are mapped, and only while it
/// is written: a mapping of the array populates every page, which would show the whole array
/// (`--unwind-table-memory`) in the daemon's RSS.
struct RowsMapping {
    fd: std::os::fd::OwnedFd,
    /// Rows the array holds.
    rows: u32,
}

/// Bytes between rows in the mapped array: the kernel rounds an array's value size up to 8.
const ROW_STRIDE: usize = size_of::<UnwindRow>().next_multiple_of(8);

impl RowsMapping {
    /// `None` (writes go through `bpf()`) if the map's fd cannot be kept.
    fn new(data: &MapData, rows: u32) -> Option<Self> {
        use std::os::fd::AsFd as _;
        let fd = data.fd().as_fd().try_clone_to_owned().ok()?;
        Some(Self { fd, rows })
    }

    /// Writes `rows` from row `first`; false when they do not fit or cannot be mapped.
    fn write(&mut self, first: u32, rows: &[UnwindRow]) -> bool {
        use std::os::fd::AsRawFd as _;
        let Some(end) = (first as usize).checked_add(rows.len()) else {
            return false;
        };
        if end > self.rows as usize || rows.is_empty() {
            return false;
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let start = first as usize * ROW_STRIDE;
        let map_start = start - start % page;
        let len = end * ROW_STRIDE - map_start;
        let Ok(offset) = libc::off_t::try_from(map_start) else {
            return false;
        };
        // SAFETY: a shared mapping of the map's fd within the array (checked above); the result
        // is checked before use and unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            tracing::debug!(
                "cannot map the unwind rows ({}): writing them one by one",
                std::io::Error::last_os_error()
            );
            return false;
        }
        let base = ptr.cast::<u8>();
        for (i, row) in rows.iter().enumerate() {
            // SAFETY: within the mapping (its length covers the last row); aligned in fact
            // (page-aligned base, 16-byte stride), written unaligned all the same. The walker may read a row while it is
            // written: the process entries that point at it are written afterwards.
            unsafe {
                base.add(start - map_start + i * ROW_STRIDE)
                    .cast::<UnwindRow>()
                    .write_unaligned(*row);
            }
        }
        // SAFETY: unmaps exactly what was mapped above.
        unsafe { libc::munmap(ptr, len) };
        true
    }
}

/// The walker's maps, filled by the daemon.
pub struct UnwindMaps {
    rows: Array<MapData, UnwindRow>,
    mapped: Option<RowsMapping>,
    procs: BpfHashMap<MapData, u32, UnwindProcess>,
    capacity: u32,
}

impl UnwindMaps {
    /// Rows the array holds.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Writes `rows` at `first..first + rows.len()`.
    pub fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), MapError> {
        if let Some(mapped) = &mut self.mapped
            && mapped.write(first, rows)
        {
            return Ok(());
        }
        for (index, row) in (first..).zip(rows) {
            self.rows.set(index, row, 0)?;
        }
        Ok(())
    }

    /// Sets the mappings with tables of process `tgid`.
    pub fn set_process(&mut self, tgid: u32, value: &UnwindProcess) -> Result<(), MapError> {
        self.procs.insert(tgid, value, 0)
    }

    /// Forgets process `tgid` (its samples fall back to frame pointers).
    pub fn remove_process(&mut self, tgid: u32) {
        // Absent already is fine.
        if let Err(err) = self.procs.remove(&tgid) {
            tracing::trace!(tgid, "no unwind entry to remove: {err}");
        }
    }
}
