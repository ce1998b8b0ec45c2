//! `profiler record`: sample for a while, write one file, print a one-line summary.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use profiler_common::Counter;

use crate::bpf::{BpfCounters, BpfError, DRAIN_INTERVAL, Design, Sampler};
use crate::collect::{CollectStats, Collector, drain_into};
use crate::config::RecordConfig;
use crate::export::{self, ExportError, FileOptions};

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
    pub bpf: BpfCounters,
    pub collect: CollectStats,
    pub cpus: usize,
    pub interrupted: bool,
}

impl RecordSummary {
    /// Every loss, by reason, non-zero ones only.
    #[must_use]
    pub fn losses(&self) -> Vec<(&'static str, u64)> {
        let mut losses = self.bpf.losses();
        for (name, n) in [
            ("profile_full", self.collect.lost_profile_full),
            ("malformed", self.collect.malformed),
        ] {
            if n > 0 {
                losses.push((name, n));
            }
        }
        losses
    }
}

impl fmt::Display for RecordSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples from {} processes on {} CPUs in {:.1}s{}",
            self.samples,
            self.processes,
            self.cpus,
            self.elapsed.as_secs_f64(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        )?;
        let losses = self.losses();
        let lost: u64 = losses.iter().map(|(_, n)| n).sum();
        if losses.is_empty() {
            write!(f, "; 0 lost")?;
        } else {
            let detail: Vec<String> = losses.iter().map(|(k, n)| format!("{k} {n}")).collect();
            write!(f, "; {lost} lost ({})", detail.join(", "))?;
        }
        let partial =
            self.bpf.get(Counter::KernelStackFailed) + self.bpf.get(Counter::UserStackFailed);
        if partial > 0 {
            write!(
                f,
                "; {partial} stack walks failed (kernel {}, user {})",
                self.bpf.get(Counter::KernelStackFailed),
                self.bpf.get(Counter::UserStackFailed)
            )?;
        }
        write!(f, "; {} idle", self.bpf.get(Counter::Idle))
    }
}

/// Records until `config.duration` passes or `stop` is set, then writes the output file.
pub fn record(config: &RecordConfig, stop: &AtomicBool) -> Result<RecordSummary, RecordError> {
    let mut sampler = Sampler::start(&config.sampler, Design::RingBuf)?;
    let mut collector = Collector::new(&config.limits, config.sampler.frequency);
    let start = Instant::now();
    let wall_start = std::time::SystemTime::now();
    let deadline = start + config.duration;
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        sampler.wait(DRAIN_INTERVAL.min(deadline - now))?;
        let _ = drain_into(&mut sampler, &mut collector);
    }
    let elapsed = start.elapsed();
    // Read the counters before detaching, then take what is still in the ring buffer.
    let bpf = sampler.counters()?;
    let _ = drain_into(&mut sampler, &mut collector);
    let cpus = sampler.cpus();
    drop(sampler);

    let sample_count = collector.samples();
    let processes = collector.processes();
    let collect = collector.stats();
    let profile = collector.finish_window(wall_start, elapsed);
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
        },
        &title,
    )?;
    Ok(RecordSummary {
        elapsed,
        samples: sample_count,
        processes,
        bpf,
        collect,
        cpus,
        interrupted,
    })
}
