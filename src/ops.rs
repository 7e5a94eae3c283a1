//! The operator commands (`caregate status`, `caregate queue dead-letters|replay|purge`): they
//! call the running daemon's admin API; when no daemon answers, the queue ops open the queue
//! directly (the database admits one process at a time, so this is safe exactly when the
//! daemon is down) and say so.
//!
//! Calls carry the bearer token read from `--token-file`, `$CAREGATE_TOKEN_FILE` or
//! `/etc/caregate/cli.token` ([`read_token`]); with `[admin.tls]` they go over HTTPS, trusting
//! the system bundle plus `[admin.tls] ca`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::admin::{DeadLetter, Done};
use crate::config::Config;
use crate::forward::client::Cut;
use crate::status::Status;

/// Where to reach the admin API of the daemon running `config`.
pub fn admin_base(config: &Config) -> String {
    let mut a: SocketAddr = config.admin.listen;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{a}")
}

/// Default token file of the CLI.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/caregate/cli.token";

/// The bearer token: from `flag`, else the file named by `$CAREGATE_TOKEN_FILE` (both must be
/// readable), else [`DEFAULT_TOKEN_FILE`] when readable, else none (the daemon will say 401).
pub fn read_token(flag: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let named = flag
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("CAREGATE_TOKEN_FILE").map(Into::into));
    let text = match named {
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| format!("reading the token file {}", p.display()))?,
        None => match std::fs::read_to_string(DEFAULT_TOKEN_FILE) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        },
    };
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        bail!("the token file is empty");
    }
    Ok(Some(token))
}

/// How to reach and authenticate to the admin API.
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// For the daemon running `config`, with `token`.
    pub fn new(config: &Config, token: Option<String>) -> anyhow::Result<Api> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy();
        if let Some(t) = &config.admin.tls {
            let tls = crate::forward::client::tls_config(t.ca.as_deref(), None)
                .context("admin.tls.ca")?;
            b = b.tls_backend_preconfigured(tls).https_only(true);
        }
        Ok(Api {
            base: admin_base(config),
            token,
            http: b.build()?,
        })
    }
}

/// The daemon did not answer (not running, or not on this address).
#[derive(Debug, thiserror::Error)]
#[error("no caregate answered on {0}")]
pub struct NotRunning(pub String);

async fn call<T: serde::de::DeserializeOwned>(
    api: &Api,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<T> {
    call_with(api, method, path, None::<&()>).await
}

/// Largest admin API answer the CLI reads (a dead-letter listing of many thousands is well
/// under it).
const MAX_ANSWER: usize = 64 << 20;

async fn call_with<T: serde::de::DeserializeOwned>(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> anyhow::Result<T> {
    let base = &api.base;
    let mut req = api.http.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(t) = &api.token {
        req = req.bearer_auth(t);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(NotRunning(base.to_owned()).into()),
        Err(e) => return Err(e).context(format!("calling {base}{path}")),
    };
    let status = resp.status();
    let read = crate::forward::client::read_body(&mut resp, MAX_ANSWER).await;
    match read.cut {
        None => {}
        Some(Cut::TooLarge) => bail!("the answer of {path} is larger than {MAX_ANSWER} bytes"),
        Some(Cut::Failed(e)) => return Err(e.into()),
    }
    let body = read.bytes;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{} {}", status.as_u16(), msg);
    }
    serde_json::from_slice(&body).with_context(|| format!("reading the answer of {path}"))
}

/// `/status` of the running daemon.
pub async fn status(api: &Api) -> anyhow::Result<Status> {
    call(api, reqwest::Method::GET, "/status").await
}

/// `caregate queue stats`: from the running daemon, else from the database directly.
pub async fn queue_stats(config: &Config, api: &Api) -> anyhow::Result<crate::queue::Stats> {
    match call(api, reqwest::Method::GET, "/queue/stats").await {
        Err(e) if e.is::<NotRunning>() => {
            let now = jiff::Timestamp::now().as_microsecond();
            crate::queue::read_stats(&config.data_dir, now)
                .with_context(|| format!("reading the queue in {}", config.data_dir.display()))
        }
        other => other,
    }
}

/// A tenant named on the command line, or the only one.
pub fn pick_tenant(config: &Config, tenant: Option<&str>) -> anyhow::Result<String> {
    match tenant {
        Some(t) if config.tenant(t).is_some() => Ok(t.to_owned()),
        Some(t) => bail!("no tenant {t:?} in {}", config.path.display()),
        None => match config.tenants.as_slice() {
            [only] => Ok(only.id.clone()),
            _ => bail!("several tenants are configured: name one with --tenant"),
        },
    }
}

async fn offline_queue(config: &Config) -> anyhow::Result<crate::queue::Queue> {
    eprintln!(
        "caregate is not running: working on the queue in {} directly",
        config.data_dir.display()
    );
    crate::queue::Queue::open(
        &config.data_dir,
        config.queue,
        crate::metrics::Metrics::new(),
    )
    .with_context(|| format!("opening the queue in {}", config.data_dir.display()))
}

/// Dead letters (all tenants or one).
pub async fn dead_letters(
    config: &Config,
    api: &Api,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let path = match tenant {
        Some(t) => format!("/queue/dead-letters?tenant={t}"),
        None => "/queue/dead-letters".to_owned(),
    };
    match call(api, reqwest::Method::GET, &path).await {
        Err(e) if e.is::<NotRunning>() => {
            let q = offline_queue(config).await?;
            let list = crate::admin::list_dead_letters(&q, tenant)?;
            q.close().await;
            Ok(list)
        }
        other => other,
    }
}

/// Replays one dead letter or all of a tenant's.
pub async fn replay(
    config: &Config,
    api: &Api,
    tenant: &str,
    id: Option<u64>,
) -> anyhow::Result<Done> {
    let path = match id {
        Some(id) => format!("/queue/replay/{tenant}/{id}"),
        None => format!("/queue/replay/{tenant}?all=true"),
    };
    match call(api, reqwest::Method::POST, &path).await {
        Err(e) if e.is::<NotRunning>() => {
            let q = offline_queue(config).await?;
            let dead: Vec<u64> = crate::admin::list_dead_letters(&q, Some(tenant))?
                .iter()
                .map(|d| d.id)
                .filter(|d| id.is_none_or(|id| id == *d))
                .collect();
            if id.is_some() && dead.is_empty() {
                q.close().await;
                bail!(
                    "no dead letter {} in tenant {tenant}",
                    id.unwrap_or_default()
                );
            }
            for d in &dead {
                q.unpark(tenant, *d).await?;
            }
            q.close().await;
            tracing::info!(action = "replay", tenant, ids = ?dead, "operator action (offline)");
            Ok(Done {
                action: "replay".into(),
                tenant: tenant.to_owned(),
                ids: dead,
            })
        }
        other => other,
    }
}

/// Purges one dead letter.
pub async fn purge(config: &Config, api: &Api, tenant: &str, id: u64) -> anyhow::Result<Done> {
    let path = format!("/queue/dead-letters/{tenant}/{id}");
    match call(api, reqwest::Method::DELETE, &path).await {
        Err(e) if e.is::<NotRunning>() => {
            let q = offline_queue(config).await?;
            let r = q.purge(tenant, id).await;
            q.close().await;
            r.with_context(|| format!("no dead letter {id} in tenant {tenant}"))?;
            tracing::info!(action = "purge", tenant, id, "operator action (offline)");
            Ok(Done {
                action: "purge".into(),
                tenant: tenant.to_owned(),
                ids: vec![id],
            })
        }
        other => other,
    }
}

/// The identifier system the converter emits for `authority` (PID-3.4) in `tenant`.
pub fn identifier_system(config: &Config, tenant: &str, authority: &str) -> String {
    config
        .tenant(tenant)
        .and_then(|t| t.identifier_systems.get(authority).cloned())
        .unwrap_or_else(|| {
            crate::convert::id::minted(
                crate::convert::cli::DEFAULT_SYSTEM_BASE,
                &[tenant, "identifiers", authority],
            )
        })
}

/// `caregate consent set`: records a status through the running daemon (which releases held
/// messages at once); refused when no daemon answers, since the daemon keeps the registry.
pub async fn consent_set(
    api: &Api,
    tenant: &str,
    change: &crate::admin::ConsentChange,
) -> anyhow::Result<crate::admin::ConsentDone> {
    let path = format!("/consent/{tenant}");
    match call_with(api, reqwest::Method::POST, &path, Some(change)).await {
        Err(e) if e.is::<NotRunning>() => Err(e.context(
            "consent changes need the running daemon (it keeps the registry and releases held messages)",
        )),
        other => other,
    }
}

/// `caregate consent list`.
pub async fn consent_list(api: &Api, tenant: &str) -> anyhow::Result<Vec<crate::consent::Entry>> {
    call(api, reqwest::Method::GET, &format!("/consent/{tenant}")).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_answer_over_the_cap_is_an_error_not_read_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let len = MAX_ANSWER + 1;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 1 << 20];
            let mut sent = 0;
            while sent < len {
                let n = chunk.len().min(len - sent);
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
        });
        let api = Api {
            base: format!("http://{addr}"),
            token: None,
            http: reqwest::Client::new(),
        };
        let e = call::<serde_json::Value>(&api, reqwest::Method::GET, "/status")
            .await
            .expect_err("over the cap");
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
