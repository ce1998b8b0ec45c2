//! What `cargo xtask dist` builds (`target/dist`; `cargo xtask test` builds it before the
//! tests): a static binary without an interpreter or shared libraries, its debug file, the
//! tarball, a Debian package that installs and purges cleanly, the checksums; and the image
//! recipe, the manifests, the unit and the package agreeing on paths and names.
#![allow(clippy::unwrap_used, reason = "test helpers below fail loudly")]

use std::path::PathBuf;
use std::process::Command;

use profiler_tests::{privileged, workspace};

/// `target/dist`, or `None` (said) when `cargo xtask dist` has not run; under `CI=true` it must
/// have.
fn dist() -> Option<PathBuf> {
    let dir = workspace().join("target/dist");
    if dir.join("profiler").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "target/dist is missing under CI=true: cargo xtask test runs cargo xtask dist first"
    );
    eprintln!("skipping: target/dist is missing (run cargo xtask dist)");
    None
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[test]
fn the_binary_is_static_stripped_and_has_its_debug_file() {
    let Some(dir) = dist() else { return };
    let binary = dir.join("profiler");
    let headers = output(Command::new("readelf").args(["-lW"]).arg(&binary));
    assert!(!headers.contains("INTERP"), "{headers}");
    let dynamic = output(Command::new("readelf").args(["-dW"]).arg(&binary));
    assert!(!dynamic.contains("(NEEDED)"), "{dynamic}");
    let sections = output(Command::new("readelf").args(["-SW"]).arg(&binary));
    assert!(sections.contains(".gnu_debuglink"), "{sections}");
    assert!(
        !sections.contains(".debug_info"),
        "not stripped: {sections}"
    );
    let debug = output(
        Command::new("readelf")
            .args(["-SW"])
            .arg(dir.join("profiler.debug")),
    );
    assert!(debug.contains(".debug_info"), "{debug}");
    let size = std::fs::metadata(&binary).unwrap().len();
    println!("static binary: {} KiB", size / 1024);
    let version_line = output(Command::new(&binary).arg("--version"));
    assert!(version_line.contains(version()), "{version_line}");
}

#[test]
fn the_tarball_holds_the_binary_docs_deploy_files_and_licences_and_the_sums_hold() {
    let Some(dir) = dist() else { return };
    let name = format!("profiler-{}-x86_64-linux.tar.gz", version());
    let listing = output(Command::new("tar").arg("tzf").arg(dir.join(&name)));
    for file in [
        "profiler",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "THIRD-PARTY-LICENSES",
        "deploy/profiler.toml",
        "deploy/systemd/profiler.service",
        "deploy/Containerfile",
        "deploy/kubernetes/daemonset.yaml",
        "deploy/kubernetes/rbac.yaml",
    ] {
        let path = format!("profiler-{}/{file}", version());
        assert!(
            listing.lines().any(|l| l == path),
            "{path} missing:\n{listing}"
        );
    }
    let checked = output(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&dir),
    );
    assert_eq!(checked.matches(": OK").count(), 4, "{checked}");
}

#[test]
fn the_debian_package_installs_and_purges_cleanly() {
    let Some(_machine) = privileged("the_debian_package_installs_and_purges_cleanly") else {
        return;
    };
    let Some(dir) = dist() else { return };
    let deb = dir.join(format!("profiler_{}_amd64.deb", version()));
    let files = [
        "/usr/bin/profiler",
        "/usr/lib/systemd/system/profiler.service",
        "/etc/profiler/profiler.toml",
        "/usr/share/doc/profiler/copyright",
    ];
    output(Command::new("dpkg").arg("-i").arg(&deb));
    for file in files {
        assert!(PathBuf::from(file).exists(), "{file} not installed");
    }
    let status =
        output(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", "profiler"]));
    assert_eq!(status, format!("install ok installed {}", version()));
    // The installed binary runs, and the installed unit names it.
    let check = Command::new("/usr/bin/profiler")
        .arg("check")
        .output()
        .unwrap();
    assert!(check.status.code().is_some(), "profiler check did not run");
    let unit = std::fs::read_to_string(files[1]).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/profiler run --config /etc/profiler/profiler.toml"));
    let conffiles = output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "profiler"]));
    assert!(
        conffiles.contains("/etc/profiler/profiler.toml"),
        "{conffiles}"
    );

    output(Command::new("dpkg").args(["--purge", "profiler"]));
    for file in files {
        assert!(!PathBuf::from(file).exists(), "{file} left after purge");
    }
    assert!(
        !PathBuf::from("/etc/profiler").exists(),
        "/etc/profiler left after purge"
    );
    let gone = Command::new("dpkg-query")
        .args(["-W", "profiler"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the package is still known to dpkg");
}

/// The value of `key` in the Containerfile's `INSTRUCTION` lines (`COPY`, `ENTRYPOINT`, ...).
fn instructions(text: &str, instruction: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_image_recipe_manifests_unit_and_package_agree() {
    let read = |path: &str| std::fs::read_to_string(workspace().join(path)).unwrap();
    let containerfile = read("deploy/Containerfile");
    let unit = read("deploy/systemd/profiler.service");
    let daemonset = read("deploy/kubernetes/daemonset.yaml");
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let readme = read("README.md");

    // A small lint of the recipe: known instructions only, an explicit base tag, no ADD, exec
    // form for ENTRYPOINT and CMD, an explicit user (root, for the capabilities: said why).
    for line in containerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let word = line.split_whitespace().next().unwrap();
        assert!(
            ["FROM", "COPY", "USER", "ENTRYPOINT", "CMD"].contains(&word),
            "unexpected instruction: {line}"
        );
    }
    let from = instructions(&containerfile, "FROM");
    assert_eq!(from.len(), 1);
    assert!(
        from[0].rsplit('/').next().unwrap().contains(':'),
        "untagged base: {from:?}"
    );
    assert_eq!(instructions(&containerfile, "USER"), ["0:0"]);
    assert!(containerfile.contains("no ambient capabilities"));

    // The binary's path: the same in the image, the unit and the package.
    let entrypoint = instructions(&containerfile, "ENTRYPOINT");
    assert_eq!(entrypoint, ["[\"/usr/bin/profiler\"]"]);
    assert!(unit.contains("ExecStart=/usr/bin/profiler "));
    let copies = instructions(&containerfile, "COPY");
    assert!(
        copies.contains(&"target/dist/profiler /usr/bin/profiler".to_owned()),
        "{copies:?}"
    );
    for copy in &copies {
        let source = copy.split_whitespace().next().unwrap();
        if !source.starts_with("target/") {
            assert!(workspace().join(source).exists(), "{source} missing");
        }
    }
    if let Some(dir) = dist() {
        assert!(dir.join("profiler").exists());
        let deb = dir.join(format!("profiler_{}_amd64.deb", version()));
        let contents = output(Command::new("dpkg-deb").arg("-c").arg(&deb));
        assert!(contents.contains("./usr/bin/profiler"), "{contents}");
        assert!(
            contents.contains("./usr/lib/systemd/system/profiler.service"),
            "{contents}"
        );
    }

    // The configuration's path: the image's CMD, the unit, the DaemonSet's args and mount.
    let config = "/etc/profiler/profiler.toml";
    assert!(instructions(&containerfile, "CMD")[0].contains(config));
    assert!(unit.contains(&format!("--config {config}")));
    assert!(
        daemonset.contains(&format!("\"--config\", \"{config}\"")),
        "{daemonset}"
    );
    assert!(
        daemonset.contains("mountPath: /etc/profiler"),
        "{daemonset}"
    );
    assert!(configmap.contains("profiler.toml: |"));

    // The image name: the DaemonSet's is the one the recipe builds and the README documents.
    let image = daemonset
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .unwrap();
    assert_eq!(image, format!("localhost/profiler:{}", version()));
    assert!(
        containerfile.contains(&format!("-t {image} .")),
        "{containerfile}"
    );
    assert!(
        readme.contains(image),
        "the README does not say how to build {image}"
    );
}
