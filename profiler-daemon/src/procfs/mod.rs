//! What `/proc` says about a process: its identity (`ProcessInfo`: name, executable, container),
//! its executable mappings (`maps`) and the container id in its cgroup path (`container`). A leaf:
//! it reads files and parses text, and knows nothing of the pipeline.

mod container;
pub mod maps;

pub use container::container_id_from_cgroup;
pub use maps::{MapsLine, parse_maps};

use std::path::Path;
use std::sync::Arc;

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
            return Self::named(0, "swapper");
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
            .map_or_else(|| Arc::clone(&name), |n| n.to_string_lossy().into());
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

    /// A process the pipeline has samples of but no record for: `[unknown process PID]`, so its
    /// samples still show (and are counted) instead of vanishing.
    #[must_use]
    pub fn unknown(pid: u32) -> Self {
        Self::named(pid, &format!("[unknown process {pid}]"))
    }

    fn named(pid: u32, name: &str) -> Self {
        let name: Arc<str> = Arc::from(name);
        Self {
            pid,
            exe_name: Arc::clone(&name),
            name,
            exe_path: None,
            container_id: None,
        }
    }
}

/// `PID_DIR/comm` without the newline; `None` when the process is gone.
fn read_comm(pid_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(pid_dir.join("comm")).ok()?;
    let name = text.trim_end_matches('\n');
    (!name.is_empty()).then(|| name.to_owned())
}

/// Whether process `pid` still exists.
#[must_use]
pub fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_comes_from_proc_or_falls_back() {
        let me = std::process::id();
        let own = read_comm(&Path::new("/proc").join(me.to_string())).unwrap();
        let info = ProcessInfo::read(Path::new("/proc"), me, "thread");
        assert_eq!(&*info.name, own);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe_path.as_deref(), exe.to_str());
        assert_eq!(
            &*info.exe_name,
            exe.file_name().unwrap().to_string_lossy().as_ref()
        );
        // A pid that cannot exist (above pid_max) falls back to the thread's comm.
        let gone = ProcessInfo::read(Path::new("/proc"), u32::MAX, "gone");
        assert_eq!((&*gone.name, &*gone.exe_name), ("gone", "gone"));
        assert_eq!(gone.exe_path, None);
        assert_eq!(
            &*ProcessInfo::read(Path::new("/proc"), 0, "swapper/1").name,
            "swapper"
        );
        let unknown = ProcessInfo::unknown(42);
        assert_eq!((unknown.pid, &*unknown.name), (42, "[unknown process 42]"));
    }
}
