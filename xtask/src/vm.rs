//! `cargo xtask vm`: the kernel matrix. Fetches Debian's kernel packages (cached under
//! `target/vm/kernels`), boots each under QEMU with software emulation through virtme-ng (the
//! guest sees the host's filesystem read-only, plus one writable run directory), and runs the
//! kernel smoke suite (`tests/src/bin/kernel-smoke.rs`, with the release `profiler`) inside; the
//! host's own kernel runs the same suite without a VM. One line per kernel.
//!
//! ```text
//! cargo xtask vm [--kernel host|5.10|6.1|6.12|all]...   (default and `all`: every one)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::workspace;

/// A kernel the matrix can boot: its name on the command line and the Debian suites whose
/// `linux-image-amd64` picks it (the security suite carries the newest build of a release).
struct Kernel {
    name: &'static str,
    suites: &'static [(&'static str, &'static str)],
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// Every kernel Debian's archive still serves through apt (buster's 4.19 and older moved to
/// archive.debian.org, which this project's machines cannot reach).
const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suites: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
    },
    Kernel {
        name: "6.1",
        suites: &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")],
    },
    Kernel {
        name: "6.12",
        suites: &[(DEBIAN, "bookworm-backports")],
    },
];

/// The kernels `cargo xtask test` runs the suite on: the host's, and every one Debian's archive
/// serves (Debian 11's, 12's and 12's backports). 5.10 is the oldest and the one new BPF code
/// breaks first (the unwinder's `bpf_loop` once made it refuse the whole sampler); about a minute
/// each under emulation.
pub(crate) const CI_MATRIX: &[&str] = &["host", "5.10", "6.1", "6.12"];

/// A guest that has not finished by then is killed and fails (a boot plus the suite takes
/// about a minute under emulation on 2 cores).
const GUEST_TIMEOUT: Duration = Duration::from_mins(10);

/// One kernel's result.
pub(crate) struct Outcome {
    pub passed: bool,
    /// The one line printed for it.
    pub line: String,
}

/// `cargo xtask vm ARGS`: builds what the suite runs, runs it on each kernel asked for, prints
/// one line per kernel; fails when any kernel fails.
pub(crate) fn command(args: &[String]) -> Result<bool> {
    let mut kernels = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = match arg.strip_prefix("--kernel=") {
            Some(value) => value,
            None if arg == "--kernel" => rest.next().context("--kernel needs a value")?,
            None => bail!(
                "unknown argument `{arg}`; usage: cargo xtask vm [--kernel host|{}|all]...",
                KERNELS.iter().map(|k| k.name).collect::<Vec<_>>().join("|")
            ),
        };
        for name in value.split(',') {
            if name == "all" {
                kernels.push("host".to_owned());
                kernels.extend(KERNELS.iter().map(|k| k.name.to_owned()));
            } else {
                kernels.push(name.to_owned());
            }
        }
    }
    if kernels.is_empty() {
        kernels = CI_MATRIX.iter().map(|&k| k.to_owned()).collect();
    }
    // The same build as the README's: the profiler and the suite's binary.
    crate::cargo(&["build", "--release"])?;
    let outcomes = matrix(&kernels, &workspace().join("target/release/profiler"));
    Ok(outcomes.iter().all(|o| o.passed))
}

/// Runs the suite on each kernel in turn (one at a time: two emulated guests on 2 cores would
/// starve each other's samples) and prints its line as soon as it is known.
/// `profiler` is the binary under test (`cargo xtask test` gives the static one of `dist`).
pub(crate) fn matrix<S: AsRef<str>>(kernels: &[S], profiler: &Path) -> Vec<Outcome> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let prepared = prepare_workload();
    for name in kernels {
        let name = name.as_ref();
        let outcome = match &prepared {
            Ok(()) => run_one(name, profiler).unwrap_or_else(|err| Outcome {
                passed: false,
                line: format!("kernel {name}: FAILED: {err:#}"),
            }),
            Err(err) => Outcome {
                passed: false,
                line: format!("kernel {name}: FAILED: the workload did not build: {err:#}"),
            },
        };
        println!("{}", outcome.line);
        outcomes.push(outcome);
    }
    eprintln!(
        "kernel matrix: {} kernels in {:.0}s",
        kernels.len(),
        started.elapsed().as_secs_f64()
    );
    outcomes
}

fn vm_dir() -> PathBuf {
    workspace().join("target/vm")
}

fn smoke_bin() -> PathBuf {
    workspace().join("target/release/kernel-smoke")
}

/// The workload is built on the host: clang under emulation would take most of a guest's time.
fn prepare_workload() -> Result<()> {
    crate::run(
        Command::new(smoke_bin())
            .arg("prepare")
            .arg(vm_dir().join("workload")),
    )
}

fn run_one(name: &str, profiler: &Path) -> Result<Outcome> {
    let run_dir = vm_dir().join("run").join(name);
    // Idempotent: each run starts from an empty directory.
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir)?;
    std::fs::copy(vm_dir().join("workload/split"), run_dir.join("split"))
        .context("copying the workload")?;
    let (label, fetched, started) = if name == "host" {
        let started = Instant::now();
        let status = Command::new(smoke_bin())
            .arg("run")
            .arg(&run_dir)
            .env("PROFILER_BIN", profiler)
            .stdout(file(&run_dir, "smoke.out")?)
            .stderr(file(&run_dir, "smoke.err")?)
            .status()
            .context("running kernel-smoke")?;
        std::fs::write(
            run_dir.join("smoke.rc"),
            status.code().unwrap_or(-1).to_string(),
        )?;
        ("host".to_owned(), None, started)
    } else {
        let kernel = KERNELS.iter().find(|k| k.name == name).with_context(|| {
            format!(
                "no kernel `{name}`; known: host, {}",
                KERNELS
                    .iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let fetch_started = Instant::now();
        let image = fetch(kernel)?;
        let fetched = fetch_started.elapsed();
        let started = Instant::now();
        boot(&image, &run_dir, profiler)?;
        (name.to_owned(), Some(fetched), started)
    };
    Ok(report(&label, &run_dir, started.elapsed(), fetched))
}

fn file(dir: &Path, name: &str) -> Result<std::fs::File> {
    std::fs::File::create(dir.join(name)).with_context(|| format!("creating {name}"))
}

/// A kernel unpacked from its Debian package.
struct Image {
    /// `uname -r` of the kernel, e.g. `6.1.0-50-amd64`.
    release: String,
    vmlinuz: PathBuf,
}

/// The kernel's image, downloaded and unpacked on first use, then taken from the cache
/// (`target/vm/kernels/NAME`; delete it to fetch the newest build).
fn fetch(kernel: &Kernel) -> Result<Image> {
    let dir = vm_dir().join("kernels").join(kernel.name);
    let marker = dir.join("release");
    if let Ok(release) = std::fs::read_to_string(&marker) {
        let release = release.trim().to_owned();
        let vmlinuz = dir.join(format!("tree/boot/vmlinuz-{release}"));
        if vmlinuz.exists() {
            return Ok(Image { release, vmlinuz });
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(sub))?;
    }
    let sources = apt.join("sources.list");
    let lines: Vec<String> = kernel
        .suites
        .iter()
        .map(|(uri, suite)| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main"
            )
        })
        .collect();
    std::fs::write(&sources, lines.join("\n") + "\n")?;
    // apt on its own lists, cache and sources: the host's package state is left alone.
    let options = [
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "Dir::Etc::sourceparts=-".to_owned(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        // The download lands in a directory only root may write.
        "APT::Sandbox::User=root".to_owned(),
    ];
    let apt_command = |program: &str| {
        let mut cmd = Command::new(program);
        for option in &options {
            cmd.args(["-o", option]);
        }
        cmd
    };
    crate::run(apt_command("apt-get").args(["update", "-q"]))?;
    // The metapackage depends on the current image package of its suite.
    let depends = apt_command("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache")?;
    let package = String::from_utf8_lossy(&depends.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "no linux-image-amd64 in {:?}: {}",
                kernel.suites,
                String::from_utf8_lossy(&depends.stderr)
            )
        })?;
    crate::run(
        apt_command("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&dir),
    )?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = dir.join("tree");
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    std::fs::remove_file(&deb)?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .trim_end_matches("-unsigned")
        .to_owned();
    // virtme-ng builds the guest's initramfs from these modules; index them once here.
    // By path: a non-login root shell's PATH may lack /usr/sbin.
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("depmod");
    crate::run(
        Command::new(depmod)
            .args(["-a", "-b"])
            .arg(&tree)
            .arg(&release),
    )?;
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} is not in {package}", vmlinuz.display());
    }
    std::fs::write(&marker, format!("{release}\n"))?;
    Ok(Image { release, vmlinuz })
}

/// Boots `image` under QEMU without KVM and runs the suite in it; its output lands in `run_dir`
/// (`smoke.out`, `smoke.err`, `smoke.rc`, and the guest's console in `console.log`).
fn boot(image: &Image, run_dir: &Path, profiler: &Path) -> Result<()> {
    // Files, not the guest's stdout: virtme-ng's script channel needs ports that not every
    // kernel's virtio-console offers at boot, and then falls back to the console.
    let dir = run_dir.display();
    let script = format!(
        "PROFILER_BIN={profiler} {smoke} run {dir} >{dir}/smoke.out 2>{dir}/smoke.err; \
         echo $? >{dir}/smoke.rc",
        profiler = profiler.display(),
        smoke = smoke_bin().display()
    );
    let mut cmd = Command::new("vng");
    cmd.arg("--run")
        .arg(&image.vmlinuz)
        .args([
            "--disable-kvm",
            "--cpus",
            "2",
            "--memory",
            "2G",
            "--verbose",
        ])
        .arg("--rwdir")
        .arg(run_dir)
        .arg("--exec")
        .arg(&script)
        .current_dir(run_dir)
        .env("PATH", path_with_python_scripts())
        .stdin(Stdio::null())
        .stdout(file(run_dir, "console.log")?)
        .stderr(file(run_dir, "console.log")?);
    // Its own process group, so that a guest that hangs is killed with QEMU and all.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    eprintln!("+ booting {} ({})", image.release, image.vmlinuz.display());
    let mut child = cmd
        .spawn()
        .context("cannot run vng (cargo xtask setup installs virtme-ng)")?;
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            // vng's own exit code is the guest script's only when its channel works: the
            // result files decide.
            eprintln!("  vng exited with {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            let group = libc::pid_t::try_from(child.id())?;
            // SAFETY: signalling the process group this function started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            child.wait()?;
            bail!(
                "the guest did not finish within {}s (console: {})",
                GUEST_TIMEOUT.as_secs(),
                run_dir.join("console.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `PATH` with the directory where pip put virtme-ng's scripts first: `vng` runs `virtme-run`
/// from `PATH`, and a fresh pyenv may not have made shims for them yet.
fn path_with_python_scripts() -> std::ffi::OsString {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut paths = vec![PathBuf::from(scripts)];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap_or_default()
}

/// The kernel's line from the suite's output in `run_dir`.
fn report(label: &str, run_dir: &Path, wall: Duration, fetched: Option<Duration>) -> Outcome {
    let read = |name: &str| std::fs::read_to_string(run_dir.join(name)).unwrap_or_default();
    summarize(label, &read("smoke.out"), &read("smoke.rc"), wall, fetched).unwrap_or_else(|| {
        let console = run_dir.join("console.log");
        Outcome {
            passed: false,
            line: format!(
                "kernel {label}: FAILED: the suite did not run (console: {}): {}",
                console.display(),
                tail(&console, 5)
            ),
        }
    })
}

/// The kernel's line from the suite's `smoke:` lines and exit code (`rc`); `None` when the
/// suite did not start. A kernel passes when the suite exited 0 and every step says `ok`.
fn summarize(
    label: &str,
    out: &str,
    rc: &str,
    wall: Duration,
    fetched: Option<Duration>,
) -> Option<Outcome> {
    let fact = |key: &str| {
        out.lines()
            .find_map(|l| {
                l.strip_prefix("smoke: ")?
                    .strip_prefix(key)?
                    .strip_prefix(' ')
            })
            .map(str::to_owned)
    };
    let release = fact("kernel")?;
    let steps: Vec<(bool, String)> = ["check", "record", "run", "unwind"]
        .iter()
        .map(|step| match fact(step) {
            Some(result) => (result.starts_with("ok "), format!("{step} {result}")),
            None => (false, format!("{step} did not finish")),
        })
        .collect();
    let passed = rc.trim() == "0" && steps.iter().all(|(ok, _)| *ok);
    let suite = fact("elapsed").and_then(|s| s.parse::<f64>().ok());
    let timing = match (label, suite) {
        ("host", Some(suite)) => format!("suite {suite:.0}s"),
        (_, Some(suite)) => format!(
            "boot {:.0}s, suite {suite:.0}s",
            (wall.as_secs_f64() - suite).max(0.0)
        ),
        _ => format!("{:.0}s", wall.as_secs_f64()),
    };
    let fetch = fetched
        .filter(|d| d.as_secs() >= 1)
        .map(|d| format!(", fetched in {:.0}s", d.as_secs_f64()))
        .unwrap_or_default();
    let steps: Vec<String> = steps.into_iter().map(|(_, text)| text).collect();
    let logs = if passed {
        String::new()
    } else {
        format!(" (logs: target/vm/run/{label})")
    };
    Some(Outcome {
        passed,
        line: format!(
            "kernel {release} ({label}): {verdict}; {timing}{fetch}; sampler load {load}, with \
             unwind tables {unwind_load}; {steps}; probes: {probes}",
            verdict = if passed {
                "ok".to_owned()
            } else {
                format!("FAILED{logs}")
            },
            load = fact("load").unwrap_or_else(|| "?".to_owned()),
            unwind_load = fact("unwind_load").unwrap_or_else(|| "?".to_owned()),
            steps = steps.join("; "),
            probes = fact("probes").unwrap_or_else(|| "?".to_owned()),
        ),
    })
}

/// The last `n` lines of a file, on one line.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::summarize;

    const PASSING: &str = "\
smoke: kernel 6.1.0-56-amd64
smoke: uptime 6.20
smoke: probes ring_buffer=yes task_pt_regs=no
smoke: load 48.5 ms (562 instructions processed)
smoke: unwind_load 787 ms (14083 instructions processed)
smoke: check ok exit 0 [3.1s]
smoke: record ok split 59.2/29.9/10.9 (3988 samples) [10.7s]
smoke: run ok export (931 samples of split, 903 with a named hot frame) [12.9s]
smoke: unwind ok python3 97.0% of 3900 samples reach _start/main [14.0s]
smoke: elapsed 27.0
";

    #[test]
    fn a_kernel_passes_when_every_step_is_ok_and_the_suite_exited_0() {
        let outcome = summarize(
            "6.1",
            PASSING,
            "0\n",
            Duration::from_secs(45),
            Some(Duration::from_secs(8)),
        )
        .unwrap();
        assert!(outcome.passed);
        assert_eq!(
            outcome.line,
            "kernel 6.1.0-56-amd64 (6.1): ok; boot 18s, suite 27s, fetched in 8s; sampler load \
             48.5 ms (562 instructions processed), with unwind tables 787 ms (14083 instructions \
             processed); check ok exit 0 [3.1s]; record ok split \
             59.2/29.9/10.9 (3988 samples) [10.7s]; run ok export (931 samples of split, 903 \
             with a named hot frame) [12.9s]; unwind ok python3 97.0% of 3900 samples reach \
             _start/main [14.0s]; probes: ring_buffer=yes task_pt_regs=no"
        );
    }

    #[test]
    fn a_failed_step_a_missing_step_or_a_bad_exit_code_fails_the_kernel() {
        let failed = PASSING.replace("record ok", "record FAIL");
        let missing = PASSING
            .lines()
            .filter(|l| !l.contains(" run "))
            .collect::<Vec<_>>()
            .join("\n");
        for (out, rc) in [
            (failed.as_str(), "1"),
            (&missing, "0"),
            (PASSING, "1"),
            (PASSING, ""),
        ] {
            let outcome = summarize("6.1", out, rc, Duration::from_secs(45), None).unwrap();
            assert!(!outcome.passed, "{out} {rc}");
            assert!(
                outcome
                    .line
                    .contains("): FAILED (logs: target/vm/run/6.1);"),
                "{}",
                outcome.line
            );
        }
        assert!(summarize("6.1", "", "", Duration::ZERO, None).is_none());
    }
}
