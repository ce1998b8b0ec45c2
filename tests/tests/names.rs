//! Every frame gets a name: inlined C++ with file and line, binaries visible only in a private
//! mount namespace, JIT code from a perf map, short-lived processes, split debug files, and
//! binaries without symbols (shown as module+offset).

use std::process::Command;
use std::time::Duration;

use profiler_tests::receiver;
use profiler_tests::{
    Workload, build_workload, named_ratio, privileged, record_folded, spawn_profiler, split,
    terminate, workspace,
};

const HOT: [&str; 3] = ["hot_a", "hot_b", "hot_c"];

#[test]
fn inlined_cpp_frames_have_names_files_and_the_callers_line() {
    let Some(_machine) = privileged("inlined_cpp_frames_have_names_files_and_the_callers_line")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("inlined", dir.path());
    let workload = Workload::spawn(&bin, &["20"]);
    let source = std::fs::read_to_string(workspace().join("tests/workloads/inlined.cpp")).unwrap();
    let call_line = source
        .lines()
        .position(|l| l.contains("// CALL_SITE"))
        .unwrap() as i64
        + 1;

    // Folded: the inlined function is a frame of its own, under its caller.
    let stacks = record_folded(
        dir.path(),
        "inl",
        &[
            "-F",
            "999",
            "-d",
            "2s",
            "--pid",
            &workload.pid().to_string(),
        ],
    );
    let (total, named) = named_ratio(&stacks, "inlined");
    let inlined: u64 = stacks
        .iter()
        .filter(|(f, _)| {
            f.windows(2).any(|w| {
                w[0] == "shapes::compute(unsigned long)"
                    && w[1] == "shapes::Accumulator<unsigned long>::step(unsigned long)"
            })
        })
        .map(|(_, c)| c)
        .sum();
    println!("{total} samples, {named} named, {inlined} in the inlined step under compute");
    assert!(named * 10 >= total * 9, "{named} of {total} named");
    assert!(
        inlined * 10 >= total * 8,
        "the inlined frame should carry most samples"
    );

    // OTLP: the same location has two lines, innermost first, with files and the call site.
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{}", recv.addr),
            "--interval",
            "1s",
            "-F",
            "499",
            "--pid",
            &workload.pid().to_string(),
        ],
        &[],
    );
    let captures = recv.wait_for(1, Duration::from_secs(15));
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    let request = &captures.first().expect("an export").request;
    let dict = request.dictionary.as_ref().unwrap();
    let s = |i: i32| dict.string_table[i as usize].as_str();
    let found = dict.location_table.iter().find(|loc| {
        loc.lines.len() == 2
            && s(dict.function_table[loc.lines[0].function_index as usize].name_strindex)
                .contains("Accumulator<unsigned long>::step")
    });
    let loc = found.expect("a location with the inlined step and its caller");
    let step = &dict.function_table[loc.lines[0].function_index as usize];
    let compute = &dict.function_table[loc.lines[1].function_index as usize];
    assert_eq!(s(compute.name_strindex), "shapes::compute(unsigned long)");
    assert!(
        s(step.filename_strindex).ends_with("inlined.cpp"),
        "{}",
        s(step.filename_strindex)
    );
    assert!(s(compute.filename_strindex).ends_with("inlined.cpp"));
    assert_eq!(
        loc.lines[1].line, call_line,
        "the caller's line is the call site"
    );
    assert!(loc.lines[0].line > 0);
}

#[test]
fn binaries_only_in_a_private_mount_namespace_are_named() {
    let Some(_machine) = privileged("binaries_only_in_a_private_mount_namespace_are_named") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    // A tmpfs mounted over /mnt in a private namespace: the host's /mnt has no such file.
    let script = format!(
        "mount -t tmpfs tmpfs /mnt && cp {} /mnt/nsplit && exec /mnt/nsplit 20",
        bin.display()
    );
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    let workload = Workload(child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !std::path::Path::new("/mnt/nsplit").exists(),
        "the host must not see the binary"
    );
    let stacks = record_folded(
        dir.path(),
        "ns",
        &[
            "-F",
            "999",
            "-d",
            "2s",
            "--pid",
            &workload.pid().to_string(),
        ],
    );
    let (total, named) = named_ratio(&stacks, "nsplit");
    let (shares, hot) = split(&stacks, &HOT);
    println!("{total} samples, {named} named, {hot} hot: {shares:?}");
    assert!(total > 1000, "{total}");
    assert!(named * 10 >= total * 9, "{named} of {total} named");
    assert!((shares["hot_a"] - 60.0).abs() < 5.0);
}

#[test]
fn jit_code_is_named_from_the_perf_map() {
    let Some(_machine) = privileged("jit_code_is_named_from_the_perf_map") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("jit", dir.path());
    let workload = Workload::spawn(&bin, &["20"]);
    std::thread::sleep(Duration::from_millis(300));
    let stacks = record_folded(
        dir.path(),
        "jit",
        &[
            "-F",
            "999",
            "-d",
            "2s",
            "--pid",
            &workload.pid().to_string(),
        ],
    );
    let (total, named) = named_ratio(&stacks, "jit");
    let jit: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|x| x == "jit_hot_loop"))
        .map(|(_, c)| c)
        .sum();
    println!("{total} samples, {named} named, {jit} in jit_hot_loop");
    assert!(
        jit * 10 >= total * 9,
        "{jit} of {total} in the JIT function"
    );
    assert!(named * 10 >= total * 9);
}

#[test]
fn short_lived_processes_keep_their_names() {
    let Some(_machine) = privileged("short_lived_processes_keep_their_names") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let out = dir.path().join("short.folded");
    let recorder = spawn_profiler(
        &[
            "record",
            "-F",
            "999",
            "-d",
            "60s",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(1));
    // Sixty processes of ~80 ms each, one after the other.
    let status = Command::new("sh")
        .args([
            "-c",
            &format!("for i in $(seq 60); do {} 0.08; done", bin.display()),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));
    let (code, stdout, stderr, _) = terminate(recorder);
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    let stacks = profiler_tests::parse_folded(&std::fs::read_to_string(&out).unwrap());
    let (total, named) = named_ratio(&stacks, "split");
    let (shares, hot) = split(&stacks, &HOT);
    println!("{total} samples, {named} named, {hot} hot: {shares:?}");
    assert!(
        total > 2500,
        "60 × 80 ms at 999 Hz should give ~4800 samples, got {total}"
    );
    assert!(named * 10 >= total * 9, "{named} of {total} named");
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "three variants of one binary, side by side"
)]
fn stripped_binaries_use_their_debug_file_and_symbolless_ones_show_their_module() {
    let Some(_machine) =
        privileged("stripped_binaries_use_their_debug_file_and_symbolless_ones_show_their_module")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let stripped = dir.path().join("split-stripped");
    let nosyms = dir.path().join("split-nosyms");
    let debug_root = dir.path().join("debug");
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(&bin)
        .output()
        .unwrap();
    let build_id = String::from_utf8_lossy(&notes.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .expect("a build id");
    let debug_file = debug_root
        .join(".build-id")
        .join(&build_id[..2])
        .join(format!("{}.debug", &build_id[2..]));
    std::fs::create_dir_all(debug_file.parent().unwrap()).unwrap();
    for args in [
        vec![
            "--only-keep-debug".to_owned(),
            bin.display().to_string(),
            debug_file.display().to_string(),
        ],
        // As distributions ship them: stripped, with a debug link, the debug file by build id.
        vec![
            "--strip-all".to_owned(),
            format!("--add-gnu-debuglink={}", debug_file.display()),
            bin.display().to_string(),
            stripped.display().to_string(),
        ],
        vec![
            "--strip-all".to_owned(),
            bin.display().to_string(),
            nosyms.display().to_string(),
        ],
    ] {
        assert!(
            Command::new("objcopy")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }

    let with_debug = Workload::spawn(&stripped, &["20"]);
    let stacks = record_folded(
        dir.path(),
        "stripped",
        &[
            "-F",
            "999",
            "-d",
            "2s",
            "--pid",
            &with_debug.pid().to_string(),
            "--debug-dir",
            debug_root.to_str().unwrap(),
        ],
    );
    let (total, named) = named_ratio(&stacks, "split-stripped");
    let (shares, _) = split(&stacks, &HOT);
    println!("stripped: {total} samples, {named} named: {shares:?}");
    assert!(
        named * 10 >= total * 9,
        "{named} of {total} named through the debug file"
    );
    assert!((shares["hot_a"] - 60.0).abs() < 5.0);
    drop(with_debug);

    // Found by build id alone, for a binary without a debug link (debuginfod-style layouts).
    let nolink = dir.path().join("split-nolink");
    assert!(
        Command::new("objcopy")
            .args(["--strip-all"])
            .arg(&bin)
            .arg(&nolink)
            .status()
            .unwrap()
            .success()
    );
    let by_build_id = Workload::spawn(&nolink, &["20"]);
    let stacks = record_folded(
        dir.path(),
        "nolink",
        &[
            "-F",
            "999",
            "-d",
            "2s",
            "--pid",
            &by_build_id.pid().to_string(),
            "--debug-dir",
            debug_root.to_str().unwrap(),
        ],
    );
    let (total, named) = named_ratio(&stacks, "split-nolink");
    println!("no debug link: {total} samples, {named} named");
    assert!(
        named * 10 >= total * 9,
        "{named} of {total} named through the build-id debug file"
    );
    drop(by_build_id);

    // Found by debug link alone, in the `.debug/` directory beside the binary (no build-id
    // layout, no --debug-dir): how split debug files are often deployed by hand.
    let linked = dir.path().join("split-linked");
    assert!(
        Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!("--add-gnu-debuglink={}", debug_file.display()))
            .arg(&bin)
            .arg(&linked)
            .status()
            .unwrap()
            .success()
    );
    let beside = dir.path().join(".debug");
    std::fs::create_dir_all(&beside).unwrap();
    std::fs::copy(&debug_file, beside.join(debug_file.file_name().unwrap())).unwrap();
    let by_link = Workload::spawn(&linked, &["20"]);
    let stacks = record_folded(
        dir.path(),
        "linked",
        &["-F", "999", "-d", "2s", "--pid", &by_link.pid().to_string()],
    );
    let (total, named) = named_ratio(&stacks, "split-linked");
    println!("debug link into .debug/: {total} samples, {named} named");
    assert!(
        named * 10 >= total * 9,
        "{named} of {total} named through the linked debug file"
    );
    drop(by_link);

    let bare = Workload::spawn(&nosyms, &["20"]);
    let stacks = record_folded(
        dir.path(),
        "nosyms",
        &["-F", "999", "-d", "2s", "--pid", &bare.pid().to_string()],
    );
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let as_module: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|x| x == "[split-nosyms]"))
        .map(|(_, c)| c)
        .sum();
    println!("no symbols: {total} samples, {as_module} shown as their module");
    assert!(total > 1000);
    assert!(
        as_module * 10 >= total * 9,
        "frames without symbols show as their module"
    );
}
