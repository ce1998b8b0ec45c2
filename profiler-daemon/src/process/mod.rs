//! Process table: what the pipeline learns about a process the first time one of its samples
//! arrives (name, executable, container, and where each of its user addresses points) while it
//! is still alive.

mod container;

pub use container::container_id_from_cgroup;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::symbolize::{SymbolizerStage, UserLoc};

/// Identity of a process, shared by every stack of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The thread group leader's comm (`/proc/PID/comm`), else the first sampled thread's comm.
    pub name: Arc<str>,
    /// `/proc/PID/exe` as the process sees it; `None` for kernel threads or when unreadable.
    pub exe_path: Option<Arc<str>>,
    /// File name of `exe_path`, else `name`.
    pub exe_name: Arc<str>,
    /// Container id from the process's cgroup path (Docker, containerd, CRI-O, Podman).
    pub container_id: Option<Arc<str>>,
}

impl ProcessInfo {
    /// Reads what `/proc` says about `pid`; falls back to `thread_comm` for a process that is
    /// already gone.
    #[must_use]
    pub fn read(proc_root: &Path, pid: u32, thread_comm: &str) -> Self {
        if pid == 0 {
            // Like perf: the idle task is "swapper".
            let name: Arc<str> = Arc::from("swapper");
            return Self {
                pid,
                exe_name: name.clone(),
                name,
                exe_path: None,
                container_id: None,
            };
        }
        let dir = proc_root.join(pid.to_string());
        let name: Arc<str> = read_comm(&dir)
            .unwrap_or_else(|| thread_comm.to_owned())
            .into();
        let exe_path: Option<Arc<str>> = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").into());
        let exe_name = exe_path
            .as_deref()
            .and_then(|p| Path::new(p).file_name())
            .map_or_else(|| name.clone(), |n| n.to_string_lossy().into());
        let container_id = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| container_id_from_cgroup(&text))
            .map(Arc::from);
        Self {
            pid,
            name,
            exe_path,
            exe_name,
            container_id,
        }
    }
}

/// What is known about one process.
#[derive(Debug)]
pub struct Process {
    pub info: Arc<ProcessInfo>,
    /// User address → where it points, decided while the process was alive.
    locs: HashMap<u64, UserLoc>,
}

/// All processes seen during a profile.
#[derive(Debug, Default)]
pub struct ProcessTable {
    processes: HashMap<u32, Process>,
}

impl ProcessTable {
    /// Registers `tgid` on first sight. `thread_comm` names it if `/proc` no longer does.
    pub fn observe(&mut self, tgid: u32, thread_comm: &str) -> &Process {
        self.processes.entry(tgid).or_insert_with(|| Process {
            info: Arc::new(ProcessInfo::read(Path::new("/proc"), tgid, thread_comm)),
            locs: HashMap::new(),
        })
    }

    #[must_use]
    pub fn get(&self, tgid: u32) -> Option<&Process> {
        self.processes.get(&tgid)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Forgets processes for which `keep` is false (the daemon prunes exited ones per window).
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.processes.retain(|&pid, _| keep(pid));
    }

    /// Normalizes, through `symbolizer`, the addresses of `tgid` not seen before. Call it as soon
    /// as samples arrive: a process that exits later keeps its locations.
    pub fn learn(
        &mut self,
        tgid: u32,
        addrs: &[u64],
        symbolizer: &mut SymbolizerStage,
    ) -> Vec<UserLoc> {
        let Some(process) = self.processes.get_mut(&tgid) else {
            return Vec::new();
        };
        let mut fresh: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !process.locs.contains_key(a))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if fresh.is_empty() {
            return Vec::new();
        }
        let locs = symbolizer.normalize(tgid, &fresh);
        for (&addr, &loc) in fresh.iter().zip(&locs) {
            process.locs.insert(addr, loc);
        }
        locs
    }

    /// Where `addr` of `tgid` points (unmapped if it was never learnt).
    #[must_use]
    pub fn loc(&self, tgid: u32, addr: u64) -> UserLoc {
        self.processes
            .get(&tgid)
            .and_then(|p| p.locs.get(&addr).copied())
            .unwrap_or(UserLoc::Unmapped { addr })
    }
}

/// `PID_DIR/comm` without the newline; `None` when the process is gone.
fn read_comm(pid_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(pid_dir.join("comm")).ok()?;
    let name = text.trim_end_matches('\n');
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_proc_or_fall_back() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        let own = read_comm(&Path::new("/proc").join(me.to_string())).unwrap();
        let info = table.observe(me, "thread").info.clone();
        assert_eq!(&*info.name, own);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe_path.as_deref(), exe.to_str());
        assert_eq!(
            &*info.exe_name,
            exe.file_name().unwrap().to_string_lossy().as_ref()
        );
        // A pid that cannot exist (above pid_max) falls back to the thread's comm.
        let gone = table.observe(u32::MAX, "gone").info.clone();
        assert_eq!((&*gone.name, &*gone.exe_name), ("gone", "gone"));
        assert_eq!(gone.exe_path, None);
        assert_eq!(&*table.observe(0, "swapper/1").info.name, "swapper");
        assert_eq!(table.len(), 3);
        table.retain(|pid| pid != 0);
        assert_eq!(table.len(), 2);
    }
}
