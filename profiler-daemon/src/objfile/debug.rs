//! Split debug files: by build id (`DIR/.build-id/ab/cdef....debug`), else by the binary's
//! `.gnu_debuglink` (a file name and the debug file's CRC-32) in the places GDB looks: beside the
//! binary, in its `.debug/` directory (both inside the process's own root, so a container's
//! debug files are found), and under each debug directory at the binary's own path and at the
//! top. blazesym would follow a debug link itself, but the DWARF it parsed that way was not in
//! the symbolizer's budget (`--debug-info-memory`): found here, the debug file is what blazesym
//! is given and what is counted. A debug file's dwz supplementary file (`.gnu_debugaltlink`),
//! parsed with it, is counted with it too (once per file that links it: shared ones are
//! overstated, never missed).

use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// A debug-only ELF file for a module, indexed by the module's virtual addresses.
#[derive(Debug, Clone)]
pub struct DebugFile {
    pub path: PathBuf,
    /// Its DWARF's size (see `Layout::dwarf_bytes`), with its supplementary file's.
    pub dwarf_bytes: u64,
}

/// Where a module's file is, for finding its debug file.
pub(super) struct Origin<'a> {
    /// Its path as its process sees it.
    pub path: &'a Path,
    /// That process's root directory as seen from here (`/proc/PID/root`; `/` for host paths).
    pub root: &'a Path,
}

/// The debug file of the binary whose layout is `binary`, if one is found in `dirs` or beside
/// the binary.
#[must_use]
pub(super) fn find(
    dirs: &[PathBuf],
    build_id: Option<&str>,
    binary: &Layout,
    origin: &Origin<'_>,
) -> Option<DebugFile> {
    let path = build_id
        .and_then(|b| by_build_id(dirs, b))
        .or_else(|| by_debug_link(dirs, binary.debug_link.as_ref()?, origin))?;
    let layout = layout(&path);
    Some(DebugFile {
        dwarf_bytes: layout.dwarf_bytes + supplementary_bytes(dirs, &layout, path.parent()),
        path,
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
        .or_else(|| named.filter(|p| p.is_file()))
        .map_or(0, |p| layout(&p).dwarf_bytes)
}

/// `DIR/.build-id/ab/cdef....debug` in `dirs`.
fn by_build_id(dirs: &[PathBuf], build_id: &str) -> Option<PathBuf> {
    if build_id.len() < 4 {
        return None;
    }
    let (head, tail) = build_id.split_at(2);
    dirs.iter()
        .map(|d| d.join(".build-id").join(head).join(format!("{tail}.debug")))
        .find(|p| p.is_file())
}

/// The file `link` names, in GDB's places, whose content has the link's CRC.
fn by_debug_link(dirs: &[PathBuf], link: &DebugLink, origin: &Origin<'_>) -> Option<PathBuf> {
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
        .filter(|p| p.is_file())
        .find(|p| crc32(p).is_some_and(|crc| crc == link.crc))
}

/// The CRC-32 of a file's content (what `.gnu_debuglink` records), read in chunks: debug files
/// run to gigabytes.
fn crc32(path: &Path) -> Option<u32> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(crc.sum()),
            Ok(n) => crc.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
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
        let found = |dirs: &[PathBuf]| find(dirs, None, &layout, &origin);
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
            // Another content under the same name: its CRC does not match.
            std::fs::write(&place, b"not the debug file").unwrap();
            assert!(
                found(&dirs).is_none(),
                "{} taken with a wrong CRC",
                place.display()
            );
            std::fs::remove_file(&place).unwrap();
        }
    }
}
