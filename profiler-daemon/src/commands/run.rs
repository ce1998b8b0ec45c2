//! `profiler run`: the long-running daemon. The pipeline (sampler, collector, symbolizer) runs on
//! the calling thread, since blazesym's symbolizer is `!Send`; every interval it closes the window,
//! encodes OTLP requests into the bounded queue, and a tokio task sends them. The HTTP server
//! (metrics, health) runs on the same small runtime.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::bpf::unwind::UnwindConfig;
use crate::bpf::{BpfError, Design};
use crate::config::otlp::ExtraLabel;
use crate::config::{ConfigError, RunConfig};
use crate::counters::{Count, Role, Totals};
use crate::export::otlp::{
    EncodeOptions, ExportStats, Labels, Observers, RequestQueue, Transport, TransportError, encode,
    send_loop,
};
use crate::kubernetes::PodIndex;
use crate::live::{History, LiveServerError, LiveState, Window};
use crate::pipeline::{Collector, Driver, Ending, ReselectError};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::{Gauges, Metrics};
use crate::telemetry::server::{self, ServerError, ServerState};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Live(#[from] LiveServerError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the daemon did, printed at exit.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub totals: Totals,
    /// Samples in the exported windows.
    pub samples: u64,
    pub flushed: bool,
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        write!(
            f,
            "{} windows, {} samples; exported {} requests, {} failed attempts, {} dropped; {}{}",
            t.get(Count::Windows),
            self.samples,
            t.get(Count::ExportSent),
            t.get(Count::ExportFailedAttempt),
            t.get(Count::ExportDropped),
            t.describe_losses(),
            if self.flushed {
                ""
            } else {
                "; shutdown timed out before everything was sent"
            },
        )
    }
}

/// What the pipeline thread shares with the sender and the HTTP server.
struct Shared {
    queue: Arc<RequestQueue>,
    stats: Arc<ExportStats>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// This node's pods (`--kubernetes`).
    kubernetes: Option<Arc<PodIndex>>,
    /// The live page's windows (`--ui-address`).
    live: Option<Arc<Mutex<History>>>,
}

/// How the daemon reloads its configuration: `load` reads it again (flags, environment, file)
/// whenever `flag` is set (by SIGHUP).
pub struct Reload<'a> {
    pub flag: &'a AtomicBool,
    pub load: &'a dyn Fn() -> Result<RunConfig, ConfigError>,
}

/// Runs until `stop` is set; then exports the open window and waits (bounded) for delivery.
pub fn run(
    config: &RunConfig,
    stop: &AtomicBool,
    reload: Option<&Reload<'_>>,
) -> Result<RunSummary, RunError> {
    super::check::warn_missing_capabilities();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("profiler-io")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let shared = Shared {
        queue: Arc::new(RequestQueue::new(config.export_queue_size)),
        stats: Arc::new(ExportStats::default()),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
        kubernetes: config
            .kubernetes_node
            .as_deref()
            .map(|node| Arc::new(PodIndex::new(node))),
        live: config
            .ui_address
            .map(|_| Arc::new(Mutex::new(History::new(config.ui_max_stacks)))),
    };
    if let Some(index) = &shared.kubernetes {
        tracing::info!(
            node = index.node(),
            "watching this node's pods on the Kubernetes API"
        );
        runtime.spawn(crate::kubernetes::watch(Arc::clone(index)));
    }
    let transport = {
        let _guard = runtime.enter();
        Transport::new(&config.otlp)?
    };
    if let Some(addr) = config.http_address {
        let state = Arc::new(ServerState {
            metrics: Arc::clone(&shared.metrics),
            health: Arc::clone(&shared.health),
        });
        runtime.block_on(server::start(addr, state))?;
    }
    if let (Some(addr), Some(history)) = (config.ui_address, &shared.live) {
        let state = Arc::new(LiveState {
            history: Arc::clone(history),
            interval: config.interval,
            frequency: config.sampler.frequency,
        });
        runtime.block_on(crate::live::server::start(addr, state))?;
    }
    let sender = runtime.spawn(send_loop(
        transport,
        Arc::clone(&shared.queue),
        Observers {
            stats: Arc::clone(&shared.stats),
            metrics: Arc::clone(&shared.metrics),
            health: Arc::clone(&shared.health),
        },
        max_backoff(config.interval),
    ));
    for (given, sent) in &config.otlp.renamed_attributes {
        tracing::warn!(
            "OTEL_RESOURCE_ATTRIBUTES key `{given}` is sent as `{sent}`: Pyroscope rejects label \
             names with other characters than letters, digits, `_` and `.`"
        );
    }
    tracing::info!(
        endpoint = %config.otlp.endpoint_for_logs(),
        protocol = ?config.otlp.protocol,
        interval = %humantime::format_duration(config.interval),
        frequency = config.sampler.frequency,
        "profiler running"
    );

    let pipeline = Pipeline::new(config, &shared).run(stop, reload);
    shared.health.set_attached(false);
    // Whatever happened, let the sender finish what it has (bounded), then report.
    shared.queue.close();
    let flushed = runtime
        .block_on(async { tokio::time::timeout(config.shutdown_timeout, sender).await })
        .is_ok();
    if !flushed {
        let left = shared.queue.len() as u64 + 1;
        shared.stats.dropped(left);
        tracing::warn!("shutdown timeout reached: {left} requests not delivered");
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    let (mut totals, samples) = pipeline?;
    shared.stats.totals(&mut totals);
    Ok(RunSummary {
        totals,
        samples,
        flushed,
    })
}

/// The daemon's pipeline thread: samples, and every interval turns the window into requests.
struct Pipeline<'a> {
    config: &'a RunConfig,
    shared: &'a Shared,
    collector: Collector,
    options: EncodeOptions,
    windows: u64,
    samples: u64,
    /// Totals at the last loss log.
    logged: Totals,
    /// A window was closed early, as full (logged once at info).
    closed_early: bool,
}

impl<'a> Pipeline<'a> {
    fn new(config: &'a RunConfig, shared: &'a Shared) -> Self {
        Self {
            config,
            shared,
            collector: {
                let mut collector = Collector::new(&config.limits, config.sampler.frequency);
                collector.close_windows_when_full();
                collector
            },
            options: EncodeOptions {
                host_name: config.host_name.clone(),
                resource_attributes: config.otlp.resource_attributes.clone(),
                include_idle: config.sampler.include_idle,
                labels: labels(&config.labels),
                max_profile_bytes: config.max_profile_bytes,
                service_rules: config.service_rules.clone(),
                kubernetes: shared.kubernetes.clone(),
            },
            windows: 0,
            samples: 0,
            logged: Totals::default(),
            closed_early: false,
        }
    }

    /// Runs until `stop`; returns the final totals and the samples exported.
    fn run(
        mut self,
        stop: &AtomicBool,
        reload: Option<&Reload<'_>>,
    ) -> Result<(Totals, u64), BpfError> {
        let mut driver = Driver::start_unwinding(
            &self.config.sampler,
            Design::RingBuf,
            &UnwindConfig::of(&self.config.limits),
            stop,
        )?;
        if let Some(reload) = reload {
            driver.reload_on(reload.flag);
        }
        if let (Some(index), Some(selector)) = (&self.shared.kubernetes, &self.config.pod_selector)
        {
            driver.select_pods(Arc::clone(index), selector.clone());
        }
        if let Some(maps) = driver.take_unwind_maps() {
            self.collector.set_unwind_maps(maps);
        }
        self.shared.health.set_attached(true);
        let mut wall_start = SystemTime::now();
        let mut start = Instant::now();
        // Metrics are published at most once a second, not on each drain (ten a second): a
        // scrape every few seconds sees the same, and at the default 19 Hz publishing was most
        // of the daemon's own CPU.
        let mut published = Instant::now();
        loop {
            let ending = driver.run_until(
                start + self.config.interval,
                &mut self.collector,
                |driver, collector| {
                    if published.elapsed() >= PUBLISH_INTERVAL {
                        published = Instant::now();
                        publish(self.shared, self.config, driver, collector, self.windows);
                    }
                },
            )?;
            match ending {
                Ending::Reload => {
                    if let Some(reload) = reload {
                        self.reload(&mut driver, reload);
                    }
                }
                Ending::Stopped => {
                    driver.take_peak_fill();
                    // Take what is still in the ring buffer into this last window.
                    let kernel = driver.finish(&mut self.collector)?;
                    let totals = self.close_window(wall_start, start.elapsed(), kernel);
                    return Ok((totals, self.samples));
                }
                Ending::Deadline | Ending::Full => {
                    if ending == Ending::Full && !self.closed_early {
                        self.closed_early = true;
                        tracing::info!(
                            max_stacks = self.config.limits.max_stacks,
                            "a window closed before its interval: its stack table was 7/8 full \
                             (--max-stacks); windows this busy are exported as they fill (further \
                             ones are logged at debug level)"
                        );
                    } else if ending == Ending::Full {
                        tracing::debug!("a window closed early: its stack table was 7/8 full");
                    }
                    driver.take_peak_fill();
                    let mut kernel = Totals::default();
                    driver.sampler().read_counters(&mut kernel)?;
                    self.close_window(wall_start, start.elapsed(), kernel);
                    // The window's counts are visible at once, whatever the cadence.
                    publish(
                        self.shared,
                        self.config,
                        &driver,
                        &self.collector,
                        self.windows,
                    );
                    published = Instant::now();
                    wall_start = SystemTime::now();
                    start = Instant::now();
                }
            }
        }
    }

    /// Reads the configuration again and applies what can change while running: the filters
    /// and the service-name rules. The open window goes on; a bad file changes nothing.
    fn reload(&mut self, driver: &mut Driver<'_>, reload: &Reload<'_>) {
        let fresh = match (reload.load)() {
            Ok(fresh) => fresh,
            Err(err) => {
                tracing::error!("configuration not reloaded, the running one stays: {err}");
                return;
            }
        };
        match driver.reselect(&fresh.sampler) {
            Ok(()) => {
                if let (Some(index), Some(selector)) = (&self.shared.kubernetes, fresh.pod_selector)
                {
                    driver.select_pods(Arc::clone(index), selector);
                }
            }
            Err(err @ ReselectError::Restart) => {
                tracing::warn!("filters not reloaded: {err}");
            }
            Err(err) => tracing::error!("filters not reloaded: {err}"),
        }
        self.options.service_rules = fresh.service_rules;
        tracing::info!(
            pids = fresh.sampler.pids.len(),
            cgroup_targets = fresh.sampler.cgroups.len(),
            "configuration reloaded (filters and service-name rules; other settings apply at \
             restart)"
        );
    }

    /// Names and encodes the window, queues its requests, logs its losses; returns the totals.
    fn close_window(
        &mut self,
        start: SystemTime,
        duration: Duration,
        mut totals: Totals,
    ) -> Totals {
        let profile = self.collector.finish_window(start, duration);
        self.collector.prune_exited();
        self.windows += 1;
        self.samples += profile.samples();
        let requests = encode(&profile, &self.options);
        if let Some(history) = &self.shared.live {
            // Built before the lock: the page's requests wait only for the push.
            let window = Window::of(&profile, &self.options, SystemTime::now());
            history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(window);
        }
        tracing::debug!(
            samples = profile.samples(),
            stacks = profile.stacks.len(),
            requests = requests.len(),
            "window closed"
        );
        for request in requests {
            if self.shared.queue.push(request) {
                self.shared.stats.dropped(1);
            }
        }
        self.collector.totals(&mut totals);
        totals.set(Count::Windows, self.windows);
        log_losses(&totals, &self.logged);
        self.logged = totals;
        totals
    }
}

/// How often the metrics are brought up to date while sampling.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait between export retries: half an interval (so that delivery resumes within
/// about one interval of the collector's return), between 1 and 5 s.
fn max_backoff(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The encoder's labels from the configured list.
fn labels(extra: &[ExtraLabel]) -> Labels {
    let has = |l| extra.contains(&l);
    Labels {
        pid: has(ExtraLabel::Pid),
        thread_id: has(ExtraLabel::ThreadId),
        thread_name: has(ExtraLabel::ThreadName),
        exe_path: has(ExtraLabel::ExePath),
    }
}

/// Logs the samples lost and the stack walks failed since the last window (also in /metrics).
fn log_losses(now: &Totals, before: &Totals) {
    let lost = now.sum(Role::SampleLoss) + now.sum(Role::EventLoss);
    if lost > before.sum(Role::SampleLoss) + before.sum(Role::EventLoss) {
        tracing::warn!("losses in this window (totals: {})", now.describe_losses());
    }
    let walks = now.sum(Role::WalkFailed);
    if walks > before.sum(Role::WalkFailed) {
        tracing::info!(
            "{} stack walks failed in this window (samples kept without that part)",
            walks - before.sum(Role::WalkFailed)
        );
    }
}

/// Publishes the current totals and sizes to the metrics.
fn publish(
    shared: &Shared,
    config: &RunConfig,
    driver: &Driver<'_>,
    collector: &Collector,
    windows: u64,
) {
    let mut totals = Totals::default();
    if let Err(err) = driver.sampler().read_counters(&mut totals) {
        tracing::debug!("reading the kernel counters failed: {err}");
        return;
    }
    collector.totals(&mut totals);
    shared.stats.totals(&mut totals);
    if let Some(index) = &shared.kubernetes {
        index.totals(&mut totals);
    }
    totals.set(Count::Windows, windows);
    shared.metrics.update(&totals);
    let held = collector.held();
    shared.metrics.set_gauges(&Gauges {
        processes: held.processes,
        user_names: held.user_names,
        kernel_names: held.kernel_names,
        open_modules: held.open_modules,
        stacks: held.stacks,
        ring_fill_ratio: driver.peak_fill(),
        pid_filter_entries: config.sampler.pids.len(),
        queue_depth: shared.queue.len(),
    });
}
