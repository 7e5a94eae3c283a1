//! A device reading: what an MQTT payload in caregate's JSON shape or a Modbus register poll
//! becomes before it is stored ([`crate::envelope::Kind::Reading`], JSON-encoded) and converted
//! to a FHIR Observation with its Device (and Patient or Location when the device is bound).
//!
//! The JSON shape (also what an MQTT publisher sends with `payload = "json"`):
//!
//! ```json
//! {
//!   "device": { "id": "0009FBFFFF9B42B3", "system": "urn:ietf:rfc:7042", "name": "bed 12 monitor" },
//!   "code": "150456", "system": "urn:iso:std:iso:11073:10101", "display": "MDC_PULS_OXIM_SAT_O2",
//!   "value": "97", "unit": "%",
//!   "time": "2024-01-05T10:30:00+01:00",
//!   "patient": { "system": "https://hospital.example/mrn", "value": "MRN123" },
//!   "location": "ICU-12"
//! }
//! ```
//!
//! `value` is a decimal string (the sender's digits are kept: no float round trip), or absent
//! with `text` for a non-numeric value; `unit` is a UCUM code when it is one. `patient` and
//! `location` are optional bindings (from the payload or from the source's configuration).

use serde::{Deserialize, Serialize};

/// One reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// The device that measured it.
    pub device: DeviceRef,
    /// Metric code (MDC, LOINC or local).
    pub code: String,
    /// Code system URI; local codes get a tenant-scoped system when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Display text of the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Numeric value as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Text value (when not numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Unit (UCUM code when possible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// When it was measured (RFC 3339 with offset).
    pub time: String,
    /// The patient the device is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<IdentifierRef>,
    /// The location the device is bound to (a bed, a room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// The measuring device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRef {
    /// Identifier value (EUI-64, serial number, configured id).
    pub id: String,
    /// Identifier system; a tenant-scoped one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A business identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierRef {
    /// System URI.
    pub system: String,
    /// Value.
    pub value: String,
}
