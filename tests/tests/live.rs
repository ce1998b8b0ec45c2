//! The live page of `profiler run --ui-address`, end to end: a daemon with no collector profiles
//! a real workload; headless Chromium (through `WebDriver`) shows its functions, and the service
//! filter, the search and the zoom work; a process named like HTML shows as text; the pprof
//! endpoint reads in `go tool pprof`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is the test's failure"
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use profiler_tests::browser::{Browser, artifact};
use profiler_tests::{
    Workload, build_workload, http, privileged, receiver, spawn_profiler, terminate,
};

/// The workload's binary under a name that is HTML: its process name must show as text.
const HOSTILE_NAME: &str = "<img src=x>";

/// Polls `check` every 200 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn the_live_page_shows_the_workload_with_filter_search_zoom_and_escaping() {
    let Some(_machine) =
        privileged("the_live_page_shows_the_workload_with_filter_search_zoom_and_escaping")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build_workload("split", dir.path());
    let hostile = dir.path().join(HOSTILE_NAME);
    std::fs::copy(&bin, &hostile).unwrap();
    let _workload = Workload::spawn(&hostile, &["60"]);
    let ui: SocketAddr = receiver::free_addr();
    // No collector listens at the endpoint: the page shows what was sampled all the same.
    let nowhere = receiver::free_addr();
    let daemon = spawn_profiler(
        &[
            "run",
            "--interval",
            "1s",
            "--http-address",
            "off",
            "--ui-address",
            &ui.to_string(),
            "--otlp-endpoint",
            &format!("http://{nowhere}"),
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            http::get(ui, "/api/flamegraph?minutes=1")
                .is_some_and(|(code, body)| code == 200 && body.contains("hot_a"))
        }),
        "the API never showed the workload"
    );

    let browser = Browser::start(1280, 900);
    browser.open(&format!("http://{ui}/"));
    let frames = |browser: &Browser| -> Vec<String> {
        browser
            .eval("return [...document.querySelectorAll('#graph .frame')].map(f => f.textContent);")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || frames(&browser)
            .iter()
            .any(|f| f == "hot_a")),
        "the page never drew hot_a: {:?}",
        frames(&browser)
    );
    // The process named like HTML is text, and no element came from it.
    assert!(frames(&browser).iter().any(|f| f == HOSTILE_NAME));
    assert_eq!(
        browser.eval("return document.querySelectorAll('img').length;"),
        0
    );

    filter_to_the_workload(&browser);

    // Search: the matching frames are marked and their share shown.
    let searched = browser.eval(
        "const i = document.getElementById('search');
         i.value = 'hot_b'; i.dispatchEvent(new Event('input'));
         return [document.getElementById('match').textContent,
                 [...document.querySelectorAll('#graph .frame.match')].map(f => f.textContent),
                 window.profilerTimings.search_ms];",
    );
    let share = searched[0].as_str().unwrap();
    assert!(share.contains("hot_b") && share.contains('%'), "{searched}");
    assert!(
        searched[1]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_str().unwrap().contains("hot_b"))
            && !searched[1].as_array().unwrap().is_empty(),
        "{searched}"
    );

    // Zoom: a click on hot_b makes it the full width.
    let zoomed = browser.eval(
        "const f = [...document.querySelectorAll('#graph .frame')]
             .find(f => f.textContent === 'hot_b');
         f.click();
         const again = [...document.querySelectorAll('#graph .frame')]
             .find(f => f.textContent === 'hot_b');
         return again.style.width;",
    );
    assert_eq!(zoomed, "100%", "zoom");
    let share = browser.eval("return document.getElementById('match').textContent;");
    assert!(
        share.as_str().unwrap().contains("100.00%"),
        "zoomed on the match, all of the view matches: {share}"
    );
    browser.screenshot(&artifact("live-page.png"));

    pprof_of_the_next_seconds_reads_in_go(ui, dir.path());

    let (code, _, stderr, _) = terminate(daemon);
    assert_eq!(code, 0, "{stderr}");
}

/// Chooses the workload's service in the filter: only its process is left.
fn filter_to_the_workload(browser: &Browser) {
    // The service filter: only the workload's service.
    let service = browser.eval(&format!(
        "const s = document.getElementById('service');
         const o = [...s.options].find(o => o.value === {HOSTILE_NAME:?});
         if (!o) return [...s.options].map(o => o.value);
         s.value = o.value; s.dispatchEvent(new Event('change')); return o.value;"
    ));
    assert_eq!(service, HOSTILE_NAME, "no service option for the workload");
    assert!(
        wait_until(Duration::from_secs(10), || {
            browser
                .eval(
                    "return [...document.querySelectorAll('#graph .frame.process')]
                        .map(f => f.textContent);",
                )
                .as_array()
                .is_some_and(|p| p.len() == 1 && p[0] == HOSTILE_NAME)
        }),
        "the filter left other processes"
    );
}

/// `/debug/pprof/profile?seconds=2`, read by `go tool pprof`; too long a wait is refused.
fn pprof_of_the_next_seconds_reads_in_go(ui: SocketAddr, dir: &std::path::Path) {
    // The pprof of the next 2 seconds, read by go tool pprof; a too long one is refused.
    let (code, _) = http::get(ui, "/debug/pprof/profile?seconds=100000").unwrap();
    assert_eq!(code, 400);
    let out = dir.join("next.pb.gz");
    let (code, body) = http::get_bytes(ui, "/debug/pprof/profile?seconds=2").unwrap();
    assert_eq!(code, 200);
    std::fs::write(&out, body).unwrap();
    let top = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&out)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("go runs (cargo xtask setup installs golang-go)");
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success() && text.contains("hot_a"),
        "{text}{}",
        String::from_utf8_lossy(&top.stderr)
    );
}

#[test]
fn the_page_is_off_unless_enabled_and_off_in_the_shipped_deployments() {
    let root = profiler_tests::workspace();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    for (file, text) in [
        ("deploy/profiler.toml", read("deploy/profiler.toml")),
        (
            "deploy/kubernetes/configmap.yaml",
            read("deploy/kubernetes/configmap.yaml"),
        ),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("ui-address"))
            .unwrap_or_else(|| panic!("{file}: no ui-address"));
        assert!(line.contains("\"off\""), "{file}: {line}");
    }
    let (_, help, _) = profiler_tests::run_profiler(&["run", "--help"]);
    assert!(
        help.contains("--ui-address") && help.contains("[default: off]"),
        "{help}"
    );
}
