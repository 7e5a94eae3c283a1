//! Consent from the platform: a tenant with `consent_pull = "5m"` in `[tenant.upstream]` reads
//! the platform's FHIR R4 Consent resources every interval and records what they say in the
//! consent registry ([`crate::consent`]), as an operator's `POST /consent/{tenant}` would: a
//! withdrawal holds the patient's later messages, a consent (or reinstatement) releases the held
//! ones in order.
//!
//! - One search per pull, `GET <base>/Consent?_count=100`, following `next` links that stay
//!   under the base URL (at most [`MAX_PAGES`] pages, each at most [`MAX_PAGE_BYTES`]), with the
//!   tenant's client: its TLS, credentials and OAuth2 token.
//! - [`crate::consent::from_fhir`] says what each Consent means; a patient named only by a
//!   literal reference, or a Consent in draft, is skipped and counted.
//! - Several Consents of one patient: the most recently updated wins.
//! - Only changes are applied (the registry's status differs), so a pull that finds nothing new
//!   writes nothing.
//! - A failed pull (network, HTTP status, not a Bundle) is logged with its class and retried at
//!   the next interval; the registry keeps what it had. Log lines carry counts and keyed hashes,
//!   never an identifier.

use std::sync::Arc;
use std::time::Duration;

use crate::consent::{FhirConsent, Registry, Status};
use crate::forward::client::Upstream;
use crate::queue::Queue;
use crate::shutdown::Shutdown;

/// Pages read per pull at most.
pub const MAX_PAGES: usize = 100;
/// Bytes per page at most.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// What one pull did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Consent resources read.
    pub read: usize,
    /// Not a decision caregate can apply (no patient identifier, draft, ...).
    pub skipped: usize,
    /// Registry entries changed.
    pub changed: usize,
    /// Held messages released.
    pub released: usize,
}

/// One page of the Consent search.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    /// Entries on the page.
    pub read: usize,
    /// The Consents among them that say something caregate applies.
    pub consents: Vec<FhirConsent>,
    /// The `next` link, if any (the client checks it stays under the base URL).
    pub next: Option<String>,
}

/// Reads one page of the search: any JSON the upstream sends, `Err` when it is not a Bundle.
pub fn read_page(bundle: &serde_json::Value) -> Result<Page, String> {
    if bundle["resourceType"] != "Bundle" {
        return Err("the Consent search did not answer a Bundle".into());
    }
    let mut page = Page::default();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        page.read += 1;
        page.consents
            .extend(crate::consent::from_fhir(&e["resource"]));
    }
    page.next = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned);
    Ok(page)
}

/// The latest Consent of each patient wins, by `meta.lastUpdated` as an instant (servers write
/// `Z` or any offset, so text order is not time order); one without a readable time counts as
/// the oldest, and equal times keep the server's order.
pub fn latest(mut found: Vec<FhirConsent>) -> std::collections::HashMap<(String, String), Status> {
    found.sort_by_key(|c| c.updated.parse::<jiff::Timestamp>().ok());
    found
        .into_iter()
        .map(|c| ((c.system, c.value), c.status))
        .collect()
}

/// The pull loop of one tenant.
pub struct Puller {
    /// The tenant's upstream client.
    pub upstream: Arc<Upstream>,
    /// The registry.
    pub registry: Arc<Registry>,
    /// The queue (held messages).
    pub queue: Queue,
    /// Audit trail (`consent-released`).
    pub audit: crate::audit::Recorder,
    /// How often.
    pub interval: Duration,
}

impl Puller {
    /// Pulls at once, then every interval, until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let tenant = self.upstream.tenant().to_owned();
        loop {
            match self.pull_once().await {
                Ok(p) => {
                    tracing::info!(tenant = %tenant, read = p.read, skipped = p.skipped,
                        changed = p.changed, released = p.released, "consent pulled from the upstream");
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "consent pull failed; the registry keeps what it had");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pull: reads every Consent, applies the changes.
    pub async fn pull_once(&self) -> Result<Pulled, String> {
        let mut out = Pulled::default();
        let mut found: Vec<FhirConsent> = Vec::new();
        let mut next = Some("Consent?_count=100".to_owned());
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(format!("more than {MAX_PAGES} pages of Consent resources"));
            }
            let bundle = self.upstream.get_json(&path, MAX_PAGE_BYTES).await?;
            let page = read_page(&bundle)?;
            out.read += page.read;
            out.skipped += page.read - page.consents.len();
            found.extend(page.consents);
            next = page.next;
        }
        let tenant = self.upstream.tenant().to_owned();
        for ((system, value), status) in latest(found) {
            if self.registry.status_of(&tenant, &system, &value) == Some(status) {
                continue;
            }
            let identifier = format!("{system}|{value}");
            let registry = self.registry.clone();
            let t = tenant.clone();
            let patient_ref =
                tokio::task::spawn_blocking(move || registry.set(&t, &system, &value, status))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            out.changed += 1;
            self.audit.record(
                status.audit_action(),
                crate::audit::ActorKind::System,
                crate::audit::Purpose::Operations,
                crate::audit::Event {
                    tenant: Some(&tenant),
                    actor: "consent-pull",
                    patient: Some(&identifier),
                    ..crate::audit::Event::default()
                },
            );
            tracing::info!(tenant = %tenant, patient_ref = %patient_ref, status = ?status,
                "consent recorded from the upstream");
            if status == Status::Active {
                let released = crate::pipeline::release_patient(
                    &self.queue,
                    &self.audit,
                    &tenant,
                    &patient_ref,
                    "consent-pull",
                )
                .await
                .map_err(|e| e.to_string())?;
                out.released += released.len();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consent(value: &str, status: &str, updated: &str) -> serde_json::Value {
        json!({"resourceType": "Consent", "status": status, "meta": {"lastUpdated": updated},
            "patient": {"identifier": {"system": "urn:oid:1.2.3", "value": value}}})
    }

    #[test]
    fn a_page_counts_its_entries_and_finds_the_next_link() {
        let page = read_page(&json!({"resourceType": "Bundle", "type": "searchset",
            "link": [{"relation": "self", "url": "https://up/Consent"},
                     {"relation": "next", "url": "https://up/Consent?page=2"}],
            "entry": [{"resource": consent("A", "active", "2026-11-24T05:00:00Z")},
                      {"resource": {"resourceType": "Consent", "status": "draft"}},
                      {"resource": consent("B", "inactive", "2026-11-24T05:00:00Z")},
                      "not an object"]}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.read, 4);
        assert_eq!(page.consents.len(), 2);
        assert_eq!(page.consents[1].status, Status::Withdrawn);
        assert_eq!(page.next.as_deref(), Some("https://up/Consent?page=2"));
        for not_a_bundle in [
            json!({"resourceType": "OperationOutcome"}),
            json!([]),
            json!(7),
        ] {
            assert!(read_page(&not_a_bundle).is_err(), "{not_a_bundle}");
        }
        let empty = read_page(&json!({"resourceType": "Bundle"})).unwrap_or_default();
        assert_eq!((empty.read, empty.next), (0, None));
    }

    #[test]
    fn the_latest_consent_wins_by_instant_not_by_text() {
        let c =
            |v: &serde_json::Value| crate::consent::from_fhir(v).unwrap_or_else(|| unreachable!());
        // 06:00+02:00 is 04:00Z: earlier than 05:00Z although it sorts later as text.
        let found = vec![
            c(&consent("A", "inactive", "2026-11-24T05:00:00Z")),
            c(&consent("A", "active", "2026-11-24T06:00:00+02:00")),
            c(&consent("B", "active", "2026-11-24T05:00:00.5Z")),
            c(&consent("B", "inactive", "2026-11-24T05:00:00.25Z")),
            c(&consent("C", "inactive", "not a time")),
            c(&consent("C", "active", "2020-01-01T00:00:00Z")),
        ];
        let latest = latest(found);
        let of = |v: &str| {
            latest
                .get(&("urn:oid:1.2.3".to_owned(), v.to_owned()))
                .copied()
        };
        assert_eq!(of("A"), Some(Status::Withdrawn));
        assert_eq!(of("B"), Some(Status::Active));
        assert_eq!(
            of("C"),
            Some(Status::Active),
            "an unreadable time counts as the oldest"
        );
    }
}
