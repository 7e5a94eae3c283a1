//! ADT^A01 (admit), ADT^A04 (register), ADT^A08 (update patient information) → Patient and
//! Encounter (v2-to-FHIR IG message maps ADT_A01/ADT_A04/ADT_A08 with segment maps
//! PID[Patient] and PV1[Encounter]; protocols.md §5.8-5.9).
//!
//! Both resources are sent as conditional updates by identifier (`PUT Patient?identifier=…`,
//! `PUT Encounter?identifier=…`): the first message creates them, later ones (an A08 after the
//! A01, or a resend) update the same resources instead of duplicating them. ADT is the
//! authority for demographics; results only create a Patient when none exists (see
//! [`super::party`]).

use super::oru::MSH_MAPPED;
use super::party::{self, Mode};
use super::{Context, Error, Report, WarningKind};
use crate::fhir::Bundle;
use crate::hl7::{Header, Message};

/// Converts an ADT^A01/A04/A08.
pub(crate) fn convert(
    ctx: &Context<'_>,
    message: &Message<'_>,
    _header: &Header<'_>,
    report: &mut Report,
) -> Result<Bundle, Error> {
    let mut bundle = Bundle::transaction();
    let mut pid = None;
    let mut pv1 = None;
    for (i, seg) in message.segments().iter().enumerate() {
        let index = i + 1;
        match seg.id() {
            "MSH" => report.unmapped_fields_of(seg, MSH_MAPPED),
            "PID" if pid.is_none() => pid = Some((index, *seg)),
            "PV1" if pv1.is_none() => pv1 = Some((index, *seg)),
            other => report.unmapped_segment(other),
        }
    }
    let Some((pid_index, pid)) = pid else {
        // Nothing to identify: an empty transaction, and the report says why.
        report.warn(1, "PID", WarningKind::PatientNotIdentified);
        return Ok(bundle);
    };
    let subject = party::patient(ctx, &pid, pid_index, Mode::Upsert, report).map(|e| {
        let url = e.full_url.clone();
        bundle.entry.push(e);
        url
    });
    if let Some((i, pv1)) = pv1 {
        if let Some(e) = party::encounter(ctx, &pv1, i, subject.as_deref(), Mode::Upsert, report) {
            bundle.entry.push(e);
        }
    }
    Ok(bundle)
}
