//! The user-space stage between the ring buffer and the exporters. It takes raw samples and
//! process events in order and, in turn:
//! 1. keeps the process table current (exec and exit split images) and normalizes new user
//!    addresses while the process lives (`process`, which keeps the mapped files open through
//!    `objfile`, so names survive the process);
//! 2. names addresses outside files (JIT code, the vDSO) through the live process right away;
//! 3. aggregates counts into the window's profile (`profile`);
//! 4. at the window's end, names every stack (`symbolize`) and hands a named profile forward.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Sink;
use super::tables::{FileMapping, TableWorker};
use crate::bpf::unwind::UnwindMaps;
use crate::bpf::{ProcessEvent, RawSample};
use crate::config::Limits;
use crate::counters::{Count, Totals};
use crate::mmaps::MmapRecord;
use crate::objfile::{self, ModuleId, ModuleRegistry};
use crate::process::{ImageId, ProcessTable, Seen, UserLoc};
use crate::procfs::ProcessInfo;
use crate::profile::{
    Location, LocationTable, Profile, Stack, StackKey, SymbolizedProfile, call_sites,
};
use crate::symbolize::{Frame, Resolved, SymbolizerStage, unnamed};

/// The root frame of a user stack whose outermost frames are missing.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// Most mapping records waiting for samples at once (beyond, the oldest are applied).
const MAX_PENDING_MAPPINGS: usize = 1 << 16;

/// Most names of addresses outside files (JIT code, the vDSO) kept at once.
const MAX_LIVE_NAMES: usize = 1 << 17;

/// What makes two frames of a window one location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LocationKey {
    /// A file offset: one location whichever process ran it.
    File(ModuleId, u64),
    /// An address outside files, named through its own process image.
    Image(ImageId, u64),
    Kernel(u64),
    /// The `[truncated]` root of a cut user stack.
    Truncated,
}

impl LocationKey {
    fn of(image: ImageId, loc: UserLoc) -> Self {
        match loc {
            UserLoc::File { module, offset } => Self::File(module, offset),
            UserLoc::Process { addr } | UserLoc::Unmapped { addr } => Self::Image(image, addr),
        }
    }
}

/// Sizes of what the collector holds, for gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    pub processes: usize,
    pub user_names: usize,
    pub kernel_names: usize,
    pub open_modules: usize,
    pub stacks: usize,
}

pub struct Collector {
    processes: ProcessTable,
    modules: ModuleRegistry,
    symbolizer: SymbolizerStage,
    /// Names of addresses outside file mappings, taken from the live process.
    live_names: HashMap<(ImageId, u64), Resolved>,
    profile: Profile,
    received: u64,
    malformed: u64,
    lost_profile_full: u64,
    unknown_process: u64,
    frequency: u32,
    /// The table walker's maps, with `--unwind tables`.
    tables: Option<TableWorker>,
    /// The kernel's mapping records not applied yet (newer than the last sample), by time.
    pending_maps: VecDeque<MmapRecord>,
    /// Mapping records flow: they, not the new-area events, tell replaced mappings.
    mapping_records: bool,
    mapping_records_lost: u64,
    /// Windows close when the stack table is nearly full (`run`), rather than count the
    /// samples of new stacks beyond `--max-stacks` as lost (`record`: one window).
    close_when_full: bool,
}

impl Collector {
    #[must_use]
    pub fn new(limits: &Limits, frequency: u32) -> Self {
        let debug_dirs = objfile::debug_dirs(&limits.debug_dirs);
        Self {
            processes: ProcessTable::default(),
            modules: ModuleRegistry::new(limits.open_modules, debug_dirs.clone()),
            symbolizer: SymbolizerStage::new(
                limits.symbol_cache_entries,
                debug_dirs,
                limits.debug_info_bytes,
            ),
            live_names: HashMap::new(),
            profile: Profile::new(limits.max_stacks),
            received: 0,
            malformed: 0,
            lost_profile_full: 0,
            unknown_process: 0,
            frequency,
            tables: None,
            pending_maps: VecDeque::new(),
            mapping_records: false,
            mapping_records_lost: 0,
            close_when_full: false,
        }
    }

    /// Fills the table walker's maps from now on (`--unwind tables`).
    pub fn set_unwind_maps(&mut self, maps: UnwindMaps) {
        self.tables = Some(TableWorker::spawn(maps));
    }

    /// Writes image `image`'s file mappings with tables for the walker.
    fn update_tables(&mut self, image: ImageId) {
        let Some(tables) = &mut self.tables else {
            return;
        };
        let Some(pid) = self.processes.image(image).map(|i| i.pid) else {
            return;
        };
        let mappings = self.processes.file_mappings(image);
        if mappings.is_empty() {
            return;
        }
        let mappings = mappings
            .into_iter()
            .map(|(start, end, offset, module)| FileMapping {
                start,
                end,
                offset,
                module,
            })
            .collect();
        tables.update(pid, mappings);
    }

    /// Queues the kernel's mapping records (`mmaps`), to be applied in time order with the
    /// samples. `lost`: records the kernel dropped so far.
    fn queue_mappings(&mut self, records: Vec<MmapRecord>, lost: u64) {
        self.mapping_records = true;
        self.mapping_records_lost = lost;
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            tracing::trace!(
                records = records.len(),
                first_ns = first.time_ns,
                last_ns = last.time_ns,
                "mapping records"
            );
        }
        self.pending_maps.extend(records);
        // Each drain's records are sorted, but a CPU's ring read early in one drain can hold
        // records older than another's read late in the last.
        self.pending_maps
            .make_contiguous()
            .sort_by_key(|r| r.time_ns);
        while self.pending_maps.len() > MAX_PENDING_MAPPINGS {
            let mut none = HashMap::new();
            self.apply_mappings(
                self.pending_maps.front().map_or(0, |r| r.time_ns),
                &mut none,
            );
        }
    }

    /// Applies the queued mapping records up to `until_ns` (a sample's time), learning the
    /// `pending` addresses of a process first: they were sampled before its mappings change.
    fn apply_mappings(&mut self, until_ns: u64, pending: &mut HashMap<ImageId, Vec<u64>>) {
        while self
            .pending_maps
            .front()
            .is_some_and(|r| r.time_ns <= until_ns)
        {
            let Some(record) = self.pending_maps.pop_front() else {
                break;
            };
            if !self.processes.knows(record.pid) {
                continue;
            }
            self.learn(pending);
            self.processes
                .mapped(record.pid, record.time_ns, &record.line, &mut self.modules);
        }
    }

    /// Takes one drained batch, in ring buffer order.
    fn ingest(&mut self, batch: Vec<Option<RawSample>>) {
        let mut new_user: HashMap<ImageId, Vec<u64>> = HashMap::new();
        for sample in batch {
            let Some(sample) = sample else {
                self.malformed += 1;
                continue;
            };
            self.apply_mappings(sample.time_ns, &mut new_user);
            let thread = sample.thread_name();
            let seen = Seen {
                pid: sample.tgid,
                time_ns: sample.time_ns,
                comm: &thread,
                cgroup_id: sample.cgroup_id,
            };
            match sample.event() {
                Some(ProcessEvent::Exec) => {
                    // Addresses of the old image seen so far in this batch: learn them before
                    // the mappings change under them.
                    self.learn(&mut new_user);
                    self.processes.exec(seen);
                    if let Some(tables) = &mut self.tables {
                        tables.remove(sample.tgid);
                    }
                    continue;
                }
                Some(ProcessEvent::Exit) => {
                    self.learn(&mut new_user);
                    self.processes.exit(sample.tgid, sample.time_ns);
                    if let Some(tables) = &mut self.tables {
                        tables.remove(sample.tgid);
                    }
                    continue;
                }
                Some(ProcessEvent::NewArea { .. }) if self.mapping_records => continue,
                Some(ProcessEvent::NewArea { start, end }) => {
                    // Only a range over a file we thought mapped matters (it was unloaded, and
                    // something else goes there now): the image ends here, so that the samples
                    // before keep the old library's names and the ones after learn the new one.
                    if self.processes.maps_file_in(sample.tgid, start, end) {
                        self.learn(&mut new_user);
                        self.processes.mapping_replaced(seen, &mut self.modules);
                        if let Some(tables) = &mut self.tables {
                            tables.remove(sample.tgid);
                        }
                    }
                    continue;
                }
                None => {}
            }
            self.received += 1;
            let image = self.processes.image_for(seen, &mut self.modules);
            let user = call_sites(&sample.user);
            new_user
                .entry(image)
                .or_default()
                .extend(user.iter().copied());
            let key = StackKey {
                image,
                pid: sample.tgid,
                tid: sample.tid,
                kernel: call_sites(&sample.kernel),
                user,
                truncated: sample.flags & profiler_common::FLAG_USER_TRUNCATED != 0,
            };
            if !self.profile.add(key, &thread) {
                self.lost_profile_full += 1;
            }
        }
        self.learn(&mut new_user);
        if let Some(tables) = &mut self.tables {
            tables.flush();
        }
    }

    /// Normalizes the pending user addresses while their processes live, and names the ones
    /// outside files through the live process. Naming the rest waits for the window's end: the
    /// files stay open as long as their images are kept.
    fn learn(&mut self, pending: &mut HashMap<ImageId, Vec<u64>>) {
        for (image, addrs) in pending.drain() {
            let mut live = self.processes.learn(image, addrs, &mut self.modules);
            live.retain(|&a| !self.live_names.contains_key(&(image, a)));
            self.update_tables(image);
            if live.is_empty() {
                continue;
            }
            let Some(pid) = self.processes.image(image).map(|i| i.pid) else {
                continue;
            };
            let names = self.symbolizer.resolve_process(pid, &live);
            // Names of JIT code grow with every address a JIT makes: bounded, starting over.
            if self.live_names.len() + names.len() > MAX_LIVE_NAMES {
                self.live_names.clear();
            }
            self.live_names
                .extend(live.into_iter().map(|a| (image, a)).zip(names));
        }
        self.symbolizer.forget(self.modules.take_closed());
    }

    /// Makes `Sink::full` ask for the window to close when its stack table is nearly full:
    /// a window of windows (`run`) loses nothing to `--max-stacks`, it only ends early.
    pub fn close_windows_when_full(&mut self) {
        self.close_when_full = true;
    }

    /// Samples held in the open window.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.profile.samples()
    }

    /// Distinct processes known.
    #[must_use]
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Writes the user-side counts into `totals`.
    pub fn totals(&self, totals: &mut Totals) {
        let p = self.processes.stats();
        let s = self.symbolizer.stats();
        let t = self
            .tables
            .as_ref()
            .map(TableWorker::stats)
            .unwrap_or_default();
        for (count, value) in [
            (Count::Received, self.received),
            (Count::Malformed, self.malformed),
            (Count::ProfileFull, self.lost_profile_full),
            (Count::UnknownProcess, self.unknown_process),
            (Count::Execs, p.execs),
            (Count::Exits, p.exits),
            (Count::MappingsReplaced, p.replaced),
            (Count::MappingRecordsLost, self.mapping_records_lost),
            (Count::SnapshotFailed, p.snapshot_failed),
            (Count::Unmapped, p.unmapped),
            (Count::SymbolizeHit, s.cache_hits),
            (Count::SymbolizeMiss, s.cache_misses),
            (Count::SymbolizeError, s.symbolize_errors),
            (Count::ProcessNamed, s.process_named),
            (Count::DwarfOverBudget, s.dwarf_over_budget),
            (Count::TablesLoaded, t.loaded),
            (Count::TablesEvicted, t.evicted),
            (Count::TablesFailed, t.failed),
            (Count::TablesNoRoom, t.no_room),
        ] {
            totals.set(count, value);
        }
    }

    #[must_use]
    pub fn held(&self) -> Held {
        let (user_names, kernel_names) = self.symbolizer.cache_sizes();
        Held {
            processes: self.processes.len(),
            user_names,
            kernel_names,
            open_modules: self.modules.len(),
            stacks: self.profile.stacks(),
        }
    }

    /// Names every stack of the window `[start, start + duration)` and starts a new one.
    pub fn finish_window(&mut self, start: SystemTime, duration: Duration) -> SymbolizedProfile {
        let bound = self.profile.max_stacks();
        let profile = std::mem::replace(&mut self.profile, Profile::new(bound));
        let mut stacks = Vec::with_capacity(profile.stacks());
        let mut table = LocationTable::default();
        let mut threads: HashMap<u32, Arc<str>> = HashMap::new();
        for (key, count) in profile.iter() {
            let process = if let Some(image) = self.processes.image(key.image) {
                Arc::clone(&image.info)
            } else {
                // Never expected (images outlive their window), but never silent either.
                self.unknown_process += count;
                Arc::new(ProcessInfo::unknown(key.pid))
            };
            let thread = threads
                .entry(key.tid)
                .or_insert_with(|| Arc::from(profile.thread_name(key.tid)));
            stacks.push(Stack {
                process,
                tid: key.tid,
                thread: Arc::clone(thread),
                user: self.user_locations(&mut table, key.image, &key.user, key.truncated),
                kernel: self.kernel_locations(&mut table, &key.kernel),
                count,
            });
        }
        self.symbolizer.forget_idle();
        SymbolizedProfile {
            stacks,
            locations: table.into_locations(),
            frequency: self.frequency,
            start_unix_nano: start
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            duration_nano: duration.as_nanos() as u64,
        }
    }

    /// The kernel locations of a leaf-first stack, root first, as indices into `table` (the
    /// addresses not in it yet are named in one batch).
    fn kernel_locations(
        &mut self,
        table: &mut LocationTable<LocationKey>,
        leaf_first: &[u64],
    ) -> Box<[u32]> {
        let missing: Vec<u64> = leaf_first
            .iter()
            .rev()
            .copied()
            .filter(|&a| !table.contains(&LocationKey::Kernel(a)))
            .collect();
        let names: HashMap<u64, Resolved> = missing
            .iter()
            .copied()
            .zip(self.symbolizer.resolve_kernel(&missing))
            .collect();
        leaf_first
            .iter()
            .rev()
            .map(|&address| {
                table.index(LocationKey::Kernel(address), || Location {
                    module: None,
                    address,
                    kernel: true,
                    frames: names.get(&address).cloned().unwrap_or_else(unnamed),
                })
            })
            .collect()
    }

    /// The named user locations of a leaf-first stack of `image`, root first, as indices into
    /// `table` (the file locations not in it yet are named in one batch); a `truncated` stack
    /// starts with a `[truncated]` frame, so that a cut stack is never read as whole.
    fn user_locations(
        &mut self,
        table: &mut LocationTable<LocationKey>,
        image: ImageId,
        leaf_first: &[u64],
        truncated: bool,
    ) -> Box<[u32]> {
        let locs: Vec<(LocationKey, UserLoc)> = leaf_first
            .iter()
            .rev()
            .map(|&a| {
                let loc = self.processes.normalize(image, a);
                (LocationKey::of(image, loc), loc)
            })
            .collect();
        let missing: Vec<(ModuleId, u64)> = locs
            .iter()
            .filter(|(key, _)| !table.contains(key))
            .filter_map(|(_, l)| match *l {
                UserLoc::File { module, offset } => Some((module, offset)),
                _ => None,
            })
            .collect();
        let names: HashMap<(ModuleId, u64), Resolved> = missing
            .iter()
            .copied()
            .zip(self.symbolizer.resolve_user(&missing, &self.modules))
            .collect();
        let marker = truncated.then(|| {
            table.index(LocationKey::Truncated, || Location {
                module: None,
                address: 0,
                kernel: false,
                frames: Arc::from([Frame::named(TRUNCATED_FRAME, None, None)]),
            })
        });
        let rest = locs.into_iter().map(|(key, loc)| {
            table.index(key, || match loc {
                UserLoc::File { module, offset } => Location {
                    module: self.modules.get(module).map(Arc::clone),
                    address: offset,
                    kernel: false,
                    frames: names
                        .get(&(module, offset))
                        .cloned()
                        .unwrap_or_else(unnamed),
                },
                UserLoc::Process { addr } | UserLoc::Unmapped { addr } => Location {
                    module: None,
                    address: addr,
                    kernel: false,
                    frames: self
                        .live_names
                        .get(&(image, addr))
                        .map_or_else(unnamed, Arc::clone),
                },
            })
        });
        marker.into_iter().chain(rest).collect()
    }

    /// Forgets process images that ended or whose process is gone (their stacks were exported).
    pub fn prune_exited(&mut self) {
        let pruned = self.processes.prune_with_pids();
        if pruned.is_empty() {
            return;
        }
        let gone: HashSet<ImageId> = pruned.iter().map(|&(id, _)| id).collect();
        self.live_names
            .retain(|(image, _), _| !gone.contains(image));
        // What blazesym keeps per process (its vDSO, perf map) goes with the process: under
        // churn it would otherwise grow with every pid ever seen.
        for (_, pid) in pruned {
            if !self.processes.knows(pid) {
                self.symbolizer.forget_process(pid);
                if let Some(tables) = &mut self.tables {
                    tables.remove(pid);
                }
            }
        }
        if let Some(tables) = &mut self.tables {
            tables.flush();
        }
    }
}

impl Sink for Collector {
    fn take(&mut self, batch: Vec<Option<RawSample>>) {
        self.ingest(batch);
    }

    fn full(&self) -> bool {
        self.close_when_full && self.profile.nearly_full()
    }

    fn take_mappings(&mut self, records: Vec<MmapRecord>, lost: u64) {
        self.queue_mappings(records, lost);
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::COMM_LEN;

    use super::*;

    fn sample(tgid: u32, user: Vec<u64>) -> RawSample {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"gone");
        RawSample {
            tgid,
            tid: tgid,
            cgroup_id: 0,
            time_ns: 1,
            cpu: 0,
            flags: 0,
            comm,
            kernel: Vec::new(),
            user,
        }
    }

    fn limits() -> Limits {
        Limits {
            ring_buffer_bytes: None,
            max_stacks: 16,
            symbol_cache_entries: 16,
            open_modules: 4,
            debug_info_bytes: crate::config::args::DEFAULT_DEBUG_INFO_MEMORY,
            debug_dirs: Vec::new(),
            profile_self: false,
            unwind: crate::config::UnwindMode::Fp,
            unwind_table_bytes: crate::config::DEFAULT_UNWIND_TABLE_BYTES,
        }
    }

    #[test]
    fn samples_of_a_process_never_read_show_as_unknown_and_are_counted() {
        let mut collector = Collector::new(&limits(), 99);
        // A pid above pid_max: no such process.
        let pid = u32::MAX - 1;
        collector.take(vec![Some(sample(pid, vec![0x1000])), None]);
        // Its image is forgotten before the window is named (as if pruned early).
        collector.processes.prune();
        let profile = collector.finish_window(SystemTime::now(), Duration::from_secs(1));
        assert_eq!(profile.stacks.len(), 1);
        let stack = &profile.stacks[0];
        assert_eq!(stack.process.pid, pid);
        assert_eq!(&*stack.process.name, format!("[unknown process {pid}]"));
        let leaf = profile.user(stack).next().expect("a user frame");
        assert!(leaf.frames.is_empty());
        assert_eq!(&*leaf.shown_frames(true)[0].name, "[unknown] 0x1000");
        let mut totals = Totals::default();
        collector.totals(&mut totals);
        assert_eq!(totals.get(Count::UnknownProcess), 1);
        assert_eq!(totals.get(Count::Received), 1);
        assert_eq!(totals.get(Count::Malformed), 1);
    }

    #[test]
    fn a_full_profile_counts_what_it_refuses() {
        let mut collector = Collector::new(
            &Limits {
                max_stacks: 1,
                ..limits()
            },
            99,
        );
        let me = std::process::id();
        collector.take(vec![
            Some(sample(me, vec![1])),
            Some(sample(me, vec![2])),
            Some(sample(me, vec![1])),
        ]);
        let mut totals = Totals::default();
        collector.totals(&mut totals);
        assert_eq!(totals.get(Count::ProfileFull), 1);
        assert_eq!(collector.samples(), 2);
        // `record` has one window: it never asks for an early close.
        assert!(!collector.full());
    }

    #[test]
    fn a_window_asks_to_close_at_seven_eighths_of_its_stacks() {
        let mut collector = Collector::new(
            &Limits {
                max_stacks: 16,
                ..limits()
            },
            99,
        );
        collector.close_windows_when_full();
        let me = std::process::id();
        collector.take((1..=13).map(|a| Some(sample(me, vec![a]))).collect());
        assert!(!collector.full(), "13 of 16 stacks");
        collector.take(vec![Some(sample(me, vec![14]))]);
        assert!(collector.full(), "14 of 16 stacks");
        // Closing the window starts an empty one.
        let _ = collector.finish_window(std::time::SystemTime::now(), Duration::from_secs(1));
        assert!(!collector.full());
        let mut totals = Totals::default();
        collector.totals(&mut totals);
        assert_eq!(totals.get(Count::ProfileFull), 0);
    }
}
