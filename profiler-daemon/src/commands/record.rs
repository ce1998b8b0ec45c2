//! `profiler record`: sample for a while, write one file, print a one-line summary.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use crate::bpf::unwind::UnwindConfig;
use crate::bpf::{BpfError, Design};
use crate::config::RecordConfig;
use crate::counters::{Count, Totals};
use crate::export::{self, ExportError, FileOptions};
use crate::pipeline::{Collector, Driver, Ending};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// What a recording did, for the summary line and for tests.
#[derive(Debug, Clone)]
pub struct RecordSummary {
    pub elapsed: Duration,
    /// Samples in the profile (idle included when asked for).
    pub samples: u64,
    pub processes: usize,
    pub totals: Totals,
    pub cpus: usize,
    pub interrupted: bool,
}

impl fmt::Display for RecordSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples from {} processes on {} CPUs in {:.1}s{}; {}; {} idle",
            self.samples,
            self.processes,
            self.cpus,
            self.elapsed.as_secs_f64(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            self.totals.describe_losses(),
            self.totals.get(Count::Idle),
        )?;
        let complete = self.totals.get(Count::UnwindComplete);
        let truncated =
            self.totals.get(Count::UnwindTruncated) + self.totals.get(Count::UnwindBadRule);
        let no_tables = self.totals.get(Count::UnwindNoTables);
        if complete + truncated + no_tables > 0 {
            let walked = complete + truncated;
            write!(
                f,
                "; unwind tables: {complete} of {walked} user stacks complete ({:.1}%), \
                 {no_tables} by frame pointers (no tables yet)",
                100.0 * complete as f64 / walked.max(1) as f64
            )?;
        }
        let evicted = self.totals.get(Count::TablesEvicted);
        if evicted > 0 {
            write!(
                f,
                "; {evicted} unwind tables evicted (more room: --unwind-table-memory)"
            )?;
        }
        Ok(())
    }
}

/// Records until `config.duration` passes or `stop` is set, then writes the output file.
pub fn record(config: &RecordConfig, stop: &AtomicBool) -> Result<RecordSummary, RecordError> {
    super::check::warn_missing_capabilities();
    let mut driver = Driver::start_unwinding(
        &config.sampler,
        Design::RingBuf,
        &UnwindConfig::of(&config.limits),
        stop,
    )?;
    let mut collector = Collector::new(&config.limits, config.sampler.frequency);
    if let Some(maps) = driver.take_unwind_maps() {
        collector.set_unwind_maps(maps);
    }
    let start = Instant::now();
    let wall_start = SystemTime::now();
    let ending = driver.run_until(start + config.duration, &mut collector, |_, _| {})?;
    let elapsed = start.elapsed();
    let cpus = driver.sampler().cpus();
    let mut totals = driver.finish(&mut collector)?;

    let processes = collector.processes();
    let profile = collector.finish_window(wall_start, elapsed);
    collector.totals(&mut totals);
    let title = format!(
        "profiler record: {} samples, {} Hz, {:.1}s",
        profile.samples(),
        config.sampler.frequency,
        elapsed.as_secs_f64()
    );
    export::write_file(
        &profile,
        config.format,
        &config.output,
        FileOptions {
            include_idle: config.sampler.include_idle,
            keep_addresses: config.keep_addresses,
        },
        &title,
    )?;
    Ok(RecordSummary {
        elapsed,
        samples: profile.samples(),
        processes,
        totals,
        cpus,
        interrupted: ending == Ending::Stopped,
    })
}
