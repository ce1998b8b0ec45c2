//! The configuration file (`profiler run --config FILE`, TOML): one key per flag of `run`, named
//! like the flag without its dashes (`otlp-endpoint = "..."`). Precedence: flags, then
//! environment variables, then this file, then defaults. Unknown keys and bad values are errors
//! that name the file, the key and what is expected. `deploy/profiler.toml` lists every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Every key of the file; all optional (a missing key falls through to the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub interval: Option<String>,
    pub frequency: Option<u32>,
    pub pid: Option<Vec<u32>>,
    pub cgroup: Option<Vec<PathBuf>>,
    pub unit: Option<Vec<String>>,
    pub container: Option<Vec<String>>,
    /// `[[service-name]]` tables (see `rules`).
    pub service_name: Option<Vec<super::rules::ServiceRule>>,
    pub include_idle: Option<bool>,
    pub export_queue_size: Option<usize>,
    pub shutdown_timeout: Option<String>,
    pub labels: Option<Vec<super::otlp::ExtraLabel>>,
    pub max_profile_bytes: Option<usize>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<super::otlp::Protocol>,
    pub otlp_header: Option<Vec<String>>,
    pub otlp_ca: Option<PathBuf>,
    pub otlp_compression: Option<super::otlp::Compression>,
    pub otlp_timeout: Option<String>,
    pub ring_buffer_size: Option<u32>,
    pub max_stacks: Option<usize>,
    pub symbol_cache_entries: Option<usize>,
    pub open_modules: Option<usize>,
    pub debug_info_memory: Option<u64>,
    pub profile_self: Option<bool>,
    pub debug_dir: Option<Vec<PathBuf>>,
    pub unwind: Option<super::UnwindMode>,
    pub unwind_table_memory: Option<u64>,
    pub http_address: Option<String>,
    pub ui_address: Option<String>,
    pub ui_max_stacks: Option<usize>,
    pub log_level: Option<String>,
    pub log_format: Option<super::LogFormat>,
    pub kubernetes: Option<bool>,
    pub namespace: Option<Vec<String>>,
    pub selector: Option<String>,
}

impl FileConfig {
    /// Reads and parses `path`. A missing file is an error: it was named explicitly.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses file text; errors name `path`, the line and the key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let mut message = e.message().replace('\n', " ");
            if let Some(span) = e.span() {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("");
                let key = line.split('=').next().unwrap_or("").trim();
                message = if key.is_empty() || !line.contains('=') {
                    format!("line {line_no}: {message}")
                } else {
                    format!("line {line_no}, key `{key}`: {message}")
                };
            }
            ConfigError::File {
                path: path.to_path_buf(),
                message,
            }
        })
    }
}

/// A duration value of the file, with an error naming the file and key.
pub fn duration(path: &Path, key: &str, value: &str) -> Result<Duration, ConfigError> {
    super::args::parse_duration(value).map_err(|why| ConfigError::File {
        path: path.to_path_buf(),
        message: format!("key `{key}`: {why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(text, Path::new("/etc/profiler.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_every_key_of_the_shipped_example() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiler.toml"),
        )
        .unwrap();
        let c = parse(&example).unwrap();
        assert_eq!(c.frequency, Some(19));
        assert_eq!(c.interval.as_deref(), Some("10s"));
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://localhost:4317"));
        assert!(c.http_address.is_some() && c.log_format.is_some());
        // Every key of the struct appears in the example (uncommented), so the example is
        // complete: the top-level keys, then one `[[service-name]]` table.
        let (top, tables) = example.split_once("[[service-name]]").unwrap();
        let keys: Vec<&str> = top
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .filter(|k| !k.starts_with('#'))
            .collect();
        assert_eq!(keys.len(), 34, "{keys:?}");
        assert!(!tables.contains("[[") && tables.contains("name = "));
        assert_eq!(c.service_name.as_ref().map(Vec::len), Some(1));
        assert_eq!(c.unit, Some(Vec::new()));
        assert_eq!(c.unwind, Some(super::super::UnwindMode::Auto));
        assert_eq!(c.unwind_table_memory, Some(64 << 20));
        assert_eq!(c.debug_info_memory, Some(8 << 20));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_line_and_key() {
        let e = parse("frequency = 99\nfrequncy = 5\n").unwrap_err();
        assert!(
            e.contains("/etc/profiler.toml") && e.contains("line 2") && e.contains("frequncy"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let e = parse("frequency = \"fast\"\n").unwrap_err();
        assert!(e.contains("key `frequency`") && e.contains("u32"), "{e}");
        let e = duration(Path::new("/etc/profiler.toml"), "interval", "soon")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/profiler.toml") && e.contains("interval") && e.contains("10s"),
            "{e}"
        );
        let e = FileConfig::load(Path::new("/nonexistent/profiler.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/profiler.toml") && e.contains("cannot read"),
            "{e}"
        );
    }
}
