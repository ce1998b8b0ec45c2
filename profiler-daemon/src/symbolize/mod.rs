//! Names addresses. User addresses arrive normalized to (module, file offset) by the process
//! table (`crate::process`), and are named with one long-lived blazesym symbolizer, cached in a
//! bounded LRU keyed by module and offset, so every process running the same file content shares
//! it (`resolve_user`). Addresses outside file mappings (JIT code, the vDSO) are named
//!    through the live process (`resolve_process`: perf maps, vDSO). Kernel addresses are named
//!    from kallsyms (`resolve_kernel`).
//!
//! Names are demangled (Rust, C++); with DWARF, inlined functions become frames of their own and
//! carry file and line. Split debug info is found by build id or debug link under the debug
//! directories.
//!
//! Parsed DWARF is the daemon's largest memory (a 140 MB binary's took 63 MiB), so it has a
//! budget (`--debug-info-memory`): the files named with DWARF at once have at most that many
//! bytes of `.debug_info` + `.debug_line` between them. A file that does not fit is named from
//! its symbol table (function names; no file, line or inlined frames) until it goes idle; the
//! names it gave then are forgotten with it, so its addresses are named again, with DWARF if it
//! fits by then.

mod cache;
mod frame;
mod names;
mod release;

use cache::NameCache;
pub use frame::{Frame, Resolved, unnamed};
use names::Names;
use release::release_file_pages;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Process, Source};
use blazesym::symbolize::{Input, Sym, Symbolized, Symbolizer};

use crate::objfile::{ModuleId, ModuleRegistry};

/// Counts of the symbolization stage, for summaries and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SymbolizeStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// blazesym returned an error for a whole batch (unreadable or corrupt file, process gone).
    pub symbolize_errors: u64,
    /// Addresses named through a live process (perf map, vDSO).
    pub process_named: u64,
    /// Addresses named from a symbol table only because their file's DWARF did not fit the
    /// budget.
    pub dwarf_over_budget: u64,
}

/// A file blazesym has parsed.
#[derive(Debug)]
struct Parsed {
    /// Asked for names since the last `forget_idle`.
    used: bool,
    /// Windows in a row without names asked of it (see `IDLE_WINDOWS`).
    idle: u8,
    /// The size of its DWARF (whether it is named with it or not).
    dwarf_bytes: u64,
    /// Named with its DWARF, holding `dwarf_bytes` of the budget; else named from its symbol
    /// table only (its DWARF did not fit).
    with_dwarf: bool,
    /// Named from its symbol table only for want of budget: the cache keys of those names (at
    /// most the cache's size), forgotten with this parse if its `dwarf_bytes` would fit then
    /// (see `evict`). Empty for a file whose DWARF never fits.
    short_of_budget: HashSet<(ModuleId, u64)>,
}

impl Parsed {
    /// The share of the DWARF budget it holds.
    fn held(&self) -> u64 {
        if self.with_dwarf { self.dwarf_bytes } else { 0 }
    }
}

/// Windows a parsed file is kept without names asked of it. At 19 Hz a library is often missed
/// by one window's samples and hit again by the next, and parsing it again (inflating its
/// compressed debug sections) costs more CPU than the whole rest of the window; a file whose DWARF
/// share another one needs is dropped at once instead (`make_room`).
const IDLE_WINDOWS: u8 = 3;

/// The long-lived symbolizer with its caches. `!Send` (blazesym's `Symbolizer` is): it lives on
/// the pipeline's own thread.
pub struct SymbolizerStage {
    symbolizer: Symbolizer,
    user_cache: NameCache<(ModuleId, u64), Resolved>,
    kernel_cache: NameCache<u64, Resolved>,
    /// One copy of each name and frame list within the window.
    names: Names,
    /// Files blazesym has parsed.
    parsed: HashMap<PathBuf, Parsed>,
    /// `--debug-info-memory`, and how much of it the parsed files hold.
    dwarf_budget: u64,
    dwarf_in_use: u64,
    told_over_budget: bool,
    /// The daemon's executable, whose mapped pages stay (see `release_file_pages`).
    own_exe: Option<PathBuf>,
    stats: SymbolizeStats,
}

impl SymbolizerStage {
    /// `cache_entries` bounds each of the user and kernel name caches; `debug_dirs` are searched
    /// for split debug info (see `objfile::debug_dirs`); `dwarf_budget` bounds the DWARF parsed
    /// at once (see the module's header).
    #[must_use]
    pub fn new(cache_entries: usize, debug_dirs: Vec<PathBuf>, dwarf_budget: u64) -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .set_debug_dirs(Some(debug_dirs))
                .build(),
            user_cache: NameCache::new(cache_entries),
            kernel_cache: NameCache::new(cache_entries),
            names: Names::default(),
            parsed: HashMap::new(),
            dwarf_budget,
            dwarf_in_use: 0,
            told_over_budget: false,
            own_exe: std::env::current_exe().ok(),
            stats: SymbolizeStats::default(),
        }
    }

    #[must_use]
    pub fn stats(&self) -> SymbolizeStats {
        self.stats
    }

    /// (user cache entries, kernel cache entries).
    #[must_use]
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.user_cache.len(), self.kernel_cache.len())
    }

    /// Forgets what blazesym parsed of closed modules (their fd numbers will be reused by other
    /// files; see `ModuleRegistry::take_closed`).
    pub fn forget(&mut self, read_paths: Vec<PathBuf>) {
        for path in read_paths {
            self.evict(path);
        }
    }

    /// Forgets what blazesym parsed of the files not asked for names in the last `IDLE_WINDOWS`
    /// calls (one a window): parsed symbols and DWARF (and the file's mapped pages) are the
    /// daemon's largest memory, and the names looked up stay in the caches. A file is parsed
    /// again only for an address not seen before.
    pub fn forget_idle(&mut self) {
        self.names.clear();
        // The files' pages blazesym touched (a large binary's DWARF: tens of MiB) are given back
        // once a window, after all its naming: per lookup, they would be faulted in again for
        // every stack.
        if let Some(exe) = &self.own_exe {
            let bytes = release_file_pages(exe);
            tracing::trace!(bytes, "mapped pages of symbolized files given back");
        }
        for parsed in self.parsed.values_mut() {
            parsed.idle = if parsed.used {
                0
            } else {
                parsed.idle.saturating_add(1)
            };
            parsed.used = false;
        }
        let idle: Vec<PathBuf> = self
            .parsed
            .iter()
            .filter(|(_, parsed)| parsed.idle >= IDLE_WINDOWS)
            .map(|(path, _)| path.clone())
            .collect();
        for path in idle {
            self.evict(path);
        }
    }

    /// Drops the parses not used in this window that hold DWARF, longest idle first, until
    /// `dwarf_bytes` more fit the budget (or none is left).
    fn make_room(&mut self, dwarf_bytes: u64) {
        let mut idle: Vec<(u8, PathBuf)> = self
            .parsed
            .iter()
            .filter(|(_, parsed)| !parsed.used && parsed.with_dwarf)
            .map(|(path, parsed)| (parsed.idle, path.clone()))
            .collect();
        idle.sort_unstable_by_key(|(windows, _)| std::cmp::Reverse(*windows));
        for (_, path) in idle {
            if self.dwarf_in_use + dwarf_bytes <= self.dwarf_budget {
                break;
            }
            self.evict(path);
        }
    }

    fn evict(&mut self, path: PathBuf) {
        if let Some(parsed) = self.parsed.remove(&path) {
            self.dwarf_in_use -= parsed.held();
            // Named again (with DWARF) only if it would fit beside the parses used lately: else
            // the same symbol-table names would be parsed again for nothing.
            let held: u64 = self
                .parsed
                .values()
                .filter(|p| p.idle == 0)
                .map(Parsed::held)
                .sum();
            if held + parsed.dwarf_bytes <= self.dwarf_budget {
                for key in &parsed.short_of_budget {
                    self.user_cache.remove(key);
                }
            }
        }
        let evict = blazesym::symbolize::evict::Evict::Elf(blazesym::symbolize::evict::Elf {
            path,
            _non_exhaustive: (),
        });
        if let Err(err) = self.symbolizer.evict(&evict) {
            tracing::debug!("forgetting a parsed file failed: {err}");
        }
    }

    /// Forgets what blazesym keeps about process `pid` (gone).
    pub fn forget_process(&mut self, pid: u32) {
        let evict = blazesym::symbolize::evict::Evict::Process(
            blazesym::symbolize::evict::Process::new(pid.into()),
        );
        if let Err(err) = self.symbolizer.evict(&evict) {
            tracing::debug!(pid, "forgetting a process failed: {err}");
        }
    }

    /// Names (module, offset) pairs, symbolizing the ones not cached (batched per module).
    pub fn resolve_user(
        &mut self,
        locs: &[(ModuleId, u64)],
        modules: &ModuleRegistry,
    ) -> Vec<Resolved> {
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
            let Some(module) = modules.get(id) else {
                continue;
            };
            let (path, dwarf_bytes) = module.naming_file();
            let mut elf = Elf::new(path.to_path_buf());
            elf.debug_syms = self.admit(path, dwarf_bytes);
            if !elf.debug_syms {
                self.stats.dwarf_over_budget += offsets.len() as u64;
                // Named again once this parse is gone, if the file could fit then.
                let room = self.user_cache.capacity();
                if dwarf_bytes <= self.dwarf_budget
                    && let Some(parsed) = self.parsed.get_mut(path)
                {
                    for &offset in &offsets {
                        if parsed.short_of_budget.len() >= room {
                            break;
                        }
                        parsed.short_of_budget.insert((id, offset));
                    }
                }
            }
            let src = Source::Elf(elf);
            // A debug file found by build id is indexed by virtual address, not file offset.
            let results = if module.debug_file.is_some() {
                let addrs: Vec<u64> = offsets
                    .iter()
                    .map(|&o| module.virtual_address(o).unwrap_or(0))
                    .collect();
                self.symbolizer.symbolize(&src, Input::VirtOffset(&addrs))
            } else {
                self.symbolizer.symbolize(&src, Input::FileOffset(&offsets))
            };
            let results = match results {
                Ok(results) => results,
                Err(err) => {
                    self.stats.symbolize_errors += 1;
                    tracing::debug!(module = %module.path.display(), "symbolization failed: {err}");
                    // Corrupt or unreadable debug info must not cost the symbol table's names.
                    let mut elf = Elf::new(module.read_path.clone());
                    elf.debug_syms = false;
                    self.symbolizer
                        .symbolize(&Source::Elf(elf), Input::FileOffset(&offsets))
                        .unwrap_or_default()
                }
            };
            for (i, &offset) in offsets.iter().enumerate() {
                let resolved = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => frames_of(&mut self.names, sym),
                    _ => unnamed(),
                };
                self.user_cache.put((id, offset), Arc::clone(&resolved));
                fresh.insert((id, offset), resolved);
            }
        }
        locs.iter()
            .map(|key| {
                fresh
                    .get(key)
                    .cloned()
                    .or_else(|| self.user_cache.get(key).cloned())
                    .unwrap_or_else(unnamed)
            })
            .collect()
    }

    /// Marks `path` used and says whether it is named with its DWARF: yes if it already is, or
    /// if its `dwarf_bytes` fit what is left of the budget (then they are taken from it). A file
    /// named from its symbol table stays so until it is evicted, so one file's names do not
    /// change kind within its parse.
    fn admit(&mut self, path: &std::path::Path, dwarf_bytes: u64) -> bool {
        if let Some(parsed) = self.parsed.get_mut(path) {
            parsed.used = true;
            return parsed.with_dwarf;
        }
        if self.dwarf_in_use + dwarf_bytes > self.dwarf_budget {
            self.make_room(dwarf_bytes);
        }
        let fits = self.dwarf_in_use + dwarf_bytes <= self.dwarf_budget;
        if fits {
            self.dwarf_in_use += dwarf_bytes;
        } else if !self.told_over_budget {
            // Once at info: files come and go every window on a busy host; the count is in
            // the metrics (`profiler_symbolize_total{result="dwarf_over_budget"}`).
            self.told_over_budget = true;
            tracing::info!(
                file = %path.display(),
                dwarf_mib = dwarf_bytes >> 20,
                in_use_mib = self.dwarf_in_use >> 20,
                "a file named from its symbol table (no lines, no inlined frames): its DWARF does \
                 not fit --debug-info-memory (further ones are logged at debug level)"
            );
        } else {
            tracing::debug!(file = %path.display(), dwarf_mib = dwarf_bytes >> 20,
                "named from its symbol table: its DWARF does not fit --debug-info-memory");
        }
        self.parsed.insert(
            path.to_path_buf(),
            Parsed {
                used: true,
                idle: 0,
                dwarf_bytes,
                with_dwarf: fits,
                short_of_budget: HashSet::new(),
            },
        );
        fits
    }

    /// Names addresses of live process `pid` that are outside file mappings: JIT code from its
    /// perf map (`/tmp/perf-PID.map` in its own mount namespace), the vDSO. Unnamed ones come
    /// back without frames.
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
        (0..addrs.len())
            .map(|i| match results.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    self.stats.process_named += 1;
                    frames_of(&mut self.names, sym)
                }
                _ => unnamed(),
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
                    Some(Symbolized::Sym(sym)) => frames_of(&mut self.names, sym),
                    _ => unnamed(),
                };
                self.kernel_cache.put(addr, Arc::clone(&resolved));
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
                    .unwrap_or_else(unnamed)
            })
            .collect()
    }
}

/// The frames of one symbolized address, outermost (the real function) first, then the
/// functions inlined into it, innermost last.
fn frames_of(names: &mut Names, sym: &Sym<'_>) -> Resolved {
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    // The outer function's line is the call site of the first inlined function, if any.
    let outer_info = sym.code_info.as_deref();
    frames.push(names.frame(
        &sym.name,
        outer_info.map(|ci| ci.file.to_string_lossy()).as_deref(),
        outer_info.and_then(|ci| ci.line),
    ));
    for inlined in &sym.inlined {
        let info = inlined.code_info.as_ref();
        frames.push(names.frame(
            &inlined.name,
            info.map(|ci| ci.file.to_string_lossy()).as_deref(),
            info.and_then(|ci| ci.line),
        ));
    }
    names.frames(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_maps;

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        std::hint::black_box(42)
    }

    /// This test binary opened as a module, and the (module, offset) of the marker function.
    fn marker_module() -> (ModuleRegistry, Arc<crate::objfile::Module>, u64) {
        let addr = marker_function_for_symbolization as *const () as u64;
        assert_eq!(marker_function_for_symbolization(), 42);
        let pid = std::process::id();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = parse_maps(&maps)
            .into_iter()
            .find(|l| l.start <= addr && addr < l.end)
            .unwrap();
        let mut modules = ModuleRegistry::new(8, Vec::new());
        let module = modules.open(pid, &line);
        (modules, module, addr - line.start + line.offset)
    }

    #[test]
    fn names_an_address_of_this_test_binary_through_its_open_module() {
        let (modules, module, offset) = marker_module();
        let pid = std::process::id();
        let mut stage = SymbolizerStage::new(16, Vec::new(), u64::MAX);
        let names = stage.resolve_user(&[(module.id, offset)], &modules);
        assert!(
            names[0][0]
                .name
                .contains("marker_function_for_symbolization"),
            "{names:?}"
        );
        // Second lookup is served from the cache.
        let before = stage.stats().cache_hits;
        let _ = stage.resolve_user(&[(module.id, offset)], &modules);
        assert_eq!(stage.stats().cache_hits, before + 1);
        // Outside any mapping: no name, but one entry per address (never dropped).
        let unnamed = stage.resolve_process(pid, &[8]);
        assert_eq!(unnamed.len(), 1);
        assert!(unnamed[0].is_empty());
    }

    #[test]
    fn a_file_whose_dwarf_does_not_fit_the_budget_is_named_from_its_symbol_table() {
        let (modules, module, offset) = marker_module();
        let (_, dwarf_bytes) = module.naming_file();
        assert!(dwarf_bytes > 0, "the test binary has DWARF");
        let key = (module.id, offset);

        // It fits exactly: file and line from DWARF.
        let mut stage = SymbolizerStage::new(16, Vec::new(), dwarf_bytes);
        let named = stage.resolve_user(&[key], &modules);
        let frame = named[0].first().expect("named");
        assert!(frame.file.is_some() && frame.line.is_some(), "{frame:?}");
        assert_eq!(stage.stats().dwarf_over_budget, 0);
        assert_eq!(stage.dwarf_in_use, dwarf_bytes);
        // Idle for `IDLE_WINDOWS` windows, the parse is forgotten and the budget given back.
        stage.forget_idle();
        assert_eq!(stage.dwarf_in_use, dwarf_bytes, "used in this window");
        for _ in 1..IDLE_WINDOWS {
            stage.forget_idle();
            assert_eq!(stage.dwarf_in_use, dwarf_bytes, "kept while idle a little");
        }
        stage.forget_idle();
        assert_eq!(stage.dwarf_in_use, 0);

        // Sooner when another file needs its share: idle in this window, it makes room.
        stage.resolve_user(&[(module.id, offset + 1)], &modules);
        assert_eq!(stage.dwarf_in_use, dwarf_bytes);
        stage.forget_idle();
        assert!(stage.admit(std::path::Path::new("/another/file"), dwarf_bytes));
        assert_eq!(stage.dwarf_in_use, dwarf_bytes);
        assert_eq!(stage.parsed.len(), 1, "the idle parse was dropped");
        // A file used in this window is not dropped for another.
        assert!(!stage.admit(std::path::Path::new("/a/third"), 1));

        // One byte short: the same name from the symbol table, without file or line, counted.
        let mut stage = SymbolizerStage::new(16, Vec::new(), dwarf_bytes - 1);
        let named = stage.resolve_user(&[key], &modules);
        let frame = named[0].first().expect("named");
        assert!(
            frame.name.contains("marker_function_for_symbolization"),
            "{frame:?}"
        );
        assert_eq!((frame.file.as_deref(), frame.line), (None, None));
        assert_eq!(stage.stats().dwarf_over_budget, 1);
        assert_eq!(stage.dwarf_in_use, 0);

        // Short of budget only while another file holds it: once both parses are idle and
        // gone, the address is named again, with DWARF (not the symbol-table name cached).
        let mut stage = SymbolizerStage::new(16, Vec::new(), dwarf_bytes);
        assert!(stage.admit(std::path::Path::new("/another/file"), dwarf_bytes));
        let named = stage.resolve_user(&[key], &modules);
        assert_eq!(named[0].first().and_then(|f| f.line), None, "over budget");
        assert_eq!(stage.stats().dwarf_over_budget, 1);
        for _ in 0..=IDLE_WINDOWS {
            stage.forget_idle();
        }
        assert!(stage.parsed.is_empty());
        let named = stage.resolve_user(&[key], &modules);
        let frame = named[0].first().expect("named");
        assert!(frame.file.is_some() && frame.line.is_some(), "{frame:?}");
        assert_eq!(stage.stats().dwarf_over_budget, 1);

        // While the other file stays in use, the symbol-table names are kept (parsing the file
        // again would give the same).
        let mut stage = SymbolizerStage::new(16, Vec::new(), dwarf_bytes);
        let other = std::path::Path::new("/another/file");
        assert!(stage.admit(other, dwarf_bytes));
        stage.resolve_user(&[key], &modules);
        for _ in 0..=IDLE_WINDOWS {
            stage.forget_idle();
            assert!(stage.admit(other, dwarf_bytes));
        }
        assert_eq!(stage.parsed.len(), 1, "only the other file's parse is left");
        let hits = stage.stats().cache_hits;
        stage.resolve_user(&[key], &modules);
        assert_eq!(stage.stats().cache_hits, hits + 1, "kept in the cache");
        assert_eq!(stage.stats().dwarf_over_budget, 1);
    }
}
