//! Self-metrics in the Prometheus text format (prometheus-client): what was sampled, what was
//! lost and why, caches, exports. The pipeline thread publishes its totals with `update`; the
//! sender updates export figures; the HTTP server encodes the registry on each scrape.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use profiler_common::Counter as BpfCounter;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::bpf::BpfCounters;

type Labels = Vec<(&'static str, &'static str)>;

/// Totals the pipeline publishes; the metrics turn them into counter increments.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineTotals {
    pub bpf: BpfCounters,
    pub samples_received: u64,
    pub lost_profile_full: u64,
    pub malformed: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub symbolize_errors: u64,
    pub processes: usize,
    pub cache_user: usize,
    pub cache_kernel: usize,
    pub open_modules: usize,
    pub stacks: usize,
    pub ring_fill_ratio: f64,
    pub pid_filter_entries: usize,
}

pub struct Metrics {
    registry: Registry,
    bpf: Family<Labels, Counter>,
    lost: Family<Labels, Counter>,
    stack_walks_failed: Family<Labels, Counter>,
    samples: Counter,
    symbolize: Family<Labels, Counter>,
    processes: Gauge,
    cache_entries: Family<Labels, Gauge>,
    ring_fill: Gauge<f64, AtomicU64>,
    pid_filter: Gauge,
    pub windows: Counter,
    pub exports: Family<Labels, Counter>,
    pub rejected_profiles: Counter,
    pub queue_depth: Gauge,
    pub export_latency: Histogram,
    last: Mutex<PipelineTotals>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("profiler");
        let m = Self {
            bpf: Family::default(),
            lost: Family::default(),
            stack_walks_failed: Family::default(),
            samples: Counter::default(),
            symbolize: Family::default(),
            processes: Gauge::default(),
            cache_entries: Family::default(),
            ring_fill: Gauge::default(),
            pid_filter: Gauge::default(),
            windows: Counter::default(),
            exports: Family::default(),
            rejected_profiles: Counter::default(),
            queue_depth: Gauge::default(),
            export_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            last: Mutex::new(PipelineTotals::default()),
            registry: Registry::default(),
        };
        registry.register(
            "bpf_events",
            "Perf events handled by the eBPF sampler, by outcome",
            m.bpf.clone(),
        );
        registry.register(
            "samples",
            "Samples received and aggregated by the daemon",
            m.samples.clone(),
        );
        registry.register("samples_lost", "Samples lost, by reason", m.lost.clone());
        registry.register(
            "stack_walks_failed",
            "Stack walks that failed (sample kept without that part)",
            m.stack_walks_failed.clone(),
        );
        registry.register(
            "symbolize",
            "Symbolization lookups, by result",
            m.symbolize.clone(),
        );
        registry.register(
            "processes_tracked",
            "Processes in the process table",
            m.processes.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries held, by cache",
            m.cache_entries.clone(),
        );
        registry.register(
            "ring_buffer_fill_ratio",
            "Largest share of the ring buffer drained at once in the last window",
            m.ring_fill.clone(),
        );
        registry.register(
            "pid_filter_entries",
            "Processes in the in-kernel pid filter (0: no filter)",
            m.pid_filter.clone(),
        );
        registry.register("windows", "Profile windows closed", m.windows.clone());
        registry.register(
            "exports",
            "Export requests, by result (sent, failed_attempt, dropped)",
            m.exports.clone(),
        );
        registry.register(
            "export_rejected_profiles",
            "Profiles a receiver rejected in a partial success",
            m.rejected_profiles.clone(),
        );
        registry.register(
            "export_queue_depth",
            "Export requests waiting",
            m.queue_depth.clone(),
        );
        registry.register(
            "export_latency_seconds",
            "Duration of successful export attempts",
            m.export_latency.clone(),
        );
        Self { registry, ..m }
    }

    /// Publishes the pipeline's current totals (counters advance by the difference).
    pub fn update(&self, now: &PipelineTotals) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let delta = |a: u64, b: u64| a.saturating_sub(b);
        for c in BpfCounter::ALL {
            let d = delta(now.bpf.get(c), last.bpf.get(c));
            if d > 0 {
                self.bpf
                    .get_or_create(&vec![("outcome", c.name())])
                    .inc_by(d);
            }
        }
        for (reason, n, old) in [
            (
                "ringbuf_full",
                now.bpf.get(BpfCounter::RingBufFull),
                last.bpf.get(BpfCounter::RingBufFull),
            ),
            (
                "events_lost",
                now.bpf.get(BpfCounter::EventsLost),
                last.bpf.get(BpfCounter::EventsLost),
            ),
            (
                "profile_full",
                now.lost_profile_full,
                last.lost_profile_full,
            ),
            ("malformed", now.malformed, last.malformed),
        ] {
            // Touch every reason so that the series exist at 0.
            self.lost
                .get_or_create(&vec![("reason", reason)])
                .inc_by(delta(n, old));
        }
        for (stack, c) in [
            ("kernel", BpfCounter::KernelStackFailed),
            ("user", BpfCounter::UserStackFailed),
        ] {
            self.stack_walks_failed
                .get_or_create(&vec![("stack", stack)])
                .inc_by(delta(now.bpf.get(c), last.bpf.get(c)));
        }
        self.samples
            .inc_by(delta(now.samples_received, last.samples_received));
        for (result, n, old) in [
            ("hit", now.cache_hits, last.cache_hits),
            ("miss", now.cache_misses, last.cache_misses),
            ("error", now.symbolize_errors, last.symbolize_errors),
        ] {
            self.symbolize
                .get_or_create(&vec![("result", result)])
                .inc_by(delta(n, old));
        }
        self.processes.set(now.processes as i64);
        for (cache, n) in [
            ("user_names", now.cache_user),
            ("kernel_names", now.cache_kernel),
            ("open_modules", now.open_modules),
            ("stacks", now.stacks),
        ] {
            self.cache_entries
                .get_or_create(&vec![("cache", cache)])
                .set(n as i64);
        }
        self.ring_fill.set(now.ring_fill_ratio);
        self.pid_filter.set(now.pid_filter_entries as i64);
        *last = *now;
    }

    /// Export results by name: `sent`, `failed_attempt`, `dropped`.
    pub fn export(&self, result: &'static str, n: u64) {
        self.exports
            .get_or_create(&vec![("result", result)])
            .inc_by(n);
    }

    /// The text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Liveness and readiness, shared by the pipeline, the sender and the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    /// The sampler is attached and running.
    pub attached: AtomicBool,
    /// Unix ms since when every export attempt has failed; 0 while exports succeed.
    failing_since_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn export_succeeded(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    pub fn export_failed(&self) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// `Ok` when ready; else why not. Exports may fail for up to `grace_ms` before that counts.
    pub fn ready(&self, grace_ms: u64) -> Result<(), String> {
        if !self.attached.load(Ordering::Relaxed) {
            return Err("the eBPF sampler is not attached".to_owned());
        }
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            let failing = now_ms().saturating_sub(since);
            if failing > grace_ms {
                return Err(format!(
                    "exports have been failing for {} s",
                    failing / 1000
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_advance_by_differences_and_encode() {
        let m = Metrics::new();
        let mut t = PipelineTotals {
            samples_received: 10,
            cache_hits: 3,
            processes: 2,
            ..PipelineTotals::default()
        };
        m.update(&t);
        t.samples_received = 25;
        m.update(&t);
        m.export("sent", 1);
        let text = m.encode();
        assert!(text.contains("profiler_samples_total 25"), "{text}");
        assert!(
            text.contains("profiler_samples_lost_total{reason=\"ringbuf_full\"} 0"),
            "{text}"
        );
        assert!(text.contains("profiler_processes_tracked 2"), "{text}");
        assert!(
            text.contains("profiler_exports_total{result=\"sent\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("profiler_export_latency_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn readiness_follows_attachment_and_export_failures() {
        let h = Health::default();
        assert!(h.ready(1000).is_err());
        h.attached.store(true, Ordering::Relaxed);
        assert!(h.ready(1000).is_ok());
        h.export_failed();
        assert!(h.ready(60_000).is_ok(), "within the grace period");
        h.failing_since_ms
            .store(now_ms() - 120_000, Ordering::Relaxed);
        assert!(h.ready(60_000).unwrap_err().contains("failing"));
        h.export_succeeded();
        assert!(h.ready(60_000).is_ok());
    }
}
