//! Measurement-only sampler designs (`bench` feature), kept so `cargo xtask bench` can measure
//! them against the shipped `sample_ringbuf`:
//! - `sample_aggregate`: counts per (task, kernel stack id, user stack id) in a hash map, stacks in
//!   a `STACK_TRACE` map;
//! - `sample_buildid`: the kernel normalizes user frames itself (`BPF_F_USER_BUILD_ID`: build id
//!   + file offset per frame);
//! - stages of the shipped frame-pointer sampler, to tell what each part of it costs:
//!   `sample_header` (admission, the header and the ring buffer record, no stacks),
//!   `sample_kernel` (plus the kernel stack), `sample_lean` (both stacks, without `comm` and the
//!   cgroup id), `sample_getstack` (every user stack by `bpf_get_stack`, none by probe reads).

#![allow(
    clippy::inline_always,
    clippy::needless_pass_by_value,
    clippy::similar_names,
    reason = "the verifier wants everything inlined; entry points take their context by value; \
              tgid and tid are the kernel's names"
)]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_stack, generated::bpf_get_current_cgroup_id},
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use profiler_common::{AggregateKey, Counter, MAX_FRAMES};

use crate::sampler::{SAMPLES, Stages, admit, bump, comm, try_sample_ringbuf};

#[perf_event]
pub(crate) fn sample_header(ctx: PerfEventContext) -> u32 {
    let header_only = Stages {
        kernel_stack: false,
        user_stack: false,
        ..Stages::ALL_FP
    };
    try_sample_ringbuf(&ctx, header_only);
    0
}

#[perf_event]
pub(crate) fn sample_kernel(ctx: PerfEventContext) -> u32 {
    let kernel_only = Stages {
        user_stack: false,
        ..Stages::ALL_FP
    };
    try_sample_ringbuf(&ctx, kernel_only);
    0
}

#[perf_event]
pub(crate) fn sample_lean(ctx: PerfEventContext) -> u32 {
    let no_task_ids = Stages {
        task_ids: false,
        ..Stages::ALL_FP
    };
    try_sample_ringbuf(&ctx, no_task_ids);
    0
}

#[perf_event]
pub(crate) fn sample_getstack(ctx: PerfEventContext) -> u32 {
    let helper_only = Stages {
        fp_probe: false,
        ..Stages::ALL_FP
    };
    try_sample_ringbuf(&ctx, helper_only);
    0
}

/// Build-id variant: one user stack as `struct bpf_stack_build_id` (32 bytes a frame).
#[map]
static SCRATCH_BUILD_ID: PerCpuArray<[u64; BUILD_ID_STACK_WORDS]> =
    PerCpuArray::with_max_entries(1, 0);

const BUILD_ID_FRAME_BYTES: usize = 32;
const BUILD_ID_STACK_WORDS: usize = MAX_FRAMES * BUILD_ID_FRAME_BYTES / 8;
/// `BPF_F_USER_BUILD_ID`.
const F_USER_BUILD_ID: u64 = 1 << 11;

/// Aggregation variant: stacks by id.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Aggregation variant: sample counts.
#[map]
static COUNTS: HashMap<AggregateKey, u64> = HashMap::with_max_entries(16384, 0);

#[perf_event]
pub(crate) fn sample_buildid(ctx: PerfEventContext) -> u32 {
    try_sample_buildid(&ctx);
    0
}

#[inline(always)]
fn try_sample_buildid(ctx: &PerfEventContext) {
    const STACK_BYTES: u32 = (MAX_FRAMES * BUILD_ID_FRAME_BYTES) as u32;
    if admit().is_none() {
        return;
    }
    let Some(stack) = SCRATCH_BUILD_ID.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, exactly STACK_BYTES long.
    let user = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            stack.cast(),
            STACK_BYTES,
            u64::from(BPF_F_USER_STACK) | F_USER_BUILD_ID,
        )
    };
    if user < 0 {
        bump(Counter::UserStackFailed);
        return;
    }
    let len = (user as usize) & 0xfff;
    if len > STACK_BYTES as usize {
        return;
    }
    // SAFETY: `len` bytes of the scratch slot were written by the helper.
    let bytes = unsafe { core::slice::from_raw_parts(stack.cast::<u8>(), len) };
    if SAMPLES
        .output::<[u8]>(bytes, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        bump(Counter::RingBufFull);
        return;
    }
    bump(Counter::Emitted);
}

#[perf_event]
pub(crate) fn sample_aggregate(ctx: PerfEventContext) -> u32 {
    try_sample_aggregate(&ctx);
    0
}

#[inline(always)]
fn try_sample_aggregate(ctx: &PerfEventContext) {
    const EEXIST: i32 = -17;
    let Some((tgid, tid)) = admit() else {
        return;
    };
    let stack_id = |flags: u64| match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            bump(if err == EEXIST {
                Counter::StackCollision
            } else if flags == 0 {
                Counter::KernelStackFailed
            } else {
                Counter::UserStackFailed
            });
            -1
        }
    };
    let key = AggregateKey {
        tgid,
        tid,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        kernel_stack_id: stack_id(0),
        user_stack_id: stack_id(u64::from(BPF_F_USER_STACK)),
        comm: comm(),
    };
    if let Some(count) = COUNTS.get_ptr_mut(key) {
        // SAFETY: a live map value; a lost increment under a concurrent update on another CPU is
        // possible only for the same thread's key, which runs on one CPU at a time.
        unsafe { *count += 1 };
    } else if COUNTS.insert(key, 1, u64::from(BPF_NOEXIST)).is_err() {
        bump(Counter::AggregateMapFull);
        return;
    }
    bump(Counter::Emitted);
}
