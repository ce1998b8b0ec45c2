//! The pipeline between the kernel and the exporters: the one sampling loop (`Driver`), used by
//! `record`, `run` and the benchmark, and the collector it feeds (`collect`).

pub mod collect;
pub mod tables;

pub use collect::Collector;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bpf::unwind::{UnwindConfig, UnwindMaps};
use crate::bpf::{BpfError, Design, RawSample, Sampler};
use crate::config::SamplerConfig;
use crate::counters::Totals;
use crate::kubernetes::{PodIndex, PodSelector};
use crate::mmaps::{MmapRecord, Mmaps};
use crate::procfs::{CgroupFilter, CgroupTargets};

/// The kernel's mapping records on every CPU, or `None` (with a warning) where they cannot be
/// opened.
fn open_mmaps() -> Option<Mmaps> {
    let cpus = match aya::util::online_cpus() {
        Ok(cpus) => cpus,
        Err((what, err)) => {
            tracing::warn!("mapping records off: {what}: {err}");
            return None;
        }
    };
    match Mmaps::open(&cpus) {
        Ok(mmaps) => Some(mmaps),
        Err(err) => {
            tracing::warn!(
                "{err}: libraries replaced faster than a drain (100 ms) may be misnamed"
            );
            None
        }
    }
}

/// How often the ring buffer is drained at the latest (it is also drained when a quarter full).
/// Short enough that processes are still alive when their addresses are normalized.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// How often the cgroup filter's targets (`--cgroup`, `--unit`, `--container`) are resolved
/// again while sampling, to follow restarts.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(2);

/// Where drained records go. `None` stands for a record that did not decode (the sink counts it).
pub trait Sink {
    fn take(&mut self, batch: Vec<Option<RawSample>>);

    /// The kernel's new executable mappings since the last call, by time (given before the
    /// batch drained with them); `lost`: records dropped so far.
    fn take_mappings(&mut self, _records: Vec<MmapRecord>, _lost: u64) {}

    /// The open window should close now (`run`: its stack table is nearly full).
    fn full(&self) -> bool {
        false
    }
}

/// Why a reloaded selection was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReselectError {
    #[error(
        "adding or removing the pid or cgroup filter (pid, cgroup, unit, container) needs a \
         restart"
    )]
    Restart,
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

/// Why `Driver::run_until` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The deadline passed.
    Deadline,
    /// The stop signal (SIGINT, SIGTERM) was set.
    Stopped,
    /// The reload signal (SIGHUP) was set: reload, then go on with the same window.
    Reload,
    /// The sink asked for its window to close before the deadline (`Sink::full`).
    Full,
}

/// The attached sampler and the loop that drains it.
pub struct Driver<'s> {
    sampler: Sampler,
    /// The kernel's mapping records (without them, replaced mappings are told by the sampler's
    /// new-area events and read from `/proc`).
    mmaps: Option<Mmaps>,
    /// The cgroup filter's targets, resolved again every `RESOLVE_INTERVAL`.
    cgroup_targets: CgroupTargets,
    cgroups: Vec<CgroupFilter>,
    next_resolve: Instant,
    stop: &'s AtomicBool,
    /// Set by SIGHUP (`run` only): ends `run_until` with `Ending::Reload`.
    reload: Option<&'s AtomicBool>,
    /// The pod watch and which of its pods to profile (`--namespace`, `--selector`).
    pods: Option<(Arc<PodIndex>, PodSelector)>,
    /// Largest share of the ring buffer taken in one drain since `take_peak_fill`.
    peak_fill: f64,
}

impl<'s> Driver<'s> {
    /// Loads and attaches the sampler; `stop` ends every loop early.
    pub fn start(
        config: &SamplerConfig,
        design: Design,
        stop: &'s AtomicBool,
    ) -> Result<Self, BpfError> {
        Self::start_unwinding(config, design, &UnwindConfig::default(), stop)
    }

    /// `start`, with the user stack walker `unwind` asks for (`--unwind`).
    pub fn start_unwinding(
        config: &SamplerConfig,
        design: Design,
        unwind: &UnwindConfig,
        stop: &'s AtomicBool,
    ) -> Result<Self, BpfError> {
        let sampler = Sampler::start_unwinding(config, design, unwind)?;
        let mmaps = if sampler.process_events() {
            open_mmaps()
        } else {
            None
        };
        Ok(Self {
            sampler,
            mmaps,
            cgroup_targets: config.cgroup_targets.clone(),
            cgroups: config.cgroups.clone(),
            next_resolve: Instant::now() + RESOLVE_INTERVAL,
            stop,
            reload: None,
            pods: None,
            peak_fill: 0.0,
        })
    }

    /// Makes `run_until` return `Ending::Reload` when `flag` is set (and clears it).
    pub fn reload_on(&mut self, flag: &'s AtomicBool) {
        self.reload = Some(flag);
    }

    /// Profiles the pods of `index` that `selector` selects (looked up again with the other
    /// cgroup targets, every `RESOLVE_INTERVAL`). The program must have been loaded with pods
    /// as cgroup targets (`CgroupTargets::pods`).
    pub fn select_pods(&mut self, index: Arc<PodIndex>, selector: PodSelector) {
        self.pods = Some((index, selector));
        self.next_resolve = Instant::now();
    }

    /// Points the filters at a reloaded configuration's selection. Whether there is a pid filter
    /// and a cgroup filter is fixed when the program loads: a reload that adds or removes one
    /// is refused (a restart applies it), and nothing changes.
    pub fn reselect(&mut self, config: &SamplerConfig) -> Result<(), ReselectError> {
        let (pids, cgroups) = self.sampler.filters();
        if pids == config.pids.is_empty() || cgroups == config.cgroup_targets.is_empty() {
            return Err(ReselectError::Restart);
        }
        if pids {
            self.sampler.set_pids(&config.pids)?;
        }
        // The new targets go through the same path as a restarted unit's new cgroup.
        self.cgroup_targets = config.cgroup_targets.clone();
        self.next_resolve = Instant::now();
        self.follow_cgroups();
        Ok(())
    }

    /// The table walker's maps (once; `None` with `--unwind fp`): give them to the collector.
    pub fn take_unwind_maps(&mut self) -> Option<UnwindMaps> {
        self.sampler.take_unwind_maps()
    }

    #[must_use]
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Drains into `sink` until `end` passes or the stop signal is set, waking at least every
    /// `DRAIN_INTERVAL`; calls `after_drain` after each drain (metrics).
    pub fn run_until<S: Sink>(
        &mut self,
        end: Instant,
        sink: &mut S,
        mut after_drain: impl FnMut(&Self, &S),
    ) -> Result<Ending, BpfError> {
        loop {
            self.drain(sink);
            after_drain(self, sink);
            self.follow_cgroups();
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Ending::Stopped);
            }
            if self
                .reload
                .is_some_and(|r| r.swap(false, Ordering::Relaxed))
            {
                return Ok(Ending::Reload);
            }
            if sink.full() {
                return Ok(Ending::Full);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(Ending::Deadline);
            }
            self.sampler.wait(DRAIN_INTERVAL.min(end - now))?;
        }
    }

    /// Resolves the cgroup filter's targets again when due, and points the filter at their
    /// cgroups if they changed (a unit or container restarted: same path, new cgroup id).
    fn follow_cgroups(&mut self) {
        let now = Instant::now();
        if self.cgroup_targets.is_empty() || now < self.next_resolve {
            return;
        }
        self.next_resolve = now + RESOLVE_INTERVAL;
        if let Some((index, selector)) = &self.pods
            && self.cgroup_targets.pods.is_some()
        {
            self.cgroup_targets.pods = Some(index.select(selector));
        }
        let fresh = match crate::procfs::resolve_cgroups(&self.cgroup_targets) {
            Ok(fresh) => fresh,
            Err(err) => {
                // Stopped for now: the old cgroups stay (empty, they cost nothing).
                tracing::debug!("cgroup filter not resolved again: {err}");
                return;
            }
        };
        if fresh == self.cgroups {
            return;
        }
        match self.sampler.set_cgroups(&fresh) {
            Ok(left_out) => {
                for c in &left_out {
                    tracing::warn!(
                        path = %c.path.display(),
                        "a cgroup filter target moved to a cgroup level the program was not \
                         loaded for: restart the profiler to follow it"
                    );
                }
                tracing::info!(
                    cgroups = fresh.len(),
                    "cgroup filter follows its targets' new cgroups"
                );
                self.cgroups = fresh;
            }
            Err(err) => tracing::warn!("cannot update the cgroup filter: {err}"),
        }
    }

    /// The largest share of the ring buffer taken in one drain since `take_peak_fill`.
    #[must_use]
    pub fn peak_fill(&self) -> f64 {
        self.peak_fill
    }

    /// Returns the peak fill and starts a new measurement (per window).
    pub fn take_peak_fill(&mut self) -> f64 {
        std::mem::take(&mut self.peak_fill)
    }

    /// Ends sampling: reads the kernel counters first, then takes what is still in the ring
    /// buffer, so that every sample the counters report emitted reaches `sink`; then detaches.
    /// Returns the kernel's totals.
    pub fn finish<S: Sink>(mut self, sink: &mut S) -> Result<Totals, BpfError> {
        let mut totals = Totals::default();
        self.sampler.read_counters(&mut totals)?;
        self.drain(sink);
        Ok(totals)
    }

    fn drain<S: Sink>(&mut self, sink: &mut S) {
        let mut batch = Vec::new();
        let bytes = self.sampler.drain(|s| batch.push(s));
        // Read after the samples: every mapping made before the last of them is in.
        if let Some(mmaps) = &mut self.mmaps {
            let records = mmaps.drain();
            sink.take_mappings(records, mmaps.lost());
        }
        let ring = f64::from(self.sampler.ring_bytes().max(1));
        self.peak_fill = self.peak_fill.max(bytes as f64 / ring);
        if !batch.is_empty() {
            sink.take(batch);
        }
    }
}
