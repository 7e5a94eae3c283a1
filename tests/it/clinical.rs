//! Critical results and consent, end to end against the real FHIR server: a panic value is
//! alerted within a second of receipt while the upstream is down and jumps its tenant's
//! backlog; a withdrawn patient's results are held until reinstated, `required` holds everyone
//! without a consent on file.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::forward::{
    client_for, delivery_order, eventually, lab, observation_ids, send_all, start_north, webhook,
};
use crate::support::fhir_server::{Fault, FhirServer, Options};
use crate::support::{Gateway, pki};
use caregate::envelope::{Kind, Lane};
use caregate::queue::NewEnvelope;

/// A potassium result flagged HH for `mrn` (synthetic).
fn critical_potassium(control: &str, mrn: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\r\
         PID|1||{mrn}^^^NORTH-MRN^MR||CANARYNAME^JANE||19800101|F\r\
         OBR|1||ORD-{control}|24323-8^Metabolic panel^LN|||20240105100000\r\
         OBX|1|NM|2823-3^Potassium^LN||7.93|mmol/L|3.5-5.1|HH|||F\r"
    )
    .into_bytes()
}

async fn post_consent(g: &Gateway, tenant: &str, value: &str, status: &str) -> Value {
    let url = format!("http://{}/consent/{tenant}", g.running().admin);
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .json(&serde_json::json!({"system": "urn:caregate:north:identifiers:NORTH-MRN", "value": value, "status": status}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

fn audit_text(g: &Gateway, tenant: &str) -> String {
    let entries: Vec<_> = caregate::audit::export(
        &g.config.audit.dir,
        &caregate::audit::Tenant::parse(tenant).unwrap(),
        None,
        None,
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    format!("{entries:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_result_alerts_at_once_while_the_upstream_is_down_and_jumps_the_backlog() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    server.set_fault(Fault::Refuse).await;
    let hook = webhook().await;
    let g = start_north(&pki, &server, "", Some(&hook.url)).await;
    let mut c = client_for(&g, "lab").await;
    let backlog: Vec<Vec<u8>> = (0..50)
        .map(|i| lab(&format!("BK{i:03}"), &format!("MRN{}", i % 5), 90))
        .collect();
    send_all(&mut c, &backlog).await;

    let crit = critical_potassium("CRIT1", "CANARY-MRN-77");
    let sent = Instant::now();
    send_all(&mut c, std::slice::from_ref(&crit)).await;
    let mut alert = None;
    while sent.elapsed() < Duration::from_secs(10) {
        alert = hook
            .got
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["kind"] == "critical-result")
            .cloned();
        if alert.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = sent.elapsed();
    let alert = alert.expect("critical-result alert on the webhook");
    eprintln!("receipt-to-alert (send of the frame to webhook POST seen): {took:?}");
    assert!(took < Duration::from_secs(5), "sanity bound: {took:?}");
    assert_eq!(alert["tenant"], "north");
    assert_eq!(alert["source"], "lab");
    assert_eq!(alert["control_id"], "CRIT1");
    assert_eq!(alert["results"][0]["code"], "2823-3");
    assert_eq!(alert["results"][0]["flag"], "HH");
    assert!(alert["patient_ref"].as_str().is_some_and(|p| p.len() >= 32));
    let text = alert.to_string();
    for canary in ["7.93", "CANARYNAME", "CANARY-MRN-77", "JANE", "19800101"] {
        assert!(!text.contains(canary), "{canary} in {text}");
    }
    let id = alert["envelope_id"].as_u64().unwrap();
    let env = g.queue().get("north", id).unwrap().unwrap();
    assert_eq!(env.lane, caregate::envelope::Lane::Critical);
    assert!(
        g.metrics_text()
            .contains("caregate_critical_results_total{tenant=\"north\",source=\"lab\"} 1")
    );

    // Upstream back: the critical message goes before the 50 waiting.
    server.set_fault(Fault::None).await;
    let order = delivered_in_order(&server, &backlog, &crit).await;
    // The request already in flight when it arrived (leased before it, retried while the
    // upstream was down) may go first: at most one batch (batch_messages = 8).
    let at = order.iter().position(|&i| i == 50).unwrap();
    eprintln!("critical delivered at position {at} of {}", order.len());
    assert!(at <= 8, "critical ahead of the backlog: {order:?}");
    assert!(audit_text(&g, "north").contains("AlertRaised"));
    g.stop().await;
}

/// Waits until the backlog and the critical message (index `backlog.len()`) are all delivered;
/// the message indexes in delivery order.
async fn delivered_in_order(server: &FhirServer, backlog: &[Vec<u8>], crit: &[u8]) -> Vec<usize> {
    let mut ids: Vec<Vec<String>> = backlog
        .iter()
        .map(|m| observation_ids("north", "lab", m))
        .collect();
    ids.push(observation_ids("north", "lab", crit));
    eventually(30, "everything delivered", || async {
        delivery_order(server, &ids).await.len() == ids.len()
    })
    .await;
    delivery_order(server, &ids).await
}

async fn delivered_patients(server: &FhirServer) -> Vec<String> {
    let mut out = Vec::new();
    for r in server.requests().await {
        if r.method == "POST" && r.status == 200 {
            for t in &r.touched {
                out.push(t.clone());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_patient_is_held_until_reinstated_and_required_holds_everyone() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let g = start_north(&pki, &server, "", None).await;
    let done = post_consent(&g, "north", "PATX", "withdrawn").await;
    assert!(done["released"].as_array().unwrap().is_empty());
    let mut c = client_for(&g, "lab").await;
    let x1 = lab("X1", "PATX", 90);
    let y1 = lab("Y1", "PATY", 91);
    let x2 = lab("X2", "PATX", 92);
    send_all(&mut c, &[x1.clone(), y1.clone(), x2.clone()]).await;
    let (xi1, yi, xi2) = (
        observation_ids("north", "lab", &x1),
        observation_ids("north", "lab", &y1),
        observation_ids("north", "lab", &x2),
    );
    let ids = vec![xi1, yi, xi2];
    eventually(20, "Y delivered and both X held", || async {
        let held = g
            .queue()
            .parked(Some("north"))
            .unwrap()
            .iter()
            .filter(|p| p.state == caregate::queue::Parked::Held)
            .count();
        delivery_order(&server, &ids).await == vec![1] && held == 2
    })
    .await;
    assert!(
        !delivered_patients(&server)
            .await
            .iter()
            .any(|t| t.contains("PATX"))
    );
    let done = post_consent(&g, "north", "PATX", "active").await;
    assert_eq!(done["released"].as_array().unwrap().len(), 2);
    eventually(20, "X delivered after reinstatement, in order", || async {
        delivery_order(&server, &ids).await == vec![1, 0, 2]
    })
    .await;
    assert!(g.queue().parked(Some("north")).unwrap().is_empty());
    let audit = audit_text(&g, "north");
    assert!(audit.contains("ConsentHeld") && audit.contains("ConsentReleased"));
    assert!(
        audit.contains("ConsentWithdrawn") && audit.contains("ConsentGranted"),
        "the operator's consent changes are in the trail"
    );
    g.stop().await;

    // consent = "required": nobody without a consent on file.
    server.reset().await;
    let dir = tempfile::tempdir().unwrap();
    let text = crate::forward::config(
        dir.path(),
        &pki,
        &[crate::forward::Tenant {
            id: "north",
            source: "lab",
            server: &server,
            extra: "",
        }],
        None,
    )
    .replacen(
        "timezone = \"America/Chicago\"\n",
        "timezone = \"America/Chicago\"\nconsent = \"required\"\n",
        1,
    );
    let g = Gateway::start_text(dir, &text).await;
    let mut c = client_for(&g, "lab").await;
    send_all(&mut c, &[x1.clone(), y1.clone()]).await;
    eventually(20, "both held under required", || async {
        g.queue().parked(Some("north")).unwrap().len() == 2
    })
    .await;
    assert!(delivery_order(&server, &ids).await.is_empty());
    let done = post_consent(&g, "north", "PATY", "active").await;
    assert_eq!(done["released"].as_array().unwrap().len(), 1);
    eventually(20, "Y delivered once its consent is on file", || async {
        delivery_order(&server, &ids).await == vec![1]
    })
    .await;
    assert_eq!(g.queue().parked(Some("north")).unwrap().len(), 1);
    g.stop().await;
}

/// The upstream works but slowly, and a backlog is being delivered (four requests' worth leased
/// at a time): a critical result stored meanwhile goes right after the request on the wire, not
/// after the rest of the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_result_cuts_into_a_backlog_being_delivered() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    // The backlog piles up while the upstream refuses connections, so the worker then leases
    // four requests' worth at once.
    server.set_fault(Fault::Refuse).await;
    let g = start_north(&pki, &server, "", None).await;
    let mut c = client_for(&g, "lab").await;
    let backlog: Vec<Vec<u8>> = (0..48)
        .map(|i| lab(&format!("SB{i:03}"), &format!("MRN{}", i % 5), 90))
        .collect();
    send_all(&mut c, &backlog).await;
    server.set_fault(Fault::Slow { ms: 600 }).await;
    // After the outage the breaker's half-open probe goes first (one message); then a full
    // request (8 messages) of the lease is on the wire.
    eventually(10, "a full request on the wire", || async {
        server
            .requests()
            .await
            .iter()
            .filter(|r| r.method == "POST")
            .count()
            >= 2
    })
    .await;
    let crit = critical_potassium("CRIT2", "MRN-CRIT-2");
    send_all(&mut c, std::slice::from_ref(&crit)).await;
    server.set_fault(Fault::None).await;
    let order = delivered_in_order(&server, &backlog, &crit).await;
    let at = order.iter().position(|&i| i == 48).unwrap();
    let sizes: Vec<_> = server
        .requests()
        .await
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| (r.status, r.entries))
        .collect();
    eprintln!(
        "critical delivered at position {at} of {}; requests {sizes:?}",
        order.len()
    );
    // Ahead of it: the probe (1 message) and the request on the wire when it arrived
    // (batch_messages = 8); at most one more request if its send had begun. Without the cut it
    // waits for the whole lease (position 33 here).
    assert!(at <= 17, "critical behind the leased backlog: {order:?}");
    g.stop().await;
}

fn fhir_consent(value: &str, status: &str, provision: Option<&str>) -> Value {
    let mut c = serde_json::json!({
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "patient": {"identifier": {"system": "urn:caregate:north:identifiers:NORTH-MRN", "value": value}},
    });
    if let Some(p) = provision {
        c["provision"] = serde_json::json!({"type": p});
    }
    c
}

/// `consent_pull`: the platform's Consent resources decide. A withdrawal found there holds the
/// patient's messages; a newer Consent that permits releases them; a Consent naming its patient
/// only by a literal reference changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_pulled_from_the_upstream_holds_and_releases() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    server
        .create(fhir_consent("PULLMRN", "active", Some("deny")))
        .await;
    let mut literal = fhir_consent("OTHER", "active", Some("deny"));
    literal["patient"] = serde_json::json!({"reference": "Patient/123"});
    server.create(literal).await;
    let g = start_north(&pki, &server, "consent_pull = \"1s\"", None).await;
    let url = format!("http://{}/consent/north", g.running().admin);
    let list = || async {
        reqwest::Client::new()
            .get(&url)
            .bearer_auth(crate::support::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    eventually(10, "the withdrawal pulled", || async {
        list().await.as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(list().await[0]["status"], "withdrawn");

    let mut c = client_for(&g, "lab").await;
    send_all(
        &mut c,
        &[lab("PULL-1", "PULLMRN", 91), lab("PULL-2", "OTHER", 92)],
    )
    .await;
    eventually(20, "the other patient forwarded", || async {
        server.count("Observation").await == 2
    })
    .await;
    eventually(10, "one message held", || async {
        g.running().admin_api.status().await.unwrap().tenants[0].held == 1
    })
    .await;

    // The patient consents again (a newer Consent): the held message goes.
    server
        .create(fhir_consent("PULLMRN", "active", Some("permit")))
        .await;
    eventually(20, "the held message released and forwarded", || async {
        server.count("Observation").await == 4
    })
    .await;
    assert_eq!(list().await[0]["status"], "active");
    let audit = audit_text(&g, "north");
    for action in [
        "ConsentWithdrawn",
        "ConsentGranted",
        "ConsentHeld",
        "ConsentReleased",
    ] {
        assert!(audit.contains(action), "no {action} in the audit trail");
    }
    assert!(
        !audit.contains("PULLMRN"),
        "the identifier is hashed in the trail"
    );
    g.stop().await;
}

/// An ASTM potassium result for `specimen`: status `status` (R-9), value and flag. A
/// correction carries the same analyzer, specimen, test and completion time, so it writes the
/// same Observation (the natural key, protocols.md §6.2).
fn astm_potassium(specimen: &str, status: &str, value: &str, flag: &str) -> Vec<u8> {
    format!(
        "H|\\^&|||ANALYZER^7^1.0^SN-COR\rP|1||PAT-COR1\rO|1|{specimen}||^^^K\r\
         R|1|^^^2823-3|{value}|mmol/L|3.5-5.1|{flag}||{status}||||20240105101500\rL|1|N\r"
    )
    .into_bytes()
}

fn envelope(source: &str, kind: Kind, lane: Lane, control: &str, payload: Vec<u8>) -> NewEnvelope {
    NewEnvelope {
        tenant: "north".into(),
        source: source.into(),
        received_at_us: jiff::Timestamp::now().as_microsecond(),
        peer: "127.0.0.1:1".into(),
        kind,
        lane,
        meta: caregate::envelope::Meta {
            control_id: control.into(),
            message_type: if kind == Kind::Astm {
                "ASTM^E1394"
            } else {
                "ORU^R01"
            }
            .into(),
            version: String::new(),
            sender: "LABSYS|MAINLAB".into(),
        },
        payload: payload.into(),
    }
}

/// Stored together behind a backlog: specimen 1's potassium result (normal), then its
/// correction, critical (HH), which goes first; specimen 2's result, a critical correction and
/// then a second, normal correction. Older results delivered after a critical one write the
/// same Observation: the critical one is delivered once more at its arrival place, and never
/// after a newer one. The server ends as strict arrival order would leave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_correction_sent_ahead_is_not_overwritten_by_the_result_it_corrects() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let g = start_north(&pki, &server, "", None).await;
    // batch_messages = 8: the older results go in later requests than the critical ones.
    let mut items: Vec<NewEnvelope> = (0..10)
        .map(|i| {
            let c = format!("BK{i:03}");
            envelope("lab", Kind::Hl7, Lane::Normal, &c, lab(&c, "MRN1", 90))
        })
        .collect();
    let sent = [
        ("SPEC-1", "F", "5.0", "N", Lane::Normal),
        ("SPEC-1", "C", "6.9", "HH", Lane::Critical),
        ("SPEC-2", "F", "5.0", "N", Lane::Normal),
        ("SPEC-2", "C", "6.9", "HH", Lane::Critical),
        ("SPEC-2", "C", "5.9", "N", Lane::Normal),
    ];
    for (i, (specimen, status, value, flag, lane)) in sent.iter().enumerate() {
        let m = astm_potassium(specimen, status, value, flag);
        items.push(envelope("lab", Kind::Astm, *lane, &format!("ASTM{i}"), m));
    }
    g.queue().push_all(items).await.unwrap();

    eventually(30, "everything delivered and the queue empty", || async {
        g.queue().depth().0 == 0
    })
    .await;
    let ids =
        |m: &[u8]| crate::support::astm_observation_ids_in("north", "lab", "America/Chicago", m);
    for (specimen, value, flag) in [("SPEC-1", 6.9, "HH"), ("SPEC-2", 5.9, "N")] {
        let id = ids(&astm_potassium(specimen, "C", "0", "N")).pop().unwrap();
        assert_eq!(
            ids(&astm_potassium(specimen, "F", "1", "N")),
            std::slice::from_ref(&id),
            "one natural key"
        );
        let found = server.search("Observation", &format!("_id={id}")).await;
        assert_eq!(found["total"], 1);
        let obs = &found["entry"][0]["resource"];
        assert_eq!(obs["status"], "corrected", "{specimen}: {obs}");
        assert_eq!(obs["valueQuantity"]["value"], value, "{specimen}: {obs}");
        assert_eq!(obs["interpretation"][0]["coding"][0]["code"], flag);
    }
    let metrics = g.metrics_text();
    assert!(
        metrics
            .contains("caregate_messages_resent_in_order_total{tenant=\"north\",source=\"lab\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("caregate_messages_forwarded_total{tenant=\"north\",source=\"lab\"} 15")
    );
    g.stop().await;
}
