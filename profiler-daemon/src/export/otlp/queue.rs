//! Bounded queue of encoded requests between the pipeline thread and the sender task. When full,
//! the oldest request is dropped (the caller counts it): after an outage the newest windows get
//! through, and memory stays flat.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use tokio::sync::Notify;

pub struct RequestQueue {
    items: Mutex<VecDeque<ExportProfilesServiceRequest>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ExportProfilesServiceRequest>> {
        // A panic while holding the lock cannot leave the deque inconsistent: keep using it.
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a request, dropping the oldest one when full; returns whether one was dropped.
    pub fn push(&self, request: ExportProfilesServiceRequest) -> bool {
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
    pub async fn pop(&self) -> Option<ExportProfilesServiceRequest> {
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

    fn req(n: usize) -> ExportProfilesServiceRequest {
        ExportProfilesServiceRequest {
            resource_profiles: vec![
                opentelemetry_proto::tonic::profiles::v1development::ResourceProfiles::default();
                n
            ],
            dictionary: None,
        }
    }

    #[tokio::test]
    async fn drops_the_oldest_when_full_and_ends_when_closed() {
        let q = RequestQueue::new(2);
        assert!(!q.push(req(1)));
        assert!(!q.push(req(2)));
        assert!(q.push(req(3)), "the oldest was dropped");
        assert!(q.is_full());
        q.close();
        assert_eq!(q.pop().await.unwrap().resource_profiles.len(), 2);
        assert_eq!(q.pop().await.unwrap().resource_profiles.len(), 3);
        assert!(q.pop().await.is_none());
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(RequestQueue::new(4));
        let q2 = std::sync::Arc::clone(&q);
        let waiter = tokio::spawn(async move { q2.pop().await.map(|r| r.resource_profiles.len()) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!q.push(req(5)));
        assert_eq!(waiter.await.unwrap(), Some(5));
    }
}
