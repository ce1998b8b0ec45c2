//! Project tasks: `cargo xtask setup | test | bench | vm | install | dist`.
//!
//! - `setup` installs, only when missing, what building and testing need on a fresh Debian
//!   machine (see ../shared/ENVIRONMENT.md): LLVM 22 for bpf-linker, the nightly's rust-src,
//!   bpf-linker 0.13.0, clang (test workloads), perf and bpftrace (cross-checks and benchmarks).
//! - `test` is the README's test command and what `.ci/run` runs: setup, fmt, clippy, build, all
//!   tests (privileged ones included: run it as root). Clippy runs twice, on the shipped build
//!   and on the measurement-only `bench` feature build (host and eBPF), so code behind the
//!   feature cannot rot. `dist` builds the static binary and packages, which the tests check.
//!   Then the kernel matrix (`vm.rs`) with the static binary: the smoke suite on the host's kernel
//!   and on Debian's 5.10, 6.1 and 6.12 booted under QEMU, each kernel counted as one test. Its
//!   last stdout line is the totals, `N passed, M failed`: cargo test's `test result:` lines plus
//!   the matrix.
//! - `bench` measures the sampler side by side with perf and bpftrace (see `bench.rs`).
//! - `vm` runs the kernel matrix alone, on the kernels asked for (see `vm.rs`).
//! - `dist` builds what installs without a toolchain: a static binary, a tarball, a Debian
//!   package (see `dist.rs`).

mod bench;
mod busy;
mod dist;
mod overhead;
mod scale;
mod setup;
mod steady;
mod vm;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

fn main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup::run().map(|()| ExitCode::SUCCESS),
        Some("test") => test(),
        Some("install") => install().map(|()| ExitCode::SUCCESS),
        Some("dist") => {
            setup::run()?;
            dist::run_dist().map(|()| ExitCode::SUCCESS)
        }
        Some("bench") => {
            setup::run()?;
            bench::run(&args[1..]).map(|()| ExitCode::SUCCESS)
        }
        Some("vm") => {
            setup::run()?;
            Ok(if vm::command(&args[1..])? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        _ => {
            eprintln!("usage: cargo xtask <setup|test|bench|vm|install|dist>");
            Ok(ExitCode::from(2))
        }
    }
}

/// The full test run: the README's second command.
///
/// A failing step before the tests fails the run as an error. Failing tests end it with the
/// totals line and a failure exit code but no error message after it, so that the totals stay
/// the last line even where stdout and stderr are merged (CI logs).
fn test() -> Result<ExitCode> {
    setup::run()?;
    cargo(&["fmt", "--all", "--check"])?;
    host_clippy(&[])?;
    // Measurement-only code (hidden subcommands, extra eBPF programs) is behind the `bench`
    // feature, which the shipped binary leaves out: lint it too.
    host_clippy(&["--features", "profiler-daemon/bench"])?;
    ebpf_clippy(&[])?;
    ebpf_clippy(&["--features", "bench"])?;
    cargo(&["build", "--release"])?;
    // The static binary, tarball and package (their tests are in the suites below), and the
    // binary the kernel matrix runs.
    dist::run_dist()?;
    // No fail-fast: the totals then cover every suite, not just those before the first failure.
    let (mut totals, status) = cargo_test(&["test", "--workspace", "--release", "--no-fail-fast"])?;
    // Each kernel is one test: booted, the smoke suite passed on it, or not.
    let kernels = vm::matrix(vm::CI_MATRIX, &dist::dist_dir().join("profiler"));
    let failed_kernels = kernels.iter().filter(|k| !k.passed).count() as u64;
    totals.passed += kernels.len() as u64 - failed_kernels;
    totals.failed += failed_kernels;
    let ok = status.success() && totals.failed == 0;
    if !ok {
        eprintln!(
            "error: the tests failed (cargo test: {status}; kernels failed: {failed_kernels})"
        );
    }
    // Whatever went to stderr must not land after the totals line in a merged log.
    std::io::stderr().flush()?;
    println!("{} passed, {} failed", totals.passed, totals.failed);
    std::io::stdout().flush()?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Clippy on the whole workspace for the host, with `extra` cargo arguments.
fn host_clippy(extra: &[&str]) -> Result<()> {
    let mut args = vec!["clippy", "--workspace", "--all-targets", "--release"];
    args.extend_from_slice(extra);
    args.extend(["--", "-D", "warnings"]);
    cargo(&args)
}

/// Clippy on the eBPF programs, with `extra` cargo arguments, for the target they are built for (host clippy sees a stub).
fn ebpf_clippy(extra: &[&str]) -> Result<()> {
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--release",
        ])
        .args(extra)
        .args(["--", "-D", "warnings"])
        .current_dir(workspace().join("profiler-ebpf"))
        // The outer (stable) cargo's compiler settings must not leak into the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", workspace().join("target/ebpf-clippy")))
}

/// Test counts summed over every `test result:` line of a cargo test run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Adds the counts of `line` if it is a libtest summary line.
    fn add_line(&mut self, line: &str) {
        if let Some((passed, failed)) = parse_test_result(line) {
            self.passed += passed;
            self.failed += failed;
        }
    }
}

/// `(passed, failed)` from a libtest summary line such as
/// `test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; ...`.
/// Ignored tests are not counted. Only a line that starts with the summary counts (libtest
/// always starts it on a line of its own), so that a test's own output is not mistaken for one.
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim_end().strip_prefix("test result: ")?;
    let rest = rest
        .strip_prefix("ok. ")
        .or_else(|| rest.strip_prefix("FAILED. "))?;
    let mut passed = None;
    let mut failed = None;
    for field in rest.split(';') {
        let mut words = field.split_whitespace();
        let (Some(count), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        match what {
            "passed" => passed = count.parse().ok(),
            "failed" => failed = count.parse().ok(),
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// Runs cargo with `args` from the workspace root, passing its stdout through line by line as
/// it arrives while counting the tests (stderr is inherited). Returns the totals and cargo's
/// exit status.
fn cargo_test(args: &[&str]) -> Result<(Totals, ExitStatus)> {
    let mut cmd = Command::new(cargo_program());
    cmd.args(args)
        .current_dir(workspace())
        .stdout(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo's stdout is not piped")?;
    let shared = Arc::new(Mutex::new(Forwarded::default()));
    let reader = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || forward(stdout, &shared))
    };
    let status = child.wait().context("waiting for cargo test")?;
    // A process a test left running may hold the pipe open after cargo has exited: then do not
    // wait for it (cargo's own lines were written before it exited).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut forwarded = shared.lock().unwrap_or_else(PoisonError::into_inner);
    // Nothing may be forwarded after this point: the totals line comes last.
    forwarded.closed = true;
    if reader.is_finished() {
        match reader.join() {
            Ok(result) => result.context("forwarding cargo test's output")?,
            Err(_) => bail!("the thread forwarding cargo test's output panicked"),
        }
    } else {
        eprintln!("warning: a process left by the tests still holds cargo test's stdout");
    }
    Ok((forwarded.totals, status))
}

/// What the forwarding thread shares with the thread waiting for cargo.
#[derive(Default)]
struct Forwarded {
    totals: Totals,
    /// Set once the totals are taken; later lines are dropped.
    closed: bool,
}

/// Copies `from` to our stdout line by line, adding each line to the totals.
fn forward(from: ChildStdout, shared: &Mutex<Forwarded>) -> std::io::Result<()> {
    // Bytes, not strings: a test may print invalid UTF-8, which must pass through unchanged.
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let mut forwarded = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if forwarded.closed {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&line)?;
        out.flush()?;
        forwarded.totals.add_line(&String::from_utf8_lossy(&line));
    }
}

/// Puts the release binary, the example configuration (unless one exists) and the systemd unit
/// in place. Run `systemctl daemon-reload` afterwards.
fn install() -> Result<()> {
    let root = workspace();
    let binary = root.join("target/release/profiler");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release` first",
            binary.display()
        );
    }
    std::fs::create_dir_all("/etc/profiler").context("creating /etc/profiler (run as root)")?;
    std::fs::copy(&binary, dist::INSTALLED_BINARY)
        .with_context(|| format!("installing {}", dist::INSTALLED_BINARY))?;
    let config = std::path::Path::new("/etc/profiler/profiler.toml");
    if config.exists() {
        eprintln!("keeping the existing {}", config.display());
    } else {
        std::fs::copy(root.join("deploy/profiler.toml"), config)?;
    }
    std::fs::copy(
        root.join("deploy/systemd/profiler.service"),
        "/etc/systemd/system/profiler.service",
    )
    .context("installing the systemd unit")?;
    eprintln!("installed; now: systemctl daemon-reload && systemctl enable --now profiler");
    Ok(())
}

/// Runs cargo with `args` from the workspace root; fails on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_program())
        .args(args)
        .current_dir(workspace()))
}

/// The cargo that runs us (`CARGO`), else the one on `PATH`.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs a command, echoing it; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
#[must_use]
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[cfg(test)]
mod tests {
    use super::{Totals, parse_test_result};

    #[test]
    fn parses_ok_and_failed_summaries() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; \
                 finished in 1.02s\n"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 4 passed; 2 failed; 1 ignored; 0 measured; 5 filtered out; \
                 finished in 0.10s"
            ),
            Some((4, 2))
        );
    }

    #[test]
    fn ignores_other_lines() {
        for line in [
            "",
            "running 3 tests",
            "test sampler::tests::drains ... ok",
            "test result: ok",
            "    test result: ok. 1 passed; 0 failed; 0 ignored",
            "note: test result: ok. 1 passed; 0 failed",
            "test result: maybe. 1 passed; 0 failed",
            "test result: ok. many passed; 0 failed",
            "1 passed, 0 failed",
        ] {
            assert_eq!(parse_test_result(line), None, "{line:?}");
        }
    }

    #[test]
    fn sums_every_suite() {
        let output = "\
running 2 tests
test a ... ok
test b ... ignored

test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s

running 3 tests
test c ... ok
test d ... FAILED
test e ... FAILED

failures:

---- d stdout ----
  test result: ok. 99 passed; 0 failed

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

   Doc-tests profiler_common

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";
        let mut totals = Totals::default();
        for line in output.lines() {
            totals.add_line(line);
        }
        assert_eq!(
            totals,
            Totals {
                passed: 2,
                failed: 2
            }
        );
    }
}
