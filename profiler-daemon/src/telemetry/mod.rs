//! Operating the daemon: logs (`tracing`, text or JSON), self-metrics (`metrics`), liveness and
//! readiness (`health`) and the HTTP server for `/metrics`, `/healthz` and `/readyz` (`server`).

pub mod health;
pub mod metrics;
pub mod server;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Checks a `--log-level` value (a level or a `RUST_LOG` directive).
pub fn validate_log_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| format!("--log-level `{level}`: {e} (expected error, warn, info, debug, trace or a RUST_LOG directive)"))
}

/// Installs the global subscriber. The level comes from `level` (the flag), else `RUST_LOG`,
/// else `fallback` (the config file), else `info`. A bad filter falls back to `info` with a
/// warning.
pub fn init_logging(level: Option<&str>, fallback: Option<&str>, format: LogFormat) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let wanted = level
        .map(str::to_owned)
        .or(env)
        .or(fallback.map(str::to_owned));
    let (filter, bad) = match wanted {
        Some(l) => match EnvFilter::try_new(&l) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!("log level `{l}`: {e}")),
            ),
        },
        None => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        // Colors only for a person at a terminal, never in journald or a log pipeline.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    if let Err(err) = installed {
        eprintln!("warning: logging was already set up: {err}");
    }
    if let Some(msg) = bad {
        tracing::warn!("{msg}; using `info`");
    }
}
