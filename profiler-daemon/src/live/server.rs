//! The live page's own HTTP server (`--ui-address`, loopback by default): the page and its
//! script (embedded in the binary), the JSON API behind it, downloads of the current view, and
//! `/debug/pprof/profile?seconds=N`. Read-only: every route is a `GET` of data already in the
//! history; nothing leaves the host but what the client asked for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::history::{History, MAX_AGE, Window};
use super::query::Selection;
use crate::export::{pprof, svg};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// Longest `seconds` of `/debug/pprof/profile`.
pub const MAX_PROFILE_SECONDS: u64 = 300;

/// What the handlers read.
pub struct LiveState {
    pub history: Arc<Mutex<History>>,
    /// The window length (the page refreshes at this pace).
    pub interval: Duration,
    pub frequency: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the live page: {source} (set --ui-address)")]
pub struct LiveServerError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

impl LiveServerError {
    #[must_use]
    pub fn new(addr: SocketAddr, source: std::io::Error) -> Self {
        Self { addr, source }
    }
}

/// Binds now (a busy port is reported at start) and serves in the background.
pub async fn start(addr: SocketAddr, state: Arc<LiveState>) -> Result<SocketAddr, LiveServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| LiveServerError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| LiveServerError { addr, source })?;
    // A pprof of the next N seconds waits up to N seconds plus one window.
    let longest = Duration::from_secs(MAX_PROFILE_SECONDS) + state.interval * 2;
    let app = axum::Router::new()
        .route("/", axum::routing::get(page))
        .route("/page.js", axum::routing::get(script))
        .route("/page.css", axum::routing::get(style))
        .route("/api/flamegraph", axum::routing::get(flamegraph))
        .route("/api/top", axum::routing::get(top))
        .route("/api/services", axum::routing::get(services))
        .route("/download/profile.folded", axum::routing::get(folded))
        .route("/download/profile.svg", axum::routing::get(flamegraph_svg))
        .route("/download/profile.pb.gz", axum::routing::get(pprof_view))
        .route("/debug/pprof/profile", axum::routing::get(pprof_next))
        .layer(axum::middleware::map_response(secure))
        .with_state(state);
    tokio::spawn(crate::telemetry::server::serve(listener, app, longest));
    tracing::info!(address = %local, "serving the live flamegraph page");
    Ok(local)
}

/// Headers of every answer: no other origin's scripts, styles, frames or images, no sniffing,
/// no caching of live data.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// `?minutes=1|5|15&service=NAME`: the view. Minutes are clamped to 1..=15.
#[derive(Debug, Deserialize)]
struct ViewQuery {
    minutes: Option<u64>,
    service: Option<String>,
}

impl ViewQuery {
    fn windows(&self, state: &LiveState) -> Vec<Arc<Window>> {
        let minutes = self.minutes.unwrap_or(5).clamp(1, MAX_AGE.as_secs() / 60);
        let since = SystemTime::now() - Duration::from_secs(minutes * 60);
        history(state).since(since)
    }

    fn service(&self) -> Option<&str> {
        self.service.as_deref().filter(|s| !s.is_empty())
    }
}

/// The history, even if a thread panicked while holding it (its data is still whole windows).
fn history(state: &LiveState) -> std::sync::MutexGuard<'_, History> {
    state
        .history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `work` (an aggregation: tens of milliseconds over a large history) off the async
/// runtime, which the exporter shares; its JSON is the answer.
async fn blocking(work: impl FnOnce() -> serde_json::Value + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn flamegraph(State(state): State<Arc<LiveState>>, Query(q): Query<ViewQuery>) -> Response {
    blocking(move || {
        let windows = q.windows(&state);
        let selection = Selection {
            windows: &windows,
            service: q.service(),
        };
        let (tree, total) = selection.tree();
        json!({
            "total": total,
            "windows": windows.len(),
            "from_ms": unix_ms(windows.first().map(|w| w.start)),
            "to_ms": unix_ms(windows.last().map(|w| w.end)),
            "interval_ms": state.interval.as_millis() as u64,
            "tree": tree,
        })
    })
    .await
}

async fn top(State(state): State<Arc<LiveState>>, Query(q): Query<ViewQuery>) -> Response {
    blocking(move || {
        let windows = q.windows(&state);
        let selection = Selection {
            windows: &windows,
            service: q.service(),
        };
        let rows: Vec<_> = selection
            .top()
            .into_iter()
            .map(|(name, own, total)| json!({"name": name, "self": own, "total": total}))
            .collect();
        json!({ "rows": rows })
    })
    .await
}

async fn services(State(state): State<Arc<LiveState>>, Query(q): Query<ViewQuery>) -> Response {
    blocking(move || {
        let windows = q.windows(&state);
        let selection = Selection {
            windows: &windows,
            service: None,
        };
        let rows: Vec<_> = selection
            .services()
            .into_iter()
            .map(|(name, samples)| json!({"name": name, "samples": samples}))
            .collect();
        json!({ "services": rows })
    })
    .await
}

fn attachment(content_type: &'static str, name: &'static str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, name),
        ],
        body,
    )
        .into_response()
}

async fn folded(State(state): State<Arc<LiveState>>, Query(q): Query<ViewQuery>) -> Response {
    let windows = q.windows(&state);
    let lines = Selection {
        windows: &windows,
        service: q.service(),
    }
    .folded();
    attachment(
        "text/plain; charset=utf-8",
        "attachment; filename=\"profile.folded\"",
        crate::export::folded::render(&lines).into_bytes(),
    )
}

async fn flamegraph_svg(
    State(state): State<Arc<LiveState>>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let windows = q.windows(&state);
    let lines = Selection {
        windows: &windows,
        service: q.service(),
    }
    .folded();
    let title = format!(
        "profiler: {}, {} windows",
        q.service().unwrap_or("every service"),
        windows.len()
    );
    match svg::render(&lines, &title) {
        Ok(body) => attachment(
            "image/svg+xml",
            "attachment; filename=\"profile.svg\"",
            body,
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The pprof of `windows` (names only: the page's view has no addresses).
fn pprof_of(state: &LiveState, windows: &[Arc<Window>], service: Option<&str>) -> Response {
    let lines = Selection { windows, service }.folded();
    let start = windows.first().map_or(SystemTime::now(), |w| w.start);
    let end = windows.last().map_or(start, |w| w.end);
    match pprof::render_named(&lines, state.frequency, start, end) {
        Ok(body) => attachment(
            "application/octet-stream",
            "attachment; filename=\"profile.pb.gz\"",
            body,
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn pprof_view(State(state): State<Arc<LiveState>>, Query(q): Query<ViewQuery>) -> Response {
    let windows = q.windows(&state);
    pprof_of(&state, &windows, q.service())
}

#[derive(Debug, Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
}

/// `?seconds=N` (default 30, at most `MAX_PROFILE_SECONDS`): the pprof of the next N seconds,
/// as pprof clients expect. Samples are kept per window, so it holds the windows that close
/// from now until the one holding now + N: N seconds at least, one window more at most.
async fn pprof_next(
    State(state): State<Arc<LiveState>>,
    Query(q): Query<ProfileQuery>,
) -> Response {
    let seconds = q.seconds.unwrap_or(30);
    if seconds == 0 || seconds > MAX_PROFILE_SECONDS {
        return (
            StatusCode::BAD_REQUEST,
            format!("seconds must be 1..={MAX_PROFILE_SECONDS}\n"),
        )
            .into_response();
    }
    let asked = SystemTime::now();
    let until = asked + Duration::from_secs(seconds);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Then wait for the window holding `until` to close (bounded by two intervals).
    let deadline = tokio::time::Instant::now() + state.interval * 2;
    while history(&state).newest().is_none_or(|t| t < until)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let windows = history(&state).since(asked);
    pprof_of(&state, &windows, None)
}
