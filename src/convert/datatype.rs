//! HL7 v2 datatypes → FHIR datatypes, per the v2-to-FHIR IG datatype maps (protocols.md §5.8,
//! §5.12, §5.4, §5.5): CWE\[CodeableConcept\], CX\[Identifier\], EI\[Identifier\], HD\[uri\],
//! XPN[HumanName], XAD[Address], XTN[ContactPoint], XCN[Reference], CWE[Quantity] (units) and
//! OBX-7 → referenceRange.
//!
//! Functions here are pure and never fail: what cannot be mapped yields `None` (or a flag) and
//! the caller reports it with its segment/field position.

use std::borrow::Cow;

use super::Context;
use super::codes;
use super::id;
use crate::fhir::{
    Address, CodeableConcept, Coding, ContactPoint, Decimal, HumanName, Identifier, Quantity,
    Reference, ReferenceRange,
};
use crate::hl7::{Component, Repetition};

/// Unescaped, trimmed text of a component; `None` when empty or the HL7 null `""`.
pub fn text(c: Component<'_>) -> Option<String> {
    text_cow(c).map(Cow::into_owned)
}

/// [`text`] borrowing the message when the component has no escapes (for values that are only
/// looked at, not kept).
pub fn text_cow(c: Component<'_>) -> Option<Cow<'_, str>> {
    if c.is_empty() || c.is_null() {
        return None;
    }
    match c.text() {
        Cow::Borrowed(t) => {
            let trimmed = t.trim();
            (!trimmed.is_empty()).then_some(Cow::Borrowed(trimmed))
        }
        Cow::Owned(t) => {
            let trimmed = t.trim();
            (!trimmed.is_empty()).then(|| Cow::Owned(trimmed.to_owned()))
        }
    }
}

/// Unescaped text of subcomponent `n` of a component (`None` when empty).
pub fn sub(c: Component<'_>, n: usize) -> Option<String> {
    let t: Cow<'_, str> = c.subcomponent_text(n);
    let trimmed = t.trim();
    (!trimmed.is_empty() && trimmed != "\"\"").then(|| trimmed.to_owned())
}

/// Whether [`rep_text`] is `Some`, without building the text.
pub fn rep_has_text(r: Repetition<'_>) -> bool {
    !r.is_empty() && !r.is_null() && !r.text().trim().is_empty()
}

/// Whole-repetition text (`None` when empty or null).
pub fn rep_text(r: Repetition<'_>) -> Option<String> {
    if r.is_empty() || r.is_null() {
        return None;
    }
    let t = r.text();
    let trimmed = t.trim_end();
    (!trimmed.trim_start().is_empty()).then(|| trimmed.to_owned())
}

/// The system URI for a v2 coding-system name: public per §5.12, else a tenant-scoped local
/// URI under `system_base` (an empty name becomes `local`). The flag is true when local.
pub fn system_uri(ctx: &Context<'_>, name: Option<&str>) -> (String, bool) {
    match name.filter(|n| !n.trim().is_empty()) {
        Some(n) => match codes::coding_system(n) {
            Some(uri) => (uri, false),
            None => (
                id::minted(ctx.system_base, &[ctx.tenant, "codes", n.trim()]),
                true,
            ),
        },
        None => (
            id::minted(ctx.system_base, &[ctx.tenant, "codes", "local"]),
            true,
        ),
    }
}

fn triplet(
    ctx: &Context<'_>,
    comps: &[Component<'_>],
    (code, display, system, version): (usize, usize, usize, usize),
) -> (Option<Coding>, Option<String>) {
    let get = |n: usize| comps.get(n - 1).copied().and_then(text);
    let display_v = get(display);
    match get(code) {
        Some(c) => {
            let (uri, _) = system_uri(ctx, get(system).as_deref());
            let coding = Coding {
                system: Some(uri),
                version: get(version),
                code: Some(c),
                display: display_v,
            };
            (Some(coding), None)
        }
        // A triplet with text but no code goes to `text` only (§5.12).
        None => (None, display_v),
    }
}

/// CWE/CE/CNE → CodeableConcept (§5.12): triplets 1-3 (+7), 4-6 (+8), 10-12 (+13); CWE.9
/// original text → `text`. `None` when nothing is valued.
pub fn codeable_concept(ctx: &Context<'_>, r: Repetition<'_>) -> Option<CodeableConcept> {
    if r.is_empty() || r.is_null() {
        return None;
    }
    let comps: Vec<Component<'_>> = r.components().take(13).collect();
    let mut cc = CodeableConcept::default();
    let mut fallback_text = None;
    for positions in [(1, 2, 3, 7), (4, 5, 6, 8), (10, 11, 12, 13)] {
        if comps.len() < positions.0 && comps.len() < positions.1 {
            break;
        }
        let (coding, t) = triplet(ctx, &comps, positions);
        if let Some(coding) = coding {
            cc.coding.push(coding);
        } else if fallback_text.is_none() {
            fallback_text = t;
        }
    }
    cc.text = comps.get(8).copied().and_then(text).or(fallback_text);
    (!cc.is_empty()).then_some(cc)
}

/// HD → system URI (IG HD\[uri\]) through the tenant's map: the namespace (HD.1) or universal id
/// (HD.2) looked up in `identifier_systems`; else HD.2 as `urn:oid:` (ISO), `urn:uuid:` (UUID)
/// or as is (URI); else a tenant-scoped URI under `system_base`. The flag is true when the
/// authority was not configured (the caller warns).
pub fn authority_system(
    ctx: &Context<'_>,
    namespace: Option<&str>,
    universal: Option<&str>,
    universal_type: Option<&str>,
) -> (String, bool) {
    for key in [namespace, universal].into_iter().flatten() {
        if let Some(uri) = ctx.identifier_systems.get(key) {
            return (uri.clone(), false);
        }
    }
    if let Some(u) = universal {
        match universal_type.map(str::to_ascii_uppercase).as_deref() {
            Some("ISO") if u.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                return (format!("urn:oid:{u}"), true);
            }
            Some("UUID") => return (format!("urn:uuid:{}", u.to_ascii_lowercase()), true),
            Some("URI") | Some("URL") if u.contains(':') => return (u.to_owned(), true),
            _ => {}
        }
    }
    let name = namespace.or(universal).unwrap_or("unspecified");
    (
        id::minted(ctx.system_base, &[ctx.tenant, "identifiers", name]),
        true,
    )
}

/// A v2-0203 identifier type.
pub fn identifier_type(code: &str) -> CodeableConcept {
    CodeableConcept::coding(Coding::new(codes::V2_0203, code))
}

/// CX → Identifier (§5.8 CX table). Returns the identifier and whether its authority was
/// unconfigured. `None` when CX.1 is empty.
pub fn cx_identifier(ctx: &Context<'_>, r: Repetition<'_>) -> Option<(Identifier, bool)> {
    let value = text(r.component(1))?;
    let auth = r.component(4);
    let (system, unknown) = authority_system(
        ctx,
        sub(auth, 1).as_deref(),
        sub(auth, 2).as_deref(),
        sub(auth, 3).as_deref(),
    );
    let type_ = text(r.component(5)).map(|t| identifier_type(&t));
    Some((
        Identifier {
            type_,
            system: Some(system),
            value: Some(value),
            ..Identifier::default()
        },
        unknown,
    ))
}

/// EI → Identifier (EI.1 value; EI.2 namespace, EI.3 universal id, EI.4 type → system).
pub fn ei_identifier(
    ctx: &Context<'_>,
    r: Repetition<'_>,
    type_code: Option<&str>,
) -> Option<Identifier> {
    ei_parts(
        ctx,
        r.component(1),
        r.component(2),
        r.component(3),
        r.component(4),
        type_code,
    )
}

/// EI given as four components (also used for EI held in subcomponents of one component).
pub fn ei_parts(
    ctx: &Context<'_>,
    value: Component<'_>,
    namespace: Component<'_>,
    universal: Component<'_>,
    universal_type: Component<'_>,
    type_code: Option<&str>,
) -> Option<Identifier> {
    let value = text(value)?;
    let (system, _) = authority_system(
        ctx,
        text(namespace).as_deref(),
        text(universal).as_deref(),
        text(universal_type).as_deref(),
    );
    Some(Identifier {
        type_: type_code.map(identifier_type),
        system: Some(system),
        value: Some(value),
        ..Identifier::default()
    })
}

/// EI held as subcomponents of one component (EIP in SPM-2, `value&ns&uid&type`).
pub fn ei_subcomponents(
    ctx: &Context<'_>,
    c: Component<'_>,
    type_code: Option<&str>,
) -> Option<Identifier> {
    let value = sub(c, 1)?;
    let (system, _) = authority_system(
        ctx,
        sub(c, 2).as_deref(),
        sub(c, 3).as_deref(),
        sub(c, 4).as_deref(),
    );
    Some(Identifier {
        type_: type_code.map(identifier_type),
        system: Some(system),
        value: Some(value),
        ..Identifier::default()
    })
}

/// XPN → HumanName (§5.8). Returns the name and whether XPN.7 held an unmapped code.
pub fn human_name(r: Repetition<'_>) -> Option<(HumanName, bool)> {
    let family = sub(r.component(1), 1);
    let mut given = Vec::new();
    given.extend(text(r.component(2)));
    if let Some(more) = text(r.component(3)) {
        given.extend(more.split_whitespace().map(str::to_owned));
    }
    let mut suffix = Vec::new();
    suffix.extend(text(r.component(4)));
    suffix.extend(text(r.component(6)));
    suffix.extend(text(r.component(14)));
    let prefix: Vec<String> = text(r.component(5)).into_iter().collect();
    let use_code = text(r.component(7));
    let use_ = use_code.as_deref().and_then(codes::name_use);
    let unmapped_use = use_code.is_some() && use_.is_none();
    let name = HumanName {
        use_: use_.map(str::to_owned),
        family,
        given,
        prefix,
        suffix,
    };
    if name.family.is_none()
        && name.given.is_empty()
        && name.prefix.is_empty()
        && name.suffix.is_empty()
    {
        return None;
    }
    Some((name, unmapped_use))
}

/// XAD → Address: 1 street (SAD.1), 2 other designation, 3 city, 4 state, 5 zip, 6 country,
/// 7 type (H home, B/O work, C temp, BA old; others not mapped), 9 county.
pub fn address(r: Repetition<'_>) -> Option<Address> {
    let mut line = Vec::new();
    line.extend(sub(r.component(1), 1));
    line.extend(text(r.component(2)));
    let use_ = text(r.component(7)).and_then(|t| match t.as_str() {
        "H" | "P" => Some("home"),
        "B" | "O" => Some("work"),
        "C" => Some("temp"),
        "BA" | "BI" => Some("old"),
        _ => None,
    });
    let a = Address {
        use_: use_.map(str::to_owned),
        line,
        city: text(r.component(3)),
        district: text(r.component(9)),
        state: text(r.component(4)),
        postal_code: text(r.component(5)),
        country: text(r.component(6)),
    };
    (a != Address::default()).then_some(a)
}

/// XTN → ContactPoint: XTN.4 email, else XTN.7 (area XTN.6) or XTN.1 number; XTN.2 use code
/// (PRN home, WPN work, ORN temp? → home/work/mobile), XTN.3 equipment (PH, FX, CP, Internet).
pub fn contact_point(r: Repetition<'_>, default_use: &str) -> Option<ContactPoint> {
    let equipment = text(r.component(3));
    let email = text(r.component(4));
    let number = match (text(r.component(6)), text(r.component(7))) {
        (Some(area), Some(local)) => Some(format!("({area}) {local}")),
        (None, Some(local)) => Some(local),
        _ => text(r.component(1)),
    };
    let (system, value) = match (equipment.as_deref(), email, number) {
        (Some("Internet") | Some("X.400"), Some(e), _) | (_, Some(e), None) => ("email", e),
        (Some("FX"), _, Some(n)) => ("fax", n),
        (Some("BP"), _, Some(n)) => ("pager", n),
        (_, _, Some(n)) => ("phone", n),
        (_, None, None) => return None,
    };
    let use_ = match (text(r.component(2)).as_deref(), equipment.as_deref()) {
        (_, Some("CP")) => "mobile",
        (Some("WPN"), _) => "work",
        (Some("PRN") | Some("ORN") | Some("VHN"), _) => "home",
        _ => default_use,
    };
    Some(ContactPoint {
        system: Some(system.to_owned()),
        value: Some(value),
        use_: Some(use_.to_owned()),
    })
}

/// XCN → Reference to a practitioner by identifier (XCN.1, authority XCN.9) and display
/// (`prefix given family suffix`). caregate does not emit Practitioner resources.
pub fn xcn_reference(ctx: &Context<'_>, r: Repetition<'_>) -> Option<Reference> {
    let id_value = text(r.component(1));
    let identifier = id_value.map(|v| {
        let auth = r.component(9);
        let (system, _) = authority_system(
            ctx,
            sub(auth, 1).as_deref(),
            sub(auth, 2).as_deref(),
            sub(auth, 3).as_deref(),
        );
        Identifier {
            system: Some(system),
            value: Some(v),
            ..Identifier::default()
        }
    });
    let parts: Vec<String> = [6, 3, 4, 2, 5, 7]
        .iter()
        .filter_map(|&i| {
            if i == 2 {
                sub(r.component(2), 1)
            } else {
                text(r.component(i))
            }
        })
        .collect();
    let display = (!parts.is_empty()).then(|| parts.join(" "));
    if identifier.is_none() && display.is_none() {
        return None;
    }
    Some(Reference {
        reference: None,
        identifier,
        display,
    })
}

/// XON → Reference to an organization by display (XON.1) and identifier (XON.10).
pub fn xon_reference(ctx: &Context<'_>, r: Repetition<'_>) -> Option<Reference> {
    let display = text(r.component(1));
    let identifier = text(r.component(10)).map(|v| {
        let auth = r.component(6);
        let (system, _) = authority_system(
            ctx,
            sub(auth, 1).as_deref(),
            sub(auth, 2).as_deref(),
            sub(auth, 3).as_deref(),
        );
        Identifier {
            system: Some(system),
            value: Some(v),
            ..Identifier::default()
        }
    });
    if identifier.is_none() && display.is_none() {
        return None;
    }
    Some(Reference {
        reference: None,
        identifier,
        display,
    })
}

/// The unit part of a Quantity from OBX-6 (§5.4):
/// - the sender says UCUM: UCUM;
/// - MDC: UCUM when the MDC unit has an equivalent (§4.6), else the MDC code;
/// - no coding system (or the old ISO+/ANS+ unit tables, whose codes are unit strings): the
///   string, with UCUM system and code when it is a known UCUM unit or alias;
/// - any other coding system (a lab's table: `1^ML^METRIC`, `U12^mg/dL^99LAB`, `mg/dL^^L`):
///   its code is an entry of that table, not a unit string, so it is never read as UCUM (`1`
///   would be UCUM's dimensionless unit, `C` Celsius): unit = the text (else the code), system
///   and code = the sender's, local systems scoped like any CWE (§5.12).
pub fn unit(ctx: &Context<'_>, r: Repetition<'_>) -> Quantity {
    let code = text(r.component(1));
    let display = text(r.component(2));
    let system_name = text(r.component(3));
    let system = system_name.as_deref().map(str::to_ascii_uppercase);
    let mut q = Quantity::default();
    match (code, system.as_deref()) {
        (None, _) => {
            q.unit = display;
        }
        (Some(c), Some("UCUM")) => {
            q.unit = Some(display.unwrap_or_else(|| c.clone()));
            q.system = Some(codes::UCUM.to_owned());
            q.code = Some(c);
        }
        (Some(c), Some("MDC")) => {
            match codes::mdc_unit_to_ucum(&c, display.as_deref().unwrap_or("")) {
                Some(u) => {
                    q.unit = Some(u.to_owned());
                    q.system = Some(codes::UCUM.to_owned());
                    q.code = Some(u.to_owned());
                }
                None => {
                    q.unit = Some(display.unwrap_or_else(|| c.clone()));
                    q.system = Some(codes::MDC.to_owned());
                    q.code = Some(c);
                }
            }
        }
        (Some(c), None | Some("ISO+" | "ANS+")) => {
            let ucum = codes::ucum_for(&c);
            q.unit = Some(c);
            if let Some(u) = ucum {
                q.system = Some(codes::UCUM.to_owned());
                q.code = Some(u.to_owned());
            }
        }
        (Some(c), Some(_)) => {
            let (uri, _) = system_uri(ctx, system_name.as_deref());
            q.unit = Some(display.unwrap_or_else(|| c.clone()));
            q.system = Some(uri);
            q.code = Some(c);
        }
    }
    q
}

/// A number with an optional leading comparator (`<0.5`, `>=100`; labs send these in NM and
/// ASTM R-4) → a Quantity with `comparator` and the unit parts of `unit`; `None` when the rest
/// is not a plain decimal.
pub fn compared_quantity(raw: &str, unit: &Quantity) -> Option<Quantity> {
    let raw = raw.trim();
    let (comparator, number) = ["<=", ">=", "<", ">"]
        .iter()
        .find_map(|c| {
            raw.strip_prefix(c)
                .map(|rest| (Some((*c).to_owned()), rest))
        })
        .unwrap_or((None, raw));
    let mut q = quantity(Decimal::parse(number.trim_start())?, unit);
    q.comparator = comparator;
    Some(q)
}

/// Whether `unit` holds anything (text or code).
pub fn has_unit(unit: &Quantity) -> bool {
    unit.unit.is_some() || unit.code.is_some()
}

/// A Quantity with a value and the unit parts of `unit`.
pub fn quantity(value: Decimal, unit: &Quantity) -> Quantity {
    Quantity {
        value: Some(value),
        comparator: None,
        unit: unit.unit.clone(),
        system: unit.system.clone(),
        code: unit.code.clone(),
    }
}

fn split_range(t: &str) -> Option<(&str, &str)> {
    // The separator is a '-' or '–' that follows a digit or '.', so negative bounds survive.
    for (i, ch) in t.char_indices() {
        if (ch == '-' || ch == '–') && i > 0 {
            let prev = t[..i].trim_end();
            if prev
                .as_bytes()
                .last()
                .is_some_and(|b| b.is_ascii_digit() || *b == b'.')
            {
                return Some((prev, t[i + ch.len_utf8()..].trim()));
            }
        }
    }
    None
}

/// OBX-7 → referenceRange (§5.5): `low-high`, `low^high`, `>x`/`>=x` (low), `<x`/`<=x`
/// (high); text always kept. Units come from the value's Quantity.
pub fn reference_range(raw_text: &str, unit: &Quantity) -> Option<ReferenceRange> {
    let text_v = raw_text.trim();
    if text_v.is_empty() || text_v == "\"\"" {
        return None;
    }
    let simple = |v: Decimal| quantity(v, unit);
    let mut rr = ReferenceRange {
        text: Some(text_v.to_owned()),
        ..ReferenceRange::default()
    };
    let body = text_v;
    if let Some(rest) = body.strip_prefix(">=").or_else(|| body.strip_prefix('>')) {
        rr.low = Decimal::parse(rest).map(simple);
    } else if let Some(rest) = body.strip_prefix("<=").or_else(|| body.strip_prefix('<')) {
        rr.high = Decimal::parse(rest).map(simple);
    } else if let Some((lo, hi)) = body.split_once('^').or_else(|| split_range(body)) {
        if let (Some(l), Some(h)) = (Decimal::parse(lo), Decimal::parse(hi)) {
            rr.low = Some(simple(l));
            rr.high = Some(simple(h));
        }
    }
    Some(rr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::testutil::{ctx_with, field};

    #[test]
    fn cwe_with_two_triplets_and_original_text_becomes_two_codings_and_text() {
        ctx_with(|ctx| {
            let f = field("2345-7^Glucose^LN^GLU^Glucose SerPl^99LAB^2.73^^Glucose, serum");
            let cc = codeable_concept(ctx, f.repetition(1)).expect("valued");
            let json = serde_json::to_value(&cc).expect("serializes");
            assert_eq!(
                json,
                serde_json::json!({
                    "coding": [
                        {"system": "http://loinc.org", "version": "2.73", "code": "2345-7", "display": "Glucose"},
                        {"system": "urn:caregate:north:codes:99LAB", "code": "GLU", "display": "Glucose SerPl"}
                    ],
                    "text": "Glucose, serum"
                })
            );
        });
    }

    #[test]
    fn cwe_with_text_but_no_code_becomes_text_only() {
        ctx_with(|ctx| {
            let f = field("^Hemolyzed");
            let cc = codeable_concept(ctx, f.repetition(1)).expect("valued");
            assert!(cc.coding.is_empty());
            assert_eq!(cc.text.as_deref(), Some("Hemolyzed"));
            assert!(codeable_concept(ctx, field("").repetition(1)).is_none());
            assert!(codeable_concept(ctx, field("\"\"").repetition(1)).is_none());
        });
    }

    #[test]
    fn cx_authority_maps_through_tenant_config_then_oid_then_minted() {
        ctx_with(|ctx| {
            let (id, unknown) =
                cx_identifier(ctx, field("MRN1^^^HOSP^MR").repetition(1)).expect("valued");
            assert_eq!(id.system.as_deref(), Some("https://hospital.example/mrn"));
            assert!(!unknown);
            assert_eq!(id.value.as_deref(), Some("MRN1"));
            let (id, unknown) =
                cx_identifier(ctx, field("7^^^X&1.2.3&ISO^PI").repetition(1)).expect("valued");
            assert_eq!(id.system.as_deref(), Some("urn:oid:1.2.3"));
            assert!(unknown);
            let (id, _) = cx_identifier(ctx, field("7^^^LOCALHOSP").repetition(1)).expect("valued");
            assert_eq!(
                id.system.as_deref(),
                Some("urn:caregate:north:identifiers:LOCALHOSP")
            );
            assert!(cx_identifier(ctx, field("^^^HOSP").repetition(1)).is_none());
        });
    }

    #[test]
    fn xpn_maps_family_given_middle_and_use() {
        let (n, unmapped) =
            human_name(field("Doe^Jane^Q R^Jr^Dr^MD^L").repetition(1)).expect("valued");
        assert_eq!(n.family.as_deref(), Some("Doe"));
        assert_eq!(n.given, ["Jane", "Q", "R"]);
        assert_eq!(n.prefix, ["Dr"]);
        assert_eq!(n.suffix, ["Jr", "MD"]);
        assert_eq!(n.use_.as_deref(), Some("official"));
        assert!(!unmapped);
    }

    /// OBX-6 `raw` as (unit, system, code).
    fn unit_parts(
        ctx: &Context<'_>,
        raw: &str,
    ) -> (Option<String>, Option<String>, Option<String>) {
        let u = unit(ctx, field(raw).repetition(1));
        (u.unit, u.system, u.code)
    }

    #[test]
    fn units_prefer_ucum_and_translate_mdc_and_aliases() {
        ctx_with(|ctx| {
            let parts = |s: &str| unit_parts(ctx, s);
            let owned = |u: &str, s: Option<&str>, c: Option<&str>| {
                (
                    Some(u.to_owned()),
                    s.map(str::to_owned),
                    c.map(str::to_owned),
                )
            };
            assert_eq!(
                parts("mg/dL^milligram per deciliter^UCUM"),
                owned("milligram per deciliter", Some(codes::UCUM), Some("mg/dL"))
            );
            assert_eq!(
                parts("262688^MDC_DIM_PERCENT^MDC"),
                owned("%", Some(codes::UCUM), Some("%"))
            );
            assert_eq!(
                parts("K/uL"),
                owned("K/uL", Some(codes::UCUM), Some("10*3/uL"))
            );
            assert_eq!(
                parts("mmol/L^^ISO+"),
                owned("mmol/L", Some(codes::UCUM), Some("mmol/L"))
            );
            assert_eq!(parts("furlongs"), owned("furlongs", None, None));
        });
    }

    #[test]
    fn a_unit_from_a_senders_own_table_is_never_read_as_ucum() {
        // `1` is UCUM's dimensionless unit and `C` Celsius: codes of another table are not.
        ctx_with(|ctx| {
            let parts = |s: &str| unit_parts(ctx, s);
            let local = |name: &str| Some(format!("urn:caregate:north:codes:{name}"));
            assert_eq!(
                parts("1^ML^METRIC"),
                (Some("ML".to_owned()), local("METRIC"), Some("1".to_owned()))
            );
            assert_eq!(
                parts("C^cups^99LAB"),
                (
                    Some("cups".to_owned()),
                    local("99LAB"),
                    Some("C".to_owned())
                )
            );
            assert_eq!(
                parts("U12^mg/dL^99LAB"),
                (
                    Some("mg/dL".to_owned()),
                    local("99LAB"),
                    Some("U12".to_owned())
                )
            );
            assert_eq!(
                parts("mg/dL^^L"),
                (
                    Some("mg/dL".to_owned()),
                    local("L"),
                    Some("mg/dL".to_owned())
                )
            );
        });
    }

    #[test]
    fn reference_ranges_parse_bounds_and_keep_text() {
        let u = Quantity::default();
        let rr = |s| {
            let r = reference_range(s, &u).expect("valued");
            (
                r.low.and_then(|q| q.value).map(|d| d.as_str().to_owned()),
                r.high.and_then(|q| q.value).map(|d| d.as_str().to_owned()),
                r.text,
            )
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(rr("3.5-5.0"), (s("3.5"), s("5.0"), s("3.5-5.0")));
        assert_eq!(rr("3.5 - 5.0"), (s("3.5"), s("5.0"), s("3.5 - 5.0")));
        assert_eq!(rr("-1.0-2.0"), (s("-1.0"), s("2.0"), s("-1.0-2.0")));
        assert_eq!(rr("-5--1"), (s("-5"), s("-1"), s("-5--1")));
        assert_eq!(rr(">=3.5"), (s("3.5"), None, s(">=3.5")));
        assert_eq!(rr("<10"), (None, s("10"), s("<10")));
        assert_eq!(rr("3.5^5.0"), (s("3.5"), s("5.0"), s("3.5^5.0")));
        assert_eq!(rr("negative"), (None, None, s("negative")));
        assert!(reference_range("", &u).is_none());
    }

    #[test]
    fn xtn_prefers_email_for_internet_and_builds_phone_numbers() {
        let c =
            contact_point(field("^PRN^PH^^1^555^1234567").repetition(1), "home").expect("valued");
        assert_eq!(c.value.as_deref(), Some("(555) 1234567"));
        assert_eq!(c.system.as_deref(), Some("phone"));
        let c = contact_point(field("^NET^Internet^a@b.example").repetition(1), "home")
            .expect("valued");
        assert_eq!(
            (c.system.as_deref(), c.value.as_deref()),
            (Some("email"), Some("a@b.example"))
        );
        assert!(contact_point(field("").repetition(1), "home").is_none());
    }
}
