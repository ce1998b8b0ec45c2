//! The user-space stage between the ring buffer and the exporters: takes raw samples and process
//! events in order, keeps the process table current (exec and exit split images), works out where
//! new user addresses point while the process lives (keeping its files open, so names survive the
//! process), aggregates counts into the profile, and names each window's stacks at its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bpf::{ProcessEvent, RawSample, Sampler};
use crate::config::Limits;
use crate::process::{ImageId, ProcessInfo, ProcessStats, ProcessTable};
use crate::profile::{Location, Profile, Stack, StackKey, SymbolizedProfile, call_sites};
use crate::symbolize::{SymbolizeStats, SymbolizerStage};

/// Losses and counts of the user-space stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct CollectStats {
    /// Ring buffer records that were not one sample (never expected).
    pub malformed: u64,
    pub lost_profile_full: u64,
}

pub struct Collector {
    processes: ProcessTable,
    symbolizer: SymbolizerStage,
    profile: Profile,
    malformed: u64,
    frequency: u32,
}

impl Collector {
    #[must_use]
    pub fn new(limits: &Limits, frequency: u32) -> Self {
        Self {
            processes: ProcessTable::default(),
            symbolizer: SymbolizerStage::new(
                limits.symbol_cache_entries,
                limits.open_modules,
                &limits.debug_dirs,
            ),
            profile: Profile::new(limits.max_stacks),
            malformed: 0,
            frequency,
        }
    }

    /// Takes one drained batch, in ring buffer order. Records that failed to decode arrive as
    /// `None` and are counted.
    pub fn ingest(&mut self, batch: Vec<Option<RawSample>>) {
        let mut new_user: HashMap<ImageId, Vec<u64>> = HashMap::new();
        for sample in batch {
            let Some(sample) = sample else {
                self.malformed += 1;
                continue;
            };
            let thread = sample.thread_name();
            match sample.event() {
                Some(ProcessEvent::Exec) => {
                    // Addresses of the old image seen so far in this batch: learn them before
                    // the mappings change under them.
                    self.learn(&mut new_user);
                    self.processes
                        .exec(sample.tgid, sample.time_ns, &thread, &mut self.symbolizer);
                    continue;
                }
                Some(ProcessEvent::Exit) => {
                    self.learn(&mut new_user);
                    self.processes.exit(sample.tgid, sample.time_ns);
                    continue;
                }
                None => {}
            }
            let image = self.processes.image_for(
                sample.tgid,
                sample.time_ns,
                &thread,
                &mut self.symbolizer,
            );
            let user = call_sites(&sample.user);
            let kernel = call_sites(&sample.kernel);
            new_user
                .entry(image)
                .or_default()
                .extend(user.iter().copied());
            self.profile.add(
                StackKey {
                    image,
                    tid: sample.tid,
                    kernel,
                    user,
                },
                &thread,
            );
        }
        self.learn(&mut new_user);
    }

    /// Works out where the pending user addresses point while their processes live. Naming
    /// waits for the window's end: the files stay open as long as their images are kept, and
    /// names of JIT code and the vDSO are taken from the live process here.
    fn learn(&mut self, pending: &mut HashMap<ImageId, Vec<u64>>) {
        for (image, addrs) in pending.drain() {
            self.processes.learn(image, &addrs, &mut self.symbolizer);
        }
    }

    #[must_use]
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    #[must_use]
    pub fn samples(&self) -> u64 {
        self.profile.samples()
    }

    #[must_use]
    pub fn stats(&self) -> CollectStats {
        CollectStats {
            malformed: self.malformed,
            lost_profile_full: self.profile.lost_profile_full,
        }
    }

    #[must_use]
    pub fn symbolize_stats(&self) -> SymbolizeStats {
        self.symbolizer.stats()
    }

    #[must_use]
    pub fn process_stats(&self) -> ProcessStats {
        self.processes.stats()
    }

    /// (user name cache, kernel name cache, open modules, distinct stacks held).
    #[must_use]
    pub fn cache_sizes(&self) -> (usize, usize, usize, usize) {
        let (user, kernel, modules) = self.symbolizer.cache_sizes();
        (user, kernel, modules, self.profile.stacks())
    }

    /// Names every stack of the window `[start, start + duration)` and starts a new one.
    pub fn finish_window(&mut self, start: SystemTime, duration: Duration) -> SymbolizedProfile {
        let bound = self.profile.max_stacks();
        let profile = std::mem::replace(&mut self.profile, Profile::new(bound));
        let mut stacks = Vec::with_capacity(profile.stacks());
        let unknown = Arc::new(ProcessInfo::read(
            std::path::Path::new("/nonexistent"),
            0,
            "",
        ));
        for (key, count) in profile.iter() {
            let root_first: Vec<u64> = key.user.iter().rev().copied().collect();
            let user = self
                .processes
                .resolve(key.image, &root_first, &mut self.symbolizer);
            let kernel_root_first: Vec<u64> = key.kernel.iter().rev().copied().collect();
            let names = self.symbolizer.resolve_kernel(&kernel_root_first);
            let kernel = kernel_root_first
                .iter()
                .zip(names)
                .map(|(&address, frames)| Location {
                    module: None,
                    address,
                    kernel: true,
                    frames,
                })
                .collect();
            let process = self
                .processes
                .image(key.image)
                .map_or_else(|| unknown.clone(), |i| i.info.clone());
            stacks.push(Stack {
                process,
                tid: key.tid,
                thread: Arc::from(profile.thread_name(key.tid)),
                user,
                kernel,
                count,
            });
        }
        // Keep the lost count visible across windows.
        self.profile.lost_profile_full += profile.lost_profile_full;
        SymbolizedProfile {
            stacks,
            frequency: self.frequency,
            start_unix_nano: start
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            duration_nano: duration.as_nanos() as u64,
        }
    }

    /// Forgets process images that ended or whose process is gone (their stacks were exported).
    pub fn prune_exited(&mut self) {
        self.processes.prune();
    }
}

/// Moves everything waiting in the sampler's ring buffer into the collector; returns (records,
/// bytes).
pub fn drain_into(sampler: &mut Sampler, collector: &mut Collector) -> (u64, usize) {
    let mut batch = Vec::new();
    let bytes = sampler.drain(|s| batch.push(s));
    let n = batch.len() as u64;
    if !batch.is_empty() {
        collector.ingest(batch);
    }
    (n, bytes)
}
