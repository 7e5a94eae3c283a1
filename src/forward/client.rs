//! The HTTPS client of one tenant's upstream: TLS 1.3 only (rustls, aws-lc-rs), trust = the
//! system store plus the configured `ca_file`, optional mTLS, HTTP/2 with keep-alive (ALPN
//! `h2`, falling back to HTTP/1.1), `application/fhir+json`, a request deadline, an
//! `X-Request-ID` correlation id on every request, and bearer or OAuth 2.0 client-credentials
//! authentication. Errors name files and URLs, never message content.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use rustls::ClientConfig;
use tokio::sync::Mutex;

use super::retry::{self, Answer};
use super::{Auth, Config, OAuth2};
use crate::mllp::tls::{load_certs, load_key};

/// FHIR's JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Most bytes kept of a failure's answer (an OperationOutcome for a dead letter; the rest is
/// dropped).
const MAX_BODY: usize = 64 << 10;

/// Setup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key file.
    #[error(transparent)]
    Tls(#[from] crate::mllp::tls::Error),
    /// rustls refused the setup.
    #[error("tls setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
}

/// The rustls configuration for an upstream (also used for alert webhooks).
pub fn tls_config(
    ca_file: Option<&std::path::Path>,
    client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let extra = match ca_file {
        Some(p) => load_certs(p)?,
        None => Vec::new(),
    };
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        match rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra.clone(),
            provider.clone(),
        ) {
            Ok(v) => Arc::new(v),
            // No system store (a minimal install without ca-certificates): the configured CA
            // alone is enough for a private upstream.
            Err(e) if !extra.is_empty() => {
                tracing::warn!(error = %e, "system trust store unusable; trusting only ca_file");
                let mut roots = rustls::RootCertStore::empty();
                for c in extra {
                    roots.add(c)?;
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| Error::Http(format!("ca_file: {e}")))?
            }
            Err(e) => return Err(e.into()),
        };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

struct Token {
    value: String,
    /// Refresh before this instant.
    good_until: Option<Instant>,
}

/// One tenant's upstream.
pub struct Upstream {
    tenant: String,
    config: Config,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
}

impl Upstream {
    /// Builds the client (reads certificates; opens no connection).
    pub fn new(tenant: &str, config: Config) -> Result<Upstream, Error> {
        let tls = tls_config(config.ca_file.as_deref(), config.client_cert.as_ref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(4)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .tcp_keepalive(Duration::from_secs(60))
            .no_proxy()
            .user_agent(concat!("caregate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(Upstream {
            tenant: tenant.to_owned(),
            config,
            http,
            token: Mutex::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Where requests go, for logs and status (no credentials in it).
    pub fn endpoint(&self) -> String {
        let u = &self.config.url;
        format!("{}://{}{}", u.scheme(), u.authority(), u.path())
    }

    /// POSTs a transaction Bundle to the base URL.
    pub async fn post_bundle(&self, body: bytes::Bytes, correlation_id: &str) -> Answer {
        let mut req = self
            .http
            .post(self.config.url.clone())
            .header(CONTENT_TYPE, FHIR_JSON)
            .header(ACCEPT, FHIR_JSON)
            .header("Prefer", "return=minimal")
            .header("X-Request-ID", correlation_id)
            .body(body);
        match self.authorization().await {
            Ok(Some(v)) => req = req.header(AUTHORIZATION, v),
            Ok(None) => {}
            Err(e) => return Answer::Transport(e),
        }
        match req.send().await {
            Err(e) => Answer::Transport(describe(&e)),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry::parse_retry_after(v, jiff::Timestamp::now()));
                // A success carries the transaction-response the pipeline checks, about as
                // large as the request with `return=minimal` (twice that if a server ignores it).
                let cap = if resp.status().is_success() {
                    self.config.batch_bytes.saturating_mul(2).max(MAX_BODY)
                } else {
                    MAX_BODY
                };
                let body = read_capped(resp, cap).await;
                Answer::Status {
                    status,
                    retry_after,
                    body,
                }
            }
        }
    }

    /// GETs a FHIR JSON document: `path` relative to the base URL (`Consent?_count=100`), or
    /// an absolute URL under it (a search's `next` link). Errors name the status or transport
    /// class, never a body. Answers above `max_bytes` are refused.
    pub async fn get_json(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<serde_json::Value, String> {
        let url = under_base(&self.config.url, path)
            .ok_or("a link outside the upstream's base URL was not followed")?;
        let mut req = self.http.get(url).header(ACCEPT, FHIR_JSON);
        if let Some(v) = self.authorization().await? {
            req = req.header(AUTHORIZATION, v);
        }
        let mut resp = req.send().await.map_err(|e| describe(&e))?;
        let status = resp.status();
        if status.as_u16() == 401 {
            self.invalidate_token().await;
        }
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let body = read_limited(&mut resp, max_bytes).await?;
        serde_json::from_slice(&body).map_err(|_| "the answer is not JSON".to_owned())
    }

    /// Forgets the cached token so the next request fetches (or re-reads) a fresh one.
    pub async fn invalidate_token(&self) {
        *self.token.lock().await = None;
    }

    async fn authorization(&self) -> Result<Option<HeaderValue>, String> {
        let mut slot = self.token.lock().await;
        let fresh = slot
            .as_ref()
            .is_some_and(|t| t.good_until.is_none_or(|u| Instant::now() < u));
        if !fresh {
            *slot = match &self.config.auth {
                Auth::None => return Ok(None),
                Auth::BearerFile(path) => {
                    let v = std::fs::read_to_string(path)
                        .map_err(|e| format!("reading {}: {e}", path.display()))?;
                    Some(Token {
                        value: v.trim().to_owned(),
                        good_until: None,
                    })
                }
                Auth::OAuth2(o) => Some(self.fetch_token(o).await?),
            };
        }
        let Some(t) = slot.as_ref() else {
            return Ok(None);
        };
        HeaderValue::from_str(&format!("Bearer {}", t.value))
            .map(Some)
            .map_err(|_| "the token contains characters not allowed in a header".to_owned())
    }

    async fn fetch_token(&self, o: &OAuth2) -> Result<Token, String> {
        let secret = std::fs::read_to_string(&o.client_secret_file)
            .map_err(|e| format!("reading {}: {e}", o.client_secret_file.display()))?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", o.client_id.as_str()),
            ("client_secret", secret.trim()),
        ];
        if let Some(s) = &o.scope {
            form.push(("scope", s));
        }
        let resp = self
            .http
            .post(o.token_url.clone())
            .header(ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("token endpoint: {}", describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("token endpoint answered {}", status.as_u16()));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let mut resp = resp;
        let body = read_limited(&mut resp, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| "token endpoint: not a token response".to_owned())?;
        Ok(Token {
            value: t.access_token,
            good_until: Some(token_good_until(Instant::now(), t.expires_in)),
        })
    }
}

/// The URL type [`under_base`] works on (re-exported for the fuzz target).
pub use reqwest::Url;

/// The URL of `path` relative to `base` (`Consent?_count=100`), or an absolute link (a search's
/// `next`) when it stays under `base`: same scheme, host and port, no user info, and a path
/// under the base path at a segment boundary. A server's link is input: comparing text prefixes
/// would follow `https://fhir.example.org.evil.net/` or `https://fhir.example.org@evil.net/`
/// and send them the tenant's token.
pub fn under_base(base: &reqwest::Url, path: &str) -> Option<reqwest::Url> {
    let base_path = base.path().trim_end_matches('/');
    let link = if path.contains("://") {
        reqwest::Url::parse(path).ok()?
    } else {
        // Joined, then checked like a link: `..` segments are resolved by the URL parser and
        // could climb out of the base path (found by the upstream_answer fuzz target).
        let mut joined = base.clone();
        let (p, query) = path.split_once('?').unwrap_or((path, ""));
        joined.set_path(&format!("{base_path}/{}", p.trim_start_matches('/')));
        joined.set_query((!query.is_empty()).then_some(query));
        joined
    };
    let same_origin = link.scheme() == base.scheme()
        && link.host_str() == base.host_str()
        && link.port_or_known_default() == base.port_or_known_default()
        && link.username().is_empty()
        && link.password().is_none();
    let rest = link.path().strip_prefix(base_path)?;
    (same_origin && (rest.is_empty() || rest.starts_with('/'))).then_some(link)
}

/// Longest a fetched token is used before it is fetched again, whatever `expires_in` claims
/// (an endpoint that says "forever", or sends nothing, still gets asked daily).
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

/// When to refresh a token the endpoint gave at `now` with `expires_in` seconds: a little early
/// (a tenth, 1-30 s) so a token never expires in flight, and at most [`MAX_TOKEN_LIFE`] on.
/// `expires_in` comes from the network: any value, `u64::MAX` included, is taken.
pub fn token_good_until(now: Instant, expires_in: Option<u64>) -> Instant {
    let life = match expires_in {
        Some(s) => Duration::from_secs(s.saturating_sub((s / 10).clamp(1, 30))),
        None => MAX_TOKEN_LIFE,
    };
    now.checked_add(life.min(MAX_TOKEN_LIFE)).unwrap_or(now)
}

/// Largest token endpoint answer read (a JWT access token is a few KiB).
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Reads a whole body of at most `max` bytes; a larger one is an error, read no further.
async fn read_limited(resp: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let body = read_body(resp, max).await;
    match body.cut {
        None => Ok(body.bytes),
        Some(Cut::TooLarge) => Err(format!("answer larger than {max} bytes")),
        Some(Cut::Failed(e)) => Err(describe(&e)),
    }
}

/// At most `cap` bytes of a failure's answer, as text; what came before a read error counts.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> String {
    String::from_utf8_lossy(&read_body(&mut resp, cap).await.bytes).into_owned()
}

/// A response body read up to a limit ([`read_body`]).
pub struct Body {
    /// The bytes read: all of them, or the first `max` when more came.
    pub bytes: Vec<u8>,
    /// Why reading stopped before the end, if it did.
    pub cut: Option<Cut>,
}

/// Why [`read_body`] stopped early.
pub enum Cut {
    /// More than the limit came; nothing after it was read.
    TooLarge,
    /// The connection failed midway.
    Failed(reqwest::Error),
}

/// Reads a body chunk by chunk, never holding more than `max` bytes: every answer from a peer
/// (upstream, token endpoint, admin API for the CLI) goes through here.
pub async fn read_body(resp: &mut reqwest::Response, max: usize) -> Body {
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(None) => return Body { bytes, cut: None },
            Ok(Some(chunk)) => {
                let room = max.saturating_sub(bytes.len());
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    return Body {
                        bytes,
                        cut: Some(Cut::TooLarge),
                    };
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(e) => {
                return Body {
                    bytes,
                    cut: Some(Cut::Failed(e)),
                };
            }
        }
    }
}

/// A transport error in one line, with its cause chain (no URL query strings, no bodies).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_request() {
        "request"
    } else if e.is_body() || e.is_decode() {
        "response"
    } else {
        "transport"
    };
    let mut msg = kind.to_owned();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = String::new();
    while let Some(s) = src {
        let text = s.to_string();
        if text != last {
            msg.push_str(": ");
            msg.push_str(&text);
            last = text;
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_links_under_the_base_url_are_followed() {
        let base =
            reqwest::Url::parse("https://fhir.example.org/r4/").unwrap_or_else(|e| panic!("{e}"));
        let follow = |p: &str| under_base(&base, p).map(|u| u.to_string());
        assert_eq!(
            follow("Consent?_count=100").as_deref(),
            Some("https://fhir.example.org/r4/Consent?_count=100")
        );
        for ok in [
            "https://fhir.example.org/r4/Consent?page=2",
            "https://fhir.example.org:443/r4/Consent?page=2",
            "https://FHIR.example.org/r4?_getpages=x",
        ] {
            assert!(follow(ok).is_some(), "{ok} refused");
        }
        assert_eq!(
            follow("../other"),
            None,
            "a relative path climbing out of the base"
        );
        assert_eq!(follow("Consent/../../x"), None);
        for bad in [
            "https://fhir.example.org.evil.net/r4/Consent",
            "https://fhir.example.org@evil.net/r4/Consent",
            "https://user:pw@fhir.example.org/r4/Consent",
            "https://fhir.example.org:8443/r4/Consent",
            "http://fhir.example.org/r4/Consent",
            "https://fhir.example.org/r4x/Consent",
            "https://fhir.example.org/other",
            "ftp://fhir.example.org/r4/Consent",
            "https://",
        ] {
            assert_eq!(follow(bad), None, "{bad} followed");
        }
        // A base without a path: every path on that origin is under it, no other origin is.
        let root =
            reqwest::Url::parse("https://fhir.example.org").unwrap_or_else(|e| panic!("{e}"));
        assert!(under_base(&root, "https://fhir.example.org/Consent?page=2").is_some());
        assert!(under_base(&root, "https://fhir.example.org.evil.net/Consent").is_none());
        assert!(under_base(&root, "https://fhir.example.org@evil.net/").is_none());
    }

    #[test]
    fn token_lifetimes_from_the_network_never_overflow() {
        let now = Instant::now();
        let after = |s| token_good_until(now, s).duration_since(now);
        // A tenth early, at least 1 s and at most 30 s.
        assert_eq!(after(Some(3600)), Duration::from_secs(3570));
        assert_eq!(after(Some(100)), Duration::from_secs(90));
        assert_eq!(after(Some(5)), Duration::from_secs(4));
        assert_eq!(after(Some(0)), Duration::ZERO);
        // "Forever" and "unsaid" are refreshed daily; u64::MAX used to panic in Instant + Duration.
        assert_eq!(after(Some(u64::MAX)), MAX_TOKEN_LIFE);
        assert_eq!(after(Some(10 * 24 * 3600)), MAX_TOKEN_LIFE);
        assert_eq!(after(None), MAX_TOKEN_LIFE);
    }
}
