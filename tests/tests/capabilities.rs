//! The minimal capability set, found by running the real daemon under `setpriv` with a reduced
//! bounding set (as the systemd unit and the Kubernetes manifest do): with all six capabilities
//! every frame is named; without any one of them, a specific kind of frame is not.
#![allow(clippy::unwrap_used, reason = "test helpers below fail loudly")]

use std::path::Path;
use std::process::Command;

use profiler_tests::{Workload, build_workload, parse_folded, privileged, profiler_bin};

/// The set shipped in deploy/ (systemd `CapabilityBoundingSet`, Kubernetes `capabilities.add`).
const MINIMAL: [&str; 6] = [
    "bpf",
    "perfmon",
    "sys_ptrace",
    "checkpoint_restore",
    "dac_read_search",
    "syslog",
];

struct Outcome {
    /// Share of samples named, per workload: another user's unreadable binary, a deleted
    /// binary, and a syscall-heavy one (kernel frames).
    other_user: f64,
    deleted: f64,
    kernel_named: f64,
}

fn share(stacks: &[(Vec<String>, u64)], process: &str, pred: impl Fn(&[String]) -> bool) -> f64 {
    let (mut total, mut hit) = (0u64, 0u64);
    for (frames, count) in stacks.iter().filter(|(f, _)| f[0] == process) {
        total += count;
        if pred(frames) {
            hit += count;
        }
    }
    if total == 0 {
        0.0
    } else {
        hit as f64 / total as f64
    }
}

fn record_with(caps: &[&str], dir: &Path, split: &Path, sys: &Path) -> Outcome {
    record_as(None, caps, dir, split, sys)
}

/// As `record_with`, run by user `user` (with the capabilities ambient, as systemd's
/// `AmbientCapabilities` gives them) when given, else by root.
fn record_as(user: Option<u32>, caps: &[&str], dir: &Path, split: &Path, sys: &Path) -> Outcome {
    // Another user's binary that only its owner may read.
    let private = dir.join("split-other");
    std::fs::copy(split, &private).unwrap();
    assert!(
        Command::new("chown")
            .args(["65534:65534"])
            .arg(&private)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("chmod")
            .arg("0700")
            .arg(&private)
            .status()
            .unwrap()
            .success()
    );
    let other = Workload(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&private)
            .arg("10")
            .spawn()
            .unwrap(),
    );
    // A binary deleted after it started.
    let deleted_path = dir.join("split-deleted");
    std::fs::copy(split, &deleted_path).unwrap();
    let deleted = Workload::spawn(&deleted_path, &["10"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::remove_file(&deleted_path).unwrap();
    let syscalls = Workload::spawn(sys, &["10"]);

    // Per user: in the sticky directory nobody may replace root's file.
    let out = dir.join(format!("caps-{}.folded", user.unwrap_or(0)));
    let bounding = format!(
        "--bounding-set=-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let listed = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut setpriv = Command::new("setpriv");
    match user {
        Some(uid) => {
            // The daemon's user may not reach root's build tree: run a copy from `dir`.
            let bin = dir.join("profiler");
            std::fs::copy(profiler_bin(), &bin).unwrap();
            setpriv
                .args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_owned(),
                    bounding,
                    format!("--inh-caps=-all,{listed}"),
                    format!("--ambient-caps=-all,{listed}"),
                    "--".to_owned(),
                ])
                .arg(bin);
        }
        None => {
            setpriv
                .args([bounding.as_str(), "--inh-caps=-all", "--"])
                .arg(profiler_bin());
        }
    }
    let output = setpriv
        .args(["record", "-F", "499", "-d", "2s", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "profiler failed with {caps:?}: {stderr}"
    );
    // A missing optional capability is said at start, with what it costs.
    for optional in ["sys_ptrace", "dac_read_search", "syslog"] {
        let named = format!("CAP_{} missing", optional.to_ascii_uppercase());
        assert_eq!(
            stderr.contains(&named),
            !caps.contains(&optional),
            "{named} with {caps:?}: {stderr}"
        );
    }
    drop((other, deleted, syscalls));
    let stacks = parse_folded(&std::fs::read_to_string(&out).unwrap());
    let hot = |f: &[String]| f.iter().any(|x| x.starts_with("hot_"));
    Outcome {
        other_user: share(&stacks, "split-other", hot),
        deleted: share(&stacks, "split-deleted", hot),
        kernel_named: share(&stacks, "syscalls", |f| {
            f.iter().any(|x| x.ends_with("_[k]"))
                && f.iter()
                    .filter(|x| x.ends_with("_[k]"))
                    .all(|x| !profiler_tests::unnamed(x))
        }),
    }
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario: the full set, as nobody, each capability removed, the manifests"
)]
fn the_minimal_capability_set_names_everything_and_each_capability_is_needed() {
    let Some(_machine) =
        privileged("the_minimal_capability_set_names_everything_and_each_capability_is_needed")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Command::new("chmod")
            .arg("755")
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let split = build_workload("split", dir.path());
    let sys = build_workload("syscalls", dir.path());

    let all = record_with(&MINIMAL, dir.path(), &split, &sys);
    println!(
        "minimal set: other user {:.2}, deleted {:.2}, kernel {:.2}",
        all.other_user, all.deleted, all.kernel_named
    );
    assert!(all.other_user > 0.9 && all.deleted > 0.9 && all.kernel_named > 0.5);
    // The same, as an unprivileged user with the set as ambient capabilities: how the systemd
    // unit runs it (`DynamicUser=yes`, `AmbientCapabilities=`). The output directory must let it
    // write.
    assert!(
        Command::new("chmod")
            .arg("1777")
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let unprivileged = record_as(Some(65534), &MINIMAL, dir.path(), &split, &sys);
    println!(
        "as nobody with the minimal set: other user {:.2}, deleted {:.2}, kernel {:.2}",
        unprivileged.other_user, unprivileged.deleted, unprivileged.kernel_named
    );
    assert!(
        unprivileged.other_user > 0.9
            && unprivileged.deleted > 0.9
            && unprivileged.kernel_named > 0.5
    );

    for (missing, breaks) in [
        ("dac_read_search", "other_user"),
        ("checkpoint_restore", "deleted"),
        ("sys_ptrace", "deleted"),
        ("syslog", "kernel"),
    ] {
        let caps: Vec<&str> = MINIMAL.iter().copied().filter(|c| *c != missing).collect();
        let o = record_with(&caps, dir.path(), &split, &sys);
        println!(
            "without {missing}: other user {:.2}, deleted {:.2}, kernel {:.2}",
            o.other_user, o.deleted, o.kernel_named
        );
        let broken = match breaks {
            "other_user" => o.other_user,
            "deleted" => o.deleted,
            _ => o.kernel_named,
        };
        assert!(
            broken < 0.1,
            "without {missing}, {breaks} frames should go unnamed"
        );
    }
    // Without CAP_BPF or CAP_PERFMON nothing runs: a clear error, exit code 1.
    for missing in ["bpf", "perfmon"] {
        let caps: Vec<String> = MINIMAL
            .iter()
            .filter(|c| **c != missing)
            .map(|c| format!("+{c}"))
            .collect();
        let out = Command::new("setpriv")
            .args([
                format!("--bounding-set=-all,{}", caps.join(",")).as_str(),
                "--inh-caps=-all",
                "--",
            ])
            .arg(profiler_bin())
            .args(["record", "-d", "1s", "-o", "/tmp/never.folded"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "without {missing}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("verifier log") && stderr.contains("capabilities"),
            "without {missing}, the message says what is missing: {stderr}"
        );
    }
    // The shipped manifests carry exactly this set.
    let unit = std::fs::read_to_string(
        profiler_tests::workspace().join("deploy/systemd/profiler.service"),
    )
    .unwrap();
    let daemonset = std::fs::read_to_string(
        profiler_tests::workspace().join("deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    for cap in MINIMAL {
        let upper = cap.to_ascii_uppercase();
        assert!(
            unit.contains(&format!("CAP_{upper}")),
            "unit lacks CAP_{upper}"
        );
        assert!(daemonset.contains(&upper), "daemonset lacks {upper}");
    }
}
