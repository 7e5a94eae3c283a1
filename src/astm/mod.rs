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
//!
//! Both are pure: no I/O, no clock. The serial driver that feeds [`link`] with bytes and timer
//! expiries, and the source configuration, live outside these modules.

pub mod link;
pub mod record;
