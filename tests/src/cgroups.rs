//! Real cgroups for the filter and Kubernetes tests, created under this host's v2 mount.

use std::path::PathBuf;
use std::time::Duration;

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (`/sys/fs/cgroup/unified` on this
/// hybrid host).
#[must_use]
pub fn v2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo is readable");
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// A cgroup directory removed (after its tasks) when dropped.
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    #[must_use]
    pub fn create(path: PathBuf) -> Self {
        std::fs::create_dir(&path).expect("the cgroup is created");
        Self(path)
    }

    /// Moves process `pid` into this cgroup.
    pub fn admit(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("the task is moved");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Tasks are gone by now (the workloads are dropped first); a busy cgroup just stays.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
