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
pub fn release_file_pages(keep: &Path) -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let keep = keep.to_string_lossy();
    let mut executable_files = std::collections::HashSet::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(_), Some(perms), Some(path)) = (fields.next(), fields.next(), fields.nth(3))
            && perms.contains('x')
        {
            executable_files.insert(path.to_owned());
        }
    }
    let mut released = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(&perms), Some(&path)) =
            (fields.first(), fields.get(1), fields.get(5))
        else {
            continue;
        };
        // blazesym maps files shared and read-only (`r--s`); private read-only (`r--p`) is
        // just as safe. Devices are left alone.
        if !(perms == "r--s" || perms == "r--p")
            || !path.starts_with('/')
            || path.starts_with("/dev/")
            || *path == *keep
            || executable_files.contains(path)
        {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: a read-only file mapping of this process, from its own maps: its
        // pages equal the file's, so dropping them loses nothing; the next access faults them
        // back in from the page cache. Called on the thread that owns the symbolizer, the only
        // code that maps and unmaps such files, so the mapping is still the one read.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += (end - start) as u64;
        }
    }
    released
}
