//! `profiler record` on the real kernel: accuracy against `perf` and the designed split, kernel
//! frames, the pid filter, the SVG, Ctrl-C, and errors.

use std::process::Command;
use std::time::{Duration, Instant};

use profiler_tests::{
    Workload, build_workload, parse_folded, perf_folded_for_pid, privileged, run_profiler, split,
};

const HOT: [&str; 3] = ["hot_a", "hot_b", "hot_c"];

#[test]
fn split_agrees_with_perf_and_with_the_design() {
    let Some(_machine) = privileged("split_agrees_with_perf_and_with_the_design") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let workload = Workload::spawn(&bin, &["20"]);
    let pid = workload.pid().to_string();
    std::thread::sleep(Duration::from_millis(200));

    let perf_data = dir.path().join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-a", "-g", "-F", "999", "-q", "-o"])
        .arg(&perf_data)
        .args(["--", "sleep", "8"])
        .spawn()
        .expect("perf record starts");
    let folded = dir.path().join("split.folded");
    let (code, stdout, stderr) = run_profiler(&[
        "record",
        "-F",
        "999",
        "-d",
        "8s",
        "--pid",
        &pid,
        "-o",
        folded.to_str().unwrap(),
    ]);
    assert!(perf.wait().unwrap().success(), "perf record failed");
    assert_eq!(code, 0, "profiler failed: {stderr}");
    println!("profiler: {stdout}");

    let ours = parse_folded(&std::fs::read_to_string(&folded).unwrap());
    let theirs = perf_folded_for_pid(&perf_data, workload.pid());
    let (our_split, our_total) = split(&ours, &HOT);
    let (perf_split, perf_total) = split(&theirs, &HOT);
    println!("ours ({our_total} samples): {our_split:?}");
    println!("perf ({perf_total} samples): {perf_split:?}");
    // ~8000 samples: one standard deviation of a 60% share is about 0.55 points.
    assert!(our_total > 5000, "too few samples: {our_total}");
    assert!(perf_total > 5000, "perf saw too few samples: {perf_total}");
    for (f, designed) in HOT.iter().zip([60.0, 30.0, 10.0]) {
        let (ours, perf) = (our_split[*f], perf_split[*f]);
        assert!(
            (ours - perf).abs() <= 3.0,
            "{f}: ours {ours:.1}% vs perf {perf:.1}%"
        );
        assert!(
            (ours - designed).abs() <= 3.0,
            "{f}: ours {ours:.1}% vs designed {designed}%"
        );
    }
    // Stacks are complete: main is the caller of the hot functions. A sample on a function's
    // first instruction (before `push rbp`) loses its caller in any frame-pointer unwinder
    // (perf's too), so allow a sliver of those.
    let mut without_main = 0;
    for (frames, count) in &ours {
        if let Some(i) = frames.iter().position(|f| HOT.contains(&f.as_str())) {
            assert_eq!(frames[0], "split");
            if !frames[..i].iter().any(|f| f == "main") {
                without_main += count;
            }
        }
    }
    assert!(
        without_main * 100 < our_total,
        "{without_main} hot samples without main"
    );
}

#[test]
fn syscall_heavy_workload_shows_kernel_frames_under_user_frames() {
    let Some(_machine) = privileged("syscall_heavy_workload_shows_kernel_frames_under_user_frames")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("syscalls", dir.path());
    let workload = Workload::spawn(&bin, &["10"]);
    let pid = workload.pid().to_string();
    let folded = dir.path().join("sys.folded");
    let (code, _, stderr) = run_profiler(&[
        "record",
        "-F",
        "999",
        "-d",
        "3s",
        "--pid",
        &pid,
        "-o",
        folded.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let stacks = parse_folded(&std::fs::read_to_string(&folded).unwrap());
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let mut in_kernel_under_do_writes = 0;
    let mut write_path = 0;
    let mut syscall_entry = 0;
    for (frames, count) in &stacks {
        let Some(user) = frames.iter().position(|f| f == "do_writes") else {
            continue;
        };
        let kernel = &frames[user + 1..];
        // Kernel frames come after the user frames and all carry the suffix.
        if !kernel.is_empty() && kernel.iter().all(|f| f.ends_with("_[k]")) {
            in_kernel_under_do_writes += count;
            if kernel.iter().any(|f| f.contains("write")) {
                write_path += count;
            }
            if kernel
                .iter()
                .any(|f| f.starts_with("entry_SYSCALL") || f.starts_with("do_syscall"))
            {
                syscall_entry += count;
            }
        }
        assert!(
            frames[..user].iter().all(|f| !f.ends_with("_[k]")),
            "{frames:?}"
        );
    }
    println!(
        "{total} samples, {in_kernel_under_do_writes} in the kernel under do_writes, {write_path} on a *write* path"
    );
    assert!(total > 1500, "too few samples: {total}");
    assert!(
        in_kernel_under_do_writes * 2 > total,
        "most samples should be kernel frames under do_writes"
    );
    // Much of a write to /dev/null is syscall entry and exit; the write path itself is named too.
    assert!(
        syscall_entry * 2 > total,
        "syscall entry frames should be named"
    );
    assert!(
        write_path * 20 > total,
        "the write path (ksys_write, vfs_write) should be named"
    );
}

#[test]
fn pid_filter_excludes_every_other_process_and_svg_names_functions() {
    let Some(_machine) =
        privileged("pid_filter_excludes_every_other_process_and_svg_names_functions")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let split_bin = build_workload("split", dir.path());
    let sys_bin = build_workload("syscalls", dir.path());
    let target = Workload::spawn(&split_bin, &["10"]);
    let _other = Workload::spawn(&sys_bin, &["10"]);
    let pid = target.pid().to_string();

    let folded = dir.path().join("only.folded");
    let (code, _, stderr) = run_profiler(&[
        "record",
        "-F",
        "499",
        "-d",
        "2s",
        "--pid",
        &pid,
        "-o",
        folded.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let stacks = parse_folded(&std::fs::read_to_string(&folded).unwrap());
    assert!(!stacks.is_empty());
    for (frames, _) in &stacks {
        assert_eq!(frames[0], "split", "a stack of another process: {frames:?}");
    }

    // Whole machine, SVG: both workloads are there, with their function names.
    let svg = dir.path().join("all.svg");
    let (code, stdout, stderr) = run_profiler(&[
        "record",
        "-F",
        "499",
        "-d",
        "2s",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("samples from"), "summary line: {stdout}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml"), "not an SVG");
    for name in ["hot_a", "hot_b", "do_writes", "split", "syscalls"] {
        assert!(svg.contains(name), "{name} missing from the flamegraph");
    }
}

#[test]
fn ctrl_c_stops_early_and_still_writes_the_file() {
    let Some(_machine) = privileged("ctrl_c_stops_early_and_still_writes_the_file") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("early.folded");
    let start = Instant::now();
    let child = Command::new(profiler_tests::profiler_bin())
        .args(["record", "-d", "60s", "-o", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).unwrap(), libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    assert!(start.elapsed() < Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("(interrupted)"), "{stdout}");
    assert!(out.exists(), "no output written");
}

#[test]
fn without_privileges_it_says_what_failed_and_how_to_run_it() {
    let Some(_machine) = privileged("without_privileges_it_says_what_failed_and_how_to_run_it")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Copy the binary somewhere `nobody` can execute it.
    let bin = dir.path().join("profiler");
    std::fs::copy(profiler_tests::profiler_bin(), &bin).unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let chmod = Command::new("chmod")
        .args(["755", out_dir])
        .status()
        .unwrap();
    assert!(chmod.success());
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .args(["record", "-d", "1s", "-o", "/tmp/never-written.svg"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("run it as root"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_code_2_and_a_clear_message() {
    // No privileges needed: all of these fail before touching the kernel.
    for (args, expect) in [
        (vec!["record", "-o", "x.png"], "`.svg`"),
        (
            vec!["record", "-o", "x.svg", "-F", "0"],
            "between 1 and 10000",
        ),
        (
            vec!["record", "-o", "x.svg", "--duration", "soon"],
            "expected e.g.",
        ),
        (
            vec!["record", "-o", "x.svg", "--pid", "4194305"],
            "no such process",
        ),
        (
            vec!["record", "-o", "/no/such/folder/x.svg"],
            "does not exist",
        ),
        (vec!["record", "-o", "x.svg", "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let (code, _, stderr) = run_profiler(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    let (code, stdout, _) = run_profiler(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("record"));
}
