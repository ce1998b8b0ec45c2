//! An upper bound of the pprof that Grafana Pyroscope's OTLP converter makes of one profile, the
//! size its 4 MiB limit (`max_profile_size_bytes`) is checked against. The converter copies each
//! string, function and location it meets once, but writes a new pprof mapping for every sample
//! and every distinct mapping in that sample's stack, so a converted profile is several times
//! our encoded one (5-8x was seen). Samples are added one by one; the caller starts a new profile
//! when the next one would not fit.
//!
//! Every varint is sized for the largest id it could hold, so the figure never falls short.

use std::collections::HashSet;

use super::dictionary::Dictionary;

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

/// The running estimate for one profile.
pub(super) struct ConvertedSize {
    strings: HashSet<i32>,
    functions: HashSet<i32>,
    locations: HashSet<i32>,
    /// Largest id each kind of pprof entry can have, as varint bytes.
    id_bytes: IdBytes,
    period: u64,
    bytes: usize,
    samples: usize,
}

struct IdBytes {
    string: usize,
    function: usize,
    location: usize,
    mapping: usize,
}

impl ConvertedSize {
    /// An empty profile over the tables of `dict`, with sampling `period` (values become
    /// count × period) and at most `max_samples` samples.
    pub(super) fn new(dict: &Dictionary, period: u64, max_samples: usize) -> Self {
        let (strings, functions, mappings, locations) = dict.sizes();
        // The converter adds a string per build id and per `[kernel]` name, and labels' values.
        let string_bound = (strings + mappings * 2 + 64) as u64;
        Self {
            strings: HashSet::new(),
            functions: HashSet::new(),
            locations: HashSet::new(),
            id_bytes: IdBytes {
                string: varint(string_bound),
                function: varint(functions as u64),
                location: varint(locations as u64),
                mapping: varint(((max_samples + 1) * (mappings + 1) * 2) as u64),
            },
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

    /// The bytes one more sample (with stack `stack_index`, `attributes`, `count`) would add.
    pub(super) fn cost(
        &self,
        dict: &Dictionary,
        stack_index: i32,
        attributes: &[i32],
        count: u64,
    ) -> usize {
        self.account(dict, stack_index, attributes, count, None)
    }

    /// Adds the sample and returns its cost.
    pub(super) fn add(
        &mut self,
        dict: &Dictionary,
        stack_index: i32,
        attributes: &[i32],
        count: u64,
    ) -> usize {
        let mut seen = Seen::default();
        let cost = self.account(dict, stack_index, attributes, count, Some(&mut seen));
        self.strings.extend(seen.strings);
        self.functions.extend(seen.functions);
        self.locations.extend(seen.locations);
        self.bytes += cost;
        self.samples += 1;
        cost
    }

    fn account(
        &self,
        dict: &Dictionary,
        stack_index: i32,
        attributes: &[i32],
        count: u64,
        seen: Option<&mut Seen>,
    ) -> usize {
        let mut local = Seen::default();
        let seen = seen.unwrap_or(&mut local);
        let ids = &self.id_bytes;
        let locations = dict.stack_locations(stack_index);
        let mut bytes = 0;
        let mut mappings: HashSet<i32> = HashSet::new();
        for &l in locations {
            let Some(loc) = dict.location_at(l) else {
                continue;
            };
            mappings.insert(loc.mapping_index);
            if self.locations.contains(&l) || !seen.locations.insert(l) {
                continue;
            }
            let lines: usize = dict
                .lines_of(loc)
                .iter()
                .map(|line| {
                    self.function(dict, line.function_index, seen);
                    delimited(1 + ids.function + field(u64::from(line.line)))
                })
                .sum();
            bytes += delimited(1 + ids.location + 1 + ids.mapping + field(loc.address) + lines);
        }
        for &m in &mappings {
            bytes += self.mapping(dict, m, seen);
        }
        // Labels: key and value as strings.
        let mut labels = 0;
        for &a in attributes {
            if let Some((key, value)) = dict.attribute_at(a) {
                bytes += self.string(dict.string_at(*key).len(), -1 - *key, seen);
                // Values are new strings at worst.
                bytes += delimited(value.text_len());
                labels += delimited(2 + 2 * ids.string);
            }
        }
        let location_ids = locations.len() * ids.location;
        let value = varint(count.saturating_mul(self.period));
        bytes += seen.function_bytes;
        seen.function_bytes = 0;
        bytes + delimited(delimited(location_ids) + delimited(value) + labels)
    }

    fn function(&self, dict: &Dictionary, index: i32, seen: &mut Seen) {
        if self.functions.contains(&index) || !seen.functions.insert(index) {
            return;
        }
        let Some(f) = dict.function_at(index) else {
            return;
        };
        let ids = &self.id_bytes;
        let mut bytes =
            delimited(1 + ids.function + 3 * (1 + ids.string) + field(f.start_line.max(0) as u64));
        for s in [f.name_strindex, f.filename_strindex] {
            bytes += self.string(dict.string_at(s).len(), s, seen);
        }
        seen.function_bytes += bytes;
    }

    /// One pprof mapping (written again for every sample), plus its strings the first time.
    fn mapping(&self, dict: &Dictionary, index: i32, seen: &mut Seen) -> usize {
        let ids = &self.id_bytes;
        let Some(m) = dict.mapping_at(index) else {
            return 0;
        };
        let mut bytes = self.string(
            dict.string_at(m.filename_strindex).len(),
            m.filename_strindex,
            seen,
        );
        for &a in &m.attribute_indices {
            if let Some((_, value)) = dict.attribute_at(a) {
                // The build id becomes a string of its own.
                bytes += self.string(value.text_len(), -1_000_000 - a, seen);
            }
        }
        // id, filename, build id, and the four has_* flags (two bytes each when set).
        bytes + delimited(1 + ids.mapping + 2 * (1 + ids.string) + 8)
    }

    /// A string's bytes the first time the profile meets it (`key` tells strings apart; negative
    /// keys stand for strings the converter makes that are not in our string table).
    fn string(&self, len: usize, key: i32, seen: &mut Seen) -> usize {
        if self.strings.contains(&key) || !seen.strings.insert(key) {
            return 0;
        }
        delimited(len)
    }
}

/// What one sample adds that the profile did not have yet.
#[derive(Default)]
struct Seen {
    strings: HashSet<i32>,
    functions: HashSet<i32>,
    locations: HashSet<i32>,
    function_bytes: usize,
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
