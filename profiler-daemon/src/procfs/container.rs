//! Container id and Kubernetes pod uid from a process's cgroup path (`/proc/PID/cgroup`), in the
//! path styles of Docker, containerd (cri), CRI-O and Podman, the kubelet's systemd and cgroupfs
//! drivers, cgroup v1 and v2, and as seen from inside a private cgroup namespace (`0::/../..`):
//! only the path's last segments are read, so a path relative to a namespace root works alike.

/// The 64-hex-digit id that container runtimes put in the cgroup path: Docker
/// (`/docker/<id>`, `docker-<id>.scope`), containerd and Kubernetes (`cri-containerd-<id>.scope`,
/// `/kubepods/.../<id>`), CRI-O (`crio-<id>.scope`), Podman (`libpod-<id>.scope`).
#[must_use]
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        // "hierarchy-id:controllers:path"
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(|segment| {
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            let id = segment.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| id.to_ascii_lowercase())
        })
    })
}

/// The pod uid the kubelet puts in the cgroup path: `pod<uid>` (cgroupfs driver:
/// `/kubepods/burstable/pod0b5e...-.../<container>`) or `kubepods-<qos>-pod<uid with _>.slice`
/// (systemd driver), normalized to the API's form (`0b5e3c1a-7d2f-4e8b-9c1d-2a3b4c5d6e7f`).
#[must_use]
pub fn pod_uid_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(|segment| {
            let segment = segment.strip_suffix(".slice").unwrap_or(segment);
            let uid = match segment.rfind("-pod") {
                Some(at) => &segment[at + 4..],
                None => segment.strip_prefix("pod")?,
            };
            let uid = uid.replace('_', "-").to_ascii_lowercase();
            is_uuid(&uid).then_some(uid)
        })
    })
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::container_id_from_cgroup as id;
    use super::pod_uid_from_cgroup as pod;

    const UID: &str = "0b5e3c1a-7d2f-4e8b-9c1d-2a3b4c5d6e7f";

    #[test]
    fn finds_pod_uids_of_both_kubelet_drivers_and_inside_cgroup_namespaces() {
        let underscored = UID.replace('-', "_");
        for text in [
            // systemd driver, containerd, cgroup v2.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope\n"
            ),
            // systemd driver, guaranteed QoS (no QoS slice), CRI-O.
            format!("0::/kubepods.slice/kubepods-pod{underscored}.slice/crio-{ID}.scope\n"),
            // cgroupfs driver, Docker (dockershim) on cgroup v1.
            format!(
                "12:memory:/kubepods/besteffort/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n"
            ),
            // A private cgroup namespace: the path climbs out of the namespace root.
            format!(
                "0::/../../kubepods-besteffort-pod{underscored}.slice/cri-containerd-{ID}.scope\n"
            ),
        ] {
            assert_eq!(pod(&text).as_deref(), Some(UID), "{text}");
            assert_eq!(id(&text).as_deref(), Some(ID), "{text}");
        }
        // Not pods: a pod-named unit, a short id, a host process.
        assert_eq!(pod("0::/system.slice/pod-manager.service\n"), None);
        assert_eq!(pod("0::/kubepods/besteffort/pod1234/abc\n"), None);
        assert_eq!(pod("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        // Inside a private namespace the container's own view is `/`: nothing to read.
        assert_eq!(pod("0::/\n"), None);
        assert_eq!(id("0::/\n"), None);
    }

    const ID: &str = "3f1c9b2e8d7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c";

    #[test]
    fn finds_ids_of_the_common_runtimes() {
        for path in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("0::/docker/{ID}"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods/besteffort/pod0b5e/{ID}"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(id(&path).as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn host_processes_have_none() {
        assert_eq!(id("0::/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(id("0::/init.scope\n"), None);
        assert_eq!(id(""), None);
    }
}
