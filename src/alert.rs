//! Alerts: an upstream failing for longer than its `alert_after` (outage, repeated while it
//! lasts, then a recovery notice). Each alert is an error log line, a metric and a JSON POST to
//! every `[[alert.webhook]]`. Payloads name tenant, upstream, since, queue depth and the last
//! error class: never patient data.
//!
//! [`Outage`] is the pure state machine (time is an input); [`Alerter`] delivers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// Validated `[alert]`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Webhooks, each POSTed every alert.
    pub webhooks: Vec<Webhook>,
}

/// One `[[alert.webhook]]`.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where to POST (http or https: the payload holds no patient data).
    pub url: reqwest::Url,
    /// Extra trusted roots for an https webhook.
    pub ca_file: Option<PathBuf>,
    /// `Authorization: Bearer` from this file.
    pub bearer_token_file: Option<PathBuf>,
}

/// File form of `[alert]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    webhook: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    ca_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
}

impl RawConfig {
    /// Validates; errors are `(key relative to [alert], message)`.
    pub(crate) fn validate(self, base: &std::path::Path) -> Result<Config, (String, String)> {
        let mut webhooks = Vec::new();
        for (i, w) in self.webhook.into_iter().enumerate() {
            let url = reqwest::Url::parse(&w.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| (format!("webhook[{i}].url"), "not an http(s) URL".to_owned()))?;
            webhooks.push(Webhook {
                url,
                ca_file: w.ca_file.map(|p| crate::config::resolve(base, &p)),
                bearer_token_file: w
                    .bearer_token_file
                    .map(|p| crate::config::resolve(base, &p)),
            });
        }
        Ok(Config { webhooks })
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An upstream has been failing for longer than `alert_after`.
    UpstreamDown,
    /// The same outage, still going on.
    UpstreamStillDown,
    /// The upstream took a delivery again.
    UpstreamRecovered,
    /// A message with a critical result (panic value) was stored: see [`CriticalAlert`].
    CriticalResult,
}

impl Kind {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UpstreamDown => "upstream-down",
            Kind::UpstreamStillDown => "upstream-still-down",
            Kind::UpstreamRecovered => "upstream-recovered",
            Kind::CriticalResult => "critical-result",
        }
    }
}

/// The webhook payload.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// What happened.
    pub kind: Kind,
    /// `critical` for outages, `info` for recovery.
    pub severity: &'static str,
    /// Tenant.
    pub tenant: String,
    /// Upstream base URL.
    pub upstream: String,
    /// When the failure streak began (RFC 3339).
    pub since: String,
    /// Messages stored for this tenant and not yet delivered.
    pub queue_depth: u64,
    /// Last error class (status code or transport error).
    pub last_error: String,
    /// When the alert was made (RFC 3339).
    pub time: String,
    /// The box that raised it.
    pub host: String,
}

/// The webhook payload of a critical result: ids, codes and a keyed patient hash, never the
/// value, a name or an identifier in clear.
#[derive(Debug, Clone, Serialize)]
pub struct CriticalAlert {
    /// Always [`Kind::CriticalResult`].
    pub kind: Kind,
    /// Always `critical`.
    pub severity: &'static str,
    /// Tenant.
    pub tenant: String,
    /// Source the message came in on.
    pub source: String,
    /// Queue envelope id.
    pub envelope_id: u64,
    /// MSH-10 (empty for ASTM and readings).
    pub control_id: String,
    /// The critical results.
    pub results: Vec<CriticalResult>,
    /// Keyed hash of the patient identifier (the audit trail's patient reference), when the
    /// message names a patient.
    pub patient_ref: Option<String>,
    /// When the message was received (RFC 3339).
    pub received_at: String,
    /// When the alert was made (RFC 3339).
    pub time: String,
    /// The box that raised it.
    pub host: String,
}

/// One critical result in a [`CriticalAlert`].
#[derive(Debug, Clone, Serialize)]
pub struct CriticalResult {
    /// Test code.
    pub code: String,
    /// Coding system, when known.
    pub system: Option<String>,
    /// The flag (`HH`, `LL`, `AA`) or the configured rule (`above 6.0`).
    pub flag: String,
}

/// Outage tracking for one upstream.
#[derive(Debug, Clone)]
pub struct Outage {
    after: Duration,
    repeat: Duration,
    since: Option<(Instant, jiff::Timestamp)>,
    last_alert: Option<Instant>,
}

/// What [`Outage`] says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Quiet,
    /// Raise (or repeat) the outage alert.
    Raise(Kind),
    /// Send the recovery notice.
    Recovered,
}

impl Outage {
    /// Alerts after `after` of continuous failure, repeats every `repeat`.
    pub fn new(after: Duration, repeat: Duration) -> Outage {
        Outage {
            after,
            repeat,
            since: None,
            last_alert: None,
        }
    }

    /// When the current failure streak began.
    pub fn since(&self) -> Option<jiff::Timestamp> {
        self.since.map(|(_, t)| t)
    }

    /// Whether an alert is active.
    pub fn active(&self) -> bool {
        self.last_alert.is_some()
    }

    /// A request failed at `now`.
    pub fn failure(&mut self, now: Instant, wall: jiff::Timestamp) -> Step {
        if self.since.is_none() {
            self.since = Some((now, wall));
        }
        self.tick(now)
    }

    /// Time passed while failing (call while waiting to retry).
    pub fn tick(&mut self, now: Instant) -> Step {
        let Some((start, _)) = self.since else {
            return Step::Quiet;
        };
        match self.last_alert {
            None if now.saturating_duration_since(start) >= self.after => {
                self.last_alert = Some(now);
                Step::Raise(Kind::UpstreamDown)
            }
            Some(last) if now.saturating_duration_since(last) >= self.repeat => {
                self.last_alert = Some(now);
                Step::Raise(Kind::UpstreamStillDown)
            }
            _ => Step::Quiet,
        }
    }

    /// When the next alert is due, if failing.
    pub fn next_due(&self) -> Option<Instant> {
        let (start, _) = self.since?;
        Some(match self.last_alert {
            None => start + self.after,
            Some(last) => last + self.repeat,
        })
    }

    /// A request succeeded (or the server answered at all).
    pub fn success(&mut self) -> Step {
        let was = self.last_alert.is_some();
        self.since = None;
        self.last_alert = None;
        if was { Step::Recovered } else { Step::Quiet }
    }
}

/// Delivers alerts: log line, metrics, webhooks (each POST in its own task, retried a few
/// times, so a slow alert receiver never holds up forwarding).
pub struct Alerter {
    /// Replaced whole by a reload; an alert takes the list current when it is sent.
    hooks: std::sync::RwLock<Arc<Hooks>>,
    metrics: Arc<Metrics>,
    host: String,
    audit: crate::audit::Recorder,
}

type Hooks = Vec<(Webhook, reqwest::Client)>;

/// The webhooks of an `[alert]`, with their HTTP clients, ready to replace the running ones.
pub struct Webhooks(Hooks);

impl Webhooks {
    /// One HTTP client per webhook; fails when a `ca_file` does not load.
    pub fn build(config: &Config) -> anyhow::Result<Webhooks> {
        let mut hooks = Vec::new();
        for w in &config.webhooks {
            let tls = crate::forward::client::tls_config(w.ca_file.as_deref(), None)?;
            let http = reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()?;
            hooks.push((w.clone(), http));
        }
        Ok(Webhooks(hooks))
    }
}

impl Alerter {
    /// Builds one HTTP client per webhook.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Alerter> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Ok(Alerter {
            hooks: std::sync::RwLock::new(Arc::new(Webhooks::build(config)?.0)),
            metrics,
            host,
            audit: crate::audit::Recorder::disabled(),
        })
    }

    /// Applies a reloaded `[alert]` ([`Webhooks::build`]): later alerts go to the new
    /// webhooks; POSTs already under way finish against the old ones.
    pub fn replace_webhooks(&self, hooks: Webhooks) {
        *self.hooks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hooks.0);
    }

    /// Records every alert in the audit trail.
    pub fn with_audit(mut self, audit: crate::audit::Recorder) -> Alerter {
        self.audit = audit;
        self
    }

    /// Logs, counts and POSTs `alert`.
    pub fn send(&self, mut alert: Alert) {
        alert.host.clone_from(&self.host);
        let labels = [
            ("tenant", alert.tenant.clone()),
            ("kind", alert.kind.as_str().to_owned()),
        ];
        self.metrics.alerts.get_or_create(&labels).inc();
        let active = matches!(alert.kind, Kind::UpstreamDown | Kind::UpstreamStillDown);
        self.audit.record(
            crate::audit::Action::AlertRaised,
            crate::audit::ActorKind::System,
            crate::audit::Purpose::Operations,
            crate::audit::Event {
                tenant: Some(&alert.tenant),
                actor: "caregate",
                message_type: Some(alert.kind.as_str()),
                ..crate::audit::Event::default()
            },
        );
        self.metrics
            .alert_active
            .get_or_create(&[
                ("tenant", alert.tenant.clone()),
                ("kind", "upstream-down".to_owned()),
            ])
            .set(i64::from(active));
        if active {
            tracing::error!(
                alert = alert.kind.as_str(),
                tenant = %alert.tenant,
                upstream = %alert.upstream,
                since = %alert.since,
                queue_depth = alert.queue_depth,
                last_error = %alert.last_error,
                "upstream outage"
            );
        } else {
            tracing::warn!(
                alert = alert.kind.as_str(),
                tenant = %alert.tenant,
                upstream = %alert.upstream,
                since = %alert.since,
                "upstream recovered"
            );
        }
        self.post(&alert);
    }

    /// Logs, counts, records and POSTs a critical-result alert at once (not waiting for
    /// anything on the forwarding side).
    pub fn send_critical(&self, mut alert: CriticalAlert) {
        alert.host.clone_from(&self.host);
        self.metrics
            .alerts
            .get_or_create(&[
                ("tenant", alert.tenant.clone()),
                ("kind", Kind::CriticalResult.as_str().to_owned()),
            ])
            .inc();
        self.metrics
            .critical_results
            .get_or_create(&[
                ("tenant", alert.tenant.clone()),
                ("source", alert.source.clone()),
            ])
            .inc();
        let codes: Vec<String> = alert
            .results
            .iter()
            .map(|r| format!("{} {}", r.code, r.flag))
            .collect();
        tracing::error!(
            alert = Kind::CriticalResult.as_str(),
            tenant = %alert.tenant,
            source = %alert.source,
            envelope = alert.envelope_id,
            control_id = %alert.control_id,
            results = %codes.join(", "),
            patient_ref = alert.patient_ref.as_deref().unwrap_or("-"),
            "critical result received"
        );
        self.post(&alert);
        self.audit.record(
            crate::audit::Action::AlertRaised,
            crate::audit::ActorKind::System,
            crate::audit::Purpose::Treatment,
            crate::audit::Event {
                tenant: Some(&alert.tenant),
                actor: "caregate",
                message_type: Some(Kind::CriticalResult.as_str()),
                control_id: (!alert.control_id.is_empty()).then_some(alert.control_id.as_str()),
                envelope_id: Some(alert.envelope_id),
                ..crate::audit::Event::default()
            },
        );
    }

    /// Keyed hash of a patient identifier `system|value` (the audit trail's key), when the
    /// trail is on.
    pub fn patient_ref(&self, system_value: &str) -> Option<String> {
        self.audit.patient_ref(system_value).map(|r| r.to_string())
    }

    fn post<T: Serialize + Clone + Send + Sync + 'static>(&self, alert: &T) {
        let hooks = self.hooks.read().unwrap_or_else(|p| p.into_inner()).clone();
        for (hook, http) in hooks.iter() {
            let (hook, http, alert) = (hook.clone(), http.clone(), alert.clone());
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                for attempt in 0..3u32 {
                    let mut req = http.post(hook.url.clone()).json(&alert);
                    if let Some(f) = &hook.bearer_token_file {
                        if let Ok(t) = std::fs::read_to_string(f) {
                            req = req.bearer_auth(t.trim());
                        }
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) => tracing::warn!(
                            webhook = %hook.url.host_str().unwrap_or_default(),
                            status = r.status().as_u16(),
                            attempt,
                            "alert webhook refused the alert"
                        ),
                        Err(e) => tracing::warn!(
                            webhook = %hook.url.host_str().unwrap_or_default(),
                            error = %crate::forward::client::describe(&e),
                            attempt,
                            "alert webhook unreachable"
                        ),
                    }
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                }
                metrics.webhook_failures.inc();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_after_the_threshold_repeat_then_recover() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::UNIX_EPOCH;
        let mut o = Outage::new(Duration::from_secs(60), Duration::from_secs(300));
        assert_eq!(o.failure(t0, wall), Step::Quiet);
        assert_eq!(o.next_due(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(o.failure(t0 + Duration::from_secs(59), wall), Step::Quiet);
        assert_eq!(
            o.tick(t0 + Duration::from_secs(60)),
            Step::Raise(Kind::UpstreamDown)
        );
        assert!(o.active());
        assert_eq!(o.tick(t0 + Duration::from_secs(120)), Step::Quiet);
        assert_eq!(
            o.tick(t0 + Duration::from_secs(360)),
            Step::Raise(Kind::UpstreamStillDown)
        );
        assert_eq!(o.success(), Step::Recovered);
        assert!(!o.active());
        assert_eq!(o.success(), Step::Quiet);
    }

    #[test]
    fn a_short_blip_never_alerts() {
        let t0 = Instant::now();
        let mut o = Outage::new(Duration::from_secs(60), Duration::from_secs(300));
        o.failure(t0, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(o.success(), Step::Quiet);
        // A new streak starts from its own first failure.
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(o.failure(t1, jiff::Timestamp::UNIX_EPOCH), Step::Quiet);
        assert_eq!(o.tick(t1 + Duration::from_secs(30)), Step::Quiet);
    }

    #[test]
    fn webhook_urls_must_be_http() {
        let r: RawConfig = toml::from_str("[[webhook]]\nurl = \"ftp://x/y\"").unwrap();
        assert_eq!(
            r.validate(std::path::Path::new("/")).unwrap_err().0,
            "webhook[0].url"
        );
    }
}
