//! `profiler bpf-cost` (hidden): BPF time per sample of one sampler design, measured by the kernel
//! (`kernel.bpf_stats_enabled`), for `cargo xtask bench`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bpf::{BpfError, Design, Sampler};
use crate::config::SamplerConfig;

#[derive(Debug, thiserror::Error)]
pub enum BpfCostError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("enabling BPF run-time statistics failed: {0}")]
    Stats(String),
    #[error("the kernel reported no statistics for the program")]
    NoStats,
}

/// Measured cost.
#[derive(Debug, Clone, Copy)]
pub struct BpfCost {
    pub runs: u64,
    pub run_time: Duration,
    pub emitted: u64,
}

impl BpfCost {
    #[must_use]
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_time.as_nanos() as f64 / self.runs as f64
        }
    }
}

pub fn measure(
    design: Design,
    frequency: u32,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<BpfCost, BpfCostError> {
    // Statistics are collected while this fd is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| BpfCostError::Stats(e.to_string()))?;
    let config = SamplerConfig {
        frequency,
        pids: Vec::new(),
        include_idle: false,
        ring_buffer_bytes: None,
        profile_self: false,
    };
    let mut sampler = Sampler::start(&config, design)?;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        sampler.wait(crate::bpf::DRAIN_INTERVAL)?;
        sampler.drain(|_| {});
    }
    let (run_time, runs) = sampler.program_stats().ok_or(BpfCostError::NoStats)?;
    let emitted = sampler.counters()?.get(profiler_common::Counter::Emitted);
    Ok(BpfCost {
        runs,
        run_time,
        emitted,
    })
}
