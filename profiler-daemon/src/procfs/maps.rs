//! Parsing `/proc/PID/maps`: the executable mappings of a process, as the kernel lists them.

/// One parsed line of `/proc/PID/maps` for an executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The file's device, `major << 32 | minor` (with `inode`, the file the kernel mapped).
    pub dev: u64,
    pub inode: u64,
    /// Path as the process sees it, or `[vdso]`, `[anon:...]`, empty for anonymous memory.
    pub path: String,
}

/// Parses the executable mappings of a `/proc/PID/maps` text; malformed lines are skipped.
#[must_use]
pub fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let dev = fields.next()?;
            let inode = fields.next()?;
            let path = fields.next().unwrap_or("").trim_start();
            if perms.as_bytes().get(2) != Some(&b'x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(MapsLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                dev: parse_dev(dev)?,
                inode: inode.parse().ok()?,
                path: path.trim_end_matches(" (deleted)").to_owned(),
            })
        })
        .collect()
}

/// `MAJOR:MINOR` in hexadecimal (`fe:01`) as `major << 32 | minor`.
fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    Some(
        u64::from(u32::from_str_radix(major, 16).ok()?) << 32
            | u64::from(u32::from_str_radix(minor, 16).ok()?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/app
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 1234                       /usr/bin/app
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
7f1000000000-7f1000100000 r-xp 00028000 fe:01 99                         /usr/lib/libc.so.6 (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn keeps_executable_mappings_only() {
        let lines = parse_maps(MAPS);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].path, "/usr/bin/app");
        assert_eq!(lines[0].offset, 0x1000);
        assert_eq!(lines[0].inode, 1234);
        assert_eq!(lines[0].dev, 0xfe << 32 | 1);
        assert_eq!(lines[3].dev, 0);
        assert_eq!(lines[1].path, "");
        assert_eq!(lines[2].path, "/usr/lib/libc.so.6");
        assert_eq!(lines[3].path, "[vdso]");
    }
}
