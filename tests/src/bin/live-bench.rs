//! `cargo xtask bench live`: times the live page in headless Chromium over a synthetic history
//! of distinct stacks (`profiler bench-live`, the `bench` feature build): the first drawing
//! (navigation to the end of the first render: the page, its requests, the server's aggregation,
//! the drawing) and a search. Targets: first drawing ≤ 1 s, search ≤ 200 ms. One line:
//! `live stacks=N first_ms=.. render_ms=.. search_ms=.. tree_bytes=..`.
//!
//! Usage: `live-bench PROFILER_WITH_BENCH_FEATURE [STACKS]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use profiler_tests::browser::Browser;
use profiler_tests::{http, receiver};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let profiler = args.next().expect("usage: live-bench PROFILER [STACKS]");
    let stacks: usize = args.next().map_or(100_000, |s| s.parse().expect("a count"));
    let addr = receiver::free_addr();
    let mut server = Command::new(&profiler)
        .args([
            "bench-live",
            "--stacks",
            &stacks.to_string(),
            "--ui-address",
        ])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("profiler bench-live starts");
    let deadline = Instant::now() + Duration::from_mins(1);
    while http::get(addr, "/api/services").is_none_or(|(code, _)| code != 200) {
        assert!(Instant::now() < deadline, "the page never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, tree) = http::get(addr, "/api/flamegraph?minutes=15").expect("the tree");
    let browser = Browser::start(1280, 900);
    let (mut first, mut render, mut search) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        browser.open(&format!("http://{addr}/"));
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let t = browser.eval("return window.profilerTimings;");
            if t["renders"].as_u64().unwrap_or(0) >= 1 {
                first.push(t["first_ms"].as_f64().unwrap_or(f64::NAN));
                render.push(t["render_ms"].as_f64().unwrap_or(f64::NAN));
                break;
            }
            assert!(Instant::now() < deadline, "the page never drew");
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = browser.eval(
            "const i = document.getElementById('search');
             i.value = 'function_12'; i.dispatchEvent(new Event('input'));
             return window.profilerTimings.search_ms;",
        );
        search.push(t.as_f64().unwrap_or(f64::NAN));
    }
    drop(browser);
    server.kill().ok();
    server.wait().ok();
    let (first, render, search) = (median(first), median(render), median(search));
    println!(
        "live stacks={stacks} first_ms={first:.0} render_ms={render:.0} search_ms={search:.1} \
         tree_bytes={} (medians of 5 loads; targets: first ≤ 1000 ms, search ≤ 200 ms: {})",
        tree.len(),
        if first <= 1000.0 && search <= 200.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
