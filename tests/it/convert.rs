//! Golden conversions: every `tests/fixtures/hl7/{oru,adt,pcd}_*.hl7` with a
//! `tests/fixtures/fhir/<stem>.json` converts to exactly that Bundle (compared as JSON values,
//! with a path-by-path diff on mismatch), plus idempotency, report and no-PHI checks.
//!
//! The expected Bundles were written by hand from protocols.md §4-6 (ids computed separately
//! with Python's `uuid.uuid5` from the documented name layout), not dumped from the converter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caregate::convert::{self, Context, ObxReason};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn with_ctx<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
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

fn convert_fixture(stem: &str) -> convert::Conversion {
    let raw = std::fs::read(fixtures().join(format!("hl7/{stem}.hl7"))).expect("fixture exists");
    with_ctx(|ctx| convert::convert_bytes(ctx, &raw)).expect("fixture converts")
}

/// Lists every path where `actual` differs from `expected`.
fn diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => diff(&format!("{path}.{k}"), ev, av, out),
                    None => out.push(format!("{path}.{k}: missing (expected {ev})")),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("{path}.{k}: unexpected {av}"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!("{path}: {} items, expected {}", a.len(), e.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        (e, a) if e == a => {}
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) => out.push(format!("{path}: {a}, expected {e}")),
    }
}

fn assert_golden(stem: &str) {
    let conv = convert_fixture(stem);
    let actual: Value = serde_json::from_str(&conv.bundle.to_json()).expect("bundle is JSON");
    let text = std::fs::read_to_string(fixtures().join(format!("fhir/{stem}.json")))
        .expect("golden exists");
    let expected: Value = serde_json::from_str(&text).expect("golden is JSON");
    let mut out = Vec::new();
    diff("$", &expected, &actual, &mut out);
    assert!(
        out.is_empty(),
        "{stem}: {} difference(s) from tests/fixtures/fhir/{stem}.json:\n  {}",
        out.len(),
        out.join("\n  ")
    );
}

#[test]
fn cbc_lab_result_maps_patient_encounter_report_and_observations() {
    assert_golden("oru_r01_cbc_with_abnormal_flags");
}

#[test]
fn numeric_values_keep_the_precision_the_sender_wrote() {
    let json = convert_fixture("oru_r01_cbc_with_abnormal_flags")
        .bundle
        .to_json();
    assert!(json.contains(r#""value":11.20,"#), "11.20 must stay 11.20");
    assert!(json.contains(r#""value":4.0,"#), "4.0 must stay 4.0");
}

#[test]
fn converting_the_same_message_twice_gives_byte_identical_bundles() {
    for stem in golden_stems() {
        let a = convert_fixture(&stem).bundle.to_json();
        let b = convert_fixture(&stem).bundle.to_json();
        assert_eq!(a, b, "{stem}");
    }
}

#[test]
fn every_obx_is_an_observation_or_a_reported_outcome() {
    for stem in golden_stems() {
        let conv = convert_fixture(&stem);
        let r = &conv.report;
        let components = r
            .obx_not_converted
            .iter()
            .filter(|o| matches!(o.reason, ObxReason::Component { .. }))
            .count();
        // Each Observation comes from one OBX, except compounds (one OBX + its components).
        assert_eq!(
            r.obx_in,
            r.observations_out + r.obx_not_converted.len(),
            "{stem}: {r:?} ({components} components)"
        );
    }
}

#[test]
fn the_report_holds_no_patient_data() {
    for stem in golden_stems() {
        let report = serde_json::to_string(&convert_fixture(&stem).report).expect("json");
        for phi in ["Doe", "Jane", "MRN123", "19700101", "Main St", "5551234"] {
            assert!(!report.contains(phi), "{stem}: report leaks {phi}");
        }
    }
}

/// Fixtures of this area that have a golden Bundle.
fn golden_stems() -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(fixtures().join("fhir"))
        .expect("fixtures/fhir exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .filter(|s| s.starts_with("oru_") || s.starts_with("adt_") || s.starts_with("pcd_"))
        .collect();
    stems.sort();
    stems
}

#[test]
fn every_golden_bundle_matches() {
    let stems = golden_stems();
    assert!(!stems.is_empty());
    for stem in stems {
        assert_golden(&stem);
    }
}

#[test]
fn pcd_hierarchy_rows_compound_members_and_demo_data_are_reported() {
    let r = convert_fixture("pcd_01_monitor_vitals_with_compound_bp").report;
    assert_eq!(r.obx_in, 12);
    assert_eq!(r.observations_out, 5);
    let reasons: Vec<(usize, ObxReason)> = r
        .obx_not_converted
        .iter()
        .map(|o| (o.segment, o.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (5, ObxReason::DeviceHierarchy),
            (6, ObxReason::DeviceHierarchy),
            (8, ObxReason::DeviceHierarchy),
            (10, ObxReason::DeviceHierarchy),
            (12, ObxReason::Component { into_segment: 11 }),
            (13, ObxReason::Component { into_segment: 11 }),
            (16, ObxReason::DeviceTestData),
        ]
    );
}

#[test]
fn an_a08_after_an_a01_updates_the_same_patient_and_encounter() {
    let a01 = convert_fixture("adt_a01_admit_inpatient").bundle;
    let a08 = convert_fixture("adt_a08_update_name_address_discharge").bundle;
    let key = |b: &caregate::fhir::Bundle| -> Vec<(String, String)> {
        b.entry
            .iter()
            .map(|e| (e.full_url.clone(), e.request.url.clone()))
            .collect()
    };
    assert_eq!(key(&a01), key(&a08));
    assert!(
        a08.entry
            .iter()
            .all(|e| e.request.method == caregate::fhir::Method::Put)
    );
}

#[test]
fn results_only_create_the_patient_that_adt_updates() {
    let oru = convert_fixture("oru_r01_cbc_with_abnormal_flags").bundle;
    let adt = convert_fixture("adt_a01_admit_inpatient").bundle;
    let oru_patient = &oru.entry[0];
    assert_eq!(oru_patient.full_url, adt.entry[0].full_url);
    assert_eq!(oru_patient.request.method, caregate::fhir::Method::Post);
    assert_eq!(
        oru_patient.request.if_none_exist.as_deref(),
        Some("identifier=https://hospital.example/mrn|MRN123")
    );
}

#[test]
fn obx_without_a_code_is_reported_not_dropped() {
    let r = convert_fixture("oru_r01_value_types_and_statuses").report;
    assert_eq!(r.obx_in, 21);
    assert_eq!(r.observations_out, 20);
    assert_eq!(r.obx_not_converted.len(), 1);
    assert_eq!(r.obx_not_converted[0].segment, 18);
    assert_eq!(r.obx_not_converted[0].reason, ObxReason::MissingCode);
}
