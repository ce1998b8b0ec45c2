//! The profiler daemon as a library: the stages of the pipeline and the subcommands wiring them.
//!
//! perf event → eBPF sampler (`bpf`) → ring buffer → `collect` (process table, normalization,
//! symbolization) → `profile` → `export`.

pub mod bench_symbolize;
pub mod bpf;
pub mod bpf_cost;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod export;
pub mod process;
pub mod profile;
pub mod record;
pub mod run;
pub mod symbolize;
pub mod telemetry;

pub use record::{RecordError, RecordSummary, record};
