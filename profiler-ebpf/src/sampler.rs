//! The shipped perf-event sampler, `sample_ringbuf`: one record per sample (header + kernel and
//! user frame arrays) into a ring buffer; user space aggregates. It filters by process in the
//! kernel and counts every outcome in `COUNTERS`. (The designs it was measured against live in
//! `bench`, built only with the `bench` feature.) User stacks come from the table walker
//! (`unwind`, in `sample_unwind`) or by frame pointers: shallow ones walked here with a probe
//! read per frame, deeper ones by `bpf_get_stack` (see `shallow_fp_stack`).
//!
//! `on_exec` / `on_exit` (raw tracepoints: no kernel BTF needed) put process events in the same ring buffer, so user
//! space tells images and reused pids apart, and a new image's first sample wakes user space to
//! snapshot its mappings while it runs (`NEW_PROCESSES`);
//! `on_new_area` (the `vm_unmapped_area` tracepoint) tells it when a new mapping takes an address
//! range, so that a library loaded where another was unloaded is learnt afresh.

// The eBPF verifier and per-sample cost want everything inlined into the programs; program entry
// points take their context by value (the macro's signature); `tgid`/`tid` are the kernel's names.
#![allow(
    clippy::inline_always,
    clippy::needless_pass_by_value,
    clippy::similar_names,
    reason = "the verifier wants everything inlined; entry points take their context by value; \
              tgid and tid are the kernel's names"
)]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_stack, bpf_probe_read_kernel,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
            bpf_get_smp_processor_id, bpf_ktime_get_ns,
        },
    },
    macros::{map, perf_event, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, RawTracePointContext},
};
use profiler_common::{
    COMM_LEN, COUNTER_SLOTS, Counter, FLAG_EVENT_EXEC, FLAG_EVENT_EXIT, FLAG_EVENT_NEW_AREA,
    FLAG_KERNEL_STACK_FAILED, FLAG_USER_STACK_FAILED, FLAG_USER_TABLES, FLAG_USER_TRUNCATED,
    MAX_FRAMES, MAX_USER_FRAMES, RECORD_FRAMES, SampleHeader, SampleRecord,
};

use crate::unwind::{self, Walk};

/// 1 when only the processes in `PIDS` are sampled (set by the loader).
#[unsafe(no_mangle)]
static FILTER_PIDS: u32 = 0;
/// Bit `L` set: some cgroup of `CGROUPS` is at level `L` below the v2 root (0: no cgroup filter;
/// set by the loader). Only those levels of the task's ancestry are looked up.
#[unsafe(no_mangle)]
static CGROUP_LEVELS: u32 = 0;
/// The daemon's own tgid: its samples are dropped (counted as filtered out) unless 0. Symbolizing
/// itself would cost the daemon more memory than anything it profiles. Set by the loader.
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;
/// 1 when idle samples (pid 0) are delivered, not only counted (set by the loader).
#[unsafe(no_mangle)]
static INCLUDE_IDLE: u32 = 0;

/// Samples for user space. The loader sizes it (`--ring-buffer-size`).
#[map]
pub(crate) static SAMPLES: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Wake the daemon only when this many bytes wait; otherwise it drains on its own timer. A wakeup
/// per sample (the default) costs more than the rest of the program. Set by the loader.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 256 * 1024;

/// Slots of `NEW_PROCESSES` (a power of two).
const NEW_SLOTS: u32 = 4096;

/// Processes that exec'd and have not been sampled since: slot `tgid % NEW_SLOTS` holds `tgid`.
/// Their first sample wakes the daemon, which reads their `/proc` then, while they run, and only
/// for processes that have samples: most of the hundred processes a second a busy host starts are
/// never sampled and cost it nothing. A slot taken over by a later exec only loses the early
/// wakeup (the daemon's next timed drain reads the process).
#[map]
static NEW_PROCESSES: Array<u32> = Array::with_max_entries(NEW_SLOTS, 0);

/// Whether this is the first sample of a process since its exec (and forgets it). Never for the
/// idle task (pid 0, whose slot reads 0 when empty).
#[inline(always)]
fn first_sample(tgid: u32) -> bool {
    if tgid == 0 {
        return false;
    }
    let Some(slot) = NEW_PROCESSES.get_ptr_mut(tgid & (NEW_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: a slot of an array map (a plain u32); a race with another CPU costs at most one
    // extra or one missed early wakeup.
    unsafe {
        if *slot != tgid {
            return false;
        }
        *slot = 0;
    }
    true
}

/// Per-CPU scratch record: the stacks are walked into it, then only the used part is copied out.
#[map]
static SCRATCH: PerCpuArray<SampleRecord> = PerCpuArray::with_max_entries(1, 0);

/// Selected processes (tgid → 1) when `FILTER_PIDS` is set. The loader sizes it.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Selected cgroups (cgroup id → 1), with their descendants, when `CGROUP_LEVELS` is set. The
/// loader sizes it.
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1, 0);

/// Whether the current task is under a cgroup of `CGROUPS`: one ancestor id and one lookup per
/// level in use (usually one), whatever the task's depth.
#[inline(always)]
fn in_cgroups(levels: u32) -> bool {
    for level in 0..32 {
        if levels & (1 << level) != 0 {
            // SAFETY: a helper without pointer arguments.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
            // SAFETY: the value is a plain u8 and is only read.
            if id != 0 && unsafe { CGROUPS.get(id) }.is_some() {
                return true;
            }
        }
    }
    false
}

/// Whether `tgid` is selected: every task without filters, else a task of `PIDS` or under
/// `CGROUPS`.
#[inline(always)]
fn selected(tgid: u32) -> bool {
    let pids = config(&FILTER_PIDS);
    let levels = config32(&CGROUP_LEVELS);
    if !pids && levels == 0 {
        return true;
    }
    // SAFETY: the value is a plain u8 and is only read.
    (pids && unsafe { PIDS.get(tgid) }.is_some()) || (levels != 0 && in_cgroups(levels))
}

/// Outcome counters, indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Whether the sample hit user mode (privilege level 3 in the sampled `cs`).
#[inline(always)]
pub(crate) fn sampled_in_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: see `sampled_pt_regs`.
    unsafe { (*sampled_pt_regs(ctx)).cs & 3 == 3 }
}

/// The sampled `rip`, `rsp` and `rbp` (the user's when `sampled_in_user_mode`).
#[inline(always)]
pub(crate) fn sampled_regs(ctx: &PerfEventContext) -> (u64, u64, u64) {
    // SAFETY: see `sampled_pt_regs`.
    unsafe {
        let regs = sampled_pt_regs(ctx);
        ((*regs).rip, (*regs).rsp, (*regs).rbp)
    }
}

/// The sampled registers: a perf-event program's context is `bpf_perf_event_data`, whose first
/// member is them. Read its fields directly only: the verifier rewrites those reads into reads
/// through the kernel's `bpf_perf_event_data_kern::regs`; a probe read at this address would
/// read that structure, not the registers.
#[inline(always)]
fn sampled_pt_regs(ctx: &PerfEventContext) -> *const pt_regs {
    ctx.as_ptr().cast::<pt_regs>()
}

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
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

#[inline(always)]
fn config32(value: &'static u32) -> u32 {
    // SAFETY: as in `config`.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn config64(value: &'static u64) -> u64 {
    // SAFETY: as in `config`.
    unsafe { core::ptr::read_volatile(value) }
}

/// Common admission: counts the run, idle and filtered samples; returns (tgid, tid) to sample.
#[inline(always)]
pub(crate) fn admit() -> Option<(u32, u32)> {
    bump(Counter::Runs);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tgid == 0 {
        // Counted as idle only when left out: included idle samples are emitted, and each run
        // has exactly one outcome (emitted, idle, filtered out, or lost).
        if !config(&INCLUDE_IDLE) {
            bump(Counter::Idle);
            return None;
        }
    } else if tgid == config32(&SELF_TGID) || !selected(tgid) {
        bump(Counter::FilteredOut);
        return None;
    }
    Some((tgid, tid))
}

pub(crate) fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// What a sampler run does beyond admission and the ring buffer record: the shipped programs do
/// everything; the `bench` feature's stage variants leave parts out to measure what each costs.
#[derive(Clone, Copy)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "compile-time switches, each a part of the program kept or left out"
)]
pub(crate) struct Stages {
    /// Walk the user stack with the tables (else frame pointers).
    pub(crate) tables: bool,
    pub(crate) kernel_stack: bool,
    pub(crate) user_stack: bool,
    /// Walk shallow frame-pointer stacks with probe reads (see `shallow_fp_stack`), not only
    /// with `bpf_get_stack`.
    pub(crate) fp_probe: bool,
    /// `comm` and the cgroup id in the header.
    pub(crate) task_ids: bool,
}

impl Stages {
    pub(crate) const ALL_FP: Self = Self {
        tables: false,
        kernel_stack: true,
        user_stack: true,
        fp_probe: true,
        task_ids: true,
    };
}

/// The sampler with frame-pointer user stacks (`--unwind fp`).
#[perf_event]
pub(crate) fn sample_ringbuf(ctx: PerfEventContext) -> u32 {
    try_sample_ringbuf(&ctx, Stages::ALL_FP);
    0
}

/// The sampler with the table walker (`--unwind tables`, see `unwind`). A program of its own,
/// so that kernels without `bpf_loop` still load `sample_ringbuf`.
#[perf_event]
pub(crate) fn sample_unwind(ctx: PerfEventContext) -> u32 {
    try_sample_ringbuf(
        &ctx,
        // Processes without tables get `bpf_get_stack` alone: the probe walk's loop on top of
        // the table walker took the verifier from 246k to 413k instructions (6.18).
        Stages {
            tables: true,
            fp_probe: false,
            ..Stages::ALL_FP
        },
    );
    0
}

#[inline(always)]
pub(crate) fn try_sample_ringbuf(ctx: &PerfEventContext, stages: Stages) {
    const STACK_BYTES: u32 = (MAX_FRAMES * 8) as u32;
    let Some((tgid, tid)) = admit() else {
        return;
    };
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `record` is this CPU's scratch slot (perf-event programs do not nest on a CPU); the
    // helpers write at most STACK_BYTES at offsets that leave room for them (index masks below).
    let size = unsafe {
        let header = &mut (*record).header;
        header.tgid = tgid;
        header.tid = tid;
        if stages.task_ids {
            header.cgroup_id = bpf_get_current_cgroup_id();
            header.comm = comm();
        }
        header.time_ns = bpf_ktime_get_ns();
        header.cpu = bpf_get_smp_processor_id();
        let mut flags = 0;

        let frames = (*record).frames.as_mut_ptr();
        // A sample that hit user mode has no kernel stack, but asking costs the helper's whole
        // setup (~290 ns of ~1,540 per sample here): CPU-bound programs are mostly in user
        // mode.
        let in_user = sampled_in_user_mode(ctx);
        let kernel = if stages.kernel_stack && !in_user {
            bpf_get_stack(ctx.as_ptr(), frames.cast(), STACK_BYTES, 0)
        } else {
            0
        };
        let kernel_len = if kernel < 0 {
            bump(Counter::KernelStackFailed);
            flags |= FLAG_KERNEL_STACK_FAILED;
            0
        } else {
            // At most MAX_FRAMES (127): the mask makes that visible to the verifier.
            ((kernel / 8) as usize) & 127
        };

        // The user frames follow the kernel frames. Kernel threads have no user stack: an
        // empty stack, not a failure.
        // Shallow frame-pointer stacks of user-mode samples are walked here (`shallow_fp_stack`).
        let probe = stages.fp_probe && in_user;
        let walked = if stages.tables {
            unwind::walk(ctx, tgid, &raw mut (*record).frames, kernel_len)
        } else {
            Walk::NoTables
        };
        let user = if let Walk::Frames { len, truncated } = walked {
            flags |= FLAG_USER_TABLES;
            if truncated {
                flags |= FLAG_USER_TRUNCATED;
            }
            (len * 8) as i64
        } else if !stages.user_stack {
            0
        } else if probe
            && let Some(bytes) = shallow_fp_stack(ctx, tgid, &mut (*record).frames, kernel_len)
        {
            bytes
        } else {
            let bytes = bpf_get_stack(
                ctx.as_ptr(),
                frames.add(kernel_len).cast(),
                STACK_BYTES,
                u64::from(BPF_F_USER_STACK),
            );
            if probe {
                remember_depth(tgid, bytes);
            }
            bytes
        };
        let user_len = if user < 0 {
            bump(Counter::UserStackFailed);
            flags |= FLAG_USER_STACK_FAILED;
            0
        } else {
            // At most MAX_USER_FRAMES (the table walker's; MAX_FRAMES by frame pointers).
            ((user / 8) as usize) & MAX_USER_FRAMES
        };
        // A frame-pointer stack that fills the record may go on beyond it: flagged, as the
        // table walker flags its own.
        // Branch-free: a branch here doubles the states the verifier walks in the table
        // walker's program.
        let full = u32::from(user_len == MAX_FRAMES && flags & FLAG_USER_TABLES == 0);
        flags |= full * FLAG_USER_TRUNCATED;
        header.kernel_len = kernel_len as u32;
        header.user_len = user_len as u32;
        header.flags = flags;
        SampleRecord::size(kernel_len, user_len)
    };
    // SAFETY: `size` never exceeds size_of::<SampleRecord>() (the lengths are masked to their
    // maxima above).
    let bytes = unsafe { core::slice::from_raw_parts(record.cast::<u8>(), size) };
    let wakeup = if first_sample(tgid)
        || SAMPLES.query(u64::from(BPF_RB_AVAIL_DATA)) >= config64(&WAKEUP_BYTES)
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if SAMPLES.output::<[u8]>(bytes, u64::from(wakeup)).is_err() {
        bump(Counter::RingBufFull);
        return;
    }
    bump(Counter::Emitted);
}

/// Frames the probe-read walk takes before it hands a stack over to `bpf_get_stack`.
///
/// Measured here (`cargo xtask bench cost`, and a recursion of chosen depth): `bpf_get_stack`
/// costs ~500 ns before its first frame and ~25 ns a frame after; a probe read costs ~70 ns a
/// frame and nothing before. Probe reads win up to about 11 frames: CPU-bound code sampled at
/// its leaves is often that shallow, servers often deeper.
const PROBE_WALK_FRAMES: usize = 12;

/// Per CPU: the process whose last sample here was deeper than `PROBE_WALK_FRAMES` (0: none),
/// so that the next sample of a deep process goes straight to `bpf_get_stack`.
#[map]
static DEEP_TGID: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The frame-pointer stack of a user-mode sample walked with a probe read per frame, at
/// `frames[first..]`; returns the bytes written. `None` when the stack is deeper than
/// `PROBE_WALK_FRAMES`, or `tgid` was last found so on this CPU: `bpf_get_stack` takes it then,
/// and `remember_depth` notes what it found.
#[inline(always)]
fn shallow_fp_stack(
    ctx: &PerfEventContext,
    tgid: u32,
    frames: &mut [u64; RECORD_FRAMES],
    first: usize,
) -> Option<i64> {
    let deep = DEEP_TGID.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array (programs do not nest on a CPU).
    if unsafe { *deep } == tgid {
        return None;
    }
    probe_walk(ctx, frames, first)
}

/// Notes whether `tgid`'s stack, `bytes` long by `bpf_get_stack`, is too deep for the probe walk.
#[inline(always)]
fn remember_depth(tgid: u32, bytes: i64) {
    if let Some(deep) = DEEP_TGID.get_ptr_mut(0) {
        let too_deep = bytes > (PROBE_WALK_FRAMES * 8) as i64;
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *deep = if too_deep { tgid } else { 0 } };
    }
}

/// The kernel's frame-pointer walk done with probe reads: the sampled `rip`, then each frame's
/// return address following the saved `rbp`s, until the chain ends. `None` when it goes on
/// beyond `PROBE_WALK_FRAMES`.
#[inline(always)]
fn probe_walk(
    ctx: &PerfEventContext,
    frames: &mut [u64; RECORD_FRAMES],
    first: usize,
) -> Option<i64> {
    let (rip, _, mut fp) = sampled_regs(ctx);
    *frames.get_mut(first)? = rip;
    let mut n = 1;
    while n <= PROBE_WALK_FRAMES {
        if fp == 0 || fp & 7 != 0 {
            return Some((n * 8) as i64);
        }
        // SAFETY: a probe read: a bad address fails, it does not fault.
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            return Some((n * 8) as i64);
        };
        *frames.get_mut(first + n)? = ret;
        n += 1;
        fp = next;
    }
    None
}

/// Sends a process event (header only) with the ring buffer's `wakeup` flag.
#[inline(always)]
fn send_event(flags: u32, wakeup: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if !selected(tgid) {
        return;
    }
    let Some(mut entry) = SAMPLES.reserve::<SampleHeader>(0) else {
        bump(Counter::EventsLost);
        return;
    };
    // SAFETY: writes a whole header into the reserved slot; helpers without arguments.
    unsafe {
        entry.as_mut_ptr().write(SampleHeader {
            tgid,
            tid,
            cgroup_id: bpf_get_current_cgroup_id(),
            time_ns: bpf_ktime_get_ns(),
            cpu: bpf_get_smp_processor_id(),
            kernel_len: 0,
            user_len: 0,
            flags,
            comm: comm(),
        });
    }
    entry.submit(wakeup);
    bump(Counter::Events);
}

/// A process event with a payload: the header, then `range` as two user frames.
#[repr(C)]
struct RangeEvent {
    header: SampleHeader,
    range: [u64; 2],
}

/// A fresh address range for a new mapping of a sampled process (`vm_unmapped_area`, from
/// `mmap` without `MAP_FIXED`): sent so that user space can tell a library loaded where another
/// was unloaded from the one it knew. Ranges for anonymous memory are sent too (the kernel side
/// cannot tell them apart cheaply); user space drops those with one lookup.
#[raw_tracepoint(tracepoint = "vm_unmapped_area")]
pub(crate) fn on_new_area(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    if tgid == 0 || tgid == config32(&SELF_TGID) {
        return 0;
    }
    // (addr, info): the address chosen (an error code when none was free) and the request,
    // whose second field, after `flags`, is the length (the same in every kernel since 3.x).
    let addr: u64 = ctx.arg(0);
    let info: *const u64 = ctx.arg(1);
    if addr & 0xfff != 0 || info.is_null() {
        return 0;
    }
    // SAFETY: a probe read of the kernel's request; a fault returns an error.
    let Ok(len) = (unsafe { bpf_probe_read_kernel(info.wrapping_add(1)) }) else {
        return 0;
    };
    let Some(mut entry) = SAMPLES.reserve::<RangeEvent>(0) else {
        bump(Counter::EventsLost);
        return 0;
    };
    // SAFETY: writes a whole event into the reserved slot; helpers without arguments.
    unsafe {
        entry.as_mut_ptr().write(RangeEvent {
            header: SampleHeader {
                tgid,
                tid: pid_tgid as u32,
                cgroup_id: bpf_get_current_cgroup_id(),
                time_ns: bpf_ktime_get_ns(),
                cpu: bpf_get_smp_processor_id(),
                kernel_len: 0,
                user_len: 2,
                flags: FLAG_EVENT_NEW_AREA,
                comm: comm(),
            },
            range: [addr, len],
        });
    }
    // No wakeup: nothing needs reading before the next drain.
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    bump(Counter::Events);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub(crate) fn on_exec(_ctx: RawTracePointContext) -> i32 {
    // The daemon reads the new image's `/proc` at its first sample, which wakes it
    // (`NEW_PROCESSES`): nothing is urgent before.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(slot) = NEW_PROCESSES.get_ptr_mut(tgid & (NEW_SLOTS - 1)) {
        // SAFETY: a slot of an array map (a plain u32).
        unsafe { *slot = tgid };
    }
    send_event(FLAG_EVENT_EXEC, u64::from(BPF_RB_NO_WAKEUP));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub(crate) fn on_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only the thread group leader's exit ends the process (its pid may then be reused).
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == pid_tgid as u32 {
        if let Some(slot) = NEW_PROCESSES.get_ptr_mut(tgid & (NEW_SLOTS - 1)) {
            // SAFETY: a slot of an array map (a plain u32); freed for the next exec there.
            unsafe {
                if *slot == tgid {
                    *slot = 0;
                }
            }
        }
        // Nothing is left to read of an exited process: the next timed drain takes it (a
        // wakeup per exit was half the daemon's wakeups on a host starting ~100 processes/s).
        send_event(FLAG_EVENT_EXIT, u64::from(BPF_RB_NO_WAKEUP));
    }
    0
}
