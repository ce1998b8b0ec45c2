//! The subcommands, each wiring the pipeline for one job: `record` (one file), `run` (the
//! daemon), `check` (diagnose the host), and with the `bench` feature the measurements
//! `cargo xtask bench` takes.

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod bench_live;
#[cfg(feature = "bench")]
pub mod bench_scale;
pub mod check;
pub mod record;
pub mod run;
