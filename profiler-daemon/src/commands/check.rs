//! `profiler check`: diagnoses the host — kernel, each BPF feature probe, perf events,
//! capabilities, bpffs, memlock, loading and attaching the real sampler (with the verifier's
//! cost), and whether the configured collector takes an export — one line per check. Exit code
//! 0 when the daemon can run here, 1 otherwise. `ok` is something used and working, `info`
//! something optional and absent, `warn` something missing that costs frames or data.

use std::fmt;
use std::time::Duration;

use crate::bpf::{Design, Feature, Features, Sampler, Support};
use crate::config::SamplerConfig;
use crate::config::otlp::OtlpConfig;
use crate::export::otlp::probe::{self, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Optional and absent: nothing is lost.
    Info,
    /// Runs, with something missing.
    Warn,
    /// Cannot run.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag}  {:<14} {}", self.name, self.detail)
    }
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// A capability the daemon uses: bit, name, what breaks without it, whether that is fatal.
struct Cap {
    bit: u32,
    name: &'static str,
    without: &'static str,
    fatal: bool,
    /// Another capability that covers it (`CAP_SYS_ADMIN` covers the newer, narrower ones).
    alternative: Option<u32>,
}

const CAP_SYS_ADMIN: u32 = 21;

const CAPS: &[Cap] = &[
    Cap {
        bit: 39,
        name: "CAP_BPF",
        without: "the eBPF programs and maps cannot be loaded",
        fatal: true,
        alternative: Some(CAP_SYS_ADMIN),
    },
    Cap {
        bit: 38,
        name: "CAP_PERFMON",
        without: "no perf events, no stack walks",
        fatal: true,
        alternative: Some(CAP_SYS_ADMIN),
    },
    Cap {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        without: "other users' processes: mappings and binaries unreadable, frames unnamed",
        fatal: false,
        alternative: None,
    },
    Cap {
        bit: 40,
        name: "CAP_CHECKPOINT_RESTORE",
        without: "/proc/PID/map_files closed: binaries only in containers or deleted stay unnamed",
        fatal: false,
        alternative: Some(CAP_SYS_ADMIN),
    },
    Cap {
        bit: 2,
        name: "CAP_DAC_READ_SEARCH",
        without: "binaries the daemon's user may not read stay unnamed",
        fatal: false,
        alternative: None,
    },
    Cap {
        bit: 34,
        name: "CAP_SYSLOG",
        without: "kallsyms shows zero addresses: kernel frames unnamed",
        fatal: false,
        alternative: None,
    },
];

/// Warns, once per capability, about the optional capabilities this process lacks: the daemon
/// runs without them, but some frames will stay unnamed, and people should know why.
pub fn warn_missing_capabilities() {
    let Some(caps) = effective_caps() else {
        return;
    };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    for cap in CAPS.iter().filter(|c| !c.fatal) {
        if !(has(cap.bit) || cap.alternative.is_some_and(has)) {
            tracing::warn!("{} missing: {}", cap.name, cap.without);
        }
    }
}

/// The effective capability set of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Parses "6.18.44-foo" into (6, 18).
#[must_use]
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

const PERF_TYPE_HARDWARE: u32 = 0;
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_HW_CPU_CYCLES: u64 = 0;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;

/// The first version of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`, 64 bytes): every kernel
/// accepts it, and it has all this check sets. (libc does not carry the struct.)
#[repr(C)]
#[derive(Default)]
struct PerfEventAttrV0 {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: `disabled`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const _: () = assert!(size_of::<PerfEventAttrV0>() == 64);

/// Opens a perf event of `type_`/`config` on CPU 0 for all processes; `Ok` if the kernel allows.
fn perf_event(type_: u32, config: u64) -> std::io::Result<()> {
    let attr = PerfEventAttrV0 {
        type_,
        size: size_of::<PerfEventAttrV0>() as u32,
        config,
        flags: 1,
        ..PerfEventAttrV0::default()
    };
    // SAFETY: the syscall reads `attr`; the returned fd is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &raw const attr, -1, 0, -1, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the fd we own.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Runs every check. `otlp`: the collector to try, if configured.
#[must_use]
pub fn run(otlp: Option<&OtlpConfig>) -> Vec<Check> {
    let release = kernel_release();
    // The sampler goes first: attaching it is also the probe of the exec/exit tracepoints.
    let (sampler, features) = sampler_check();
    let mut out = vec![kernel_check(&release)];
    out.extend(probe_checks(&features));
    out.extend(perf_checks());
    out.extend(capability_checks());
    out.push(bpffs_check());
    out.push(memlock_check(&release));
    out.push(sampler);
    if let Some(otlp) = otlp {
        out.push(collector_check(otlp));
    }
    out
}

/// The release, for the record: the probes below decide what works, not the version number
/// (distribution kernels backport BPF features).
fn kernel_check(release: &str) -> Check {
    check(
        "kernel",
        Status::Ok,
        format!("{release} (BPF features probed below; tested from 5.10, see the README)"),
    )
}

/// One line per probed BPF feature: required ones fail when missing, exec/exit tracking's warn.
fn probe_checks(features: &Features) -> Vec<Check> {
    Feature::ALL
        .into_iter()
        .map(|feature| {
            let what = feature.what();
            match features.get(feature) {
                Support::Available => check(feature.name(), Status::Ok, what),
                Support::Missing => check(
                    feature.name(),
                    match feature {
                        _ if feature.required() => Status::Fail,
                        Feature::Tracepoints | Feature::TaskPtRegs | Feature::BpfLoop => {
                            Status::Warn
                        }
                        _ => Status::Info,
                    },
                    format!("missing: {what}; {}", feature.without()),
                ),
                Support::Unknown(err) => check(
                    feature.name(),
                    Status::Warn,
                    format!("cannot tell ({err}): {what}"),
                ),
            }
        })
        .collect()
}

fn perf_checks() -> [Check; 2] {
    [
        match perf_event(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK) {
            Ok(()) => check(
                "perf events",
                Status::Ok,
                "software cpu-clock available (the event sampled)",
            ),
            Err(e) => check(
                "perf events",
                Status::Fail,
                format!("cpu-clock refused: {e}"),
            ),
        },
        match perf_event(PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES) {
            Ok(()) => check(
                "hardware PMU",
                Status::Ok,
                "cpu-cycles available (not needed)",
            ),
            Err(e) => check(
                "hardware PMU",
                Status::Info,
                format!("none ({e}); not needed: the software cpu-clock is sampled"),
            ),
        },
    ]
}

fn capability_checks() -> Vec<Check> {
    let caps = effective_caps().unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    CAPS.iter()
        .map(|cap| {
            if has(cap.bit) || cap.alternative.is_some_and(has) {
                check("capability", Status::Ok, format!("{} held", cap.name))
            } else {
                check(
                    "capability",
                    if cap.fatal {
                        Status::Fail
                    } else {
                        Status::Warn
                    },
                    format!("{} missing: {}", cap.name, cap.without),
                )
            }
        })
        .collect()
}

fn bpffs_check() -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"));
    if mounted {
        check(
            "bpffs",
            Status::Ok,
            "mounted (not needed: nothing is pinned)",
        )
    } else {
        check(
            "bpffs",
            Status::Info,
            "not mounted; not needed: nothing is pinned",
        )
    }
}

fn memlock_check(release: &str) -> Check {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a valid rlimit struct.
    let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) } == 0 {
        if limit.rlim_cur == libc::RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            format!("{} KiB", limit.rlim_cur / 1024)
        }
    } else {
        "unknown".to_owned()
    };
    let charged_to_memcg = major_minor(release).is_some_and(|v| v >= (5, 11));
    check(
        "memlock",
        Status::Ok,
        if charged_to_memcg {
            format!("{memlock} (Linux ≥ 5.11 charges BPF memory to the cgroup instead)")
        } else {
            format!("{memlock} (raised to unlimited at start when allowed)")
        },
    )
}

/// Loads and attaches the real sampler for a moment; returns that check and the BPF features it
/// probed (probed on their own when it does not start).
fn sampler_check() -> (Check, Features) {
    let config = SamplerConfig {
        frequency: 1,
        pids: Vec::new(),
        cgroups: Vec::new(),
        cgroup_targets: crate::procfs::CgroupTargets::default(),
        include_idle: false,
        ring_buffer_bytes: Some(4096 * 16),
        profile_self: false,
    };
    match Sampler::start(&config, Design::RingBuf) {
        Ok(sampler) => {
            let load = sampler.load_stats();
            let line = check(
                "sampler",
                Status::Ok,
                format!(
                    "eBPF sampler loaded and attached on {} CPUs{}; verifier and JIT took {} ms{}",
                    sampler.cpus(),
                    if sampler.process_events() {
                        ", exec/exit tracking on"
                    } else {
                        ", exec/exit tracking off"
                    },
                    format_ms(load.duration),
                    load.verified_insns
                        .map(|n| format!(" ({n} instructions processed)"))
                        .unwrap_or_default()
                ),
            );
            (line, sampler.features().clone())
        }
        Err(e) => (
            check("sampler", Status::Fail, e.to_string().replace('\n', " | ")),
            Features::probe(),
        ),
    }
}

/// Milliseconds with one decimal: loading a small program takes well under one.
fn format_ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// One empty export in the configured protocol: what every later export will meet.
fn collector_check(otlp: &OtlpConfig) -> Check {
    let shown = otlp.endpoint_for_logs();
    let protocol = clap::ValueEnum::to_possible_value(&otlp.protocol)
        .map_or_else(String::new, |v| v.get_name().to_owned());
    match probe::probe(otlp) {
        Verdict::Accepted => check(
            "collector",
            Status::Ok,
            format!("{shown} accepted an empty export ({protocol})"),
        ),
        Verdict::Refused(why) => check("collector", Status::Fail, why),
        Verdict::Unreachable(why) => check(
            "collector",
            Status::Warn,
            format!("{shown} not reachable ({why}): the daemon will run, queue and retry"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(major_minor("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(major_minor("5.10.0"), Some((5, 10)));
        assert_eq!(major_minor("weird"), None);
    }

    #[test]
    fn probes_fail_only_where_the_sampler_cannot_run() {
        let features = Features {
            ring_buffer: Support::Available,
            get_stack: Support::Missing,
            btf: Support::Missing,
            tracepoints: Support::Missing,
            tail_calls: Support::Missing,
            map_in_map: Support::Available,
            task_pt_regs: Support::Unknown("Operation not permitted".to_owned()),
            bpf_loop: Support::Missing,
        };
        let lines: Vec<String> = probe_checks(&features)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines.len(), Feature::ALL.len());
        assert!(lines[0].starts_with("ok    ring buffer"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("FAIL  bpf_get_stack  missing"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("info  btf"), "{}", lines[2]);
        assert!(lines[3].starts_with("warn  tracepoints"), "{}", lines[3]);
        assert!(
            lines[4].starts_with("info  tail calls     missing"),
            "{}",
            lines[4]
        );
        assert!(
            lines[6].starts_with("warn  task_pt_regs   cannot tell"),
            "{}",
            lines[6]
        );
    }

    #[test]
    fn lines_are_tagged() {
        let c = check("kernel", Status::Fail, "too old");
        assert_eq!(c.to_string(), "FAIL  kernel         too old");
    }
}
