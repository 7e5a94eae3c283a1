//! The one consumer of the queue: per tenant, lease → convert → forward → ack | retry |
//! dead-letter.
//!
//! # Invariants
//!
//! - **Order.** One worker per tenant, one request in flight per worker, and the queue leases a
//!   source's envelopes only in id order and never past an envelope still leased: a later
//!   message of a source never reaches the upstream before an earlier one, with two
//!   exceptions: a dead-lettered message is set aside so the rest can flow, and a critical
//!   result goes ahead of its tenant's backlog. Such a result is delivered once more at its
//!   arrival place when older messages of its source went after it (`queue`, "Critical lane"),
//!   so the server still ends as strict order would leave it.
//! - **At least once, no duplicates.** An envelope is acked (deleted) only after a 2xx for the
//!   request that carried it. A crash before the ack re-sends it; every entry is idempotent
//!   (client-assigned ids with PUT, conditional create/update by identifier), so the server
//!   ends in the same state.
//! - **Isolation.** Tenants have their own worker, upstream client (pool, TLS, credentials),
//!   breaker, backoff and alert state.
//! - **Batching.** Several messages share one transaction Bundle, bounded by the upstream's
//!   `batch_messages`, `batch_entries` and `batch_bytes`. Entries that several messages share
//!   (the same Patient, Encounter or Device, which have identity-derived fullUrls) are sent
//!   once, as the server would have ended up had the messages gone one by one: the last
//!   update wins over conditional creates.
//! - **A refused message never blocks its source.** A content refusal (4xx, see
//!   [`crate::forward::retry`]) of a batch splits it in halves until the message at fault is
//!   alone; that one is dead-lettered with the server's OperationOutcome, the others go on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::tz::TimeZone;

use crate::alert::{self, Alert, Alerter, Outage};
use crate::convert::{self, Context};
use crate::envelope::{Envelope, Kind, Lane};
use crate::fhir::bundle::Method;
use crate::forward::breaker::{self, Breaker};
use crate::forward::client::Upstream;
use crate::forward::retry::{self, Answer, Backoff, Disposition};
use crate::metrics::Metrics;
use crate::queue::{Parked, Queue};
use crate::shutdown::Shutdown;
use crate::status::Board;

/// What conversion needs from the configuration, per tenant.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// Tenant id.
    pub tenant: String,
    /// The tenant's zone.
    pub timezone: TimeZone,
    /// Per-source zone overrides.
    pub source_zones: HashMap<String, TimeZone>,
    /// Assigning authority → identifier system.
    pub identifier_systems: BTreeMap<String, String>,
    /// Base of caregate-minted systems.
    pub system_base: String,
    /// The tenant's consent policy.
    pub consent: crate::consent::Policy,
}

/// Everything a tenant's worker uses.
pub struct Worker {
    upstream: Arc<Upstream>,
    queue: Queue,
    metrics: Arc<Metrics>,
    board: Arc<Board>,
    alerter: Arc<Alerter>,
    conversion: Arc<Conversion>,
    shutdown: Shutdown,
    breaker: Breaker,
    backoff: Backoff,
    outage: Outage,
    heartbeat: Arc<std::sync::atomic::AtomicI64>,
    /// Acks (queue deletes, one fsync each) still committing: the next request goes out while
    /// they do. All are awaited before leases are released, so nothing is leased twice.
    acks: Vec<tokio::task::JoinHandle<()>>,
    audit: crate::audit::Recorder,
    consent: Arc<crate::consent::Registry>,
}

/// Seconds since the Unix epoch, for heartbeats.
pub fn epoch_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// One converted message, ready to be put in a request.
struct Prepared {
    id: u64,
    source: String,
    message_type: String,
    control_id: String,
    /// `system|value` of the Patient the message is about (hashed in the audit trail).
    patient: Option<String>,
    /// A critical result's second delivery at its arrival place ([`Lane::Resend`]).
    resend: bool,
    entries: Vec<PreparedEntry>,
    bytes: usize,
}

struct PreparedEntry {
    full_url: String,
    put: bool,
    json: Vec<u8>,
}

/// Why delivery stopped early.
#[derive(Debug)]
struct Stopped;

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// A correlation id for one request: unique per process run and request, no patient data.
fn correlation_id(tenant: &str) -> String {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let boot = *BOOT.get_or_init(retry::seed);
    let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
    format!("cg-{tenant}-{:08x}-{n:06x}", boot as u32)
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

/// What every tenant's worker shares with the rest of the daemon.
#[derive(Clone)]
pub struct Services {
    /// The queue.
    pub queue: Queue,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Status board.
    pub board: Arc<Board>,
    /// Alert delivery.
    pub alerter: Arc<Alerter>,
    /// Audit trail.
    pub audit: crate::audit::Recorder,
    /// Consent registry.
    pub consent: Arc<crate::consent::Registry>,
}

impl Worker {
    /// A worker for one tenant.
    pub fn new(
        upstream: Arc<Upstream>,
        services: Services,
        conversion: Arc<Conversion>,
        shutdown: Shutdown,
    ) -> Worker {
        let Services {
            queue,
            metrics,
            board,
            alerter,
            audit,
            consent,
        } = services;
        let c = upstream.config();
        let breaker = Breaker::new(c.breaker_failures, c.breaker_open_for, c.retry_max);
        let backoff = Backoff::new(c.retry_initial, c.retry_max, retry::seed());
        let outage = Outage::new(c.alert_after, c.alert_repeat);
        board.upstream(upstream.tenant(), |u| {
            u.endpoint = upstream.endpoint();
            u.state = "idle".into();
            u.breaker = Some(breaker::State::Closed);
        });
        Worker {
            upstream,
            queue,
            metrics,
            board,
            alerter,
            conversion,
            shutdown,
            breaker,
            backoff,
            outage,
            heartbeat: Arc::new(std::sync::atomic::AtomicI64::new(epoch_seconds())),
            acks: Vec::new(),
            audit,
            consent,
        }
    }

    /// Seconds-since-epoch of the worker's last sign of life (the watchdog reads it): it beats
    /// at least every second while waiting and after every request.
    pub fn heartbeat(&self) -> Arc<std::sync::atomic::AtomicI64> {
        self.heartbeat.clone()
    }

    fn beat(&self) {
        self.heartbeat.store(epoch_seconds(), Ordering::Relaxed);
    }

    fn tenant(&self) -> &str {
        self.upstream.tenant()
    }

    /// Runs until shutdown. Leased envelopes not delivered by then are released (they stay
    /// stored and go first after the restart).
    pub async fn run(mut self) {
        let mut readied = self.queue.readied();
        let tenant = self.tenant().to_owned();
        tracing::info!(tenant = %tenant, upstream = %self.upstream.endpoint(), "forwarding started");
        loop {
            self.beat();
            if self.shutdown.is_cancelled() {
                break;
            }
            // Mark the current state seen before leasing: a push committed after this point
            // wakes the wait below.
            readied.borrow_and_update();
            // Four requests' worth: each next one is converted while one is on the wire.
            let max = self.upstream.config().batch_messages * 4;
            let leased = match self.queue.lease(&tenant, max) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(tenant = %tenant, error = %e, "leasing from the queue failed");
                    if self.sleep(Duration::from_secs(1)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if leased.is_empty() {
                self.metrics
                    .oldest_ready_seconds
                    .get_or_create(&Metrics::tenant(&tenant))
                    .set(0);
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    _ = readied.changed() => {}
                    _ = shutdown.cancelled() => break,
                    // A replay or a release by another path also makes work; poll now and then
                    // (and beat for the watchdog).
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let oldest = leased.iter().map(|e| e.received_at_us).min().unwrap_or(0);
            let age = (jiff::Timestamp::now().as_microsecond() - oldest).max(0) / 1_000_000;
            self.metrics
                .oldest_ready_seconds
                .get_or_create(&Metrics::tenant(&tenant))
                .set(age);
            let ids: Vec<u64> = leased.iter().map(|e| e.id).collect();
            let outcome = self.process(leased).await;
            for ack in self.acks.drain(..) {
                let _ = ack.await;
            }
            // Whatever was not acked or parked goes back (on shutdown, or after an error).
            self.queue.release(&ids);
            if outcome.is_err() {
                break;
            }
        }
        tracing::info!(tenant = %tenant, "forwarding stopped");
    }

    /// Converts and delivers what was leased, a request's worth at a time; the next slice is
    /// converted (on a blocking thread) while the current one is on the wire.
    async fn process(&mut self, leased: Vec<Envelope>) -> Result<(), Stopped> {
        let per = self.upstream.config().batch_messages.max(1);
        let mut slices: std::collections::VecDeque<Vec<Envelope>> =
            std::collections::VecDeque::new();
        let mut rest = leased;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(per));
            slices.push_back(std::mem::replace(&mut rest, tail));
        }
        let mut next = slices.pop_front().map(|s| self.convert(s));
        while let Some(handle) = next.take() {
            let converted = handle.await.map_err(|_| Stopped)?;
            next = slices.pop_front().map(|s| self.convert(s));
            self.send_converted(converted).await?;
            // A critical result stored behind this lease goes next: the rest of the lease is
            // released (run() does it) and leased again after it.
            if next.is_some() && self.queue.critical_ready(self.tenant()) {
                tracing::debug!(tenant = %self.tenant(), "critical result waiting: lease cut short");
                break;
            }
        }
        Ok(())
    }

    fn convert(&self, slice: Vec<Envelope>) -> tokio::task::JoinHandle<Vec<Prepare>> {
        let conversion = self.conversion.clone();
        tokio::task::spawn_blocking(move || {
            slice
                .into_iter()
                .map(|e| prepare(&conversion, e))
                .collect::<Vec<_>>()
        })
    }

    async fn send_converted(&mut self, converted: Vec<Prepare>) -> Result<(), Stopped> {
        let mut ready = Vec::with_capacity(converted.len());
        for item in converted {
            match item {
                Ok((p, report)) => {
                    self.count_report(&report);
                    let decision = self.consent.decide(
                        self.tenant(),
                        self.conversion.consent,
                        p.patient.as_deref(),
                    );
                    match decision {
                        crate::consent::Decision::Forward => ready.push(p),
                        crate::consent::Decision::Hold { patient_ref, why } => {
                            self.hold(&p, &patient_ref, why).await?;
                        }
                    }
                }
                Err(failed) => self.conversion_failed(failed).await?,
            }
        }
        // Cut into requests within the upstream's bounds, in lease order.
        let c = self.upstream.config();
        let (max_entries, max_bytes) = (c.batch_entries, c.batch_bytes);
        let mut chunk: Vec<Prepared> = Vec::new();
        let (mut entries, mut bytes) = (0usize, 0usize);
        for p in ready {
            if !chunk.is_empty()
                && (entries + p.entries.len() > max_entries || bytes + p.bytes > max_bytes)
            {
                self.deliver(std::mem::take(&mut chunk)).await?;
                (entries, bytes) = (0, 0);
            }
            entries += p.entries.len();
            bytes += p.bytes;
            chunk.push(p);
        }
        if !chunk.is_empty() {
            self.deliver(chunk).await?;
        }
        Ok(())
    }

    /// Counts what a conversion degraded or left unmapped, one metric update per kind.
    fn count_report(&self, report: &convert::Report) {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for w in &report.warnings {
            *kinds.entry(w.kind.as_str()).or_default() += 1;
        }
        kinds.insert("unmapped-segment", report.unmapped_segments.values().sum());
        kinds.insert("unmapped-field", report.unmapped_fields.values().sum());
        for (kind, n) in kinds.into_iter().filter(|(_, n)| *n > 0) {
            self.metrics
                .conversion_warnings
                .get_or_create(&Metrics::tenant_and(self.tenant(), "kind", kind))
                .inc_by(n as u64);
        }
    }

    async fn conversion_failed(&mut self, failed: Failed) -> Result<(), Stopped> {
        let tenant = self.tenant().to_owned();
        tracing::warn!(
            tenant = %tenant,
            source = %failed.source,
            envelope = failed.id,
            message_type = %failed.message_type,
            control_id = %failed.control_id,
            error = %failed.reason,
            "message not converted: dead-lettered"
        );
        self.metrics
            .conversion_failures
            .get_or_create(&[
                ("tenant", tenant.clone()),
                ("source", failed.source.clone()),
            ])
            .inc();
        let reason = serde_json::json!({
            "stage": "convert",
            "error": failed.reason,
            "time": now_text(),
        })
        .to_string();
        self.dead_letter(failed.id, &failed.source, reason).await
    }

    /// Parks a message whose patient has no consent to forward (audit `consent-held`). Checks
    /// again after the park: a reinstatement that raced with it releases the message here.
    async fn hold(&mut self, p: &Prepared, patient_ref: &str, why: &str) -> Result<(), Stopped> {
        let tenant = self.tenant().to_owned();
        let reason = serde_json::json!({
            "stage": "consent",
            "consent": why,
            "patient_ref": patient_ref,
            "time": now_text(),
        })
        .to_string();
        loop {
            match self
                .queue
                .park(&tenant, p.id, Parked::Held, reason.clone())
                .await
            {
                Ok(()) => break,
                Err(crate::queue::Error::NotFound { .. }) => return Ok(()),
                Err(e) => {
                    tracing::error!(tenant = %tenant, envelope = p.id, error = %e, "holding a message failed; retrying");
                    self.sleep(Duration::from_secs(1)).await?;
                }
            }
        }
        tracing::info!(tenant = %tenant, source = %p.source, envelope = p.id, control_id = %p.control_id,
            consent = why, "message held: no consent to forward");
        self.metrics
            .consent_held
            .get_or_create(&Metrics::tenant(&tenant))
            .inc();
        self.audit.record(
            crate::audit::Action::ConsentHeld,
            crate::audit::ActorKind::System,
            crate::audit::Purpose::Treatment,
            crate::audit::Event {
                tenant: Some(&tenant),
                actor: "caregate",
                message_type: Some(&p.message_type),
                control_id: Some(&p.control_id),
                envelope_id: Some(p.id),
                patient: p.patient.as_deref(),
                ..crate::audit::Event::default()
            },
        );
        let now = self
            .consent
            .decide(&tenant, self.conversion.consent, p.patient.as_deref());
        if now == crate::consent::Decision::Forward {
            release_held(&self.queue, &self.audit, &tenant, &[p.id], "caregate").await;
        }
        Ok(())
    }

    async fn dead_letter(&mut self, id: u64, source: &str, reason: String) -> Result<(), Stopped> {
        let tenant = self.tenant().to_owned();
        loop {
            match self
                .queue
                .park(&tenant, id, Parked::DeadLetter, reason.clone())
                .await
            {
                Ok(()) => break,
                Err(crate::queue::Error::NotFound { .. }) => break,
                Err(e) => {
                    tracing::error!(tenant = %tenant, envelope = id, error = %e, "dead-lettering failed; retrying");
                    self.sleep(Duration::from_secs(1)).await?;
                }
            }
        }
        self.metrics
            .dead_lettered
            .get_or_create(&[("tenant", tenant.clone()), ("source", source.to_owned())])
            .inc();
        self.board.flow(&tenant, source, |f| f.dead_lettered += 1);
        Ok(())
    }

    /// Sends `items` until each is delivered or dead-lettered (or shutdown).
    fn deliver(
        &mut self,
        items: Vec<Prepared>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Stopped>> + Send + '_>> {
        Box::pin(async move {
            let tenant = self.tenant().to_owned();
            let (body, entries) = merge(&items);
            let body = Bytes::from(body);
            let mut conflicts = 0u32;
            let mut reauthenticated = false;
            loop {
                self.wait_for_breaker().await?;
                let corr = correlation_id(&tenant);
                let started = Instant::now();
                let answer = {
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        a = self.upstream.post_bundle(body.clone(), &corr) => a,
                        // The request may or may not land: either way the envelopes stay
                        // stored and go again after the restart (idempotent).
                        _ = shutdown.cancelled() => return Err(Stopped),
                    }
                };
                let elapsed = started.elapsed();
                self.beat();
                self.metrics
                    .upstream_seconds
                    .get_or_create(&Metrics::tenant(&tenant))
                    .observe(elapsed.as_secs_f64());
                let mut disposition = retry::classify(&answer, conflicts, reauthenticated);
                let (status, mut error) = match &answer {
                    Answer::Status { status, .. } => (Some(*status), format!("HTTP {status}")),
                    Answer::Transport(e) => (None, e.clone()),
                };
                if let (Disposition::Delivered, Answer::Status { body, .. }) =
                    (&disposition, &answer)
                {
                    if let Err(why) = retry::confirms(body, entries) {
                        tracing::warn!(tenant = %tenant, correlation_id = %corr, status,
                            problem = why, "upstream answered success without confirming the transaction; not counted as delivered");
                        error = format!("{error}: {why}");
                        disposition = Disposition::RouteError;
                    }
                }
                let outcome = match &disposition {
                    Disposition::Delivered => "delivered",
                    Disposition::Retry { .. } => "retry",
                    Disposition::Reauthenticate => "reauthenticate",
                    Disposition::RouteError => "route_error",
                    Disposition::Split => "split",
                    Disposition::Reject => "rejected",
                };
                self.metrics
                    .upstream_requests
                    .get_or_create(&Metrics::tenant_and(&tenant, "outcome", outcome))
                    .inc();
                tracing::debug!(
                    tenant = %tenant,
                    correlation_id = %corr,
                    messages = items.len(),
                    status,
                    outcome,
                    ms = elapsed.as_millis() as u64,
                    "upstream request"
                );
                match disposition {
                    Disposition::Delivered => {
                        self.delivered(&items, &corr).await?;
                        return Ok(());
                    }
                    Disposition::Reauthenticate => {
                        self.upstream.invalidate_token().await;
                        reauthenticated = true;
                    }
                    Disposition::Retry { after } => {
                        if status == Some(409) {
                            conflicts += 1;
                        }
                        self.failed(&corr, &error, after).await?;
                        reauthenticated = false;
                    }
                    Disposition::RouteError => {
                        self.upstream.invalidate_token().await;
                        self.failed(&corr, &error, None).await?;
                        reauthenticated = false;
                    }
                    Disposition::Split | Disposition::Reject => {
                        // The server answered: it is up.
                        self.server_answered();
                        if items.len() == 1 {
                            let body = match &answer {
                                Answer::Status { body, .. } => body.as_str(),
                                Answer::Transport(_) => "",
                            };
                            self.rejected(&items[0], status, &corr, body).await?;
                            return Ok(());
                        }
                        tracing::info!(
                            tenant = %tenant,
                            correlation_id = %corr,
                            messages = items.len(),
                            status,
                            "upstream refused a batch: splitting it to isolate the message at fault"
                        );
                        let mut items = items;
                        let right = items.split_off(items.len() / 2);
                        self.deliver(items).await?;
                        return self.deliver(right).await;
                    }
                }
            }
        })
    }

    async fn delivered(&mut self, items: &[Prepared], corr: &str) -> Result<(), Stopped> {
        let tenant = self.tenant().to_owned();
        let ids: Vec<u64> = items.iter().map(|p| p.id).collect();
        let (queue, shutdown, t, c) = (
            self.queue.clone(),
            self.shutdown.clone(),
            tenant.clone(),
            corr.to_owned(),
        );
        self.acks.push(tokio::spawn(async move {
            loop {
                match queue.ack(&t, ids.clone()).await {
                    Ok(()) => return,
                    // Delivered but not yet deleted: a restart would send it again, which is
                    // harmless (idempotent). Keep trying so it is not sent twice needlessly.
                    Err(e) => {
                        tracing::error!(tenant = %t, correlation_id = %c, error = %e, "acknowledging delivered messages failed; retrying");
                        if shutdown.is_cancelled() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
        let mut per_source: BTreeMap<&str, u64> = BTreeMap::new();
        let mut resent: BTreeMap<&str, u64> = BTreeMap::new();
        for p in items {
            if p.resend {
                *resent.entry(p.source.as_str()).or_default() += 1;
            } else {
                *per_source.entry(p.source.as_str()).or_default() += 1;
            }
            self.audit.record(
                crate::audit::Action::Forwarded,
                crate::audit::ActorKind::System,
                crate::audit::Purpose::Treatment,
                crate::audit::Event {
                    tenant: Some(&tenant),
                    actor: "caregate",
                    message_type: Some(&p.message_type),
                    control_id: Some(&p.control_id),
                    envelope_id: Some(p.id),
                    patient: p.patient.as_deref(),
                    correlation_id: Some(corr),
                    failure: None,
                },
            );
        }
        // One metric and board update per source, not per message.
        for (source, n) in per_source {
            self.metrics
                .forwarded
                .get_or_create(&[("tenant", tenant.clone()), ("source", source.to_owned())])
                .inc_by(n);
            self.board.flow(&tenant, source, |f| f.forwarded += n);
        }
        for (source, n) in resent {
            tracing::debug!(tenant = %tenant, source, messages = n, correlation_id = %corr, "critical results delivered again at their arrival place");
            self.metrics
                .resent_in_order
                .get_or_create(&[("tenant", tenant.clone()), ("source", source.to_owned())])
                .inc_by(n);
        }
        self.server_answered();
        self.backoff.reset();
        self.board.upstream(&tenant, |u| {
            u.state = "ok".into();
            u.last_success_at = Some(now_text());
        });
        Ok(())
    }

    /// The upstream answered (2xx or a content refusal): it is reachable.
    fn server_answered(&mut self) {
        let tenant = self.tenant().to_owned();
        self.breaker.success();
        self.metrics
            .breaker_state
            .get_or_create(&Metrics::tenant(&tenant))
            .set(breaker::State::Closed.as_gauge());
        let since = self.outage.since();
        if self.outage.success() == alert::Step::Recovered {
            self.alert(alert::Kind::UpstreamRecovered, since, "");
        }
        self.board.upstream(&tenant, |u| {
            u.breaker = Some(breaker::State::Closed);
            u.failing_since = None;
            u.alert_active = false;
            if u.state != "ok" {
                u.state = "ok".into();
            }
        });
    }

    async fn rejected(
        &mut self,
        p: &Prepared,
        status: Option<u16>,
        corr: &str,
        body: &str,
    ) -> Result<(), Stopped> {
        let tenant = self.tenant().to_owned();
        tracing::warn!(
            tenant = %tenant,
            source = %p.source,
            envelope = p.id,
            correlation_id = %corr,
            status,
            "upstream refused a message: dead-lettered"
        );
        // The OperationOutcome is kept with the dead letter (operators see it through the
        // admin API), never logged: a server may echo message content in diagnostics.
        let outcome: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|_| serde_json::Value::String(body.to_owned()));
        let reason = serde_json::json!({
            "stage": "upstream",
            "status": status,
            "correlation_id": corr,
            "time": now_text(),
            "outcome": outcome,
        })
        .to_string();
        self.dead_letter(p.id, &p.source, reason).await
    }

    /// A retryable failure: count it, maybe alert, wait.
    async fn failed(
        &mut self,
        corr: &str,
        error: &str,
        after: Option<Duration>,
    ) -> Result<(), Stopped> {
        let tenant = self.tenant().to_owned();
        let now = Instant::now();
        let opened = self.breaker.failure(now);
        let state = self.breaker.state(now);
        self.metrics
            .breaker_state
            .get_or_create(&Metrics::tenant(&tenant))
            .set(state.as_gauge());
        if opened {
            self.metrics
                .breaker_trips
                .get_or_create(&Metrics::tenant(&tenant))
                .inc();
            tracing::warn!(tenant = %tenant, error = %error, "circuit breaker opened");
        }
        let code = if error.starts_with("HTTP ") {
            format!("http-{}", error.trim_start_matches("HTTP "))
        } else {
            error.split(':').next().unwrap_or("transport").to_owned()
        };
        self.audit.record(
            crate::audit::Action::Failed,
            crate::audit::ActorKind::System,
            crate::audit::Purpose::Treatment,
            crate::audit::Event {
                tenant: Some(&tenant),
                actor: "caregate",
                correlation_id: Some(corr),
                failure: Some(&code),
                ..crate::audit::Event::default()
            },
        );
        let step = self.outage.failure(now, jiff::Timestamp::now());
        let since = self.outage.since().map(|t| t.to_string());
        self.board.upstream(&tenant, |u| {
            u.state = match state {
                breaker::State::Open => "open".into(),
                breaker::State::HalfOpen => "half-open".into(),
                breaker::State::Closed => "failing".into(),
            };
            u.breaker = Some(state);
            u.failing_since = since;
            u.last_error = Some(error.to_owned());
            u.last_error_at = Some(now_text());
        });
        if let alert::Step::Raise(kind) = step {
            let since = self.outage.since();
            self.alert(kind, since, error);
        }
        tracing::warn!(
            tenant = %tenant,
            correlation_id = %corr,
            error = %error,
            attempt = self.backoff.attempts(),
            "upstream request failed; will retry"
        );
        let backoff = self.backoff.next_delay();
        let wait = after.map_or(backoff, |a| a.max(Duration::from_millis(100)));
        self.sleep(wait).await
    }

    fn alert(&self, kind: alert::Kind, since: Option<jiff::Timestamp>, error: &str) {
        let tenant = self.tenant().to_owned();
        let depth = self.queue.tenant_depth(&tenant);
        self.board.upstream(&tenant, |u| {
            u.alert_active = kind != alert::Kind::UpstreamRecovered;
        });
        self.alerter.send(Alert {
            kind,
            severity: if kind == alert::Kind::UpstreamRecovered {
                "info"
            } else {
                "critical"
            },
            tenant,
            upstream: self.upstream.endpoint(),
            since: since.map(|t| t.to_string()).unwrap_or_default(),
            queue_depth: depth,
            last_error: error.to_owned(),
            time: now_text(),
            host: String::new(),
        });
    }

    async fn wait_for_breaker(&mut self) -> Result<(), Stopped> {
        let wait = self.breaker.wait(Instant::now());
        if !wait.is_zero() {
            self.sleep(wait).await?;
        }
        let state = self.breaker.state(Instant::now());
        self.metrics
            .breaker_state
            .get_or_create(&Metrics::tenant(self.tenant()))
            .set(state.as_gauge());
        Ok(())
    }

    /// Sleeps `d`, raising outage alerts that fall due meanwhile; `Err` on shutdown.
    async fn sleep(&mut self, d: Duration) -> Result<(), Stopped> {
        let end = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            let until = self
                .outage
                .next_due()
                .map_or(end, |due| due.clamp(now, end));
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = shutdown.cancelled() => return Err(Stopped),
            }
            if let alert::Step::Raise(kind) = self.outage.tick(Instant::now()) {
                let since = self.outage.since();
                let error = self
                    .board
                    .upstream_of(self.tenant())
                    .and_then(|u| u.last_error)
                    .unwrap_or_default();
                self.alert(kind, since, &error);
            }
        }
    }
}

/// A converted message with its report, or why it could not be converted.
type Prepare = Result<(Prepared, convert::Report), Failed>;

/// A message that could not be converted (no values from the message in `reason`).
struct Failed {
    id: u64,
    source: String,
    message_type: String,
    control_id: String,
    reason: String,
}

fn prepare(c: &Conversion, env: Envelope) -> Prepare {
    let fail = |reason: String| Failed {
        id: env.id,
        source: env.source.clone(),
        message_type: env.meta.message_type.clone(),
        control_id: env.meta.control_id.clone(),
        reason,
    };
    let ctx = Context {
        tenant: &c.tenant,
        source: &env.source,
        timezone: c.source_zones.get(&env.source).unwrap_or(&c.timezone),
        identifier_systems: &c.identifier_systems,
        system_base: &c.system_base,
    };
    let converted = match env.kind {
        Kind::Hl7 => convert::convert_bytes(&ctx, &env.payload),
        Kind::Astm => convert::convert_astm(&ctx, &env.payload),
        Kind::Reading => convert::convert_reading(&ctx, &env.payload),
    }
    .map_err(|e| fail(e.to_string()))?;
    let mut entries = Vec::with_capacity(converted.bundle.entry.len());
    let mut bytes = 0;
    for e in &converted.bundle.entry {
        let json = serde_json::to_vec(e).map_err(|e| fail(format!("serializing: {e}")))?;
        bytes += json.len() + 1;
        entries.push(PreparedEntry {
            full_url: e.full_url.clone(),
            put: e.request.method == Method::Put,
            json,
        });
    }
    let patient = converted.bundle.entry.iter().find_map(|e| {
        if e.resource.type_name() != "Patient" {
            return None;
        }
        let q = e
            .request
            .if_none_exist
            .as_deref()
            .or_else(|| e.request.url.split_once('?').map(|(_, q)| q))?;
        q.strip_prefix("identifier=").map(str::to_owned)
    });
    Ok((
        Prepared {
            id: env.id,
            source: env.source,
            message_type: env.meta.message_type,
            control_id: env.meta.control_id,
            patient,
            resend: env.lane == Lane::Resend,
            entries,
            bytes,
        },
        converted.report,
    ))
}

/// Releases a patient's held messages (their consent was recorded as active): the held
/// envelopes of `tenant` whose hold names `patient_ref`, in their original order.
pub async fn release_patient(
    queue: &Queue,
    audit: &crate::audit::Recorder,
    tenant: &str,
    patient_ref: &str,
    actor: &str,
) -> Result<Vec<u64>, crate::queue::Error> {
    let q = queue.clone();
    let t = tenant.to_owned();
    let parked = tokio::task::spawn_blocking(move || q.parked(Some(&t)))
        .await
        .map_err(|_| crate::queue::Error::Closed)??;
    let ids: Vec<u64> = parked
        .into_iter()
        .filter(|p| p.state == Parked::Held)
        .filter(|p| {
            serde_json::from_str::<serde_json::Value>(&p.reason)
                .ok()
                .is_some_and(|r| r["patient_ref"] == patient_ref)
        })
        .map(|p| p.id)
        .collect();
    Ok(release_held(queue, audit, tenant, &ids, actor).await)
}

/// Returns held envelopes to the ready queue in id order (their original order), recording
/// `consent-released` for each; returns the ids released.
pub async fn release_held(
    queue: &Queue,
    audit: &crate::audit::Recorder,
    tenant: &str,
    ids: &[u64],
    actor: &str,
) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let mut done = Vec::new();
    for id in ids {
        match queue.unpark(tenant, id).await {
            Ok(()) => {
                audit.record(
                    crate::audit::Action::ConsentReleased,
                    crate::audit::ActorKind::System,
                    crate::audit::Purpose::Treatment,
                    crate::audit::Event {
                        tenant: Some(tenant),
                        actor,
                        envelope_id: Some(id),
                        ..crate::audit::Event::default()
                    },
                );
                done.push(id);
            }
            Err(e) => {
                tracing::error!(tenant, envelope = id, error = %e, "releasing a held message failed");
            }
        }
    }
    done
}

/// One transaction Bundle from several messages' entries, in message order. An entry whose
/// fullUrl already appeared (the same Patient/Encounter/Device: their fullUrls derive from
/// their identity) is sent once, as sequential processing would leave it: a PUT (update)
/// replaces an earlier entry, a conditional create after an earlier entry changes nothing.
/// Also returns how many entries it holds (the transaction-response must have as many).
fn merge(items: &[Prepared]) -> (Vec<u8>, usize) {
    let mut slots: Vec<&PreparedEntry> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for e in items.iter().flat_map(|p| &p.entries) {
        match at.get(e.full_url.as_str()) {
            None => {
                at.insert(&e.full_url, slots.len());
                slots.push(e);
            }
            Some(&i) => {
                if e.put {
                    slots[i] = e;
                }
            }
        }
    }
    let total: usize = slots.iter().map(|e| e.json.len() + 1).sum();
    let mut out = Vec::with_capacity(total + 64);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (i, e) in slots.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.json);
    }
    out.extend_from_slice(b"]}");
    (out, slots.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, put: bool, tag: &str) -> PreparedEntry {
        PreparedEntry {
            full_url: url.into(),
            put,
            json: format!(r#"{{"fullUrl":"{url}","tag":"{tag}"}}"#).into_bytes(),
        }
    }

    fn prepared(id: u64, entries: Vec<PreparedEntry>) -> Prepared {
        Prepared {
            id,
            source: "lab".into(),
            message_type: "ORU^R01".into(),
            control_id: format!("C{id}"),
            patient: None,
            resend: false,
            bytes: entries.iter().map(|e| e.json.len()).sum(),
            entries,
        }
    }

    fn tags(body: &[u8]) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "transaction");
        v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tag"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn shared_entries_are_sent_once_and_updates_win() {
        let a = prepared(
            1,
            vec![
                entry("urn:uuid:p", false, "create-p-1"),
                entry("urn:uuid:o1", true, "obs-1"),
            ],
        );
        let b = prepared(
            2,
            vec![
                entry("urn:uuid:p", true, "update-p-2"),
                entry("urn:uuid:o2", true, "obs-2"),
            ],
        );
        let c = prepared(
            3,
            vec![
                entry("urn:uuid:p", false, "create-p-3"),
                entry("urn:uuid:o3", true, "obs-3"),
            ],
        );
        assert_eq!(
            tags(&merge(&[a, b, c]).0),
            vec!["update-p-2", "obs-1", "obs-2", "obs-3"]
        );
    }

    #[test]
    fn a_single_message_is_its_own_bundle() {
        let a = prepared(1, vec![entry("urn:uuid:x", true, "x")]);
        assert_eq!(tags(&merge(&[a]).0), vec!["x"]);
    }

    #[test]
    fn correlation_ids_are_unique_and_carry_the_tenant() {
        let a = correlation_id("north");
        let b = correlation_id("north");
        assert_ne!(a, b);
        assert!(a.starts_with("cg-north-"), "{a}");
    }
}
