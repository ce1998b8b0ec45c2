//! Validated configuration: turns parsed flags into values the stages can trust.

pub mod otlp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{LimitArgs, RecordArgs, RunArgs};

/// Highest sampling frequency accepted. Past this the timer interrupts themselves dominate.
pub const MAX_FREQUENCY: u32 = 10_000;

/// A configuration error: always the user's to fix, so it maps to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--frequency must be between 1 and {MAX_FREQUENCY} Hz, got {0}")]
    Frequency(u32),
    #[error("--duration must be longer than zero")]
    Duration,
    #[error(
        "cannot tell the output format of `{path}`: use one of the extensions {supported}",
        supported = OutputFormat::SUPPORTED
    )]
    OutputFormat { path: PathBuf },
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    #[error("--pid 0 is the idle task, not a process; use --include-idle to see idle time")]
    PidZero,
    #[error("--ring-buffer-size must be a power of two of at least 4096 bytes, got {0}")]
    RingBufferSize(u32),
    #[error("--{name} must be at least 1")]
    ZeroLimit { name: &'static str },
    #[error("{source_name}: `{value}` is not valid: expected {expected}")]
    Invalid {
        source_name: String,
        value: String,
        expected: &'static str,
    },
}

/// Output formats of `profiler record`, chosen by the output file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Interactive flamegraph (inferno).
    Svg,
    /// Folded stacks, one line per unique stack.
    Folded,
    /// gzip-compressed pprof protobuf.
    Pprof,
}

impl OutputFormat {
    /// The extensions, for error messages.
    pub const SUPPORTED: &'static str =
        "`.svg` (flamegraph), `.folded` (folded stacks), `.pb.gz` (pprof)";

    /// Picks the format from a path's extension.
    #[allow(clippy::case_sensitive_file_extension_comparisons)] // `name` is lowercased
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        // Compare lowercased suffixes: `.pb.gz` is a double extension.
        let stem_len = |suffix: &str| name.len().saturating_sub(suffix.len());
        match name {
            n if n.ends_with(".svg") && stem_len(".svg") > 0 => Ok(Self::Svg),
            n if n.ends_with(".folded") && stem_len(".folded") > 0 => Ok(Self::Folded),
            n if n.ends_with(".pb.gz") && stem_len(".pb.gz") > 0 => Ok(Self::Pprof),
            _ => Err(ConfigError::OutputFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Memory bounds, validated.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `None`: sized by the number of CPUs (see `bpf::ring_buffer_bytes`).
    pub ring_buffer_bytes: Option<u32>,
    pub max_stacks: usize,
    pub symbol_cache_entries: usize,
    /// Executables and libraries kept open (and parsed) at most, beyond those in use.
    pub open_modules: usize,
    /// Extra directories searched for split debug info (before `/usr/lib/debug`).
    pub debug_dirs: Vec<PathBuf>,
}

impl Limits {
    pub fn from_args(args: &LimitArgs) -> Result<Self, ConfigError> {
        if let Some(ring) = args.ring_buffer_size
            && (ring < 4096 || !ring.is_power_of_two())
        {
            return Err(ConfigError::RingBufferSize(ring));
        }
        if args.max_stacks == 0 {
            return Err(ConfigError::ZeroLimit { name: "max-stacks" });
        }
        if args.open_modules == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "open-modules",
            });
        }
        if args.symbol_cache_entries == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "symbol-cache-entries",
            });
        }
        Ok(Self {
            ring_buffer_bytes: args.ring_buffer_size,
            max_stacks: args.max_stacks,
            symbol_cache_entries: args.symbol_cache_entries,
            open_modules: args.open_modules,
            debug_dirs: args.debug_dir.clone(),
        })
    }
}

/// What the sampler needs: shared by every subcommand that samples.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub frequency: u32,
    /// Empty: every process.
    pub pids: Vec<u32>,
    pub include_idle: bool,
    pub ring_buffer_bytes: Option<u32>,
    /// Sample the profiler's own process too (off: it is left out, counted as filtered).
    pub profile_self: bool,
}

/// Validated `profiler record` configuration.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub duration: Duration,
    pub output: PathBuf,
    pub format: OutputFormat,
    pub sampler: SamplerConfig,
    pub limits: Limits,
}

/// Checks a sampling frequency.
pub fn validate_frequency(hz: u32) -> Result<u32, ConfigError> {
    if (1..=MAX_FREQUENCY).contains(&hz) {
        Ok(hz)
    } else {
        Err(ConfigError::Frequency(hz))
    }
}

/// Checks `--pid` values: each must name a live process now (a typo should not record nothing).
pub fn validate_pids(pids: &[u32], proc_root: &Path) -> Result<Vec<u32>, ConfigError> {
    let mut out = Vec::with_capacity(pids.len());
    for &pid in pids {
        if pid == 0 {
            return Err(ConfigError::PidZero);
        }
        if !proc_root.join(pid.to_string()).exists() {
            return Err(ConfigError::NoSuchPid(pid));
        }
        if !out.contains(&pid) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// Validated `profiler run` configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub interval: Duration,
    pub sampler: SamplerConfig,
    pub limits: Limits,
    pub otlp: otlp::OtlpConfig,
    pub export_queue_size: usize,
    pub shutdown_timeout: Duration,
    /// `host.name` of every resource.
    pub host_name: String,
}

impl RunConfig {
    /// Validates flags; `env` reads the OpenTelemetry environment variables.
    pub fn from_args(
        args: &RunArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if args.interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                source_name: "--interval".to_owned(),
                value: humantime::format_duration(args.interval).to_string(),
                expected: "at least 100ms",
            });
        }
        if args.export_queue_size == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "export-queue-size",
            });
        }
        let limits = Limits::from_args(&args.limits)?;
        Ok(Self {
            interval: args.interval,
            sampler: SamplerConfig {
                frequency: validate_frequency(args.frequency)?,
                pids: validate_pids(&args.pid, Path::new("/proc"))?,
                include_idle: args.include_idle,
                ring_buffer_bytes: limits.ring_buffer_bytes,
                profile_self: args.limits.profile_self,
            },
            limits,
            otlp: otlp::resolve(&args.otlp, env)?,
            export_queue_size: args.export_queue_size,
            shutdown_timeout: args.shutdown_timeout,
            host_name: host_name(),
        })
    }
}

/// The machine's host name (`gethostname`), empty if unavailable.
#[must_use]
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl RecordConfig {
    pub fn from_args(args: &RecordArgs) -> Result<Self, ConfigError> {
        if args.duration.is_zero() {
            return Err(ConfigError::Duration);
        }
        let limits = Limits::from_args(&args.limits)?;
        Ok(Self {
            duration: args.duration,
            format: OutputFormat::from_path(&args.output)?,
            output: args.output.clone(),
            sampler: SamplerConfig {
                frequency: validate_frequency(args.frequency)?,
                pids: validate_pids(&args.pid, Path::new("/proc"))?,
                include_idle: args.include_idle,
                ring_buffer_bytes: limits.ring_buffer_bytes,
                profile_self: args.limits.profile_self,
            },
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<RecordConfig, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        let Command::Record(rec) = cli.command else {
            panic!("not record")
        };
        RecordConfig::from_args(&rec).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let cfg = parse(&["profiler", "record", "-o", "x.svg"]).unwrap();
        assert_eq!(cfg.duration, Duration::from_secs(10));
        assert_eq!(cfg.sampler.frequency, 99);
        assert_eq!(cfg.format, OutputFormat::Svg);
        assert!(cfg.sampler.pids.is_empty());
        assert!(!cfg.sampler.include_idle);
    }

    #[test]
    fn durations_and_formats() {
        let cfg = parse(&["profiler", "record", "--duration", "2m", "-o", "a.FOLDED"]).unwrap();
        assert_eq!(cfg.duration, Duration::from_mins(2));
        assert_eq!(cfg.format, OutputFormat::Folded);
        let cfg = parse(&["profiler", "record", "-o", "cpu.pb.gz"]).unwrap();
        assert_eq!(cfg.format, OutputFormat::Pprof);
        assert!(parse(&["profiler", "record", "-o", "cpu.gz"]).is_err());
        let cfg = parse(&["profiler", "record", "-d", "500ms", "-o", "a.svg"]).unwrap();
        assert_eq!(cfg.duration, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_are_explained() {
        let err = parse(&["profiler", "record", "-F", "0", "-o", "a.svg"]).unwrap_err();
        assert!(err.contains("between 1 and 10000"), "{err}");
        let err = parse(&["profiler", "record", "-F", "10001", "-o", "a.svg"]).unwrap_err();
        assert!(err.contains("10001"), "{err}");
        let err = parse(&["profiler", "record", "-o", "a.png"]).unwrap_err();
        assert!(err.contains(".svg") && err.contains(".folded"), "{err}");
        let err = parse(&["profiler", "record", "-d", "ten", "-o", "a.svg"]).unwrap_err();
        assert!(err.contains("expected e.g."), "{err}");
        let err = parse(&["profiler", "record", "-d", "0s", "-o", "a.svg"]).unwrap_err();
        assert!(err.contains("longer than zero"), "{err}");
        let err = parse(&["profiler", "record"]).unwrap_err();
        assert!(err.contains("--output"), "{err}");
        let err = parse(&["profiler", "record", "-o", "a.svg", "--pid", "0"]).unwrap_err();
        assert!(err.contains("idle"), "{err}");
        let err = parse(&["profiler", "record", "-o", "a.svg", "--pid", "abc"]).unwrap_err();
        assert!(err.contains("abc"), "{err}");
        let err = parse(&[
            "profiler",
            "record",
            "-o",
            "a.svg",
            "--ring-buffer-size",
            "5000",
        ])
        .unwrap_err();
        assert!(err.contains("power of two"), "{err}");
    }

    #[test]
    fn pids_must_exist_and_are_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        assert_eq!(validate_pids(&[42, 42], dir.path()).unwrap(), vec![42]);
        let err = validate_pids(&[43], dir.path()).unwrap_err();
        assert_eq!(err.to_string(), "--pid 43: no such process");
    }
}
