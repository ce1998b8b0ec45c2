//! Process table: what the pipeline learns about a process the first time one of its samples
//! arrives (name, executable, container, and where each of its user addresses points) while it
//! is still alive.

mod container;
pub mod maps;

pub use container::container_id_from_cgroup;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use maps::{Backing, Mapping, Snapshot, parse_maps};

use crate::profile::Location;
use crate::symbolize::{ModuleId, Resolved, SymbolizerStage, UserLoc};

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

/// Identity of one process image: a process between its exec (or first sight) and its next exec
/// or exit. Samples of different images never share address interpretations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u64);

/// One process image and what was learnt about it while it ran.
#[derive(Debug)]
pub struct Image {
    pub id: ImageId,
    pub pid: u32,
    /// `bpf_ktime_get_ns` of its exec (0: already running when first seen).
    pub since_ns: u64,
    /// Set at its exit or the next exec.
    pub ended_ns: Option<u64>,
    pub info: Arc<ProcessInfo>,
    snapshot: Snapshot,
    /// User address → where it points.
    locs: HashMap<u64, UserLoc>,
    /// Names of addresses outside file mappings, resolved while the process lived.
    live_names: HashMap<u64, Resolved>,
}

/// Counts of the process table, for summaries and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub execs: u64,
    pub exits: u64,
    /// Snapshots of `/proc/PID/maps` that failed (process already gone).
    pub snapshot_failed: u64,
    /// Addresses found in no mapping.
    pub unmapped: u64,
}

/// All process images seen (pruned per window by the daemon).
#[derive(Debug, Default)]
pub struct ProcessTable {
    images: HashMap<ImageId, Image>,
    by_pid: HashMap<u32, Vec<ImageId>>,
    next: u64,
    stats: ProcessStats,
}

impl ProcessTable {
    #[must_use]
    pub fn stats(&self) -> ProcessStats {
        self.stats
    }

    /// Distinct processes (pids) known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    #[must_use]
    pub fn image(&self, id: ImageId) -> Option<&Image> {
        self.images.get(&id)
    }

    fn new_image(
        &mut self,
        pid: u32,
        since_ns: u64,
        thread_comm: &str,
        symbolizer: &mut SymbolizerStage,
    ) -> ImageId {
        let id = ImageId(self.next);
        self.next += 1;
        let info = Arc::new(ProcessInfo::read(Path::new("/proc"), pid, thread_comm));
        let mut image = Image {
            id,
            pid,
            since_ns,
            ended_ns: None,
            info,
            snapshot: Snapshot::default(),
            locs: HashMap::new(),
            live_names: HashMap::new(),
        };
        if pid != 0 {
            self.refresh(&mut image, symbolizer);
        }
        self.images.insert(id, image);
        self.by_pid.entry(pid).or_default().push(id);
        id
    }

    /// Re-reads the process's mappings, adding the ones not yet known (opening their files).
    fn refresh(&mut self, image: &mut Image, symbolizer: &mut SymbolizerStage) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/maps", image.pid)) else {
            self.stats.snapshot_failed += 1;
            return;
        };
        let fresh: Vec<Mapping> = parse_maps(&text)
            .into_iter()
            .filter(|line| {
                image
                    .snapshot
                    .find(line.start)
                    .is_none_or(|m| m.start != line.start)
            })
            .map(|line| {
                let backing = if line.path.starts_with('/') {
                    Backing::File(symbolizer.open_module(image.pid, &line))
                } else {
                    Backing::Other
                };
                Mapping {
                    start: line.start,
                    end: line.end,
                    offset: line.offset,
                    backing,
                }
            })
            .collect();
        image.snapshot.merge(fresh);
    }

    /// The process replaced its image at `time_ns`: snapshot the new one now, while it runs.
    pub fn exec(&mut self, pid: u32, time_ns: u64, comm: &str, symbolizer: &mut SymbolizerStage) {
        self.stats.execs += 1;
        self.end_current(pid, time_ns);
        self.new_image(pid, time_ns, comm, symbolizer);
    }

    /// The process exited at `time_ns`; its pid may be reused afterwards.
    pub fn exit(&mut self, pid: u32, time_ns: u64) {
        self.stats.exits += 1;
        self.end_current(pid, time_ns);
    }

    fn end_current(&mut self, pid: u32, time_ns: u64) {
        if let Some(&last) = self.by_pid.get(&pid).and_then(|ids| ids.last())
            && let Some(image) = self.images.get_mut(&last)
            && image.ended_ns.is_none()
        {
            image.ended_ns = Some(time_ns);
        }
    }

    /// The image a sample of `pid` taken at `time_ns` belongs to; registers one on first sight
    /// (or after the previous one ended: a reused pid).
    pub fn image_for(
        &mut self,
        pid: u32,
        time_ns: u64,
        thread_comm: &str,
        symbolizer: &mut SymbolizerStage,
    ) -> ImageId {
        if let Some(ids) = self.by_pid.get(&pid) {
            for id in ids.iter().rev() {
                let image = &self.images[id];
                if image.since_ns <= time_ns && image.ended_ns.is_none_or(|end| time_ns <= end) {
                    return *id;
                }
            }
            // Older than every image we know: the oldest is the best guess.
            if let Some(first) = ids.first()
                && time_ns < self.images[first].since_ns
            {
                return *first;
            }
        }
        self.new_image(pid, time_ns, thread_comm, symbolizer)
    }

    /// Works out where the not yet seen `addrs` of `image` point; call it as soon as samples
    /// arrive. A miss while the image is current re-reads the mappings (libraries loaded after
    /// exec); addresses outside files are named through the live process right away.
    pub fn learn(&mut self, id: ImageId, addrs: &[u64], symbolizer: &mut SymbolizerStage) {
        let Some(mut image) = self.images.remove(&id) else {
            return;
        };
        let mut fresh: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !image.locs.contains_key(a))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        let current = image.ended_ns.is_none();
        if current && fresh.iter().any(|&a| image.snapshot.find(a).is_none()) {
            self.refresh(&mut image, symbolizer);
        }
        let mut live = Vec::new();
        for addr in fresh {
            let loc = match image.snapshot.find(addr) {
                Some(Mapping {
                    start,
                    offset,
                    backing: Backing::File(module),
                    ..
                }) => UserLoc::File {
                    module: module.id,
                    offset: addr - start + offset,
                },
                Some(_) => {
                    live.push(addr);
                    UserLoc::Process { addr }
                }
                None => {
                    self.stats.unmapped += 1;
                    UserLoc::Unmapped { addr }
                }
            };
            image.locs.insert(addr, loc);
        }
        if !live.is_empty() {
            let names = symbolizer.resolve_process(image.pid, &live);
            image.live_names.extend(live.into_iter().zip(names));
        }
        self.images.insert(id, image);
    }

    /// Names one address of `image` (learnt before with `learn`).
    pub fn resolve(
        &self,
        id: ImageId,
        addrs: &[u64],
        symbolizer: &mut SymbolizerStage,
    ) -> Vec<Location> {
        let Some(image) = self.images.get(&id) else {
            return addrs.iter().map(|&a| unmapped(a)).collect();
        };
        let locs: Vec<UserLoc> = addrs
            .iter()
            .map(|&a| {
                image
                    .locs
                    .get(&a)
                    .copied()
                    .unwrap_or(UserLoc::Unmapped { addr: a })
            })
            .collect();
        let files: Vec<(ModuleId, u64)> = locs
            .iter()
            .filter_map(|l| match *l {
                UserLoc::File { module, offset } => Some((module, offset)),
                _ => None,
            })
            .collect();
        let mut names = symbolizer.resolve_user(&files).into_iter();
        locs.iter()
            .map(|loc| match *loc {
                UserLoc::File { module, offset } => Location {
                    module: symbolizer.module(module).cloned(),
                    address: offset,
                    kernel: false,
                    frames: names
                        .next()
                        .unwrap_or_else(|| crate::symbolize::frame_unknown(offset)),
                },
                UserLoc::Process { addr } => Location {
                    module: None,
                    address: addr,
                    kernel: false,
                    frames: image
                        .live_names
                        .get(&addr)
                        .cloned()
                        .unwrap_or_else(|| crate::symbolize::frame_unknown(addr)),
                },
                UserLoc::Unmapped { addr } => unmapped(addr),
            })
            .collect()
    }

    /// Drops images that ended and processes that are gone (after their window was exported).
    pub fn prune(&mut self) {
        let dead: Vec<ImageId> = self
            .images
            .values()
            .filter(|i| {
                i.pid != 0
                    && (i.ended_ns.is_some()
                        || !Path::new("/proc").join(i.pid.to_string()).exists())
            })
            .map(|i| i.id)
            .collect();
        for id in dead {
            if let Some(image) = self.images.remove(&id)
                && let Some(ids) = self.by_pid.get_mut(&image.pid)
            {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_pid.remove(&image.pid);
                }
            }
        }
    }
}

fn unmapped(addr: u64) -> Location {
    Location {
        module: None,
        address: addr,
        kernel: false,
        frames: crate::symbolize::frame_unknown(addr),
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
    }

    #[test]
    fn images_separate_exec_and_pid_reuse() {
        let mut sym = SymbolizerStage::new(16, 16, &[]);
        let mut table = ProcessTable::default();
        let me = std::process::id();
        let first = table.image_for(me, 100, "t", &mut sym);
        assert_eq!(table.image_for(me, 150, "t", &mut sym), first);
        table.exec(me, 200, "t", &mut sym);
        let second = table.image_for(me, 250, "t", &mut sym);
        assert_ne!(second, first);
        assert_eq!(
            table.image_for(me, 199, "t", &mut sym),
            first,
            "before the exec"
        );
        table.exit(me, 300);
        let reused = table.image_for(me, 400, "t", &mut sym);
        assert!(
            reused != first && reused != second,
            "a reused pid is a new image"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.stats().execs, 1);

        // This process's own code is found in its snapshot and named.
        let addr = images_separate_exec_and_pid_reuse as *const () as u64;
        table.learn(reused, &[addr, 8], &mut sym);
        let locs = table.resolve(reused, &[addr, 8], &mut sym);
        assert!(
            locs[0].frames[0]
                .name
                .contains("images_separate_exec_and_pid_reuse"),
            "{locs:?}"
        );
        assert!(
            locs[0]
                .module
                .as_ref()
                .is_some_and(|m| m.build_id.is_some())
        );
        assert_eq!(&*locs[1].frames[0].name, "[unknown] 0x8");
        table.prune();
        assert_eq!(
            table.images.len(),
            1,
            "ended images are dropped, the live one kept"
        );
    }
}
