//! The MLLP accept loop and per-connection task:
//! `bytes → codec frame → split/decode/parse header → policy → queue.push (commit) → ACK`.
//!
//! Invariants:
//! - the ACK for a frame is written only after `queue.push` returned: AA/CA means committed;
//! - one frame is handled at a time per connection, in order (senders keep one in flight);
//! - nothing from a peer can panic this task; a broken frame ends in an AE/CE, an oversized one
//!   or a stalled partial one closes the connection, and other connections are unaffected;
//! - logs carry source, peer, envelope id and control id, never message content.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{AckMode, Codec, Config, codec};
use crate::envelope::{Kind, Lane, Meta};
use crate::hl7::ack::{self, Inbound, Outcome, Problem};
use crate::hl7::{self, Charset, Message, batch, charset};
use crate::metrics::Metrics;
use crate::queue::{self, NewEnvelope, Queue};
use crate::shutdown::Shutdown;

/// Listener errors (startup only; per-connection problems are logged and counted).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("tls for source {source_name}")]
    Tls {
        /// Source name.
        source_name: String,
        /// Cause.
        #[source]
        source: super::tls::Error,
    },
}

/// What every connection of one source shares.
struct Ctx {
    source: String,
    tenant: String,
    cfg: Config,
    queue: Queue,
    metrics: Arc<Metrics>,
    ack_ids: AckIds,
    /// Per-source metric handles, looked up once instead of per message.
    hot: HotMetrics,
    /// Critical-value rules and alerting (none: nothing is classified).
    critical: Option<Arc<crate::critical::Notifier>>,
}

struct HotMetrics {
    received: prometheus_client::metrics::counter::Counter,
    duplicates: prometheus_client::metrics::counter::Counter,
    garbage_bytes: prometheus_client::metrics::counter::Counter,
    connections: prometheus_client::metrics::gauge::Gauge,
    last_received: prometheus_client::metrics::gauge::Gauge,
    ack_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl HotMetrics {
    fn new(m: &Metrics, source: &str) -> HotMetrics {
        let l = Metrics::source(source);
        HotMetrics {
            received: m.received.get_or_create(&l).clone(),
            duplicates: m.duplicates.get_or_create(&l).clone(),
            garbage_bytes: m.garbage_bytes.get_or_create(&l).clone(),
            connections: m.connections.get_or_create(&l).clone(),
            last_received: m.last_received.get_or_create(&l).clone(),
            ack_seconds: m.ack_seconds.get_or_create(&l).clone(),
        }
    }
}

/// New MSH-10 values for ACKs: unique per process start and increasing.
struct AckIds {
    prefix: String,
    next: AtomicU64,
}

impl AckIds {
    fn new() -> AckIds {
        let boot = jiff::Timestamp::now().as_second();
        AckIds {
            prefix: format!("CG{boot:x}"),
            next: AtomicU64::new(1),
        }
    }
    fn next(&self) -> String {
        format!(
            "{}.{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A bound MLLP listener, ready to run.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<super::tls::TlsSwap>,
    ctx: Arc<Ctx>,
}

impl Listener {
    /// Binds the source's address and loads its TLS material.
    pub async fn bind(
        source: &str,
        tenant: &str,
        cfg: &Config,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Result<Listener, Error> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some(super::tls::TlsSwap::new(
                super::tls::server_config(t).map_err(|e| Error::Tls {
                    source_name: source.to_owned(),
                    source: e,
                })?,
            )),
        };
        let tcp = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Bind {
                addr: cfg.listen,
                source: e,
            })?;
        Ok(Listener {
            tcp,
            tls,
            ctx: Arc::new(Ctx {
                source: source.to_owned(),
                tenant: tenant.to_owned(),
                cfg: cfg.clone(),
                queue,
                hot: HotMetrics::new(&metrics, source),
                metrics,
                ack_ids: AckIds::new(),
                critical: None,
            }),
        })
    }

    /// Classifies every stored message: critical ones go in the critical lane and raise an
    /// alert right after their commit.
    pub fn with_critical(mut self, notifier: Arc<crate::critical::Notifier>) -> Listener {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.critical = Some(notifier);
        }
        self
    }

    /// The TLS configuration a reload replaces when the certificate files change (`None`:
    /// plain TCP).
    pub fn tls_swap(&self) -> Option<super::tls::TlsSwap> {
        self.tls.clone()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.ctx.cfg.listen)
    }

    /// Accepts until shutdown, then waits for open connections to finish the frame in hand.
    pub async fn run(self, mut shutdown: Shutdown) {
        let ctx = self.ctx;
        let limit = Arc::new(Semaphore::new(ctx.cfg.max_connections));
        let mut conns = JoinSet::new();
        tracing::info!(source = %ctx.source, addr = %self.tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = self.tls.is_some(), "mllp listener started");
        loop {
            let accepted = tokio::select! {
                a = self.tcp.accept() => a,
                _ = shutdown.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(source = %ctx.source, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !ctx.cfg.allowed_peers.is_empty() {
                let ip = canonical_ip(peer.ip());
                if !ctx.cfg.allowed_peers.iter().any(|n| n.contains(&ip)) {
                    ctx.metrics
                        .connections_closed
                        .get_or_create(&Metrics::source_and(
                            &ctx.source,
                            "reason",
                            "peer_not_allowed",
                        ))
                        .inc();
                    tracing::warn!(source = %ctx.source, %peer, "connection from a peer outside allowed_peers closed");
                    drop(stream);
                    continue;
                }
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                ctx.metrics
                    .connections_closed
                    .get_or_create(&Metrics::source_and(&ctx.source, "reason", "limit"))
                    .inc();
                tracing::warn!(source = %ctx.source, %peer, limit = ctx.cfg.max_connections,
                    "connection limit reached; new connection closed");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            let tls = self.tls.as_ref().map(super::tls::TlsSwap::acceptor);
            let shutdown = shutdown.clone();
            conns.spawn(async move {
                let gauge = ctx.hot.connections.clone();
                gauge.inc();
                let peer = peer.to_string();
                match tls {
                    None => serve(stream, &ctx, &peer, shutdown).await,
                    Some(acceptor) => {
                        let hs = tokio::time::timeout(ctx.cfg.frame_timeout, acceptor.accept(stream)).await;
                        match hs {
                            Ok(Ok(s)) => serve(s, &ctx, &peer, shutdown).await,
                            Ok(Err(e)) => {
                                ctx.metrics
                                    .connections_closed
                                    .get_or_create(&Metrics::source_and(&ctx.source, "reason", "tls_handshake"))
                                    .inc();
                                tracing::warn!(source = %ctx.source, %peer, error = %e, "tls handshake failed");
                            }
                            Err(_) => {
                                ctx.metrics
                                    .connections_closed
                                    .get_or_create(&Metrics::source_and(&ctx.source, "reason", "tls_timeout"))
                                    .inc();
                                tracing::warn!(source = %ctx.source, %peer, "tls handshake timed out");
                            }
                        }
                    }
                }
                gauge.dec();
                drop(permit);
            });
        }
        tracing::info!(source = %ctx.source, open = conns.len(), "mllp listener stopped accepting");
        while conns.join_next().await.is_some() {}
    }
}

/// HL7 v2 with MLLP framing over a serial line (`kind = "mllp-serial"`): the same per-frame
/// handling as a TCP connection (`serve`: codec → check → `queue.push` → ACK after commit), with
/// the port reopened with backoff when it disappears.
pub struct SerialSource {
    ctx: Arc<Ctx>,
    line: crate::serial::Line,
}

impl SerialSource {
    /// A source for this line; the port is opened by `run`, with retries.
    pub fn new(
        source: &str,
        tenant: &str,
        cfg: &super::SerialConfig,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> SerialSource {
        SerialSource {
            line: cfg.line.clone(),
            ctx: Arc::new(Ctx {
                source: source.to_owned(),
                tenant: tenant.to_owned(),
                cfg: cfg.mllp.clone(),
                queue,
                hot: HotMetrics::new(&metrics, source),
                metrics,
                ack_ids: AckIds::new(),
                critical: None,
            }),
        }
    }

    /// See [`Listener::with_critical`].
    pub fn with_critical(mut self, notifier: Arc<crate::critical::Notifier>) -> SerialSource {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.critical = Some(notifier);
        }
        self
    }

    /// Serves the line until shutdown, reopening it whenever it is lost.
    pub async fn run(self, mut shutdown: Shutdown) {
        let ctx = self.ctx;
        let label = self.line.label();
        loop {
            let Some(port) = crate::serial::open_with_backoff(&self.line, &mut shutdown, |e| {
                tracing::warn!(source = %ctx.source, port = %label, error = %e, "serial port not available; retrying");
            })
            .await
            else {
                return;
            };
            tracing::info!(source = %ctx.source, port = %label, "serial port open");
            ctx.hot.connections.inc();
            serve(port, &ctx, &label, shutdown.clone()).await;
            ctx.hot.connections.dec();
            if shutdown.is_cancelled() {
                return;
            }
            tracing::warn!(source = %ctx.source, port = %label, "serial session ended; reopening the port");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// One connection: frames in, ACKs out, until EOF, a timeout, a limit breach or shutdown.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ctx: &Ctx,
    peer: &str,
    mut shutdown: Shutdown,
) {
    let mut codec = Codec::new(ctx.cfg.max_frame);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let peer_s = peer;
    let closed = |reason: &str| {
        ctx.metrics
            .connections_closed
            .get_or_create(&Metrics::source_and(&ctx.source, "reason", reason))
            .inc();
    };
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let started = Instant::now();
                    if let Some(reply) = handle_frame(ctx, peer_s, frame).await {
                        if stream.write_all(&reply).await.is_err() || stream.flush().await.is_err()
                        {
                            tracing::info!(source = %ctx.source, peer = %peer_s, "peer went away before its ACK was written");
                            return;
                        }
                    }
                    ctx.hot.ack_seconds.observe(started.elapsed().as_secs_f64());
                }
                Ok(None) => break,
                Err(codec::Error::Oversized { limit }) => {
                    closed("oversized");
                    ctx.metrics
                        .rejected
                        .get_or_create(&Metrics::source_and(&ctx.source, "reason", "oversized"))
                        .inc();
                    tracing::warn!(source = %ctx.source, peer = %peer_s, limit,
                        "frame exceeds max_frame; connection closed without ACK");
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        }
        let skipped = codec.take_skipped();
        if skipped > 0 {
            ctx.hot.garbage_bytes.inc_by(skipped);
            tracing::debug!(source = %ctx.source, peer = %peer_s, bytes = skipped, "bytes outside MLLP frames skipped");
        }
        if shutdown.is_cancelled() && !codec.in_frame() {
            return;
        }
        let wait = if codec.in_frame() {
            ctx.cfg.frame_timeout
        } else {
            ctx.cfg.idle_timeout
        };
        let in_frame = codec.in_frame();
        tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => match r {
                Err(_) => {
                    if in_frame {
                        codec.reset(&mut buf);
                        closed("frame_timeout");
                        tracing::warn!(source = %ctx.source, peer = %peer_s, "partial frame timed out; discarded and connection closed");
                    } else {
                        closed("idle");
                        tracing::info!(source = %ctx.source, peer = %peer_s, "idle connection closed");
                    }
                    let _ = stream.shutdown().await;
                    return;
                }
                Ok(Ok(0)) => {
                    if in_frame {
                        tracing::warn!(source = %ctx.source, peer = %peer_s, "connection closed in the middle of a frame");
                    }
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::info!(source = %ctx.source, peer = %peer_s, error = %e, "read failed; connection closed");
                    return;
                }
            },
            _ = shutdown.cancelled(), if !in_frame => return,
        }
    }
}

/// Handles one frame and returns the framed reply (None when the sender asked for none).
async fn handle_frame(ctx: &Ctx, peer: &str, frame: Bytes) -> Option<BytesMut> {
    let received_at_us = jiff::Timestamp::now().as_microsecond();
    ctx.hot.received.inc();
    ctx.hot.last_received.set(received_at_us / 1_000_000);
    let split = batch::split(&frame);
    let (text, out_charset) = if split.messages.len() > 1 {
        handle_batch(ctx, peer, &frame, &split, received_at_us).await
    } else {
        handle_message(ctx, peer, &frame, received_at_us).await
    }?;
    let bytes = charset::encode(&text, out_charset);
    let mut out = BytesMut::with_capacity(bytes.len() + 3);
    Codec::encode(&bytes, &mut out);
    Some(out)
}

/// Result of checking one message before storage.
struct Checked<'a> {
    inbound: Inbound<'a>,
    meta: Meta,
}

/// Decodes, parses and applies listener policy. `Err` carries the outcome to answer with.
fn check<'a>(ctx: &Ctx, text: &'a str) -> Result<Checked<'a>, Box<(Inbound<'a>, Outcome)>> {
    let msg = Message::parse(text)
        .map_err(|e| Box::new((Inbound::scan(text), Outcome::Malformed(problem_of(&e)))))?;
    let header = msg
        .header()
        .map_err(|e| Box::new((Inbound::scan(text), Outcome::Malformed(problem_of(&e)))))?;
    let inbound = Inbound::from_header(&header, msg.delimiters());
    let unsupported = |code: u16, text: &str, field: u16| {
        Outcome::Unsupported(Problem::new(code, text).at("MSH", 1, field))
    };
    if !ctx
        .cfg
        .accepts_type(header.message_code, header.trigger_event)
    {
        let code_known = ctx.cfg.message_types.iter().any(|p| {
            p.split('^')
                .next()
                .is_some_and(|c| c.eq_ignore_ascii_case(header.message_code))
        });
        return Err(Box::new(if code_known {
            (
                inbound,
                unsupported(201, "event not accepted on this listener", 9),
            )
        } else {
            (
                inbound,
                unsupported(200, "message type not accepted on this listener", 9),
            )
        }));
    }
    if !ctx.cfg.accepts_processing_id(header.processing_id) {
        return Err(Box::new((
            inbound,
            unsupported(202, "processing id not accepted on this listener", 11),
        )));
    }
    if !ack::version_supported(header.version) {
        return Err(Box::new((
            inbound,
            unsupported(203, "HL7 version not supported (2.1 to 2.8)", 12),
        )));
    }
    let meta = Meta {
        control_id: header.control_id.to_owned(),
        message_type: format!("{}^{}", header.message_code, header.trigger_event),
        version: header.version.to_owned(),
        sender: format!("{}|{}", header.sending_application, header.sending_facility),
    };
    Ok(Checked { inbound, meta })
}

fn classify(text: &str, rules: &[crate::critical::Rule]) -> crate::critical::Critical {
    crate::critical::classify_hl7(text, rules)
}

fn problem_of(e: &hl7::Error) -> Problem {
    let mut p = Problem::new(e.hl7_code(), e.to_string());
    p.location = e.location();
    p
}

fn new_envelope(
    ctx: &Ctx,
    peer: &str,
    received_at_us: i64,
    meta: Meta,
    payload: Bytes,
) -> NewEnvelope {
    NewEnvelope {
        tenant: ctx.tenant.clone(),
        source: ctx.source.clone(),
        received_at_us,
        peer: peer.to_owned(),
        kind: Kind::Hl7,
        lane: Lane::Normal,
        meta,
        payload,
    }
}

fn store_failure(ctx: &Ctx, e: &queue::Error) -> Outcome {
    let (reason, text) = match e {
        queue::Error::Full { .. } => ("queue_full", "queue full; resend later"),
        _ => ("storage", "message not stored; resend later"),
    };
    ctx.metrics
        .rejected
        .get_or_create(&Metrics::source_and(&ctx.source, "reason", reason))
        .inc();
    Outcome::NotStored(Problem::new(207, text))
}

async fn keep_rejected(
    ctx: &Ctx,
    peer: &str,
    received_at_us: i64,
    inbound: &Inbound<'_>,
    payload: Bytes,
    problem: &Problem,
) {
    ctx.metrics
        .rejected
        .get_or_create(&Metrics::source_and(&ctx.source, "reason", "malformed"))
        .inc();
    let meta = Meta {
        control_id: inbound.control_id.to_owned(),
        ..Meta::default()
    };
    let item = new_envelope(ctx, peer, received_at_us, meta, payload);
    match ctx
        .queue
        .reject(item, format!("{} {}", problem.code, problem.text))
        .await
    {
        Ok(id) => {
            tracing::warn!(source = %ctx.source, %peer, envelope_id = id, control_id = %short(inbound.control_id),
            code = problem.code, error = %problem.text, "malformed message kept in the rejected area")
        }
        Err(e) => {
            tracing::error!(source = %ctx.source, %peer, control_id = %short(inbound.control_id),
            code = problem.code, error = %e, "malformed message could not be kept for inspection")
        }
    }
}

fn short(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn finish(ctx: &Ctx, inbound: &Inbound<'_>, outcome: &Outcome) -> Option<String> {
    let force_original = ctx.cfg.ack_mode == AckMode::Original;
    let mode = ack::mode(
        inbound.accept_ack_type,
        inbound.application_ack_type,
        force_original,
    );
    let code = ack::code(mode, outcome);
    ctx.metrics
        .acks
        .get_or_create(&Metrics::source_and(&ctx.source, "code", code.as_str()))
        .inc();
    if !ack::wanted(mode, inbound.accept_ack_type, code) {
        return None;
    }
    Some(ack::build(
        inbound,
        code,
        outcome,
        &now_hl7(),
        &ctx.ack_ids.next(),
    ))
}

/// MSH-7 for ACKs: local time with milliseconds and offset.
fn now_hl7() -> String {
    let now = jiff::ZonedDateTime::now();
    let ms = now.subsec_nanosecond() / 1_000_000;
    format!(
        "{}.{ms:03}{}",
        now.strftime("%Y%m%d%H%M%S"),
        now.strftime("%z")
    )
}

async fn handle_message(
    ctx: &Ctx,
    peer: &str,
    frame: &Bytes,
    received_at_us: i64,
) -> Option<(String, Charset)> {
    let decoded = charset::decode(frame, ctx.cfg.default_charset);
    let (text, cs) = match decoded {
        Ok((t, cs)) => (t, cs),
        Err(e) => {
            let lossy = String::from_utf8_lossy(frame);
            let inbound = Inbound::scan(&lossy);
            let p = problem_of(&e);
            keep_rejected(ctx, peer, received_at_us, &inbound, frame.clone(), &p).await;
            let outcome = Outcome::Malformed(p);
            return finish(ctx, &inbound, &outcome).map(|t| (t, ctx.cfg.default_charset));
        }
    };
    let (inbound, outcome) = match check(ctx, &text) {
        Err(rejected) => {
            let (inbound, outcome) = *rejected;
            if let Outcome::Malformed(p) = &outcome {
                keep_rejected(ctx, peer, received_at_us, &inbound, frame.clone(), p).await;
            } else {
                ctx.metrics
                    .rejected
                    .get_or_create(&Metrics::source_and(&ctx.source, "reason", "unsupported"))
                    .inc();
                tracing::warn!(source = %ctx.source, %peer, control_id = %short(inbound.control_id),
                    "message refused by listener policy");
            }
            (inbound, outcome)
        }
        Ok(c) => {
            let control_id = c.meta.control_id.clone();
            let mut item = new_envelope(ctx, peer, received_at_us, c.meta, frame.clone());
            let found = ctx.critical.as_ref().and_then(|n| {
                let found = classify(&text, n.rules(&ctx.tenant));
                found.is_critical().then_some((n, found))
            });
            if found.is_some() {
                item.lane = Lane::Critical;
            }
            let outcome = match ctx.queue.push(item).await {
                Ok(p) if p.duplicate => {
                    ctx.hot.duplicates.inc();
                    tracing::info!(source = %ctx.source, %peer, envelope_id = p.id, control_id = %short(&control_id),
                        "resend of a stored message acknowledged again");
                    Outcome::Duplicate
                }
                Ok(p) => {
                    tracing::debug!(source = %ctx.source, %peer, envelope_id = p.id, control_id = %short(&control_id), "stored");
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
                    Outcome::Stored
                }
                Err(e) => {
                    tracing::warn!(source = %ctx.source, %peer, control_id = %short(&control_id), error = %e,
                        "message not stored; answering with a reject so the sender keeps it");
                    store_failure(ctx, &e)
                }
            };
            (c.inbound, outcome)
        }
    };
    finish(ctx, &inbound, &outcome).map(|t| (t, cs))
}

/// A frame holding several messages (an FHS/BHS batch or back-to-back MSH): all are stored in
/// one transaction or none; the reply is one ACK per message, in order, in one frame (wrapped
/// in BHS/BTS when the input was a batch).
async fn handle_batch(
    ctx: &Ctx,
    peer: &str,
    frame: &Bytes,
    split: &batch::Batch<'_>,
    received_at_us: i64,
) -> Option<(String, Charset)> {
    let mut texts = Vec::with_capacity(split.messages.len());
    let mut first_cs = ctx.cfg.default_charset;
    for (i, m) in split.messages.iter().enumerate() {
        match charset::decode(m, ctx.cfg.default_charset) {
            Ok((t, cs)) => {
                if i == 0 {
                    first_cs = cs;
                }
                texts.push((t.into_owned(), cs, *m));
            }
            Err(e) => {
                let lossy = String::from_utf8_lossy(m).into_owned();
                let inbound = Inbound::scan(&lossy);
                let p = problem_of(&e);
                keep_rejected(ctx, peer, received_at_us, &inbound, frame.clone(), &p).await;
                return finish(ctx, &inbound, &Outcome::Malformed(p)).map(|t| (t, first_cs));
            }
        }
    }
    let mut checked = Vec::with_capacity(texts.len());
    for (text, _, raw) in &texts {
        match check(ctx, text) {
            Ok(c) => checked.push((c, *raw)),
            Err(rejected) => {
                let (inbound, outcome) = *rejected;
                if let Outcome::Malformed(p) = &outcome {
                    keep_rejected(ctx, peer, received_at_us, &inbound, frame.clone(), p).await;
                }
                return finish(ctx, &inbound, &outcome).map(|t| (t, first_cs));
            }
        }
    }
    let items = checked
        .iter()
        .map(|(c, raw)| {
            new_envelope(
                ctx,
                peer,
                received_at_us,
                c.meta.clone(),
                frame.slice_ref(raw),
            )
        })
        .collect();
    let outcomes: Vec<Outcome> = match ctx.queue.push_all(items).await {
        Ok(pushed) => pushed
            .iter()
            .map(|p| {
                if p.duplicate {
                    Outcome::Duplicate
                } else {
                    Outcome::Stored
                }
            })
            .collect(),
        Err(e) => {
            tracing::warn!(source = %ctx.source, %peer, messages = checked.len(), error = %e, "batch not stored");
            let o = store_failure(ctx, &e);
            vec![o; checked.len()]
        }
    };
    tracing::debug!(source = %ctx.source, %peer, messages = checked.len(), "batch handled");
    let mut reply = String::new();
    if split.is_batch {
        if let Some((c, _)) = checked.first() {
            let i = &c.inbound;
            let f = i.delimiters.field;
            reply.push_str(&format!(
                "BHS{f}{}{f}{}{f}{}{f}{}{f}{}{f}{}\r",
                i.delimiters.encoding_characters(),
                i.receiving_application,
                i.receiving_facility,
                i.sending_application,
                i.sending_facility,
                now_hl7()
            ));
        }
    }
    for ((c, _), outcome) in checked.iter().zip(&outcomes) {
        if let Some(a) = finish(ctx, &c.inbound, outcome) {
            reply.push_str(&a);
        }
    }
    if split.is_batch {
        let f = checked
            .first()
            .map_or('|', |(c, _)| c.inbound.delimiters.field);
        reply.push_str(&format!("BTS{f}{}\r", checked.len()));
    }
    Some((reply, first_cs))
}
