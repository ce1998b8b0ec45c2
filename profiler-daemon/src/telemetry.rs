//! Logging setup: `tracing` to stderr, level from `--log-level` or `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A bad filter falls back to `info` with a warning.
pub fn init_logging(level: Option<&str>) {
    let (filter, bad) = match level {
        Some(l) => match EnvFilter::try_new(l) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!("--log-level {l}: {e}")),
            ),
        },
        None => (
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            None,
        ),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colors only for a person at a terminal, never in journald or a log pipeline.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(msg) = bad {
        tracing::warn!("{msg}; using `info`");
    }
}
