//! Store-and-forward end to end: MLLP in, the real FHIR server (Node, medplum in memory, HTTPS)
//! out. Delivery once per resource, order per source, outages (refused, 503, 429 with
//! Retry-After) with breaker and alert, dead letters and replay, tenant separation, OAuth2.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caregate::mllp::client::Client;
use serde_json::Value;

pub(crate) use crate::support::eventually;

use crate::support::fhir_server::{Fault, FhirServer, Options};
use crate::support::{Gateway, Pki, code, pki};

/// A lab result with two OBX for patient `mrn` (synthetic).
pub(crate) fn lab(control: &str, mrn: &str, glucose: u32) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\r\
         PID|1||{mrn}^^^NORTH-MRN^MR||DOE^JANE||19800101|F\r\
         OBR|1||ORD-{control}|24323-8^Metabolic panel^LN|||20240105100000\r\
         OBX|1|NM|2345-7^Glucose^LN||{glucose}|mg/dL|70-99|N|||F\r\
         OBX|2|NM|2823-3^Potassium^LN||4.1|mmol/L|3.5-5.1|N|||F\r"
    )
    .into_bytes()
}

const OBS_PER_MESSAGE: u64 = 2;

/// Collects webhook POSTs.
pub(crate) struct Hook {
    pub(crate) url: String,
    pub(crate) got: Arc<Mutex<Vec<Value>>>,
}

pub(crate) async fn webhook() -> Hook {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/alerts",
        post(move |axum::Json(v): axum::Json<Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    Hook { url, got }
}

impl Hook {
    fn kinds(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

pub(crate) struct Tenant<'a> {
    pub(crate) id: &'a str,
    pub(crate) source: &'a str,
    pub(crate) server: &'a FhirServer,
    pub(crate) extra: &'a str,
}

pub(crate) fn config(
    dir: &std::path::Path,
    pki: &Pki,
    tenants: &[Tenant<'_>],
    hook: Option<&str>,
) -> String {
    let mut text = format!(
        "data_dir = \"{}\"\nshutdown_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        dir.join("data").display(),
        crate::support::admin_token_toml("ops", "system-admin", None, crate::support::ADMIN_TOKEN)
    );
    for t in tenants {
        text.push_str(&format!(
            r#"[[tenant]]
id = "{id}"
timezone = "America/Chicago"
[tenant.upstream]
url = "{url}"
ca_file = "{ca}"
retry_initial = "50ms"
retry_max = "500ms"
breaker_failures = 3
breaker_open_for = "300ms"
alert_after = "1s"
alert_repeat = "2s"
batch_messages = 8
{extra}
"#,
            id = t.id,
            url = t.server.base_url(),
            ca = pki.ca.display(),
            extra = t.extra,
        ));
    }
    for t in tenants {
        text.push_str(&format!(
            "[[source]]\nname = \"{}\"\ntenant = \"{}\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:0\"\n",
            t.source, t.id
        ));
    }
    if let Some(h) = hook {
        text.push_str(&format!("[[alert.webhook]]\nurl = \"{h}\"\n"));
    }
    text
}

pub(crate) async fn start(pki: &Pki, tenants: &[Tenant<'_>], hook: Option<&str>) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), pki, tenants, hook);
    Gateway::start_text(dir, &text).await
}

/// One tenant `north` with its MLLP source `lab`, forwarding to `server`.
pub(crate) async fn start_north(
    pki: &Pki,
    server: &FhirServer,
    extra: &str,
    hook: Option<&str>,
) -> Gateway {
    let tenant = Tenant {
        id: "north",
        source: "lab",
        server,
        extra,
    };
    start(pki, std::slice::from_ref(&tenant), hook).await
}

pub(crate) async fn client_for(g: &Gateway, source: &str) -> Client {
    let addr = g.running().mllp_addr(source).unwrap();
    Client::connect(&addr.to_string(), Duration::from_secs(10))
        .await
        .unwrap()
}

pub(crate) async fn send_all(c: &mut Client, msgs: &[Vec<u8>]) {
    for m in msgs {
        let reply = c.send(m).await.unwrap();
        assert_eq!(code(&reply), "AA");
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Message indexes in the order their Observations first reached the server in a committed
/// transaction.
pub(crate) async fn delivery_order(server: &FhirServer, ids: &[Vec<String>]) -> Vec<usize> {
    let owner: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, v)| v.iter().map(move |id| (id.as_str(), i)))
        .collect();
    let mut seen = Vec::new();
    for r in server.requests().await {
        if r.method != "POST" || r.status != 200 || !r.path.starts_with("/fhir") {
            continue;
        }
        for t in &r.touched {
            if let Some(id) = t.strip_prefix("PUT Observation/") {
                if let Some(&i) = owner.get(id) {
                    if !seen.contains(&i) {
                        seen.push(i);
                    }
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_over_mllp_arrive_once_each_as_valid_resources() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let g = start(
        &pki,
        &[Tenant {
            id: "north",
            source: "lab",
            server: &server,
            extra: "",
        }],
        None,
    )
    .await;
    let msgs: Vec<Vec<u8>> = (0..20)
        .map(|i| lab(&format!("E2E{i:03}"), &format!("MRN{}", i % 3), 90 + i))
        .collect();
    let mut c = client_for(&g, "lab").await;
    send_all(&mut c, &msgs).await;
    let want = msgs.len() as u64 * OBS_PER_MESSAGE;
    eventually(30, "every Observation at the server", || async {
        server.count("Observation").await == want
    })
    .await;
    eventually(10, "the queue drained", || async {
        g.queue().depth().0 == 0
    })
    .await;
    // A sender's resend of every message: recognised, ACKed, nothing new at the server.
    send_all(&mut c, &msgs).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.count("Observation").await, want);
    assert_eq!(server.count("Patient").await, 3, "one Patient per MRN");
    assert_eq!(server.count("DiagnosticReport").await, msgs.len() as u64);
    // Every request carried a correlation id with the tenant, and the FHIR media type worked.
    let reqs = server.requests().await;
    let posts: Vec<_> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert!(!posts.is_empty());
    for r in &posts {
        let id = r.request_id.as_deref().unwrap_or_default();
        assert!(id.starts_with("cg-north-"), "correlation id {id:?}");
        assert_eq!(r.http_version, "2", "HTTP/2 by ALPN");
    }
    // Batched: fewer requests than messages.
    assert!(
        posts.len() < msgs.len(),
        "{} requests for {} messages",
        posts.len(),
        msgs.len()
    );
    // The values survived: search by the derived id.
    let ids = observation_ids("north", "lab", &msgs[5]);
    let obs = server
        .search("Observation", &format!("_id={}", ids[0]))
        .await;
    assert_eq!(obs["entry"][0]["resource"]["valueQuantity"]["value"], 95);
    let text = g.metrics_text();
    assert_eq!(
        metric(
            &text,
            "caregate_messages_forwarded_total{tenant=\"north\",source=\"lab\"}"
        ),
        msgs.len() as f64
    );
    let status = g.running().admin_api.status().await.unwrap();
    assert_eq!(status.tenants[0].forwarded, msgs.len() as u64);
    assert_eq!(status.tenants[0].upstream.as_ref().unwrap().state, "ok");
    assert!(g.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_refused_then_503_then_429_then_back_delivers_everything_in_order() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let hook = webhook().await;
    let g = start(
        &pki,
        &[Tenant {
            id: "north",
            source: "lab",
            server: &server,
            extra: "",
        }],
        Some(&hook.url),
    )
    .await;
    let msgs: Vec<Vec<u8>> = (0..36)
        .map(|i| lab(&format!("OUT{i:03}"), &format!("MRN{}", i % 4), 100 + i))
        .collect();
    let ids: Vec<Vec<String>> = msgs
        .iter()
        .map(|m| observation_ids("north", "lab", m))
        .collect();
    let mut c = client_for(&g, "lab").await;

    // 1. Connection refused: messages are still ACKed (stored), the breaker opens, an alert
    //    goes out after alert_after.
    server.set_fault(Fault::Refuse).await;
    send_all(&mut c, &msgs[..12]).await;
    eventually(10, "breaker open", || async {
        metric(
            &g.metrics_text(),
            "caregate_upstream_breaker_trips_total{tenant=\"north\"}",
        ) >= 1.0
    })
    .await;
    eventually(10, "outage alert on the webhook", || async {
        hook.kinds().iter().any(|k| k == "upstream-down")
    })
    .await;
    let status = g.running().admin_api.status().await.unwrap();
    let up = status.tenants[0].upstream.clone().unwrap();
    assert!(up.alert_active);
    assert!(up.failing_since.is_some());
    assert!(
        up.last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("connect"),
        "{up:?}"
    );

    // 2. The server is back but answers 503.
    server.set_fault(Fault::status(503)).await;
    send_all(&mut c, &msgs[12..24]).await;
    eventually(10, "503s seen", || async {
        server.requests().await.iter().any(|r| r.status == 503)
    })
    .await;

    // 3. 429 with Retry-After: 1.
    server
        .set_fault(Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
            count: Some(3),
            matching: None,
        })
        .await;
    send_all(&mut c, &msgs[24..]).await;

    // 4. Back to normal (after the three 429s): everything arrives, once, in order.
    let want = msgs.len() as u64 * OBS_PER_MESSAGE;
    eventually(60, "every Observation at the server", || async {
        server.count("Observation").await == want
    })
    .await;
    server.set_fault(Fault::None).await;
    eventually(10, "recovery notice", || async {
        hook.kinds().iter().any(|k| k == "upstream-recovered")
    })
    .await;
    let order = delivery_order(&server, &ids).await;
    assert_eq!(
        order,
        (0..msgs.len()).collect::<Vec<_>>(),
        "per-source FIFO"
    );
    // Retry-After was honoured: after each 429 the next request waited about a second.
    let reqs = server.requests().await;
    assert_eq!(reqs.iter().filter(|r| r.status == 429).count(), 3);
    // Alerts carry no patient data: only the fields of the payload, no MRN.
    for a in hook.got.lock().unwrap().iter() {
        assert_eq!(a["tenant"], "north");
        let text = a.to_string();
        assert!(!text.contains("MRN") && !text.contains("DOE"), "{text}");
        for k in ["since", "queue_depth", "last_error", "upstream"] {
            assert!(a.get(k).is_some(), "alert lacks {k}: {text}");
        }
    }
    let text = g.metrics_text();
    assert!(
        metric(
            &text,
            "caregate_alerts_total{tenant=\"north\",kind=\"upstream-down\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &text,
            "caregate_alert_active{tenant=\"north\",kind=\"upstream-down\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(&text, "caregate_upstream_breaker_state{tenant=\"north\"}"),
        0.0
    );
    assert!(g.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_dead_lettered_the_rest_flows_and_replay_delivers_it() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let g = start(
        &pki,
        &[Tenant {
            id: "north",
            source: "lab",
            server: &server,
            extra: "",
        }],
        None,
    )
    .await;
    // The server refuses (422) any request carrying BADMRN, until the cause is "fixed".
    server
        .set_fault(Fault::Status {
            status: 422,
            retry_after: None,
            count: None,
            matching: Some("BADMRN".into()),
        })
        .await;
    let msgs: Vec<Vec<u8>> = (0..7)
        .map(|i| {
            let mrn = if i == 3 {
                "BADMRN".to_owned()
            } else {
                format!("MRN{i}")
            };
            lab(&format!("DL{i:03}"), &mrn, 80 + i)
        })
        .collect();
    let mut c = client_for(&g, "lab").await;
    send_all(&mut c, &msgs).await;
    eventually(30, "six messages delivered", || async {
        server.count("Observation").await == 6 * OBS_PER_MESSAGE
    })
    .await;
    eventually(10, "one dead letter", || async {
        caregate::admin::list_dead_letters(g.queue(), Some("north"))
            .unwrap()
            .len()
            == 1
    })
    .await;
    let dead = caregate::admin::list_dead_letters(g.queue(), Some("north")).unwrap();
    assert_eq!(dead[0].control_id, "DL003");
    assert_eq!(dead[0].reason["stage"], "upstream");
    assert_eq!(dead[0].reason["status"], 422);
    assert_eq!(
        dead[0].reason["outcome"]["resourceType"], "OperationOutcome",
        "the server's OperationOutcome is kept: {}",
        dead[0].reason
    );
    // Later messages of the same source were not held back.
    let later = observation_ids("north", "lab", &msgs[6]);
    assert_eq!(
        server
            .search("Observation", &format!("_id={}", later[0]))
            .await["total"],
        1
    );

    // Fix the cause, replay through the admin API over HTTP.
    server.set_fault(Fault::None).await;
    let admin = format!("http://{}", g.running().admin);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{admin}/queue/replay/north/{}", dead[0].id))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(30, "the replayed message delivered", || async {
        server.count("Observation").await == 7 * OBS_PER_MESSAGE
    })
    .await;
    let listed: Vec<Value> = http
        .get(format!("{admin}/queue/dead-letters?tenant=north"))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty());
    // Purge refuses anything that is not parked.
    let r = http
        .delete(format!("{admin}/queue/dead-letters/north/{}", dead[0].id))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = g.metrics_text();
    assert_eq!(
        metric(
            &text,
            "caregate_messages_dead_lettered_total{tenant=\"north\",source=\"lab\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "caregate_operator_actions_total{tenant=\"north\",action=\"replay\"}"
        ),
        1.0
    );
    assert!(g.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_separate_upstreams_never_mix() {
    let pki = pki();
    let (Some(a), Some(b)) = (
        FhirServer::start(&pki, Options::default()).await,
        FhirServer::start(&pki, Options::default()).await,
    ) else {
        return;
    };
    let g = start(
        &pki,
        &[
            Tenant {
                id: "north",
                source: "lab-n",
                server: &a,
                extra: "",
            },
            Tenant {
                id: "south",
                source: "lab-s",
                server: &b,
                extra: "",
            },
        ],
        None,
    )
    .await;
    // Same patient identifiers, same control ids, in both tenants.
    let msgs: Vec<Vec<u8>> = (0..5)
        .map(|i| lab(&format!("SAME{i}"), "MRN1", 90 + i))
        .collect();
    let mut cn = client_for(&g, "lab-n").await;
    let mut cs = client_for(&g, "lab-s").await;
    send_all(&mut cn, &msgs).await;
    send_all(&mut cs, &msgs).await;
    let want = msgs.len() as u64 * OBS_PER_MESSAGE;
    for s in [&a, &b] {
        eventually(30, "both tenants delivered", || async {
            s.count("Observation").await == want
        })
        .await;
    }
    for (server, mine, theirs) in [
        (&a, ("north", "lab-n"), ("south", "lab-s")),
        (&b, ("south", "lab-s"), ("north", "lab-n")),
    ] {
        let own: Vec<String> = msgs
            .iter()
            .flat_map(|m| observation_ids(mine.0, mine.1, m))
            .collect();
        let other: Vec<String> = msgs
            .iter()
            .flat_map(|m| observation_ids(theirs.0, theirs.1, m))
            .collect();
        for r in server
            .requests()
            .await
            .iter()
            .filter(|r| r.method == "POST")
        {
            let id = r.request_id.as_deref().unwrap_or_default();
            assert!(id.starts_with(&format!("cg-{}-", mine.0)), "{id}");
            for t in &r.touched {
                assert!(
                    !other.iter().any(|o| t.contains(o.as_str())),
                    "{} got {t}",
                    mine.0
                );
                assert!(!t.contains(theirs.0), "{} got {t}", mine.0);
            }
        }
        for id in &own {
            assert_eq!(
                server.search("Observation", &format!("_id={id}")).await["total"],
                1
            );
        }
    }
    let status = g.running().admin_api.status().await.unwrap();
    for t in &status.tenants {
        let up = t.upstream.as_ref().unwrap();
        let port = if t.tenant == "north" {
            a.port()
        } else {
            b.port()
        };
        assert!(
            up.endpoint.contains(&format!(":{port}/")),
            "{} → {}",
            t.tenant,
            up.endpoint
        );
        assert_eq!(t.forwarded, msgs.len() as u64);
    }
    for s in &status.sources {
        assert_eq!(
            s.tenant,
            if s.source == "lab-n" {
                "north"
            } else {
                "south"
            }
        );
    }
    assert!(g.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_fetch_and_refresh_tokens() {
    let pki = pki();
    let Some(server) = FhirServer::start(
        &pki,
        Options {
            bearer: None,
            oauth: Some(("caregate-north".into(), "s3cret".into())),
        },
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let extra = format!(
        "[tenant.upstream.oauth2]\ntoken_url = \"https://localhost:{}/oauth/token\"\nclient_id = \"caregate-north\"\nclient_secret_file = \"{}\"\nscope = \"system/*.write\"\n",
        server.port(),
        secret.display()
    );
    let g = start(
        &pki,
        &[Tenant {
            id: "north",
            source: "lab",
            server: &server,
            extra: &extra,
        }],
        None,
    )
    .await;
    let mut c = client_for(&g, "lab").await;
    send_all(&mut c, &[lab("OA1", "MRN1", 90)]).await;
    eventually(30, "first delivery", || async {
        server.count("Observation").await == 2
    })
    .await;
    // The platform revokes the token: the next request gets 401, caregate fetches a new one.
    server.revoke_tokens().await;
    send_all(&mut c, &[lab("OA2", "MRN1", 91)]).await;
    eventually(30, "delivery after token refresh", || async {
        server.count("Observation").await == 4
    })
    .await;
    let reqs = server.requests().await;
    let tokens = reqs
        .iter()
        .filter(|r| r.path.starts_with("/oauth/token"))
        .count();
    assert_eq!(tokens, 2, "one token, then one refresh after the 401");
    assert!(reqs.iter().any(|r| r.status == 401));
    assert!(
        reqs.iter()
            .filter(|r| r.method == "POST" && r.path.starts_with("/fhir"))
            .all(|r| r.auth.as_deref() == Some("Bearer"))
    );
    assert!(g.stop().await.is_empty());
}

/// Observation ids caregate derives for `msg` (the tests' tenants are in America/Chicago).
pub(crate) fn observation_ids(tenant: &str, source: &str, msg: &[u8]) -> Vec<String> {
    crate::support::observation_ids_in(tenant, source, "America/Chicago", msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_that_is_not_a_transaction_response_is_not_counted_as_delivered() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let hook = webhook().await;
    let g = start_north(&pki, &server, "", Some(&hook.url)).await;
    // Something on the way (a proxy, a login page, a wrong endpoint) answers 200 to every
    // request with an OperationOutcome and stores nothing.
    server.set_fault(Fault::status(200)).await;
    let msgs: Vec<Vec<u8>> = (0..4)
        .map(|i| lab(&format!("OK2XX{i}"), "MRN1", 100 + i))
        .collect();
    let mut c = client_for(&g, "lab").await;
    send_all(&mut c, &msgs).await;
    eventually(10, "route errors counted", || async {
        metric(
            &g.metrics_text(),
            "caregate_upstream_requests_total{tenant=\"north\",outcome=\"route_error\"}",
        ) >= 2.0
    })
    .await;
    eventually(10, "outage alert", || async {
        hook.kinds().iter().any(|k| k == "upstream-down")
    })
    .await;
    assert_eq!(
        g.queue().scan("north").unwrap().len(),
        4,
        "all still queued"
    );
    assert_eq!(server.count("Observation").await, 0);
    let status = g.running().admin_api.status().await.unwrap();
    let up = status.tenants[0].upstream.clone().unwrap();
    let why = up.last_error.unwrap_or_default();
    assert!(
        why.contains("HTTP 200") && why.contains("transaction-response"),
        "{why}"
    );

    // The real server again: everything arrives once, the queue drains.
    server.set_fault(Fault::None).await;
    eventually(60, "every Observation at the server", || async {
        server.count("Observation").await == msgs.len() as u64 * OBS_PER_MESSAGE
    })
    .await;
    eventually(10, "queue drained", || async {
        g.queue().scan("north").unwrap().is_empty()
    })
    .await;
    assert!(g.stop().await.is_empty());
}
