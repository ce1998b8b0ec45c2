//! Service-name rules of the configuration file (`[[service-name]]`): the first rule whose
//! matchers all hold for a process names its service, before the process's own OpenTelemetry
//! settings, its systemd unit and its executable.
//!
//! ```toml
//! [[service-name]]
//! name = "checkout"
//! unit = "shop-api"          # the systemd unit (`.service` may be left out)
//!
//! [[service-name]]
//! name = "batch"
//! executable = "python3"     # the executable's file name
//! cgroup = "/system.slice/cron.service"   # this cgroup or one below it
//! ```
//!
//! `container` matches a container id (the full 64 hex digits or a prefix of at least 12);
//! with `--kubernetes`, `namespace` a pod's namespace and `pod-labels` its labels (a label
//! selector: `app=web,tier!=cache`).

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use crate::kubernetes::{PodMeta, PodSelector};
use crate::procfs::{ProcessInfo, unit_of_path};

/// Shortest container id prefix accepted (Docker's short ids).
const MIN_CONTAINER_PREFIX: usize = 12;

/// One `[[service-name]]` table: a name and at least one matcher.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceRule {
    pub name: String,
    pub executable: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub pod_labels: Option<String>,
}

/// A validated rule: the file's, with its label selector parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    rule: ServiceRule,
    pod_labels: Option<PodSelector>,
}

/// The validated rules, in the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules(Vec<Rule>);

impl ServiceRules {
    /// Checks each rule (a name, at least one matcher, well-formed values) and normalizes it
    /// (`unit` gains `.service`, `cgroup` a leading `/`). Errors name the file and the rule.
    pub fn validated(rules: Vec<ServiceRule>, path: &Path) -> Result<Self, ConfigError> {
        rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                normalized(rule).map_err(|why| ConfigError::File {
                    path: path.to_path_buf(),
                    message: format!("[[service-name]] number {}: {why}", i + 1),
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name the first matching rule gives `process` (in `pod`, with `--kubernetes`).
    #[must_use]
    pub fn name_for(&self, process: &ProcessInfo, pod: Option<&PodMeta>) -> Option<&str> {
        self.0
            .iter()
            .find(|rule| matches(rule, process, pod))
            .map(|rule| rule.rule.name.as_str())
    }
}

fn normalized(mut rule: ServiceRule) -> Result<Rule, String> {
    rule.name = rule.name.trim().to_owned();
    if rule.name.is_empty() {
        return Err("`name` is empty".to_owned());
    }
    if rule.executable.is_none()
        && rule.cgroup.is_none()
        && rule.unit.is_none()
        && rule.container.is_none()
        && rule.namespace.is_none()
        && rule.pod_labels.is_none()
    {
        return Err(format!(
            "`{}` has nothing to match: give `executable`, `cgroup`, `unit`, `container`, \
             `namespace` or `pod-labels`",
            rule.name
        ));
    }
    if let Some(unit) = &mut rule.unit
        && !unit.contains('.')
    {
        unit.push_str(".service");
    }
    if let Some(cgroup) = &mut rule.cgroup {
        let trimmed = cgroup.trim_matches('/');
        *cgroup = format!("/{trimmed}");
    }
    if let Some(id) = &mut rule.container {
        *id = id.trim().to_ascii_lowercase();
        if id.len() < MIN_CONTAINER_PREFIX
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "container `{id}`: expected a container id, 12 to 64 hex digits"
            ));
        }
    }
    let pod_labels = rule
        .pod_labels
        .as_deref()
        .map(|labels| PodSelector::new(&[], Some(labels)).map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Rule { rule, pod_labels })
}

/// Whether every matcher of `rule` holds for `p` (in `pod`).
fn matches(rule: &Rule, p: &ProcessInfo, pod: Option<&PodMeta>) -> bool {
    let (selector, rule) = (&rule.pod_labels, &rule.rule);
    let cgroup = p.cgroup.as_deref();
    rule.executable
        .as_deref()
        .is_none_or(|exe| *p.exe_name == *exe)
        && rule
            .cgroup
            .as_deref()
            .is_none_or(|want| cgroup.is_some_and(|have| under(have, want)))
        && rule
            .unit
            .as_deref()
            .is_none_or(|want| cgroup.and_then(unit_of_path) == Some(want))
        && rule.container.as_deref().is_none_or(|want| {
            p.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with(want))
        })
        && rule
            .namespace
            .as_deref()
            .is_none_or(|want| pod.is_some_and(|pod| pod.namespace == want))
        && selector
            .as_ref()
            .is_none_or(|s| pod.is_some_and(|pod| s.matches(pod)))
}

/// Whether cgroup path `have` is `want` or below it.
fn under(have: &str, want: &str) -> bool {
    want == "/"
        || have
            .strip_prefix(want)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn rules(toml_text: &str) -> Result<ServiceRules, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct File {
            service_name: Vec<ServiceRule>,
        }
        let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        ServiceRules::validated(file.service_name, Path::new("/etc/profiler.toml"))
            .map_err(|e| e.to_string())
    }

    fn process(exe: &str, cgroup: Option<&str>, container: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            name: Arc::from(exe),
            exe_path: Some(Arc::from(format!("/usr/bin/{exe}"))),
            exe_name: Arc::from(exe),
            container_id: container.map(Arc::from),
            cgroup: cgroup.map(Arc::from),
            pod_uid: None,
            service: None,
            unit: None,
            kernel_thread: false,
        }
    }

    const ID: &str = "3f1c9b2e8d7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c";

    #[test]
    fn the_first_rule_whose_matchers_all_hold_names_the_service() {
        let r = rules(&format!(
            "[[service-name]]\nname = \"api\"\nunit = \"shop-api\"\n\
             [[service-name]]\nname = \"batch\"\nexecutable = \"python3\"\n\
             cgroup = \"system.slice/cron.service/\"\n\
             [[service-name]]\nname = \"cart\"\ncontainer = \"{}\"\n\
             [[service-name]]\nname = \"any python\"\nexecutable = \"python3\"\n",
            &ID[..12].to_uppercase()
        ))
        .unwrap();
        let unit = process("java", Some("/system.slice/shop-api.service"), None);
        assert_eq!(r.name_for(&unit, None), Some("api"));
        let cron = process("python3", Some("/system.slice/cron.service/job-7"), None);
        assert_eq!(r.name_for(&cron, None), Some("batch"));
        // Both matchers must hold: a python3 elsewhere falls to the later rule.
        let other = process("python3", Some("/system.slice/cron.services"), None);
        assert_eq!(r.name_for(&other, None), Some("any python"));
        let container = process(
            "node",
            Some(&format!("/system.slice/docker-{ID}.scope")),
            Some(ID),
        );
        assert_eq!(r.name_for(&container, None), Some("cart"));
        assert_eq!(r.name_for(&process("perl", None, None), None), None);
    }

    #[test]
    fn pod_matchers_need_the_pod() {
        let r = rules(
            "[[service-name]]\nname = \"web\"\nnamespace = \"shop\"\npod-labels = \"tier=front\"\n",
        )
        .unwrap();
        let pod = |namespace: &str, tier: &str| PodMeta {
            uid: "u".into(),
            namespace: namespace.into(),
            name: "p".into(),
            app_name: None,
            workload: None,
            labels: vec![("tier".into(), tier.into())],
            containers: Vec::new(),
        };
        let p = process("node", None, None);
        assert_eq!(r.name_for(&p, Some(&pod("shop", "front"))), Some("web"));
        assert_eq!(r.name_for(&p, Some(&pod("shop", "back"))), None);
        assert_eq!(r.name_for(&p, Some(&pod("dev", "front"))), None);
        assert_eq!(r.name_for(&p, None), None);
        let e = rules("[[service-name]]\nname = \"x\"\npod-labels = \"=a\"\n").unwrap_err();
        assert!(e.contains("number 1") && e.contains("--selector"), "{e}");
    }

    #[test]
    fn bad_rules_name_the_file_and_the_rule() {
        let e =
            rules("[[service-name]]\nname = \"x\"\nunit = \"a\"\n[[service-name]]\nname = \"y\"\n")
                .unwrap_err();
        assert!(
            e.contains("/etc/profiler.toml")
                && e.contains("number 2")
                && e.contains("nothing to match"),
            "{e}"
        );
        let e = rules("[[service-name]]\nname = \" \"\nunit = \"a\"\n").unwrap_err();
        assert!(e.contains("`name` is empty"), "{e}");
        let e = rules("[[service-name]]\nname = \"c\"\ncontainer = \"abc\"\n").unwrap_err();
        assert!(e.contains("12 to 64 hex digits"), "{e}");
        let e = rules("[[service-name]]\nname = \"c\"\npod = \"abc\"\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
