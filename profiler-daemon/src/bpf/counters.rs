//! Reading the sampler's in-kernel outcome counters (the `COUNTERS` per-CPU array) into the
//! catalog's totals.

use aya::maps::{MapData, MapError, PerCpuArray};
use profiler_common::Counter;

use crate::counters::{Count, Totals};

/// Sums every kernel counter over the CPUs into `totals`.
pub(super) fn read(map: &PerCpuArray<MapData, u64>, totals: &mut Totals) -> Result<(), MapError> {
    for counter in Counter::ALL {
        let per_cpu = map.get(&(counter as u32), 0)?;
        totals.set(Count::from_bpf(counter), per_cpu.iter().copied().sum());
    }
    Ok(())
}
