//! Reload in place (`Running::reload`, what SIGHUP runs): sources added, moved and removed under
//! load without losing a message, a bad file refused, TLS certificates re-read, a tenant's worker
//! restarted, operator tokens applied, alert webhooks and queue limits changed in place. The
//! SIGHUP path of the real binary is in `process`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caregate::mllp::client::Client;

use crate::support::{self, ADMIN_TOKEN, Gateway, assert_stored_once, code, free_port, oru};

fn config(dir: &Path, sources: &[(&str, u16)], extra: &str) -> String {
    let mut text = format!(
        "data_dir = \"{}\"\nshutdown_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\
         [[tenant]]\nid = \"north\"\ntimezone = \"America/Chicago\"\n",
        dir.join("data").display()
    );
    for (name, port) in sources {
        text.push_str(&format!(
            "[[source]]\nname = \"{name}\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:{port}\"\n"
        ));
    }
    text
}

/// Writes `text` as the gateway's config file and loads it, as SIGHUP does.
async fn reload_with(g: &mut Gateway, text: &str) -> caregate::app::ReloadReport {
    std::fs::write(g.dir.path().join("caregate.toml"), text).unwrap();
    g.running
        .as_mut()
        .unwrap()
        .reload_from_file()
        .await
        .unwrap()
}

/// A sender as real ones behave: one message in flight, and a message whose ACK did not come
/// (connection closed, port gone) is sent again, to wherever `target` now points, until AA.
fn sender(
    conn: usize,
    target: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    resent: Arc<Mutex<usize>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client: Option<Client> = None;
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let id = format!("R-{conn}-{i}");
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(attempts < 500, "{id}: no AA after 500 attempts");
                if client.is_none() {
                    let addr = target.lock().unwrap().clone();
                    match Client::connect(&addr, Duration::from_secs(2)).await {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                match c.send(&oru(&id)).await {
                    Ok(r) if code(&r) == "AA" => break,
                    Ok(r) => panic!("unexpected reply {}", r.raw),
                    Err(_) => {
                        client = None;
                        *resent.lock().unwrap() += 1;
                    }
                }
            }
            acked.lock().unwrap().push(id);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_source_added_a_port_moved_a_bad_file_refused_and_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let first = config(dir.path(), &[("lab", p1)], "");
    let mut g = Gateway::start_text(dir, &first).await;
    let target = Arc::new(Mutex::new(format!("127.0.0.1:{p1}")));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let resent = Arc::new(Mutex::new(0));
    let senders: Vec<_> = (0..4)
        .map(|c| {
            sender(
                c,
                target.clone(),
                stop.clone(),
                acked.clone(),
                resent.clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before_move = acked.lock().unwrap().len();

    // A source added and the existing one moved to another port, under load.
    let second = config(g.dir.path(), &[("lab", p2), ("lab2", p3)], "");
    let report = reload_with(&mut g, &second).await;
    assert_eq!(report.restarted, ["lab"], "{report}");
    assert_eq!(report.added, ["lab2"], "{report}");
    assert!(report.failed.is_empty(), "{report}");
    *target.lock().unwrap() = format!("127.0.0.1:{p2}");
    assert_eq!(
        g.running().mllp_addr("lab").unwrap().port(),
        p2,
        "the running gateway reports the new address"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p1)).is_err(),
        "the old port is closed"
    );
    let mut c = Client::connect(&format!("127.0.0.1:{p3}"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("ADDED-1")).await.unwrap()), "AA");
    drop(c);
    tokio::time::sleep(Duration::from_millis(400)).await;

    // A bad file: refused with its key and line, and everything keeps running as it was.
    std::fs::write(
        g.dir.path().join("caregate.toml"),
        format!("{second}[[source]]\nname = \"broken\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:1\"\ncolour = \"red\"\n"),
    )
    .unwrap();
    let e = g
        .running
        .as_mut()
        .unwrap()
        .reload_from_file()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
    assert!(e.line.is_some(), "{e}");
    assert_eq!(g.running().config().sources.len(), 2);
    let mut c = Client::connect(&format!("127.0.0.1:{p3}"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("ADDED-2")).await.unwrap()), "AA");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The added source removed again.
    let third = config(g.dir.path(), &[("lab", p2)], "");
    let report = reload_with(&mut g, &third).await;
    assert_eq!(report.removed, ["lab2"], "{report}");
    assert!(report.restarted.is_empty(), "lab is unchanged: {report}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", p3)).is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let after_move = acked.len() - before_move;
    assert!(
        before_move > 20 && after_move > 20,
        "load too small to mean anything: {before_move} before the move, {after_move} after"
    );
    let counts = assert_stored_once(g.queue(), "north", &acked);
    assert!(counts.contains_key("ADDED-1") && counts.contains_key("ADDED-2"));
    eprintln!(
        "reload under load: {} messages ACKed, {} resent after a closed connection",
        acked.len(),
        resent.lock().unwrap()
    );
    assert!(g.stop().await.is_empty());
}

/// The server certificate's DER as a client sees it.
async fn peer_certificate(addr: &str, ca: &Path) -> Result<Vec<u8>, String> {
    let config = caregate::mllp::tls::client_config(Some(ca), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

fn tls_config_text(dir: &Path, port: u16, tls: &Path) -> String {
    format!(
        "{}[source.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        config(dir, &[("lab", port)], ""),
        tls.join("server.pem").display(),
        tls.join("server.key").display()
    )
}

#[tokio::test]
async fn tls_certificates_are_read_again_and_open_connections_keep_theirs() {
    let (old, new) = (support::pki(), support::pki());
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let install = |pki: &support::Pki| {
        std::fs::copy(&pki.server_cert, tls.join("server.pem")).unwrap();
        std::fs::copy(&pki.server_key, tls.join("server.key")).unwrap();
    };
    install(&old);
    let port = free_port();
    let text = tls_config_text(dir.path(), port, &tls);
    let mut g = Gateway::start_text(dir, &text).await;
    let addr = format!("127.0.0.1:{port}");
    let first = peer_certificate(&addr, &old.ca).await.unwrap();
    let config = caregate::mllp::tls::client_config(Some(&old.ca), None).unwrap();
    let mut open = Client::connect_tls(&addr, "localhost", config, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code(&open.send(&oru("TLS-1")).await.unwrap()), "AA");

    // A broken certificate file: the reload is refused and the listener keeps the old one.
    std::fs::write(tls.join("server.pem"), "not a certificate").unwrap();
    let report = reload_with(&mut g, &text).await;
    assert!(!report.failed.is_empty(), "{report}");
    assert!(report.tls_reloaded.is_empty(), "{report}");
    assert_eq!(peer_certificate(&addr, &old.ca).await.unwrap(), first);

    // The renewed certificate (another CA here, so the change is visible to a client).
    install(&new);
    let report = reload_with(&mut g, &text).await;
    assert_eq!(report.tls_reloaded, ["lab"], "{report}");
    assert!(
        report.restarted.is_empty(),
        "the listener is not restarted: {report}"
    );
    let second = peer_certificate(&addr, &new.ca).await.unwrap();
    assert_ne!(first, second);
    assert!(
        peer_certificate(&addr, &old.ca).await.is_err(),
        "new connections get the new certificate"
    );
    assert_eq!(
        code(&open.send(&oru("TLS-2")).await.unwrap()),
        "AA",
        "the connection opened before the reload keeps working"
    );
    assert!(g.stop().await.is_empty());
}

#[tokio::test]
async fn a_changed_tenant_gets_a_new_worker_and_new_tokens_apply_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let upstream = "[tenant.upstream]\nurl = \"https://127.0.0.1:1/fhir\"\n";
    let text = format!("{}{upstream}", config(dir.path(), &[("lab", port)], ""));
    let mut g = Gateway::start_text(dir, &text).await;
    let status = format!("http://{}/status", g.running().admin);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let http = reqwest::Client::new();
    let before = http
        .get(&status)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(
        before.status(),
        403,
        "no token configured yet: the operator API is refused"
    );

    let tokens = support::admin_token_toml("ops", "system-admin", None, ADMIN_TOKEN);
    let changed = format!(
        "{}{upstream}",
        config(g.dir.path(), &[("lab", port)], &tokens)
    )
    .replace("America/Chicago", "Europe/Berlin");
    let report = reload_with(&mut g, &changed).await;
    assert_eq!(report.tenants, ["north"], "{report}");
    assert!(report.restarted.is_empty(), "{report}");
    assert!(report.failed.is_empty(), "{report}");
    let after = http
        .get(&status)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);

    // Unchanged file: nothing restarts.
    let report = reload_with(&mut g, &changed).await;
    assert_eq!(report, caregate::app::ReloadReport::default());

    // Queue limits apply from the next message (the upstream is unreachable: stored ones stay).
    let limit = |n: u32| {
        changed.replace(
            "[[tenant]]",
            &format!("[queue]\nmax_messages = {n}\n[[tenant]]"),
        )
    };
    let report = reload_with(&mut g, &limit(1)).await;
    assert_eq!(report.applied, ["queue"], "{report}");
    assert!(
        report.restart_required.is_empty() && report.tenants.is_empty(),
        "{report}"
    );
    let mut c = g.client().await;
    assert_eq!(code(&c.send(&oru("AFTER-RELOAD")).await.unwrap()), "AA");
    let full = c.send(&oru("OVER-LIMIT")).await.unwrap();
    assert_eq!(code(&full), "AR", "the lowered limit holds: {}", full.raw);
    let report = reload_with(&mut g, &limit(5)).await;
    assert_eq!(report.applied, ["queue"], "{report}");
    assert_eq!(
        code(&c.send(&oru("OVER-LIMIT")).await.unwrap()),
        "AA",
        "room made without a restart"
    );
    assert_eq!(g.queue().scan("north").unwrap().len(), 2);

    // Settings only a restart applies are named, and the running values stay.
    let audit_changed =
        limit(5).replace("[[tenant]]", "[audit]\nrotate_every = \"1h\"\n[[tenant]]");
    let report = reload_with(&mut g, &audit_changed).await;
    assert_eq!(report.restart_required, ["audit"], "{report}");
    assert!(g.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_webhooks_are_replaced_in_place() {
    let (first, second) = (
        crate::forward::webhook().await,
        crate::forward::webhook().await,
    );
    let hook = |url: &str| format!("[[alert.webhook]]\nurl = \"{url}\"\n");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config(dir.path(), &[("lab", port)], &hook(&first.url));
    let mut g = Gateway::start_text(dir, &text).await;
    let critical = |id: &str| {
        String::from_utf8(crate::forward::lab(id, "MRN1", 90))
            .unwrap()
            .replace("4.1|mmol/L|3.5-5.1|N", "7.9|mmol/L|3.5-5.1|HH")
            .into_bytes()
    };
    let got = |h: &crate::forward::Hook| -> Vec<String> {
        let got = h.got.lock().unwrap();
        got.iter()
            .map(|v| v["control_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let mut c = g.client().await;
    assert_eq!(code(&c.send(&critical("K1")).await.unwrap()), "AA");
    support::eventually(10, "the first webhook got K1", || {
        let n = got(&first).len();
        async move { n == 1 }
    })
    .await;

    let moved = config(g.dir.path(), &[("lab", port)], &hook(&second.url));
    let report = reload_with(&mut g, &moved).await;
    assert_eq!(report.applied, ["alert"], "{report}");
    assert!(
        report.restart_required.is_empty() && report.failed.is_empty(),
        "{report}"
    );
    assert!(
        report.restarted.is_empty(),
        "the source keeps running: {report}"
    );
    assert_eq!(code(&c.send(&critical("K2")).await.unwrap()), "AA");
    support::eventually(10, "the second webhook got K2", || {
        let n = got(&second).len();
        async move { n == 1 }
    })
    .await;
    assert_eq!(got(&second), ["K2"]);

    // A webhook whose CA file does not load refuses the reload; the running list stays.
    let broken = format!("{}ca_file = \"/nonexistent/ca.pem\"\n", hook(&first.url));
    let broken = config(g.dir.path(), &[("lab", port)], &broken);
    let report = reload_with(&mut g, &broken).await;
    assert!(report.applied.is_empty(), "{report}");
    assert!(
        report.failed.iter().any(|(part, _)| part == "alert"),
        "{report}"
    );
    assert_eq!(code(&c.send(&critical("K3")).await.unwrap()), "AA");
    support::eventually(10, "the second webhook got K3", || {
        let n = got(&second).len();
        async move { n == 2 }
    })
    .await;
    assert_eq!(
        got(&first),
        ["K1"],
        "the old webhook got nothing after the reload"
    );
    assert!(g.stop().await.is_empty());
}
