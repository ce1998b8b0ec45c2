//! Idempotent installation of the build and test prerequisites.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run as exec;

/// Debian packages: LLVM 22 (bpf-linker links against it), clang (test workloads with frame
/// pointers), perf and bpftrace (the peers the tests and benchmarks compare against), protoc
/// (an independent decoder of our pprof output), and for the kernel matrix (`cargo xtask vm`)
/// QEMU, kmod (depmod for the guests' modules) and a static busybox (virtme-ng's initramfs).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "clang",
    "linux-perf",
    "bpftrace",
    "protobuf-compiler",
    // A real browser for the flamegraph tests (driven through WebDriver), and Go for `go tool
    // pprof`, the reference reader of the pprof output.
    "chromium",
    "chromium-driver",
    "golang-go",
    // Debian's xz: a busy, stripped library (liblzma) for the flamegraph tests.
    "xz-utils",
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    // `cargo xtask dist`: musl-gcc for the C parts of the static build (ring), objcopy.
    "musl-tools",
    "binutils",
    // Usually present already: openssl (test certificates), systemd (systemd-analyze),
    // util-linux (setpriv, unshare), the archive keys (the kernel matrix's own apt lists).
    "openssl",
    "systemd",
    "util-linux",
    "debian-archive-keyring",
];

/// Python packages for the tests: the official OpenTelemetry protobuf bindings (proto v1.10).
/// `kubernetes-validate` checks the manifests against the Kubernetes API schemas. virtme-ng
/// boots the kernel matrix's guests (pinned: its command line and guest init are what
/// `vm.rs` was tested with).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("opentelemetry-proto", ">=1.43"),
    ("kubernetes-validate", ">=1.30"),
    ("virtme-ng", "==1.42"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn run() -> Result<()> {
    apt_packages()?;
    python_packages()?;
    rust_src()?;
    musl_target()?;
    bpf_linker()?;
    eprintln!("setup: all prerequisites present");
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root (apt-get install)",
            missing.join(" ")
        );
    }
    // A fresh machine's package lists may be stale: LLVM 22 comes from bookworm-security.
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn python_packages() -> Result<()> {
    // pip itself skips a requirement that is already satisfied (no download).
    for (name, spec) in PYTHON_PACKAGES {
        exec(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            &format!("{name}{spec}"),
        ]))?;
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed (the nightly toolchain builds the eBPF programs)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The static build's target (`cargo xtask dist`), for the toolchain that builds the daemon.
fn musl_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::workspace())
        .output()
        .context("rustup is needed")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == crate::dist::MUSL)
    {
        return Ok(());
    }
    exec(
        Command::new("rustup")
            .args(["target", "add", crate::dist::MUSL])
            .current_dir(crate::workspace()),
    )
}

fn bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker").arg("--version").output();
    if current.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    exec(
        Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            // Without it the build cannot find libLLVM ("unable to find library -lLLVM").
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}
