//! The executables and libraries seen in processes, each opened once and kept open while a live
//! process maps it: symbolization reads the file through that handle (`/proc/self/fd/N`), so it
//! works for files that exist only in a container's mount namespace, that were deleted or
//! replaced since, and after the process exited. Identified by build id (shared by every process
//! running the same binary, in any container), else by device and inode.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object as _, ObjectSegment as _};

use crate::process::maps::MapsLine;

/// Identity of a module, stable for the daemon's life (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u64);

/// One ELF file.
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
    /// A separate debug file found by build id (`DIR/.build-id/ab/cdef....debug`), with the
    /// binary's loadable segments to turn file offsets into the addresses it is indexed by.
    pub debug_file: Option<DebugFile>,
    /// Keeps the file readable after the process is gone; closed with the last reference.
    _file: Option<File>,
}

/// A debug-only ELF file for a module (its own segments carry no file data).
#[derive(Debug, Clone)]
pub struct DebugFile {
    pub path: PathBuf,
    /// The binary's `PT_LOAD` segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
}

impl DebugFile {
    /// The virtual address (as the debug file indexes it) of a file offset of the binary.
    #[must_use]
    pub fn virtual_address(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(start, size, _)| offset >= start && offset < start + size)
            .map(|&(start, _, vaddr)| vaddr + (offset - start))
    }
}

/// Looks for `DIR/.build-id/ab/cdef....debug` in `dirs` and reads the loadable segments of the
/// binary at `binary` (blazesym itself only looks there while following a debug link).
fn find_debug_file(dirs: &[PathBuf], build_id: &str, binary: &Path) -> Option<DebugFile> {
    if build_id.len() < 4 {
        return None;
    }
    let (head, tail) = build_id.split_at(2);
    let path = dirs
        .iter()
        .map(|d| d.join(".build-id").join(head).join(format!("{tail}.debug")))
        .find(|p| p.is_file())?;
    let file = File::open(binary).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .filter(|&(_, size, _)| size > 0)
        .collect();
    (!segments.is_empty()).then_some(DebugFile { path, segments })
}

impl Module {
    /// A module read through its path (no open handle): for tests and tools.
    #[must_use]
    pub fn at_path(id: ModuleId, path: PathBuf, build_id: Option<Arc<str>>) -> Self {
        let name: Arc<str> = path
            .file_name()
            .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
            .into();
        Self {
            id,
            read_path: path.clone(),
            path,
            name,
            build_id,
            debug_file: None,
            _file: None,
        }
    }
}

/// All modules, bounded: beyond `capacity`, modules no live process references are closed.
pub struct ModuleRegistry {
    modules: HashMap<ModuleId, Arc<Module>>,
    by_file: HashMap<(u64, u64), ModuleId>,
    by_build_id: HashMap<Arc<str>, ModuleId>,
    next: u64,
    capacity: usize,
    /// Searched for debug files by build id.
    debug_dirs: Vec<PathBuf>,
}

impl ModuleRegistry {
    #[must_use]
    pub fn new(capacity: usize, debug_dirs: Vec<PathBuf>) -> Self {
        Self {
            modules: HashMap::new(),
            by_file: HashMap::new(),
            by_build_id: HashMap::new(),
            next: 1,
            capacity: capacity.max(1),
            debug_dirs,
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

    /// The module behind a file mapping of live process `pid`: through `/proc/PID/map_files`
    /// (the exact file, in any namespace), else `/proc/PID/root/PATH`, else the path itself.
    /// Returns the module and the paths of modules evicted to stay within the bound (the caller
    /// drops their cached symbolization data).
    pub fn open(&mut self, pid: u32, line: &MapsLine) -> (Arc<Module>, Vec<PathBuf>) {
        let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", line.start, line.end);
        let rooted = format!("/proc/{pid}/root{}", line.path);
        let file = File::open(&map_file).or_else(|_| File::open(&rooted)).ok();
        let identity = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        if let Some(id) = identity.and_then(|k| self.by_file.get(&k))
            && let Some(module) = self.modules.get(id)
        {
            return (module.clone(), Vec::new());
        }
        let read_path = file.as_ref().map_or_else(
            || PathBuf::from(&line.path),
            |f| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
        );
        let build_id: Option<Arc<str>> = blazesym::helper::read_elf_build_id(&read_path)
            .ok()
            .flatten()
            .map(|b| Arc::from(super::hex(&b)));
        if let Some(id) = build_id.as_ref().and_then(|b| self.by_build_id.get(b))
            && let Some(module) = self.modules.get(id).cloned()
        {
            // Same binary, another file (e.g. another container's copy): share its caches.
            if let Some(key) = identity {
                self.by_file.insert(key, module.id);
            }
            return (module, Vec::new());
        }
        let evicted = self.make_room();
        let id = ModuleId(self.next);
        self.next += 1;
        let path = PathBuf::from(&line.path);
        let name: Arc<str> = Path::new(&line.path)
            .file_name()
            .map_or_else(|| line.path.clone(), |n| n.to_string_lossy().into_owned())
            .into();
        let debug_file = build_id
            .as_deref()
            .and_then(|b| find_debug_file(&self.debug_dirs, b, &read_path));
        let module = Arc::new(Module {
            id,
            path,
            name,
            build_id: build_id.clone(),
            read_path,
            debug_file,
            _file: file,
        });
        self.modules.insert(id, module.clone());
        if let Some(key) = identity {
            self.by_file.insert(key, id);
        }
        if let Some(b) = build_id {
            self.by_build_id.insert(b, id);
        }
        (module, evicted)
    }

    /// A module for a file named by path on this host (tools and benchmarks).
    pub fn open_path(&mut self, path: &Path) -> Arc<Module> {
        let id = ModuleId(self.next);
        self.next += 1;
        let build_id = blazesym::helper::read_elf_build_id(path)
            .ok()
            .flatten()
            .map(|b| Arc::from(super::hex(&b)));
        let module = Arc::new(Module::at_path(id, path.to_path_buf(), build_id));
        self.modules.insert(id, module.clone());
        module
    }

    /// Closes modules that nothing else references until below capacity.
    fn make_room(&mut self) -> Vec<PathBuf> {
        if self.modules.len() < self.capacity {
            return Vec::new();
        }
        let idle: Vec<ModuleId> = self
            .modules
            .iter()
            .filter(|(_, m)| Arc::strong_count(m) == 1)
            .map(|(&id, _)| id)
            .collect();
        let excess = self.modules.len() + 1 - self.capacity;
        let mut evicted = Vec::new();
        for id in idle.into_iter().take(excess) {
            if let Some(m) = self.modules.remove(&id) {
                self.by_file.retain(|_, v| *v != id);
                self.by_build_id.retain(|_, v| *v != id);
                evicted.push(m.read_path.clone());
            }
        }
        evicted
    }
}
