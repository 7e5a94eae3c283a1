//! The operator API's roles over real HTTP: two tenants, a system-admin, an org-admin and an
//! auditor of `north`; every endpoint answers exactly as the table in `caregate::access` says;
//! the TLS admin listener (TLS 1.3 only); config validation of tokens and TLS.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Gateway, admin_token_toml, code, oru};

const ROOT: &str = "root-token-aaaaaaaaaaaaaaaa";
const ALICE: &str = "alice-token-bbbbbbbbbbbbbbbb";
const AUDIT: &str = "audit-token-cccccccccccccccc";

fn config(dir: &std::path::Path, admin_extra: &str, tokens: bool) -> String {
    let tokens = if tokens {
        [
            admin_token_toml("ops-root", "system-admin", None, ROOT),
            admin_token_toml("ops-alice", "org-admin", Some("north"), ALICE),
            admin_token_toml("audit-north", "auditor", Some("north"), AUDIT),
        ]
        .concat()
    } else {
        String::new()
    };
    format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
{admin_extra}
{tokens}
[[tenant]]
id = "north"
[[tenant]]
id = "south"
[[source]]
name = "lab"
tenant = "north"
kind = "mllp"
listen = "127.0.0.1:0"
[[source]]
name = "lab-south"
tenant = "south"
kind = "mllp"
listen = "127.0.0.1:0"
"#,
        data = dir.join("data").display()
    )
}

async fn call(base: &str, method: Method, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let http = reqwest::Client::new();
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("the admin listener answers");
    let status = r.status();
    (status, r.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_the_role_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "", true);
    let g = Gateway::start_text(dir, &text).await;
    // A message for each tenant: north's lands in the audit trail.
    for (source, id) in [("lab", "N-1"), ("lab-south", "S-1")] {
        let addr = g.running().mllp_addr(source).unwrap().to_string();
        let mut c = caregate::mllp::client::Client::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(code(&c.send(&oru(id)).await.unwrap()), "AA");
    }
    let base = format!("http://{}", g.running().admin);

    // Open routes need nothing.
    for p in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(call(&base, Method::GET, p, None).await.0, 200, "{p}");
    }

    use Method as M;
    let endpoints: Vec<(Method, &str)> = vec![
        (M::GET, "/status"),
        (M::GET, "/queue/stats"),
        (M::GET, "/queue/dead-letters"),
        (M::GET, "/queue/dead-letters?tenant=north"),
        (M::GET, "/queue/dead-letters?tenant=south"),
        (M::POST, "/queue/replay/north?all=true"),
        (M::POST, "/queue/replay/south?all=true"),
        (M::POST, "/queue/replay/north/999"),
        (M::POST, "/queue/replay/south/999"),
        (M::DELETE, "/queue/dead-letters/north/999"),
        (M::DELETE, "/queue/dead-letters/south/999"),
        (M::GET, "/audit/export?tenant=north"),
        (M::GET, "/audit/export?tenant=south"),
        (M::GET, "/audit/export?tenant=-"),
        (M::GET, "/audit/export"),
        (M::GET, "/audit/verify"),
    ];
    // Expected status per endpoint (same order) for: root, alice (org-admin north), auditor.
    // 404: allowed, but no such dead letter; 400: system-admin must name a tenant.
    #[rustfmt::skip]
    let table: [(&str, [u16; 16]); 3] = [
        (ROOT,  [200, 200, 200, 200, 200, 200, 200, 404, 404, 404, 404, 200, 200, 200, 400, 200]),
        (ALICE, [200, 403, 200, 200, 403, 200, 403, 404, 403, 404, 403, 200, 403, 403, 200, 200]),
        (AUDIT, [403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 200, 403, 403, 200, 200]),
    ];
    for (token, expected) in table {
        for ((method, path), want) in endpoints.iter().zip(expected) {
            let (got, body) = call(&base, method.clone(), path, Some(token)).await;
            assert_eq!(got.as_u16(), want, "{method} {path} as {token}: {body}");
        }
    }
    // Without a token, or with a wrong one: 401 everywhere, with a Bearer challenge.
    for (method, path) in &endpoints {
        for token in [None, Some("not-a-token")] {
            let (got, body) = call(&base, method.clone(), path, token).await;
            assert_eq!(got, 401, "{method} {path} with {token:?}: {body}");
        }
    }
    let r = reqwest::get(format!("{base}/status")).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    // The org-admin sees only north in /status; the system-admin sees both.
    let (_, body) = call(&base, M::GET, "/status", Some(ALICE)).await;
    let s: Value = serde_json::from_str(&body).unwrap();
    let tenants: Vec<&str> = s["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["north"], "{body}");
    let sources: Vec<&str> = s["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["lab"], "{body}");
    assert!(!body.contains("south"), "{body}");
    let (_, body) = call(&base, M::GET, "/status", Some(ROOT)).await;
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["tenants"].as_array().unwrap().len(), 2);

    // The auditor exports north's entries (and only north's); the stored message is there.
    let end = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let (st, body) = call(&base, M::GET, "/audit/export?tenant=north", Some(AUDIT)).await;
        assert_eq!(st, 200);
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.iter().any(|e| e["action"] == "stored") || Instant::now() > end {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        lines.iter().any(|e| e["action"] == "stored"),
        "north's stored entry: {lines:?}"
    );
    assert!(lines.iter().all(|e| e["tenant"] == "north"), "{lines:?}");
    let (st, body) = call(&base, M::GET, "/audit/export?tenant=south", Some(ROOT)).await;
    assert_eq!(st, 200);
    assert!(body.lines().count() >= 1, "south has entries too: {body}");
    assert!(
        body.lines()
            .all(|l| serde_json::from_str::<Value>(l).unwrap()["tenant"] == "south")
    );
    let (st, body) = call(&base, M::GET, "/audit/verify", Some(AUDIT)).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["intact"], true, "{body}");
    assert_eq!(v["problems_unlisted"], 0, "{body}");

    // Replay and purge by the org-admin are recorded with the token's name as actor.
    let park = || async {
        let id = g.queue().lease("north", 1).unwrap()[0].id;
        g.queue()
            .park(
                "north",
                id,
                caregate::queue::Parked::DeadLetter,
                "{}".into(),
            )
            .await
            .unwrap();
        id
    };
    let id = park().await;
    let (st, body) = call(&base, M::GET, "/queue/dead-letters", Some(ALICE)).await;
    assert_eq!(st, 200);
    assert!(body.contains(&format!("\"id\":{id}")), "{body}");
    let path = format!("/queue/replay/north/{id}");
    assert_eq!(call(&base, M::POST, &path, Some(AUDIT)).await.0, 403);
    assert_eq!(call(&base, M::POST, &path, Some(ALICE)).await.0, 200);
    let id = park().await;
    let path = format!("/queue/dead-letters/north/{id}");
    assert_eq!(call(&base, M::DELETE, &path, Some(ALICE)).await.0, 200);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = call(&base, M::GET, "/audit/export", Some(AUDIT)).await;
        let ops: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] == "replayed" || e["action"] == "purged")
            .collect();
        if ops.len() == 2 {
            for e in &ops {
                assert_eq!(e["actor"]["kind"], "token", "{e}");
                assert_eq!(e["actor"]["name"], "ops-alice", "{e}");
                assert!(!e.to_string().contains(ALICE), "never the token");
            }
            break;
        }
        assert!(Instant::now() < end, "replay and purge entries: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_operator_api_is_refused_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "", false);
    let g = Gateway::start_text(dir, &text).await;
    let base = format!("http://{}", g.running().admin);
    for p in ["/status", "/queue/dead-letters", "/audit/verify"] {
        let (st, body) = call(&base, Method::GET, p, Some(ROOT)).await;
        assert_eq!(st, 403, "{p}");
        assert!(body.contains("[[admin.token]]"), "{body}");
    }
    assert_eq!(call(&base, Method::GET, "/readyz", None).await.0, 200);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_admin_listener_serves_tls13_and_refuses_tls12() {
    use std::sync::Arc;
    let pki = crate::support::pki();
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let text = config(dir.path(), &tls, true);
    let g = Gateway::start_text(dir, &text).await;
    let port = g.running().admin.port();

    // TLS 1.3 with the test CA: the operator API answers as over plain HTTP.
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(
            caregate::forward::client::tls_config(Some(&pki.ca), None).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let r = client
        .get(format!("{base}/status"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{base}/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/livez"))
            .await
            .is_err()
    );

    // A TLS 1.2-only client is refused in the handshake.
    let roots = caregate::mllp::tls::load_roots(&pki.ca).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await;
    assert!(r.is_err(), "a TLS 1.2 handshake must fail");

    // The CLI's client (ops) reaches it over HTTPS with [admin.tls] ca.
    let mut cfg = g.config.clone();
    cfg.admin.listen = g.running().admin;
    let api = caregate::ops::Api::new(&cfg, Some(ROOT.to_owned())).unwrap();
    let s = caregate::ops::status(&api).await.unwrap();
    assert_eq!(s.tenants.len(), 2);
    g.stop().await;
}

#[test]
fn config_refuses_off_loopback_without_tls_and_tenant_roles_without_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let load =
        |text: &str| caregate::config::Config::from_toml(&dir.path().join("caregate.toml"), text);
    let text = config(dir.path(), "", true).replace("127.0.0.1:0\"\n\n", "0.0.0.0:9100\"\n\n");
    let e = load(&text).unwrap_err();
    assert_eq!(e.key, "admin.listen", "{e}");
    assert!(
        e.to_string()
            .contains("admin API off loopback requires [admin.tls]"),
        "{e}"
    );
    let text = config(dir.path(), "", false).replacen(
        "\n[[tenant]]",
        &format!(
            "{}\n[[tenant]]",
            admin_token_toml("alice", "org-admin", None, ALICE)
        ),
        1,
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.key, "admin.token[0].role", "{e}");
    assert!(e.message.contains("requires a tenant"), "{e}");
}
