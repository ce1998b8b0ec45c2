//! Encodes a symbolized window as OTLP profiles requests (upstream proto v1.10) that Grafana
//! Pyroscope ingests at fleet scale:
//! - one `ResourceProfiles` per (service, executable, container): every resource attribute and
//!   every sample attribute becomes a Pyroscope series label, so pids, threads and paths are
//!   opt-in (`Labels`), kernel threads are one service, and samples that then look alike are
//!   merged;
//! - each profile within Pyroscope's limits *after its conversion to pprof* (`budget`: samples ×
//!   distinct mappings dominate), and each request within 4 MiB; a big service gets requests of
//!   its own;
//! - frames we could not name carry their address (as the file's symbol table has it) and
//!   mapping with the build id, and no function, so a backend can still name them;
//! - a deduplicated dictionary (`dictionary`) per request, one value (the count) per sample;
//! - each request encoded as soon as it is built (`EncodedRequest`): only one message is held
//!   at a time.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::profiles::v1development as pb;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use super::budget::{ConvertedSize, IdBytes};
use super::dictionary::Dictionary;
use super::queue::EncodedRequest;
use crate::config::rules::ServiceRules;
use crate::kubernetes::{Placement, PodIndex};
use crate::procfs::ProcessInfo;
use crate::profile::{Stack, SymbolizedProfile};

/// Pyroscope's default `max_profile_stacktrace_samples`.
pub const MAX_SAMPLES_PER_PROFILE: usize = 16_000;
/// Pyroscope's default limit on a request and on a converted profile (uncompressed).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Attribute keys (OpenTelemetry semantic conventions, as the reference profiler uses them).
pub mod keys {
    pub const SERVICE_NAME: &str = "service.name";
    pub const EXE_NAME: &str = "process.executable.name";
    pub const EXE_PATH: &str = "process.executable.path";
    pub const CONTAINER_ID: &str = "container.id";
    pub const HOST_NAME: &str = "host.name";
    pub const PID: &str = "process.pid";
    pub const THREAD_ID: &str = "thread.id";
    pub const THREAD_NAME: &str = "thread.name";
    pub const FRAME_TYPE: &str = "profile.frame.type";
    pub const BUILD_ID: &str = "process.executable.build_id.gnu";
    pub const K8S_NAMESPACE: &str = "k8s.namespace.name";
    pub const K8S_POD: &str = "k8s.pod.name";
    pub const K8S_CONTAINER: &str = "k8s.container.name";
    pub const K8S_NODE: &str = "k8s.node.name";
}

/// The service of every kernel thread (and of the idle task).
pub const KERNEL_SERVICE: &str = "kernel";

/// Optional labels, each a multiplier of Pyroscope series (off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "four independent switches, one per optional label"
)]
pub struct Labels {
    /// `process.pid` on samples: one series per process.
    pub pid: bool,
    /// `thread.id` on samples: one series per thread.
    pub thread_id: bool,
    /// `thread.name` on samples (kernel threads without per-CPU suffixes).
    pub thread_name: bool,
    /// `process.executable.path` on the resource: one series per install location.
    pub exe_path: bool,
}

/// What every resource of the daemon carries besides per-process attributes.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub host_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` (keys already valid as Pyroscope labels); per-process
    /// attributes win over these.
    pub resource_attributes: Vec<(String, String)>,
    /// Keep idle samples (pid 0).
    pub include_idle: bool,
    pub labels: Labels,
    /// Largest converted (pprof) profile and largest request, in bytes.
    pub max_profile_bytes: usize,
    /// The configuration's service-name rules (first in the order of names).
    pub service_rules: ServiceRules,
    /// This node's pods (`--kubernetes`).
    pub kubernetes: Option<Arc<PodIndex>>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            host_name: String::new(),
            resource_attributes: Vec::new(),
            include_idle: false,
            labels: Labels::default(),
            max_profile_bytes: MAX_REQUEST_BYTES,
            service_rules: ServiceRules::default(),
            kubernetes: None,
        }
    }
}

/// Resource identity: what Pyroscope turns into series labels, so low-cardinality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResourceKey {
    service: String,
    exe_name: String,
    exe_path: Option<String>,
    container_id: Option<String>,
    /// The process's pod (`--kubernetes`).
    kubernetes: Option<Placement>,
}

impl ResourceKey {
    fn of(stack: &Stack, options: &EncodeOptions) -> Self {
        let p = &stack.process;
        let kubernetes = placement(p, options);
        Self {
            service: service(p, kubernetes.as_ref(), options),
            exe_name: p.exe_name.to_string(),
            exe_path: options
                .labels
                .exe_path
                .then(|| p.exe_path.as_deref().map(str::to_owned))
                .flatten(),
            container_id: p.container_id.as_deref().map(str::to_owned),
            kubernetes,
        }
    }
}

/// The process's pod (`--kubernetes`).
fn placement(p: &ProcessInfo, options: &EncodeOptions) -> Option<Placement> {
    options
        .kubernetes
        .as_ref()
        .filter(|_| !p.kernel_thread)
        .and_then(|index| index.placement(p.pod_uid.as_deref(), p.container_id.as_deref()))
}

/// The `service.name` a process's profiles are exported under (the live page's filter uses the
/// same names).
#[must_use]
pub fn service_name(p: &ProcessInfo, options: &EncodeOptions) -> String {
    service(p, placement(p, options).as_ref(), options)
}

/// First match wins: the configured rules, the process's own name for itself (its OTEL
/// settings), its Kubernetes workload, its systemd unit, its executable.
fn service(p: &ProcessInfo, kubernetes: Option<&Placement>, options: &EncodeOptions) -> String {
    if p.kernel_thread {
        KERNEL_SERVICE.to_owned()
    } else if let Some(name) = options
        .service_rules
        .name_for(p, kubernetes.map(|k| &*k.pod))
        .or(p.service.as_deref())
    {
        name.to_owned()
    } else if let Some(name) = kubernetes.and_then(|k| k.pod.service(k.container.as_deref())) {
        name
    } else {
        p.unit.as_deref().unwrap_or(&p.exe_name).to_owned()
    }
}

/// Samples that look alike once pids and threads are left out are one sample.
struct Merged<'p> {
    /// One of the stacks merged (they share locations and attributes).
    stack: &'p Stack,
    attributes: Vec<i32>,
    count: u64,
}

/// What makes samples one: resource, kernel and user locations, attributes.
type MergeKey<'p> = (usize, &'p [u32], &'p [u32], Vec<i32>);

/// One profile to send: a resource and samples that fit the limits together.
struct Chunk<'p> {
    resource: usize,
    samples: Vec<&'p Merged<'p>>,
    bytes: usize,
}

/// Encodes `profile` into as many requests as the limits need (none for an empty window).
#[must_use]
pub fn encode(profile: &SymbolizedProfile, options: &EncodeOptions) -> Vec<EncodedRequest> {
    // The window's sample attributes, to merge alike samples (stacks are alike when their
    // locations are: the profile's are distinct already) and to size each profile.
    let mut window = Dictionary::new();
    let mut resources: Vec<ResourceKey> = Vec::new();
    let mut resource_of: HashMap<ResourceKey, usize> = HashMap::new();
    let mut merged: Vec<Vec<Merged<'_>>> = Vec::new();
    let mut merged_of: HashMap<MergeKey<'_>, usize> = HashMap::new();
    // A process's stacks share one resource: its key (service rules, pod lookup) is worked out
    // once per process, not once per stack. The pointer identifies the process's entry for as
    // long as `profile` is borrowed.
    let mut resource_of_process: HashMap<*const ProcessInfo, usize> = HashMap::new();
    for stack in profile.shown(options.include_idle) {
        let process = Arc::as_ptr(&stack.process);
        let resource = if let Some(&r) = resource_of_process.get(&process) {
            r
        } else {
            let key = ResourceKey::of(stack, options);
            let r = *resource_of.entry(key.clone()).or_insert_with(|| {
                resources.push(key);
                merged.push(Vec::new());
                resources.len() - 1
            });
            resource_of_process.insert(process, r);
            r
        };
        let attributes = window.sample_attributes(stack, options.labels);
        let samples = &mut merged[resource];
        let i = *merged_of
            .entry((resource, &stack.kernel, &stack.user, attributes.clone()))
            .or_insert_with(|| {
                samples.push(Merged {
                    stack,
                    attributes,
                    count: 0,
                });
                samples.len() - 1
            });
        samples[i].count += stack.count;
    }
    let period = period(profile);
    drop(merged_of);
    let ids = IdBytes::of(profile, &window);
    let sizing = Sizing {
        profile,
        window: &window,
        ids: &ids,
        period: period.unsigned_abs(),
    };
    let chunks = chunk(&sizing, &merged, options);
    pack(&chunks, options.max_profile_bytes)
        .into_iter()
        .flat_map(|group| build_within_size(profile, &resources, &group, options))
        .collect()
}

fn period(profile: &SymbolizedProfile) -> i64 {
    1_000_000_000 / i64::from(profile.frequency.max(1))
}

/// What sizing a window's profiles reads.
struct Sizing<'a> {
    profile: &'a SymbolizedProfile,
    window: &'a Dictionary,
    ids: &'a IdBytes,
    period: u64,
}

impl Sizing<'_> {
    /// An empty profile's estimate.
    fn profile(&self) -> ConvertedSize<'_> {
        ConvertedSize::new(
            self.profile,
            self.window,
            self.ids,
            self.period,
            MAX_SAMPLES_PER_PROFILE,
        )
    }
}

/// Splits each resource's samples into profiles whose converted size and sample count fit.
fn chunk<'p>(
    sizing: &Sizing<'_>,
    merged: &'p [Vec<Merged<'p>>],
    options: &EncodeOptions,
) -> Vec<Chunk<'p>> {
    let mut out = Vec::new();
    for (resource, samples) in merged.iter().enumerate() {
        let mut size = sizing.profile();
        let mut current: Vec<&Merged<'_>> = Vec::new();
        for m in samples {
            let cost = size.cost(m.stack, &m.attributes, m.count);
            let full = size.samples() >= MAX_SAMPLES_PER_PROFILE
                || size.bytes() + cost > options.max_profile_bytes;
            if full && !current.is_empty() {
                out.push(Chunk {
                    resource,
                    samples: std::mem::take(&mut current),
                    bytes: size.bytes(),
                });
                size = sizing.profile();
            }
            size.add(m.stack, &m.attributes, m.count);
            current.push(m);
        }
        if !current.is_empty() {
            out.push(Chunk {
                resource,
                samples: current,
                bytes: size.bytes(),
            });
        }
    }
    out
}

/// Groups profiles into requests: together while their converted sizes add up to at most
/// `max_bytes` (which bounds the request too), so a large service travels alone.
fn pack<'c, 'p>(chunks: &'c [Chunk<'p>], max_bytes: usize) -> Vec<Vec<&'c Chunk<'p>>> {
    let mut out: Vec<Vec<&Chunk<'_>>> = Vec::new();
    let mut bytes = 0;
    for c in chunks {
        match out.last_mut() {
            Some(group) if bytes + c.bytes <= max_bytes => group.push(c),
            _ => {
                out.push(vec![c]);
                bytes = 0;
            }
        }
        bytes += c.bytes;
    }
    out
}

/// Builds the request for `group`, halving it in the unexpected case that it is still too big.
fn build_within_size(
    profile: &SymbolizedProfile,
    resources: &[ResourceKey],
    group: &[&Chunk<'_>],
    options: &EncodeOptions,
) -> Vec<EncodedRequest> {
    let request = build(profile, resources, group, options);
    let size = request.encoded_len();
    if size <= options.max_profile_bytes || group.len() <= 1 {
        return vec![EncodedRequest::of(&request)];
    }
    // Dropped before the parts are built: a window many times the limit would otherwise hold
    // every level of the split at once. Split in proportion to the excess (not in halves), so
    // a large window is built about twice, not once per halving.
    drop(request);
    let parts = size
        .div_ceil(options.max_profile_bytes.max(1))
        .clamp(2, group.len());
    group
        .chunks(group.len().div_ceil(parts))
        .flat_map(|part| build_within_size(profile, resources, part, options))
        .collect()
}

fn build(
    profile: &SymbolizedProfile,
    resources: &[ResourceKey],
    group: &[&Chunk<'_>],
    options: &EncodeOptions,
) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    let sample_type = Some(pb::ValueType {
        type_strindex: dict.string("samples"),
        unit_strindex: dict.string("count"),
    });
    let period_type = Some(pb::ValueType {
        type_strindex: dict.string("cpu"),
        unit_strindex: dict.string("nanoseconds"),
    });
    let scope = InstrumentationScope {
        name: "profiler".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    let resource_profiles = group
        .iter()
        .map(|chunk| {
            let samples = chunk
                .samples
                .iter()
                .map(|m| dict.sample(profile, m.stack, options.labels, m.count))
                .collect();
            pb::ResourceProfiles {
                resource: Some(resource(&resources[chunk.resource], options)),
                scope_profiles: vec![pb::ScopeProfiles {
                    scope: Some(scope.clone()),
                    profiles: vec![pb::Profile {
                        sample_type,
                        samples,
                        time_unix_nano: profile.start_unix_nano,
                        duration_nano: profile.duration_nano,
                        period_type,
                        period: period(profile),
                        profile_id: profile_id(),
                        ..pb::Profile::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.finish()),
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn resource(key: &ResourceKey, options: &EncodeOptions) -> Resource {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        attrs.retain(|(old, _)| old != k);
        attrs.push((k.to_owned(), v.to_owned()));
    };
    if !options.host_name.is_empty() {
        set(keys::HOST_NAME, &options.host_name);
    }
    for (k, v) in &options.resource_attributes {
        set(k, v);
    }
    // Per-process values win over the daemon's OTEL_RESOURCE_ATTRIBUTES.
    set(keys::SERVICE_NAME, &key.service);
    set(keys::EXE_NAME, &key.exe_name);
    if let Some(path) = &key.exe_path {
        set(keys::EXE_PATH, path);
    }
    if let Some(id) = &key.container_id {
        set(keys::CONTAINER_ID, id);
    }
    if let Some(k) = &key.kubernetes {
        set(keys::K8S_NAMESPACE, &k.pod.namespace);
        set(keys::K8S_POD, &k.pod.name);
        if let Some(container) = &k.container {
            set(keys::K8S_CONTAINER, container);
        }
        if let Some(w) = &k.pod.workload {
            set(&format!("k8s.{}.name", w.kind), &w.name);
        }
    }
    if let Some(index) = &options.kubernetes {
        set(keys::K8S_NODE, index.node());
    }
    Resource {
        attributes: attrs.iter().map(|(k, v)| string_kv(k, v)).collect(),
        ..Resource::default()
    }
}

/// 16 random bytes (the profile id must be unique; getrandom never blocks after boot).
fn profile_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    // SAFETY: writes at most id.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != 16 {
        // Fall back to the clock: still unique enough per window and process.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        id.copy_from_slice(&now.to_le_bytes());
    }
    id
}

#[cfg(test)]
mod tests;
