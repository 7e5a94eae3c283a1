//! ASTM E1394 (LIS2-A2) message → Device, Patient, Specimen, Observation (protocols.md §7.6,
//! and the gateway mapping of §7.7, which no standard defines).
//!
//! | ASTM | FHIR |
//! |---|---|
//! | H-5 sender `manufacturer^model^version^serial` | Device (conditional create by identifier: serial, else name, else the source name) |
//! | H-12 processing id `Q`/`T`/`D` | `meta.tag` on every Observation (first character decides: Mindray sends `PR`) |
//! | H-14 | Observation.issued when R-13 gives none |
//! | P-3 / P-4 / P-5 | Patient.identifier, systems configured under the authority names `ASTM-P3`, `ASTM-P4`, `ASTM-P5` (conditional create by the first valued one, like ORU results) |
//! | P-6, P-7, P-8, P-9, P-11, P-13 | name, mothersMaidenName extension, birthDate (+ birthTime), gender, address, telecom |
//! | O-3 (else O-4) | Specimen (conditional create by identifier; O-3 system configured as `ASTM-O3`) |
//! | O-8 / O-9, O-15, O-16 `type^source` | collection time/period, receivedTime, type (local code), collection.bodySite (text) |
//! | R | Observation, `PUT Observation/<natural-key id>` |
//! | R-3 `universal id^name^type^local code` | code: LOINC when component 1 is a valid LOINC (format and check digit); local coding with the component-1 code when it is not LOINC (Mindray, Ortho put their code there), else component 4; text = component 2 |
//! | R-4 / R-5 | valueQuantity (comparator from a leading `<`, `<=`, `>=`, `>`; UCUM system/code when the unit is UCUM or a known alias, else the unit text only) or valueString |
//! | R-6 | referenceRange (`a to b`, `a-b`, `a^b`, `<x`, `>x`; text always) |
//! | R-7 | interpretation through the table-0078 mapping used for OBX-8 |
//! | R-9 | status (table `codes::ASTM_RESULT_STATUS`; `N` is not a result, reported) |
//! | R-11 `operator^verifier` | performer (by identifier) |
//! | R-13 (else R-12) | effectiveDateTime; R-13 also `issued` |
//! | R-14 | Observation.device (Device by identifier), else the H-5 Device |
//! | C after R | Observation.note; C elsewhere is counted as an unmapped record |
//!
//! Identity: the Observation id is the caregate UUID of
//! `tenant ␟ source ␟ astm ␟ Observation ␟ instrument ␟ specimen ␟ test ␟ time`, where
//! instrument = R-14 component 1 (else the H-5 Device identifier value), specimen = O-3
//! component 1 (else O-4), test = R-3 without its name component (so replicate and dilution
//! components count) and time = R-13 (else R-12). A resend or a re-run of the same result
//! updates one resource; a correction (R-9 `C`) with the same completion time replaces it.
//! When a result has neither a specimen id nor a time, H-3, H-14 and the record number are
//! added (reported), so unrelated results never share an id; two results of one message with
//! the same key get their record number added too (reported).
//!
//! Local code systems are scoped by tenant and source (one ASTM source is one analyzer link):
//! `<system_base>:<tenant>:astm:<source>:test` and likewise `device`, `specimen-type`,
//! `abnormal-flag`, `operator`, `instrument-specimen`.
//!
//! Nothing is dropped silently: R records without a code or with R-9 `N` are in
//! [`Report::obx_not_converted`]; unused fields, components (`R-3.5`) and records (`C`, `Q`,
//! `M`, `S`, unknown types as `?`) are counted; parser warnings become report warnings.

use std::collections::BTreeSet;

use super::{
    Context, ObxOutcome, ObxReason, Report, TimeKind, WarningKind, codes, convert_time, datatype,
    id,
};
use crate::astm::record::{self, Message, Record, Repetition, ResultGroup};
use crate::fhir::{
    Address, Annotation, Bundle, CodeableConcept, Coding, ContactPoint, Decimal, Device,
    DeviceVersion, Entry, Extension, ExtensionValue, HumanName, Identifier, Meta, Observation,
    Patient, Period, PrimitiveExtension, Quantity, Reference, ReferenceRange, Resource, Specimen,
    Value,
};

/// `Report::message_type` of ASTM conversions.
pub(crate) const MESSAGE_TYPE: &str = "ASTM^E1394";

const H_MAPPED: &[usize] = &[1, 2, 3, 5, 12, 13, 14];
const P_MAPPED: &[usize] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13];
const O_MAPPED: &[usize] = &[1, 2, 3, 4, 8, 9, 15, 16];
const R_MAPPED: &[usize] = &[1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14];
const C_MAPPED: &[usize] = &[1, 2, 4];
const L_MAPPED: &[usize] = &[1, 2, 3];

const EXT_MOTHERS_MAIDEN_NAME: &str =
    "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName";
const EXT_BIRTH_TIME: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthTime";

/// Builder state for one message.
struct Conv<'c, 'r> {
    ctx: &'c Context<'c>,
    report: &'r mut Report,
    bundle: Bundle,
    ids: BTreeSet<String>,
}

/// What the results of one order share.
struct Inherited<'a> {
    subject: Option<&'a str>,
    specimen: Option<&'a (String, String)>,
    device: &'a (String, String),
    issued: Option<&'a str>,
    tag: Option<&'a Coding>,
    header: &'a Record<'a>,
}

impl Conv<'_, '_> {
    /// A system under `<base>:<tenant>:astm:<source>:<kind>`.
    fn local(&self, kind: &str) -> String {
        id::minted(
            self.ctx.system_base,
            &[self.ctx.tenant, "astm", self.ctx.source, kind],
        )
    }

    fn time(&mut self, record: usize, field: &str, raw: &str, kind: TimeKind) -> Option<String> {
        convert_time(self.ctx, self.report, record, field, raw, kind)
    }

    fn push_unique(&mut self, entry: Entry) -> String {
        let url = entry.full_url.clone();
        if !self.bundle.entry.iter().any(|e| e.full_url == url) {
            self.bundle.entry.push(entry);
        }
        url
    }

    /// Counts valued fields of `r` not in `mapped`, as `X-n`.
    fn unmapped_fields(&mut self, r: &Record<'_>, mapped: &[usize]) {
        let id = r.kind().id();
        for n in r.valued_fields() {
            if !mapped.contains(&n) {
                *self
                    .report
                    .unmapped_fields
                    .entry(format!("{id}-{n}"))
                    .or_default() += 1;
            }
        }
    }

    /// Counts valued components of field `n`'s first repetition not in `used` (`X-n.c`), and
    /// warns when the field repeats.
    fn unused_parts(&mut self, r: &Record<'_>, n: usize, used: &[usize]) {
        let id = r.kind().id();
        let field = r.field(n);
        for (i, c) in field.repetition(1).components().enumerate() {
            if !used.contains(&(i + 1)) && c.value().is_some() {
                *self
                    .report
                    .unmapped_fields
                    .entry(format!("{id}-{n}.{}", i + 1))
                    .or_default() += 1;
            }
        }
        if field.repetitions().skip(1).any(|rep| !rep.is_empty()) {
            self.report.warn(
                r.number(),
                format!("{id}-{n}"),
                WarningKind::RepetitionsDropped,
            );
        }
    }
}

/// Converts a parsed message.
pub(crate) fn convert(ctx: &Context<'_>, msg: &Message<'_>, report: &mut Report) -> Bundle {
    let mut conv = Conv {
        ctx,
        report,
        bundle: Bundle::transaction(),
        ids: BTreeSet::new(),
    };
    for w in &msg.warnings {
        match w.kind {
            record::WarningKind::UnknownRecordType => {}
            record::WarningKind::OutOfOrder | record::WarningKind::AfterTerminator => {
                conv.report
                    .warn(w.record, "record", WarningKind::UnexpectedRecord);
            }
            record::WarningKind::MissingTerminator => {
                conv.report
                    .warn(w.record, "L", WarningKind::MissingRequired);
            }
        }
    }
    let h = msg.header;
    conv.unmapped_fields(&h, H_MAPPED);
    let tag = processing_tag(&mut conv, &h);
    let device = header_device(&mut conv, &h);
    let issued = conv.time(1, "H-14", h.field(14).component(1).raw(), TimeKind::Instant);
    for r in msg
        .header_comments
        .iter()
        .chain(&msg.queries)
        .chain(&msg.manufacturer)
        .chain(&msg.other)
    {
        conv.report.unmapped_segment(r.kind().id());
    }
    for group in &msg.patients {
        let subject = match group.patient {
            Some(p) => patient(&mut conv, &p),
            None => {
                conv.report.warn(1, "P", WarningKind::PatientNotIdentified);
                None
            }
        };
        for c in &group.comments {
            conv.report.unmapped_segment(c.kind().id());
        }
        for order in &group.orders {
            let specimen = order
                .order
                .and_then(|o| specimen(&mut conv, &o, subject.as_deref()));
            for c in &order.comments {
                conv.report.unmapped_segment(c.kind().id());
            }
            let inherited = Inherited {
                subject: subject.as_deref(),
                specimen: specimen.as_ref(),
                device: &device,
                issued: issued.as_deref(),
                tag: tag.as_ref(),
                header: &h,
            };
            for rg in &order.results {
                observation(&mut conv, rg, &inherited);
            }
        }
    }
    if let Some(l) = msg.terminator {
        conv.unmapped_fields(&l, L_MAPPED);
    }
    conv.bundle
}

/// H-12: `Q`/`T`/`D` → a tag; `P…` or empty → none; else reported.
fn processing_tag(conv: &mut Conv<'_, '_>, h: &Record<'_>) -> Option<Coding> {
    let code = h.field(12).component(1).value()?;
    match code.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('P') => None,
        Some(c @ ('Q' | 'T' | 'D')) => Some(Coding::new(
            &id::minted(conv.ctx.system_base, &["astm", "processing-id"]),
            &c.to_string(),
        )),
        _ => {
            conv.report.warn(1, "H-12", WarningKind::UnknownTableCode);
            None
        }
    }
}

/// H-5 → the sending instrument's Device; returns (fullUrl, identifier value).
fn header_device(conv: &mut Conv<'_, '_>, h: &Record<'_>) -> (String, String) {
    let sender = h.field(5);
    let part = |n: usize| sender.component(n).value();
    let value = part(4)
        .or_else(|| part(1))
        .unwrap_or_else(|| conv.ctx.source.to_owned());
    let device = Device {
        manufacturer: part(1),
        serial_number: part(4),
        model_number: part(2),
        version: part(3)
            .map(|value| DeviceVersion { value })
            .into_iter()
            .collect(),
        ..Device::default()
    };
    conv.unused_parts(h, 5, &[1, 2, 3, 4]);
    let url = device_entry(conv, device, &value);
    (url, value)
}

/// A Device entry by identifier `<local device system>|value` (conditional create).
fn device_entry(conv: &mut Conv<'_, '_>, mut device: Device, value: &str) -> String {
    let system = conv.local("device");
    device.identifier = vec![Identifier {
        system: Some(system.clone()),
        value: Some(value.to_owned()),
        ..Identifier::default()
    }];
    let uuid = id::derive(&[conv.ctx.tenant, "Device", &system, value]);
    conv.push_unique(Entry::create_if_none_exist(
        &uuid,
        Resource::Device(Box::new(device)),
        id::identifier_query(&system, value),
    ))
}

/// P → Patient (conditional create); `None` (reported) without an identifier.
fn patient(conv: &mut Conv<'_, '_>, p: &Record<'_>) -> Option<String> {
    let n = p.number();
    conv.unmapped_fields(p, P_MAPPED);
    let ctx = conv.ctx;
    let mut pat = Patient::default();
    let mut key: Option<(String, String)> = None;
    for (field, authority) in [(3, "ASTM-P3"), (4, "ASTM-P4"), (5, "ASTM-P5")] {
        conv.unused_parts(p, field, &[1]);
        let Some(value) = p.field(field).component(1).value() else {
            continue;
        };
        let (system, unknown) = datatype::authority_system(ctx, Some(authority), None, None);
        if unknown {
            conv.report
                .warn(n, format!("P-{field}"), WarningKind::UnconfiguredAuthority);
        }
        if key.is_none() {
            key = Some((system.clone(), value.clone()));
        }
        pat.identifier.push(Identifier {
            system: Some(system),
            value: Some(value),
            ..Identifier::default()
        });
    }
    let name = p.field(6);
    let c = |i: usize| name.component(i).value();
    let mut given = Vec::new();
    given.extend(c(2));
    if let Some(middle) = c(3) {
        given.extend(middle.split_whitespace().map(str::to_owned));
    }
    let human = HumanName {
        use_: None,
        family: c(1),
        given,
        prefix: c(5).into_iter().collect(),
        suffix: c(4).into_iter().collect(),
    };
    if human != HumanName::default() {
        pat.name.push(human);
    }
    conv.unused_parts(p, 6, &[1, 2, 3, 4, 5]);
    if let Some(maiden) = p.field(7).component(1).value() {
        pat.extension.push(Extension {
            url: EXT_MOTHERS_MAIDEN_NAME.to_owned(),
            value: ExtensionValue::String(maiden),
        });
    }
    let birth = p.field(8).component(1).raw().trim();
    if let Some(date) = conv.time(n, "P-8", birth, TimeKind::Date) {
        pat.birth_date = Some(date);
        if birth.len() > 8 {
            if let Some(dt) = conv.time(n, "P-8", birth, TimeKind::DateTime) {
                pat.birth_date_ext = Some(PrimitiveExtension {
                    extension: vec![Extension {
                        url: EXT_BIRTH_TIME.to_owned(),
                        value: ExtensionValue::DateTime(dt),
                    }],
                });
            }
        }
    }
    if let Some(sex) = p.field(9).component(1).value() {
        match codes::gender(&sex) {
            Some(g) => pat.gender = Some(g.to_owned()),
            None => conv.report.warn(n, "P-9", WarningKind::UnknownTableCode),
        }
    }
    for rep in p.field(11).repetitions() {
        let c = |i: usize| rep.component(i).value();
        let a = Address {
            line: c(1).into_iter().collect(),
            city: c(2),
            state: c(3),
            postal_code: c(4),
            country: c(5),
            ..Address::default()
        };
        if a != Address::default() {
            pat.address.push(a);
        }
    }
    for rep in p.field(13).repetitions() {
        if let Some(number) = rep.component(1).value() {
            pat.telecom.push(ContactPoint {
                system: Some("phone".to_owned()),
                value: Some(number),
                use_: Some("home".to_owned()),
            });
        }
    }
    let Some((system, value)) = key else {
        conv.report
            .warn(n, "P-3", WarningKind::PatientNotIdentified);
        return None;
    };
    let uuid = id::derive(&[ctx.tenant, "Patient", &system, &value]);
    Some(conv.push_unique(Entry::create_if_none_exist(
        &uuid,
        Resource::Patient(Box::new(pat)),
        id::identifier_query(&system, &value),
    )))
}

/// O → Specimen (conditional create); returns (fullUrl, specimen id). `None` (reported)
/// without O-3 and O-4.
fn specimen(
    conv: &mut Conv<'_, '_>,
    o: &Record<'_>,
    subject: Option<&str>,
) -> Option<(String, String)> {
    let n = o.number();
    conv.unmapped_fields(o, O_MAPPED);
    conv.unused_parts(o, 3, &[1]);
    conv.unused_parts(o, 4, &[1]);
    conv.unused_parts(o, 16, &[1, 2]);
    let ctx = conv.ctx;
    let mut s = Specimen::default();
    let mut key: Option<(String, String)> = None;
    if let Some(value) = o.field(3).component(1).value() {
        let (system, _) = datatype::authority_system(ctx, Some("ASTM-O3"), None, None);
        key = Some((system.clone(), value.clone()));
        s.identifier.push(Identifier {
            system: Some(system),
            value: Some(value),
            ..Identifier::default()
        });
    }
    if let Some(value) = o.field(4).component(1).value() {
        let system = conv.local("instrument-specimen");
        if key.is_none() {
            key = Some((system.clone(), value.clone()));
        }
        s.identifier.push(Identifier {
            system: Some(system),
            value: Some(value),
            ..Identifier::default()
        });
    }
    let Some((system, value)) = key else {
        conv.report.warn(n, "O-3", WarningKind::MissingRequired);
        return None;
    };
    let descriptor = o.field(16);
    if let Some(code) = descriptor.component(1).value() {
        s.type_ = Some(CodeableConcept::coding(Coding::new(
            &conv.local("specimen-type"),
            &code,
        )));
    }
    s.collection.body_site = descriptor
        .component(2)
        .value()
        .map(|t| CodeableConcept::text(&t));
    s.subject = subject.map(Reference::to);
    let start = conv.time(n, "O-8", o.field(8).component(1).raw(), TimeKind::DateTime);
    let end = conv.time(n, "O-9", o.field(9).component(1).raw(), TimeKind::DateTime);
    match end {
        Some(end) => {
            s.collection.collected_period = Some(Period {
                start,
                end: Some(end),
            })
        }
        None => s.collection.collected_date_time = start,
    }
    s.received_time = conv.time(
        n,
        "O-15",
        o.field(15).component(1).raw(),
        TimeKind::DateTime,
    );
    let uuid = id::derive(&[ctx.tenant, "Specimen", &system, &value]);
    let url = conv.push_unique(Entry::create_if_none_exist(
        &uuid,
        Resource::Specimen(Box::new(s)),
        id::identifier_query(&system, &value),
    ));
    Some((url, value))
}

/// True for a LOINC code with a valid check digit (`nnnnn-c`, mod 10 as LOINC specifies).
pub(crate) fn is_loinc(code: &str) -> bool {
    let Some((num, check)) = code.trim().split_once('-') else {
        return false;
    };
    if num.is_empty()
        || num.len() > 7
        || check.len() != 1
        || !num.bytes().chain(check.bytes()).all(|b| b.is_ascii_digit())
    {
        return false;
    }
    let sum: u32 = num
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    let expected = (10 - sum % 10) % 10;
    check.bytes().next().map(|b| u32::from(b - b'0')) == Some(expected)
}

/// R-3 → Observation.code, or `None` when there is no code.
fn test_code(conv: &mut Conv<'_, '_>, r: &Record<'_>) -> Option<CodeableConcept> {
    let f = r.field(3);
    let c1 = f.component(1).value();
    let c4 = f.component(4).value();
    let loinc = c1.clone().filter(|c| is_loinc(c));
    let (local, used) = match (&c1, &loinc) {
        (Some(c), None) => (Some(c.clone()), vec![1, 2]),
        _ => (c4, vec![1, 2, 4]),
    };
    conv.unused_parts(r, 3, &used);
    let mut cc = CodeableConcept {
        coding: Vec::new(),
        text: f.component(2).value(),
    };
    if let Some(l) = loinc {
        cc.coding.push(Coding::new(codes::LOINC, &l));
    }
    if let Some(l) = local {
        cc.coding.push(Coding::new(&conv.local("test"), &l));
    }
    (!cc.coding.is_empty()).then_some(cc)
}

/// R-4 (+ R-5 unit) → value\[x\].
fn value(conv: &mut Conv<'_, '_>, r: &Record<'_>, unit: &Quantity) -> Option<Value> {
    conv.unused_parts(r, 4, &[1]);
    let raw = r.field(4).component(1).value()?;
    match datatype::compared_quantity(&raw, unit) {
        Some(q) => Some(Value::Quantity(q)),
        None => {
            // Text results (POS, NEG) are normal; a unit with them is not carried: say so.
            if datatype::has_unit(unit) {
                conv.report
                    .warn(r.number(), "R-5", WarningKind::UnitNotCarried);
            }
            Some(Value::String(raw))
        }
    }
}

/// R-5 → the unit part of a Quantity: UCUM when valid or a known alias, else text only.
fn unit(r: &Record<'_>) -> Quantity {
    let text = r.field(5).component(1).value();
    let code = text.as_deref().and_then(codes::ucum_for);
    Quantity {
        unit: text,
        system: code.map(|_| codes::UCUM.to_owned()),
        code: code.map(str::to_owned),
        ..Quantity::default()
    }
}

/// One R-6 repetition → referenceRange: `a to b` here, the other forms as for OBX-7.
fn reference_range(rep: Repetition<'_>, unit: &Quantity) -> Option<ReferenceRange> {
    if rep.is_empty() {
        return None;
    }
    let text = rep.text();
    let text = text.trim();
    let first = rep.component(1).value().unwrap_or_default();
    let lower = first.to_ascii_lowercase();
    if let Some(i) = lower.find(" to ") {
        let lo = first.get(..i).and_then(Decimal::parse);
        let hi = first.get(i + 4..).and_then(Decimal::parse);
        let mut rr = ReferenceRange {
            text: Some(text.to_owned()),
            ..ReferenceRange::default()
        };
        if let (Some(l), Some(h)) = (lo, hi) {
            rr.low = Some(datatype::quantity(l, unit));
            rr.high = Some(datatype::quantity(h, unit));
        }
        return Some(rr);
    }
    datatype::reference_range(text, unit)
}

/// R-7 → interpretation (table 0078 as for OBX-8, §5.6).
fn interpretation(conv: &mut Conv<'_, '_>, r: &Record<'_>) -> Vec<CodeableConcept> {
    let mut out = Vec::new();
    for rep in r.field(7).repetitions() {
        let Some(code) = rep.component(1).value() else {
            continue;
        };
        match codes::flag(&code) {
            codes::Flag::V3(c) => out.push(CodeableConcept::coding(Coding::new(
                codes::V3_INTERPRETATION,
                c,
            ))),
            codes::Flag::V2(c) => out.push(CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/v2-0078",
                c,
            ))),
            codes::Flag::Device(_) | codes::Flag::Unknown => {
                conv.report
                    .warn(r.number(), "R-7", WarningKind::UnknownTableCode);
                out.push(CodeableConcept::coding(Coding::new(
                    &conv.local("abnormal-flag"),
                    &code,
                )));
            }
        }
    }
    out
}

/// C records → notes (C-4 components joined with spaces, repetitions with newlines).
fn notes(conv: &mut Conv<'_, '_>, comments: &[Record<'_>]) -> Vec<Annotation> {
    let mut out = Vec::new();
    for c in comments {
        conv.unmapped_fields(c, C_MAPPED);
        let lines: Vec<String> = c
            .field(4)
            .repetitions()
            .map(|rep| {
                rep.components()
                    .filter_map(|x| x.value())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|l| !l.is_empty())
            .collect();
        if !lines.is_empty() {
            out.push(Annotation {
                text: lines.join("\n"),
                ..Annotation::default()
            });
        }
    }
    out
}

/// R → Observation entry (or a reported outcome).
fn observation(conv: &mut Conv<'_, '_>, rg: &ResultGroup<'_>, inh: &Inherited<'_>) {
    let r = &rg.result;
    let n = r.number();
    conv.report.obx_in += 1;
    let Some(code) = test_code(conv, r) else {
        conv.unmapped_fields(r, R_MAPPED);
        conv.report.obx_not_converted.push(ObxOutcome {
            segment: n,
            reason: ObxReason::MissingCode,
        });
        return;
    };
    let status_code = r.field(9).component(1).value();
    if status_code
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("N"))
    {
        conv.report.obx_not_converted.push(ObxOutcome {
            segment: n,
            reason: ObxReason::NotAResult,
        });
        return;
    }
    conv.unmapped_fields(r, R_MAPPED);
    let ctx = conv.ctx;
    let mut obs = Observation::default();
    let (status, dar, keep) = match status_code.as_deref().map(codes::astm_result_status) {
        Some(Some(found)) => found,
        Some(None) => {
            conv.report.warn(n, "R-9", WarningKind::UnknownTableCode);
            ("unknown", None, false)
        }
        None => {
            conv.report.warn(n, "R-9", WarningKind::MissingRequired);
            ("unknown", None, false)
        }
    };
    obs.status = status.to_owned();
    if keep {
        if let Some(c) = &status_code {
            obs.extension.push(Extension {
                url: id::minted(
                    ctx.system_base,
                    &["StructureDefinition", "astm-result-status"],
                ),
                value: ExtensionValue::Code(c.to_ascii_uppercase()),
            });
        }
    }
    if let Some(tag) = inh.tag {
        obs.meta = Meta {
            tag: vec![tag.clone()],
        };
    }
    obs.category.push(CodeableConcept::coding(Coding::new(
        codes::OBSERVATION_CATEGORY,
        "laboratory",
    )));
    let unit = unit(r);
    conv.unused_parts(r, 5, &[1]);
    obs.value = value(conv, r, &unit);
    if obs.value.is_none() {
        obs.data_absent_reason =
            dar.map(|d| CodeableConcept::coding(Coding::new(codes::DATA_ABSENT_REASON, d)));
    }
    obs.code = code;
    obs.interpretation = interpretation(conv, r);
    for rep in r.field(6).repetitions() {
        obs.reference_range.extend(reference_range(rep, &unit));
    }
    obs.subject = inh.subject.map(Reference::to);
    let completed_raw = r.field(13).component(1).raw().trim();
    let started_raw = r.field(12).component(1).raw().trim();
    let completed = conv.time(n, "R-13", completed_raw, TimeKind::DateTime);
    obs.effective_date_time = match completed {
        Some(c) => {
            if !started_raw.is_empty() {
                *conv
                    .report
                    .unmapped_fields
                    .entry("R-12".to_owned())
                    .or_default() += 1;
            }
            Some(c)
        }
        None => conv.time(n, "R-12", started_raw, TimeKind::DateTime),
    };
    obs.issued = if completed_raw.is_empty() {
        None
    } else {
        conv.time(n, "R-13", completed_raw, TimeKind::Instant)
    }
    .or_else(|| inh.issued.map(str::to_owned));
    let operator = r.field(11);
    for i in [1, 2] {
        if let Some(v) = operator.component(i).value() {
            obs.performer.push(Reference {
                identifier: Some(Identifier {
                    system: Some(conv.local("operator")),
                    value: Some(v),
                    ..Identifier::default()
                }),
                ..Reference::default()
            });
        }
    }
    conv.unused_parts(r, 11, &[1, 2]);
    let (device_url, instrument) = match r.field(14).component(1).value() {
        Some(v) if v != inh.device.1 => (device_entry(conv, Device::default(), &v), v),
        _ => inh.device.clone(),
    };
    conv.unused_parts(r, 14, &[1]);
    obs.device = Some(Reference::to(&device_url));
    obs.specimen = inh.specimen.map(|(url, _)| Reference::to(url));
    obs.note = notes(conv, &rg.comments);

    // Natural key (§7.7).
    let specimen_id = inh.specimen.map(|(_, id)| id.as_str()).unwrap_or("");
    let test: Vec<&str> = r
        .field(3)
        .repetition(1)
        .components()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, c)| c.raw().trim())
        .collect();
    let test = test.join("^");
    let time = if completed_raw.is_empty() {
        started_raw
    } else {
        completed_raw
    };
    let mut key: Vec<String> = [
        ctx.tenant,
        ctx.source,
        "astm",
        "Observation",
        instrument.as_str(),
        specimen_id,
        test.as_str(),
        time,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if specimen_id.is_empty() && time.is_empty() {
        conv.report.warn(n, "R-13", WarningKind::MissingRequired);
        key.push(inh.header.field(3).raw().trim().to_owned());
        key.push(inh.header.field(14).raw().trim().to_owned());
        key.push(n.to_string());
    }
    let parts: Vec<&str> = key.iter().map(String::as_str).collect();
    let mut oid = id::derive(&parts);
    if !conv.ids.insert(oid.clone()) {
        conv.report.warn(n, "R-3", WarningKind::DuplicateNaturalKey);
        key.push("record".to_owned());
        key.push(n.to_string());
        let parts: Vec<&str> = key.iter().map(String::as_str).collect();
        oid = id::derive(&parts);
        conv.ids.insert(oid.clone());
    }
    obs.id = Some(oid.clone());
    conv.bundle
        .entry
        .push(Entry::put_by_id(&oid, Resource::Observation(Box::new(obs))));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::convert::testutil::ctx_with;
    use crate::convert::{Conversion, convert_astm};

    fn convert(text: &str) -> Conversion {
        ctx_with(|ctx| convert_astm(ctx, text.as_bytes())).expect("converts")
    }

    fn json(c: &Conversion) -> serde_json::Value {
        serde_json::from_str(&c.bundle.to_json()).expect("json")
    }

    fn observations(c: &Conversion) -> Vec<serde_json::Value> {
        json(c)["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .map(|e| e["resource"].clone())
            .collect()
    }

    #[test]
    fn loinc_check_digits_are_verified() {
        for good in ["2345-7", "718-7", "2160-0", "1-8"] {
            assert!(is_loinc(good), "{good}");
        }
        for bad in [
            "2345-6",
            "GLU",
            "",
            "-7",
            "12345678-9",
            "2345-77",
            "23a5-7",
            "2345",
        ] {
            assert!(!is_loinc(bad), "{bad}");
        }
    }

    #[test]
    fn the_protocols_7_5_result_becomes_one_observation() {
        let c = convert(
            "H|\\^&|||ACME^Analyzer^1.0|||||||P|LIS2-A2|20240105103000\r\
             P|1||PAT123||Doe^John||19700101|M\r\
             O|1|SPEC001||^^^GLU|R|20240105101500|||||N||||Serum\r\
             R|1|^^^GLU|5.6|mmol/L|3.9 to 6.1|N||F||OP1|20240105102000|20240105102900|ACME01\r\
             L|1|N\r",
        );
        assert_eq!(c.report.message_type, "ASTM^E1394");
        assert_eq!((c.report.obx_in, c.report.observations_out), (1, 1));
        let obs = observations(&c);
        let o = obs.first().expect("one");
        assert_eq!(o["status"], "final");
        assert_eq!(
            o["code"]["coding"][0]["system"],
            "urn:caregate:north:astm:lab-lis:test"
        );
        assert_eq!(o["code"]["coding"][0]["code"], "GLU");
        assert_eq!(o["valueQuantity"]["code"], "mmol/L");
        assert_eq!(o["referenceRange"][0]["low"]["value"], 3.9);
        assert_eq!(o["referenceRange"][0]["high"]["value"], 6.1);
        assert_eq!(o["interpretation"][0]["coding"][0]["code"], "N");
        assert_eq!(o["effectiveDateTime"], "2024-01-05T10:29:00+01:00");
        assert_eq!(o["issued"], "2024-01-05T10:29:00+01:00");
        assert_eq!(
            c.bundle
                .entry
                .iter()
                .map(|e| e.resource.type_name())
                .collect::<Vec<_>>(),
            ["Device", "Patient", "Specimen", "Device", "Observation"]
        );
    }

    #[test]
    fn loinc_in_component_1_is_coded_as_loinc_and_local_codes_elsewhere() {
        let c = convert(
            "H|\\^&\rP|1|X1\rO|1|S1\r\
             R|1|2345-7^Glucose^^GLU|5|mg/dL||||F||||20240105102900\r\
             R|2|P^Phosphorus^^F|2.8^^^^|mg/dL||||F||||20240105102900\r\
             R|3|2345-6^Bad^^G2|1|||||F||||20240105102900\rL|1\r",
        );
        let obs = observations(&c);
        let codings: Vec<Vec<(String, String)>> = obs
            .iter()
            .map(|o| {
                o["code"]["coding"]
                    .as_array()
                    .expect("codings")
                    .iter()
                    .map(|c| {
                        (
                            c["system"].as_str().unwrap_or_default().to_owned(),
                            c["code"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .collect();
        let local = "urn:caregate:north:astm:lab-lis:test".to_owned();
        assert_eq!(
            codings,
            [
                vec![
                    ("http://loinc.org".to_owned(), "2345-7".to_owned()),
                    (local.clone(), "GLU".to_owned())
                ],
                vec![(local.clone(), "P".to_owned())],
                vec![(local, "2345-6".to_owned())],
            ]
        );
        assert_eq!(
            obs.first().map(|o| o["code"]["text"].clone()),
            Some("Glucose".into())
        );
        assert_eq!(c.report.unmapped_fields.get("R-3.4"), Some(&2));
    }

    #[test]
    fn values_with_comparators_text_values_and_statuses() {
        let c = convert(
            "H|\\^&\rP|1|X1\rO|1|S1\r\
             R|1|^^^A|<0.5|mg/L||L||F||||20240105102901\r\
             R|2|^^^B|>=100|U/L||>||C||||20240105102902\r\
             R|3|^^^C|POS|||A||P||||20240105102903\r\
             R|4|^^^D||||||X||||20240105102904\r\
             R|5|^^^E|1|||||N||||20240105102905\r\
             R|6|^^^F|2|||ZZ||W||||20240105102906\r\
             R|7|^^^G|3|furlongs||||Y||||20240105102907\r\
             R|8||4|||||F||||20240105102908\rL|1\r",
        );
        let obs = observations(&c);
        assert_eq!(obs.len(), 6);
        let o = |i: usize| obs.get(i).cloned().unwrap_or_default();
        assert_eq!(o(0)["valueQuantity"]["comparator"], "<");
        assert_eq!(o(0)["valueQuantity"]["value"], 0.5);
        assert_eq!(o(1)["valueQuantity"]["comparator"], ">=");
        assert_eq!(o(1)["status"], "corrected");
        assert_eq!(o(1)["interpretation"][0]["coding"][0]["code"], ">");
        assert_eq!(o(2)["valueString"], "POS");
        assert_eq!(o(2)["status"], "preliminary");
        assert_eq!(o(3)["status"], "cancelled");
        assert_eq!(
            o(3)["dataAbsentReason"]["coding"][0]["code"],
            "cannot-be-obtained"
        );
        assert_eq!(o(4)["status"], "preliminary");
        assert_eq!(o(4)["extension"][0]["valueCode"], "W");
        assert_eq!(
            o(4)["interpretation"][0]["coding"][0]["system"],
            "urn:caregate:north:astm:lab-lis:abnormal-flag"
        );
        assert_eq!(o(5)["status"], "unknown");
        assert_eq!(o(5)["valueQuantity"]["unit"], "furlongs");
        assert!(o(5)["valueQuantity"].get("system").is_none());
        let reasons: Vec<(usize, ObxReason)> = c
            .report
            .obx_not_converted
            .iter()
            .map(|x| (x.segment, x.reason))
            .collect();
        assert_eq!(
            reasons,
            [(8, ObxReason::NotAResult), (11, ObxReason::MissingCode)]
        );
        let warnings: Vec<(usize, &str, WarningKind)> = c
            .report
            .warnings
            .iter()
            .map(|w| (w.segment, w.field.as_str(), w.kind))
            .collect();
        assert!(warnings.contains(&(9, "R-7", WarningKind::UnknownTableCode)));
        assert!(warnings.contains(&(10, "R-9", WarningKind::UnknownTableCode)));
        assert!(
            !warnings.iter().any(|w| w.2 == WarningKind::UnitNotCarried),
            "POS has no unit: {warnings:?}"
        );
    }

    #[test]
    fn a_unit_with_a_value_that_is_not_a_number_is_reported() {
        // European analyzers write decimal commas: kept as text, and the unit's loss is said.
        let c = convert(
            "H|\\^&\rP|1|X1\rO|1|S1\r\
             R|1|^^^GLU|5,6|mmol/L|3,9 to 6,1|N||F||||20240105102901\rL|1\r",
        );
        let obs = observations(&c);
        assert_eq!(obs[0]["valueString"], "5,6");
        assert!(
            c.report
                .warnings
                .iter()
                .any(|w| (w.segment, w.field.as_str(), w.kind)
                    == (4, "R-5", WarningKind::UnitNotCarried)),
            "{:?}",
            c.report.warnings
        );
    }

    #[test]
    fn reference_ranges_in_every_form() {
        let c = convert(
            "H|\\^&\rP|1|X1\rO|1|S1\r\
             R|1|^^^A|1|mmol/L|3.5 to 4.5^Adult\\1 TO 2|||F||||20240105102901\r\
             R|2|^^^B|1||3.5-4.5|||F||||20240105102902\r\
             R|3|^^^C|1||3.5^4.5|||F||||20240105102903\r\
             R|4|^^^D|1||<10|||F||||20240105102904\r\
             R|5|^^^E|1||^|||F||||20240105102905\rL|1\r",
        );
        let obs = observations(&c);
        let rr = |i: usize| {
            obs.get(i)
                .map(|o| o["referenceRange"].clone())
                .unwrap_or_default()
        };
        assert_eq!(rr(0)[0]["low"]["value"], 3.5);
        assert_eq!(rr(0)[0]["low"]["code"], "mmol/L");
        assert_eq!(rr(0)[0]["text"], "3.5 to 4.5^Adult");
        assert_eq!(rr(0)[1]["high"]["value"], 2);
        assert_eq!(rr(1)[0]["high"]["value"], 4.5);
        assert_eq!(rr(2)[0]["low"]["value"], 3.5);
        assert_eq!(rr(3)[0]["high"]["value"], 10);
        assert!(rr(4).is_null());
    }

    #[test]
    fn natural_key_ids_are_stable_across_messages_and_distinct_per_test_and_time() {
        let one = convert(
            "H|\\^&|1|||||||||P||20240105103000\rP|1|X1\rO|1|S1\rR|1|^^^A^1|1|||||F||||20240105102901|I1\rL|1\r",
        );
        // A resend with another control id, message time and test name is the same result.
        let again = convert(
            "H|\\^&|2|||||||||P||20240106000000\rP|1|X1\rO|1|S1\rR|7|^Renamed^^A^1|1|||||C||||20240105102901|I1\rL|1\r",
        );
        let id = |c: &Conversion| observations(c).first().map(|o| o["id"].clone());
        assert_eq!(id(&one), id(&again));
        let dilution =
            convert("H|\\^&\rP|1|X1\rO|1|S1\rR|1|^^^A^2|1|||||F||||20240105102901|I1\rL|1\r");
        assert_ne!(id(&one), id(&dilution));
        let later =
            convert("H|\\^&\rP|1|X1\rO|1|S1\rR|1|^^^A^1|1|||||F||||20240105102902|I1\rL|1\r");
        assert_ne!(id(&one), id(&later));
        // tenant ␟ source ␟ astm ␟ Observation ␟ instrument ␟ specimen ␟ test ␟ time
        assert_eq!(
            id(&one).and_then(|v| v.as_str().map(str::to_owned)),
            Some(id::derive(&[
                "north",
                "lab-lis",
                "astm",
                "Observation",
                "I1",
                "S1",
                "^^A^1",
                "20240105102901"
            ]))
        );
    }

    #[test]
    fn weak_and_duplicate_keys_are_made_unique_and_reported() {
        let c = convert("H|\\^&\rP|1|X1\rO|1\rR|1|^^^A|1|||||F\rR|2|^^^A|2|||||F\rL|1\r");
        let ids: BTreeSet<String> = observations(&c)
            .iter()
            .filter_map(|o| o["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(
            c.report
                .warnings
                .iter()
                .any(|w| w.segment == 4 && w.field == "R-13")
        );
        let c = convert(
            "H|\\^&\rP|1|X1\rO|1|S1\rR|1|^^^A|1|||||F||||20240105102901\rR|2|^^^A|1|||||F||||20240105102901\rL|1\r",
        );
        assert_eq!(observations(&c).len(), 2);
        assert!(
            c.report
                .warnings
                .iter()
                .any(|w| w.segment == 5 && w.kind == WarningKind::DuplicateNaturalKey)
        );
    }

    #[test]
    fn processing_id_tags_qc_training_and_debug_messages() {
        for (h12, tag) in [
            ("Q", Some("Q")),
            ("T", Some("T")),
            ("d", Some("D")),
            ("PR", None),
            ("", None),
        ] {
            let c = convert(&format!(
                "H|\\^&||||||||||{h12}\rP|1|X1\rO|1|S1\rR|1|^^^A|1|||||F||||20240105102901\rL|1\r"
            ));
            let o = observations(&c).into_iter().next().unwrap_or_default();
            assert_eq!(o["meta"]["tag"][0]["code"].as_str(), tag, "{h12}");
        }
        let c = convert("H|\\^&||||||||||Z\rL|1\r");
        assert!(c.report.warnings.iter().any(|w| w.field == "H-12"));
    }

    #[test]
    fn patient_demographics_and_identifiers_map_and_unconfigured_authorities_are_reported() {
        let c = convert(
            "H|\\^&\rP|1|PR1|LAB1|N1^M1|Doe^Jane^Q R^Jr^Dr|Roe|19700101123000|F||12 Main St^Town^ST^12345^DE||555\rL|1\r",
        );
        let v = json(&c);
        let p = &v["entry"][1]["resource"];
        assert_eq!(p["resourceType"], "Patient");
        assert_eq!(p["identifier"].as_array().map(Vec::len), Some(3));
        assert_eq!(p["name"][0]["given"], serde_json::json!(["Jane", "Q", "R"]));
        assert_eq!(p["gender"], "female");
        assert_eq!(p["birthDate"], "1970-01-01");
        assert_eq!(
            p["_birthDate"]["extension"][0]["valueDateTime"],
            "1970-01-01T12:30:00+01:00"
        );
        assert_eq!(p["address"][0]["postalCode"], "12345");
        assert_eq!(
            v["entry"][1]["request"]["ifNoneExist"],
            "identifier=urn:caregate:north:identifiers:ASTM-P3|PR1"
        );
        assert_eq!(c.report.unmapped_fields.get("P-5.2"), Some(&1));
        let unconfigured = c
            .report
            .warnings
            .iter()
            .filter(|w| w.kind == WarningKind::UnconfiguredAuthority)
            .count();
        assert_eq!(unconfigured, 3);
    }

    #[test]
    fn a_patient_without_any_id_gives_results_without_subject() {
        let c = convert("H|\\^&\rP|1\rO|1|S1\rR|1|^^^A|1|||||F||||20240105102901\rL|1\r");
        assert_eq!(c.bundle.count("Patient"), 0);
        let o = observations(&c).into_iter().next().unwrap_or_default();
        assert!(o.get("subject").is_none());
        assert!(
            c.report
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::PatientNotIdentified)
        );
    }

    #[test]
    fn header_device_and_result_instrument_devices() {
        let c = convert(
            "H|\\^&|||OCD^VISION^5.13^J6|||||||P\rP|1|X\rO|1|S1\r\
             R|1|^^^A|1|||||F||||20240105102901|J6\rR|2|^^^B|1|||||F||||20240105102901|OTHER\rL|1\r",
        );
        assert_eq!(c.bundle.count("Device"), 2);
        let v = json(&c);
        let d = &v["entry"][0]["resource"];
        assert_eq!(d["manufacturer"], "OCD");
        assert_eq!(d["modelNumber"], "VISION");
        assert_eq!(d["serialNumber"], "J6");
        assert_eq!(d["version"][0]["value"], "5.13");
        let obs = observations(&c);
        assert_eq!(
            obs.first().map(|o| o["device"]["reference"].clone()),
            Some(v["entry"][0]["fullUrl"].clone())
        );
        assert_ne!(
            obs.get(1).map(|o| o["device"].clone()),
            obs.first().map(|o| o["device"].clone())
        );
    }

    #[test]
    fn comments_after_results_become_notes_and_others_are_counted() {
        let c = convert(
            "H|\\^&\rC|1|L|header\rP|1|X\rC|1|L|patient\rO|1|S1\rC|1|L|order\r\
             R|1|^^^A|1|||||F||||20240105102901\rC|1|I|code^text&F&x|G\rC|2|I|second\r\
             M|1|x\rQ|1|ALL\rZ|1\rL|1\r",
        );
        let o = observations(&c).into_iter().next().unwrap_or_default();
        assert_eq!(o["note"][0]["text"], "code text|x");
        assert_eq!(o["note"][1]["text"], "second");
        assert_eq!(c.report.unmapped_segments.get("C"), Some(&3));
        assert_eq!(c.report.unmapped_segments.get("M"), Some(&1));
        assert_eq!(c.report.unmapped_segments.get("Q"), Some(&1));
        assert_eq!(c.report.unmapped_segments.get("?"), Some(&1));
        assert_eq!(c.report.unmapped_fields.get("C-5"), Some(&1));
    }

    #[test]
    fn structural_warnings_reach_the_report() {
        let c = convert("H|\\^&\rR|1|^^^A|1|||||F||||20240105102901\rL|1\rP|1\r");
        let w: Vec<(usize, &str, WarningKind)> = c
            .report
            .warnings
            .iter()
            .map(|w| (w.segment, w.field.as_str(), w.kind))
            .collect();
        assert!(w.contains(&(2, "record", WarningKind::UnexpectedRecord)));
        assert!(w.contains(&(4, "record", WarningKind::UnexpectedRecord)));
        assert!(w.contains(&(1, "P", WarningKind::PatientNotIdentified)));
        let c = convert("H|\\^&\rP|1|X\r");
        assert!(c.report.warnings.iter().any(|w| w.field == "L"));
    }

    #[test]
    fn not_astm_is_an_error() {
        let err = ctx_with(|ctx| convert_astm(ctx, b"MSH|^~\\&|")).expect_err("not ASTM");
        assert_eq!(err.to_string(), "not a valid ASTM E1394 message");
        assert!(matches!(
            err,
            crate::convert::Error::Astm(record::Error::MissingHeader)
        ));
    }

    #[test]
    fn the_report_and_errors_hold_no_patient_data() {
        let c = convert(
            "H|\\^&\rP|1|SECRETID||N1^M1|Secretname^Jane|Maiden|19700101|Q|Street^Town||5551234\rO|1|SECRETSPEC\r\
             R|1|^^^A|SECRETVALUE^x|unit|weird||Y||||bad|I1\rC|1|I|SECRETNOTE\rL|1\r",
        );
        let report = serde_json::to_string(&c.report).expect("json");
        for secret in [
            "SECRET",
            "Secretname",
            "Jane",
            "Maiden",
            "19700101",
            "5551234",
            "Street",
        ] {
            assert!(!report.contains(secret), "{secret}");
        }
        assert!(!format!("{:?}", c.bundle).contains("SECRET"));
    }

    proptest! {
        #[test]
        fn conversion_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ctx_with(|ctx| convert_astm(ctx, &bytes));
        }

        #[test]
        fn conversion_never_panics_on_record_shaped_input(
            records in proptest::collection::vec(
                ("[HPORCQMLSZhpo]", proptest::collection::vec("[-A-Za-z0-9 .<>=^\\&\"]{0,12}", 0..16)),
                0..12,
            ),
        ) {
            let mut text = String::from("H|\\^&");
            for (kind, fields) in records {
                text.push('\r');
                text.push_str(&kind);
                for f in fields {
                    text.push('|');
                    text.push_str(&f);
                }
            }
            if let Ok(c) = ctx_with(|ctx| convert_astm(ctx, text.as_bytes())) {
                prop_assert_eq!(
                    c.report.obx_in,
                    c.report.observations_out + c.report.obx_not_converted.len()
                );
            }
        }
    }
}
