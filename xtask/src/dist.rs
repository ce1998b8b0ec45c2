//! `cargo xtask dist`: what is installed without a toolchain, in `target/dist/`:
//! - `profiler`: a static `x86_64` binary (musl, with musl's own allocator: measured against
//!   glibc's and mimalloc in the README), stripped, with a `.gnu_debuglink` to `profiler.debug`
//!   (its debug info);
//! - `profiler-VERSION-x86_64-linux.tar.gz`: the binary, the README, the deploy files and the
//!   licences (ours, and every crate's that is linked in);
//! - `profiler_VERSION_amd64.deb`: `/usr/bin/profiler`, the systemd unit and
//!   `/etc/profiler/profiler.toml` (a conffile: kept on upgrade, removed on purge);
//! - `SHA256SUMS` over those.
//!
//! Every install method puts the binary at `/usr/bin/profiler`, the path the unit, the image
//! recipe and `cargo xtask install` use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run, workspace};

pub(crate) const MUSL: &str = "x86_64-unknown-linux-musl";
/// Where every install method puts the binary.
pub(crate) const INSTALLED_BINARY: &str = "/usr/bin/profiler";

/// The output directory.
pub(crate) fn dist_dir() -> PathBuf {
    workspace().join("target/dist")
}

pub(crate) fn run_dist() -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    cargo(&[
        "build",
        "--release",
        "-p",
        "profiler-daemon",
        "--target",
        MUSL,
    ])?;
    let dir = dist_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let built = workspace().join(format!("target/{MUSL}/release/profiler"));
    let binary = dir.join("profiler");
    split_debug(&built, &binary)?;

    let tarball = format!("profiler-{version}-x86_64-linux.tar.gz");
    tar(&dir, &binary, version, &tarball)?;
    let deb = format!("profiler_{version}_amd64.deb");
    debian_package(&dir, &binary, version, &deb)?;
    let sums = Command::new("sha256sum")
        .args(["profiler", "profiler.debug", &tarball, &deb])
        .current_dir(&dir)
        .output()
        .context("running sha256sum")?;
    if !sums.status.success() {
        bail!("sha256sum failed");
    }
    std::fs::write(dir.join("SHA256SUMS"), &sums.stdout)?;
    eprintln!("dist: {}", dir.display());
    Ok(())
}

/// `out`: `built` without debug info and with a link to `out.debug`, which gets the debug info.
fn split_debug(built: &Path, out: &Path) -> Result<()> {
    let debug = out.with_extension("debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(built)
        .arg(&debug))?;
    run(Command::new("objcopy")
        .args(["--strip-all", "--add-gnu-debuglink"])
        .arg(&debug)
        .arg(built)
        .arg(out))?;
    Ok(())
}

/// The files shipped beside the binary, as (path in the workspace, path in the package).
const DOCS: [(&str, &str); 9] = [
    ("README.md", "README.md"),
    ("deploy/profiler.toml", "deploy/profiler.toml"),
    (
        "deploy/systemd/profiler.service",
        "deploy/systemd/profiler.service",
    ),
    ("deploy/Containerfile", "deploy/Containerfile"),
    (
        "deploy/kubernetes/namespace.yaml",
        "deploy/kubernetes/namespace.yaml",
    ),
    (
        "deploy/kubernetes/serviceaccount.yaml",
        "deploy/kubernetes/serviceaccount.yaml",
    ),
    ("deploy/kubernetes/rbac.yaml", "deploy/kubernetes/rbac.yaml"),
    (
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes/configmap.yaml",
    ),
    (
        "deploy/kubernetes/daemonset.yaml",
        "deploy/kubernetes/daemonset.yaml",
    ),
];

fn tar(dir: &Path, binary: &Path, version: &str, name: &str) -> Result<()> {
    let stage = dir.join(format!("profiler-{version}"));
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(binary, stage.join("profiler"))?;
    for (from, to) in DOCS {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().context("a parent")?)?;
        std::fs::copy(workspace().join(from), &to).with_context(|| format!("copying {from}"))?;
    }
    licences(&stage)?;
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "-czf", name])
        .arg(format!("profiler-{version}"))
        .current_dir(dir))?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

/// `LICENSE-MIT`, `LICENSE-APACHE` (the project is `MIT OR Apache-2.0`) and
/// `THIRD-PARTY-LICENSES`: every crate linked into the binary, its version and licence.
fn licences(dir: &Path) -> Result<()> {
    std::fs::copy(workspace().join("LICENSE-MIT"), dir.join("LICENSE-MIT"))?;
    std::fs::copy(
        workspace().join("LICENSE-APACHE"),
        dir.join("LICENSE-APACHE"),
    )?;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args([
            "tree",
            "-p",
            "profiler-daemon",
            "-e",
            "normal",
            "--target",
            MUSL,
            "--prefix",
            "none",
            "--format",
            "{p}  {l}",
        ])
        .current_dir(workspace())
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.replace(" (*)", ""))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines.sort();
    lines.dedup();
    let text = format!(
        "Crates linked into the profiler binary, with their licences (from their manifests).\n\
         Their full texts are in each crate's source, at crates.io.\n\n{}\n",
        lines.join("\n")
    );
    std::fs::write(dir.join("THIRD-PARTY-LICENSES"), text)?;
    Ok(())
}

/// The Debian package: the binary, the unit, the configuration as a conffile, the docs.
fn debian_package(dir: &Path, binary: &Path, version: &str, name: &str) -> Result<()> {
    let root = dir.join("deb-root");
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let to = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().context("a parent")?)?;
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let ws = workspace();
    put(binary, INSTALLED_BINARY, 0o755)?;
    put(
        &ws.join("deploy/systemd/profiler.service"),
        "/usr/lib/systemd/system/profiler.service",
        0o644,
    )?;
    put(
        &ws.join("deploy/profiler.toml"),
        "/etc/profiler/profiler.toml",
        0o644,
    )?;
    put(
        &ws.join("README.md"),
        "/usr/share/doc/profiler/README.md",
        0o644,
    )?;
    put(
        &ws.join("LICENSE-MIT"),
        "/usr/share/doc/profiler/copyright",
        0o644,
    )?;
    let control = root.join("DEBIAN");
    std::fs::create_dir_all(&control)?;
    let size_kib = std::fs::metadata(binary)?.len() / 1024;
    std::fs::write(
        control.join("control"),
        format!(
            "Package: profiler\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: profiler developers <profiler@example.invalid>\n\
             Installed-Size: {size_kib}\n\
             Section: devel\n\
             Priority: optional\n\
             Homepage: https://example.invalid/profiler\n\
             Description: system-wide eBPF sampling CPU profiler (OTLP profiles)\n \
             Samples every CPU's kernel and user stacks with eBPF, names frames on the host and\n \
             exports OpenTelemetry profiles to Grafana Pyroscope or an OpenTelemetry Collector;\n \
             `profiler record` writes a flamegraph. A static binary: no dependencies.\n"
        ),
    )?;
    std::fs::write(control.join("conffiles"), "/etc/profiler/profiler.toml\n")?;
    // The unit is installed, not enabled: the collector's address must be configured first.
    script(
        &control.join("postinst"),
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
    )?;
    script(
        &control.join("prerm"),
        "if [ -d /run/systemd/system ]; then systemctl stop profiler.service || true; fi\n",
    )?;
    script(
        &control.join("postrm"),
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n\
         if [ \"$1\" = purge ]; then rmdir /etc/profiler 2>/dev/null || true; fi\n",
    )?;
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(dir.join(name)))?;
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// A maintainer script: `body` under `set -e`, executable.
fn script(path: &Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\nset -e\n{body}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
