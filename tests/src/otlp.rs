//! Reading received OTLP profiles requests back: resource attributes, and samples as stacks of
//! function names (root first), so that the folded-stack helpers apply.

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::profiles::v1development as pb;

/// A string or integer attribute value as text.
#[must_use]
pub fn value_text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    }
}

#[must_use]
pub fn resource_attr(rp: &pb::ResourceProfiles, key: &str) -> Option<String> {
    let attrs: &[KeyValue] = &rp.resource.as_ref()?.attributes;
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| value_text(kv.value.as_ref()))
}

/// Attributes (key, value) of a dictionary attribute-index list.
#[must_use]
pub fn attrs(dict: &pb::ProfilesDictionary, indices: &[i32]) -> Vec<(String, String)> {
    indices
        .iter()
        .map(|&i| {
            let kv = &dict.attribute_table[i as usize];
            (
                dict.string_table[kv.key_strindex as usize].clone(),
                value_text(kv.value.as_ref()).unwrap_or_default(),
            )
        })
        .collect()
}

/// One decoded sample.
#[derive(Debug, Clone)]
pub struct DecodedSample {
    /// Function names, root first (inlined functions after their caller), like folded stacks.
    pub frames: Vec<String>,
    /// `profile.frame.type` per entry of `frames`.
    pub frame_types: Vec<String>,
    pub value: i64,
    pub attributes: Vec<(String, String)>,
    /// Mapping file names and their build ids, per location (root first).
    pub mappings: Vec<(String, Option<String>)>,
}

/// Every sample of the resources whose `process.executable.name` is `exe`, with its profile.
#[must_use]
pub fn samples_of<'a>(
    request: &'a ExportProfilesServiceRequest,
    exe: &str,
) -> Vec<(&'a pb::Profile, DecodedSample)> {
    let dict = request.dictionary.as_ref().expect("a dictionary");
    let string = |i: i32| dict.string_table[i as usize].clone();
    let mut out = Vec::new();
    for rp in &request.resource_profiles {
        if resource_attr(rp, "process.executable.name").as_deref() != Some(exe) {
            continue;
        }
        for sp in &rp.scope_profiles {
            for profile in &sp.profiles {
                for sample in &profile.samples {
                    let stack = &dict.stack_table[sample.stack_index as usize];
                    let mut frames = Vec::new();
                    let mut frame_types = Vec::new();
                    let mut mappings = Vec::new();
                    // Leaf first on the wire; lines innermost first: reverse both.
                    for &li in stack.location_indices.iter().rev() {
                        let loc = &dict.location_table[li as usize];
                        let ty = attrs(dict, &loc.attribute_indices)
                            .into_iter()
                            .find(|(k, _)| k == "profile.frame.type")
                            .map(|(_, v)| v)
                            .unwrap_or_default();
                        let mapping = &dict.mapping_table[loc.mapping_index as usize];
                        let build_id = attrs(dict, &mapping.attribute_indices)
                            .into_iter()
                            .find(|(k, _)| k == "process.executable.build_id.gnu")
                            .map(|(_, v)| v);
                        mappings.push((string(mapping.filename_strindex), build_id));
                        for line in loc.lines.iter().rev() {
                            let f = &dict.function_table[line.function_index as usize];
                            frames.push(string(f.name_strindex));
                            frame_types.push(ty.clone());
                        }
                    }
                    out.push((
                        profile,
                        DecodedSample {
                            frames,
                            frame_types,
                            value: sample.values.first().copied().unwrap_or(0),
                            attributes: attrs(dict, &sample.attribute_indices),
                            mappings,
                        },
                    ));
                }
            }
        }
    }
    out
}
