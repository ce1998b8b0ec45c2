//! `cargo xtask bench steady`: what the shipped daemon costs in its steady state at its default
//! rate (19 Hz), the figure a fleet pays all day. The `split` workload keeps every CPU busy while
//! `profiler run` with its defaults (unwind tables) exports to a real OTLP receiver; after a
//! settling minute (start-up, the first windows, unwind tables and kernel names built once), the
//! daemon's CPU (its threads' `schedstat`) and its BPF programs' time
//! (`kernel.bpf_stats_enabled`) are counted for `STEADY_SECONDS` (600). `STEADY_UNWIND=fp`
//! measures frame-pointer sampling instead.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::bench::{interrupt_and_measure, positive_env, prog_stats, status_kib};
use crate::overhead::{Sink, cpu_seconds};

/// Time left to one-off work before counting.
const SETTLE: Duration = Duration::from_mins(1);

/// Runs the measurement; returns its figures as JSON.
pub(crate) fn run(shipped: &Path, sink_bin: &Path, split: &Path) -> Result<Value> {
    let seconds: u64 = positive_env("STEADY_SECONDS", 600);
    let unwind = std::env::var("STEADY_UNWIND").unwrap_or_else(|_| "auto".to_owned());
    println!(
        "## Steady state: `profiler run --unwind {unwind}` at its default 19 Hz for {seconds} s \
         (after {} s of settling), every CPU busy with `split`",
        SETTLE.as_secs()
    );
    crate::bench::with_bpf_stats(|| {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let total = SETTLE.as_secs() + seconds + 30;
        let load: Vec<_> = (0..cpus)
            .map(|_| Command::new(split).arg(total.to_string()).spawn())
            .collect::<std::io::Result<_>>()
            .context("starting the split workload")?;
        let sink = Sink::start(sink_bin)?;
        let daemon = sink
            .run_command(Command::new(shipped), &["--unwind", &unwind])
            .spawn()
            .context("starting profiler run")?;
        let pid = daemon.id();
        std::thread::sleep(SETTLE);
        let (cpu_start, bpf_start) = (cpu_seconds(pid), prog_stats(pid)?);
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let elapsed = started.elapsed().as_secs_f64();
        let (cpu_end, bpf_end) = (cpu_seconds(pid), prog_stats(pid)?);
        let (anon, file) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
        let (_, peak_kib) = interrupt_and_measure(daemon)?;
        crate::bench::stop(load);
        sink.exported_after(0, "profiler run")?;
        let exported = sink.count();
        drop(sink);
        let daemon_pct = 100.0 * (cpu_end - cpu_start) / elapsed;
        let (bpf_time, runs) = (bpf_end.0 - bpf_start.0, bpf_end.1 - bpf_start.1);
        let bpf_pct = 100.0 * bpf_time as f64 / 1e9 / elapsed;
        let bpf_ns = if runs > 0 {
            bpf_time as f64 / runs as f64
        } else {
            0.0
        };
        println!(
            "| daemon CPU | BPF CPU ({runs} runs, ns each) | daemon + BPF | peak RSS | RSS at end \
             (anon + file) | exports |\n|---|---|---|---|---|---|"
        );
        println!(
            "| {daemon_pct:.3}% of a core | {bpf_pct:.3}% ({bpf_ns:.0}) | **{:.3}%** | {:.1} MiB | \
             {:.1} + {:.1} MiB | {exported} |\n",
            daemon_pct + bpf_pct,
            peak_kib as f64 / 1024.0,
            anon / 1024.0,
            file / 1024.0
        );
        Ok(json!({
            "unwind": unwind, "seconds": seconds, "settle_seconds": SETTLE.as_secs(),
            "daemon_cpu_pct": daemon_pct, "bpf_cpu_pct": bpf_pct, "bpf_runs": runs,
            "bpf_ns_each": bpf_ns, "peak_rss_mib": peak_kib as f64 / 1024.0,
            "rss_anon_mib": anon / 1024.0, "rss_file_mib": file / 1024.0, "exports": exported,
        }))
    })
}
