//! An upper bound of the pprof that Grafana Pyroscope's OTLP converter makes of one profile, the
//! size its 4 MiB limit (`max_profile_size_bytes`) is checked against. The converter copies each
//! string, function and location it meets once, but writes a new pprof mapping for every sample
//! and every distinct mapping in that sample's stack, so a converted profile is several times
//! our encoded one (5-8x was seen). Samples are added one by one; the caller starts a new profile
//! when the next one would not fit.
//!
//! Every varint is sized for the largest id it could hold, so the figure never falls short.

use std::collections::HashSet;
use std::sync::Arc;

use super::dictionary::Dictionary;
use crate::objfile::Module;
use crate::profile::{Location, Stack, SymbolizedProfile};

/// Bytes of a protobuf varint.
fn varint(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field or message of `len` bytes with a one-byte tag.
fn delimited(len: usize) -> usize {
    1 + varint(len as u64) + len
}

/// A varint field with a one-byte tag; 0 is not written.
fn field(value: u64) -> usize {
    if value == 0 { 0 } else { 1 + varint(value) }
}

/// Fixed part of a converted profile: sample and period types, period, times, default type,
/// the few strings the converter adds (`cpu`, `nanoseconds`, ...), and a `[kernel]` copy of a
/// mapping for kernel frames.
const PROFILE_OVERHEAD: usize = 256;

/// The kernel mapping's file name in the request (see `dictionary`).
const KERNEL_FILE: &str = "[kernel.kallsyms]";

/// A string the converted profile holds once. The estimate reads the profile itself (no table
/// of its own per location: a window can hold millions), so strings are told apart by the
/// shared copy they are (a window's names are interned once, `symbolize::names`): two copies of
/// one string count twice, which only overstates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Text {
    /// A function or file name, by the address of its shared copy.
    Name(usize),
    /// A module's path, by the module.
    Path(usize),
    /// A module's build id (the converter makes it a string of its own), by the module.
    BuildId(usize),
    /// The kernel mapping's file name.
    Kernel,
    /// The empty string: the file of a function without one, the name of no mapping.
    Empty,
    /// An attribute key, by its index in the window's dictionary.
    AttributeKey(i32),
}

/// Which mapping a location is in, as the converter writes one per sample and mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MappingKey {
    None,
    Kernel,
    Module(usize),
}

impl MappingKey {
    fn of(loc: &Location) -> Self {
        match &loc.module {
            _ if loc.kernel => Self::Kernel,
            Some(module) => Self::Module(Arc::as_ptr(module).addr()),
            None => Self::None,
        }
    }
}

/// A function: its name and file.
type FunctionKey = (usize, usize);

fn function_key(frame: &crate::symbolize::Frame) -> FunctionKey {
    (
        Arc::as_ptr(&frame.name).cast::<u8>().addr(),
        frame
            .file
            .as_ref()
            .map_or(0, |f| Arc::as_ptr(f).cast::<u8>().addr()),
    )
}

/// Upper bounds of each kind of id in any profile of a window, as varint bytes.
pub(super) struct IdBytes {
    string: usize,
    function: usize,
    location: usize,
    /// A mapping id bound needs the number of samples of a profile too (`ConvertedSize::new`).
    mappings: usize,
}

impl IdBytes {
    /// The bounds for `profile`'s window, whose sample attributes are in `window` (every
    /// frame a function of its own, every module a mapping).
    pub(super) fn of(profile: &SymbolizedProfile, window: &Dictionary) -> Self {
        let functions: usize = profile.locations.iter().map(|l| l.frames.len()).sum();
        let mappings = profile
            .locations
            .iter()
            .map(MappingKey::of)
            .collect::<HashSet<_>>()
            .len();
        // Names and files of functions; paths and build ids of mappings (the converter adds a
        // string per build id and per `[kernel]` name); attribute keys and values.
        let strings = 2 * functions + 3 * mappings + window.strings() + 64;
        Self {
            string: varint(strings as u64),
            function: varint(functions as u64 + 1),
            location: varint(profile.locations.len() as u64 + 1),
            mappings,
        }
    }
}

/// The running estimate for one profile of `profile`'s window.
pub(super) struct ConvertedSize<'p> {
    profile: &'p SymbolizedProfile,
    /// The window's dictionary: sample attributes.
    window: &'p Dictionary,
    strings: HashSet<Text>,
    functions: HashSet<FunctionKey>,
    locations: HashSet<u32>,
    ids: &'p IdBytes,
    /// Largest mapping id, as varint bytes.
    mapping_id: usize,
    period: u64,
    bytes: usize,
    samples: usize,
}

impl<'p> ConvertedSize<'p> {
    /// An empty profile of `profile`'s window, with sampling `period` (values become count ×
    /// period) and at most `max_samples` samples.
    pub(super) fn new(
        profile: &'p SymbolizedProfile,
        window: &'p Dictionary,
        ids: &'p IdBytes,
        period: u64,
        max_samples: usize,
    ) -> Self {
        Self {
            profile,
            window,
            strings: HashSet::new(),
            functions: HashSet::new(),
            locations: HashSet::new(),
            mapping_id: varint(((max_samples + 1) * (ids.mappings + 1) * 2) as u64),
            ids,
            period,
            bytes: PROFILE_OVERHEAD,
            samples: 0,
        }
    }

    #[must_use]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    #[must_use]
    pub(super) fn samples(&self) -> usize {
        self.samples
    }

    /// The bytes one more sample (with `stack`'s locations, `attributes`, `count`) would add.
    pub(super) fn cost(&self, stack: &Stack, attributes: &[i32], count: u64) -> usize {
        self.account(stack, attributes, count, &mut Seen::default())
    }

    /// Adds the sample and returns its cost.
    pub(super) fn add(&mut self, stack: &Stack, attributes: &[i32], count: u64) -> usize {
        let mut seen = Seen::default();
        let cost = self.account(stack, attributes, count, &mut seen);
        self.strings.extend(seen.strings);
        self.functions.extend(seen.functions);
        self.locations.extend(seen.locations);
        self.bytes += cost;
        self.samples += 1;
        cost
    }

    fn account(&self, stack: &Stack, attributes: &[i32], count: u64, seen: &mut Seen) -> usize {
        let ids = self.ids;
        let indices = stack.kernel.iter().chain(stack.user.iter());
        let mut bytes = 0;
        let mut mappings: HashSet<MappingKey> = HashSet::new();
        let mut located = 0;
        for &l in indices {
            let Some(loc) = self.profile.locations.get(l as usize) else {
                continue;
            };
            located += 1;
            if mappings.insert(MappingKey::of(loc)) {
                bytes += self.mapping(loc, seen);
            }
            if self.locations.contains(&l) || !seen.locations.insert(l) {
                continue;
            }
            // Innermost first, as the request writes them.
            let lines: usize = loc
                .frames
                .iter()
                .map(|frame| {
                    bytes += self.function(frame, seen);
                    delimited(1 + ids.function + field(u64::from(frame.line.unwrap_or(0))))
                })
                .sum();
            bytes += delimited(
                1 + ids.location
                    + 1
                    + self.mapping_id
                    + field(super::dictionary::address(loc))
                    + lines,
            );
        }
        // Labels: key and value as strings.
        let mut labels = 0;
        for &a in attributes {
            if let Some((key, value)) = self.window.attribute_at(a) {
                let text = self.window.string_at(*key).len();
                bytes += self.string(text, Text::AttributeKey(*key), seen);
                // Values are new strings at worst.
                bytes += delimited(value.text_len());
                labels += delimited(2 + 2 * ids.string);
            }
        }
        let location_ids = located * ids.location;
        let value = varint(count.saturating_mul(self.period));
        bytes + delimited(delimited(location_ids) + delimited(value) + labels)
    }

    /// A function's bytes (and its strings') the first time the profile meets it.
    fn function(&self, frame: &crate::symbolize::Frame, seen: &mut Seen) -> usize {
        let key = function_key(frame);
        if self.functions.contains(&key) || !seen.functions.insert(key) {
            return 0;
        }
        let ids = self.ids;
        let mut bytes = delimited(1 + ids.function + 3 * (1 + ids.string));
        bytes += self.string(frame.name.len(), Text::Name(key.0), seen);
        bytes += match &frame.file {
            Some(file) => self.string(file.len(), Text::Name(key.1), seen),
            None => self.string(0, Text::Empty, seen),
        };
        bytes
    }

    /// One pprof mapping (written again for every sample), plus its strings the first time.
    fn mapping(&self, loc: &Location, seen: &mut Seen) -> usize {
        let ids = self.ids;
        let mut bytes = match (MappingKey::of(loc), &loc.module) {
            (MappingKey::Module(key), Some(module)) => self.module_strings(key, module, seen),
            (MappingKey::Kernel, _) => self.string(KERNEL_FILE.len(), Text::Kernel, seen),
            _ => self.string(0, Text::Empty, seen),
        };
        // id, filename, build id, and the four has_* flags (two bytes each when set).
        bytes += delimited(1 + self.mapping_id + 2 * (1 + ids.string) + 8);
        bytes
    }

    fn module_strings(&self, key: usize, module: &Module, seen: &mut Seen) -> usize {
        let path = module.path.to_string_lossy().len();
        let mut bytes = self.string(path, Text::Path(key), seen);
        if let Some(build_id) = &module.build_id {
            bytes += self.string(build_id.len(), Text::BuildId(key), seen);
        }
        bytes
    }

    /// A string's bytes the first time the profile meets it.
    fn string(&self, len: usize, key: Text, seen: &mut Seen) -> usize {
        if self.strings.contains(&key) || !seen.strings.insert(key) {
            return 0;
        }
        delimited(len)
    }
}

/// What one sample adds that the profile did not have yet.
#[derive(Default)]
struct Seen {
    strings: HashSet<Text>,
    functions: HashSet<FunctionKey>,
    locations: HashSet<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        assert_eq!(varint(0), 1);
        assert_eq!(varint(127), 1);
        assert_eq!(varint(128), 2);
        assert_eq!(varint(u64::MAX), 10);
        assert_eq!(field(0), 0);
        assert_eq!(field(300), 3);
        assert_eq!(delimited(3), 5);
    }
}
