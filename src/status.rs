//! What `/status` and `caregate status` show: per source and per tenant, what was received,
//! what is queued, forwarded and dead-lettered, the oldest queued age, and each upstream's
//! state and last error.
//!
//! The [`Board`] is the shared, in-memory half (upstream states and forwarding counters since
//! start); the queue gives the durable half (what is stored now). Errors on the board are
//! written by the pipeline from status codes and transport errors only: never a response body,
//! so never patient data.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::forward::breaker;

/// One tenant's upstream as last seen by its pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Upstream {
    /// Base URL (no credentials).
    pub endpoint: String,
    /// `ok`, `failing`, `open`, `half-open`, or `idle` before the first request.
    pub state: String,
    /// Circuit breaker state.
    pub breaker: Option<breaker::State>,
    /// When the current failure streak began (RFC 3339).
    pub failing_since: Option<String>,
    /// The last failure: status code or transport error class (no bodies).
    pub last_error: Option<String>,
    /// When that failure happened.
    pub last_error_at: Option<String>,
    /// Last successful delivery.
    pub last_success_at: Option<String>,
    /// Whether an outage alert is active.
    pub alert_active: bool,
}

/// Counters since start, per (tenant, source).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Flow {
    /// Messages delivered upstream.
    pub forwarded: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
    /// Messages replayed by an operator.
    pub replayed: u64,
}

/// The shared board.
#[derive(Debug, Default)]
pub struct Board {
    upstreams: Mutex<BTreeMap<String, Upstream>>,
    flows: Mutex<BTreeMap<(String, String), Flow>>,
}

impl Board {
    /// Updates a tenant's upstream entry.
    pub fn upstream(&self, tenant: &str, f: impl FnOnce(&mut Upstream)) {
        let mut m = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(tenant.to_owned()).or_default());
    }

    /// Updates a source's counters.
    pub fn flow(&self, tenant: &str, source: &str, f: impl FnOnce(&mut Flow)) {
        let mut m = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry((tenant.to_owned(), source.to_owned())).or_default());
    }

    /// A copy of a tenant's upstream entry.
    pub fn upstream_of(&self, tenant: &str) -> Option<Upstream> {
        let m = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        m.get(tenant).cloned()
    }

    /// A copy of a source's counters.
    pub fn flow_of(&self, tenant: &str, source: &str) -> Flow {
        let m = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(tenant.to_owned(), source.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

/// The `/status` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// caregate version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Per tenant.
    pub tenants: Vec<TenantStatus>,
    /// Per source.
    pub sources: Vec<SourceStatus>,
}

/// One tenant.
#[derive(Debug, Serialize, Deserialize)]
pub struct TenantStatus {
    /// Tenant id.
    pub tenant: String,
    /// Stored and not yet delivered (ready + in flight + parked).
    pub queued: u64,
    /// Ready to forward.
    pub ready: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Held (consent).
    pub held: u64,
    /// Oldest stored message, seconds.
    pub oldest_queued_age_seconds: Option<u64>,
    /// Delivered since start.
    pub forwarded: u64,
    /// Dead-lettered since start.
    pub dead_lettered: u64,
    /// The upstream (`None`: no upstream configured; messages are stored only).
    pub upstream: Option<Upstream>,
}

/// One source.
#[derive(Debug, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Source name.
    pub source: String,
    /// Its tenant.
    pub tenant: String,
    /// `mllp`, ...
    pub kind: String,
    /// Messages received since start.
    pub received: u64,
    /// Stored and not yet delivered.
    pub queued: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Malformed messages kept for inspection.
    pub rejected: u64,
    /// Oldest stored message, seconds.
    pub oldest_queued_age_seconds: Option<u64>,
    /// Delivered since start.
    pub forwarded: u64,
    /// Dead-lettered since start.
    pub dead_lettered: u64,
    /// Connections open now (MLLP).
    #[serde(default)]
    pub open_connections: u64,
    /// When the last message arrived (RFC 3339, second precision; `None` before the first
    /// since start).
    #[serde(default)]
    pub last_received_at: Option<String>,
}

impl std::fmt::Display for Status {
    /// What `caregate status` prints: one line per tenant and per source, the columns of the
    /// status page.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = |a: Option<u64>| a.map_or("-".to_owned(), |s| format!("{s}s"));
        writeln!(f, "caregate {} up {}s", self.version, self.uptime_seconds)?;
        writeln!(
            f,
            "{:<14} {:<10} {:>8} {:>9} {:>6} {:>6} {:>7} {:<5}  LAST ERROR (SINCE)",
            "TENANT", "UPSTREAM", "QUEUED", "FORWARDED", "DEAD", "HELD", "OLDEST", "ALERT"
        )?;
        for t in &self.tenants {
            let (state, err, alert) = match &t.upstream {
                None => ("none".to_owned(), String::new(), "-"),
                Some(u) => {
                    let mut err = u.last_error.clone().unwrap_or_default();
                    if let Some(since) = &u.failing_since {
                        err.push_str(&format!(" (failing since {since})"));
                    }
                    (
                        u.state.clone(),
                        err,
                        if u.alert_active { "yes" } else { "no" },
                    )
                }
            };
            writeln!(
                f,
                "{:<14} {:<10} {:>8} {:>9} {:>6} {:>6} {:>7} {:<5}  {}",
                t.tenant,
                state,
                t.queued,
                t.forwarded,
                t.dead_letters,
                t.held,
                age(t.oldest_queued_age_seconds),
                alert,
                err.trim()
            )?;
        }
        writeln!(
            f,
            "{:<16} {:<10} {:<14} {:>5} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7}  LAST MESSAGE",
            "SOURCE",
            "KIND",
            "TENANT",
            "CONN",
            "RECEIVED",
            "QUEUED",
            "FORWARDED",
            "DEAD",
            "REJECTED",
            "OLDEST"
        )?;
        for s in &self.sources {
            writeln!(
                f,
                "{:<16} {:<10} {:<14} {:>5} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7}  {}",
                s.source,
                s.kind,
                s.tenant,
                s.open_connections,
                s.received,
                s.queued,
                s.forwarded,
                s.dead_letters,
                s.rejected,
                age(s.oldest_queued_age_seconds),
                s.last_received_at.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_text_form_shows_held_alerts_failing_since_kind_connections_and_last_message() {
        let doc = serde_json::json!({
            "version": "0.1.0", "uptime_seconds": 7,
            "tenants": [{"tenant": "north", "queued": 12, "ready": 9, "dead_letters": 1, "held": 2,
                "oldest_queued_age_seconds": 40, "forwarded": 30, "dead_lettered": 1,
                "upstream": {"endpoint": "https://cloud.example/fhir", "state": "open",
                    "failing_since": "2026-11-24T05:00:00Z", "last_error": "HTTP 503",
                    "alert_active": true}}],
            "sources": [{"source": "lab", "tenant": "north", "kind": "mllp", "received": 43,
                "queued": 12, "dead_letters": 1, "rejected": 3, "oldest_queued_age_seconds": 40,
                "forwarded": 30, "dead_lettered": 1, "open_connections": 2,
                "last_received_at": "2026-11-24T05:01:02Z"}]
        });
        let status: Status = serde_json::from_value(doc).unwrap();
        let text = status.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let tenant: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &tenant[..8],
            ["north", "open", "12", "30", "1", "2", "40s", "yes"],
            "{text}"
        );
        assert!(
            lines[2].ends_with("HTTP 503 (failing since 2026-11-24T05:00:00Z)"),
            "{text}"
        );
        let source: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            source,
            [
                "lab",
                "mllp",
                "north",
                "2",
                "43",
                "12",
                "30",
                "1",
                "3",
                "40s",
                "2026-11-24T05:01:02Z"
            ],
            "{text}"
        );
    }
}
