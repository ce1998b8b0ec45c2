//! The user-space stage between the ring buffer and the exporters: takes raw samples, registers
//! their processes, normalizes new user addresses while the process lives, names new addresses
//! right away (so names survive the file too) and aggregates counts into the profile.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bpf::RawSample;
use crate::config::Limits;
use crate::process::{ProcessInfo, ProcessTable};
use crate::profile::{Location, Profile, Stack, StackKey, SymbolizedProfile, call_sites};
use crate::symbolize::{SymbolizeStats, SymbolizerStage, UserLoc};

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
            symbolizer: SymbolizerStage::new(limits.symbol_cache_entries),
            profile: Profile::new(limits.max_stacks),
            malformed: 0,
            frequency,
        }
    }

    /// Takes one drained batch. Records that failed to decode arrive as `None` and are counted.
    pub fn ingest(&mut self, batch: Vec<Option<RawSample>>) {
        let mut new_user: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut kernel_addrs: HashSet<u64> = HashSet::new();
        for sample in batch {
            let Some(sample) = sample else {
                self.malformed += 1;
                continue;
            };
            let thread = sample.thread_name();
            self.processes.observe(sample.tgid, &thread);
            let user = call_sites(&sample.user);
            let kernel = call_sites(&sample.kernel);
            new_user
                .entry(sample.tgid)
                .or_default()
                .extend(user.iter().copied());
            kernel_addrs.extend(kernel.iter().copied());
            self.profile.add(
                StackKey {
                    tgid: sample.tgid,
                    tid: sample.tid,
                    kernel,
                    user,
                },
                &thread,
            );
        }
        // Normalize while the processes are alive, then name what is new.
        let mut locs: Vec<UserLoc> = Vec::new();
        for (tgid, addrs) in new_user {
            locs.extend(self.processes.learn(tgid, &addrs, &mut self.symbolizer));
        }
        if !locs.is_empty() {
            let _ = self.symbolizer.resolve_user(&locs);
        }
        if !kernel_addrs.is_empty() {
            let addrs: Vec<u64> = kernel_addrs.into_iter().collect();
            let _ = self.symbolizer.resolve_kernel(&addrs);
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

    /// Names every stack of the window `[start, start + duration)` and starts a new one.
    pub fn finish_window(&mut self, start: SystemTime, duration: Duration) -> SymbolizedProfile {
        let bound = self.profile.max_stacks();
        let profile = std::mem::replace(&mut self.profile, Profile::new(bound));
        let mut stacks = Vec::with_capacity(profile.stacks());
        let unknown = Arc::new(ProcessInfo::read(Path::new("/nonexistent"), 0, ""));
        for (key, count) in profile.iter() {
            let locs: Vec<UserLoc> = key
                .user
                .iter()
                .rev()
                .map(|&addr| self.processes.loc(key.tgid, addr))
                .collect();
            let names = self.symbolizer.resolve_user(&locs);
            let user = locs
                .iter()
                .zip(names)
                .map(|(loc, frames)| match *loc {
                    UserLoc::File { module, offset } => Location {
                        module: Some(self.symbolizer.module(module).clone()),
                        address: offset,
                        kernel: false,
                        frames,
                    },
                    UserLoc::Unmapped { addr } => Location {
                        module: None,
                        address: addr,
                        kernel: false,
                        frames,
                    },
                })
                .collect();
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
                .get(key.tgid)
                .map_or_else(|| unknown.clone(), |p| p.info.clone());
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

    /// Forgets processes that have exited (their stacks were already exported).
    pub fn prune_exited(&mut self) {
        self.processes
            .retain(|pid| pid == 0 || Path::new("/proc").join(pid.to_string()).exists());
    }
}
