//! PID → Patient and PV1 → Encounter (v2-to-FHIR IG segment maps PID[Patient] and
//! PV1[Encounter]; protocols.md §5.8, §5.9), shared by ORU and ADT.
//!
//! Identity: a Patient is identified by one PID-3 identifier (the first of type `MR`, else the
//! first valued one), an Encounter by its PV1-19 visit number. Results send them as conditional
//! creates (`POST` + `ifNoneExist`: a lab message never overwrites demographics), ADT as
//! conditional updates (`PUT Type?identifier=`: an A08 replaces the Patient, never duplicates
//! it). Without an identifier there is no Patient/Encounter resource (reported): a resource
//! that cannot be found again would be duplicated on every resend.

use super::datatype::{self, text};
use super::{Context, Report, TimeKind, WarningKind, codes, convert_time, id};
use crate::fhir::CodeableConcept;
use crate::fhir::{
    Coding, Encounter, EncounterLocation, EncounterParticipant, Entry, Extension, ExtensionValue,
    Identifier, Patient, Period, PrimitiveExtension, Reference, Resource,
};
use crate::hl7::Segment;

/// How identified resources are requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Conditional create (results).
    CreateIfAbsent,
    /// Conditional update (ADT).
    Upsert,
}

/// PID fields the Patient map uses.
pub(crate) const PID_MAPPED: &[usize] = &[1, 2, 3, 4, 5, 7, 8, 11, 13, 14, 29, 30];
/// PV1 fields the Encounter map uses.
pub(crate) const PV1_MAPPED: &[usize] = &[1, 2, 3, 7, 8, 9, 10, 17, 19, 44, 45];

fn entry_for(mode: Mode, uuid: &str, resource: Resource, system: &str, value: &str) -> Entry {
    let query = id::identifier_query(system, value);
    match mode {
        Mode::CreateIfAbsent => Entry::create_if_none_exist(uuid, resource, query),
        Mode::Upsert => Entry::conditional_update(uuid, resource, &query),
    }
}

/// PID → Patient entry; `None` (reported) when no identifier can identify the patient.
pub(crate) fn patient(
    ctx: &Context<'_>,
    pid: &Segment<'_>,
    segment: usize,
    mode: Mode,
    report: &mut Report,
) -> Option<Entry> {
    report.unmapped_fields_of(pid, PID_MAPPED);
    let mut p = Patient::default();
    let mut key: Option<(usize, Identifier)> = None;
    for (field, primary) in [(3, true), (2, false), (4, false)] {
        for rep in pid.field(field).repetitions() {
            let Some((ident, unknown)) = datatype::cx_identifier(ctx, rep) else {
                continue;
            };
            if unknown {
                report.warn(
                    segment,
                    format!("PID-{field}"),
                    WarningKind::UnconfiguredAuthority,
                );
            }
            let is_mr = text(rep.component(5)).as_deref() == Some("MR");
            let rank = match (primary, is_mr) {
                (true, true) => 0,
                (true, false) => 1,
                (false, _) => 2,
            };
            if key.as_ref().is_none_or(|(r, _)| rank < *r) {
                key = Some((rank, ident.clone()));
            }
            p.identifier.push(ident);
        }
    }
    for rep in pid.field(5).repetitions() {
        if let Some((name, unmapped_use)) = datatype::human_name(rep) {
            if unmapped_use {
                report.warn(segment, "PID-5", WarningKind::UnknownTableCode);
            }
            p.name.push(name);
        }
    }
    for (field, use_) in [(13, "home"), (14, "work")] {
        for rep in pid.field(field).repetitions() {
            p.telecom.extend(datatype::contact_point(rep, use_));
        }
    }
    if let Some(g) = text(pid.field(8).component(1)) {
        match codes::gender(&g) {
            Some(v) => p.gender = Some(v.to_owned()),
            None => report.warn(segment, "PID-8", WarningKind::UnknownTableCode),
        }
    }
    let birth = pid.field(7).component(1).raw().trim();
    if let Some(date) = convert_time(ctx, report, segment, "PID-7", birth, TimeKind::Date) {
        p.birth_date = Some(date);
        if birth.len() > 8 {
            if let Some(dt) = convert_time(ctx, report, segment, "PID-7", birth, TimeKind::DateTime)
            {
                p.birth_date_ext = Some(PrimitiveExtension {
                    extension: vec![Extension {
                        url: "http://hl7.org/fhir/StructureDefinition/patient-birthTime".into(),
                        value: ExtensionValue::DateTime(dt),
                    }],
                });
            }
        }
    }
    let death = pid.field(29).component(1).raw();
    p.deceased_date_time = convert_time(ctx, report, segment, "PID-29", death, TimeKind::DateTime);
    if p.deceased_date_time.is_none() {
        p.deceased_boolean = match text(pid.field(30).component(1)).as_deref() {
            Some("Y") => Some(true),
            Some("N") => Some(false),
            Some(_) => {
                report.warn(segment, "PID-30", WarningKind::UnknownTableCode);
                None
            }
            None => None,
        };
    }
    for rep in pid.field(11).repetitions() {
        p.address.extend(datatype::address(rep));
    }
    let Some((_, key)) = key else {
        report.warn(segment, "PID-3", WarningKind::PatientNotIdentified);
        return None;
    };
    let (system, value) = (
        key.system.unwrap_or_default(),
        key.value.unwrap_or_default(),
    );
    let uuid = id::derive(&[ctx.tenant, "Patient", &system, &value]);
    Some(entry_for(
        mode,
        &uuid,
        Resource::Patient(Box::new(p)),
        &system,
        &value,
    ))
}

/// PV1 → Encounter entry; `None` (reported) without a PV1-19 visit number.
pub(crate) fn encounter(
    ctx: &Context<'_>,
    pv1: &Segment<'_>,
    segment: usize,
    subject: Option<&str>,
    mode: Mode,
    report: &mut Report,
) -> Option<Entry> {
    report.unmapped_fields_of(pv1, PV1_MAPPED);
    let Some((mut visit, unknown)) = datatype::cx_identifier(ctx, pv1.field(19).repetition(1))
    else {
        report.warn(segment, "PV1-19", WarningKind::EncounterNotIdentified);
        return None;
    };
    if unknown {
        report.warn(segment, "PV1-19", WarningKind::UnconfiguredAuthority);
    }
    visit.type_ = Some(datatype::identifier_type("VN"));
    let class_code = text(pv1.field(2).component(1));
    let class = match class_code.as_deref().map(|c| (c, codes::patient_class(c))) {
        Some((_, Some((system, code, display)))) => Coding::new(system, code).with_display(display),
        other => {
            let kind = if other.is_some() {
                WarningKind::UnknownTableCode
            } else {
                WarningKind::MissingRequired
            };
            report.warn(segment, "PV1-2", kind);
            Coding::new("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "UNK")
                .with_display("unknown")
        }
    };
    let start = convert_time(
        ctx,
        report,
        segment,
        "PV1-44",
        pv1.field(44).component(1).raw(),
        TimeKind::DateTime,
    );
    let end = convert_time(
        ctx,
        report,
        segment,
        "PV1-45",
        pv1.field(45).component(1).raw(),
        TimeKind::DateTime,
    );
    let status = if end.is_some() {
        "finished"
    } else {
        match class_code.as_deref() {
            Some("P") => "planned",
            Some("U") => "unknown",
            _ => "in-progress",
        }
    };
    let mut e = Encounter {
        status: status.to_owned(),
        class,
        subject: subject.map(Reference::to),
        ..Encounter::default()
    };
    if let Some(service) = text(pv1.field(10).component(1)) {
        e.service_type = Some(CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/v2-0069",
            &service,
        )));
    }
    for (field, role, display) in [
        (7, "ATND", "attender"),
        (8, "REF", "referrer"),
        (9, "CON", "consultant"),
        (17, "ADM", "admitter"),
    ] {
        for rep in pv1.field(field).repetitions() {
            if let Some(r) = datatype::xcn_reference(ctx, rep) {
                e.participant.push(EncounterParticipant {
                    type_: vec![CodeableConcept::coding(
                        Coding::new(codes::V3_PARTICIPATION_TYPE, role).with_display(display),
                    )],
                    individual: Some(r),
                });
            }
        }
    }
    let period = Period { start, end };
    if !period.is_empty() {
        e.period = Some(period);
    }
    let pl = pv1.field(3).repetition(1);
    let parts: Vec<String> = (1..=3).filter_map(|i| text(pl.component(i))).collect();
    if !parts.is_empty() {
        let loc_status = match status {
            "planned" => "planned",
            "finished" => "completed",
            _ => "active",
        };
        e.location.push(EncounterLocation {
            location: Reference {
                display: Some(parts.join(" ")),
                ..Reference::default()
            },
            status: Some(loc_status.to_owned()),
        });
    }
    let (system, value) = (
        visit.system.clone().unwrap_or_default(),
        visit.value.clone().unwrap_or_default(),
    );
    e.identifier.push(visit);
    let uuid = id::derive(&[ctx.tenant, "Encounter", &system, &value]);
    Some(entry_for(
        mode,
        &uuid,
        Resource::Encounter(Box::new(e)),
        &system,
        &value,
    ))
}
