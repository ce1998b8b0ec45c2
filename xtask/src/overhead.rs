//! `cargo xtask bench overhead`: what each profiler costs a CPU-bound workload, side by side in
//! one run. A fixed amount of work (the `split` workload on every CPU) is timed with no
//! profiler, under `profiler run` (frame pointers, and the default `auto` with unwind tables)
//! exporting to a real OTLP receiver (`otlp-sink`), under `perf record -a` (`-g` and
//! `--call-graph dwarf`) and under `bpftrace`, at 19, 99 and 999 Hz on every CPU.
//!
//! Configurations alternate within each of `ROUNDS` rounds, in an order rotated every round, so
//! the host's drift falls on all alike; figures are medians, and slowdowns are medians of each
//! round's ratio to that round's no-profiler run. The spread of the no-profiler runs says how
//! much of a slowdown is noise.
//!
//! Per configuration: the profiler's CPU while the workload runs (its steady state, from its
//! threads' `schedstat`) and over its whole life (startup included, from `wait4`), its peak RSS and
//! its resident anonymous and file-backed memory at the end of the work, its BPF programs' time
//! per run (`kernel.bpf_stats_enabled`, on for the whole comparison: the same few nanoseconds
//! for both BPF profilers), the memory its BPF maps take (their `memlock` in fdinfo, what the
//! memory cgroup is charged), and for ours the export bytes per sample (protobuf, uncompressed).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::bench::{self, median, positive_env, status_kib};

/// Rounds of every configuration at every frequency (`BENCH_ROUNDS` changes it).
const ROUNDS: usize = 5;

fn rounds() -> usize {
    positive_env("BENCH_ROUNDS", ROUNDS)
}
/// 19 Hz is the daemon's default; 99 and 999 Hz are the usual comparison points.
const FREQUENCIES: [u32; 3] = [19, 99, 999];
/// Iterations of the split workload per CPU: ~6.5 s of work on these VMs.
const ITERATIONS: &str = "3000";
/// Time given each profiler to attach before the work starts (bpftrace compiles first).
const ATTACH: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Baseline,
    Ours(&'static str),
    Perf { dwarf: bool },
    Bpftrace,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no profiler",
            Self::Ours("fp") => "profiler run --unwind fp",
            Self::Ours(_) => "profiler run (default: unwind tables)",
            Self::Perf { dwarf: false } => "perf record -a -g",
            Self::Perf { dwarf: true } => "perf record -a --call-graph dwarf",
            Self::Bpftrace => "bpftrace (@[kstack, ustack, pid] = count())",
        }
    }
}

const KINDS: [Kind; 6] = [
    Kind::Baseline,
    Kind::Ours("fp"),
    Kind::Ours("auto"),
    Kind::Perf { dwarf: false },
    Kind::Perf { dwarf: true },
    Kind::Bpftrace,
];

/// One configuration's run.
#[derive(Default, Clone, Copy)]
struct Run {
    work_s: f64,
    /// The profiler's CPU seconds while the work ran.
    steady_cpu_s: f64,
    /// Its CPU seconds over its whole life.
    total_cpu_s: f64,
    peak_rss_kib: f64,
    anon_kib: f64,
    file_kib: f64,
    /// BPF time per program run and BPF CPU seconds while the work ran (BPF profilers).
    bpf_ns_each: f64,
    bpf_cpu_s: f64,
    map_kib: f64,
    export_bytes: f64,
    export_samples: f64,
}

/// The receiver our daemon exports to, and what it printed so far. Killed when dropped, on
/// error paths too.
pub(crate) struct Sink {
    child: Child,
    pub(crate) addr: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(f64, f64)>>>,
}

impl Sink {
    /// Starts the sink on a free port and waits (at most 10 s) for it to say which: a sink that
    /// cannot bind fails the bench here rather than leaving it to export elsewhere or nowhere.
    pub(crate) fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting otlp-sink")?;
        let Some(stdout) = child.stdout.take() else {
            bench::stop(vec![child]);
            bail!("otlp-sink has no stdout");
        };
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = std::sync::Arc::clone(&lines);
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if first_tx.send(lines.next()).is_err() {
                return;
            }
            for line in lines {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key)?.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                let entry = (field("bytes="), field("samples="));
                store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(entry);
            }
        });
        let first = first_rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .flatten();
        let Some(addr) = first
            .as_deref()
            .and_then(|l| l.trim().strip_prefix("listening "))
            .map(str::to_owned)
        else {
            bench::stop(vec![child]);
            bail!("otlp-sink did not say where it listens (first line: {first:?})");
        };
        Ok(Self { child, addr, lines })
    }

    /// `profiler` (a command that runs it) with `run ARGS`, exporting here, without its HTTP
    /// server or output.
    pub(crate) fn run_command(&self, mut c: Command, args: &[&str]) -> Command {
        c.arg("run")
            .args(args)
            .arg("--otlp-endpoint")
            .arg(format!("http://{}", self.addr))
            .args(["--http-address", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    pub(crate) fn count(&self) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Bytes and samples exported after the first `from` exports, once the daemon that made them
    /// has stopped: its last window is exported on the way out, so this waits (at most 5 s)
    /// until there is an export and none more for 600 ms (the sink prints every 200 ms). An
    /// error when there is none: a figure over nothing exported measures nothing.
    pub(crate) fn exported_after(&self, from: usize, who: &str) -> Result<(f64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut seen, mut since) = (self.count(), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.count();
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if now > from && since.elapsed() >= Duration::from_millis(600) {
                break;
            }
        }
        let (bytes, samples) = self.since(from);
        if samples == 0.0 {
            bail!("{who} exported nothing to the sink at {}", self.addr);
        }
        Ok((bytes, samples))
    }

    /// Bytes and samples of the exports after the first `from`.
    pub(crate) fn since(&self, from: usize) -> (f64, f64) {
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines
            .iter()
            .skip(from)
            .fold((0.0, 0.0), |(b, s), (lb, ls)| (b + lb, s + ls))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        bench::stop_one(&mut self.child);
    }
}

fn command(kind: Kind, hz: u32, profiler: &Path, sink: &Sink, dir: &Path) -> Option<Command> {
    let hz_text = hz.to_string();
    match kind {
        Kind::Baseline => None,
        Kind::Ours(unwind) => Some(sink.run_command(
            Command::new(profiler),
            &["-F", &hz_text, "--unwind", unwind, "--interval", "10s"],
        )),
        Kind::Perf { dwarf } => {
            let mut c = Command::new("perf");
            c.args(["record", "-a", "-F", &hz_text, "-q", "-o"])
                .arg(dir.join("perf.data"));
            if dwarf {
                c.args(["--call-graph", "dwarf"]);
            } else {
                c.arg("-g");
            }
            Some(c)
        }
        Kind::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args([
                "-q",
                "-e",
                &format!("profile:hz:{hz} {{ @[kstack, ustack, pid] = count(); }}"),
            ]);
            Some(c)
        }
    }
}

/// Runs the comparison; returns its figures as JSON.
pub(crate) fn run(profiler: &Path, sink_bin: &Path, split: &Path, dir: &Path) -> Result<Value> {
    crate::bench::with_bpf_stats(|| {
        let sink = Sink::start(sink_bin)?;
        let result = FREQUENCIES
            .iter()
            .map(|&hz| frequency(hz, profiler, &sink, split, dir))
            .collect::<Result<Vec<_>>>();
        drop(sink);
        Ok(Value::Array(result?))
    })
}

fn frequency(hz: u32, profiler: &Path, sink: &Sink, split: &Path, dir: &Path) -> Result<Value> {
    let rounds = rounds();
    println!(
        "## Overhead at {hz} Hz on every CPU ({rounds} rounds, configurations alternating; \
         fixed work: split on each CPU)"
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); KINDS.len()];
    for round in 0..rounds {
        for i in 0..KINDS.len() {
            let k = (i + round) % KINDS.len();
            let run = one(KINDS[k], hz, profiler, sink, split, dir)?;
            runs[k].push(run);
        }
    }
    let base: Vec<f64> = runs[0].iter().map(|r| r.work_s).collect();
    let base_median = median(base.clone());
    let spread = 100.0
        * (base.iter().copied().fold(f64::MIN, f64::max)
            - base.iter().copied().fold(f64::MAX, f64::min))
        / base_median;
    println!(
        "| configuration | work (median) | slowdown (median) | profiler CPU while working | \
         profiler CPU, whole life | peak RSS | RSS anon + file at the end | BPF ns per run | \
         BPF CPU | BPF maps | export bytes per sample |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (kind, figures) in KINDS.iter().zip(&runs) {
        let m = |f: fn(&Run) -> f64| median(figures.iter().map(f).collect());
        let slowdown = median(
            figures
                .iter()
                .zip(&base)
                .map(|(r, b)| 100.0 * (r.work_s / b - 1.0))
                .collect(),
        );
        let work = m(|r| r.work_s);
        let core_share = |cpu: f64| 100.0 * cpu / work;
        let steady = m(|r| r.steady_cpu_s);
        let bpf = m(|r| r.bpf_cpu_s);
        let bytes_per_sample = m(|r| {
            if r.export_samples > 0.0 {
                r.export_bytes / r.export_samples
            } else {
                0.0
            }
        });
        let row = json!({
            "configuration": kind.name(),
            "hz": hz,
            "work_s": work,
            "slowdown_pct": slowdown,
            "cpu_while_working_pct_of_core": core_share(steady),
            "cpu_total_s": m(|r| r.total_cpu_s),
            "peak_rss_mib": m(|r| r.peak_rss_kib) / 1024.0,
            "rss_anon_mib": m(|r| r.anon_kib) / 1024.0,
            "rss_file_mib": m(|r| r.file_kib) / 1024.0,
            "bpf_ns_per_run": m(|r| r.bpf_ns_each),
            "bpf_cpu_pct_of_core": core_share(bpf),
            "bpf_map_mib": m(|r| r.map_kib) / 1024.0,
            "export_bytes_per_sample": bytes_per_sample,
        });
        if *kind == Kind::Baseline {
            println!(
                "| {} | {work:.2} s | — (spread {spread:.1}%) | | | | | | | | |",
                kind.name()
            );
        } else {
            let opt = |v: f64, text: String| if v > 0.0 { text } else { "—".to_owned() };
            println!(
                "| {} | {work:.2} s | {slowdown:+.1}% | {:.2}% of a core | {:.2} s | {:.1} MiB | \
                 {:.1} + {:.1} MiB | {} | {} | {} | {} |",
                kind.name(),
                core_share(steady),
                m(|r| r.total_cpu_s),
                m(|r| r.peak_rss_kib) / 1024.0,
                m(|r| r.anon_kib) / 1024.0,
                m(|r| r.file_kib) / 1024.0,
                opt(bpf, format!("{:.0}", m(|r| r.bpf_ns_each))),
                opt(bpf, format!("{:.2}% of a core", core_share(bpf))),
                opt(
                    m(|r| r.map_kib),
                    format!("{:.1} MiB", m(|r| r.map_kib) / 1024.0)
                ),
                opt(bytes_per_sample, format!("{bytes_per_sample:.1}")),
            );
        }
        rows.push(row);
    }
    println!();
    Ok(json!({ "hz": hz, "rounds": rounds, "baseline_spread_pct": spread, "rows": rows }))
}

/// One timed run of the workload under `kind`.
fn one(kind: Kind, hz: u32, profiler: &Path, sink: &Sink, split: &Path, dir: &Path) -> Result<Run> {
    let exports_before = sink.count();
    let child = match command(kind, hz, profiler, sink, dir) {
        Some(mut cmd) => {
            let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
            std::thread::sleep(ATTACH);
            Some(child)
        }
        None => None,
    };
    let pid = child.as_ref().map(Child::id);
    let cpu_start = pid.map_or(0.0, cpu_seconds);
    let bpf_start = pid.map_or(Ok((0, 0)), crate::bench::prog_stats)?;
    let start = Instant::now();
    let workers: Vec<Child> = (0..std::thread::available_parallelism().map_or(2, usize::from))
        .map(|_| Command::new(split).args(["0", ITERATIONS]).spawn())
        .collect::<std::io::Result<_>>()?;
    for mut w in workers {
        w.wait()?;
    }
    let mut run = Run {
        work_s: start.elapsed().as_secs_f64(),
        ..Run::default()
    };
    let (Some(child), Some(pid)) = (child, pid) else {
        return Ok(run);
    };
    run.steady_cpu_s = cpu_seconds(pid) - cpu_start;
    let bpf_end = crate::bench::prog_stats(pid)?;
    if bpf_end.1 > bpf_start.1 {
        run.bpf_ns_each = (bpf_end.0 - bpf_start.0) as f64 / (bpf_end.1 - bpf_start.1) as f64;
        run.bpf_cpu_s = (bpf_end.0 - bpf_start.0) as f64 / 1e9;
    }
    run.map_kib = map_memory_kib(pid);
    (run.anon_kib, run.file_kib) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
    let (total_cpu, peak) = crate::bench::interrupt_and_measure(child)?;
    (run.total_cpu_s, run.peak_rss_kib) = (total_cpu, peak as f64);
    if matches!(kind, Kind::Ours(_)) {
        (run.export_bytes, run.export_samples) =
            sink.exported_after(exports_before, kind.name())?;
    }
    Ok(run)
}

/// CPU seconds of all of `pid`'s threads so far, from each thread's `schedstat` (nanoseconds:
/// `/proc/PID/stat`'s ticks of 10 ms cannot tell 0.01% of a core over a few seconds).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// KiB of the BPF maps `pid` holds open: their `memlock` (what the kernel charges for them).
pub(crate) fn map_memory_kib(pid: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0.0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0.0;
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:"))
            && seen.insert(id)
        {
            bytes += memlock.parse::<f64>().unwrap_or(0.0);
        }
    }
    bytes / 1024.0
}
