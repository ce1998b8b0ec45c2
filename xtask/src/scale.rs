//! `cargo xtask bench scale`: the daemon's user-space stages over 1,000 processes and 100,000
//! distinct stacks in one window (`profiler bench-scale`, the `bench` feature build): ingest,
//! naming and OTLP encoding times, and the peak RSS. Twice: with the processes of a program
//! running the same code (as on a real host), and with every process's code its own (nearly
//! every frame a distinct location: the worst case).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value};

/// Runs the scale test in both code layouts; returns their figures as JSON.
pub(crate) fn run(measuring: &Path) -> Result<Value> {
    println!("## Scale: 1,000 processes, 100,000 distinct stacks in one window");
    println!(
        "| code | processes | distinct stacks | samples | ingest | naming | OTLP encoding | \
         requests (bytes) | peak RSS |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut all = Map::new();
    for (name, extra) in [("shared", None), ("private", Some("--private-code"))] {
        let figures = once(measuring, extra)?;
        let get = |k: &str| figures.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        println!(
            "| {name} | {} | {} | {} | {} ms | {} ms | {} ms | {} ({}) | {:.1} MiB |",
            get("processes"),
            get("stacks"),
            get("samples"),
            get("ingest_ms"),
            get("symbolize_ms"),
            get("encode_ms"),
            get("requests"),
            get("request_bytes"),
            get("peak_rss_mib")
        );
        all.insert(name.to_owned(), Value::Object(figures));
    }
    println!();
    Ok(Value::Object(all))
}

/// One run of `bench-scale`; its figures.
fn once(measuring: &Path, extra: Option<&str>) -> Result<Map<String, Value>> {
    let out = Command::new(measuring)
        .args(["bench-scale", "--processes", "1000", "--stacks", "100000"])
        .args(extra)
        .output()
        .context("running bench-scale")?;
    if !out.status.success() {
        bail!(
            "bench-scale failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("scale "))
        .context("no scale line")?;
    let mut figures = Map::new();
    for (key, value) in line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
    {
        let number = value.parse::<f64>().map_or(Value::Null, Value::from);
        figures.insert(key.to_owned(), number);
    }
    Ok(figures)
}
