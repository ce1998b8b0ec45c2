//! Process table: what the pipeline learns about a process the first time one of its samples
//! arrives (its name, and where each of its user addresses points) while it is still alive.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::symbolize::{SymbolizerStage, UserLoc};

/// What is known about one process.
#[derive(Debug)]
pub struct Process {
    /// The thread group leader's comm (`/proc/PID/comm`), else the first sampled thread's comm.
    pub name: Arc<str>,
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
        self.processes.entry(tgid).or_insert_with(|| {
            let name = if tgid == 0 {
                // Like perf: the idle task is "swapper".
                "swapper".to_owned()
            } else {
                read_comm(Path::new("/proc"), tgid).unwrap_or_else(|| thread_comm.to_owned())
            };
            Process {
                name: name.into(),
                locs: HashMap::new(),
            }
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

/// `/proc/PID/comm` without the newline; `None` when the process is gone.
fn read_comm(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm")).ok()?;
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
        let own = read_comm(Path::new("/proc"), me).unwrap();
        assert_eq!(&*table.observe(me, "thread").name, own);
        // A pid that cannot exist (above pid_max) falls back to the thread's comm.
        assert_eq!(&*table.observe(u32::MAX, "gone").name, "gone");
        assert_eq!(&*table.observe(0, "swapper/1").name, "swapper");
        assert_eq!(table.len(), 3);
    }
}
