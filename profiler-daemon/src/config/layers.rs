//! The one layered resolver of `profiler run`'s settings. Each setting is declared once, in
//! `SETTINGS`: its key (the flag without dashes, also the `--config` file's key) and the
//! environment variables it reads, highest precedence first. Every setting is resolved by
//! `Layers::pick`: a flag given on the command line, then the variables, then the file, then the
//! default. `--help` shows each flag's variables from this table (`cli::command`), and tests hold
//! the flags, the file's keys, `deploy/profiler.toml` and the README to it.
//!
//! (clap's own `env` reads one variable per flag and knows nothing of the file, which sits between
//! the variables and the defaults; OpenTelemetry gives most settings two variables. So clap parses
//! the flags, and this resolver layers them.)

use super::{ConfigError, Source};

/// A setting: its key and its environment variables, highest precedence first.
#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    pub env: &'static [&'static str],
}

const fn plain(key: &'static str) -> Setting {
    Setting { key, env: &[] }
}

/// Every setting of `profiler run`, in the order of `deploy/profiler.toml`.
pub const SETTINGS: &[Setting] = &[
    plain("interval"),
    plain("log-level"),
    plain("frequency"),
    plain("pid"),
    plain("cgroup"),
    plain("unit"),
    plain("container"),
    plain("include-idle"),
    plain("export-queue-size"),
    plain("labels"),
    plain("max-profile-bytes"),
    plain("shutdown-timeout"),
    plain("http-address"),
    plain("ui-address"),
    plain("ui-max-stacks"),
    plain("log-format"),
    plain("kubernetes"),
    plain("namespace"),
    plain("selector"),
    Setting {
        key: "otlp-endpoint",
        env: &[
            "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ],
    },
    Setting {
        key: "otlp-protocol",
        env: &[
            "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ],
    },
    Setting {
        key: "otlp-header",
        env: &[
            "OTEL_EXPORTER_OTLP_PROFILES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
    },
    Setting {
        key: "otlp-ca",
        env: &[
            "OTEL_EXPORTER_OTLP_PROFILES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ],
    },
    Setting {
        key: "otlp-compression",
        env: &[
            "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    },
    Setting {
        key: "otlp-timeout",
        env: &[
            "OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    },
    plain("ring-buffer-size"),
    plain("max-stacks"),
    plain("symbol-cache-entries"),
    plain("open-modules"),
    plain("debug-info-memory"),
    plain("profile-self"),
    plain("debug-dir"),
    plain("unwind"),
    plain("unwind-table-memory"),
];

/// The setting of `key` (a flag's long name, or its field name with `_`). A key missing from
/// the table has no variables (tests keep the table complete).
#[must_use]
pub fn setting(key: &str) -> &'static Setting {
    const NONE: Setting = plain("");
    SETTINGS
        .iter()
        .find(|s| s.key == key || s.key.replace('-', "_") == key)
        .unwrap_or(&NONE)
}

/// What the layers above the defaults hold: which flags were given on the command line, and the
/// environment (injectable for tests).
pub struct Layers<'a> {
    pub explicit: &'a dyn Fn(&str) -> bool,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Layers<'_> {
    /// `value` when flag `field` (its field name) was given on the command line: clap fills in
    /// defaults, which rank below the file.
    pub fn given<T: Clone>(&self, field: &str, value: &T) -> Option<T> {
        (self.explicit)(field).then(|| value.clone())
    }

    /// The first layer's value of setting `key`, and where it came from: `flag` (given on the
    /// command line), then the setting's variables (read with `parse`, which says what it
    /// expected on failure), then `file`. `None`: the default applies.
    pub fn pick<T>(
        &self,
        key: &str,
        flag: Option<T>,
        file: Option<T>,
        parse: impl Fn(&str) -> Result<T, &'static str>,
    ) -> Result<Option<(T, Source)>, ConfigError> {
        let setting = setting(key);
        if let Some(v) = flag {
            return Ok(Some((v, Source::Flag(setting.key))));
        }
        for &name in setting.env {
            if let Some(text) = (self.env)(name).filter(|v| !v.trim().is_empty()) {
                return match parse(text.trim()) {
                    Ok(v) => Ok(Some((v, Source::env(name)))),
                    Err(expected) => Err(ConfigError::Invalid {
                        origin: Source::env(name),
                        value: text,
                        expected,
                    }),
                };
            }
        }
        Ok(file.map(|v| (v, Source::File(setting.key))))
    }

    /// `pick` for a setting read from no variable, into `target` (left as clap's default when no
    /// layer sets it).
    pub fn apply<T: Clone>(
        &self,
        field: &str,
        target: &mut T,
        file: Option<&T>,
    ) -> Result<(), ConfigError> {
        let flag = self.given(field, target);
        if let Some((v, _)) = self.pick(field, flag, file.cloned(), |_| Err("no variable"))? {
            *target = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_then_variables_in_order_then_file() {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("generic".to_owned()),
            "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL" => Some("signal".to_owned()),
            _ => None,
        };
        let layers = Layers {
            explicit: &|field| field == "frequency",
            env: &env,
        };
        let parse = |v: &str| Ok(v.to_owned());
        let pick = |flag: Option<&str>, file: Option<&str>| {
            layers
                .pick(
                    "otlp-protocol",
                    flag.map(str::to_owned),
                    file.map(str::to_owned),
                    parse,
                )
                .unwrap()
        };
        assert_eq!(
            pick(Some("flag"), Some("file")),
            Some(("flag".to_owned(), Source::Flag("otlp-protocol")))
        );
        assert_eq!(
            pick(None, Some("file")),
            Some((
                "signal".to_owned(),
                Source::env("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL")
            ))
        );

        let mut frequency = 99;
        layers.apply("frequency", &mut frequency, Some(&7)).unwrap();
        assert_eq!(frequency, 99, "a given flag wins over the file");
        let mut interval = 10;
        layers.apply("interval", &mut interval, Some(&20)).unwrap();
        assert_eq!(interval, 20, "the file wins over a default");
        layers.apply("interval", &mut interval, None).unwrap();
        assert_eq!(interval, 20, "no layer: the value stays");
    }

    #[test]
    fn a_bad_variable_is_blamed_on_itself() {
        let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_TIMEOUT").then(|| "soon".to_owned());
        let layers = Layers {
            explicit: &|_| false,
            env: &env,
        };
        let err = layers
            .pick("otlp-timeout", None, Some(1_u64), |v| {
                v.parse().map_err(|_| "milliseconds")
            })
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { origin: Source::Env(ref n), .. } if n == "OTEL_EXPORTER_OTLP_TIMEOUT"),
            "{err:?}"
        );
    }
}
