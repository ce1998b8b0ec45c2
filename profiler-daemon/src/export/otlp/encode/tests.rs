//! Wire-format rules of the encoder, and the rules Grafana Pyroscope applies when it ingests
//! OTLP profiles (its `pkg/ingester/otlp` conversion, restated here as the contract we keep).

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::profiles::v1development as pb;
use prost::Message as _;

use super::*;
use crate::profile::test_support::{profile, stack};

/// The encoder's requests decoded back, each checked to count the samples it carries.
fn encode(p: &SymbolizedProfile, options: &EncodeOptions) -> Vec<ExportProfilesServiceRequest> {
    super::encode(p, options)
        .into_iter()
        .map(|encoded| {
            let request =
                ExportProfilesServiceRequest::decode(encoded.body.clone()).expect("decodes");
            assert_eq!(EncodedRequest::of(&request).samples, encoded.samples);
            request
        })
        .collect()
}

fn options() -> EncodeOptions {
    EncodeOptions {
        host_name: "node-1".to_owned(),
        resource_attributes: vec![
            ("deployment.environment".to_owned(), "prod".to_owned()),
            ("service.name".to_owned(), "daemon-wide".to_owned()),
        ],
        ..EncodeOptions::default()
    }
}

fn all_labels() -> EncodeOptions {
    EncodeOptions {
        labels: Labels {
            pid: true,
            thread_id: true,
            thread_name: true,
            exe_path: true,
        },
        ..options()
    }
}

/// Every profile of every request.
fn profiles(requests: &[ExportProfilesServiceRequest]) -> Vec<&pb::Profile> {
    requests
        .iter()
        .flat_map(|r| &r.resource_profiles)
        .flat_map(|rp| &rp.scope_profiles)
        .flat_map(|sp| &sp.profiles)
        .collect()
}

fn string(dict: &pb::ProfilesDictionary, i: i32) -> &str {
    &dict.string_table[i as usize]
}

fn resource_attr<'a>(rp: &'a pb::ResourceProfiles, key: &str) -> Option<&'a str> {
    rp.resource.as_ref()?.attributes.iter().find_map(|kv| {
        (kv.key == key).then(|| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })?
    })
}

/// Pyroscope's service name: `service.name` (sample attribute, then resource), else
/// `unknown_service:<process.executable.name>`.
fn pyroscope_service_name(rp: &pb::ResourceProfiles) -> String {
    resource_attr(rp, "service.name").map_or_else(
        || {
            format!(
                "unknown_service:{}",
                resource_attr(rp, "process.executable.name").unwrap_or("")
            )
        },
        str::to_owned,
    )
}

#[test]
#[allow(clippy::too_many_lines, reason = "one request, checked field by field")]
fn encodes_one_resource_per_executable_with_a_deduplicated_dictionary() {
    let p = profile(vec![
        stack(
            7,
            7,
            &[&["main"], &["work", "inlined"]],
            &[&["sys_write"]],
            3,
        ),
        stack(
            7,
            8,
            &[&["main"], &["work", "inlined"]],
            &[&["sys_write"]],
            2,
        ),
        stack(0, 0, &[], &[&["do_idle"]], 50),
    ]);
    let requests = encode(&p, &all_labels());
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    // Round trip through the wire format.
    let req = ExportProfilesServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
    let dict = req.dictionary.as_ref().unwrap();

    // By default the two threads' samples are one: no pid, thread or path labels.
    let lean = &encode(&p, &options())[0];
    let lean_profile = &lean.resource_profiles[0].scope_profiles[0].profiles[0];
    assert_eq!(lean_profile.samples.len(), 1);
    assert_eq!(lean_profile.samples[0].values, [5]);
    assert!(lean_profile.samples[0].attribute_indices.is_empty());
    assert_eq!(
        resource_attr(&lean.resource_profiles[0], "process.executable.path"),
        None
    );

    // Index 0 of every table is the zero value.
    assert_eq!(dict.string_table[0], "");
    assert_eq!(dict.mapping_table[0], pb::Mapping::default());
    assert_eq!(dict.location_table[0], pb::Location::default());
    assert_eq!(dict.function_table[0], pb::Function::default());
    assert_eq!(dict.stack_table[0], pb::Stack::default());
    assert_eq!(dict.link_table[0], pb::Link::default());
    assert_eq!(dict.attribute_table[0], pb::KeyValueAndUnit::default());
    // Deduplicated: no repeated strings.
    let mut seen = std::collections::HashSet::new();
    assert!(dict.string_table.iter().all(|s| seen.insert(s)));

    // Idle is left out; one resource (one executable).
    assert_eq!(req.resource_profiles.len(), 1);
    let rp = &req.resource_profiles[0];
    assert_eq!(
        resource_attr(rp, "service.name"),
        Some("app"),
        "per-process value wins"
    );
    assert_eq!(resource_attr(rp, "process.executable.name"), Some("app"));
    assert_eq!(
        resource_attr(rp, "process.executable.path"),
        Some("/usr/bin/app")
    );
    assert_eq!(resource_attr(rp, "host.name"), Some("node-1"));
    assert_eq!(resource_attr(rp, "deployment.environment"), Some("prod"));
    assert_eq!(
        resource_attr(rp, "process.pid"),
        None,
        "pid stays off the resource"
    );

    let prof = &rp.scope_profiles[0].profiles[0];
    assert_eq!(prof.samples.len(), 2);
    assert_eq!(prof.time_unix_nano, p.start_unix_nano);
    assert_eq!(prof.duration_nano, p.duration_nano);
    assert_eq!(prof.profile_id.len(), 16);
    let sample = &prof.samples[0];
    let attrs: HashMap<&str, &Value> = sample
        .attribute_indices
        .iter()
        .map(|&i| {
            let kv = &dict.attribute_table[i as usize];
            (
                string(dict, kv.key_strindex),
                kv.value.as_ref().unwrap().value.as_ref().unwrap(),
            )
        })
        .collect();
    assert_eq!(attrs["process.pid"], &Value::IntValue(7));
    assert!(matches!(attrs["thread.id"], Value::IntValue(7 | 8)));
    assert!(matches!(attrs["thread.name"], Value::StringValue(_)));

    // The stack is leaf first: kernel leaf, then user leaf (inlined lines innermost first).
    let stack = &dict.stack_table[sample.stack_index as usize];
    let names: Vec<Vec<&str>> = stack
        .location_indices
        .iter()
        .map(|&l| {
            dict.location_table[l as usize]
                .lines
                .iter()
                .map(|line| {
                    string(
                        dict,
                        dict.function_table[line.function_index as usize].name_strindex,
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(
        names,
        vec![vec!["sys_write"], vec!["inlined", "work"], vec!["main"]]
    );
    let types: Vec<&str> = stack
        .location_indices
        .iter()
        .map(|&l| {
            let loc = &dict.location_table[l as usize];
            let kv = &dict.attribute_table[loc.attribute_indices[0] as usize];
            assert_eq!(string(dict, kv.key_strindex), "profile.frame.type");
            match kv.value.as_ref().unwrap().value.as_ref().unwrap() {
                Value::StringValue(s) => s.as_str(),
                _ => panic!("frame type is a string"),
            }
        })
        .collect();
    assert_eq!(types, vec!["kernel", "native", "native"]);
    // Functions carry file names and lines.
    let user_loc = &dict.location_table[stack.location_indices[1] as usize];
    let f = &dict.function_table[user_loc.lines[0].function_index as usize];
    assert_eq!(string(dict, f.filename_strindex), "app.c");
    assert_eq!(user_loc.lines[0].line, 10);
    // The mapping carries the build id.
    let mapping = &dict.mapping_table[user_loc.mapping_index as usize];
    assert_eq!(string(dict, mapping.filename_strindex), "/usr/bin/app");
    let kv = &dict.attribute_table[mapping.attribute_indices[0] as usize];
    assert_eq!(
        string(dict, kv.key_strindex),
        "process.executable.build_id.gnu"
    );
}

#[test]
fn follows_the_rules_pyroscope_applies() {
    let p = profile(vec![
        stack(7, 7, &[&["main"]], &[], 5),
        stack(7, 7, &[&["other"]], &[], 1),
    ]);
    let req = &encode(&p, &options())[0];
    let dict = req.dictionary.as_ref().unwrap();
    let rp = &req.resource_profiles[0];
    let prof = &rp.scope_profiles[0].profiles[0];
    // sample type samples/count + period type cpu/nanoseconds → Pyroscope's `process_cpu`
    // profile with values in cpu nanoseconds = count × period.
    let st = prof.sample_type.unwrap();
    let pt = prof.period_type.unwrap();
    assert_eq!(
        (
            string(dict, st.type_strindex),
            string(dict, st.unit_strindex)
        ),
        ("samples", "count")
    );
    assert_eq!(
        (
            string(dict, pt.type_strindex),
            string(dict, pt.unit_strindex)
        ),
        ("cpu", "nanoseconds")
    );
    assert_eq!(prof.period, 1_000_000_000 / 99);
    let cpu_ns: i64 = prof
        .samples
        .iter()
        .map(|s| {
            assert_eq!(
                s.values.len(),
                1,
                "exactly one value per sample when period != 0"
            );
            assert!(s.timestamps_unix_nano.is_empty());
            s.values[0] * prof.period
        })
        .sum();
    assert_eq!(cpu_ns, 6 * (1_000_000_000 / 99));
    assert_eq!(pyroscope_service_name(rp), "app");
    // Resource attributes use plain string values, never the *_strindex forms.
    for kv in &rp.resource.as_ref().unwrap().attributes {
        assert!(matches!(
            kv.value.as_ref().unwrap().value,
            Some(Value::StringValue(_))
        ));
    }
    // Real time, not boot time: within Pyroscope's accepted window of now for a live window.
    let now = crate::profile::test_support::profile(vec![]).start_unix_nano;
    assert!(prof.time_unix_nano >= now);
}

#[test]
fn splits_large_windows_into_requests_within_pyroscope_limits() {
    let stacks: Vec<_> = (0..40_000u32)
        .map(|i| stack(7, i, &[&["main"], &[&format!("f{i}")]], &[], 1))
        .collect();
    let requests = encode(&profile(stacks), &options());
    let all = profiles(&requests);
    assert!(all.len() >= 3, "{} profiles", all.len());
    for req in &requests {
        assert!(req.encoded_len() <= MAX_REQUEST_BYTES);
    }
    for p in &all {
        assert!(p.samples.len() <= MAX_SAMPLES_PER_PROFILE);
    }
    assert_eq!(all.iter().map(|p| p.samples.len()).sum::<usize>(), 40_000);
    // A lower limit (a tenant's max_profile_size_bytes) gives smaller profiles and requests.
    let small = EncodeOptions {
        max_profile_bytes: 256 * 1024,
        ..options()
    };
    let stacks: Vec<_> = (0..40_000u32)
        .map(|i| stack(7, i, &[&["main"], &[&format!("f{i}")]], &[], 1))
        .collect();
    let requests = encode(&profile(stacks), &small);
    assert!(requests.len() > 3, "{} requests", requests.len());
    for req in &requests {
        assert!(req.encoded_len() <= 256 * 1024);
    }
}

#[test]
fn kernel_threads_are_one_service_and_unnamed_frames_stay_addresses() {
    let kthread = |comm: &str, base: &str| {
        let mut s = stack(9, 9, &[], &[&["worker_thread"]], 2);
        s.stack.process = std::sync::Arc::new(crate::procfs::ProcessInfo {
            name: comm.into(),
            exe_name: base.into(),
            exe_path: None,
            kernel_thread: true,
            ..(*s.stack.process).clone()
        });
        s
    };
    let mut unnamed = stack(7, 7, &[&["main"], &[]], &[], 3);
    unnamed.user[1].frames = crate::symbolize::unnamed();
    let p = profile(vec![
        kthread("kworker/0:1-events", "kworker"),
        kthread("kworker/1:2-mm_percpu_wq", "kworker"),
        kthread("ksoftirqd/0", "ksoftirqd"),
        unnamed,
    ]);
    let requests = encode(&p, &all_labels());
    let req = &requests[0];
    let dict = req.dictionary.as_ref().unwrap();
    let services: Vec<(String, Option<&str>)> = req
        .resource_profiles
        .iter()
        .map(|rp| {
            (
                pyroscope_service_name(rp),
                resource_attr(rp, "process.executable.name"),
            )
        })
        .collect();
    assert!(services.contains(&("kernel".to_owned(), Some("kworker"))));
    assert!(services.contains(&("kernel".to_owned(), Some("ksoftirqd"))));
    assert_eq!(services.len(), 3, "{services:?}");
    // Thread names lose their per-CPU and work suffixes.
    let thread_names: std::collections::HashSet<&str> = dict
        .attribute_table
        .iter()
        .filter(|kv| string(dict, kv.key_strindex) == "thread.name")
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        thread_names.iter().all(|t| !t.contains('/')),
        "{thread_names:?}"
    );
    // The unnamed frame: an address in its mapping (with the build id), and no function.
    let app = req
        .resource_profiles
        .iter()
        .find(|rp| resource_attr(rp, "process.executable.name") == Some("app"))
        .unwrap();
    let sample = &app.scope_profiles[0].profiles[0].samples[0];
    let leaf = &dict.location_table
        [dict.stack_table[sample.stack_index as usize].location_indices[0] as usize];
    assert!(leaf.lines.is_empty(), "{leaf:?}");
    assert_eq!(leaf.address, 0x1001);
    let mapping = &dict.mapping_table[leaf.mapping_index as usize];
    assert_eq!(mapping.attribute_indices.len(), 1, "the build id");
}

#[test]
fn empty_windows_send_nothing() {
    assert!(encode(&profile(vec![]), &options()).is_empty());
    let idle_only = profile(vec![stack(0, 0, &[], &[&["do_idle"]], 5)]);
    assert!(encode(&idle_only, &options()).is_empty());
    let with_idle = EncodeOptions {
        include_idle: true,
        ..options()
    };
    assert_eq!(encode(&idle_only, &with_idle).len(), 1);
}
