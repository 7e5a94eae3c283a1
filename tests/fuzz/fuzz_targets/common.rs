//! Shared by the conversion targets: the fixed Context of tests/it/convert.rs, and the
//! invariant that a Bundle serializes to JSON.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use caregate::convert::{Context, Conversion};

static TZ: LazyLock<jiff::tz::TimeZone> =
    LazyLock::new(|| jiff::tz::TimeZone::get("Europe/Berlin").expect("tzdb has Europe/Berlin"));

static SYSTEMS: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
    let mut systems = BTreeMap::new();
    systems.insert("HOSP".to_owned(), "https://hospital.example/mrn".to_owned());
    systems.insert(
        "HOSPVN".to_owned(),
        "https://hospital.example/visit".to_owned(),
    );
    systems
});

pub fn with_ctx<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
    let ctx = Context {
        tenant: "north",
        source: "lab-lis",
        timezone: &TZ,
        identifier_systems: &SYSTEMS,
        system_base: "urn:caregate",
    };
    f(&ctx)
}

/// The Bundle serializes (directly, not through `to_json`'s fallback), the result parses back
/// as a JSON object, `to_json` gives the same text, and the report is consistent.
pub fn check(conv: &Conversion) {
    let json = serde_json::to_string(&conv.bundle).expect("bundle serializes");
    let value: serde_json::Value = serde_json::from_str(&json).expect("bundle JSON parses");
    assert!(value.is_object(), "bundle is a JSON object");
    assert_eq!(
        conv.bundle.to_json(),
        json,
        "to_json equals serde_json::to_string"
    );
    let entries = value
        .get("entry")
        .and_then(|e| e.as_array())
        .map_or(0, |e| e.len());
    let observations = conv.bundle.count("Observation");
    assert!(observations <= entries, "more Observations than entries");
    // Debug of the report must not panic (it is logged).
    let _ = format!("{:?}", conv.report);
}
