//! Types shared by the eBPF sampler (kernel side) and the daemon (user side).
//!
//! Every type is `#[repr(C)]` with explicit padding and a compile-time size check, so both sides
//! agree on the layout without `bool`, `usize` or `Option`.
#![no_std]

/// Deepest stack (kernel or user) one sample records. This is the kernel's default
/// `perf_event_max_stack` and the depth `bpf_get_stack` walks without a sysctl change.
pub const MAX_FRAMES: usize = 127;

/// Length of a task's `comm`, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// `SampleHeader::flags`: the kernel stack walk failed (the sample is still delivered).
pub const FLAG_KERNEL_STACK_FAILED: u32 = 1;
/// `SampleHeader::flags`: the user stack walk failed (the sample is still delivered).
pub const FLAG_USER_STACK_FAILED: u32 = 1 << 1;

/// `SampleHeader::flags`: not a sample but a process event: the process (tgid) replaced its image
/// with `execve`. Sent in the same ring buffer as the samples, so user space sees it in order:
/// samples before it belong to the old image, samples after it to the new one.
pub const FLAG_EVENT_EXEC: u32 = 1 << 8;
/// `SampleHeader::flags`: not a sample but a process event: the thread group leader exited.
pub const FLAG_EVENT_EXIT: u32 = 1 << 9;

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
    pub frames: [u64; 2 * MAX_FRAMES],
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
}

/// Number of `Counter` slots.
pub const COUNTER_SLOTS: u32 = 11;

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
        }
    }
}

// The layouts are part of the kernel/user contract: any change must be deliberate.
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 56);
const _: () = assert!(core::mem::size_of::<SampleRecord>() == 56 + 2 * 8 * MAX_FRAMES);
const _: () = assert!(core::mem::size_of::<AggregateKey>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields and arrays of them, no implicit padding (sizes are
    // asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SampleHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AggregateKey {}
}
