//! No patient data outside the data path: messages carrying canary names, identifiers,
//! addresses, phone numbers, notes and values go through every path of the real binary (MLLP
//! accepted, resent, malformed, oversized, unconverted type, conversion warnings, critical
//! result, consent hold, upstream refusal with an OperationOutcome that quotes the canary, the
//! file source with a malformed message, ASTM over TCP, the CLI's `send` and `convert` on bad
//! input). The test fails if a canary shows up in the daemon's log (JSON, caregate at trace
//! level), an ACK, `/metrics`, `/status`, the status page, a webhook alert, a file report, the
//! audit export or a CLI's output.
//!
//! Where patient data is meant to be: the queue and the rejected area (the messages themselves),
//! the upstream (the Bundles), the file source's done/failed folders (the files as dropped), and
//! a dead letter's stored reason, which keeps the server's OperationOutcome next to the message
//! it refused (same store, same access control: `queue dead-letters` needs an operator token).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caregate::mllp::client::Client;

use crate::forward::webhook;
use crate::support::fhir_server::{Fault, FhirServer, Options};
use crate::support::{ADMIN_TOKEN, admin_token_toml, eventually, free_port, pki};

const BIN: &str = env!("CARGO_BIN_EXE_caregate");
/// Every canary contains this; nothing else in the test does.
const CANARY: &str = "QXCANARY";

/// An ORU^R01 whose patient data are all canaries; `mrn` picks the path (held, refused, ...).
fn canary_oru(control: &str, mrn: &str, obx: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\r\
         PID|1||{mrn}^^^NORTH-MRN^MR||QXCANARYFAMILY^QXCANARYGIVEN||19800101|F|||1 QXCANARYSTREET^^QXCANARYTOWN||555-QXCANARYPHONE\r\
         OBR|1||ORD-{control}|24323-8^Metabolic panel^LN|||20240105100000\r\
         {obx}\
         NTE|1||QXCANARYNOTE about the patient\r"
    )
    .into_bytes()
}

const NORMAL: &str = "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F\r";

fn assert_clean(what: &str, text: &str) {
    if let Some(at) = text.to_ascii_uppercase().find(CANARY) {
        let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
        panic!("patient data in {what}: {}", &text[from..to]);
    }
}

fn run(args: &[&str], input_file: Option<&Path>) -> String {
    let mut c = Command::new(BIN);
    c.args(args);
    if let Some(f) = input_file {
        c.arg(f);
    }
    let out = c.output().unwrap();
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_through_every_path_never_reach_logs_errors_metrics_or_status() {
    let pki = pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let (mllp, astm, admin) = (free_port(), free_port(), free_port());
    let config = dir.path().join("caregate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{token}\
             [[alert.webhook]]\nurl = \"{hook}\"\n\
             [[tenant]]\nid = \"north\"\ntimezone = \"UTC\"\n\
             [tenant.upstream]\nurl = \"{up}\"\nca_file = \"{ca}\"\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n\
             [[source]]\nname = \"lab\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:{mllp}\"\nmax_frame = \"4KiB\"\n\
             [[source]]\nname = \"inbox\"\ntenant = \"north\"\nkind = \"file\"\ndir = \"{inbox}\"\npoll_interval = \"200ms\"\n\
             [[source]]\nname = \"analyzer\"\ntenant = \"north\"\nkind = \"astm-tcp\"\nlisten = \"127.0.0.1:{astm}\"\n",
            data = dir.path().join("data").display(),
            token = admin_token_toml("ops", "system-admin", None, ADMIN_TOKEN),
            hook = hook.url,
            up = server.base_url(),
            ca = pki.ca.display(),
            inbox = inbox.display(),
        ),
    )
    .unwrap();
    let check = run(
        &["check-config", "--config", config.to_str().unwrap()],
        None,
    );
    assert!(!check.contains("error"), "{check}");
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("CAREGATE_LOG", "caregate=trace,info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let lab = format!("127.0.0.1:{mllp}");
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&lab).is_err() {
        assert!(Instant::now() < end, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = format!("http://127.0.0.1:{admin}");
    let http = reqwest::Client::new();

    // Consent withdrawn for one canary identifier (the request itself carries it).
    let r = http
        .post(format!("{base}/consent/north"))
        .bearer_auth(ADMIN_TOKEN)
        .json(
            &serde_json::json!({"system": "urn:caregate:north:identifiers:NORTH-MRN",
            "value": "QXCANARYHELD", "status": "withdrawn"}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let consent_reply = r.text().await.unwrap();
    // The upstream refuses one patient's data and quotes it back in its OperationOutcome.
    server
        .set_fault(Fault::Status {
            status: 422,
            retry_after: None,
            count: None,
            matching: Some("QXCANARYREFUSED".into()),
        })
        .await;

    let mut acks = String::new();
    let mut c = Client::connect(&lab, Duration::from_secs(5)).await.unwrap();
    let critical = "OBX|1|NM|2823-3^Potassium^LN||7.9|mmol/L|3.5-5.1|HH|||F\r";
    let odd = "OBX|1|ZZ|99999^QXCANARYCODE^L||QXCANARYVALUE|QXCANARYUNIT|||||F|||QXCANARYDATE\r\
               OBX|2|NM|2345-7^Glucose^LN||QXCANARYNUMBER|mg/dL|70-99|N|||F\r";
    let accepted = [
        canary_oru("PHI-OK", "QXCANARYMRN", NORMAL),
        canary_oru("PHI-OK", "QXCANARYMRN", NORMAL), // a resend: stored once
        canary_oru("PHI-CRIT", "QXCANARYMRN2", critical),
        canary_oru("PHI-HELD", "QXCANARYHELD", NORMAL),
        canary_oru("PHI-REF", "QXCANARYREFUSED", NORMAL),
        canary_oru("PHI-ODD", "QXCANARYMRN3", odd),
        String::from_utf8(canary_oru("PHI-ORM", "QXCANARYMRN4", NORMAL))
            .unwrap()
            .replace("ORU^R01^ORU_R01", "ORM^O01^ORM_O01")
            .into_bytes(),
    ];
    for m in &accepted {
        let reply = c.send(m).await.unwrap();
        assert!(
            reply.raw.contains("|AA|") || reply.raw.contains("|CA|"),
            "{}",
            reply.raw
        );
        acks.push_str(&reply.raw);
    }
    // Error paths over MLLP: no message type, broken MSH, a non-HL7 payload, an oversized frame.
    let malformed = [
        canary_oru("PHI-BAD1", "QXCANARYBAD", NORMAL),
        b"MSH|^~\\&|A|B|C|D|20240105||||P|2.5.1\rPID|1||QXCANARYNOTYPE||QXCANARYFAMILY\r".to_vec(),
        b"MSQXCANARYBROKEN|PID|QXCANARYFAMILY\r".to_vec(),
        b"QXCANARYFAMILY QXCANARYGIVEN 1980-01-01".to_vec(),
    ];
    let malformed: Vec<Vec<u8>> = malformed
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if i == 0 {
                // MSH-9 emptied.
                String::from_utf8(m)
                    .unwrap()
                    .replace("ORU^R01^ORU_R01", "")
                    .into_bytes()
            } else {
                m
            }
        })
        .collect();
    for m in &malformed {
        let reply = c.send(m).await.unwrap();
        assert!(
            !reply.raw.contains("|AA|") && !reply.raw.contains("|CA|"),
            "{}",
            reply.raw
        );
        acks.push_str(&reply.raw);
    }
    let mut big = canary_oru("PHI-BIG", "QXCANARYBIG", NORMAL);
    big.extend(std::iter::repeat_n(b'Q', 8 * 1024));
    match c.send(&big).await {
        Ok(reply) => acks.push_str(&reply.raw),
        Err(e) => acks.push_str(&e.to_string()),
    }
    drop(c);

    // The file source: one good and one malformed message in one file.
    let batch = [
        canary_oru("PHI-FILE1", "QXCANARYFILE", NORMAL),
        b"MSH|^~\\&|A|B|C|D|20240105||||P|2.5.1\rPID|1||QXCANARYFILEBAD\r".to_vec(),
    ]
    .concat();
    std::fs::write(inbox.join("drop.hl7.tmp"), &batch).unwrap();
    std::fs::rename(inbox.join("drop.hl7.tmp"), inbox.join("drop.hl7")).unwrap();

    // ASTM over TCP.
    let astm_msg = b"H|\\^&|||ANALYZER^1|||||||P|LIS2-A2|20240105103000\r\
        P|1||QXCANARYASTM||QXCANARYFAMILY^QXCANARYGIVEN||19700101|F\r\
        O|1|QXCANARYSPEC||^^^GLU|R|20240105101500\r\
        R|1|^^^GLU|95|mg/dL|70-99|N||F||||20240105102000\r\
        L|1|N\r"
        .to_vec();
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", astm))
        .await
        .unwrap();
    let delivered =
        crate::astm_serial::analyzer(&mut conn, &[astm_msg], false, Duration::from_secs(20)).await;
    assert_eq!(delivered, 1);
    drop(conn);

    // Every path has happened: forwarded, dead-lettered, held, alerted, file processed.
    eventually(30, "the refused message dead-lettered", || async {
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.contains("caregate_messages_dead_lettered_total{")
    })
    .await;
    eventually(30, "the critical alert posted", || async {
        hook.got
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["kind"] == "critical-result")
    })
    .await;
    eventually(30, "the file processed", || async {
        inbox.join("failed").join("drop.hl7.report.json").exists()
            || inbox.join("failed").join("drop.report.json").exists()
            || std::fs::read_dir(inbox.join("failed")).is_ok_and(|d| d.count() >= 2)
    })
    .await;
    eventually(30, "the forwardable messages delivered", || async {
        server.count("Observation").await >= 3
    })
    .await;

    // What an operator and a monitoring system see.
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            http.get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let metrics = get("/metrics").await;
    let status = get("/status").await;
    let page = get("/").await;
    let stats = get("/queue/stats").await;
    // The one place outside the messages where the canary is meant to be: the server's quote
    // kept with the dead letter (also proof that the check below would see a canary).
    let dead = get("/queue/dead-letters").await;
    assert!(
        dead.to_ascii_uppercase().contains("QXCANARYREFUSED"),
        "the OperationOutcome is kept with the dead letter: {dead}"
    );
    let token_file = dir.path().join("cli.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let cfg = config.to_str().unwrap();
    let tf = token_file.to_str().unwrap();
    let cli_status = run(&["status", "--config", cfg, "--token-file", tf], None);
    let cli_stats = run(&["queue", "stats", "--config", cfg, "--json"], None);
    // CLI error paths on canary input.
    let bad_file = dir.path().join("bad.hl7");
    std::fs::write(&bad_file, &malformed[1]).unwrap();
    let not_hl7 = dir.path().join("not.hl7");
    std::fs::write(&not_hl7, &malformed[3]).unwrap();
    let cli_send = run(&["send", "--to", &lab], Some(&bad_file));
    let cli_convert_bad = run(&["convert", "--report"], Some(&bad_file));
    let cli_convert_not = run(&["convert"], Some(&not_hl7));
    let odd_file = dir.path().join("odd.hl7");
    std::fs::write(&odd_file, &accepted[5]).unwrap();
    // `convert` prints the Bundle (patient data, by design) on stdout; its report goes to stderr.
    let report = Command::new(BIN)
        .args(["convert", "--report"])
        .arg(&odd_file)
        .output()
        .unwrap();
    let cli_convert_report = String::from_utf8_lossy(&report.stderr).into_owned();

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let audit = run(
        &["audit", "export", "--tenant", "north", "--config", cfg],
        None,
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    let alerts: Vec<String> = hook
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let reports: String = ["done", "failed"]
        .iter()
        .filter_map(|d| std::fs::read_dir(inbox.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();

    // The paths really ran (so a clean result means something).
    for (what, needle) in [
        ("a rejected message", "caregate_messages_rejected_total{"),
        ("a duplicate", "caregate_messages_duplicate_total{"),
        ("a critical result", "caregate_critical_results_total{"),
        (
            "a conversion warning",
            "caregate_conversion_warnings_total{",
        ),
        ("a dead letter", "caregate_messages_dead_lettered_total{"),
    ] {
        assert!(metrics.contains(needle), "no {what} counted:\n{metrics}");
    }
    assert!(status.contains("\"held\":1"), "{status}");
    assert!(!reports.is_empty(), "no file report written");
    assert!(audit.lines().count() > 10, "{audit}");
    assert!(log_text.lines().count() > 20, "{log_text}");

    for (what, text) in [
        ("the daemon log", log_text.as_str()),
        ("ACKs", acks.as_str()),
        ("/metrics", metrics.as_str()),
        ("/status", status.as_str()),
        ("the status page", page.as_str()),
        ("/queue/stats", stats.as_str()),
        ("the consent reply", consent_reply.as_str()),
        ("caregate status", cli_status.as_str()),
        ("caregate queue stats", cli_stats.as_str()),
        ("caregate send", cli_send.as_str()),
        (
            "caregate convert on a malformed file",
            cli_convert_bad.as_str(),
        ),
        ("caregate convert on non-HL7", cli_convert_not.as_str()),
        ("caregate convert --report", cli_convert_report.as_str()),
        ("the audit export", audit.as_str()),
        ("file reports", reports.as_str()),
        ("webhook alerts", &alerts.join("\n")),
    ] {
        assert_clean(what, text);
    }
    eprintln!(
        "phi canaries: {} log lines, {} bytes of ACKs, {} alerts, {} audit entries checked",
        log_text.lines().count(),
        acks.len(),
        alerts.len(),
        audit.lines().count()
    );
}
