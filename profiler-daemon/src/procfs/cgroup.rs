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
    #[error("{path}: not a directory of the cgroup v2 hierarchy mounted at {mount}")]
    NotV2 { path: String, mount: String },
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: deeper than the {max} levels the filter follows")]
    TooDeep { path: String, max: u32 },
}

/// Deepest cgroup the eBPF filter checks (levels below `MAX_LEVEL`).
const MAX_LEVEL: u32 = 32;

/// The mount point of the cgroup v2 hierarchy, from a `/proc/self/mountinfo` text.
#[must_use]
fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
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

/// Resolves every `--cgroup` path against this host's v2 hierarchy.
pub fn resolve_all(paths: &[PathBuf]) -> Result<Vec<CgroupFilter>, CgroupError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount = v2_mount(&mountinfo).ok_or(CgroupError::NoV2)?;
    paths.iter().map(|p| resolve(p, &mount)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
