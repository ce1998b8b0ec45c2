//! `profiler run --kubernetes`: the pods of this node (`NODE_NAME`), watched on the API server
//! through `kube` (one list, then a watch, with a field selector on `spec.nodeName`: the API
//! server sends only this node's pods), kept in a small index (`PodIndex`) that the encoder reads
//! to label profiles with namespace, pod, container and workload.
//!
//! A process is matched by the container id and pod uid of its cgroup path
//! (`procfs::container`). When the API cannot be reached, profiles go on without the pod labels
//! (the container id still tells what the path tells); the failure is counted and logged once,
//! and the watch retries with backoff.

pub mod pod;
pub mod select;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::counters::{Count, Totals};
pub use pod::{PodMeta, Workload};
pub use select::{PodSelector, SelectorError};

/// Most pods kept: a node runs at most a few hundred (the kubelet's default limit is 110); a
/// larger answer means a wrong selector, and the rest are dropped (counted as errors).
pub const MAX_PODS: usize = 4096;

/// A process's place in Kubernetes: its pod and, when known, its container's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    pub pod: Arc<PodMeta>,
    pub container: Option<String>,
}

/// This node's pods, by uid, and by container id.
#[derive(Debug, Default)]
pub struct PodIndex {
    node: String,
    pods: RwLock<Pods>,
    updates: AtomicU64,
    errors: AtomicU64,
    /// Set once the first error was logged at warn level (later ones go to debug).
    warned: AtomicBool,
}

#[derive(Debug, Default)]
struct Pods {
    by_uid: HashMap<String, Arc<PodMeta>>,
    /// Pods listed since the watch (re)started, swapped in when the list is complete.
    listing: Option<HashMap<String, Arc<PodMeta>>>,
}

impl PodIndex {
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            ..Self::default()
        }
    }

    /// The node whose pods are watched (`k8s.node.name`).
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pod of a process with this pod uid and container id (both from its cgroup path):
    /// by pod uid, else by container id (a path without the pod's segment).
    #[must_use]
    pub fn placement(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Option<Placement> {
        let pods = self.pods.read().ok()?;
        let by_container = || {
            let id = container_id?;
            pods.by_uid.values().find(|p| p.container(id).is_some())
        };
        let pod = Arc::clone(
            pod_uid
                .and_then(|uid| pods.by_uid.get(uid))
                .or_else(by_container)?,
        );
        let container = container_id
            .and_then(|id| pod.container(id))
            .map(str::to_owned);
        Some(Placement { pod, container })
    }

    /// The uids of the pods `selector` selects now.
    #[must_use]
    pub fn select(&self, selector: &PodSelector) -> Vec<String> {
        self.pods.read().map_or_else(
            |_| Vec::new(),
            |pods| {
                pods.by_uid
                    .values()
                    .filter(|p| selector.matches(p))
                    .map(|p| p.uid.clone())
                    .collect()
            },
        )
    }

    /// Pods known now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pods.read().map_or(0, |p| p.by_uid.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the index's counts into `totals`.
    pub fn totals(&self, totals: &mut Totals) {
        totals.set(Count::KubePodUpdates, self.updates.load(Ordering::Relaxed));
        totals.set(Count::KubeErrors, self.errors.load(Ordering::Relaxed));
    }

    fn apply(&self, event: Event<Pod>) {
        let Ok(mut pods) = self.pods.write() else {
            return;
        };
        let pods = &mut *pods;
        match event {
            Event::Init => pods.listing = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let (Some(listing), Some(meta)) = (&mut pods.listing, PodMeta::of(&pod)) {
                    self.insert(listing, meta);
                }
            }
            Event::InitDone => {
                if let Some(listing) = pods.listing.take() {
                    pods.by_uid = listing;
                }
            }
            Event::Apply(pod) => {
                if let Some(meta) = PodMeta::of(&pod) {
                    self.insert(&mut pods.by_uid, meta);
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    pods.by_uid.remove(uid);
                }
            }
        }
    }

    fn insert(&self, pods: &mut HashMap<String, Arc<PodMeta>>, meta: PodMeta) {
        if pods.len() >= MAX_PODS && !pods.contains_key(&meta.uid) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
        pods.insert(meta.uid.clone(), Arc::new(meta));
    }

    fn failed(&self, what: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!("Kubernetes API: {what}");
        } else {
            tracing::warn!(
                "Kubernetes API: {what}; profiles go on without pod labels until it answers \
                 (retried with backoff; later failures are logged at debug level and counted in \
                 profiler_kubernetes_total{{event=\"error\"}})"
            );
        }
    }
}

/// Watches this node's pods into `index` until the runtime shuts down. The API server is found
/// as `kube` finds it: `KUBECONFIG` (or `~/.kube/config`), else the in-cluster service account.
pub async fn watch(index: Arc<PodIndex>) {
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(err) => {
            index.failed(&format_args!("no client: {err}"));
            return;
        }
    };
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", index.node));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => index.apply(event),
            Err(err) => index.failed(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, container: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"uid": uid, "namespace": "ns", "name": format!("pod-{uid}")},
            "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0, "containerID": format!("containerd://{container}")}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_pods_and_lookups_use_uid_or_container() {
        let index = PodIndex::new("node-a");
        index.apply(Event::Init);
        index.apply(Event::InitApply(pod("u1", "c1")));
        // Not visible before the list is complete.
        assert!(index.is_empty());
        index.apply(Event::InitDone);
        index.apply(Event::Apply(pod("u2", "c2")));
        assert_eq!(index.len(), 2);
        let found_by_uid = index.placement(Some("u1"), None).unwrap();
        assert_eq!(
            (found_by_uid.pod.name.as_str(), found_by_uid.container),
            ("pod-u1", None)
        );
        let found_by_container = index.placement(None, Some("c2")).unwrap();
        assert_eq!(found_by_container.container.as_deref(), Some("c"));
        assert_eq!(index.placement(Some("u9"), Some("c9")), None);
        // A relist without u1 drops it; a deletion drops u2.
        index.apply(Event::Init);
        index.apply(Event::InitApply(pod("u2", "c2")));
        index.apply(Event::InitDone);
        index.apply(Event::Delete(pod("u2", "c2")));
        assert!(index.is_empty());
        let mut totals = Totals::default();
        index.totals(&mut totals);
        assert_eq!(totals.get(Count::KubePodUpdates), 3);
    }
}
