//! Names addresses, in two steps so that names outlive processes and caches are shared:
//! 1. *normalize*: the process table turns a user address into (module, file offset) against a
//!    snapshot of the process's mappings taken while it was alive (`crate::process`), with the
//!    module's file kept open (`modules`);
//! 2. *symbolize* per (module, file offset) with one long-lived blazesym symbolizer, cached in a
//!    bounded LRU keyed by module (build id) and offset, so every process running the same binary
//!    shares it (`resolve_user`). Addresses outside file mappings (JIT code, the vDSO) are named
//!    through the live process (`resolve_process`: perf maps, vDSO). Kernel addresses are named
//!    from kallsyms (`resolve_kernel`).
//!
//! Names are demangled (Rust, C++); with DWARF, inlined functions become frames of their own and
//! carry file and line. Split debug info is found by build id or debug link under the debug
//! directories.

mod frame;
pub mod modules;

pub use frame::{Frame, Resolved};
pub use modules::{Module, ModuleId, ModuleRegistry};

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Process, Source};
use blazesym::symbolize::{Input, Sym, Symbolized, Symbolizer};
use lru::LruCache;

use crate::process::maps::MapsLine;

/// Where a user address points, decided while its process was alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserLoc {
    /// In a file mapping: the module and the offset in the file.
    File { module: ModuleId, offset: u64 },
    /// In an executable mapping without a file (JIT code, the vDSO): named through the process.
    Process { addr: u64 },
    /// In no executable mapping (or the process was gone before it could be read).
    Unmapped { addr: u64 },
}

/// Counts of the symbolization stage, for summaries and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SymbolizeStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// blazesym returned an error for a whole batch (unreadable or corrupt file, process gone).
    pub symbolize_errors: u64,
    /// Addresses named through a live process (perf map, vDSO).
    pub process_named: u64,
}

/// The default directories searched for split debug information (by build id, then debug link).
pub const DEFAULT_DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

/// The long-lived symbolizer with its caches. `!Send` (blazesym's `Symbolizer` is): it lives on
/// the pipeline's own thread.
pub struct SymbolizerStage {
    symbolizer: Symbolizer,
    modules: ModuleRegistry,
    user_cache: LruCache<(ModuleId, u64), Resolved>,
    kernel_cache: LruCache<u64, Resolved>,
    stats: SymbolizeStats,
}

impl SymbolizerStage {
    /// `cache_entries` bounds each of the user and kernel name caches, `modules` the files kept
    /// open; `debug_dirs` are searched for split debug info before the defaults.
    #[must_use]
    pub fn new(cache_entries: usize, modules: usize, debug_dirs: &[PathBuf]) -> Self {
        let cap = NonZeroUsize::new(cache_entries).unwrap_or(NonZeroUsize::MIN);
        let dirs: Vec<PathBuf> = debug_dirs
            .iter()
            .cloned()
            .chain(DEFAULT_DEBUG_DIRS.iter().map(PathBuf::from))
            .collect();
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .set_debug_dirs(Some(dirs.clone()))
                .build(),
            modules: ModuleRegistry::new(modules, dirs.clone()),
            user_cache: LruCache::new(cap),
            kernel_cache: LruCache::new(cap),
            stats: SymbolizeStats::default(),
        }
    }

    #[must_use]
    pub fn stats(&self) -> SymbolizeStats {
        self.stats
    }

    /// (user cache entries, kernel cache entries, open modules).
    #[must_use]
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        (
            self.user_cache.len(),
            self.kernel_cache.len(),
            self.modules.len(),
        )
    }

    #[must_use]
    pub fn module(&self, id: ModuleId) -> Option<&Arc<Module>> {
        self.modules.get(id)
    }

    /// The module behind a file mapping of live process `pid` (see `ModuleRegistry::open`).
    pub fn open_module(&mut self, pid: u32, line: &MapsLine) -> Arc<Module> {
        let (module, evicted) = self.modules.open(pid, line);
        for path in evicted {
            // The fd number will be reused by another file: forget what blazesym parsed.
            let evict = blazesym::symbolize::evict::Evict::Elf(blazesym::symbolize::evict::Elf {
                path,
                _non_exhaustive: (),
            });
            let _ = self.symbolizer.evict(&evict);
        }
        module
    }

    /// A module read from a host path (tools and benchmarks).
    pub fn open_path(&mut self, path: &std::path::Path) -> Arc<Module> {
        self.modules.open_path(path)
    }

    /// Names (module, offset) pairs, symbolizing the ones not cached (batched per module).
    pub fn resolve_user(&mut self, locs: &[(ModuleId, u64)]) -> Vec<Resolved> {
        let mut missing: HashMap<ModuleId, Vec<u64>> = HashMap::new();
        for &key in locs {
            if self.user_cache.get(&key).is_some() {
                self.stats.cache_hits += 1;
            } else {
                missing.entry(key.0).or_default().push(key.1);
            }
        }
        let mut fresh: HashMap<(ModuleId, u64), Resolved> = HashMap::new();
        for (id, mut offsets) in missing {
            offsets.sort_unstable();
            offsets.dedup();
            self.stats.cache_misses += offsets.len() as u64;
            let Some(module) = self.modules.get(id).cloned() else {
                continue;
            };
            // A debug file found by build id is indexed by virtual address, not file offset.
            let results = if let Some(debug) = &module.debug_file {
                let addrs: Vec<u64> = offsets
                    .iter()
                    .map(|&o| debug.virtual_address(o).unwrap_or(0))
                    .collect();
                let src = Source::Elf(Elf::new(debug.path.clone()));
                self.symbolizer.symbolize(&src, Input::VirtOffset(&addrs))
            } else {
                let src = Source::Elf(Elf::new(module.read_path.clone()));
                self.symbolizer.symbolize(&src, Input::FileOffset(&offsets))
            };
            let results = match results {
                Ok(results) => results,
                Err(err) => {
                    self.stats.symbolize_errors += 1;
                    tracing::debug!(module = %module.path.display(), "symbolization failed: {err}");
                    Vec::new()
                }
            };
            for (i, &offset) in offsets.iter().enumerate() {
                let resolved = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym),
                    _ => frame::unknown_in_module(&module.name, offset),
                };
                self.user_cache.put((id, offset), resolved.clone());
                fresh.insert((id, offset), resolved);
            }
        }
        locs.iter()
            .map(|key| {
                fresh
                    .get(key)
                    .cloned()
                    .or_else(|| self.user_cache.get(key).cloned())
                    .unwrap_or_else(|| {
                        let name = self
                            .modules
                            .get(key.0)
                            .map_or_else(|| Arc::from("?"), |m| m.name.clone());
                        frame::unknown_in_module(&name, key.1)
                    })
            })
            .collect()
    }

    /// Names addresses of live process `pid` that are outside file mappings: JIT code from its
    /// perf map (`/tmp/perf-PID.map` in its own mount namespace), the vDSO. Unnamed ones come
    /// back as `[unknown] 0x...`.
    pub fn resolve_process(&mut self, pid: u32, addrs: &[u64]) -> Vec<Resolved> {
        let src = Source::Process(Process::new(pid.into()));
        let results = match self.symbolizer.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(results) => results,
            Err(err) => {
                self.stats.symbolize_errors += 1;
                tracing::debug!(pid, "process symbolization failed: {err}");
                Vec::new()
            }
        };
        addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| match results.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    self.stats.process_named += 1;
                    frames_of(sym)
                }
                _ => frame::unknown_addr(addr),
            })
            .collect()
    }

    /// Names kernel addresses from kallsyms.
    pub fn resolve_kernel(&mut self, addrs: &[u64]) -> Vec<Resolved> {
        let mut missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| self.kernel_cache.get(a).is_none())
            .collect();
        self.stats.cache_hits += (addrs.len() - missing.len()) as u64;
        missing.sort_unstable();
        missing.dedup();
        let mut fresh: HashMap<u64, Resolved> = HashMap::new();
        if !missing.is_empty() {
            self.stats.cache_misses += missing.len() as u64;
            let src = Source::Kernel(Kernel::default());
            let results = match self.symbolizer.symbolize(&src, Input::AbsAddr(&missing)) {
                Ok(results) => results,
                Err(err) => {
                    self.stats.symbolize_errors += 1;
                    tracing::debug!("kernel symbolization failed: {err}");
                    Vec::new()
                }
            };
            for (i, &addr) in missing.iter().enumerate() {
                let resolved = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym),
                    _ => frame::unknown_kernel(addr),
                };
                self.kernel_cache.put(addr, resolved.clone());
                fresh.insert(addr, resolved);
            }
        }
        addrs
            .iter()
            .map(|a| {
                fresh
                    .get(a)
                    .cloned()
                    .or_else(|| self.kernel_cache.get(a).cloned())
                    .unwrap_or_else(|| frame::unknown_kernel(*a))
            })
            .collect()
    }
}

/// The frames of one symbolized address, outermost (the real function) first, then the
/// functions inlined into it, innermost last.
fn frames_of(sym: &Sym<'_>) -> Resolved {
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    // The outer function's line is the call site of the first inlined function, if any.
    let outer_info = sym.code_info.as_deref();
    frames.push(Frame::named(
        &sym.name,
        outer_info.map(|ci| ci.file.to_string_lossy()),
        outer_info.and_then(|ci| ci.line),
    ));
    for inlined in &sym.inlined {
        let info = inlined.code_info.as_ref();
        frames.push(Frame::named(
            &inlined.name,
            info.map(|ci| ci.file.to_string_lossy()),
            info.and_then(|ci| ci.line),
        ));
    }
    Arc::from(frames)
}

/// A bare `[unknown] 0x...` frame.
#[must_use]
pub fn frame_unknown(addr: u64) -> Resolved {
    frame::unknown_addr(addr)
}

/// Lowercase hex of a build id.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::maps::parse_maps;

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn names_an_address_of_this_test_binary_through_its_open_module() {
        let addr = marker_function_for_symbolization as *const () as u64;
        assert_eq!(marker_function_for_symbolization(), 42);
        let pid = std::process::id();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = parse_maps(&maps)
            .into_iter()
            .find(|l| l.start <= addr && addr < l.end)
            .unwrap();
        let mut stage = SymbolizerStage::new(16, 8, &[]);
        let module = stage.open_module(pid, &line);
        assert!(module.build_id.is_some(), "cargo links with a build id");
        let offset = addr - line.start + line.offset;
        let names = stage.resolve_user(&[(module.id, offset)]);
        assert!(
            names[0][0]
                .name
                .contains("marker_function_for_symbolization"),
            "{names:?}"
        );
        // Second lookup is served from the cache; the same file opens as the same module.
        let before = stage.stats().cache_hits;
        let _ = stage.resolve_user(&[(module.id, offset)]);
        assert_eq!(stage.stats().cache_hits, before + 1);
        assert_eq!(stage.open_module(pid, &line).id, module.id);
        // Outside any mapping: named `[unknown] 0x..`, never dropped.
        assert_eq!(
            &*stage.resolve_process(pid, &[8])[0][0].name,
            "[unknown] 0x8"
        );
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
