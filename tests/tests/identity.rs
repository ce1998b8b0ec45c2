//! A module is a build id *and* its content: two files with one build id but different contents
//! (a forged build id, a stripped copy) never lend each other names, whichever the daemon sees
//! first, while identical copies of one binary at two paths are both named.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use profiler_tests::{
    Workload, named_ratio, parse_folded, privileged, record_folded, spawn_profiler, workspace,
};

/// One forged build id (20 bytes, like a real GNU build id) for every binary of these tests.
const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";

/// Builds `tests/workloads/identity.c` into `dir/name` with `build_workload`'s flags (clang,
/// complete frame pointers) plus `extra` (-D macros, linker flags).
fn build(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let src = workspace().join("tests/workloads/identity.c");
    let out = dir.join(name);
    let status = Command::new("clang")
        .args(profiler_tests::CLANG_FLAGS)
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("clang runs (cargo xtask setup installs it)");
    assert!(status.success(), "clang failed on {}", src.display());
    out
}

/// The GNU build id of `bin`, as `readelf -n` prints it.
fn build_id(bin: &Path) -> String {
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(bin)
        .output()
        .expect("readelf runs");
    String::from_utf8_lossy(&notes.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("{} has a build id", bin.display()))
}

/// Starts `bin` blocked on its stdin: it takes no CPU (so no sample) until `release`.
fn spawn_waiting(bin: &Path) -> Workload {
    let child = Command::new(bin)
        .args(["20", "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("workload starts");
    Workload(child)
}

/// Lets a workload started by `spawn_waiting` run.
fn release(workload: &mut Workload) {
    let mut stdin = workload.0.stdin.take().expect("stdin piped");
    stdin
        .write_all(b"go")
        .expect("the workload reads its stdin");
}

/// Records `first` and `late` for 3 s at 499 Hz into `dir/name.folded`; `late` (started by
/// `spawn_waiting`) begins to run only 700 ms into the recording, so the daemon's first sample
/// of it comes long after its first samples of `first`: `first`'s file is the one it meets first.
fn record_first_then_late(
    dir: &Path,
    name: &str,
    first: &Workload,
    late: &mut Workload,
) -> Vec<(Vec<String>, u64)> {
    let out = dir.join(format!("{name}.folded"));
    let recorder = spawn_profiler(
        &[
            "record",
            "-F",
            "499",
            "-d",
            "3s",
            "--pid",
            &first.pid().to_string(),
            "--pid",
            &late.pid().to_string(),
            "-o",
            out.to_str().expect("a UTF-8 temporary path"),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(700));
    release(late);
    let output = recorder.wait_with_output().expect("profiler exits");
    assert!(
        output.status.success(),
        "profiler record failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout).trim_end());
    parse_folded(&std::fs::read_to_string(&out).expect("the folded file is written"))
}

/// Whether folded frame `frame` is function `name` (bare, or followed by file and line).
fn is(frame: &str, name: &str) -> bool {
    frame == name
        || frame
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// Samples of process `process`: (all, those with a frame among `names`).
fn with_names(stacks: &[(Vec<String>, u64)], process: &str, names: &[&str]) -> (u64, u64) {
    let (mut total, mut hit) = (0, 0);
    for (frames, count) in stacks {
        if frames.first().map(String::as_str) != Some(process) {
            continue;
        }
        total += count;
        if frames[1..]
            .iter()
            .any(|f| names.iter().any(|name| is(f, name)))
        {
            hit += count;
        }
    }
    (total, hit)
}

/// Prints the stacks of `process`, most samples first, for the failure's context.
fn show(stacks: &[(Vec<String>, u64)], process: &str) {
    let mut mine: Vec<_> = stacks
        .iter()
        .filter(|(f, _)| f.first().map(String::as_str) == Some(process))
        .collect();
    mine.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    for (frames, count) in mine.iter().take(6) {
        println!("  {count:>5} {}", frames.join(";"));
    }
}

/// Asserts that ≥ 90% of `process`'s samples (there must be some) carry one of `own` names, and
/// none carries one of `foreign`.
fn assert_named_as(stacks: &[(Vec<String>, u64)], process: &str, own: &[&str], foreign: &[&str]) {
    let (total, mine) = with_names(stacks, process, own);
    let (_, theirs) = with_names(stacks, process, foreign);
    println!("{process}: {total} samples, {mine} with its own names, {theirs} with foreign names");
    show(stacks, process);
    assert!(total > 300, "{process}: only {total} samples");
    assert!(
        mine * 10 >= total * 9,
        "{process}: {mine} of {total} samples carry its own names {own:?}"
    );
    assert_eq!(
        theirs, 0,
        "{process}: {theirs} samples carry another file's names {foreign:?}"
    );
}

#[test]
fn same_build_id_different_code_keeps_names_apart() {
    let Some(_machine) = privileged("same_build_id_different_code_keeps_names_apart") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let forged = format!("-Wl,--build-id=0x{BUILD_ID}");
    let genuine = build(
        dir.path(),
        "genuine",
        &["-DWORK=genuine_work", "-DLEAF=genuine_leaf", &forged],
    );
    // Other code at other offsets, other names, the same build id.
    let impostor = build(
        dir.path(),
        "impostor",
        &[
            "-DVARIANT_B",
            "-DWORK=impostor_work",
            "-DLEAF=impostor_leaf",
            &forged,
        ],
    );
    assert_eq!(build_id(&genuine), BUILD_ID);
    assert_eq!(build_id(&impostor), BUILD_ID);
    assert_ne!(
        std::fs::read(&genuine).unwrap(),
        std::fs::read(&impostor).unwrap()
    );

    // The impostor is sampled first; the genuine process starts working 700 ms later.
    let impostor_run = Workload::spawn(&impostor, &["20"]);
    let mut genuine_run = spawn_waiting(&genuine);
    std::thread::sleep(Duration::from_millis(300));
    let stacks = record_first_then_late(dir.path(), "forged", &impostor_run, &mut genuine_run);

    let genuine_names = ["genuine_work", "genuine_leaf"];
    let impostor_names = ["impostor_work", "impostor_leaf", "variant_padding"];
    let (impostor_total, _) = with_names(&stacks, "impostor", &impostor_names);
    println!("impostor (seen first): {impostor_total} samples");
    show(&stacks, "impostor");
    assert_named_as(&stacks, "genuine", &genuine_names, &impostor_names);
    assert_named_as(&stacks, "impostor", &impostor_names, &genuine_names);
    println!("took {:.1?}", started.elapsed());
}

#[test]
fn stripped_copy_seen_first_leaves_the_original_named() {
    let Some(_machine) = privileged("stripped_copy_seen_first_leaves_the_original_named") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let original = build(dir.path(), "original", &[]);
    let stripped = dir.path().join("stripped-copy");
    assert!(
        Command::new("objcopy")
            .arg("--strip-all")
            .arg(&original)
            .arg(&stripped)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(build_id(&original), build_id(&stripped));

    // The stripped copy is sampled first; the original starts working 700 ms later.
    let stripped_run = Workload::spawn(&stripped, &["20"]);
    let mut original_run = spawn_waiting(&original);
    std::thread::sleep(Duration::from_millis(300));
    let stacks = record_first_then_late(dir.path(), "stripped", &stripped_run, &mut original_run);

    let (stripped_total, stripped_named) = named_ratio(&stacks, "stripped-copy");
    println!("stripped-copy (seen first): {stripped_total} samples, {stripped_named} named leaf");
    show(&stacks, "stripped-copy");
    let (total, named) = named_ratio(&stacks, "original");
    println!("original: {total} samples, {named} with a named leaf user frame");
    assert!(
        stripped_total > 300,
        "stripped-copy: {stripped_total} samples"
    );
    assert_named_as(&stacks, "original", &["twin_work", "twin_leaf"], &[]);
    assert!(
        named * 10 >= total * 9,
        "original: {named} of {total} named"
    );
    println!("took {:.1?}", started.elapsed());
}

#[test]
fn identical_copies_share_and_are_both_named() {
    let Some(_machine) = privileged("identical_copies_share_and_are_both_named") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path(), "built", &[]);
    let (a, b) = (dir.path().join("twin-a"), dir.path().join("twin-b"));
    std::fs::copy(&built, &a).unwrap();
    std::fs::copy(&built, &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let run_a = Workload::spawn(&a, &["20"]);
    let run_b = Workload::spawn(&b, &["20"]);
    std::thread::sleep(Duration::from_millis(300));
    let stacks = record_folded(
        dir.path(),
        "twins",
        &[
            "-F",
            "499",
            "-d",
            "3s",
            "--pid",
            &run_a.pid().to_string(),
            "--pid",
            &run_b.pid().to_string(),
        ],
    );
    let names = ["twin_work", "twin_leaf"];
    assert_named_as(&stacks, "twin-a", &names, &[]);
    assert_named_as(&stacks, "twin-b", &names, &[]);
    println!("took {:.1?}", started.elapsed());
}
