//! `cargo xtask bench`: figures for the README, measured side by side in one run (the machines
//! are shared and noisy, so only ratios within a run mean anything).
//!
//! 1. Symbolization throughput (cold and warm caches) on a large binary with DWARF and on libc.
//! 2. BPF time per sample (`cost`): the shipped sampler, its stages, and the designs it was
//!    chosen over, from the kernel's own accounting (`kernel.bpf_stats_enabled`), alternated.
//! 3. The user stack walkers (`unwind`): BPF time per emitted sample with unwind tables and
//!    with frame pointers, and bpftrace's frame-pointer stacks, on Debian's python3 (no frame
//!    pointers) and on the frame-pointer `split`, alternated; table rows, bytes and build time
//!    for libc, python3, perl and every file mapped on the host.
//! 4. Overhead against the peers (`overhead`, see `overhead.rs`): a fixed amount of work timed
//!    alone and under each profiler at 19, 99 and 999 Hz.
//! 5. Scale (`scale`): 1,000 processes and 100,000 distinct stacks in one window.
//! 6. A busy host (`busy`, see `busy.rs`): the shipped daemon's memory and CPU beside clang,
//!    python3, perl, xz, process churn, hundreds of processes and a hot binary with DWARF.
//! 7. A soak (`soak`): `profiler run` for 10 minutes at 999 Hz with its collector unreachable
//!    while short processes churn; RSS per minute (`SOAK_MINUTES` shortens it).
//! 8. The live page (`live`).
//! 9. The steady state at the default 19 Hz (`steady`, see `steady.rs`): daemon and BPF CPU over
//!    10 minutes of a busy workload.
//!
//! `cargo xtask bench SECTION` runs one section; the figures go to `target/bench/bench.json`.
//!
//! Two binaries: the measurement-only subcommands (`bpf-cost`, `bench-symbolize`) exist only with
//! profiler-daemon's `bench` feature, so they run from a build with it in its own target
//! directory; the overhead comparison runs the shipped `target/release/profiler`, built without
//! features, since that is what users run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::{busy, cargo, overhead, scale, steady, workspace};

const HZ: &str = "999";

/// Target directory of the `bench` feature build (relative to the workspace root, where cargo
/// runs): its own, so that it never replaces the shipped `target/release/profiler`.
const BENCH_TARGET_DIR: &str = "target/bench-build";

pub(crate) fn run(args: &[String]) -> Result<()> {
    cargo(&["build", "--release", "-p", "profiler-daemon"])?;
    // The OTLP receiver `profiler run` exports to in the overhead comparison.
    cargo(&[
        "build",
        "--release",
        "-p",
        "profiler-tests",
        "--bin",
        "otlp-sink",
    ])?;
    let dir = workspace().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let split = build_split(&dir)?;
    let shipped = workspace().join("target/release/profiler");
    let sink = workspace().join("target/release/otlp-sink");
    let only = args.first().map(String::as_str);
    let json = dir.join("bench.json");
    // Sections run alone (`cargo xtask bench overhead`) replace theirs and keep the others.
    let mut report: serde_json::Map<String, serde_json::Value> = std::fs::read(&json)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut save = |key: &str, value: serde_json::Value| -> Result<()> {
        report.insert(key.to_owned(), value);
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
        Ok(())
    };
    match only {
        Some("soak") => return soak(&shipped, &split),
        Some("overhead") => {
            save("overhead", overhead::run(&shipped, &sink, &split, &dir)?)?;
            println!("figures also in {}", json.display());
            return Ok(());
        }
        Some("steady") => {
            save("steady", steady::run(&shipped, &sink, &split)?)?;
            return Ok(());
        }
        _ => {}
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "profiler-daemon",
        "--features",
        "bench",
        "--target-dir",
        BENCH_TARGET_DIR,
    ])?;
    let measuring = workspace().join(BENCH_TARGET_DIR).join("release/profiler");
    match only {
        Some("unwind") => return unwinding(&measuring, &split, &dir),
        Some("live") => return live(&measuring),
        Some("cost") => {
            save("bpf_cost", bpf_cost(&measuring, &split)?)?;
            return Ok(());
        }
        Some("scale") => {
            save("scale", scale::run(&measuring)?)?;
            return Ok(());
        }
        Some("busy") => {
            save("busy", busy::run(&shipped, &measuring, &sink, &dir)?)?;
            return Ok(());
        }
        Some(other) => bail!(
            "unknown bench `{other}`: cost, overhead, scale, busy, steady, unwind, live, soak, or \
             nothing for all"
        ),
        None => {}
    }
    symbolization(&measuring, &shipped)?;
    save("bpf_cost", bpf_cost(&measuring, &split)?)?;
    unwinding(&measuring, &split, &dir)?;
    save("overhead", overhead::run(&shipped, &sink, &split, &dir)?)?;
    save("scale", scale::run(&measuring)?)?;
    save("busy", busy::run(&shipped, &measuring, &sink, &dir)?)?;
    save("steady", steady::run(&shipped, &sink, &split)?)?;
    soak(&shipped, &split)?;
    live(&measuring)?;
    println!("figures also in {}", json.display());
    Ok(())
}

/// The live page over 100,000 distinct stacks, timed in headless Chromium (`live-bench`).
fn live(measuring: &Path) -> Result<()> {
    println!("== live page: 100,000 distinct stacks in headless Chromium");
    cargo(&[
        "run",
        "--release",
        "-q",
        "-p",
        "profiler-tests",
        "--bin",
        "live-bench",
        "--",
        measuring.to_str().context("a UTF-8 path")?,
        "100000",
    ])
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:") / 1024.0
}

/// One figure of `/proc/PID/status` in KiB (`key` with its colon, e.g. `RssAnon:`); 0 when the
/// process is gone.
pub(crate) fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0.0)
}

/// `profiler run` through a long outage under process churn: RSS per minute.
fn soak(profiler: &Path, split: &Path) -> Result<()> {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    println!(
        "## Soak: `profiler run` at {HZ} Hz for {minutes} min, collector unreachable, short \
         processes churning on both CPUs"
    );
    // Nothing listens on port 1: every export fails and is retried; the queue stays full.
    let mut daemon = Command::new(profiler)
        .args([
            "run",
            "--otlp-endpoint",
            "http://127.0.0.1:1",
            "--interval",
            "10s",
        ])
        .args(["-F", HZ, "--http-address", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting profiler run")?;
    let stop_churn = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawned = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lanes: Vec<_> = (0..2)
        .map(|_| {
            let (split, stop, count) = (
                split.to_path_buf(),
                std::sync::Arc::clone(&stop_churn),
                std::sync::Arc::clone(&spawned),
            );
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if Command::new(&split).args(["10", "5"]).status().is_ok() {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    println!("| minute | RSS (MiB) | processes started |\n|---|---|---|");
    for minute in 1..=minutes {
        std::thread::sleep(Duration::from_mins(1));
        println!(
            "| {minute} | {:.1} | {} |",
            rss_mib(daemon.id()),
            spawned.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    stop_churn.store(true, std::sync::atomic::Ordering::Relaxed);
    for lane in lanes {
        if lane.join().is_err() {
            eprintln!("a churn lane panicked");
        }
    }
    if let Err(e) = daemon.kill() {
        eprintln!("stopping the daemon: {e}");
    }
    if let Err(e) = daemon.wait() {
        eprintln!("reaping the daemon: {e}");
    }
    println!();
    Ok(())
}

/// Symbolization throughput, cold and warm, on large binaries with and without DWARF: the
/// shipped profiler itself and libc, measured by `measuring` (the `bench` feature build).
fn symbolization(measuring: &Path, shipped: &Path) -> Result<()> {
    println!("## Symbolization throughput (addresses spread over all functions)");
    println!(
        "| binary | size | addresses | cold (addr/s) | warm (addr/s) |\n|---|---|---|---|---|"
    );
    for binary in [shipped, Path::new("/lib/x86_64-linux-gnu/libc.so.6")] {
        if !binary.exists() {
            continue;
        }
        let out = Command::new(measuring)
            .args(["bench-symbolize", "--binary"])
            .arg(binary)
            .output()?;
        if !out.status.success() {
            bail!(
                "bench-symbolize failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap_or("?")
                .to_owned()
        };
        let size = std::fs::metadata(binary).map_or(0, |m| m.len()) / (1024 * 1024);
        println!(
            "| {} | {size} MiB | {} | {} | {} |",
            binary.display(),
            field("addresses="),
            field("cold_per_s="),
            field("warm_per_s=")
        );
    }
    println!();
    Ok(())
}

fn build_split(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("split");
    crate::run(
        Command::new("clang")
            .args([
                "-O2",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-fno-optimize-sibling-calls",
                "-mllvm",
                "-enable-shrink-wrap=false",
                "-o",
            ])
            .arg(&out)
            .arg(workspace().join("tests/workloads/split.c")),
    )?;
    Ok(out)
}

/// Keeps every CPU busy with the split workload so that nearly every perf event is a full sample.
fn busy(split: &Path, seconds: u32) -> Result<Vec<Child>> {
    (0..std::thread::available_parallelism().map_or(2, usize::from))
        .map(|_| {
            Command::new(split)
                .arg(seconds.to_string())
                .spawn()
                .context("starting the split workload")
        })
        .collect()
}

/// BPF time per sample of the shipped design, of its stages, and of the designs it was chosen
/// over. `measuring` is the `bench` feature build (`bpf-cost` exists only there).
fn bpf_cost(measuring: &Path, split: &Path) -> Result<serde_json::Value> {
    const DESIGNS: [(&str, &str); 7] = [
        (
            "ringbuf",
            "ring buffer record, frame pointers (shipped `--unwind fp`)",
        ),
        ("header", "stage: admission + header + record, no stacks"),
        ("kernel", "stage: + kernel stack"),
        ("lean", "stage: both stacks, without comm and cgroup id"),
        (
            "getstack",
            "every user stack by bpf_get_stack, none by probe reads",
        ),
        ("aggregate", "in-kernel aggregation (stack ids)"),
        (
            "buildid",
            "user frames as build id + offset (BPF_F_USER_BUILD_ID)",
        ),
    ];
    println!("## BPF time per sample ({HZ} Hz, all CPUs busy, 3 alternating rounds of 4 s)");
    let mut figures = vec![Vec::new(); DESIGNS.len()];
    // The busy workload must outlive all rounds: 7 designs x 3 rounds x (4 s + loading).
    let load = busy(split, 150)?;
    for _round in 0..3 {
        for ((design, _), out) in DESIGNS.iter().zip(&mut figures) {
            let args = ["--design", design, "--duration", "4s", "--frequency", HZ];
            out.push(bpf_cost_figure(measuring, &args, "ns_per_sample")?);
        }
    }
    stop(load);
    let medians: Vec<f64> = figures.into_iter().map(median).collect();
    println!("| design | median ns per sample |\n|---|---|");
    for ((_, label), ns) in DESIGNS.iter().zip(&medians) {
        println!("| {label} | {ns:.0} |");
    }
    let [ring, header, kernel, lean, get_stack, agg, build_id] = medians[..] else {
        bail!("one figure per design");
    };
    println!(
        "where the time goes: record and admission {header:.0} ns, kernel stack {:.0} ns, \
         user stack {:.0} ns ({:.0} ns by bpf_get_stack), comm + cgroup id {:.0} ns; \
         ratios: ring buffer / aggregation {:.2}, build id / ring buffer {:.2}\n",
        kernel - header,
        ring - kernel,
        get_stack - kernel,
        ring - lean,
        ring / agg,
        build_id / ring
    );
    Ok(serde_json::json!(
        DESIGNS
            .iter()
            .zip(&medians)
            .map(|((design, label), ns)| serde_json::json!({
                "design": design, "label": label, "ns_per_sample": ns
            }))
            .collect::<Vec<_>>()
    ))
}

/// One `profiler bpf-cost` run: its `key=` figure.
fn bpf_cost_figure(measuring: &Path, args: &[&str], key: &str) -> Result<f64> {
    let out = Command::new(measuring)
        .arg("bpf-cost")
        .args(args)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bpf-cost failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("  {}", text.trim());
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no {key} in bpf-cost output"))
}

/// A positive number from environment variable `name`, else `default`.
pub(crate) fn positive_env<T>(name: &str, default: T) -> T
where
    T: std::str::FromStr + PartialOrd + Default,
{
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > T::default())
        .unwrap_or(default)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The table walker against frame pointers, per emitted sample, on the same processes in
/// alternating rounds; then the tables' sizes and build times.
fn unwinding(measuring: &Path, split: &Path, dir: &Path) -> Result<()> {
    println!(
        "## User stack walkers ({HZ} Hz, one process per CPU, 5 alternating rounds of 4 s; BPF \
         time per emitted sample; bpftrace's per run of its program)"
    );
    let python = Path::new("/usr/bin/python3");
    let script = dir.join("loop.py");
    std::fs::write(
        &script,
        "import sys, time\n\
         def work():\n    d = {}\n    for i in range(2000):\n        \
         d[str(i)] = [j * 2 for j in range(20)]\n    return sorted(d.items())[:3]\n\
         end = time.time() + float(sys.argv[1])\n\
         while time.time() < end:\n    work()\n",
    )?;
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    println!(
        "| workload | tables (ns) | frame pointers (ns) | bpftrace ustack (ns) | tables / fp | \
         tables / bpftrace |\n|---|---|---|---|---|---|"
    );
    for (name, program, args) in [
        (
            "Debian python3 (no frame pointers)",
            python,
            vec![script.display().to_string(), "150".to_owned()],
        ),
        ("split (frame pointers)", split, vec!["150".to_owned()]),
    ] {
        let children: Vec<Child> = (0..cpus)
            .map(|_| Command::new(program).args(&args).spawn())
            .collect::<Result<_, _>>()
            .with_context(|| format!("starting {}", program.display()))?;
        let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
        let mut figures = [Vec::new(), Vec::new(), Vec::new()];
        for _round in 0..5 {
            for (walker, out) in ["tables", "fp"].iter().zip(figures.iter_mut()) {
                let mut args = vec!["--duration", "4s", "--frequency", HZ, "--unwind", walker];
                for pid in &pids {
                    args.extend(["--pid", pid]);
                }
                out.push(bpf_cost_figure(measuring, &args, "ns_per_emitted")?);
            }
            figures[2].push(bpftrace_cost(&pids)?);
        }
        stop(children);
        // Each round's runs are seconds apart: their ratios cancel most of the host's drift,
        // which on a shared machine moves single runs by 2x from one day to the next.
        let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        let [tables, fp, bpftrace] = figures;
        let (by_fp, by_bpftrace) = (ratio(&tables, &fp), ratio(&tables, &bpftrace));
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {by_fp:.2} | {by_bpftrace:.2} |",
            median(tables),
            median(fp),
            median(bpftrace)
        );
    }
    let out = Command::new(measuring)
        .args(["bench-tables", "--host"])
        .args(["--binary", "/usr/lib/x86_64-linux-gnu/libc.so.6"])
        .args(["--binary", "/usr/bin/python3", "--binary", "/usr/bin/perl"])
        .output()?;
    if !out.status.success() {
        bail!(
            "bench-tables failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let processes = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    println!(
        "Unwind tables (12-byte rows; the host line: every executable file mapped by the {processes} processes running now):"
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    println!();
    Ok(())
}

/// BPF time per run of bpftrace's frame-pointer stacks (`ustack`, `kstack`) on `pids`, over
/// 4 s: the reference the issue set the walker's cost against (bpftrace's stacks "about
/// 2,000 ns here", so the target of 3,000 ns is 1.5x bpftrace on the same run). Read from the
/// program's fdinfo with `kernel.bpf_stats_enabled` on. Runs on other tasks, filtered out by the
/// predicate, are counted too: with every CPU busy with `pids` they are few.
fn bpftrace_cost(pids: &[String]) -> Result<f64> {
    let filter = pids
        .iter()
        .map(|p| format!("pid == {p}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let script = format!("profile:hz:{HZ} /{filter}/ {{ @[kstack, ustack] = count(); }}");
    let ((t0, n0), (t1, n1)) = with_bpf_stats(|| {
        let child = Command::new("bpftrace")
            .args(["-q", "-e", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let pid = child.id();
        // Attaching (bpftrace compiles its script first), then the measured window.
        std::thread::sleep(Duration::from_secs(2));
        let start = prog_stats(pid);
        std::thread::sleep(Duration::from_secs(4));
        let end = prog_stats(pid);
        stop(vec![child]);
        Ok((start?, end?))
    })?;
    if n1 <= n0 {
        bail!("bpftrace's program did not run");
    }
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

/// Runs `work` with the kernel's BPF run-time accounting (`kernel.bpf_stats_enabled`) on, put
/// back as it was afterwards, failed or not.
pub(crate) fn with_bpf_stats<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = std::fs::read_to_string(stats).context("reading kernel.bpf_stats_enabled")?;
    std::fs::write(stats, "1").context("turning kernel.bpf_stats_enabled on")?;
    let result = work();
    let restored =
        std::fs::write(stats, before.trim()).context("restoring kernel.bpf_stats_enabled");
    // The work's own failure is the one worth reporting; the restore's only when it alone failed.
    let value = result?;
    restored?;
    Ok(value)
}

/// (`run_time_ns`, `run_cnt`) summed over the BPF programs process `pid` holds open.
pub(crate) fn prog_stats(pid: u32) -> Result<(u64, u64)> {
    let mut sums = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        if let (Some(t), Some(n)) = (field("run_time_ns:"), field("run_cnt:")) {
            sums = (sums.0 + t, sums.1 + n);
        }
    }
    Ok(sums)
}

/// SIGINT, wait, and read the child's CPU time and peak RSS from wait4.
pub(crate) fn interrupt_and_measure(child: Child) -> Result<(f64, i64)> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the duration of the call; the child is ours and not yet reaped.
    let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child); // already reaped
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok((secs(usage.ru_utime) + secs(usage.ru_stime), usage.ru_maxrss))
}

/// Kills and reaps the workload (killing one that has exited already succeeds).
pub(crate) fn stop(children: Vec<Child>) {
    for mut c in children {
        stop_one(&mut c);
    }
}

/// Kills and reaps one child, saying what failed.
pub(crate) fn stop_one(c: &mut Child) {
    if let Err(e) = c.kill() {
        eprintln!("killing workload {}: {e}", c.id());
    }
    if let Err(e) = c.wait() {
        eprintln!("reaping workload {}: {e}", c.id());
    }
}
