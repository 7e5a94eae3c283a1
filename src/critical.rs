//! Critical results ("panic values"): which stored messages jump the queue and raise an alert at
//! once.
//!
//! [`classify`] is pure: message bytes and the tenant's rules in, the critical results out. It
//! never returns a value, a name or any other patient data: only the test code, why it is
//! critical (a flag or a configured rule) and the patient identifier *for hashing* (the caller
//! keys it before it goes anywhere).
//!
//! # What counts as critical
//!
//! - **HL7 v2 OBX-8** (table 0078, any repetition): `HH` (above upper panic limit, "critical
//!   high" since 2.7), `LL` (below lower panic limit, "critical low") and `AA` (very abnormal,
//!   "critical abnormal"). Not `>`/`<`: they mean "above/below the instrument's absolute
//!   range", a measuring statement, not a clinical panic; a tenant who wants such results
//!   flagged configures a threshold rule for the code. `H`, `L`, `A` and the rest are abnormal,
//!   not critical.
//! - **ASTM E1394 R-7**: `HH` and `LL` (same meaning: above/below panic limits; E1394 has no
//!   `AA`). `>`/`<` are excluded for the same reason.
//! - **Device readings** carry no flags: only rules apply.
//! - **Rules** (`[[tenant.critical]]`): `code` (+ optional `system`), `above` and/or `below`,
//!   `unit`. A result is critical when its value is strictly above `above` or strictly below
//!   `below`; the boundary itself is not critical (`6.0` with `above = "6.0"` is not; `6.01`
//!   is). Values are compared as exact decimals (`6.0` = `6.00`), never as floats. A value that
//!   is not a plain decimal (`<2.0`, `>10`, text) is not compared. `unit` must equal the
//!   result's unit (OBX-6.1, R-5, the reading's unit; ASCII case-insensitive, so `mmol/L` =
//!   `MMOL/L`) or the rule does not apply: a threshold in mmol/L says nothing about a value in
//!   mg/dL, and converting units here would be a second, untested conversion table. `system`
//!   absent matches any system; present, it matches the result's coding system, with the HL7
//!   table 0396 name `LN` and `http://loinc.org` taken as the same. ASTM codes (R-3.4, local to
//!   the analyzer) have no system: only rules without `system` match them.

use std::cmp::Ordering;

use serde::Deserialize;

use crate::envelope::Kind;

/// One validated `[[tenant.critical]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Test code (LOINC, MDC or local).
    pub code: String,
    /// Coding system (`None`: any), normalized (`LN` → `http://loinc.org`).
    pub system: Option<String>,
    /// Critical when strictly above.
    pub above: Option<Decimal>,
    /// Critical when strictly below.
    pub below: Option<Decimal>,
    /// The unit the bounds are in.
    pub unit: String,
}

/// File form of one rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    code: String,
    system: Option<String>,
    above: Option<String>,
    below: Option<String>,
    unit: String,
}

impl RawRule {
    /// Validates; errors are `(key, message)` relative to the rule.
    pub(crate) fn validate(self) -> Result<Rule, (String, String)> {
        if self.code.trim().is_empty() {
            return Err(("code".into(), "must not be empty".into()));
        }
        if self.unit.trim().is_empty() {
            return Err(("unit".into(), "must not be empty".into()));
        }
        let dec = |key: &str, v: Option<String>| match v {
            None => Ok(None),
            Some(t) => Decimal::parse(&t)
                .map(Some)
                .ok_or_else(|| (key.to_owned(), format!("{t:?} is not a decimal number"))),
        };
        let above = dec("above", self.above)?;
        let below = dec("below", self.below)?;
        if above.is_none() && below.is_none() {
            return Err(("above".into(), "set above, below or both".into()));
        }
        if let (Some(a), Some(b)) = (&above, &below) {
            if b > a {
                return Err(("below".into(), "must not be greater than above".into()));
            }
        }
        Ok(Rule {
            code: self.code.trim().to_owned(),
            system: self.system.map(|s| normalize_system(s.trim()).to_owned()),
            above,
            below,
            unit: self.unit.trim().to_owned(),
        })
    }
}

/// An exact decimal: sign, integer digits without leading zeros, fraction digits without
/// trailing zeros. `6.0`, `6.00` and `+06` are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    int: String,
    frac: String,
}

impl Decimal {
    /// Parses `[+-]digits[.digits]` (or `.digits`, `digits.`), surrounding blanks ignored.
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let (negative, t) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.trim_end_matches('0').to_owned();
        // -0 is 0.
        let negative = negative && !(int.is_empty() && frac.is_empty());
        Some(Decimal {
            negative,
            int,
            frac,
        })
    }

    fn cmp_magnitude(&self, other: &Decimal) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.negative { "-" } else { "" };
        let int = if self.int.is_empty() { "0" } else { &self.int };
        if self.frac.is_empty() {
            write!(f, "{sign}{int}")
        } else {
            write!(f, "{sign}{int}.{}", self.frac)
        }
    }
}

/// Why a result is critical (no value: the flag or the configured bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// An abnormal flag from the sender (`HH`, `LL`, `AA`).
    Flag(String),
    /// Above a configured bound.
    Above(Decimal),
    /// Below a configured bound.
    Below(Decimal),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Flag(x) => write!(f, "{x}"),
            Trigger::Above(d) => write!(f, "above {d}"),
            Trigger::Below(d) => write!(f, "below {d}"),
        }
    }
}

/// One critical result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Test code.
    pub code: String,
    /// Coding system as sent (normalized), when any.
    pub system: Option<String>,
    /// Why.
    pub trigger: Trigger,
}

/// What [`classify`] found in a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Critical {
    /// The critical results, in message order (empty: nothing critical).
    pub findings: Vec<Finding>,
    /// The patient's first identifier as `authority|value` (HL7 PID-3 CX.4|CX.1, ASTM
    /// `ASTM-P3|`P-3 (or P-4, P-5), a reading's `system|value`): for keyed hashing only, never for output.
    pub patient: Option<String>,
}

impl Critical {
    /// Whether anything is critical.
    pub fn is_critical(&self) -> bool {
        !self.findings.is_empty()
    }
}

/// Flags that mean "panic value" (see the module documentation).
const HL7_CRITICAL: &[&str] = &["HH", "LL", "AA"];
const ASTM_CRITICAL: &[&str] = &["HH", "LL"];

fn normalize_system(s: &str) -> &str {
    if s.eq_ignore_ascii_case("LN") {
        "http://loinc.org"
    } else {
        s
    }
}

/// A result as the rules see it.
struct Measured<'r> {
    code: &'r str,
    system: Option<&'r str>,
    value: &'r str,
    unit: &'r str,
}

fn apply_rules(rules: &[Rule], r: &Measured<'_>, out: &mut Vec<Finding>) {
    let system = r.system.map(normalize_system);
    for rule in rules {
        if rule.code != r.code {
            continue;
        }
        if rule.system.is_some() && rule.system.as_deref() != system {
            continue;
        }
        if !rule.unit.eq_ignore_ascii_case(r.unit.trim()) {
            continue;
        }
        let Some(v) = Decimal::parse(r.value) else {
            continue;
        };
        let trigger = match (&rule.above, &rule.below) {
            (Some(a), _) if v > *a => Trigger::Above(a.clone()),
            (_, Some(b)) if v < *b => Trigger::Below(b.clone()),
            _ => continue,
        };
        out.push(Finding {
            code: r.code.to_owned(),
            system: system.map(str::to_owned),
            trigger,
        });
        return;
    }
}

/// The critical results of one stored payload. Anything that does not parse is not critical
/// (it is rejected or dead-lettered on its own path).
pub fn classify(kind: Kind, payload: &[u8], rules: &[Rule]) -> Critical {
    match kind {
        Kind::Hl7 => match crate::hl7::charset::decode(payload, crate::hl7::Charset::Latin1) {
            Ok((text, _)) => classify_hl7(&text, rules),
            Err(_) => Critical::default(),
        },
        Kind::Astm => classify_astm(&crate::astm::record::decode(payload), rules),
        Kind::Reading => classify_reading(payload, rules),
    }
}

/// HL7 v2: every OBX of the message.
pub fn classify_hl7(text: &str, rules: &[Rule]) -> Critical {
    let Ok(msg) = crate::hl7::Message::parse(text) else {
        return Critical::default();
    };
    let mut out = Critical::default();
    if let Some(pid) = msg.segment("PID") {
        let cx = pid.field(3).repetition(1);
        let value = cx.component(1).text();
        if !value.trim().is_empty() {
            let authority = cx.component(4).subcomponent_text(1);
            out.patient = Some(format!("{}|{}", authority.trim(), value.trim()));
        }
    }
    for obx in msg.segments_named("OBX") {
        let id = obx.field(3).repetition(1);
        let code = id.component(1).text();
        let code = code.trim();
        if code.is_empty() {
            continue;
        }
        let system = id.component(3).text();
        let system = Some(system.trim()).filter(|s| !s.is_empty());
        let flagged = obx.field(8).repetitions().find_map(|r| {
            let f = r.text();
            let f = f.trim().to_ascii_uppercase();
            HL7_CRITICAL.contains(&f.as_str()).then_some(f)
        });
        if let Some(flag) = flagged {
            out.findings.push(Finding {
                code: code.to_owned(),
                system: system.map(|s| normalize_system(s).to_owned()),
                trigger: Trigger::Flag(flag),
            });
            continue;
        }
        if rules.is_empty() {
            continue;
        }
        let value_type = obx.field(2).text();
        let v = obx.field(5).repetition(1);
        // SN (structured numeric): `comparator^num1^separator^num2`; only a plain number counts.
        let value = if value_type.trim().eq_ignore_ascii_case("SN") {
            if !v.component(1).text().trim().is_empty() || !v.component(3).text().trim().is_empty()
            {
                continue;
            }
            v.component(2).text()
        } else {
            v.text()
        };
        let unit = obx.field(6).repetition(1).component(1).text();
        apply_rules(
            rules,
            &Measured {
                code,
                system,
                value: &value,
                unit: &unit,
            },
            &mut out.findings,
        );
    }
    out
}

/// ASTM E1394: every R record (R-3 universal test id, component 4 the local code; R-4 value;
/// R-5 units; R-7 flags).
pub fn classify_astm(text: &str, rules: &[Rule]) -> Critical {
    use crate::astm::record::{Delimiters, Record, RecordType};
    let mut lines = text.split(['\r', '\n']).filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Critical::default();
    };
    let Ok(d) = Delimiters::from_header(header) else {
        return Critical::default();
    };
    let mut out = Critical::default();
    for (i, line) in lines.enumerate() {
        let r = Record::new(i + 2, line, d);
        match r.kind() {
            RecordType::Patient if out.patient.is_none() => {
                // Same order and authority names as the converter (P-3, P-4, P-5).
                out.patient = [(3, "ASTM-P3"), (4, "ASTM-P4"), (5, "ASTM-P5")]
                    .into_iter()
                    .find_map(|(n, authority)| {
                        let v = r.field(n).component(1).value()?;
                        Some(format!("{authority}|{v}"))
                    });
            }
            RecordType::Result => {
                let code = r.field(3).component(4).text();
                let code = code.trim();
                if code.is_empty() {
                    continue;
                }
                let flag = r.field(7).text().trim().to_ascii_uppercase();
                if ASTM_CRITICAL.contains(&flag.as_str()) {
                    out.findings.push(Finding {
                        code: code.to_owned(),
                        system: None,
                        trigger: Trigger::Flag(flag),
                    });
                    continue;
                }
                let value = r.field(4).text();
                let unit = r.field(5).text();
                apply_rules(
                    rules,
                    &Measured {
                        code,
                        system: None,
                        value: &value,
                        unit: &unit,
                    },
                    &mut out.findings,
                );
            }
            _ => {}
        }
    }
    out
}

/// A device reading (JSON, see [`crate::reading`]): rules only.
pub fn classify_reading(payload: &[u8], rules: &[Rule]) -> Critical {
    let Ok(r) = serde_json::from_slice::<crate::reading::Reading>(payload) else {
        return Critical::default();
    };
    let mut out = Critical {
        patient: r
            .patient
            .as_ref()
            .map(|p| format!("{}|{}", p.system, p.value)),
        ..Critical::default()
    };
    if let Some(value) = &r.value {
        apply_rules(
            rules,
            &Measured {
                code: &r.code,
                system: r.system.as_deref(),
                value,
                unit: r.unit.as_deref().unwrap_or(""),
            },
            &mut out.findings,
        );
    }
    out
}

/// What the sources share to classify and alert at ingest: the rules per tenant and the
/// alerter (set once the alerter exists, before any source runs).
#[derive(Default)]
pub struct Notifier {
    tenants: std::collections::HashMap<String, Watch>,
    alerter: std::sync::OnceLock<std::sync::Arc<crate::alert::Alerter>>,
}

#[derive(Default)]
struct Watch {
    rules: Vec<Rule>,
    identifier_systems: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("tenants", &self.tenants.len())
            .finish()
    }
}

impl Notifier {
    /// The rules of every configured tenant.
    pub fn new(config: &crate::config::Config) -> Notifier {
        Notifier {
            tenants: config
                .tenants
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        Watch {
                            rules: t.critical.clone(),
                            identifier_systems: t.identifier_systems.clone(),
                        },
                    )
                })
                .collect(),
            alerter: std::sync::OnceLock::new(),
        }
    }

    /// Where alerts go from now on (set once, at start).
    pub fn set_alerter(&self, alerter: std::sync::Arc<crate::alert::Alerter>) {
        let _ = self.alerter.set(alerter);
    }

    /// A tenant's rules.
    pub fn rules(&self, tenant: &str) -> &[Rule] {
        self.tenants.get(tenant).map_or(&[], |w| w.rules.as_slice())
    }

    /// Raises a `critical-result` alert for a message that was just committed (log, metric,
    /// webhooks, audit `alert-raised`): the caller calls it right after the commit, not
    /// waiting for anything else.
    pub fn raise(&self, stored: Stored<'_>, found: &Critical) {
        let Some(alerter) = self.alerter.get() else {
            tracing::error!(tenant = %stored.tenant, source = %stored.source, envelope = stored.envelope_id,
                "critical result stored but no alerter is set");
            return;
        };
        let patient_ref = found.patient.as_deref().and_then(|p| {
            let (authority, value) = p.split_once('|').unwrap_or(("", p));
            // The converter's system for the authority when configured, so the hash is the one
            // the audit trail's `forwarded` entries carry; else the authority as sent.
            let system = self
                .tenants
                .get(stored.tenant)
                .and_then(|w| w.identifier_systems.get(authority))
                .map_or(authority, String::as_str);
            let q = crate::convert::id::identifier_query(system, value);
            alerter.patient_ref(q.strip_prefix("identifier=").unwrap_or(&q))
        });
        alerter.send_critical(crate::alert::CriticalAlert {
            kind: crate::alert::Kind::CriticalResult,
            severity: "critical",
            tenant: stored.tenant.to_owned(),
            source: stored.source.to_owned(),
            envelope_id: stored.envelope_id,
            control_id: stored.control_id.to_owned(),
            results: found
                .findings
                .iter()
                .map(|f| crate::alert::CriticalResult {
                    code: f.code.clone(),
                    system: f.system.clone(),
                    flag: f.trigger.to_string(),
                })
                .collect(),
            patient_ref,
            received_at: jiff::Timestamp::from_microsecond(stored.received_at_us)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            time: jiff::Timestamp::now().to_string(),
            host: String::new(),
        });
    }
}

/// A critical envelope of a batch, remembered until the batch's commit.
#[derive(Debug)]
pub struct Marked {
    at: usize,
    tenant: String,
    source: String,
    control_id: String,
    received_at_us: i64,
    found: Critical,
}

impl Notifier {
    /// Classifies each envelope of a batch about to be stored (by its kind: HL7, ASTM or a
    /// device reading) against its tenant's rules; critical ones go in the critical lane.
    pub fn mark(&self, items: &mut [crate::queue::NewEnvelope]) -> Vec<Marked> {
        let mut out = Vec::new();
        for (at, e) in items.iter_mut().enumerate() {
            let found = classify(e.kind, &e.payload, self.rules(&e.tenant));
            if found.is_critical() {
                e.lane = crate::envelope::Lane::Critical;
                out.push(Marked {
                    at,
                    tenant: e.tenant.clone(),
                    source: e.source.clone(),
                    control_id: e.meta.control_id.clone(),
                    received_at_us: e.received_at_us,
                    found,
                });
            }
        }
        out
    }

    /// After the batch's commit: the alert of each critical envelope newly stored (a duplicate
    /// was alerted when its first copy was stored).
    pub fn raise_marked(&self, marked: &[Marked], pushed: &[crate::queue::Pushed]) {
        for m in marked {
            let Some(p) = pushed.get(m.at) else { continue };
            if p.duplicate {
                continue;
            }
            self.raise(
                Stored {
                    tenant: &m.tenant,
                    source: &m.source,
                    envelope_id: p.id,
                    control_id: &m.control_id,
                    received_at_us: m.received_at_us,
                },
                &m.found,
            );
        }
    }
}

/// The stored message an alert is about (ids only).
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Source.
    pub source: &'a str,
    /// Envelope id.
    pub envelope_id: u64,
    /// MSH-10 (empty when none).
    pub control_id: &'a str,
    /// Receipt time, µs since the epoch.
    pub received_at_us: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(t: &str) -> Decimal {
        Decimal::parse(t).unwrap()
    }

    fn potassium(above: &str, below: &str) -> Vec<Rule> {
        vec![
            RawRule {
                code: "2823-3".into(),
                system: Some("http://loinc.org".into()),
                above: Some(above.into()),
                below: Some(below.into()),
                unit: "mmol/L".into(),
            }
            .validate()
            .unwrap(),
        ]
    }

    fn oru(obx: &str) -> String {
        format!(
            "MSH|^~\\&|LAB|H|CG|H|20240105103000||ORU^R01|C1|P|2.5.1\rPID|1||MRN123^^^HOSP^MR||Doe^Jane\rOBR|1||F1|2823-3^Potassium^LN\r{obx}\r"
        )
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(d("6.0"), d("6.00"));
        assert_eq!(d("6"), d("+06.000"));
        assert_eq!(d("-0.0"), d("0"));
        assert!(d("6.01") > d("6.0"));
        assert!(d("6.001") > d("6.0"));
        assert!(d("5.999") < d("6"));
        assert!(d("10") > d("9.99"));
        assert!(d("-2.5") < d("-2.4"));
        assert!(d("-10") < d("-9"));
        assert!(d(".5") < d("0.51"));
        // 0.1 + 0.2 style float surprises cannot happen: digits are compared.
        assert!(d("0.30000000000000001") > d("0.3"));
        for bad in ["", ".", "-", "1e3", "6,0", "<2", "abc", "1.2.3", "NaN"] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
        assert_eq!(d("06.50").to_string(), "6.5");
        assert_eq!(d("-.5").to_string(), "-0.5");
    }

    #[test]
    fn every_hl7_panic_flag_and_no_other() {
        for flag in ["HH", "LL", "AA", "hh"] {
            let c = classify_hl7(
                &oru(&format!(
                    "OBX|1|NM|2823-3^Potassium^LN||7.1|mmol/L|3.5-5.1|{flag}|||F"
                )),
                &[],
            );
            assert_eq!(c.findings.len(), 1, "{flag}");
            assert_eq!(
                c.findings[0].trigger,
                Trigger::Flag(flag.to_ascii_uppercase())
            );
            assert_eq!(c.findings[0].code, "2823-3");
            assert_eq!(c.findings[0].system.as_deref(), Some("http://loinc.org"));
            assert_eq!(c.patient.as_deref(), Some("HOSP|MRN123"));
        }
        for flag in ["H", "L", "A", "N", ">", "<", "", "HHH"] {
            let c = classify_hl7(
                &oru(&format!(
                    "OBX|1|NM|2823-3^Potassium^LN||7.1|mmol/L|3.5-5.1|{flag}|||F"
                )),
                &[],
            );
            assert!(!c.is_critical(), "{flag}");
        }
        // Any repetition of OBX-8.
        let c = classify_hl7(&oru("OBX|1|NM|2823-3^K^LN||7.1|mmol/L||H~HH|||F"), &[]);
        assert!(c.is_critical());
    }

    #[test]
    fn thresholds_at_above_and_below_the_boundary() {
        let rules = potassium("6.0", "2.5");
        let at = |v: &str| {
            classify_hl7(
                &oru(&format!("OBX|1|NM|2823-3^Potassium^LN||{v}|mmol/L|||||F")),
                &rules,
            )
            .findings
        };
        assert!(at("6.0").is_empty(), "the bound itself is not critical");
        assert!(at("6.00").is_empty());
        assert!(at("6").is_empty());
        assert_eq!(at("6.01")[0].trigger, Trigger::Above(d("6.0")));
        assert_eq!(at("6.001").len(), 1);
        assert!(at("2.5").is_empty());
        assert!(at("2.50").is_empty());
        assert_eq!(at("2.49")[0].trigger, Trigger::Below(d("2.5")));
        assert!(at("4.2").is_empty());
        assert!(at(">6.5").is_empty(), "not a plain decimal: not compared");
        assert!(at("hemolyzed").is_empty());
    }

    #[test]
    fn a_unit_or_system_mismatch_means_the_rule_does_not_apply() {
        let rules = potassium("6.0", "2.5");
        let with = |obx: &str| classify_hl7(&oru(obx), &rules).findings;
        assert!(with("OBX|1|NM|2823-3^K^LN||27|mg/dL|||||F").is_empty());
        assert!(with("OBX|1|NM|2823-3^K^LN||7|||||||F").is_empty());
        assert_eq!(with("OBX|1|NM|2823-3^K^LN||7|MMOL/L|||||F").len(), 1);
        assert_eq!(
            with("OBX|1|NM|2823-3^K^http://loinc.org||7|mmol/L|||||F").len(),
            1
        );
        assert!(with("OBX|1|NM|2823-3^K^99LOCAL||7|mmol/L|||||F").is_empty());
        assert!(with("OBX|1|NM|2824-1^K^LN||7|mmol/L|||||F").is_empty());
        // SN: only a plain number.
        assert_eq!(with("OBX|1|SN|2823-3^K^LN||^7.2|mmol/L|||||F").len(), 1);
        assert!(with("OBX|1|SN|2823-3^K^LN||>^7.2|mmol/L|||||F").is_empty());
        // A rule without a system matches any.
        let any = vec![
            RawRule {
                code: "2823-3".into(),
                system: None,
                above: Some("6".into()),
                below: None,
                unit: "mmol/L".into(),
            }
            .validate()
            .unwrap(),
        ];
        assert_eq!(
            classify_hl7(&oru("OBX|1|NM|2823-3^K^99LOCAL||7|mmol/L|||||F"), &any)
                .findings
                .len(),
            1
        );
    }

    #[test]
    fn astm_flags_and_rules() {
        let msg = |flag: &str, value: &str, unit: &str| {
            format!(
                "H|\\^&|||Analyzer\rP|1||PID77\rO|1|S1||^^^K\rR|1|^^^K|{value}|{unit}|3.5-5.1|{flag}||F\rL|1|N\r"
            )
        };
        for flag in ["HH", "LL"] {
            let c = classify_astm(&msg(flag, "7.0", "mmol/L"), &[]);
            assert_eq!(c.findings[0].trigger, Trigger::Flag(flag.into()));
            assert_eq!(c.findings[0].code, "K");
            assert_eq!(c.patient.as_deref(), Some("ASTM-P4|PID77"));
        }
        for flag in ["H", "L", ">", "<", "A", "N"] {
            assert!(!classify_astm(&msg(flag, "7.0", "mmol/L"), &[]).is_critical());
        }
        let rules = vec![
            RawRule {
                code: "K".into(),
                system: None,
                above: Some("6.0".into()),
                below: None,
                unit: "mmol/L".into(),
            }
            .validate()
            .unwrap(),
        ];
        assert!(classify_astm(&msg("", "6.01", "mmol/L"), &rules).is_critical());
        assert!(!classify_astm(&msg("", "6.00", "mmol/L"), &rules).is_critical());
        assert!(!classify_astm(&msg("", "7", "mg/dL"), &rules).is_critical());
        // A system-bound rule never matches an analyzer's local code.
        assert!(!classify_astm(&msg("", "7", "mmol/L"), &potassium("6.0", "2.5")).is_critical());
    }

    #[test]
    fn readings_use_rules_only() {
        let rules = vec![
            RawRule {
                code: "150456".into(),
                system: Some("urn:iso:std:iso:11073:10101".into()),
                above: None,
                below: Some("88".into()),
                unit: "%".into(),
            }
            .validate()
            .unwrap(),
        ];
        let r = |v: &str, unit: &str| {
            format!(
                r#"{{"device":{{"id":"D1"}},"code":"150456","system":"urn:iso:std:iso:11073:10101","value":"{v}","unit":"{unit}","time":"2024-01-05T10:30:00Z","patient":{{"system":"https://h/mrn","value":"M1"}}}}"#
            )
        };
        let c = classify_reading(r("87.9", "%").as_bytes(), &rules);
        assert_eq!(c.findings[0].trigger, Trigger::Below(d("88")));
        assert_eq!(c.patient.as_deref(), Some("https://h/mrn|M1"));
        assert!(!classify_reading(r("88.0", "%").as_bytes(), &rules).is_critical());
        assert!(!classify_reading(r("80", "1").as_bytes(), &rules).is_critical());
        assert!(!classify_reading(b"not json", &rules).is_critical());
    }

    #[test]
    fn rules_are_validated() {
        let raw = |above: Option<&str>, below: Option<&str>| RawRule {
            code: "X".into(),
            system: Some("LN".into()),
            above: above.map(Into::into),
            below: below.map(Into::into),
            unit: "mmol/L".into(),
        };
        assert_eq!(raw(None, None).validate().unwrap_err().0, "above");
        assert_eq!(raw(Some("6,0"), None).validate().unwrap_err().0, "above");
        assert_eq!(raw(Some("2"), Some("3")).validate().unwrap_err().0, "below");
        let ok = raw(Some("6"), None).validate().unwrap();
        assert_eq!(ok.system.as_deref(), Some("http://loinc.org"));
    }

    #[test]
    fn findings_never_carry_the_value() {
        let c = classify_hl7(
            &oru("OBX|1|NM|2823-3^Potassium^LN||7.123|mmol/L|3.5-5.1|HH|||F"),
            &potassium("6.0", "2.5"),
        );
        let shown = format!("{:?}", c.findings);
        assert!(
            !shown.contains("7.123") && !shown.contains("Doe"),
            "{shown}"
        );
    }
}
