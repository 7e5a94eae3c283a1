//! IHE PCD-01 (Communicate PCD Data) OBX rows → Device and Observation (protocols.md §4.3-4.6;
//! PoCD IG mapping notes).
//!
//! - **Containment (OBX-4 `MDS.VMD.CHAN.METRIC`, §4.4).** Device-hierarchy rows (no OBX-2/5,
//!   an MDC_DEV_* code or trailing-zero ordinals) are not Observations: an MDS or VMD row with
//!   an OBX-18 EUI-64 becomes a Device (conditional create by EUI-64, type = the row's MDC
//!   code); every hierarchy row is listed in the report as `device-hierarchy`. A metric's
//!   `device` is its own OBX-18, else its VMD's, else its MDS's. Ordinals are not stable ids
//!   (§4.4), so they are kept only as an extension for traceability, never in an identity.
//! - **Compound values.** Systolic/diastolic/mean rows of one pressure (same MDS.VMD.CHAN
//!   prefix) become one Observation with the compound code (NIBP: MDC 150020 + LOINC 85354-9)
//!   and one component per member, as the vital-signs BP profile expects; the other rows are
//!   reported as `component` of it. One OBX with the compound code and a repeating OBX-5 gets
//!   the member codes on its components in order.
//! - **Units and codes.** MDC units translate to UCUM (§4.6); MDC metrics get the LOINC
//!   vital-signs code as a second coding; category is vital-signs.
//! - **Status flags (§4.5)** are handled in [`super::oru::flags`]: INV/NAV/NI/OFF/BUSY void the
//!   value with a dataAbsentReason, TEST/DEMO rows are not converted (reported), the others
//!   are kept as a device-measurement-status extension.

use std::collections::BTreeMap;

use super::codes;
use super::datatype::{self, text};
use super::id;
use super::oru::{self, Conv, Inherited, Row};
use super::{ObxOutcome, ObxReason};
use crate::fhir::{
    CodeableConcept, Coding, Extension, ExtensionValue, Observation, ObservationComponent,
};

/// OBX-4 ordinals (`1.2.1.1` → [1, 2, 1, 1]); non-numeric parts → 0.
fn ordinals(sub_id: &str) -> Vec<u32> {
    sub_id
        .trim()
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn is_hierarchy_row(row: &Row<'_>) -> bool {
    let seg = &row.seg;
    let no_value = seg.field(2).is_empty() && seg.field(5).is_empty();
    let code = seg.field(3).component(1).raw();
    let ords = ordinals(seg.field(4).raw());
    let trailing_zero = ords.len() == 4 && ords.last() == Some(&0);
    no_value && (codes::is_mdc_device_code(code) || trailing_zero)
}

fn mdc_concept(code: &str) -> CodeableConcept {
    let mut cc = CodeableConcept::default();
    let mut coding = Coding::new(codes::MDC, code);
    if let Some(m) = codes::mdc_metric(code) {
        coding.display = Some(m.reference_id.to_owned());
        cc.coding.push(coding);
        if let Some(l) = m.loinc {
            cc.coding.push(Coding::new(codes::LOINC, l));
        }
    } else {
        cc.coding.push(coding);
    }
    cc
}

fn sub_id_extension(conv: &Conv<'_, '_>, row: &Row<'_>) -> Option<Extension> {
    let sub = text(row.seg.field(4).component(1))?;
    Some(Extension {
        url: id::minted(conv.ctx.system_base, &["StructureDefinition", "obx-sub-id"]),
        value: ExtensionValue::String(sub),
    })
}

/// Converts the OBX rows of one PCD-01 order; pushes (id, Observation) to `out`.
pub(crate) fn convert_rows(
    conv: &mut Conv<'_, '_>,
    rows: &[Row<'_>],
    inh: &Inherited<'_>,
    out: &mut Vec<(String, Observation)>,
) {
    // Pass 1: the device hierarchy.
    let mut devices: BTreeMap<Vec<u32>, String> = BTreeMap::new();
    for row in rows.iter().filter(|r| is_hierarchy_row(r)) {
        conv.report.obx_not_converted.push(ObxOutcome {
            segment: row.index,
            reason: ObxReason::DeviceHierarchy,
        });
        let ords = ordinals(row.seg.field(4).raw());
        let level: Vec<u32> = ords.iter().copied().take_while(|o| *o != 0).collect();
        let type_ = datatype::codeable_concept(conv.ctx, row.seg.field(3).repetition(1));
        if let Some(url) = oru::device_entry(conv, row.seg.field(18).repetition(1), type_) {
            devices.insert(level, url);
        }
    }
    // Pass 2: compound groups (≥ 2 members of one pressure in one channel).
    let mut groups: BTreeMap<(Vec<u32>, &'static str, &str), Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if is_hierarchy_row(row) {
            continue;
        }
        if let Some(compound) = codes::mdc_compound_of(row.seg.field(3).component(1).raw()) {
            let prefix: Vec<u32> = ordinals(row.seg.field(4).raw())
                .into_iter()
                .take(3)
                .collect();
            // Members of one reading share their channel and their time: two NIBP readings
            // of one OBR without OBX-4 stay two Observations.
            let at = row.seg.field(14).raw().trim();
            groups.entry((prefix, compound, at)).or_default().push(i);
        }
    }
    let mut member_of: BTreeMap<usize, (&'static str, Vec<usize>)> = BTreeMap::new();
    for ((_, compound, _), members) in groups {
        if members.len() >= 2 {
            for &m in &members {
                member_of.insert(m, (compound, members.clone()));
            }
        }
    }
    // Pass 3: metrics.
    for (i, row) in rows.iter().enumerate() {
        if is_hierarchy_row(row) {
            continue;
        }
        if let Some((compound, members)) = member_of.get(&i) {
            if members.first() == Some(&i) {
                if let Some(obs) =
                    compound_observation(conv, rows, members, compound, inh, &devices)
                {
                    out.push((conv.derive("Observation", row.index), obs));
                }
            }
            continue;
        }
        let Some(mut obs) = oru::observation(conv, row, inh) else {
            continue;
        };
        finish_metric(conv, row, &mut obs, &devices);
        // One OBX with the compound code and a repeating value: members in order.
        let code = row.seg.field(3).component(1).raw();
        if let Some(members) = codes::mdc_members(code) {
            for (c, m) in obs.component.iter_mut().zip(members) {
                c.code = mdc_concept(m);
            }
        }
        out.push((conv.derive("Observation", row.index), obs));
    }
}

/// Device reference, sub-id extension (shared by single and compound metrics).
fn finish_metric(
    conv: &mut Conv<'_, '_>,
    row: &Row<'_>,
    obs: &mut Observation,
    devices: &BTreeMap<Vec<u32>, String>,
) {
    let own = oru::device_entry(conv, row.seg.field(18).repetition(1), None);
    let ords = ordinals(row.seg.field(4).raw());
    let inherited = (1..=ords.len().min(3))
        .rev()
        .find_map(|n| devices.get(&ords[..n].to_vec()));
    if let Some(url) = own.or_else(|| inherited.cloned()) {
        obs.device = Some(crate::fhir::Reference::to(&url));
    }
    obs.extension.extend(sub_id_extension(conv, row));
}

fn compound_observation(
    conv: &mut Conv<'_, '_>,
    rows: &[Row<'_>],
    members: &[usize],
    compound: &'static str,
    inh: &Inherited<'_>,
    devices: &BTreeMap<Vec<u32>, String>,
) -> Option<Observation> {
    let first_index = rows.get(*members.first()?)?.index;
    let order = codes::mdc_members(compound)?;
    let mut built: Vec<(usize, &Row<'_>, Observation)> = Vec::new();
    for &m in members {
        let row = rows.get(m)?;
        if let Some(obs) = oru::observation(conv, row, inh) {
            if row.index != first_index {
                conv.report.obx_not_converted.push(ObxOutcome {
                    segment: row.index,
                    reason: ObxReason::Component {
                        into_segment: first_index,
                    },
                });
            }
            let code = row.seg.field(3).component(1).raw().trim();
            let rank = order.iter().position(|c| *c == code).unwrap_or(order.len());
            built.push((rank, row, obs));
        }
    }
    built.sort_by_key(|(rank, row, _)| (*rank, row.index));
    let (_, first_row, first) = built.first()?;
    let mut obs = first.clone();
    let first_row: &Row<'_> = first_row;
    // The status of the reading is that of its members with a value: an invalid systolic
    // (its component says why) does not cancel a valid diastolic and mean.
    if let Some((_, _, valued)) = built.iter().find(|(_, _, m)| m.value.is_some()) {
        obs.status.clone_from(&valued.status);
    }
    obs.code = mdc_concept(compound);
    obs.value = None;
    obs.data_absent_reason = None;
    obs.interpretation.clear();
    obs.reference_range.clear();
    obs.note.clear();
    obs.extension.clear();
    obs.component = built
        .iter()
        .map(|(_, _, m)| ObservationComponent {
            extension: m.extension.clone(),
            code: m.code.clone(),
            value: m.value.clone(),
            data_absent_reason: m.data_absent_reason.clone(),
            interpretation: m.interpretation.clone(),
            reference_range: m.reference_range.clone(),
        })
        .collect();
    for (_, _, m) in &built {
        obs.note.extend(m.note.iter().cloned());
    }
    finish_metric(conv, first_row, &mut obs, devices);
    Some(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compound blood-pressure Observations (code 150020) of a PCD-01 message with `obx`.
    fn compounds(obx: &[&str]) -> Vec<serde_json::Value> {
        let mut raw = "MSH|^~\\&|MON_GW^0009FBFFFF9B42B3^EUI-64|ICU|GATEWAY|HOSP|20240105103005+0100||ORU^R01^ORU_R01|M1|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\rPID|||MRN123^^^HOSP^MR\rOBR|1||M1^MON_GW^0009FBFFFF9B42B3^EUI-64|182777000^monitoring of patient^SCT|||20240105103000+0100\r".to_owned();
        for o in obx {
            raw.push_str(o);
            raw.push('\r');
        }
        let conv = crate::convert::testutil::ctx_with(|ctx| {
            crate::convert::convert_bytes(ctx, raw.as_bytes())
        })
        .expect("converts");
        let v: serde_json::Value = serde_json::from_str(&conv.bundle.to_json()).expect("JSON");
        v["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["resource"].clone())
            .filter(|r| {
                r["resourceType"] == "Observation" && r["code"]["coding"][0]["code"] == "150020"
            })
            .collect()
    }

    #[test]
    fn a_compound_reading_keeps_its_members_flags_and_valid_status() {
        let bp = compounds(&[
            "OBX|1|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1||266016^MDC_DIM_MMHG^MDC||INV|||X|||20240105102815+0100",
            "OBX|2|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.3.1.2|79|266016^MDC_DIM_MMHG^MDC||QUES|||R|||20240105102815+0100",
            "OBX|3|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.3.1.3|93|266016^MDC_DIM_MMHG^MDC||N|||R|||20240105102815+0100",
        ]);
        assert_eq!(bp.len(), 1);
        // An invalid systolic does not cancel the valid diastolic and mean.
        assert_eq!(bp[0]["status"], "preliminary", "{}", bp[0]);
        let c = &bp[0]["component"];
        assert!(c[0].get("valueQuantity").is_none() && c[0].get("dataAbsentReason").is_some());
        assert_eq!(c[1]["valueQuantity"]["value"].as_f64(), Some(79.0));
        // The diastolic's QUES flag stays with its component.
        let ext = c[1]["extension"].to_string();
        assert!(
            ext.contains("device-measurement-status") && ext.contains("QUES"),
            "{}",
            c[1]
        );
    }

    #[test]
    fn readings_without_sub_ids_at_different_times_stay_apart() {
        let bp = compounds(&[
            "OBX|1|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC||118|266016^MDC_DIM_MMHG^MDC|||||R|||20240105104315+0100",
            "OBX|2|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC||78|266016^MDC_DIM_MMHG^MDC|||||R|||20240105104315+0100",
            "OBX|3|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC||119|266016^MDC_DIM_MMHG^MDC|||||R|||20240105105815+0100",
            "OBX|4|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC||77|266016^MDC_DIM_MMHG^MDC|||||R|||20240105105815+0100",
        ]);
        let shape: Vec<(String, usize, Option<f64>)> = bp
            .iter()
            .map(|o| {
                (
                    o["effectiveDateTime"].as_str().unwrap_or("").to_owned(),
                    o["component"].as_array().map_or(0, Vec::len),
                    o["component"][0]["valueQuantity"]["value"].as_f64(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("2024-01-05T10:43:15+01:00".to_owned(), 2, Some(118.0)),
                ("2024-01-05T10:58:15+01:00".to_owned(), 2, Some(119.0)),
            ]
        );
    }

    #[test]
    fn ordinals_parse_dotted_sub_ids() {
        assert_eq!(ordinals("1.2.1.1"), [1, 2, 1, 1]);
        assert_eq!(ordinals("1.0.0.0"), [1, 0, 0, 0]);
        assert_eq!(ordinals(""), Vec::<u32>::new());
        assert_eq!(ordinals("1.x"), [1, 0]);
    }

    #[test]
    fn mdc_concept_adds_the_loinc_vital_sign_code() {
        let cc = mdc_concept("150020");
        let codes: Vec<_> = cc.coding.iter().filter_map(|c| c.code.as_deref()).collect();
        assert_eq!(codes, ["150020", "85354-9"]);
    }
}
