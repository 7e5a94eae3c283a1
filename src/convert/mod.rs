//! HL7 v2 message (and ASTM E1394 message, [`convert_astm`]) → FHIR R4 transaction [`Bundle`].
//!
//! Spec: the HL7 v2-to-FHIR IG (message map ORU_R01, segment maps PID/PV1/OBR/OBX/NTE/SPM,
//! datatype and vocabulary ConceptMaps), IHE PCD-01 for device observations, FHIR R4
//! transaction Bundles — as digested in protocols.md §4-6. Gateway decisions where the IG is
//! silent are marked **\[P\]** there and documented where they are taken.
//!
//! ```text
//!   raw bytes ──charset::decode──▶ &str ──Message::parse──▶ hl7::Message
//!        │                                                     │
//!        └──────────────── convert_bytes ──────────────────────┤ to_bundle(ctx, msg)
//!                                                              ▼
//!              ORU^R01 (oru.rs, pcd.rs) · ADT^A01/A04/A08 (adt.rs) · else Error::Unsupported
//!                                                              ▼
//!                              Conversion { bundle: fhir::Bundle, report: Report }
//!
//!   ASTM text ──astm::record::Message::parse──▶ convert_astm (astm.rs) ──▶ Conversion
//! ```
//!
//! ASTM results have no message control id to hang ids on: their Observation ids come from the
//! natural key of protocols.md §7.7 (instrument, specimen, test, completion time), and Patient,
//! Specimen and Device go by identifier.
//!
//! Invariants:
//! - **Pure.** No clock, no randomness, no I/O: the output is a function of the message and
//!   the [`Context`]. Converting the same message twice gives byte-identical JSON.
//! - **Idempotent at the server.** Observation, DiagnosticReport and Specimen ids are UUIDv5 of
//!   tenant + source + MSH-10 + segment position, sent with `PUT Type/<id>`; Patient, Encounter
//!   and Device go by identifier (conditional create from results, conditional update from ADT,
//!   so an A08 updates rather than duplicates). See [`crate::fhir::bundle`].
//! - **Nothing silently dropped.** Every OBX becomes an Observation, or a component of one, or
//!   is listed in [`Report::obx_not_converted`] with a reason; segments and fields that were
//!   not mapped are counted in [`Report::unmapped_segments`] / [`Report::unmapped_fields`].
//! - **No PHI in errors or the report.** Both carry segment ids, positions and codes from HL7
//!   tables, never values from the message.

pub mod cli;
pub mod codes;
pub mod datatype;
pub mod id;
pub mod time;

mod adt;
mod astm;
mod oru;
mod party;
mod pcd;
mod reading;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fhir::Bundle;
use crate::hl7::{self, Message, Segment};

/// What a conversion needs besides the message (all from configuration).
pub struct Context<'a> {
    /// Tenant id, e.g. `north`.
    pub tenant: &'a str,
    /// Configured source name, e.g. `lab-lis`.
    pub source: &'a str,
    /// Facility zone: a DTM without offset is read in it (tenant `timezone`, overridable per
    /// source).
    pub timezone: &'a jiff::tz::TimeZone,
    /// Assigning authority (CX.4.1 or CX.4.2) → identifier system URI, from tenant config.
    pub identifier_systems: &'a BTreeMap<String, String>,
    /// Base URI for caregate-minted systems (`urn:caregate`, `https://caregate.local`); local
    /// codes and unconfigured authorities get a tenant-scoped system under it.
    pub system_base: &'a str,
}

/// The result of converting one message.
#[derive(Debug)]
pub struct Conversion {
    /// The transaction Bundle.
    pub bundle: Bundle,
    /// What was and was not converted.
    pub report: Report,
}

/// Why an OBX did not become an Observation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum ObxReason {
    /// OBX-3 has neither a code nor a text.
    MissingCode,
    /// A PCD-01 device-hierarchy row (MDS/VMD/channel): became a Device, or structure only.
    DeviceHierarchy,
    /// Merged as a component into the Observation made from the OBX at `into_segment`
    /// (compound device values such as blood pressure).
    Component {
        /// 1-based segment index of the OBX whose Observation holds it.
        into_segment: usize,
    },
    /// Flagged TEST or DEMO by the device (§4.5): not patient data.
    DeviceTestData,
    /// ASTM R-9 `N`: the record carries information for a new order, not a result (§7.6).
    NotAResult,
}

/// One OBX that is not an Observation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ObxOutcome {
    /// 1-based segment index in the message (MSH = 1).
    pub segment: usize,
    /// Why.
    #[serde(flatten)]
    pub reason: ObxReason,
}

/// A value that could not be mapped as it stands (the element is omitted or degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    /// Not a valid HL7 date/time (element omitted).
    InvalidDateTime,
    /// Local time in a DST gap/fold of the facility zone (earlier offset taken).
    AmbiguousLocalTime,
    /// A date where an instant is needed (element omitted).
    ImpreciseInstant,
    /// NM value that is not a number (kept as valueString).
    NotNumeric,
    /// A value type the IG does not map (kept as valueString).
    ValueTypeAsString,
    /// OBX-2 empty while OBX-5 is valued (kept as valueString).
    MissingValueType,
    /// Code not in its HL7 table (element omitted or kept as a local coding).
    UnknownTableCode,
    /// Required code missing (a fallback was used).
    MissingRequired,
    /// Identifier authority not in the tenant's `identifier_systems` (a derived system was used).
    UnconfiguredAuthority,
    /// No usable patient identifier: no Patient resource, results have no subject.
    PatientNotIdentified,
    /// PV1 without a visit number (PV1-19): no Encounter (§5.9).
    EncounterNotIdentified,
    /// Only the first repetition could be used (FHIR element is 0..1).
    RepetitionsDropped,
    /// Encapsulated data that is not valid for its declared encoding.
    InvalidEncapsulatedData,
    /// An offset on a TM value was dropped (FHIR time has none).
    TimeOffsetDropped,
    /// ASTM: a record out of the E1394 order (kept under an implicit parent) or after the
    /// terminator (ignored).
    UnexpectedRecord,
    /// ASTM: two results share a natural key; the later one's id also holds its record number.
    DuplicateNaturalKey,
    /// An hour-only time (`2024010509`) was written `09:00:00` (FHIR has no hour precision).
    PrecisionPadded,
    /// A unit (OBX-6, ASTM R-5) came with a value that is not a quantity (text, a code, a
    /// number that does not parse): the value is kept, the unit is not in the resource.
    UnitNotCarried,
    /// OBX-11 `C`, `D` or `W`, or OBR-25 `C`: the message corrects or withdraws a result sent
    /// before. Resource ids derive from the message's own control id, so it arrives as a new
    /// resource and the earlier one stays as it was at the server, until the platform links
    /// them (DiagnosticReport identifier `FILL`, OBX-21).
    CorrectionAsNewResource,
}

impl WarningKind {
    /// The kebab-case name (as serialized; used as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::InvalidDateTime => "invalid-date-time",
            WarningKind::AmbiguousLocalTime => "ambiguous-local-time",
            WarningKind::ImpreciseInstant => "imprecise-instant",
            WarningKind::NotNumeric => "not-numeric",
            WarningKind::ValueTypeAsString => "value-type-as-string",
            WarningKind::MissingValueType => "missing-value-type",
            WarningKind::UnknownTableCode => "unknown-table-code",
            WarningKind::MissingRequired => "missing-required",
            WarningKind::UnconfiguredAuthority => "unconfigured-authority",
            WarningKind::PatientNotIdentified => "patient-not-identified",
            WarningKind::EncounterNotIdentified => "encounter-not-identified",
            WarningKind::RepetitionsDropped => "repetitions-dropped",
            WarningKind::InvalidEncapsulatedData => "invalid-encapsulated-data",
            WarningKind::TimeOffsetDropped => "time-offset-dropped",
            WarningKind::UnexpectedRecord => "unexpected-record",
            WarningKind::DuplicateNaturalKey => "duplicate-natural-key",
            WarningKind::PrecisionPadded => "precision-padded",
            WarningKind::UnitNotCarried => "unit-not-carried",
            WarningKind::CorrectionAsNewResource => "correction-as-new-resource",
        }
    }
}

/// One warning, located by segment position and field, never by value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// 1-based segment index in the message.
    pub segment: usize,
    /// Field, e.g. `OBX-14`.
    pub field: String,
    /// What happened.
    pub kind: WarningKind,
}

/// What a conversion did and did not map. Holds no values from the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// MSH-9.1^MSH-9.2, e.g. `ORU^R01` (`ASTM^E1394` for ASTM messages).
    pub message_type: String,
    /// OBX segments in the message (R records for ASTM; `segment` positions in this report
    /// are then ASTM record numbers, H = 1, and fields are written `R-4`).
    pub obx_in: usize,
    /// Observations in the Bundle.
    pub observations_out: usize,
    /// OBX segments that are not an Observation of their own, with the reason.
    pub obx_not_converted: Vec<ObxOutcome>,
    /// Segments not mapped, by segment id.
    pub unmapped_segments: BTreeMap<String, usize>,
    /// Valued fields not mapped, by `SEG-n`.
    pub unmapped_fields: BTreeMap<String, usize>,
    /// Degraded or omitted values.
    pub warnings: Vec<Warning>,
}

impl Report {
    pub(crate) fn warn(&mut self, segment: usize, field: impl Into<String>, kind: WarningKind) {
        self.warnings.push(Warning {
            segment,
            field: field.into(),
            kind,
        });
    }

    pub(crate) fn unmapped_segment(&mut self, id: &str) {
        *self.unmapped_segments.entry(id.to_owned()).or_default() += 1;
    }

    /// Counts every valued field of `seg` whose number is not in `mapped`.
    pub(crate) fn unmapped_fields_of(&mut self, seg: &Segment<'_>, mapped: &[usize]) {
        let start = if seg.id() == "MSH" { 3 } else { 1 };
        // Field numbers below 128 as a bit set: one test per field instead of a search.
        let mask = mapped
            .iter()
            .filter(|&&n| n < 128)
            .fold(0u128, |m, &n| m | (1u128 << n));
        let is_mapped = |n: usize| {
            if n < 128 {
                mask & (1u128 << n) != 0
            } else {
                mapped.contains(&n)
            }
        };
        for (i, f) in seg.fields().enumerate() {
            let n = i + 1;
            if n >= start && !f.is_empty() && !is_mapped(n) {
                *self
                    .unmapped_fields
                    .entry(format!("{}-{n}", seg.id()))
                    .or_default() += 1;
            }
        }
    }
}

/// Why a message was not converted. Never holds a value from the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a parseable HL7 v2 message.
    #[error("not a valid HL7 v2 message")]
    Hl7(#[from] hl7::Error),
    /// The bytes are not a parseable ASTM E1394 message.
    #[error("not a valid ASTM E1394 message")]
    Astm(#[from] crate::astm::record::Error),
    /// A device reading that cannot be converted (names the field, never its value).
    #[error("device reading: {field}: {reason}")]
    Reading {
        /// The Reading field, e.g. `time`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A message type caregate does not convert (the caller keeps it as unconverted).
    #[error("message type {message_type} is not converted")]
    Unsupported {
        /// MSH-9.1^MSH-9.2, restricted to table characters.
        message_type: String,
    },
}

/// Which FHIR date/time type a value is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeKind {
    DateTime,
    Instant,
    Date,
}

/// Converts the DTM in component 1 of `c` (TS.1 or a plain DTM), reporting problems at
/// `segment`/`field`. `None` when empty or not convertible.
pub(crate) fn convert_time(
    ctx: &Context<'_>,
    report: &mut Report,
    segment: usize,
    field: &str,
    raw: &str,
    kind: TimeKind,
) -> Option<String> {
    time_outcome(ctx, raw, kind).report(report, segment, field)
}

/// What converting one date/time gave, before it is reported (so a message's converter can
/// reuse it for the same text in another segment: [`TimeOutcome::report`] then reports it
/// there exactly as [`convert_time`] would have).
#[derive(Clone)]
pub(crate) enum TimeOutcome {
    /// Empty or the HL7 null: no value, no warning.
    Empty,
    /// Not a valid HL7 date/time.
    Invalid,
    /// A date where an instant is needed.
    Imprecise,
    /// Converted (`ambiguous`: local time in a DST gap or fold; `padded`: an hour-only value
    /// got `:00:00`, which FHIR cannot tell from a real minute and second).
    Text {
        text: String,
        ambiguous: bool,
        padded: bool,
    },
}

impl TimeOutcome {
    /// Records the warning this outcome carries at `segment`/`field`; the value, if any.
    pub(crate) fn report(self, report: &mut Report, segment: usize, field: &str) -> Option<String> {
        match self {
            TimeOutcome::Empty => None,
            TimeOutcome::Invalid => {
                report.warn(segment, field, WarningKind::InvalidDateTime);
                None
            }
            TimeOutcome::Imprecise => {
                report.warn(segment, field, WarningKind::ImpreciseInstant);
                None
            }
            TimeOutcome::Text {
                text,
                ambiguous,
                padded,
            } => {
                if ambiguous {
                    report.warn(segment, field, WarningKind::AmbiguousLocalTime);
                }
                if padded {
                    report.warn(segment, field, WarningKind::PrecisionPadded);
                }
                Some(text)
            }
        }
    }
}

/// Converts one date/time without reporting (see [`convert_time`]).
pub(crate) fn time_outcome(ctx: &Context<'_>, raw: &str, kind: TimeKind) -> TimeOutcome {
    let raw = raw.trim();
    if raw.is_empty() || raw == "\"\"" {
        return TimeOutcome::Empty;
    }
    let Ok(dtm) = time::parse(raw) else {
        return TimeOutcome::Invalid;
    };
    let converted = match kind {
        TimeKind::Date => {
            return TimeOutcome::Text {
                text: dtm.to_date(),
                ambiguous: false,
                padded: false,
            };
        }
        TimeKind::DateTime => dtm.to_date_time(ctx.timezone),
        TimeKind::Instant => match dtm.to_instant(ctx.timezone) {
            Ok(c) => c,
            Err(_) => return TimeOutcome::Imprecise,
        },
    };
    TimeOutcome::Text {
        text: converted.text,
        ambiguous: converted.ambiguous,
        padded: dtm.precision() == time::Precision::Hour,
    }
}

/// MSH-9 as `CODE^EVENT`, keeping only characters that can appear in table 0076/0003 codes so
/// nothing else from the message can leak through an error.
fn message_type(code: &str, event: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(8)
            .collect()
    };
    format!("{}^{}", clean(code), clean(event))
}

/// Converts one parsed message.
pub fn to_bundle(ctx: &Context<'_>, message: &Message<'_>) -> Result<Conversion, Error> {
    let header = message.header()?;
    let message_type = message_type(header.message_code, header.trigger_event);
    let code = header.message_code.trim().to_ascii_uppercase();
    let event = header.trigger_event.trim().to_ascii_uppercase();
    let mut report = Report {
        message_type: message_type.clone(),
        ..Report::default()
    };
    let sender_zone = message_zone(ctx.timezone, header.date_time);
    let with_sender_zone;
    let ctx = match &sender_zone {
        Some(timezone) => {
            with_sender_zone = Context { timezone, ..*ctx };
            &with_sender_zone
        }
        None => ctx,
    };
    let bundle = match (code.as_str(), event.as_str()) {
        ("ORU", "R01") => oru::convert(ctx, message, &header, &mut report)?,
        ("ADT", "A01" | "A04" | "A08") => adt::convert(ctx, message, &header, &mut report)?,
        _ => return Err(Error::Unsupported { message_type }),
    };
    report.observations_out = bundle.count("Observation");
    Ok(Conversion { bundle, report })
}

/// The zone a message's times without an offset are read in (§5.13): the offset of MSH-7 when
/// it has one (rule 2: the sender's own statement) and the facility zone gives another offset
/// at that time; `None` (keep the facility zone, which also knows DST on other dates) when
/// MSH-7 has no offset or the zone agrees with it.
fn message_zone(facility: &jiff::tz::TimeZone, msh7: &str) -> Option<jiff::tz::TimeZone> {
    let dtm = time::parse(msh7.trim()).ok()?;
    let sent = dtm.offset_minutes()?;
    if dtm.zone_offset_minutes(facility) == sent {
        return None;
    }
    let offset = jiff::tz::Offset::from_seconds(sent.checked_mul(60)?).ok()?;
    Some(jiff::tz::TimeZone::fixed(offset))
}

/// Decodes (UTF-8, else ISO 8859-1), parses and converts one ASTM E1394 message (H … L), as
/// the ASTM link layer delivers it. See `astm.rs` in this module for the mapping.
pub fn convert_astm(ctx: &Context<'_>, raw: &[u8]) -> Result<Conversion, Error> {
    let text = crate::astm::record::decode(raw);
    let message = crate::astm::record::Message::parse(&text)?;
    let mut report = Report {
        message_type: astm::MESSAGE_TYPE.to_owned(),
        ..Report::default()
    };
    let bundle = astm::convert(ctx, &message, &mut report);
    report.observations_out = bundle.count("Observation");
    Ok(Conversion { bundle, report })
}

/// Decodes (MSH-18 charset, Latin-1 fallback), parses and converts one message's bytes.
pub fn convert_bytes(ctx: &Context<'_>, raw: &[u8]) -> Result<Conversion, Error> {
    let (text, _) = hl7::charset::decode(raw, hl7::Charset::Latin1)?;
    let message = Message::parse(&text)?;
    to_bundle(ctx, &message)
}

/// Converts one device [`crate::reading::Reading`] (JSON, as stored for
/// [`crate::envelope::Kind::Reading`]) to Device, Patient and Observation (see `reading.rs`).
pub fn convert_reading(ctx: &Context<'_>, raw: &[u8]) -> Result<Conversion, Error> {
    reading::convert(ctx, raw)
}

/// Whether a Reading `time` is RFC 3339 with seconds and an offset (what the converter takes).
pub fn valid_reading_time(text: &str) -> bool {
    reading::parse_time(text).is_some()
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Context and field builders for unit tests.
    use std::collections::BTreeMap;

    use super::Context;
    use crate::hl7::{Field, Message};

    /// Runs `f` with the test context: tenant `north`, source `lab-lis`, Europe/Berlin,
    /// `HOSP` → `https://hospital.example/mrn`, `HOSPVN` → `https://hospital.example/visit`,
    /// base `urn:caregate` (the same as tests/it/convert.rs).
    pub fn ctx_with<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
        let tz = jiff::tz::TimeZone::get("Europe/Berlin").expect("tzdb has Europe/Berlin");
        let mut systems = BTreeMap::new();
        systems.insert("HOSP".to_owned(), "https://hospital.example/mrn".to_owned());
        systems.insert(
            "HOSPVN".to_owned(),
            "https://hospital.example/visit".to_owned(),
        );
        let ctx = Context {
            tenant: "north",
            source: "lab-lis",
            timezone: &tz,
            identifier_systems: &systems,
            system_base: "urn:caregate",
        };
        f(&ctx)
    }

    /// Field 1 of a `ZZZ` segment holding `raw`, with default delimiters.
    pub fn field(raw: &str) -> Field<'static> {
        let text: &'static str =
            Box::leak(format!("MSH|^~\\&|||||||ZZZ^Z01|1|P|2.5\rZZZ|{raw}").into_boxed_str());
        let msg: &'static Message<'static> =
            Box::leak(Box::new(Message::parse(text).expect("test message parses")));
        msg.segment("ZZZ").expect("has ZZZ").field(1)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::ctx_with;
    use super::*;

    #[test]
    fn warning_kind_names_match_their_serialization() {
        use super::WarningKind as W;
        for k in [
            W::InvalidDateTime,
            W::AmbiguousLocalTime,
            W::ImpreciseInstant,
            W::NotNumeric,
            W::ValueTypeAsString,
            W::MissingValueType,
            W::UnknownTableCode,
            W::MissingRequired,
            W::UnconfiguredAuthority,
            W::PatientNotIdentified,
            W::EncounterNotIdentified,
            W::CorrectionAsNewResource,
            W::RepetitionsDropped,
            W::InvalidEncapsulatedData,
            W::TimeOffsetDropped,
            W::UnexpectedRecord,
            W::DuplicateNaturalKey,
            W::PrecisionPadded,
            W::UnitNotCarried,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn unsupported_message_types_are_an_error_naming_only_the_type() {
        let raw = b"MSH|^~\\&|A|B|C|D|20240101||SIU^S12|1|P|2.5\rPID|||SECRET^^^HOSP\r";
        let err = ctx_with(|ctx| convert_bytes(ctx, raw)).expect_err("SIU is not converted");
        assert_eq!(err.to_string(), "message type SIU^S12 is not converted");
    }

    #[test]
    fn non_hl7_input_is_an_hl7_error() {
        let err = ctx_with(|ctx| convert_bytes(ctx, b"{\"resourceType\":\"Patient\"}"))
            .expect_err("not HL7");
        assert!(matches!(err, Error::Hl7(_)));
    }

    /// `effectiveDateTime` of every Observation of an ORU^R01 sent at `msh7` with OBX-14 values
    /// `obx14`, converted in the test context (Europe/Berlin).
    fn effective_times(msh7: &str, obx14: &[&str]) -> Vec<String> {
        let obx: Vec<String> = obx14
            .iter()
            .enumerate()
            .map(|(i, t)| format!("OBX|{}|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||{t}", i + 1))
            .collect();
        let obx: Vec<&str> = obx.iter().map(String::as_str).collect();
        observations_sent_at(msh7, &obx)
            .0
            .iter()
            .map(|o| o["effectiveDateTime"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn times_without_an_offset_take_msh7s_offset_when_the_zone_disagrees() {
        // §5.13 rule 2: the sender says -05:00; the facility zone (Berlin, +01:00) is not it.
        assert_eq!(
            effective_times(
                "20240105103000-0500",
                &["20240105102500", "20240105102600+0000"]
            ),
            ["2024-01-05T10:25:00-05:00", "2024-01-05T10:26:00+00:00"]
        );
        // MSH-7 agrees with the zone: the zone stays, and knows that July is +02:00.
        assert_eq!(
            effective_times("20240105103000+0100", &["20240105102500", "20240705102500"]),
            ["2024-01-05T10:25:00+01:00", "2024-07-05T10:25:00+02:00"]
        );
        // No offset in MSH-7: the facility zone.
        assert_eq!(
            effective_times("20240105103000", &["20240105102500"]),
            ["2024-01-05T10:25:00+01:00"]
        );
    }

    /// The Observations (JSON) and the report of an ORU^R01 holding `obx` segments.
    fn observations(obx: &[&str]) -> (Vec<serde_json::Value>, Report) {
        observations_sent_at("20240105103000+0100", obx)
    }

    /// [`observations`] of a message whose MSH-7 is `msh7`.
    fn observations_sent_at(msh7: &str, obx: &[&str]) -> (Vec<serde_json::Value>, Report) {
        let mut raw = format!(
            "MSH|^~\\&|LAB|HOSP|GW|HOSP|{msh7}||ORU^R01|T2|P|2.5\rPID|||MRN1^^^HOSP^MR\rOBR|1||F1|24331-1^Lipid^LN\r"
        );
        for o in obx {
            raw.push_str(o);
            raw.push('\r');
        }
        let conv = ctx_with(|ctx| convert_bytes(ctx, raw.as_bytes())).expect("converts");
        let v: serde_json::Value = serde_json::from_str(&conv.bundle.to_json()).expect("JSON");
        let obs = v["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .map(|e| e["resource"].clone())
            .collect();
        (obs, conv.report)
    }

    fn warned(report: &Report, field: &str, kind: WarningKind) -> bool {
        report
            .warnings
            .iter()
            .any(|w| w.field == field && w.kind == kind)
    }

    #[test]
    fn a_compared_number_keeps_its_comparator_and_unit() {
        let (obs, report) = observations(&[
            "OBX|1|NM|1988-5^CRP^LN||<0.5|mg/L|0-5|N|||F",
            "OBX|2|NM|2160-0^Creatinine^LN||>= 12.5|mg/dL|||||F",
        ]);
        let q = &obs[0]["valueQuantity"];
        assert_eq!(
            (q["comparator"].as_str(), q["value"].as_f64()),
            (Some("<"), Some(0.5))
        );
        assert_eq!(q["unit"], "mg/L");
        assert_eq!(obs[1]["valueQuantity"]["comparator"], ">=");
        assert_eq!(obs[1]["valueQuantity"]["value"].as_f64(), Some(12.5));
        assert!(
            report.warnings.iter().all(|w| w.field == "OBR-25"),
            "no value warning: {:?}",
            report.warnings
        );
    }

    #[test]
    fn a_unit_the_value_cannot_carry_is_reported_not_dropped_silently() {
        let (obs, report) = observations(&[
            "OBX|1|ST|2160-0^Creatinine^LN||<0.20|mg/dL|0.57-1.00|L|||F",
            "OBX|2|NM|2823-3^Potassium^LN||4,1|mmol/L|||||F",
            "OBX|3|ST|5778-6^Color^LN||yellow||||||F",
            "OBX|4|NM|2345-7^Glucose^LN||90|mg/dL|||||F",
        ]);
        assert_eq!(obs[0]["valueString"], "<0.20");
        assert_eq!(obs[1]["valueString"], "4,1");
        let unit_warnings: Vec<usize> = report
            .warnings
            .iter()
            .filter(|w| w.kind == WarningKind::UnitNotCarried)
            .map(|w| w.segment)
            .collect();
        assert_eq!(unit_warnings.len(), 2, "{:?}", report.warnings);
        assert!(warned(&report, "OBX-6", WarningKind::UnitNotCarried));
        assert!(warned(&report, "OBX-5", WarningKind::NotNumeric));
    }

    #[test]
    fn a_correction_or_withdrawal_is_reported_as_a_new_resource() {
        let (obs, report) = observations(&[
            "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F",
            "OBX|2|NM|2345-7^Glucose^LN||95|mg/dL|||||C",
            "OBX|3|NM|2823-3^Potassium^LN||4.1|mmol/L|||||d",
            "OBX|4|NM|2160-0^Creatinine^LN||0.9|mg/dL|||||W",
            "OBX|5|NM|1988-5^CRP^LN||1|mg/L|||||P",
        ]);
        let statuses: Vec<&str> = obs.iter().filter_map(|o| o["status"].as_str()).collect();
        assert_eq!(
            statuses,
            [
                "final",
                "corrected",
                "entered-in-error",
                "entered-in-error",
                "preliminary"
            ]
        );
        let at: Vec<usize> = report
            .warnings
            .iter()
            .filter(|w| w.kind == WarningKind::CorrectionAsNewResource)
            .map(|w| w.segment)
            .collect();
        // MSH, PID, OBR, then the OBX: segments 5, 6 and 7.
        assert_eq!(at, [5, 6, 7], "{:?}", report.warnings);
        assert!(warned(
            &report,
            "OBX-11",
            WarningKind::CorrectionAsNewResource
        ));

        let raw = "MSH|^~\\&|LAB|HOSP|GW|HOSP|20240105103000+0100||ORU^R01|T3|P|2.5\r\
                   PID|||MRN1^^^HOSP^MR\rOBR|1||F1|24331-1^Lipid^LN|||||||||||||||||||||C\r\
                   OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F\r";
        let conv = ctx_with(|ctx| convert_bytes(ctx, raw.as_bytes())).expect("converts");
        assert!(
            warned(&conv.report, "OBR-25", WarningKind::CorrectionAsNewResource),
            "{:?}",
            conv.report.warnings
        );
        assert!(conv.bundle.to_json().contains(r#""status":"corrected""#));
    }

    #[test]
    fn an_abnormal_flag_sent_as_text_only_is_kept_and_reported() {
        let (obs, report) =
            observations(&["OBX|1|NM|2345-7^Glucose^LN||190|mg/dL|70-99|^High|||F"]);
        assert_eq!(obs[0]["interpretation"][0]["text"], "High", "{}", obs[0]);
        assert!(warned(&report, "OBX-8", WarningKind::MissingRequired));
    }

    #[test]
    fn an_hour_only_time_is_padded_and_reported() {
        let (obs, report) =
            observations(&["OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||2024010509"]);
        assert_eq!(obs[0]["effectiveDateTime"], "2024-01-05T09:00:00+01:00");
        assert!(warned(&report, "OBX-14", WarningKind::PrecisionPadded));
        let (_, report) =
            observations(&["OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||202401050930"]);
        assert!(!warned(&report, "OBX-14", WarningKind::PrecisionPadded));
    }

    #[test]
    fn a_second_equipment_identifier_is_reported() {
        let (_, report) = observations(&[
            "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||||||ANA1^^1.2.3^ISO~ANA2^^1.2.3^ISO",
        ]);
        assert!(warned(&report, "OBX-18", WarningKind::RepetitionsDropped));
        let (_, report) =
            observations(&["OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||||||ANA1^^1.2.3^ISO"]);
        assert!(!warned(&report, "OBX-18", WarningKind::RepetitionsDropped));
    }

    #[test]
    fn a_number_of_hundreds_of_digits_stays_text_and_the_bundle_parses() {
        // Found by fuzzing (convert_astm, 9.47 M executions): such a range bound or value made
        // a Bundle that serde_json refuses ("number out of range").
        let huge = "9".repeat(420);
        let obx = format!("OBX|1|NM|2345-7^Glucose^LN||{huge}|mg/dL|1-{huge}|||F");
        let (obs, report) = observations(&[obx.as_str()]);
        assert_eq!(obs[0]["valueString"].as_str(), Some(huge.as_str()));
        assert!(warned(&report, "OBX-5", WarningKind::NotNumeric));
        assert!(obs[0]["referenceRange"][0].get("high").is_none());
        assert_eq!(
            obs[0]["referenceRange"][0]["text"].as_str(),
            Some(format!("1-{huge}").as_str())
        );
    }

    #[test]
    fn message_type_keeps_only_table_characters() {
        assert_eq!(message_type("OR U", "R01<x>"), "ORU^R01x");
    }
}
