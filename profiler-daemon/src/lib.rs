//! The profiler daemon as a library. Imports run one way, top to bottom (see the README's
//! "Architecture"):
//!
//! - commands: `record`, `run`, `check` (and `bench` with the feature), wired from `cli`;
//! - `pipeline`: the one sampling loop and the collector;
//! - stages: `bpf` (load, attach, drain, decode) · `process` (normalize to module + offset) ·
//!   `symbolize` (name) · `profile` (aggregate) · `export` (files, OTLP) · `telemetry`;
//! - leaves: `objfile` (files, build ids, module identity) · `procfs` (what /proc says) ·
//!   `counters` (the catalog of every count) · `config` (validated settings).

pub mod bpf;
pub mod cli;
pub mod commands;
pub mod config;
pub mod counters;
pub mod export;
#[cfg(test)]
mod fuzz;
pub mod kubernetes;
pub mod live;
pub mod mmaps;
pub mod objfile;
pub mod pipeline;
pub mod process;
pub mod procfs;
pub mod profile;
pub mod symbolize;
pub mod telemetry;
pub mod unwind;
#[cfg(any(test, feature = "bench"))]
mod xorshift;
