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
//!  queue ──lease──▶ pipeline (one worker per tenant) ──▶ convert (pure) ──▶ merge into one
//!   ▲               transaction Bundle ──▶ forward::client (TLS 1.3, h2) ──▶ tenant's FHIR server
//!   │                                                                          │
//!   └── ack (delete) on 2xx │ retry + backoff + breaker │ split + dead-letter on 4xx ◀─┘
//!                             (forward::retry decides; alert on long outages)
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
//! 6. **No duplicates at the cloud.** An envelope is deleted only after a 2xx for the request
//!    that carried it, so a crash re-sends it; every Bundle entry is idempotent (ids derived
//!    from tenant, source, control id and position with PUT; conditional create/update by
//!    identifier), so a re-send leaves the server as it was. See [`pipeline`].
//! 7. **Order per source, tenants apart.** One in-flight request per tenant, leases in id order
//!    per source; a critical result goes ahead and, if older messages of its source follow it,
//!    is delivered again at its place, so the server ends as strict order would leave it
//!    ([`queue`], "Critical lane"). Each tenant has its own client, pool, credentials, breaker
//!    and alert state.
//!
//! ## Code map
//!
//! - [`app`]: wiring and lifecycle (start, readiness, ordered shutdown).
//! - [`config`]: the TOML file, validated before any I/O.
//! - [`mllp`]: framing codec, listener, client, TLS.
//! - [`mqtt`]: MQTT subscriber source (manual PUBACK after the commit, persistent session).
//! - [`hl7`]: zero-copy HL7 v2 parser, escapes, charsets, batches, ACK table.
//! - [`astm`]: ASTM E1381 link layer (sans-IO), E1394 record parser, and the driver that runs
//!   the link over a serial port or TCP (`kind = "astm"`, `"astm-tcp"`).
//! - [`serial`]: serial-line settings, reopen with backoff, port listing (`caregate ports`).
//! - [`files`]: the folder-polling file source (HL7 files and FHS/BHS batches, done/failed
//!   with a report per file).
//! - [`modbus`]: Modbus TCP/RTU register polling → device readings (pure decoding apart).
//! - [`queue`]: redb-backed durable queue with group commit; [`envelope`]: what it stores.
//! - [`convert`] (pure) and [`fhir`]: HL7 v2, ASTM and device [`reading`]s → FHIR R4
//!   transaction Bundles.
//! - [`pipeline`]: the one consumer of the queue; [`forward`]: upstream config, HTTPS client,
//!   retry classification, circuit breaker; [`alert`]: outage alerts and webhooks.
//! - [`health`]: `/livez`, `/readyz`, `/metrics`; [`admin`]: `/status` and queue operations;
//!   [`status`]: what status shows; [`page`]: the HTML status page on `GET /`; [`ops`]: the
//!   CLI side of them; [`metrics`]: every metric.
//! - [`audit`]: the append-only audit trail (hash-chained, signed, never patient data).
//! - [`access`]: admin API tokens (hashed at rest) and the role decision table.
//! - [`critical`]: critical results (flags, per-code thresholds) → critical lane + alert.
//! - [`consent`]: per-tenant consent registry (keyed hashes); withdrawn patients are held.
//! - [`consent_pull`]: optional periodic read of the platform's FHIR Consent resources into it.
//! - [`shutdown`]: shutdown signalling; [`cli`]: the command line.
//! - [`systemd`]: `READY=1`, `STATUS=`, `STOPPING=1`, `WATCHDOG=1` for the service manager.

pub mod access;
pub mod admin;
pub mod alert;
pub mod app;
pub mod astm;
pub mod audit;
pub mod cli;
pub mod config;
pub mod consent;
pub mod consent_pull;
pub mod convert;
pub mod critical;
pub mod envelope;
pub mod fhir;
pub mod files;
pub mod forward;
pub mod health;
pub mod hl7;
pub mod metrics;
pub mod mllp;
pub mod modbus;
pub mod mqtt;
pub mod ops;
pub mod page;
pub mod pipeline;
pub mod queue;
pub mod reading;
pub mod serial;
pub mod shutdown;
pub mod status;
pub mod systemd;
