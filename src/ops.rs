//! The operator commands (`caregate status`, `caregate queue dead-letters|replay|purge`): they
//! call the running daemon's admin API; when no daemon answers, the queue ops open the queue
//! directly (the database admits one process at a time, so this is safe exactly when the
//! daemon is down) and say so.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::admin::{DeadLetter, Done};
use crate::config::Config;
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
    format!("http://{a}")
}

/// The daemon did not answer (not running, or not on this address).
#[derive(Debug, thiserror::Error)]
#[error("no caregate answered on {0}")]
pub struct NotRunning(pub String);

async fn call<T: serde::de::DeserializeOwned>(
    base: &str,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<T> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()?;
    let resp = match http.request(method, format!("{base}{path}")).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(NotRunning(base.to_owned()).into()),
        Err(e) => return Err(e).context(format!("calling {base}{path}")),
    };
    let status = resp.status();
    let body = resp.bytes().await?;
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
pub async fn status(config: &Config) -> anyhow::Result<Status> {
    call(&admin_base(config), reqwest::Method::GET, "/status").await
}

/// `caregate queue stats`: from the running daemon, else from the database directly.
pub async fn queue_stats(config: &Config) -> anyhow::Result<crate::queue::Stats> {
    match call(&admin_base(config), reqwest::Method::GET, "/queue/stats").await {
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
    tenant: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let path = match tenant {
        Some(t) => format!("/queue/dead-letters?tenant={t}"),
        None => "/queue/dead-letters".to_owned(),
    };
    match call(&admin_base(config), reqwest::Method::GET, &path).await {
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
pub async fn replay(config: &Config, tenant: &str, id: Option<u64>) -> anyhow::Result<Done> {
    let path = match id {
        Some(id) => format!("/queue/replay/{tenant}/{id}"),
        None => format!("/queue/replay/{tenant}?all=true"),
    };
    match call(&admin_base(config), reqwest::Method::POST, &path).await {
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
pub async fn purge(config: &Config, tenant: &str, id: u64) -> anyhow::Result<Done> {
    let path = format!("/queue/dead-letters/{tenant}/{id}");
    match call(&admin_base(config), reqwest::Method::DELETE, &path).await {
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
