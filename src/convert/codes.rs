//! Code and unit tables used by the converter, as `const` data with a test each.
//!
//! Sources (protocols.md): coding-system URIs §5.12 (v2 table 0396 → FHIR system); value types
//! §5.3 (table 0125); abnormal flags §5.6 (ConceptMap table 0078 → v3-ObservationInterpretation);
//! result status §5.7 (ConceptMap 0085 → observation-status) and §5.10 (0123 → diagnostic-report
//! status); gender §5.8 (0001 → administrative-gender); name use §5.8 (0200 → name-use); patient
//! class §5.9 (0004 → v3-ActCode); PCD-01 device status flags §4.5; MDC metrics, device objects
//! and units §4.6 (IEEE 11073-10101); UCUM units §5.4. Rows the IG does not map are marked
//! "gateway" and are our decisions (**\[P\]** in protocols.md).

/// FHIR system for LOINC.
pub const LOINC: &str = "http://loinc.org";
/// FHIR system for UCUM.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// FHIR system for IEEE 11073-10101 (MDC).
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// FHIR system for SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";
/// v3 ObservationInterpretation.
pub const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// data-absent-reason.
pub const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
/// observation-category.
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// v2 table 0203 (identifier type).
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// v3 ActCode (encounter class).
pub const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// v3 ParticipationType.
pub const V3_PARTICIPATION_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// v2 coding-system names (table 0396) and OIDs → FHIR system URI (§5.12). `HL7nnnn` is handled
/// by [`coding_system`] itself.
pub const CODING_SYSTEMS: &[(&str, &str)] = &[
    ("LN", LOINC),
    ("LOINC", LOINC),
    ("2.16.840.1.113883.6.1", LOINC),
    ("SCT", SNOMED),
    ("SNM", SNOMED),
    ("SNOMED", SNOMED),
    ("SNOMED-CT", SNOMED),
    ("2.16.840.1.113883.6.96", SNOMED),
    ("MDC", MDC),
    ("2.16.840.1.113883.6.24", MDC),
    ("UCUM", UCUM),
    ("2.16.840.1.113883.6.8", UCUM),
    ("I10", "http://hl7.org/fhir/sid/icd-10"),
    ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("ICD10CM", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("I9CDX", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("C4", "http://www.ama-assn.org/go/cpt"),
    ("CPT", "http://www.ama-assn.org/go/cpt"),
    ("RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"),
    ("NDC", "http://hl7.org/fhir/sid/ndc"),
    ("CVX", "http://hl7.org/fhir/sid/cvx"),
    ("ISO3166_1", "urn:iso:std:iso:3166"),
    ("ISO+", "urn:iso:std:iso:3166"),
];

/// The FHIR system for a v2 coding-system name, when it is a public one. `None` means local
/// (`L`, `99zzz`, unknown names): the caller mints a tenant-scoped URI, never a public one.
pub fn coding_system(name: &str) -> Option<String> {
    let n = name.trim();
    if let Some(&(_, uri)) = CODING_SYSTEMS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(n))
    {
        return Some(uri.to_owned());
    }
    // HL7nnnn (also "HL7 nnnn"): a v2 table.
    let upper = n.to_ascii_uppercase();
    if let Some(rest) = upper.strip_prefix("HL7") {
        let digits = rest.trim_start();
        if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{digits}"));
        }
    }
    None
}

/// How OBX-5 is read, by OBX-2 (table 0125, §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// NM → valueQuantity.
    Numeric,
    /// ST, TX, FT → valueString.
    Text,
    /// CE, CWE, CNE, CF → valueCodeableConcept.
    Coded,
    /// IS, ID → valueCodeableConcept (code only).
    TableCode,
    /// DT, DTM, TS → valueDateTime.
    DateTime,
    /// TM → valueTime.
    Time,
    /// DR → valuePeriod.
    DateRange,
    /// NR → valueRange.
    NumericRange,
    /// SN → per SN rules.
    StructuredNumeric,
    /// NA, MA → valueSampledData.
    NumericArray,
    /// ED → R5 valueAttachment extension.
    EncapsulatedData,
    /// RP → R5 valueAttachment extension (url).
    ReferencePointer,
    /// VR → valueString `low-high`.
    ValueRange,
    /// Types the IG does not map (EI, HD, CX, XAD, XTN, XCN, XON, PN, CP, MO ...) → valueString
    /// of the text (gateway choice, reported).
    Other,
}

/// OBX-2 → value kind.
pub const VALUE_TYPES: &[(&str, ValueKind)] = &[
    ("NM", ValueKind::Numeric),
    ("ST", ValueKind::Text),
    ("TX", ValueKind::Text),
    ("FT", ValueKind::Text),
    ("CE", ValueKind::Coded),
    ("CWE", ValueKind::Coded),
    ("CNE", ValueKind::Coded),
    ("CF", ValueKind::Coded),
    ("IS", ValueKind::TableCode),
    ("ID", ValueKind::TableCode),
    ("DT", ValueKind::DateTime),
    ("DTM", ValueKind::DateTime),
    ("TS", ValueKind::DateTime),
    ("TM", ValueKind::Time),
    ("DR", ValueKind::DateRange),
    ("NR", ValueKind::NumericRange),
    ("SN", ValueKind::StructuredNumeric),
    ("NA", ValueKind::NumericArray),
    ("MA", ValueKind::NumericArray),
    ("ED", ValueKind::EncapsulatedData),
    ("RP", ValueKind::ReferencePointer),
    ("VR", ValueKind::ValueRange),
];

/// The value kind of an OBX-2 code; unknown or other types → [`ValueKind::Other`].
pub fn value_kind(obx2: &str) -> ValueKind {
    VALUE_TYPES
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(obx2.trim()))
        .map_or(ValueKind::Other, |&(_, v)| v)
}

/// Table 0078 codes that map to the same code in v3-ObservationInterpretation (§5.6).
pub const INTERPRETATION_SAME_CODE: &[&str] = &[
    "<", ">", "A", "AA", "B", "CAR", "D", "DET", "E", "EX", "EXP", "H", "HH", "HU", "I", "IE",
    "IND", "L", "LL", "LU", "MS", "N", "NCL", "ND", "NEG", "NR", "NS", "POS", "R", "RR", "S",
    "SDD", "SYN-R", "SYN-S", "U", "UNE", "VS", "W", "WR",
];

/// Table 0078 codes with no v3 equivalent, kept in the v2-0078 system (§5.6, gateway).
pub const INTERPRETATION_V2_ONLY: &[&str] = &["AC", "HM", "OBX", "QCF", "TOX", "null"];

/// An OBX-8 flag, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    /// Maps to v3-ObservationInterpretation with this code.
    V3(&'static str),
    /// Kept as a v2-0078 coding.
    V2(&'static str),
    /// A PCD-01 device measurement-status flag (§4.5), not an interpretation.
    Device(DeviceStatus),
    /// Not in table 0078.
    Unknown,
}

/// Classifies one OBX-8 code (case-sensitive per table 0078, with upper-case fallback).
pub fn flag(code: &str) -> Flag {
    let c = code.trim();
    let upper = c.to_ascii_uppercase();
    if let Some(&v) = INTERPRETATION_SAME_CODE.iter().find(|&&k| k == upper) {
        return Flag::V3(v);
    }
    // Spelled as v2-0078 spells them (`null` in lower case), matched in any case.
    if let Some(&v) = INTERPRETATION_V2_ONLY
        .iter()
        .find(|k| k.eq_ignore_ascii_case(c))
    {
        return Flag::V2(v);
    }
    if let Some(&(_, s)) = DEVICE_STATUS.iter().find(|(k, _)| *k == upper) {
        return Flag::Device(s);
    }
    Flag::Unknown
}

/// PCD-01 measurement status (§4.5) as the gateway acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// INV: invalid → no value, dataAbsentReason `error`.
    Invalid,
    /// NAV: not available → no value, dataAbsentReason `temp-unknown`.
    NotAvailable,
    /// NI: no information → no value, dataAbsentReason `unknown`.
    NoInformation,
    /// OFF: measurement switched off → no value, dataAbsentReason `not-performed`.
    Off,
    /// BUSY: measurement ongoing → no value, dataAbsentReason `temp-unknown`.
    Busy,
    /// TEST / DEMO: not patient data → not converted (reported).
    TestOrDemo,
    /// QUES, CAL, EARLY, ALACT, ALINH: kept as a device-status extension.
    Qualifier,
}

/// PCD-01 OBX-8 device status flags (§4.5).
pub const DEVICE_STATUS: &[(&str, DeviceStatus)] = &[
    ("INV", DeviceStatus::Invalid),
    ("NAV", DeviceStatus::NotAvailable),
    ("NI", DeviceStatus::NoInformation),
    ("OFF", DeviceStatus::Off),
    ("BUSY", DeviceStatus::Busy),
    ("TEST", DeviceStatus::TestOrDemo),
    ("DEMO", DeviceStatus::TestOrDemo),
    ("QUES", DeviceStatus::Qualifier),
    ("CAL", DeviceStatus::Qualifier),
    ("EARLY", DeviceStatus::Qualifier),
    ("ALACT", DeviceStatus::Qualifier),
    ("ALINH", DeviceStatus::Qualifier),
];

impl DeviceStatus {
    /// The dataAbsentReason code for statuses that void the value.
    pub fn data_absent_reason(self) -> Option<&'static str> {
        match self {
            DeviceStatus::Invalid => Some("error"),
            DeviceStatus::NotAvailable | DeviceStatus::Busy => Some("temp-unknown"),
            DeviceStatus::NoInformation => Some("unknown"),
            DeviceStatus::Off => Some("not-performed"),
            DeviceStatus::TestOrDemo | DeviceStatus::Qualifier => None,
        }
    }
}

/// OBX-11 (table 0085) → Observation.status and the dataAbsentReason it implies (§5.7).
pub const OBSERVATION_STATUS: &[(&str, &str, Option<&str>)] = &[
    ("F", "final", None),
    ("P", "preliminary", None),
    ("C", "corrected", None),
    ("A", "amended", None),
    ("D", "entered-in-error", None),
    ("W", "entered-in-error", None),
    ("X", "cancelled", Some("cannot-be-obtained")),
    // gateway rows (the IG is silent):
    ("R", "preliminary", None),
    ("I", "registered", None),
    ("S", "preliminary", None),
    ("U", "final", None),
    ("V", "final", None),
    ("B", "amended", None),
    ("N", "unknown", Some("not-asked")),
    ("O", "registered", None),
];

/// Looks up OBX-11; `None` for codes not in table 0085.
pub fn observation_status(code: &str) -> Option<(&'static str, Option<&'static str>)> {
    OBSERVATION_STATUS
        .iter()
        .find(|(k, _, _)| k.eq_ignore_ascii_case(code.trim()))
        .map(|&(_, s, d)| (s, d))
}

/// OBR-25 (table 0123) → DiagnosticReport.status (§5.10). Y / Z are mapping errors (absent).
pub const REPORT_STATUS: &[(&str, &str)] = &[
    ("O", "registered"),
    ("I", "registered"),
    ("S", "registered"),
    ("P", "preliminary"),
    ("R", "partial"),
    ("F", "final"),
    ("C", "corrected"),
    ("X", "cancelled"),
    ("A", "partial"),
    ("M", "partial"),
    ("N", "registered"),
];

/// Looks up OBR-25.
pub fn report_status(code: &str) -> Option<&'static str> {
    REPORT_STATUS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(code.trim()))
        .map(|&(_, v)| v)
}

/// ASTM R-9 result status (E1394 / LIS2-A2, protocols.md §7.6, gateway column **\[P\]**) →
/// (Observation.status, the dataAbsentReason it implies, whether the code is also kept as an
/// extension because the FHIR status loses its meaning). `N` ("information for a new order")
/// is not a result and not in the table: the caller skips such records.
pub const ASTM_RESULT_STATUS: &[(&str, &str, Option<&str>, bool)] = &[
    ("C", "corrected", None, false),
    ("P", "preliminary", None, false),
    ("F", "final", None, false),
    ("X", "cancelled", Some("cannot-be-obtained"), false),
    ("I", "registered", None, false),
    ("S", "preliminary", None, true),
    ("M", "final", None, true),
    ("R", "final", None, true),
    ("Q", "final", None, true),
    ("V", "final", None, true),
    ("W", "preliminary", None, true),
];

/// Looks up R-9; `None` for codes not in the table.
pub fn astm_result_status(code: &str) -> Option<(&'static str, Option<&'static str>, bool)> {
    ASTM_RESULT_STATUS
        .iter()
        .find(|(k, ..)| k.eq_ignore_ascii_case(code.trim()))
        .map(|&(_, s, d, keep)| (s, d, keep))
}

/// PID-8 (table 0001) → Patient.gender (§5.8).
pub const GENDER: &[(&str, &str)] = &[
    ("F", "female"),
    ("M", "male"),
    ("O", "other"),
    ("U", "unknown"),
    ("A", "other"),
    ("N", "other"),
];

/// Looks up PID-8.
pub fn gender(code: &str) -> Option<&'static str> {
    GENDER
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(code.trim()))
        .map(|&(_, v)| v)
}

/// XPN-7 (table 0200) → HumanName.use (§5.8).
pub const NAME_USE: &[(&str, &str)] = &[
    ("L", "official"),
    ("R", "official"),
    ("D", "usual"),
    ("M", "maiden"),
    ("N", "nickname"),
    ("MSK", "anonymous"),
    ("NAV", "temp"),
    ("TEMP", "temp"),
    ("BAD", "old"),
];

/// Looks up XPN-7.
pub fn name_use(code: &str) -> Option<&'static str> {
    NAME_USE
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(code.trim()))
        .map(|&(_, v)| v)
}

/// PV1-2 (table 0004) → Encounter.class (system, code, display) (§5.9).
pub const PATIENT_CLASS: &[(&str, &str, &str, &str)] = &[
    ("E", V3_ACT_CODE, "EMER", "emergency"),
    ("I", V3_ACT_CODE, "IMP", "inpatient encounter"),
    ("O", V3_ACT_CODE, "AMB", "ambulatory"),
    ("P", V3_ACT_CODE, "PRENC", "pre-admission"),
    (
        "R",
        "http://terminology.hl7.org/CodeSystem/v2-0004",
        "R",
        "Recurring patient",
    ),
    (
        "B",
        "http://terminology.hl7.org/CodeSystem/v2-0004",
        "B",
        "Obstetrics",
    ),
    (
        "C",
        "http://terminology.hl7.org/CodeSystem/v2-0004",
        "C",
        "Commercial Account",
    ),
    (
        "N",
        "http://terminology.hl7.org/CodeSystem/v2-0004",
        "N",
        "Not Applicable",
    ),
    (
        "U",
        "http://terminology.hl7.org/CodeSystem/v2-0004",
        "U",
        "Unknown",
    ),
];

/// Looks up PV1-2.
pub fn patient_class(code: &str) -> Option<(&'static str, &'static str, &'static str)> {
    PATIENT_CLASS
        .iter()
        .find(|(k, ..)| k.eq_ignore_ascii_case(code.trim()))
        .map(|&(_, s, c, d)| (s, c, d))
}

/// One MDC metric (§4.6): code, reference id, UCUM unit, LOINC (vital signs) if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdcMetric {
    /// 32-bit MDC code.
    pub code: &'static str,
    /// Reference id.
    pub reference_id: &'static str,
    /// Typical UCUM unit.
    pub ucum: &'static str,
    /// LOINC vital-signs equivalent.
    pub loinc: Option<&'static str>,
}

const fn metric(
    code: &'static str,
    reference_id: &'static str,
    ucum: &'static str,
    loinc: Option<&'static str>,
) -> MdcMetric {
    MdcMetric {
        code,
        reference_id,
        ucum,
        loinc,
    }
}

/// MDC metrics caregate knows (§4.6). 150020 / 150032 are the compound NIBP / arterial pressure
/// codes (term code of the `_SYS` member minus one), with LOINC 85354-9 (BP panel) for NIBP.
pub const MDC_METRICS: &[MdcMetric] = &[
    metric("147842", "MDC_ECG_HEART_RATE", "/min", Some("8867-4")),
    metric("150456", "MDC_PULS_OXIM_SAT_O2", "%", Some("59408-5")),
    metric("149530", "MDC_PULS_OXIM_PULS_RATE", "/min", Some("8867-4")),
    metric("150020", "MDC_PRESS_BLD_NONINV", "mm[Hg]", Some("85354-9")),
    metric(
        "150021",
        "MDC_PRESS_BLD_NONINV_SYS",
        "mm[Hg]",
        Some("8480-6"),
    ),
    metric(
        "150022",
        "MDC_PRESS_BLD_NONINV_DIA",
        "mm[Hg]",
        Some("8462-4"),
    ),
    metric(
        "150023",
        "MDC_PRESS_BLD_NONINV_MEAN",
        "mm[Hg]",
        Some("8478-0"),
    ),
    metric("150032", "MDC_PRESS_BLD_ART", "mm[Hg]", None),
    metric("150033", "MDC_PRESS_BLD_ART_SYS", "mm[Hg]", None),
    metric("150034", "MDC_PRESS_BLD_ART_DIA", "mm[Hg]", None),
    metric("150035", "MDC_PRESS_BLD_ART_MEAN", "mm[Hg]", None),
    metric("150344", "MDC_TEMP", "Cel", Some("8310-5")),
    metric("151562", "MDC_RESP_RATE", "/min", Some("9279-1")),
    metric("151570", "MDC_AWAY_RESP_RATE", "/min", None),
    metric("151708", "MDC_CONC_AWAY_CO2_ET", "mm[Hg]", None),
    metric("151784", "MDC_PRESS_RESP_PLAT", "cm[H2O]", None),
    metric("151817", "MDC_PRESS_AWAY_INSP_MAX", "cm[H2O]", None),
    metric("151868", "MDC_VOL_AWAY_TIDAL", "mL", None),
    metric("151880", "MDC_VOL_MINUTE_AWAY", "L/min", None),
    metric("151976", "MDC_VENT_PRESS_AWAY_END_EXP_POS", "cm[H2O]", None),
    metric("152196", "MDC_CONC_AWAY_O2_INSP", "%", None),
];

/// Looks up an MDC metric by code.
pub fn mdc_metric(code: &str) -> Option<&'static MdcMetric> {
    MDC_METRICS.iter().find(|m| m.code == code.trim())
}

/// Compound pressures (§4.3 compound values): (compound code, systolic, diastolic, mean).
pub const MDC_COMPOUND_PRESSURE: &[(&str, &str, &str, &str)] = &[
    ("150020", "150021", "150022", "150023"),
    ("150032", "150033", "150034", "150035"),
];

/// The compound code a member metric belongs to, if any.
pub fn mdc_compound_of(code: &str) -> Option<&'static str> {
    let c = code.trim();
    MDC_COMPOUND_PRESSURE
        .iter()
        .find(|(_, s, d, m)| *s == c || *d == c || *m == c)
        .map(|&(p, ..)| p)
}

/// The members (systolic, diastolic, mean) of a compound code.
pub fn mdc_members(compound: &str) -> Option<[&'static str; 3]> {
    MDC_COMPOUND_PRESSURE
        .iter()
        .find(|(p, ..)| *p == compound.trim())
        .map(|&(_, s, d, m)| [s, d, m])
}

/// MDC device objects (partition 1, §4.6).
pub const MDC_DEVICES: &[(&str, &str)] = &[
    ("69965", "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS"),
    ("69798", "MDC_DEV_ECG_VMD"),
    ("69854", "MDC_DEV_METER_PRESS_BLD_VMD"),
    ("69855", "MDC_DEV_METER_PRESS_BLD_CHAN"),
    ("69642", "MDC_DEV_ANALY_SAT_O2_VMD"),
    ("70001", "MDC_DEV_SYS_PT_VENT_MDS"),
    ("70002", "MDC_DEV_SYS_PT_VENT_VMD"),
    ("69985", "MDC_DEV_PUMP_INFUS_MDS"),
];

/// True for an MDC code in the device-object partition (1: 65536..131071).
pub fn is_mdc_device_code(code: &str) -> bool {
    code.trim()
        .parse::<u32>()
        .is_ok_and(|c| (65_536..131_072).contains(&c))
}

/// True for a manufacturer-private MDC term code (term ≥ 0xF000, §4.6).
pub fn is_mdc_private(code: &str) -> bool {
    code.trim()
        .parse::<u32>()
        .is_ok_and(|c| c % 65_536 >= 0xF000)
}

/// MDC units (partition 4) → UCUM (§4.6).
pub const MDC_UNITS: &[(&str, &str, &str)] = &[
    ("262688", "MDC_DIM_PERCENT", "%"),
    ("264864", "MDC_DIM_BEAT_PER_MIN", "/min"),
    ("264928", "MDC_DIM_RESP_PER_MIN", "/min"),
    ("266016", "MDC_DIM_MMHG", "mm[Hg]"),
    ("266048", "MDC_DIM_CM_H2O", "cm[H2O]"),
    ("268192", "MDC_DIM_DEGC", "Cel"),
    ("263762", "MDC_DIM_MILLI_L", "mL"),
    ("265216", "MDC_DIM_X_L_PER_MIN", "L/min"),
    ("263875", "MDC_DIM_KILO_G", "kg"),
    ("263441", "MDC_DIM_CENTI_M", "cm"),
    ("264338", "MDC_DIM_MILLI_SEC", "ms"),
    ("262656", "MDC_DIM_DIMLESS", "1"),
];

/// MDC unit code or reference id → UCUM.
pub fn mdc_unit_to_ucum(code: &str, reference_id: &str) -> Option<&'static str> {
    MDC_UNITS
        .iter()
        .find(|(c, r, _)| *c == code.trim() || (!reference_id.is_empty() && *r == reference_id))
        .map(|&(_, _, u)| u)
}

/// Unit strings that are valid UCUM as written (common lab and vital-sign units).
pub const UCUM_UNITS: &[&str] = &[
    "%",
    "/min",
    "mm[Hg]",
    "cm[H2O]",
    "Cel",
    "[degF]",
    "mL",
    "L",
    "dL",
    "L/min",
    "kg",
    "g",
    "mg",
    "ug",
    "ng",
    "pg",
    "[lb_av]",
    "cm",
    "m",
    "mm",
    "[in_i]",
    "kg/m2",
    "ms",
    "s",
    "min",
    "h",
    "d",
    "wk",
    "mo",
    "a",
    "1",
    "mg/dL",
    "g/dL",
    "g/L",
    "mg/L",
    "ug/L",
    "ng/mL",
    "pg/mL",
    "ug/dL",
    "ng/dL",
    "mmol/L",
    "umol/L",
    "nmol/L",
    "pmol/L",
    "mol/L",
    "meq/L",
    "mosm/kg",
    "[iU]/L",
    "m[iU]/L",
    "[iU]/mL",
    "m[iU]/mL",
    "U/L",
    "U/mL",
    "/uL",
    "10*3/uL",
    "10*6/uL",
    "10*9/L",
    "10*12/L",
    "fL",
    "pg",
    "mm/h",
    "[pH]",
    "mL/min",
    "mL/min/{1.73_m2}",
    "{ratio}",
    "{index}",
    "{titer}",
    "{Copies}/mL",
    "[CFU]/mL",
    "kPa",
    "mbar",
    "[ppm]",
    "mg/(24.h)",
    "g/(24.h)",
    "{beats}/min",
    "{breaths}/min",
    "mL/kg",
    "L/(min.m2)",
];

/// Common non-UCUM unit spellings → UCUM (gateway table; the original stays in `unit`).
pub const UNIT_ALIASES: &[(&str, &str)] = &[
    ("mmHg", "mm[Hg]"),
    ("MMHG", "mm[Hg]"),
    ("bpm", "/min"),
    ("BPM", "/min"),
    ("beats/min", "/min"),
    ("breaths/min", "/min"),
    ("degC", "Cel"),
    ("C", "Cel"),
    ("degF", "[degF]"),
    ("F", "[degF]"),
    ("mEq/L", "meq/L"),
    ("MEQ/L", "meq/L"),
    ("K/uL", "10*3/uL"),
    ("x10E3/uL", "10*3/uL"),
    ("X10E3/UL", "10*3/uL"),
    ("10^3/uL", "10*3/uL"),
    ("M/uL", "10*6/uL"),
    ("x10E6/uL", "10*6/uL"),
    ("10^6/uL", "10*6/uL"),
    ("10^9/L", "10*9/L"),
    ("10^12/L", "10*12/L"),
    ("IU/L", "[iU]/L"),
    ("mIU/L", "m[iU]/L"),
    ("IU/mL", "[iU]/mL"),
    ("mIU/mL", "m[iU]/mL"),
    ("mg/dl", "mg/dL"),
    ("g/dl", "g/dL"),
    ("mmol/l", "mmol/L"),
    ("umol/l", "umol/L"),
    ("fl", "fL"),
    ("sec", "s"),
    ("mm/hr", "mm/h"),
    ("cmH2O", "cm[H2O]"),
    ("lbs", "[lb_av]"),
    ("in", "[in_i]"),
];

/// A unit string → its UCUM code, when known.
pub fn ucum_for(unit: &str) -> Option<&'static str> {
    let u = unit.trim();
    if let Some(&k) = UCUM_UNITS.iter().find(|&&k| k == u) {
        return Some(k);
    }
    UNIT_ALIASES.iter().find(|(k, _)| *k == u).map(|&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coding_systems_map_public_names_and_leave_local_ones_unmapped() {
        assert_eq!(coding_system("LN").as_deref(), Some(LOINC));
        assert_eq!(coding_system("ln").as_deref(), Some(LOINC));
        assert_eq!(coding_system("SCT").as_deref(), Some(SNOMED));
        assert_eq!(coding_system("MDC").as_deref(), Some(MDC));
        assert_eq!(coding_system("UCUM").as_deref(), Some(UCUM));
        assert_eq!(
            coding_system("HL70078").as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0078")
        );
        assert_eq!(
            coding_system("HL7 0136").as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0136")
        );
        assert_eq!(
            coding_system("2.16.840.1.113883.6.1").as_deref(),
            Some(LOINC)
        );
        for local in ["L", "99LAB", "", "HL7007", "ACME"] {
            assert_eq!(coding_system(local), None, "{local}");
        }
        for (name, uri) in CODING_SYSTEMS {
            assert!(uri.starts_with("http") || uri.starts_with("urn:"), "{name}");
        }
    }

    #[test]
    fn value_types_cover_section_5_3() {
        assert_eq!(value_kind("NM"), ValueKind::Numeric);
        assert_eq!(value_kind("FT"), ValueKind::Text);
        assert_eq!(value_kind("CWE"), ValueKind::Coded);
        assert_eq!(value_kind("DTM"), ValueKind::DateTime);
        assert_eq!(value_kind("SN"), ValueKind::StructuredNumeric);
        assert_eq!(value_kind("NA"), ValueKind::NumericArray);
        assert_eq!(value_kind("ED"), ValueKind::EncapsulatedData);
        assert_eq!(value_kind("EI"), ValueKind::Other);
        assert_eq!(value_kind(""), ValueKind::Other);
        assert_eq!(VALUE_TYPES.len(), 22);
    }

    #[test]
    fn abnormal_flags_map_to_v3_v2_or_device_status() {
        assert_eq!(flag("H"), Flag::V3("H"));
        assert_eq!(flag("hh"), Flag::V3("HH"));
        assert_eq!(flag(">"), Flag::V3(">"));
        assert_eq!(flag("POS"), Flag::V3("POS"));
        assert_eq!(flag("QCF"), Flag::V2("QCF"));
        assert_eq!(
            flag("null"),
            Flag::V2("null"),
            "v2-0078 spells it in lower case"
        );
        assert_eq!(flag("NULL"), Flag::V2("null"));
        assert_eq!(flag("INV"), Flag::Device(DeviceStatus::Invalid));
        assert_eq!(flag("DEMO"), Flag::Device(DeviceStatus::TestOrDemo));
        assert_eq!(flag("ZZ"), Flag::Unknown);
        for code in INTERPRETATION_SAME_CODE {
            assert!(!INTERPRETATION_V2_ONLY.contains(code), "{code}");
        }
    }

    #[test]
    fn device_status_flags_void_the_value_only_when_it_is_unusable() {
        assert_eq!(DeviceStatus::Invalid.data_absent_reason(), Some("error"));
        assert_eq!(
            DeviceStatus::Off.data_absent_reason(),
            Some("not-performed")
        );
        assert_eq!(DeviceStatus::Qualifier.data_absent_reason(), None);
        assert_eq!(DEVICE_STATUS.len(), 12);
    }

    #[test]
    fn observation_status_follows_table_0085_and_the_ig() {
        assert_eq!(observation_status("F"), Some(("final", None)));
        assert_eq!(
            observation_status("X"),
            Some(("cancelled", Some("cannot-be-obtained")))
        );
        assert_eq!(
            observation_status("N"),
            Some(("unknown", Some("not-asked")))
        );
        assert_eq!(observation_status("R"), Some(("preliminary", None)));
        assert_eq!(observation_status("W"), Some(("entered-in-error", None)));
        assert_eq!(observation_status("O"), Some(("registered", None)));
        assert_eq!(observation_status("Q"), None);
        assert_eq!(OBSERVATION_STATUS.len(), 15);
    }

    #[test]
    fn astm_result_status_follows_protocols_7_6() {
        assert_eq!(astm_result_status("F"), Some(("final", None, false)));
        assert_eq!(astm_result_status("c"), Some(("corrected", None, false)));
        assert_eq!(
            astm_result_status("X"),
            Some(("cancelled", Some("cannot-be-obtained"), false))
        );
        assert_eq!(astm_result_status("W"), Some(("preliminary", None, true)));
        assert_eq!(astm_result_status("M"), Some(("final", None, true)));
        assert_eq!(astm_result_status("I"), Some(("registered", None, false)));
        assert_eq!(astm_result_status("N"), None);
        assert_eq!(astm_result_status("Z"), None);
    }

    #[test]
    fn report_status_follows_table_0123() {
        assert_eq!(report_status("F"), Some("final"));
        assert_eq!(report_status("R"), Some("partial"));
        assert_eq!(report_status("I"), Some("registered"));
        assert_eq!(report_status("X"), Some("cancelled"));
        assert_eq!(report_status("Y"), None);
    }

    #[test]
    fn gender_name_use_and_patient_class_tables_map_per_the_ig() {
        assert_eq!(gender("F"), Some("female"));
        assert_eq!(gender("A"), Some("other"));
        assert_eq!(gender("X"), None);
        assert_eq!(name_use("L"), Some("official"));
        assert_eq!(name_use("M"), Some("maiden"));
        assert_eq!(name_use("Q"), None);
        assert_eq!(
            patient_class("I"),
            Some((V3_ACT_CODE, "IMP", "inpatient encounter"))
        );
        assert_eq!(patient_class("E").map(|c| c.1), Some("EMER"));
        assert_eq!(patient_class("U").map(|c| c.1), Some("U"));
    }

    #[test]
    fn mdc_codes_are_partition_times_65536_plus_term() {
        // §4.6: MDC_PULS_OXIM_SAT_O2 = 2 * 65536 + 19384.
        assert_eq!(mdc_metric("150456").map(|m| m.code), Some("150456"));
        assert_eq!(2 * 65_536 + 19_384, 150_456);
        for m in MDC_METRICS {
            let c: u32 = m.code.parse().expect("numeric");
            assert_eq!(c / 65_536, 2, "{}", m.reference_id);
        }
        for (c, _) in MDC_DEVICES {
            assert!(is_mdc_device_code(c), "{c}");
        }
        for (c, _, _) in MDC_UNITS {
            let c: u32 = c.parse().expect("numeric");
            assert_eq!(c / 65_536, 4);
        }
        assert!(is_mdc_private(&(2 * 65_536 + 0xF001).to_string()));
        assert!(!is_mdc_private("150456"));
    }

    #[test]
    fn compound_pressures_group_their_members() {
        assert_eq!(mdc_compound_of("150022"), Some("150020"));
        assert_eq!(mdc_compound_of("150035"), Some("150032"));
        assert_eq!(mdc_compound_of("150456"), None);
        assert_eq!(mdc_members("150020"), Some(["150021", "150022", "150023"]));
    }

    #[test]
    fn units_translate_from_mdc_and_common_spellings_to_ucum() {
        assert_eq!(mdc_unit_to_ucum("262688", ""), Some("%"));
        assert_eq!(mdc_unit_to_ucum("", "MDC_DIM_MMHG"), Some("mm[Hg]"));
        assert_eq!(mdc_unit_to_ucum("1", ""), None);
        assert_eq!(ucum_for("mg/dL"), Some("mg/dL"));
        assert_eq!(ucum_for("K/uL"), Some("10*3/uL"));
        assert_eq!(ucum_for("mmHg"), Some("mm[Hg]"));
        assert_eq!(ucum_for("furlongs"), None);
        for (_, u) in UNIT_ALIASES {
            assert!(UCUM_UNITS.contains(u), "{u}");
        }
    }
}
