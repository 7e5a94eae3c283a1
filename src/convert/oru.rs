//! ORU^R01 → Patient, Encounter, Specimen, DiagnosticReport (one per OBR), Observation (one
//! per OBX) — v2-to-FHIR IG message map ORU_R01 and segment maps OBR[DiagnosticReport],
//! OBX[Observation], NTE[Observation], SPM[Specimen] (protocols.md §4.1-4.2, §5.1-5.7,
//! §5.10-5.11).
//!
//! Groups are found by walking segments (§4.1 [P]): PID opens a PATIENT_RESULT group, ORC/OBR
//! an ORDER_OBSERVATION, SPM a SPECIMEN; an NTE annotates the segment before it. OBX before any
//! OBR (v2.7+ PATIENT_OBSERVATION) become Observations without a DiagnosticReport.
//!
//! Gateway choices where the IG is silent (each also in tests/conformance/REPORT.md):
//! - OBX-5 repetitions: text types are joined with newlines (TX/FT repeats are lines); other
//!   types become `component[]` with the OBX-3 code (IG OBX[Observation-Component]).
//! - NTE after OBR → R5 cross-version extension `DiagnosticReport.note` (R4 has no note).
//! - NA/MA → valueSampledData with origin 0, period 0 (v2 carries no sampling period),
//!   dimensions = components per repetition.
//! - ED/RP → R5 cross-version extension `Observation.valueAttachment`.
//! - Types the IG does not map (EI, CX, XAD, ...) → valueString of the component texts
//!   (reported as `value-type-as-string`).

use super::datatype::{self, rep_text, text};
use super::party::{self, Mode};
use super::pcd;
use super::{
    Context, Error, ObxOutcome, ObxReason, Report, TimeKind, TimeOutcome, WarningKind, codes, id,
    time_outcome,
};
use crate::fhir::{
    Annotation, Attachment, Bundle, CodeableConcept, Coding, Decimal, DiagnosticReport, Entry,
    Extension, ExtensionValue, Identifier, Observation, ObservationComponent, Period, Quantity,
    Range, Ratio, Reference, Resource, SampledData, Specimen, Value,
};
use crate::hl7::{Header, Message, Repetition, Segment};

/// MSH fields consumed (delimiters, time, type, control id, version, charset, profile).
pub(crate) const MSH_MAPPED: &[usize] = &[1, 2, 7, 9, 10, 12, 18, 21];
const ORC_MAPPED: &[usize] = &[1, 2, 3];
const OBR_MAPPED: &[usize] = &[1, 2, 3, 4, 7, 8, 22, 24, 25];
const OBX_MAPPED: &[usize] = &[1, 2, 3, 5, 6, 7, 8, 11, 14, 16, 17, 18, 19, 20, 21, 23];
const OBX_MAPPED_PCD: &[usize] = &[1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 16, 17, 18, 19, 20, 21, 23];
const NTE_MAPPED: &[usize] = &[1, 3];
const SPM_MAPPED: &[usize] = &[1, 2, 4, 8, 17, 18, 24];

/// URL of the R5 cross-version extension for Observation.value as an Attachment (§5.3).
pub(crate) const EXT_VALUE_ATTACHMENT: &str =
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.valueAttachment";
const EXT_REPORT_NOTE: &str =
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note";
const EXT_ANALYSIS_TIME: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time";

/// One OBX with what hangs off it.
pub(crate) struct Row<'m> {
    pub index: usize,
    pub seg: Segment<'m>,
    pub notes: Vec<Segment<'m>>,
    pub specimen: Option<String>,
}

#[derive(Default)]
struct Order<'m> {
    orc: Option<(usize, Segment<'m>)>,
    obr: Option<(usize, Segment<'m>)>,
    notes: Vec<Segment<'m>>,
    rows: Vec<Row<'m>>,
    specimens: Vec<(usize, Segment<'m>)>,
}

#[derive(Default)]
struct Group<'m> {
    pid: Option<(usize, Segment<'m>)>,
    pv1: Option<(usize, Segment<'m>)>,
    orders: Vec<Order<'m>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    None,
    Order,
    Obx,
    Other,
}

/// What an Observation inherits from its order and message.
pub(crate) struct Inherited<'a> {
    pub subject: Option<&'a str>,
    pub encounter: Option<&'a str>,
    pub effective: Option<&'a str>,
    pub issued: Option<&'a str>,
    pub pcd: bool,
}

/// Builder state for one message.
pub(crate) struct Conv<'c, 'r> {
    pub ctx: &'c Context<'c>,
    pub report: &'r mut Report,
    pub control_id: String,
    pub bundle: Bundle,
    /// Date/times converted so far in this message, by text and kind: the same timestamp
    /// usually repeats in every OBX (OBX-14, OBX-19), and converting it is the costly part.
    pub times: Vec<(String, TimeKind, TimeOutcome)>,
}

impl Conv<'_, '_> {
    pub(crate) fn derive(&self, kind: &str, segment: usize) -> String {
        id::derive_numbered(
            &[self.ctx.tenant, self.ctx.source, &self.control_id, kind],
            Some(segment),
        )
    }

    /// Pushes an entry unless one with the same fullUrl is already in the Bundle.
    pub(crate) fn push_unique(&mut self, entry: Entry) -> String {
        let url = entry.full_url.clone();
        if !self.bundle.entry.iter().any(|e| e.full_url == url) {
            self.bundle.entry.push(entry);
        }
        url
    }

    fn time(&mut self, segment: usize, field: &str, raw: &str, kind: TimeKind) -> Option<String> {
        let known = self
            .times
            .iter()
            .find(|(r, k, _)| *k == kind && r == raw)
            .map(|(_, _, outcome)| outcome.clone());
        let outcome = known.unwrap_or_else(|| {
            let outcome = time_outcome(self.ctx, raw, kind);
            self.times.push((raw.to_owned(), kind, outcome.clone()));
            outcome
        });
        outcome.report(self.report, segment, field)
    }
}

fn is_pcd(message: &Message<'_>) -> bool {
    let profile = message
        .segment("MSH")
        .map(|m| m.field(21).raw().contains("IHE_PCD"))
        .unwrap_or(false);
    profile
        || message.segments_named("OBX").any(|s| {
            s.field(3)
                .component(3)
                .raw()
                .trim()
                .eq_ignore_ascii_case("MDC")
        })
}

/// Converts an ORU^R01.
pub(crate) fn convert(
    ctx: &Context<'_>,
    message: &Message<'_>,
    header: &Header<'_>,
    report: &mut Report,
) -> Result<Bundle, Error> {
    let pcd = is_pcd(message);
    let mut groups: Vec<Group<'_>> = vec![Group::default()];
    let mut pending_orc: Option<(usize, Segment<'_>)> = None;
    let mut last = Last::None;
    let mut current_specimen: Option<usize> = None;
    let mut conv = Conv {
        ctx,
        report,
        control_id: header.control_id.to_owned(),
        bundle: Bundle::transaction(),
        times: Vec::new(),
    };
    for (i, seg) in message.segments().iter().enumerate() {
        let index = i + 1;
        let seg = *seg;
        // `groups` starts with one group and only grows.
        let Some(group) = groups.last_mut() else {
            break;
        };
        match seg.id() {
            "MSH" => conv.report.unmapped_fields_of(&seg, MSH_MAPPED),
            "PID" => {
                if group.pid.is_some() || !group.orders.is_empty() {
                    groups.push(Group {
                        pid: Some((index, seg)),
                        ..Group::default()
                    });
                } else {
                    group.pid = Some((index, seg));
                }
                last = Last::Other;
            }
            "PV1" if group.pv1.is_none() => {
                group.pv1 = Some((index, seg));
                last = Last::Other;
            }
            "ORC" => {
                if pending_orc.replace((index, seg)).is_some() {
                    conv.report.unmapped_segment("ORC");
                }
                last = Last::Other;
            }
            "OBR" => {
                group.orders.push(Order {
                    orc: pending_orc.take(),
                    obr: Some((index, seg)),
                    ..Order::default()
                });
                current_specimen = None;
                last = Last::Order;
            }
            "OBX" => {
                conv.report.obx_in += 1;
                let order = last_or_new(&mut group.orders);
                let specimen =
                    current_specimen.map(|s| ["urn:uuid:", &conv.derive("Specimen", s)].concat());
                order.rows.push(Row {
                    index,
                    seg,
                    notes: Vec::new(),
                    specimen,
                });
                last = Last::Obx;
            }
            "NTE" => {
                let order = group.orders.last_mut();
                match (last, order) {
                    (Last::Obx, Some(o)) => {
                        if let Some(row) = o.rows.last_mut() {
                            row.notes.push(seg);
                        }
                    }
                    (Last::Order, Some(o)) => o.notes.push(seg),
                    _ => conv.report.unmapped_segment("NTE"),
                }
                if matches!(last, Last::Obx | Last::Order) {
                    conv.report.unmapped_fields_of(&seg, NTE_MAPPED);
                }
            }
            "SPM" => {
                let order = last_or_new(&mut group.orders);
                order.specimens.push((index, seg));
                current_specimen = Some(index);
                last = Last::Other;
            }
            other => {
                conv.report.unmapped_segment(other);
                last = Last::Other;
            }
        }
    }
    if pending_orc.is_some() {
        conv.report.unmapped_segment("ORC");
    }
    let issued_msh = conv.time(1, "MSH-7", header.date_time, TimeKind::Instant);
    for group in &groups {
        let subject = group.pid.and_then(|(i, pid)| {
            party::patient(conv.ctx, &pid, i, Mode::CreateIfAbsent, conv.report)
                .map(|e| conv.push_unique(e))
        });
        if group.pid.is_none() {
            conv.report
                .warn(1, "PID", WarningKind::PatientNotIdentified);
        }
        let encounter = group.pv1.and_then(|(i, pv1)| {
            party::encounter(
                conv.ctx,
                &pv1,
                i,
                subject.as_deref(),
                Mode::CreateIfAbsent,
                conv.report,
            )
            .map(|e| conv.push_unique(e))
        });
        for order in &group.orders {
            convert_order(
                &mut conv,
                order,
                subject.as_deref(),
                encounter.as_deref(),
                issued_msh.as_deref(),
                pcd,
            );
        }
    }
    Ok(conv.bundle)
}

fn convert_order(
    conv: &mut Conv<'_, '_>,
    order: &Order<'_>,
    subject: Option<&str>,
    encounter: Option<&str>,
    issued_msh: Option<&str>,
    pcd: bool,
) {
    if let Some((_, orc)) = &order.orc {
        conv.report.unmapped_fields_of(orc, ORC_MAPPED);
    }
    let mut specimen_refs = Vec::new();
    for (index, spm) in &order.specimens {
        let entry = specimen(conv, *index, spm, subject);
        specimen_refs.push(conv.push_unique(entry));
    }
    let (obr_effective, obr_end, obr_issued) = match &order.obr {
        Some((i, obr)) => (
            conv.time(
                *i,
                "OBR-7",
                obr.field(7).component(1).raw(),
                TimeKind::DateTime,
            ),
            conv.time(
                *i,
                "OBR-8",
                obr.field(8).component(1).raw(),
                TimeKind::DateTime,
            ),
            conv.time(
                *i,
                "OBR-22",
                obr.field(22).component(1).raw(),
                TimeKind::Instant,
            ),
        ),
        None => (None, None, None),
    };
    let inherited = Inherited {
        subject,
        encounter,
        effective: obr_effective.as_deref(),
        issued: obr_issued.as_deref().or(issued_msh),
        pcd,
    };
    let mut observations: Vec<(String, Observation)> = Vec::new();
    if pcd {
        pcd::convert_rows(conv, &order.rows, &inherited, &mut observations);
    } else {
        for row in &order.rows {
            if let Some(obs) = observation(conv, row, &inherited) {
                observations.push((conv.derive("Observation", row.index), obs));
            }
        }
    }
    if let Some((index, obr)) = &order.obr {
        let mut dr = diagnostic_report(
            conv,
            *index,
            obr,
            order.orc.as_ref().map(|(_, s)| s),
            &observations,
        );
        dr.subject = subject.map(Reference::to);
        dr.encounter = encounter.map(Reference::to);
        match (obr_effective, obr_end) {
            (start, Some(end)) => {
                dr.effective_period = Some(Period {
                    start,
                    end: Some(end),
                })
            }
            (start, None) => dr.effective_date_time = start,
        }
        dr.issued = obr_issued;
        dr.specimen = specimen_refs.iter().map(|r| Reference::to(r)).collect();
        for note in &order.notes {
            if let Some(a) = annotation(note) {
                dr.extension.push(Extension {
                    url: EXT_REPORT_NOTE.to_owned(),
                    value: ExtensionValue::Annotation(a),
                });
            }
        }
        let id = conv.derive("DiagnosticReport", *index);
        dr.id = Some(id.clone());
        conv.bundle.entry.push(Entry::put_by_id(
            &id,
            Resource::DiagnosticReport(Box::new(dr)),
        ));
    }
    for (id, mut obs) in observations {
        obs.id = Some(id.clone());
        conv.bundle
            .entry
            .push(Entry::put_by_id(&id, Resource::Observation(Box::new(obs))));
    }
}

fn diagnostic_report(
    conv: &mut Conv<'_, '_>,
    index: usize,
    obr: &Segment<'_>,
    orc: Option<&Segment<'_>>,
    observations: &[(String, Observation)],
) -> DiagnosticReport {
    conv.report.unmapped_fields_of(obr, OBR_MAPPED);
    let ctx = conv.ctx;
    let mut dr = DiagnosticReport::default();
    for (field, type_code) in [(2, "PLAC"), (3, "FILL")] {
        let rep = orc
            .map(|o| o.field(field).repetition(1))
            .filter(|r| !r.is_empty() && !r.is_null())
            .unwrap_or_else(|| obr.field(field).repetition(1));
        dr.identifier
            .extend(datatype::ei_identifier(ctx, rep, Some(type_code)));
    }
    let status = text(obr.field(25).component(1));
    if status.as_deref().and_then(codes::report_status) == Some("corrected") {
        conv.report
            .warn(index, "OBR-25", WarningKind::CorrectionAsNewResource);
    }
    dr.status = match status {
        Some(code) => codes::report_status(&code)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                conv.report
                    .warn(index, "OBR-25", WarningKind::UnknownTableCode);
                "unknown".to_owned()
            }),
        None => {
            conv.report
                .warn(index, "OBR-25", WarningKind::MissingRequired);
            derived_report_status(observations).to_owned()
        }
    };
    if let Some(section) = text(obr.field(24).component(1)) {
        dr.category.push(CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/v2-0074",
            &section,
        )));
    }
    dr.code = datatype::codeable_concept(ctx, obr.field(4).repetition(1)).unwrap_or_else(|| {
        conv.report
            .warn(index, "OBR-4", WarningKind::MissingRequired);
        CodeableConcept::text("unknown")
    });
    dr.result = observations
        .iter()
        .map(|(id, _)| Reference::to(&["urn:uuid:", id].concat()))
        .collect();
    dr
}

/// DiagnosticReport.status when OBR-25 is empty [P]: from the Observations' statuses.
fn derived_report_status(observations: &[(String, Observation)]) -> &'static str {
    let statuses: Vec<&str> = observations
        .iter()
        .map(|(_, o)| o.status.as_str())
        .collect();
    if statuses.is_empty() {
        "registered"
    } else if statuses
        .iter()
        .all(|s| matches!(*s, "final" | "amended" | "corrected"))
    {
        "final"
    } else if statuses.contains(&"preliminary") {
        "preliminary"
    } else {
        "unknown"
    }
}

fn specimen(
    conv: &mut Conv<'_, '_>,
    index: usize,
    spm: &Segment<'_>,
    subject: Option<&str>,
) -> Entry {
    conv.report.unmapped_fields_of(spm, SPM_MAPPED);
    let ctx = conv.ctx;
    let mut s = Specimen::default();
    let eip = spm.field(2).repetition(1);
    s.identifier.extend(datatype::ei_subcomponents(
        ctx,
        eip.component(1),
        Some("PLAC"),
    ));
    s.identifier.extend(datatype::ei_subcomponents(
        ctx,
        eip.component(2),
        Some("FILL"),
    ));
    s.type_ = datatype::codeable_concept(ctx, spm.field(4).repetition(1));
    s.subject = subject.map(Reference::to);
    let collected = spm.field(17).repetition(1);
    let start = conv.time(
        index,
        "SPM-17",
        collected.component(1).subcomponent(1),
        TimeKind::DateTime,
    );
    let end = conv.time(
        index,
        "SPM-17",
        collected.component(2).subcomponent(1),
        TimeKind::DateTime,
    );
    match end {
        Some(end) => {
            s.collection.collected_period = Some(Period {
                start,
                end: Some(end),
            })
        }
        None => s.collection.collected_date_time = start,
    }
    s.collection.body_site = datatype::codeable_concept(ctx, spm.field(8).repetition(1));
    s.received_time = conv.time(
        index,
        "SPM-18",
        spm.field(18).component(1).subcomponent(1),
        TimeKind::DateTime,
    );
    for rep in spm.field(24).repetitions() {
        s.condition.extend(datatype::codeable_concept(ctx, rep));
    }
    let id = conv.derive("Specimen", index);
    s.id = Some(id.clone());
    Entry::put_by_id(&id, Resource::Specimen(Box::new(s)))
}

/// NTE-3 (repeats joined with newlines) → Annotation.
pub(crate) fn annotation(nte: &Segment<'_>) -> Option<Annotation> {
    let lines: Vec<String> = nte
        .field(3)
        .repetitions()
        .map(|r| rep_text(r).unwrap_or_default())
        .collect();
    let text = lines.join("\n");
    (!text.trim().is_empty()).then_some(Annotation {
        text,
        ..Annotation::default()
    })
}

/// The device-status and interpretation content of OBX-8.
#[derive(Default)]
pub(crate) struct Flags {
    pub interpretation: Vec<CodeableConcept>,
    pub absent: Option<&'static str>,
    pub test_data: bool,
    pub qualifiers: Vec<String>,
}

/// OBX-8 (table 0078, §5.6; PCD device status §4.5).
pub(crate) fn flags(conv: &mut Conv<'_, '_>, index: usize, obx: &Segment<'_>) -> Flags {
    let mut out = Flags::default();
    for rep in obx.field(8).repetitions() {
        let Some(code) = datatype::text_cow(rep.component(1)) else {
            // A flag sent as text only (`^High`): kept as text, and said to be uncoded.
            if let Some(cc) = datatype::codeable_concept(conv.ctx, rep) {
                conv.report
                    .warn(index, "OBX-8", WarningKind::MissingRequired);
                out.interpretation.push(cc);
            }
            continue;
        };
        let system = datatype::text_cow(rep.component(3));
        let table_0078 = system.as_deref().is_none_or(|s| {
            s.eq_ignore_ascii_case("HL70078") || s.eq_ignore_ascii_case("HL7 0078")
        });
        if !table_0078 {
            out.interpretation
                .extend(datatype::codeable_concept(conv.ctx, rep));
            continue;
        }
        match codes::flag(&code) {
            codes::Flag::V3(c) => out.interpretation.push(CodeableConcept::coding(Coding::new(
                codes::V3_INTERPRETATION,
                c,
            ))),
            codes::Flag::V2(c) => out.interpretation.push(CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/v2-0078",
                c,
            ))),
            codes::Flag::Device(status) => match status {
                codes::DeviceStatus::TestOrDemo => out.test_data = true,
                codes::DeviceStatus::Qualifier => out.qualifiers.push(code.to_ascii_uppercase()),
                other => out.absent = other.data_absent_reason(),
            },
            codes::Flag::Unknown => {
                conv.report
                    .warn(index, "OBX-8", WarningKind::UnknownTableCode);
                out.interpretation
                    .extend(datatype::codeable_concept(conv.ctx, rep));
            }
        }
    }
    out
}

/// What OBX-5 became.
pub(crate) enum ValueOut {
    None,
    Value(Value),
    Components(Vec<Value>),
    Attachment(Attachment),
}

fn dar(code: &str) -> CodeableConcept {
    CodeableConcept::coding(Coding::new(codes::DATA_ABSENT_REASON, code))
}

/// Builds the Observation for one OBX (also the base of PCD compounds). `None` when it is not
/// an Observation (the reason is recorded in the report).
pub(crate) fn observation(
    conv: &mut Conv<'_, '_>,
    row: &Row<'_>,
    inh: &Inherited<'_>,
) -> Option<Observation> {
    let obx = &row.seg;
    let index = row.index;
    let ctx = conv.ctx;
    conv.report
        .unmapped_fields_of(obx, if inh.pcd { OBX_MAPPED_PCD } else { OBX_MAPPED });
    let Some(mut code) = datatype::codeable_concept(ctx, obx.field(3).repetition(1)) else {
        conv.report.obx_not_converted.push(ObxOutcome {
            segment: index,
            reason: ObxReason::MissingCode,
        });
        return None;
    };
    let fl = flags(conv, index, obx);
    if fl.test_data {
        conv.report.obx_not_converted.push(ObxOutcome {
            segment: index,
            reason: ObxReason::DeviceTestData,
        });
        return None;
    }
    let mut obs = Observation::default();
    let status_code = datatype::text_cow(obx.field(11).component(1));
    let (status, status_dar) = match status_code.as_deref().map(codes::observation_status) {
        Some(Some((s, d))) => (s, d),
        Some(None) => {
            conv.report
                .warn(index, "OBX-11", WarningKind::UnknownTableCode);
            ("unknown", None)
        }
        None => {
            conv.report
                .warn(index, "OBX-11", WarningKind::MissingRequired);
            ("unknown", None)
        }
    };
    obs.status = status.to_owned();
    if matches!(status, "corrected" | "entered-in-error") {
        conv.report
            .warn(index, "OBX-11", WarningKind::CorrectionAsNewResource);
    }
    let is_mdc = code
        .coding
        .first()
        .is_some_and(|c| c.system.as_deref() == Some(codes::MDC));
    if is_mdc {
        if let Some(loinc) = code
            .coding
            .first()
            .and_then(|c| c.code.as_deref())
            .and_then(codes::mdc_metric)
            .and_then(|m| m.loinc)
        {
            code.coding.push(Coding::new(codes::LOINC, loinc));
        }
    }
    let category = if is_mdc { "vital-signs" } else { "laboratory" };
    obs.category.push(CodeableConcept::coding(Coding::new(
        codes::OBSERVATION_CATEGORY,
        category,
    )));
    let unit = datatype::unit(conv.ctx, obx.field(6).repetition(1));
    let value_out = value(conv, row, &unit);
    if datatype::has_unit(&unit) && !carries_unit(&value_out) {
        conv.report
            .warn(row.index, "OBX-6", WarningKind::UnitNotCarried);
    }
    match value_out {
        ValueOut::None => {}
        ValueOut::Value(v) => obs.value = Some(v),
        ValueOut::Components(values) => {
            obs.component = values
                .into_iter()
                .map(|v| ObservationComponent {
                    extension: Vec::new(),
                    code: code.clone(),
                    value: Some(v),
                    data_absent_reason: None,
                    interpretation: Vec::new(),
                    reference_range: Vec::new(),
                })
                .collect();
        }
        ValueOut::Attachment(a) => obs.extension.push(Extension {
            url: EXT_VALUE_ATTACHMENT.to_owned(),
            value: ExtensionValue::Attachment(a),
        }),
    }
    if let Some(reason) = fl.absent {
        obs.value = None;
        obs.component.clear();
        obs.data_absent_reason = Some(dar(reason));
    } else if obs.value.is_none() && obs.component.is_empty() && obs.extension.is_empty() {
        obs.data_absent_reason = status_dar.map(dar);
    }
    obs.code = code;
    obs.interpretation = fl.interpretation;
    for q in fl.qualifiers {
        obs.extension.push(Extension {
            url: id::minted(
                ctx.system_base,
                &["StructureDefinition", "device-measurement-status"],
            ),
            value: ExtensionValue::Code(q),
        });
    }
    obs.reference_range
        .extend(datatype::reference_range(&obx.field(7).text(), &unit));
    obs.subject = inh.subject.map(Reference::to);
    obs.encounter = inh.encounter.map(Reference::to);
    obs.effective_date_time = conv
        .time(
            index,
            "OBX-14",
            obx.field(14).component(1).raw(),
            TimeKind::DateTime,
        )
        .or_else(|| inh.effective.map(str::to_owned));
    obs.issued = inh.issued.map(str::to_owned);
    for rep in obx.field(16).repetitions() {
        obs.performer.extend(datatype::xcn_reference(ctx, rep));
    }
    for rep in obx.field(23).repetitions() {
        obs.performer.extend(datatype::xon_reference(ctx, rep));
    }
    obs.method = first_cc(conv, index, obx, 17);
    obs.body_site = first_cc(conv, index, obx, 20);
    if let Some(t) = conv.time(
        index,
        "OBX-19",
        obx.field(19).component(1).raw(),
        TimeKind::DateTime,
    ) {
        obs.extension.push(Extension {
            url: EXT_ANALYSIS_TIME.to_owned(),
            value: ExtensionValue::DateTime(t),
        });
    }
    obs.identifier.extend(datatype::ei_identifier(
        ctx,
        obx.field(21).repetition(1),
        Some("FILL"),
    ));
    obs.note = row.notes.iter().filter_map(annotation).collect();
    obs.specimen = row.specimen.as_deref().map(Reference::to);
    if !inh.pcd {
        if let Some(device) = device_entry(conv, obx.field(18).repetition(1), None) {
            obs.device = Some(Reference::to(&device));
        }
    }
    // Observation.device is 0..1: a second equipment instance identifier is reported.
    if obx
        .field(18)
        .repetitions()
        .skip(1)
        .any(datatype::rep_has_text)
    {
        conv.report
            .warn(row.index, "OBX-18", WarningKind::RepetitionsDropped);
    }
    Some(obs)
}

fn first_cc(
    conv: &mut Conv<'_, '_>,
    index: usize,
    obx: &Segment<'_>,
    field: usize,
) -> Option<CodeableConcept> {
    let f = obx.field(field);
    if f.repetitions().filter(|r| !r.is_empty()).count() > 1 {
        conv.report.warn(
            index,
            format!("OBX-{field}"),
            WarningKind::RepetitionsDropped,
        );
    }
    datatype::codeable_concept(conv.ctx, f.repetition(1))
}

/// The last order of a group, opened (without an OBR) when an OBX or SPM comes first.
fn last_or_new<'a, 'm>(orders: &'a mut Vec<Order<'m>>) -> &'a mut Order<'m> {
    if orders.is_empty() {
        orders.push(Order::default());
    }
    let last = orders.len() - 1;
    &mut orders[last]
}

/// OBX-18 (EI) → a Device entry (conditional create by identifier); returns its fullUrl.
/// EUI-64 (EI.4 `EUI-64`/`EUI64`, value in EI.1 or EI.3) is normalised to 16 upper-case hex
/// digits under caregate's EUI-64 system (§4.3).
pub(crate) fn device_entry(
    conv: &mut Conv<'_, '_>,
    ei: Repetition<'_>,
    type_: Option<CodeableConcept>,
) -> Option<String> {
    let ctx = conv.ctx;
    let kind = text(ei.component(4)).map(|k| k.to_ascii_uppercase().replace('-', ""));
    let identifier = if kind.as_deref() == Some("EUI64") {
        let raw = text(ei.component(1)).or_else(|| text(ei.component(3)))?;
        let hex: String = raw
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        Identifier {
            system: Some(id::minted(ctx.system_base, &["id", "eui-64"])),
            value: Some(hex),
            ..Identifier::default()
        }
    } else {
        datatype::ei_identifier(ctx, ei, None)?
    };
    let system = identifier.system.clone().unwrap_or_default();
    let value = identifier.value.clone().unwrap_or_default();
    let uuid = id::derive(&[ctx.tenant, "Device", &system, &value]);
    let device = crate::fhir::Device {
        id: None,
        identifier: vec![identifier],
        type_,
        ..crate::fhir::Device::default()
    };
    let entry = Entry::create_if_none_exist(
        &uuid,
        Resource::Device(Box::new(device)),
        id::identifier_query(&system, &value),
    );
    Some(conv.push_unique(entry))
}

/// Whether a value holds OBX-6's unit (Quantity, Range, Ratio, SampledData); an empty value
/// loses nothing.
fn carries_unit(v: &ValueOut) -> bool {
    let carries = |v: &Value| {
        matches!(
            v,
            Value::Quantity(_) | Value::Range(_) | Value::Ratio(_) | Value::SampledData(_)
        )
    };
    match v {
        ValueOut::None => true,
        ValueOut::Value(v) => carries(v),
        ValueOut::Components(vs) => vs.iter().all(carries),
        ValueOut::Attachment(_) => false,
    }
}

/// OBX-5 → value[x] by OBX-2 (§5.3).
pub(crate) fn value(conv: &mut Conv<'_, '_>, row: &Row<'_>, unit: &Quantity) -> ValueOut {
    let obx = &row.seg;
    let index = row.index;
    let reps: Vec<Repetition<'_>> = obx
        .field(5)
        .repetitions()
        .filter(|r| datatype::rep_has_text(*r))
        .collect();
    if reps.is_empty() {
        return ValueOut::None;
    }
    let type_code = obx.field(2).component(1).raw().trim().to_ascii_uppercase();
    let kind = codes::value_kind(&type_code);
    if type_code.is_empty() {
        conv.report
            .warn(index, "OBX-2", WarningKind::MissingValueType);
        let joined: Vec<String> = reps.iter().filter_map(|r| rep_text(*r)).collect();
        return ValueOut::Value(Value::String(joined.join("\n")));
    }
    match kind {
        codes::ValueKind::Text => {
            let joined: Vec<String> = reps
                .iter()
                .map(|r| rep_text(*r).unwrap_or_default())
                .collect();
            ValueOut::Value(Value::String(joined.join("\n")))
        }
        codes::ValueKind::NumericArray => ValueOut::Value(sampled_data(&reps, unit)),
        codes::ValueKind::EncapsulatedData => match attachment_ed(reps[0]) {
            Some(a) => ValueOut::Attachment(a),
            None => {
                conv.report
                    .warn(index, "OBX-5", WarningKind::InvalidEncapsulatedData);
                ValueOut::None
            }
        },
        codes::ValueKind::ReferencePointer => {
            let r = reps[0];
            let mut a = Attachment {
                url: text(r.component(1)),
                ..Attachment::default()
            };
            a.content_type = text(r.component(4)).map(|s| mime(Some(&s), None));
            if a.url.is_none() {
                return ValueOut::None;
            }
            ValueOut::Attachment(a)
        }
        _ => {
            let mut values = Vec::with_capacity(reps.len());
            for r in &reps {
                if let Some(v) = single_value(conv, index, kind, *r, unit) {
                    values.push(v);
                }
            }
            match values.len() {
                0 => ValueOut::None,
                1 => ValueOut::Value(values.remove(0)),
                _ => ValueOut::Components(values),
            }
        }
    }
}

fn single_value(
    conv: &mut Conv<'_, '_>,
    index: usize,
    kind: codes::ValueKind,
    r: Repetition<'_>,
    unit: &Quantity,
) -> Option<Value> {
    use codes::ValueKind as K;
    let ctx = conv.ctx;
    Some(match kind {
        K::Numeric => {
            let raw = rep_text(r)?;
            match datatype::compared_quantity(&raw, unit) {
                Some(q) => Value::Quantity(q),
                None => {
                    conv.report.warn(index, "OBX-5", WarningKind::NotNumeric);
                    Value::String(raw)
                }
            }
        }
        K::Coded => Value::CodeableConcept(datatype::codeable_concept(ctx, r)?),
        K::TableCode => {
            let code = text(r.component(1))?;
            Value::CodeableConcept(CodeableConcept {
                coding: vec![Coding {
                    code: Some(code),
                    ..Coding::default()
                }],
                text: None,
            })
        }
        K::DateTime => {
            Value::DateTime(conv.time(index, "OBX-5", r.component(1).raw(), TimeKind::DateTime)?)
        }
        K::Time => match super::time::to_time(r.component(1).raw()) {
            Ok((t, dropped)) => {
                if dropped {
                    conv.report
                        .warn(index, "OBX-5", WarningKind::TimeOffsetDropped);
                }
                Value::Time(t)
            }
            Err(_) => {
                conv.report
                    .warn(index, "OBX-5", WarningKind::InvalidDateTime);
                return None;
            }
        },
        K::DateRange => {
            let start = conv.time(
                index,
                "OBX-5",
                r.component(1).subcomponent(1),
                TimeKind::DateTime,
            );
            let end = conv.time(
                index,
                "OBX-5",
                r.component(2).subcomponent(1),
                TimeKind::DateTime,
            );
            let p = Period { start, end };
            if p.is_empty() {
                return None;
            }
            Value::Period(p)
        }
        K::NumericRange => {
            let low = text(r.component(1)).and_then(|t| Decimal::parse(&t));
            let high = text(r.component(2)).and_then(|t| Decimal::parse(&t));
            if low.is_none() && high.is_none() {
                conv.report.warn(index, "OBX-5", WarningKind::NotNumeric);
                return Some(Value::String(rep_text(r)?));
            }
            Value::Range(Range {
                low: low.map(|d| datatype::quantity(d, unit)),
                high: high.map(|d| datatype::quantity(d, unit)),
            })
        }
        K::StructuredNumeric => structured_numeric(r, unit),
        K::ValueRange => {
            let lo = text(r.component(1)).unwrap_or_default();
            let hi = text(r.component(2)).unwrap_or_default();
            Value::String(format!("{lo}-{hi}"))
        }
        K::Other => {
            conv.report
                .warn(index, "OBX-5", WarningKind::ValueTypeAsString);
            let parts: Vec<String> = r.components().filter_map(text).collect();
            if parts.is_empty() {
                return None;
            }
            Value::String(parts.join(" "))
        }
        K::Text | K::NumericArray | K::EncapsulatedData | K::ReferencePointer => {
            Value::String(rep_text(r)?)
        }
    })
}

/// SN (§5.3 SN rules): comparator ^ num1 ^ separator/suffix ^ num2.
pub(crate) fn structured_numeric(r: Repetition<'_>, unit: &Quantity) -> Value {
    let comparator = text(r.component(1)).unwrap_or_default();
    let n1 = text(r.component(2)).unwrap_or_default();
    let sep = text(r.component(3)).unwrap_or_default();
    let n2 = text(r.component(4)).unwrap_or_default();
    let as_string = || {
        let mut s = format!("{comparator}{n1}{sep}{n2}");
        if let Some(u) = &unit.unit {
            s.push(' ');
            s.push_str(u);
        }
        Value::String(s)
    };
    if comparator == "<>" {
        return as_string();
    }
    let d1 = Decimal::parse(&n1);
    let d2 = Decimal::parse(&n2);
    let fhir_comparator = match comparator.as_str() {
        "<" | "<=" | ">=" | ">" => Some(comparator.clone()),
        "" | "=" => None,
        _ => return as_string(),
    };
    match sep.as_str() {
        ":" | "/" => match (d1, d2) {
            (Some(a), Some(b)) => {
                let mut num = datatype::quantity(a, unit);
                num.comparator = fhir_comparator;
                Value::Ratio(Ratio {
                    numerator: Some(num),
                    denominator: Some(datatype::quantity(b, unit)),
                })
            }
            _ => as_string(),
        },
        "-" => match (d1, d2) {
            (Some(a), Some(b)) if fhir_comparator.is_none() => Value::Range(Range {
                low: Some(datatype::quantity(a, unit)),
                high: Some(datatype::quantity(b, unit)),
            }),
            _ => as_string(),
        },
        "" if n2.is_empty() => match d1 {
            Some(a) => {
                let mut q = datatype::quantity(a, unit);
                q.comparator = fhir_comparator;
                Value::Quantity(q)
            }
            None => as_string(),
        },
        _ => as_string(),
    }
}

fn sampled_data(reps: &[Repetition<'_>], unit: &Quantity) -> Value {
    let mut data = Vec::new();
    let mut dimensions = 1u32;
    for r in reps {
        let n = u32::try_from(r.component_count())
            .unwrap_or(u32::MAX)
            .max(1);
        dimensions = dimensions.max(n);
        for c in r.components() {
            match text(c).and_then(|t| Decimal::parse(&t)) {
                Some(d) => data.push(d.as_str().to_owned()),
                None => data.push("E".to_owned()),
            }
        }
    }
    let mut origin = datatype::quantity(Decimal::from_int(0), unit);
    origin.comparator = None;
    Value::SampledData(SampledData {
        origin,
        period: Decimal::from_int(0),
        dimensions,
        data: (!data.is_empty()).then(|| data.join(" ")),
    })
}

/// A MIME type from ED.2/ED.3 (or RP.3/RP.4) [P].
fn mime(subtype: Option<&str>, type_of_data: Option<&str>) -> String {
    let sub = subtype.unwrap_or("").trim();
    if sub.contains('/') {
        return sub.to_ascii_lowercase();
    }
    match (
        sub.to_ascii_uppercase().as_str(),
        type_of_data.map(str::to_ascii_uppercase).as_deref(),
    ) {
        ("PDF", _) => "application/pdf",
        ("JPEG" | "JPG", _) => "image/jpeg",
        ("PNG", _) => "image/png",
        ("GIF", _) => "image/gif",
        ("TIFF" | "TIF", _) => "image/tiff",
        ("HTML", _) => "text/html",
        ("XML", _) => "application/xml",
        ("RTF", _) => "application/rtf",
        ("PLAIN" | "TEXT", _) | (_, Some("TEXT" | "TX")) => "text/plain",
        _ => "application/octet-stream",
    }
    .to_owned()
}

/// ED (§2.9: source ^ type ^ subtype ^ encoding ^ data) → Attachment with base64 data.
fn attachment_ed(r: Repetition<'_>) -> Option<Attachment> {
    let data = text(r.component(5))?;
    let encoding = text(r.component(4)).map(|e| e.to_ascii_uppercase());
    let b64 = match encoding.as_deref() {
        Some("BASE64") => {
            let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            if !id::is_base64(&cleaned) {
                return None;
            }
            cleaned
        }
        Some("HEX") => id::base64(&id::from_hex(&data)?),
        _ => id::base64(data.as_bytes()),
    };
    Some(Attachment {
        content_type: Some(mime(
            text(r.component(3)).as_deref(),
            text(r.component(2)).as_deref(),
        )),
        data: Some(b64),
        url: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::testutil::field;

    fn sn(raw: &str, unit: &str) -> serde_json::Value {
        let u = Quantity {
            unit: (!unit.is_empty()).then(|| unit.to_owned()),
            ..Quantity::default()
        };
        let v = structured_numeric(field(raw).repetition(1), &u);
        let obs = Observation {
            value: Some(v),
            ..Observation::default()
        };
        let mut json = serde_json::to_value(&obs).expect("serializes");
        if let Some(o) = json.as_object_mut() {
            o.remove("status");
            o.remove("code");
        }
        json
    }

    #[test]
    fn sn_follows_the_ig_rules_per_separator_and_comparator() {
        use serde_json::json;
        assert_eq!(
            sn(">^10", ""),
            json!({"valueQuantity": {"value": 10, "comparator": ">"}})
        );
        assert_eq!(sn("^5.0", ""), json!({"valueQuantity": {"value": 5.0}}));
        assert_eq!(
            sn("^1^:^128", ""),
            json!({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}})
        );
        assert_eq!(
            sn("^2^-^4", "mg"),
            json!({"valueRange": {"low": {"value": 2, "unit": "mg"}, "high": {"value": 4, "unit": "mg"}}})
        );
        assert_eq!(sn("<>^2^-^4", ""), json!({"valueString": "<>2-4"}));
        assert_eq!(sn("^2^+", ""), json!({"valueString": "2+"}));
        assert_eq!(sn("^abc", ""), json!({"valueString": "abc"}));
    }

    #[test]
    fn mime_types_come_from_subtype_or_type_of_data() {
        assert_eq!(mime(Some("PDF"), Some("AP")), "application/pdf");
        assert_eq!(mime(Some("image/png"), None), "image/png");
        assert_eq!(mime(None, Some("TEXT")), "text/plain");
        assert_eq!(mime(Some("WEIRD"), None), "application/octet-stream");
    }

    #[test]
    fn ed_base64_is_validated_and_ascii_is_encoded() {
        let a = attachment_ed(field("LAB^AP^PDF^Base64^JVBERi0=").repetition(1)).expect("valid");
        assert_eq!(a.data.as_deref(), Some("JVBERi0="));
        assert_eq!(a.content_type.as_deref(), Some("application/pdf"));
        assert!(attachment_ed(field("LAB^AP^PDF^Base64^not base64!").repetition(1)).is_none());
        let a = attachment_ed(field("LAB^TEXT^PLAIN^A^hi").repetition(1)).expect("valid");
        assert_eq!(a.data.as_deref(), Some("aGk="));
    }
}
