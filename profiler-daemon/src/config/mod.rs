//! Validated configuration: the flags (`args`), the configuration file (`file`) and the OTLP
//! settings (`otlp`) turned into values the stages can trust.

pub mod args;
pub mod file;
pub mod layers;
pub mod otlp;
pub mod rules;

use std::path::{Path, PathBuf};
use std::time::Duration;

use args::{LimitArgs, RecordArgs, RunArgs};

/// Default `--ui-max-stacks`: stacks the live page keeps over all its windows (about 150 bytes
/// each with a 30-frame stack, so ~30 MiB at most).
pub const DEFAULT_UI_MAX_STACKS: usize = 200_000;

/// Highest sampling frequency accepted. Past this the timer interrupts themselves dominate.
pub const MAX_FREQUENCY: u32 = 10_000;

/// A configuration error: always the user's to fix, so it maps to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Cgroup(#[from] crate::procfs::CgroupError),
    #[error(transparent)]
    Selector(#[from] crate::kubernetes::SelectorError),
    #[error("--frequency must be between 1 and {MAX_FREQUENCY} Hz, got {0}")]
    Frequency(u32),
    #[error("--duration must be longer than zero")]
    Duration,
    #[error(
        "cannot tell the output format of `{path}`: use one of the extensions {supported}",
        supported = OutputFormat::SUPPORTED
    )]
    OutputFormat { path: PathBuf },
    #[error("cannot write the output `{path}`: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    #[error("--pid 0 is the idle task, not a process; use --include-idle to see idle time")]
    PidZero,
    #[error("--pid {thread} is a thread of process {process}: use --pid {process}")]
    PidIsThread { thread: u32, process: u32 },
    #[error("--ring-buffer-size must be a power of two of at least 4096 bytes, got {0}")]
    RingBufferSize(u32),
    #[error("--unwind-table-memory must be between 1 MiB and 4 GiB, got {0} bytes")]
    UnwindTableMemory(u64),
    #[error("--{name} must be at least 1")]
    ZeroLimit { name: &'static str },
    #[error("config file `{path}`: {message}")]
    File { path: PathBuf, message: String },
    #[error("{origin}: `{value}` is not valid: expected {expected}")]
    Invalid {
        origin: Source,
        value: String,
        expected: &'static str,
    },
}

/// Where a setting's value came from: the layer that won (flags > environment > file >
/// defaults). Errors carry it, so a value from the file is reported with the file's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag (its name without dashes, also its file key).
    Flag(&'static str),
    /// An environment variable.
    Env(String),
    /// A key of the configuration file.
    File(&'static str),
    /// Anything else: a default, a derived value.
    Other(&'static str),
}

impl Source {
    #[must_use]
    pub fn env(name: &str) -> Self {
        Self::Env(name.to_owned())
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "--{flag}"),
            Source::Env(name) => f.write_str(name),
            Source::File(key) => write!(f, "config file key `{key}`"),
            Source::Other(what) => f.write_str(what),
        }
    }
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
    #[allow(
        clippy::case_sensitive_file_extension_comparisons,
        reason = "`name` is lowercased"
    )]
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
    /// DWARF parsed at once for naming (`--debug-info-memory`).
    pub debug_info_bytes: u64,
    /// Executables and libraries kept open (and parsed) at most, beyond those in use.
    pub open_modules: usize,
    /// Extra directories searched for split debug info (before `/usr/lib/debug`).
    pub debug_dirs: Vec<PathBuf>,
    /// Sample the profiler's own process too.
    pub profile_self: bool,
    /// How user stacks are walked.
    pub unwind: UnwindMode,
    /// Kernel memory for unwind table rows (`--unwind tables`).
    pub unwind_table_bytes: u64,
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
        if args.unwind_table_memory < 1 << 20 || args.unwind_table_memory > 4 << 30 {
            return Err(ConfigError::UnwindTableMemory(args.unwind_table_memory));
        }
        Ok(Self {
            unwind: args.unwind,
            unwind_table_bytes: args.unwind_table_memory,
            ring_buffer_bytes: args.ring_buffer_size,
            max_stacks: args.max_stacks,
            symbol_cache_entries: args.symbol_cache_entries,
            open_modules: args.open_modules,
            debug_info_bytes: args.debug_info_memory,
            debug_dirs: args.debug_dir.clone(),
            profile_self: args.profile_self,
        })
    }
}

/// What the sampler needs: shared by every subcommand that samples.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub frequency: u32,
    /// Empty (with `cgroups` empty): every process.
    pub pids: Vec<u32>,
    /// cgroups whose tasks (descendants included) are sampled, besides `pids`.
    pub cgroups: Vec<crate::procfs::CgroupFilter>,
    /// What `cgroups` was resolved from (resolved again while sampling).
    pub cgroup_targets: crate::procfs::CgroupTargets,
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
    /// Unnamed addresses kept apart in the output (`--keep-addresses`).
    pub keep_addresses: bool,
    pub sampler: SamplerConfig,
    pub limits: Limits,
}

impl SamplerConfig {
    /// Validates the sampling flags shared by `record` and `run`.
    pub fn validated(
        frequency: u32,
        pids: &[u32],
        cgroup_targets: crate::procfs::CgroupTargets,
        include_idle: bool,
        limits: &Limits,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            frequency: validate_frequency(frequency)?,
            pids: validate_pids(pids, Path::new("/proc"))?,
            cgroups: crate::procfs::resolve_cgroups(&cgroup_targets)?,
            cgroup_targets,
            include_idle,
            ring_buffer_bytes: limits.ring_buffer_bytes,
            profile_self: limits.profile_self,
        })
    }
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
        let dir = proc_root.join(pid.to_string());
        if !dir.exists() {
            return Err(ConfigError::NoSuchPid(pid));
        }
        // /proc/TID exists for every thread too, but the filter matches processes (tgids).
        if let Some(tgid) = thread_group(&dir)
            && tgid != pid
        {
            return Err(ConfigError::PidIsThread {
                thread: pid,
                process: tgid,
            });
        }
        if !out.contains(&pid) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// The `Tgid:` of `/proc/PID/status`.
fn thread_group(pid_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_dir.join("status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
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
    /// Opt-in labels (series multipliers).
    pub labels: Vec<otlp::ExtraLabel>,
    /// Largest converted profile and request, in bytes.
    pub max_profile_bytes: usize,
    /// `host.name` of every resource.
    pub host_name: String,
    /// The HTTP server's address (`None`: disabled).
    pub http_address: Option<std::net::SocketAddr>,
    /// The live page's address (`None`: disabled, the default).
    pub ui_address: Option<std::net::SocketAddr>,
    /// Stacks the live page keeps at most.
    pub ui_max_stacks: usize,
    pub log_format: LogFormat,
    /// `log-level` from the config file (below `--log-level` and `RUST_LOG`).
    pub log_level: Option<String>,
    /// The file's `[[service-name]]` rules (empty without a file).
    pub service_rules: rules::ServiceRules,
    /// `--kubernetes`: the node whose pods label the profiles (`NODE_NAME`).
    pub kubernetes_node: Option<String>,
    /// `--namespace`, `--selector`: the pods to profile (`None`: no pod filter).
    pub pod_selector: Option<crate::kubernetes::PodSelector>,
}

/// Log output format.
/// How user stacks are walked (`--unwind`).
///
/// `auto`, the default, is the table walker wherever the kernel runs it, and frame pointers
/// where it does not (before Linux 5.17, or when the rows array cannot be allocated), said once
/// in the log. On a binary built with frame pointers *and* tables, `auto` walks the tables too:
/// the frame-pointer walk of such a binary still loses a caller whenever the sample lands in a
/// library built without them (Debian's glibc: every `memcpy`, `malloc` and syscall wrapper),
/// and choosing per binary would make one stack's frames depend on two walkers. The price is
/// BPF time per sample (the README's figures); `fp` is there for who wants it lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnwindMode {
    /// Tables where the kernel can walk them, frame pointers elsewhere.
    #[default]
    Auto,
    /// Frame pointers (`bpf_get_stack`) only.
    Fp,
    /// `.eh_frame` unwind tables built by the daemon, walked in the kernel; warns when the
    /// kernel refuses the walker.
    Tables,
}

/// Default `--unwind-table-memory`: 64 MiB of rows (4 M rows: the kernel keeps each 12-byte row
/// in 16 bytes; Debian's python3 with libc and ld.so takes about 1.7 MiB).
pub const DEFAULT_UNWIND_TABLE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// For log pipelines.
    Json,
}

impl RunConfig {
    /// Merges flags, environment (`env`), the `--config` file and defaults, in that order of
    /// precedence, and validates the result. `explicit(id)` tells whether flag `id` (the field
    /// name) was given on the command line.
    pub fn from_args(
        args: &RunArgs,
        env: &dyn Fn(&str) -> Option<String>,
        explicit: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => Some((file::FileConfig::load(path)?, path.clone())),
            None => None,
        };
        Self::validated(args, file.as_ref(), env, explicit).map_err(|err| match &file {
            Some((_, path)) => blame_file(err, path, explicit),
            None => err,
        })
    }

    fn validated(
        args: &RunArgs,
        file: Option<&(file::FileConfig, PathBuf)>,
        env: &dyn Fn(&str) -> Option<String>,
        explicit: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let merged = merge(args, file, explicit)?;
        let args = &merged.args;
        if args.interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                origin: Source::Flag("interval"),
                value: humantime::format_duration(args.interval).to_string(),
                expected: "at least 100ms",
            });
        }
        if args.max_profile_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid {
                origin: Source::Flag("max-profile-bytes"),
                value: args.max_profile_bytes.to_string(),
                expected: "at least 65536",
            });
        }
        if args.ui_max_stacks == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "ui-max-stacks",
            });
        }
        if args.export_queue_size == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "export-queue-size",
            });
        }
        let limits = Limits::from_args(&args.limits)?;
        let pod_selector = pod_selector(args)?;
        Ok(Self {
            interval: args.interval,
            sampler: SamplerConfig::validated(
                args.frequency,
                &args.pid,
                crate::procfs::CgroupTargets {
                    paths: args.cgroup.clone(),
                    units: args.unit.clone(),
                    containers: args.container.clone(),
                    // Filled from the pod watch while sampling.
                    pods: pod_selector.as_ref().map(|_| Vec::new()),
                },
                args.include_idle,
                &limits,
            )?,
            limits,
            otlp: otlp::resolve(&args.otlp, &merged.otlp_file, env)?,
            export_queue_size: args.export_queue_size,
            shutdown_timeout: args.shutdown_timeout,
            labels: args.labels.clone(),
            max_profile_bytes: args.max_profile_bytes,
            host_name: host_name_from(env),
            http_address: parse_address("http-address", &args.http_address)?,
            ui_address: parse_address("ui-address", &args.ui_address)?,
            ui_max_stacks: args.ui_max_stacks,
            log_format: args.log_format,
            log_level: merged.log_level,
            service_rules: merged.service_rules,
            kubernetes_node: kubernetes_node(args.kubernetes, env)?,
            pod_selector,
        })
    }
}

/// An invalid value that came from the configuration file (not from a flag) is reported with the
/// file, its line and key, like the file's other errors.
fn blame_file(err: ConfigError, path: &Path, explicit: &dyn Fn(&str) -> bool) -> ConfigError {
    let key = match &err {
        ConfigError::Frequency(_) => "frequency".to_owned(),
        ConfigError::RingBufferSize(_) => "ring-buffer-size".to_owned(),
        ConfigError::ZeroLimit { name } => (*name).to_owned(),
        ConfigError::NoSuchPid(_) | ConfigError::PidZero | ConfigError::PidIsThread { .. } => {
            "pid".to_owned()
        }
        ConfigError::Invalid {
            origin: Source::Flag(key) | Source::File(key),
            ..
        } => (*key).to_owned(),
        _ => return err,
    };
    if explicit(&key.replace('-', "_")) {
        return err;
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Some(line) = text.lines().position(|l| {
        l.trim_start()
            .strip_prefix(key.as_str())
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    }) else {
        return err;
    };
    // The value's own complaint, without the flag it was first taken for.
    let complaint = match err {
        ConfigError::Invalid {
            value, expected, ..
        } => format!("`{value}` is not valid: expected {expected}"),
        other => other.to_string(),
    };
    ConfigError::File {
        path: path.to_path_buf(),
        message: format!("line {}, key `{key}`: {complaint}", line + 1),
    }
}

/// Flags with the file's values filled in where no flag was given.
struct Merged {
    args: RunArgs,
    /// OTLP settings of the file: below the environment variables in precedence.
    otlp_file: otlp::OtlpArgs,
    log_level: Option<String>,
    service_rules: rules::ServiceRules,
}

fn merge(
    args: &RunArgs,
    file: Option<&(file::FileConfig, PathBuf)>,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Merged, ConfigError> {
    let mut out = args.clone();
    let Some((f, path)) = file else {
        return Ok(Merged {
            args: out,
            otlp_file: otlp::OtlpArgs::default(),
            log_level: None,
            service_rules: rules::ServiceRules::default(),
        });
    };
    apply_file(&mut out, f, path, explicit)?;
    Ok(Merged {
        args: out,
        otlp_file: file_otlp(f, path)?,
        log_level: f.log_level.clone(),
        service_rules: rules::ServiceRules::validated(
            f.service_name.clone().unwrap_or_default(),
            path,
        )?,
    })
}

/// Fills `out` with the file's values where no flag was given on the command line, through the
/// one resolver (`layers`): none of these settings reads a variable.
fn apply_file(
    out: &mut RunArgs,
    f: &file::FileConfig,
    path: &Path,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let layers = layers::Layers {
        explicit,
        env: &|_| None,
    };
    macro_rules! layer {
        ($field:ident, $target:expr) => {
            layers.apply(stringify!($field), &mut $target, f.$field.as_ref())?
        };
    }
    layer!(frequency, out.frequency);
    layer!(pid, out.pid);
    layer!(cgroup, out.cgroup);
    layer!(unit, out.unit);
    layer!(container, out.container);
    layer!(include_idle, out.include_idle);
    layer!(export_queue_size, out.export_queue_size);
    layer!(labels, out.labels);
    layer!(max_profile_bytes, out.max_profile_bytes);
    layer!(http_address, out.http_address);
    layer!(ui_address, out.ui_address);
    layer!(ui_max_stacks, out.ui_max_stacks);
    layer!(log_format, out.log_format);
    layer!(kubernetes, out.kubernetes);
    layer!(namespace, out.namespace);
    layer!(max_stacks, out.limits.max_stacks);
    layer!(symbol_cache_entries, out.limits.symbol_cache_entries);
    layer!(open_modules, out.limits.open_modules);
    layer!(debug_info_memory, out.limits.debug_info_memory);
    layer!(profile_self, out.limits.profile_self);
    layer!(debug_dir, out.limits.debug_dir);
    layer!(unwind, out.limits.unwind);
    layer!(unwind_table_memory, out.limits.unwind_table_memory);
    // Values the file spells differently from the flag: an empty selector is none, a ring
    // buffer of 0 the automatic size, durations are text.
    let selector = f
        .selector
        .as_ref()
        .map(|s| Some(s.clone()).filter(|s| !s.trim().is_empty()));
    layers.apply("selector", &mut out.selector, selector.as_ref())?;
    let ring = f.ring_buffer_size.map(|v| (v != 0).then_some(v));
    layers.apply(
        "ring_buffer_size",
        &mut out.limits.ring_buffer_size,
        ring.as_ref(),
    )?;
    let interval = f
        .interval
        .as_deref()
        .map(|v| file::duration(path, "interval", v))
        .transpose()?;
    layers.apply("interval", &mut out.interval, interval.as_ref())?;
    let shutdown = f
        .shutdown_timeout
        .as_deref()
        .map(|v| file::duration(path, "shutdown-timeout", v))
        .transpose()?;
    layers.apply(
        "shutdown_timeout",
        &mut out.shutdown_timeout,
        shutdown.as_ref(),
    )?;
    Ok(())
}

/// The file's OTLP settings: below the environment variables in precedence.
fn file_otlp(f: &file::FileConfig, path: &Path) -> Result<otlp::OtlpArgs, ConfigError> {
    Ok(otlp::OtlpArgs {
        otlp_endpoint: f.otlp_endpoint.clone(),
        otlp_protocol: f.otlp_protocol,
        otlp_header: f.otlp_header.clone().unwrap_or_default(),
        otlp_ca: f.otlp_ca.clone().filter(|p| !p.as_os_str().is_empty()),
        otlp_compression: f.otlp_compression,
        otlp_timeout: f
            .otlp_timeout
            .as_deref()
            .map(|v| file::duration(path, "otlp-timeout", v))
            .transpose()?,
    })
}

/// `host.name`: `NODE_NAME` (Kubernetes downward API) when set, else the host name.
fn host_name_from(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("NODE_NAME")
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(host_name)
}

/// `--namespace` and `--selector`, which need `--kubernetes`.
fn pod_selector(args: &RunArgs) -> Result<Option<crate::kubernetes::PodSelector>, ConfigError> {
    let selector = args.selector.as_deref().filter(|s| !s.trim().is_empty());
    if args.namespace.is_empty() && selector.is_none() {
        return Ok(None);
    }
    if !args.kubernetes {
        return Err(ConfigError::Invalid {
            origin: Source::Other("--namespace/--selector"),
            value: "without --kubernetes".to_owned(),
            expected: "--kubernetes as well (pods are known from the Kubernetes API)",
        });
    }
    Ok(Some(crate::kubernetes::PodSelector::new(
        &args.namespace,
        selector,
    )?))
}

/// With `--kubernetes`, the node to watch: `NODE_NAME` (the downward API's `spec.nodeName`).
fn kubernetes_node(
    enabled: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    if !enabled {
        return Ok(None);
    }
    match env("NODE_NAME").map(|n| n.trim().to_owned()) {
        Some(node) if !node.is_empty() => Ok(Some(node)),
        _ => Err(ConfigError::Invalid {
            origin: Source::Flag("kubernetes"),
            value: "NODE_NAME unset".to_owned(),
            expected: "NODE_NAME set to this node's name (the downward API's spec.nodeName)",
        }),
    }
}

/// `off` (or empty) disables the server.
fn parse_address(
    flag: &'static str,
    text: &str,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| ConfigError::Invalid {
        origin: Source::Flag(flag),
        value: text.to_owned(),
        expected: "an address like `127.0.0.1:9740`, or `off`",
    })
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
        let format = OutputFormat::from_path(&args.output)?;
        check_writable(&args.output)?;
        Ok(Self {
            duration: args.duration,
            format,
            output: args.output.clone(),
            keep_addresses: args.keep_addresses,
            sampler: SamplerConfig::validated(
                args.frequency,
                &args.pid,
                crate::procfs::CgroupTargets {
                    paths: args.cgroup.clone(),
                    units: args.unit.clone(),
                    containers: args.container.clone(),
                    pods: None,
                },
                args.include_idle,
                &limits,
            )?,
            limits,
        })
    }
}

/// Checks, before any sampling, that `path` can be written: its folder exists and takes a new
/// file (one is created there and removed), and `path` is not a folder. A recording that ends
/// in "cannot write" after ten seconds, or an hour, wastes the recording.
fn check_writable(path: &Path) -> Result<(), ConfigError> {
    let output_error = |reason: String| ConfigError::Output {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_dir() {
        return Err(output_error("it is a folder".to_owned()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(output_error(format!(
            "the folder `{}` does not exist",
            dir.display()
        )));
    }
    tempfile::NamedTempFile::new_in(dir)
        .map(drop)
        .map_err(|e| output_error(format!("cannot create a file in `{}`: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

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
        let err = parse(&[
            "profiler",
            "record",
            "-d",
            "18446744073709551615s",
            "-o",
            "a.svg",
        ])
        .unwrap_err();
        assert!(err.contains("longer than a year"), "{err}");
        let err = parse(&["profiler", "record", "-o", "/no/such/folder/a.svg"]).unwrap_err();
        assert!(err.contains("`/no/such/folder` does not exist"), "{err}");
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
    fn invalid_values_from_the_file_name_its_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        for (text, key, line) in [
            ("interval = \"10s\"\nfrequency = 0\n", "frequency", 2),
            ("otlp-endpoint = \"ftp://x\"\n", "otlp-endpoint", 1),
            ("\n\nmax-stacks = 0\n", "max-stacks", 3),
        ] {
            std::fs::write(&path, text).unwrap();
            let cli = Cli::try_parse_from(["profiler", "run", "--config", path.to_str().unwrap()])
                .unwrap();
            let Command::Run(args) = cli.command else {
                panic!("not run")
            };
            let err = RunConfig::from_args(&args, &|_| None, &|_| false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(path.to_str().unwrap())
                    && err.contains(&format!("line {line}, key `{key}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn pids_must_exist_and_are_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        assert_eq!(validate_pids(&[42, 42], dir.path()).unwrap(), vec![42]);
        let err = validate_pids(&[43], dir.path()).unwrap_err();
        assert_eq!(err.to_string(), "--pid 43: no such process");
        std::fs::create_dir(dir.path().join("44")).unwrap();
        std::fs::write(
            dir.path().join("44/status"),
            "Name:\tw\nTgid:\t42\nPid:\t44\n",
        )
        .unwrap();
        let err = validate_pids(&[44], dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--pid 44 is a thread of process 42: use --pid 42"
        );
    }
}
