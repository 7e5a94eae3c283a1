//! The minimal FHIR R4 subset caregate emits, as serde structs.
//!
//! Only the resources and elements the converter fills are modelled: [`Patient`], [`Encounter`],
//! [`Observation`], [`DiagnosticReport`], [`Device`] and [`Specimen`], wrapped in a transaction
//! [`Bundle`] (see [`bundle`]). Element names and their order follow the R4 resource definitions
//! (<http://hl7.org/fhir/R4/resourcelist.html>), so serialization is deterministic: serde writes
//! struct fields in declaration order, and every list is built in message order.
//!
//! Invariants kept by the types:
//! - empty elements are never written (`skip_serializing_if` on every optional or list field), so
//!   the JSON never holds `""`, `[]` or `{}` (FHIR forbids empty elements);
//! - decimals keep the precision the sender wrote ([`Decimal`] is emitted as a raw JSON number,
//!   `5.60` stays `5.60`), as FHIR requires for `decimal`;
//! - `Debug` of a resource prints only its type and id: resources hold patient data, and a stray
//!   `{:?}` in a log line must not leak it.

pub mod bundle;

use std::fmt;

use serde::{Serialize, Serializer};

pub use bundle::{Bundle, BundleType, Entry, Method, Request};

// === impl Decimal ===

/// A FHIR `decimal` kept exactly as written (canonical JSON number syntax, original precision).
#[derive(Clone, PartialEq, Eq)]
pub struct Decimal(String);

impl Decimal {
    /// Most digits a decimal may have (decimal128 holds 34 significant digits; found by the
    /// convert_astm fuzz target: a 420-digit range bound made the Bundle unparseable).
    pub const MAX_DIGITS: usize = 40;

    /// Parses an HL7 NM-style number (`-1.5`, `+3`, `.5`, `5.`, `007.20`) into JSON number
    /// syntax, keeping the fractional digits as written. `None` when it is not a plain decimal
    /// (exponents, spaces inside, several points) or has more than [`Decimal::MAX_DIGITS`]
    /// digits (after leading zeros): no measurement has that many, and a JSON number of
    /// hundreds of digits is one that common parsers refuse ("number out of range") or read as
    /// infinity. Such a value is kept as text by the callers.
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let (neg, rest) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = match rest.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (rest, None),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !frac.is_none_or(digits) {
            return None;
        }
        if int.is_empty() && frac.is_none_or(str::is_empty) {
            return None;
        }
        let int = int.trim_start_matches('0');
        if int.len() + frac.map_or(0, str::len) > Decimal::MAX_DIGITS {
            return None;
        }
        let mut out = String::with_capacity(t.len() + 2);
        let frac = frac.filter(|f| !f.is_empty());
        let is_zero = int.is_empty() && frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
        if neg && !is_zero {
            out.push('-');
        }
        out.push_str(if int.is_empty() { "0" } else { int });
        if let Some(f) = frac {
            out.push('.');
            out.push_str(f);
        }
        Some(Decimal(out))
    }

    /// A decimal from an integer.
    pub fn from_int(value: i64) -> Decimal {
        Decimal(value.to_string())
    }

    /// The canonical JSON text of the number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Decimal(..)")
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `parse` only ever builds valid JSON number text, so this cannot fail in practice;
        // fall back to a JSON string rather than panicking if it ever did.
        match serde_json::from_str::<&serde_json::value::RawValue>(&self.0) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(&self.0),
        }
    }
}

// === datatypes ===

/// Coding (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Coding {
    /// Code system URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Code system version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Display text from the sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    /// A coding with a system and a code.
    pub fn new(system: &str, code: &str) -> Coding {
        Coding {
            system: Some(system.to_owned()),
            code: Some(code.to_owned()),
            ..Coding::default()
        }
    }

    /// Adds a display.
    pub fn with_display(mut self, display: &str) -> Coding {
        self.display = Some(display.to_owned());
        self
    }
}

/// CodeableConcept (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeableConcept {
    /// Codings, most specific (sender's primary) first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    /// Original or plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    /// A concept with one coding.
    pub fn coding(coding: Coding) -> CodeableConcept {
        CodeableConcept {
            coding: vec![coding],
            text: None,
        }
    }

    /// A text-only concept.
    pub fn text(text: &str) -> CodeableConcept {
        CodeableConcept {
            coding: Vec::new(),
            text: Some(text.to_owned()),
        }
    }

    /// True when neither a coding nor a text is present.
    pub fn is_empty(&self) -> bool {
        self.coding.is_empty() && self.text.is_none()
    }
}

/// Period (R4 datatype); both ends are FHIR `dateTime` strings.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Period {
    /// Start, inclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End, inclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

impl Period {
    /// True when neither end is set.
    pub fn is_empty(&self) -> bool {
        self.start.is_none() && self.end.is_none()
    }
}

/// Quantity (R4 datatype; also used for SimpleQuantity, where `comparator` stays empty).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quantity {
    /// Numerical value, with the sender's precision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Decimal>,
    /// `<`, `<=`, `>=` or `>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparator: Option<String>,
    /// Unit as the sender wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Unit system (UCUM when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Coded unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Range (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Range {
    /// Low limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low: Option<Quantity>,
    /// High limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<Quantity>,
}

/// Ratio (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ratio {
    /// Numerator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numerator: Option<Quantity>,
    /// Denominator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denominator: Option<Quantity>,
}

/// SampledData (R4 datatype).
#[derive(Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SampledData {
    /// Zero value and units.
    pub origin: Quantity,
    /// Milliseconds between samples (0 when the message does not say).
    pub period: Decimal,
    /// Number of sample points at each time point.
    pub dimensions: u32,
    /// Space-separated decimals, `E` for a missing point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Attachment (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// MIME type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Base64 content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Where the content is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Identifier (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Identifier {
    /// usual | official | temp | secondary | old.
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Identifier type (v2 table 0203).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// Namespace URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Validity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// Issuing organization (by display) when the authority is not a URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigner: Option<Box<Reference>>,
}

/// Reference (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    /// Literal reference: another entry's `fullUrl` or `Type/id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Logical reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// Text alternative.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Reference {
    /// A literal reference.
    pub fn to(reference: &str) -> Reference {
        Reference {
            reference: Some(reference.to_owned()),
            ..Reference::default()
        }
    }
}

/// HumanName (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HumanName {
    /// usual | official | temp | nickname | anonymous | old | maiden.
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Family name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Given names in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<String>,
    /// Prefixes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<String>,
    /// Suffixes (including degrees).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suffix: Vec<String>,
}

/// Address (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// home | work | temp | old | billing.
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Street lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub line: Vec<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// County/district.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub district: Option<String>,
    /// State.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// Country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// ContactPoint (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContactPoint {
    /// phone | fax | email | pager | url | sms | other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The address or number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// home | work | temp | old | mobile.
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// Annotation (R4 datatype).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Annotation {
    /// Author, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author_string: Option<String>,
    /// When written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The note (markdown).
    pub text: String,
}

/// Extension (R4 element) with the value types caregate uses.
#[derive(Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// Definition URL.
    pub url: String,
    /// The value.
    #[serde(flatten)]
    pub value: ExtensionValue,
}

/// value\[x\] of an [`Extension`].
#[derive(Clone, Serialize, PartialEq)]
pub enum ExtensionValue {
    /// valueString.
    #[serde(rename = "valueString")]
    String(String),
    /// valueCode.
    #[serde(rename = "valueCode")]
    Code(String),
    /// valueDateTime.
    #[serde(rename = "valueDateTime")]
    DateTime(String),
    /// valueCodeableConcept.
    #[serde(rename = "valueCodeableConcept")]
    CodeableConcept(CodeableConcept),
    /// valueAttachment.
    #[serde(rename = "valueAttachment")]
    Attachment(Attachment),
    /// valueAnnotation.
    #[serde(rename = "valueAnnotation")]
    Annotation(Annotation),
}

// === resources ===

/// Resource metadata (only tags are used, for flags like device demo data).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<Coding>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.tag.is_empty()
    }
}

/// Patient (R4).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    /// Logical id (unset: patients are created/updated by identifier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Extensions (mother's maiden name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// PID-3 (and PID-2/4/19) identifiers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// PID-5 names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<HumanName>,
    /// PID-13/14 telecom.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub telecom: Vec<ContactPoint>,
    /// PID-8 administrative gender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// PID-7 date part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
    /// Extensions on birthDate (patient-birthTime).
    #[serde(rename = "_birthDate", skip_serializing_if = "Option::is_none")]
    pub birth_date_ext: Option<PrimitiveExtension>,
    /// PID-30 when PID-29 is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deceased_boolean: Option<bool>,
    /// PID-29.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deceased_date_time: Option<String>,
    /// PID-11 addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<Address>,
}

/// The `_element` sibling of a primitive, carrying its extensions.
#[derive(Clone, Default, Serialize, PartialEq)]
pub struct PrimitiveExtension {
    /// Extensions on the primitive.
    pub extension: Vec<Extension>,
}

/// Encounter.location entry.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncounterLocation {
    /// The location (by display: caregate does not emit Location resources).
    pub location: Reference,
    /// planned | active | reserved | completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Encounter.participant entry.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncounterParticipant {
    /// Role (v3-ParticipationType).
    #[serde(rename = "type", skip_serializing_if = "Vec::is_empty")]
    pub type_: Vec<CodeableConcept>,
    /// Who.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub individual: Option<Reference>,
}

/// Encounter (R4).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Encounter {
    /// Logical id (unset: encounters are created/updated by identifier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// PV1-19 visit number.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// planned | arrived | triaged | in-progress | onleave | finished | cancelled | unknown.
    pub status: String,
    /// PV1-2 patient class.
    pub class: Coding,
    /// PV1-10 hospital service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_type: Option<CodeableConcept>,
    /// The patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Reference>,
    /// PV1-7/8/9/17 doctors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub participant: Vec<EncounterParticipant>,
    /// PV1-44 / PV1-45.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// PV1-3 assigned location.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub location: Vec<EncounterLocation>,
}

/// Observation.referenceRange entry.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceRange {
    /// Low limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low: Option<Quantity>,
    /// High limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<Quantity>,
    /// The range as the sender wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Observation value\[x\] (R4 choices).
#[derive(Clone, Serialize, PartialEq)]
pub enum Value {
    /// valueQuantity.
    #[serde(rename = "valueQuantity")]
    Quantity(Quantity),
    /// valueCodeableConcept.
    #[serde(rename = "valueCodeableConcept")]
    CodeableConcept(CodeableConcept),
    /// valueString.
    #[serde(rename = "valueString")]
    String(String),
    /// valueRange.
    #[serde(rename = "valueRange")]
    Range(Range),
    /// valueRatio.
    #[serde(rename = "valueRatio")]
    Ratio(Ratio),
    /// valueSampledData.
    #[serde(rename = "valueSampledData")]
    SampledData(SampledData),
    /// valueTime.
    #[serde(rename = "valueTime")]
    Time(String),
    /// valueDateTime.
    #[serde(rename = "valueDateTime")]
    DateTime(String),
    /// valuePeriod.
    #[serde(rename = "valuePeriod")]
    Period(Period),
}

/// Observation.component entry.
#[derive(Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObservationComponent {
    /// Extensions of the member it came from (a device's measurement-status flags).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// What the component is.
    pub code: CodeableConcept,
    /// Its value.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Why the value is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept>,
    /// Component interpretation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interpretation: Vec<CodeableConcept>,
    /// Component reference range.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reference_range: Vec<ReferenceRange>,
}

/// Observation (R4).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Client-assigned id derived from the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tags (device test/demo data).
    #[serde(skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
    /// Extensions (sub-id, analysis time, attachments, device measurement status).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// OBX-21 and caregate's key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// OBX-11.
    pub status: String,
    /// laboratory | vital-signs ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<CodeableConcept>,
    /// OBX-3.
    pub code: CodeableConcept,
    /// The patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Reference>,
    /// The encounter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter: Option<Reference>,
    /// OBX-14, else OBR-7.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_date_time: Option<String>,
    /// OBR-22, else MSH-7 (instant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued: Option<String>,
    /// OBX-15/16/23.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub performer: Vec<Reference>,
    /// OBX-5.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Why OBX-5 is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept>,
    /// OBX-8.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interpretation: Vec<CodeableConcept>,
    /// NTE after the OBX.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub note: Vec<Annotation>,
    /// OBX-20.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_site: Option<CodeableConcept>,
    /// OBX-17.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<CodeableConcept>,
    /// The SPM this OBX belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specimen: Option<Reference>,
    /// OBX-18.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Reference>,
    /// OBX-7.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reference_range: Vec<ReferenceRange>,
    /// Repeating OBX-5 or compound device values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub component: Vec<ObservationComponent>,
}

/// DiagnosticReport (R4).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticReport {
    /// Client-assigned id derived from the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Extensions (R5 note for NTE after OBR).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// Placer / filler order numbers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// OBR-25.
    pub status: String,
    /// OBR-24.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<CodeableConcept>,
    /// OBR-4.
    pub code: CodeableConcept,
    /// The patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Reference>,
    /// The encounter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter: Option<Reference>,
    /// OBR-7 when OBR-8 is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_date_time: Option<String>,
    /// OBR-7 .. OBR-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_period: Option<Period>,
    /// OBR-22.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued: Option<String>,
    /// OBR-34/35.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub performer: Vec<Reference>,
    /// OBR-32.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub results_interpreter: Vec<Reference>,
    /// SPM of the order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub specimen: Vec<Reference>,
    /// The Observations of the order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub result: Vec<Reference>,
}

/// Device (R4).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Unset: devices are created by identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// EUI-64 or EI identifier.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// Manufacturer name (ASTM H-5 component 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Serial number (ASTM H-5 component 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Model (ASTM H-5 component 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_number: Option<String>,
    /// Device type (MDC_DEV_* code of the MDS/VMD row).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// Software versions (ASTM H-5 component 3).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub version: Vec<DeviceVersion>,
    /// Names (a device reading's `device.name`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_name: Vec<DeviceName>,
}

/// Device.deviceName entry.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceName {
    /// The name.
    pub name: String,
    /// `udi-label-name`, `user-friendly-name`, `patient-reported-name`, `manufacturer-name`,
    /// `model-name` or `other`.
    #[serde(rename = "type")]
    pub type_: String,
}

/// Device.version entry.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceVersion {
    /// The version text.
    pub value: String,
}

/// Specimen.collection.
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpecimenCollection {
    /// SPM-17 single time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collected_date_time: Option<String>,
    /// SPM-17 range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collected_period: Option<Period>,
    /// SPM-8 source site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_site: Option<CodeableConcept>,
}

impl SpecimenCollection {
    fn is_empty(&self) -> bool {
        self.collected_date_time.is_none()
            && self.collected_period.is_none()
            && self.body_site.is_none()
    }
}

/// Specimen (R4).
#[derive(Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Specimen {
    /// Client-assigned id derived from the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// SPM-2 placer/filler specimen ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// SPM-4.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// The patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Reference>,
    /// SPM-18.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_time: Option<String>,
    /// SPM-17 / SPM-8.
    #[serde(skip_serializing_if = "SpecimenCollection::is_empty")]
    pub collection: SpecimenCollection,
    /// SPM-24.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub condition: Vec<CodeableConcept>,
}

/// The resources caregate emits, tagged with `resourceType` (written first).
#[derive(Clone, Serialize, PartialEq)]
#[serde(tag = "resourceType")]
pub enum Resource {
    /// Patient.
    Patient(Box<Patient>),
    /// Encounter.
    Encounter(Box<Encounter>),
    /// Device.
    Device(Box<Device>),
    /// Specimen.
    Specimen(Box<Specimen>),
    /// DiagnosticReport.
    DiagnosticReport(Box<DiagnosticReport>),
    /// Observation.
    Observation(Box<Observation>),
}

impl Resource {
    /// The FHIR resource type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Resource::Patient(_) => "Patient",
            Resource::Encounter(_) => "Encounter",
            Resource::Device(_) => "Device",
            Resource::Specimen(_) => "Specimen",
            Resource::DiagnosticReport(_) => "DiagnosticReport",
            Resource::Observation(_) => "Observation",
        }
    }

    /// The resource's logical id, when client-assigned.
    pub fn id(&self) -> Option<&str> {
        match self {
            Resource::Patient(r) => r.id.as_deref(),
            Resource::Encounter(r) => r.id.as_deref(),
            Resource::Device(r) => r.id.as_deref(),
            Resource::Specimen(r) => r.id.as_deref(),
            Resource::DiagnosticReport(r) => r.id.as_deref(),
            Resource::Observation(r) => r.id.as_deref(),
        }
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Type and id only: the content is patient data.
        write!(f, "{}/{}", self.type_name(), self.id().unwrap_or("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_keeps_trailing_zeros_and_normalises_sign_and_leading_dot() {
        let cases = [
            ("5.60", "5.60"),
            ("+3", "3"),
            (".5", "0.5"),
            ("-.5", "-0.5"),
            ("5.", "5"),
            ("007.20", "7.20"),
            ("-0", "0"),
            (" 12 ", "12"),
            ("0.000", "0.000"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Decimal::parse(input).map(|d| d.0),
                Some(want.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn decimal_rejects_what_is_not_a_plain_number() {
        for input in ["", ".", "-", "1e5", "1.2.3", "abc", "1 2", "1,5", "--1"] {
            assert!(Decimal::parse(input).is_none(), "{input}");
        }
    }

    #[test]
    fn decimal_refuses_more_digits_than_any_measurement_has() {
        let at_limit = "9".repeat(Decimal::MAX_DIGITS);
        let over = "9".repeat(Decimal::MAX_DIGITS + 1);
        assert!(Decimal::parse(&at_limit).is_some());
        assert!(
            Decimal::parse(&format!("000{at_limit}")).is_some(),
            "leading zeros are free"
        );
        assert!(Decimal::parse(&format!("0.{at_limit}")).is_some());
        for too_long in [
            over.clone(),
            format!("0.{over}"),
            format!("{}.{}", "1".repeat(20), "2".repeat(21)),
        ] {
            assert!(Decimal::parse(&too_long).is_none(), "{too_long}");
        }
        // Whatever parses is a JSON number serde_json reads back (420 digits did not).
        let json = format!(
            "[{}]",
            Decimal::parse(&at_limit)
                .map(|d| d.as_str().to_owned())
                .unwrap_or_default()
        );
        assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
        assert!(
            serde_json::from_str::<serde_json::Value>(&format!("[{}]", "9".repeat(420))).is_err()
        );
    }

    #[test]
    fn decimal_serializes_as_a_raw_json_number() {
        let q = Quantity {
            value: Decimal::parse("5.60"),
            ..Quantity::default()
        };
        assert_eq!(
            serde_json::to_string(&q).expect("serializes"),
            r#"{"value":5.60}"#
        );
    }

    #[test]
    fn empty_elements_are_not_written() {
        let obs = Observation {
            status: "final".into(),
            code: CodeableConcept::text("x"),
            ..Observation::default()
        };
        assert_eq!(
            serde_json::to_string(&Resource::Observation(Box::new(obs))).expect("serializes"),
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#
        );
    }

    #[test]
    fn debug_of_a_resource_prints_only_type_and_id() {
        let p = Patient {
            name: vec![HumanName {
                family: Some("Secret".into()),
                ..HumanName::default()
            }],
            ..Patient::default()
        };
        let text = format!("{:?}", Resource::Patient(Box::new(p)));
        assert_eq!(text, "Patient/-");
    }
}
