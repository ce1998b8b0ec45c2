//! `profiler bench-symbolize` (hidden): symbolization throughput on one binary, cold (first
//! lookups: files parsed, caches empty) and warm (the same addresses again, from the caches),
//! for `cargo xtask bench`.

use std::path::Path;
use std::time::{Duration, Instant};

use blazesym::inspect::Inspector;
use blazesym::inspect::source::{Elf, Source};

use crate::symbolize::SymbolizerStage;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot list the functions of `{path}`: {message}")]
    Inspect { path: String, message: String },
    #[error("`{0}` has no function symbols to look up")]
    NoFunctions(String),
}

/// Throughput figures.
#[derive(Debug, Clone, Copy)]
pub struct SymbolizeBench {
    pub addresses: usize,
    pub cold: Duration,
    pub warm: Duration,
}

impl SymbolizeBench {
    #[must_use]
    pub fn per_second(n: usize, d: Duration) -> f64 {
        n as f64 / d.as_secs_f64().max(1e-9)
    }
}

/// Looks up `count` addresses spread over the functions of `binary`, twice.
pub fn run(binary: &Path, count: usize) -> Result<SymbolizeBench, BenchError> {
    let mut offsets = Vec::new();
    let inspector = Inspector::new();
    let src = Source::Elf(Elf::new(binary));
    inspector
        .for_each(&src, |sym| {
            if let (Some(offset), Some(size)) = (sym.file_offset, sym.size)
                && size > 1
            {
                offsets.push(offset + size as u64 / 2);
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| BenchError::Inspect {
            path: binary.display().to_string(),
            message: e.to_string(),
        })?;
    if offsets.is_empty() {
        return Err(BenchError::NoFunctions(binary.display().to_string()));
    }
    offsets.sort_unstable();
    offsets.dedup();
    // Spread `count` picks evenly over all functions.
    let step = (offsets.len() / count.max(1)).max(1);
    let picks: Vec<u64> = offsets.iter().step_by(step).take(count).copied().collect();

    let mut stage = SymbolizerStage::new(picks.len() * 2, 4, &[]);
    let module = stage.open_path(binary);
    let keys: Vec<_> = picks.iter().map(|&o| (module.id, o)).collect();
    let start = Instant::now();
    let names = stage.resolve_user(&keys);
    let cold = start.elapsed();
    let start = Instant::now();
    let again = stage.resolve_user(&keys);
    let warm = start.elapsed();
    debug_assert_eq!(names.len(), again.len());
    Ok(SymbolizeBench {
        addresses: keys.len(),
        cold,
        warm,
    })
}
