//! Which BPF features this kernel offers, probed once at start-up by loading tiny programs and
//! creating tiny maps (aya's `is_*_supported`), never by comparing version numbers: distribution
//! kernels backport features (RHEL's 4.18 has the ring buffer) and leave others out.
//!
//! The sampler needs the ring buffer and `bpf_get_stack`; exec/exit tracking needs raw
//! tracepoints (no kernel BTF: it is listed for information); the `.eh_frame` table walker needs `bpf_task_pt_regs` and `bpf_loop` (tail
//! calls and map-in-map are listed for information). `bpf_get_stack`'s flags (`BPF_F_USER_STACK`, ...) came with
//! the helper and are checked when it runs, not by the verifier: a failed walk is counted
//! (`profiler_stack_walks_failed_total`), so no probe is needed for them. The verifier's 1 M
//! instruction budget (Linux ≥ 5.2) is older than the ring buffer, so every kernel that passes
//! the probes has it.

use std::fmt;

use aya::maps::MapType;
use aya::programs::ProgramError;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported};

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Available,
    Missing,
    /// The probe itself failed (e.g. not permitted to load programs): the kernel may or may not
    /// have it. The sampler then tries anyway, so that the real error reaches the user.
    Unknown(String),
}

impl Support {
    #[must_use]
    pub fn is_available(&self) -> bool {
        *self == Support::Available
    }

    #[must_use]
    pub fn is_missing(&self) -> bool {
        *self == Support::Missing
    }

    /// All of `parts` available → available; any missing → missing; else the first error.
    fn all(parts: impl IntoIterator<Item = Support>) -> Support {
        let mut unknown = None;
        for part in parts {
            match part {
                Support::Available => {}
                Support::Missing => return Support::Missing,
                Support::Unknown(err) => {
                    unknown.get_or_insert(err);
                }
            }
        }
        unknown.map_or(Support::Available, Support::Unknown)
    }

    fn from_probe<E: fmt::Display>(result: Result<bool, E>) -> Support {
        match result {
            Ok(true) => Support::Available,
            Ok(false) => Support::Missing,
            Err(err) => Support::Unknown(err.to_string()),
        }
    }
}

/// What a failed load or attach says about the kernel: "invalid" or "not supported" means it
/// lacks the feature (so does a tracepoint missing from its BTF); anything else (not permitted,
/// out of memory) says nothing about it.
#[must_use]
pub fn support_after(err: &ProgramError) -> Support {
    /// The kernel's internal "not supported" (`ENOTSUPP`), which reaches user space as is.
    const ENOTSUPP: i32 = 524;
    let errno = match err {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        ProgramError::Btf(_) => return Support::Missing,
        _ => None,
    };
    match errno {
        Some(libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | ENOTSUPP) => Support::Missing,
        _ => Support::Unknown(err.to_string()),
    }
}

/// A probed feature: its name in `profiler check`, what it is (with the first upstream kernel
/// that had it), what it is needed for, and whether the profiler can run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    RingBuffer,
    GetStack,
    Btf,
    Tracepoints,
    TailCalls,
    MapInMap,
    TaskPtRegs,
    BpfLoop,
}

impl Feature {
    pub const ALL: [Feature; 8] = [
        Feature::RingBuffer,
        Feature::GetStack,
        Feature::Btf,
        Feature::Tracepoints,
        Feature::TailCalls,
        Feature::MapInMap,
        Feature::TaskPtRegs,
        Feature::BpfLoop,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Feature::RingBuffer => "ring buffer",
            Feature::GetStack => "bpf_get_stack",
            Feature::Btf => "btf",
            Feature::Tracepoints => "tracepoints",
            Feature::TailCalls => "tail calls",
            Feature::MapInMap => "map-in-map",
            Feature::TaskPtRegs => "task_pt_regs",
            Feature::BpfLoop => "bpf_loop",
        }
    }

    /// What was probed, and the first upstream kernel that had it.
    #[must_use]
    pub fn what(self) -> &'static str {
        match self {
            Feature::RingBuffer => "BPF ring buffer map and bpf_ringbuf_output (Linux 5.8)",
            Feature::GetStack => "bpf_get_stack from perf_event programs (Linux 4.18)",
            Feature::Btf => {
                "kernel BTF, /sys/kernel/btf/vmlinux (Linux 5.4, CONFIG_DEBUG_INFO_BTF); the \
                 profiler does not need it"
            }
            Feature::Tracepoints => {
                "raw tracepoints sched_process_exec/exit, attached (Linux 4.17)"
            }
            Feature::TailCalls => "program arrays and bpf_tail_call from perf_event programs",
            Feature::MapInMap => "array-of-maps and hash-of-maps (Linux 4.12)",
            Feature::TaskPtRegs => "bpf_task_pt_regs from perf_event programs (Linux 5.15)",
            Feature::BpfLoop => "bpf_loop from perf_event programs (Linux 5.17)",
        }
    }

    /// What is lost without it.
    #[must_use]
    pub fn without(self) -> &'static str {
        match self {
            Feature::RingBuffer | Feature::GetStack => "the sampler cannot run",
            Feature::Tracepoints => "exec/exit tracking off (short-lived processes lose names)",
            Feature::TaskPtRegs | Feature::BpfLoop => {
                "no unwind-table walker: user stacks by frame pointers only (shallow for code \
                 built without them, such as Debian's python3 and glibc)"
            }
            Feature::Btf | Feature::TailCalls | Feature::MapInMap => "not used (informational)",
        }
    }

    /// Whether the sampler cannot run without it.
    #[must_use]
    pub fn required(self) -> bool {
        matches!(self, Feature::RingBuffer | Feature::GetStack)
    }
}

/// The probe results, one per [`Feature`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub ring_buffer: Support,
    pub get_stack: Support,
    pub btf: Support,
    pub tracepoints: Support,
    pub tail_calls: Support,
    pub map_in_map: Support,
    pub task_pt_regs: Support,
    pub bpf_loop: Support,
}

impl Features {
    /// Probes every feature but the tracepoints (see below); a few milliseconds: each probe is
    /// one small map or program.
    #[must_use]
    pub fn probe() -> Self {
        let helper = |helper: BpfHelper| {
            Support::from_probe(is_helper_supported(ProgramType::PerfEvent, helper))
        };
        let map = |map_type: MapType| Support::from_probe(is_map_supported(map_type));
        // Only whether the kernel has it: parsing it (aya's `Btf`) takes 18 MiB, which was the
        // daemon's peak (nothing here needs it).
        let btf = match std::fs::metadata("/sys/kernel/btf/vmlinux") {
            Ok(_) => Support::Available,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Support::Missing,
            Err(err) => Support::Unknown(err.to_string()),
        };
        // The probe of the tracepoints is the sampler attaching its own (`Sampler::start` fills
        // this in).
        let tracepoints =
            Support::Unknown("not attached yet (the sampler attaches them)".to_owned());
        Self {
            ring_buffer: Support::all([
                map(MapType::RingBuf),
                helper(BpfHelper::BPF_FUNC_ringbuf_output),
            ]),
            get_stack: helper(BpfHelper::BPF_FUNC_get_stack),
            btf,
            tracepoints,
            tail_calls: Support::all([
                map(MapType::ProgramArray),
                helper(BpfHelper::BPF_FUNC_tail_call),
            ]),
            map_in_map: Support::all([map(MapType::ArrayOfMaps), map(MapType::HashOfMaps)]),
            task_pt_regs: helper(BpfHelper::BPF_FUNC_task_pt_regs),
            bpf_loop: helper(BpfHelper::BPF_FUNC_loop),
        }
    }

    #[must_use]
    pub fn get(&self, feature: Feature) -> &Support {
        match feature {
            Feature::RingBuffer => &self.ring_buffer,
            Feature::GetStack => &self.get_stack,
            Feature::Btf => &self.btf,
            Feature::Tracepoints => &self.tracepoints,
            Feature::TailCalls => &self.tail_calls,
            Feature::MapInMap => &self.map_in_map,
            Feature::TaskPtRegs => &self.task_pt_regs,
            Feature::BpfLoop => &self.bpf_loop,
        }
    }

    /// The first required feature the kernel lacks, if any.
    #[must_use]
    pub fn missing_required(&self) -> Option<Feature> {
        Feature::ALL
            .into_iter()
            .find(|&f| f.required() && self.get(f).is_missing())
    }
}

impl fmt::Display for Features {
    /// One word per feature, `name=yes|no|unknown`, for a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, feature) in Feature::ALL.into_iter().enumerate() {
            let value = match self.get(feature) {
                Support::Available => "yes",
                Support::Missing => "no",
                Support::Unknown(_) => "unknown",
            };
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={value}", feature.name().replace(' ', "_"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Feature, Features, Support};

    #[test]
    fn combined_support_prefers_missing_over_unknown() {
        let unknown = || Support::Unknown("EPERM".to_owned());
        assert_eq!(
            Support::all([Support::Available, Support::Available]),
            Support::Available
        );
        assert_eq!(
            Support::all([unknown(), Support::Missing]),
            Support::Missing
        );
        assert_eq!(Support::all([Support::Available, unknown()]), unknown());
    }

    #[test]
    fn only_the_sampler_s_own_needs_are_required() {
        let mut features = Features {
            ring_buffer: Support::Available,
            get_stack: Support::Unknown("EPERM".to_owned()),
            btf: Support::Missing,
            tracepoints: Support::Missing,
            tail_calls: Support::Missing,
            map_in_map: Support::Missing,
            task_pt_regs: Support::Missing,
            bpf_loop: Support::Missing,
        };
        // Unknown is not missing: the load then reports the real error.
        assert_eq!(features.missing_required(), None);
        features.ring_buffer = Support::Missing;
        assert_eq!(features.missing_required(), Some(Feature::RingBuffer));
        assert_eq!(
            features.to_string(),
            "ring_buffer=no bpf_get_stack=unknown btf=no tracepoints=no tail_calls=no \
             map-in-map=no task_pt_regs=no bpf_loop=no"
        );
    }
}
