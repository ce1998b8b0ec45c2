//! Self-metrics in the Prometheus text format (prometheus-client): every count of the catalog
//! (`crate::counters`: what was sampled, what was lost and why, exports), plus gauges of what is
//! held. The pipeline thread publishes its totals with `update`; the HTTP server encodes the
//! registry on each scrape.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::counters::{CATALOG, FAMILIES, Totals};

type Labels = Vec<(&'static str, &'static str)>;

/// Sizes the pipeline publishes as gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub processes: usize,
    pub user_names: usize,
    pub kernel_names: usize,
    pub open_modules: usize,
    pub stacks: usize,
    pub ring_fill_ratio: f64,
    pub pid_filter_entries: usize,
    pub queue_depth: usize,
}

pub struct Metrics {
    registry: Registry,
    /// One family per `counters::FAMILIES` entry (unlabeled ones use an empty label set).
    counters: Vec<Family<Labels, Counter>>,
    processes: Gauge,
    cache_entries: Family<Labels, Gauge>,
    ring_fill: Gauge<f64, AtomicU64>,
    pid_filter: Gauge,
    queue_depth: Gauge,
    pub export_latency: Histogram,
    /// Unix time of the last export the collector accepted (0: none yet).
    pub last_export: Gauge<f64, AtomicU64>,
    last: Mutex<Totals>,
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
        let counters: Vec<Family<Labels, Counter>> =
            FAMILIES.iter().map(|_| Family::default()).collect();
        for (family, metric) in FAMILIES.iter().zip(&counters) {
            registry.register(family.name, family.help, metric.clone());
        }
        let m = Self {
            counters,
            processes: Gauge::default(),
            cache_entries: Family::default(),
            ring_fill: Gauge::default(),
            pid_filter: Gauge::default(),
            queue_depth: Gauge::default(),
            export_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            last_export: Gauge::default(),
            last: Mutex::new(Totals::default()),
            registry: Registry::default(),
        };
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
            "Largest share of the ring buffer drained at once since the last update",
            m.ring_fill.clone(),
        );
        registry.register(
            "pid_filter_entries",
            "Processes in the in-kernel pid filter (0: no filter)",
            m.pid_filter.clone(),
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
        registry.register(
            "last_export_success_timestamp_seconds",
            "Unix time of the last export the collector accepted (0: none yet)",
            m.last_export.clone(),
        );
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "build_info",
            "The profiler's version (always 1)",
            build_info,
        );
        // Every series exists from the start, at 0: an alert on a loss sees 0, not "no data".
        m.update(&Totals::default());
        Self { registry, ..m }
    }

    /// Publishes the pipeline's current totals (counters advance by the difference).
    pub fn update(&self, now: &Totals) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in CATALOG {
            let Some(i) = FAMILIES.iter().position(|f| f.name == entry.family) else {
                continue;
            };
            let labels: Labels = match (FAMILIES[i].label_key, entry.label) {
                (Some(key), Some(value)) => vec![(key, value)],
                _ => Vec::new(),
            };
            let delta = now.get(entry.count).saturating_sub(last.get(entry.count));
            self.counters[i].get_or_create(&labels).inc_by(delta);
        }
        *last = *now;
    }

    /// Publishes the sizes of what the daemon holds.
    pub fn set_gauges(&self, g: &Gauges) {
        self.processes.set(g.processes as i64);
        for (cache, n) in [
            ("user_names", g.user_names),
            ("kernel_names", g.kernel_names),
            ("open_modules", g.open_modules),
            ("stacks", g.stacks),
        ] {
            self.cache_entries
                .get_or_create(&vec![("cache", cache)])
                .set(n as i64);
        }
        self.ring_fill.set(g.ring_fill_ratio);
        self.pid_filter.set(g.pid_filter_entries as i64);
        self.queue_depth.set(g.queue_depth as i64);
    }

    /// The text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            // Writing into a String cannot fail; an empty page is the safe answer if it did.
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_advance_by_differences_and_every_series_exists_at_zero() {
        use crate::counters::Count;
        let m = Metrics::new();
        let text = m.encode();
        for series in [
            "profiler_samples_lost_total{reason=\"ringbuf_full\"} 0",
            "profiler_samples_lost_total{reason=\"profile_full\"} 0",
            "profiler_process_events_total{outcome=\"lost\"} 0",
            "profiler_export_rejected_profiles_total 0",
            "profiler_exports_total{result=\"dropped\"} 0",
            "profiler_samples_unknown_process_total 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        let mut t = Totals::default();
        t.set(Count::Received, 10);
        m.update(&t);
        t.set(Count::Received, 25);
        t.set(Count::RejectedProfiles, 2);
        t.set(Count::ExportSent, 1);
        m.update(&t);
        m.set_gauges(&Gauges {
            processes: 2,
            ..Gauges::default()
        });
        let text = m.encode();
        assert!(text.contains("profiler_samples_total 25"), "{text}");
        assert!(
            text.contains("profiler_export_rejected_profiles_total 2"),
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
        assert!(
            text.contains("profiler_build_info{version=\"0.1.0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("profiler_last_export_success_timestamp_seconds 0"),
            "{text}"
        );
    }
}
