//! Helpers for the integration tests: privilege gate, the `profiler` binary, workloads built
//! with clang and frame pointers, and folded-stack arithmetic.
#![allow(
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    reason = "test support: failing loudly (panics, unwraps) is the point here"
)]

pub mod browser;
pub mod cgroups;
pub mod http;
pub mod kube_api;
pub mod otlp;
pub mod receiver;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Privileged tests take this lock: they sample the whole machine, so running two at once on a
/// 2-core machine would make each other's figures noisy.
static MACHINE: Mutex<()> = Mutex::new(());

/// Returns the machine lock when the test can use the kernel; `None` (after printing why) when it
/// must skip. Under `CI=true` a missing privilege is a failure, never a skip.
#[must_use]
pub fn privileged(test: &str) -> Option<MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: privileged test must run as root under CI=true"
        );
        eprintln!("skipping {test}: needs root (BPF, perf events); run the tests as root");
        return None;
    }
    Some(
        MACHINE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `profiler` binary under test: `$PROFILER_BIN`, else `target/release/profiler` (built by
/// `cargo xtask test` before the tests run).
#[must_use]
pub fn profiler_bin() -> PathBuf {
    let path = std::env::var_os("PROFILER_BIN").map_or_else(
        || workspace().join("target/release/profiler"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --release` first (cargo xtask test does)",
        path.display()
    );
    path
}

/// clang's flags for workloads with complete frame-pointer stacks (and DWARF).
pub const CLANG_FLAGS: [&str; 7] = [
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-optimize-sibling-calls",
    // Else clang moves the frame setup of a leaf function past its hot loop.
    "-mllvm",
    "-enable-shrink-wrap=false",
];

/// Builds `tests/workloads/NAME.c` (or `.cpp`) with clang (clang++) and complete frame pointers
/// into `dir`.
#[must_use]
pub fn build_workload(name: &str, dir: &Path) -> PathBuf {
    let c = workspace()
        .join("tests/workloads")
        .join(format!("{name}.c"));
    let (src, compiler) = if c.exists() {
        (c, "clang")
    } else {
        let cpp = workspace()
            .join("tests/workloads")
            .join(format!("{name}.cpp"));
        (cpp, "clang++")
    };
    let out = dir.join(name);
    let status = Command::new(compiler)
        .args(CLANG_FLAGS)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("clang runs (cargo xtask setup installs it)");
    assert!(status.success(), "clang failed on {}", src.display());
    out
}

/// The probe lines `profiler check` prints (`profiler_daemon::bpf::Feature::name`).
pub const PROBES: [&str; 8] = [
    "ring buffer",
    "bpf_get_stack",
    "btf",
    "tracepoints",
    "tail calls",
    "map-in-map",
    "task_pt_regs",
    "bpf_loop",
];

/// Runs clang with the workloads' frame-pointer flags (`CLANG_FLAGS`) and `args`.
pub fn clang(args: &[&str]) {
    let status = Command::new("clang")
        .args(CLANG_FLAGS)
        .args(args)
        .status()
        .expect("clang runs (cargo xtask setup installs it)");
    assert!(status.success(), "clang {args:?}");
}

/// A child process killed when dropped.
pub struct Workload(pub Child);

impl Workload {
    #[must_use]
    pub fn spawn(bin: &Path, args: &[&str]) -> Self {
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("workload starts");
        Self(child)
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Already gone is fine: the point is that it does not outlive the test.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Runs `profiler ARGS` and returns (exit code, stdout, stderr).
#[must_use]
pub fn run_profiler(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(profiler_bin())
        .args(args)
        .output()
        .expect("profiler runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `profiler ARGS` with extra environment variables, output captured.
#[must_use]
pub fn spawn_profiler(args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new(profiler_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("profiler starts")
}

/// Sends SIGTERM and waits; returns (exit code, stdout, stderr, time from signal to exit).
#[must_use]
pub fn terminate(child: Child) -> (i32, String, String, std::time::Duration) {
    let start = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let out = child.wait_with_output().expect("profiler exits");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

/// Parses folded text into (frames root first, count).
#[must_use]
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("`stack count`");
            (
                stack.split(';').map(str::to_owned).collect(),
                count.parse().expect("count is a number"),
            )
        })
        .collect()
}

/// Share (in percent) of each function among the stacks that contain one of `functions`,
/// attributing a stack to the leaf-most of them.
#[must_use]
pub fn split(stacks: &[(Vec<String>, u64)], functions: &[&str]) -> (HashMap<String, f64>, u64) {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    for (frames, count) in stacks {
        let hit = frames.iter().rev().find_map(|f| {
            functions
                .iter()
                .find(|&&name| f == name || f.starts_with(&format!("{name} ")))
        });
        if let Some(name) = hit {
            *counts.entry((*name).to_owned()).or_default() += count;
            total += count;
        }
    }
    let shares = functions
        .iter()
        .map(|&f| {
            let n = counts.get(f).copied().unwrap_or(0);
            (
                f.to_owned(),
                if total == 0 {
                    0.0
                } else {
                    100.0 * n as f64 / total as f64
                },
            )
        })
        .collect();
    (shares, total)
}

/// Whether a folded frame is a stand-in for an unnamed address: `[libfoo.so]`, `[kernel]`,
/// `[unknown]` (addresses grouped by file, the default) or `[unknown] libfoo.so+0x1a2b`
/// (`--keep-addresses`). No symbol starts with `[`.
#[must_use]
pub fn unnamed(frame: &str) -> bool {
    frame.starts_with('[')
}

/// Samples of stacks whose first frame is `process`, and how many of them have a named leaf
/// user frame (not `[libfoo.so]`, `[unknown] ...`).
#[must_use]
pub fn named_ratio(stacks: &[(Vec<String>, u64)], process: &str) -> (u64, u64) {
    let (mut total, mut named) = (0, 0);
    for (frames, count) in stacks {
        if frames.first().map(String::as_str) != Some(process) {
            continue;
        }
        total += count;
        let leaf_user = frames[1..].iter().rev().find(|f| !f.ends_with("_[k]"));
        if leaf_user.is_some_and(|f| !unnamed(f)) {
            named += count;
        }
    }
    (total, named)
}

/// Records with `profiler record ARGS -o DIR/NAME.folded` and returns the parsed stacks.
#[must_use]
pub fn record_folded(dir: &Path, name: &str, args: &[&str]) -> Vec<(Vec<String>, u64)> {
    record_folded_with_summary(dir, name, args).0
}

/// `record_folded`, with the summary `record` printed.
#[must_use]
pub fn record_folded_with_summary(
    dir: &Path,
    name: &str,
    args: &[&str],
) -> (Vec<(Vec<String>, u64)>, String) {
    let (stacks, summary, _) = record_folded_with_log(dir, name, args);
    (stacks, summary)
}

/// `record_folded_with_summary`, with what `record` logged (stderr) as well.
#[must_use]
pub fn record_folded_with_log(
    dir: &Path,
    name: &str,
    args: &[&str],
) -> (Vec<(Vec<String>, u64)>, String, String) {
    let out = dir.join(format!("{name}.folded"));
    let mut full: Vec<&str> = vec!["record"];
    full.extend_from_slice(args);
    let out_str = out.to_str().unwrap().to_owned();
    full.extend_from_slice(&["-o", &out_str]);
    let (code, stdout, stderr) = run_profiler(&full);
    assert_eq!(code, 0, "profiler record failed: {stderr}");
    println!("{name}: {stdout}");
    (
        parse_folded(&std::fs::read_to_string(&out).unwrap()),
        stdout,
        stderr,
    )
}

/// Folds `perf script` output of `perf.data` with inferno, keeping only process `pid`'s stacks
/// (with the process frame renamed to plain `comm`, like ours).
#[must_use]
pub fn perf_folded_for_pid(perf_data: &Path, pid: u32) -> Vec<(Vec<String>, u64)> {
    let script = Command::new("perf")
        .args([
            "script",
            "--no-inline",
            "-F",
            "comm,pid,tid,time,event,ip,sym,dso",
            "-i",
        ])
        .arg(perf_data)
        .output()
        .expect("perf script runs");
    assert!(
        script.status.success(),
        "perf script failed: {}",
        String::from_utf8_lossy(&script.stderr)
    );
    let mut options = inferno::collapse::perf::Options::default();
    options.include_pid = true;
    // Kernel frames marked `_[k]`, as ours are.
    options.annotate_kernel = true;
    let mut folded = Vec::new();
    inferno::collapse::Collapse::collapse(
        &mut inferno::collapse::perf::Folder::from(options),
        &script.stdout[..],
        &mut folded,
    )
    .expect("inferno folds perf script output");
    let text = String::from_utf8(folded).expect("utf-8");
    let suffix = format!("-{pid}");
    parse_folded(&text)
        .into_iter()
        .filter_map(|(mut frames, count)| {
            let first = frames.first_mut()?;
            let comm = first.strip_suffix(&suffix)?.to_owned();
            *first = comm;
            Some((frames, count))
        })
        .collect()
}

/// Resident memory of a process, in KiB (0 once it is gone).
#[must_use]
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process.
#[must_use]
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}
