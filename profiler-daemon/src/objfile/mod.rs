//! The executables and libraries seen in processes ("modules"), each opened once and kept open
//! while a live process maps it: symbolization reads the file through that handle
//! (`/proc/self/fd/N`), so it works for files that exist only in a container's mount namespace,
//! that were deleted or replaced since, and after the process exited.
//!
//! A module is one file content: files with the same build id, size and content digest share one
//! entry (the same binary in many containers shares its names); files that share a build id but
//! differ never do (see `identity`). Names, and later unwind tables, are keyed by `ModuleId`.

mod debug;
mod identity;

pub use debug::DebugFile;
pub use identity::FileKey;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use identity::Digester;

use crate::procfs::MapsLine;

/// Identity of a module, stable for the daemon's life (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u64);

/// One ELF file content.
#[derive(Debug)]
pub struct Module {
    pub id: ModuleId,
    /// Path as the process mapped it (in its own mount namespace).
    pub path: PathBuf,
    /// File name, for `[unknown] name+0x..` frames.
    pub name: Arc<str>,
    /// GNU build id, lowercase hex, when the file has one.
    pub build_id: Option<Arc<str>>,
    /// Where blazesym reads the file: `/proc/self/fd/N` of `_file`, else the path itself.
    pub read_path: PathBuf,
    /// A separate debug file found by build id or debug link (indexed by virtual address, see
    /// `virtual_address`).
    pub debug_file: Option<DebugFile>,
    /// The loadable segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
    /// The size of this file's own DWARF (see `dwarf_bytes`).
    own_dwarf_bytes: u64,
    /// File size, the first identity check.
    size: u64,
    /// Content digest, computed when another file claims the same build id.
    digest: OnceLock<Option<u64>>,
    /// The file's identity when it was opened.
    key: Option<FileKey>,
    /// Keeps the file readable after the process is gone; closed with the last reference.
    file: Option<File>,
}

impl Module {
    /// A module read through its path, with no open handle (tests).
    #[must_use]
    pub fn at_path(id: ModuleId, path: PathBuf, build_id: Option<Arc<str>>) -> Self {
        let layout = debug::layout(&path);
        Self {
            id,
            read_path: path.clone(),
            name: file_name(&path),
            segments: layout.segments,
            own_dwarf_bytes: layout.dwarf_bytes,
            path,
            build_id,
            debug_file: None,
            size: 0,
            digest: OnceLock::new(),
            key: None,
            file: None,
        }
    }

    /// Whether the open file still has the size and modification time it was opened with (a
    /// file rewritten in place keeps its inode, not its content).
    fn unchanged(&self) -> bool {
        self.key.is_some()
            && self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|meta| FileKey::of(&meta))
                == self.key
    }

    /// The ELF virtual address of a file offset: what the file's symbol table and debug info are
    /// indexed by (and what a backend's symbolizer looks up). `None` outside loadable segments.
    #[must_use]
    pub fn virtual_address(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(start, size, _)| offset >= start && offset < start + size)
            .map(|&(start, _, vaddr)| vaddr + (offset - start))
    }

    /// The file blazesym names this module from (its debug file, if found, else itself) and
    /// the size of that file's DWARF (`.debug_info` + `.debug_line`, uncompressed).
    #[must_use]
    pub fn naming_file(&self) -> (&Path, u64) {
        match &self.debug_file {
            Some(debug) => (&debug.read_path, debug.dwarf_bytes),
            None => (&self.read_path, self.own_dwarf_bytes),
        }
    }
}

/// Where an open file is read by path: `/proc/self/fd/N` (valid while `file` is open).
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Feeds the whole of `reader` to `sink` in chunks, so memory stays flat for files of any size.
fn for_each_chunk(
    mut reader: impl std::io::Read,
    mut sink: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Process `pid`'s root directory, as seen from here.
fn root_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

fn file_name(path: &Path) -> Arc<str> {
    path.file_name()
        .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
        .into()
}

/// The directories searched for split debug information (by build id, then debug link): the
/// user's `extra` ones first, then the distribution's.
#[must_use]
pub fn debug_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    extra
        .iter()
        .cloned()
        .chain(["/usr/lib/debug", "/lib/debug"].map(PathBuf::from))
        .collect()
}

/// Lowercase hex of a build id.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// An opened file about to become (or join) a module.
struct Candidate {
    file: Option<File>,
    key: Option<FileKey>,
    /// The path as its process sees it.
    path: PathBuf,
    /// That process's root as seen from here (`/proc/PID/root`, `/` for host paths): where a
    /// debug file beside the binary is.
    root: PathBuf,
    read_path: PathBuf,
    size: u64,
    digest: OnceLock<Option<u64>>,
}

/// All modules, bounded: beyond `capacity`, modules no live process references are closed.
pub struct ModuleRegistry {
    modules: HashMap<ModuleId, Arc<Module>>,
    by_file: HashMap<FileKey, ModuleId>,
    /// (device, inode) as the kernel lists a mapping → the module opened from that very file.
    /// While the module is open the inode cannot be reused, so a process mapping it again (every
    /// `sh` a host starts maps the same libc) is matched with no open of its own.
    by_mapped: HashMap<(u64, u64), ModuleId>,
    by_build_id: HashMap<Arc<str>, Vec<ModuleId>>,
    next: u64,
    capacity: usize,
    /// Searched for debug files by build id.
    debug_dirs: Vec<PathBuf>,
    digester: Digester,
    /// CRCs of debug files met through debug links.
    crcs: debug::Crcs,
    /// Read paths of closed modules whose parsed data the symbolizer must forget (the fd number
    /// will be reused by another file).
    closed: Vec<PathBuf>,
}

impl ModuleRegistry {
    #[must_use]
    pub fn new(capacity: usize, debug_dirs: Vec<PathBuf>) -> Self {
        Self {
            modules: HashMap::new(),
            by_file: HashMap::new(),
            by_mapped: HashMap::new(),
            by_build_id: HashMap::new(),
            next: 1,
            capacity: capacity.max(1),
            debug_dirs,
            digester: Digester::default(),
            crcs: debug::Crcs::default(),
            closed: Vec::new(),
        }
    }

    #[must_use]
    pub fn get(&self, id: ModuleId) -> Option<&Arc<Module>> {
        self.modules.get(&id)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Read paths of modules closed since the last call.
    pub fn take_closed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.closed)
    }

    /// The module behind a file mapping of live process `pid`: through `/proc/PID/map_files`
    /// (the exact file, in any namespace), else `/proc/PID/root/PATH`, else the path itself.
    pub fn open(&mut self, pid: u32, line: &MapsLine) -> Arc<Module> {
        if let Some(module) = self.mapped_before(line) {
            return module;
        }
        let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", line.start, line.end);
        let rooted = format!("/proc/{pid}/root{}", line.path);
        let file = File::open(&map_file).or_else(|_| File::open(&rooted)).ok();
        self.register(file, PathBuf::from(&line.path), root_of(pid), Some(line))
    }

    /// The open module of the file `line` maps, if it is one and its content did not change.
    fn mapped_before(&self, line: &MapsLine) -> Option<Arc<Module>> {
        let id = self.by_mapped.get(&(line.dev, line.inode))?;
        let module = self.modules.get(id)?;
        module.unchanged().then(|| Arc::clone(module))
    }

    /// The module behind a mapping the kernel recorded at `mmap` time (`mmaps`): it may be
    /// unmapped by now, and another file mapped at its range, so the file is opened by its path
    /// in the process's root, and taken only if it is still the inode that was mapped.
    pub fn open_recorded(&mut self, pid: u32, line: &MapsLine) -> Arc<Module> {
        use std::os::unix::fs::MetadataExt;
        if let Some(module) = self.mapped_before(line) {
            return module;
        }
        let rooted = format!("/proc/{pid}/root{}", line.path);
        let file = File::open(&rooted)
            .or_else(|_| File::open(&line.path))
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.ino() == line.inode));
        self.register(file, PathBuf::from(&line.path), root_of(pid), Some(line))
    }

    /// A module for a file named by path on this host (tools and benchmarks).
    pub fn open_path(&mut self, path: &Path) -> Arc<Module> {
        self.register(
            File::open(path).ok(),
            path.to_path_buf(),
            PathBuf::from("/"),
            None,
        )
    }

    /// The module of `file` (opened from `path` in the root directory `root`, for the mapping
    /// `mapped` if any).
    fn register(
        &mut self,
        file: Option<File>,
        path: PathBuf,
        root: PathBuf,
        mapped: Option<&MapsLine>,
    ) -> Arc<Module> {
        let meta = file.as_ref().and_then(|f| f.metadata().ok());
        let key = meta.as_ref().map(FileKey::of);
        let module = self.find_or_insert(file, meta.as_ref(), path, root);
        // Only a module held open through this very file pins the mapped inode.
        if let Some(line) = mapped
            && line.inode != 0
            && key.is_some()
            && module.key == key
        {
            self.by_mapped.insert((line.dev, line.inode), module.id);
        }
        module
    }

    fn find_or_insert(
        &mut self,
        file: Option<File>,
        meta: Option<&std::fs::Metadata>,
        path: PathBuf,
        root: PathBuf,
    ) -> Arc<Module> {
        let key = meta.map(FileKey::of);
        if let Some(id) = key.and_then(|k| self.by_file.get(&k))
            && let Some(module) = self.modules.get(id)
        {
            return Arc::clone(module);
        }
        let read_path = file.as_ref().map_or_else(|| path.clone(), fd_path);
        let candidate = Candidate {
            size: meta.map_or(0, std::fs::Metadata::len),
            file,
            key,
            path,
            root,
            read_path,
            digest: OnceLock::new(),
        };
        let build_id: Option<Arc<str>> = blazesym::helper::read_elf_build_id(&candidate.read_path)
            .ok()
            .flatten()
            .map(|b| Arc::from(hex(&b)));
        if let Some(b) = &build_id
            && let Some(module) = self.same_content(b, &candidate)
        {
            // The same binary in another file (another container's copy): share its caches.
            if let Some(key) = key {
                self.by_file.insert(key, module.id);
            }
            return module;
        }
        self.insert(candidate, build_id)
    }

    /// The module with build id `build_id` whose content is `candidate`'s, if any.
    fn same_content(&self, build_id: &str, candidate: &Candidate) -> Option<Arc<Module>> {
        let digest = |cell: &OnceLock<Option<u64>>, path: &Path| {
            *cell.get_or_init(|| self.digester.digest(path).ok())
        };
        self.by_build_id.get(build_id)?.iter().find_map(|id| {
            let module = self.modules.get(id)?;
            // A file that could not be opened is read by a path that may name another file.
            let same = candidate.key.is_some() && module.size == candidate.size && {
                let theirs = digest(&module.digest, &module.read_path);
                theirs.is_some() && theirs == digest(&candidate.digest, &candidate.read_path)
            };
            same.then(|| Arc::clone(module))
        })
    }

    fn insert(&mut self, candidate: Candidate, build_id: Option<Arc<str>>) -> Arc<Module> {
        self.make_room();
        let id = ModuleId(self.next);
        self.next += 1;
        let layout = debug::layout(&candidate.read_path);
        let origin = debug::Origin {
            path: &candidate.path,
            root: &candidate.root,
        };
        let debug_file = debug::find(
            &self.debug_dirs,
            build_id.as_deref(),
            &layout,
            &origin,
            &mut self.crcs,
        );
        // Its own DWARF's supplementary file, by build id or absolute path (the read path's
        // directory is `/proc/self/fd`).
        let own_dwarf_bytes = if layout.dwarf_bytes > 0 && debug_file.is_none() {
            layout.dwarf_bytes + debug::supplementary_bytes(&self.debug_dirs, &layout, None)
        } else {
            layout.dwarf_bytes
        };
        let module = Arc::new(Module {
            id,
            name: file_name(&candidate.path),
            path: candidate.path,
            build_id: build_id.clone(),
            read_path: candidate.read_path,
            debug_file,
            segments: layout.segments,
            own_dwarf_bytes,
            size: candidate.size,
            digest: candidate.digest,
            key: candidate.key,
            file: candidate.file,
        });
        self.modules.insert(id, Arc::clone(&module));
        if let Some(key) = candidate.key {
            self.by_file.insert(key, id);
        }
        if let Some(b) = build_id {
            self.by_build_id.entry(b).or_default().push(id);
        }
        module
    }

    /// Closes modules that nothing else references until below capacity.
    fn make_room(&mut self) {
        if self.modules.len() < self.capacity {
            return;
        }
        let idle: Vec<ModuleId> = self
            .modules
            .iter()
            .filter(|(_, m)| Arc::strong_count(m) == 1)
            .map(|(&id, _)| id)
            .collect();
        let excess = self.modules.len() + 1 - self.capacity;
        for id in idle.into_iter().take(excess) {
            if let Some(m) = self.modules.remove(&id) {
                self.by_file.retain(|_, v| *v != id);
                self.by_mapped.retain(|_, v| *v != id);
                self.by_build_id.retain(|_, ids| {
                    ids.retain(|v| *v != id);
                    !ids.is_empty()
                });
                self.closed.push(m.read_path.clone());
                // A debug file read through its handle: that fd number will be reused too.
                if let Some(debug) = &m.debug_file
                    && debug.read_path != debug.path
                {
                    self.closed.push(debug.read_path.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_a_module_and_forged_build_ids_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let (a, b, forged) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("forged"),
        );
        std::fs::copy(&me, &a).unwrap();
        std::fs::copy(&me, &b).unwrap();
        // Same build id and size, one byte of other content (the last byte is past every
        // section the build id note covers).
        let mut bytes = std::fs::read(&me).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&forged, bytes).unwrap();

        let mut registry = ModuleRegistry::new(16, Vec::new());
        let ma = registry.open_path(&a);
        let mb = registry.open_path(&b);
        let mf = registry.open_path(&forged);
        assert!(ma.build_id.is_some(), "cargo links with a build id");
        assert_eq!(
            ma.build_id, mf.build_id,
            "the forgery claims the same build id"
        );
        assert_eq!(ma.id, mb.id, "identical copies share one module");
        assert_ne!(ma.id, mf.id, "same build id, other content: another module");
        assert_eq!(registry.len(), 2);
        // Opening the same file again finds it by file identity.
        assert_eq!(registry.open_path(&forged).id, mf.id);
    }

    #[test]
    fn a_file_mapped_again_is_matched_by_device_and_inode_until_it_changes() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib.so");
        std::fs::copy(std::env::current_exe().unwrap(), &lib).unwrap();
        let meta = std::fs::metadata(&lib).unwrap();
        let line = MapsLine {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            dev: u64::from(libc::major(meta.dev())) << 32 | u64::from(libc::minor(meta.dev())),
            inode: meta.ino(),
            path: lib.to_string_lossy().into_owned(),
        };
        let mut registry = ModuleRegistry::new(16, Vec::new());
        let first = registry.open(std::process::id(), &line);
        assert!(first.key.is_some(), "opened through the process's root");
        // A process that cannot be read (above pid_max): only the match can name its file.
        let again = registry.open(u32::MAX, &line);
        assert_eq!(again.id, first.id);
        // Rewritten in place: same inode, other content, so the file is opened afresh.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&lib)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
            .unwrap();
        let changed = registry.open_recorded(u32::MAX, &line);
        assert_ne!(changed.id, first.id);
        assert_eq!(registry.open_recorded(u32::MAX, &line).id, changed.id);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }

    #[test]
    fn idle_modules_are_closed_beyond_capacity() {
        let me = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut registry = ModuleRegistry::new(1, Vec::new());
        let first = registry.open_path(&me).id;
        let other = dir.path().join("other");
        std::fs::write(&other, b"not an elf file").unwrap();
        let kept = registry.open_path(&other);
        assert_eq!(registry.len(), 1);
        assert!(registry.get(first).is_none());
        assert_eq!(registry.take_closed().len(), 1);
        assert!(registry.take_closed().is_empty());
        assert!(registry.get(kept.id).is_some());
    }
}
