//! The sending loop: takes requests from the queue, sends each with retries and exponential
//! backoff, logs partial successes, counts everything. A request being retried gives way when the
//! queue fills up behind it (it is the oldest), so an outage never grows memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::queue::{EncodedRequest, RequestQueue};
use super::transport::{SendError, Transport};
use crate::counters::{Count, Totals};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Export counters, shared with the pipeline thread, which publishes them with its own totals
/// (summary line, metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Requests the receiver accepted.
    sent: AtomicU64,
    /// Samples in those requests.
    sent_samples: AtomicU64,
    /// Attempts that failed (each retry counts).
    failed_attempts: AtomicU64,
    /// Requests given up: refused by the receiver, displaced from a full queue or while
    /// retrying, or left at shutdown.
    dropped: AtomicU64,
    /// Profiles the receiver reported as rejected in a partial success.
    rejected_profiles: AtomicU64,
}

impl ExportStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` requests given up.
    pub fn dropped(&self, n: u64) {
        Self::add(&self.dropped, n);
    }

    /// Writes the export counts into `totals`.
    pub fn totals(&self, totals: &mut Totals) {
        for (count, value) in [
            (Count::ExportSent, &self.sent),
            (Count::ExportedSamples, &self.sent_samples),
            (Count::ExportFailedAttempt, &self.failed_attempts),
            (Count::ExportDropped, &self.dropped),
            (Count::RejectedProfiles, &self.rejected_profiles),
        ] {
            totals.set(count, value.load(Ordering::Relaxed));
        }
    }
}

/// Where the sender reports: counters for the summary, metrics and health for the HTTP server.
pub struct Observers {
    pub stats: Arc<ExportStats>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Sends until the queue is closed and empty. Retries wait with exponential backoff up to
/// `max_backoff`, jittered so that a fleet does not retry in step after an outage. Stops retrying
/// a request once the queue is closed (shutdown: the caller bounds the remaining time).
pub async fn send_loop(
    mut transport: Transport,
    queue: Arc<RequestQueue>,
    obs: Observers,
    max_backoff: Duration,
) {
    while let Some(request) = queue.pop().await {
        send_one(&mut transport, &queue, &obs, &request, max_backoff).await;
    }
}

/// A wait between `backoff / 2` and `backoff` ("equal jitter"): spread, yet never much shorter
/// than the backoff.
fn jittered(backoff: Duration) -> Duration {
    let mut random = [0u8; 8];
    // SAFETY: writes at most random.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    let r = if n == 8 {
        u64::from_ne_bytes(random)
    } else {
        // No entropy at hand: the clock's nanoseconds still differ between hosts.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()))
    };
    let fraction = (r % 1_000_001) as f64 / 1e6;
    backoff.mul_f64(0.5 + fraction / 2.0)
}

/// Sends one request, retrying with backoff while that is worth it.
async fn send_one(
    transport: &mut Transport,
    queue: &RequestQueue,
    obs: &Observers,
    request: &EncodedRequest,
    max_backoff: Duration,
) {
    let stats = &obs.stats;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let start = Instant::now();
        let message = match transport.send(request).await {
            Ok(partial) => {
                obs.health.export_succeeded();
                obs.metrics
                    .last_export
                    .set(obs.health.last_success_seconds());
                obs.metrics
                    .export_latency
                    .observe(start.elapsed().as_secs_f64());
                ExportStats::add(&stats.sent, 1);
                ExportStats::add(&stats.sent_samples, request.samples);
                if let Some(p) = partial
                    && (p.rejected_profiles > 0 || !p.error_message.is_empty())
                {
                    ExportStats::add(&stats.rejected_profiles, p.rejected_profiles.max(0) as u64);
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
                return;
            }
            Err(SendError::Permanent(message)) => {
                failed(obs);
                stats.dropped(1);
                tracing::error!("export rejected, dropping the request: {message}");
                return;
            }
            Err(SendError::Retryable(message)) => message,
        };
        failed(obs);
        if queue.is_closed() {
            stats.dropped(1);
            tracing::error!("export failed at shutdown, dropping the request: {message}");
            return;
        }
        if queue.is_full() {
            stats.dropped(1);
            tracing::warn!(
                "export failed and newer windows are waiting: dropping the oldest: {message}"
            );
            return;
        }
        let wait = jittered(backoff.min(max_backoff));
        tracing::warn!(
            retry_in_ms = wait.as_millis() as u64,
            "export failed: {message}"
        );
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

fn failed(obs: &Observers) {
    obs.health.export_failed();
    ExportStats::add(&obs.stats.failed_attempts, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole_backoff_and_varies() {
        let b = Duration::from_secs(4);
        let waits: Vec<Duration> = (0..50).map(|_| jittered(b)).collect();
        assert!(waits.iter().all(|w| *w >= b / 2 && *w <= b));
        assert!(waits.iter().any(|w| *w != waits[0]), "the waits differ");
    }

    #[test]
    fn every_export_count_reaches_the_totals() {
        let stats = ExportStats::default();
        ExportStats::add(&stats.sent, 3);
        ExportStats::add(&stats.sent_samples, 30);
        ExportStats::add(&stats.failed_attempts, 2);
        ExportStats::add(&stats.rejected_profiles, 4);
        stats.dropped(1);
        let mut totals = Totals::default();
        stats.totals(&mut totals);
        assert_eq!(
            [
                Count::ExportSent,
                Count::ExportedSamples,
                Count::ExportFailedAttempt,
                Count::RejectedProfiles,
                Count::ExportDropped
            ]
            .map(|c| totals.get(c)),
            [3, 30, 2, 4, 1]
        );
    }
}
