//! The user stack walker of `--unwind tables`: unwinds with `.eh_frame` rows the daemon built
//! (`profiler_common::UnwindRow`) instead of frame pointers, so code built without them
//! (Debian's python3, glibc) gets whole stacks.
//!
//! Maps (filled by the daemon):
//! - `UNWIND_PROCS`: tgid → `UnwindProcess`, the process's file mappings that have tables, sorted
//!   by start. One hash lookup per sample, then a bounded scan of the value per frame. Chosen over
//!   the peers' LPM trie keyed by (tgid, address): the daemon writes one value per process instead
//!   of splitting every mapping into prefixes, removing a process is one delete, and a scan of
//!   10-30 entries in one value is cheaper than a trie lookup (a helper call) per frame.
//! - `UNWIND_ROWS`: every loaded module's rows, one after another; a mapping names its table's
//!   first row and row count. Sized by the daemon (`--unwind-table-memory`).
//!
//! - `UNWIND_CACHE`: per CPU, the rows found lately by (table load, pc): a hit skips the search.
//!
//! Per frame: find the mapping, `pc = addr - bias` (minus one for a return address, not for the
//! leaf nor after a signal frame), the row from the cache or by binary search
//! (`UNWIND_SEARCH_STEPS`), apply the row. A frame
//! outside every mapping with a table (JIT code, the vDSO) takes one guarded frame-pointer step.
//! A process without tables falls back to the frame-pointer stack of `bpf_get_stack`.

// The verifier and per-sample cost want everything inlined into the sampler program.
#![allow(
    clippy::inline_always,
    reason = "the verifier wants everything inlined into the program"
)]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, pt_regs},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::PerfEventContext,
};
use profiler_common::{
    CFA_DEREF_RBP, CFA_DEREF_RSP, CFA_END, CFA_PLT, CFA_RBP_OFFSET, CFA_RSP_OFFSET, CFA_SIGNAL,
    Counter, MAX_USER_FRAMES, RBP_AT_CFA_OFFSET, RBP_AT_RBP_OFFSET, RBP_AT_RSP_OFFSET,
    RBP_UNCHANGED, RECORD_FRAMES, UNWIND_CACHE_SLOTS, UNWIND_MAX_FRAMES, UNWIND_MAX_MAPPINGS,
    UNWIND_SEARCH_STEPS, UnwindCacheEntry, UnwindMapping, UnwindProcess, UnwindRow,
};

use crate::sampler::{bump, sampled_in_user_mode, sampled_regs};

/// Processes with tables (tgid → mappings). The loader sizes it; values (5 KiB) are allocated
/// when inserted.
#[map]
static UNWIND_PROCS: HashMap<u32, UnwindProcess> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Rows of every loaded table. The loader sizes it (`--unwind-table-memory`). Memory-mappable:
/// the daemon writes tables straight into it, not one syscall per row.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Rows found lately, per CPU, direct-mapped by (table, pc): most frames of a sample are return
/// addresses the last samples had too. Keys name the table's load, so an evicted table's rows
/// are never served for another.
#[map]
static UNWIND_CACHE: PerCpuArray<UnwindCacheEntry> =
    PerCpuArray::with_max_entries(UNWIND_CACHE_SLOTS, 0);

/// The registers the walker follows.
#[repr(C)]
#[derive(Clone, Copy)]
struct Regs {
    rip: u64,
    rsp: u64,
    rbp: u64,
}

/// What the walk ended with.
pub(crate) enum Walk {
    /// The process has no tables: use the frame-pointer stack.
    NoTables,
    /// `len` frames written; `truncated` when the stack was cut short.
    Frames { len: usize, truncated: bool },
}

/// The user registers at the sample: the perf event's when it hit user mode, else the task's
/// saved user registers (a sample in a syscall or page fault).
#[inline(always)]
fn user_regs(ctx: &PerfEventContext) -> Option<Regs> {
    let (rip, rsp, rbp) = if sampled_in_user_mode(ctx) {
        sampled_regs(ctx)
    } else {
        // SAFETY: the current task's saved user registers, read with probe reads.
        unsafe {
            let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
            if regs.is_null() {
                return None;
            }
            (
                bpf_probe_read_kernel(&raw const (*regs).rip).ok()?,
                bpf_probe_read_kernel(&raw const (*regs).rsp).ok()?,
                bpf_probe_read_kernel(&raw const (*regs).rbp).ok()?,
            )
        }
    };
    if rip == 0 || rsp == 0 {
        return None;
    }
    Some(Regs { rip, rsp, rbp })
}

/// The mapping of `procs` holding `addr`: a linear scan over the sorted starts, stopping at the
/// first start above `addr`. The scan's index is the loop counter, so the verifier checks each
/// iteration once (processes map 10-30 files with tables). A branch-free halving like
/// `find_row`'s was tried: the verifier then processed a third more instructions (325k against
/// 246k on Linux 6.18).
#[inline(always)]
fn find_mapping(procs: &UnwindProcess, addr: u64) -> Option<UnwindMapping> {
    let n = procs.len as usize;
    for i in 0..UNWIND_MAX_MAPPINGS {
        if i >= n {
            break;
        }
        let m = procs.mappings.get(i)?;
        if m.start > addr {
            break;
        }
        if addr < m.end {
            return Some(*m);
        }
    }
    None
}

/// The row of `mapping`'s table for row pc `pc`: the documented search, without a branch on
/// the comparisons. With branches the verifier follows every outcome of every step apart (the
/// window's bounds differ on each path, so no two states are alike): 2^23 paths, which Linux
/// 6.18 refuses (a million instructions) where earlier kernels happened to prune them.
#[inline(always)]
fn find_row(mapping: &UnwindMapping, pc: u32) -> Option<UnwindRow> {
    if mapping.rows == 0 {
        return None;
    }
    let (mut base, mut n) = (0u32, mapping.rows);
    for _ in 0..UNWIND_SEARCH_STEPS {
        let half = n / 2;
        let row = UNWIND_ROWS.get(mapping.first_row.wrapping_add(base + half))?;
        // 1 when the row starts above `pc`: the sign of the 64-bit difference.
        let above = u64::from(pc).wrapping_sub(u64::from(row.pc)) >> 63;
        base += half * (1 - opaque(above) as u32);
        n -= half;
    }
    let row = UNWIND_ROWS.get(mapping.first_row.wrapping_add(base))?;
    (row.pc <= pc).then_some(*row)
}

/// `value`, through a volatile stack slot: the compiler cannot tell it is 0 or 1, so arithmetic
/// on it stays arithmetic (it would otherwise turn it back into a branch; BPF has no
/// conditional move).
#[inline(always)]
fn opaque(value: u64) -> u64 {
    let mut slot = value;
    // SAFETY: a read and a write of a live local.
    unsafe {
        core::ptr::write_volatile(&raw mut slot, value);
        core::ptr::read_volatile(&raw const slot)
    }
}

/// `find_row` through the row cache.
#[inline(always)]
fn cached_row(mapping: &UnwindMapping, pc: u32) -> Option<UnwindRow> {
    let key = (u64::from(mapping.table) << 32) | u64::from(pc);
    // Fibonacci hashing of the key; the slot count is a power of two.
    let slot = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as u32 & (UNWIND_CACHE_SLOTS - 1);
    let entry = UNWIND_CACHE.get_ptr_mut(slot);
    if let Some(entry) = entry {
        // SAFETY: this CPU's slot; perf-event programs do not nest on one CPU.
        let entry = unsafe { &mut *entry };
        if entry.key == key {
            return Some(entry.row);
        }
        let row = find_row(mapping, pc)?;
        entry.key = key;
        entry.row = row;
        return Some(row);
    }
    find_row(mapping, pc)
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: a probe read of user memory: faults return an error, never crash.
    unsafe { bpf_probe_read_user(addr as *const u64).ok() }
}

#[inline(always)]
fn add(base: u64, offset: i64) -> u64 {
    base.wrapping_add_signed(offset)
}

/// Applies `row` to `regs` at live pc `rip`: the caller's registers, and whether the caller's pc
/// is exact (after a signal frame). `None` when the rule cannot be applied.
#[inline(always)]
fn step(row: &UnwindRow, regs: Regs) -> Option<(Regs, bool)> {
    let (a, b) = row.cfa_pair();
    let (a, b) = (i64::from(a), i64::from(b));
    let offset = i64::from(row.cfa_offset);
    let mut exact = false;
    let cfa = match row.cfa_kind {
        CFA_RSP_OFFSET => add(regs.rsp, offset),
        CFA_RBP_OFFSET => add(regs.rbp, offset),
        CFA_PLT => {
            let extra = if (regs.rip & 15) as i64 >= b { 8 } else { 0 };
            add(regs.rsp, a + extra)
        }
        CFA_DEREF_RSP => add(read_user(add(regs.rsp, a))?, b),
        CFA_DEREF_RBP => add(read_user(add(regs.rbp, a))?, b),
        CFA_SIGNAL => {
            exact = true;
            read_user(add(regs.rsp, a))?
        }
        _ => return None,
    };
    let rip = if row.cfa_kind == CFA_SIGNAL {
        read_user(add(regs.rsp, b))?
    } else {
        read_user(cfa.wrapping_sub(8))?
    };
    let rbp_offset = i64::from(row.rbp_offset);
    let rbp = match row.rbp_kind {
        RBP_UNCHANGED => regs.rbp,
        RBP_AT_CFA_OFFSET => read_user(add(cfa, rbp_offset))?,
        RBP_AT_RSP_OFFSET => read_user(add(regs.rsp, rbp_offset))?,
        RBP_AT_RBP_OFFSET => read_user(add(regs.rbp, rbp_offset))?,
        _ => 0,
    };
    Some((Regs { rip, rsp: cfa, rbp }, exact))
}

/// A guarded frame-pointer step: the frame pointer must lie above the stack pointer.
#[inline(always)]
fn fp_step(regs: Regs) -> Option<Regs> {
    if regs.rbp <= regs.rsp || regs.rbp & 7 != 0 {
        return None;
    }
    let rip = read_user(regs.rbp.wrapping_add(8))?;
    let rbp = read_user(regs.rbp)?;
    Some(Regs {
        rip,
        rsp: regs.rbp.wrapping_add(16),
        rbp,
    })
}

/// The walk's state, shared with the per-frame callback of `bpf_loop`.
#[repr(C)]
struct State {
    procs: *const UnwindProcess,
    frames: *mut [u64; RECORD_FRAMES],
    regs: Regs,
    /// Frames written so far after `first`.
    len: u64,
    first: u64,
    /// The current pc is exact (the leaf, or after a signal frame): no `- 1` on lookup.
    exact: u64,
    /// `OUTCOME_*`.
    outcome: u64,
}

const OUTCOME_RUNNING: u64 = 0;
const OUTCOME_COMPLETE: u64 = 1;
const OUTCOME_TRUNCATED: u64 = 2;

/// Walks the user stack of the current task into `frames[first..]` (leaf first). The frames
/// are stepped by `bpf_loop` (Linux 5.17+): the verifier checks one step, not every frame.
#[inline(always)]
pub(crate) fn walk(
    ctx: &PerfEventContext,
    tgid: u32,
    frames: *mut [u64; RECORD_FRAMES],
    first: usize,
) -> Walk {
    let Some(procs) = UNWIND_PROCS.get_ptr(tgid) else {
        bump(Counter::UnwindNoTables);
        return Walk::NoTables;
    };
    let Some(regs) = user_regs(ctx) else {
        bump(Counter::UnwindNoTables);
        return Walk::NoTables;
    };
    let mut state = State {
        procs,
        frames,
        regs,
        len: 0,
        first: first as u64,
        exact: 1,
        outcome: OUTCOME_RUNNING,
    };
    // SAFETY: `frame_step` has the callback signature `bpf_loop` wants and only touches `state`
    // (a live stack object) through the pointer it is given.
    unsafe {
        bpf_loop(
            UNWIND_MAX_FRAMES as u32,
            frame_step as *mut c_void,
            (&raw mut state).cast(),
            0,
        );
    }
    let truncated = state.outcome != OUTCOME_COMPLETE;
    if state.outcome == OUTCOME_RUNNING {
        bump(Counter::UnwindTruncated);
    }
    Walk::Frames {
        len: (state.len as usize) & MAX_USER_FRAMES,
        truncated,
    }
}

/// One frame of the walk: records the pc, finds its row and steps to the caller. Returns 1 to
/// stop the loop.
#[inline(never)]
extern "C" fn frame_step(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: `state` is the `State` that `walk` passed to `bpf_loop`.
    let state = unsafe { &mut *state.cast::<State>() };
    i64::from(!step_state(index, state))
}

/// `frame_step`'s body for frame `index`: false when the walk ends (outcome set). The frame's
/// slot comes from `bpf_loop`'s index, not from a count in `state`: the verifier knows nothing of
/// the index, so it checks one step for all; a count would be a constant it follows per frame.
#[inline(always)]
fn step_state(index: u64, state: &mut State) -> bool {
    let regs = state.regs;
    let slot = state.first + index;
    if index >= UNWIND_MAX_FRAMES as u64
        || slot >= RECORD_FRAMES as u64
        || state.procs.is_null()
        || state.frames.is_null()
    {
        state.outcome = OUTCOME_TRUNCATED;
        return false;
    }
    // SAFETY: `frames` is this CPU's scratch record (checked non-null above), `slot` is in
    // bounds, `procs` a map value (checked non-null) read only.
    let procs = unsafe {
        (*state.frames)[slot as usize] = regs.rip;
        &*state.procs
    };
    state.len = index + 1;
    let lookup = if state.exact != 0 {
        regs.rip
    } else {
        regs.rip.wrapping_sub(1)
    };
    let next = if let Some(mapping) = find_mapping(procs, lookup) {
        let pc = lookup.wrapping_sub(mapping.bias);
        let row = if pc >> 32 == 0 {
            cached_row(&mapping, pc as u32)
        } else {
            None
        };
        let Some(row) = row else {
            bump(Counter::UnwindBadRule);
            state.outcome = OUTCOME_TRUNCATED;
            return false;
        };
        if row.cfa_kind == CFA_END {
            bump(Counter::UnwindComplete);
            state.outcome = OUTCOME_COMPLETE;
            return false;
        }
        let Some(next) = step(&row, regs) else {
            bump(Counter::UnwindBadRule);
            state.outcome = OUTCOME_TRUNCATED;
            return false;
        };
        next
    } else {
        bump(Counter::UnwindFpStep);
        let Some(next) = fp_step(regs) else {
            bump(Counter::UnwindTruncated);
            state.outcome = OUTCOME_TRUNCATED;
            return false;
        };
        (next, false)
    };
    let (regs, exact) = next;
    state.regs = regs;
    state.exact = u64::from(exact);
    if regs.rip == 0 {
        bump(Counter::UnwindComplete);
        state.outcome = OUTCOME_COMPLETE;
        return false;
    }
    true
}
