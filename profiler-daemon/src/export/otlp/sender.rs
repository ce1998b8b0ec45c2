//! The sending loop: takes requests from the queue, sends each with retries and exponential
//! backoff, logs partial successes, counts everything. A request being retried gives way when the
//! queue fills up behind it (it is the oldest), so an outage never grows memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::queue::RequestQueue;
use super::transport::{SendError, Transport};
use crate::telemetry::metrics::{Health, Metrics};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Export counters, shared with the rest of the daemon (summary line, metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Requests the receiver accepted.
    pub sent: AtomicU64,
    /// Samples in those requests.
    pub sent_samples: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Requests given up: refused by the receiver, or displaced while retrying, or left at shutdown.
    pub dropped: AtomicU64,
    /// Profiles the receiver reported as rejected in a partial success.
    pub rejected_profiles: AtomicU64,
    /// Microseconds of the last successful export (attempt latency).
    pub last_latency_us: AtomicU64,
}

impl ExportStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

fn samples_in(
    request: &opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest,
) -> u64 {
    request
        .resource_profiles
        .iter()
        .flat_map(|rp| &rp.scope_profiles)
        .flat_map(|sp| &sp.profiles)
        .flat_map(|p| &p.samples)
        .map(|s| s.values.first().copied().unwrap_or(0).max(0) as u64)
        .sum()
}

/// Where the sender reports: counters for the summary, metrics and health for the HTTP server.
pub struct Observers {
    pub stats: Arc<ExportStats>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Sends until the queue is closed and empty. Stops retrying a request once the queue is closed
/// (shutdown: the caller bounds the remaining time).
pub async fn send_loop(mut transport: Transport, queue: Arc<RequestQueue>, obs: Observers) {
    let Observers {
        stats,
        metrics,
        health,
    } = obs;
    while let Some(request) = queue.pop().await {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let start = Instant::now();
            match transport.send(&request).await {
                Ok(partial) => {
                    health.export_succeeded();
                    metrics.export("sent", 1);
                    metrics
                        .export_latency
                        .observe(start.elapsed().as_secs_f64());
                    ExportStats::add(&stats.sent, 1);
                    ExportStats::add(&stats.sent_samples, samples_in(&request));
                    stats
                        .last_latency_us
                        .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if let Some(p) = partial
                        && (p.rejected_profiles > 0 || !p.error_message.is_empty())
                    {
                        ExportStats::add(
                            &stats.rejected_profiles,
                            p.rejected_profiles.max(0) as u64,
                        );
                        tracing::warn!(
                            rejected_profiles = p.rejected_profiles,
                            "receiver accepted the export partially: {}",
                            p.error_message
                        );
                    }
                    tracing::debug!(
                        latency_ms = start.elapsed().as_millis() as u64,
                        "export sent"
                    );
                    break;
                }
                Err(SendError::Permanent(message)) => {
                    health.export_failed();
                    metrics.export("failed_attempt", 1);
                    metrics.export("dropped", 1);
                    ExportStats::add(&stats.failed_attempts, 1);
                    ExportStats::add(&stats.dropped, 1);
                    tracing::error!("export rejected, dropping the request: {message}");
                    break;
                }
                Err(SendError::Retryable(message)) => {
                    health.export_failed();
                    metrics.export("failed_attempt", 1);
                    ExportStats::add(&stats.failed_attempts, 1);
                    if queue.is_closed() {
                        metrics.export("dropped", 1);
                        ExportStats::add(&stats.dropped, 1);
                        tracing::error!(
                            "export failed at shutdown, dropping the request: {message}"
                        );
                        break;
                    }
                    if queue.is_full() {
                        metrics.export("dropped", 1);
                        ExportStats::add(&stats.dropped, 1);
                        tracing::warn!(
                            "export failed and newer windows are waiting: dropping the oldest: {message}"
                        );
                        break;
                    }
                    tracing::warn!(
                        retry_in_ms = backoff.as_millis() as u64,
                        "export failed: {message}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
