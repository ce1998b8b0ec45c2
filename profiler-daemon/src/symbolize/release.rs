//! Gives back the pages of symbolized files the daemon has mapped. blazesym maps each file it
//! names (a large binary with DWARF: tens of MiB touched while parsing); those pages count in
//! the daemon's RSS until unmapped, though they are clean copies of the file. After each window
//! the daemon drops them from its mappings (`MADV_DONTNEED`): they stay in the page cache, so a
//! later lookup faults them back cheaply, and nothing is lost, because only private read-only
//! file mappings are touched (their content is the file's, with no changes of the daemon's).

use std::path::Path;

/// Call it only from the thread that symbolizes (see the safety note inside).
///
/// Drops the resident pages of this process's read-only file mappings, except those of
/// `keep` (the daemon's own executable: its code and constants are in use all the time) and of
/// shared libraries it runs on (anything executable is left alone). Returns the bytes given back
/// (the mappings' sizes, resident or not).
#[must_use]
pub(super) fn release_file_pages(keep: &Path) -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mappings: Vec<Mapping<'_>> = maps.lines().filter_map(Mapping::parse).collect();
    let executable_files: std::collections::HashSet<&str> = mappings
        .iter()
        .filter(|m| m.perms.contains('x'))
        .map(|m| m.path)
        .collect();
    let keep = keep.to_string_lossy();
    let mut released = 0;
    for m in &mappings {
        // blazesym maps files shared and read-only (`r--s`); private read-only (`r--p`) is
        // just as safe. Devices are left alone.
        if !(m.perms == "r--s" || m.perms == "r--p")
            || !m.path.starts_with('/')
            || m.path.starts_with("/dev/")
            || *m.path == *keep
            || executable_files.contains(m.path)
        {
            continue;
        }
        // SAFETY: a read-only file mapping of this process, from its own maps: its
        // pages equal the file's, so dropping them loses nothing; the next access faults them
        // back in from the page cache. Called on the thread that owns the symbolizer, the only
        // code that maps and unmaps such files, so the mapping is still the one read.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += m.len as u64;
        }
    }
    released
}

/// One line of `/proc/self/maps` that names a file.
struct Mapping<'a> {
    start: usize,
    len: usize,
    perms: &'a str,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let (range, perms, path) = (fields.next()?, fields.next()?, fields.nth(3)?);
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        Some(Self {
            start,
            len: end.checked_sub(start)?,
            perms,
            path,
        })
    }
}
