//! The process table: what the pipeline learns about a process image while it is alive (its
//! identity and its executable mappings), and the normalization of its user addresses to
//! (module, file offset) against them. It opens the mapped files (`objfile`) but names nothing:
//! naming is the symbolizer's job, and the collector calls the two in turn.

mod snapshot;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use snapshot::{Backing, Mapping, Snapshot};

use crate::objfile::{Module, ModuleId, ModuleRegistry};
use crate::procfs::{self, CgroupCache, MapsLine, ProcessInfo, parse_maps};

/// Most addresses remembered per process image as found in no mapping even after a re-read of
/// its mappings (see `ProcessTable::learn`); past it the set starts over.
pub const MAX_MISSES_PER_IMAGE: usize = 4096;
/// Most images kept per pid between prunes. A process that loads and unloads libraries in a
/// loop starts an image per library loaded where another was; past this many, its current
/// image is re-learnt in place instead (names then follow the latest mapping, as they did
/// before new mappings were followed).
pub const MAX_IMAGES_PER_PID: usize = 256;

/// Identity of one process image: a process between its exec (or first sight) and its next exec
/// or exit. Samples of different images never share address interpretations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u64);

/// Where a user address points, decided while its process was alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserLoc {
    /// In a file mapping: the module and the offset in the file.
    File { module: ModuleId, offset: u64 },
    /// In an executable mapping without a file (JIT code, the vDSO): named through the process.
    Process { addr: u64 },
    /// In no executable mapping (or the process was gone before it could be read).
    Unmapped { addr: u64 },
}

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
    /// Begun by an exec whose `/proc` is read at the image's first sample (most short-lived
    /// processes are never sampled and never read); `info` has only the event's name till then.
    unread: bool,
    snapshot: Snapshot,
    /// Addresses in no mapping even after the mappings were re-read: not re-read for again.
    /// Where an address points is not cached otherwise: the snapshot answers it (a binary search
    /// over a few dozen mappings), and a cache per address cost more memory than the window's
    /// stacks at scale (80 MiB for 1,000 processes and 100,000 stacks).
    misses: HashSet<u64>,
}

/// Counts of the process table, for summaries and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub execs: u64,
    pub exits: u64,
    /// File mappings replaced by a new mapping at their address (`dlclose`, then `dlopen`):
    /// each started a new image.
    pub replaced: u64,
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
    /// Cgroup facts shared by the processes of a cgroup.
    cgroups: CgroupCache,
}

/// What an event or sample says of the process it came from.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub pid: u32,
    pub time_ns: u64,
    /// The thread's name.
    pub comm: &'a str,
    /// Its cgroup (v2) id; 0 when not known.
    pub cgroup_id: u64,
}

impl ProcessTable {
    #[must_use]
    pub fn stats(&self) -> ProcessStats {
        self.stats
    }

    /// Whether any image of `pid` is still kept.
    #[must_use]
    pub fn knows(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
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

    /// A first sight of a process (or a new image after a mapping was replaced), read now.
    fn new_image(&mut self, seen: Seen<'_>, modules: &mut ModuleRegistry) -> ImageId {
        let info = Arc::new(ProcessInfo::read(
            Path::new("/proc"),
            seen.pid,
            seen.comm,
            &mut self.cgroups,
            seen.cgroup_id,
        ));
        let mut image = self.image_with(seen.pid, seen.time_ns, info, Snapshot::default());
        if seen.pid != 0 {
            self.refresh(&mut image, modules);
        }
        self.insert(image)
    }

    /// Reads what `/proc` says of an image begun by an exec, at its first sample (`cgroup_id`:
    /// the sample's).
    fn read_unread(&mut self, id: ImageId, cgroup_id: u64, modules: &mut ModuleRegistry) {
        let Some(mut image) = self.images.remove(&id) else {
            return;
        };
        image.info = Arc::new(ProcessInfo::read_after_exec(
            Path::new("/proc"),
            image.pid,
            &Arc::clone(&image.info.name),
            &mut self.cgroups,
            cgroup_id,
        ));
        image.unread = false;
        self.refresh(&mut image, modules);
        self.images.insert(id, image);
    }

    /// Puts `image` in the table as its process's latest.
    fn insert(&mut self, image: Image) -> ImageId {
        let id = image.id;
        self.by_pid.entry(image.pid).or_default().push(id);
        self.images.insert(id, image);
        id
    }

    /// A new image value (not yet in the table).
    fn image_with(
        &mut self,
        pid: u32,
        since_ns: u64,
        info: Arc<ProcessInfo>,
        snapshot: Snapshot,
    ) -> Image {
        let id = ImageId(self.next);
        self.next += 1;
        Image {
            id,
            pid,
            since_ns,
            ended_ns: None,
            info,
            unread: false,
            snapshot,
            misses: HashSet::new(),
        }
    }

    /// `pid` mapped `line` (an executable file mapping) at `time_ns`, as the kernel's mapping
    /// records tell, in time order with the samples. Over a file mapped there before (`dlclose`,
    /// then `dlopen`), samples from `time_ns` on belong to a new image of the process that has
    /// the new mapping in place of the old ones, so that each library is named as itself however
    /// fast they follow each other; elsewhere the mapping joins the current image. Processes not
    /// seen yet are left to their first sample's snapshot.
    pub fn mapped(
        &mut self,
        pid: u32,
        time_ns: u64,
        line: &MapsLine,
        modules: &mut ModuleRegistry,
    ) {
        let Some(&last) = self.by_pid.get(&pid).and_then(|ids| ids.last()) else {
            return;
        };
        let Some(image) = self.images.get(&last) else {
            return;
        };
        // An ended image's successor, or an image that began after the record, was read from
        // `/proc` later than the mapping was made. An image not read yet takes records too: a
        // process gone before its first sample's drain is named from them alone.
        if image.ended_ns.is_some()
            || time_ns < image.since_ns
            || image
                .snapshot
                .same_file_at(line.start, line.end, &line.path)
        {
            return;
        }
        let mapping = Mapping {
            start: line.start,
            end: line.end,
            offset: line.offset,
            backing: if line.path.starts_with('/') {
                Backing::File(modules.open_recorded(pid, line))
            } else {
                Backing::Other
            },
        };
        let replaces = image.snapshot.has_file_in(line.start, line.end);
        let images = self.by_pid.get(&pid).map_or(0, Vec::len);
        if replaces && images < MAX_IMAGES_PER_PID {
            self.stats.replaced += 1;
            let mut snapshot = image.snapshot.clone();
            snapshot.replace(mapping);
            let info = Arc::clone(&image.info);
            self.end_current(pid, time_ns);
            let image = self.image_with(pid, time_ns, info, snapshot);
            self.insert(image);
            return;
        }
        if let Some(image) = self.images.get_mut(&last) {
            if replaces {
                // Past the image bound: names follow the latest mapping from here on.
                self.stats.replaced += 1;
            }
            image
                .misses
                .retain(|addr| !(line.start..line.end).contains(addr));
            image.snapshot.replace(mapping);
        }
    }

    /// Re-reads the process's mappings, adding the ones not yet known (opening their files).
    fn refresh(&mut self, image: &mut Image, modules: &mut ModuleRegistry) {
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
            .map(|line| Mapping {
                start: line.start,
                end: line.end,
                offset: line.offset,
                backing: if line.path.starts_with('/') {
                    Backing::File(modules.open(image.pid, &line))
                } else {
                    Backing::Other
                },
            })
            .collect();
        image.snapshot.merge(fresh);
    }

    /// The process replaced its image at `seen.time_ns`. The new image is read from `/proc` at
    /// its first sample, which the kernel side has wake the daemon at once (while the process
    /// runs); an image never sampled is never read.
    pub fn exec(&mut self, seen: Seen<'_>) {
        self.stats.execs += 1;
        self.end_current(seen.pid, seen.time_ns);
        let info = Arc::new(ProcessInfo::from_event(seen.pid, seen.comm));
        let mut image = self.image_with(seen.pid, seen.time_ns, info, Snapshot::default());
        image.unread = true;
        self.insert(image);
    }

    /// Whether the current image of `pid` has a file mapped in `[start, end)`.
    #[must_use]
    pub fn maps_file_in(&self, pid: u32, start: u64, end: u64) -> bool {
        self.by_pid
            .get(&pid)
            .and_then(|ids| ids.last())
            .and_then(|id| self.images.get(id))
            .is_some_and(|image| image.ended_ns.is_none() && image.snapshot.has_file_in(start, end))
    }

    /// A file mapping of `seen.pid` was replaced at `seen.time_ns` (unloaded, and a new mapping
    /// given its range): samples after it belong to a new image of the same process, whose
    /// mappings are read afresh, so that the library loaded there is named as itself and
    /// earlier samples keep the old names.
    pub fn mapping_replaced(&mut self, seen: Seen<'_>, modules: &mut ModuleRegistry) {
        let pid = seen.pid;
        self.stats.replaced += 1;
        let images = self.by_pid.get(&pid).map_or(0, Vec::len);
        if images >= MAX_IMAGES_PER_PID {
            if let Some(&last) = self.by_pid.get(&pid).and_then(|ids| ids.last())
                && let Some(mut image) = self.images.remove(&last)
            {
                image.snapshot = Snapshot::default();
                image.misses.clear();
                self.refresh(&mut image, modules);
                self.images.insert(last, image);
            }
            return;
        }
        self.end_current(pid, seen.time_ns);
        self.new_image(seen, modules);
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

    /// The image a sample `seen` belongs to; registers one on first sight (or after the
    /// previous one ended: a reused pid).
    pub fn image_for(&mut self, seen: Seen<'_>, modules: &mut ModuleRegistry) -> ImageId {
        let (pid, time_ns) = (seen.pid, seen.time_ns);
        if let Some(ids) = self.by_pid.get(&pid) {
            let images = ids.iter().filter_map(|id| self.images.get(id));
            let during = images.clone().rev().find(|image| {
                image.since_ns <= time_ns && image.ended_ns.is_none_or(|end| time_ns <= end)
            });
            if let Some(image) = during {
                let id = image.id;
                // Its first sample: read it while it runs (an ended one may be another now).
                if image.unread && image.ended_ns.is_none() {
                    self.read_unread(id, seen.cgroup_id, modules);
                }
                return id;
            }
            // Older than every image we know: the oldest is the best guess.
            if let Some(first) = images.clone().next()
                && time_ns < first.since_ns
            {
                return first.id;
            }
        }
        self.new_image(seen, modules)
    }

    /// Checks the user `addrs` of image `id` against its mappings; call it as soon as samples
    /// arrive. A miss while the image is current re-reads the mappings (libraries loaded after
    /// exec); an address still in no mapping is counted and not re-read for again. Returns the
    /// addresses outside file mappings (JIT code, the vDSO), sorted and deduplicated: the caller
    /// names them through the live process right away.
    pub fn learn(
        &mut self,
        id: ImageId,
        mut addrs: Vec<u64>,
        modules: &mut ModuleRegistry,
    ) -> Vec<u64> {
        let Some(mut image) = self.images.remove(&id) else {
            return Vec::new();
        };
        addrs.sort_unstable();
        addrs.dedup();
        let missing =
            |image: &Image, a: u64| image.snapshot.find(a).is_none() && !image.misses.contains(&a);
        if image.ended_ns.is_none() && addrs.iter().any(|&a| missing(&image, a)) {
            self.refresh(&mut image, modules);
        }
        let mut live = Vec::new();
        for addr in addrs {
            match image.snapshot.locate(addr) {
                UserLoc::File { .. } => {}
                UserLoc::Process { .. } => live.push(addr),
                UserLoc::Unmapped { .. } => {
                    if image.misses.len() >= MAX_MISSES_PER_IMAGE {
                        image.misses.clear();
                    }
                    if image.misses.insert(addr) {
                        self.stats.unmapped += 1;
                    }
                }
            }
        }
        self.images.insert(id, image);
        live
    }

    /// The file mappings of image `id` while it is current (none once it ended): (start, end,
    /// file offset, module).
    #[must_use]
    pub fn file_mappings(&self, id: ImageId) -> Vec<(u64, u64, u64, Arc<Module>)> {
        let Some(image) = self.images.get(&id).filter(|i| i.ended_ns.is_none()) else {
            return Vec::new();
        };
        image
            .snapshot
            .mappings()
            .iter()
            .filter_map(|m| match &m.backing {
                Backing::File(module) => Some((m.start, m.end, m.offset, Arc::clone(module))),
                Backing::Other => None,
            })
            .collect()
    }

    /// Where `addr` of image `id` points, by the image's mappings (kept after it ended).
    #[must_use]
    pub fn normalize(&self, id: ImageId, addr: u64) -> UserLoc {
        self.images
            .get(&id)
            .map_or(UserLoc::Unmapped { addr }, |image| {
                image.snapshot.locate(addr)
            })
    }

    /// Drops images that ended and processes that are gone (after their window was exported);
    /// returns the images dropped.
    pub fn prune(&mut self) -> Vec<ImageId> {
        self.prune_with_pids()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Like `prune`, with the pid of each image dropped.
    pub fn prune_with_pids(&mut self) -> Vec<(ImageId, u32)> {
        let dead: Vec<(ImageId, u32)> = self
            .images
            .values()
            .filter(|i| i.pid != 0 && (i.ended_ns.is_some() || !procfs::alive(i.pid)))
            .map(|i| (i.id, i.pid))
            .collect();
        for (id, _) in &dead {
            if let Some(image) = self.images.remove(id)
                && let Some(ids) = self.by_pid.get_mut(&image.pid)
            {
                ids.retain(|i| i != id);
                if ids.is_empty() {
                    self.by_pid.remove(&image.pid);
                }
            }
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_separate_exec_and_pid_reuse() {
        let mut modules = ModuleRegistry::new(16, Vec::new());
        let mut table = ProcessTable::default();
        let me = std::process::id();
        let at = |time_ns| Seen {
            pid: me,
            time_ns,
            comm: "t",
            cgroup_id: 0,
        };
        let first = table.image_for(at(100), &mut modules);
        assert_eq!(table.image_for(at(150), &mut modules), first);
        table.exec(at(200));
        let unread = |table: &ProcessTable, id| table.image(id).is_some_and(|i| i.unread);
        let second = table.by_pid[&me][1];
        assert!(
            unread(&table, second),
            "an exec is read at its first sample"
        );
        assert_eq!(&*table.image(second).unwrap().info.name, "t");
        assert_eq!(table.image_for(at(250), &mut modules), second);
        assert!(!unread(&table, second));
        assert!(table.image(second).unwrap().info.exe_path.is_some());
        assert_ne!(second, first);
        assert_eq!(
            table.image_for(at(199), &mut modules),
            first,
            "before the exec"
        );
        table.exit(me, 300);
        let reused = table.image_for(at(400), &mut modules);
        assert!(
            reused != first && reused != second,
            "a reused pid is a new image"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.stats().execs, 1);

        // This process's own code is found in its snapshot, in a module with a build id.
        let addr = images_separate_exec_and_pid_reuse as *const () as u64;
        assert!(
            table
                .learn(reused, vec![addr, 8, 8], &mut modules)
                .is_empty()
        );
        assert!(table.learn(reused, vec![8], &mut modules).is_empty());
        let UserLoc::File { module, .. } = table.normalize(reused, addr) else {
            panic!("own code is in a file mapping");
        };
        assert!(modules.get(module).is_some_and(|m| m.build_id.is_some()));
        assert_eq!(table.normalize(reused, 8), UserLoc::Unmapped { addr: 8 });
        assert_eq!(table.stats().unmapped, 1);
        assert_eq!(table.prune().len(), 2, "ended images are dropped");
        assert_eq!(table.images.len(), 1, "the live one is kept");
    }
}
