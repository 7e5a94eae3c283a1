//! Transaction Bundle (FHIR R4 `Bundle`, type `transaction`) and its entries.
//!
//! Idempotency (protocols.md §6.2) is decided by how each entry is requested:
//! - resources whose identity comes from the message (Observation, DiagnosticReport, Specimen)
//!   carry a client-assigned `id` and are sent as `PUT Type/<id>`: a replay overwrites the same
//!   resource with the same content;
//! - resources identified by a business identifier (Patient, Encounter, Device) are sent as a
//!   conditional create (`POST` + `ifNoneExist`, the query part only, §6.1) or a conditional
//!   update (`PUT Type?identifier=system|value`).
//!
//! Every entry's `fullUrl` is `urn:uuid:<uuid>` (derived from the message, never random), and
//! references between entries use it, so the server rewrites them to the ids it resolves.

use std::fmt;

use serde::Serialize;

use super::Resource;

/// Bundle.type (only the two kinds a gateway sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleType {
    /// All-or-nothing.
    Transaction,
    /// Independent entries.
    Batch,
}

/// HTTP verb of a Bundle entry request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// Create (conditional with `ifNoneExist`).
    Post,
    /// Update / update-as-create / conditional update.
    Put,
}

/// Bundle.entry.request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// POST | PUT.
    pub method: Method,
    /// `Type`, `Type/id` or `Type?query`.
    pub url: String,
    /// Conditional-create query (without `?`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_none_exist: Option<String>,
}

/// Bundle.entry.
#[derive(Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `urn:uuid:<uuid>`, unique in the Bundle.
    pub full_url: String,
    /// The resource.
    pub resource: Resource,
    /// How the server should apply it.
    pub request: Request,
}

impl Entry {
    /// `PUT Type/<id>` for a resource with a client-assigned id; `fullUrl` is `urn:uuid:<id>`.
    pub fn put_by_id(id: &str, resource: Resource) -> Entry {
        let url = [resource.type_name(), "/", id].concat();
        Entry {
            full_url: urn_uuid(id),
            resource,
            request: Request {
                method: Method::Put,
                url,
                if_none_exist: None,
            },
        }
    }

    /// `POST Type` with `ifNoneExist: <query>` (conditional create).
    pub fn create_if_none_exist(uuid: &str, resource: Resource, query: String) -> Entry {
        Entry {
            full_url: urn_uuid(uuid),
            request: Request {
                method: Method::Post,
                url: resource.type_name().to_owned(),
                if_none_exist: Some(query),
            },
            resource,
        }
    }

    /// `PUT Type?<query>` (conditional update: create when absent, update when one matches).
    pub fn conditional_update(uuid: &str, resource: Resource, query: &str) -> Entry {
        Entry {
            full_url: urn_uuid(uuid),
            request: Request {
                method: Method::Put,
                url: format!("{}?{query}", resource.type_name()),
                if_none_exist: None,
            },
            resource,
        }
    }
}

/// `urn:uuid:<uuid>` (`concat` sizes the String once; `format!` is several times slower).
fn urn_uuid(uuid: &str) -> String {
    ["urn:uuid:", uuid].concat()
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The request URL of a conditional entry holds an identifier value (e.g. an MRN).
        write!(f, "{:?} {:?}", self.request.method, self.resource)
    }
}

/// Bundle (R4), always `transaction` when built by the converter.
#[derive(Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "resourceType", rename = "Bundle")]
pub struct Bundle {
    /// transaction | batch.
    #[serde(rename = "type")]
    pub type_: BundleType,
    /// Entries in message order (servers apply them in their own order, §6.1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<Entry>,
}

impl Bundle {
    /// An empty transaction.
    pub fn transaction() -> Bundle {
        Bundle {
            type_: BundleType::Transaction,
            entry: Vec::new(),
        }
    }

    /// Serializes to compact JSON (deterministic: same Bundle, same bytes).
    pub fn to_json(&self) -> String {
        // Serialization of these types cannot fail: no maps with non-string keys, no
        // fallible Serialize impls (Decimal falls back to a string).
        // Sized for the usual entry (about 1 KB) so the buffer is not regrown a dozen times.
        let mut out = Vec::with_capacity(256 + self.entry.len() * 1280);
        match serde_json::to_writer(&mut out, self) {
            // serde_json writes UTF-8 only.
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Counts entries of a resource type.
    pub fn count(&self, type_name: &str) -> usize {
        self.entry
            .iter()
            .filter(|e| e.resource.type_name() == type_name)
            .count()
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entry).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{CodeableConcept, Observation};

    #[test]
    fn bundle_writes_resource_type_first_and_entries_with_requests() {
        let mut b = Bundle::transaction();
        b.entry.push(Entry::put_by_id(
            "0f0e",
            Resource::Observation(Box::new(Observation {
                id: Some("0f0e".into()),
                status: "final".into(),
                code: CodeableConcept::text("x"),
                ..Observation::default()
            })),
        ));
        b.entry.push(Entry::create_if_none_exist(
            "aa",
            Resource::Patient(Box::default()),
            "identifier=s|v".into(),
        ));
        assert_eq!(
            b.to_json(),
            concat!(
                r#"{"resourceType":"Bundle","type":"transaction","entry":["#,
                r#"{"fullUrl":"urn:uuid:0f0e","resource":{"resourceType":"Observation","id":"0f0e","status":"final","code":{"text":"x"}},"request":{"method":"PUT","url":"Observation/0f0e"}},"#,
                r#"{"fullUrl":"urn:uuid:aa","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=s|v"}}"#,
                "]}"
            )
        );
    }

    #[test]
    fn conditional_update_puts_to_the_type_with_a_query() {
        let e = Entry::conditional_update("u", Resource::Patient(Box::default()), "identifier=a|b");
        assert_eq!(e.request.url, "Patient?identifier=a|b");
        assert_eq!(e.request.method, Method::Put);
        assert_eq!(format!("{e:?}"), "Put Patient/-");
    }
}
