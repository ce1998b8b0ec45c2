//! Kernel side of the pipeline: probes the kernel's BPF features, loads the eBPF sampler,
//! attaches it to a `cpu-clock` perf event on every online CPU, drains the ring buffer and reads
//! the outcome counters.

mod counters;
pub mod probe;
mod record;
pub mod unwind;

pub use probe::{Feature, Features, Support};
pub use record::{ProcessEvent, RawSample, comm_to_string};

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::perf_event::{
    PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::{Ebpf, EbpfLoader};
use profiler_common::{COUNTER_SLOTS, SampleRecord};

use crate::config::SamplerConfig;
use crate::counters::Totals;

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Which sampler program runs: the shipped one, or (with the `bench` feature) a design kept only
/// to measure it against the shipped one (`profiler bpf-cost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "bench", derive(clap::ValueEnum))]
pub enum Design {
    /// One ring buffer record per sample; user space aggregates.
    #[cfg_attr(feature = "bench", value(name = "ringbuf"))]
    RingBuf,
    /// Counts per stack id pair in a kernel hash map.
    #[cfg(feature = "bench")]
    Aggregate,
    /// User frames normalized by the kernel (`BPF_F_USER_BUILD_ID`).
    #[cfg(feature = "bench")]
    #[value(name = "buildid")]
    BuildId,
    /// The shipped sampler without stacks: admission, header, ring buffer record.
    #[cfg(feature = "bench")]
    Header,
    /// The shipped sampler with the kernel stack only.
    #[cfg(feature = "bench")]
    Kernel,
    /// The shipped sampler without `comm` and the cgroup id.
    #[cfg(feature = "bench")]
    Lean,
    /// The shipped sampler with every user stack walked by `bpf_get_stack`.
    #[cfg(feature = "bench")]
    #[value(name = "getstack")]
    GetStack,
}

impl Design {
    fn program(self) -> &'static str {
        match self {
            Design::RingBuf => "sample_ringbuf",
            #[cfg(feature = "bench")]
            Design::Aggregate => "sample_aggregate",
            #[cfg(feature = "bench")]
            Design::BuildId => "sample_buildid",
            #[cfg(feature = "bench")]
            Design::Header => "sample_header",
            #[cfg(feature = "bench")]
            Design::Kernel => "sample_kernel",
            #[cfg(feature = "bench")]
            Design::Lean => "sample_lean",
            #[cfg(feature = "bench")]
            Design::GetStack => "sample_getstack",
        }
    }

    /// Whether the program writes sample records into the ring buffer.
    fn uses_ring_buffer(self) -> bool {
        match self {
            Design::RingBuf => true,
            #[cfg(feature = "bench")]
            Design::BuildId | Design::Header | Design::Kernel | Design::Lean | Design::GetStack => {
                true
            }
            #[cfg(feature = "bench")]
            Design::Aggregate => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "this kernel ({release}) lacks the {what}: {without} (`profiler check` lists every probe)"
    )]
    Unsupported {
        release: String,
        what: &'static str,
        without: &'static str,
    },
    #[error(
        "loading the eBPF object failed: {source}{hint}",
        hint = permission_hint(source)
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error(
        "the kernel rejected the eBPF program `{program}`: {source}{hint}\nverifier log:\n{log}",
        hint = permission_hint(source)
    )]
    Verify {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
        log: String,
    },
    #[error(
        "the kernel did not allow loading the eBPF program `{program}`: {source}{hint}",
        hint = PERMISSION_HINT
    )]
    NotPermitted {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to the cpu-clock perf event on CPU {cpu} failed: {source}{hint}", hint = permission_hint(source))]
    Attach {
        cpu: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot list the online CPUs ({what}): {source}")]
    OnlineCpus {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no {kind} `{name}` (build mismatch)")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("waiting for samples failed: {0}")]
    Poll(#[source] std::io::Error),
}

/// How often the ring buffer is drained at the latest (it is also drained when a quarter full).
/// Short enough that processes are still alive when their addresses are normalized.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

const PERMISSION_HINT: &str = "\nhint: profiling needs root, or the capabilities CAP_BPF and \
    CAP_PERFMON (Linux 5.8 and later; CAP_SYS_ADMIN before), with CAP_SYS_PTRACE, \
    CAP_DAC_READ_SEARCH, CAP_CHECKPOINT_RESTORE and CAP_SYSLOG to name every frame: run it as \
    root (e.g. `sudo profiler record ...`); `profiler check` tells what is missing";

/// When an error chain says "permission denied", tell the user what to do about it.
fn permission_hint(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return PERMISSION_HINT;
        }
        let text = e.to_string();
        if text.contains("Operation not permitted") || text.contains("Permission denied") {
            return PERMISSION_HINT;
        }
        cur = e.source();
    }
    ""
}

/// The attached sampler. Dropping it detaches the programs and frees the maps.
pub struct Sampler {
    // Keeps programs, links and the maps not taken below alive.
    #[cfg_attr(
        not(feature = "bench"),
        allow(
            dead_code,
            reason = "held for its drop; read only by the bench's statistics"
        )
    )]
    ebpf: Ebpf,
    samples: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    cpus: usize,
    process_events: bool,
    ring_bytes: u32,
    features: Features,
    load: LoadStats,
    unwind_maps: Option<unwind::UnwindMaps>,
    /// The cgroup levels the program looks at (fixed at load).
    cgroup_levels: u32,
    /// Whether the program filters by pid (fixed at load; the set is not).
    pid_filter: bool,
    /// The sampler program attached.
    #[cfg_attr(
        not(feature = "bench"),
        allow(dead_code, reason = "read by the bench only")
    )]
    program: &'static str,
}

/// What loading the sampler program cost the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    /// Time in `BPF_PROG_LOAD`: the verifier, then the JIT.
    pub duration: Duration,
    /// Instructions the verifier processed (Linux ≥ 5.16 reports it).
    pub verified_insns: Option<u32>,
}

impl Sampler {
    /// Loads the programs, configures the filter and attaches on every online CPU.
    pub fn start(config: &SamplerConfig, design: Design) -> Result<Self, BpfError> {
        Self::start_unwinding(config, design, &unwind::UnwindConfig::default())
    }

    /// `start`, with the user stack walker `unwind` asks for (`--unwind`).
    pub fn start_unwinding(
        config: &SamplerConfig,
        design: Design,
        unwind: &unwind::UnwindConfig,
    ) -> Result<Self, BpfError> {
        raise_memlock_limit();
        raise_nofile_limit();
        let features = Features::probe();
        tracing::debug!(%features, "BPF features probed");
        if let Some(feature) = features.missing_required() {
            return Err(BpfError::Unsupported {
                release: kernel_release(),
                what: feature.what(),
                without: feature.without(),
            });
        }
        let cpus = aya::util::online_cpus()
            .map_err(|(what, source)| BpfError::OnlineCpus { what, source })?;
        let ring_bytes = config
            .ring_buffer_bytes
            .unwrap_or_else(|| ring_buffer_bytes(cpus.len()));
        // The rows array is allocated here: if the kernel will not give the memory, `auto`
        // goes on with frame pointers (`tables` was asked for explicitly: that is an error).
        let fp = unwind::UnwindConfig {
            mode: crate::config::UnwindMode::Fp,
            ..*unwind
        };
        // (`filter_levels` scans the cgroup hierarchy when pods are selected: once.)
        let sizes = Sizes::of(config, ring_bytes);
        let (mut ebpf, unwind) = match load(config, design, sizes, unwind) {
            Ok(ebpf) => (ebpf, unwind),
            Err(err) if unwind.mode == crate::config::UnwindMode::Auto => {
                unwind::refused(unwind.mode, &err);
                (load(config, design, sizes, &fp)?, &fp)
            }
            Err(err) => return Err(err),
        };
        replace_filter(&mut ebpf, "PIDS", &config.pids)?;
        let cgroup_ids: Vec<u64> = config.cgroups.iter().map(|c| c.id).collect();
        replace_filter(&mut ebpf, "CGROUPS", &cgroup_ids)?;
        let started = Instant::now();
        // The table walker is a program of its own: kernels without `bpf_loop` still load the
        // frame-pointer one.
        let (name, unwind) = unwind::load_sampler(&mut ebpf, design, unwind)?;
        let unwind = &unwind;
        let program = perf_event(&mut ebpf, name)?;
        let load = LoadStats {
            duration: started.elapsed(),
            verified_insns: program
                .info()
                .ok()
                .and_then(|info| info.verified_instruction_count()),
        };
        // cpu-clock counts nanoseconds, so a fixed period gives exactly `frequency` samples per
        // second of CPU time (frequency mode would let the kernel adapt the period).
        let period = 1_000_000_000 / u64::from(config.frequency);
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(period),
                    false,
                )
                .map_err(|source| BpfError::Attach { cpu, source })?;
        }
        tracing::debug!(
            cpus = cpus.len(),
            period_ns = period,
            program = name,
            load_ms = load.duration.as_millis(),
            verified_insns = load.verified_insns,
            "sampler attached"
        );
        let mut features = features;
        if design == Design::RingBuf {
            features.tracepoints = attach_process_events(&mut ebpf);
        }
        let process_events = features.tracepoints.is_available();

        let samples = if design.uses_ring_buffer() {
            let map = take_map(&mut ebpf, "SAMPLES")?;
            Some(RingBuf::try_from(map).map_err(|source| BpfError::Map {
                name: "SAMPLES",
                source,
            })?)
        } else {
            None
        };
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(|source| {
                BpfError::Map {
                    name: "COUNTERS",
                    source,
                }
            })?;
        let unwind_maps = unwind::take_maps(&mut ebpf, unwind)?;
        Ok(Self {
            cgroup_levels: sizes.cgroup_levels,
            pid_filter: !config.pids.is_empty(),
            unwind_maps,
            program: name,
            ebpf,
            samples,
            counters,
            cpus: cpus.len(),
            process_events,
            ring_bytes,
            features,
            load,
        })
    }

    /// Makes the cgroup filter hold exactly `cgroups` (the same targets resolved again: a
    /// restarted unit or container has a new cgroup id). Only the levels the program was loaded
    /// with can be looked at: cgroups at other levels are left out and returned.
    pub fn set_cgroups(
        &mut self,
        cgroups: &[crate::procfs::CgroupFilter],
    ) -> Result<Vec<crate::procfs::CgroupFilter>, BpfError> {
        let (usable, unusable): (Vec<_>, Vec<_>) = cgroups
            .iter()
            .cloned()
            .partition(|c| levels(std::slice::from_ref(c)) & self.cgroup_levels != 0);
        let ids: Vec<u64> = usable.iter().map(|c| c.id).collect();
        replace_filter(&mut self.ebpf, "CGROUPS", &ids)?;
        Ok(unusable)
    }

    /// Makes the pid filter hold exactly `pids` (a configuration reload).
    pub fn set_pids(&mut self, pids: &[u32]) -> Result<(), BpfError> {
        replace_filter(&mut self.ebpf, "PIDS", pids)
    }

    /// Whether the program was loaded with a pid filter and with a cgroup filter: a reload can
    /// change what they hold, not whether they exist (they are constants of the program).
    #[must_use]
    pub fn filters(&self) -> (bool, bool) {
        (self.pid_filter, self.cgroup_levels != 0)
    }

    /// The table walker's maps, to fill (once; `None` with `--unwind fp`).
    pub fn take_unwind_maps(&mut self) -> Option<unwind::UnwindMaps> {
        self.unwind_maps.take()
    }

    /// The kernel's BPF features, as probed at start.
    #[must_use]
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// What loading the sampler program cost (verifier and JIT).
    #[must_use]
    pub fn load_stats(&self) -> LoadStats {
        self.load
    }

    /// Whether exec/exit events are delivered (they need kernel BTF).
    #[must_use]
    pub fn process_events(&self) -> bool {
        self.process_events
    }

    /// Number of CPUs sampled.
    #[must_use]
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Waits until samples are ready or `timeout` passes (an interrupted wait returns early).
    pub fn wait(&self, timeout: Duration) -> Result<(), BpfError> {
        let Some(ring) = &self.samples else {
            std::thread::sleep(timeout);
            return Ok(());
        };
        let mut fds = [libc::pollfd {
            fd: ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(BpfError::Poll(err));
            }
        }
        Ok(())
    }

    /// Hands every record waiting in the ring buffer to `sink` (`None` for one that is not a
    /// sample: the caller counts it); returns the bytes taken, for the fill level.
    pub fn drain(&mut self, mut sink: impl FnMut(Option<RawSample>)) -> usize {
        let Some(ring) = &mut self.samples else {
            return 0;
        };
        let mut bytes = 0;
        while let Some(item) = ring.next() {
            bytes += item.len();
            sink(RawSample::parse(&item));
        }
        bytes
    }

    /// Size of the ring buffer in bytes.
    #[must_use]
    pub fn ring_bytes(&self) -> u32 {
        self.ring_bytes
    }

    /// Writes the current totals of the in-kernel counters (summed over CPUs) into `totals`.
    pub fn read_counters(&self, totals: &mut Totals) -> Result<(), BpfError> {
        counters::read(&self.counters, totals).map_err(|source| BpfError::Map {
            name: "COUNTERS",
            source,
        })
    }

    /// BPF run time and run count of the attached program, when `kernel.bpf_stats_enabled` is on.
    #[cfg(feature = "bench")]
    #[must_use]
    pub fn program_stats(&self) -> Option<(Duration, u64)> {
        let program = self.ebpf.program(self.program)?;
        let info = program.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }
}

/// What `load` sizes the program by, worked out once per start.
#[derive(Clone, Copy)]
struct Sizes {
    ring_bytes: u32,
    /// The `CGROUP_LEVELS` mask (`filter_levels`).
    cgroup_levels: u32,
}

impl Sizes {
    fn of(config: &SamplerConfig, ring_bytes: u32) -> Self {
        Self {
            ring_bytes,
            cgroup_levels: filter_levels(config),
        }
    }
}

/// Creates the maps (sized for `design`) and patches the configuration globals.
fn load(
    config: &SamplerConfig,
    design: Design,
    sizes: Sizes,
    unwind: &unwind::UnwindConfig,
) -> Result<Ebpf, BpfError> {
    let Sizes {
        ring_bytes,
        cgroup_levels,
    } = sizes;
    let filter = u32::from(!config.pids.is_empty());
    let include_idle = u32::from(config.include_idle);
    let self_tgid = if config.profile_self {
        0
    } else {
        std::process::id()
    };
    // Room for the pids a configuration reload may add.
    let pid_slots = if config.pids.is_empty() {
        1
    } else {
        (config.pids.len() as u32).saturating_mul(4).max(256)
    };
    // Room for the cgroups of restarted units and containers (the old ids are removed), and
    // for the pods a selector may select later (a node runs at most a few hundred).
    let cgroup_slots = if config.cgroup_targets.pods.is_some() {
        (config.cgroups.len() as u32).saturating_mul(4).max(1024)
    } else if config.cgroups.is_empty() {
        1
    } else {
        (config.cgroups.len() as u32).saturating_mul(4).max(64)
    };
    // Wake the daemon early when a quarter is used; else it drains on its timer.
    let wakeup_bytes = u64::from(ring_bytes / 4);
    let mut loader = EbpfLoader::new();
    // No kernel BTF: the object has no CO-RE relocations (a unit test holds it), and aya's
    // parse of the kernel's BTF took 18 MiB, the daemon's whole-life peak.
    loader
        .btf(None)
        .override_global("FILTER_PIDS", &filter, true)
        .override_global("INCLUDE_IDLE", &include_idle, true)
        .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
        .override_global("SELF_TGID", &self_tgid, true)
        .override_global("CGROUP_LEVELS", &cgroup_levels, true)
        .map_max_entries("PIDS", pid_slots)
        .map_max_entries("CGROUPS", cgroup_slots);
    unwind::configure(&mut loader, unwind);
    if design.uses_ring_buffer() {
        loader.map_max_entries("SAMPLES", ring_bytes);
        // The aggregation maps (bench builds only) are unused: no kernel memory for them.
        #[cfg(feature = "bench")]
        loader
            .map_max_entries("STACKS", 1)
            .map_max_entries("COUNTS", 1);
    } else {
        loader.map_max_entries("SAMPLES", 4096);
    }
    tracing::debug!(ring_bytes, "loading the eBPF object");
    loader
        .load(EBPF_OBJECT)
        .map_err(|source| BpfError::Load { source })
}

/// The cgroup levels the program looks at: those of the cgroups to profile, and where pods
/// live when pods are selected (they come and go while sampling).
fn filter_levels(config: &SamplerConfig) -> u32 {
    let pods = if config.cgroup_targets.pods.is_some() {
        crate::procfs::pod_levels()
    } else {
        0
    };
    levels(&config.cgroups) | pods
}

/// The `CGROUP_LEVELS` mask of `cgroups`.
fn levels(cgroups: &[crate::procfs::CgroupFilter]) -> u32 {
    cgroups.iter().fold(0u32, |mask, c| {
        mask | 1u32.checked_shl(c.level).unwrap_or(0)
    })
}

/// The filter set `name` (key → 1) of `ebpf`.
fn filter_set<'e, K: aya::Pod>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'e mut MapData, K, u8>, BpfError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    BpfHashMap::try_from(map).map_err(|source| BpfError::Map { name, source })
}

/// Makes the filter set `name` hold exactly `keys`: removes the others, adds the new ones.
fn replace_filter<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    keys: &[K],
) -> Result<(), BpfError> {
    let mut map = filter_set::<K>(ebpf, name)?;
    let old: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in old.iter().filter(|k| !keys.contains(k)) {
        map.remove(key)
            .map_err(|source| BpfError::Map { name, source })?;
    }
    for key in keys.iter().filter(|k| !old.contains(k)) {
        map.insert(*key, 1, 0)
            .map_err(|source| BpfError::Map { name, source })?;
    }
    Ok(())
}

/// The perf-event program `name` of the object.
fn perf_event<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut PerfEvent, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| BpfError::Verify {
            program: name,
            source,
            log: String::new(),
        })
}

/// Loads program `name` into the kernel, with the verifier's log on rejection.
fn load_program<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut PerfEvent, BpfError> {
    let program = perf_event(ebpf, name)?;
    program.load().map_err(|source| {
        let log = match &source {
            aya::programs::ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
            _ => String::new(),
        };
        // EPERM with no verifier output is a missing capability (CAP_BPF, CAP_PERFMON), not a
        // rejection: say so, without an empty "verifier log".
        if log.trim().is_empty() && !permission_hint(&source).is_empty() {
            return BpfError::NotPermitted {
                program: name,
                source,
            };
        }
        BpfError::Verify {
            program: name,
            source,
            log,
        }
    })?;
    Ok(program)
}

/// Attaches the exec/exit tracepoints: the probe of them is this real attach. Raw tracepoints,
/// not BTF ones: attaching a BTF tracepoint needs its type id from the kernel's BTF, and aya's
/// parse of it took 18 MiB (the daemon's whole-life peak); the programs read no typed argument.
/// Without them (a refusal) the profiler still works, but cannot tell an `exec`'s images apart
/// nor catch processes that exit before their first samples are read: say so once.
fn attach_process_events(ebpf: &mut Ebpf) -> Support {
    for (program, event) in [
        ("on_exec", "sched_process_exec"),
        ("on_exit", "sched_process_exit"),
    ] {
        let Some(prog) = ebpf.program_mut(program) else {
            tracing::warn!("the eBPF object has no `{program}`: exec/exit tracking is off");
            return Support::Unknown(format!("the eBPF object has no `{program}`"));
        };
        let result = (|| -> Result<(), aya::programs::ProgramError> {
            let prog: &mut aya::programs::RawTracePoint = prog.try_into()?;
            prog.load()?;
            prog.attach(event)?;
            Ok(())
        })();
        if let Err(err) = result {
            tracing::warn!("cannot attach to {event} ({err}): exec/exit tracking is off");
            return probe::support_after(&err);
        }
    }
    attach_new_area_events(ebpf);
    Support::Available
}

/// Attaches `on_new_area` (the `vm_unmapped_area` tracepoint): without it, a library loaded
/// where another was unloaded keeps the first one's names; one log line says so.
fn attach_new_area_events(ebpf: &mut Ebpf) {
    let result = (|| -> Result<(), String> {
        let prog = ebpf
            .program_mut("on_new_area")
            .ok_or("the eBPF object has no `on_new_area`")?;
        let prog: &mut aya::programs::RawTracePoint =
            prog.try_into().map_err(|e| format!("{e}"))?;
        prog.load().map_err(|e| format!("{e}"))?;
        prog.attach("vm_unmapped_area")
            .map_err(|e| format!("{e}"))?;
        Ok(())
    })();
    if let Err(err) = result {
        tracing::info!(
            "cannot attach to vm_unmapped_area ({err}): a library loaded where another was \
             unloaded keeps the first one's names"
        );
    }
}

/// The kernel's release string, for messages.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "release unknown".to_owned(), |s| s.trim().to_owned())
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, BpfError> {
    ebpf.take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })
}

/// Default ring buffer size: 128 KiB per CPU (about 250 typical samples, a quarter second at
/// 999 Hz), as a power of two between 256 KiB and 64 MiB.
#[must_use]
pub fn ring_buffer_bytes(cpus: usize) -> u32 {
    let wanted = (cpus.max(1) as u64 * 128 * 1024).next_power_of_two();
    wanted.clamp(256 * 1024, 64 * 1024 * 1024) as u32
}

/// Every executable and library in use is kept open (so names survive exits and namespaces):
/// lift the soft open-files limit to the hard one (1024 is the usual soft default).
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`; lift it so big ring buffers load.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

// A record must fit the smallest ring buffer allowed.
const _: () = assert!(size_of::<SampleRecord>() < 4096);
const _: () = assert!(COUNTER_SLOTS as usize == profiler_common::Counter::ALL.len());

#[cfg(test)]
mod tests {
    #[test]
    fn the_object_loads_without_the_kernel_s_btf() {
        // `load` gives aya no kernel BTF: a CO-RE relocation would then stay unpatched.
        let object = aya_obj::Object::parse(super::EBPF_OBJECT).expect("the built object parses");
        assert!(!object.has_btf_relocations());
        for program in ["on_exec", "on_exit", "on_new_area"] {
            assert!(
                object.programs.contains_key(program),
                "{program} is in the object"
            );
        }
    }

    #[test]
    fn ring_buffer_scales_with_cpus_within_bounds() {
        assert_eq!(super::ring_buffer_bytes(1), 256 * 1024);
        assert_eq!(super::ring_buffer_bytes(2), 256 * 1024);
        assert_eq!(super::ring_buffer_bytes(6), 1024 * 1024);
        assert_eq!(super::ring_buffer_bytes(4096), 64 * 1024 * 1024);
    }
}
