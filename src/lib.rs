//! # caregate
//!
//! An on-premises gateway daemon for hospitals: it receives HL7 v2 (MLLP over TCP/TLS; later
//! ASTM, MQTT, Modbus and batch files), stores every message durably **before** acknowledging
//! it, converts it to FHIR R4 and forwards it to the hospital group's cloud platform, keeping
//! everything while the link is down.
//!
//! ## Data path
//!
//! ```text
//!  sender ──MLLP frame──▶ mllp::listener ──▶ hl7 (charset, parse MSH) ──▶ policy (hl7::ack)
//!                              │                                              │
//!                              │   queue.push ──▶ queue writer thread ──▶ redb commit (fdatasync)
//!                              │                      (group commit: one fsync for all pending)
//!                              ◀──────────── ACK (AA/CA only after the commit returned) ◀──┘
//!
//!  queue ──lease──▶ pipeline ──▶ convert (pure) ──▶ forward (TLS 1.3) ──▶ ack | retry | dead-letter
//!                   (the one consumer; later issues)
//! ```
//!
//! ## Invariants
//!
//! 1. **Nothing acknowledged is lost.** AA/CA is written only after `queue.push` returned, which
//!    includes the fsync of the commit. When a message cannot be stored (queue full, disk
//!    failure) the sender gets AR/CR and keeps it. See [`queue`] for the durability argument.
//! 2. **One data path.** Sources only call `queue.push`; only the pipeline consumes the queue.
//! 3. **No duplicates stored for a resend**: the queue de-duplicates on (source, MSH-3, MSH-4,
//!    MSH-10) within `dedup_window` and the resend is ACKed again.
//! 4. **Bad input gets an answer, never a panic.** Protocol code ([`mllp::codec`], [`hl7`]) is
//!    sans-IO and total over arbitrary bytes; malformed messages get AE/CE with an ERR segment
//!    and are kept in the rejected area.
//! 5. **No patient data in logs, errors or metrics**: ids (source, envelope id, control id,
//!    peer), codes and counts only.
//!
//! ## Code map
//!
//! - [`app`]: wiring and lifecycle (start, readiness, ordered shutdown).
//! - [`config`]: the TOML file, validated before any I/O.
//! - [`mllp`]: framing codec, listener, client, TLS.
//! - [`hl7`]: zero-copy HL7 v2 parser, escapes, charsets, batches, ACK table.
//! - [`queue`]: redb-backed durable queue with group commit; [`envelope`]: what it stores.
//! - [`health`]: `/livez`, `/readyz`, `/metrics`; [`metrics`]: every metric in one place.
//! - [`audit`]: the append-only audit trail (hash-chained, signed, never patient data).
//! - [`shutdown`]: shutdown signalling; [`cli`]: the command line.

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod convert;
pub mod envelope;
pub mod fhir;
pub mod health;
pub mod hl7;
pub mod metrics;
pub mod mllp;
pub mod queue;
pub mod shutdown;
