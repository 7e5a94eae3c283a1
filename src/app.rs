//! Wiring and lifecycle: open queue → bind admin and every source → readiness latch and
//! `READY=1` → run → on shutdown `STOPPING=1`, sources stop accepting and finish the message in
//! hand (commit + ACK) → exit within the deadline, naming what was still running.
//!
//! [`start`] returns a [`Running`] handle with the bound addresses so tests drive the whole
//! gateway in-process; [`run`] is `start` plus waiting for a signal, for `main`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::alert::Alerter;
use crate::config::{Config, Source, SourceKind, Tenant};
use crate::forward::client::Upstream;
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::pipeline::{self, Worker};
use crate::queue::Queue;
use crate::shutdown::{self, Trigger};
use crate::status::Board;
use crate::{astm, files, mllp};

/// A source set up before anything runs (bound, when it listens), waiting to be spawned.
enum Started {
    Mllp(mllp::Listener),
    MllpSerial(mllp::SerialSource),
    Astm(astm::serial::Source),
    File(files::Source),
    Mqtt(Box<crate::mqtt::Source>),
}

/// Runtime switches that are not part of the pipeline description (CLI flags).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// fsync every commit. Only the ingest benchmark turns this off, to show what durability costs.
    pub durable: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { durable: true }
    }
}

/// One running part a reload can stop on its own: its trigger (a child of the gateway's) and
/// a signal that completes when its task has returned.
struct Part {
    /// What the part was started from; a reload compares it with the new file's.
    fingerprint: String,
    trigger: Trigger,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Part {
    /// Stops the part and waits (at most `deadline`) for it to finish what it has in hand.
    async fn stop(self, deadline: Duration) -> bool {
        self.trigger.fire();
        tokio::time::timeout(deadline, self.done).await.is_ok()
    }
}

/// A running source.
struct SourcePart {
    part: Part,
    /// The TLS files and the configuration a reload re-reads them into.
    tls: Option<(mllp::TlsConfig, mllp::tls::TlsSwap)>,
}

type Heartbeats = Arc<std::sync::Mutex<HashMap<String, (Arc<AtomicI64>, Duration)>>>;

/// A started gateway.
pub struct Running {
    /// `(source name, bound address)` of every MLLP listener.
    pub mllp: Vec<(String, SocketAddr)>,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// The queue (tests inspect it).
    pub queue: Queue,
    /// The metric set.
    pub metrics: Arc<Metrics>,
    /// Upstream states and flow counters (what `/status` shows).
    pub board: Arc<Board>,
    /// The operator API state (tests call it directly).
    pub admin_api: Admin,
    /// The audit trail's recorder.
    pub audit: crate::audit::Recorder,
    config: Config,
    alerter: Arc<Alerter>,
    consent: Arc<crate::consent::Registry>,
    notifier: Arc<crate::critical::Notifier>,
    admin_tls: Option<(crate::config::AdminTls, mllp::tls::TlsSwap)>,
    sources: HashMap<String, SourcePart>,
    /// Modbus poll loops: sources sharing a serial bus are polled by one loop, so they are
    /// started and stopped together.
    modbus: Vec<Part>,
    workers: HashMap<String, Part>,
    heartbeats: Heartbeats,
    trigger: Trigger,
    tasks: JoinSet<()>,
    names: HashMap<tokio::task::Id, String>,
    deadline: Duration,
}

/// Opens the queue and starts everything, returning once all listeners are bound and the
/// readiness latch is set.
pub async fn start(config: &Config, options: Options) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let queue = if options.durable {
        Queue::open(&config.data_dir, config.queue, metrics.clone())
    } else {
        tracing::warn!("running with fsync disabled: acknowledged messages can be lost on power failure (benchmark only)");
        let path = config.data_dir.join("queue.redb");
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
        Queue::open_with(
            Arc::new(move || redb::Database::create(&path)),
            config.queue,
            false,
            metrics.clone(),
        )
    }
    .with_context(|| format!("opening the queue in {}", config.data_dir.display()))?;
    start_with_queue(config, queue, metrics).await
}

/// Like [`start`] with a queue opened by the caller (tests inject storage faults this way).
pub async fn start_with_queue(
    config: &Config,
    queue: Queue,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Running> {
    let ready = Arc::new(Readiness::default());
    let (trigger, _) = shutdown::channel();
    let admin_tls = match &config.admin.tls {
        Some(t) => Some((t.clone(), mllp::tls::TlsSwap::new(admin_server_config(t)?))),
        None => None,
    };
    let admin_listener = health::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.listen))?;
    let admin = admin_listener.local_addr().unwrap_or(config.admin.listen);

    let notifier = Arc::new(crate::critical::Notifier::new(config));
    let consent = Arc::new(
        crate::consent::Registry::open(&config.data_dir).context("opening the consent registry")?,
    );
    // Every source is set up (listeners bound) before anything runs: a port in use stops the
    // start with the source's name.
    let mut prepared = Vec::new();
    for source in &config.sources {
        if !matches!(source.kind, SourceKind::Modbus(_)) {
            let started = prepare_source(source, &queue, &metrics, &notifier).await?;
            prepared.push((source, started));
        }
    }

    // The audit trail opens before anything can move data.
    let trail = crate::audit::Trail::open(&config.audit)
        .with_context(|| format!("opening the audit trail in {}", config.audit.dir.display()))?;
    let audit = crate::audit::Recorder::new(trail);
    queue.set_recorder(audit.clone());

    // Upstream clients are built before anything runs: a bad certificate stops the start.
    let board = Arc::new(Board::default());
    let alerter = Arc::new(
        Alerter::new(&config.alert, metrics.clone())
            .context("setting up alert webhooks")?
            .with_audit(audit.clone()),
    );
    notifier.set_alerter(alerter.clone());
    let mut workers = Vec::new();
    for t in &config.tenants {
        if let Some(w) = prepare_worker(config, t)? {
            workers.push((t, w));
        }
    }

    let admin_api = Admin::new(
        queue.clone(),
        metrics.clone(),
        board.clone(),
        Arc::new(config.clone()),
    )
    .with_audit(audit.clone())
    .with_consent(consent.clone());
    let mut running = Running {
        mllp: Vec::new(),
        admin,
        queue: queue.clone(),
        metrics: metrics.clone(),
        board,
        admin_api: admin_api.clone(),
        audit: audit.clone(),
        config: config.clone(),
        alerter,
        consent,
        notifier,
        admin_tls,
        sources: HashMap::new(),
        modbus: Vec::new(),
        workers: HashMap::new(),
        heartbeats: Arc::default(),
        trigger,
        tasks: JoinSet::new(),
        names: HashMap::new(),
        deadline: config.shutdown_timeout,
    };
    let (r, m, s) = (ready.clone(), metrics.clone(), running.trigger.subscribe());
    let tls = running.admin_tls.as_ref().map(|(_, swap)| swap.clone());
    let h = running.tasks.spawn(health::run(
        admin_listener,
        tls,
        r,
        m,
        admin_api.router(),
        s,
    ));
    running.names.insert(h.id(), "admin listener".to_owned());
    for (t, w) in workers {
        running.spawn_worker(t, w);
    }
    {
        // Periodic checkpoints (an idle tail gets signed) and daily compression/retention.
        let (audit, mut shutdown) = (audit.clone(), running.trigger.subscribe());
        let h = running.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let Some(trail) = audit.trail().cloned() else {
                    return;
                };
                drop(trail.checkpoint());
                if n % 288 == 0 {
                    let r =
                        tokio::task::spawn_blocking(move || trail.maintain(jiff::Timestamp::now()))
                            .await;
                    if let Ok(Err(e)) = r {
                        tracing::error!(error = %e, "audit trail maintenance failed");
                    }
                }
                n += 1;
            }
        });
        running.names.insert(h.id(), "audit maintenance".to_owned());
    }
    if let Some(interval) = crate::systemd::watchdog_interval() {
        let h = running.tasks.spawn(watchdog(
            interval,
            queue.clone(),
            running.heartbeats.clone(),
            running.trigger.subscribe(),
        ));
        running.names.insert(h.id(), "watchdog".to_owned());
    }
    for (source, started) in prepared {
        running.spawn_source(source, started);
    }
    running.spawn_modbus();
    let source_count = config.sources.len();
    ready.set();
    // READY=1 only once the latch is set: queue open, every listener bound, workers started.
    if let Err(e) = crate::systemd::ready() {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
    let _ = crate::systemd::status(&format!("running: {source_count} sources"));
    tracing::info!(sources = source_count, admin = %admin, "caregate ready");
    Ok(running)
}

fn admin_server_config(t: &crate::config::AdminTls) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    mllp::tls::server_config(&mllp::TlsConfig {
        cert: t.cert.clone(),
        key: t.key.clone(),
        client_ca: None,
    })
    .context("admin.tls")
}

/// Sets up one source (binds it when it listens); nothing runs yet.
async fn prepare_source(
    source: &Source,
    queue: &Queue,
    metrics: &Arc<Metrics>,
    notifier: &Arc<crate::critical::Notifier>,
) -> anyhow::Result<Started> {
    let (name, tenant) = (source.name.as_str(), source.tenant.as_str());
    let context = || format!("starting source {name}");
    Ok(match &source.kind {
        SourceKind::Mllp(m) => Started::Mllp(
            mllp::Listener::bind(name, tenant, m, queue.clone(), metrics.clone())
                .await
                .with_context(context)?
                .with_critical(notifier.clone()),
        ),
        SourceKind::MllpSerial(m) => Started::MllpSerial(
            mllp::SerialSource::new(name, tenant, m, queue.clone(), metrics.clone())
                .with_critical(notifier.clone()),
        ),
        SourceKind::Astm(a) => Started::Astm(
            astm::serial::Source::bind(name, tenant, a, queue.clone(), metrics.clone())
                .await
                .with_context(context)?
                .with_critical(notifier.clone()),
        ),
        SourceKind::File(f) => Started::File(
            files::Source::new(name, tenant, f, queue.clone(), metrics.clone())
                .with_critical(notifier.clone()),
        ),
        SourceKind::Mqtt(m) => Started::Mqtt(Box::new(
            crate::mqtt::Source::new(name, tenant, m, queue.clone(), metrics.clone())
                .with_context(context)?
                .with_critical(notifier.clone()),
        )),
        // Pollers open nothing at start: an absent device is retried with backoff and must
        // not keep the gateway (and its other sources) from starting.
        SourceKind::Modbus(_) => anyhow::bail!("source {name}: modbus sources start as a bus"),
    })
}

/// A tenant's upstream client and conversion settings, or `None` when it only stores.
fn prepare_worker(
    config: &Config,
    t: &Tenant,
) -> anyhow::Result<Option<(Arc<Upstream>, Arc<pipeline::Conversion>)>> {
    let Some(up) = &t.upstream else {
        tracing::warn!(tenant = %t.id, "tenant has no [tenant.upstream]: its messages are stored, not forwarded");
        return Ok(None);
    };
    let upstream = Upstream::new(&t.id, up.clone())
        .with_context(|| format!("setting up the upstream of tenant {}", t.id))?;
    Ok(Some((
        Arc::new(upstream),
        Arc::new(conversion_of(config, t)?),
    )))
}

/// What a source's running task depends on: its own section and the tenant rules its
/// critical-value check uses. `Debug` covers every field, so any edit counts as a change.
fn source_fingerprint(config: &Config, source: &Source) -> String {
    let rules = config
        .tenant(&source.tenant)
        .map(|t| format!("{:?}{:?}", t.critical, t.identifier_systems));
    format!("{source:?}{rules:?}")
}

/// What a tenant's worker depends on: the tenant section and its sources' time zones.
fn tenant_fingerprint(config: &Config, tenant: &Tenant) -> String {
    let zones: Vec<_> = config
        .sources
        .iter()
        .filter(|s| s.tenant == tenant.id)
        .map(|s| (&s.name, &s.timezone))
        .collect();
    format!("{tenant:?}{zones:?}")
}

/// What the Modbus poll loops depend on: every modbus source and its tenant's rules (they
/// share serial buses, so they restart together).
fn modbus_fingerprint(config: &Config) -> String {
    config
        .sources
        .iter()
        .filter(|s| matches!(s.kind, SourceKind::Modbus(_)))
        .map(|s| source_fingerprint(config, s))
        .collect()
}

/// What a reload did; its `Display` is the log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sources started.
    pub added: Vec<String>,
    /// Sources stopped.
    pub removed: Vec<String>,
    /// Sources restarted with a changed section.
    pub restarted: Vec<String>,
    /// Listeners whose certificate files were read again.
    pub tls_reloaded: Vec<String>,
    /// Tenants whose forwarding worker was (re)started or stopped.
    pub tenants: Vec<String>,
    /// Sections changed and applied in place (`alert`: webhooks replaced; `queue`: limits).
    pub applied: Vec<&'static str>,
    /// Changed settings that only a restart applies (the running values stay).
    pub restart_required: Vec<&'static str>,
    /// Parts that could not be applied, with the reason (no patient data: config errors only).
    pub failed: Vec<(String, String)>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "added {:?}, removed {:?}, restarted {:?}, tls re-read {:?}, tenants {:?}",
            self.added, self.removed, self.restarted, self.tls_reloaded, self.tenants
        )?;
        if !self.applied.is_empty() {
            write!(f, ", applied in place {:?}", self.applied)?;
        }
        if !self.restart_required.is_empty() {
            write!(f, "; needs a restart to apply: {:?}", self.restart_required)?;
        }
        if !self.failed.is_empty() {
            let failed: Vec<String> = self
                .failed
                .iter()
                .map(|(part, why)| format!("{part}: {why}"))
                .collect();
            write!(f, "; failed: {failed:?}")?;
        }
        Ok(())
    }
}

impl Running {
    /// The bound address of the named MLLP or `astm-tcp` (`listen`) source.
    pub fn mllp_addr(&self, source: &str) -> Option<SocketAddr> {
        self.mllp.iter().find(|(n, _)| n == source).map(|(_, a)| *a)
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs `task` (built with an observer of `trigger`) as a part a reload can stop alone.
    fn spawn_part(
        &mut self,
        label: String,
        fingerprint: String,
        trigger: Trigger,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Part {
        let (tx, done) = tokio::sync::oneshot::channel::<()>();
        let h = self.tasks.spawn(async move {
            task.await;
            drop(tx);
        });
        self.names.insert(h.id(), label);
        Part {
            fingerprint,
            trigger,
            done,
        }
    }

    fn spawn_source(&mut self, source: &Source, started: Started) {
        let fingerprint = source_fingerprint(&self.config, source);
        let name = source.name.clone();
        let label = format!("source {name}");
        let trigger = self.trigger.child();
        let sd = trigger.subscribe();
        let mut addr = None;
        let mut tls = None;
        let part = match started {
            Started::Mllp(l) => {
                addr = Some(l.local_addr());
                if let (SourceKind::Mllp(m), Some(swap)) = (&source.kind, l.tls_swap()) {
                    tls = m.tls.clone().map(|t| (t, swap));
                }
                self.spawn_part(label, fingerprint, trigger, l.run(sd))
            }
            Started::MllpSerial(s) => self.spawn_part(label, fingerprint, trigger, s.run(sd)),
            Started::Astm(s) => {
                addr = s.local_addr();
                self.spawn_part(label, fingerprint, trigger, s.run(sd))
            }
            Started::File(s) => self.spawn_part(label, fingerprint, trigger, s.run(sd)),
            Started::Mqtt(s) => self.spawn_part(label, fingerprint, trigger, s.run(sd)),
        };
        if let Some(a) = addr {
            self.mllp.retain(|(n, _)| n != &name);
            self.mllp.push((name.clone(), a));
        }
        self.sources.insert(name, SourcePart { part, tls });
    }

    fn spawn_modbus(&mut self) {
        let config = self.config.clone();
        let sources = config.sources.iter().filter_map(|s| match &s.kind {
            SourceKind::Modbus(m) => Some((s.name.as_str(), s.tenant.as_str(), m)),
            _ => None,
        });
        let fingerprint = modbus_fingerprint(&config);
        for bus in crate::modbus::Bus::plan(sources) {
            let bus = bus.with_critical(self.notifier.clone());
            let label = format!("source {}", bus.sources().join(", "));
            let trigger = self.trigger.child();
            let task = bus.run(
                self.queue.clone(),
                self.metrics.clone(),
                trigger.subscribe(),
            );
            let part = self.spawn_part(label, fingerprint.clone(), trigger, task);
            self.modbus.push(part);
        }
    }

    fn spawn_worker(
        &mut self,
        tenant: &Tenant,
        (upstream, conversion): (Arc<Upstream>, Arc<pipeline::Conversion>),
    ) {
        let request_timeout = upstream.config().timeout;
        let services = pipeline::Services {
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
            board: self.board.clone(),
            alerter: self.alerter.clone(),
            audit: self.audit.clone(),
            consent: self.consent.clone(),
        };
        let trigger = self.trigger.child();
        // The tenant's consent pull (when configured) shares the worker's life: a reload that
        // changes the tenant restarts both.
        let pull = upstream
            .config()
            .consent_pull
            .map(|interval| crate::consent_pull::Puller {
                upstream: upstream.clone(),
                registry: self.consent.clone(),
                queue: self.queue.clone(),
                audit: self.audit.clone(),
                interval,
            });
        let w = Worker::new(upstream, services, conversion, trigger.subscribe());
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.id.clone(), (w.heartbeat(), request_timeout));
        let label = format!("forwarding for tenant {}", tenant.id);
        let fingerprint = tenant_fingerprint(&self.config, tenant);
        let sd = trigger.subscribe();
        let task = async move {
            match pull {
                Some(p) => {
                    tokio::join!(w.run(), p.run(sd));
                }
                None => w.run().await,
            }
        };
        let part = self.spawn_part(label, fingerprint, trigger, task);
        self.workers.insert(tenant.id.clone(), part);
    }

    /// Re-reads the configuration file the gateway started from and applies it (SIGHUP).
    pub async fn reload_from_file(&mut self) -> Result<ReloadReport, crate::config::Error> {
        let path = self.config.path.clone();
        match Config::load(&path) {
            Ok(new) => Ok(self.reload(new).await),
            Err(e) => {
                reload_audit(&self.audit, Some("invalid-config"));
                Err(e)
            }
        }
    }

    /// Applies a new, validated configuration in place:
    /// - sources added, removed or changed start and stop; a stopping source stops accepting
    ///   and finishes the message in hand (commit + ACK), as at shutdown, so nothing in flight
    ///   is dropped; a changed source stops before its replacement binds (its port may stay);
    /// - listeners' TLS certificate files (MLLP and admin) are read again: new connections get
    ///   the new certificate, open ones keep theirs;
    /// - a tenant whose section changed gets a new forwarding worker (the old one finishes its
    ///   request and releases its leases first); operator tokens apply at once;
    /// - `[alert]` webhooks are replaced (later alerts go to the new list) and `[queue]` limits
    ///   apply from the next write;
    /// - `data_dir`, `[admin] listen` and `[audit]` need a restart: the report names them and
    ///   the running values stay.
    ///
    /// What the new file needs and cannot have (TLS files that do not load, an upstream or
    /// webhook client that cannot be built) refuses the whole reload before anything is touched.
    pub async fn reload(&mut self, new: Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        let old = std::mem::replace(&mut self.config, new.clone());
        // 1. Everything that can fail without a port, before anything is touched.
        let mut failed = Vec::new();
        for s in &new.sources {
            if let SourceKind::Mllp(m) = &s.kind {
                if let Some(t) = &m.tls {
                    if let Err(e) = mllp::tls::server_config(t) {
                        failed.push((format!("source {}", s.name), e.to_string()));
                    }
                }
            }
        }
        let mut workers = HashMap::new();
        for t in &new.tenants {
            let changed = old
                .tenant(&t.id)
                .is_none_or(|o| tenant_fingerprint(&old, o) != tenant_fingerprint(&new, t));
            if changed {
                match prepare_worker(&new, t) {
                    Ok(w) => {
                        workers.insert(t.id.clone(), w);
                    }
                    Err(e) => failed.push((format!("tenant {}", t.id), format!("{e:#}"))),
                }
            }
        }
        let admin_tls = match &new.admin.tls {
            Some(t) => match admin_server_config(t) {
                Ok(c) => Some(c),
                Err(e) => {
                    failed.push(("admin.tls".to_owned(), format!("{e:#}")));
                    None
                }
            },
            None => None,
        };
        let webhooks = if format!("{:?}", old.alert) == format!("{:?}", new.alert) {
            None
        } else {
            match crate::alert::Webhooks::build(&new.alert) {
                Ok(h) => Some(h),
                Err(e) => {
                    failed.push(("alert".to_owned(), format!("{e:#}")));
                    None
                }
            }
        };
        if !failed.is_empty() {
            self.config = old;
            report.failed = failed;
            reload_audit(&self.audit, Some("refused"));
            return report;
        }
        let notifier = Arc::new(crate::critical::Notifier::new(&new));
        notifier.set_alerter(self.alerter.clone());
        self.notifier = notifier;

        // 2. Sources: stop the removed and changed ones, start the added and changed ones.
        let mut to_start = Vec::new();
        let names: Vec<String> = self.sources.keys().cloned().collect();
        for name in names {
            let still = new.sources.iter().find(|s| s.name == name);
            let changed = still.is_none_or(|s| {
                matches!(s.kind, SourceKind::Modbus(_))
                    || self
                        .sources
                        .get(&name)
                        .is_some_and(|p| p.part.fingerprint != source_fingerprint(&new, s))
            });
            if !changed {
                continue;
            }
            if let Some(p) = self.sources.remove(&name) {
                if !p.part.stop(self.deadline).await {
                    report.failed.push((
                        format!("source {name}"),
                        "did not stop within the shutdown timeout".to_owned(),
                    ));
                }
                self.mllp.retain(|(n, _)| n != &name);
            }
            match still {
                Some(s) if !matches!(s.kind, SourceKind::Modbus(_)) => {
                    report.restarted.push(name.clone());
                    to_start.push(s.clone());
                }
                _ => report.removed.push(name.clone()),
            }
        }
        for s in &new.sources {
            if !matches!(s.kind, SourceKind::Modbus(_))
                && !self.sources.contains_key(&s.name)
                && !to_start.iter().any(|t| t.name == s.name)
            {
                report.added.push(s.name.clone());
                to_start.push(s.clone());
            }
        }
        for s in &to_start {
            match prepare_source(s, &self.queue, &self.metrics, &self.notifier).await {
                Ok(started) => self.spawn_source(s, started),
                Err(e) => {
                    tracing::error!(source = %s.name, error = %format!("{e:#}"), "reload: source not started");
                    report
                        .failed
                        .push((format!("source {}", s.name), format!("{e:#}")));
                }
            }
        }
        // Unchanged TLS listeners: the certificate files are read again.
        for (name, p) in &self.sources {
            if to_start.iter().any(|s| &s.name == name) {
                continue;
            }
            if let Some((cfg, swap)) = &p.tls {
                match mllp::tls::server_config(cfg) {
                    Ok(c) => {
                        swap.replace(c);
                        report.tls_reloaded.push(name.clone());
                    }
                    Err(e) => report
                        .failed
                        .push((format!("source {name}"), e.to_string())),
                }
            }
        }
        if let (Some(c), Some((_, swap))) = (admin_tls, &self.admin_tls) {
            swap.replace(c);
            report.tls_reloaded.push("admin".to_owned());
        }
        // Modbus loops: restarted together when any modbus source changed.
        if modbus_fingerprint(&old) != modbus_fingerprint(&new) {
            for p in std::mem::take(&mut self.modbus) {
                if !p.stop(self.deadline).await {
                    report.failed.push((
                        "modbus".to_owned(),
                        "did not stop within the shutdown timeout".to_owned(),
                    ));
                }
            }
            for s in &new.sources {
                if matches!(s.kind, SourceKind::Modbus(_)) {
                    let existed = old.sources.iter().any(|o| o.name == s.name);
                    if existed {
                        report.restarted.push(s.name.clone())
                    } else {
                        report.added.push(s.name.clone())
                    }
                }
            }
            for o in &old.sources {
                if matches!(o.kind, SourceKind::Modbus(_))
                    && !new.sources.iter().any(|s| s.name == o.name)
                {
                    report.removed.push(o.name.clone());
                }
            }
            self.spawn_modbus();
        }

        // 3. Forwarding workers of tenants removed or changed.
        let tenants: Vec<String> = self.workers.keys().cloned().collect();
        for id in tenants {
            let keep = new.tenant(&id).is_some_and(|t| {
                !workers.contains_key(&id)
                    && old
                        .tenant(&id)
                        .is_some_and(|o| tenant_fingerprint(&old, o) == tenant_fingerprint(&new, t))
            });
            if keep {
                continue;
            }
            if let Some(p) = self.workers.remove(&id) {
                self.heartbeats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if !p.stop(self.deadline).await {
                    report.failed.push((
                        format!("tenant {id}"),
                        "worker did not stop within the shutdown timeout".to_owned(),
                    ));
                }
                report.tenants.push(id.clone());
            }
        }
        for t in &new.tenants {
            if let Some(w) = workers.remove(&t.id) {
                if let Some(w) = w {
                    self.spawn_worker(t, w);
                }
                if !report.tenants.contains(&t.id) {
                    report.tenants.push(t.id.clone());
                }
            }
        }

        // 4. What applies at once, and what waits for a restart.
        if let Some(hooks) = webhooks {
            self.alerter.replace_webhooks(hooks);
            report.applied.push("alert");
        }
        if format!("{:?}", old.queue) != format!("{:?}", new.queue) {
            self.queue.set_limits(new.queue);
            report.applied.push("queue");
        }
        self.admin_api.set_config(Arc::new(new.clone()));
        self.deadline = new.shutdown_timeout;
        report.restart_required = restart_required(&old, &new);
        for v in [
            &mut report.added,
            &mut report.removed,
            &mut report.restarted,
            &mut report.tls_reloaded,
            &mut report.tenants,
        ] {
            v.sort();
        }
        let failure = if report.failed.is_empty() {
            None
        } else {
            Some("partial")
        };
        reload_audit(&self.audit, failure);
        report
    }

    /// Ordered shutdown within the configured deadline. Returns the names of tasks that did
    /// not finish in time (empty when clean).
    pub async fn stop(mut self) -> Vec<String> {
        let _ = crate::systemd::stopping();
        self.trigger.fire();
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(Ok((id, ())))) => {
                    self.names.remove(&id);
                }
                Ok(Some(Err(e))) => {
                    let name = self.names.remove(&e.id()).unwrap_or_default();
                    tracing::error!(task = %name, error = %e, "task ended abnormally");
                }
                Ok(None) => break,
                Err(_) => {
                    let mut late: Vec<String> = self.names.values().cloned().collect();
                    late.sort();
                    tracing::error!(still_running = ?late, "shutdown deadline passed; aborting");
                    self.tasks.abort_all();
                    return late;
                }
            }
        }
        // After every task: the shutdown checkpoint signs the tail.
        self.audit.close().await;
        tracing::info!("caregate stopped");
        Vec::new()
    }
}

/// Settings that differ and that only a restart applies.
fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.data_dir != new.data_dir {
        out.push("data_dir");
    }
    if old.admin.listen != new.admin.listen {
        out.push("admin.listen");
    }
    if old.admin.tls.is_some() != new.admin.tls.is_some() {
        out.push("admin.tls");
    }
    if format!("{:?}", old.audit) != format!("{:?}", new.audit) {
        out.push("audit");
    }
    out
}

/// Runs until `shutdown` completes (a signal in production), then stops in order. SIGHUP
/// (`systemctl reload caregate`) re-reads the file: an invalid one is refused with an error
/// line and the running configuration stays; a valid one is applied ([`Running::reload`]).
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut running = start(&config, options).await?;
    let mut hup = signal(SignalKind::hangup()).ok();
    tokio::pin!(shutdown);
    loop {
        let hangup = async {
            match &mut hup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = hangup => {}
        }
        let _ = crate::systemd::reloading();
        match running.reload_from_file().await {
            Ok(report) if report.failed.is_empty() => {
                tracing::info!(config = %config.path.display(), %report, "SIGHUP: configuration reloaded");
            }
            Ok(report) => {
                tracing::error!(config = %config.path.display(), %report, "SIGHUP: configuration reload incomplete");
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "SIGHUP: the configuration file is invalid and was refused; the running configuration stays"
                );
            }
        }
        let _ = crate::systemd::ready();
    }
    let queue = running.queue.clone();
    let late = running.stop().await;
    // A clean close spares the next start a repair and lets `queue stats` read offline.
    queue.close().await;
    if late.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "shutdown deadline passed with {} tasks still running",
            late.len()
        )
    }
}

fn reload_audit(audit: &crate::audit::Recorder, failure: Option<&str>) {
    audit.record(
        crate::audit::Action::ConfigReloaded,
        crate::audit::ActorKind::System,
        crate::audit::Purpose::Operations,
        crate::audit::Event {
            actor: "sighup",
            failure,
            ..crate::audit::Event::default()
        },
    );
}

/// What conversion needs for one tenant, from the configuration.
fn conversion_of(config: &Config, t: &Tenant) -> anyhow::Result<pipeline::Conversion> {
    let zone = |name: &Option<String>| -> anyhow::Result<jiff::tz::TimeZone> {
        Ok(match name {
            Some(z) => jiff::tz::TimeZone::get(z).with_context(|| format!("time zone {z}"))?,
            None => jiff::tz::TimeZone::system(),
        })
    };
    if t.timezone.is_none() {
        // A time without offset whose MSH-7 has none either is then read in this machine's
        // zone: right only if the box runs in the facility's zone.
        tracing::warn!(tenant = %t.id, zone = %jiff::tz::TimeZone::system().iana_name().unwrap_or("unknown"),
            "tenant sets no timezone: times without an offset are read in this machine's zone; set [[tenant]] timezone");
    }
    let mut source_zones = HashMap::new();
    for s in config.sources.iter().filter(|s| s.tenant == t.id) {
        if s.timezone.is_some() {
            source_zones.insert(s.name.clone(), zone(&s.timezone)?);
        }
    }
    Ok(pipeline::Conversion {
        tenant: t.id.clone(),
        timezone: zone(&t.timezone)?,
        source_zones,
        identifier_systems: t.identifier_systems.clone(),
        system_base: crate::convert::cli::DEFAULT_SYSTEM_BASE.to_owned(),
        consent: t.consent,
    })
}

/// Feeds the systemd watchdog only while the data path is alive: the queue's writer thread
/// answers (not stuck in a commit) and every forwarding worker has beaten recently (a worker
/// blocked in a request gets the request timeout as grace). A stuck part stops the feeding,
/// and systemd restarts the service; what was stuck is logged.
async fn watchdog(
    interval: Duration,
    queue: Queue,
    workers: Heartbeats,
    mut shutdown: shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let mut stuck = Vec::new();
        if !queue.ping(interval).await {
            stuck.push("queue writer".to_owned());
        }
        let now = pipeline::epoch_seconds();
        for (tenant, (beat, timeout)) in workers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let age = now - beat.load(std::sync::atomic::Ordering::Relaxed);
            let grace = (timeout.as_secs() + 2 * interval.as_secs().max(1)) as i64;
            if age > grace {
                stuck.push(format!("forwarding for tenant {tenant} (silent {age}s)"));
            }
        }
        if stuck.is_empty() {
            let (messages, _) = queue.depth();
            let _ = crate::systemd::status(&format!("running: {messages} messages queued"));
            if let Err(e) = crate::systemd::watchdog() {
                tracing::debug!(error = %e, "sd_notify WATCHDOG failed");
            }
        } else {
            tracing::error!(stuck = ?stuck, "not feeding the systemd watchdog: part of the data path is stuck");
        }
    }
}
