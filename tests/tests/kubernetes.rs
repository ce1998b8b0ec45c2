//! `profiler run --kubernetes` against a stand-in API server (`profiler_tests::kube_api`) that
//! lists one fixture pod and sends another in a watch: processes placed in cgroups shaped as
//! the kubelet shapes them (systemd driver with containerd, cgroupfs driver with CRI-O) get
//! their pod's namespace, name, container, workload and `service.name`; an unreachable API
//! leaves profiles flowing with what the cgroup path tells.
#![allow(clippy::unwrap_used, reason = "test helpers below fail loudly")]

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use profiler_tests::cgroups::{Cgroup, v2_mount};
use profiler_tests::kube_api::{FakeApi, fixture};
use profiler_tests::otlp::resource_attr;
use profiler_tests::receiver;
use profiler_tests::{Workload, build_workload, privileged, spawn_profiler, terminate};

const CHECKOUT_UID: &str = "0b5e3c1a-7d2f-4e8b-9c1d-2a3b4c5d6e7f";
const FRONTEND_UID: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
const CHECKOUT_ID: &str = "c0ffee0000000000000000000000000000000000000000000000000000000001";
const FRONTEND_ID: &str = "c0ffee0000000000000000000000000000000000000000000000000000000002";

const KEYS: [&str; 8] = [
    "service.name",
    "container.id",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.node.name",
];

/// Each distinct resource's attributes among `KEYS`.
fn resources(captures: &[ExportProfilesServiceRequest]) -> Vec<BTreeMap<String, String>> {
    let mut out: Vec<BTreeMap<String, String>> = Vec::new();
    for request in captures {
        for rp in &request.resource_profiles {
            let attrs: BTreeMap<String, String> = KEYS
                .iter()
                .filter_map(|k| Some(((*k).to_owned(), resource_attr(rp, k)?)))
                .collect();
            if !out.contains(&attrs) {
                out.push(attrs);
            }
        }
    }
    out
}

fn resource_of<'a>(
    all: &'a [BTreeMap<String, String>],
    container: &str,
) -> &'a BTreeMap<String, String> {
    all.iter()
        .find(|r| r.get("container.id").map(String::as_str) == Some(container))
        .unwrap_or_else(|| panic!("no resource of container {container}: {all:#?}"))
}

/// Two pods' processes in cgroups shaped as the kubelet shapes them (systemd driver with
/// containerd; cgroupfs driver with CRI-O), a host process beside them, and the stand-in API
/// server listing one pod and sending the other in its watch. Dropped in field order: the
/// processes before their cgroups, containers before pods.
struct Node {
    checkout: Workload,
    frontend: Workload,
    host: Workload,
    _cgroups: [Cgroup; 5],
    api: FakeApi,
    dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mount = v2_mount();
        let checkout_pod = Cgroup::create(mount.join(format!(
            "kubepods-besteffort-pod{}.slice",
            CHECKOUT_UID.replace('-', "_")
        )));
        let checkout_cg = Cgroup::create(
            checkout_pod
                .0
                .join(format!("cri-containerd-{CHECKOUT_ID}.scope")),
        );
        let qos = Cgroup::create(mount.join(format!("kubepods-test-{}", std::process::id())));
        let frontend_pod = Cgroup::create(qos.0.join(format!("pod{FRONTEND_UID}")));
        let frontend_cg = Cgroup::create(frontend_pod.0.join(FRONTEND_ID));
        let bin = build_workload("split", dir.path());
        let checkout = Workload::spawn(&bin, &["30"]);
        let frontend = Workload::spawn(&bin, &["30"]);
        let host = Workload::spawn(&bin, &["30"]);
        checkout_cg.admit(checkout.pid());
        frontend_cg.admit(frontend.pid());
        let api = FakeApi::start(
            vec![fixture("checkout-pod.json")],
            vec![fixture("frontend-pod.json")],
        );
        Self {
            checkout,
            frontend,
            host,
            _cgroups: [checkout_cg, checkout_pod, frontend_cg, frontend_pod, qos],
            api,
            dir,
        }
    }

    /// Runs the daemon with `--kubernetes` and `extra` flags on the three processes; returns
    /// the distinct resources of the windows after the first two (the watch may not be in for
    /// those), and the daemon's stderr.
    fn profile(&self, extra: &[&str]) -> (Vec<BTreeMap<String, String>>, String) {
        let kubeconfig = self.api.kubeconfig(self.dir.path());
        let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
        let endpoint = format!("http://{}", recv.addr);
        let pids: Vec<String> = [&self.checkout, &self.frontend, &self.host]
            .iter()
            .map(|w| w.pid().to_string())
            .collect();
        let mut args = vec![
            "run",
            "--kubernetes",
            "--otlp-endpoint",
            &endpoint,
            "--interval",
            "1s",
            "-F",
            "199",
            "--http-address",
            "off",
        ];
        if extra.is_empty() {
            for pid in &pids {
                args.extend(["--pid", pid]);
            }
        }
        args.extend(extra);
        let daemon = spawn_profiler(
            &args,
            &[
                ("NODE_NAME", "node-a"),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ],
        );
        let captures = recv.wait_for(5, Duration::from_secs(30));
        let (code, _, stderr, _) = terminate(daemon);
        assert_eq!(code, 0, "{stderr}");
        let requests: Vec<ExportProfilesServiceRequest> =
            captures.iter().skip(2).map(|c| c.request.clone()).collect();
        (resources(&requests), stderr)
    }
}

#[test]
fn pods_label_profiles_and_name_services_by_workload() {
    let Some(_machine) = privileged("pods_label_profiles_and_name_services_by_workload") else {
        return;
    };
    let node = Node::start();
    let (all, _) = node.profile(&[]);
    println!("{all:#?}");

    let checkout = resource_of(&all, CHECKOUT_ID);
    assert_eq!(checkout["service.name"], "shop/checkout");
    assert_eq!(checkout["k8s.namespace.name"], "shop");
    assert_eq!(checkout["k8s.pod.name"], "checkout-7d9f8b6c5-x2x4z");
    assert_eq!(checkout["k8s.container.name"], "api");
    assert_eq!(checkout["k8s.deployment.name"], "checkout");
    assert_eq!(checkout["k8s.node.name"], "node-a");

    // Sent in the watch, not the list; named by its app.kubernetes.io/name label.
    let frontend = resource_of(&all, FRONTEND_ID);
    assert_eq!(frontend["service.name"], "web/storefront");
    assert_eq!(frontend["k8s.pod.name"], "frontend-0");
    assert_eq!(frontend["k8s.container.name"], "nginx");
    assert_eq!(frontend["k8s.statefulset.name"], "frontend");

    // A host process: its executable, no pod labels.
    let host = all
        .iter()
        .find(|r| !r.contains_key("container.id"))
        .expect("the host process's resource");
    assert_eq!(host["service.name"], "split");
    assert!(!host.contains_key("k8s.pod.name"), "{host:?}");

    // Only this node's pods were asked for.
    let asked = node.api.requests();
    assert!(
        asked
            .iter()
            .all(|r| r.contains("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{asked:?}"
    );
}

#[test]
fn namespaces_and_label_selectors_choose_the_pods_to_profile() {
    let Some(_machine) = privileged("namespaces_and_label_selectors_choose_the_pods_to_profile")
    else {
        return;
    };
    let node = Node::start();
    let services = |all: &[BTreeMap<String, String>]| {
        all.iter()
            .map(|r| r["service.name"].clone())
            .collect::<Vec<_>>()
    };
    // The whole host is sampled but for the filter: only the watched pod's namespace.
    let (all, stderr) = node.profile(&["--namespace", "web"]);
    assert_eq!(services(&all), ["web/storefront"], "{stderr}");
    // A label selector: the listed pod only.
    let (all, stderr) = node.profile(&["--selector", "app=checkout,!app.kubernetes.io/name"]);
    assert_eq!(services(&all), ["shop/checkout"], "{stderr}");
    // Without --kubernetes there are no pods to select: a usage error.
    let (code, _, stderr) = profiler_tests::run_profiler(&["run", "--namespace", "web"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--kubernetes"), "{stderr}");
}

#[test]
fn an_unreachable_api_leaves_profiles_flowing_and_is_logged_once() {
    let Some(_machine) =
        privileged("an_unreachable_api_leaves_profiles_flowing_and_is_logged_once")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let kubeconfig = profiler_tests::kube_api::kubeconfig(dir.path(), receiver::free_addr());
    let bin = build_workload("split", dir.path());
    let work = Workload::spawn(&bin, &["30"]);
    let recv = receiver::grpc("127.0.0.1:0".parse().unwrap(), false);
    let endpoint = format!("http://{}", recv.addr);
    let metrics = receiver::free_addr().to_string();
    let pid = work.pid().to_string();
    let daemon = spawn_profiler(
        &[
            "run",
            "--kubernetes",
            "--otlp-endpoint",
            &endpoint,
            "--interval",
            "1s",
            "--pid",
            &pid,
            "--http-address",
            &metrics,
        ],
        &[
            ("NODE_NAME", "node-a"),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
    );
    let captures = recv.wait_for(3, Duration::from_secs(30));
    let (code, body) = profiler_tests::http::wait_status(
        metrics.parse().unwrap(),
        "/metrics",
        200,
        Duration::from_secs(5),
    );
    let (exit, _, stderr, _) = terminate(daemon);
    assert_eq!(exit, 0, "{stderr}");
    assert!(captures.len() >= 3, "profiles stopped: {stderr}");
    let errors = profiler_tests::http::metric(&body, "profiler_kubernetes_total{event=\"error\"}");
    assert_eq!(code, 200);
    assert!(errors >= 1.0, "{body}");
    assert_eq!(
        stderr.matches("Kubernetes API:").count(),
        1,
        "logged once: {stderr}"
    );
    // NODE_NAME is required.
    let (code, _, stderr) = profiler_tests::run_profiler(&["run", "--kubernetes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("NODE_NAME"), "{stderr}");
}

#[test]
fn the_fixture_pods_are_valid_kubernetes_objects() {
    let dir = profiler_tests::workspace().join("tests/fixtures/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out = std::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs (cargo xtask setup installs it)");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
}
