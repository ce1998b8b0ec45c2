//! Perf-event samplers, one program per design:
//! - `sample_ringbuf`: one record per sample (header + kernel and user frame arrays) into a ring
//!   buffer; user space aggregates. This is the one the daemon uses.
//! - `sample_aggregate`: counts per (task, kernel stack id, user stack id) in a hash map, stacks in
//!   a `STACK_TRACE` map. Kept only so `cargo xtask bench` can measure it against the first.
//!
//! Both filter by process in the kernel and count every outcome in `COUNTERS`.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_stack,
        generated::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    },
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use profiler_common::{
    AggregateKey, COMM_LEN, COUNTER_SLOTS, Counter, FLAG_KERNEL_STACK_FAILED,
    FLAG_USER_STACK_FAILED, MAX_FRAMES, SampleRecord,
};

/// 1 when only the processes in `PIDS` are sampled (set by the loader).
#[unsafe(no_mangle)]
static FILTER_PIDS: u32 = 0;
/// 1 when idle samples (pid 0) are delivered, not only counted (set by the loader).
#[unsafe(no_mangle)]
static INCLUDE_IDLE: u32 = 0;

/// Samples for user space. The loader sizes it (`--ring-buffer-size`).
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Selected processes (tgid → 1) when `FILTER_PIDS` is set. The loader sizes it.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Outcome counters, indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Aggregation variant: stacks by id.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Aggregation variant: sample counts.
#[map]
static COUNTS: HashMap<AggregateKey, u64> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the slot belongs to this CPU and perf-event programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config(flag: &'static u32) -> bool {
    // SAFETY: a plain read of a global the loader patched; volatile so the compiler does not
    // fold the compile-time default.
    unsafe { core::ptr::read_volatile(flag) != 0 }
}

/// Common admission: counts the run, idle and filtered samples; returns (tgid, tid) to sample.
#[inline(always)]
fn admit() -> Option<(u32, u32)> {
    bump(Counter::Runs);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tgid == 0 {
        bump(Counter::Idle);
        if !config(&INCLUDE_IDLE) {
            return None;
        }
    } else if config(&FILTER_PIDS) {
        // SAFETY: the value is a plain u8 and is only read.
        if unsafe { PIDS.get(&tgid) }.is_none() {
            bump(Counter::FilteredOut);
            return None;
        }
    }
    Some((tgid, tid))
}

fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[perf_event]
pub fn sample_ringbuf(ctx: PerfEventContext) -> u32 {
    try_sample_ringbuf(&ctx);
    0
}

#[inline(always)]
fn try_sample_ringbuf(ctx: &PerfEventContext) {
    let Some((tgid, tid)) = admit() else {
        return;
    };
    let Some(mut entry) = SAMPLES.reserve::<SampleRecord>(0) else {
        bump(Counter::RingBufFull);
        return;
    };
    let record = entry.as_mut_ptr();
    const STACK_BYTES: u32 = (MAX_FRAMES * 8) as u32;
    // SAFETY: `record` points at a reserved, writable ring buffer slot of SampleRecord's size;
    // the helpers write at most STACK_BYTES into each frame array.
    unsafe {
        let header = &mut (*record).header;
        header.tgid = tgid;
        header.tid = tid;
        header.cgroup_id = bpf_get_current_cgroup_id();
        header.time_ns = bpf_ktime_get_ns();
        header.cpu = bpf_get_smp_processor_id();
        header.comm = comm();
        let mut flags = 0;

        let kernel = bpf_get_stack(
            ctx.as_ptr(),
            (*record).kernel.as_mut_ptr().cast(),
            STACK_BYTES,
            0,
        );
        header.kernel_len = if kernel < 0 {
            bump(Counter::KernelStackFailed);
            flags |= FLAG_KERNEL_STACK_FAILED;
            0
        } else {
            (kernel / 8) as u32
        };

        // Kernel threads have no user stack: that is an empty stack, not a failure.
        let user = bpf_get_stack(
            ctx.as_ptr(),
            (*record).user.as_mut_ptr().cast(),
            STACK_BYTES,
            u64::from(BPF_F_USER_STACK),
        );
        header.user_len = if user < 0 {
            bump(Counter::UserStackFailed);
            flags |= FLAG_USER_STACK_FAILED;
            0
        } else {
            (user / 8) as u32
        };
        header.flags = flags;
    }
    entry.submit(0);
    bump(Counter::Emitted);
}

#[perf_event]
pub fn sample_aggregate(ctx: PerfEventContext) -> u32 {
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
    if let Some(count) = COUNTS.get_ptr_mut(&key) {
        // SAFETY: a live map value; a lost increment under a concurrent update on another CPU is
        // possible only for the same thread's key, which runs on one CPU at a time.
        unsafe { *count += 1 };
    } else if COUNTS.insert(&key, &1, u64::from(BPF_NOEXIST)).is_err() {
        bump(Counter::AggregateMapFull);
        return;
    }
    bump(Counter::Emitted);
}
