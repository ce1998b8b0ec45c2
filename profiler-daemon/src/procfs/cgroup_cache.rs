//! What a process's cgroup says of it (container, pod, systemd path and unit), read from
//! `/proc/PID/cgroup` and remembered per cgroup: a busy host starts a hundred processes a second,
//! nearly all in cgroups whose siblings were read before. The key is the kernel's cgroup id that
//! came with the process's event, taken only once the cgroup v2 directory the text names is seen
//! to have that id (its inode number): a process moved between its event and the read, a hybrid
//! v1 host, or a daemon that sees another cgroup tree is read every time, never cached wrongly.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{container_id_from_cgroup, pod_uid_from_cgroup, service, systemd_path};

/// Most cgroups remembered; past it the cache starts over (a few hundred bytes each).
pub const MAX_CGROUPS: usize = 4096;

/// The facts of one cgroup, shared by its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    pub container_id: Option<Arc<str>>,
    /// The cgroup path as systemd sees it.
    pub systemd_path: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    /// The systemd service unit, without `.service`.
    pub unit: Option<Arc<str>>,
}

impl CgroupFacts {
    /// The facts of a `/proc/PID/cgroup` text.
    #[must_use]
    pub fn parse(cgroup: &str) -> Self {
        Self {
            container_id: container_id_from_cgroup(cgroup).map(Arc::from),
            systemd_path: systemd_path(cgroup).map(Arc::from),
            pod_uid: pod_uid_from_cgroup(cgroup).map(Arc::from),
            unit: service::unit_service(cgroup).map(Arc::from),
        }
    }
}

/// Cgroup facts by cgroup id, bounded by `MAX_CGROUPS`.
#[derive(Debug)]
pub struct CgroupCache {
    /// Where the cgroup v2 hierarchy is mounted (`None`: nothing is cached).
    mount: Option<PathBuf>,
    by_id: HashMap<u64, CgroupFacts>,
}

impl Default for CgroupCache {
    fn default() -> Self {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| super::cgroup::v2_mount(&text));
        Self::at(mount)
    }
}

impl CgroupCache {
    #[must_use]
    pub fn at(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            by_id: HashMap::new(),
        }
    }

    /// The cgroup facts of the process at `pid_dir`, whose event said it is in cgroup `id`
    /// (0: not known); `None` when its `/proc` is gone.
    pub fn facts(&mut self, pid_dir: &Path, id: u64) -> Option<CgroupFacts> {
        if id != 0
            && let Some(facts) = self.by_id.get(&id)
        {
            return Some(facts.clone());
        }
        let text = std::fs::read_to_string(pid_dir.join("cgroup")).ok()?;
        let facts = CgroupFacts::parse(&text);
        if id != 0 && self.is_cgroup(&text, id) {
            if self.by_id.len() >= MAX_CGROUPS {
                self.by_id.clear();
            }
            self.by_id.insert(id, facts.clone());
        }
        Some(facts)
    }

    /// Whether `text` is a cgroup v2 only membership (one `0::PATH` line) whose directory has
    /// the id `id`.
    fn is_cgroup(&self, text: &str, id: u64) -> bool {
        let mut lines = text.lines();
        let (Some(line), None, Some(mount)) = (lines.next(), lines.next(), &self.mount) else {
            return false;
        };
        let Some(path) = line.strip_prefix("0::") else {
            return false;
        };
        std::fs::metadata(mount.join(path.trim_start_matches('/'))).is_ok_and(|m| m.ino() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_parsed_from_the_text() {
        let text = "0::/kubepods.slice/kubepods-pod0f2b2c9e_1d3a_4e0b_9c1a_2f6b5d8e7a10.slice/\
                    cri-containerd-4f1c0b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a.scope\n";
        let facts = CgroupFacts::parse(text);
        assert_eq!(
            facts.container_id.as_deref(),
            Some("4f1c0b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a")
        );
        assert_eq!(
            facts.pod_uid.as_deref(),
            Some("0f2b2c9e-1d3a-4e0b-9c1a-2f6b5d8e7a10")
        );
        let unit = CgroupFacts::parse("0::/system.slice/nginx.service\n");
        assert_eq!(unit.unit.as_deref(), Some("nginx"));
        assert_eq!(
            unit.systemd_path.as_deref(),
            Some("/system.slice/nginx.service")
        );
    }

    #[test]
    fn a_cgroup_is_read_once_when_its_id_is_confirmed() {
        // A cgroup v2 tree and a process in it, laid out as the kernel shows them.
        let mount = tempfile::tempdir().unwrap();
        let unit = mount.path().join("system.slice/app.service");
        std::fs::create_dir_all(&unit).unwrap();
        let id = std::fs::metadata(&unit).unwrap().ino();
        let process = tempfile::tempdir().unwrap();
        let text = "0::/system.slice/app.service\n";
        std::fs::write(process.path().join("cgroup"), text).unwrap();
        let gone = process.path().join("gone");
        let mut cache = CgroupCache::at(Some(mount.path().to_path_buf()));

        // A wrong id is not cached: the next process said to be in it is read (here: gone).
        let facts = Some(CgroupFacts::parse(text));
        assert_eq!(cache.facts(process.path(), id + 1), facts);
        assert_eq!(cache.facts(&gone, id + 1), None);
        // The right one is, and serves a process whose `/proc` was not read.
        assert_eq!(cache.facts(process.path(), id), facts);
        assert_eq!(cache.facts(&gone, id), facts);
        assert_eq!(facts.and_then(|f| f.unit).as_deref(), Some("app"));
        // Unknown ids (0) are never cached, nor hybrid hosts' memberships (v1 lines too).
        assert_eq!(cache.facts(&gone, 0), None);
        let hybrid = tempfile::tempdir().unwrap();
        let other = mount.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let other_id = std::fs::metadata(&other).unwrap().ino();
        std::fs::write(hybrid.path().join("cgroup"), "4:memory:/x\n0::/other\n").unwrap();
        assert!(cache.facts(hybrid.path(), other_id).is_some());
        assert_eq!(cache.facts(&gone, other_id), None);
    }
}
