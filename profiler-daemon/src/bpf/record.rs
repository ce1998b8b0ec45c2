//! Decoding one ring buffer record into an owned sample.

use profiler_common::{COMM_LEN, MAX_FRAMES, MAX_USER_FRAMES, SampleHeader, SampleRecord};

/// Process lifecycle events delivered in the sample stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEvent {
    Exec,
    Exit,
    /// A new mapping was given `[start, end)` (whatever user space knew mapped there is gone).
    NewArea {
        start: u64,
        end: u64,
    },
}

/// One sample as the kernel took it: frames are leaf first, as raw instruction pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub time_ns: u64,
    pub cpu: u32,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
}

impl RawSample {
    /// Decodes a record; `None` when the bytes are not one `SampleRecord` (never expected from our
    /// own program; the caller counts it).
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<SampleHeader>() {
            return None;
        }
        // SAFETY: the length is checked above and SampleHeader is plain old data (any bit pattern
        // is valid); read_unaligned copes with any alignment.
        let header: SampleHeader =
            unsafe { bytes.as_ptr().cast::<SampleHeader>().read_unaligned() };
        let SampleHeader {
            tgid,
            tid,
            cgroup_id,
            time_ns,
            cpu,
            kernel_len,
            user_len,
            flags,
            comm,
        } = header;
        let kernel_len = kernel_len as usize;
        let user_len = user_len as usize;
        if kernel_len > MAX_FRAMES
            || user_len > MAX_USER_FRAMES
            || bytes.len() < SampleRecord::size(kernel_len, user_len)
        {
            return None;
        }
        let mut kernel: Vec<u64> = bytes
            [size_of::<SampleHeader>()..SampleRecord::size(kernel_len, user_len)]
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Some(Self {
            tgid,
            tid,
            cgroup_id,
            time_ns,
            cpu,
            flags,
            comm,
            user: kernel.split_off(kernel_len),
            kernel,
        })
    }

    /// A process event (exec, exit, new area), not a sample.
    #[must_use]
    pub fn event(&self) -> Option<ProcessEvent> {
        if self.flags & profiler_common::FLAG_EVENT_EXEC != 0 {
            Some(ProcessEvent::Exec)
        } else if self.flags & profiler_common::FLAG_EVENT_EXIT != 0 {
            Some(ProcessEvent::Exit)
        } else if self.flags & profiler_common::FLAG_EVENT_NEW_AREA != 0 {
            // A record without its range covers nothing (still an event, never a sample).
            let start = self.user.first().copied().unwrap_or(0);
            let len = self.user.get(1).copied().unwrap_or(0);
            Some(ProcessEvent::NewArea {
                start,
                end: start.saturating_add(len),
            })
        } else {
            None
        }
    }

    /// The thread's name (comm) as text.
    #[must_use]
    pub fn thread_name(&self) -> String {
        comm_to_string(&self.comm)
    }
}

/// A NUL-padded kernel comm as text.
#[must_use]
pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use profiler_common::RECORD_FRAMES;

    use super::*;

    fn record(kernel_len: u32, user_len: u32) -> SampleRecord {
        let mut record = SampleRecord {
            header: SampleHeader {
                tgid: 10,
                tid: 11,
                cgroup_id: 12,
                time_ns: 13,
                cpu: 1,
                kernel_len,
                user_len,
                flags: 0,
                comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            },
            frames: [7; RECORD_FRAMES],
        };
        record.frames[0] = 0xffff_0001;
        record.frames[1] = 0xffff_0002;
        record
    }

    fn bytes(record: &SampleRecord, len: usize) -> &[u8] {
        // SAFETY: viewing a POD value as bytes, within its size.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), len) }
    }

    #[test]
    fn parses_a_variable_length_record() {
        let r = record(2, 3);
        let sample = RawSample::parse(bytes(&r, SampleRecord::size(2, 3))).unwrap();
        assert_eq!(sample.tgid, 10);
        assert_eq!(sample.kernel, vec![0xffff_0001, 0xffff_0002]);
        assert_eq!(sample.user, vec![7, 7, 7]);
        assert_eq!(sample.thread_name(), "worker");
    }

    #[test]
    fn rejects_truncated_or_oversized_records() {
        let r = record(2, 3);
        assert!(RawSample::parse(bytes(&r, SampleRecord::size(2, 3) - 8)).is_none());
        assert!(RawSample::parse(bytes(&r, 20)).is_none());
        let r = record(2, 500);
        assert!(RawSample::parse(bytes(&r, size_of::<SampleRecord>())).is_none());
    }
}
