//! The ASTM driver: runs the sans-IO [`link::Receiver`] over any `AsyncRead + AsyncWrite + Unpin`
//! (tokio-serial in production, TCP for `astm-tcp`, a pseudo-terminal or a duplex pipe in tests)
//! with real timers for its `ArmTimer`/`CancelTimer` actions.
//!
//! ```text
//!  port ──read──▶ Receiver::on_bytes ──Send──▶ port (ACK/NAK for intermediate frames)
//!                                      ──Message(text)──▶ queue.push (durable commit)
//!                                          Ok  ──▶ Receiver::stored()       ──Send(ACK)──▶ port
//!                                          Err ──▶ Receiver::store_failed() ──Send(NAK)──▶ port
//!  timer expiry ──▶ Receiver::on_timeout
//! ```
//!
//! Invariants:
//! - **The final ACK follows the commit.** The receiver withholds the reply to the frame that
//!   completes a message; this driver calls `stored()` only after `queue.push` returned `Ok`, and
//!   `store_failed()` (NAK: the analyzer resends the frame) otherwise.
//! - **A full resend is not stored twice.** The envelope's control id is a SHA-256 of the
//!   message text, so an analyzer that resends a whole message after losing our final ACK hits
//!   the queue's dedup and is ACKed again without a second copy. Sender = H-5 (instrument name)
//!   when parseable.
//! - **Shutdown waits for neutral.** A transfer in progress is finished (or times out) before
//!   the session returns; the app's shutdown deadline bounds it.
//! - No patient data in logs: sizes, frame numbers, envelope ids and hashes only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::link::{self, Action, Receiver, Timer};
use super::record::{Delimiters, Record};
use super::{Config, Transport};
use crate::envelope::{Kind, Lane, Meta};
use crate::metrics::Metrics;
use crate::queue::{NewEnvelope, Queue};
use crate::shutdown::Shutdown;

/// Start-up errors of an ASTM source (session problems are logged and counted).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `listen` address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What one source's sessions share.
#[derive(Clone)]
pub struct Ctx {
    /// Configured source name.
    pub source: String,
    /// Tenant.
    pub tenant: String,
    /// Link settings.
    pub link: link::Config,
    /// The durable queue.
    pub queue: Queue,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Critical results: classified before storing, alerted right after the commit.
    pub critical: Option<Arc<crate::critical::Notifier>>,
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed (EOF).
    Closed,
    /// Reading or writing failed (port unplugged, connection reset).
    Io,
    /// Shutdown was requested and the line was neutral.
    Shutdown,
}

/// The control id of an ASTM message: `astm-` and the first 128 bits of SHA-256 of its text, in
/// hex. Stable across resends and restarts.
pub fn control_id(message: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
    let mut s = String::from("astm-");
    for b in d.as_ref().iter().take(16) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// H-5 component 1 (the instrument name), when the message starts with a parseable H record.
pub fn sender_name(message: &[u8]) -> Option<String> {
    let text = super::record::decode(message);
    let first = text.split(['\r', '\n']).next()?;
    let d = Delimiters::from_header(first).ok()?;
    let h = Record::new(1, first, d);
    let name = h.field(5).component(1).value()?;
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    (!name.is_empty()).then_some(name)
}

fn timer_index(t: Timer) -> usize {
    match t {
        Timer::Receive => 0,
        Timer::Establish => 1,
        Timer::Reply => 2,
        Timer::Backoff => 3,
    }
}

const TIMERS: [Timer; 4] = [
    Timer::Receive,
    Timer::Establish,
    Timer::Reply,
    Timer::Backoff,
];

/// Runs one E1381 receiver session over `stream` until EOF, an I/O error or shutdown (when the
/// line is neutral). `peer` labels logs (a device path or a socket address).
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ctx: &Ctx,
    peer: &str,
    shutdown: &mut Shutdown,
) -> End {
    let mut rx = Receiver::new(ctx.link.clone());
    let mut timers: [Option<Instant>; 4] = [None; 4];
    let mut buf = vec![0u8; 4096];
    let label = Metrics::source(&ctx.source);
    loop {
        let next = timers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (t, i)))
            .min();
        let neutral = rx.is_neutral();
        let actions = tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => return End::Closed,
                Ok(n) => {
                    let Some(bytes) = buf.get(..n) else { return End::Io };
                    rx.on_bytes(bytes)
                }
                Err(e) => {
                    tracing::info!(source = %ctx.source, peer, error = %e, "read failed; session ended");
                    return End::Io;
                }
            },
            _ = async {
                match next {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some((_, i)) = next else { continue };
                if let Some(slot) = timers.get_mut(i) {
                    *slot = None;
                }
                rx.on_timeout(TIMERS[i % TIMERS.len()])
            }
            _ = shutdown.cancelled(), if neutral => return End::Shutdown,
        };
        let mut pending: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Send(bytes) => {
                    if let Err(e) = write(&mut stream, &bytes).await {
                        tracing::info!(source = %ctx.source, peer, error = %e, "write failed; session ended");
                        return End::Io;
                    }
                }
                Action::Message(text) => {
                    ctx.metrics.received.get_or_create(&label).inc();
                    let follow = store(ctx, peer, text).await;
                    pending.extend(if follow {
                        rx.stored()
                    } else {
                        rx.store_failed()
                    });
                }
                Action::ArmTimer(t, d) => {
                    if let Some(slot) = timers.get_mut(timer_index(t)) {
                        *slot = Some(Instant::now() + d);
                    }
                }
                Action::CancelTimer(t) => {
                    if let Some(slot) = timers.get_mut(timer_index(t)) {
                        *slot = None;
                    }
                }
                Action::Delivered => {}
                Action::Error(e) => {
                    ctx.metrics
                        .rejected
                        .get_or_create(&Metrics::source_and(&ctx.source, "reason", "link"))
                        .inc();
                    tracing::warn!(source = %ctx.source, peer, error = %e, "astm link problem");
                }
            }
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Stores one message; true when it is durable (new or a duplicate of a stored one).
async fn store(ctx: &Ctx, peer: &str, text: Vec<u8>) -> bool {
    let control_id = control_id(&text);
    let sender = sender_name(&text).unwrap_or_default();
    let received_at_us = jiff::Timestamp::now().as_microsecond();
    let found = ctx.critical.as_ref().and_then(|n| {
        let found =
            crate::critical::classify_astm(&String::from_utf8_lossy(&text), n.rules(&ctx.tenant));
        found.is_critical().then_some((n, found))
    });
    let item = NewEnvelope {
        tenant: ctx.tenant.clone(),
        source: ctx.source.clone(),
        received_at_us,
        peer: peer.to_owned(),
        kind: Kind::Astm,
        lane: if found.is_some() {
            Lane::Critical
        } else {
            Lane::Normal
        },
        meta: Meta {
            control_id: control_id.clone(),
            message_type: "ASTM".into(),
            version: String::new(),
            sender,
        },
        payload: Bytes::from(text),
    };
    let code = |c: &str| {
        ctx.metrics
            .acks
            .get_or_create(&Metrics::source_and(&ctx.source, "code", c))
            .inc();
    };
    match ctx.queue.push(item).await {
        Ok(p) => {
            if p.duplicate {
                ctx.metrics
                    .duplicates
                    .get_or_create(&Metrics::source(&ctx.source))
                    .inc();
                tracing::info!(source = %ctx.source, peer, envelope_id = p.id, control_id = %control_id,
                    "resend of a stored message acknowledged again");
            } else {
                tracing::debug!(source = %ctx.source, peer, envelope_id = p.id, control_id = %control_id, "stored");
                if let Some((n, found)) = &found {
                    n.raise(
                        crate::critical::Stored {
                            tenant: &ctx.tenant,
                            source: &ctx.source,
                            envelope_id: p.id,
                            control_id: &control_id,
                            received_at_us,
                        },
                        found,
                    );
                }
            }
            code("ACK");
            true
        }
        Err(e) => {
            code("NAK");
            ctx.metrics
                .rejected
                .get_or_create(&Metrics::source_and(&ctx.source, "reason", "storage"))
                .inc();
            tracing::warn!(source = %ctx.source, peer, control_id = %control_id, error = %e,
                "message not stored; answering NAK so the analyzer resends");
            false
        }
    }
}

// === the source ===

/// A configured ASTM source (serial or TCP), bound and ready to run.
pub struct Source {
    ctx: Ctx,
    transport: Transport,
    tcp: Option<TcpListener>,
}

impl Source {
    /// Binds a `listen` address (serial ports are opened by `run`, with retries, so an unplugged
    /// adapter does not stop the gateway from starting).
    pub async fn bind(
        source: &str,
        tenant: &str,
        cfg: &Config,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Result<Source, Error> {
        let tcp = match &cfg.transport {
            Transport::Listen(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|e| Error::Bind {
                    addr: *addr,
                    source: e,
                })?)
            }
            _ => None,
        };
        Ok(Source {
            ctx: Ctx {
                source: source.to_owned(),
                tenant: tenant.to_owned(),
                link: cfg.link.clone(),
                queue,
                metrics,
                critical: None,
            },
            transport: cfg.transport.clone(),
            tcp,
        })
    }

    /// Classifies every stored message: critical ones go in the critical lane and raise an
    /// alert right after their commit.
    pub fn with_critical(mut self, notifier: Arc<crate::critical::Notifier>) -> Source {
        self.ctx.critical = Some(notifier);
        self
    }

    /// The bound TCP address (`listen` only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }

    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let ctx = self.ctx;
        match (self.transport, self.tcp) {
            (Transport::Serial(line), _) => {
                let label = line.label();
                let gauge = ctx
                    .metrics
                    .connections
                    .get_or_create(&Metrics::source(&ctx.source))
                    .clone();
                loop {
                    let Some(port) = crate::serial::open_with_backoff(&line, &mut shutdown, |e| {
                        tracing::warn!(source = %ctx.source, port = %label, error = %e, "serial port not available; retrying");
                    })
                    .await
                    else {
                        return;
                    };
                    tracing::info!(source = %ctx.source, port = %label, "serial port open");
                    gauge.inc();
                    let end = session(port, &ctx, &label, &mut shutdown).await;
                    gauge.dec();
                    if end == End::Shutdown || shutdown.is_cancelled() {
                        return;
                    }
                    ctx.metrics
                        .connections_closed
                        .get_or_create(&Metrics::source_and(&ctx.source, "reason", "port_lost"))
                        .inc();
                    tracing::warn!(source = %ctx.source, port = %label, "serial port lost; reopening");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            (Transport::Listen(_), Some(tcp)) => {
                let mut conns = JoinSet::new();
                loop {
                    let accepted = tokio::select! {
                        a = tcp.accept() => a,
                        _ = shutdown.cancelled() => break,
                        Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                    };
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(source = %ctx.source, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    let mut shutdown = shutdown.clone();
                    conns.spawn(async move {
                        let gauge = ctx
                            .metrics
                            .connections
                            .get_or_create(&Metrics::source(&ctx.source))
                            .clone();
                        gauge.inc();
                        let peer = peer.to_string();
                        tracing::info!(source = %ctx.source, peer, "analyzer connected");
                        session(stream, &ctx, &peer, &mut shutdown).await;
                        gauge.dec();
                    });
                }
                while conns.join_next().await.is_some() {}
            }
            (Transport::Connect(addr), _) => {
                let mut delay = Duration::from_secs(1);
                loop {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    match TcpStream::connect(&addr).await {
                        Ok(stream) => {
                            delay = Duration::from_secs(1);
                            let _ = stream.set_nodelay(true);
                            tracing::info!(source = %ctx.source, peer = %addr, "connected to analyzer");
                            if session(stream, &ctx, &addr, &mut shutdown).await == End::Shutdown {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(source = %ctx.source, peer = %addr, error = %e, "analyzer not reachable; retrying");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            (Transport::Listen(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn control_id_is_stable_and_content_derived() {
        let a = control_id(b"H|\\^&\rL|1|N\r");
        assert_eq!(a, control_id(b"H|\\^&\rL|1|N\r"));
        assert_ne!(a, control_id(b"H|\\^&\rL|1|F\r"));
        assert!(a.starts_with("astm-") && a.len() == 5 + 32, "{a}");
    }

    #[test]
    fn sender_is_h5_component_1_or_none() {
        assert_eq!(
            sender_name(b"H|\\^&|||BS-240^1.0|||||||P|1394-97\rL|1|N\r").as_deref(),
            Some("BS-240")
        );
        assert_eq!(sender_name(b"H|\\^&\rL|1\r"), None);
        assert_eq!(sender_name(b"\xff\x00garbage"), None);
        assert_eq!(sender_name(b""), None);
    }
}
