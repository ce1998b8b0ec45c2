//! `--unwind tables` on the real kernel: whole user stacks for code built without frame pointers,
//! where `--unwind fp` loses the callers. A C call chain built with `clang -O2
//! -fomit-frame-pointer`, and Debian's own `/usr/bin/python3` (built without frame pointers, as
//! is glibc) running a pure-Python loop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use profiler_tests::{
    Workload, perf_folded_for_pid, privileged, record_folded, record_folded_with_log,
    record_folded_with_summary, run_profiler, workspace,
};

/// clang's flags for code without frame pointers (sibling calls kept as calls, so that every
/// function of a chain is on the stack).
const NOFP_FLAGS: [&str; 4] = [
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-fno-optimize-sibling-calls",
];

/// Builds `tests/workloads/SOURCE` without frame pointers into `dir/out`, with `extra` flags.
fn build_without_fp(dir: &Path, source: &str, out: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(out);
    let status = Command::new("clang")
        .args(NOFP_FLAGS)
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(workspace().join("tests/workloads").join(source))
        .status()
        .expect("clang runs (cargo xtask setup installs it)");
    assert!(status.success(), "clang failed on {source} {extra:?}");
    out
}

/// Builds `tests/workloads/nofp.c` without frame pointers into `dir`.
fn build_nofp(dir: &Path) -> PathBuf {
    build_without_fp(dir, "nofp.c", "nofp", &[])
}

/// (samples of `process`, those whose stack has one of `roots` at or near its root).
fn reaching(stacks: &[(Vec<String>, u64)], process: &str, roots: &[&str]) -> (u64, u64) {
    let (mut total, mut whole) = (0, 0);
    for (frames, count) in stacks {
        if frames.first().map(String::as_str) != Some(process) {
            continue;
        }
        total += count;
        if frames.iter().any(|f| roots.contains(&f.as_str())) {
            whole += count;
        }
    }
    (total, whole)
}

fn share(part: u64, total: u64) -> f64 {
    100.0 * part as f64 / total.max(1) as f64
}

#[test]
fn tables_reach_main_without_frame_pointers() {
    let Some(_machine) = privileged("tables_reach_main_without_frame_pointers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_nofp(dir.path());
    let workload = Workload::spawn(&bin, &["20"]);
    let pid = workload.pid().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let args = ["-F", "999", "-d", "4s", "--pid", &pid];

    let tables = record_folded(
        dir.path(),
        "tables",
        &[&args[..], &["--unwind", "tables"]].concat(),
    );
    let (total, whole) = reaching(&tables, "nofp", &["main"]);
    println!(
        "tables: {whole} of {total} samples reach main ({:.1}%)",
        share(whole, total)
    );
    assert!(total > 1000, "too few samples: {total}");
    assert!(
        share(whole, total) >= 90.0,
        "tables: only {whole} of {total} samples reach main"
    );
    // The whole chain, in order, under main.
    let chain = ["main", "outer", "middle", "inner"];
    let in_order: u64 = tables
        .iter()
        .filter(|(frames, _)| frames.windows(4).any(|w| w == chain))
        .map(|(_, c)| c)
        .sum();
    assert!(
        share(in_order, total) >= 90.0,
        "main;outer;middle;inner in only {in_order} of {total} samples"
    );

    let fp = record_folded(dir.path(), "fp", &[&args[..], &["--unwind", "fp"]].concat());
    let (fp_total, fp_whole) = reaching(&fp, "nofp", &["main"]);
    println!(
        "fp: {fp_whole} of {fp_total} samples reach main ({:.1}%)",
        share(fp_whole, fp_total)
    );
    assert!(fp_total > 1000, "too few samples: {fp_total}");
    assert!(
        share(fp_whole, fp_total) < 50.0,
        "frame pointers reach main without frame pointers? {fp_whole} of {fp_total}"
    );
}

/// Debian's `/usr/bin/python3` and a pure-Python loop script (`python3 loop.py SECONDS`) written
/// into `dir`; `None` (after saying so) on a machine without Debian's python3.
fn python_loop(dir: &Path) -> Option<(&'static Path, PathBuf)> {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("skipping: no Debian /usr/bin/python3");
        return None;
    }
    let script = dir.join("loop.py");
    std::fs::write(
        &script,
        "import sys, time\n\
         def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
         def work():\n    d = {}\n    for i in range(2000):\n        \
         d[str(i)] = [j * 2 for j in range(20)]\n    return sorted(d.items())[:3], fib(15)\n\
         end = time.time() + float(sys.argv[1])\n\
         while time.time() < end:\n    work()\n",
    )
    .expect("the script is written");
    Some((python, script))
}

#[test]
fn debian_python3_stacks_reach_start() {
    let Some(_machine) = privileged("debian_python3_stacks_reach_start") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((python, script)) = python_loop(dir.path()) else {
        return;
    };
    let workload = Workload::spawn(python, &[script.to_str().unwrap(), "20"]);
    let pid = workload.pid().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let args = ["-F", "999", "-d", "4s", "--pid", &pid];
    let roots = ["_start", "main", "Py_BytesMain"];

    let tables = record_folded(
        dir.path(),
        "tables",
        &[&args[..], &["--unwind", "tables"]].concat(),
    );
    let (total, whole) = reaching(&tables, "python3", &roots);
    println!(
        "tables: {whole} of {total} python3 samples reach _start/main ({:.1}%)",
        share(whole, total)
    );
    assert!(total > 1000, "too few samples: {total}");
    // Measured here: 97.9%. The bar is 90%.
    assert!(
        share(whole, total) >= 90.0,
        "tables: only {whole} of {total} samples reach _start/main"
    );

    let fp = record_folded(dir.path(), "fp", &[&args[..], &["--unwind", "fp"]].concat());
    let (fp_total, fp_whole) = reaching(&fp, "python3", &roots);
    println!(
        "fp: {fp_whole} of {fp_total} python3 samples reach _start/main ({:.1}%)",
        share(fp_whole, fp_total)
    );
    assert!(
        share(fp_whole, fp_total) < 50.0,
        "frame pointers reach _start in Debian's python3? {fp_whole} of {fp_total}"
    );
}

#[test]
fn bad_unwind_settings_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.folded");
    let out = out.to_str().unwrap();
    let (code, _, stderr) = run_profiler(&[
        "record",
        "-d",
        "1s",
        "-o",
        out,
        "--unwind",
        "tables",
        "--unwind-table-memory",
        "4096",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--unwind-table-memory") && stderr.contains("1 MiB"),
        "{stderr}"
    );
    // An unknown walker: refused, with the choices listed.
    let (code, _, stderr) = run_profiler(&["record", "-d", "1s", "-o", out, "--unwind", "dwarf"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("auto") && stderr.contains("fp") && stderr.contains("tables"),
        "{stderr}"
    );
}

/// Whether `chain` appears in `frames` in order (not necessarily adjacent).
fn in_order(frames: &[String], chain: &[&str]) -> bool {
    let mut want = chain.iter().peekable();
    for frame in frames {
        if want.peek().is_some_and(|w| *w == frame) {
            want.next();
        }
    }
    want.peek().is_none()
}

/// (samples whose stack holds `marker`, those with `chain` in order, root first).
fn marked_with_chain(stacks: &[(Vec<String>, u64)], marker: &str, chain: &[&str]) -> (u64, u64) {
    let (mut total, mut whole) = (0, 0);
    for (frames, count) in stacks {
        if frames.iter().any(|f| f == marker) {
            total += count;
            if in_order(frames, chain) {
                whole += count;
            }
        }
    }
    (total, whole)
}

/// `record --unwind tables` of `pid` for `seconds`: the stacks and the summary line.
fn record_tables(
    dir: &Path,
    name: &str,
    pid: u32,
    seconds: u32,
) -> (Vec<(Vec<String>, u64)>, String) {
    let (pid, duration) = (pid.to_string(), format!("{seconds}s"));
    let args = [
        "-F", "999", "-d", &duration, "--pid", &pid, "--unwind", "tables",
    ];
    record_folded_with_summary(dir, name, &args)
}

/// Runs `bin ARGS` without frame pointers under `record --unwind tables` and checks that ≥ 90%
/// of the samples holding `marker` carry `chain` (root first, in order).
fn assert_case(dir: &Path, name: &str, bin: &Path, args: &[&str], marker: &str, chain: &[&str]) {
    let workload = Workload::spawn(bin, args);
    std::thread::sleep(Duration::from_millis(300));
    let (stacks, _) = record_tables(dir, name, workload.pid(), 4);
    let (total, whole) = marked_with_chain(&stacks, marker, chain);
    println!(
        "{name}: {whole} of {total} samples in {marker} carry {chain:?} ({:.1}%)",
        share(whole, total)
    );
    assert!(total > 500, "{name}: too few samples in {marker}: {total}");
    assert!(
        share(whole, total) >= 90.0,
        "{name}: only {whole} of {total} samples in {marker} carry {chain:?}"
    );
}

/// `tests/workloads/cases.c` built without frame pointers, with `extra` flags.
fn build_cases(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    build_without_fp(dir, "cases.c", out, &[&["-pthread"][..], extra].concat())
}

#[test]
fn a_callback_through_glibc_qsort_keeps_its_callers() {
    let Some(_machine) = privileged("a_callback_through_glibc_qsort_keeps_its_callers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cases(dir.path(), "cases", &[]);
    // glibc's sort is between the comparator and its caller: its rows walk out of it.
    assert_case(
        dir.path(),
        "qsort",
        &bin,
        &["qsort", "20"],
        "compare_slow",
        &["main", "sort_loop", "compare_slow"],
    );
}

#[test]
fn a_signal_handler_walks_through_the_signal_frame() {
    let Some(_machine) = privileged("a_signal_handler_walks_through_the_signal_frame") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cases(dir.path(), "cases", &[]);
    // The handler's caller is the kernel's signal frame (`__restore_rt`), whose rule restores
    // the interrupted registers: the walk goes on into the interrupted loop and main.
    assert_case(
        dir.path(),
        "signal",
        &bin,
        &["signal", "20"],
        "signal_work",
        &["main", "signal_loop", "on_signal", "signal_work"],
    );
}

#[test]
fn a_threads_stacks_end_at_clone3_complete() {
    let Some(_machine) = privileged("a_threads_stacks_end_at_clone3_complete") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cases(dir.path(), "cases", &[]);
    let workload = Workload::spawn(&bin, &["thread", "20"]);
    std::thread::sleep(Duration::from_millis(300));
    let (stacks, summary) = record_tables(dir.path(), "thread", workload.pid(), 4);
    // With its DWARF clone3 is `clone3`; named from its symbol table (the default: Debian's
    // libc debug file is over `--debug-info-memory`), blazesym picks the alias `__clone3`.
    let stacks: Vec<(Vec<String>, u64)> = stacks
        .into_iter()
        .map(|(frames, count)| (frames.iter().map(|f| comparable(f)).collect(), count))
        .collect();
    let (total, whole) = marked_with_chain(
        &stacks,
        "thread_work",
        &["clone3", "start_thread", "thread_body", "thread_work"],
    );
    println!("thread: {whole} of {total} samples end at clone3");
    assert!(total > 500, "too few samples: {total}");
    assert!(
        share(whole, total) >= 90.0,
        "only {whole} of {total} thread samples end at clone3"
    );
    // Ending at clone3 is the end of the stack, not a failed walk.
    let complete = complete_share(&summary);
    assert!(complete >= 90.0, "only {complete}% complete: {summary}");
}

#[test]
fn a_library_loaded_by_dlopen_gets_its_table() {
    let Some(_machine) = privileged("a_library_loaded_by_dlopen_gets_its_table") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cases(dir.path(), "cases", &["-ldl"]);
    let lib = build_without_fp(
        dir.path(),
        "cases_lib.c",
        "libcases.so",
        &["-shared", "-fPIC"],
    );
    // The library is loaded 1 s after start, when the process already has its tables.
    assert_case(
        dir.path(),
        "dlopen",
        &bin,
        &["dlopen", "20", lib.to_str().unwrap()],
        "dl_work",
        &["main", "dl_caller", "dl_work"],
    );
}

#[test]
fn static_non_pie_and_lazy_binding_binaries_unwind() {
    let Some(_machine) = privileged("static_non_pie_and_lazy_binding_binaries_unwind") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, flags) in [
        ("static", &["-static"][..]),
        ("nopie", &["-no-pie"][..]),
        ("lazy", &["-Wl,-z,lazy"][..]),
    ] {
        let bin = build_cases(dir.path(), &format!("cases-{name}"), flags);
        assert_case(
            dir.path(),
            name,
            &bin,
            &["chain", "20"],
            "chain_inner",
            &["main", "chain_outer", "chain_inner"],
        );
    }
}

#[test]
fn deep_stacks_are_whole_up_to_255_frames_and_marked_truncated_beyond() {
    let Some(_machine) =
        privileged("deep_stacks_are_whole_up_to_255_frames_and_marked_truncated_beyond")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cases(dir.path(), "cases", &[]);

    // 200 frames of recursion: beyond perf's default 127, within the walker's 255.
    let workload = Workload::spawn(&bin, &["deep", "20", "200"]);
    std::thread::sleep(Duration::from_millis(300));
    let (stacks, _) = record_tables(dir.path(), "deep200", workload.pid(), 3);
    drop(workload);
    let (total, whole) = marked_with_chain(&stacks, "deep_work", &["main", "recurse"]);
    let deepest = stacks
        .iter()
        .map(|(frames, _)| frames.iter().filter(|f| *f == "recurse").count())
        .max()
        .unwrap_or(0);
    println!("deep 200: {whole} of {total} samples reach main, at most {deepest} recurse frames");
    assert!(total > 500, "too few samples: {total}");
    assert!(
        share(whole, total) >= 90.0,
        "only {whole} of {total} 200-deep stacks reach main"
    );
    assert_eq!(deepest, 201, "every level of the recursion is a frame");

    // 2,000 frames of recursion: the table walker stops at 255 and says so.
    let workload = Workload::spawn(&bin, &["deep", "20"]);
    std::thread::sleep(Duration::from_millis(300));
    let (stacks, summary) = record_tables(dir.path(), "deep", workload.pid(), 4);
    let (total, marked) = marked_with_chain(&stacks, "deep_work", &["[truncated]", "recurse"]);
    println!("deep: {marked} of {total} samples start with [truncated]");
    assert!(total > 1000, "too few samples: {total}");
    assert!(
        share(marked, total) >= 90.0,
        "only {marked} of {total} cut stacks are marked [truncated]"
    );
    // Cut, never whole: no sample of the recursion claims to reach main.
    let (_, whole) = marked_with_chain(&stacks, "deep_work", &["main"]);
    assert_eq!(
        whole, 0,
        "a 2,000-deep stack cannot reach main in 255 frames"
    );
    let complete = complete_share(&summary);
    assert!(complete < 10.0, "cut stacks counted complete: {summary}");
}

/// Debian's perl and a regex/hash loop script (`perl SCRIPT SECONDS`) in `dir`, or None (with
/// the reason printed) where Debian's perl is missing.
fn perl_loop(dir: &Path) -> Option<(&'static Path, PathBuf)> {
    let perl = Path::new("/usr/bin/perl");
    if !perl.exists() {
        eprintln!("skipping: no Debian /usr/bin/perl");
        return None;
    }
    let script = dir.join("loop.pl");
    std::fs::write(
        &script,
        "my $end = time + $ARGV[0]; my %h;\n\
         while (time < $end) {\n\
           for my $i (1..2000) {\n\
             my $s = \"key$i value\" . ($i * 7);\n\
             $h{$s} = $i if $s =~ /^key(\\d+)\\s+value(\\d+)$/ && $1 + $2 > 3;\n\
           }\n\
           my @k = sort keys %h; %h = ();\n\
         }\n",
    )
    .expect("the script is written");
    Some((perl, script))
}

#[test]
fn debian_perl_stacks_reach_main() {
    let Some(_machine) = privileged("debian_perl_stacks_reach_main") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((perl, script)) = perl_loop(dir.path()) else {
        return;
    };
    let workload = Workload::spawn(perl, &[script.to_str().unwrap(), "20"]);
    std::thread::sleep(Duration::from_millis(300));
    let (stacks, _) = record_tables(dir.path(), "perl", workload.pid(), 4);
    let (total, whole) = reaching(&stacks, "perl", &["_start", "main"]);
    println!(
        "perl: {whole} of {total} samples reach _start/main ({:.1}%)",
        share(whole, total)
    );
    assert!(total > 1000, "too few samples: {total}");
    // Measured here: 95.4% (the misses are the first ~120 ms, before the tables are in).
    assert!(
        share(whole, total) >= 90.0,
        "only {whole} of {total} perl samples reach _start/main"
    );
}

/// The share of complete stacks in `record`'s summary (`... complete (97.9%)`).
fn complete_share(summary: &str) -> f64 {
    summary
        .split("complete (")
        .nth(1)
        .and_then(|rest| rest.split('%').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no share of complete stacks in {summary}"))
}

/// A frame name as both tools can agree on it: glibc's internal aliases (`__GI_`, `_impl`,
/// symbol versions) and leading underscores dropped; unnamed frames are `?`.
fn comparable(frame: &str) -> String {
    if profiler_tests::unnamed(frame) || frame.starts_with("0x") {
        return "?".to_owned();
    }
    let name = frame.split('@').next().unwrap_or(frame);
    let name = name.strip_prefix("__GI_").unwrap_or(name);
    let name = name.trim_start_matches('_');
    name.strip_suffix("_impl").unwrap_or(name).to_owned()
}

/// Caller chains, leaf first: kernel frames and the leaf dropped (the leaf is the sampled pc, not
/// unwound; glibc's string functions have several names at one address), repeats folded.
fn caller_chains(stacks: &[(Vec<String>, u64)], process: &str) -> Vec<(Vec<String>, u64)> {
    stacks
        .iter()
        .filter(|(frames, _)| frames.first().map(String::as_str) == Some(process))
        .map(|(frames, count)| {
            let mut chain: Vec<String> = Vec::new();
            for frame in frames[1..].iter().filter(|f| !f.ends_with("_[k]")) {
                let name = comparable(frame);
                if chain.last() != Some(&name) {
                    chain.push(name);
                }
            }
            chain.reverse();
            if !chain.is_empty() {
                chain.remove(0);
            }
            (chain, *count)
        })
        .collect()
}

/// Whether one chain is the other or a prefix of it (leaf first), `?` matching any frame.
fn chains_agree(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y || x == "?" || y == "?")
}

#[test]
fn caller_chains_match_perf_dwarf_on_debian_python3() {
    let Some(_machine) = privileged("caller_chains_match_perf_dwarf_on_debian_python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((python, script)) = python_loop(dir.path()) else {
        return;
    };
    let workload = Workload::spawn(python, &[script.to_str().unwrap(), "20"]);
    std::thread::sleep(Duration::from_millis(300));
    // perf copies 8 KiB of stack per sample and unwinds it afterwards with DWARF; both watch the
    // same process at the same time.
    let perf_data = dir.path().join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "--call-graph", "dwarf", "-F", "999", "-p"])
        .arg(workload.pid().to_string())
        .arg("-o")
        .arg(&perf_data)
        .args(["--", "sleep", "5"])
        .spawn()
        .expect("perf record starts");
    let (ours, _) = record_tables(dir.path(), "python3", workload.pid(), 5);
    assert!(perf.wait().unwrap().success(), "perf record failed");
    let theirs = perf_folded_for_pid(&perf_data, workload.pid());
    let ours = caller_chains(&ours, "python3");
    let theirs = caller_chains(&theirs, "python3");
    let total: u64 = ours.iter().map(|(_, c)| c).sum();
    let perf_total: u64 = theirs.iter().map(|(_, c)| c).sum();
    assert!(
        total > 1000 && perf_total > 1000,
        "too few samples: ours {total}, perf {perf_total}"
    );
    let mut matched = 0;
    for (chain, count) in &ours {
        if theirs.iter().any(|(other, _)| chains_agree(chain, other)) {
            matched += count;
        } else {
            println!("not in perf's ({count}): {}", chain.join(";"));
        }
    }
    println!(
        "{matched} of {total} caller chains match perf --call-graph dwarf's ({:.1}%)",
        share(matched, total)
    );
    // Measured here: 99.9%.
    assert!(
        share(matched, total) >= 90.0,
        "only {matched} of {total} caller chains match perf's"
    );
}

#[test]
fn tables_evicted_for_want_of_room_come_back_when_their_process_runs_again() {
    let Some(_machine) =
        privileged("tables_evicted_for_want_of_room_come_back_when_their_process_runs_again")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some((python, _)), Some((perl, perl_script))) =
        (python_loop(dir.path()), perl_loop(dir.path()))
    else {
        return;
    };
    // One python3 process busy at 1-4 s and again at 12-15 s; perl busy from 5.5 s for 2-4 s
    // (its `time` counts whole seconds): the two never run at once, with a second and more
    // between them even when python3 starts slowly on a loaded host (with half a second, a
    // CI run once saw them overlap, and the daemon's reload throttle (5 s) then held python3's
    // second phase back). With 2 MiB
    // of rows (131,072), python3 with libc and ld.so (95,000 rows) and perl with libperl (62,000
    // more) do not fit together: perl's arrival evicts python3's table (idle then, so least
    // recently used), and python3's return must load it again and evict perl's.
    let phases = dir.path().join("phases.py");
    std::fs::write(
        &phases,
        "import time\n\
         def work():\n    d = {}\n    for i in range(2000):\n        \
         d[str(i)] = [j * 2 for j in range(20)]\n    return sorted(d.items())[:3]\n\
         def busy(seconds):\n    end = time.time() + seconds\n    \
         while time.time() < end:\n        work()\n\
         time.sleep(1)\nbusy(3)\ntime.sleep(8)\nbusy(3)\n",
    )
    .unwrap();
    // One CI run (of many here and there) saw python3's stacks of one phase cut short with the
    // reload counted, and could not be reproduced under load here: the round runs once more
    // then, with the first round's table log printed, so that a repeat leaves the evidence.
    let round = || eviction_round(dir.path(), python, &phases, perl, &perl_script);
    if let Err(first) = round() {
        println!("first round failed, once more:\n{first}");
        if let Err(second) = round() {
            panic!("{second}");
        }
    }
}

/// One run of the eviction test: python3 (`phases`) and perl (after 5.5 s) recorded with 2 MiB
/// of table rows. `Err` tells what fell short, with the daemon's table log.
fn eviction_round(
    dir: &Path,
    python: &Path,
    phases: &Path,
    perl: &Path,
    perl_script: &Path,
) -> Result<(), String> {
    let python = Workload::spawn(python, &[phases.to_str().expect("a UTF-8 temp path")]);
    let perl = Workload::spawn(
        Path::new("/bin/sh"),
        &[
            "-c",
            &format!(
                "sleep 5.5; exec {} {} 3",
                perl.display(),
                perl_script.display()
            ),
        ],
    );
    let (python_pid, perl_pid) = (python.pid().to_string(), perl.pid().to_string());
    let args = [
        "--log-level",
        "warn,profiler_daemon::pipeline::tables=debug",
        "-F",
        "999",
        "-d",
        "16s",
        "--pid",
        &python_pid,
        "--pid",
        &perl_pid,
        "--unwind",
        "tables",
        "--unwind-table-memory",
        "2097152",
    ];
    let (stacks, summary, log) = record_folded_with_log(dir, "evict", &args);
    let evicted: u64 = summary
        .split("; ")
        .find_map(|part| {
            part.strip_suffix(" unwind tables evicted (more room: --unwind-table-memory)")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if evicted < 2 {
        return Err(format!(
            "no table was evicted and loaded again: {summary}\n{log}"
        ));
    }
    for (process, roots) in [
        ("python3", &["_start", "main", "Py_BytesMain"][..]),
        ("perl", &["_start", "main"][..]),
    ] {
        let (total, whole) = reaching(&stacks, process, roots);
        println!(
            "{process}: {whole} of {total} samples reach _start/main ({:.1}%)",
            share(whole, total)
        );
        if total <= 1000 {
            return Err(format!(
                "too few {process} samples: {total}: {summary}\n{log}"
            ));
        }
        // Half of python3's samples come after its table was evicted: without the reload they
        // would be frame-pointer stacks, cut at the first frame.
        if share(whole, total) < 85.0 {
            return Err(format!(
                "only {whole} of {total} {process} samples reach _start/main: {summary}\n{log}"
            ));
        }
    }
    Ok(())
}

/// `--unwind fp` walks stacks of up to 12 frames with a probe read per frame and deeper ones with
/// `bpf_get_stack`, and remembers per CPU the last process found deep. Two processes with frame
/// pointers, one on each side of that limit, share the CPUs (the hint changes hands): every
/// stack of both is whole, each recursion level a frame.
#[test]
fn frame_pointer_stacks_are_whole_on_both_sides_of_the_probe_walk_limit() {
    let Some(_machine) =
        privileged("frame_pointer_stacks_are_whole_on_both_sides_of_the_probe_walk_limit")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fp = ["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"];
    let bin = build_cases(dir.path(), "cases_fp", &fp);
    // 4 levels: 9 frames from burn to __libc_start_call_main; 30 levels: 35.
    let shallow = Workload::spawn(&bin, &["deep", "20", "4"]);
    let deep = Workload::spawn(&bin, &["deep", "20", "30"]);
    std::thread::sleep(Duration::from_millis(300));
    let (shallow_pid, deep_pid) = (shallow.pid().to_string(), deep.pid().to_string());
    let args = [
        "-F",
        "999",
        "-d",
        "3s",
        "--pid",
        &shallow_pid,
        "--pid",
        &deep_pid,
        "--unwind",
        "fp",
    ];
    let stacks = record_folded(dir.path(), "fp_probe", &args);
    drop((shallow, deep));
    let (mut total, mut by_levels) = (0, std::collections::BTreeMap::new());
    for (frames, count) in &stacks {
        if !frames.iter().any(|f| f == "deep_work") {
            continue;
        }
        total += count;
        if in_order(frames, &["main", "recurse", "deep_work"]) {
            let levels = frames.iter().filter(|f| *f == "recurse").count();
            *by_levels.entry(levels).or_insert(0) += count;
        }
    }
    println!("fp stacks in deep_work: {total}, whole by recursion levels: {by_levels:?}");
    let (five, thirty_one) = (by_levels.get(&5), by_levels.get(&31));
    assert!(total > 1500, "too few samples: {total}");
    for (levels, n) in [(5, five), (31, thirty_one)] {
        let n = n.copied().unwrap_or(0);
        assert!(
            share(n, total) >= 40.0,
            "{levels}-level stacks: {n} of {total} ({by_levels:?})"
        );
    }
    assert!(
        share(five.unwrap_or(&0) + thirty_one.unwrap_or(&0), total) >= 98.0,
        "stacks cut or walked wrong: {by_levels:?} of {total}"
    );
}
