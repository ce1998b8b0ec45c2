//! `cargo xtask bench scale`: the daemon's user-space stages over 1,000 processes and 100,000
//! distinct stacks in one window (`profiler bench-scale`, the `bench` feature build): ingest,
//! naming and OTLP encoding times, and the peak RSS.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value};

/// Runs the scale test; returns its figures as JSON.
pub(crate) fn run(measuring: &Path) -> Result<Value> {
    println!("## Scale: 1,000 processes, 100,000 distinct stacks in one window");
    let out = Command::new(measuring)
        .args(["bench-scale", "--processes", "1000", "--stacks", "100000"])
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
    let get = |k: &str| figures.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    println!(
        "| processes | distinct stacks | samples | ingest | naming | OTLP encoding | requests \
         (bytes) | peak RSS |\n|---|---|---|---|---|---|---|---|"
    );
    println!(
        "| {} | {} | {} | {} ms | {} ms | {} ms | {} ({}) | {:.1} MiB |\n",
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
    Ok(Value::Object(figures))
}
