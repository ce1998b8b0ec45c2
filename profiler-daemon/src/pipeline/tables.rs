//! Fills the table walker's maps (`--unwind tables`): each module's unwind table is built once
//! (keyed by `objfile::ModuleId`, so every process mapping the same file content shares it),
//! placed in the rows array by first fit, and each process's file mappings with tables are
//! written as one `UnwindProcess`. When the array is full, the least recently used modules (used:
//! mapped by a process with new samples) are evicted (counted) and the processes that mapped them
//! rewritten; a process that runs again gets them back (rate-limited).
//!
//! All of it runs on a thread of its own (`TableWorker`): building a large table (libLLVM: 1 M
//! rows, seconds) must never hold up the drain of the ring buffer. Until a module's table is in,
//! the walker steps its frames by frame pointer, or falls back to `bpf_get_stack`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use profiler_common::{UNWIND_MAX_MAPPINGS, UnwindMapping, UnwindProcess};

use crate::bpf::unwind::UnwindMaps;
use crate::objfile::{Module, ModuleId};
use crate::unwind;

/// One file mapping of a process, as the walker needs it.
#[derive(Debug, Clone)]
pub struct FileMapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub module: Arc<Module>,
}

/// A module's table in the rows array.
#[derive(Debug, Clone, Copy)]
struct Placed {
    first: u32,
    rows: u32,
    /// This load's id (`UnwindMapping::table`): never reused, so the walker's row cache cannot
    /// serve a row of an evicted table to the one placed where it was.
    table: u32,
    /// The table's base (row pcs are offsets from it).
    base: u64,
    /// Tick of its last use, for eviction.
    used: u64,
}

/// Counts, for the catalog.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableStats {
    pub loaded: u64,
    pub evicted: u64,
    pub failed: u64,
    /// Tables that fit the array but found no room beside the ones in use (tried again later).
    pub no_room: u64,
    /// Rows in the array now.
    pub rows: u64,
}

/// Shortest time between two reloads of a process's evicted tables: long enough that two busy
/// processes whose tables do not fit together cost a few table builds a second at most (~5 ms
/// each for python3), short enough that a process whose tables went while it was idle is not
/// walked by frame pointers for long (5 s once cost a test's whole 3-s phase on a loaded host).
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Batches waiting for the worker at most (one per drain of the ring buffer).
const QUEUE: usize = 64;
/// Jobs held for the next batch at most; beyond, updates are dropped (the collector sends one
/// again at the process's next samples). Removals are always kept: a lost one would leave stale
/// mappings.
const PENDING: usize = 1024;

enum Job {
    Update(u32, Vec<FileMapping>),
    Remove(u32),
}

/// `Tables` on a thread of its own, fed in order. Jobs are sent in one batch per drain
/// (`flush`), not one by one: a host starting a hundred processes a second would otherwise wake
/// the thread hundreds of times a second, and the context switches were the largest part of
/// the daemon's CPU there.
pub struct TableWorker {
    jobs: Option<SyncSender<Vec<Job>>>,
    pending: Vec<Job>,
    stats: Arc<Mutex<TableStats>>,
}

impl TableWorker {
    /// Starts the thread (without it, nothing is loaded and stacks stay frame-pointer ones).
    #[must_use]
    pub fn spawn(maps: UnwindMaps) -> Self {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Mutex::new(TableStats::default()));
        let shared = Arc::clone(&stats);
        let spawned = std::thread::Builder::new()
            .name("unwind-tables".to_owned())
            .spawn(move || work(Tables::new(maps), &queue, &shared));
        let jobs = match spawned {
            Ok(_) => Some(jobs),
            Err(err) => {
                tracing::warn!("cannot start the unwind table thread ({err}): frame pointers only");
                None
            }
        };
        Self {
            jobs,
            pending: Vec::new(),
            stats,
        }
    }

    /// See `Tables::update`; sent with the next `flush`.
    pub fn update(&mut self, pid: u32, mappings: Vec<FileMapping>) {
        if self.jobs.is_none() {
            return;
        }
        if self.pending.len() >= PENDING {
            tracing::trace!(pid, "unwind table queue full: update dropped");
            return;
        }
        self.pending.push(Job::Update(pid, mappings));
    }

    /// See `Tables::remove`; sent with the next `flush`.
    pub fn remove(&mut self, pid: u32) {
        if self.jobs.is_some() {
            self.pending.push(Job::Remove(pid));
        }
    }

    /// Hands the jobs since the last call to the thread, in order. When its queue is full they
    /// wait for the next call.
    pub fn flush(&mut self) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        match jobs.try_send(std::mem::take(&mut self.pending)) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) => self.pending = batch,
            Err(TrySendError::Disconnected(_)) => {
                tracing::trace!("unwind table thread gone");
                self.jobs = None;
            }
        }
    }

    #[must_use]
    pub fn stats(&self) -> TableStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn work(mut tables: Tables, queue: &Receiver<Vec<Job>>, stats: &Mutex<TableStats>) {
    for batch in queue {
        for job in batch {
            match job {
                Job::Update(pid, mappings) => tables.update(pid, mappings),
                Job::Remove(pid) => tables.remove(pid),
            }
            *stats.lock().unwrap_or_else(PoisonError::into_inner) = tables.stats();
        }
    }
}

/// The tables in the kernel and the processes using them.
struct Tables {
    maps: UnwindMaps,
    placed: HashMap<ModuleId, Placed>,
    /// First row → module, to find free gaps.
    by_first: BTreeMap<u32, ModuleId>,
    /// Modules without a usable table (not retried).
    failed: HashSet<ModuleId>,
    /// Per process: the mappings last written (to skip unchanged rewrites).
    processes: HashMap<u32, Vec<FileMapping>>,
    /// Per process: when its evicted tables were last loaded again.
    reloaded: HashMap<u32, Instant>,
    tick: u64,
    /// The last table id given.
    last_table: u32,
    stats: TableStats,
}

impl Tables {
    fn new(maps: UnwindMaps) -> Self {
        Self {
            maps,
            placed: HashMap::new(),
            by_first: BTreeMap::new(),
            failed: HashSet::new(),
            processes: HashMap::new(),
            reloaded: HashMap::new(),
            tick: 0,
            last_table: 0,
            stats: TableStats::default(),
        }
    }

    fn stats(&self) -> TableStats {
        self.stats
    }

    /// Makes process `pid`'s entry match `mappings` (its current file mappings), loading the
    /// tables of modules not loaded yet. Called when the process has new samples: its modules
    /// are "used" now, which is what eviction goes by.
    fn update(&mut self, pid: u32, mut mappings: Vec<FileMapping>) {
        mappings.sort_by_key(|m| m.start);
        self.tick += 1;
        let unchanged = self.processes.get(&pid).is_some_and(|old| {
            old.len() == mappings.len()
                && old.iter().zip(&mappings).all(|(a, b)| {
                    a.start == b.start && a.end == b.end && a.module.id == b.module.id
                })
        });
        if unchanged {
            let mut missing = false;
            for m in &mappings {
                if let Some(placed) = self.placed.get_mut(&m.module.id) {
                    placed.used = self.tick;
                } else if !self.failed.contains(&m.module.id) {
                    missing = true;
                }
            }
            // A table evicted while the process was idle comes back when it runs again, at most
            // every RELOAD_INTERVAL: two busy processes whose tables do not fit together would
            // otherwise evict each other at every drain.
            let now = Instant::now();
            let due = self
                .reloaded
                .get(&pid)
                .is_none_or(|last| now.duration_since(*last) >= RELOAD_INTERVAL);
            if !missing || !due {
                return;
            }
            self.reloaded.insert(pid, now);
            tracing::debug!(pid, "loading evicted unwind tables again");
        }
        // Largest code first (tables grow with it): first fit then finds big gaps before small
        // tables split them.
        let mut order: Vec<&FileMapping> = mappings.iter().collect();
        order.sort_by_key(|m| std::cmp::Reverse(m.end - m.start));
        for m in order {
            self.ensure(&m.module, &mappings);
        }
        self.processes.insert(pid, mappings);
        self.write_process(pid);
    }

    /// Forgets process `pid` (it exited).
    fn remove(&mut self, pid: u32) {
        self.reloaded.remove(&pid);
        if self.processes.remove(&pid).is_some() {
            self.maps.remove_process(pid);
        }
    }

    /// Loads `module`'s table unless it is loaded or failed; `keep` are the modules of the
    /// process being written (never evicted for each other).
    fn ensure(&mut self, module: &Module, keep: &[FileMapping]) {
        if let Some(placed) = self.placed.get_mut(&module.id) {
            placed.used = self.tick;
            return;
        }
        if self.failed.contains(&module.id) {
            return;
        }
        let table = match unwind::build(&module.read_path) {
            Ok(table) if !table.rows.is_empty() => table,
            Ok(_) => {
                self.fail(module, "no rows");
                return;
            }
            Err(err) => {
                self.fail(module, &err.to_string());
                return;
            }
        };
        let Ok(rows) = u32::try_from(table.rows.len()) else {
            self.fail(module, "too many rows");
            return;
        };
        let Some(first) = self.allocate(rows, keep) else {
            if rows > self.maps.capacity() {
                self.fail(module, "larger than --unwind-table-memory allows");
            } else {
                // Room may come later (other processes exit, their tables go): tried again at
                // the process's next reload, not marked failed.
                tracing::debug!(module = %module.path.display(), rows, "no room for the unwind table now");
                self.stats.no_room += 1;
            }
            return;
        };
        if let Err(err) = self.maps.write_rows(first, &table.rows) {
            self.fail(module, &format!("writing rows: {err}"));
            return;
        }
        // Ids run from 1 (0 is an empty cache slot); wrapping would take 4 billion loads.
        self.last_table = self.last_table.wrapping_add(1).max(1);
        self.placed.insert(
            module.id,
            Placed {
                first,
                rows,
                table: self.last_table,
                base: table.base,
                used: self.tick,
            },
        );
        self.by_first.insert(first, module.id);
        self.stats.loaded += 1;
        self.stats.rows += u64::from(rows);
        tracing::debug!(module = %module.path.display(), rows, first, "unwind table loaded");
    }

    fn fail(&mut self, module: &Module, why: &str) {
        tracing::debug!(module = %module.path.display(), "no unwind table: {why}");
        self.failed.insert(module.id);
        self.stats.failed += 1;
    }

    /// First fit for `rows` rows, evicting the least recently used modules (not in `keep`) until
    /// a gap is large enough. Of those last used together (one process's modules), the largest
    /// goes first: a process's dozen small libraries are not evicted one by one before the
    /// large table that makes the room.
    fn allocate(&mut self, rows: u32, keep: &[FileMapping]) -> Option<u32> {
        let capacity = self.maps.capacity();
        if rows > capacity {
            return None;
        }
        loop {
            if let Some(first) = self.free_gap(rows, capacity) {
                return Some(first);
            }
            let victim = self
                .placed
                .iter()
                .filter(|(id, _)| !keep.iter().any(|m| m.module.id == **id))
                .min_by_key(|(_, p)| (p.used, std::cmp::Reverse(p.rows)))
                .map(|(&id, _)| id)?;
            self.evict(victim);
        }
    }

    fn free_gap(&self, rows: u32, capacity: u32) -> Option<u32> {
        let mut next = 0u32;
        for (&first, id) in &self.by_first {
            if first.saturating_sub(next) >= rows {
                return Some(next);
            }
            next = first.saturating_add(self.placed.get(id).map_or(0, |p| p.rows));
        }
        (capacity.saturating_sub(next) >= rows).then_some(next)
    }

    /// Drops `module`'s table and rewrites the processes that used it.
    fn evict(&mut self, module: ModuleId) {
        let Some(placed) = self.placed.remove(&module) else {
            return;
        };
        self.by_first.remove(&placed.first);
        self.stats.evicted += 1;
        tracing::debug!(
            first = placed.first,
            rows = placed.rows,
            "unwind table evicted"
        );
        self.stats.rows = self.stats.rows.saturating_sub(u64::from(placed.rows));
        let users: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, maps)| maps.iter().any(|m| m.module.id == module))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in users {
            self.write_process(pid);
        }
    }

    /// Writes process `pid`'s `UnwindProcess` from its mappings whose tables are loaded.
    fn write_process(&mut self, pid: u32) {
        let Some(mappings) = self.processes.get(&pid) else {
            return;
        };
        let mut value = UnwindProcess {
            len: 0,
            pad: 0,
            mappings: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        };
        let mut len = 0;
        for m in mappings {
            let Some(placed) = self.placed.get(&m.module.id) else {
                continue;
            };
            let Some(bias) = bias(m, placed.base) else {
                continue;
            };
            let Some(slot) = value.mappings.get_mut(len) else {
                break;
            };
            *slot = UnwindMapping {
                start: m.start,
                end: m.end,
                bias,
                first_row: placed.first,
                rows: placed.rows,
                table: placed.table,
                pad: 0,
            };
            len += 1;
        }
        value.len = len as u32;
        if let Err(err) = self.maps.set_process(pid, &value) {
            tracing::debug!(pid, "cannot write the unwind mappings: {err}");
        }
    }
}

/// What the walker subtracts from an address of `m` to get a row pc: the address's ELF virtual
/// address is `addr - start + vaddr(offset)`, and the row pc is that minus the table's `base`.
fn bias(m: &FileMapping, base: u64) -> Option<u64> {
    let vaddr = m.module.virtual_address(m.offset)?;
    Some(m.start.wrapping_sub(vaddr).wrapping_add(base))
}
