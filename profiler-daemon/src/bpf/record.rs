//! Decoding one ring buffer record into an owned sample.

use profiler_common::{COMM_LEN, MAX_FRAMES, SampleHeader, SampleRecord};

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
        if bytes.len() < size_of::<SampleRecord>() {
            return None;
        }
        // SAFETY: the length is checked above and SampleRecord is plain old data (any bit pattern
        // is valid); read_unaligned copes with the ring buffer's 8-byte alignment.
        let record: SampleRecord = unsafe { bytes.as_ptr().cast::<SampleRecord>().read_unaligned() };
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
        } = record.header;
        let kernel_len = (kernel_len as usize).min(MAX_FRAMES);
        let user_len = (user_len as usize).min(MAX_FRAMES);
        Some(Self {
            tgid,
            tid,
            cgroup_id,
            time_ns,
            cpu,
            flags,
            comm,
            kernel: record.kernel[..kernel_len].to_vec(),
            user: record.user[..user_len].to_vec(),
        })
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
    use super::*;

    #[test]
    fn parses_a_record_and_bounds_lengths() {
        let mut record = SampleRecord {
            header: SampleHeader {
                tgid: 10,
                tid: 11,
                cgroup_id: 12,
                time_ns: 13,
                cpu: 1,
                kernel_len: 2,
                user_len: 500,
                flags: 0,
                comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            },
            kernel: [0; MAX_FRAMES],
            user: [7; MAX_FRAMES],
        };
        record.kernel[0] = 0xffff_1;
        record.kernel[1] = 0xffff_2;
        // SAFETY: viewing a POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const record).cast::<u8>(),
                size_of::<SampleRecord>(),
            )
        };
        let sample = RawSample::parse(bytes).unwrap();
        assert_eq!(sample.tgid, 10);
        assert_eq!(sample.kernel, vec![0xffff_1, 0xffff_2]);
        assert_eq!(sample.user.len(), MAX_FRAMES);
        assert_eq!(sample.thread_name(), "worker");
        assert!(RawSample::parse(&bytes[..100]).is_none());
    }
}
