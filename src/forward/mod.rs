//! Forwarding to a tenant's cloud FHIR endpoint: `[tenant.upstream]` (this module owns the
//! section), the HTTPS client ([`client`]), the one place that decides what an answer means
//! ([`retry`]) and the circuit breaker ([`breaker`]). The pipeline (`crate::pipeline`) is the
//! only caller.
//!
//! Every tenant has its own [`client::Upstream`]: its own connection pool, TLS configuration
//! and credentials, so no request, connection or token is ever shared between tenants.

pub mod breaker;
pub mod client;
pub mod retry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ByteSize, HumanDuration};

/// Validated `[tenant.upstream]`.
#[derive(Debug, Clone)]
pub struct Config {
    /// FHIR base URL (`https://...`); transaction Bundles are POSTed to it.
    pub url: reqwest::Url,
    /// Extra trusted roots (PEM), added to the system store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// How requests authenticate.
    pub auth: Auth,
    /// Whole-request deadline.
    pub timeout: Duration,
    /// TCP + TLS connect deadline.
    pub connect_timeout: Duration,
    /// Most messages in one transaction Bundle.
    pub batch_messages: usize,
    /// Most Bundle entries in one request (a single message larger than this goes alone).
    pub batch_entries: usize,
    /// Most request body bytes (a single message larger than this goes alone).
    pub batch_bytes: usize,
    /// First retry delay; doubles per failure (with jitter) up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Consecutive failed requests that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker holds requests back before a probe (doubles per failed probe
    /// up to `retry_max`).
    pub breaker_open_for: Duration,
    /// An upstream failing this long raises an outage alert.
    pub alert_after: Duration,
    /// While the outage lasts, the alert is repeated this often.
    pub alert_repeat: Duration,
    /// How often to read the tenant's FHIR Consent resources from the upstream
    /// ([`crate::consent_pull`]); `None`: consent changes come through the admin API only.
    pub consent_pull: Option<Duration>,
}

/// How requests authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No `Authorization` header (mTLS or a private network).
    None,
    /// `Authorization: Bearer <file content>`; the file is re-read after a 401.
    BearerFile(PathBuf),
    /// OAuth 2.0 client credentials.
    OAuth2(OAuth2),
}

/// `[tenant.upstream.oauth2]`.
#[derive(Debug, Clone)]
pub struct OAuth2 {
    /// Token endpoint.
    pub token_url: reqwest::Url,
    /// Client id.
    pub client_id: String,
    /// File holding the client secret.
    pub client_secret_file: PathBuf,
    /// Requested scope.
    pub scope: Option<String>,
}

/// The file form of `[tenant.upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    url: String,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    oauth2: Option<RawOAuth2>,
    timeout: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    batch_messages: Option<usize>,
    batch_entries: Option<usize>,
    batch_bytes: Option<ByteSize>,
    retry_initial: Option<HumanDuration>,
    retry_max: Option<HumanDuration>,
    breaker_failures: Option<u32>,
    breaker_open_for: Option<HumanDuration>,
    alert_after: Option<HumanDuration>,
    alert_repeat: Option<HumanDuration>,
    consent_pull: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2 {
    token_url: String,
    client_id: String,
    client_secret_file: PathBuf,
    scope: Option<String>,
}

/// Longest `alert_after` allowed: the platform wants failures reported within 5 minutes.
pub const MAX_ALERT_AFTER: Duration = Duration::from_secs(300);

fn https_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("must be an https:// URL (TLS 1.3 is required for patient data)".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(url)
}

fn existing(base: &Path, key: &str, p: &Path) -> Result<PathBuf, (String, String)> {
    let path = crate::config::resolve(base, p);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err((key.into(), format!("{} is not a file", path.display()))),
        Err(e) => Err((key.into(), format!("{}: {e}", path.display()))),
    }
}

impl RawConfig {
    /// Validates; errors are `(key relative to [tenant.upstream], message)`.
    pub(crate) fn validate(self, base: &Path) -> Result<Config, (String, String)> {
        let url = https_url(&self.url).map_err(|m| ("url".to_owned(), m))?;
        let ca_file = self
            .ca_file
            .map(|p| existing(base, "ca_file", &p))
            .transpose()?;
        let client_cert = match (self.client_cert, self.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                existing(base, "client_cert", &c)?,
                existing(base, "client_key", &k)?,
            )),
            (Some(_), None) => {
                return Err(("client_key".into(), "required with client_cert".into()));
            }
            (None, Some(_)) => {
                return Err(("client_cert".into(), "required with client_key".into()));
            }
        };
        let auth = match (self.bearer_token_file, self.oauth2) {
            (Some(_), Some(_)) => {
                return Err((
                    "oauth2".into(),
                    "use either bearer_token_file or [tenant.upstream.oauth2], not both".into(),
                ));
            }
            (Some(f), None) => Auth::BearerFile(existing(base, "bearer_token_file", &f)?),
            (None, Some(o)) => Auth::OAuth2(OAuth2 {
                token_url: https_url(&o.token_url)
                    .map_err(|m| ("oauth2.token_url".to_owned(), m))?,
                client_id: o.client_id,
                client_secret_file: existing(
                    base,
                    "oauth2.client_secret_file",
                    &o.client_secret_file,
                )?,
                scope: o.scope,
            }),
            (None, None) => Auth::None,
        };
        let d = |v: Option<HumanDuration>, default: u64| {
            v.map_or(Duration::from_secs(default), |d| d.0)
        };
        let positive = |key: &str, v: Duration| {
            if v.is_zero() {
                Err((key.to_owned(), "must be greater than zero".to_owned()))
            } else {
                Ok(v)
            }
        };
        let timeout = positive("timeout", d(self.timeout, 30))?;
        let connect_timeout = positive("connect_timeout", d(self.connect_timeout, 10))?;
        let retry_initial = positive("retry_initial", d(self.retry_initial, 1))?;
        let retry_max = positive("retry_max", d(self.retry_max, 300))?;
        if retry_max < retry_initial {
            return Err((
                "retry_max".into(),
                "must not be shorter than retry_initial".into(),
            ));
        }
        let breaker_open_for = positive("breaker_open_for", d(self.breaker_open_for, 30))?;
        let alert_after = positive("alert_after", d(self.alert_after, 60))?;
        if alert_after > MAX_ALERT_AFTER {
            return Err((
                "alert_after".into(),
                "must be at most 5m (outages are reported within 5 minutes)".into(),
            ));
        }
        let alert_repeat = positive("alert_repeat", d(self.alert_repeat, 900))?;
        let batch_messages = self.batch_messages.unwrap_or(100);
        if !(1..=10_000).contains(&batch_messages) {
            return Err((
                "batch_messages".into(),
                "must be between 1 and 10000".into(),
            ));
        }
        let batch_entries = self.batch_entries.unwrap_or(2_000);
        if !(1..=100_000).contains(&batch_entries) {
            return Err((
                "batch_entries".into(),
                "must be between 1 and 100000".into(),
            ));
        }
        let batch_bytes = self.batch_bytes.map_or(8 << 20, |b| b.0);
        if !((64 << 10)..=(256 << 20)).contains(&batch_bytes) {
            return Err((
                "batch_bytes".into(),
                "must be between 64KiB and 256MiB".into(),
            ));
        }
        let breaker_failures = self.breaker_failures.unwrap_or(5);
        if breaker_failures == 0 {
            return Err(("breaker_failures".into(), "must be at least 1".into()));
        }
        let consent_pull = match self.consent_pull {
            None => None,
            Some(d) if d.0 < Duration::from_secs(1) => {
                return Err(("consent_pull".into(), "must be at least 1s".into()));
            }
            Some(d) => Some(d.0),
        };
        Ok(Config {
            consent_pull,
            url,
            ca_file,
            client_cert,
            auth,
            timeout,
            connect_timeout,
            batch_messages,
            batch_entries,
            batch_bytes: batch_bytes as usize,
            retry_initial,
            retry_max,
            breaker_failures,
            breaker_open_for,
            alert_after,
            alert_repeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<Config, (String, String)> {
        let text = format!("url = \"https://fhir.example.org/fhir\"\n{extra}");
        let r: RawConfig = toml::from_str(&text).unwrap();
        r.validate(Path::new("/"))
    }

    #[test]
    fn consent_pull_is_off_by_default_and_at_least_a_second() {
        assert_eq!(raw("").unwrap().consent_pull, None);
        assert_eq!(
            raw("consent_pull = \"5m\"").unwrap().consent_pull,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            raw("consent_pull = \"500ms\"").unwrap_err().0,
            "consent_pull"
        );
    }

    #[test]
    fn defaults_are_applied() {
        let c = raw("").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.alert_after, Duration::from_secs(60));
        assert_eq!(c.batch_messages, 100);
        assert!(matches!(c.auth, Auth::None));
    }

    #[test]
    fn plain_http_is_refused() {
        let r: RawConfig = toml::from_str("url = \"http://fhir.example.org/fhir\"").unwrap();
        let e = r.validate(Path::new("/")).unwrap_err();
        assert_eq!(e.0, "url");
        assert!(e.1.contains("https"), "{}", e.1);
    }

    #[test]
    fn alert_after_is_capped_at_five_minutes() {
        assert_eq!(raw("alert_after = \"6m\"").unwrap_err().0, "alert_after");
        assert!(raw("alert_after = \"5m\"").is_ok());
    }

    #[test]
    fn missing_files_and_half_mtls_name_their_key() {
        assert_eq!(
            raw("ca_file = \"/nonexistent/ca.pem\"").unwrap_err().0,
            "ca_file"
        );
        assert_eq!(
            raw("client_cert = \"/etc/hostname\"").unwrap_err().0,
            "client_key"
        );
        assert_eq!(
            raw("bearer_token_file = \"/nonexistent\"").unwrap_err().0,
            "bearer_token_file"
        );
    }

    #[test]
    fn bearer_and_oauth2_are_exclusive() {
        let e = raw(
            "bearer_token_file = \"/etc/hostname\"\n[oauth2]\ntoken_url = \"https://a/token\"\nclient_id = \"x\"\nclient_secret_file = \"/etc/hostname\"\n",
        )
        .unwrap_err();
        assert_eq!(e.0, "oauth2");
    }
}
