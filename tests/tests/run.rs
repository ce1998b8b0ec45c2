//! `profiler run` exporting OTLP profiles to real receivers (gRPC and HTTP, built from the
//! official generated code), decoded here and by the official Python bindings.
#![allow(clippy::unwrap_used, reason = "test helpers below fail loudly")]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use profiler_tests::otlp::{resource_attr, samples_of};
use profiler_tests::receiver::{self, free_addr};
use profiler_tests::{
    Workload, build_workload, privileged, run_profiler, spawn_profiler, split, terminate,
};

const HOT: [&str; 3] = ["hot_a", "hot_b", "hot_c"];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, checked field by field"
)]
fn grpc_export_carries_named_stacks_the_split_and_every_field() {
    let Some(_machine) = privileged("grpc_export_carries_named_stacks_the_split_and_every_field")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let workload = Workload::spawn(&bin, &["30"]);
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let endpoint = format!("http://{}", recv.addr);
    let started = now_ns();
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &endpoint,
            "--interval",
            "2s",
            "-F",
            "499",
            "--otlp-header",
            "authorization=Bearer t0ken",
            // Every optional label, to check each field (the default leaves them out).
            "--labels",
            "pid,thread-id,thread-name,exe-path",
        ],
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,service.name=ignored",
        )],
    );
    let captures = recv.wait_for(3, Duration::from_secs(20));
    let (code, stdout, stderr, took) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(stdout.contains("exported"), "{stdout}");
    assert!(
        captures.len() >= 3,
        "{} exports; stderr: {stderr}",
        captures.len()
    );
    assert!(
        !stderr.contains("t0ken"),
        "a secret header reached the logs"
    );

    let mut stacks = Vec::new();
    let mut found_resource = false;
    for capture in &captures {
        assert!(
            capture
                .headers
                .contains(&("authorization".into(), "Bearer t0ken".into()))
        );
        assert_eq!(capture.encoding.as_deref(), Some("gzip"));
        for rp in &capture.request.resource_profiles {
            if resource_attr(rp, "process.executable.name").as_deref() != Some("split") {
                continue;
            }
            found_resource = true;
            assert_eq!(resource_attr(rp, "service.name").as_deref(), Some("split"));
            assert_eq!(
                resource_attr(rp, "process.executable.path").as_deref(),
                bin.to_str()
            );
            assert!(resource_attr(rp, "host.name").is_some_and(|h| !h.is_empty()));
            assert_eq!(
                resource_attr(rp, "deployment.environment").as_deref(),
                Some("test")
            );
            assert_eq!(resource_attr(rp, "process.pid"), None);
        }
        for (profile, sample) in samples_of(&capture.request, "split") {
            let dict = capture.request.dictionary.as_ref().unwrap();
            let st = profile.sample_type.unwrap();
            assert_eq!(dict.string_table[st.type_strindex as usize], "samples");
            assert_eq!(dict.string_table[st.unit_strindex as usize], "count");
            let pt = profile.period_type.unwrap();
            assert_eq!(dict.string_table[pt.type_strindex as usize], "cpu");
            assert_eq!(dict.string_table[pt.unit_strindex as usize], "nanoseconds");
            assert_eq!(profile.period, 1_000_000_000 / 499);
            assert!(
                profile.time_unix_nano + 1_000_000_000 >= started
                    && profile.time_unix_nano <= now_ns()
            );
            assert!(profile.duration_nano > 0 && profile.duration_nano <= 3_000_000_000);
            let attrs: HashMap<_, _> = sample.attributes.iter().cloned().collect();
            assert_eq!(attrs["process.pid"], workload.pid().to_string());
            assert!(attrs["thread.id"].parse::<u32>().is_ok());
            assert_eq!(attrs["thread.name"], "split");
            if let Some(i) = sample.frames.iter().position(|f| HOT.contains(&f.as_str())) {
                assert!(sample.frame_types[..=i].iter().all(|t| t == "native"));
                // The executable's mapping carries its GNU build id, lowercase hex.
                let (file, build_id) = sample
                    .mappings
                    .iter()
                    .find(|(f, _)| f == bin.to_str().unwrap())
                    .expect("the executable's mapping");
                assert_eq!(file, bin.to_str().unwrap());
                let id = build_id.as_deref().expect("a build id");
                assert!(
                    id.len() == 40
                        && id
                            .chars()
                            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                );
            }
            stacks.push((sample.frames, u64::try_from(sample.value).unwrap()));
        }
    }
    assert!(found_resource, "no resource for the workload");
    let (shares, total) = split(&stacks, &HOT);
    println!("{total} samples: {shares:?}");
    assert!(total > 1500, "{total}");
    for (f, designed) in HOT.iter().zip([60.0, 30.0, 10.0]) {
        assert!(
            (shares[*f] - designed).abs() <= 4.0,
            "{f}: {:.1}% vs {designed}%",
            shares[*f]
        );
    }
}

#[test]
fn http_export_decodes_with_the_official_python_bindings() {
    let Some(_machine) = privileged("http_export_decodes_with_the_official_python_bindings") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let _workload = Workload::spawn(&bin, &["30"]);
    let recv = receiver::http("127.0.0.1:0".parse().unwrap());
    let daemon = spawn_profiler(
        &["run", "--interval", "2s", "-F", "299"],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{}", recv.addr),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-scope-orgid=tenant%201"),
        ],
    );
    let captures = recv.wait_for(2, Duration::from_secs(20));
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    assert!(captures.len() >= 2, "{stderr}");
    let capture = &captures[1];
    assert_eq!(capture.encoding.as_deref(), Some("gzip"));
    assert!(
        capture
            .headers
            .contains(&("x-scope-orgid".into(), "tenant 1".into()))
    );
    let path = dir.path().join("request.bin");
    std::fs::write(&path, &capture.bytes).unwrap();
    let script = profiler_tests::workspace().join("tests/python/decode_otlp.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python decoder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    // The Python summary names the workload's resource and functions and the zero values.
    assert!(
        text.contains(r#""process.executable.name": "split""#),
        "{text}"
    );
    for f in HOT {
        assert!(text.contains(&format!(r#""{f}""#)), "{f} missing: {text}");
    }
    assert!(
        text.contains(r#""sample_type": ["samples", "count"]"#),
        "{text}"
    );
    assert!(
        text.contains(r#""period_type": ["cpu", "nanoseconds"]"#),
        "{text}"
    );
    assert!(
        text.contains(r#""zero_values_ok": true"#),
        "a zero value is missing: {text}"
    );
}

#[test]
fn receiver_down_at_start_then_up_gets_the_profiles() {
    let Some(_machine) = privileged("receiver_down_at_start_then_up_gets_the_profiles") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    // Busy, so that every window has samples to export.
    let _workload = Workload::spawn(&bin, &["40"]);
    let addr = free_addr();
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{addr}"),
            "--interval",
            "1s",
            "-F",
            "99",
            "--export-queue-size",
            "3",
        ],
        &[],
    );
    // Several windows fail while nobody listens; the queue (3) bounds what is kept.
    std::thread::sleep(Duration::from_secs(6));
    let recv = receiver::grpc(addr, true);
    let captures = recv.wait_for(2, Duration::from_secs(30));
    let (code, stdout, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        captures.len() >= 2,
        "nothing delivered after the receiver came up: {stderr}"
    );
    assert!(
        stderr.contains("export failed"),
        "failures are logged: {stderr}"
    );
    assert!(
        stderr.contains("partially"),
        "partial success is logged: {stderr}"
    );
    // "N windows, ...; exported E requests, F failed attempts, D dropped; ..."
    let number_before = |word: &str| -> u64 {
        let i = stdout
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {stdout}"));
        stdout[..i]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(number_before(" failed attempts") >= 2, "{stdout}");
    assert!(
        number_before(" dropped") >= 1,
        "6 windows cannot fit a queue of 3: {stdout}"
    );
    assert!(number_before(" requests") >= 2, "{stdout}");
}

#[test]
fn sigterm_exports_the_open_window() {
    let Some(_machine) = privileged("sigterm_exports_the_open_window") else {
        return;
    };
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{}", recv.addr),
            "--interval",
            "10m",
            "-F",
            "999",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(recv.captures().is_empty());
    let (code, stdout, stderr, took) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let captures = recv.captures();
    assert_eq!(captures.len(), 1, "{stdout}");
    assert!(!captures[0].request.resource_profiles.is_empty());
}

#[test]
fn a_window_full_of_distinct_stacks_is_exported_early_not_dropped() {
    let Some(_machine) =
        privileged("a_window_full_of_distinct_stacks_is_exported_early_not_dropped")
    else {
        return;
    };
    // Process churn: every sample of a new process is a new stack (its pid).
    let mut churn = std::process::Command::new("sh")
        .args(["-c", "while :; do /bin/true; done"])
        .spawn()
        .unwrap();
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{}", recv.addr),
            "--interval",
            "10m",
            "-F",
            "999",
            "--max-stacks",
            "300",
            "--http-address",
            "off",
        ],
        &[],
    );
    let arrived = recv.wait_for(3, Duration::from_secs(30));
    let (code, _, stderr, _) = terminate(daemon);
    churn.kill().unwrap();
    churn.wait().unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        arrived.len() >= 3,
        "a 10-minute window of at most 300 stacks was exported {} times in 30 s: {stderr}",
        arrived.len()
    );
    assert!(
        stderr.contains("a window closed before its interval"),
        "{stderr}"
    );
}

#[test]
fn malformed_exporter_settings_fail_at_start_with_code_2() {
    let (code, _, stderr) = run_profiler(&["run", "--otlp-endpoint", "localhost:4317"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--otlp-endpoint") && stderr.contains("http://"),
        "{stderr}"
    );
    let (code, _, stderr) = run_profiler(&["run", "--otlp-header", "novalue"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEY=VALUE"), "{stderr}");
    let out = std::process::Command::new(profiler_tests::profiler_bin())
        .arg("run")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
}

/// A test CA and a server certificate for `localhost` / 127.0.0.1 signed by it (openssl).
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=profiler test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        std::fs::read(dir.join("server.pem")).unwrap(),
        std::fs::read(dir.join("server.key")).unwrap(),
    )
}

#[test]
fn tls_export_trusts_the_given_ca_and_nothing_else() {
    let Some(_machine) = privileged("tls_export_trusts_the_given_ca_and_nothing_else") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let _workload = Workload::spawn(&bin, &["30"]);
    let (ca, cert, key) = certificates(dir.path());
    let any_port = "127.0.0.1:0".parse().unwrap();
    for (protocol, recv) in [
        ("grpc", receiver::grpc_tls(any_port, &cert, &key)),
        ("http/protobuf", receiver::http_tls(any_port, &cert, &key)),
    ] {
        let endpoint = format!("https://localhost:{}", recv.addr.port());
        let run = |extra: &[&str]| {
            let mut args = vec![
                "run",
                "--otlp-endpoint",
                &endpoint,
                "--otlp-protocol",
                protocol,
                "--interval",
                "1s",
                "-F",
                "99",
            ];
            args.extend(extra);
            spawn_profiler(&args, &[])
        };

        // Without the CA (system roots only), the server's certificate is refused: nothing
        // arrives, and the log says which step failed.
        let untrusting = run(&[]);
        std::thread::sleep(Duration::from_secs(4));
        let (code, _, stderr, _) = terminate(untrusting);
        assert_eq!(code, 0, "{protocol}: {stderr}");
        assert!(
            recv.captures().is_empty(),
            "{protocol}: an untrusted server received data"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("export failed") && l.contains("TLS failed with https://")),
            "{protocol}: {stderr}"
        );

        // With the CA: delivered over TLS.
        let trusting = run(&["--otlp-ca", ca.to_str().unwrap()]);
        let captures = recv.wait_for(1, Duration::from_secs(20));
        let (code, _, stderr, _) = terminate(trusting);
        assert_eq!(code, 0, "{protocol}: {stderr}");
        assert!(
            !captures.is_empty(),
            "{protocol}: nothing delivered over TLS: {stderr}"
        );
        assert!(!samples_of(&captures[0].request, "split").is_empty());
    }
}

#[test]
fn services_are_named_by_their_own_opentelemetry_settings() {
    let Some(_machine) = privileged("services_are_named_by_their_own_opentelemetry_settings")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let spawn = |env: &[(&str, &str)]| {
        Workload(
            std::process::Command::new(&bin)
                .arg("30")
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let checkout = spawn(&[("OTEL_SERVICE_NAME", "checkout"), ("API_TOKEN", "s3cret")]);
    let cart = spawn(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=prod,service.name=cart%20api",
    )]);
    let plain = spawn(&[]);
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let pids: Vec<String> = [&checkout, &cart, &plain]
        .iter()
        .map(|w| w.pid().to_string())
        .collect();
    let endpoint = format!("http://{}", recv.addr);
    let mut args = vec![
        "--log-level",
        "trace",
        "run",
        "--otlp-endpoint",
        &endpoint,
        "--interval",
        "2s",
        "-F",
        "199",
        "--http-address",
        "off",
    ];
    for pid in &pids {
        args.extend(["--pid", pid]);
    }
    // The daemon's own service.name is not the processes': theirs wins (documented).
    let daemon = spawn_profiler(&args, &[("OTEL_SERVICE_NAME", "the-profiler")]);
    let captures = recv.wait_for(2, Duration::from_secs(20));
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    let mut services = std::collections::BTreeSet::new();
    for capture in &captures {
        for rp in &capture.request.resource_profiles {
            if let Some(service) = resource_attr(rp, "service.name") {
                services.insert(service);
            }
        }
    }
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["cart api", "checkout", "split"],
        "the environment's names, else the executable's"
    );
    // Nothing else of a process's environment is kept or logged.
    assert!(
        !stderr.contains("s3cret"),
        "an environment value reached the logs"
    );
}

/// (service.name, process.pid) of every sample of `request`.
fn services_and_pids(
    request: &opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest,
) -> std::collections::BTreeSet<(String, String)> {
    let dict = request.dictionary.as_ref().expect("a dictionary");
    let mut out = std::collections::BTreeSet::new();
    for rp in &request.resource_profiles {
        let service = resource_attr(rp, "service.name").unwrap_or_default();
        for sp in &rp.scope_profiles {
            for profile in &sp.profiles {
                for sample in &profile.samples {
                    let pid = profiler_tests::otlp::attrs(dict, &sample.attribute_indices)
                        .into_iter()
                        .find(|(k, _)| k == "process.pid")
                        .map(|(_, v)| v)
                        .unwrap_or_default();
                    out.insert((service.clone(), pid));
                }
            }
        }
    }
    out
}

#[test]
fn sighup_reloads_filters_and_service_name_rules_in_the_open_window() {
    let Some(_machine) =
        privileged("sighup_reloads_filters_and_service_name_rules_in_the_open_window")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let spawn = |service: &str| {
        Workload(
            std::process::Command::new(&bin)
                .arg("40")
                .env("OTEL_SERVICE_NAME", service)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let (a, b) = (spawn("alpha-env"), spawn("bravo-env"));
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let config = dir.path().join("profiler.toml");
    let common = format!(
        "otlp-endpoint = \"http://{}\"\ninterval = \"1s\"\nhttp-address = \"off\"\n\
         frequency = 199\nlabels = [\"pid\"]\n",
        recv.addr
    );
    std::fs::write(&config, format!("{common}pid = [{}]\n", a.pid())).unwrap();
    let daemon = spawn_profiler(&["run", "--config", config.to_str().unwrap()], &[]);
    let before = recv.wait_for(2, Duration::from_secs(20));
    let seen = |captures: &[receiver::Capture]| {
        captures
            .iter()
            .flat_map(|c| services_and_pids(&c.request))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (a_pid, b_pid) = (a.pid().to_string(), b.pid().to_string());
    assert_eq!(
        seen(&before).into_iter().collect::<Vec<_>>(),
        [("alpha-env".to_owned(), a_pid.clone())],
        "before the reload: only A, by its own name"
    );

    // The other process, and a rule that wins over the processes' own names.
    std::fs::write(
        &config,
        format!(
            "{common}pid = [{}]\n[[service-name]]\nname = \"renamed\"\nexecutable = \"split\"\n",
            b.pid()
        ),
    )
    .unwrap();
    let hup = |pid: u32| {
        // SAFETY: kill(2) with a child's pid and a signal number.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    };
    hup(daemon.id());
    let at_reload = recv.captures().len();
    let after = recv.wait_for(at_reload + 5, Duration::from_secs(20));
    // The window open at the reload is mixed (A's samples before it, B's after), and the one
    // before it may still have been on its way: the windows after those two are B's only,
    // named by the rule.
    let later = &after[(at_reload + 2).min(after.len())..];
    assert!(later.len() >= 2, "{} windows after the reload", later.len());
    assert_eq!(
        seen(later).into_iter().collect::<Vec<_>>(),
        [("renamed".to_owned(), b_pid.clone())],
        "after the reload: only B, named by the rule"
    );

    // A bad file changes nothing: the daemon goes on with what it had.
    std::fs::write(&config, format!("{common}frequncy = 5\n")).unwrap();
    hup(daemon.id());
    let at_bad = recv.captures().len();
    let more = recv.wait_for(at_bad + 3, Duration::from_secs(20));
    assert_eq!(
        seen(&more[(at_bad + 1).min(more.len())..])
            .into_iter()
            .collect::<Vec<_>>(),
        [("renamed".to_owned(), b_pid)]
    );
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(
        stderr.contains("configuration not reloaded") && stderr.contains("frequncy"),
        "{stderr}"
    );
    drop((a, b));
}

/// Starts `profiler ARGS` in a mount namespace of its own where the host's CA store is hidden
/// (empty file systems over `/etc/ssl` and `/etc/pki`, no `SSL_CERT_*` variables), as on a
/// minimal image without `ca-certificates`.
fn spawn_without_ca_store(args: &[&str]) -> std::process::Child {
    let script = "for d in /etc/ssl /etc/pki; do [ -d $d ] && mount -t tmpfs none $d; done; \
                  exec \"$@\"";
    std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(profiler_tests::profiler_bin())
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn tls_works_on_a_host_without_a_ca_store_and_failures_name_the_step() {
    let Some(_machine) =
        privileged("tls_works_on_a_host_without_a_ca_store_and_failures_name_the_step")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let _workload = Workload::spawn(&bin, &["30"]);
    let (ca, cert, key) = certificates(dir.path());
    let recv = receiver::grpc_tls("127.0.0.1:0".parse().unwrap(), &cert, &key);
    let endpoint = format!("https://localhost:{}", recv.addr.port());
    let args = [
        "run",
        "--otlp-endpoint",
        &endpoint,
        "--interval",
        "1s",
        "-F",
        "99",
        "--http-address",
        "off",
    ];

    // No store, no CA: it starts (with the bundled roots), and the refusal names TLS and the
    // endpoint.
    let untrusting = spawn_without_ca_store(&args);
    std::thread::sleep(Duration::from_secs(4));
    let (code, _, stderr, _) = terminate(untrusting);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("no CA certificates on this host"),
        "{stderr}"
    );
    assert!(
        recv.captures().is_empty(),
        "an untrusted server received data"
    );
    assert!(
        stderr.contains(&format!("TLS failed with {endpoint}")),
        "{stderr}"
    );

    // No store, the CA given: delivered (this used to end at start with `transport error`).
    let mut with_ca = args.to_vec();
    with_ca.extend(["--otlp-ca", ca.to_str().unwrap()]);
    let trusting = spawn_without_ca_store(&with_ca);
    let captures = recv.wait_for(1, Duration::from_secs(20));
    let (code, _, stderr, _) = terminate(trusting);
    assert_eq!(code, 0, "{stderr}");
    assert!(!captures.is_empty(), "nothing delivered over TLS: {stderr}");
    assert!(!samples_of(&captures[0].request, "split").is_empty());
}
