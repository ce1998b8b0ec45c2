//! Host-side stub: the eBPF programs live in the `profiler` binary target of this crate, which is
//! only built for the BPF target. This library exists so that `profiler-daemon` can name this crate
//! as a build dependency (cargo then rebuilds the daemon when the programs change).
#![no_std]
