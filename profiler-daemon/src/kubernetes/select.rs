//! Which pods to profile (`--namespace`, `--selector`): namespaces (any of them) and a label
//! selector in the equality-based form `kubectl` takes (`app=web,tier!=cache,canary,!legacy`;
//! every requirement must hold).

use super::pod::PodMeta;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// Why a selector cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "--selector `{0}`: expected requirements like `app=web`, `tier!=cache`, `canary` or \
     `!legacy`, separated by commas"
)]
pub struct SelectorError(String);

/// Namespaces and label requirements; a pod is selected when it is in one of the namespaces
/// (any, when none is given) and meets every requirement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSelector {
    namespaces: Vec<String>,
    requirements: Vec<Requirement>,
}

impl PodSelector {
    /// Parses `--namespace` values and a `--selector` text.
    pub fn new(namespaces: &[String], selector: Option<&str>) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in selector.unwrap_or("").split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let bad = || SelectorError(selector.unwrap_or("").to_owned());
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::Absent(key.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k) => k,
            };
            if key.is_empty() || key.contains(char::is_whitespace) || key.contains(['(', ')']) {
                return Err(bad());
            }
            requirements.push(requirement);
        }
        Ok(Self {
            namespaces: namespaces.to_vec(),
            requirements,
        })
    }

    /// Whether `pod` is selected.
    #[must_use]
    pub fn matches(&self, pod: &PodMeta) -> bool {
        let label = |key: &str| {
            pod.labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        (self.namespaces.is_empty() || self.namespaces.contains(&pod.namespace))
            && self.requirements.iter().all(|r| match r {
                Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
                Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
                Requirement::Exists(k) => label(k).is_some(),
                Requirement::Absent(k) => label(k).is_none(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: "u".into(),
            namespace: namespace.into(),
            name: "p".into(),
            app_name: None,
            workload: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            containers: Vec::new(),
        }
    }

    #[test]
    fn namespaces_and_equality_selectors_as_kubectl_reads_them() {
        let web = pod("shop", &[("app", "web"), ("canary", "")]);
        let cache = pod("shop", &[("app", "web"), ("tier", "cache")]);
        let other = pod("dev", &[("app", "web")]);
        let s = PodSelector::new(&["shop".into()], Some("app=web, tier!=cache")).unwrap();
        assert!(s.matches(&web) && !s.matches(&cache) && !s.matches(&other));
        let s = PodSelector::new(&[], Some("app==web,canary")).unwrap();
        assert!(s.matches(&web) && !s.matches(&cache) && !s.matches(&other));
        let s = PodSelector::new(&[], Some("!tier")).unwrap();
        assert!(s.matches(&web) && !s.matches(&cache) && s.matches(&other));
        let s = PodSelector::new(&["dev".into(), "shop".into()], None).unwrap();
        assert!(s.matches(&web) && s.matches(&other));
        for bad in ["=web", "app in (web)", "a b=c"] {
            let e = PodSelector::new(&[], Some(bad)).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("app=web"), "{e}");
        }
    }
}
