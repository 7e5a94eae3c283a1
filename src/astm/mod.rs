//! ASTM E1381 / E1394 (CLSI LIS1-A / LIS2-A2): how clinical-laboratory analyzers send results
//! over a serial line (or TCP) — protocols.md §7.
//!
//! ```text
//!  analyzer ──bytes──▶ link::Receiver ──Message(text)──▶ queue.push ──▶ stored() ──▶ ACK
//!                      (E1381 frames,                       (durable)
//!                       checksums, timers)
//!  queue ──▶ convert::convert_astm ──▶ record::Message::parse (E1394 records H P O R C Q M L)
//!                                        ──▶ FHIR Bundle (Device, Patient, Specimen, Observation)
//! ```
//!
//! - [`link`]: the sans-IO link layer (receiver, sender, computer station with contention).
//! - [`record`]: the E1394 record parser (delimiters from H, escapes, P/O/R/C hierarchy).
//! - [`serial`]: the driver: runs a [`link::Receiver`] over any `AsyncRead + AsyncWrite` (a
//!   serial port, a TCP connection, a pseudo-terminal in tests) with real timers, stores each
//!   message, then lets the receiver answer.
//!
//! [`link`] and [`record`] are pure: no I/O, no clock. This module holds the source
//! configuration: `kind = "astm"` (serial line) and `kind = "astm-tcp"` (`listen` or `connect`).

pub mod link;
pub mod record;
pub mod serial;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::HumanDuration;

/// Validated settings of a `kind = "astm"` (serial) or `kind = "astm-tcp"` source.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the bytes come from.
    pub transport: Transport,
    /// Link-layer settings (E1381 timers and limits).
    pub link: link::Config,
}

/// How an ASTM source reaches its analyzer.
#[derive(Debug, Clone)]
pub enum Transport {
    /// A serial line (`kind = "astm"`).
    Serial(crate::serial::Line),
    /// `kind = "astm-tcp"` with `listen`: the analyzer connects to caregate.
    Listen(SocketAddr),
    /// `kind = "astm-tcp"` with `connect`: caregate connects to an analyzer that listens
    /// (reconnecting with backoff).
    Connect(String),
}

/// File form of a `kind = "astm"` source.
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
    port: std::path::PathBuf,
    baud: Option<u32>,
    data_bits: Option<u8>,
    parity: Option<String>,
    stop_bits: Option<u8>,
    flow_control: Option<String>,
    receive_timeout: Option<HumanDuration>,
    max_message: Option<crate::config::ByteSize>,
}

/// File form of a `kind = "astm-tcp"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpConfig {
    #[allow(
        dead_code,
        reason = "read by config's first pass; allowed here so deny_unknown_fields accepts it"
    )]
    kind: String,
    pub(crate) name: String,
    pub(crate) tenant: String,
    pub(crate) timezone: Option<String>,
    listen: Option<String>,
    connect: Option<String>,
    receive_timeout: Option<HumanDuration>,
    max_message: Option<crate::config::ByteSize>,
}

fn link_config(
    receive_timeout: Option<HumanDuration>,
    max_message: Option<crate::config::ByteSize>,
) -> Result<link::Config, (String, String)> {
    let mut link = link::Config::default();
    if let Some(t) = receive_timeout {
        if t.0 < Duration::from_secs(1) || t.0 > Duration::from_secs(600) {
            return Err((
                "receive_timeout".into(),
                "must be between 1s and 10m (E1381 default: 30s)".into(),
            ));
        }
        link.receive_timeout = t.0;
    }
    if let Some(m) = max_message {
        if !(1024..=(64 << 20)).contains(&m.0) {
            return Err((
                "max_message".into(),
                "must be between 1KiB and 64MiB".into(),
            ));
        }
        link.max_message = m.0 as usize;
    }
    Ok(link)
}

impl RawSerialConfig {
    /// Validates; errors are `(key relative to the source, message)`.
    pub(crate) fn validate(self) -> Result<Config, (String, String)> {
        let line = crate::serial::RawLine {
            port: self.port,
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow_control: self.flow_control,
        }
        .validate()?;
        Ok(Config {
            transport: Transport::Serial(line),
            link: link_config(self.receive_timeout, self.max_message)?,
        })
    }
}

impl RawTcpConfig {
    /// Validates; errors are `(key relative to the source, message)`.
    pub(crate) fn validate(self) -> Result<Config, (String, String)> {
        let transport = match (self.listen, self.connect) {
            (Some(l), None) => Transport::Listen(l.parse::<SocketAddr>().map_err(|_| {
                (
                    "listen".to_owned(),
                    "not a socket address (expected e.g. \"0.0.0.0:5000\")".to_owned(),
                )
            })?),
            (None, Some(c)) => {
                let ok = c
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err((
                        "connect".into(),
                        "expected \"host:port\" of the analyzer, e.g. \"10.2.0.15:5000\"".into(),
                    ));
                }
                Transport::Connect(c)
            }
            (Some(_), Some(_)) => {
                return Err((
                    "connect".into(),
                    "set either listen (the analyzer connects) or connect (caregate connects), not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    "listen".into(),
                    "missing: set listen (the analyzer connects) or connect (caregate connects)"
                        .into(),
                ));
            }
        };
        Ok(Config {
            transport,
            link: link_config(self.receive_timeout, self.max_message)?,
        })
    }
}

impl Config {
    /// The `kind = "..."` string of this source.
    pub fn kind(&self) -> &'static str {
        match self.transport {
            Transport::Serial(_) => "astm",
            Transport::Listen(_) | Transport::Connect(_) => "astm-tcp",
        }
    }
}
