//! Bounded queue of encoded requests between the pipeline thread and the sender task. When full,
//! the oldest request is dropped (the caller counts it): after an outage the newest windows get
//! through, and memory stays flat. Requests wait as their protobuf bytes (at most
//! `--max-profile-bytes` each), not as messages: a message is several times its encoding in
//! memory (an allocation per location, line and sample), and gRPC would copy it per attempt.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message as _;
use tokio::sync::Notify;

/// One export request, encoded.
#[derive(Debug, Clone, Default)]
pub struct EncodedRequest {
    /// The `ExportProfilesServiceRequest` message's bytes.
    pub body: bytes::Bytes,
    /// Samples it carries (the sum of their counts), for the export counters.
    pub samples: u64,
}

impl EncodedRequest {
    #[must_use]
    pub fn of(request: &ExportProfilesServiceRequest) -> Self {
        let samples = request
            .resource_profiles
            .iter()
            .flat_map(|rp| &rp.scope_profiles)
            .flat_map(|sp| &sp.profiles)
            .flat_map(|p| &p.samples)
            .map(|s| s.values.first().copied().unwrap_or(0).max(0) as u64)
            .sum();
        Self {
            body: request.encode_to_vec().into(),
            samples,
        }
    }
}

pub struct RequestQueue {
    items: Mutex<VecDeque<EncodedRequest>>,
    capacity: usize,
    notify: Notify,
    closed: AtomicBool,
}

impl RequestQueue {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<EncodedRequest>> {
        // A panic while holding the lock cannot leave the deque inconsistent: keep using it.
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a request, dropping the oldest one when full; returns whether one was dropped.
    pub fn push(&self, request: EncodedRequest) -> bool {
        let mut items = self.lock();
        let full = items.len() >= self.capacity;
        if full {
            items.pop_front();
            tracing::warn!(
                capacity = self.capacity,
                "export queue full: dropped the oldest request"
            );
        }
        items.push_back(request);
        drop(items);
        self.notify.notify_one();
        full
    }

    /// Next request; `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<EncodedRequest> {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.lock().pop_front() {
                return Some(item);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// True when the queue holds `capacity` requests (a request being retried then gives way).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.lock().len() >= self.capacity
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// No more requests will come; `pop` returns `None` when the rest is taken.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u64) -> EncodedRequest {
        EncodedRequest {
            body: bytes::Bytes::new(),
            samples: n,
        }
    }

    #[test]
    fn an_encoded_request_counts_its_samples_and_decodes_back() {
        use opentelemetry_proto::tonic::profiles::v1development as pb;
        let profile = |values: &[i64]| pb::Profile {
            samples: values
                .iter()
                .map(|&v| pb::Sample {
                    values: vec![v],
                    ..pb::Sample::default()
                })
                .collect(),
            ..pb::Profile::default()
        };
        let message = ExportProfilesServiceRequest {
            resource_profiles: vec![pb::ResourceProfiles {
                scope_profiles: vec![pb::ScopeProfiles {
                    profiles: vec![profile(&[3, 4]), profile(&[5, -1])],
                    ..pb::ScopeProfiles::default()
                }],
                ..pb::ResourceProfiles::default()
            }],
            dictionary: None,
        };
        let encoded = EncodedRequest::of(&message);
        assert_eq!(encoded.samples, 12, "negative values count as none");
        assert_eq!(
            ExportProfilesServiceRequest::decode(encoded.body).expect("decodes"),
            message
        );
    }

    #[tokio::test]
    async fn drops_the_oldest_when_full_and_ends_when_closed() {
        let q = RequestQueue::new(2);
        assert!(!q.push(req(1)));
        assert!(!q.push(req(2)));
        assert!(q.push(req(3)), "the oldest was dropped");
        assert!(q.is_full());
        q.close();
        assert_eq!(q.pop().await.unwrap().samples, 2);
        assert_eq!(q.pop().await.unwrap().samples, 3);
        assert!(q.pop().await.is_none());
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(RequestQueue::new(4));
        let q2 = std::sync::Arc::clone(&q);
        let waiter = tokio::spawn(async move { q2.pop().await.map(|r| r.samples) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!q.push(req(5)));
        assert_eq!(waiter.await.unwrap(), Some(5));
    }
}
