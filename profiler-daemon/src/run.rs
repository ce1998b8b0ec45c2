//! `profiler run`: the long-running daemon. The pipeline (sampler, collector, symbolizer) runs on
//! the calling thread, since blazesym's symbolizer is `!Send`; every interval it closes the window,
//! encodes OTLP requests into the bounded queue, and a tokio task sends them. The HTTP server
//! (metrics, health) runs on the same small runtime.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::bpf::{BpfCounters, BpfError, DRAIN_INTERVAL, Design, Sampler};
use crate::collect::{Collector, drain_into};
use crate::config::RunConfig;
use crate::export::otlp::{
    EncodeOptions, ExportStats, Observers, RequestQueue, Transport, TransportError, encode,
    send_loop,
};
use crate::telemetry::metrics::{Health, Metrics, PipelineTotals};
use crate::telemetry::server::{self, ServerError, ServerState};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the daemon did, printed at exit.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub windows: u64,
    pub samples: u64,
    pub bpf: BpfCounters,
    pub sent: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    pub flushed: bool,
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lost: Vec<String> = self
            .bpf
            .losses()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        write!(
            f,
            "{} windows, {} samples; exported {} requests, {} failed attempts, {} dropped; samples lost: {}{}",
            self.windows,
            self.samples,
            self.sent,
            self.failed_attempts,
            self.dropped,
            if lost.is_empty() {
                "0".to_owned()
            } else {
                lost.join(", ")
            },
            if self.flushed {
                ""
            } else {
                "; shutdown timed out before everything was sent"
            },
        )
    }
}

/// Shared observers of the daemon.
struct Shared {
    queue: Arc<RequestQueue>,
    stats: Arc<ExportStats>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Runs until `stop` is set; then exports the open window and waits (bounded) for delivery.
pub fn run(config: &RunConfig, stop: &AtomicBool) -> Result<RunSummary, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("profiler-io")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let shared = Shared {
        queue: Arc::new(RequestQueue::new(config.export_queue_size)),
        stats: Arc::new(ExportStats::default()),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
    };
    let transport = {
        let _guard = runtime.enter();
        Transport::new(&config.otlp)?
    };
    if let Some(addr) = config.http_address {
        let state = Arc::new(ServerState {
            metrics: shared.metrics.clone(),
            health: shared.health.clone(),
            // Exports may fail for three windows before /readyz says not ready.
            grace_ms: (config.interval * 3).as_millis() as u64,
        });
        runtime.block_on(server::start(addr, state))?;
    }
    let sender = runtime.spawn(send_loop(
        transport,
        shared.queue.clone(),
        Observers {
            stats: shared.stats.clone(),
            metrics: shared.metrics.clone(),
            health: shared.health.clone(),
        },
    ));
    tracing::info!(
        endpoint = %config.otlp.endpoint,
        protocol = ?config.otlp.protocol,
        interval = %humantime::format_duration(config.interval),
        frequency = config.sampler.frequency,
        "profiler running"
    );

    let pipeline = pipeline(config, stop, &shared);
    shared.health.attached.store(false, Ordering::Relaxed);
    // Whatever happened, let the sender finish what it has (bounded), then report.
    shared.queue.close();
    let flushed = runtime
        .block_on(async { tokio::time::timeout(config.shutdown_timeout, sender).await })
        .is_ok();
    let stats = &shared.stats;
    if !flushed {
        let left = shared.queue.len() as u64 + 1;
        stats.dropped.fetch_add(left, Ordering::Relaxed);
        tracing::warn!("shutdown timeout reached: {left} requests not delivered");
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    let (windows, samples, bpf) = pipeline?;
    Ok(RunSummary {
        windows,
        samples,
        bpf,
        sent: stats.sent.load(Ordering::Relaxed),
        failed_attempts: stats.failed_attempts.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed)
            + shared.queue.dropped.load(Ordering::Relaxed),
        flushed,
    })
}

/// Samples, and every interval turns the window into queued requests. Returns (windows, samples,
/// kernel counters).
fn pipeline(
    config: &RunConfig,
    stop: &AtomicBool,
    shared: &Shared,
) -> Result<(u64, u64, BpfCounters), RunError> {
    let mut sampler = Sampler::start(&config.sampler, Design::RingBuf)?;
    shared.health.attached.store(true, Ordering::Relaxed);
    let mut collector = Collector::new(&config.limits, config.sampler.frequency);
    let options = EncodeOptions {
        host_name: config.host_name.clone(),
        resource_attributes: config.otlp.resource_attributes.clone(),
        include_idle: config.sampler.include_idle,
    };
    let ring_bytes = f64::from(sampler.ring_bytes().max(1));
    let (mut windows, mut sample_total) = (0u64, 0u64);
    let mut reported = Losses::default();
    let mut received = 0u64;
    loop {
        let wall_start = SystemTime::now();
        let start = Instant::now();
        let end = start + config.interval;
        let mut peak_fill = 0f64;
        loop {
            let (n, bytes) = drain_into(&mut sampler, &mut collector);
            received += n;
            peak_fill = peak_fill.max(bytes as f64 / ring_bytes);
            publish(shared, &sampler, &collector, received, peak_fill, config);
            if Instant::now() >= end || stop.load(Ordering::Relaxed) {
                break;
            }
            sampler.wait(DRAIN_INTERVAL.min(end.saturating_duration_since(Instant::now())))?;
        }
        let profile = collector.finish_window(wall_start, start.elapsed());
        collector.prune_exited();
        log_losses(&sampler, &collector, &mut reported);
        windows += 1;
        shared.metrics.windows.inc();
        sample_total += profile.samples();
        let requests = encode(&profile, &options);
        tracing::debug!(
            samples = profile.samples(),
            stacks = profile.stacks.len(),
            requests = requests.len(),
            "window closed"
        );
        for request in requests {
            if shared.queue.push(request) {
                shared.metrics.export("dropped", 1);
            }
        }
        shared.metrics.queue_depth.set(shared.queue.len() as i64);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let counters = sampler.counters()?;
    Ok((windows, sample_total, counters))
}

/// Loss totals already logged.
#[derive(Default)]
struct Losses {
    lost: u64,
    walks_failed: u64,
}

/// Logs the samples lost and the stack walks failed since the last window (also in /metrics).
fn log_losses(sampler: &Sampler, collector: &Collector, reported: &mut Losses) {
    let Ok(bpf) = sampler.counters() else {
        return;
    };
    let collect = collector.stats();
    let mut reasons = bpf.losses();
    reasons.push(("profile_full", collect.lost_profile_full));
    reasons.push(("malformed", collect.malformed));
    let lost: u64 = reasons.iter().map(|(_, n)| n).sum();
    let walks = bpf.get(profiler_common::Counter::KernelStackFailed)
        + bpf.get(profiler_common::Counter::UserStackFailed);
    if lost > reported.lost {
        let detail: Vec<String> = reasons
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        tracing::warn!(
            "{} samples lost in this window (totals: {})",
            lost - reported.lost,
            detail.join(", ")
        );
    }
    if walks > reported.walks_failed {
        tracing::info!(
            "{} stack walks failed in this window (samples kept without that part)",
            walks - reported.walks_failed
        );
    }
    *reported = Losses {
        lost,
        walks_failed: walks,
    };
}

fn publish(
    shared: &Shared,
    sampler: &Sampler,
    collector: &Collector,
    received: u64,
    ring_fill_ratio: f64,
    config: &RunConfig,
) {
    let Ok(bpf) = sampler.counters() else {
        return;
    };
    let sym = collector.symbolize_stats();
    let collect = collector.stats();
    let (cache_user, cache_kernel, open_modules, stacks) = collector.cache_sizes();
    shared.metrics.update(&PipelineTotals {
        bpf,
        samples_received: received,
        lost_profile_full: collect.lost_profile_full,
        malformed: collect.malformed,
        cache_hits: sym.cache_hits,
        cache_misses: sym.cache_misses,
        symbolize_errors: sym.symbolize_errors,
        processes: collector.processes(),
        cache_user,
        cache_kernel,
        open_modules,
        stacks,
        ring_fill_ratio,
        pid_filter_entries: config.sampler.pids.len(),
    });
    shared.metrics.queue_depth.set(shared.queue.len() as i64);
}
