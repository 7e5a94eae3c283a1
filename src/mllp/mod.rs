//! The MLLP source: HL7 v2 over TCP or TLS (protocols.md §1).
//!
//! What it accepts: blocks `0x0B <payload> 0x1C 0x0D`, one HL7 message (or one batch) each, many
//! per connection, one in flight at a time as real senders do (§1.3). What it promises: an AA/CA
//! goes back only after the message is committed to the durable queue; a message that cannot be
//! stored gets AR/CR so the sender keeps it; a malformed one gets AE/CE with an ERR segment and is
//! kept in the rejected area for inspection. The decision is made in one table, `hl7::ack`.
//!
//! Limits, each configurable per source: frame size (default 8 MiB; an oversized frame closes the
//! connection, since no MSH-10 can be trusted), a partial-frame timeout, an idle timeout, a cap on
//! concurrent connections, an optional allow-list of peer networks, and TLS 1.3 (optionally mTLS).
//!
//! Layers: [`codec`] is the sans-IO framing state machine; [`listener`] owns sockets and tasks;
//! [`client`] is the sender side used by `caregate send` and the tests; [`tls`] builds rustls
//! configurations.

pub mod client;
pub mod codec;
pub mod listener;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use codec::Codec;
pub use listener::{Listener, SerialSource};

use crate::config::{ByteSize, HumanDuration};
use crate::hl7::Charset;

/// Validated settings of one `kind = "mllp"` source.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Largest accepted frame payload in bytes.
    pub max_frame: usize,
    /// Concurrent connections allowed; further ones are closed at once.
    pub max_connections: usize,
    /// A connection with no bytes for this long (outside a frame) is closed.
    pub idle_timeout: Duration,
    /// A frame that stays incomplete this long is discarded and the connection closed.
    pub frame_timeout: Duration,
    /// Peer networks allowed to connect; empty means any.
    pub allowed_peers: Vec<IpNet>,
    /// Charset assumed when MSH-18 is empty.
    pub default_charset: Charset,
    /// How ACK codes are chosen.
    pub ack_mode: AckMode,
    /// Accepted MSH-9 `code^trigger` patterns (`*` wildcard per part); empty means all.
    pub message_types: Vec<String>,
    /// Accepted MSH-11 processing ids; empty means all.
    pub processing_ids: Vec<String>,
    /// TLS settings; `None` means plain TCP.
    pub tls: Option<TlsConfig>,
}

/// ACK mode selection per sender (protocols.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// Original mode when MSH-15/16 are empty, enhanced (CA/CE/CR) otherwise.
    Auto,
    /// Always AA/AE/AR: for senders that set MSH-15 but still expect original-mode codes.
    Original,
}

/// `[source.tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// File form of a `kind = "mllp"` source.
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
    listen: String,
    max_frame: Option<ByteSize>,
    max_connections: Option<usize>,
    idle_timeout: Option<HumanDuration>,
    frame_timeout: Option<HumanDuration>,
    #[serde(default)]
    allowed_peers: Vec<String>,
    charset: Option<String>,
    ack_mode: Option<AckMode>,
    #[serde(default)]
    message_types: Vec<String>,
    #[serde(default)]
    processing_ids: Vec<String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// Validated settings of one `kind = "mllp-serial"` source: HL7 v2 with MLLP framing over a
/// serial line, handled frame by frame exactly like a TCP connection.
#[derive(Debug, Clone)]
pub struct SerialConfig {
    /// The serial line.
    pub line: crate::serial::Line,
    /// Frame handling and ACK policy (`listen`, `max_connections`, `allowed_peers` and `tls`
    /// do not apply to a serial line and keep neutral values).
    pub mllp: Config,
}

/// File form of a `kind = "mllp-serial"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialConfig {
    #[allow(
        dead_code,
        reason = "read by config's first pass; allowed here so deny_unknown_fields accepts it"
    )]
    kind: String,
    pub(crate) name: String,
    pub(crate) tenant: String,
    pub(crate) timezone: Option<String>,
    port: PathBuf,
    baud: Option<u32>,
    data_bits: Option<u8>,
    parity: Option<String>,
    stop_bits: Option<u8>,
    flow_control: Option<String>,
    max_frame: Option<ByteSize>,
    frame_timeout: Option<HumanDuration>,
    charset: Option<String>,
    ack_mode: Option<AckMode>,
    #[serde(default)]
    message_types: Vec<String>,
    #[serde(default)]
    processing_ids: Vec<String>,
}

impl RawSerialConfig {
    /// Validates; errors are `(key relative to the source, message)`.
    pub(crate) fn validate(self, base: &Path) -> Result<SerialConfig, (String, String)> {
        let line = crate::serial::RawLine {
            port: self.port,
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow_control: self.flow_control,
        }
        .validate()?;
        let mut mllp = RawConfig {
            kind: String::new(),
            name: self.name,
            tenant: self.tenant,
            timezone: self.timezone,
            listen: "0.0.0.0:0".into(),
            max_frame: self.max_frame,
            max_connections: Some(1),
            // A quiet line is normal between results: the session is reopened after a day of
            // silence, which costs nothing.
            idle_timeout: Some(HumanDuration(Duration::from_secs(24 * 3600))),
            frame_timeout: self.frame_timeout,
            allowed_peers: Vec::new(),
            charset: self.charset,
            ack_mode: self.ack_mode,
            message_types: self.message_types,
            processing_ids: self.processing_ids,
            tls: None,
        }
        .validate(base)?;
        mllp.max_connections = 1;
        Ok(SerialConfig { line, mllp })
    }
}

/// Default frame cap: 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

impl RawConfig {
    /// Validates; errors are `(key relative to the source, message)`.
    pub(crate) fn validate(self, base: &Path) -> Result<Config, (String, String)> {
        let listen = self.listen.parse::<SocketAddr>().map_err(|_| {
            (
                "listen".to_owned(),
                "not a socket address (expected e.g. \"0.0.0.0:2575\")".to_owned(),
            )
        })?;
        let max_frame = match self.max_frame {
            None => DEFAULT_MAX_FRAME,
            Some(ByteSize(n)) if (64..=(256 << 20)).contains(&n) => n as usize,
            Some(_) => return Err(("max_frame".into(), "must be between 64B and 256MiB".into())),
        };
        let max_connections = self.max_connections.unwrap_or(64);
        if !(1..=10_000).contains(&max_connections) {
            return Err((
                "max_connections".into(),
                "must be between 1 and 10000".into(),
            ));
        }
        let idle_timeout = self.idle_timeout.map_or(Duration::from_secs(3600), |d| d.0);
        let frame_timeout = self.frame_timeout.map_or(Duration::from_secs(60), |d| d.0);
        if idle_timeout.is_zero() || frame_timeout.is_zero() {
            return Err((
                "idle_timeout".into(),
                "timeouts must be greater than zero".into(),
            ));
        }
        let mut allowed_peers = Vec::new();
        for (i, p) in self.allowed_peers.iter().enumerate() {
            let net = p
                .parse::<IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        format!("allowed_peers[{i}]"),
                        "not an IP address or network (e.g. \"10.1.0.0/16\")".to_owned(),
                    )
                })?;
            allowed_peers.push(net);
        }
        let default_charset = match &self.charset {
            None => Charset::Latin1,
            Some(c) => Charset::from_code(c).map_err(|_| {
                (
                    "charset".to_owned(),
                    "not a supported MSH-18 character set".to_owned(),
                )
            })?,
        };
        for (i, t) in self.message_types.iter().enumerate() {
            let ok = t
                .split_once('^')
                .is_some_and(|(c, e)| !c.is_empty() && !e.is_empty());
            if !ok {
                return Err((
                    format!("message_types[{i}]"),
                    "expected \"CODE^TRIGGER\" such as \"ORU^R01\" or \"ADT^*\"".into(),
                ));
            }
        }
        let tls = self.tls.map(|t| TlsConfig {
            cert: crate::config::resolve(base, &t.cert),
            key: crate::config::resolve(base, &t.key),
            client_ca: t.client_ca.map(|c| crate::config::resolve(base, &c)),
        });
        Ok(Config {
            listen,
            max_frame,
            max_connections,
            idle_timeout,
            frame_timeout,
            allowed_peers,
            default_charset,
            ack_mode: self.ack_mode.unwrap_or(AckMode::Auto),
            message_types: self.message_types,
            processing_ids: self.processing_ids,
            tls,
        })
    }
}

impl Config {
    /// Whether this listener takes messages of this MSH-9 code and trigger.
    pub fn accepts_type(&self, code: &str, trigger: &str) -> bool {
        self.message_types.is_empty()
            || self.message_types.iter().any(|p| {
                let (pc, pt) = p.split_once('^').unwrap_or((p, "*"));
                (pc == "*" || pc.eq_ignore_ascii_case(code))
                    && (pt == "*" || pt.eq_ignore_ascii_case(trigger))
            })
    }

    /// Whether this listener takes this MSH-11 processing id.
    pub fn accepts_processing_id(&self, id: &str) -> bool {
        self.processing_ids.is_empty()
            || self
                .processing_ids
                .iter()
                .any(|p| p.eq_ignore_ascii_case(id))
    }
}
