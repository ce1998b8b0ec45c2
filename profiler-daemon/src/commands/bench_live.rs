//! `profiler bench-live` (`bench` feature): serves the live page over a history of synthetic,
//! distinct stacks, for `cargo xtask bench live` to time the page in Chromium at a scale a
//! quiet test host never reaches (100,000 distinct stacks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clap::Args;

use crate::live::history::LiveStack;
use crate::live::{History, LiveServerError, LiveState, Window};

#[derive(Debug, Args)]
pub struct BenchLiveArgs {
    /// Distinct stacks in the history.
    #[arg(long, default_value_t = 100_000)]
    pub stacks: usize,
    /// Where the page listens.
    #[arg(long, default_value = "127.0.0.1:9741")]
    pub ui_address: SocketAddr,
}

/// Windows the stacks are spread over (one a minute: all within the page's 15 minutes).
const WINDOWS: usize = 10;
/// Distinct function names, processes and services the stacks are drawn from.
const FUNCTIONS: u32 = 20_000;
const PROCESSES: u32 = 200;
const SERVICES: u32 = 40;

/// A history of `stacks` distinct stacks, 12 to 43 frames deep, in `WINDOWS` windows.
#[must_use]
pub fn synthetic(stacks: usize) -> History {
    let mut history = History::new(stacks.max(1));
    let now = SystemTime::now();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: deterministic, no dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let per_window = stacks.div_ceil(WINDOWS);
    for w in 0..WINDOWS {
        let names = (0..PROCESSES)
            .map(|p| format!("process-{p}"))
            .chain((0..FUNCTIONS).map(|f| format!("crate_{}::module::function_{f}", f % 97)))
            .map(Arc::from)
            .collect();
        let services = (0..SERVICES)
            .map(|s| Arc::from(format!("service-{s}")))
            .collect();
        let window_stacks = (0..per_window)
            .map(|i| {
                let process = (next() % u64::from(PROCESSES)) as u32;
                let depth = 12 + (next() % 32) as usize;
                // A shared trunk (callers near the root repeat), then a distinct tail.
                let mut frames = vec![process];
                frames.extend((0..depth).map(|d| {
                    let spread = if d < 6 { 8 } else { u64::from(FUNCTIONS) };
                    PROCESSES + (next() % spread) as u32
                }));
                frames.push(PROCESSES + ((w * per_window + i) as u32 % FUNCTIONS));
                LiveStack {
                    service: process % SERVICES,
                    frames: frames.into_boxed_slice(),
                    count: 1 + next() % 20,
                }
            })
            .collect();
        let end = now - Duration::from_secs(60 * (WINDOWS - w) as u64);
        history.push(Window {
            start: end - Duration::from_secs(10),
            end,
            names,
            services,
            stacks: window_stacks,
        });
    }
    history
}

/// Serves the page over `synthetic(args.stacks)` until `stop`.
pub fn serve(args: &BenchLiveArgs, stop: &AtomicBool) -> Result<SocketAddr, LiveServerError> {
    let state = Arc::new(LiveState {
        history: Arc::new(Mutex::new(synthetic(args.stacks))),
        interval: Duration::from_mins(1),
        frequency: 99,
    });
    // As the daemon's: one worker thread (aggregations run on the blocking pool).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| LiveServerError::new(args.ui_address, source))?;
    let local = runtime.block_on(crate::live::server::start(args.ui_address, state))?;
    println!("serving {} stacks on http://{local}/", args.stacks);
    runtime.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(local)
}
