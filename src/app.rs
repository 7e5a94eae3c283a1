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
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::alert::Alerter;
use crate::config::{Config, SourceKind};
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
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(|t| {
            crate::mllp::tls::server_config(&crate::mllp::TlsConfig {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: None,
            })
        })
        .transpose()
        .context("admin.tls")?;
    let admin_listener = health::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.listen))?;
    let admin = admin_listener.local_addr().unwrap_or(config.admin.listen);

    let notifier = Arc::new(crate::critical::Notifier::new(config));
    let consent = Arc::new(
        crate::consent::Registry::open(&config.data_dir).context("opening the consent registry")?,
    );
    let mut listeners = Vec::new();
    let mut mqtt_sources = Vec::new();
    let mut modbus_sources = Vec::new();
    for source in &config.sources {
        match &source.kind {
            // Pollers open nothing at start: an absent device is retried with backoff and
            // must not keep the gateway (and its other sources) from starting.
            SourceKind::Modbus(m) => {
                modbus_sources.push((source.name.as_str(), source.tenant.as_str(), m));
            }
            SourceKind::Mllp(m) => {
                let l = mllp::Listener::bind(
                    &source.name,
                    &source.tenant,
                    m,
                    queue.clone(),
                    metrics.clone(),
                )
                .await
                .with_context(|| format!("starting source {}", source.name))?
                .with_critical(notifier.clone());
                listeners.push((source.name.clone(), Started::Mllp(l)));
            }
            SourceKind::MllpSerial(m) => {
                let s = mllp::SerialSource::new(
                    &source.name,
                    &source.tenant,
                    m,
                    queue.clone(),
                    metrics.clone(),
                )
                .with_critical(notifier.clone());
                listeners.push((source.name.clone(), Started::MllpSerial(s)));
            }
            SourceKind::Astm(a) => {
                let s = astm::serial::Source::bind(
                    &source.name,
                    &source.tenant,
                    a,
                    queue.clone(),
                    metrics.clone(),
                )
                .await
                .with_context(|| format!("starting source {}", source.name))?
                .with_critical(notifier.clone());
                listeners.push((source.name.clone(), Started::Astm(s)));
            }
            SourceKind::File(f) => {
                let s = files::Source::new(
                    &source.name,
                    &source.tenant,
                    f,
                    queue.clone(),
                    metrics.clone(),
                );
                listeners.push((source.name.clone(), Started::File(s)));
            }
            SourceKind::Mqtt(m) => {
                let s = crate::mqtt::Source::new(
                    &source.name,
                    &source.tenant,
                    m,
                    queue.clone(),
                    metrics.clone(),
                )
                .with_context(|| format!("starting source {}", source.name))?;
                mqtt_sources.push((source.name.clone(), s));
            }
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
        let Some(up) = &t.upstream else {
            tracing::warn!(tenant = %t.id, "tenant has no [tenant.upstream]: its messages are stored, not forwarded");
            continue;
        };
        let upstream = Upstream::new(&t.id, up.clone())
            .with_context(|| format!("setting up the upstream of tenant {}", t.id))?;
        workers.push((
            t.id.clone(),
            Arc::new(upstream),
            Arc::new(conversion_of(config, t)?),
        ));
    }

    let config_arc = Arc::new(config.clone());
    let admin_api = Admin::new(queue.clone(), metrics.clone(), board.clone(), config_arc)
        .with_audit(audit.clone())
        .with_consent(consent.clone());
    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    let (r, m, s) = (ready.clone(), metrics.clone(), trigger.subscribe());
    let h = tasks.spawn(health::run(
        admin_listener,
        admin_tls,
        r,
        m,
        admin_api.clone().router(),
        s,
    ));
    names.insert(h.id(), "admin listener".to_owned());
    let mut heartbeats = Vec::new();
    for (tenant, upstream, conversion) in workers {
        let request_timeout = upstream.config().timeout;
        let services = pipeline::Services {
            queue: queue.clone(),
            metrics: metrics.clone(),
            board: board.clone(),
            alerter: alerter.clone(),
            audit: audit.clone(),
            consent: consent.clone(),
        };
        let w = Worker::new(upstream, services, conversion, trigger.subscribe());
        heartbeats.push((tenant.clone(), w.heartbeat(), request_timeout));
        let h = tasks.spawn(w.run());
        names.insert(h.id(), format!("forwarding for tenant {tenant}"));
    }
    {
        // Periodic checkpoints (an idle tail gets signed) and daily compression/retention.
        let (audit, mut shutdown) = (audit.clone(), trigger.subscribe());
        let h = tasks.spawn(async move {
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
        names.insert(h.id(), "audit maintenance".to_owned());
    }
    if let Some(interval) = crate::systemd::watchdog_interval() {
        let h = tasks.spawn(watchdog(
            interval,
            queue.clone(),
            heartbeats,
            trigger.subscribe(),
        ));
        names.insert(h.id(), "watchdog".to_owned());
    }
    let mut mllp_addrs = Vec::new();
    let source_count = listeners.len();
    for (name, l) in listeners {
        let sd = trigger.subscribe();
        let h = match l {
            Started::Mllp(l) => {
                mllp_addrs.push((name.clone(), l.local_addr()));
                tasks.spawn(l.run(sd))
            }
            Started::MllpSerial(s) => tasks.spawn(s.run(sd)),
            Started::Astm(s) => {
                if let Some(a) = s.local_addr() {
                    mllp_addrs.push((name.clone(), a));
                }
                tasks.spawn(s.run(sd))
            }
            Started::File(s) => tasks.spawn(s.run(sd)),
        };
        names.insert(h.id(), format!("source {name}"));
    }
    for (name, s) in mqtt_sources {
        let h = tasks.spawn(s.run(trigger.subscribe()));
        names.insert(h.id(), format!("source {name}"));
    }
    for bus in crate::modbus::Bus::plan(modbus_sources) {
        let label = format!("source {}", bus.sources().join(", "));
        let h = tasks.spawn(bus.run(queue.clone(), metrics.clone(), trigger.subscribe()));
        names.insert(h.id(), label);
    }
    ready.set();
    // READY=1 only once the latch is set: queue open, every listener bound, workers started.
    if let Err(e) = crate::systemd::ready() {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
    let _ = crate::systemd::status(&format!("running: {source_count} sources"));
    tracing::info!(sources = source_count, admin = %admin, "caregate ready");
    Ok(Running {
        mllp: mllp_addrs,
        admin,
        queue,
        metrics,
        board,
        admin_api,
        audit,
        trigger,
        tasks,
        names,
        deadline: config.shutdown_timeout,
    })
}

impl Running {
    /// The bound address of the named MLLP or `astm-tcp` (`listen`) source.
    pub fn mllp_addr(&self, source: &str) -> Option<SocketAddr> {
        self.mllp.iter().find(|(n, _)| n == source).map(|(_, a)| *a)
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

/// Runs until `shutdown` completes (a signal in production), then stops in order.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(&config, options).await?;
    // SIGHUP (systemctl reload): the new file is validated; applying it in place is not built
    // yet, so a valid change is reported as needing a restart and an invalid one is refused.
    // Either way the running configuration stays and no message is affected.
    let path = config.path.clone();
    let audit = running.audit.clone();
    let reloads = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return std::future::pending::<()>().await;
        };
        while hup.recv().await.is_some() {
            match Config::load(&path) {
                Ok(_) => {
                    tracing::warn!(
                        config = %path.display(),
                        "SIGHUP: the configuration file is valid, but applying changes in place is not built yet: restart caregate to apply them (the running configuration stays)"
                    );
                    reload_audit(&audit, Some("restart-required"));
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "SIGHUP: the configuration file is invalid and was refused; the running configuration stays"
                    );
                    reload_audit(&audit, Some("invalid-config"));
                }
            }
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = reloads => {}
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
fn conversion_of(
    config: &Config,
    t: &crate::config::Tenant,
) -> anyhow::Result<pipeline::Conversion> {
    let zone = |name: &Option<String>| -> anyhow::Result<jiff::tz::TimeZone> {
        Ok(match name {
            Some(z) => jiff::tz::TimeZone::get(z).with_context(|| format!("time zone {z}"))?,
            None => jiff::tz::TimeZone::system(),
        })
    };
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
    workers: Vec<(String, Arc<std::sync::atomic::AtomicI64>, Duration)>,
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
        for (tenant, beat, timeout) in &workers {
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
