//! The operator API on the admin listener, beside `/livez`, `/readyz` and `/metrics`:
//!
//! | method | path                                   | what                                       |
//! |--------|----------------------------------------|--------------------------------------------|
//! | GET    | `/`                                    | the status page: `/status` rendered as HTML (refreshes every 5 s) |
//! | GET    | `/status`                              | per tenant and source: received, queued, forwarded, dead letters, oldest age, upstream state |
//! | GET    | `/queue/stats`                         | what `caregate queue stats` prints          |
//! | GET    | `/queue/dead-letters[?tenant=T]`       | dead letters with their reason (no payload) |
//! | POST   | `/queue/replay/{tenant}/{id}`          | a dead letter back to the ready queue, in its original place |
//! | POST   | `/queue/replay/{tenant}?all=true`      | every dead letter of the tenant             |
//! | DELETE | `/queue/dead-letters/{tenant}/{id}`    | purge one dead letter (or held message) for good |
//! | GET    | `/audit/export?tenant=&since=&until=`  | a tenant's audit entries, JSON lines (streamed) |
//! | GET    | `/audit/verify`                        | the audit trail's integrity report          |
//! | GET    | `/consent/{tenant}`                    | the consent registry (patient hashes and status) |
//! | POST   | `/consent/{tenant}`                    | `{"system","value","status":"active"\|"withdrawn"}`; `active` releases the patient's held messages in order |
//!
//! Every route here requires `Authorization: Bearer <token>`; who may call what, for which
//! tenant, is the table in [`crate::access`] (401 without or with an unknown token, 403 outside
//! the token's role or tenant, 403 for everything while no `[[admin.token]]` is configured).
//! Every operator action is logged (and counted) with tenant, envelope id, the token's name
//! (never the token) and the caller's address, and replay/purge are recorded in the audit
//! trail with the token name as actor.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use crate::access::{Endpoint, Refused, Role, Scope};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::{Parked, Queue, Stats};
use crate::status::{Board, SourceStatus, Status, TenantStatus};

/// Queue stats and when they were read.
type CachedStats = (Instant, Arc<Stats>);

/// What the operator API reads and changes.
#[derive(Clone)]
pub struct Admin {
    /// The queue.
    pub queue: Queue,
    /// Metrics (received counts).
    pub metrics: Arc<Metrics>,
    /// Upstream states and flow counters.
    pub board: Arc<Board>,
    /// Tenants, sources and tokens, as configured (a reload replaces it).
    config: Arc<std::sync::RwLock<Arc<Config>>>,
    /// Process start.
    pub started: Instant,
    cache: Arc<Mutex<Option<CachedStats>>>,
    audit: crate::audit::Recorder,
    consent: Option<Arc<crate::consent::Registry>>,
}

impl Admin {
    /// The API state.
    pub fn new(
        queue: Queue,
        metrics: Arc<Metrics>,
        board: Arc<Board>,
        config: Arc<Config>,
    ) -> Admin {
        Admin {
            queue,
            metrics,
            board,
            config: Arc::new(std::sync::RwLock::new(config)),
            started: Instant::now(),
            cache: Arc::new(Mutex::new(None)),
            audit: crate::audit::Recorder::disabled(),
            consent: None,
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a reloaded configuration (tokens, tenants and sources shown by `/status`).
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Serves `/consent` from this registry.
    pub fn with_consent(mut self, consent: Arc<crate::consent::Registry>) -> Admin {
        self.consent = Some(consent);
        self
    }

    /// Records operator actions in the audit trail.
    pub fn with_audit(mut self, audit: crate::audit::Recorder) -> Admin {
        self.audit = audit;
        self
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/status", get(status))
            .route("/queue/stats", get(queue_stats))
            .route("/queue/dead-letters", get(dead_letters))
            .route("/queue/dead-letters/{tenant}/{id}", delete(purge))
            .route("/queue/replay/{tenant}/{id}", post(replay_one))
            .route("/queue/replay/{tenant}", post(replay_all))
            .route("/audit/export", get(audit_export))
            .route("/audit/verify", get(audit_verify))
            .route("/consent/{tenant}", get(consent_list).post(consent_set))
            .with_state(self)
    }

    /// Queue stats, at most 2 s old (a full scan: not for every request under load).
    async fn stats(&self) -> Result<Arc<Stats>, ApiError> {
        if let Some((at, s)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if at.elapsed() < Duration::from_secs(2) {
                return Ok(s.clone());
            }
        }
        let q = self.queue.clone();
        let now = jiff::Timestamp::now().as_microsecond();
        let stats = tokio::task::spawn_blocking(move || q.stats(now))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let stats = Arc::new(stats);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), stats.clone()));
        Ok(stats)
    }

    /// The `/status` document.
    pub async fn status(&self) -> Result<Status, ApiError> {
        let stats = self.stats().await?;
        let config = self.config();
        let mut tenants = Vec::new();
        for t in &config.tenants {
            let g = stats.tenants.iter().find(|g| g.tenant == t.id);
            let (mut forwarded, mut dead_lettered) = (0, 0);
            for s in config.sources.iter().filter(|s| s.tenant == t.id) {
                let f = self.board.flow_of(&t.id, &s.name);
                forwarded += f.forwarded;
                dead_lettered += f.dead_lettered;
            }
            tenants.push(TenantStatus {
                tenant: t.id.clone(),
                queued: g.map_or(0, |g| g.messages),
                ready: g.map_or(0, |g| g.ready),
                dead_letters: g.map_or(0, |g| g.dead_letters),
                held: g.map_or(0, |g| g.held),
                oldest_queued_age_seconds: g.and_then(|g| g.oldest_age_seconds),
                forwarded,
                dead_lettered,
                upstream: t
                    .upstream
                    .as_ref()
                    .map(|_| self.board.upstream_of(&t.id).unwrap_or_default()),
            });
        }
        let mut sources = Vec::new();
        for s in &config.sources {
            let g = stats
                .sources
                .iter()
                .find(|g| g.tenant == s.tenant && g.source.as_deref() == Some(s.name.as_str()));
            let f = self.board.flow_of(&s.tenant, &s.name);
            let labels = Metrics::source(&s.name);
            let last = self.metrics.last_received.get_or_create(&labels).get();
            sources.push(SourceStatus {
                source: s.name.clone(),
                tenant: s.tenant.clone(),
                kind: s.kind.as_str().to_owned(),
                received: self
                    .metrics
                    .received
                    .get_or_create(&Metrics::source(&s.name))
                    .get(),
                queued: g.map_or(0, |g| g.messages),
                dead_letters: g.map_or(0, |g| g.dead_letters),
                rejected: g.map_or(0, |g| g.rejected),
                oldest_queued_age_seconds: g.and_then(|g| g.oldest_age_seconds),
                forwarded: f.forwarded,
                dead_lettered: f.dead_lettered,
                open_connections: u64::try_from(
                    self.metrics.connections.get_or_create(&labels).get(),
                )
                .unwrap_or(0),
                last_received_at: (last > 0)
                    .then(|| jiff::Timestamp::from_second(last).ok())
                    .flatten()
                    .map(|t| t.to_string()),
            });
        }
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            tenants,
            sources,
        })
    }

    fn forget_stats(&self) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn known_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        if self.config().tenant(tenant).is_some() {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::NOT_FOUND, "unknown tenant"))
        }
    }
}

/// The authenticated caller: a configured token's name, role and tenant (never the secret).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its tenant (`None` for system-admin).
    pub tenant: Option<String>,
}

impl Caller {
    /// The scope `endpoint` is allowed in, or 403.
    fn allow(&self, endpoint: Endpoint<'_>) -> Result<Scope, ApiError> {
        crate::access::decide(self.role, self.tenant.as_deref(), endpoint).map_err(|m| {
            tracing::info!(token = %self.name, role = %self.role, endpoint = ?endpoint, "operator request refused");
            ApiError::new(StatusCode::FORBIDDEN, m)
        })
    }
}

impl FromRequestParts<Admin> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, a: &Admin) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let config = a.config();
        let presented = crate::access::credentials(header);
        match config.admin.tokens.authenticate(presented.as_deref()) {
            Ok(t) => Ok(Caller {
                name: t.name.clone(),
                role: t.role,
                tenant: t.tenant.clone(),
            }),
            Err(Refused::Unauthenticated(m)) => {
                tracing::info!(path = %parts.uri.path(), "operator request without a valid token");
                Err(ApiError {
                    challenge: true,
                    ..ApiError::new(StatusCode::UNAUTHORIZED, m)
                })
            }
            Err(Refused::Forbidden(m)) => Err(ApiError::new(StatusCode::FORBIDDEN, m)),
        }
    }
}

/// `POST /consent/{tenant}` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsentChange {
    /// Identifier system (URI, as the converter emits it).
    pub system: String,
    /// Identifier value.
    pub value: String,
    /// New status.
    pub status: crate::consent::Status,
}

/// What a consent change did.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsentDone {
    /// Tenant.
    pub tenant: String,
    /// Keyed hash of the patient.
    pub patient_ref: String,
    /// The status recorded.
    pub status: crate::consent::Status,
    /// Held envelopes released (in order).
    pub released: Vec<u64>,
}

impl Admin {
    fn registry(&self) -> Result<&Arc<crate::consent::Registry>, ApiError> {
        self.consent
            .as_ref()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no consent registry"))
    }
}

async fn consent_list(
    State(a): State<Admin>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<crate::consent::Entry>>, ApiError> {
    caller.allow(Endpoint::Consent(&tenant))?;
    a.known_tenant(&tenant)?;
    Ok(Json(a.registry()?.list(&tenant)))
}

async fn consent_set(
    State(a): State<Admin>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(tenant): Path<String>,
    Json(change): Json<ConsentChange>,
) -> Result<Json<ConsentDone>, ApiError> {
    caller.allow(Endpoint::Consent(&tenant))?;
    a.known_tenant(&tenant)?;
    if change.system.trim().is_empty() || change.value.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "system and value are required",
        ));
    }
    let registry = a.registry()?.clone();
    let identifier = format!("{}|{}", change.system.trim(), change.value.trim());
    let (t, c) = (tenant.clone(), change);
    let (patient_ref, status) = tokio::task::spawn_blocking(move || {
        registry
            .set(&t, &c.system, &c.value, c.status)
            .map(|h| (h, c.status))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let actor = peer.ip().to_string();
    a.audit.record(
        status.audit_action(),
        crate::audit::ActorKind::Token,
        crate::audit::Purpose::Operations,
        crate::audit::Event {
            tenant: Some(&tenant),
            actor: &caller.name,
            patient: Some(&identifier),
            ..crate::audit::Event::default()
        },
    );
    tracing::info!(action = "consent", tenant = %tenant, patient_ref = %patient_ref, status = ?status, token = %caller.name, peer = %peer, "operator action");
    a.metrics
        .operator_actions
        .get_or_create(&Metrics::tenant_and(&tenant, "action", "consent"))
        .inc();
    let mut released = Vec::new();
    if status == crate::consent::Status::Active {
        released =
            crate::pipeline::release_patient(&a.queue, &a.audit, &tenant, &patient_ref, &actor)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(Json(ConsentDone {
        tenant,
        patient_ref,
        status,
        released,
    }))
}

/// An API error: status and a one-line message (never message content).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// 401: add `WWW-Authenticate: Bearer`.
    challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            challenge: false,
        }
    }
    fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.challenge {
            // Bearer for the API and the CLI; Basic so that a browser opening the status page
            // asks for the token (as the password).
            let h = r.headers_mut();
            h.append(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            h.append(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"caregate\", charset=\"UTF-8\""),
            );
        }
        r
    }
}

async fn status(State(a): State<Admin>, caller: Caller) -> Result<Json<Status>, ApiError> {
    let scope = caller.allow(Endpoint::Status)?;
    let mut s = a.status().await?;
    s.tenants.retain(|t| scope.sees(&t.tenant));
    s.sources.retain(|x| scope.sees(&x.tenant));
    Ok(Json(s))
}

/// The status page: the same token and the same view as `/status` (an org-admin sees its
/// tenant), asked for by the browser's login prompt (any user name, the token as password).
async fn page(State(a): State<Admin>, caller: Caller) -> Result<Html<String>, ApiError> {
    let scope = caller.allow(Endpoint::Status)?;
    let mut status = a.status().await?;
    status.tenants.retain(|t| scope.sees(&t.tenant));
    status.sources.retain(|x| scope.sees(&x.tenant));
    Ok(Html(crate::page::render(
        &status,
        &jiff::Timestamp::now().to_string(),
    )))
}

async fn queue_stats(State(a): State<Admin>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    caller.allow(Endpoint::QueueStats)?;
    a.forget_stats();
    let s = a.stats().await?;
    Ok(Json(Stats::clone(&s)))
}

#[derive(Deserialize)]
struct TenantQuery {
    tenant: Option<String>,
}

/// One dead letter as the API and `caregate queue dead-letters` show it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Envelope id.
    pub id: u64,
    /// Tenant.
    pub tenant: String,
    /// Source.
    pub source: String,
    /// MSH-9.
    pub message_type: String,
    /// MSH-10.
    pub control_id: String,
    /// Receipt time (RFC 3339).
    pub received_at: String,
    /// Why (JSON: stage, status, correlation id, OperationOutcome).
    pub reason: serde_json::Value,
}

/// Lists dead letters (all tenants, or one).
pub fn list_dead_letters(
    queue: &Queue,
    tenant: Option<&str>,
) -> Result<Vec<DeadLetter>, crate::queue::Error> {
    Ok(queue
        .parked(tenant)?
        .into_iter()
        .filter(|p| p.state == Parked::DeadLetter)
        .map(|p| DeadLetter {
            id: p.id,
            tenant: p.envelope.tenant.clone(),
            source: p.envelope.source.clone(),
            message_type: p.envelope.meta.message_type.clone(),
            control_id: p.envelope.meta.control_id.clone(),
            received_at: jiff::Timestamp::from_microsecond(p.envelope.received_at_us)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            reason: serde_json::from_str(&p.reason)
                .unwrap_or(serde_json::Value::String(p.reason.clone())),
        })
        .collect())
}

async fn dead_letters(
    State(a): State<Admin>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let tenant = match caller.allow(Endpoint::DeadLetters(q.tenant.as_deref()))? {
        Scope::All => q.tenant,
        Scope::Tenant(t) => Some(t),
    };
    if let Some(t) = &tenant {
        a.known_tenant(t)?;
    }
    let queue = a.queue.clone();
    let list = tokio::task::spawn_blocking(move || list_dead_letters(&queue, tenant.as_deref()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(list))
}

/// What a replay or purge did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    /// The action.
    pub action: String,
    /// Tenant.
    pub tenant: String,
    /// Envelope ids affected.
    pub ids: Vec<u64>,
}

fn operator_log(
    a: &Admin,
    caller: &Caller,
    action: &str,
    tenant: &str,
    ids: &[u64],
    peer: SocketAddr,
) {
    a.metrics
        .operator_actions
        .get_or_create(&Metrics::tenant_and(tenant, "action", action))
        .inc_by(ids.len() as u64);
    tracing::info!(action, tenant, ids = ?ids, token = %caller.name, role = %caller.role, peer = %peer, "operator action");
    let what = if action == "purge" {
        crate::audit::Action::Purged
    } else {
        crate::audit::Action::Replayed
    };
    let actor = caller.name.as_str();
    for id in ids {
        a.audit.record(
            what,
            crate::audit::ActorKind::Token,
            crate::audit::Purpose::Operations,
            crate::audit::Event {
                tenant: Some(tenant),
                actor,
                envelope_id: Some(*id),
                ..crate::audit::Event::default()
            },
        );
    }
}

async fn replay_one(
    State(a): State<Admin>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((tenant, id)): Path<(String, u64)>,
) -> Result<Json<Done>, ApiError> {
    caller.allow(Endpoint::Replay(&tenant))?;
    a.known_tenant(&tenant)?;
    let is_dead = list_dead_letters(&a.queue, Some(&tenant))
        .map_err(|e| ApiError::internal(e.to_string()))?
        .iter()
        .any(|d| d.id == id);
    if !is_dead {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such dead letter"));
    }
    a.queue
        .unpark(&tenant, id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    operator_log(&a, &caller, "replay", &tenant, &[id], peer);
    a.forget_stats();
    Ok(Json(Done {
        action: "replay".into(),
        tenant,
        ids: vec![id],
    }))
}

#[derive(Deserialize)]
struct AllQuery {
    #[serde(default)]
    all: bool,
}

async fn replay_all(
    State(a): State<Admin>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(tenant): Path<String>,
    Query(q): Query<AllQuery>,
) -> Result<Json<Done>, ApiError> {
    caller.allow(Endpoint::Replay(&tenant))?;
    a.known_tenant(&tenant)?;
    if !q.all {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name an id (/queue/replay/{tenant}/{id}) or pass ?all=true",
        ));
    }
    let ids: Vec<u64> = list_dead_letters(&a.queue, Some(&tenant))
        .map_err(|e| ApiError::internal(e.to_string()))?
        .iter()
        .map(|d| d.id)
        .collect();
    for id in &ids {
        a.queue
            .unpark(&tenant, *id)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    operator_log(&a, &caller, "replay", &tenant, &ids, peer);
    a.forget_stats();
    Ok(Json(Done {
        action: "replay".into(),
        tenant,
        ids,
    }))
}

async fn purge(
    State(a): State<Admin>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((tenant, id)): Path<(String, u64)>,
) -> Result<Json<Done>, ApiError> {
    caller.allow(Endpoint::Purge(&tenant))?;
    a.known_tenant(&tenant)?;
    match a.queue.purge(&tenant, id).await {
        Ok(()) => {}
        Err(crate::queue::Error::NotFound { .. }) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no such dead letter (only parked messages can be purged)",
            ));
        }
        Err(e) => return Err(ApiError::internal(e.to_string())),
    }
    operator_log(&a, &caller, "purge", &tenant, &[id], peer);
    a.forget_stats();
    Ok(Json(Done {
        action: "purge".into(),
        tenant,
        ids: vec![id],
    }))
}

#[derive(Deserialize)]
struct ExportQuery {
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /audit/export`: the tenant's entries as JSON lines, streamed from a blocking reader.
/// A line that cannot be read is logged (file and line) and skipped, as `caregate audit
/// export` reports it and goes on.
async fn audit_export(
    State(a): State<Admin>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let tenant = match caller.allow(Endpoint::AuditExport(q.tenant.as_deref()))? {
        Scope::Tenant(t) => t,
        Scope::All => q.tenant.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "name a tenant (?tenant=, `-` for system entries)",
            )
        })?,
    };
    if tenant != "-" {
        a.known_tenant(&tenant)?;
    }
    let trail_tenant = crate::audit::Tenant::parse(&tenant)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("tenant: {e}")))?;
    let time = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(crate::audit::parse_time)
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
    };
    let (since, until) = (time(&q.since, "since")?, time(&q.until, "until")?);
    let dir = a.config().audit.dir.clone();
    let entries = crate::audit::export(&dir, &trail_tenant, since, until)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(action = "audit-export", tenant, token = %caller.name, role = %caller.role, peer = %peer, "operator action");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(64 * 1024);
        for item in entries {
            match item {
                Ok(e) => {
                    if serde_json::to_writer(&mut buf, &e).is_err() {
                        continue;
                    }
                    buf.push(b'\n');
                    if buf.len() >= 60 * 1024
                        && tx
                            .blocking_send(Ok(std::mem::take(&mut buf).into()))
                            .is_err()
                    {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "audit export: unreadable line skipped"),
            }
        }
        if !buf.is_empty() {
            let _ = tx.blocking_send(Ok(buf.into()));
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(Chunks(rx)),
    )
        .into_response())
}

/// A channel of body chunks as a stream.
struct Chunks(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The `/audit/verify` answer: the report's counts, whether it is intact, and its text.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// No problem found.
    pub intact: bool,
    /// Trail files read.
    pub files: usize,
    /// Lines read.
    pub lines: u64,
    /// Entries among them.
    pub entries: u64,
    /// Checkpoints among them.
    pub checkpoints: u64,
    /// Seq of the last checkpoint whose signature verified.
    pub signed_through: Option<u64>,
    /// Problems found (file and line, no content), at most `audit::MAX_FINDINGS`.
    pub problems: Vec<String>,
    /// Problems found beyond those listed (a badly damaged trail).
    #[serde(default)]
    pub problems_unlisted: u64,
    /// The report as `caregate audit verify` prints it.
    pub report: String,
}

async fn audit_verify(
    State(a): State<Admin>,
    caller: Caller,
) -> Result<Json<VerifyAnswer>, ApiError> {
    caller.allow(Endpoint::AuditVerify)?;
    let config = a.config();
    let dir = config.audit.dir.clone();
    let key_path = config.audit.key_dir.join(crate::audit::PUBLIC_KEY_FILE);
    let report = tokio::task::spawn_blocking(move || {
        let key = crate::audit::PublicKey::load(&key_path).map_err(|e| e.to_string())?;
        crate::audit::verify(&dir, &key).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::internal)?;
    Ok(Json(VerifyAnswer {
        intact: report.is_intact(),
        files: report.files,
        lines: report.lines,
        entries: report.entries,
        checkpoints: report.checkpoints,
        signed_through: report.signed_through,
        problems: report.problems.iter().map(ToString::to_string).collect(),
        problems_unlisted: report.problems_unlisted,
        report: report.to_string(),
    }))
}
