//! Device [`Reading`] (MQTT JSON, Modbus poll) → Device, Patient, Observation.
//!
//! | Reading | FHIR |
//! |---|---|
//! | `device.id` / `device.system` | Device.identifier, conditional create by it; system `<base>:<tenant>:devices` when absent |
//! | `device.name` | Device.deviceName (type `user-friendly-name`) |
//! | `code` + `system` | Observation.code: MDC (`urn:iso:std:iso:11073:10101`) or LOINC as given; without a system a known MDC metric code is MDC, a valid LOINC is LOINC, anything else local (`<base>:<tenant>:device-code`). A known MDC metric with a LOINC vital-signs equivalent gets that LOINC as a second coding |
//! | `display` | display of the first coding and code.text |
//! | `value` + `unit` | valueQuantity, the decimal exactly as sent; UCUM system/code when the unit is UCUM (or a known alias), else the unit text only. A `value` that is not a decimal becomes valueString (reported `not-numeric`) |
//! | `text` | valueString |
//! | neither | dataAbsentReason `unknown` (reported `missing-required`) |
//! | `time` | effectiveDateTime, as sent; it must be RFC 3339 with seconds and an offset, else the conversion fails (the envelope is dead-lettered, not dropped) |
//! | `patient` | Patient (conditional create by identifier) and Observation.subject |
//! | `location` | an extension `<base>/StructureDefinition/device-location` (valueString) on the Observation |
//!
//! Category is `vital-signs` for MDC codes, none otherwise; status is `final`; `device` points
//! at the Device.
//!
//! Why an extension for `location`: Observation has no element for where the device stood, a
//! note would be free text a receiver cannot query, and a Location resource needs an identifier
//! scheme the sender does not give. The extension keeps the label exact and machine-readable.
//!
//! Identity (protocols.md §6.2, PCD/MQTT/Modbus natural key): the Observation id is the
//! caregate UUID of `tenant ␟ source ␟ reading ␟ Observation ␟ device system ␟ device id ␟ code
//! system ␟ code ␟ time`, where time is the instant normalised to UTC (`+01:00` and the same
//! instant in `Z` are one reading). The same id is the value of an Observation.identifier with
//! the gateway system `<base>:<tenant>:reading`. Sent as `PUT Observation/<id>`, so a
//! redelivered reading leaves the server as it was.

use super::{Context, Conversion, Error, Report, WarningKind, codes, datatype, id};
use crate::fhir::{
    Bundle, CodeableConcept, Coding, Decimal, Device, DeviceName, Entry, Extension, ExtensionValue,
    Identifier, Observation, Patient, Quantity, Reference, Resource, Value,
};
use crate::reading::Reading;

/// `Report::message_type` of reading conversions.
pub(crate) const MESSAGE_TYPE: &str = "DEVICE^READING";

/// Converts one stored Reading (JSON) to a transaction Bundle.
pub(crate) fn convert(ctx: &Context<'_>, raw: &[u8]) -> Result<Conversion, Error> {
    // serde_json's messages quote no input beyond a position: safe to keep.
    let reading: Reading = serde_json::from_slice(raw).map_err(|e| Error::Reading {
        field: "<json>",
        reason: format!(
            "not a reading: {} at line {} column {}",
            category(&e),
            e.line(),
            e.column()
        ),
    })?;
    let mut report = Report {
        message_type: MESSAGE_TYPE.to_owned(),
        obx_in: 1,
        ..Report::default()
    };
    let bundle = to_bundle(ctx, &reading, &mut report)?;
    report.observations_out = bundle.count("Observation");
    Ok(Conversion { bundle, report })
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "JSON syntax error",
        serde_json::error::Category::Data => "wrong or missing field",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

fn invalid(field: &'static str, reason: &str) -> Error {
    Error::Reading {
        field,
        reason: reason.to_owned(),
    }
}

/// Checks an RFC 3339 date-time with seconds and an offset (what FHIR dateTime also accepts)
/// and returns the instant.
pub(crate) fn parse_time(text: &str) -> Option<jiff::Timestamp> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|s| s.len() == r.len() && s.iter().all(u8::is_ascii_digit))
    };
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
    }
    let zone_ok = match b.get(i) {
        Some(b'Z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len() && digits(i + 1..i + 3) && b[i + 3] == b':' && digits(i + 4..i + 6)
        }
        _ => false,
    };
    if !zone_ok {
        return None;
    }
    text.parse::<jiff::Timestamp>().ok()
}

fn to_bundle(ctx: &Context<'_>, r: &Reading, report: &mut Report) -> Result<Bundle, Error> {
    let device_id = r.device.id.trim();
    if device_id.is_empty() {
        return Err(invalid("device.id", "empty"));
    }
    let code = r.code.trim();
    if code.is_empty() {
        return Err(invalid("code", "empty"));
    }
    let instant = parse_time(r.time.trim()).ok_or_else(|| {
        invalid(
            "time",
            "not an RFC 3339 date-time with seconds and an offset",
        )
    })?;
    let mut bundle = Bundle::transaction();

    // Device.
    let device_system = r
        .device
        .system
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map_or_else(
            || id::minted(ctx.system_base, &[ctx.tenant, "devices"]),
            str::to_owned,
        );
    let device = Device {
        identifier: vec![Identifier {
            system: Some(device_system.clone()),
            value: Some(device_id.to_owned()),
            ..Identifier::default()
        }],
        device_name: r
            .device
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| DeviceName {
                name: n.to_owned(),
                type_: "user-friendly-name".to_owned(),
            })
            .into_iter()
            .collect(),
        ..Device::default()
    };
    let device_uuid = id::derive(&[ctx.tenant, "Device", &device_system, device_id]);
    let device_entry = Entry::create_if_none_exist(
        &device_uuid,
        Resource::Device(Box::new(device)),
        id::identifier_query(&device_system, device_id),
    );
    let device_url = device_entry.full_url.clone();
    bundle.entry.push(device_entry);

    // Patient, when bound.
    let mut subject = None;
    if let Some(p) = &r.patient {
        let (system, value) = (p.system.trim(), p.value.trim());
        if system.is_empty() || value.is_empty() {
            report.warn(1, "patient", WarningKind::PatientNotIdentified);
        } else {
            let patient = Patient {
                identifier: vec![Identifier {
                    system: Some(system.to_owned()),
                    value: Some(value.to_owned()),
                    ..Identifier::default()
                }],
                ..Patient::default()
            };
            let uuid = id::derive(&[ctx.tenant, "Patient", system, value]);
            let entry = Entry::create_if_none_exist(
                &uuid,
                Resource::Patient(Box::new(patient)),
                id::identifier_query(system, value),
            );
            subject = Some(entry.full_url.clone());
            bundle.entry.push(entry);
        }
    }

    // Observation.
    let (concept, code_system, is_mdc) = code_of(ctx, r, code);
    let mut obs = Observation {
        status: "final".to_owned(),
        code: concept,
        effective_date_time: Some(r.time.trim().to_owned()),
        device: Some(Reference::to(&device_url)),
        subject: subject.as_deref().map(Reference::to),
        ..Observation::default()
    };
    if is_mdc {
        obs.category.push(CodeableConcept::coding(Coding::new(
            codes::OBSERVATION_CATEGORY,
            "vital-signs",
        )));
    }
    obs.value = match (&r.value, &r.text) {
        (Some(v), _) => match Decimal::parse(v.trim()) {
            Some(d) => Some(Value::Quantity(datatype::quantity(
                d,
                &unit(r.unit.as_deref()),
            ))),
            None => {
                report.warn(1, "value", WarningKind::NotNumeric);
                Some(Value::String(v.clone()))
            }
        },
        (None, Some(t)) => Some(Value::String(t.clone())),
        (None, None) => None,
    };
    if obs.value.is_none() {
        report.warn(1, "value", WarningKind::MissingRequired);
        obs.data_absent_reason = Some(CodeableConcept::coding(Coding::new(
            codes::DATA_ABSENT_REASON,
            "unknown",
        )));
    }
    if let Some(loc) = r
        .location
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        obs.extension.push(Extension {
            url: id::minted(ctx.system_base, &["StructureDefinition", "device-location"]),
            value: ExtensionValue::String(loc.to_owned()),
        });
    }
    let time_key = instant.to_string();
    let oid = id::derive(&[
        ctx.tenant,
        ctx.source,
        "reading",
        "Observation",
        &device_system,
        device_id,
        &code_system,
        code,
        &time_key,
    ]);
    obs.identifier.push(Identifier {
        system: Some(id::minted(ctx.system_base, &[ctx.tenant, "reading"])),
        value: Some(oid.clone()),
        ..Identifier::default()
    });
    obs.id = Some(oid.clone());
    bundle
        .entry
        .push(Entry::put_by_id(&oid, Resource::Observation(Box::new(obs))));
    Ok(bundle)
}

/// The Observation code, its system and whether it is MDC.
fn code_of(ctx: &Context<'_>, r: &Reading, code: &str) -> (CodeableConcept, String, bool) {
    let display = r
        .display
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let given = r.system.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let system = match given {
        Some(s) => s.to_owned(),
        None if codes::mdc_metric(code).is_some() => codes::MDC.to_owned(),
        None if super::astm::is_loinc(code) => codes::LOINC.to_owned(),
        None => id::minted(ctx.system_base, &[ctx.tenant, "device-code"]),
    };
    let is_mdc = system == codes::MDC;
    let mut first = Coding::new(&system, code);
    if let Some(d) = display {
        first = first.with_display(d);
    }
    let mut cc = CodeableConcept::coding(first);
    if is_mdc {
        if let Some(loinc) = codes::mdc_metric(code).and_then(|m| m.loinc) {
            cc.coding.push(Coding::new(codes::LOINC, loinc));
        }
    }
    if let Some(d) = display {
        cc.text = Some(d.to_owned());
    }
    (cc, system, is_mdc)
}

/// The unit part of a Quantity: UCUM when it is UCUM or a known alias, else the text only.
fn unit(text: Option<&str>) -> Quantity {
    let text = text.map(str::trim).filter(|u| !u.is_empty());
    let code = text.and_then(codes::ucum_for);
    Quantity {
        unit: text.map(str::to_owned),
        system: code.map(|_| codes::UCUM.to_owned()),
        code: code.map(str::to_owned),
        ..Quantity::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;
    use crate::convert::convert_reading;
    use crate::convert::testutil::ctx_with;

    const SPO2: &str = r#"{
      "device": { "id": "0009FBFFFF9B42B3", "system": "urn:ietf:rfc:7042", "name": "bed 12 monitor" },
      "code": "150456", "system": "urn:iso:std:iso:11073:10101", "display": "MDC_PULS_OXIM_SAT_O2",
      "value": "97.50", "unit": "%",
      "time": "2024-01-05T10:30:00+01:00",
      "patient": { "system": "https://hospital.example/mrn", "value": "MRN123" },
      "location": "ICU-12"
    }"#;

    fn convert(text: &str) -> Result<Conversion, Error> {
        ctx_with(|ctx| convert_reading(ctx, text.as_bytes()))
    }

    fn json(c: &Conversion) -> serde_json::Value {
        serde_json::from_str(&c.bundle.to_json()).unwrap()
    }

    #[test]
    fn golden_spo2_reading() {
        let c = convert(SPO2).unwrap();
        let got = serde_json::to_string_pretty(&json(&c)).unwrap() + "\n";
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/reading/spo2.json"
        );
        if std::env::var_os("CAREGATE_BLESS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(got, want, "golden differs; CAREGATE_BLESS=1 rewrites it");
    }

    #[test]
    fn mdc_reading_maps_value_unit_category_device_and_subject() {
        let c = convert(SPO2).unwrap();
        let b = json(&c);
        let e = b["entry"].as_array().unwrap();
        let types: Vec<_> = e
            .iter()
            .map(|e| e["resource"]["resourceType"].clone())
            .collect();
        assert_eq!(types, ["Device", "Patient", "Observation"]);
        assert_eq!(e[0]["request"]["method"], "POST");
        assert_eq!(
            e[0]["request"]["ifNoneExist"],
            "identifier=urn:ietf:rfc:7042|0009FBFFFF9B42B3"
        );
        assert_eq!(e[0]["resource"]["deviceName"][0]["name"], "bed 12 monitor");
        let o = &e[2]["resource"];
        assert_eq!(e[2]["request"]["method"], "PUT");
        // The sender's digits, not a float round trip.
        assert!(
            c.bundle.to_json().contains("\"value\":97.50"),
            "{}",
            c.bundle.to_json()
        );
        assert_eq!(o["valueQuantity"]["system"], codes::UCUM);
        assert_eq!(o["valueQuantity"]["code"], "%");
        assert_eq!(o["code"]["coding"][0]["system"], codes::MDC);
        assert_eq!(o["code"]["coding"][1]["code"], "59408-5");
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(o["effectiveDateTime"], "2024-01-05T10:30:00+01:00");
        assert_eq!(o["device"]["reference"], e[0]["fullUrl"]);
        assert_eq!(o["subject"]["reference"], e[1]["fullUrl"]);
        assert_eq!(o["extension"][0]["valueString"], "ICU-12");
        assert_eq!(o["identifier"][0]["value"], o["id"]);
        assert!(c.report.warnings.is_empty());
    }

    #[test]
    fn the_id_is_the_natural_key_and_the_same_instant_in_another_offset_is_the_same_reading() {
        let id = |t: &str| {
            let c = convert(t).unwrap();
            json(&c)["entry"][2]["resource"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let a = id(SPO2);
        assert_eq!(a, id(&SPO2.replace("10:30:00+01:00", "09:30:00Z")));
        assert_eq!(
            a,
            id(&SPO2.replace("97.50", "98")),
            "value is not part of the key"
        );
        assert_ne!(a, id(&SPO2.replace("10:30:00", "10:30:01")));
        assert_ne!(a, id(&SPO2.replace("150456", "147842")));
        assert_ne!(a, id(&SPO2.replace("0009FBFFFF9B42B3", "0009FBFFFF9B42B4")));
    }

    #[test]
    fn local_codes_without_system_get_tenant_scoped_systems_and_no_patient_means_no_subject() {
        let c = convert(
            r#"{"device":{"id":"pump-7"},"code":"rate","value":"12.0","unit":"mL/h","time":"2024-01-05T09:30:00.250Z"}"#,
        )
        .unwrap();
        let b = json(&c);
        let e = b["entry"].as_array().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0]["resource"]["identifier"][0]["system"],
            "urn:caregate:north:devices"
        );
        let o = &e[1]["resource"];
        assert_eq!(
            o["code"]["coding"][0]["system"],
            "urn:caregate:north:device-code"
        );
        assert!(o.get("category").is_none());
        assert!(o.get("subject").is_none());
        assert_eq!(o["valueQuantity"]["unit"], "mL/h");
        assert_eq!(o["valueQuantity"]["value"], 12.0);
    }

    #[test]
    fn loinc_and_mdc_are_recognised_without_a_system() {
        let o = |code: &str| {
            let c = convert(&format!(
                r#"{{"device":{{"id":"d"}},"code":"{code}","value":"1","time":"2024-01-05T09:30:00Z"}}"#
            ))
            .unwrap();
            json(&c)["entry"][1]["resource"]["code"]["coding"][0]["system"].clone()
        };
        assert_eq!(o("8867-4"), codes::LOINC);
        assert_eq!(o("147842"), codes::MDC);
    }

    #[test]
    fn text_values_non_numeric_values_and_missing_values() {
        let base = r#"{"device":{"id":"d"},"code":"x","time":"2024-01-05T09:30:00Z""#;
        let c = convert(&format!(r#"{base},"text":"alarm off"}}"#)).unwrap();
        assert_eq!(json(&c)["entry"][1]["resource"]["valueString"], "alarm off");
        let c = convert(&format!(r#"{base},"value":"high","unit":"%"}}"#)).unwrap();
        assert_eq!(json(&c)["entry"][1]["resource"]["valueString"], "high");
        assert_eq!(c.report.warnings[0].kind, WarningKind::NotNumeric);
        let c = convert(&format!("{base}}}")).unwrap();
        assert_eq!(
            json(&c)["entry"][1]["resource"]["dataAbsentReason"]["coding"][0]["code"],
            "unknown"
        );
        let c = convert(&format!(r#"{base},"value":"3","unit":"furlongs"}}"#)).unwrap();
        let q = &json(&c)["entry"][1]["resource"]["valueQuantity"];
        assert_eq!(q["unit"], "furlongs");
        assert!(q.get("system").is_none());
    }

    #[test]
    fn invalid_times_and_shapes_are_errors_without_patient_data() {
        for t in [
            "2024-01-05T10:30:00",
            "2024-01-05 10:30:00Z",
            "2024-01-05T10:30Z",
            "2024-13-05T10:30:00Z",
            "05.01.2024",
            "2024-01-05T10:30:00+0100",
            "",
        ] {
            let e = convert(&SPO2.replace("2024-01-05T10:30:00+01:00", t)).unwrap_err();
            assert!(e.to_string().contains("time"), "{t}: {e}");
        }
        for bad in [
            "",
            "{",
            "[]",
            r#"{"device":{"id":"MRN123"}}"#,
            &SPO2.replace("\"location\"", "\"MRN123\""),
        ] {
            let e = convert(bad).unwrap_err().to_string();
            assert!(!e.contains("MRN123"), "{e}");
        }
        let e = convert(&SPO2.replace("0009FBFFFF9B42B3", " ")).unwrap_err();
        assert!(e.to_string().contains("device.id"), "{e}");
    }

    #[test]
    fn rfc3339_checker() {
        assert!(parse_time("2024-01-05T10:30:00.123456789-05:00").is_some());
        assert!(parse_time("2024-01-05T10:30:00.Z").is_none());
        assert!(parse_time("2024-02-30T10:30:00Z").is_none());
        assert!(parse_time("2024-01-05T10:30:00z").is_none());
    }

    proptest! {
        #[test]
        fn conversion_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ctx_with(|ctx| convert_reading(ctx, &bytes));
        }

        #[test]
        fn conversion_never_panics_on_reading_shaped_input(
            id in ".{0,12}", code in ".{0,12}", value in ".{0,12}", unit in ".{0,8}", time in ".{0,30}",
        ) {
            let r = Reading {
                device: crate::reading::DeviceRef { id, system: None, name: None },
                code, system: None, display: None, value: Some(value), text: None,
                unit: Some(unit), time, patient: None, location: None,
            };
            let raw = serde_json::to_vec(&r).unwrap();
            let _ = ctx_with(|ctx| convert_reading(ctx, &raw));
        }
    }
}
