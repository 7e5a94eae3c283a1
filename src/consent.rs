//! Patient consent: which patients' messages may be forwarded, per tenant.
//!
//! # Policy (`consent = ...` per tenant)
//!
//! - `assumed` (default): everything is forwarded except messages about a patient whose consent
//!   is recorded as `withdrawn`.
//! - `required`: only messages about a patient with a consent on file (`active`) are
//!   forwarded; everyone else is held until one is recorded.
//!
//! A message that names no patient (a device reading of an unbound device, an ASTM message
//! without a P record id) is not about a patient: it is forwarded under both policies.
//!
//! Held messages are stored and were acknowledged; the pipeline parks them as
//! [`crate::queue::Parked::Held`] (audit `consent-held`). Recording `active` for the patient
//! (`POST /consent/{tenant}`, `caregate consent set`) releases them in their original order
//! (unparked into the ready index, which orders by id: audit `consent-released`). An operator
//! can purge a held message like a dead letter.
//!
//! # Storage
//!
//! `consent.json` in the data directory, beside the queue: rewritten whole on every change
//! (write a temporary file, fsync it, rename over, fsync the directory), so a crash leaves the
//! old or the new registry, never a torn one. Not a redb table in the queue database: changes are
//! rare operator actions and the registry is small, while the queue's one writer thread does
//! group commits for the data path; a second writer would queue behind (and hold up) message
//! commits, and a file keeps the queue's format unchanged.
//!
//! No identifier is stored in clear: a patient is the hex HMAC-SHA256 of
//! `tenant ␟ system|value` (the identifier in the FHIR search form the converter emits, so a
//! message matches exactly when its Patient identifier does) under a random 256-bit key made at
//! first start (`consent.key`, mode 0600). Its own key, not the audit trail's: audit keys can
//! rotate, consent matching must not change with them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

impl Status {
    /// The audit action that records this status.
    pub fn audit_action(self) -> crate::audit::Action {
        match self {
            Status::Active => crate::audit::Action::ConsentGranted,
            Status::Withdrawn => crate::audit::Action::ConsentWithdrawn,
        }
    }
}

/// A tenant's consent policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Forward unless withdrawn.
    #[default]
    Assumed,
    /// Forward only with a consent on file.
    Required,
}

/// A patient's recorded consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Consent on file (or reinstated).
    Active,
    /// Consent withdrawn: messages are held.
    Withdrawn,
}

/// One registry entry, as listed (hash only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Entry {
    /// Keyed hash of the identifier.
    pub patient_ref: String,
    /// Status.
    pub status: Status,
    /// When it was recorded (RFC 3339).
    pub updated: String,
}

/// What the pipeline does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Forward,
    /// Hold it; the patient's keyed hash and why (`withdrawn` or `no-consent`).
    Hold {
        /// Keyed hash of the patient.
        patient_ref: String,
        /// `withdrawn` or `no-consent`.
        why: &'static str,
    },
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the registry or its key failed.
    #[error("consent registry {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry file is not what this version writes.
    #[error("consent registry {path} is corrupt: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct File {
    version: u32,
    /// tenant → patient hash → entry.
    tenants: BTreeMap<String, BTreeMap<String, Stored>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Stored {
    status: Status,
    updated: String,
}

/// The durable registry (all tenants); cheap to share behind an `Arc`.
pub struct Registry {
    path: PathBuf,
    key: aws_lc_rs::hmac::Key,
    state: Mutex<File>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

impl Registry {
    /// Opens (or creates) `consent.json` and `consent.key` in `dir`.
    pub fn open(dir: &Path) -> Result<Registry, Error> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join("consent.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => {
                return Err(Error::Corrupt {
                    path: key_path,
                    reason: "the key is not 32 bytes".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                aws_lc_rs::rand::fill(&mut k).map_err(|_| Error::Corrupt {
                    path: key_path.clone(),
                    reason: "no randomness for a new key".into(),
                })?;
                write_durably(&key_path, &k)?;
                k
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let path = dir.join("consent.json");
        let file = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<File>(&b).map_err(|e| Error::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File {
                version: 1,
                tenants: BTreeMap::new(),
            },
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Registry {
            path,
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            state: Mutex::new(file),
        })
    }

    /// The keyed hash of a patient identifier in the converter's form (`system|value`, search
    /// escaped: what [`crate::convert::id::identifier_query`] gives after `identifier=`).
    pub fn patient_ref(&self, tenant: &str, patient: &str) -> String {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        ctx.update(tenant.as_bytes());
        ctx.update(b"\x1f");
        ctx.update(patient.as_bytes());
        let tag = ctx.sign();
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The hash of a `system` and `value` as an operator gives them.
    pub fn patient_ref_of(&self, tenant: &str, system: &str, value: &str) -> String {
        let q = crate::convert::id::identifier_query(system, value);
        self.patient_ref(tenant, q.strip_prefix("identifier=").unwrap_or(q.as_str()))
    }

    /// What to do with a message about `patient` (the converter's `system|value`).
    pub fn decide(&self, tenant: &str, policy: Policy, patient: Option<&str>) -> Decision {
        let Some(patient) = patient else {
            return Decision::Forward;
        };
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tenant_map = state.tenants.get(tenant);
        if tenant_map.is_none_or(BTreeMap::is_empty) && policy == Policy::Assumed {
            return Decision::Forward;
        }
        let patient_ref = self.patient_ref(tenant, patient);
        let status = tenant_map
            .and_then(|m| m.get(&patient_ref))
            .map(|s| s.status);
        match (policy, status) {
            (_, Some(Status::Withdrawn)) => Decision::Hold {
                patient_ref,
                why: "withdrawn",
            },
            (Policy::Required, None) => Decision::Hold {
                patient_ref,
                why: "no-consent",
            },
            _ => Decision::Forward,
        }
    }

    /// Records a status (durably, before returning); returns the patient's hash.
    pub fn set(
        &self,
        tenant: &str,
        system: &str,
        value: &str,
        status: Status,
    ) -> Result<String, Error> {
        let patient_ref = self.patient_ref_of(tenant, system, value);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let previous = state.tenants.entry(tenant.to_owned()).or_default().insert(
            patient_ref.clone(),
            Stored {
                status,
                updated: jiff::Timestamp::now().to_string(),
            },
        );
        let bytes = serde_json::to_vec_pretty(&*state).unwrap_or_default();
        if let Err(e) = write_durably(&self.path, &bytes) {
            // Not recorded: undo in memory too, so memory and disk agree.
            let m = state.tenants.entry(tenant.to_owned()).or_default();
            match previous {
                Some(p) => m.insert(patient_ref, p),
                None => m.remove(&patient_ref),
            };
            return Err(e);
        }
        Ok(patient_ref)
    }

    /// The recorded status of a patient, if any.
    pub fn status_of(&self, tenant: &str, system: &str, value: &str) -> Option<Status> {
        let patient_ref = self.patient_ref_of(tenant, system, value);
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .tenants
            .get(tenant)
            .and_then(|m| m.get(&patient_ref))
            .map(|s| s.status)
    }

    /// A tenant's entries (hashes only), in hash order.
    pub fn list(&self, tenant: &str) -> Vec<Entry> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .tenants
            .get(tenant)
            .map(|m| {
                m.iter()
                    .map(|(k, s)| Entry {
                        patient_ref: k.clone(),
                        status: s.status,
                        updated: s.updated.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Temporary file, fsync, rename over `path`, fsync the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdraw_reinstate_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let x = "https://h/mrn|X1";
        assert_eq!(r.decide("t", Policy::Assumed, Some(x)), Decision::Forward);
        let h = r
            .set("t", "https://h/mrn", "X1", Status::Withdrawn)
            .unwrap();
        assert_eq!(h, r.patient_ref("t", x));
        assert!(matches!(
            r.decide("t", Policy::Assumed, Some(x)),
            Decision::Hold {
                why: "withdrawn",
                ..
            }
        ));
        assert_eq!(
            r.decide("t", Policy::Assumed, Some("https://h/mrn|Y")),
            Decision::Forward
        );
        assert_eq!(
            r.decide("other", Policy::Assumed, Some(x)),
            Decision::Forward
        );
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        assert!(matches!(
            r.decide("t", Policy::Assumed, Some(x)),
            Decision::Hold { .. }
        ));
        r.set("t", "https://h/mrn", "X1", Status::Active).unwrap();
        assert_eq!(r.decide("t", Policy::Assumed, Some(x)), Decision::Forward);
        let text = std::fs::read_to_string(dir.path().join("consent.json")).unwrap();
        assert!(
            !text.contains("X1") && !text.contains("https://h/mrn"),
            "{text}"
        );
    }

    #[test]
    fn required_holds_everyone_without_a_consent_on_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let x = "https://h/mrn|X1";
        assert!(matches!(
            r.decide("t", Policy::Required, Some(x)),
            Decision::Hold {
                why: "no-consent",
                ..
            }
        ));
        assert_eq!(r.decide("t", Policy::Required, None), Decision::Forward);
        r.set("t", "https://h/mrn", "X1", Status::Active).unwrap();
        assert_eq!(r.decide("t", Policy::Required, Some(x)), Decision::Forward);
    }

    #[test]
    fn operator_identifiers_hash_like_the_converters() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        // The converter escapes `|` inside a value and percent-encodes spaces.
        assert_eq!(
            r.patient_ref_of("t", "urn:x", "A|B C"),
            r.patient_ref("t", "urn:x|A%5C%7CB%20C")
        );
        assert_ne!(
            r.patient_ref_of("t", "urn:x", "A"),
            r.patient_ref_of("u", "urn:x", "A")
        );
    }
}

/// What a FHIR R4 Consent resource says about a patient, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirConsent {
    /// `Consent.patient.identifier.system`.
    pub system: String,
    /// `Consent.patient.identifier.value`.
    pub value: String,
    /// The status it means here.
    pub status: Status,
    /// `meta.lastUpdated` (RFC 3339; the latest Consent of a patient wins).
    pub updated: String,
}

/// Reads a Consent resource:
/// - `status = active` with `provision.type = deny` → withdrawn; `active` otherwise (permit, or
///   no provision) → active;
/// - `inactive` or `rejected` (consent no longer given, or refused) → withdrawn;
/// - `draft`, `proposed`, `entered-in-error` and anything else → not a decision (`None`).
///
/// The patient must be named by identifier (`patient.identifier`, a logical reference): the
/// registry matches identifiers, and a literal `Patient/123` reference names a resource on the
/// platform that caregate cannot map back to the identifiers in HL7 messages (`None`).
pub fn from_fhir(resource: &serde_json::Value) -> Option<FhirConsent> {
    if resource["resourceType"] != "Consent" {
        return None;
    }
    let identifier = &resource["patient"]["identifier"];
    let system = identifier["system"].as_str()?.trim();
    let value = identifier["value"].as_str()?.trim();
    if system.is_empty() || value.is_empty() {
        return None;
    }
    let status = match resource["status"].as_str()? {
        "active" if resource["provision"]["type"] == "deny" => Status::Withdrawn,
        "active" => Status::Active,
        "inactive" | "rejected" => Status::Withdrawn,
        _ => return None,
    };
    Some(FhirConsent {
        system: system.to_owned(),
        value: value.to_owned(),
        status,
        updated: resource["meta"]["lastUpdated"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    })
}

#[cfg(test)]
mod fhir_tests {
    use super::*;
    use serde_json::json;

    fn consent(status: &str, provision: Option<&str>) -> serde_json::Value {
        let mut c = json!({"resourceType": "Consent", "status": status,
            "meta": {"lastUpdated": "2026-11-24T05:00:00Z"},
            "patient": {"identifier": {"system": "urn:oid:1.2.3", "value": "MRN-1"}}});
        if let Some(p) = provision {
            c["provision"] = json!({"type": p});
        }
        c
    }

    #[test]
    fn consent_status_and_provision_map_to_the_registry() {
        let status = |s, p| from_fhir(&consent(s, p)).map(|c| c.status);
        assert_eq!(status("active", None), Some(Status::Active));
        assert_eq!(status("active", Some("permit")), Some(Status::Active));
        assert_eq!(status("active", Some("deny")), Some(Status::Withdrawn));
        assert_eq!(status("inactive", None), Some(Status::Withdrawn));
        assert_eq!(status("rejected", Some("permit")), Some(Status::Withdrawn));
        for s in ["draft", "proposed", "entered-in-error", "bogus"] {
            assert_eq!(status(s, None), None, "{s}");
        }
        let c = from_fhir(&consent("active", None)).unwrap_or_else(|| unreachable!());
        assert_eq!(
            (c.system.as_str(), c.value.as_str()),
            ("urn:oid:1.2.3", "MRN-1")
        );
        assert_eq!(c.updated, "2026-11-24T05:00:00Z");
    }

    #[test]
    fn a_consent_without_a_patient_identifier_or_of_another_type_is_not_read() {
        let mut literal = consent("active", None);
        literal["patient"] = json!({"reference": "Patient/123"});
        assert_eq!(from_fhir(&literal), None);
        let mut other = consent("active", None);
        other["resourceType"] = json!("Patient");
        assert_eq!(from_fhir(&other), None);
        assert_eq!(from_fhir(&json!(null)), None);
    }
}
