//! The kernel's own record of new executable mappings, in time order with the samples: one
//! dummy software perf event per CPU with `mmap2` records (what `perf record` uses to follow
//! `dlopen`), timestamped on `CLOCK_MONOTONIC` like `bpf_ktime_get_ns`. Each record names the
//! file as the process saw it at `mmap` time, so a library unloaded a few milliseconds later
//! still gets its own mapping, where a read of `/proc/PID/maps` at the next drain would find
//! whatever is mapped by then.
//!
//! Memory: `RING_PAGES` pages per CPU, mapped at start (256 KiB per CPU). A ring that fills
//! between two drains loses records; the kernel says how many (counted).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use aya_obj::generated::{
    PERF_FLAG_FD_CLOEXEC, perf_event_attr, perf_event_header, perf_event_mmap_page,
    perf_event_sample_format, perf_event_type, perf_sw_ids, perf_type_id,
};

use crate::procfs::MapsLine;

/// Data pages of each CPU's ring (a power of two, as the kernel requires).
const RING_PAGES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MmapsError {
    #[error("perf_event_open of the mapping records on CPU {cpu}: {source}")]
    Open { cpu: u32, source: std::io::Error },
    #[error("mapping the ring of CPU {cpu}: {source}")]
    Map { cpu: u32, source: std::io::Error },
}

/// A new executable file mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmapRecord {
    pub pid: u32,
    /// `CLOCK_MONOTONIC` nanoseconds, comparable with the samples' `time_ns`.
    pub time_ns: u64,
    pub line: MapsLine,
}

/// One CPU's event and its mapped ring.
struct Ring {
    _fd: OwnedFd,
    base: *mut u8,
    len: usize,
    page: usize,
}

// SAFETY: the ring is a private shared mapping owned by this value; only `&mut self` reads it.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the region `map` returned; nothing refers to it after this.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The mapping records of every CPU.
pub struct Mmaps {
    rings: Vec<Ring>,
    lost: u64,
    malformed: u64,
    scratch: Vec<u8>,
}

impl Mmaps {
    /// Opens the events on `cpus` (needs `CAP_PERFMON`, as the sampler does).
    pub fn open(cpus: &[u32]) -> Result<Self, MmapsError> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let rings = cpus
            .iter()
            .map(|&cpu| Ring::open(cpu, page))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            rings,
            lost: 0,
            malformed: 0,
            scratch: Vec::new(),
        })
    }

    /// Records the kernel dropped for want of room, and records that did not decode.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.lost + self.malformed
    }

    /// Takes every record waiting, sorted by time.
    pub fn drain(&mut self) -> Vec<MmapRecord> {
        let mut out = Vec::new();
        for ring in &mut self.rings {
            ring.read(&mut self.scratch, |kind, body| match kind {
                k if k == perf_event_type::PERF_RECORD_MMAP2 as u32 => match parse_mmap2(body) {
                    Some(record) => out.push(record),
                    None => self.malformed += 1,
                },
                k if k == perf_event_type::PERF_RECORD_LOST as u32 => {
                    self.lost += read_u64(body, 8).unwrap_or(0);
                }
                _ => {}
            });
        }
        out.sort_by_key(|r| r.time_ns);
        out
    }
}

impl Ring {
    fn open(cpu: u32, page: usize) -> Result<Self, MmapsError> {
        // SAFETY: a plain C struct; all-zero is its "nothing asked" value.
        let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
        attr.type_ = perf_type_id::PERF_TYPE_SOFTWARE as u32;
        attr.config = perf_sw_ids::PERF_COUNT_SW_DUMMY as u64;
        attr.size = size_of::<perf_event_attr>() as u32;
        attr.sample_type = perf_event_sample_format::PERF_SAMPLE_TID as u64
            | perf_event_sample_format::PERF_SAMPLE_TIME as u64;
        attr.set_mmap(1);
        attr.set_mmap2(1);
        attr.set_sample_id_all(1);
        attr.set_use_clockid(1);
        attr.clockid = libc::CLOCK_MONOTONIC;
        // Never woken: the pipeline drains on its own timer.
        attr.set_watermark(1);
        attr.__bindgen_anon_2.wakeup_watermark = u32::MAX / 2;
        // SAFETY: the syscall reads `attr`; the fd it returns is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &raw const attr,
                -1,
                cpu,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(MmapsError::Open {
                cpu,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh fd returned by the kernel, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let len = page * (1 + RING_PAGES);
        // SAFETY: mapping the event's ring as the perf ABI describes; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(MmapsError::Map {
                cpu,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            _fd: fd,
            base: base.cast(),
            len,
            page,
        })
    }

    /// Calls `each(type, body)` for every record between the tail and the head, then frees them.
    fn read(&mut self, scratch: &mut Vec<u8>, mut each: impl FnMut(u32, &[u8])) {
        // The mapping is page-aligned, so the control page is aligned for its u64 fields.
        #[allow(
            clippy::cast_ptr_alignment,
            reason = "mmap returns page-aligned memory"
        )]
        let meta = self.base.cast::<perf_event_mmap_page>();
        // SAFETY: the head and tail are u64 fields of the mapped control page, shared with the
        // kernel; read and written atomically as the perf ABI asks (acquire the head, release
        // the tail).
        let (head_ref, tail_ref) = unsafe {
            (
                AtomicU64::from_ptr(&raw mut (*meta).data_head),
                AtomicU64::from_ptr(&raw mut (*meta).data_tail),
            )
        };
        let head = head_ref.load(Ordering::Acquire);
        let tail = tail_ref.load(Ordering::Relaxed);
        // SAFETY: the data area follows the control page, to the end of the mapping.
        let data =
            unsafe { std::slice::from_raw_parts(self.base.add(self.page), self.len - self.page) };
        let tail = walk(data, tail, head, scratch, &mut each);
        tail_ref.store(tail, Ordering::Release);
    }
}

/// Calls `each(type, body)` for every record of the ring `data` between positions `tail` and
/// `head` (which wrap); returns the new tail. A header that cannot be right (shorter than
/// itself, longer than what is left) ends the walk at `head`: the rest is dropped, not looped
/// on.
pub(crate) fn walk(
    data: &[u8],
    mut tail: u64,
    head: u64,
    scratch: &mut Vec<u8>,
    each: &mut impl FnMut(u32, &[u8]),
) -> u64 {
    let header_len = size_of::<perf_event_header>() as u64;
    if (data.len() as u64) < header_len {
        return head;
    }
    while head.wrapping_sub(tail) >= header_len {
        copy_wrapped(data, tail, header_len as usize, scratch);
        let kind = read_u32(scratch, 0).unwrap_or(0);
        let record_len = u64::from(u16::from_ne_bytes([scratch[6], scratch[7]]));
        if record_len < header_len
            || head.wrapping_sub(tail) < record_len
            || record_len > data.len() as u64
        {
            return head;
        }
        copy_wrapped(data, tail, record_len as usize, scratch);
        each(kind, &scratch[header_len as usize..]);
        tail = tail.wrapping_add(record_len);
    }
    tail
}

/// `len` bytes (at most the ring's size) of the ring `data` from position `at` (which wraps)
/// into `out`.
fn copy_wrapped(data: &[u8], at: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let size = data.len();
    if size == 0 {
        return;
    }
    let len = len.min(size);
    let start = (at % size as u64) as usize;
    let first = len.min(size - start);
    out.extend_from_slice(&data[start..start + first]);
    out.extend_from_slice(&data[..len - first]);
}

fn read_u32(body: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(body: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

/// An `mmap2` record's body: pid, tid, addr, len, pgoff, maj, min, ino, `ino_generation`, prot,
/// flags, the file name (NUL-padded to 8 bytes), then the sample id (pid, tid, time).
pub(crate) fn parse_mmap2(body: &[u8]) -> Option<MmapRecord> {
    let pid = read_u32(body, 0)?;
    let addr = read_u64(body, 8)?;
    let len = read_u64(body, 16)?;
    let offset = read_u64(body, 24)?;
    let (major, minor) = (read_u32(body, 32)?, read_u32(body, 36)?);
    let inode = read_u64(body, 40)?;
    let name = body.get(64..body.len().checked_sub(16)?)?;
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    let time_ns = read_u64(body, body.len() - 8)?;
    Some(MmapRecord {
        pid,
        time_ns,
        line: MapsLine {
            start: addr,
            end: addr.checked_add(len)?,
            offset,
            dev: u64::from(major) << 32 | u64::from(minor),
            inode,
            path: String::from_utf8_lossy(name).into_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_copies_join_the_two_ends() {
        let data: Vec<u8> = (0..16).collect();
        let mut out = Vec::new();
        copy_wrapped(&data, 14, 4, &mut out);
        assert_eq!(out, [14, 15, 0, 1]);
        copy_wrapped(&data, 16 + 3, 2, &mut out);
        assert_eq!(out, [3, 4]);
    }

    #[test]
    fn mmap2_bodies_decode_and_short_ones_do_not() {
        let mut body = Vec::new();
        for v in [7u32, 8] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [0x7f00_0000_1000u64, 0x2000, 0x1000] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [0xfeu32, 1] {
            body.extend_from_slice(&v.to_ne_bytes()); // maj, min
        }
        body.extend_from_slice(&42u64.to_ne_bytes()); // ino
        body.extend_from_slice(&[0; 16]); // ino_generation, prot, flags
        body.extend_from_slice(b"/lib/x.so\0\0\0\0\0\0\0");
        for v in [7u32, 8] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        body.extend_from_slice(&123_456u64.to_ne_bytes());
        let r = parse_mmap2(&body).unwrap();
        assert_eq!(r.pid, 7);
        assert_eq!(r.time_ns, 123_456);
        assert_eq!(r.line.start, 0x7f00_0000_1000);
        assert_eq!(r.line.end, 0x7f00_0000_3000);
        assert_eq!(r.line.offset, 0x1000);
        assert_eq!(r.line.inode, 42);
        assert_eq!(r.line.dev, 0xfe << 32 | 1);
        assert_eq!(r.line.path, "/lib/x.so");
        assert!(parse_mmap2(&body[..60]).is_none());
    }
}
