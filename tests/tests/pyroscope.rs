//! What Grafana Pyroscope makes of our OTLP profiles, checked with an independent
//! re-implementation of its ingestion rules (`tests/python/pyroscope_convert.py`): series that do
//! not grow with pids or churn, converted profiles within its size limit on deep stacks over many
//! libraries, and unnamed frames that stay addresses its symbolizer can name.
#![allow(clippy::unwrap_used, reason = "test helpers below fail loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use profiler_tests::receiver::{self, Capture};
use profiler_tests::{Workload, build_workload, privileged, spawn_profiler, terminate, workspace};
use prost::Message as _;

/// The lowest `--max-profile-bytes`: many profiles per window, so splitting is exercised.
const LIMIT: u64 = 65_536;

fn clang(args: &[&str]) {
    profiler_tests::clang(&[&["-Wall"][..], args].concat());
}

/// Compiles pprof's schema for Python into `dir` (protoc from `cargo xtask setup`).
fn pprof_python(dir: &Path) {
    let proto_dir = workspace().join("tests/python");
    let status = Command::new("protoc")
        .arg(format!("--proto_path={}", proto_dir.display()))
        .arg(format!("--python_out={}", dir.display()))
        .arg("pprof_profile.proto")
        .status()
        .expect("protoc runs");
    assert!(status.success());
}

/// Converts every captured request as Pyroscope would; one JSON value per profile.
fn convert(dir: &Path, captures: &[Capture]) -> Vec<serde_like::Profile> {
    pprof_python(dir);
    let mut paths = Vec::new();
    for (i, c) in captures.iter().enumerate() {
        let path = dir.join(format!("request-{i}.bin"));
        std::fs::write(&path, c.request.encode_to_vec()).unwrap();
        paths.push(path);
    }
    let out = Command::new("python3")
        .arg(workspace().join("tests/python/pyroscope_convert.py"))
        .arg(dir)
        .args(&paths)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(serde_like::Profile::parse)
        .collect()
}

/// The few fields of the script's JSON lines the tests read (no JSON crate in this workspace:
/// the script prints them in a fixed, simple form).
mod serde_like {
    #[derive(Debug)]
    pub(super) struct Profile {
        pub(super) service: String,
        pub(super) series: Vec<String>,
        pub(super) samples: u64,
        pub(super) largest_converted_bytes: u64,
        /// (address, file, build id)
        pub(super) unsymbolized: Vec<(u64, String, String)>,
    }

    fn field<'a>(line: &'a str, key: &str) -> &'a str {
        let start = line.find(&format!("\"{key}\": ")).unwrap() + key.len() + 4;
        &line[start..]
    }

    fn number(line: &str, key: &str) -> u64 {
        let rest = field(line, key);
        let end = rest.find([',', '}']).unwrap();
        rest[..end].trim().parse().unwrap()
    }

    fn string(rest: &str) -> (String, &str) {
        let rest = rest.trim_start().strip_prefix('"').unwrap();
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, e) = chars.next().unwrap();
                    out.push(e);
                }
                '"' => return (out, &rest[i + 1..]),
                c => out.push(c),
            }
        }
        panic!("unterminated string");
    }

    fn strings(line: &str, key: &str) -> Vec<String> {
        let mut rest = field(line, key).strip_prefix('[').unwrap();
        let mut out = Vec::new();
        while !rest.trim_start().starts_with(']') {
            let (s, r) = string(rest);
            out.push(s);
            rest = r.trim_start().strip_prefix(',').unwrap_or(r);
        }
        out
    }

    impl Profile {
        pub(super) fn parse(line: &str) -> Self {
            let mut unsymbolized = Vec::new();
            let mut rest = field(line, "unsymbolized");
            while let Some(i) = rest.find("\"address\": ") {
                let item = &rest[i..];
                let address = number(item, "address");
                let (file, _) = string(field(item, "file"));
                let (build_id, after) = string(field(item, "build_id"));
                unsymbolized.push((address, file, build_id));
                rest = after;
            }
            Self {
                service: string(field(line, "service")).0,
                series: strings(line, "series"),
                samples: number(line, "samples"),
                largest_converted_bytes: number(line, "largest_converted_bytes"),
                unsymbolized,
            }
        }
    }
}

/// Builds the chain workload and `n` libraries, each a different file content.
fn chain_workload(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
    let src = workspace().join("tests/workloads");
    let main = dir.join("chain");
    clang(&[
        "-o",
        main.to_str().unwrap(),
        src.join("chain.c").to_str().unwrap(),
        "-ldl",
    ]);
    let libs: Vec<String> = (0..n)
        .map(|i| {
            let lib = dir.join(format!("libchain{i}.so"));
            clang(&[
                "-shared",
                "-fPIC",
                &format!("-DLIB_ID={i}"),
                "-o",
                lib.to_str().unwrap(),
                src.join("chain_lib.c").to_str().unwrap(),
            ]);
            lib.to_str().unwrap().to_owned()
        })
        .collect();
    (main, libs)
}

#[test]
fn converted_profiles_stay_within_the_limit_on_deep_stacks_over_many_libraries() {
    let Some(_machine) =
        privileged("converted_profiles_stay_within_the_limit_on_deep_stacks_over_many_libraries")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (main, libs) = chain_workload(dir.path(), 40);
    let mut args = vec!["30"];
    args.extend(libs.iter().map(String::as_str));
    let workload = Workload::spawn(&main, &args);
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{}", recv.addr),
            "--interval",
            "4s",
            "-F",
            "999",
            "--pid",
            &workload.pid().to_string(),
            "--max-profile-bytes",
            &LIMIT.to_string(),
            "--http-address",
            "off",
        ],
        &[],
    );
    // A whole window (~4000 samples) splits into ~30 requests; the first window may be short
    // (the daemon's start), so wait for more than it can hold.
    let arrived = recv.wait_for(20, Duration::from_secs(30));
    assert!(!arrived.is_empty(), "no export arrived");
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    let captures = recv.captures();
    for c in &captures {
        assert!(
            c.bytes.len() as u64 <= LIMIT,
            "a request of {} bytes",
            c.bytes.len()
        );
    }
    let profiles = convert(dir.path(), &captures);
    let chain: Vec<_> = profiles.iter().filter(|p| p.service == "chain").collect();
    let largest = chain
        .iter()
        .map(|p| p.largest_converted_bytes)
        .max()
        .unwrap();
    let samples: u64 = chain.iter().map(|p| p.samples).sum();
    println!(
        "{} requests, {} chain profiles, {samples} samples, largest converted {largest} bytes",
        captures.len(),
        chain.len()
    );
    assert!(
        chain.len() >= 4,
        "the windows needed splitting: {} profiles",
        chain.len()
    );
    for p in &chain {
        assert!(
            p.largest_converted_bytes <= LIMIT,
            "a converted profile of {} bytes ({} samples) is over Pyroscope's limit",
            p.largest_converted_bytes,
            p.samples
        );
    }
    assert!(
        largest * 3 >= LIMIT,
        "profiles split far below the limit ({largest} bytes): the estimate is too loose"
    );
}

#[test]
fn series_follow_services_not_processes() {
    let Some(_machine) = privileged("series_follow_services_not_processes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let lean = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let per_pid = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let daemon = |recv: &receiver::Receiver, labels: &[&str]| {
        let mut args = vec![
            "run".to_owned(),
            "--otlp-endpoint".to_owned(),
            format!("http://{}", recv.addr),
            "--interval".to_owned(),
            "3s".to_owned(),
            "-F".to_owned(),
            "199".to_owned(),
            "--http-address".to_owned(),
            "off".to_owned(),
        ];
        args.extend(labels.iter().map(|&l| l.to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_profiler(&args, &[])
    };
    let lean_daemon = daemon(&lean, &[]);
    let pid_daemon = daemon(&per_pid, &["--labels", "pid,thread-id"]);
    std::thread::sleep(Duration::from_millis(1500));
    // A busy stretch of short processes: 240 of them, ~20 ms of work each.
    let mut pids = BTreeSet::new();
    for _ in 0..120 {
        let children: Vec<_> = (0..2)
            .map(|_| Command::new(&bin).args(["10", "8"]).spawn().unwrap())
            .collect();
        for mut c in children {
            pids.insert(c.id());
            c.wait().unwrap();
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    let (code, _, stderr, _) = terminate(lean_daemon);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr, _) = terminate(pid_daemon);
    assert_eq!(code, 0, "{stderr}");

    let series = |recv: &receiver::Receiver, sub: &str| {
        let sub = dir.path().join(sub);
        std::fs::create_dir_all(&sub).unwrap();
        let mut by_service: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in convert(&sub, &recv.captures()) {
            by_service.entry(p.service).or_default().extend(p.series);
        }
        by_service
    };
    let lean = series(&lean, "lean");
    let per_pid = series(&per_pid, "per-pid");
    let count =
        |m: &BTreeMap<String, BTreeSet<String>>| m.values().map(BTreeSet::len).sum::<usize>();
    println!(
        "{} processes: {} series in {} services by default, {} with pid and thread labels",
        pids.len(),
        count(&lean),
        lean.len(),
        count(&per_pid)
    );
    assert_eq!(lean.get("split").map(BTreeSet::len), Some(1), "{lean:?}");
    assert!(
        count(&lean) <= lean.len() * 3,
        "series grow with something else than services: {lean:?}"
    );
    assert!(
        !lean.keys().any(|s| s.contains('/')),
        "kernel threads are one service: {:?}",
        lean.keys()
    );
    assert!(
        per_pid.get("split").map_or(0, BTreeSet::len) >= 50,
        "opt-in pid labels do make a series per process"
    );
}

#[test]
fn unnamed_frames_arrive_as_addresses_the_symbol_table_names() {
    let Some(_machine) = privileged("unnamed_frames_arrive_as_addresses_the_symbol_table_names")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let stripped = dir.path().join("split-stripped");
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success());
    let workload = Workload::spawn(&stripped, &["30"]);
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{}", recv.addr),
            "--interval",
            "3s",
            "-F",
            "499",
            "--pid",
            &workload.pid().to_string(),
            "--http-address",
            "off",
        ],
        &[],
    );
    let captures = recv.wait_for(1, Duration::from_secs(20));
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");

    // The unstripped binary's own symbol table: (start, size, name).
    let nm = Command::new("nm")
        .args(["--defined-only", "-S"])
        .arg(&bin)
        .output()
        .unwrap();
    let symbols: Vec<(u64, u64, String)> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let start = u64::from_str_radix(f.next()?, 16).ok()?;
            let size = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            Some((start, size, f.next()?.to_owned()))
        })
        .collect();
    let build_id = String::from_utf8_lossy(
        &Command::new("readelf")
            .args(["-n"])
            .arg(&bin)
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
    .unwrap();

    let mut named = BTreeMap::<String, usize>::new();
    let mut total = 0;
    for p in convert(dir.path(), &captures) {
        for (address, file, id) in p.unsymbolized {
            if !file.ends_with("split-stripped") {
                continue;
            }
            total += 1;
            assert_eq!(id, build_id, "the mapping carries the binary's build id");
            if let Some((_, _, name)) = symbols
                .iter()
                .find(|(start, size, _)| (*start..start + size).contains(&address))
            {
                *named.entry(name.clone()).or_default() += 1;
            }
        }
    }
    println!("{total} unnamed locations in the stripped binary; by its symbol table: {named:?}");
    assert!(total >= 3, "the hot functions arrive unnamed");
    for f in ["hot_a", "hot_b", "hot_c", "main"] {
        assert!(
            named.contains_key(f),
            "{f} is found at its address: {named:?}"
        );
    }
    let found: usize = named.values().sum();
    assert!(
        found * 10 >= total * 9,
        "{found} of {total} addresses name a function"
    );
}
