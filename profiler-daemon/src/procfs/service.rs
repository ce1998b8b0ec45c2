//! The service a process belongs to, as its owner named it: its own OpenTelemetry settings
//! (`OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, read from
//! `/proc/PID/environ`), else its systemd unit (`nginx.service` → `nginx`, from
//! `/proc/PID/cgroup`). Only those values are kept: nothing else of the environment is stored or
//! logged.

use std::io::Read as _;
use std::path::Path;

/// Most bytes of `/proc/PID/environ` read: environments are a few KiB; a huge one is cut (the
/// OpenTelemetry variables past the cut are not seen).
const MAX_ENVIRON_BYTES: u64 = 256 << 10;

/// Longest service name kept (longer values are cut at a character boundary).
const MAX_NAME_BYTES: usize = 128;

/// The service named by the process's environment.
#[must_use]
pub(super) fn own_service(pid_dir: &Path) -> Option<String> {
    read_environ(pid_dir).and_then(|environ| service_from_environ(&environ))
}

/// `/proc/PID/environ`, bounded; `None` when unreadable (another user's process without
/// `CAP_SYS_PTRACE`, or gone).
fn read_environ(pid_dir: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(pid_dir.join("environ")).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_ENVIRON_BYTES).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES` (the SDKs' order).
#[must_use]
fn service_from_environ(environ: &[u8]) -> Option<String> {
    let mut from_attributes = None;
    for entry in environ.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some(name) = entry.strip_prefix("OTEL_SERVICE_NAME=") {
            if let Some(name) = clean(name) {
                return Some(name);
            }
        } else if let Some(attributes) = entry.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
            from_attributes = attributes
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim() == "service.name")
                .and_then(|(_, value)| clean(&percent_decode(value.trim())));
        }
    }
    from_attributes
}

/// The innermost systemd service unit in a `/proc/PID/cgroup` text (the v2 line or v1's
/// `name=systemd` line), without `.service`; user managers (`user@1000.service`) are not
/// services of their own.
#[must_use]
pub(super) fn unit_service(cgroup: &str) -> Option<String> {
    systemd_path(cgroup)
        .and_then(unit_of_path)
        .and_then(|unit| clean(unit.strip_suffix(".service").unwrap_or(unit)))
}

/// The cgroup path systemd placed the process at: the cgroup v2 line's (`0::PATH`), else cgroup
/// v1's `name=systemd` line's.
#[must_use]
pub fn systemd_path(cgroup: &str) -> Option<&str> {
    let path_of = |wanted: &str| {
        cgroup.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            (controllers == wanted).then_some(path)
        })
    };
    path_of("").or_else(|| path_of("name=systemd"))
}

/// The innermost service unit (`nginx.service`) in a cgroup path; user managers
/// (`user@1000.service`) are not services of their own.
#[must_use]
pub fn unit_of_path(path: &str) -> Option<&str> {
    path.split('/')
        .rev()
        .filter(|part| part.ends_with(".service"))
        .find(|unit| !unit.starts_with("user@"))
}

/// Decodes `%XX` escapes (W3C baggage encoding, which `OTEL_RESOURCE_ATTRIBUTES` uses); a bad
/// escape stays as it is.
fn percent_decode(value: &str) -> String {
    super::decode_escapes(value, b'%', 2, 16)
}

/// A usable name: trimmed, without control characters, not empty, at most `MAX_NAME_BYTES`.
fn clean(name: &str) -> Option<String> {
    let name: String = name.trim().chars().filter(|c| !c.is_control()).collect();
    if name.is_empty() {
        return None;
    }
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some(name[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otel_service_name_wins_over_resource_attributes() {
        let env = b"PATH=/bin\0OTEL_RESOURCE_ATTRIBUTES=service.name=cart,env=prod\0\
                    OTEL_SERVICE_NAME=checkout\0HOME=/root\0";
        assert_eq!(service_from_environ(env).as_deref(), Some("checkout"));
        let env =
            b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod, service.name = my%20cart \0";
        assert_eq!(service_from_environ(env).as_deref(), Some("my cart"));
        assert_eq!(
            service_from_environ(b"OTEL_SERVICE_NAME=\0PATH=/bin\0"),
            None
        );
        assert_eq!(service_from_environ(b"SECRET=x\0"), None);
        assert_eq!(
            service_from_environ(b"OTEL_SERVICE_NAME=a\x07b\0").as_deref(),
            Some("ab")
        );
        let long = format!("OTEL_SERVICE_NAME={}\0", "é".repeat(100));
        assert_eq!(
            service_from_environ(long.as_bytes()).map(|s| s.len()),
            Some(128)
        );
    }

    #[test]
    fn systemd_units_name_services() {
        assert_eq!(
            unit_service("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx")
        );
        // cgroup v1 with systemd's named hierarchy.
        let v1 = "12:cpu,cpuacct:/system.slice/postgresql@15-main.service\n\
                  1:name=systemd:/system.slice/postgresql@15-main.service\n";
        assert_eq!(unit_service(v1).as_deref(), Some("postgresql@15-main"));
        // A user's service under its user manager.
        let user =
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-backup.service\n";
        assert_eq!(unit_service(user).as_deref(), Some("app-backup"));
        // A login session, the user manager itself, containers: no unit service.
        assert_eq!(
            unit_service("0::/user.slice/user-1000.slice/session-3.scope\n"),
            None
        );
        assert_eq!(
            unit_service("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"),
            None
        );
        assert_eq!(unit_service("0::/kubepods/besteffort/pod1/abc\n"), None);
    }
}
