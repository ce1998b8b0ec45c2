//! pprof output (`.pb.gz`: gzip-compressed `perftools.profiles.Profile`), for `go tool pprof`
//! and speedscope. The message types are declared here with prost's derive: the schema is eight
//! small, frozen messages, and no maintained crate publishes them without a profiler attached.

use std::io::Write as _;

use prost::Message as _;

use super::FileOptions;
use super::intern::{Interner, Strings};
use crate::profile::{Location, SymbolizedProfile};

/// `perftools.profiles` messages (field numbers from pprof's `profile.proto`).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
    }
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    #[allow(
        clippy::struct_excessive_bools,
        reason = "the message's own fields (profile.proto)"
    )]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

pub use proto::Profile as PprofProfile;

/// The pprof tables; pprof ids are the interners' indices (index 0, the zero value, is never
/// written as an entry).
///
/// Addresses: a whole-machine profile merges processes that load one file at different
/// addresses, so a user location's address is its offset in the file, and each file's mapping
/// is the range of offsets its locations use, with `file_offset` = `memory_start` (pprof's
/// address-to-file arithmetic then gives the offset back). Kernel addresses are the kernel's own.
struct Builder {
    profile: proto::Profile,
    strings: Strings,
    functions: Interner<(i64, i64)>,
    mappings: Interner<(i64, bool)>,
    locations: Interner<(u64, u64, i64)>,
}

impl Builder {
    fn new() -> Self {
        Self {
            profile: proto::Profile::default(),
            strings: Strings::default(),
            // pprof ids start at 1: index 0 is reserved with a key no function or location can
            // have (an unnamed address 0 outside any mapping is a real location, and interning it
            // as the zero value made a sample point at location 0: "nil location").
            functions: Interner::new((-1, -1)),
            mappings: Interner::new((0, false)),
            locations: Interner::new((u64::MAX, u64::MAX, -1)),
        }
    }

    fn string(&mut self, s: &str) -> i64 {
        i64::from(self.strings.intern(s))
    }

    fn mapping(&mut self, loc: &Location) -> u64 {
        let (name, build_id) = match (&loc.module, loc.kernel) {
            (_, true) => ("[kernel.kallsyms]".into(), None),
            (Some(m), false) => (m.path.to_string_lossy(), m.build_id.as_deref()),
            (None, false) => return 0,
        };
        let filename = self.string(&name);
        let (id, new) = self.mappings.intern((filename, loc.kernel));
        if new {
            let build_id = build_id.map_or(0, |b| self.string(b));
            self.profile.mapping.push(proto::Mapping {
                id: id as u64,
                memory_start: loc.address,
                memory_limit: loc.address.saturating_add(1),
                file_offset: if loc.kernel { 0 } else { loc.address },
                filename,
                build_id,
                ..proto::Mapping::default()
            });
        }
        // Mappings are pushed in id order: id N is entry N - 1.
        if let Some(mapping) = self.profile.mapping.get_mut(id as usize - 1) {
            if loc.address < mapping.memory_start {
                mapping.memory_start = loc.address;
                if !loc.kernel {
                    mapping.file_offset = loc.address;
                }
            }
            mapping.memory_limit = mapping.memory_limit.max(loc.address.saturating_add(1));
            mapping.has_functions |= !loc.frames.is_empty();
            mapping.has_inline_frames |= loc.frames.len() > 1;
            mapping.has_filenames |= loc.frames.iter().any(|f| f.file.is_some());
            mapping.has_line_numbers |= loc.frames.iter().any(|f| f.line.is_some());
        }
        id as u64
    }

    fn location(&mut self, loc: &Location) -> u64 {
        let mapping_id = self.mapping(loc);
        // Unnamed addresses are locations without lines: pprof shows them as the address in
        // its mapping's file, and a backend can still name them by build id.
        let name = self.string(loc.frames.first().map_or("", |f| &f.name));
        let (id, new) = self.locations.intern((mapping_id, loc.address, name));
        if !new {
            return id as u64;
        }
        // pprof, like OTLP: innermost inlined function first.
        let line = loc
            .frames
            .iter()
            .rev()
            .map(|frame| {
                let name = self.string(&frame.name);
                let file = frame.file.as_deref().map_or(0, |f| self.string(f));
                let (function_id, new_fn) = self.functions.intern((name, file));
                if new_fn {
                    self.profile.function.push(proto::Function {
                        id: function_id as u64,
                        name,
                        system_name: name,
                        filename: file,
                    });
                }
                proto::Line {
                    function_id: function_id as u64,
                    line: frame.line.map_or(0, i64::from),
                }
            })
            .collect();
        self.profile.location.push(proto::Location {
            id: id as u64,
            mapping_id,
            address: loc.address,
            line,
        });
        id as u64
    }

    /// Sample types `samples/count` and `cpu/nanoseconds`; returns the period.
    fn sample_types(&mut self, frequency: u32) -> i64 {
        let period = 1_000_000_000 / i64::from(frequency.max(1));
        let samples = proto::ValueType {
            r#type: self.string("samples"),
            unit: self.string("count"),
        };
        let cpu = proto::ValueType {
            r#type: self.string("cpu"),
            unit: self.string("nanoseconds"),
        };
        self.profile.sample_type = vec![samples, cpu];
        self.profile.period_type = Some(cpu);
        self.profile.period = period;
        period
    }

    /// A location that is one function name (no mapping, no address).
    fn named_location(&mut self, name: &str) -> u64 {
        let name = self.string(name);
        let (id, new) = self.locations.intern((0, 0, name));
        if new {
            let (function_id, new_fn) = self.functions.intern((name, 0));
            if new_fn {
                self.profile.function.push(proto::Function {
                    id: function_id as u64,
                    name,
                    system_name: name,
                    filename: 0,
                });
            }
            self.profile.location.push(proto::Location {
                id: id as u64,
                mapping_id: 0,
                address: 0,
                line: vec![proto::Line {
                    function_id: function_id as u64,
                    line: 0,
                }],
            });
        }
        id as u64
    }

    fn finish(mut self) -> PprofProfile {
        self.profile.string_table = self.strings.into_values();
        self.profile
    }
}

/// Builds the pprof message: sample types `samples/count` and `cpu/nanoseconds`, labels `pid`,
/// `tid`, `comm` (process) and `thread`.
#[must_use]
pub fn build(profile: &SymbolizedProfile, options: FileOptions) -> PprofProfile {
    let mut b = Builder::new();
    let period = b.sample_types(profile.frequency);
    b.profile.time_nanos = profile.start_unix_nano as i64;
    b.profile.duration_nanos = profile.duration_nano as i64;
    for stack in profile.shown(options.include_idle) {
        let location_id = profile
            .leaf_first(stack)
            .map(|loc| b.location(loc))
            .collect();
        let count = i64::try_from(stack.count).unwrap_or(i64::MAX);
        let label = vec![
            proto::Label {
                key: b.string("pid"),
                str: 0,
                num: i64::from(stack.process.pid),
            },
            proto::Label {
                key: b.string("tid"),
                str: 0,
                num: i64::from(stack.tid),
            },
            proto::Label {
                key: b.string("comm"),
                str: b.string(&stack.process.name),
                num: 0,
            },
            proto::Label {
                key: b.string("thread"),
                str: b.string(&stack.thread),
                num: 0,
            },
        ];
        b.profile.sample.push(proto::Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label,
        });
    }
    b.finish()
}

/// The pprof of folded stacks (`a;b;c`, samples; root first), for views that kept names only
/// (the live page): one function and one location per name, no mappings.
pub fn render_named(
    lines: &[(String, u64)],
    frequency: u32,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
) -> std::io::Result<Vec<u8>> {
    let mut b = Builder::new();
    let period = b.sample_types(frequency);
    let since_epoch = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)
    };
    b.profile.time_nanos = since_epoch(start);
    b.profile.duration_nanos = since_epoch(end).saturating_sub(b.profile.time_nanos);
    for (line, count) in lines {
        let location_id = line
            .split(';')
            .rev()
            .map(|name| b.named_location(name))
            .collect();
        let count = i64::try_from(*count).unwrap_or(i64::MAX);
        b.profile.sample.push(proto::Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label: Vec::new(),
        });
    }
    gzip(&b.finish().encode_to_vec())
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The gzip-compressed encoding, as `go tool pprof` reads it.
pub fn render(profile: &SymbolizedProfile, options: FileOptions) -> std::io::Result<Vec<u8>> {
    gzip(&build(profile, options).encode_to_vec())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::profile::test_support::{profile, stack};

    #[test]
    fn round_trips_with_names_inlined_lines_and_cpu_time() {
        let p = profile(vec![
            stack(
                7,
                7,
                &[&["main"], &["work", "inlined"]],
                &[&["sys_write"]],
                3,
            ),
            stack(0, 0, &[], &[&["do_idle"]], 9),
        ]);
        let gz = render(&p, FileOptions::default()).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        let decoded = PprofProfile::decode(raw.as_slice()).unwrap();
        let s = |i: i64| decoded.string_table[i as usize].as_str();
        assert_eq!(decoded.string_table[0], "");
        assert_eq!(decoded.sample.len(), 1, "idle left out");
        let sample = &decoded.sample[0];
        assert_eq!(sample.value, vec![3, 3 * (1_000_000_000 / 99)]);
        let names: Vec<Vec<&str>> = sample
            .location_id
            .iter()
            .map(|&id| {
                decoded.location[id as usize - 1]
                    .line
                    .iter()
                    .map(|l| s(decoded.function[l.function_id as usize - 1].name))
                    .collect()
            })
            .collect();
        assert_eq!(
            names,
            vec![vec!["sys_write"], vec!["inlined", "work"], vec!["main"]]
        );
        let labels: Vec<&str> = sample.label.iter().map(|l| s(l.key)).collect();
        assert_eq!(labels, vec!["pid", "tid", "comm", "thread"]);
    }

    #[test]
    fn an_unnamed_address_zero_outside_any_mapping_is_a_location_of_its_own() {
        let mut b = Builder::new();
        let zero = Location {
            module: None,
            address: 0,
            kernel: false,
            frames: std::sync::Arc::from(Vec::new()),
        };
        assert_eq!(b.location(&zero), 1);
        assert_eq!(b.location(&zero), 1, "the same location again");
        assert_eq!(b.profile.location.len(), 1);
        assert_eq!(b.profile.location[0].id, 1);
    }
}
