//! Liveness and readiness, shared by the pipeline, the sender and the HTTP server. Ready means
//! sampling: a collector outage must not take every pod of a `DaemonSet` out of service at once
//! (a rollout would stall on the backend's health). Export health is a detail of `/healthz` and
//! a metric, not a readiness condition.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Health {
    /// The sampler is attached and running.
    attached: AtomicBool,
    /// Unix ms since when every export attempt has failed; 0 while exports succeed.
    failing_since_ms: AtomicU64,
    /// Unix ms of the last accepted export; 0 before the first.
    last_success_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
    }

    pub fn export_succeeded(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn export_failed(&self) {
        // Keep the time of the first failure in a row (one sender: no race to lose).
        if self.failing_since_ms.load(Ordering::Relaxed) == 0 {
            self.failing_since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Unix time of the last accepted export, in seconds (0 before the first).
    #[must_use]
    pub fn last_success_seconds(&self) -> f64 {
        self.last_success_ms.load(Ordering::Relaxed) as f64 / 1e3
    }

    /// `Ok` when ready (the sampler is attached); else why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.attached.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the eBPF sampler is not attached")
        }
    }

    /// What `/healthz` says besides "alive": how exports are going.
    #[must_use]
    pub fn detail(&self) -> String {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return "exports ok".to_owned();
        }
        format!(
            "exports failing for {} s (the daemon keeps sampling and retries)",
            now_ms().saturating_sub(since) / 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_sampler_not_the_collector() {
        let h = Health::default();
        assert!(h.ready().is_err());
        h.set_attached(true);
        assert!(h.ready().is_ok());
        h.export_failed();
        h.failing_since_ms
            .store(now_ms() - 120_000, Ordering::Relaxed);
        assert!(h.ready().is_ok(), "a collector outage is not the daemon's");
        assert!(h.detail().contains("failing for 120 s"), "{}", h.detail());
        assert!(h.last_success_seconds() == 0.0);
        h.export_succeeded();
        assert_eq!(h.detail(), "exports ok");
        assert!(h.last_success_seconds() > 1.7e9);
    }
}
