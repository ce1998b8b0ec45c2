//! Types shared by the eBPF sampler (kernel side) and the daemon (user side).
//!
//! Every type is `#[repr(C)]` with explicit padding and a compile-time size check, so both sides
//! agree on the layout without `bool`, `usize` or `Option`.
#![no_std]

/// Deepest kernel stack, and deepest frame-pointer user stack, one sample records. This is the
/// kernel's default `perf_event_max_stack` and the depth `bpf_get_stack` walks without a sysctl
/// change.
pub const MAX_FRAMES: usize = 127;

/// Deepest user stack the table walker records (it is not bound by `perf_event_max_stack`).
/// One less than a power of two, so that a mask bounds a length for the verifier.
pub const MAX_USER_FRAMES: usize = 255;

/// Frames a `SampleRecord` holds: a kernel stack, then a user stack.
pub const RECORD_FRAMES: usize = MAX_FRAMES + MAX_USER_FRAMES;

/// Length of a task's `comm`, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// `SampleHeader::flags`: the kernel stack walk failed (the sample is still delivered).
pub const FLAG_KERNEL_STACK_FAILED: u32 = 1;
/// `SampleHeader::flags`: the user stack walk failed (the sample is still delivered).
pub const FLAG_USER_STACK_FAILED: u32 = 1 << 1;

/// `SampleHeader::flags`: the user stack was cut short (walker step limit, or a frame the walker
/// could not follow; for a frame-pointer stack, one that fills the record): the outermost frames
/// are missing. User space shows a `[truncated]` frame at the root.
pub const FLAG_USER_TRUNCATED: u32 = 1 << 2;
/// `SampleHeader::flags`: the user stack was walked with unwind tables (`--unwind tables`).
pub const FLAG_USER_TABLES: u32 = 1 << 3;

/// `SampleHeader::flags`: not a sample but a process event: the process (tgid) replaced its image
/// with `execve`. Sent in the same ring buffer as the samples, so user space sees it in order:
/// samples before it belong to the old image, samples after it to the new one.
pub const FLAG_EVENT_EXEC: u32 = 1 << 8;
/// `SampleHeader::flags`: not a sample but a process event: the thread group leader exited.
pub const FLAG_EVENT_EXIT: u32 = 1 << 9;
/// `SampleHeader::flags`: not a sample but a process event: the kernel chose a free address range
/// for a new mapping of the process (`mmap` without `MAP_FIXED`, as `dlopen` does first); the
/// record's two user "frames" are the range's start and length. A range over a file user space
/// still thinks mapped means that file was unmapped (a `dlclose`): user space ends the process's
/// image there, so that the library loaded at the same address is named as itself.
pub const FLAG_EVENT_NEW_AREA: u32 = 1 << 10;

/// Fixed part of one sample sent from the kernel (also the whole of a process event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleHeader {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) when the sample was taken.
    pub time_ns: u64,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Valid entries in `SampleRecord::kernel`.
    pub kernel_len: u32,
    /// Valid entries in `SampleRecord::user`.
    pub user_len: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The sampled thread's `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// One sample: a header, then `kernel_len` kernel frames and `user_len` user frames (each leaf
/// first). Only `SampleRecord::size(kernel_len, user_len)` bytes of it go into the ring buffer:
/// typical stacks are 10-30 frames, so the variable length saves most of the ring buffer.
///
/// The frames are instruction pointers, not stack ids, so that a later unwinder of our own (for
/// code without frame pointers) fills the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleRecord {
    pub header: SampleHeader,
    pub frames: [u64; RECORD_FRAMES],
}

impl SampleRecord {
    /// Bytes of a record with this many frames.
    #[must_use]
    pub const fn size(kernel_len: usize, user_len: usize) -> usize {
        core::mem::size_of::<SampleHeader>() + (kernel_len + user_len) * 8
    }
}

/// Key of the in-kernel aggregation variant (`sample_aggregate`), kept to measure it against the
/// ring buffer variant (see the README's "Sampling design" figures).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    /// Stack id in the `STACKS` map, or negative when the walk failed.
    pub kernel_stack_id: i32,
    /// Stack id in the `STACKS` map, or negative when the walk failed.
    pub user_stack_id: i32,
    pub comm: [u8; COMM_LEN],
}

/// Indices into the `COUNTERS` per-CPU array. Each names one outcome of a sample; the daemon
/// sums them over CPUs and reports every loss path.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The program ran (one per perf event).
    Runs = 0,
    /// A sample was handed to user space (ring buffer) or aggregated (map).
    Emitted = 1,
    /// The CPU was idle (pid 0).
    Idle = 2,
    /// The task was not selected by the pid filter.
    FilteredOut = 3,
    /// The ring buffer had no room: the sample is lost.
    RingBufFull = 4,
    /// `bpf_get_stack` failed for the kernel stack (sample kept, kernel part empty).
    KernelStackFailed = 5,
    /// `bpf_get_stack` failed for the user stack (sample kept, user part empty).
    UserStackFailed = 6,
    /// Aggregation variant: the counts map was full; the sample is lost.
    AggregateMapFull = 7,
    /// Aggregation variant: a stack id collided in the stack map; that stack is lost.
    StackCollision = 8,
    /// Process events (exec, exit) sent.
    Events = 9,
    /// Process events lost because the ring buffer was full.
    EventsLost = 10,
    /// Table walker: the user stack reached its outermost frame (`CFA_END`, or a zero return
    /// address).
    UnwindComplete = 11,
    /// Table walker: the user stack was cut short (step limit, a bad frame): flagged truncated.
    UnwindTruncated = 12,
    /// Table walker: the process has no tables loaded: today's frame-pointer stack instead.
    UnwindNoTables = 13,
    /// Table walker: a frame outside every mapping with a table, stepped by frame pointer.
    UnwindFpStep = 14,
    /// Table walker: a row without a usable rule (`CFA_INVALID`, or an unreadable CFA).
    UnwindBadRule = 15,
}

/// Number of `Counter` slots.
pub const COUNTER_SLOTS: u32 = 16;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Runs,
        Counter::Emitted,
        Counter::Idle,
        Counter::FilteredOut,
        Counter::RingBufFull,
        Counter::KernelStackFailed,
        Counter::UserStackFailed,
        Counter::AggregateMapFull,
        Counter::StackCollision,
        Counter::Events,
        Counter::EventsLost,
        Counter::UnwindComplete,
        Counter::UnwindTruncated,
        Counter::UnwindNoTables,
        Counter::UnwindFpStep,
        Counter::UnwindBadRule,
    ];

    /// Stable `snake_case` name, used in logs, summaries and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Runs => "runs",
            Counter::Emitted => "emitted",
            Counter::Idle => "idle",
            Counter::FilteredOut => "filtered_out",
            Counter::RingBufFull => "ringbuf_full",
            Counter::KernelStackFailed => "kernel_stack_failed",
            Counter::UserStackFailed => "user_stack_failed",
            Counter::AggregateMapFull => "aggregate_map_full",
            Counter::StackCollision => "stack_collision",
            Counter::Events => "events",
            Counter::EventsLost => "events_lost",
            Counter::UnwindComplete => "unwind_complete",
            Counter::UnwindTruncated => "unwind_truncated",
            Counter::UnwindNoTables => "unwind_no_tables",
            Counter::UnwindFpStep => "unwind_fp_step",
            Counter::UnwindBadRule => "unwind_bad_rule",
        }
    }
}

/// Most rows one module's unwind table may hold. `ClickHouse`, the largest binary the peers
/// report, has 2.79M; anything beyond this is rejected by the daemon rather than searched.
pub const UNWIND_MAX_ROWS: u32 = 1 << 22;
/// Iterations of `UnwindRow`'s binary search that always suffice for `UNWIND_MAX_ROWS` rows
/// (`ceil(log2(UNWIND_MAX_ROWS + 1))`): the BPF walker's loop bound.
pub const UNWIND_SEARCH_STEPS: u32 = 23;

/// `UnwindRow::cfa_kind`: no usable rule here (a gap between functions, or a rule the walker
/// cannot apply). Zero, so that an all-zero (unwritten) map slot reads as invalid.
pub const CFA_INVALID: u8 = 0;
/// `UnwindRow::cfa_kind`: CFA = rsp + `cfa_offset`.
pub const CFA_RSP_OFFSET: u8 = 1;
/// `UnwindRow::cfa_kind`: CFA = rbp + `cfa_offset`.
pub const CFA_RBP_OFFSET: u8 = 2;
/// `UnwindRow::cfa_kind`: a PLT stub: CFA = rsp + a, plus 8 when `(rip & 15) >= b`, with
/// `(a, b) = cfa_pair()` (glibc's `rsp+8`, threshold 11). `rip` is the live instruction pointer,
/// not the row-relative pc: PLT entries are 16-byte aligned in memory.
pub const CFA_PLT: u8 = 3;
/// `UnwindRow::cfa_kind`: CFA = `*(rsp + a) + b`, `(a, b) = cfa_pair()` (stack realignment,
/// hand-written assembly).
pub const CFA_DEREF_RSP: u8 = 4;
/// `UnwindRow::cfa_kind`: CFA = `*(rbp + a) + b`, `(a, b) = cfa_pair()` (gcc's realigned frames
/// with a DRAP register saved below rbp).
pub const CFA_DEREF_RBP: u8 = 5;
/// `UnwindRow::cfa_kind`: a signal trampoline (`__restore_rt`): the interrupted frame's rsp is at
/// `rsp + a` and its rip at `rsp + b`, `(a, b) = cfa_pair()` (the kernel's `sigcontext`); rbp by
/// `rbp_kind`. The next frame's pc is exact: look it up without the return-address `- 1`.
pub const CFA_SIGNAL: u8 = 6;
/// `UnwindRow::cfa_kind`: the outermost frame (the return address is undefined: `_start`, a
/// thread's first frame in `clone3`): the stack is complete.
pub const CFA_END: u8 = 7;

/// `UnwindRow::rbp_kind`: the caller's rbp is the current rbp.
pub const RBP_UNCHANGED: u8 = 0;
/// `UnwindRow::rbp_kind`: the caller's rbp is at `CFA + rbp_offset`.
pub const RBP_AT_CFA_OFFSET: u8 = 1;
/// `UnwindRow::rbp_kind`: the caller's rbp is at `rsp + rbp_offset` (signal frames).
pub const RBP_AT_RSP_OFFSET: u8 = 2;
/// `UnwindRow::rbp_kind`: the caller's rbp is at `rbp + rbp_offset` (realigned frames).
pub const RBP_AT_RBP_OFFSET: u8 = 3;
/// `UnwindRow::rbp_kind`: the caller's rbp cannot be recovered; a caller whose CFA needs rbp
/// cannot be unwound.
pub const RBP_UNSUPPORTED: u8 = 4;

/// One row of a module's unwind table: the rule that holds from `pc` up to the next row's `pc`.
/// A table is sorted by `pc`, with no two rows equal but for `pc`; every function's last row is
/// followed by a `CFA_INVALID` row at its end unless the next function starts right there, and
/// the last row is always such a marker.
///
/// `pc` is a 32-bit offset from the table's base (its module's lowest executable virtual
/// address), not a 64-bit virtual address: that makes a row 12 bytes instead of 16, a quarter
/// less map memory for every table. 32 bits always suffice: x86-64 code models keep a module's
/// code within 2 GiB. The walker never sees the base: the daemon folds it into each mapping's
/// bias, so `pc = rip - (bias + base)` costs nothing more per step.
///
/// Applying a row (all reads from the current frame's registers, before any is replaced): the
/// CFA by `cfa_kind`; the caller's rip at CFA - 8 (`CFA_SIGNAL`: at `rsp + b`), its rsp the CFA,
/// its rbp by `rbp_kind`. 12 bytes, 4-byte aligned, no padding.
///
/// Lookup: the last row whose `pc` is at most the wanted pc, by this search over `n > 0` rows,
/// which narrows a window `[base, base + n)` holding the answer and takes the same steps
/// whatever the comparisons say (`UNWIND_SEARCH_STEPS` iterations suffice for
/// `UNWIND_MAX_ROWS` rows): `base = 0; repeat { half = n / 2; if rows[base + half].pc <= pc
/// { base += half }; n -= half }`; the row is `rows[base]`, none when its `pc` is above the
/// wanted one. (The BPF walker makes the `if` arithmetic: the verifier then checks one path
/// through the loop instead of one per outcome of every comparison.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// First pc the row holds for, as an offset from the table's base.
    pub pc: u32,
    /// `CFA_*`.
    pub cfa_kind: u8,
    /// `RBP_*`.
    pub rbp_kind: u8,
    /// Offset for `rbp_kind` (`RBP_AT_*`).
    pub rbp_offset: i16,
    /// `CFA_RSP_OFFSET`, `CFA_RBP_OFFSET`: the offset (frames can exceed 32 KiB). `CFA_PLT`,
    /// `CFA_DEREF_*`, `CFA_SIGNAL`: two 16-bit constants `(a, b)`, see `cfa_pair`.
    pub cfa_offset: i32,
}

impl UnwindRow {
    /// `cfa_offset` holding the pair `(a, b)`: `a` in the low 16 bits, `b` in the high 16 bits.
    #[must_use]
    pub const fn pack_pair(a: i16, b: i16) -> i32 {
        ((b as i32) << 16) | (a as u16 as i32)
    }

    /// The pair `(a, b)` of a `CFA_PLT`, `CFA_DEREF_*` or `CFA_SIGNAL` row.
    #[must_use]
    pub const fn cfa_pair(&self) -> (i16, i16) {
        (self.cfa_offset as i16, (self.cfa_offset >> 16) as i16)
    }

    /// The same rule (everything but `pc`): consecutive rows with the same rule are merged.
    #[must_use]
    pub const fn same_rule(&self, other: &UnwindRow) -> bool {
        self.cfa_kind == other.cfa_kind
            && self.rbp_kind == other.rbp_kind
            && self.rbp_offset == other.rbp_offset
            && self.cfa_offset == other.cfa_offset
    }
}

/// Most executable mappings with tables one process may have in `UnwindProcess` (the walker
/// scans them per frame). Beyond that the daemon keeps the lowest; frames elsewhere are stepped
/// by frame pointer.
pub const UNWIND_MAX_MAPPINGS: usize = 128;
/// Most user frames the table walker produces (as many as a record holds); a deeper stack is
/// flagged truncated. The frames are `bpf_loop` iterations: the verifier checks one, so the
/// bound costs nothing to verify.
pub const UNWIND_MAX_FRAMES: usize = MAX_USER_FRAMES;

/// One executable file mapping of a process whose module has a table in the rows array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Subtracted from an address in the mapping to give the row pc (load bias plus the table's
    /// base): `pc = addr - bias`.
    pub bias: u64,
    /// Index of the table's first row in the rows array.
    pub first_row: u32,
    /// Rows in the table.
    pub rows: u32,
    /// Id of this load of the table, unique for the daemon's life (never 0): the key of the
    /// walker's row cache together with the pc.
    pub table: u32,
    /// Zero (explicit padding).
    pub pad: u32,
}

/// Slots of the walker's per-CPU row cache (`UnwindCacheEntry`): a sample's frames are mostly
/// the same return addresses as the last sample's, and a cached row costs one read instead of a
/// binary search over a large table (each step a cache and TLB miss).
pub const UNWIND_CACHE_SLOTS: u32 = 4096;

/// One slot of the row cache: `key` is `table << 32 | pc` (0: empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindCacheEntry {
    pub key: u64,
    pub row: UnwindRow,
    /// Zero (explicit padding).
    pub pad: u32,
}

/// The value of the walker's per-process map: the process's mappings with tables, sorted by
/// `start`, non-overlapping; `len` of them are valid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProcess {
    pub len: u32,
    /// Zero (explicit padding).
    pub pad: u32,
    pub mappings: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

// The layouts are part of the kernel/user contract: any change must be deliberate.
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 56);
const _: () = assert!(core::mem::size_of::<SampleRecord>() == 56 + 8 * RECORD_FRAMES);
const _: () = assert!(core::mem::size_of::<AggregateKey>() == 40);
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 12);
const _: () = assert!(core::mem::align_of::<UnwindRow>() == 4);
const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 40);
const _: () = assert!(core::mem::size_of::<UnwindProcess>() == 8 + 40 * UNWIND_MAX_MAPPINGS);
const _: () = assert!(core::mem::size_of::<UnwindCacheEntry>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields and arrays of them, no implicit padding (sizes are
    // asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SampleHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AggregateKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindMapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindProcess {}
}
