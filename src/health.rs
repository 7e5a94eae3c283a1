//! The admin HTTP listener: `/livez` (the process answers), `/readyz` (the readiness latch:
//! queue open and every listener bound) and `/metrics` (Prometheus text). No patient data is
//! reachable here, so these stay open; mutating endpoints come with roles later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// A latch that flips once from "not ready" to "ready" and never back.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Sets the latch.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    /// Whether it is set.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the health routes plus `extra` (the operator API) until shutdown.
pub async fn run(
    listener: TcpListener,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    extra: Router,
    mut shutdown: Shutdown,
) {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { ready, metrics })
        .merge(extra);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
