//! Command-line interface: the subcommands, parsed by clap. Their flags are declared with the
//! configuration they turn into (`config::args`); `command()` adds what clap cannot derive: the
//! environment variables each flag falls back to, and the examples.

use clap::{CommandFactory as _, Parser, Subcommand};

#[cfg(feature = "bench")]
use crate::commands::bench::{BenchSymbolizeArgs, BenchTablesArgs, BpfCostArgs};
#[cfg(feature = "bench")]
use crate::commands::bench_live::BenchLiveArgs;
#[cfg(feature = "bench")]
use crate::commands::bench_scale::BenchScaleArgs;
use crate::config::args::{CheckArgs, RecordArgs, RunArgs};

/// Help is wrapped at 80 columns at most (narrower terminals wrap narrower).
const MAX_WIDTH: usize = 80;

const EXAMPLES: &str = "\
Examples:
  Where does this machine's CPU time go? (writes flamegraph.svg)
    sudo profiler record
  One process for 30 seconds, as pprof:
    sudo profiler record --pid 1234 -d 30s -o cpu.pb.gz
  Continuous profiling into Pyroscope or an OpenTelemetry Collector:
    sudo profiler run --otlp-endpoint http://collector:4317
  Can this host run it, and can it reach the collector?
    sudo profiler check --otlp-endpoint http://collector:4317

`profiler COMMAND --help` tells more about each command.";

const RECORD_EXAMPLES: &str = "\
Examples:
  The whole machine for 10 seconds, into flamegraph.svg (open it in a browser):
    sudo profiler record
  One process, at 999 Hz, until Ctrl-C (the file is still written):
    sudo profiler record --pid 1234 -F 999 -d 1h -o app.svg
  A systemd unit, as folded stacks (for inferno, speedscope or a diff):
    sudo profiler record --unit nginx -o nginx.folded
  A container, as pprof (`go tool pprof -http=: cpu.pb.gz`):
    sudo profiler record --container 3f2a9c1b7d4e -o cpu.pb.gz";

const RUN_EXAMPLES: &str = "\
Examples:
  Every process, exported to a local OpenTelemetry Collector (gRPC, port 4317):
    sudo profiler run
  To Grafana Pyroscope's OTLP receiver over HTTP:
    sudo profiler run --otlp-protocol http/protobuf \\
      --otlp-endpoint http://pyroscope:4040
  With metrics and health checks on port 9464, settings from a file:
    sudo profiler run --config /etc/profiler/profiler.toml \\
      --http-address 127.0.0.1:9464

Settings: flags win over environment variables, which win over the --config
file, which wins over the defaults. The OTEL_EXPORTER_OTLP_* variables of the
OpenTelemetry specification are read (each flag above names its own);
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES of a profiled process name its
service. SIGHUP reloads the flags, environment and file.";

const CHECK_EXAMPLES: &str = "\
Examples:
  sudo profiler check
  sudo profiler check --otlp-endpoint https://collector.example:4317

Exit status: 0 when this host can run the profiler, 1 when it cannot (the FAIL
lines say why).";

/// System-wide sampling CPU profiler (eBPF).
///
/// Samples the stacks of every CPU (or of the processes, units, containers or pods you pick)
/// in the kernel, names their frames on this host, and writes a flamegraph (`record`) or
/// exports OpenTelemetry profiles to a collector (`run`).
#[derive(Debug, Parser)]
#[command(
    name = "profiler",
    version,
    about,
    long_about,
    propagate_version = true,
    max_term_width = MAX_WIDTH,
    after_help = "Examples: `sudo profiler record` writes flamegraph.svg; --help shows more.",
    after_long_help = EXAMPLES
)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a `RUST_LOG` directive).
    /// `RUST_LOG` is used when this is not given.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start: the size difference between variants does not matter"
)]
pub enum Command {
    /// Profile every CPU (or the selected processes) for a while and write one file.
    #[command(after_long_help = RECORD_EXAMPLES)]
    Record(RecordArgs),
    /// Run as a daemon: sample continuously and export OTLP profiles every interval.
    #[command(after_long_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Diagnose this host: kernel, BTF, perf events, capabilities, the sampler, the collector.
    #[command(after_long_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Measure the BPF time per sample of a sampler design (used by `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BpfCost(BpfCostArgs),
    /// Measure symbolization throughput on a binary (used by `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchSymbolize(BenchSymbolizeArgs),
    /// Measure unwind table size and build time (used by `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchTables(BenchTablesArgs),
    /// Serve the live page over synthetic stacks (used by `cargo xtask bench live`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchLive(BenchLiveArgs),
    /// Time the collector, naming and encoding over many processes and stacks (used by
    /// `cargo xtask bench scale`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchScale(BenchScaleArgs),
}

/// The full command: the derived one, with each flag's environment variables added to its help
/// from the table the configuration resolves them by (`config::layers::SETTINGS`), so the two
/// cannot disagree.
#[must_use]
pub fn command() -> clap::Command {
    let mut variables: Vec<(String, Vec<String>)> = crate::config::layers::SETTINGS
        .iter()
        .filter(|s| !s.env.is_empty())
        .map(|s| {
            let names = s.env.iter().map(|&n| n.to_owned()).collect();
            (s.key.replace('-', "_"), names)
        })
        .collect();
    variables.push(("kubernetes".to_owned(), vec!["NODE_NAME".to_owned()]));
    let mut cmd = Cli::command();
    for sub in ["run", "check"] {
        cmd = cmd.mut_subcommand(sub, |mut c| {
            for (id, names) in &variables {
                if c.get_arguments().any(|a| a.get_id() == id.as_str()) {
                    c = c.mut_arg(id.as_str(), |a| with_variables(a, names));
                }
            }
            c
        });
    }
    cmd
}

/// `arg` with `[env: NAMES]` after its help, as clap shows variables it reads itself.
fn with_variables(arg: clap::Arg, names: &[String]) -> clap::Arg {
    let note = format!("[env: {}]", names.join(", "));
    let short = arg
        .get_help()
        .map_or_else(|| note.clone(), |h| format!("{h} {note}"));
    let long = arg.get_long_help().map(|h| format!("{h}\n\n{note}"));
    let arg = arg.help(short);
    match long {
        Some(long) => arg.long_help(long),
        None => arg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let err = command()
            .try_get_matches_from(args)
            .expect_err("help is an early exit");
        err.render().to_string()
    }

    #[test]
    fn the_command_is_consistent_and_every_otlp_flag_names_its_variables() {
        command().debug_assert();
        let text = help(&["profiler", "run", "--help"]);
        for setting in crate::config::layers::SETTINGS {
            for name in setting.env {
                assert!(text.contains(name), "{name} missing from run --help");
            }
        }
        assert!(text.contains("NODE_NAME"));
        assert!(help(&["profiler", "check", "--help"]).contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
    }

    #[test]
    fn help_fits_80_columns_and_long_help_has_examples() {
        for args in [
            &["profiler", "--help"][..],
            &["profiler", "-h"],
            &["profiler", "record", "--help"],
            &["profiler", "record", "-h"],
            &["profiler", "run", "--help"],
            &["profiler", "run", "-h"],
            &["profiler", "check", "--help"],
        ] {
            let text = help(args);
            for line in text.lines() {
                assert!(line.chars().count() <= MAX_WIDTH, "{args:?}: {line}");
            }
            if args.contains(&"--help") {
                assert!(text.contains("Examples:"), "{args:?}");
            }
        }
        let record = help(&["profiler", "record", "--help"]);
        for ext in [".svg", ".folded", ".pb.gz", "flamegraph.svg"] {
            assert!(record.contains(ext), "{ext} missing from record --help");
        }
        let short = help(&["profiler", "record", "-h"]);
        assert!(short.len() < record.len() && !short.contains("Examples:"));
    }
}

#[cfg(test)]
mod settings_tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::command;
    use crate::config::file::FileConfig;

    /// The file's keys, as serde lists them when it meets an unknown one.
    fn file_keys() -> BTreeSet<String> {
        let err = FileConfig::parse("no-such-key = 1\n", Path::new("x.toml"))
            .expect_err("an unknown key is refused")
            .to_string();
        err.split_once("expected one of")
            .expect("serde lists the keys")
            .1
            .split(',')
            .map(|k| k.trim().trim_matches('`').to_owned())
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Each flag of `run` is a key of the file and of the shipped `deploy/profiler.toml`, with
    /// the same default; the file has no key that is not a flag (but the rules' tables).
    #[test]
    fn run_flags_file_keys_and_the_shipped_file_agree() {
        let cmd = command();
        let run = cmd.find_subcommand("run").expect("run");
        // `--log-level` is global: declared on the top command, taken by every subcommand.
        let flags: BTreeSet<String> = run
            .get_arguments()
            .chain(cmd.get_arguments().filter(|a| a.is_global_set()))
            .filter_map(clap::Arg::get_long)
            .filter(|l| !["config", "help", "version"].contains(l))
            .map(str::to_owned)
            .collect();
        let mut keys = file_keys();
        assert!(keys.remove("service-name"), "{keys:?}");
        assert_eq!(flags, keys, "flags of run vs keys of the file");
        let declared: BTreeSet<String> = crate::config::layers::SETTINGS
            .iter()
            .map(|s| s.key.to_owned())
            .collect();
        assert_eq!(
            flags, declared,
            "flags of run vs the settings the resolver declares"
        );

        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiler.toml"),
        )
        .expect("deploy/profiler.toml");
        let top = shipped.split("[[service-name]]").next().unwrap_or_default();
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long().filter(|l| keys.contains(*l)) else {
                continue;
            };
            let value = top
                .lines()
                .find_map(|l| {
                    l.strip_prefix(long)
                        .and_then(|rest| rest.trim_start().strip_prefix('='))
                })
                .unwrap_or_else(|| panic!("`{long}` missing from deploy/profiler.toml"));
            let value = value.split(" #").next().unwrap_or_default().trim();
            if let Some(default) = arg.get_default_values().first() {
                assert_eq!(
                    value.trim_matches('"'),
                    default.to_string_lossy(),
                    "default of `{long}`"
                );
            }
        }
    }
}

#[cfg(test)]
mod readme_tests {
    use super::command;

    /// Every flag of `record` and `run` is documented in the README (the record table, the run
    /// sections), so a new flag cannot ship undocumented.
    #[test]
    fn every_flag_is_in_the_readme() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .expect("README.md");
        let cmd = command();
        for sub in ["record", "run", "check"] {
            let sub = cmd.find_subcommand(sub).expect("subcommand");
            for long in sub.get_arguments().filter_map(clap::Arg::get_long) {
                if ["help", "version"].contains(&long) {
                    continue;
                }
                let flag = format!("--{long}");
                let documented = readme.match_indices(&flag).any(|(at, _)| {
                    !readme[at + flag.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                });
                assert!(
                    documented,
                    "--{long} of `{}` is not in the README",
                    sub.get_name()
                );
            }
        }
    }
}
