//! Sinks for a symbolized profile: files (folded stacks, SVG flamegraph, pprof) and OTLP.

pub mod folded;
mod intern;
pub mod otlp;
pub mod pprof;
pub mod svg;

use std::path::{Path, PathBuf};

use crate::config::OutputFormat;
use crate::profile::SymbolizedProfile;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering the flamegraph failed: {0}")]
    Flamegraph(String),
}

/// Options of the file outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOptions {
    /// Keep idle samples (pid 0).
    pub include_idle: bool,
    /// Unnamed addresses each as their own frame (`--keep-addresses`), not grouped by file.
    pub keep_addresses: bool,
}

/// This process's umask (`/proc/self/status`, Linux ≥ 4.7), else the usual 022. Read, not set:
/// `umask(2)` cannot be read without changing it, and other threads may be creating files.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Writes `profile` to `path` in `format` (atomically: a temporary file renamed into place, so a
/// crash never leaves half a file).
pub fn write_file(
    profile: &SymbolizedProfile,
    format: OutputFormat,
    path: &Path,
    options: FileOptions,
    title: &str,
) -> Result<(), ExportError> {
    let write_err = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match format {
        OutputFormat::Folded => folded::render(&folded::fold(profile, options)).into_bytes(),
        OutputFormat::Svg => svg::render(&folded::fold(profile, options), title)?,
        OutputFormat::Pprof => pprof::render(profile, options).map_err(write_err)?,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(write_err)?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(write_err)?;
    // tempfile creates 0600; the output is for people to open, like any file a tool writes:
    // 0666 less the umask.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            0o666 & !process_umask(),
        ))
        .map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}
