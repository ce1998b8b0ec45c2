//! What `/proc` says about a process: its identity (`ProcessInfo`: name, executable, container),
//! its executable mappings (`maps`) and the container id in its cgroup path (`container`). A leaf:
//! it reads files and parses text, and knows nothing of the pipeline.

mod cgroup;
mod cgroup_cache;
mod container;
pub mod maps;
mod service;

pub use service::{systemd_path, unit_of_path};

pub use cgroup::{
    CgroupError, CgroupFilter, CgroupTargets, pod_levels, resolve_all as resolve_cgroups,
};
pub use cgroup_cache::{CgroupCache, CgroupFacts, MAX_CGROUPS};
pub use container::{container_id_from_cgroup, pod_uid_from_cgroup};
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
    /// Its cgroup path as systemd sees it (`/system.slice/nginx.service`), for the configured
    /// service-name rules.
    pub cgroup: Option<Arc<str>>,
    /// The service its owner named (`OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`).
    pub service: Option<Arc<str>>,
    /// Its systemd service unit, without `.service` (a service name below the Kubernetes one).
    pub unit: Option<Arc<str>>,
    /// The Kubernetes pod uid in its cgroup path.
    pub pod_uid: Option<Arc<str>>,
    /// A kernel thread (or the idle task): no executable, named by the kernel.
    pub kernel_thread: bool,
}

impl ProcessInfo {
    /// Reads what `/proc` says about `pid`; falls back to `thread_comm` for a process that is
    /// already gone. `cgroup_id` is the cgroup its event or sample came from (0: not known),
    /// whose facts `cgroups` may know already.
    #[must_use]
    pub fn read(
        proc_root: &Path,
        pid: u32,
        thread_comm: &str,
        cgroups: &mut CgroupCache,
        cgroup_id: u64,
    ) -> Self {
        if pid == 0 {
            // Like perf: the idle task is "swapper".
            return Self {
                kernel_thread: true,
                ..Self::named(0, "swapper")
            };
        }
        let dir = proc_root.join(pid.to_string());
        let name: Arc<str> = read_comm(&dir)
            .unwrap_or_else(|| thread_comm.to_owned())
            .into();
        let kernel_thread = is_kernel_thread(&dir);
        let facts = cgroups.facts(&dir, cgroup_id).unwrap_or_default();
        Self::read_rest(&dir, pid, name, kernel_thread, facts)
    }

    /// What `/proc/PID` says of a process that has just exec'd, named `comm` (its name as the
    /// exec left it: the exec event's): two reads fewer than `read` for each of the hundred
    /// processes a second a busy host may start (a process that execs is no kernel thread).
    #[must_use]
    pub fn read_after_exec(
        proc_root: &Path,
        pid: u32,
        comm: &str,
        cgroups: &mut CgroupCache,
        cgroup_id: u64,
    ) -> Self {
        if pid == 0 || comm.is_empty() {
            return Self::read(proc_root, pid, comm, cgroups, cgroup_id);
        }
        let dir = proc_root.join(pid.to_string());
        let facts = cgroups.facts(&dir, cgroup_id).unwrap_or_default();
        Self::read_rest(&dir, pid, comm.into(), false, facts)
    }

    fn read_rest(
        dir: &Path,
        pid: u32,
        name: Arc<str>,
        kernel_thread: bool,
        facts: CgroupFacts,
    ) -> Self {
        let exe_path: Option<Arc<str>> = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").into());
        let exe_name = match exe_path.as_deref().and_then(|p| Path::new(p).file_name()) {
            Some(file) => stable_exe_name(&file.to_string_lossy()),
            None if kernel_thread => kernel_thread_base(&name).into(),
            None => Arc::clone(&name),
        };
        let (service, unit) = if kernel_thread {
            (None, None)
        } else {
            (service::own_service(dir).map(Arc::from), facts.unit)
        };
        Self {
            pid,
            name,
            exe_path,
            exe_name,
            container_id: facts.container_id,
            cgroup: facts.systemd_path,
            pod_uid: facts.pod_uid,
            service,
            unit,
            kernel_thread,
        }
    }

    /// What an exec event alone tells of a process: its name (the rest is read later).
    #[must_use]
    pub fn from_event(pid: u32, comm: &str) -> Self {
        Self::named(pid, comm)
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
            cgroup: None,
            pod_uid: None,
            service: None,
            unit: None,
            kernel_thread: false,
        }
    }
}

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (field 9).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `/proc/PID` is a kernel thread (false when unreadable: a gone process was not one we
/// could tell).
fn is_kernel_thread(pid_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(pid_dir.join("stat")) else {
        return false;
    };
    // The comm (field 2) may contain spaces and parentheses: fields restart after the last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// A kernel thread's name without its per-CPU, per-device or per-work suffix
/// (`kworker/1:1-events` → `kworker`, `ksoftirqd/0` → `ksoftirqd`, `irq/25-virtio0` → `irq`), so
/// that all threads of one kind are one label value.
#[must_use]
pub fn kernel_thread_base(comm: &str) -> &str {
    let base = comm.split('/').next().unwrap_or(comm);
    if base.is_empty() { comm } else { base }
}

/// An executable's file name, stable across runs: an anonymous `memfd:NAME-1a2b3c...` executable
/// loses its random suffix (`memfd:sealed`), so restarts do not mint new label values.
#[must_use]
pub fn stable_exe_name(file_name: &str) -> Arc<str> {
    let Some(rest) = file_name.strip_prefix("memfd:") else {
        return Arc::from(file_name);
    };
    let name = match rest.rsplit_once('-') {
        Some((name, suffix))
            if !name.is_empty()
                && !suffix.is_empty()
                && suffix.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        _ => rest,
    };
    Arc::from(format!("memfd:{name}"))
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

/// Decodes escapes made of `marker` and `digits` digits in `radix` (`%20`, `\040`) into the
/// byte they stand for; a marker not followed by valid digits stays as it is.
fn decode_escapes(text: &str, marker: u8, digits: usize, radix: u32) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker
            && let Some(code) = bytes.get(i + 1..=i + digits)
            && let Ok(code) = std::str::from_utf8(code)
            && let Ok(byte) = u8::from_str_radix(code, radix)
        {
            out.push(byte);
            i += 1 + digits;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ProcessInfo::read` of this host's `/proc`, with no cgroup id from an event.
    fn read(pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::read(
            Path::new("/proc"),
            pid,
            comm,
            &mut CgroupCache::default(),
            0,
        )
    }

    /// `ProcessInfo::read_after_exec`, the same way.
    fn read_after_exec(pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::read_after_exec(
            Path::new("/proc"),
            pid,
            comm,
            &mut CgroupCache::default(),
            0,
        )
    }

    #[test]
    fn info_comes_from_proc_or_falls_back() {
        let me = std::process::id();
        let own = read_comm(&Path::new("/proc").join(me.to_string())).unwrap();
        let info = read(me, "thread");
        assert_eq!(&*info.name, own);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe_path.as_deref(), exe.to_str());
        assert_eq!(
            &*info.exe_name,
            exe.file_name().unwrap().to_string_lossy().as_ref()
        );
        // A pid that cannot exist (above pid_max) falls back to the thread's comm.
        let gone = read(u32::MAX, "gone");
        assert_eq!((&*gone.name, &*gone.exe_name), ("gone", "gone"));
        assert_eq!(gone.exe_path, None);
        assert_eq!(&*read(0, "swapper/1").name, "swapper");
        let unknown = ProcessInfo::unknown(42);
        assert_eq!((unknown.pid, &*unknown.name), (42, "[unknown process 42]"));
        assert!(!info.kernel_thread);
        // kthreadd (pid 2) is a kernel thread on every Linux.
        let kthreadd = read(2, "");
        assert!(kthreadd.kernel_thread, "{kthreadd:?}");
        assert_eq!(&*kthreadd.exe_name, "kthreadd");
    }

    #[test]
    fn after_an_exec_the_name_is_the_events_and_the_rest_comes_from_proc() {
        let me = std::process::id();
        let full = read(me, "thread");
        let exec = read_after_exec(me, "from-event");
        assert_eq!(&*exec.name, "from-event");
        assert!(!exec.kernel_thread);
        assert_eq!(
            (&exec.exe_path, &exec.exe_name, &exec.cgroup, &exec.service),
            (&full.exe_path, &full.exe_name, &full.cgroup, &full.service)
        );
        // Without a name from the event (or for the idle task) it is the full read.
        let unnamed = read_after_exec(me, "");
        assert_eq!(unnamed.name, full.name);
        assert_eq!(&*read_after_exec(0, "swapper/0").name, "swapper");
    }

    #[test]
    fn names_are_stable_across_runs() {
        assert_eq!(
            kernel_thread_base("kworker/1:1-events_power_efficient"),
            "kworker"
        );
        assert_eq!(kernel_thread_base("ksoftirqd/0"), "ksoftirqd");
        assert_eq!(kernel_thread_base("rcu_preempt"), "rcu_preempt");
        assert_eq!(kernel_thread_base("/odd"), "/odd");
        assert_eq!(
            &*stable_exe_name("memfd:sealed-91173221a7ea"),
            "memfd:sealed"
        );
        assert_eq!(&*stable_exe_name("memfd:91173221"), "memfd:91173221");
        assert_eq!(&*stable_exe_name("memfd:my-app"), "memfd:my-app");
        assert_eq!(&*stable_exe_name("python3.11"), "python3.11");
    }
}
