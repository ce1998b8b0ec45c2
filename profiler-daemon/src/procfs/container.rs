//! Container id from a process's cgroup path (`/proc/PID/cgroup`).

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

#[cfg(test)]
mod tests {
    use super::container_id_from_cgroup as id;

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
