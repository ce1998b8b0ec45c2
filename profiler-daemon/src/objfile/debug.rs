//! Split debug files: by build id (`DIR/.build-id/ab/cdef....debug`), else by the binary's
//! `.gnu_debuglink` (a file name and the debug file's CRC-32) in the places GDB looks: beside the
//! binary, in its `.debug/` directory (both inside the process's own root, so a container's
//! debug files are found), and under each debug directory at the binary's own path and at the
//! top. blazesym would follow a debug link itself, but the DWARF it parsed that way was not in
//! the symbolizer's budget (`--debug-info-memory`): found here, the debug file is what blazesym
//! is given and what is counted. A debug file's dwz supplementary file (`.gnu_debugaltlink`),
//! parsed with it, is counted with it too (once per file that links it: shared ones are
//! overstated, never missed).
//!
//! A debug file found inside a process's root is opened once and read through that handle
//! (`/proc/self/fd/N`), like the module's own file: a path inside `/proc/PID/root` stops working
//! when that process exits, and could name another process's file once the pid is reused. One
//! found in the debug directories is read by its path (blazesym resolves a relative dwz link
//! from the file's directory), and held open too. What a process's directory holds
//! is not trusted: a candidate must be a regular, non-empty ELF file of at most
//! `MAX_DEBUG_FILE_BYTES` (no `/proc/kcore`, no blocking pseudo-file), opened non-blocking, and
//! its CRC must match before it is used; CRCs are remembered per file version (`Crcs`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::FileKey;

/// The largest debug file read to check a debug link's CRC (reading it takes seconds beyond).
const MAX_DEBUG_FILE_BYTES: u64 = 4 << 30;

/// CRCs remembered, at most (then forgotten all at once: a cache, not a record).
const MAX_CRCS: usize = 1024;

/// A debug-only ELF file for a module, indexed by the module's virtual addresses.
#[derive(Debug)]
pub struct DebugFile {
    /// Where it was found.
    pub path: PathBuf,
    /// Where it is read: `path` in a debug directory, else `/proc/self/fd/N` of `_file`.
    pub read_path: PathBuf,
    /// Its DWARF's size (see `Layout::dwarf_bytes`), with its supplementary file's.
    pub dwarf_bytes: u64,
    _file: File,
}

/// Where a module's file is, for finding its debug file.
pub(super) struct Origin<'a> {
    /// Its path as its process sees it.
    pub path: &'a Path,
    /// That process's root directory as seen from here (`/proc/PID/root`; `/` for host paths).
    pub root: &'a Path,
}

/// CRC-32s of candidate debug files, by file version.
#[derive(Debug, Default)]
pub(super) struct Crcs(HashMap<FileKey, u32>);

impl Crcs {
    /// The CRC of `file`, computed once per version.
    fn of(&mut self, file: &mut File, meta: &std::fs::Metadata) -> Option<u32> {
        let key = FileKey::of(meta);
        if let Some(&crc) = self.0.get(&key) {
            return Some(crc);
        }
        let crc = crc32(file, meta.len())?;
        if self.0.len() >= MAX_CRCS {
            self.0.clear();
        }
        self.0.insert(key, crc);
        Some(crc)
    }
}

/// The debug file of the binary whose layout is `binary`, if one is found in `dirs` or beside
/// the binary.
#[must_use]
pub(super) fn find(
    dirs: &[PathBuf],
    build_id: Option<&str>,
    binary: &Layout,
    origin: &Origin<'_>,
    crcs: &mut Crcs,
) -> Option<DebugFile> {
    let (path, file, in_root) = build_id
        .and_then(|b| by_build_id(dirs, b))
        .map(|(path, file)| (path, file, false))
        .or_else(|| by_debug_link(dirs, binary.debug_link.as_ref()?, origin, crcs))?;
    let read_path = if in_root {
        super::fd_path(&file)
    } else {
        path.clone()
    };
    let layout = layout(&read_path);
    // A relative supplementary path is taken from the debug file's real directory (the found
    // path may be a `.build-id` symlink).
    let real_dir = std::fs::canonicalize(&path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    Some(DebugFile {
        dwarf_bytes: layout.dwarf_bytes + supplementary_bytes(dirs, &layout, real_dir.as_deref()),
        path,
        read_path,
        _file: file,
    })
}

/// The DWARF bytes of the dwz supplementary file `linking`'s file links to, if found (by its
/// build id in `dirs`, else by its path, relative ones from `dir`, the linking file's).
#[must_use]
pub(super) fn supplementary_bytes(dirs: &[PathBuf], linking: &Layout, dir: Option<&Path>) -> u64 {
    let Some(link) = &linking.alt_link else {
        return 0;
    };
    let named = if link.path.is_absolute() {
        Some(link.path.clone())
    } else {
        dir.map(|d| d.join(&link.path))
    };
    by_build_id(dirs, &super::hex(&link.build_id))
        .map(|(path, _)| path)
        .or_else(|| named.filter(|p| p.is_file()))
        .map_or(0, |p| layout(&p).dwarf_bytes)
}

/// `DIR/.build-id/ab/cdef....debug` in `dirs`, opened.
fn by_build_id(dirs: &[PathBuf], build_id: &str) -> Option<(PathBuf, File)> {
    if build_id.len() < 4 {
        return None;
    }
    let (head, tail) = build_id.split_at(2);
    dirs.iter()
        .map(|d| d.join(".build-id").join(head).join(format!("{tail}.debug")))
        .find_map(|p| open_elf(&p).map(|(file, _)| (p, file)))
}

/// The file `link` names, in GDB's places, whose content has the link's CRC, opened, and
/// whether it is inside the process's root (else in a debug directory).
fn by_debug_link(
    dirs: &[PathBuf],
    link: &DebugLink,
    origin: &Origin<'_>,
    crcs: &mut Crcs,
) -> Option<(PathBuf, File, bool)> {
    // A link is a file name; anything else could point a lookup outside these places.
    let name = Path::new(&link.name);
    if name.components().count() != 1 || name.file_name().is_none() {
        return None;
    }
    let dir = origin.path.parent()?;
    let relative = dir.strip_prefix("/").unwrap_or(dir);
    let beside = origin.root.join(relative);
    [beside.join(name), beside.join(".debug").join(name)]
        .into_iter()
        .chain(
            dirs.iter()
                .flat_map(|d| [d.join(relative).join(name), d.join(name)]),
        )
        .enumerate()
        .find_map(|(i, p)| {
            let (mut file, meta) = open_elf(&p)?;
            (crcs.of(&mut file, &meta)? == link.crc).then_some((p, file, i < 2))
        })
}

/// `path` opened, if it is a regular file of at most `MAX_DEBUG_FILE_BYTES` that starts as an
/// ELF file does; non-blocking, so a pseudo-file that would wait cannot stall the daemon.
fn open_elf(path: &Path) -> Option<(File, std::fs::Metadata)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() < 4 || meta.len() > MAX_DEBUG_FILE_BYTES {
        return None;
    }
    let mut magic = [0; 4];
    file.read_exact(&mut magic).ok()?;
    (magic == *b"\x7fELF").then_some((file, meta))
}

/// The CRC-32 of a file's first `len` bytes (all of it: what `.gnu_debuglink` records), read in
/// chunks from its start.
fn crc32(file: &mut File, len: u64) -> Option<u32> {
    use std::io::{Seek as _, SeekFrom};
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut crc = flate2::Crc::new();
    super::for_each_chunk(file.take(len), |chunk| crc.update(chunk)).ok()?;
    Some(crc.sum())
}

/// A `.gnu_debuglink`: the debug file's name and its CRC-32.
#[derive(Debug)]
pub(super) struct DebugLink {
    name: std::ffi::OsString,
    crc: u32,
}

/// A `.gnu_debugaltlink`: the dwz supplementary file's path and build id.
#[derive(Debug)]
pub(super) struct AltLink {
    path: PathBuf,
    build_id: Vec<u8>,
}

/// What the daemon needs of an ELF file's headers, read in one parse.
#[derive(Debug, Default)]
pub(super) struct Layout {
    /// The `PT_LOAD` segments that carry file data: (file offset, file size, virtual address).
    pub segments: Vec<(u64, u64, u64)>,
    /// Uncompressed bytes of `.debug_info` and `.debug_line`, what blazesym's parse of the
    /// file's DWARF grows with (units, line rows, inlined functions; measured at about 1.2 times
    /// this), and of every other compressed debug section (inflated into memory when read): what
    /// the symbolizer's DWARF budget is counted in.
    pub dwarf_bytes: u64,
    pub debug_link: Option<DebugLink>,
    pub alt_link: Option<AltLink>,
}

/// The layout of the ELF file at `path`; empty for a file that is not ELF or cannot be read.
#[must_use]
pub(super) fn layout(path: &Path) -> Layout {
    use object::{Object as _, ObjectSection as _, ObjectSegment as _};
    let Ok(file) = std::fs::File::open(path) else {
        return Layout::default();
    };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Layout::default();
    };
    let segments = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .filter(|&(_, size, _)| size > 0)
        .collect();
    let dwarf_bytes = elf
        .sections()
        .filter_map(|s| {
            let name = s.name().ok()?;
            let range = s.compressed_file_range().ok()?;
            let parsed = matches!(name, ".debug_info" | ".debug_line");
            // A compressed section is inflated into the heap whole when blazesym reads it.
            let inflated =
                name.starts_with(".debug_") && range.format != object::CompressionFormat::None;
            (parsed || inflated).then_some(range.uncompressed_size)
        })
        .sum();
    let debug_link = elf
        .gnu_debuglink()
        .ok()
        .flatten()
        .map(|(name, crc)| DebugLink {
            name: OsStr::from_bytes(name).to_owned(),
            crc,
        });
    let alt_link = elf
        .gnu_debugaltlink()
        .ok()
        .flatten()
        .map(|(path, build_id)| AltLink {
            path: PathBuf::from(OsStr::from_bytes(path)),
            build_id: build_id.to_vec(),
        });
    Layout {
        segments,
        dwarf_bytes,
        debug_link,
        alt_link,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(cmd: &mut Command) {
        assert!(cmd.status().expect("runs").success(), "{cmd:?}");
    }

    #[test]
    fn a_debug_link_is_followed_beside_the_binary_and_under_the_debug_dirs_with_its_crc_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, staging, dirs) = (
            tmp.path().join("root"),
            tmp.path().join("staging"),
            vec![tmp.path().join("debug")],
        );
        let bin_dir = root.join("usr/bin");
        for d in [&bin_dir, &staging, &dirs[0]] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (src, full) = (staging.join("prog.c"), staging.join("prog-full"));
        std::fs::write(&src, "int twice(int x) { return 2 * x; }\nint main(int c, char **v) { (void)v; return twice(c); }\n").unwrap();
        run(Command::new("clang")
            .args(["-g", "-O1", "-o"])
            .arg(&full)
            .arg(&src));
        let debug = staging.join("prog.debug");
        run(Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&full)
            .arg(&debug));
        // A dwz supplementary file by absolute path (its build id is nowhere): the full binary,
        // whose DWARF is counted with the debug file's.
        let mut alt = full.as_os_str().as_bytes().to_vec();
        alt.push(0);
        alt.extend([0xab; 20]);
        let alt_section = staging.join("alt");
        std::fs::write(&alt_section, alt).unwrap();
        run(Command::new("objcopy")
            .arg(format!(
                "--add-section=.gnu_debugaltlink={}",
                alt_section.display()
            ))
            .arg(&debug));
        let binary = bin_dir.join("prog");
        run(Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&full)
            .arg(&binary));

        let layout = layout(&binary);
        assert!(layout.debug_link.is_some());
        assert_eq!(layout.dwarf_bytes, 0, "stripped");
        let origin = Origin {
            path: Path::new("/usr/bin/prog"),
            root: &root,
        };
        let expected = super::layout(&debug).dwarf_bytes + super::layout(&full).dwarf_bytes;
        assert!(expected > super::layout(&full).dwarf_bytes);
        let mut crcs = Crcs::default();
        let mut found = |dirs: &[PathBuf]| find(dirs, None, &layout, &origin, &mut crcs);
        assert!(found(&dirs).is_none(), "nowhere yet");

        for place in [
            bin_dir.join(".debug/prog.debug"),
            bin_dir.join("prog.debug"),
            dirs[0].join("usr/bin/prog.debug"),
            dirs[0].join("prog.debug"),
        ] {
            std::fs::create_dir_all(place.parent().unwrap()).unwrap();
            std::fs::copy(&debug, &place).unwrap();
            let file = found(&dirs).unwrap_or_else(|| panic!("{} not found", place.display()));
            assert_eq!(file.path, place);
            assert_eq!(file.dwarf_bytes, expected, "{}", place.display());
            // Inside the process's root it is read through its handle: still there when the
            // path is gone (the process exited).
            let in_root = place.starts_with(&root);
            assert_eq!(
                file.read_path != file.path,
                in_root,
                "{}",
                file.read_path.display()
            );
            std::fs::remove_file(&place).unwrap();
            if in_root {
                assert!(super::layout(&file.read_path).dwarf_bytes > 0);
            }
            drop(file);
            // Another ELF file under the same name: its CRC does not match.
            std::fs::copy(&full, &place).unwrap();
            assert!(
                found(&dirs).is_none(),
                "{} taken with a wrong CRC",
                place.display()
            );
            // A pseudo-file (empty as procfs says, and would block): never read.
            std::fs::remove_file(&place).unwrap();
            std::os::unix::fs::symlink("/proc/kmsg", &place).unwrap();
            assert!(found(&dirs).is_none());
            std::fs::remove_file(&place).unwrap();
        }
    }
}
