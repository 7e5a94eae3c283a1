//! The admin HTTP listener: `/livez` (the process answers), `/readyz` (the readiness latch:
//! queue open and every listener bound) and `/metrics` (Prometheus text). No patient data is
//! reachable here, so these stay open; the operator API merged in (`admin`) checks bearer
//! tokens itself. With `[admin.tls]` the listener speaks TLS 1.3 only (rustls, aws-lc-rs):
//! handshakes run in their own tasks with a deadline, so a slow client never holds up
//! accepting others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

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

/// Serves the health routes plus `extra` (the operator API) until shutdown, over TLS when
/// `tls` is given.
pub async fn run(
    listener: TcpListener,
    tls: Option<crate::mllp::tls::TlsSwap>,
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
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let served = match tls {
        None => {
            axum::serve(listener, make)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
        Some(config) => {
            // `tap_io` only to get axum's `SocketAddr` connect info for any listener.
            let tls = TlsListener::start(listener, config, stop).tap_io(|_| {});
            axum::serve(tls, make)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted and handshaken TLS connections, for `axum::serve`.
struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn start(
        listener: TcpListener,
        config: crate::mllp::tls::TlsSwap,
        mut shutdown: Shutdown,
    ) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = config.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(peer = %peer, error = %e, "admin listener: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::info!(peer = %peer, "admin listener: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        TlsListener { local, rx }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (shutdown): nothing more will come; graceful shutdown
            // stops serve on its own.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
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
