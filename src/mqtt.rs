//! The MQTT source: subscribes to a broker and stores every publish before acknowledging it
//! (protocols.md §9.3).
//!
//! What it promises:
//! - **PUBACK only after the commit.** The session is persistent (`clean_session = false`, a
//!   stable client id) and acks are manual: a QoS 1 publish is acked only after `queue.push`
//!   (or `queue.reject` for an unmappable payload) returned Ok. When the queue cannot take it
//!   (full, storage failure) nothing is acked: the connection is dropped and, after a backoff, a
//!   fresh one is opened so the broker redelivers everything not acked, in order.
//! - **Stored once.** A redelivery after a crash carries the same bytes: the envelope's control
//!   id is a hash of topic and payload, and the queue de-duplicates on (source, sender, control
//!   id), so the redelivery is acked again without a second copy.
//! - **Nothing unmappable dropped.** A JSON payload that is not a [`Reading`] (or an array of
//!   them), or an HL7 payload that does not parse, goes to the rejected area with its reason,
//!   counted in `caregate_messages_rejected_total{reason="unmappable"}`, and is then acked: it
//!   is stored, and a broker redelivering it forever would block the session.
//! - **Resubscribe on every ConnAck**: a broker that lost the session (restart without
//!   persistence) still gets the subscriptions back.
//! - Logs carry source, topic, sizes and control ids, never payload content.
//!
//! Payload formats (`payload = ...`):
//! - `"json"`: one [`Reading`] or a JSON array of them → [`Kind::Reading`] envelopes. A single
//!   reading that needs no binding is stored byte for byte; a batch, or a reading completed
//!   with the source's `patient`/`location` binding, is stored re-serialized (one envelope per
//!   reading, control id `<hash>:<index>` for batches).
//! - `"hl7"`: one HL7 v2 message → a [`Kind::Hl7`] envelope, the header parsed for metadata as
//!   the MLLP listener does.
//!
//! A publish bigger than `max_packet_size` is refused by the client library with a connection
//! error (it is not acked, the broker keeps it); raise the limit or fix the publisher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use serde::Deserialize;

use crate::config::{ByteSize, HumanDuration};
use crate::envelope::{Kind, Lane, Meta};
use crate::hl7::{self, Message};
use crate::metrics::Metrics;
use crate::queue::{self, NewEnvelope, Queue};
use crate::reading::{IdentifierRef, Reading};
use crate::shutdown::Shutdown;

/// Validated settings of one `kind = "mqtt"` source.
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`: TLS 1.3.
    pub tls: bool,
    /// PEM CA bundle for the broker's certificate (required with `mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (mTLS), optional.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Stable client id: the broker keeps the session under it.
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// File holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// Subscriptions.
    pub topics: Vec<Topic>,
    /// What a payload holds.
    pub payload: PayloadFormat,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest packet accepted.
    pub max_packet_size: usize,
    /// Patient the source's devices are bound to (used when a reading has none).
    pub patient: Option<IdentifierRef>,
    /// Location the source's devices are bound to (used when a reading has none).
    pub location: Option<String>,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    /// Topic filter, `+` and `#` wildcards allowed.
    pub filter: String,
    /// Subscription QoS (0 or 1; default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_qos() -> u8 {
    1
}

/// `payload = "json" | "hl7"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// caregate's Reading JSON.
    Json,
    /// One HL7 v2 message.
    Hl7,
}

/// File form of a `kind = "mqtt"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[allow(
        dead_code,
        reason = "read by config's first pass; allowed here so deny_unknown_fields accepts it"
    )]
    kind: String,
    pub(crate) name: String,
    pub(crate) tenant: String,
    pub(crate) timezone: Option<String>,
    broker: String,
    client_id: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    topics: Vec<Topic>,
    payload: Option<PayloadFormat>,
    keep_alive: Option<HumanDuration>,
    max_packet_size: Option<ByteSize>,
    patient: Option<IdentifierRef>,
    location: Option<String>,
}

/// Default packet cap: 1 MiB (rumqttc's own default is 10 KiB).
pub const DEFAULT_MAX_PACKET: usize = 1 << 20;

/// Parses `mqtt://host[:port]` / `mqtts://host[:port]` into (host, port, tls).
pub fn parse_broker(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false)
    } else {
        return Err("expected mqtt://host:port or mqtts://host:port".into());
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed [ in an IPv6 address".to_owned())?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err("unexpected text after the IPv6 address".into()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', ' ']) {
        return Err(
            "missing or invalid host (user info, paths and queries are not supported)".into(),
        );
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| "port must be 1-65535".to_owned())?,
    };
    Ok((host.to_owned(), port, tls))
}

/// Checks an MQTT topic filter (3.1.1 §4.7).
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > 65535 || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels
        .iter()
        .enumerate()
        .all(|(i, l)| (*l == "#" && i == levels.len() - 1) || *l == "+" || !l.contains(['#', '+']))
}

impl RawConfig {
    /// Validates; errors are `(key relative to the source, message)`.
    pub(crate) fn validate(self, base: &Path) -> Result<Config, (String, String)> {
        let (host, port, tls) = parse_broker(&self.broker).map_err(|m| ("broker".to_owned(), m))?;
        let client_id = self
            .client_id
            .unwrap_or_else(|| format!("caregate-{}", self.name));
        if client_id.is_empty()
            || client_id.len() > 128
            || !client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err((
                "client_id".into(),
                "must be 1-128 characters of A-Z, a-z, 0-9, '-', '_' or '.'".into(),
            ));
        }
        if self.topics.is_empty() {
            return Err(("topics".into(), "at least one topic is required".into()));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !valid_filter(&t.filter) {
                return Err((
                    format!("topics[{i}].filter"),
                    "not a valid MQTT topic filter ('+' and '#' fill a whole level, '#' only last)"
                        .into(),
                ));
            }
            if t.qos > 1 {
                return Err((
                    format!("topics[{i}].qos"),
                    "must be 0 or 1 (caregate de-duplicates QoS 1 itself)".into(),
                ));
            }
        }
        let keep_alive = self.keep_alive.map_or(Duration::from_secs(30), |d| d.0);
        if !(Duration::from_secs(5)..=Duration::from_secs(65535)).contains(&keep_alive) {
            return Err(("keep_alive".into(), "must be between 5s and 18h".into()));
        }
        let max_packet_size = match self.max_packet_size {
            None => DEFAULT_MAX_PACKET,
            Some(ByteSize(n)) if (1024..=(256 << 20)).contains(&n) => n as usize,
            Some(_) => {
                return Err((
                    "max_packet_size".into(),
                    "must be between 1KiB and 256MiB".into(),
                ));
            }
        };
        if self.password_file.is_some() && self.username.is_none() {
            return Err(("password_file".into(), "needs a username".into()));
        }
        if tls && self.ca_file.is_none() {
            return Err((
                "ca_file".into(),
                "required with mqtts:// (the CA that signed the broker's certificate)".into(),
            ));
        }
        if !tls && (self.ca_file.is_some() || self.client_cert.is_some()) {
            return Err((
                "broker".into(),
                "ca_file and client_cert need an mqtts:// broker".into(),
            ));
        }
        let client_cert = match (self.client_cert, self.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                crate::config::resolve(base, &c),
                crate::config::resolve(base, &k),
            )),
            _ => {
                return Err((
                    "client_cert".into(),
                    "client_cert and client_key go together".into(),
                ));
            }
        };
        if let Some(p) = &self.patient {
            if p.system.trim().is_empty() || p.value.trim().is_empty() {
                return Err(("patient".into(), "needs a system and a value".into()));
            }
        }
        Ok(Config {
            host,
            port,
            tls,
            ca_file: self.ca_file.map(|c| crate::config::resolve(base, &c)),
            client_cert,
            client_id,
            username: self.username,
            password_file: self.password_file.map(|p| crate::config::resolve(base, &p)),
            topics: self.topics,
            payload: self.payload.unwrap_or(PayloadFormat::Json),
            keep_alive,
            max_packet_size,
            patient: self.patient,
            location: self.location,
        })
    }
}

/// Startup errors (per-publish problems are logged and counted).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The password file could not be read.
    #[error("source {source_name}: reading password_file {path}")]
    Password {
        /// Source name.
        source_name: String,
        /// The file.
        path: PathBuf,
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
        source: crate::mllp::tls::Error,
    },
}

/// Builds the client options (reads the password file and TLS material).
pub fn options(source: &str, cfg: &Config) -> Result<MqttOptions, Error> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), (cfg.host.clone(), cfg.port));
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(cfg.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16);
    o.set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size);
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| Error::Password {
                    source_name: source.to_owned(),
                    path: p.clone(),
                    source: e,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        o.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let identity = cfg
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let tls =
            crate::mllp::tls::client_config(cfg.ca_file.as_deref(), identity).map_err(|e| {
                Error::Tls {
                    source_name: source.to_owned(),
                    source: e,
                }
            })?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    Ok(o)
}

/// A configured MQTT source, ready to run.
pub struct Source {
    name: String,
    tenant: String,
    cfg: Config,
    options: MqttOptions,
    queue: Queue,
    metrics: Arc<Metrics>,
    critical: Option<Arc<crate::critical::Notifier>>,
}

/// Why a publish was not acknowledged.
struct NotStored;

impl Source {
    /// Loads credentials and TLS material; connects only in [`Source::run`].
    pub fn new(
        name: &str,
        tenant: &str,
        cfg: &Config,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Result<Source, Error> {
        Ok(Source {
            options: options(name, cfg)?,
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            cfg: cfg.clone(),
            queue,
            metrics,
            critical: None,
        })
    }

    /// Classifies every stored message or reading: critical ones go in the critical lane and
    /// raise an alert right after their commit.
    pub fn with_critical(mut self, notifier: Arc<crate::critical::Notifier>) -> Source {
        self.critical = Some(notifier);
        self
    }

    /// Receives until shutdown: reconnects with backoff, resubscribes on every ConnAck.
    pub async fn run(self, mut shutdown: Shutdown) {
        let connected = self
            .metrics
            .connections
            .get_or_create(&Metrics::source(&self.name))
            .clone();
        tracing::info!(source = %self.name, broker = %self.cfg.host, port = self.cfg.port,
            tls = self.cfg.tls, "mqtt source started");
        let mut backoff = Backoff::default();
        'session: loop {
            // A fresh client per session attempt: after a publish could not be stored, nothing
            // read after it may be acked, so the whole client state is dropped with the socket.
            let (client, mut events) = AsyncClient::new(self.options.clone(), 64);
            loop {
                let ev = tokio::select! {
                    ev = events.poll() => ev,
                    _ = shutdown.cancelled() => {
                        disconnect(&client, &mut events).await;
                        break 'session;
                    }
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        connected.set(1);
                        tracing::info!(source = %self.name, session_present = ack.session_present, "mqtt connected");
                        let subs =
                            self.cfg.topics.iter().map(|t| {
                                rumqttc::SubscribeFilter::new(t.filter.clone(), qos(t.qos))
                            });
                        if let Err(e) = client.try_subscribe_many(subs) {
                            tracing::warn!(source = %self.name, error = %e, "subscribe could not be queued");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let failed = s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count();
                        if failed > 0 {
                            tracing::warn!(source = %self.name, failed, "broker refused subscriptions (check its ACL)");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if self.handle(&client, &p).await.is_err() {
                            connected.set(0);
                            let wait = backoff.next();
                            tracing::warn!(source = %self.name, retry_in = ?wait,
                                "publish not stored and not acknowledged; reconnecting so the broker redelivers");
                            drop(events);
                            drop(client);
                            if sleep_or_shutdown(wait, &mut shutdown).await {
                                break 'session;
                            }
                            continue 'session;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        connected.set(0);
                        self.metrics
                            .connections_closed
                            .get_or_create(&Metrics::source_and(&self.name, "reason", "broker"))
                            .inc();
                        let wait = backoff.next();
                        tracing::warn!(source = %self.name, error = %e, retry_in = ?wait, "mqtt connection failed");
                        if sleep_or_shutdown(wait, &mut shutdown).await {
                            break 'session;
                        }
                    }
                }
            }
        }
        connected.set(0);
        tracing::info!(source = %self.name, "mqtt source stopped");
    }

    /// Stores a publish's envelopes in one commit; critical ones take the critical lane and
    /// alert right after it.
    async fn push(
        &self,
        mut items: Vec<NewEnvelope>,
    ) -> Result<Vec<crate::queue::Pushed>, crate::queue::Error> {
        let marked = match &self.critical {
            Some(n) => n.mark(&mut items),
            None => Vec::new(),
        };
        let pushed = self.queue.push_all(items).await?;
        if let Some(n) = &self.critical {
            n.raise_marked(&marked, &pushed);
        }
        Ok(pushed)
    }

    /// Stores one publish and acks it; `Err` when it was not stored (not acked).
    async fn handle(&self, client: &AsyncClient, p: &rumqttc::Publish) -> Result<(), NotStored> {
        let received_at_us = jiff::Timestamp::now().as_microsecond();
        self.metrics
            .received
            .get_or_create(&Metrics::source(&self.name))
            .inc();
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let control_id = control_id(&p.topic, &p.payload);
        match self.envelopes(&topic, &control_id, received_at_us, &p.payload) {
            Ok(items) => match self.push(items).await {
                Ok(pushed) => {
                    let dups = pushed.iter().filter(|x| x.duplicate).count();
                    if dups > 0 {
                        self.metrics
                            .duplicates
                            .get_or_create(&Metrics::source(&self.name))
                            .inc_by(dups as u64);
                        tracing::info!(source = %self.name, %topic, control_id = %control_id,
                            "redelivery of a stored publish acknowledged again");
                    } else {
                        tracing::debug!(source = %self.name, %topic, control_id = %control_id,
                            envelopes = pushed.len(), "stored");
                    }
                    Ok(())
                }
                Err(e) => Err(self.store_failure(&topic, &e)),
            },
            Err(reason) => {
                let item = self.new_envelope(
                    &topic,
                    received_at_us,
                    Kind::Reading,
                    Meta {
                        control_id: control_id.clone(),
                        sender: "mqtt".to_owned(),
                        ..Meta::default()
                    },
                    p.payload.clone(),
                );
                let item = NewEnvelope {
                    kind: match self.cfg.payload {
                        PayloadFormat::Json => Kind::Reading,
                        PayloadFormat::Hl7 => Kind::Hl7,
                    },
                    ..item
                };
                match self.queue.reject(item, reason.clone()).await {
                    Ok(id) => {
                        self.metrics
                            .rejected
                            .get_or_create(&Metrics::source_and(&self.name, "reason", "unmappable"))
                            .inc();
                        tracing::warn!(source = %self.name, %topic, envelope_id = id, control_id = %control_id,
                            error = %reason, "unmappable publish kept in the rejected area");
                        Ok(())
                    }
                    Err(e) => Err(self.store_failure(&topic, &e)),
                }
            }
        }?;
        // QoS 0 needs no ack (the call is a no-op for it). The request channel is drained by
        // the same loop that called us, one ack per publish, so it cannot be full.
        if let Err(e) = client.try_ack(p) {
            tracing::warn!(source = %self.name, %topic, error = %e, "ack could not be queued; the broker will redeliver");
        }
        Ok(())
    }

    /// The envelopes of one payload, or why it is unmappable (a reason without content).
    fn envelopes(
        &self,
        topic: &str,
        control_id: &str,
        received_at_us: i64,
        payload: &Bytes,
    ) -> Result<Vec<NewEnvelope>, String> {
        match self.cfg.payload {
            PayloadFormat::Hl7 => {
                let meta = hl7_meta(payload)?;
                Ok(vec![self.new_envelope(
                    topic,
                    received_at_us,
                    Kind::Hl7,
                    Meta {
                        control_id: control_id.to_owned(),
                        ..meta
                    },
                    payload.clone(),
                )])
            }
            PayloadFormat::Json => {
                let readings = readings(payload)?;
                let batch = readings.len() > 1 || payload.first_non_ws() == Some(b'[');
                let mut out = Vec::with_capacity(readings.len());
                for (i, mut r) in readings.into_iter().enumerate() {
                    let mut bound = false;
                    if r.patient.is_none() && self.cfg.patient.is_some() {
                        r.patient = self.cfg.patient.clone();
                        bound = true;
                    }
                    if r.location.is_none() && self.cfg.location.is_some() {
                        r.location = self.cfg.location.clone();
                        bound = true;
                    }
                    let bytes = if batch || bound {
                        Bytes::from(
                            serde_json::to_vec(&r)
                                .map_err(|_| "reading not serializable".to_owned())?,
                        )
                    } else {
                        payload.clone()
                    };
                    let meta = Meta {
                        control_id: if batch {
                            format!("{control_id}:{i}")
                        } else {
                            control_id.to_owned()
                        },
                        message_type: "READING".to_owned(),
                        version: String::new(),
                        sender: "mqtt".to_owned(),
                    };
                    out.push(self.new_envelope(topic, received_at_us, Kind::Reading, meta, bytes));
                }
                Ok(out)
            }
        }
    }

    fn new_envelope(
        &self,
        topic: &str,
        received_at_us: i64,
        kind: Kind,
        meta: Meta,
        payload: Bytes,
    ) -> NewEnvelope {
        NewEnvelope {
            tenant: self.tenant.clone(),
            source: self.name.clone(),
            received_at_us,
            peer: topic.to_owned(),
            kind,
            lane: Lane::Normal,
            meta,
            payload,
        }
    }

    fn store_failure(&self, topic: &str, e: &queue::Error) -> NotStored {
        let reason = match e {
            queue::Error::Full { .. } => "queue_full",
            _ => "storage",
        };
        self.metrics
            .rejected
            .get_or_create(&Metrics::source_and(&self.name, "reason", reason))
            .inc();
        tracing::warn!(source = %self.name, %topic, error = %e, "publish not stored");
        NotStored
    }
}

trait FirstNonWs {
    fn first_non_ws(&self) -> Option<u8>;
}

impl FirstNonWs for Bytes {
    fn first_non_ws(&self) -> Option<u8> {
        self.iter().copied().find(|b| !b.is_ascii_whitespace())
    }
}

/// A JSON payload → readings (one object or a non-empty array), each with a valid time.
/// Errors name fields and positions, never values.
pub fn readings(payload: &[u8]) -> Result<Vec<Reading>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Box<Reading>),
        Many(Vec<Reading>),
    }
    let parsed: OneOrMany = serde_json::from_slice(payload).map_err(|e| {
        format!(
            "not a caregate reading (object or array) at line {} column {}",
            e.line(),
            e.column()
        )
    })?;
    let list = match parsed {
        OneOrMany::One(r) => vec![*r],
        OneOrMany::Many(v) if v.is_empty() => return Err("empty array of readings".into()),
        OneOrMany::Many(v) => v,
    };
    for (i, r) in list.iter().enumerate() {
        if r.device.id.trim().is_empty() {
            return Err(format!("reading {i}: device.id is empty"));
        }
        if r.code.trim().is_empty() {
            return Err(format!("reading {i}: code is empty"));
        }
        if !crate::convert::valid_reading_time(r.time.trim()) {
            return Err(format!(
                "reading {i}: time is not RFC 3339 with seconds and an offset"
            ));
        }
    }
    Ok(list)
}

/// Header metadata of an HL7 payload, or why it does not parse.
fn hl7_meta(payload: &[u8]) -> Result<Meta, String> {
    let (text, _) = hl7::charset::decode(payload, hl7::Charset::Latin1)
        .map_err(|e| format!("{} {e}", e.hl7_code()))?;
    let msg = Message::parse(&text).map_err(|e| format!("{} {e}", e.hl7_code()))?;
    let h = msg.header().map_err(|e| format!("{} {e}", e.hl7_code()))?;
    Ok(Meta {
        control_id: String::new(),
        message_type: format!("{}^{}", h.message_code, h.trigger_event),
        version: h.version.to_owned(),
        sender: format!("{}|{}", h.sending_application, h.sending_facility),
    })
}

/// The dedup key of a publish: SHA-256 of topic, NUL, payload (hex, 128 bits).
pub fn control_id(topic: &[u8], payload: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(topic);
    ctx.update(&[0]);
    ctx.update(payload);
    let d = ctx.finish();
    let mut s = String::with_capacity(35);
    s.push_str("mq-");
    for b in &d.as_ref()[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Exponential backoff 200 ms .. 30 s.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ms = 200u64.saturating_mul(1 << self.attempt.min(8)).min(30_000);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(ms)
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps; true when shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Sends DISCONNECT and drives the event loop until it is written (at most 2 s). The session
/// stays on the broker (clean_session = false), so publishes not yet acked are redelivered.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(extra: &str) -> Result<Config, (String, String)> {
        let text = format!(
            "kind = \"mqtt\"\nname = \"icu\"\ntenant = \"north\"\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [{{ filter = \"icu/+/vitals\" }}]\n{extra}"
        );
        let r: RawConfig =
            toml::from_str(&text).map_err(|e| ("<toml>".to_owned(), e.to_string()))?;
        r.validate(Path::new("/etc/caregate"))
    }

    #[test]
    fn defaults() {
        let c = raw("").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls), ("127.0.0.1", 1883, false));
        assert_eq!(c.client_id, "caregate-icu");
        assert_eq!(c.max_packet_size, 1 << 20);
        assert_eq!(c.topics[0].qos, 1);
        assert_eq!(c.payload, PayloadFormat::Json);
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker("mqtts://b.example").unwrap(),
            ("b.example".into(), 8883, true)
        );
        assert_eq!(
            parse_broker("mqtt://[::1]:1884").unwrap(),
            ("::1".into(), 1884, false)
        );
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u@h",
            "mqtt://h/p",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_filters() {
        for ok in ["a", "a/+/b", "#", "a/#", "+", "+/+"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "a\0"] {
            assert!(!valid_filter(&bad.replace("\\0", "\0")), "{bad}");
        }
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let key = |extra: &str| raw(extra).unwrap_err().0;
        assert_eq!(key("client_id = \"a b\""), "client_id");
        assert_eq!(key("keep_alive = \"1s\""), "keep_alive");
        assert_eq!(key("max_packet_size = \"10B\""), "max_packet_size");
        assert_eq!(key("password_file = \"p\""), "password_file");
        assert_eq!(key("ca_file = \"ca.pem\""), "broker");
        assert_eq!(key("client_key = \"k\""), "client_cert");
        let text = "kind = \"mqtt\"\nname = \"n\"\ntenant = \"t\"\nbroker = \"mqtts://h\"\ntopics = [{ filter = \"a\" }]\n";
        let r: RawConfig = toml::from_str(text).unwrap();
        assert_eq!(r.validate(Path::new("/")).unwrap_err().0, "ca_file");
        let text = "kind = \"mqtt\"\nname = \"n\"\ntenant = \"t\"\nbroker = \"mqtt://h\"\ntopics = [{ filter = \"a/#/b\" }]\n";
        let r: RawConfig = toml::from_str(text).unwrap();
        assert_eq!(
            r.validate(Path::new("/")).unwrap_err().0,
            "topics[0].filter"
        );
        let text = "kind = \"mqtt\"\nname = \"n\"\ntenant = \"t\"\nbroker = \"mqtt://h\"\ntopics = [{ filter = \"a\", qos = 2 }]\n";
        let r: RawConfig = toml::from_str(text).unwrap();
        assert_eq!(r.validate(Path::new("/")).unwrap_err().0, "topics[0].qos");
    }

    #[test]
    fn control_ids_depend_on_topic_and_payload() {
        let a = control_id(b"t", b"p");
        assert_eq!(a, control_id(b"t", b"p"));
        assert_ne!(a, control_id(b"t2", b"p"));
        assert_ne!(a, control_id(b"t", b"p2"));
        assert_ne!(control_id(b"ab", b"c"), control_id(b"a", b"bc"));
        assert_eq!(a.len(), 35);
    }

    #[test]
    fn json_payloads_one_or_many_and_reasons_without_values() {
        let one = br#"{"device":{"id":"d"},"code":"150456","value":"97","unit":"%","time":"2024-01-05T09:30:00Z"}"#;
        assert_eq!(readings(one).unwrap().len(), 1);
        let many = format!(
            "[{},{}]",
            std::str::from_utf8(one).unwrap(),
            std::str::from_utf8(one).unwrap()
        );
        assert_eq!(readings(many.as_bytes()).unwrap().len(), 2);
        let bad_inputs: [&[u8]; 4] = [
            b"[]",
            b"{}",
            b"not json MRN123",
            br#"{"device":{"id":"MRN123"},"code":"x","time":"yesterday"}"#,
        ];
        for bad in bad_inputs {
            let e = readings(bad).unwrap_err();
            assert!(!e.contains("MRN123") && !e.contains("yesterday"), "{e}");
        }
    }

    #[test]
    fn hl7_meta_reads_the_header_and_refuses_garbage() {
        let m = hl7_meta(b"MSH|^~\\&|MON|ICU|||20240105||ORU^R01|X1|P|2.6\r").unwrap();
        assert_eq!(m.message_type, "ORU^R01");
        assert_eq!(m.sender, "MON|ICU");
        assert!(hl7_meta(b"hello").is_err());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let first = b.next();
        for _ in 0..20 {
            b.next();
        }
        assert_eq!(first, Duration::from_millis(200));
        assert_eq!(b.next(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.next(), first);
    }
}
