//! Measurement-only subcommands (`bench` feature), for `cargo xtask bench`; the shipped binary
//! leaves them out:
//! - `profiler bpf-cost`: BPF time per sample of one sampler design, measured by the kernel
//!   (`kernel.bpf_stats_enabled`);
//! - `profiler bench-symbolize`: symbolization throughput on one binary, cold (first lookups:
//!   files parsed, caches empty) and warm (the same addresses again, from the caches).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use blazesym::inspect::Inspector;
use blazesym::inspect::source::{Elf, Source};
use clap::Args;

use crate::bpf::unwind::UnwindConfig;
use crate::bpf::{BpfError, Design, RawSample};
use crate::config::args::parse_duration;
use crate::config::{DEFAULT_UNWIND_TABLE_BYTES, Limits, SamplerConfig, UnwindMode};
use crate::counters::Count;
use crate::objfile::ModuleRegistry;
use crate::pipeline::{Collector, Driver, Sink};
use crate::symbolize::SymbolizerStage;

/// Options of the hidden `profiler bpf-cost`.
#[derive(Debug, Args)]
pub struct BpfCostArgs {
    /// Which sampler program to measure.
    #[arg(long, value_enum, default_value_t = Design::RingBuf)]
    pub design: Design,
    /// How long to sample.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Samples per second on each CPU.
    #[arg(long, default_value_t = 999)]
    pub frequency: u32,
    /// User stack walker (`tables`: every process's tables are loaded as `record` does).
    #[arg(long, value_enum, default_value_t = UnwindMode::Fp)]
    pub unwind: UnwindMode,
    /// Only sample these processes (the cost per emitted sample is then theirs).
    #[arg(long)]
    pub pid: Vec<u32>,
}

/// Options of the hidden `profiler bench-symbolize`.
#[derive(Debug, Args)]
pub struct BenchSymbolizeArgs {
    /// The ELF file to look addresses up in.
    #[arg(long)]
    pub binary: PathBuf,
    /// How many distinct addresses (spread over its functions).
    #[arg(long, default_value_t = 20_000)]
    pub addresses: usize,
}

/// Drops what is drained: the cost measured is the kernel's.
struct Discard;

impl Sink for Discard {
    fn take(&mut self, _batch: Vec<Option<RawSample>>) {}
}

#[derive(Debug, thiserror::Error)]
pub enum BpfCostError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("enabling BPF run-time statistics failed: {0}")]
    Stats(String),
    #[error("the kernel reported no statistics for the program")]
    NoStats,
}

/// Measured cost.
#[derive(Debug, Clone, Copy)]
pub struct BpfCost {
    pub runs: u64,
    pub run_time: Duration,
    pub emitted: u64,
}

impl BpfCost {
    #[must_use]
    pub fn ns_per_emitted(&self) -> f64 {
        self.run_time.as_nanos() as f64 / self.emitted.max(1) as f64
    }

    #[must_use]
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_time.as_nanos() as f64 / self.runs as f64
        }
    }
}

/// Samples for `duration` with `design` and reports the kernel's accounting of its BPF time.
pub fn measure(
    design: Design,
    frequency: u32,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<BpfCost, BpfCostError> {
    measure_unwinding(design, UnwindMode::Fp, &[], frequency, duration, stop)
}

/// `measure` with the user stack walker `unwind`. With tables, the samples feed a collector (it
/// loads the tables); otherwise they are dropped.
pub fn measure_unwinding(
    design: Design,
    unwind: UnwindMode,
    pids: &[u32],
    frequency: u32,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<BpfCost, BpfCostError> {
    // Statistics are collected while this fd is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| BpfCostError::Stats(e.to_string()))?;
    let config = SamplerConfig {
        frequency,
        pids: pids.to_vec(),
        cgroups: Vec::new(),
        cgroup_targets: crate::procfs::CgroupTargets::default(),
        include_idle: false,
        ring_buffer_bytes: None,
        profile_self: false,
    };
    let unwind = UnwindConfig {
        mode: unwind,
        table_bytes: DEFAULT_UNWIND_TABLE_BYTES,
    };
    let mut driver = Driver::start_unwinding(&config, design, &unwind, stop)?;
    let end = Instant::now() + duration;
    if let Some(maps) = driver.take_unwind_maps() {
        let limits = Limits {
            ring_buffer_bytes: None,
            max_stacks: 200_000,
            symbol_cache_entries: 1000,
            open_modules: 512,
            debug_info_bytes: crate::config::args::DEFAULT_DEBUG_INFO_MEMORY,
            debug_dirs: Vec::new(),
            profile_self: false,
            unwind: unwind.mode,
            unwind_table_bytes: unwind.table_bytes,
        };
        let mut collector = Collector::new(&limits, frequency);
        collector.set_unwind_maps(maps);
        driver.run_until(end, &mut collector, |_, _| {})?;
    } else {
        driver.run_until(end, &mut Discard, |_, _| {})?;
    }
    let (run_time, runs) = driver
        .sampler()
        .program_stats()
        .ok_or(BpfCostError::NoStats)?;
    let emitted = driver.finish(&mut Discard)?.get(Count::Emitted);
    Ok(BpfCost {
        runs,
        run_time,
        emitted,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolizeBenchError {
    #[error("cannot list the functions of `{path}`: {message}")]
    Inspect { path: String, message: String },
    #[error("`{0}` has no function symbols to look up")]
    NoFunctions(String),
}

/// Throughput figures.
#[derive(Debug, Clone, Copy)]
pub struct SymbolizeBench {
    pub addresses: usize,
    pub cold: Duration,
    pub warm: Duration,
}

impl SymbolizeBench {
    #[must_use]
    pub fn per_second(n: usize, d: Duration) -> f64 {
        n as f64 / d.as_secs_f64().max(1e-9)
    }
}

/// Looks up `count` addresses spread over the functions of `binary`, twice.
pub fn symbolize(binary: &Path, count: usize) -> Result<SymbolizeBench, SymbolizeBenchError> {
    let mut offsets = Vec::new();
    let inspector = Inspector::new();
    let src = Source::Elf(Elf::new(binary));
    inspector
        .for_each(&src, |sym| {
            if let (Some(offset), Some(size)) = (sym.file_offset, sym.size)
                && size > 1
            {
                offsets.push(offset + size as u64 / 2);
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| SymbolizeBenchError::Inspect {
            path: binary.display().to_string(),
            message: e.to_string(),
        })?;
    if offsets.is_empty() {
        return Err(SymbolizeBenchError::NoFunctions(
            binary.display().to_string(),
        ));
    }
    offsets.sort_unstable();
    offsets.dedup();
    // Spread `count` picks evenly over all functions.
    let step = (offsets.len() / count.max(1)).max(1);
    let picks: Vec<u64> = offsets.iter().step_by(step).take(count).copied().collect();

    let mut modules = ModuleRegistry::new(4, Vec::new());
    let mut stage = SymbolizerStage::new(picks.len() * 2, Vec::new(), u64::MAX);
    let module = modules.open_path(binary);
    let keys: Vec<_> = picks.iter().map(|&o| (module.id, o)).collect();
    let start = Instant::now();
    let names = stage.resolve_user(&keys, &modules);
    let cold = start.elapsed();
    let start = Instant::now();
    let again = stage.resolve_user(&keys, &modules);
    let warm = start.elapsed();
    debug_assert_eq!(names.len(), again.len());
    Ok(SymbolizeBench {
        addresses: keys.len(),
        cold,
        warm,
    })
}

/// Options of the hidden `profiler bench-tables`.
#[derive(Debug, Args)]
pub struct BenchTablesArgs {
    /// ELF files to build tables for, one line each.
    #[arg(long)]
    pub binary: Vec<PathBuf>,
    /// Also every executable file mapped by a process on this host (each file once): the table
    /// memory of a host where every process is sampled.
    #[arg(long)]
    pub host: bool,
}

/// One table built: rows, bytes, build time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableCost {
    pub rows: usize,
    pub bytes: usize,
    pub build: Duration,
}

/// Builds the unwind table of `path`, timed.
pub fn table_cost(path: &Path) -> Result<TableCost, crate::unwind::UnwindError> {
    let start = Instant::now();
    let table = crate::unwind::build(path)?;
    Ok(TableCost {
        rows: table.rows.len(),
        bytes: table.bytes(),
        build: start.elapsed(),
    })
}

/// Every executable file mapped on this host, once each (by device and inode), reached through
/// its process's root (containers). Processes that exit meanwhile are skipped.
#[must_use]
pub fn host_executables() -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut files = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return files;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for line in crate::procfs::parse_maps(&maps) {
            if !line.path.starts_with('/') {
                continue;
            }
            let file = PathBuf::from(format!("/proc/{pid}/root{}", line.path));
            if let Ok(meta) = std::fs::metadata(&file) {
                use std::os::unix::fs::MetadataExt as _;
                if seen.insert((meta.dev(), meta.ino())) {
                    files.push(file);
                }
            }
        }
    }
    files
}
