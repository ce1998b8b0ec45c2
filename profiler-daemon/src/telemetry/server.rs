//! The built-in HTTP server: `/metrics` (Prometheus text), `/healthz` (alive, with how exports
//! are going) and `/readyz` (the sampler is attached).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

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
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!("the HTTP server stopped: {err}");
        }
    });
    tracing::info!(address = %local, "serving /metrics, /healthz, /readyz");
    Ok(local)
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
