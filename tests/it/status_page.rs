//! The status page (`GET /` on the admin listener) in a real browser, and the shipped Prometheus
//! alerting rules against the metrics the daemon really exports.
//!
//! The browser test runs tests/browser/status_page.mjs (playwright-core driving Debian's
//! /usr/bin/chromium) against a live gateway forwarding to the real FHIR server harness, with one
//! dead letter, and compares every number on the page with `/status`. It needs `node`,
//! `/usr/bin/chromium` and `tests/browser/node_modules` (`scripts/setup.sh`); without them it
//! prints `SKIP:` unless `CAREGATE_REQUIRE_INTEROP=1`. The screenshot goes to the test's
//! temporary directory, or to `$CAREGATE_ARTIFACTS_DIR` when set (to look at it afterwards).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use caregate::mllp::client::Client;
use serde_json::Value;

use crate::support::eventually;
use crate::support::fhir_server::{Fault, FhirServer, Options};
use crate::support::{Gateway, code, pki};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn browser_missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is not installed"));
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some("tests/browser/node_modules is missing".into());
    }
    None
}

fn skip(why: &str) {
    if std::env::var_os("CAREGATE_REQUIRE_INTEROP").is_some_and(|v| v == "1") {
        panic!("CAREGATE_REQUIRE_INTEROP=1 but {why}; run scripts/setup.sh");
    }
    eprintln!("SKIP: status page browser test: {why} (run scripts/setup.sh)");
}

/// A lab result for patient `mrn` (synthetic).
fn lab(control: &str, mrn: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\r\
         PID|1||{mrn}^^^NORTH-MRN^MR||DOE^JANE||19800101|F\r\
         OBR|1||ORD-{control}|24323-8^Metabolic panel^LN|||20240105100000\r\
         OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|70-99|N|||F\r"
    )
    .into_bytes()
}

/// Tenant `north` forwarding to `server` (source `lab`), tenant `south` storing only (source
/// `monitor`).
fn two_tenants(dir: &Path, server: &FhirServer, ca: &Path) -> String {
    format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
{token}[[tenant]]
id = "north"
timezone = "America/Chicago"
[tenant.upstream]
url = "{url}"
ca_file = "{ca}"
retry_initial = "50ms"
retry_max = "500ms"
[[tenant]]
id = "south"
timezone = "America/Chicago"
[[source]]
name = "lab"
tenant = "north"
kind = "mllp"
listen = "127.0.0.1:0"
[[source]]
name = "monitor"
tenant = "south"
kind = "mllp"
listen = "127.0.0.1:0"
"#,
        token = crate::support::admin_token_toml(
            "ops",
            "system-admin",
            None,
            crate::support::ADMIN_TOKEN
        ),
        data = dir.join("data").display(),
        url = server.base_url(),
        ca = ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_live_numbers_in_a_real_browser() {
    if let Some(why) = browser_missing() {
        return skip(&why);
    }
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = two_tenants(dir.path(), &server, &pki.ca);
    let g = Gateway::start_text(dir, &text).await;
    server
        .set_fault(Fault::Status {
            status: 422,
            retry_after: None,
            count: None,
            matching: Some("BADMRN".into()),
        })
        .await;

    let connect = |source: &str| {
        let addr = g.running().mllp_addr(source).unwrap().to_string();
        async move {
            Client::connect(&addr, Duration::from_secs(10))
                .await
                .unwrap()
        }
    };
    let mut lab_client = connect("lab").await;
    for i in 0..5 {
        let mrn = if i == 2 {
            "BADMRN".into()
        } else {
            format!("MRN{i}")
        };
        let reply = lab_client
            .send(&lab(&format!("SP{i:03}"), &mrn))
            .await
            .unwrap();
        assert_eq!(code(&reply), "AA");
    }
    let mut monitor_client = connect("monitor").await;
    for i in 0..3 {
        let reply = monitor_client
            .send(&lab(&format!("MON{i:03}"), &format!("MRN{i}")))
            .await
            .unwrap();
        assert_eq!(code(&reply), "AA");
    }
    drop(monitor_client);

    let admin = format!("http://{}", g.running().admin);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get_status = || async {
        http.get(format!("{admin}/status"))
            .bearer_auth(crate::support::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // Settled: four delivered, one dead letter, the monitor's connection gone.
    eventually(30, "4 forwarded, 1 dead letter, 1 connection", || async {
        let s = get_status().await;
        let lab = &s["sources"][0];
        lab["forwarded"] == 4
            && lab["dead_letters"] == 1
            && lab["open_connections"] == 1
            && s["sources"][1]["open_connections"] == 0
    })
    .await;
    // The status cache lives 2 s: wait for a fresh read so page and JSON agree.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = get_status().await;
    assert_eq!(status["sources"][0]["received"], 5);
    assert_eq!(status["sources"][1]["received"], 3);
    assert_eq!(status["sources"][1]["queued"], 3, "south stores only");
    assert!(status["sources"][0]["last_received_at"].is_string());
    assert_eq!(status["tenants"][0]["upstream"]["state"], "ok");
    assert!(status["tenants"][1]["upstream"].is_null());

    // The page needs the token: a browser is asked for it (Basic, token as password).
    let anonymous = http.get(format!("{admin}/")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenges: Vec<_> = anonymous
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "{challenges:?}"
    );
    let wrong = http
        .get(format!("{admin}/"))
        .basic_auth("operator", Some("not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The page is plain server-rendered HTML with the same numbers.
    let html = http
        .get(format!("{admin}/"))
        .basic_auth("operator", Some(crate::support::ADMIN_TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<b data-total=\"dead_letters\">1</b>"),
        "{html}"
    );
    assert!(html.contains("<b data-total=\"received\">8</b>"), "{html}");
    assert!(!html.contains("MRN"), "no patient data on the page");

    let work = tempfile::tempdir().unwrap();
    let expected = work.path().join("status.json");
    std::fs::write(&expected, serde_json::to_vec_pretty(&status).unwrap()).unwrap();
    let shots = std::env::var_os("CAREGATE_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("status_page.png");
    let out = tokio::task::spawn_blocking({
        let (expected, shot, url) = (expected.clone(), shot.clone(), format!("{admin}/"));
        move || {
            Command::new("node")
                .arg(browser_dir().join("status_page.mjs"))
                .args(["--url", &url])
                .arg("--expected")
                .arg(&expected)
                .arg("--screenshot")
                .arg(&shot)
                .args(["--token", crate::support::ADMIN_TOKEN])
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status_page.mjs failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("status page screenshot: {} ({report})", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    drop(lab_client);
    assert!(g.stop().await.is_empty());
}

/// Every `caregate_*` name in an `expr:` of the shipped rules.
fn metric_names_in_rules(rules: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in rules.lines() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let mut rest = expr;
        while let Some(at) = rest.find("caregate_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_name_only_metrics_the_daemon_exports() {
    let rules_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus/caregate-alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let names = metric_names_in_rules(&rules);
    assert!(names.len() >= 5, "{names:?}");

    // An upstream that refuses connections: the breaker opens, the outage alert fires, the
    // oldest ready age grows; a message type caregate does not convert is dead-lettered. Every
    // family the rules watch then has a sample (a family without one is not rendered at all).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[[tenant]]
id = "north"
timezone = "America/Chicago"
[tenant.upstream]
url = "https://127.0.0.1:{port}/fhir"
retry_initial = "50ms"
retry_max = "200ms"
breaker_failures = 1
breaker_open_for = "30s"
alert_after = "1s"
[[source]]
name = "lab"
tenant = "north"
kind = "mllp"
listen = "127.0.0.1:0"
"#,
        data = dir.path().join("data").display()
    );
    let g = Gateway::start_text(dir, &text).await;
    let mut c = g.client().await;
    // The query first: order is kept per source, so it would wait behind the stuck result.
    let query = b"MSH|^~\\&|HIS|HOSP|CAREGATE|HOSP|20240105103000||QRY^A19^QRY_A19|AR002|P|2.5.1\r\
QRD|20240105103000|R|I|Q1|||1^RD|MRN1|DEM\r";
    let reply = c.send(query).await.unwrap();
    assert_eq!(code(&reply), "AA");
    let reply = c.send(&lab("AR001", "MRN1")).await.unwrap();
    assert_eq!(code(&reply), "AA");

    let admin = format!("http://{}", g.running().admin);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let sampled = |text: &str, name: &str| {
        text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
    };
    let mut text = String::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < end {
        text = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if names.iter().all(|n| sampled(&text, n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in &names {
        assert!(
            sampled(&text, name),
            "{} names {name}, which /metrics does not export:\n{text}",
            rules_path.display()
        );
    }
    drop(c);
    assert!(g.stop().await.is_empty());

    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            eprintln!("SKIP: promtool not installed; alert rules checked for metric names only")
        }
    }
}

#[test]
fn rule_metric_names_are_found_in_exprs() {
    let names = metric_names_in_rules(
        "      expr: increase(caregate_a_total[5m]) > 0 and caregate_b{x=\"1\"} == 1\n  caregate_c: no\n",
    );
    assert_eq!(names, ["caregate_a_total", "caregate_b"]);
}
