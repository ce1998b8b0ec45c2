//! Project tasks: `cargo xtask setup | test | bench`.
//!
//! - `setup` installs, only when missing, what building and testing need on a fresh Debian
//!   machine (see ../shared/ENVIRONMENT.md): LLVM 22 for bpf-linker, the nightly's rust-src,
//!   bpf-linker 0.13.0, clang (test workloads), perf and bpftrace (cross-checks and benchmarks).
//! - `test` is the README's test command and what `.ci/run` runs: setup, fmt, clippy, build, all
//!   tests (privileged ones included: run it as root).
//! - `bench` measures the sampler side by side with perf and bpftrace (see `bench.rs`).

mod bench;
mod setup;

use std::process::Command;

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("test") => test(),
        Some("install") => install(),
        Some("bench") => {
            setup::run()?;
            bench::run(&args[1..])
        }
        _ => {
            eprintln!("usage: cargo xtask <setup|test|bench|install>");
            std::process::exit(2);
        }
    }
}

/// The full test run: the README's second command.
fn test() -> Result<()> {
    setup::run()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ])?;
    // The eBPF programs, linted for the target they are built for (host clippy sees a stub).
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
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(workspace().join("profiler-ebpf"))
        // The outer (stable) cargo's compiler settings must not leak into the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", workspace().join("target/ebpf-clippy")))?;
    cargo(&["build", "--release"])?;
    cargo(&["test", "--workspace", "--release"])?;
    Ok(())
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
    std::fs::copy(&binary, "/usr/local/bin/profiler")
        .context("installing /usr/local/bin/profiler")?;
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo).args(args).current_dir(workspace()))
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
