//! The file source through the whole gateway: an FHS/BHS batch file with one malformed message
//! in a watched folder; the good messages are stored once, the bad one is in the rejected area
//! and named by index in the report, the file ends in failed/; processing the same file again
//! (a restart before the move) stores nothing twice.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use caregate::files::Report;

use crate::support::Gateway;

fn batch_file() -> Vec<u8> {
    let mut out = b"FHS|^~\\&|LABSYS|MAINLAB\rBHS|^~\\&|LABSYS|MAINLAB\r".to_vec();
    out.extend(crate::support::oru("F1"));
    // Index 1: an MSH without its encoding characters is malformed.
    out.extend(b"MSH|\rPID|1||X\r");
    out.extend(crate::support::oru("F3"));
    out.extend(b"BTS|3\rFTS|1\r");
    out
}

/// A data dir and an inbox watched by the file source `lab-files` of tenant `north` (every
/// 100 ms, `*.hl7`), with `extra` added to the source; returns the dir, the inbox, the config.
fn watched_folder(extra: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let text = format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[[tenant]]
id = "north"
timezone = "America/Chicago"
[[source]]
name = "lab-files"
tenant = "north"
kind = "file"
dir = "{inbox}"
pattern = "*.hl7"
poll_interval = "100ms"
{extra}"#,
        data = dir.path().join("data").display(),
        inbox = inbox.display()
    );
    (dir, inbox, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_file_with_one_malformed_message_stores_the_good_ones_once_and_fails_the_file() {
    let (dir, inbox, text) = watched_folder("");
    std::fs::write(inbox.join("ignored.txt"), b"not matched").unwrap();
    let file = batch_file();
    std::fs::write(inbox.join("batch.hl7"), &file).unwrap();
    let gw = Gateway::start_text(dir, &text).await;

    let failed = inbox.join("failed/batch.hl7");
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !failed.exists() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed.exists(), "the file moved to failed/");
    assert!(!inbox.join("batch.hl7").exists());
    assert!(inbox.join("ignored.txt").exists(), "pattern respected");
    let report: Report =
        serde_json::from_slice(&std::fs::read(inbox.join("failed/batch.hl7.report.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            report.messages,
            report.stored,
            report.duplicates,
            report.rejected
        ),
        (3, 2, 0, 1)
    );
    assert_eq!(report.outcomes[1].index, 1);
    assert_eq!(report.outcomes[1].outcome, "rejected");
    assert_eq!(report.outcomes[0].control_id, "F1");
    assert_eq!(report.outcomes[2].control_id, "F3");
    let json =
        String::from_utf8(std::fs::read(inbox.join("failed/batch.hl7.report.json")).unwrap())
            .unwrap();
    assert!(
        !json.contains("DOE") && !json.contains("TEST123"),
        "no patient data in the report"
    );

    let stored = gw.queue().scan("north").unwrap();
    assert_eq!(stored.len(), 2);
    let rejected = gw.queue().rejected("north").unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].1.contains("message 1"), "{}", rejected[0].1);

    // A restart before the move: the same file is processed again.
    std::fs::write(inbox.join("batch.hl7"), &file).unwrap();
    let again = inbox.join("failed");
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while inbox.join("batch.hl7").exists() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!inbox.join("batch.hl7").exists(), "processed again");
    assert_eq!(
        std::fs::read_dir(&again).unwrap().count(),
        4,
        "two files, two reports"
    );
    assert_eq!(
        gw.queue().scan("north").unwrap().len(),
        2,
        "no duplicates stored"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_good_messages_of_a_partly_bad_batch_file_reach_the_fhir_server_once() {
    use crate::support::fhir_server::{FhirServer, Options};
    let pki = crate::support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let text = format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[[tenant]]
id = "north"
timezone = "America/Chicago"
[tenant.upstream]
url = "{url}"
ca_file = "{ca}"
[[source]]
name = "lab-files"
tenant = "north"
kind = "file"
dir = "{inbox}"
pattern = "*.hl7"
poll_interval = "100ms"
"#,
        data = dir.path().join("data").display(),
        inbox = inbox.display(),
        url = server.base_url(),
        ca = pki.ca.display(),
    );
    std::fs::write(inbox.join("batch.hl7"), batch_file()).unwrap();
    let gw = Gateway::start_text(dir, &text).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.count("Observation").await < 2 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same file dropped again (a restart before the move): nothing new at the server.
    std::fs::write(inbox.join("again.hl7"), batch_file()).unwrap();
    let again = inbox.join("failed/again.hl7");
    while !again.exists() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.exists());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.count("Observation").await, 2, "F1 and F3, once each");
    assert_eq!(server.count("DiagnosticReport").await, 2);
    assert_eq!(
        gw.queue().rejected("north").unwrap().len(),
        2,
        "the malformed one, each time"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_result_in_a_dropped_file_takes_the_critical_lane_and_alerts() {
    let hook = crate::forward::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let text = format!(
        "data_dir = \"{data}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[alert.webhook]]\nurl = \"{hook}\"\n\
         [[tenant]]\nid = \"north\"\n\
         [[source]]\nname = \"lab-files\"\ntenant = \"north\"\nkind = \"file\"\ndir = \"{inbox}\"\npoll_interval = \"100ms\"\n",
        data = dir.path().join("data").display(),
        hook = hook.url,
        inbox = inbox.display()
    );
    let critical = String::from_utf8(crate::forward::lab("FC2", "MRN1", 90))
        .unwrap()
        .replace("4.1|mmol/L|3.5-5.1|N", "7.9|mmol/L|3.5-5.1|HH");
    let file = [
        crate::forward::lab("FC1", "MRN1", 90),
        critical.into_bytes(),
    ]
    .concat();
    std::fs::write(inbox.join("two.hl7"), file).unwrap();
    let gw = Gateway::start_text(dir, &text).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while hook.got.lock().unwrap().is_empty() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alerts = hook.got.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "critical-result");
    assert_eq!(alerts[0]["control_id"], "FC2");
    assert_eq!(alerts[0]["source"], "lab-files");
    let lanes: Vec<_> = gw
        .queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .map(|e| (e.meta.control_id, e.lane))
        .collect();
    assert_eq!(
        lanes,
        [
            ("FC1".to_owned(), caregate::envelope::Lane::Normal),
            ("FC2".to_owned(), caregate::envelope::Lane::Critical)
        ]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_max_file_is_refused_unread_and_kept_in_failed() {
    let (dir, inbox, text) = watched_folder("max_file = \"2KiB\"\n");
    let small = crate::support::oru("S1");
    assert!(small.len() <= 2048, "fixture fits the limit");
    let mut big = Vec::new();
    let mut n = 0;
    while big.len() <= 2048 {
        n += 1;
        big.extend(crate::support::oru(&format!("B{n}")));
    }
    std::fs::write(inbox.join("big.hl7"), &big).unwrap();
    std::fs::write(inbox.join("small.hl7"), &small).unwrap();
    let gw = Gateway::start_text(dir, &text).await;

    crate::support::eventually(10, "both files moved", || {
        let (a, b) = (inbox.join("failed/big.hl7"), inbox.join("done/small.hl7"));
        async move { a.exists() && b.exists() }
    })
    .await;
    assert_eq!(
        std::fs::read(inbox.join("failed/big.hl7")).unwrap(),
        big,
        "kept whole"
    );
    let report: Report =
        serde_json::from_slice(&std::fs::read(inbox.join("failed/big.hl7.report.json")).unwrap())
            .unwrap();
    assert_eq!(
        (report.result.as_str(), report.messages, report.stored),
        ("failed", 0, 0)
    );
    let why = report.refused.unwrap_or_default();
    assert!(why.contains("max_file (2048 bytes)"), "{why}");
    let stored = gw.queue().scan("north").unwrap();
    assert_eq!(stored.len(), 1, "only the small file's message");
    assert!(
        gw.queue().rejected("north").unwrap().is_empty(),
        "nothing of the big file read"
    );
    let metrics = gw.metrics_text();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "caregate_messages_rejected_total{source=\"lab-files\",reason=\"too-large\"} 1"
        )),
        "{metrics}"
    );
    gw.stop().await;
}
