//! `cargo xtask bench busy`: the shipped daemon's memory and CPU on a busy host, the case its
//! users run it in. For `BUSY_SECONDS` (60) the host runs, all at once: clang compiling C++
//! with debug info, Debian's python3 and perl (no frame pointers) and xz at work, a shell
//! starting short processes (~100 a second), 200 idle processes of python3, perl and sleep, and a
//! 139 MB binary with DWARF running hot (the `bench` build's `bench-scale`, naming and encoding
//! 5,000 stacks over 100 fresh processes, again and again). Meanwhile `profiler run` with its
//! defaults (unwind tables, every process) samples at `BUSY_HZ` (99) and exports to a real OTLP
//! receiver; its RSS is read every second, its CPU counted after its start-up (reported apart).

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::bench::{interrupt_and_measure, positive_env, status_kib};
use crate::overhead::{Sink, cpu_seconds, map_memory_kib};

/// Time given to the daemon to load and attach before its CPU is counted (as `bench overhead`).
const SETTLE: Duration = Duration::from_secs(4);

/// The busy host's programs, each in a process group of its own so that a shell's children go
/// with it.
struct Load {
    groups: Vec<Child>,
    hot_stop: Arc<AtomicBool>,
    hot: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(measuring: &Path, dir: &Path) -> Result<Self> {
        let workloads = crate::workspace().join("tests/workloads");
        let perl_text = "my %h; while (1) { $h{$_ % 997} .= 'x' for 1 .. 5000; %h = () }";
        let python_text = "d = {}\nwhile True:\n    for i in range(5000):\n        \
                           d[i % 997] = str(i) * 3\n    d.clear()\n";
        let scripts = [
            format!(
                "while :; do clang++ -O2 -g -c {} -o {}/busy.o; done",
                workloads.join("inlined.cpp").display(),
                dir.display()
            ),
            format!("exec /usr/bin/python3 -c '{python_text}'"),
            format!("exec /usr/bin/perl -e \"{perl_text}\""),
            "while :; do xz -6 -T1 -c /usr/bin/perl > /dev/null; done".to_owned(),
            "while :; do /bin/true; /bin/true; /bin/true; sleep 0.02; done".to_owned(),
            // 200 idle processes: many images and libraries for the daemon to know.
            "for i in $(seq 70); do /usr/bin/python3 -c 'import time; time.sleep(3600)' & \
             /usr/bin/perl -e 'sleep 3600' & sleep 3600 & done; wait"
                .to_owned(),
        ];
        let mut groups = Vec::new();
        for script in &scripts {
            let child = Command::new("sh")
                .args(["-c", script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting `{script}`"))?;
            groups.push(child);
        }
        let hot_stop = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&hot_stop);
        let measuring = measuring.to_owned();
        let hot = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ran = Command::new(&measuring)
                    .args(["bench-scale", "--processes", "100", "--stacks", "5000"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if let Err(e) = ran {
                    eprintln!("bench-scale as the hot binary: {e}");
                    return;
                }
            }
        });
        Ok(Self {
            groups,
            hot_stop,
            hot: Some(hot),
        })
    }

    fn stop(mut self) {
        for child in &self.groups {
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: signalling a process group this bench started.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
        crate::bench::stop(std::mem::take(&mut self.groups));
        self.hot_stop.store(true, Ordering::Relaxed);
        if let Some(hot) = self.hot.take()
            && hot.join().is_err()
        {
            eprintln!("the hot binary's thread panicked");
        }
    }
}

/// Processes on the host now.
fn processes() -> usize {
    std::fs::read_dir("/proc").map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .count()
    })
}

/// Runs the scenario; returns its figures as JSON.
pub(crate) fn run(shipped: &Path, measuring: &Path, sink_bin: &Path, dir: &Path) -> Result<Value> {
    let seconds: u64 = positive_env("BUSY_SECONDS", 60);
    let hz: u64 = positive_env("BUSY_HZ", 99);
    println!(
        "## Busy host: `profiler run -F {hz}` (defaults otherwise) for {seconds} s beside clang, \
         python3, perl, xz, process churn, 200 idle processes and a hot 139 MB DWARF binary"
    );
    let load = Load::start(measuring, dir)?;
    let result = measure(shipped, sink_bin, hz, seconds);
    load.stop();
    result
}

fn measure(shipped: &Path, sink_bin: &Path, hz: u64, seconds: u64) -> Result<Value> {
    std::thread::sleep(Duration::from_secs(3));
    let sink = Sink::start(sink_bin)?;
    // `BUSY_WRAPPER=heaptrack` (or another wrapper that execs its arguments) to see what holds
    // the memory; the RSS figures are then the wrapper's.
    let program = match std::env::var("BUSY_WRAPPER") {
        Ok(wrapper) => {
            let mut c = Command::new(wrapper);
            c.arg(shipped);
            c
        }
        Err(_) => Command::new(shipped),
    };
    let daemon = sink
        .run_command(program, &["-F", &hz.to_string()])
        .spawn()
        .context("starting profiler run")?;
    let pid = daemon.id();
    // Start-up (loading and verifying the BPF programs: a second or two of CPU) is reported
    // apart: spread over a 60-s run it would read as a steady cost it is not.
    std::thread::sleep(SETTLE);
    let startup_cpu_s = cpu_seconds(pid);
    let started = Instant::now();
    let (mut peak_kib, mut most_processes, mut rss_each_s) = (0.0_f64, 0, Vec::new());
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let rss = status_kib(pid, "VmRSS:");
        peak_kib = peak_kib.max(rss);
        rss_each_s.push(rss / 1024.0);
        most_processes = most_processes.max(processes());
    }
    let cpu_pct = 100.0 * (cpu_seconds(pid) - startup_cpu_s) / started.elapsed().as_secs_f64();
    let (anon, file) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
    let maps = map_memory_kib(pid);
    // A wrapper (heaptrack's shell script) waits for the daemon without passing signals on:
    // the daemon, its child, is interrupted itself.
    if std::env::var_os("BUSY_WRAPPER").is_some() {
        interrupt_children_named(pid, "profiler");
    }
    let (_, max_rss_kib) = interrupt_and_measure(daemon)?;
    let (bytes, samples) = sink.exported_after(0, "profiler run")?;
    drop(sink);
    let peak = peak_kib.max(max_rss_kib as f64) / 1024.0;
    println!(
        "| processes (most) | daemon CPU (start-up) | peak RSS | RSS at end (anon + file) | \
         BPF maps | exported samples (bytes) |\n|---|---|---|---|---|---|"
    );
    println!(
        "| {most_processes} | {cpu_pct:.2}% of a core ({startup_cpu_s:.1} s) | {peak:.1} MiB | \
         {:.1} + {:.1} MiB | {:.1} MiB | {samples} ({bytes}) |\n",
        anon / 1024.0,
        file / 1024.0,
        maps / 1024.0
    );
    Ok(json!({
        "hz": hz, "seconds": seconds, "processes": most_processes, "daemon_cpu_pct": cpu_pct,
        "startup_cpu_s": startup_cpu_s,
        "peak_rss_mib": peak, "rss_anon_mib": anon / 1024.0, "rss_file_mib": file / 1024.0,
        "bpf_maps_mib": maps / 1024.0, "exported_samples": samples, "export_bytes": bytes,
        "rss_mib_each_second": rss_each_s,
    }))
}

/// Sends SIGINT to the children of `parent` whose name is `comm`.
fn interrupt_children_named(parent: u32, comm: &str) {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default();
    for pid in children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm {
            // SAFETY: signalling a process of this bench's own making.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    }
}
