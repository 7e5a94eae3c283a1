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
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = |a: Option<u64>| a.map_or("-".to_owned(), |s| format!("{s}s"));
        writeln!(f, "caregate {} up {}s", self.version, self.uptime_seconds)?;
        writeln!(
            f,
            "{:<14} {:<10} {:>8} {:>9} {:>6} {:>7}  LAST ERROR",
            "TENANT", "UPSTREAM", "QUEUED", "FORWARDED", "DEAD", "OLDEST"
        )?;
        for t in &self.tenants {
            let (state, err) = match &t.upstream {
                None => ("none".to_owned(), String::new()),
                Some(u) => (u.state.clone(), u.last_error.clone().unwrap_or_default()),
            };
            writeln!(
                f,
                "{:<14} {:<10} {:>8} {:>9} {:>6} {:>7}  {}",
                t.tenant,
                state,
                t.queued,
                t.forwarded,
                t.dead_letters,
                age(t.oldest_queued_age_seconds),
                err
            )?;
        }
        writeln!(
            f,
            "{:<16} {:<14} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7}",
            "SOURCE", "TENANT", "RECEIVED", "QUEUED", "FORWARDED", "DEAD", "REJECTED", "OLDEST"
        )?;
        for s in &self.sources {
            writeln!(
                f,
                "{:<16} {:<14} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7}",
                s.source,
                s.tenant,
                s.received,
                s.queued,
                s.forwarded,
                s.dead_letters,
                s.rejected,
                age(s.oldest_queued_age_seconds)
            )?;
        }
        Ok(())
    }
}
