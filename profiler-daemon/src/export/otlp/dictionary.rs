//! The `ProfilesDictionary` of one request: every string, function, mapping, location, stack and
//! attribute once, each table starting with its zero value (OTLP v1.10 requires it).

use rustc_hash::FxHashMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::profiles::v1development as pb;

use super::encode::{Labels, keys};
use crate::export::intern::{Interner, Strings};
use crate::profile::{Location, Stack, SymbolizedProfile};

/// A value that can be an attribute in the dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum AttrValue {
    Str(String),
    Int(i64),
}

impl AttrValue {
    /// The value as text (what Pyroscope makes of it as a label value).
    pub(super) fn text_len(&self) -> usize {
        match self {
            AttrValue::Str(s) => s.len(),
            AttrValue::Int(n) => n.to_string().len(),
        }
    }
}

/// One line of a location: a function and its line (0: not known).
#[derive(Debug, Clone, Copy)]
struct Line {
    function_index: i32,
    line: u32,
}

/// A location as the dictionary keeps it until `finish`: 24 bytes and its lines in one shared
/// list, where a `pb::Location` is 64 bytes and two allocations of its own. A window of 100,000
/// stacks can hold millions of locations.
#[derive(Debug, Clone, Copy)]
struct LocationEntry {
    mapping_index: i32,
    /// Its frame-type attribute.
    attribute: i32,
    address: u64,
    /// Its lines in `Dictionary::lines`.
    lines_start: u32,
    lines_len: u32,
}

/// Interning tables of the `ProfilesDictionary`, each starting with its zero value.
pub(super) struct Dictionary {
    strings: Strings,
    functions: Interner<(i32, i32)>,
    mappings: Interner<(i32, Option<i32>)>,
    /// This dictionary's index of each location of the profile it met. A map, not a list as
    /// long as the profile's: a request holds a share of a window's millions of locations.
    location_of: FxHashMap<u32, i32>,
    /// Locations alike in content (mapping, address, kernel, name) are one: the same binary of
    /// two containers is two modules of the profile, one location on the wire.
    by_content: FxHashMap<(i32, u64, bool, i32), i32>,
    stacks: Interner<Box<[i32]>>,
    attributes: Interner<(i32, AttrValue)>,
    function_table: Vec<pb::Function>,
    mapping_table: Vec<pb::Mapping>,
    location_table: Vec<LocationEntry>,
    lines: Vec<Line>,
    kernel_mapping: Option<i32>,
    /// The frame-type attributes (kernel, native), once interned.
    frame_types: [Option<i32>; 2],
}

impl Dictionary {
    /// An empty dictionary.
    pub(super) fn new() -> Self {
        Self {
            by_content: FxHashMap::default(),
            location_of: FxHashMap::default(),
            strings: Strings::default(),
            functions: Interner::new((0, 0)),
            mappings: Interner::new((0, None)),
            stacks: Interner::new(Box::new([])),
            attributes: Interner::new((0, AttrValue::Str(String::new()))),
            function_table: vec![pb::Function::default()],
            mapping_table: vec![pb::Mapping::default()],
            location_table: vec![LocationEntry {
                mapping_index: 0,
                attribute: 0,
                address: 0,
                lines_start: 0,
                lines_len: 0,
            }],
            lines: Vec::new(),
            kernel_mapping: None,
            frame_types: [None; 2],
        }
    }

    pub(super) fn string(&mut self, s: &str) -> i32 {
        self.strings.intern(s)
    }

    pub(super) fn attribute(&mut self, key: &str, value: AttrValue) -> i32 {
        let key = self.string(key);
        self.attributes.intern((key, value)).0
    }

    /// The stack index of `stack` of `profile` (leaf first: kernel leaf .. kernel root, user
    /// leaf .. root).
    pub(super) fn stack(&mut self, profile: &SymbolizedProfile, stack: &Stack) -> i32 {
        let mut location_indices = Vec::with_capacity(stack.kernel.len() + stack.user.len());
        for &index in stack.kernel.iter().rev().chain(stack.user.iter().rev()) {
            location_indices.push(self.location(profile, index));
        }
        self.stacks.intern(location_indices.into_boxed_slice()).0
    }

    /// The sample attributes of `stack` that `labels` asks for (none by default: each one is a
    /// series label in Pyroscope).
    pub(super) fn sample_attributes(&mut self, stack: &Stack, labels: Labels) -> Vec<i32> {
        let mut out = Vec::new();
        if labels.pid {
            out.push(self.attribute(keys::PID, AttrValue::Int(i64::from(stack.process.pid))));
        }
        if labels.thread_id {
            out.push(self.attribute(keys::THREAD_ID, AttrValue::Int(i64::from(stack.tid))));
        }
        if labels.thread_name {
            let name = if stack.process.kernel_thread {
                crate::procfs::kernel_thread_base(&stack.thread)
            } else {
                &stack.thread
            };
            out.push(self.attribute(keys::THREAD_NAME, AttrValue::Str(name.to_owned())));
        }
        out
    }

    /// One sample of `count` with this stack (of `profile`) and these attributes.
    pub(super) fn sample(
        &mut self,
        profile: &SymbolizedProfile,
        stack: &Stack,
        labels: Labels,
        count: u64,
    ) -> pb::Sample {
        pb::Sample {
            stack_index: self.stack(profile, stack),
            attribute_indices: self.sample_attributes(stack, labels),
            values: vec![i64::try_from(count).unwrap_or(i64::MAX)],
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

    /// The index of the profile's location `index`.
    fn location(&mut self, profile: &SymbolizedProfile, index: u32) -> i32 {
        if let Some(&known) = self.location_of.get(&index) {
            return known;
        }
        let Some(loc) = profile.locations.get(index as usize) else {
            return 0;
        };
        let i = self.new_location(loc);
        self.location_of.insert(index, i);
        i
    }

    fn new_location(&mut self, loc: &Location) -> i32 {
        let mapping_index = self.mapping(loc);
        let address = address(loc);
        let next = i32::try_from(self.location_table.len()).unwrap_or(i32::MAX);
        // Unmapped user addresses of different processes may coincide: key by name too.
        let name = self
            .strings
            .intern(loc.frames.first().map_or("", |f| &f.name));
        match self
            .by_content
            .entry((mapping_index, address, loc.kernel, name))
        {
            std::collections::hash_map::Entry::Occupied(e) => return *e.get(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
            }
        }
        // Innermost (inlined) first, the containing function last; none for an unnamed
        // address, so that a backend takes it as not symbolized.
        let lines_start = u32::try_from(self.lines.len()).unwrap_or(u32::MAX);
        for frame in loc.frames.iter().rev() {
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
            self.lines.push(Line {
                function_index,
                line: frame.line.unwrap_or(0),
            });
        }
        let attribute = self.frame_type(loc.kernel);
        self.location_table.push(LocationEntry {
            mapping_index,
            attribute,
            address,
            lines_start,
            lines_len: u32::try_from(loc.frames.len()).unwrap_or(0),
        });
        next
    }

    /// The `profile.frame.type` attribute: `kernel` or `native`.
    fn frame_type(&mut self, kernel: bool) -> i32 {
        if let Some(i) = self.frame_types[usize::from(kernel)] {
            return i;
        }
        let value = if kernel { "kernel" } else { "native" };
        let i = self.attribute(keys::FRAME_TYPE, AttrValue::Str(value.to_owned()));
        self.frame_types[usize::from(kernel)] = Some(i);
        i
    }

    // Read access for the size estimate (`budget`): sample attributes.

    /// The lines of a location, innermost first.
    fn lines_of(&self, location: &LocationEntry) -> &[Line] {
        let start = location.lines_start as usize;
        self.lines
            .get(start..start + location.lines_len as usize)
            .unwrap_or(&[])
    }

    pub(super) fn string_at(&self, index: i32) -> &str {
        self.strings.get(index)
    }

    pub(super) fn attribute_at(&self, index: i32) -> Option<&(i32, AttrValue)> {
        self.attributes.value(index)
    }

    /// Strings interned.
    pub(super) fn strings(&self) -> usize {
        self.strings.len()
    }

    pub(super) fn finish(self) -> pb::ProfilesDictionary {
        let location_table = self
            .location_table
            .iter()
            .enumerate()
            .map(|(i, l)| pb::Location {
                mapping_index: l.mapping_index,
                address: l.address,
                lines: self
                    .lines_of(l)
                    .iter()
                    .map(|line| pb::Line {
                        function_index: line.function_index,
                        line: i64::from(line.line),
                        column: 0,
                    })
                    .collect(),
                // Index 0 is the zero value: no attributes.
                attribute_indices: if i == 0 {
                    Vec::new()
                } else {
                    vec![l.attribute]
                },
            })
            .collect();
        let Dictionary {
            strings,
            stacks,
            attributes,
            function_table,
            mapping_table,
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
                    value: (i != 0).then_some(AnyValue {
                        value: Some(match value {
                            AttrValue::Str(s) => any_value::Value::StringValue(s),
                            AttrValue::Int(n) => any_value::Value::IntValue(n),
                        }),
                    }),
                    unit_strindex: 0,
                })
                .collect(),
            stack_table: stacks
                .into_values()
                .into_iter()
                .map(|location_indices| pb::Stack {
                    location_indices: location_indices.into_vec(),
                })
                .collect(),
        }
    }
}

/// A location's address as the file's symbol table has it (ELF virtual addresses): what a
/// backend's symbolizer looks up for the frames we could not name.
pub(super) fn address(loc: &Location) -> u64 {
    match &loc.module {
        Some(module) if !loc.kernel => module.virtual_address(loc.address).unwrap_or(loc.address),
        _ => loc.address,
    }
}
