//! OTLP exporter settings from flags and the standard OpenTelemetry environment variables, with
//! the specification's precedence: flags, then `OTEL_EXPORTER_OTLP_PROFILES_*` (signal-specific),
//! then `OTEL_EXPORTER_OTLP_*` (generic), then defaults.

use std::path::PathBuf;
use std::time::Duration;

use super::layers::{Layers, setting};
use super::{ConfigError, Source};

/// Path of the profiles signal on an OTLP/HTTP receiver (OpenTelemetry Collector, Pyroscope).
pub const HTTP_PROFILES_PATH: &str = "/v1development/profiles";
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum Protocol {
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

/// A label left out by default because it multiplies series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtraLabel {
    /// `process.pid` on samples.
    Pid,
    /// `thread.id` on samples.
    ThreadId,
    /// `thread.name` on samples.
    ThreadName,
    /// `process.executable.path` on the resource.
    ExePath,
}

/// Flags of the OTLP exporter (all optional: unset falls through to the environment). The
/// configuration file's values take the same shape.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OtlpArgs {
    /// Collector base URL (like `OTEL_EXPORTER_OTLP_ENDPOINT`; for HTTP the signal path
    /// `/v1development/profiles` is appended). Default `http://localhost:4317` (gRPC) or
    /// `http://localhost:4318` (HTTP).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Transport (default `grpc`).
    #[arg(long, value_name = "PROTOCOL", value_enum)]
    pub otlp_protocol: Option<Protocol>,
    /// Extra request header `KEY=VALUE` (e.g. authorization); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub otlp_header: Vec<String>,
    /// PEM file of the CA to trust for TLS (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    /// Compression of the requests (default `gzip`).
    #[arg(long, value_name = "ALGO", value_enum)]
    pub otlp_compression: Option<Compression>,
    /// Time limit of one export attempt (e.g. `10s`).
    #[arg(long, value_name = "DUR", value_parser = super::args::parse_duration)]
    pub otlp_timeout: Option<Duration>,
}

/// The resolved exporter settings.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// gRPC: the server URL; HTTP: the full URL of the `POST` requests.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Lowercase names; values may be secrets (never logged: see `Debug`).
    pub headers: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
    pub compression: Compression,
    pub timeout: Duration,
    /// `OTEL_RESOURCE_ATTRIBUTES`, in order, with keys a backend accepts as label names (see
    /// `label_key`); per-process attributes win over these.
    pub resource_attributes: Vec<(String, String)>,
    /// Keys of `OTEL_RESOURCE_ATTRIBUTES` that had to be renamed: (given, sent).
    pub renamed_attributes: Vec<(String, String)>,
}

impl OtlpConfig {
    /// The endpoint as logs and messages show it: a password or token in the URL is masked.
    #[must_use]
    pub fn endpoint_for_logs(&self) -> String {
        redact_url(&self.endpoint)
    }
}

/// `scheme://user:pass@host/...` → `scheme://***@host/...`; other URLs unchanged.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are often credentials: show names only.
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, _)| format!("{k}=***"))
            .collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint_for_logs())
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("ca_file", &self.ca_file)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("resource_attributes", &self.resource_attributes)
            .field("renamed_attributes", &self.renamed_attributes)
            .finish()
    }
}

/// Resolves the settings; `env` reads an environment variable (injectable for tests).
pub fn resolve(
    args: &OtlpArgs,
    file: &OtlpArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OtlpConfig, ConfigError> {
    // The OTLP flags have no clap defaults: a value is a flag given.
    let layers = Layers {
        explicit: &|_| true,
        env,
    };
    let protocol = layers
        .pick(
            "otlp-protocol",
            args.otlp_protocol,
            file.otlp_protocol,
            |v| {
                <Protocol as clap::ValueEnum>::from_str(v, false)
                    .map_err(|_| "`grpc` or `http/protobuf` (http/json is not supported)")
            },
        )?
        .map_or(Protocol::Grpc, |(v, _)| v);
    let compression = layers
        .pick(
            "otlp-compression",
            args.otlp_compression,
            file.otlp_compression,
            |v| {
                <Compression as clap::ValueEnum>::from_str(v, false).map_err(|_| "`gzip` or `none`")
            },
        )?
        .map_or(Compression::Gzip, |(v, _)| v);
    // The specification gives the variables in milliseconds.
    let timeout = layers.pick("otlp-timeout", args.otlp_timeout, file.otlp_timeout, |v| {
        v.parse()
            .map(Duration::from_millis)
            .map_err(|_| "milliseconds, e.g. `10000`")
    })?;
    let timeout = match timeout {
        None => DEFAULT_TIMEOUT,
        Some((t, source)) if t.is_zero() => {
            return Err(ConfigError::Invalid {
                origin: source,
                value: "0".to_owned(),
                expected: "a positive duration",
            });
        }
        Some((t, _)) => t,
    };
    let ca_file = layers
        .pick("otlp-ca", args.otlp_ca.clone(), file.otlp_ca.clone(), |v| {
            Ok(PathBuf::from(v))
        })?
        .map(|(path, source)| {
            // Read now: a wrong file should stop the daemon at start, not fail every export.
            let pem = std::fs::read_to_string(&path).unwrap_or_default();
            if pem.contains("-----BEGIN CERTIFICATE-----") {
                Ok(path)
            } else {
                Err(ConfigError::Invalid {
                    origin: source,
                    value: path.display().to_string(),
                    expected: "a readable PEM file with a certificate",
                })
            }
        })
        .transpose()?;
    let mut renamed_attributes = Vec::new();
    let resource_attributes = match env("OTEL_RESOURCE_ATTRIBUTES") {
        Some(text) => parse_key_values(&text, &Source::env("OTEL_RESOURCE_ATTRIBUTES"))?
            .into_iter()
            .map(|(k, v)| {
                let key = label_key(&k);
                if key != k {
                    renamed_attributes.push((k, key.clone()));
                }
                (key, v)
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(OtlpConfig {
        endpoint: resolve_endpoint(args, file, &layers, protocol)?,
        protocol,
        headers: resolve_headers(args, file, env)?,
        ca_file,
        compression,
        timeout,
        resource_attributes,
        renamed_attributes,
    })
}

/// An attribute key every Pyroscope accepts as a label name: Pyroscope 1.20/1.21 turn dots into
/// underscores and reject any other character but letters, digits and `_`, so those become `_`
/// (`team-name` → `team_name`). Dots stay: they are the OpenTelemetry convention, and newer
/// Pyroscope versions keep them.
#[must_use]
pub fn label_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn resolve_endpoint(
    args: &OtlpArgs,
    file: &OtlpArgs,
    layers: &Layers<'_>,
    protocol: Protocol,
) -> Result<String, ConfigError> {
    // The setting's layers, but for one rule of the specification: the signal-specific
    // variable is the whole URL, every other layer a base URL that gets the signal path.
    let signal_variable = setting("otlp-endpoint")
        .env
        .first()
        .copied()
        .unwrap_or_default();
    let picked = layers.pick(
        "otlp-endpoint",
        args.otlp_endpoint.clone(),
        file.otlp_endpoint.clone(),
        |v| Ok(v.to_owned()),
    )?;
    let (value, source, base) = if let Some((v, source)) = picked {
        let base = source != Source::env(signal_variable);
        (v, source, base)
    } else {
        let default = match protocol {
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
            Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
        };
        (
            default.to_owned(),
            Source::Other("the default endpoint"),
            true,
        )
    };
    let value = value.trim().to_owned();
    let invalid = |expected| ConfigError::Invalid {
        origin: source.clone(),
        value: redact_url(&value),
        expected,
    };
    let uri: http::Uri = value
        .parse()
        .map_err(|_| invalid("a URL like `http://host:4317`"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("a URL starting with `http://` or `https://`")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("a URL with a host, like `http://host:4317`"));
    }
    Ok(match protocol {
        Protocol::HttpProtobuf if base => {
            format!("{}{HTTP_PROFILES_PATH}", value.trim_end_matches('/'))
        }
        _ => value,
    })
}

fn resolve_headers(
    args: &OtlpArgs,
    file: &OtlpArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| {
        let k = k.to_ascii_lowercase();
        headers.retain(|(old, _)| *old != k);
        headers.push((k, v));
    };
    // Lowest precedence first: later entries replace earlier ones of the same name.
    for item in &file.otlp_header {
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError::Invalid {
                origin: Source::File("otlp-header"),
                value: redact(item),
                expected: "KEY=VALUE",
            });
        };
        set(k.trim().to_owned(), v.trim().to_owned());
    }
    // Headers merge across the layers (the specification's rule), lowest first: the file, the
    // setting's variables from the last to the first, the flags.
    for &name in setting("otlp-header").env.iter().rev() {
        if let Some(text) = env(name) {
            for (k, v) in parse_key_values(&text, &Source::env(name))? {
                set(k, v);
            }
        }
    }
    for flag in &args.otlp_header {
        let Some((k, v)) = flag.split_once('=') else {
            return Err(ConfigError::Invalid {
                origin: Source::Flag("otlp-header"),
                value: redact(flag),
                expected: "KEY=VALUE",
            });
        };
        set(k.trim().to_owned(), v.trim().to_owned());
    }
    for (k, v) in &headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            return Err(ConfigError::Invalid {
                origin: Source::Other("an OTLP header"),
                value: format!("{k}=***"),
                expected: "a valid HTTP header name and a printable ASCII value",
            });
        }
    }
    Ok(headers)
}

/// Parses `k1=v1,k2=v2` with percent-encoded values (the W3C Baggage form the specification
/// uses for `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`).
pub fn parse_key_values(text: &str, source: &Source) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError::Invalid {
                origin: source.clone(),
                value: redact(item),
                expected: "comma-separated key=value pairs",
            });
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s.trim())
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
        };
        let (Ok(k), Ok(v)) = (decode(k), decode(v)) else {
            return Err(ConfigError::Invalid {
                origin: source.clone(),
                value: redact(item),
                expected: "percent-encoded UTF-8",
            });
        };
        if k.is_empty() {
            return Err(ConfigError::Invalid {
                origin: source.clone(),
                value: redact(item),
                expected: "a non-empty key",
            });
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Shows the key of a `key=value` item but never the value (it may be a credential).
fn redact(item: &str) -> String {
    match item.split_once('=') {
        Some((k, _)) => format!("{k}=***"),
        None if item.len() > 12 => format!("{}...", &item[..item.floor_char_boundary(12)]),
        None => item.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with_env(vars: &[(&str, &str)], args: &OtlpArgs) -> Result<OtlpConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(args, &OtlpArgs::default(), &|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let c = with_env(&[], &OtlpArgs::default()).unwrap();
        assert_eq!(c.endpoint, "http://localhost:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let http = OtlpArgs {
            otlp_protocol: Some(Protocol::HttpProtobuf),
            ..OtlpArgs::default()
        };
        let c = with_env(&[], &http).unwrap();
        assert_eq!(c.endpoint, "http://localhost:4318/v1development/profiles");
    }

    #[test]
    fn precedence_flags_then_signal_then_generic() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT", "3000"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=generic,b=generic"),
            (
                "OTEL_EXPORTER_OTLP_PROFILES_HEADERS",
                "b=signal,c=sig%20nal",
            ),
        ];
        let c = with_env(&env, &OtlpArgs::default()).unwrap();
        // Generic endpoint is a base: the signal path is appended.
        assert_eq!(c.endpoint, "http://generic:4318/v1development/profiles");
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.compression, Compression::None);
        assert_eq!(
            c.headers,
            vec![
                ("a".to_owned(), "generic".to_owned()),
                ("b".to_owned(), "signal".to_owned()),
                ("c".to_owned(), "sig nal".to_owned()),
            ]
        );
        // The signal-specific endpoint is used as given.
        let mut env2 = env.to_vec();
        env2.push((
            "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
            "https://sig:443/custom",
        ));
        assert_eq!(
            with_env(&env2, &OtlpArgs::default()).unwrap().endpoint,
            "https://sig:443/custom"
        );
        // Flags win over everything.
        let flags = OtlpArgs {
            otlp_endpoint: Some("http://flag:4040".into()),
            otlp_protocol: Some(Protocol::Grpc),
            otlp_header: vec!["B=flag".into()],
            otlp_timeout: Some(Duration::from_millis(500)),
            otlp_compression: Some(Compression::Gzip),
            otlp_ca: None,
        };
        let c = with_env(&env2, &flags).unwrap();
        assert_eq!(c.endpoint, "http://flag:4040");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.compression, Compression::Gzip);
        assert!(c.headers.contains(&("b".to_owned(), "flag".to_owned())));
    }

    #[test]
    fn malformed_values_are_rejected_with_their_source() {
        let bad =
            |vars: &[(&str, &str)], args: OtlpArgs| with_env(vars, &args).unwrap_err().to_string();
        let e = bad(
            &[],
            OtlpArgs {
                otlp_endpoint: Some("localhost:4317".into()),
                ..Default::default()
            },
        );
        assert!(
            e.contains("--otlp-endpoint") && e.contains("http://"),
            "{e}"
        );
        let e = bad(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")],
            OtlpArgs::default(),
        );
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let e = bad(
            &[],
            OtlpArgs {
                otlp_header: vec!["novalue".into()],
                ..Default::default()
            },
        );
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = bad(
            &[],
            OtlpArgs {
                otlp_header: vec!["authorization=Bearer s3\u{1}cret".into()],
                ..Default::default()
            },
        );
        assert!(!e.contains("s3cret"), "secrets must not be echoed: {e}");
        let e = bad(
            &[("OTEL_EXPORTER_OTLP_HEADERS", "token")],
            OtlpArgs::default(),
        );
        assert!(e.contains("key=value"), "{e}");
        let e = bad(
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
            OtlpArgs::default(),
        );
        assert!(e.contains("milliseconds"), "{e}");
        let e = bad(
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            OtlpArgs::default(),
        );
        assert!(e.contains("not supported"), "{e}");
        let e = bad(
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent.pem")],
            OtlpArgs::default(),
        );
        assert!(e.contains("PEM"), "{e}");
        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "not a certificate").unwrap();
        let e = bad(
            &[],
            OtlpArgs {
                otlp_ca: Some(not_pem.path().to_path_buf()),
                ..Default::default()
            },
        );
        assert!(e.contains("--otlp-ca") && e.contains("certificate"), "{e}");
    }

    #[test]
    fn attribute_keys_pyroscope_would_reject_are_renamed() {
        let c = with_env(
            &[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "team-name=a,k8s/ns=b,deployment.environment=c",
            )],
            &OtlpArgs::default(),
        )
        .unwrap();
        let keys: Vec<&str> = c
            .resource_attributes
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["team_name", "k8s_ns", "deployment.environment"]);
        assert_eq!(c.renamed_attributes.len(), 2);
        assert_eq!(label_key("a.b_c9"), "a.b_c9");
    }

    #[test]
    fn resource_attributes_are_percent_decoded() {
        let c = with_env(
            &[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=a%2Cb",
            )],
            &OtlpArgs::default(),
        )
        .unwrap();
        assert_eq!(
            c.resource_attributes,
            vec![
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "a,b".to_owned()),
            ]
        );
    }

    #[test]
    fn credentials_in_the_endpoint_never_show() {
        assert_eq!(
            redact_url("https://user:pa55@collector:4318/v1"),
            "https://***@collector:4318/v1"
        );
        assert_eq!(redact_url("http://collector:4317"), "http://collector:4317");
        assert_eq!(redact_url("http://host/a@b"), "http://host/a@b");
        let c = with_env(
            &[],
            &OtlpArgs {
                otlp_endpoint: Some("http://u:pa55@collector:4317".into()),
                ..OtlpArgs::default()
            },
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("pa55"));
        let e = with_env(
            &[],
            &OtlpArgs {
                otlp_endpoint: Some("ftp://u:pa55@collector".into()),
                ..OtlpArgs::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("pa55"), "{e}");
    }

    #[test]
    fn debug_output_hides_header_values() {
        let c = with_env(
            &[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Basic%20c2VjcmV0",
            )],
            &OtlpArgs::default(),
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(
            text.contains("authorization=***") && !text.contains("c2VjcmV0"),
            "{text}"
        );
    }
}
