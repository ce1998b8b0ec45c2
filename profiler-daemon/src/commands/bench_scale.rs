//! `profiler bench-scale` (`bench` feature): the daemon's user-space stages at a scale no test
//! host reaches by sampling, for `cargo xtask bench scale`. It starts `--processes` real
//! processes (coreutils `sleep`, Debian's python3 and perl), then feeds the collector
//! `--stacks` distinct stacks over them in drain-sized batches: user frames at addresses inside
//! their real executable mappings (drawn from a pool of offsets per file, shared by the
//! processes that map it, so names repeat as in real profiles; `--private-code` gives every
//! process its own, the worst case), kernel frames inside real kernel functions. It times the ingest (what the drain
//! does with each sample: process table, normalization), the window's naming (`finish_window`)
//! and the OTLP encoding, and prints the peak RSS. One line:
//! `scale code=shared|private processes=.. stacks=.. samples=.. ingest_ms=.. symbolize_ms=.. encode_ms=..
//! requests=.. request_bytes=.. peak_rss_mib=..`.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use crate::bpf::RawSample;
use crate::config::{Limits, UnwindMode};
use crate::export::otlp::{EncodeOptions, encode};
use crate::pipeline::{Collector, Sink as _};
use crate::xorshift::Rng;

#[derive(Debug, Args)]
pub struct BenchScaleArgs {
    /// Processes the stacks are spread over.
    #[arg(long, default_value_t = 1000)]
    pub processes: usize,
    /// Distinct stacks in the window.
    #[arg(long, default_value_t = 100_000)]
    pub stacks: usize,
    /// Every process runs code of its own: each (file, load address) draws its own addresses,
    /// so that nearly every frame of the window is a distinct location (the worst case). By
    /// default processes of one program run the same code, as they do on a real host: a file's
    /// pool of offsets is shared by every process that maps it.
    #[arg(long)]
    pub private_code: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchScaleError {
    #[error("cannot start the processes: {0}")]
    Spawn(std::io::Error),
    #[error("no executable mappings found in the processes started")]
    NoMappings,
}

/// Addresses drawn per executable file: a pool, so that names repeat across stacks.
const POOL_PER_FILE: u64 = 4000;
/// Samples handed over at once, as a drain does.
const BATCH: usize = 8192;

/// Runs the measurement; returns its line.
pub fn run(args: &BenchScaleArgs) -> Result<String, BenchScaleError> {
    let children = spawn(args.processes).map_err(BenchScaleError::Spawn)?;
    // Let the interpreters finish starting (their libraries mapped).
    std::thread::sleep(Duration::from_secs(2));
    let result = measure(args, &children);
    for mut child in children {
        if let Err(err) = child.kill().and_then(|()| child.wait().map(drop)) {
            tracing::debug!("stopping a scale process: {err}");
        }
    }
    result
}

fn spawn(n: usize) -> std::io::Result<Vec<Child>> {
    (0..n)
        .map(|i| {
            let mut cmd = match i % 50 {
                0 => {
                    let mut c = Command::new("/usr/bin/python3");
                    c.args(["-c", "import time; time.sleep(600)"]);
                    c
                }
                1 => {
                    let mut c = Command::new("/usr/bin/perl");
                    c.args(["-e", "sleep 600"]);
                    c
                }
                _ => {
                    let mut c = Command::new("/usr/bin/sleep");
                    c.arg("600");
                    c
                }
            };
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect()
}

/// An executable mapping's pool of addresses, drawn on demand (not stored: the bench's own
/// memory would otherwise count in the peak it reports).
#[derive(Clone, Copy)]
struct Pool {
    seed: u64,
    len: u64,
}

impl Pool {
    /// The `k`th address of the pool, as an offset from the mapping's start.
    fn offset(self, k: u64) -> u64 {
        let mut rng = Rng((self.seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        rng.next();
        rng.next() % self.len.max(1)
    }
}

/// Per process: its pid and its executable mappings (start, pool).
struct Target {
    pid: u32,
    mappings: Vec<(u64, Pool)>,
}

/// The processes' executable mappings. A pool is per file (its offsets shared by every process
/// that maps the file), or per (file, load address) with `private_code`.
fn targets(children: &[Child], private_code: bool) -> Vec<Target> {
    let mut seeds: HashMap<String, u64> = HashMap::new();
    let mut targets = Vec::new();
    for child in children {
        let pid = child.id();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mut mappings = Vec::new();
        for line in maps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(range), Some(perms), Some(offset), Some(path)) =
                (fields.first(), fields.get(1), fields.get(2), fields.get(5))
            else {
                continue;
            };
            if !perms.contains('x') || !path.starts_with('/') {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            let key = if private_code {
                format!("{path}@{start:x}")
            } else {
                format!("{path}+{offset}")
            };
            let next = seeds.len() as u64 + 1;
            let seed = *seeds.entry(key).or_insert(next);
            mappings.push((
                start,
                Pool {
                    seed,
                    len: end - start,
                },
            ));
        }
        if !mappings.is_empty() {
            targets.push(Target { pid, mappings });
        }
    }
    targets
}

fn measure(args: &BenchScaleArgs, children: &[Child]) -> Result<String, BenchScaleError> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let targets = targets(children, args.private_code);
    if targets.is_empty() {
        return Err(BenchScaleError::NoMappings);
    }
    let kernel = kernel_text();

    let limits = Limits {
        ring_buffer_bytes: None,
        max_stacks: crate::config::args::DEFAULT_MAX_STACKS.max(args.stacks),
        symbol_cache_entries: crate::config::args::DEFAULT_SYMBOL_CACHE_ENTRIES,
        open_modules: crate::config::args::DEFAULT_OPEN_MODULES,
        debug_info_bytes: crate::config::args::DEFAULT_DEBUG_INFO_MEMORY,
        debug_dirs: Vec::new(),
        profile_self: false,
        unwind: UnwindMode::Fp,
        unwind_table_bytes: crate::config::DEFAULT_UNWIND_TABLE_BYTES,
    };
    let mut collector = Collector::new(&limits, 99);
    let window_start = SystemTime::now();
    let mut ingest = Duration::ZERO;
    let mut samples = 0_u64;
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..args.stacks {
        let target = &targets[rng.below(targets.len())];
        let user: Vec<u64> = (0..6 + rng.below(25))
            .map(|_| {
                let (start, pool) = target.mappings[rng.below(target.mappings.len())];
                start + pool.offset(rng.next() % POOL_PER_FILE)
            })
            .collect();
        let kernel_frames: Vec<u64> = if kernel.is_empty() || rng.below(2) == 0 {
            Vec::new()
        } else {
            (0..=rng.below(8))
                .map(|_| kernel[rng.below(kernel.len())])
                .collect()
        };
        for _ in 0..=rng.below(3) {
            batch.push(Some(RawSample {
                tgid: target.pid,
                tid: target.pid,
                cgroup_id: 0,
                time_ns: monotonic_ns(),
                cpu: 0,
                flags: 0,
                comm: *b"scale-process\0\0\0",
                kernel: kernel_frames.clone(),
                user: user.clone(),
            }));
            samples += 1;
            if batch.len() == BATCH {
                let started = Instant::now();
                collector.take(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                ingest += started.elapsed();
            }
        }
    }
    let started = Instant::now();
    collector.take(batch);
    ingest += started.elapsed();

    let started = Instant::now();
    let profile = collector.finish_window(window_start, Duration::from_secs(10));
    let symbolize = started.elapsed();
    let started = Instant::now();
    let requests = encode(&profile, &EncodeOptions::default());
    let encode_time = started.elapsed();
    let bytes: usize = requests.iter().map(|r| r.body.len()).sum();
    Ok(format!(
        "scale code={} processes={} stacks={} samples={samples} ingest_ms={} symbolize_ms={} \
         encode_ms={} requests={} request_bytes={bytes} peak_rss_mib={:.1}",
        if args.private_code {
            "private"
        } else {
            "shared"
        },
        children.len(),
        args.stacks,
        ingest.as_millis(),
        symbolize.as_millis(),
        encode_time.as_millis(),
        requests.len(),
        peak_rss_kib() / 1024.0,
    ))
}

/// Addresses inside the kernel's text functions (`/proc/kallsyms`, root sees them).
fn kernel_text() -> Vec<u64> {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            (addr != 0 && (kind == "t" || kind == "T") && fields.nth(1).is_none())
                .then_some(addr + 4)
        })
        .step_by(16)
        .take(4000)
        .collect()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// This process's peak RSS (`VmHWM`), in KiB.
fn peak_rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0.0)
}
