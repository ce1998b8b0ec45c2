//! Encodes a symbolized window as OTLP profiles requests (upstream proto v1.10): one
//! `ResourceProfiles` per (service, executable, container), a deduplicated dictionary with the zero
//! value at index 0 of every table, one value (the sample count) per sample, and requests split
//! to stay within Pyroscope's limits (16000 samples per profile, 4 MiB per request).

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::profiles::v1development as pb;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::export::intern::{Interner, Strings};
use crate::profile::{Location, Stack, SymbolizedProfile};

/// Pyroscope rejects profiles with more samples.
pub const MAX_SAMPLES_PER_PROFILE: usize = 16_000;
/// Pyroscope rejects larger requests (uncompressed).
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
}

/// What every resource of the daemon carries besides per-process attributes.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    pub host_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`; per-process attributes win over these.
    pub resource_attributes: Vec<(String, String)>,
    /// Keep idle samples (pid 0).
    pub include_idle: bool,
}

/// Encodes `profile` into as many requests as the limits need (none for an empty window).
#[must_use]
pub fn encode(
    profile: &SymbolizedProfile,
    options: &EncodeOptions,
) -> Vec<ExportProfilesServiceRequest> {
    let stacks: Vec<&Stack> = profile.shown(options.include_idle).collect();
    let mut out = Vec::new();
    for chunk in stacks.chunks(MAX_SAMPLES_PER_PROFILE) {
        encode_within_size(profile, chunk, options, &mut out);
    }
    out
}

/// Halves a chunk until its request fits `MAX_REQUEST_BYTES`.
fn encode_within_size(
    profile: &SymbolizedProfile,
    chunk: &[&Stack],
    options: &EncodeOptions,
    out: &mut Vec<ExportProfilesServiceRequest>,
) {
    let request = encode_chunk(profile, chunk, options);
    if request.encoded_len() <= MAX_REQUEST_BYTES || chunk.len() <= 1 {
        out.push(request);
        return;
    }
    let (a, b) = chunk.split_at(chunk.len() / 2);
    encode_within_size(profile, a, options, out);
    encode_within_size(profile, b, options, out);
}

/// Resource identity: what Pyroscope turns into series labels, so low-cardinality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResourceKey {
    service: String,
    exe_name: String,
    exe_path: Option<String>,
    container_id: Option<String>,
}

fn encode_chunk(
    profile: &SymbolizedProfile,
    chunk: &[&Stack],
    options: &EncodeOptions,
) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    let mut groups: Vec<(ResourceKey, Vec<pb::Sample>)> = Vec::new();
    let mut group_of: HashMap<ResourceKey, usize> = HashMap::new();
    for stack in chunk {
        let key = ResourceKey {
            // A later issue refines service naming; for now the executable's name.
            service: stack.process.exe_name.to_string(),
            exe_name: stack.process.exe_name.to_string(),
            exe_path: stack.process.exe_path.as_deref().map(str::to_owned),
            container_id: stack.process.container_id.as_deref().map(str::to_owned),
        };
        let group = *group_of.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        let sample = dict.sample(stack);
        groups[group].1.push(sample);
    }

    let sample_type = Some(pb::ValueType {
        type_strindex: dict.string("samples"),
        unit_strindex: dict.string("count"),
    });
    let period_type = Some(pb::ValueType {
        type_strindex: dict.string("cpu"),
        unit_strindex: dict.string("nanoseconds"),
    });
    let period = 1_000_000_000 / i64::from(profile.frequency.max(1));
    let scope = InstrumentationScope {
        name: "profiler".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    let resource_profiles = groups
        .into_iter()
        .map(|(key, samples)| pb::ResourceProfiles {
            resource: Some(resource(&key, options)),
            scope_profiles: vec![pb::ScopeProfiles {
                scope: Some(scope.clone()),
                profiles: vec![pb::Profile {
                    sample_type,
                    samples,
                    time_unix_nano: profile.start_unix_nano,
                    duration_nano: profile.duration_nano,
                    period_type,
                    period,
                    profile_id: profile_id(),
                    ..pb::Profile::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
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

/// A value that can be an attribute in the dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AttrValue {
    Str(String),
    Int(i64),
}

/// Interning tables of the `ProfilesDictionary`, each starting with its zero value.
struct Dictionary {
    strings: Strings,
    functions: Interner<(i32, i32)>,
    mappings: Interner<(i32, Option<i32>)>,
    locations: Interner<(i32, u64, bool, i32)>,
    stacks: Interner<Vec<i32>>,
    attributes: Interner<(i32, AttrValue)>,
    function_table: Vec<pb::Function>,
    mapping_table: Vec<pb::Mapping>,
    location_table: Vec<pb::Location>,
    kernel_mapping: Option<i32>,
}

impl Dictionary {
    fn new() -> Self {
        Self {
            strings: Strings::default(),
            functions: Interner::new((0, 0)),
            mappings: Interner::new((0, None)),
            locations: Interner::new((0, 0, false, 0)),
            stacks: Interner::new(Vec::new()),
            attributes: Interner::new((0, AttrValue::Str(String::new()))),
            function_table: vec![pb::Function::default()],
            mapping_table: vec![pb::Mapping::default()],
            location_table: vec![pb::Location::default()],
            kernel_mapping: None,
        }
    }

    fn string(&mut self, s: &str) -> i32 {
        self.strings.intern(s)
    }

    fn attribute(&mut self, key: &str, value: AttrValue) -> i32 {
        let key = self.string(key);
        self.attributes.intern((key, value)).0
    }

    fn sample(&mut self, stack: &Stack) -> pb::Sample {
        // Leaf first: kernel leaf .. kernel root, then user leaf .. user root.
        let mut location_indices = Vec::with_capacity(stack.kernel.len() + stack.user.len());
        for loc in stack.kernel.iter().rev().chain(stack.user.iter().rev()) {
            location_indices.push(self.location(loc));
        }
        let stack_index = self.stacks.intern(location_indices).0;
        let attribute_indices = vec![
            self.attribute(keys::PID, AttrValue::Int(i64::from(stack.process.pid))),
            self.attribute(keys::THREAD_ID, AttrValue::Int(i64::from(stack.tid))),
            self.attribute(keys::THREAD_NAME, AttrValue::Str(stack.thread.to_string())),
        ];
        pb::Sample {
            stack_index,
            attribute_indices,
            values: vec![i64::try_from(stack.count).unwrap_or(i64::MAX)],
            ..pb::Sample::default()
        }
    }

    fn mapping(&mut self, loc: &Location) -> i32 {
        if loc.kernel {
            if let Some(i) = self.kernel_mapping {
                return i;
            }
            let filename = self.string("[kernel.kallsyms]");
            let (i, _) = self.mappings.intern((filename, None));
            self.mapping_table.push(pb::Mapping {
                filename_strindex: filename,
                ..pb::Mapping::default()
            });
            self.kernel_mapping = Some(i);
            return i;
        }
        let Some(module) = &loc.module else {
            return 0;
        };
        let filename = self.string(&module.path.to_string_lossy());
        let build_id = module
            .build_id
            .as_deref()
            .map(|b| self.attribute(keys::BUILD_ID, AttrValue::Str(b.to_owned())));
        let (i, new) = self.mappings.intern((filename, build_id));
        if new {
            self.mapping_table.push(pb::Mapping {
                filename_strindex: filename,
                attribute_indices: build_id.into_iter().collect(),
                ..pb::Mapping::default()
            });
        }
        i
    }

    fn location(&mut self, loc: &Location) -> i32 {
        let mapping_index = self.mapping(loc);
        // Unmapped user addresses of different processes may coincide: key by their name too.
        let name = self.string(loc.frames.first().map_or("", |f| &f.name));
        let (i, new) = self
            .locations
            .intern((mapping_index, loc.address, loc.kernel, name));
        if new {
            // Innermost (inlined) first, the containing function last.
            let lines = loc
                .frames
                .iter()
                .rev()
                .map(|frame| {
                    let name = self.string(&frame.name);
                    let file = frame.file.as_deref().map_or(0, |f| self.string(f));
                    let (function_index, new_fn) = self.functions.intern((name, file));
                    if new_fn {
                        self.function_table.push(pb::Function {
                            name_strindex: name,
                            system_name_strindex: name,
                            filename_strindex: file,
                            start_line: 0,
                        });
                    }
                    pb::Line {
                        function_index,
                        line: frame.line.map_or(0, i64::from),
                        column: 0,
                    }
                })
                .collect();
            let frame_type = self.attribute(
                keys::FRAME_TYPE,
                AttrValue::Str(if loc.kernel { "kernel" } else { "native" }.to_owned()),
            );
            self.location_table.push(pb::Location {
                mapping_index,
                address: loc.address,
                lines,
                attribute_indices: vec![frame_type],
            });
        }
        i
    }

    fn finish(self) -> pb::ProfilesDictionary {
        let Dictionary {
            strings,
            stacks,
            attributes,
            function_table,
            mapping_table,
            location_table,
            ..
        } = self;
        pb::ProfilesDictionary {
            mapping_table,
            location_table,
            function_table,
            link_table: vec![pb::Link::default()],
            string_table: strings.into_values(),
            attribute_table: attributes
                .into_values()
                .into_iter()
                .enumerate()
                .map(|(i, (key, value))| pb::KeyValueAndUnit {
                    key_strindex: key,
                    // Index 0 is the zero value: no value at all.
                    value: if i == 0 {
                        None
                    } else {
                        Some(AnyValue {
                            value: Some(match value {
                                AttrValue::Str(s) => any_value::Value::StringValue(s),
                                AttrValue::Int(n) => any_value::Value::IntValue(n),
                            }),
                        })
                    },
                    unit_strindex: 0,
                })
                .collect(),
            stack_table: stacks
                .into_values()
                .into_iter()
                .map(|location_indices| pb::Stack { location_indices })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
