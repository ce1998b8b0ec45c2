//! The flags of every subcommand, as clap parses them. Parsing checks syntax only; the parent
//! module turns them into a validated configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::LogFormat;
use super::otlp::{ExtraLabel, OtlpArgs};

/// Options of `profiler record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to record (e.g. `10s`, `2m`). Ctrl-C stops early and still writes the file.
    #[arg(long, short = 'd', value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Samples per second on each CPU (1..=10000).
    #[arg(long, short = 'F', value_name = "HZ", default_value_t = 99)]
    pub frequency: u32,

    /// Only profile this process (a tgid, with all its threads). Repeatable.
    #[arg(long, short = 'p', value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only profile the tasks of this cgroup v2 directory and its descendants (absolute, or
    /// relative to the v2 mount: `system.slice/nginx.service`). Repeatable; with `--pid`, a task
    /// matching either is profiled.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<std::path::PathBuf>,

    /// Only profile this systemd unit (`nginx` is `nginx.service`): its cgroup, found under the
    /// v2 mount, and followed across restarts. Repeatable; combines with `--pid` and `--cgroup`.
    #[arg(long, value_name = "UNIT")]
    pub unit: Vec<String>,

    /// Only profile this container (its id, or a prefix of 12 or more digits, as `docker ps` or
    /// `crictl ps` show it): its cgroup, in the docker, containerd, CRI-O or podman style,
    /// followed across restarts. Repeatable.
    #[arg(long, value_name = "ID")]
    pub container: Vec<String>,

    /// Output file; its extension picks the format: `.svg` (flamegraph to open in a browser),
    /// `.folded` (folded stacks, for inferno or speedscope), `.pb.gz` (pprof, for `go tool
    /// pprof`). Its folder must exist; checked before sampling starts.
    #[arg(
        long,
        short = 'o',
        value_name = "PATH",
        default_value = "flamegraph.svg"
    )]
    pub output: PathBuf,

    /// Keep samples of idle CPUs (pid 0) in the output (else they are only counted, as idle).
    #[arg(long)]
    pub include_idle: bool,

    /// Show each unnamed address as its own frame (`[unknown] libfoo.so+0x1a2b`) instead of one
    /// frame per file (`[libfoo.so]`) in `.svg` and `.folded` output.
    #[arg(long)]
    pub keep_addresses: bool,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Options of `profiler run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Length of one profile window: every interval the window is exported (e.g. `10s`).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Samples per second on each CPU (1..=10000).
    #[arg(long, short = 'F', value_name = "HZ", default_value_t = 19)]
    pub frequency: u32,

    /// Only profile this process (a tgid, with all its threads). Repeatable.
    #[arg(long, short = 'p', value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only profile the tasks of this cgroup v2 directory and its descendants (absolute, or
    /// relative to the v2 mount: `system.slice/nginx.service`). Repeatable; with `--pid`, a task
    /// matching either is profiled.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<std::path::PathBuf>,

    /// Only profile this systemd unit (`nginx` is `nginx.service`): its cgroup, found under the
    /// v2 mount, and followed across restarts. Repeatable; combines with `--pid` and `--cgroup`.
    #[arg(long, value_name = "UNIT")]
    pub unit: Vec<String>,

    /// Only profile this container (its id, or a prefix of 12 or more digits, as `docker ps` or
    /// `crictl ps` show it): its cgroup, in the docker, containerd, CRI-O or podman style,
    /// followed across restarts. Repeatable.
    #[arg(long, value_name = "ID")]
    pub container: Vec<String>,

    /// Export idle-CPU samples (pid 0) too (else they are only counted, as idle).
    #[arg(long)]
    pub include_idle: bool,

    /// Most export requests waiting in memory; when full the oldest is dropped (and counted).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub export_queue_size: usize,

    /// Extra labels, comma-separated: `pid`, `thread-id`, `thread-name`, `exe-path`. Each one
    /// multiplies the series a backend such as Pyroscope stores (by processes, threads or install
    /// paths); none by default.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',')]
    pub labels: Vec<ExtraLabel>,

    /// Largest profile (as the backend converts it to pprof) and largest request, in bytes:
    /// Pyroscope's `max_profile_size_bytes`, 4 MiB by default. Windows are split to stay below.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_profile_bytes: usize,

    /// On SIGTERM/SIGINT, how long to keep trying to deliver the last windows.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// TOML configuration file: one key per flag (see deploy/profiler.toml). Flags and
    /// environment variables win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz; `off` disables it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9740")]
    pub http_address: String,

    /// Address of the live flamegraph page and its JSON API (e.g. `127.0.0.1:9741`); `off`, the
    /// default, disables it. Read-only, but it shows every process's functions: keep it on
    /// loopback, or behind an authenticating proxy.
    #[arg(long, value_name = "ADDR", default_value = "off")]
    pub ui_address: String,

    /// Most stacks the live page keeps over its windows (at most 15 minutes of them; the
    /// oldest windows go first).
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_UI_MAX_STACKS)]
    pub ui_max_stacks: usize,

    /// Log format: `text` (for people) or `json` (for log pipelines).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Label profiles with this node's Kubernetes pods (namespace, pod, container, workload),
    /// watched on the API server (in-cluster service account, or `KUBECONFIG`); needs
    /// `NODE_NAME`. Services are then named `namespace/workload`.
    #[arg(long)]
    pub kubernetes: bool,

    /// Only profile the pods of this Kubernetes namespace (with `--kubernetes`; followed as pods
    /// come and go). Repeatable; combines with the other filters as they do.
    #[arg(long, value_name = "NS")]
    pub namespace: Vec<String>,

    /// Only profile the pods this label selector selects (`app=web,tier!=cache`; with
    /// `--kubernetes`; with `--namespace`, both must hold).
    #[arg(long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    #[command(flatten)]
    pub otlp: OtlpArgs,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Options of `profiler check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also try the collector configured by these flags or the `OTEL_EXPORTER_OTLP_*` variables
    /// (always tried when one of them is set).
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

/// Default `--max-stacks`. `run` closes a window early when it is 7/8 full, so the bound costs
/// no samples there, only window length; it bounds the window's memory (README "Scale": at
/// 100,000 stacks 92 MiB, 170 MiB when every frame is a distinct address).
pub const DEFAULT_MAX_STACKS: usize = 100_000;
/// Default `--symbol-cache-entries`.
pub const DEFAULT_SYMBOL_CACHE_ENTRIES: usize = 200_000;
/// Default `--debug-info-memory`: 8 MiB of DWARF, about 10 MiB parsed. Enough for a C program or
/// a small service built with `-g`; a large C++, Rust or Go binary with DWARF, and glibc's
/// Debian debug file (9.6 MiB, inflated whole from its compressed sections), are named from
/// their symbol tables instead (function names, no file and line). Chosen so that the daemon stays
/// within 32 MB at 999 Hz on a quiet host: with 16 MiB, naming glibc's lines alone took its peak
/// from 29 to 37 MB (measured, README "Overhead").
pub const DEFAULT_DEBUG_INFO_MEMORY: u64 = 8 << 20;
/// Default `--open-modules`.
pub const DEFAULT_OPEN_MODULES: usize = 512;

/// Memory bounds shared by the sampling subcommands.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Size of the kernel→daemon ring buffer in bytes (a power of two, at least 4096).
    /// Default: 128 KiB per CPU, rounded up to a power of two (256 KiB..64 MiB). A sample takes
    /// 56 bytes plus 8 per frame; the daemon drains at least every 100 ms.
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_size: Option<u32>,

    /// Most distinct stacks kept in memory per profile. `run` closes its window early when it
    /// is 7/8 full; samples of new stacks beyond it are counted as lost (`profile_full`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STACKS)]
    pub max_stacks: usize,

    /// Most symbolized addresses cached (per unique binary and offset, shared by processes).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SYMBOL_CACHE_ENTRIES)]
    pub symbol_cache_entries: usize,

    /// DWARF parsed at once for naming, in bytes of `.debug_info` + `.debug_line` (blazesym's
    /// parse takes about 1.2 times that). A file whose DWARF does not fit is named from its
    /// symbol table: function names, without file, line or inlined frames. 0: never DWARF.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_DEBUG_INFO_MEMORY)]
    pub debug_info_memory: u64,

    /// Most executables and libraries kept open with their parsed symbols, beyond those that
    /// running processes map (those are always kept, so their names survive an exit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_OPEN_MODULES)]
    pub open_modules: usize,

    /// Sample the profiler's own process too (left out by default: naming its own large binary
    /// would cost more memory than anything it profiles).
    #[arg(long)]
    pub profile_self: bool,

    /// Extra directory searched for split debug info (by build id under `.build-id/`, then by
    /// debug link), before `/usr/lib/debug` and `/lib/debug`. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<std::path::PathBuf>,

    /// How user stacks are walked: `tables` (`.eh_frame` unwind tables built by the daemon and
    /// walked in the kernel: whole stacks for code built without frame pointers, such as
    /// Debian's python3 and glibc), `fp` (frame pointers only: cheaper, shallower) or `auto`
    /// (tables where the kernel runs the walker, Linux 5.17+, else frame pointers).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = super::UnwindMode::Auto)]
    pub unwind: super::UnwindMode,

    /// Kernel memory for unwind table rows (`--unwind tables` or `auto`), in bytes (1 MiB..4 GiB;
    /// allocated at start). When full, the least recently used modules' tables are evicted.
    #[arg(long, value_name = "BYTES", default_value_t = super::DEFAULT_UNWIND_TABLE_BYTES)]
    pub unwind_table_memory: u64,
}

/// The longest duration any flag takes: beyond it, deadlines would overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_hours(366 * 24);

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|err| format!("{err} (expected e.g. `10s`, `2m`, `500ms`)"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is longer than a year (366d), the longest accepted"
        ));
    }
    Ok(d)
}
