//! cgroup v2 directories as the eBPF filter needs them: the kernel's id of a cgroup (its
//! directory's inode number on the cgroup2 file system) and its level (depth below the v2 root,
//! what `bpf_get_current_ancestor_cgroup_id` takes). The v2 hierarchy is found wherever it is
//! mounted (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// One cgroup to profile (with everything below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFilter {
    /// The directory, as resolved.
    pub path: PathBuf,
    /// The kernel's cgroup id.
    pub id: u64,
    /// Depth below the v2 root (the root is 0).
    pub level: u32,
}

/// Why a `--cgroup` path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted on this host (cgroup filters need one)")]
    NoV2,
    #[error("--cgroup {path}: not a directory of the cgroup v2 hierarchy mounted at {mount}")]
    NotV2 { path: String, mount: String },
    #[error("--cgroup {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("--cgroup {path}: deeper than the {max} levels the filter follows")]
    TooDeep { path: String, max: u32 },
    #[error("--unit {unit}: no cgroup named {dir} under {mount} (is the unit running?)")]
    NoUnit {
        unit: String,
        dir: String,
        mount: String,
    },
    #[error(
        "--container {id}: not a container id (12 to 64 hexadecimal digits, as `docker ps` or \
         `crictl ps` show it)"
    )]
    BadContainerId { id: String },
    #[error("--container {id}: no cgroup of that container under {mount} (is it running here?)")]
    NoContainer { id: String, mount: String },
}

/// Deepest cgroup the eBPF filter checks (levels below `MAX_LEVEL`).
const MAX_LEVEL: u32 = 32;

/// The mount point of the cgroup v2 hierarchy, from a `/proc/self/mountinfo` text.
#[must_use]
pub(super) fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(unescape))
            .flatten()
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> PathBuf {
    PathBuf::from(super::decode_escapes(field, b'\\', 3, 8))
}

/// Resolves `path` (absolute under the v2 mount, or relative to it: `system.slice/x.service`)
/// against the mount `mount`.
fn resolve(path: &Path, mount: &Path) -> Result<CgroupFilter, CgroupError> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        mount.join(path)
    };
    let not_v2 = || CgroupError::NotV2 {
        path: path.display().to_string(),
        mount: mount.display().to_string(),
    };
    let canonical = full
        .canonicalize()
        .map_err(|source| CgroupError::Unreadable {
            path: full.display().to_string(),
            source,
        })?;
    let below = canonical.strip_prefix(mount).map_err(|_| not_v2())?;
    let meta = std::fs::metadata(&canonical).map_err(|source| CgroupError::Unreadable {
        path: canonical.display().to_string(),
        source,
    })?;
    // A cgroup directory has `cgroup.procs`; any other directory under the mount point is not
    // one (the mount point of a v1 hierarchy on a hybrid host is not under the v2 one).
    if !meta.is_dir() || !canonical.join("cgroup.procs").exists() {
        return Err(not_v2());
    }
    let level = below
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    let level = u32::try_from(level).unwrap_or(u32::MAX);
    if level >= MAX_LEVEL {
        return Err(CgroupError::TooDeep {
            path: canonical.display().to_string(),
            max: MAX_LEVEL,
        });
    }
    Ok(CgroupFilter {
        path: canonical,
        id: meta.ino(),
        level,
    })
}

/// Most cgroup directories searched for a unit or a container (a busy Kubernetes node has a
/// few thousand).
const MAX_SCAN: usize = 100_000;

/// The cgroup directories under `mount` whose name satisfies `wanted`, breadth first; below a
/// match nothing is searched (its descendants are in the filter already).
fn find(mount: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([mount.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            seen += 1;
            if seen > MAX_SCAN {
                return found;
            }
            if entry.file_name().to_str().is_some_and(&wanted) {
                found.push(entry.path());
            } else {
                queue.push_back(entry.path());
            }
        }
    }
    found
}

/// The cgroup directory systemd gives `unit` (`nginx` means `nginx.service`), wherever it is
/// in the tree (`system.slice/`, a user's slice, nested slices).
fn unit_paths(mount: &Path, unit: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let dir = if unit.contains('.') {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    };
    let found = find(mount, |name| name == dir);
    if found.is_empty() {
        return Err(CgroupError::NoUnit {
            unit: unit.to_owned(),
            dir,
            mount: mount.display().to_string(),
        });
    }
    Ok(found)
}

/// The cgroup directories of container `id` (a full id or a prefix of at least 12 digits), in
/// the path styles of the runtimes: `docker-ID.scope`, `cri-containerd-ID.scope`,
/// `crio-ID.scope`, `libpod-ID.scope` (systemd driver) or a directory named `ID` (cgroupfs
/// driver: `/docker/ID`, `/kubepods/.../ID`).
fn container_paths(mount: &Path, id: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let id_ok = (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !id_ok {
        return Err(CgroupError::BadContainerId { id: id.to_owned() });
    }
    let id = id.to_ascii_lowercase();
    let found = find(mount, |name| {
        let name = name.strip_suffix(".scope").unwrap_or(name);
        let full = name.rsplit('-').next().unwrap_or(name);
        full.len() == 64 && full.starts_with(&id)
    });
    if found.is_empty() {
        return Err(CgroupError::NoContainer {
            id: id.clone(),
            mount: mount.display().to_string(),
        });
    }
    Ok(found)
}

/// The cgroup directories of the pods `uids` (API form), in both kubelet drivers' styles:
/// `pod<uid>` (cgroupfs) and `kubepods-<qos>-pod<uid with _>.slice` (systemd). One scan for all;
/// a pod without a directory (gone, or not started) is left out.
fn pod_paths(mount: &Path, uids: &[String]) -> Vec<PathBuf> {
    if uids.is_empty() {
        return Vec::new();
    }
    find(mount, |name| {
        pod_uid_of_dir(name).is_some_and(|uid| uids.contains(&uid))
    })
}

/// The pod uid a kubelet cgroup directory is named after.
fn pod_uid_of_dir(name: &str) -> Option<String> {
    super::pod_uid_from_cgroup(&format!("0::/{name}"))
}

/// The mask of cgroup levels where this host's pods live: the levels of the pod directories
/// there are now, and 2 and 3 (`kubepods/<qos>/pod…` and `kubepods/pod…` in both drivers). The
/// eBPF program looks at these levels when pods are selected (fixed when it loads).
#[must_use]
pub fn pod_levels() -> u32 {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mount) = v2_mount(&mountinfo) else {
        return 0;
    };
    find(&mount, |name| pod_uid_of_dir(name).is_some())
        .iter()
        .filter_map(|dir| {
            let depth = dir.strip_prefix(&mount).ok()?.components().count();
            u32::try_from(depth).ok().filter(|d| *d < MAX_LEVEL)
        })
        .fold(1 << 2 | 1 << 3, |mask, level| mask | 1 << level)
}

/// What to profile by cgroup: `--cgroup` paths, `--unit` names, `--container` ids and
/// Kubernetes pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupTargets {
    pub paths: Vec<PathBuf>,
    pub units: Vec<String>,
    pub containers: Vec<String>,
    /// `Some` when pods are selected (`--namespace`, `--selector`): the uids of those selected
    /// now, which may be none yet.
    pub pods: Option<Vec<String>>,
}

impl CgroupTargets {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
            && self.units.is_empty()
            && self.containers.is_empty()
            && self.pods.is_none()
    }
}

/// Resolves every target against this host's v2 hierarchy. Called at start, and again while
/// sampling: a unit or container restarted gets a new cgroup.
pub fn resolve_all(targets: &CgroupTargets) -> Result<Vec<CgroupFilter>, CgroupError> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount = v2_mount(&mountinfo).ok_or(CgroupError::NoV2)?;
    let mut paths = targets.paths.clone();
    for unit in &targets.units {
        paths.extend(unit_paths(&mount, unit)?);
    }
    for id in &targets.containers {
        paths.extend(container_paths(&mount, id)?);
    }
    if let Some(uids) = &targets.pods {
        paths.extend(pod_paths(&mount, uids));
    }
    paths.iter().map(|p| resolve(p, &mount)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_found_in_both_kubelet_styles() {
        let mount = tempfile::tempdir().unwrap();
        let (a, b) = (
            "0b5e3c1a-7d2f-4e8b-9c1d-2a3b4c5d6e7f",
            "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
        );
        let systemd = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            a.replace('-', "_")
        );
        let cgroupfs = format!("kubepods/pod{b}");
        for dir in [&systemd, &cgroupfs, &"kubepods/podnot-a-uid".to_owned()] {
            std::fs::create_dir_all(mount.path().join(dir).join("c1")).unwrap();
        }
        let m = mount.path();
        let mut found = pod_paths(m, &[a.to_owned(), b.to_owned(), "gone".to_owned()]);
        found.sort();
        assert_eq!(found, [m.join(cgroupfs), m.join(systemd)]);
        assert!(pod_paths(m, &[]).is_empty());
    }

    #[test]
    fn units_and_containers_are_found_in_every_path_style() {
        let mount = tempfile::tempdir().unwrap();
        let id = "3f1c9b2e8d7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c";
        for dir in [
            "system.slice/nginx.service".to_owned(),
            "user.slice/user-1000.slice/app.service".to_owned(),
            format!("kubepods.slice/kubepods-burstable.slice/pod1/cri-containerd-{id}.scope"),
            format!("docker/{id}"),
            "system.slice/nginx-helper.service".to_owned(),
        ] {
            std::fs::create_dir_all(mount.path().join(dir)).unwrap();
        }
        let m = mount.path();
        assert_eq!(
            unit_paths(m, "nginx").unwrap(),
            [m.join("system.slice/nginx.service")]
        );
        assert_eq!(
            unit_paths(m, "app.service").unwrap(),
            [m.join("user.slice/user-1000.slice/app.service")]
        );
        assert!(matches!(
            unit_paths(m, "absent"),
            Err(CgroupError::NoUnit { .. })
        ));
        let mut found = container_paths(m, &id[..12].to_ascii_uppercase()).unwrap();
        found.sort();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].ends_with(format!("docker/{id}")));
        assert!(found[1].ends_with(format!("cri-containerd-{id}.scope")));
        assert!(matches!(
            container_paths(m, "3f1c9b2e"),
            Err(CgroupError::BadContainerId { .. })
        ));
        assert!(matches!(
            container_paths(
                m,
                "3f1c9b2e8d7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7cff"
            ),
            Err(CgroupError::BadContainerId { .. })
        ));
        assert!(matches!(
            container_paths(m, "aaaaaaaaaaaaaaaa"),
            Err(CgroupError::NoContainer { .. })
        ));
    }

    #[test]
    fn finds_the_v2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "25 24 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let spaced = "30 23 0:26 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(v2_mount(spaced), Some(PathBuf::from("/mnt/my cgroups")));
        assert_eq!(v2_mount("27 25 0:25 / /x rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn a_directory_outside_the_hierarchy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(Path::new("/tmp"), dir.path()).unwrap_err();
        assert!(matches!(err, CgroupError::NotV2 { .. }), "{err}");
        // Inside the mount point but not a cgroup (no cgroup.procs).
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let err = resolve(Path::new("a"), dir.path()).unwrap_err();
        assert!(matches!(err, CgroupError::NotV2 { .. }), "{err}");
        // A cgroup-shaped directory: level counted from the mount.
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/cgroup.procs"), "").unwrap();
        let ok = resolve(Path::new("a/b"), dir.path()).unwrap();
        assert_eq!(ok.level, 2);
        let missing = resolve(Path::new("nope"), dir.path()).unwrap_err();
        assert!(
            matches!(missing, CgroupError::Unreadable { .. }),
            "{missing}"
        );
    }
}
