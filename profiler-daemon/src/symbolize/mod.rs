//! Names addresses, in two steps so that names outlive processes and caches are shared:
//! 1. *normalize* a process's user address to (ELF file, file offset, build id) while the process
//!    is alive (`normalize`);
//! 2. *symbolize* per (module, file offset) with one long-lived blazesym symbolizer, cached by
//!    (build id or path, offset) in a bounded LRU (`resolve_user`, `resolve_kernel`).
//!
//! Kernel addresses are named from kallsyms. Names are demangled (Rust, C++); with DWARF, inlined
//! functions become frames of their own and carry file and line.

mod frame;

pub use frame::{Frame, Resolved};

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use blazesym::normalize::{Normalizer, UserMeta};
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Sym, Symbolized, Symbolizer};
use lru::LruCache;

/// Index of a module (an ELF file identified by build id, else by path) in `Modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(u32);

/// One executable or shared library seen in some process.
#[derive(Debug, Clone)]
pub struct Module {
    /// Path as the process mapped it (host path for now).
    pub path: PathBuf,
    /// File name, for `[unknown] name+0x..` frames.
    pub name: Arc<str>,
    /// GNU build id, lowercase hex, when the file has one.
    pub build_id: Option<Arc<str>>,
}

/// Where a user address points, decided while its process was alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserLoc {
    /// In a file-backed mapping: the module and the offset in the file.
    File { module: ModuleId, offset: u64 },
    /// Not in any file mapping (anonymous memory, or the process was gone): the raw address.
    Unmapped { addr: u64 },
}

/// Counts of the symbolization stage, for summaries and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SymbolizeStats {
    pub normalize_calls: u64,
    /// Normalization failed for a whole batch (the process had exited, /proc unreadable).
    pub normalize_failed: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// blazesym returned an error for a whole batch (unreadable or corrupt file).
    pub symbolize_errors: u64,
}

/// The long-lived symbolizer with its caches. `!Send` (blazesym's `Symbolizer` is): it lives on
/// the pipeline's own thread.
pub struct SymbolizerStage {
    normalizer: Normalizer,
    symbolizer: Symbolizer,
    modules: Vec<Arc<Module>>,
    module_ids: HashMap<(PathBuf, Option<Arc<str>>), ModuleId>,
    user_cache: LruCache<(ModuleId, u64), Resolved>,
    kernel_cache: LruCache<u64, Resolved>,
    stats: SymbolizeStats,
}

impl SymbolizerStage {
    /// `cache_entries` bounds each of the user and kernel name caches.
    #[must_use]
    pub fn new(cache_entries: usize) -> Self {
        let cap = NonZeroUsize::new(cache_entries).unwrap_or(NonZeroUsize::MIN);
        Self {
            normalizer: Normalizer::builder()
                .enable_build_ids(true)
                .enable_build_id_caching(true)
                .build(),
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            modules: Vec::new(),
            module_ids: HashMap::new(),
            user_cache: LruCache::new(cap),
            kernel_cache: LruCache::new(cap),
            stats: SymbolizeStats::default(),
        }
    }

    #[must_use]
    pub fn stats(&self) -> SymbolizeStats {
        self.stats
    }

    #[must_use]
    pub fn module(&self, id: ModuleId) -> &Arc<Module> {
        &self.modules[id.0 as usize]
    }

    /// Normalizes `addrs` of live process `pid`; one location per address, in order. When the
    /// process is gone the addresses stay `Unmapped` (and are counted), never dropped.
    pub fn normalize(&mut self, pid: u32, addrs: &[u64]) -> Vec<UserLoc> {
        self.stats.normalize_calls += 1;
        let output = match self.normalizer.normalize_user_addrs(pid.into(), addrs) {
            Ok(output) => output,
            Err(err) => {
                self.stats.normalize_failed += 1;
                tracing::debug!(pid, "normalizing addresses failed: {err}");
                return addrs
                    .iter()
                    .map(|&addr| UserLoc::Unmapped { addr })
                    .collect();
            }
        };
        let metas: Vec<Option<(PathBuf, Option<Arc<str>>)>> = output
            .meta
            .iter()
            .map(|meta| match meta {
                UserMeta::Elf(elf) => Some((
                    elf.path.clone(),
                    elf.build_id.as_ref().map(|b| Arc::from(hex(b))),
                )),
                _ => None,
            })
            .collect();
        let outputs = output.outputs;
        let meta_modules: Vec<Option<ModuleId>> = metas
            .into_iter()
            .map(|m| m.map(|(path, build_id)| self.intern(path, build_id)))
            .collect();
        outputs
            .iter()
            .zip(addrs)
            .map(
                |(&(offset, meta), &addr)| match meta_modules.get(meta).copied().flatten() {
                    Some(module) => UserLoc::File { module, offset },
                    None => UserLoc::Unmapped { addr },
                },
            )
            .collect()
    }

    fn intern(&mut self, path: PathBuf, build_id: Option<Arc<str>>) -> ModuleId {
        let key = (path, build_id);
        if let Some(&id) = self.module_ids.get(&key) {
            return id;
        }
        let id = ModuleId(self.modules.len() as u32);
        let name: Arc<str> = key
            .0
            .file_name()
            .map_or_else(|| key.0.to_string_lossy(), |n| n.to_string_lossy())
            .into();
        self.modules.push(Arc::new(Module {
            path: key.0.clone(),
            name,
            build_id: key.1.clone(),
        }));
        self.module_ids.insert(key, id);
        id
    }

    /// Names user locations, symbolizing the ones not cached (batched per module).
    pub fn resolve_user(&mut self, locs: &[UserLoc]) -> Vec<Resolved> {
        let mut missing: HashMap<ModuleId, Vec<u64>> = HashMap::new();
        for loc in locs {
            if let UserLoc::File { module, offset } = *loc {
                if self.user_cache.get(&(module, offset)).is_some() {
                    self.stats.cache_hits += 1;
                } else {
                    missing.entry(module).or_default().push(offset);
                }
            }
        }
        let mut fresh: HashMap<(ModuleId, u64), Resolved> = HashMap::new();
        for (module, mut offsets) in missing {
            offsets.sort_unstable();
            offsets.dedup();
            self.stats.cache_misses += offsets.len() as u64;
            let path = self.modules[module.0 as usize].path.clone();
            let src = Source::Elf(Elf::new(path));
            let results = match self.symbolizer.symbolize(&src, Input::FileOffset(&offsets)) {
                Ok(results) => results,
                Err(err) => {
                    self.stats.symbolize_errors += 1;
                    tracing::debug!(module = %self.modules[module.0 as usize].path.display(), "symbolization failed: {err}");
                    Vec::new()
                }
            };
            for (i, &offset) in offsets.iter().enumerate() {
                let resolved = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym),
                    _ => frame::unknown_in_module(&self.modules[module.0 as usize].name, offset),
                };
                self.user_cache.put((module, offset), resolved.clone());
                fresh.insert((module, offset), resolved);
            }
        }
        locs.iter()
            .map(|loc| match *loc {
                UserLoc::File { module, offset } => fresh
                    .get(&(module, offset))
                    .cloned()
                    .or_else(|| self.user_cache.get(&(module, offset)).cloned())
                    .unwrap_or_else(|| {
                        frame::unknown_in_module(&self.modules[module.0 as usize].name, offset)
                    }),
                UserLoc::Unmapped { addr } => frame::unknown_addr(addr),
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

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn names_an_address_of_this_test_binary() {
        let addr = marker_function_for_symbolization as *const () as u64;
        assert_eq!(marker_function_for_symbolization(), 42);
        let mut stage = SymbolizerStage::new(16);
        let locs = stage.normalize(std::process::id(), &[addr, 8]);
        assert!(matches!(locs[0], UserLoc::File { .. }), "{locs:?}");
        assert_eq!(locs[1], UserLoc::Unmapped { addr: 8 });
        let names = stage.resolve_user(&locs);
        let outer = &names[0][0];
        assert!(
            outer.name.contains("marker_function_for_symbolization"),
            "{names:?}"
        );
        assert_eq!(&*names[1][0].name, "[unknown] 0x8");
        // Second lookup is served from the cache.
        let before = stage.stats().cache_hits;
        let _ = stage.resolve_user(&locs[..1]);
        assert_eq!(stage.stats().cache_hits, before + 1);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
