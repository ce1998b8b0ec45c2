//! What a newcomer meets first, on the real kernel and in a real browser: the whole-machine
//! flamegraph opens on its root in Chromium, libraries without symbols are one frame each,
//! idle recordings still write valid files, a bad output path fails before sampling, help fits
//! 80 columns, `check` names a collector that speaks the wrong protocol, and the pprof output
//! reads in `go tool pprof`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is the test's failure"
)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use profiler_tests::browser::{Browser, artifact};
use profiler_tests::receiver;
use profiler_tests::{Workload, build_workload, privileged, run_profiler};

#[test]
fn the_whole_machine_flamegraph_opens_on_its_root_in_chromium() {
    let Some(_machine) = privileged("the_whole_machine_flamegraph_opens_on_its_root_in_chromium")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("cases", dir.path());
    // A busy machine's deepest stacks: a recursion far deeper than a sample holds, beside a
    // compression and a shell pipeline.
    let _deep = Workload::spawn(&bin, &["deep", "20"]);
    let _xz = xz();
    std::thread::sleep(Duration::from_millis(300));
    // The README's first command, in a fresh folder: no `-o`.
    let out = Command::new(profiler_tests::profiler_bin())
        .args(["record", "-d", "3s"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = dir.path().join("flamegraph.svg");
    let text = std::fs::read_to_string(&svg).expect("flamegraph.svg written by default");
    let height: u32 = text
        .split_once("height=\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .and_then(|h| h.parse().ok())
        .expect("the SVG's height");
    assert!(
        height > 1600,
        "the graph should be taller than the window: {height}"
    );

    let browser = Browser::start(1280, 800);
    browser.open(&format!("file://{}", svg.display()));
    let seen = browser.eval(
        "const all = [...document.querySelectorAll('g')].find(g => {
             const t = g.querySelector('title');
             return t && t.textContent.startsWith('all (');
         });
         if (!all) return null;
         const r = all.querySelector('rect').getBoundingClientRect();
         return [r.top, r.bottom, r.width, window.innerHeight, window.innerWidth];",
    );
    browser.screenshot(&artifact("first-flamegraph.png"));
    let values: Vec<f64> = seen
        .as_array()
        .unwrap_or_else(|| panic!("no root frame in the page: {seen}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let [top, bottom, width, inner_height, inner_width] = values[..] else {
        panic!("{seen}");
    };
    assert!(
        top >= 0.0 && bottom <= inner_height,
        "the root frame is off screen: {top}..{bottom} in a window {inner_height} high"
    );
    assert!(
        width > 0.8 * inner_width,
        "root frame {width} wide of {inner_width}"
    );
}

/// `xz` compressing random bytes, in liblzma (Debian's, stripped: most of its functions have
/// no symbol).
fn xz() -> Workload {
    let child = Command::new("xz")
        .args(["-6", "-T1", "-c", "/dev/urandom"])
        .stdout(Stdio::null())
        .spawn()
        .expect("xz runs");
    Workload(child)
}

/// (frames, count) lines of a folded file.
fn folded(path: &Path) -> Vec<(Vec<String>, u64)> {
    profiler_tests::parse_folded(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn code_without_symbols_is_one_frame_per_library_unless_addresses_are_kept() {
    let Some(_machine) =
        privileged("code_without_symbols_is_one_frame_per_library_unless_addresses_are_kept")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let xz = xz();
    let pid = xz.pid().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let grouped = dir.path().join("grouped.folded");
    let kept = dir.path().join("kept.folded");
    for (out, extra) in [(&grouped, None), (&kept, Some("--keep-addresses"))] {
        let mut args = vec![
            "record",
            "-d",
            "3s",
            "--pid",
            &pid,
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let (code, _, stderr) = run_profiler(&args);
        assert_eq!(code, 0, "{stderr}");
    }
    let grouped = folded(&grouped);
    let kept = folded(&kept);
    let frames = |stacks: &[(Vec<String>, u64)]| -> HashSet<String> {
        stacks.iter().flat_map(|(f, _)| f.iter().cloned()).collect()
    };
    let liblzma_samples = |stacks: &[(Vec<String>, u64)], pred: &dyn Fn(&str) -> bool| -> u64 {
        stacks
            .iter()
            .filter(|(f, _)| f.iter().any(|n| pred(n)))
            .map(|(_, c)| c)
            .sum()
    };
    let group = frames(&grouped)
        .into_iter()
        .find(|f| f.starts_with("[liblzma.so"))
        .unwrap_or_else(|| panic!("no [liblzma.so…] frame: {:?}", frames(&grouped)));
    assert!(group.ends_with(']'), "{group}");
    assert!(
        !frames(&grouped).iter().any(|f| f.contains("+0x")),
        "addresses left in the grouped output"
    );
    let total: u64 = grouped.iter().map(|(_, c)| c).sum();
    let in_group = liblzma_samples(&grouped, &|n| n == group);
    assert!(
        in_group * 2 > total,
        "{in_group} of {total} samples in {group}"
    );
    let apart: HashSet<String> = frames(&kept)
        .into_iter()
        .filter(|f| f.starts_with("[unknown] liblzma.so") && f.contains("+0x"))
        .collect();
    assert!(
        apart.len() > 5,
        "--keep-addresses should keep liblzma's addresses apart: {apart:?}"
    );
    assert!(
        grouped.len() < kept.len(),
        "grouping should merge stacks: {} vs {}",
        grouped.len(),
        kept.len()
    );
}

#[test]
fn an_idle_process_gives_valid_empty_files_in_every_format() {
    let Some(_machine) = privileged("an_idle_process_gives_valid_empty_files_in_every_format")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sleeper = Workload::spawn(Path::new("/bin/sleep"), &["60"]);
    let pid = sleeper.pid().to_string();
    for name in ["idle.svg", "idle.folded", "idle.pb.gz"] {
        let out = dir.path().join(name);
        let (code, stdout, stderr) = run_profiler(&[
            "record",
            "-d",
            "1s",
            "--pid",
            &pid,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stdout.contains("nothing was sampled"), "{name}: {stdout}");
        assert!(out.exists(), "{name} not written");
    }
    let svg = std::fs::read_to_string(dir.path().join("idle.svg")).unwrap();
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("No samples were recorded"), "{svg}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("idle.folded")).unwrap(),
        ""
    );
    let raw = go_pprof_raw(&dir.path().join("idle.pb.gz"));
    assert!(raw.contains("PeriodType: cpu nanoseconds"), "{raw}");
}

#[test]
fn a_bad_output_path_fails_in_a_second_before_sampling() {
    // No privileges needed: it must fail before touching the kernel.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/folder/out.svg");
    for (path, expect) in [
        (missing.to_str().unwrap(), "does not exist"),
        (dir.path().to_str().unwrap(), "`.svg`"),
    ] {
        let start = Instant::now();
        let (code, _, stderr) = run_profiler(&["record", "-d", "60s", "-o", path]);
        assert!(start.elapsed() < Duration::from_secs(1), "{path}");
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(stderr.contains(expect), "{path}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "said once: {stderr}");
    }
    let folder = dir.path().join("x.svg");
    std::fs::create_dir(&folder).unwrap();
    let (code, _, stderr) = run_profiler(&["record", "-o", folder.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("it is a folder"), "{stderr}");
}

#[test]
fn help_fits_80_columns_with_examples_and_variables() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["record", "--help"],
        &["run", "--help"],
        &["check", "--help"],
    ] {
        let (code, stdout, stderr) = run_profiler(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        for line in stdout.lines() {
            assert!(line.chars().count() <= 80, "{args:?}: {line}");
        }
        if args.contains(&"--help") {
            assert!(stdout.contains("Examples:"), "{args:?}");
        }
    }
    let (_, run_help, _) = run_profiler(&["run", "--help"]);
    assert!(run_help.contains("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT"));
    let (_, record_help, _) = run_profiler(&["record", "--help"]);
    assert!(record_help.contains(".pb.gz") && record_help.contains("[default: flamegraph.svg]"));
}

/// A plain HTTP/1.1 server on a free port that answers every request with 404.
fn http1_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            // A client that left early is nothing to report.
            if std::io::Read::read(&mut stream, &mut buf).is_ok() {
                std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .ok();
            }
        }
    });
    addr
}

#[test]
fn check_names_a_collector_that_speaks_the_other_protocol() {
    let Some(_machine) = privileged("check_names_a_collector_that_speaks_the_other_protocol")
    else {
        return;
    };
    let http1 = http1_server();
    let (code, stdout, _) = run_profiler(&["check", "--otlp-endpoint", &format!("http://{http1}")]);
    let line = collector_line(&stdout);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        line.starts_with("FAIL")
            && line.contains("speaks HTTP/1.1")
            && line.contains("--otlp-protocol http/protobuf"),
        "{line}"
    );

    let grpc = receiver::grpc(receiver::free_addr(), false);
    let endpoint = format!("http://{}", grpc.addr);
    let (code, stdout, _) = run_profiler(&[
        "check",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let line = collector_line(&stdout);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        line.contains("speaks only HTTP/2") && line.contains("--otlp-protocol grpc"),
        "{line}"
    );

    let (code, stdout, _) = run_profiler(&["check", "--otlp-endpoint", &endpoint]);
    let line = collector_line(&stdout);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        line.starts_with("ok") && line.contains("accepted an empty export (grpc)"),
        "{line}"
    );
    let http = receiver::http(receiver::free_addr());
    let (code, stdout, _) = run_profiler(&[
        "check",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &format!("http://{}", http.addr),
    ]);
    let line = collector_line(&stdout);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        line.contains("accepted an empty export (http/protobuf)"),
        "{line}"
    );

    // Optional features that are absent are `info`, never `ok` with an error text.
    for l in stdout.lines().filter(|l| l.starts_with("ok")) {
        assert!(
            !l.contains("No such file") && !l.contains("unavailable") && !l.contains("missing"),
            "{l}"
        );
    }
}

fn collector_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.get(6..).is_some_and(|r| r.starts_with("collector")))
        .unwrap_or_else(|| panic!("no collector line: {stdout}"))
        .to_owned()
}

/// `go tool pprof -raw`: pprof's own reader (it checks the profile's consistency).
fn go_pprof_raw(path: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(path)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("go runs (cargo xtask setup installs golang-go)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof refused {}: {}{text}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn pprof_reads_in_go_tool_pprof_with_mappings_lines_and_addresses() {
    let Some(_machine) =
        privileged("pprof_reads_in_go_tool_pprof_with_mappings_lines_and_addresses")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let workload = Workload::spawn(&bin, &["10"]);
    let xz = xz();
    let out = dir.path().join("cpu.pb.gz");
    let (code, _, stderr) = run_profiler(&[
        "record",
        "-F",
        "499",
        "-d",
        "2s",
        "--pid",
        &workload.pid().to_string(),
        "--pid",
        &xz.pid().to_string(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let raw = go_pprof_raw(&out);
    let mappings: Vec<&str> = raw
        .split_once("\nMappings\n")
        .map(|(_, m)| m.lines().collect())
        .unwrap_or_default();
    // "ID: START/LIMIT/OFFSET FILE BUILDID [FN][FL][LN][IN]"
    let mapping = |file: &str| {
        *mappings
            .iter()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no mapping of {file}: {raw}"))
    };
    let workload_mapping = mapping(bin.to_str().unwrap());
    let range = workload_mapping
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split('/')
        .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        .collect::<Vec<_>>();
    assert!(range[1] > range[0], "empty range: {workload_mapping}");
    for flag in ["[FN]", "[FL]", "[LN]"] {
        assert!(
            workload_mapping.contains(flag),
            "{flag}: {workload_mapping}"
        );
    }
    let lzma = mapping("liblzma.so");
    assert!(
        !lzma.contains("[FL]"),
        "no file names in stripped liblzma: {lzma}"
    );
    // Unnamed liblzma addresses are locations without lines: an address, a mapping, no name.
    let lzma_id = lzma.split(':').next().unwrap().trim();
    let locations = raw
        .split_once("\nLocations\n")
        .map(|(_, rest)| rest.split_once("\nMappings\n").map_or(rest, |(l, _)| l))
        .unwrap();
    let bare = locations
        .lines()
        .filter(|l| {
            l.contains(&format!(" M={lzma_id}")) && l.trim_end().ends_with(&format!("M={lzma_id}"))
        })
        .count();
    assert!(bare > 0, "no unnamed liblzma location: {locations}");
    assert!(!locations.contains("[unknown]"), "invented names in pprof");
    let top = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&out)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("hot_a"), "{top}");
}
