//! caregate's converter output against a real FHIR R4 server (tests/fhir-server: Node,
//! `@medplum/fhir-router` in memory, HTTPS with a test-time certificate): every fixture's
//! transaction commits over h2 and a replay changes nothing, A01 then A08 give one Patient, a
//! failing entry rolls the whole transaction back, and the server's fault modes and auth flows
//! behave as the forwarder tests will rely on.
//!
//! Skips with a visible `SKIP:` line when node or tests/fhir-server/node_modules is missing
//! (`CAREGATE_REQUIRE_INTEROP=1`, as in CI, turns that into a failure).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use caregate::convert::{self, Context};
use reqwest::{StatusCode, Version};
use serde_json::Value;

use crate::support;
use crate::support::fhir_server::{Fault, FhirServer, Options};

fn hl7_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// The Bundle JSON caregate sends for `tests/fixtures/hl7/<stem>.hl7` (context as in convert.rs).
fn converted(path: &Path) -> Result<String, convert::Error> {
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let mut systems = BTreeMap::new();
    systems.insert("HOSP".to_owned(), "https://hospital.example/mrn".to_owned());
    systems.insert(
        "HOSPVN".to_owned(),
        "https://hospital.example/visit".to_owned(),
    );
    let ctx = Context {
        tenant: "north",
        source: "lab-lis",
        timezone: &tz,
        identifier_systems: &systems,
        system_base: "urn:caregate",
    };
    let raw = std::fs::read(path).unwrap();
    convert::convert_bytes(&ctx, &raw).map(|c| c.bundle.to_json())
}

fn bundle(stem: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/hl7/{stem}.hl7"));
    converted(&path).unwrap()
}

/// POSTs a Bundle to the base; status, HTTP version and JSON body.
async fn post(
    client: &reqwest::Client,
    server: &FhirServer,
    body: &str,
    request_id: &str,
) -> (StatusCode, Version, Value) {
    let resp = client
        .post(server.base_url())
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("x-request-id", request_id)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let (status, version) = (resp.status(), resp.version());
    (status, version, resp.json().await.unwrap())
}

/// Stored resources per type, for every type in `types`.
async fn counts(server: &FhirServer, types: &BTreeSet<String>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in types {
        out.insert(t.clone(), server.count(t).await);
    }
    out
}

fn resource_types(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_fixture_commits_over_h2_and_a_replay_leaves_the_counts_unchanged() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let client = server.client(false);
    let mut failures = Vec::new();
    let mut posted = 0;
    for path in hl7_fixtures() {
        let stem = stem(&path);
        let Ok(json) = converted(&path) else {
            continue; // fixtures caregate rejects are convert.rs's business
        };
        let types = resource_types(&serde_json::from_str(&json).unwrap());
        let entries = serde_json::from_str::<Value>(&json).unwrap()["entry"]
            .as_array()
            .unwrap()
            .len();

        let (status, version, body) = post(&client, &server, &json, &format!("{stem}-1")).await;
        assert_eq!(version, Version::HTTP_2, "{stem}: h2 by ALPN");
        if status != StatusCode::OK {
            failures.push(format!("{stem}: first POST {status}: {body}"));
            continue;
        }
        assert_eq!(body["type"], "transaction-response", "{stem}");
        assert_eq!(body["entry"].as_array().unwrap().len(), entries, "{stem}");
        let after_first = counts(&server, &types).await;

        let (status, _, body) = post(&client, &server, &json, &format!("{stem}-2")).await;
        if status != StatusCode::OK {
            failures.push(format!("{stem}: replay {status}: {body}"));
            continue;
        }
        let after_replay = counts(&server, &types).await;
        if after_first != after_replay {
            failures.push(format!(
                "{stem}: replay changed counts {after_first:?} -> {after_replay:?}"
            ));
        }
        posted += 1;
    }
    assert!(posted >= 6, "only {posted} fixtures posted; {failures:#?}");
    assert!(failures.is_empty(), "{failures:#?}");

    let log = server.requests().await;
    let bundles: Vec<_> = log.iter().filter(|r| r.entries.is_some()).collect();
    assert_eq!(bundles.len(), 2 * posted);
    for r in bundles {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/fhir"));
        assert_eq!(r.http_version, "2");
        assert!(r.request_id.is_some(), "{r:?}");
        assert_eq!(r.touched.len() as u64, r.entries.unwrap());
    }
}

#[tokio::test]
async fn admission_then_update_then_results_share_one_patient() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let client = server.client(false);
    for stem in [
        "adt_a01_admit_inpatient",
        "adt_a08_update_name_address_discharge",
        "oru_r01_cbc_with_abnormal_flags",
    ] {
        let (status, _, body) = post(&client, &server, &bundle(stem), stem).await;
        assert_eq!(status, StatusCode::OK, "{stem}: {body}");
    }
    assert_eq!(server.count("Patient").await, 1);
    assert_eq!(server.count("Encounter").await, 1);

    let found = server
        .search("Patient", "identifier=https://hospital.example/mrn|MRN123")
        .await;
    assert_eq!(found["total"], 1);
    let patient = &found["entry"][0]["resource"];
    let a08: Value =
        serde_json::from_str(&bundle("adt_a08_update_name_address_discharge")).unwrap();
    assert_eq!(
        patient["name"], a08["entry"][0]["resource"]["name"],
        "the A08 name replaced the A01 name"
    );
    let summary = server
        .search(
            "Patient",
            "identifier=https://hospital.example/mrn|MRN123&_summary=count",
        )
        .await;
    assert_eq!(
        (summary["total"].clone(), summary.get("entry")),
        (Value::from(1), None)
    );

    // The ORU's Observations point at the admitted Patient (urn:uuid rewritten by the server).
    let patient_ref = format!("Patient/{}", patient["id"].as_str().unwrap());
    let observations = server
        .search("Observation", &format!("subject={patient_ref}"))
        .await;
    let oru: Value = serde_json::from_str(&bundle("oru_r01_cbc_with_abnormal_flags")).unwrap();
    let oru_observations = oru["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .count();
    assert_eq!(observations["total"], oru_observations);
}

#[tokio::test]
async fn a_failing_entry_rolls_the_whole_transaction_back() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let mut broken: Value =
        serde_json::from_str(&bundle("oru_r01_cbc_with_abnormal_flags")).unwrap();
    let last = broken["entry"].as_array().unwrap().len() - 1;
    broken["entry"][last]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("code"); // Observation.code is required
    let (status, _, body) = post(
        &server.client(false),
        &server,
        &broken.to_string(),
        "broken",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let expression = body["issue"][0]["expression"].to_string();
    assert!(
        expression.contains(&format!("Bundle.entry[{last}]")),
        "{body}"
    );
    for t in ["Patient", "Encounter", "DiagnosticReport", "Observation"] {
        assert_eq!(
            server.count(t).await,
            0,
            "{t} committed by a failed transaction"
        );
    }
}

#[tokio::test]
async fn refuse_drops_connections_and_recovers_on_the_same_port() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let client = server.client(false);
    let json = bundle("adt_a01_admit_inpatient");
    assert_eq!(
        post(&client, &server, &json, "before").await.0,
        StatusCode::OK
    );

    server.set_fault(Fault::Refuse).await;
    let refused = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // The pooled h2 connection is gone too: the same client cannot get through.
    let err = client
        .post(server.base_url())
        .header("content-type", "application/fhir+json")
        .body(json.clone())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    server.set_fault(Fault::None).await;
    assert_eq!(
        post(&client, &server, &json, "after").await.0,
        StatusCode::OK
    );
    assert_eq!(server.count("Patient").await, 1);
}

#[tokio::test]
async fn status_fault_answers_503_with_retry_after_for_count_requests() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let client = server.client(false);
    let json = bundle("oru_r01_cbc_with_abnormal_flags");
    server
        .set_fault(Fault::Status {
            status: 503,
            retry_after: Some("2".to_owned()),
            count: Some(1),
            matching: None,
        })
        .await;
    let resp = client
        .post(server.base_url())
        .header("content-type", "application/fhir+json")
        .body(json.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(server.count("Observation").await, 0);

    assert_eq!(
        post(&client, &server, &json, "retry").await.0,
        StatusCode::OK
    );
    let statuses: Vec<u16> = server.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);
}

#[tokio::test]
async fn match_limited_fault_rejects_only_the_marked_bundle() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let client = server.client(false);
    server
        .set_fault(Fault::Status {
            status: 422,
            retry_after: None,
            count: None,
            matching: Some("TEST0002".to_owned()), // the MRN of the value-types fixture only
        })
        .await;
    let mut got = Vec::new();
    for stem in [
        "oru_r01_cbc_with_abnormal_flags",
        "oru_r01_value_types_and_statuses",
        "pcd_01_monitor_vitals_with_compound_bp",
    ] {
        let (status, _, body) = post(&client, &server, &bundle(stem), stem).await;
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            assert_eq!(body["resourceType"], "OperationOutcome");
        }
        got.push(status.as_u16());
    }
    assert_eq!(got, [200, 422, 200]);
    let marked = server
        .search(
            "Patient",
            "identifier=https://hospital.example/mrn|TEST0002",
        )
        .await;
    assert_eq!(marked["total"], 0, "the rejected bundle stored nothing");
}

#[tokio::test]
async fn both_http1_and_h2_are_served_and_logged() {
    let pki = support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let json = bundle("adt_a01_admit_inpatient");
    let (status, version, _) = post(&server.client(true), &server, &json, "h1").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    let (status, version, _) = post(&server.client(false), &server, &json, "h2").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    let log: Vec<(String, Option<String>)> = server
        .requests()
        .await
        .into_iter()
        .map(|r| (r.http_version, r.request_id))
        .collect();
    assert_eq!(
        log,
        [
            ("1.1".to_owned(), Some("h1".to_owned())),
            ("2".to_owned(), Some("h2".to_owned()))
        ]
    );
    server.reset().await;
    assert!(server.requests().await.is_empty());
    assert_eq!(server.count("Patient").await, 0);
}

#[tokio::test]
async fn static_bearer_token_is_required() {
    let pki = support::pki();
    let options = Options {
        bearer: Some("s3cret".to_owned()),
        oauth: None,
    };
    let Some(server) = FhirServer::start(&pki, options).await else {
        return;
    };
    let client = server.client(false);
    let url = format!("{}/Patient", server.base_url());
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(none.headers().contains_key("www-authenticate"));
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let auth: Vec<Option<String>> = server
        .requests()
        .await
        .into_iter()
        .map(|r| r.auth)
        .collect();
    assert_eq!(
        auth,
        [None, Some("Bearer".to_owned()), Some("Bearer".to_owned())]
    );
}

#[tokio::test]
async fn oauth_tokens_are_issued_and_stop_working_when_revoked_or_expired() {
    let pki = support::pki();
    let options = Options {
        bearer: None,
        oauth: Some(("caregate".to_owned(), "client-secret".to_owned())),
    };
    let Some(server) = FhirServer::start(&pki, options).await else {
        return;
    };
    let client = server.client(false);
    let url = format!("{}/Patient", server.base_url());
    let status = |token: Option<String>| {
        let mut req = client.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status() }
    };

    let bad_secret = client
        .post(format!("https://localhost:{}/oauth/token", server.port()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "caregate"),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_secret.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);

    let token = server.token(&client).await;
    assert_eq!(status(Some(token.clone())).await, StatusCode::OK);
    server.revoke_tokens().await;
    assert_eq!(status(Some(token)).await, StatusCode::UNAUTHORIZED);
    let fresh = server.token(&client).await;
    assert_eq!(status(Some(fresh)).await, StatusCode::OK);

    // A zero lifetime means issued already expired: the refresh-on-401 case without waiting.
    server.token_ttl(0).await;
    let expired = server.token(&client).await;
    assert_eq!(status(Some(expired)).await, StatusCode::UNAUTHORIZED);
}
