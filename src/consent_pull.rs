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
            if bundle["resourceType"] != "Bundle" {
                return Err("the Consent search did not answer a Bundle".into());
            }
            for e in bundle["entry"].as_array().into_iter().flatten() {
                out.read += 1;
                match crate::consent::from_fhir(&e["resource"]) {
                    Some(c) => found.push(c),
                    None => out.skipped += 1,
                }
            }
            next = bundle["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned);
        }
        // The latest Consent of each patient wins (RFC 3339 in UTC sorts as text; a stable
        // sort keeps the server's order for equal times).
        found.sort_by(|a, b| a.updated.cmp(&b.updated));
        let mut latest: std::collections::HashMap<(String, String), Status> =
            std::collections::HashMap::new();
        for c in found {
            latest.insert((c.system, c.value), c.status);
        }
        let tenant = self.upstream.tenant().to_owned();
        for ((system, value), status) in latest {
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
