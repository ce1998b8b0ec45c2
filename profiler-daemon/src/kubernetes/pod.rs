//! What the profiler keeps of a Kubernetes pod: its names, its workload and its containers' ids,
//! taken from the API's `Pod` object. Nothing else (no spec, no environment, no annotations).

use k8s_openapi::api::core::v1::Pod;

/// The label that names an application (Kubernetes' recommended labels).
const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// The label the Deployment controller puts on its `ReplicaSets`' pods: the `ReplicaSet` is
/// `<deployment>-<hash>`.
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The controller a pod belongs to, as the semantic conventions name it (`k8s.<kind>.name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `deployment`, `replicaset`, `statefulset`, `daemonset`, `job` or `cronjob`.
    pub kind: &'static str,
    pub name: String,
}

/// One pod, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `app.kubernetes.io/name`, when set.
    pub app_name: Option<String>,
    pub workload: Option<Workload>,
    /// Its labels, for `--selector` and the service-name rules' `pod-label`.
    pub labels: Vec<(String, String)>,
    /// (container id without the runtime's `scheme://`, container name).
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    /// The pod's metadata, or `None` for an object without uid, name or namespace.
    #[must_use]
    pub fn of(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key)).cloned();
        let containers = pod
            .status
            .iter()
            .flat_map(|s| {
                [
                    &s.container_statuses,
                    &s.init_container_statuses,
                    &s.ephemeral_container_statuses,
                ]
            })
            .flatten()
            .flatten()
            .filter_map(|c| {
                let id = c.container_id.as_deref()?;
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
                let id = id.rsplit_once("://").map_or(id, |(_, id)| id);
                Some((id.to_ascii_lowercase(), c.name.clone()))
            })
            .collect();
        Some(Self {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            app_name: label(APP_NAME_LABEL),
            workload: workload(pod, label(TEMPLATE_HASH_LABEL).as_deref()),
            labels: labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            containers,
        })
    }

    /// The name of container `id` (a full id, as in the cgroup path).
    #[must_use]
    pub fn container(&self, id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(have, _)| have == id)
            .map(|(_, name)| name.as_str())
    }

    /// `service.name` by Grafana Alloy's convention: `namespace/name`, the name being the
    /// `app.kubernetes.io/name` label, else the workload, else the container.
    #[must_use]
    pub fn service(&self, container: Option<&str>) -> Option<String> {
        let name = self
            .app_name
            .as_deref()
            .or(self.workload.as_ref().map(|w| w.name.as_str()))
            .or(container)?;
        Some(format!("{}/{name}", self.namespace))
    }
}

/// The pod's controlling owner; a `ReplicaSet` made by a Deployment (named `<deployment>-<hash>`,
/// the hash being the pod's `pod-template-hash`) is named as the Deployment, without reading
/// the `ReplicaSet` from the API (no permission on `ReplicaSets` needed). Likewise a Job named
/// `<cronjob>-<digits>` as its `CronJob`.
fn workload(pod: &Pod, template_hash: Option<&str>) -> Option<Workload> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    let name = owner.name.clone();
    let (kind, name) = match owner.kind.as_str() {
        "ReplicaSet" => {
            match template_hash.and_then(|hash| name.strip_suffix(hash)?.strip_suffix('-')) {
                Some(deployment) => ("deployment", deployment.to_owned()),
                None => ("replicaset", name),
            }
        }
        "Job" => match name.rsplit_once('-') {
            Some((cronjob, stamp))
                if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) =>
            {
                ("cronjob", cronjob.to_owned())
            }
            _ => ("job", name),
        },
        "StatefulSet" => ("statefulset", name),
        "DaemonSet" => ("daemonset", name),
        _ => return None,
    };
    Some(Workload { kind, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    fn with_owner(kind: &str, name: &str, labels: &str) -> Pod {
        pod(&format!(
            r#"{{"metadata": {{"uid": "u1", "namespace": "shop", "name": "p", "labels": {{{labels}}},
               "ownerReferences": [{{"apiVersion": "apps/v1", "kind": "{kind}", "name": "{name}",
                                    "uid": "o1", "controller": true}}]}},
               "status": {{"containerStatuses": [{{"name": "api", "image": "i", "imageID": "",
                 "ready": true, "restartCount": 0,
                 "containerID": "containerd://ABC123"}}]}}}}"#
        ))
    }

    #[test]
    fn workloads_and_service_names_follow_alloys_convention() {
        let p = PodMeta::of(&with_owner(
            "ReplicaSet",
            "checkout-7d9f8b6c5",
            r#""pod-template-hash": "7d9f8b6c5""#,
        ))
        .unwrap();
        assert_eq!(
            p.workload,
            Some(Workload {
                kind: "deployment",
                name: "checkout".into()
            })
        );
        assert_eq!(p.container("abc123"), Some("api"));
        assert_eq!(p.service(Some("api")).as_deref(), Some("shop/checkout"));
        // The app label wins over the workload.
        let p = PodMeta::of(&with_owner(
            "StatefulSet",
            "db",
            r#""app.kubernetes.io/name": "postgres""#,
        ))
        .unwrap();
        assert_eq!(p.workload.as_ref().unwrap().kind, "statefulset");
        assert_eq!(p.service(None).as_deref(), Some("shop/postgres"));
        // A bare `ReplicaSet`, a `CronJob`'s Job, a plain Job.
        let rs = PodMeta::of(&with_owner("ReplicaSet", "rs-1", "")).unwrap();
        assert_eq!(rs.workload.unwrap().kind, "replicaset");
        let cron = PodMeta::of(&with_owner("Job", "backup-29334120", "")).unwrap();
        assert_eq!(
            cron.workload,
            Some(Workload {
                kind: "cronjob",
                name: "backup".into()
            })
        );
        let job = PodMeta::of(&with_owner("Job", "migrate-db", "")).unwrap();
        assert_eq!(job.workload.unwrap().kind, "job");
        // No controller: named by the container.
        let bare = PodMeta::of(&pod(
            r#"{"metadata": {"uid": "u2", "namespace": "dev", "name": "debug"}}"#,
        ))
        .unwrap();
        assert_eq!(bare.workload, None);
        assert_eq!(bare.service(Some("shell")).as_deref(), Some("dev/shell"));
        assert_eq!(bare.service(None), None);
        // Objects without identity are not kept.
        assert_eq!(PodMeta::of(&pod(r#"{"metadata": {"name": "x"}}"#)), None);
    }
}
