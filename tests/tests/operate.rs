//! Operating the daemon: the metrics endpoint while sampling a real workload, health
//! transitions as the collector goes away and comes back, JSON logs, configuration precedence.

use std::time::Duration;

use profiler_tests::http::{get, metric, wait_status};
use profiler_tests::receiver::{self, free_addr};
use profiler_tests::{Workload, build_workload, privileged, spawn_profiler, terminate};

#[test]
fn metrics_describe_a_real_workload_and_its_exports() {
    let Some(_machine) = privileged("metrics_describe_a_real_workload_and_its_exports") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let _workload = Workload::spawn(&bin, &["20"]);
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let http = free_addr();
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{}", recv.addr),
            "--interval",
            "1s",
            "-F",
            "199",
            "--http-address",
            &http.to_string(),
            "--log-format",
            "json",
        ],
        &[],
    );
    assert!(
        recv.wait_for(2, Duration::from_secs(15)).len() >= 2,
        "two windows delivered"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = get(http, "/metrics").expect("the metrics endpoint answers");
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(status, 200);
    assert!(metric(&text, "profiler_samples_total") >= 199.0, "{text}");
    assert!(metric(&text, "profiler_bpf_events_total{outcome=\"emitted\"}") >= 199.0);
    // Samples are samples: exec/exit events travel in the same ring buffer but are counted
    // apart, so the daemon never counts more samples than the kernel emitted.
    assert!(
        metric(&text, "profiler_samples_total")
            <= metric(&text, "profiler_bpf_events_total{outcome=\"emitted\"}"),
        "{text}"
    );
    assert!(
        metric(&text, "profiler_build_info{version=") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "profiler_exports_total{result=\"sent\"}") >= 1.0);
    assert!(
        metric(
            &text,
            "profiler_samples_lost_total{reason=\"ringbuf_full\"}"
        ) < 0.5
    );
    assert!(metric(&text, "profiler_processes_tracked") >= 1.0);
    assert!(metric(&text, "profiler_cache_entries{cache=\"user_names\"}") >= 1.0);
    assert!(metric(&text, "profiler_symbolize_total{result=\"miss\"}") >= 1.0);
    assert!(metric(&text, "profiler_windows_total") >= 2.0);
    assert!(text.contains("profiler_export_latency_seconds_bucket"));
    assert!(text.contains("profiler_ring_buffer_fill_ratio"));
    assert!(text.contains("profiler_export_queue_depth"));
    // JSON logs: every stderr line is one JSON object.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }
}

#[test]
fn readiness_follows_sampling_and_delivery_resumes_within_an_interval() {
    let Some(_machine) =
        privileged("readiness_follows_sampling_and_delivery_resumes_within_an_interval")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let _workload = Workload::spawn(&bin, &["40"]);
    let collector = free_addr();
    let http = free_addr();
    let interval = Duration::from_secs(2);
    let daemon = spawn_profiler(
        &[
            "run",
            "--otlp-endpoint",
            &format!("http://{collector}"),
            "--interval",
            "2s",
            "-F",
            "99",
            "--http-address",
            &http.to_string(),
        ],
        &[],
    );
    assert_eq!(
        wait_status(http, "/readyz", 200, Duration::from_secs(10)).0,
        200
    );
    // Nobody listens for ten intervals: still ready (readiness is sampling, not the backend),
    // and /healthz says how exports are going.
    std::thread::sleep(interval * 10);
    let (status, body) = get(http, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(http, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("exports failing"), "{body}");
    let (_, metrics) = get(http, "/metrics").unwrap();
    assert!(
        metric(&metrics, "profiler_last_export_success_timestamp_seconds") == 0.0,
        "{metrics}"
    );
    // The collector comes up: delivery resumes within the backoff cap (1 s at this interval,
    // the wait is at most that) plus one interval, with slack for a loaded machine.
    let up = std::time::Instant::now();
    let recv = receiver::grpc(collector, false);
    assert!(
        !recv.wait_for(1, Duration::from_secs(15)).is_empty(),
        "nothing delivered after the collector came back"
    );
    let resumed = up.elapsed();
    println!("delivery resumed {resumed:?} after the collector came back");
    assert!(
        resumed <= Duration::from_secs(1) + interval + Duration::from_secs(3),
        "delivery took {resumed:?}"
    );
    let (_, body) = wait_status(http, "/healthz", 200, Duration::from_secs(5));
    // The receiver sees the request before the daemon sees the answer: the success is recorded
    // a moment after delivery.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (_, metrics) = get(http, "/metrics").unwrap();
        let success = metric(&metrics, "profiler_last_export_success_timestamp_seconds");
        if success > 0.0 || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metric(&metrics, "profiler_last_export_success_timestamp_seconds") > 1.7e9,
        "{metrics}"
    );
    println!("healthz after recovery: {body}");
    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
}

/// Arguments and environment of one daemon run.
type Run<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

#[test]
fn flags_beat_environment_beat_config_file() {
    let Some(_machine) = privileged("flags_beat_environment_beat_config_file") else {
        return;
    };
    // The file names one receiver, the environment another: the environment wins; a flag wins
    // over both. Each run sends its final window to the winner only.
    let work = tempfile::tempdir().unwrap();
    let bin = build_workload("split", work.path());
    let _workload = Workload::spawn(&bin, &["30"]);
    let file_recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let env_recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let flag_recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("profiler.toml");
    std::fs::write(
        &config,
        format!(
            "otlp-endpoint = \"http://{}\"\ninterval = \"1s\"\nhttp-address = \"off\"\n",
            file_recv.addr
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let env_endpoint = format!("http://{}", env_recv.addr);
    let flag_endpoint = format!("http://{}", flag_recv.addr);
    let runs: [Run<'_>; 3] = [
        (&["run", "--config", cfg], &[]),
        (
            &["run", "--config", cfg],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", env_endpoint.as_str())],
        ),
        (
            &[
                "run",
                "--config",
                cfg,
                "--otlp-endpoint",
                flag_endpoint.as_str(),
            ],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", env_endpoint.as_str())],
        ),
    ];
    for (args, envs) in runs {
        let daemon = spawn_profiler(args, envs);
        std::thread::sleep(Duration::from_millis(2500));
        let (code, _, stderr, _) = terminate(daemon);
        assert_eq!(code, 0, "{stderr}");
    }
    let n = |r: &receiver::Receiver| r.captures().len();
    println!(
        "file {} env {} flag {}",
        n(&file_recv),
        n(&env_recv),
        n(&flag_recv)
    );
    assert!(n(&file_recv) >= 1 && n(&env_recv) >= 1 && n(&flag_recv) >= 1);
    assert!(
        n(&env_recv) <= 3 && n(&flag_recv) <= 3,
        "each receiver got only its own run"
    );
    // The file's interval (1s) applied: a 2.5 s run sends at least two windows.
    assert!(n(&file_recv) >= 2, "the file's interval was not used");
}
