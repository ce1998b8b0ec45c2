//! Totals of the sampler's in-kernel outcome counters (the `COUNTERS` per-CPU array).

use aya::maps::{MapData, MapError, PerCpuArray};
use profiler_common::Counter;

/// Counter totals over all CPUs, indexed like `profiler_common::Counter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BpfCounters {
    values: [u64; profiler_common::COUNTER_SLOTS as usize],
}

impl BpfCounters {
    pub(super) fn read(map: &PerCpuArray<MapData, u64>) -> Result<Self, MapError> {
        let mut values = [0; profiler_common::COUNTER_SLOTS as usize];
        for counter in Counter::ALL {
            let per_cpu = map.get(&(counter as u32), 0)?;
            values[counter as usize] = per_cpu.iter().copied().sum();
        }
        Ok(Self { values })
    }

    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Samples lost in the kernel (not delivered at all), by reason, non-zero ones only.
    #[must_use]
    pub fn losses(&self) -> Vec<(&'static str, u64)> {
        [
            Counter::RingBufFull,
            Counter::AggregateMapFull,
            Counter::StackCollision,
        ]
        .into_iter()
        .map(|c| (c.name(), self.get(c)))
        .filter(|&(_, n)| n > 0)
        .collect()
    }
}
