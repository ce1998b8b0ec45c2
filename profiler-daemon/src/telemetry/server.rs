//! The built-in HTTP server: `/metrics` (Prometheus text), `/healthz` (alive, with how exports
//! are going) and `/readyz` (the sampler is attached). It may listen on `0.0.0.0` (Kubernetes):
//! connections are bounded in number and time, so that a flood of slow clients cannot take the
//! daemon's descriptors or memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use super::health::Health;
use super::metrics::Metrics;

/// What the handlers read.
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for /metrics and health checks: {source} (set --http-address, or `off`)"
)]
pub struct ServerError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Connections served at once; beyond, new ones are closed at once. Scrapers and probes need a
/// handful: the bound keeps a flood of idle connections from taking the daemon's descriptors.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this time (slow clients hold no slot for long).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds now (so a busy port is reported at start) and serves in the background.
pub async fn start(addr: SocketAddr, state: Arc<ServerState>) -> Result<SocketAddr, ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError { addr, source })?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(state);
    tokio::spawn(serve(listener, app, CONNECTION_TIMEOUT));
    tracing::info!(address = %local, "serving /metrics, /healthz, /readyz");
    Ok(local)
}

/// Accepts connections within `MAX_CONNECTIONS`, one request each, with time limits: the
/// request head within `HEADER_TIMEOUT`, the whole connection within `longest`.
pub(crate) async fn serve(listener: tokio::net::TcpListener, app: axum::Router, longest: Duration) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors or memory for a moment: back off rather than spin.
                tracing::debug!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A connection past its time is dropped like one that ended.
            if let Ok(Err(err)) = tokio::time::timeout(longest, connection).await {
                tracing::trace!("HTTP connection ended: {err}");
            }
            drop(slot);
        });
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz(State(state): State<Arc<ServerState>>) -> String {
    format!("ok: {}\n", state.health.detail())
}

async fn readyz(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    match state.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
