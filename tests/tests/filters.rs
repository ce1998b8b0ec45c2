//! Choosing what to profile in the eBPF program: `--cgroup` keeps the tasks of a cgroup v2
//! directory and its descendants, and drops an identical twin outside it. Real cgroups, created
//! under this host's v2 mount (wherever it is: `/sys/fs/cgroup/unified` on this hybrid host).

use std::path::{Path, PathBuf};
use std::time::Duration;

use profiler_tests::cgroups::{Cgroup, v2_mount};
use profiler_tests::{
    Workload, build_workload, privileged, record_folded_with_summary, run_profiler,
};

/// Samples whose process frame is `name`.
fn samples_of(stacks: &[(Vec<String>, u64)], name: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames[0] == name)
        .map(|(_, c)| c)
        .sum()
}

/// The `split` workload built under `name` (the flamegraph's process frame tells them apart).
fn twin(dir: &Path, name: &str) -> PathBuf {
    let bin = build_workload("split", dir);
    let copy = dir.join(name);
    std::fs::copy(&bin, &copy).expect("the workload is copied");
    copy
}

#[test]
fn a_cgroup_filter_keeps_its_descendants_and_drops_the_twin_outside() {
    let Some(_machine) =
        privileged("a_cgroup_filter_keeps_its_descendants_and_drops_the_twin_outside")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mount = v2_mount();
    let parent = Cgroup::create(mount.join(format!("profiler-test-{}", std::process::id())));
    let child = Cgroup::create(parent.0.join("worker.service"));

    let inside = Workload::spawn(&twin(dir.path(), "inside"), &["20"]);
    let outside = Workload::spawn(&twin(dir.path(), "outside"), &["20"]);
    // The task goes into the child: the filter names the parent.
    child.admit(inside.pid());
    std::thread::sleep(Duration::from_millis(200));

    // Relative to the v2 mount, as a person would write it.
    let relative = parent
        .0
        .strip_prefix(&mount)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (stacks, stdout) = record_folded_with_summary(
        dir.path(),
        "cg",
        &["-F", "999", "-d", "3s", "--cgroup", &relative],
    );
    let count = |name: &str| samples_of(&stacks, name);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    println!(
        "inside {}, outside {}, total {total}",
        count("inside"),
        count("outside")
    );
    assert!(
        count("inside") > 2000,
        "the cgroup's task was not sampled: {stdout}"
    );
    assert_eq!(
        count("outside"),
        0,
        "the twin outside the cgroup was sampled"
    );
    assert_eq!(count("inside"), total, "only the cgroup's tasks are kept");
    drop(inside);
    drop(outside);
}

#[test]
fn a_path_outside_the_cgroup_hierarchy_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.folded");
    let (code, _, stderr) = run_profiler(&[
        "record",
        "-d",
        "1s",
        "--cgroup",
        "/tmp",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--cgroup /tmp") && stderr.contains("cgroup v2"),
        "{stderr}"
    );
}

#[test]
fn units_and_containers_are_profiled_by_their_cgroups() {
    let Some(_machine) = privileged("units_and_containers_are_profiled_by_their_cgroups") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mount = v2_mount();
    // A unit's cgroup as systemd names it, and a container's as containerd's systemd driver
    // does (a 64-digit id, here made of this test's pid).
    let unit = format!("profiler-test-{}", std::process::id());
    let unit_cg = Cgroup::create(mount.join(format!("{unit}.service")));
    let id = format!("{:0>64x}", u64::from(std::process::id()) << 32 | 0xfeed);
    let container_cg = Cgroup::create(mount.join(format!("cri-containerd-{id}.scope")));

    let in_unit = Workload::spawn(&twin(dir.path(), "in_unit"), &["20"]);
    let in_container = Workload::spawn(&twin(dir.path(), "in_container"), &["20"]);
    let outside = Workload::spawn(&twin(dir.path(), "outside"), &["20"]);
    unit_cg.admit(in_unit.pid());
    container_cg.admit(in_container.pid());
    std::thread::sleep(Duration::from_millis(200));

    let (stacks, stdout) = record_folded_with_summary(
        dir.path(),
        "targets",
        &[
            "-F",
            "499",
            "-d",
            "3s",
            "--unit",
            &unit,
            "--container",
            &id[..12],
        ],
    );
    let count = |name: &str| samples_of(&stacks, name);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let (unit_n, container_n) = (count("in_unit"), count("in_container"));
    println!("unit {unit_n}, container {container_n}, total {total}");
    assert!(unit_n > 500, "the unit's task was not sampled: {stdout}");
    assert!(
        container_n > 500,
        "the container's task was not sampled: {stdout}"
    );
    assert_eq!(unit_n + container_n, total, "only their tasks are kept");
    drop((in_unit, in_container, outside));

    // Names that find nothing are usage errors that say what was looked for.
    let out = dir.path().join("x.folded");
    let out = out.to_str().unwrap();
    for (flag, value, says) in [
        (
            "--unit",
            "no-such-unit-here",
            "no cgroup named no-such-unit-here.service",
        ),
        (
            "--container",
            "0123456789abcdef",
            "no cgroup of that container",
        ),
        ("--container", "nothex", "not a container id"),
    ] {
        let (code, _, stderr) = run_profiler(&["record", "-d", "1s", flag, value, "-o", out]);
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}

#[test]
fn a_restarted_unit_is_followed_to_its_new_cgroup() {
    let Some(_machine) = privileged("a_restarted_unit_is_followed_to_its_new_cgroup") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mount = v2_mount();
    let unit = format!("profiler-restart-{}", std::process::id());
    let cg = Cgroup::create(mount.join(format!("{unit}.service")));
    let first = Workload::spawn(&twin(dir.path(), "first_run"), &["20"]);
    cg.admit(first.pid());
    let reborn_bin = twin(dir.path(), "second_run");

    let record_dir = dir.path().to_path_buf();
    let recording = std::thread::spawn(move || {
        record_folded_with_summary(
            &record_dir,
            "restart",
            &["-F", "499", "-d", "9s", "--unit", &unit],
        )
    });
    // The unit stops (its cgroup goes) and starts again: same path, a new cgroup id. Three
    // seconds first: under CI's parallel tests, loading the BPF programs alone has taken over
    // one (99 samples before a restart at 1.5 s).
    std::thread::sleep(Duration::from_secs(3));
    drop(first);
    for _ in 0..50 {
        if std::fs::remove_dir(&cg.0).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir(&cg.0).unwrap();
    let second = Workload::spawn(&reborn_bin, &["20"]);
    cg.admit(second.pid());
    let (stacks, stdout) = recording.join().unwrap();
    drop(second);
    let count = |name: &str| samples_of(&stacks, name);
    let (first_n, second_n) = (count("first_run"), count("second_run"));
    println!("before the restart {first_n}, after {second_n}");
    assert!(first_n > 300, "the unit was not sampled before: {stdout}");
    // Resolved again every 2 s: at least 3 of the 6 s after the restart are sampled.
    assert!(
        second_n > 1000,
        "the restarted unit was not followed: {stdout}"
    );
}
