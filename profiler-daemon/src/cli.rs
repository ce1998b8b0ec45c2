//! Command-line interface: the subcommands, parsed by clap. Their flags are declared with the
//! configuration they turn into (`config::args`).

use clap::{Parser, Subcommand};

#[cfg(feature = "bench")]
use crate::commands::bench::{BenchSymbolizeArgs, BenchTablesArgs, BpfCostArgs};
use crate::config::args::{CheckArgs, RecordArgs, RunArgs};

/// System-wide sampling CPU profiler (eBPF).
#[derive(Debug, Parser)]
#[command(name = "profiler", version, about, propagate_version = true)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a `RUST_LOG` directive).
    /// `RUST_LOG` is used when this is not given.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start: the size difference between variants does not matter"
)]
pub enum Command {
    /// Profile every CPU (or the selected processes) for a while and write one file.
    Record(RecordArgs),
    /// Run as a daemon: sample continuously and export OTLP profiles every interval.
    Run(RunArgs),
    /// Diagnose this host: kernel, BTF, perf events, capabilities, the sampler, the collector.
    Check(CheckArgs),
    /// Measure the BPF time per sample of a sampler design (used by `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BpfCost(BpfCostArgs),
    /// Measure symbolization throughput on a binary (used by `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchSymbolize(BenchSymbolizeArgs),
    /// Measure unwind table size and build time (used by `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchTables(BenchTablesArgs),
}
