//! `profiler run`: the long-running daemon. The pipeline (sampler, collector, symbolizer) runs on
//! the calling thread, since blazesym's symbolizer is `!Send`; every interval it closes the window,
//! encodes OTLP requests into the bounded queue, and a tokio task sends them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::bpf::{BpfCounters, BpfError, Design, Sampler};
use crate::collect::Collector;
use crate::config::RunConfig;
use crate::export::otlp::{
    EncodeOptions, ExportStats, RequestQueue, Transport, TransportError, encode, send_loop,
};

/// How often the ring buffer is drained at the latest.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Transport(#[from] TransportError),
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

/// Runs until `stop` is set; then exports the open window and waits (bounded) for delivery.
pub fn run(config: &RunConfig, stop: &AtomicBool) -> Result<RunSummary, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("profiler-export")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let transport = {
        let _guard = runtime.enter();
        Transport::new(&config.otlp)?
    };
    let queue = Arc::new(RequestQueue::new(config.export_queue_size));
    let stats = Arc::new(ExportStats::default());
    let sender = runtime.spawn(send_loop(transport, queue.clone(), stats.clone()));
    tracing::info!(
        endpoint = %config.otlp.endpoint,
        protocol = ?config.otlp.protocol,
        interval = %humantime::format_duration(config.interval),
        frequency = config.sampler.frequency,
        "profiler running"
    );

    let pipeline = pipeline(config, stop, &queue);
    // Whatever happened, let the sender finish what it has (bounded), then report.
    queue.close();
    let flushed = runtime
        .block_on(async { tokio::time::timeout(config.shutdown_timeout, sender).await })
        .is_ok();
    if !flushed {
        let left = queue.len() as u64 + 1;
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
        dropped: stats.dropped.load(Ordering::Relaxed) + queue.dropped.load(Ordering::Relaxed),
        flushed,
    })
}

/// Samples, and every interval turns the window into queued requests. Returns (windows, samples,
/// kernel counters).
fn pipeline(
    config: &RunConfig,
    stop: &AtomicBool,
    queue: &RequestQueue,
) -> Result<(u64, u64, BpfCounters), RunError> {
    let mut sampler = Sampler::start(&config.sampler, Design::RingBuf)?;
    let mut collector = Collector::new(&config.limits, config.sampler.frequency);
    let options = EncodeOptions {
        host_name: config.host_name.clone(),
        resource_attributes: config.otlp.resource_attributes.clone(),
        include_idle: config.sampler.include_idle,
    };
    let (mut windows, mut sample_total) = (0u64, 0u64);
    loop {
        let wall_start = SystemTime::now();
        let start = Instant::now();
        let end = start + config.interval;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            sampler.wait(DRAIN_INTERVAL.min(end.saturating_duration_since(Instant::now())))?;
            drain_into(&mut sampler, &mut collector);
        }
        drain_into(&mut sampler, &mut collector);
        let profile = collector.finish_window(wall_start, start.elapsed());
        collector.prune_exited();
        windows += 1;
        sample_total += profile.samples();
        let requests = encode(&profile, &options);
        tracing::debug!(
            samples = profile.samples(),
            stacks = profile.stacks.len(),
            requests = requests.len(),
            "window closed"
        );
        for request in requests {
            queue.push(request);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let counters = sampler.counters()?;
    Ok((windows, sample_total, counters))
}

fn drain_into(sampler: &mut Sampler, collector: &mut Collector) {
    let mut batch = Vec::new();
    sampler.drain(|s| batch.push(s));
    if !batch.is_empty() {
        collector.ingest(batch);
    }
}
