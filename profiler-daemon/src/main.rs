//! `profiler`: parse the command line, run the subcommand, map errors to exit codes
//! (0 success, 1 runtime failure, 2 usage or configuration error).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches as _};
use profiler_daemon::cli::{Cli, Command};
#[cfg(feature = "bench")]
use profiler_daemon::commands::bench;
use profiler_daemon::commands::{check, record, run};
use profiler_daemon::config::args::{CheckArgs, RecordArgs, RunArgs};
use profiler_daemon::config::otlp::{OtlpArgs, resolve};
use profiler_daemon::config::{LogFormat, RecordConfig, RunConfig};
use profiler_daemon::telemetry;

fn main() -> ExitCode {
    release_large_frees_at_once();
    let parsed = profiler_daemon::cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(v) => v,
        Err(err) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            if let Err(print) = err.print() {
                eprintln!("error: {err} ({print})");
            }
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    if let Some(level) = &cli.log_level
        && let Err(err) = telemetry::validate_log_level(level)
    {
        return usage_error(&err);
    }
    let daemon = matches!(cli.command, Command::Run(_));
    if !daemon {
        telemetry::init_logging(cli.log_level.as_deref(), None, LogFormat::Text);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // SIGHUP (a closed terminal, `systemctl reload`) never kills: `record` stops and writes its
    // file as on SIGTERM; the daemon reloads its configuration and keeps going.
    let hangup = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGTERM, &stop),
        (
            signal_hook::consts::SIGHUP,
            if daemon { &hangup } else { &stop },
        ),
    ] {
        if let Err(err) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            eprintln!("error: cannot install the signal handler: {err}");
            return ExitCode::from(1);
        }
    }
    match cli.command {
        Command::Record(args) => record_cmd(&args, &stop),
        Command::Run(args) => run_cmd(&args, cli.log_level.as_deref(), &matches, &stop, &hangup),
        Command::Check(args) => check_cmd(&args),
        #[cfg(feature = "bench")]
        Command::BenchSymbolize(args) => bench_symbolize_cmd(&args),
        #[cfg(feature = "bench")]
        Command::BpfCost(args) => bpf_cost_cmd(&args, &stop),
        #[cfg(feature = "bench")]
        Command::BenchTables(args) => bench_tables_cmd(&args),
        #[cfg(feature = "bench")]
        Command::BenchLive(args) => {
            match profiler_daemon::commands::bench_live::serve(&args, &stop) {
                Ok(_) => ExitCode::SUCCESS,
                Err(err) => runtime_error(&anyhow::Error::new(err)),
            }
        }
        #[cfg(feature = "bench")]
        Command::BenchScale(args) => match profiler_daemon::commands::bench_scale::run(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(err) => runtime_error(&anyhow::Error::new(err)),
        },
    }
}

fn record_cmd(args: &RecordArgs, stop: &AtomicBool) -> ExitCode {
    let config = match RecordConfig::from_args(args) {
        Ok(c) => c,
        Err(err) => return usage_error(&err),
    };
    match record::record(&config, stop) {
        Ok(summary) => {
            println!("{summary}; wrote {}", config.output.display());
            if summary.samples == 0 {
                println!(
                    "nothing was sampled: the selected processes did not run on a CPU; {} is \
                     valid and empty",
                    config.output.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => runtime_error(&anyhow::Error::new(err)),
    }
}

fn run_cmd(
    args: &RunArgs,
    log_level: Option<&str>,
    matches: &ArgMatches,
    stop: &AtomicBool,
    hangup: &AtomicBool,
) -> ExitCode {
    let sub = matches.subcommand_matches("run");
    // Which flags were given on the command line (they win over environment and file).
    let explicit =
        |id: &str| sub.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
    let load = || RunConfig::from_args(args, &|name| std::env::var(name).ok(), &explicit);
    let config = match load() {
        Ok(c) => c,
        Err(err) => return usage_error(&err),
    };
    telemetry::init_logging(log_level, config.log_level.as_deref(), config.log_format);
    let reload = run::Reload {
        flag: hangup,
        load: &load,
    };
    match run::run(&config, stop, Some(&reload)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => runtime_error(&anyhow::Error::new(err)),
    }
}

fn check_cmd(args: &CheckArgs) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let configured = args.otlp.otlp_endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT").is_some();
    let otlp = match resolve(&args.otlp, &OtlpArgs::default(), &env) {
        Ok(c) => c,
        Err(err) => return usage_error(&err),
    };
    let checks = check::run(configured.then_some(&otlp));
    for c in &checks {
        println!("{c}");
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == check::Status::Fail)
        .map(|c| c.detail.as_str())
        .collect();
    if failed.is_empty() {
        println!("this host can run the profiler");
        ExitCode::SUCCESS
    } else {
        println!("this host cannot run the profiler: {}", failed.join("; "));
        ExitCode::from(1)
    }
}

#[cfg(feature = "bench")]
fn bench_symbolize_cmd(args: &bench::BenchSymbolizeArgs) -> ExitCode {
    match bench::symbolize(&args.binary, args.addresses) {
        Ok(b) => {
            let rate = bench::SymbolizeBench::per_second;
            println!(
                "binary={} addresses={} cold_ms={:.1} cold_per_s={:.0} warm_ms={:.2} warm_per_s={:.0}",
                args.binary.display(),
                b.addresses,
                b.cold.as_secs_f64() * 1e3,
                rate(b.addresses, b.cold),
                b.warm.as_secs_f64() * 1e3,
                rate(b.addresses, b.warm),
            );
            ExitCode::SUCCESS
        }
        Err(err) => runtime_error(&anyhow::Error::new(err)),
    }
}

#[cfg(feature = "bench")]
fn bpf_cost_cmd(args: &bench::BpfCostArgs, stop: &AtomicBool) -> ExitCode {
    let hz = match profiler_daemon::config::validate_frequency(args.frequency) {
        Ok(hz) => hz,
        Err(err) => return usage_error(&err),
    };
    match bench::measure_unwinding(args.design, args.unwind, &args.pid, hz, args.duration, stop) {
        Ok(cost) => {
            println!(
                "design={} unwind={:?} runs={} emitted={} run_time_ns={} ns_per_sample={:.0} \
                 ns_per_emitted={:.0}",
                clap::ValueEnum::to_possible_value(&args.design)
                    .map_or_else(String::new, |v| v.get_name().to_owned()),
                args.unwind,
                cost.runs,
                cost.emitted,
                cost.run_time.as_nanos(),
                cost.ns_per_run(),
                cost.ns_per_emitted()
            );
            ExitCode::SUCCESS
        }
        Err(err) => runtime_error(&anyhow::Error::new(err)),
    }
}

/// One line per binary (`table path=.. rows=.. bytes=.. build_ms=..`), then with `--host` the
/// host's total (`host files=.. failed=.. rows=.. bytes=.. build_ms=..`).
#[cfg(feature = "bench")]
fn bench_tables_cmd(args: &bench::BenchTablesArgs) -> ExitCode {
    for path in &args.binary {
        match bench::table_cost(path) {
            Ok(cost) => println!(
                "table path={} rows={} bytes={} build_ms={:.1}",
                path.display(),
                cost.rows,
                cost.bytes,
                cost.build.as_secs_f64() * 1e3
            ),
            Err(err) => return runtime_error(&anyhow::Error::new(err)),
        }
    }
    if args.host {
        let (mut total, mut files, mut failed) = (bench::TableCost::default(), 0, 0);
        for path in bench::host_executables() {
            match bench::table_cost(&path) {
                Ok(cost) => {
                    files += 1;
                    total.rows += cost.rows;
                    total.bytes += cost.bytes;
                    total.build += cost.build;
                }
                // Files without call frame information (or gone): the walker has no table.
                Err(_) => failed += 1,
            }
        }
        println!(
            "host files={files} failed={failed} rows={} bytes={} build_ms={:.0}",
            total.rows,
            total.bytes,
            total.build.as_secs_f64() * 1e3
        );
    }
    ExitCode::SUCCESS
}

fn usage_error(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(2)
}

fn runtime_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(1)
}

/// Makes glibc serve every allocation of 256 KiB or more with its own mapping, given back to the
/// kernel when freed. By default the threshold rises (up to 32 MiB) after each such free, so the
/// transient buffers of a window or of a large unwind table (tens of MiB) land in the heap and
/// stay resident after they are freed; fixing it keeps the RSS near what is in use.
fn release_large_frees_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
