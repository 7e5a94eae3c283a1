//! MLLP ingest through the front door: ACK codes, durability before AA, framing edge cases,
//! limits, TLS, shutdown.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use caregate::mllp::client::Client;

use crate::support::{self, Gateway, code, oru, oru_enhanced};

#[tokio::test]
async fn well_formed_message_gets_aa_only_once_it_is_in_the_queue() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    let reply = c.send(&oru("MSG-0001")).await.unwrap();
    assert_eq!(code(&reply), "AA", "{}", reply.raw);
    assert_eq!(reply.acks[0].control_id, "MSG-0001");
    let stored = gw.queue().scan("north").unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].meta.control_id, "MSG-0001");
    assert_eq!(stored[0].meta.message_type, "ORU^R01");
    assert_eq!(stored[0].source, "lab");
    assert_eq!(
        stored[0].payload.as_ref(),
        oru("MSG-0001").as_slice(),
        "raw bytes kept unchanged"
    );
    // The ACK swaps sender and receiver (protocols.md §3.4).
    assert!(
        reply
            .raw
            .starts_with("MSH|^~\\&|CAREGATE|HOSP|LABSYS|MAINLAB|"),
        "{}",
        reply.raw
    );
    assert!(reply.raw.contains("|ACK^R01^ACK|"), "{}", reply.raw);
    gw.stop().await;
}

#[tokio::test]
async fn many_messages_on_one_connection_are_each_acknowledged_in_order() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    for i in 0..50 {
        let id = format!("SEQ-{i}");
        let reply = c.send(&oru(&id)).await.unwrap();
        assert_eq!(
            (code(&reply), reply.acks[0].control_id.clone()),
            ("AA".to_owned(), id)
        );
    }
    assert_eq!(gw.queue().scan("north").unwrap().len(), 50);
    gw.stop().await;
}

#[tokio::test]
async fn resend_of_the_same_control_id_is_stored_once_and_acknowledged_again() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    assert_eq!(code(&c.send(&oru("DUP-1")).await.unwrap()), "AA");
    // The sender lost the first ACK and resends on a new connection.
    let mut c2 = gw.client().await;
    assert_eq!(code(&c2.send(&oru("DUP-1")).await.unwrap()), "AA");
    assert_eq!(gw.queue().scan("north").unwrap().len(), 1);
    assert!(
        gw.metrics_text()
            .contains("caregate_messages_duplicate_total{source=\"lab\"} 1")
    );
    gw.stop().await;
}

#[tokio::test]
async fn enhanced_mode_gets_commit_accept() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    let reply = c.send(&oru_enhanced("PCD-1")).await.unwrap();
    assert_eq!(code(&reply), "CA", "{}", reply.raw);
    gw.stop().await;
}

#[tokio::test]
async fn accept_ack_type_ne_is_honoured_unless_the_source_forces_original_mode() {
    let ne = String::from_utf8(oru_enhanced("NE-1"))
        .unwrap()
        .replace("|AL|NE", "|NE|NE");
    let gw = Gateway::start("", "").await;
    let mut c = Client::connect(&gw.addr(), Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        c.send(ne.as_bytes()).await.is_err(),
        "NE asks for no accept ACK"
    );
    assert_eq!(
        gw.queue().scan("north").unwrap().len(),
        1,
        "but the message is stored"
    );
    gw.stop().await;
    let gw = Gateway::start("ack_mode = \"original\"\n", "").await;
    assert_eq!(
        code(&gw.client().await.send(ne.as_bytes()).await.unwrap()),
        "AA"
    );
    gw.stop().await;
}

#[tokio::test]
async fn malformed_input_gets_ae_with_err_and_is_kept_in_the_rejected_area() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    let cases: [&[u8]; 4] = [
        // MSH-9 and MSH-10 missing
        b"MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000\rPID|1||X\r",
        // not HL7 at all
        b"hello, is this the lab?",
        // bad segment id
        b"MSH|^~\\&|A|B|C|D|20240105||ORU^R01|BAD-SEG|P|2.5.1\rP!D|1\r",
        // declared UTF-8 but not
        b"MSH|^~\\&|A|B|C|D|20240105||ORU^R01|BAD-UTF8|P|2.5.1||||||UNICODE UTF-8\rPID|1||\xff\xfe\r",
    ];
    for raw in cases {
        let reply = c.send(raw).await.unwrap();
        let a = &reply.acks[0];
        assert_eq!(a.code_text, "AE", "{}", reply.raw);
        assert!(
            !a.error_codes.is_empty(),
            "ERR segment expected: {}",
            reply.raw
        );
    }
    assert!(
        gw.queue().scan("north").unwrap().is_empty(),
        "nothing malformed is queued for forwarding"
    );
    assert_eq!(gw.queue().rejected("north").unwrap().len(), cases.len());
    let text = gw.metrics_text();
    assert!(
        text.contains("caregate_messages_rejected_total{source=\"lab\",reason=\"malformed\"} 4"),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn malformed_input_in_enhanced_mode_gets_ce() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    let raw = b"MSH|^~\\&|A|B|C|D|20240105||ORU^R01||P|2.6|||AL|NE\rPID|1\r";
    let reply = c.send(raw).await.unwrap();
    assert_eq!(code(&reply), "CE", "{}", reply.raw);
    gw.stop().await;
}

#[tokio::test]
async fn unsupported_version_and_type_get_ar_with_their_table_0357_codes() {
    let gw = Gateway::start("message_types = [\"ORU^R01\"]\n", "").await;
    let mut c = gw.client().await;
    let v = String::from_utf8(oru("V-1"))
        .unwrap()
        .replace("|2.5.1", "|3.0");
    let reply = c.send(v.as_bytes()).await.unwrap();
    assert_eq!(
        (code(&reply), reply.acks[0].error_codes.clone()),
        ("AR".into(), vec!["203".to_owned()])
    );
    let t = String::from_utf8(oru("T-1"))
        .unwrap()
        .replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01");
    let reply = c.send(t.as_bytes()).await.unwrap();
    assert_eq!(
        (code(&reply), reply.acks[0].error_codes.clone()),
        ("AR".into(), vec!["200".to_owned()])
    );
    let e = String::from_utf8(oru("E-1"))
        .unwrap()
        .replace("ORU^R01^ORU_R01", "ORU^R30");
    let reply = c.send(e.as_bytes()).await.unwrap();
    assert_eq!(
        (code(&reply), reply.acks[0].error_codes.clone()),
        ("AR".into(), vec!["201".to_owned()])
    );
    assert!(gw.queue().scan("north").unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn queue_full_gives_ar_or_cr_and_stores_nothing() {
    let gw = Gateway::start("", "max_messages = 2\n").await;
    let mut c = gw.client().await;
    assert_eq!(code(&c.send(&oru("F-1")).await.unwrap()), "AA");
    assert_eq!(code(&c.send(&oru("F-2")).await.unwrap()), "AA");
    let reply = c.send(&oru("F-3")).await.unwrap();
    assert_eq!(code(&reply), "AR", "{}", reply.raw);
    assert_eq!(reply.acks[0].error_codes, vec!["207".to_owned()]);
    let reply = c.send(&oru_enhanced("F-4")).await.unwrap();
    assert_eq!(code(&reply), "CR", "{}", reply.raw);
    let ids: Vec<String> = gw
        .queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .map(|e| e.meta.control_id)
        .collect();
    assert_eq!(ids, ["F-1", "F-2"]);
    // A resend of a stored message is still answered AA: it needs no space.
    assert_eq!(code(&c.send(&oru("F-1")).await.unwrap()), "AA");
    gw.stop().await;
}

#[tokio::test]
async fn a_failing_disk_never_gives_aa_and_the_gateway_recovers_when_it_heals() {
    let dir = tempfile::tempdir().unwrap();
    let (opener, fail) = support::faulty_opener(dir.path().join("queue.redb"));
    let gw = Gateway::start_with_queue("", opener).await;
    let mut c = gw.client().await;
    assert_eq!(code(&c.send(&oru("D-1")).await.unwrap()), "AA");
    fail.store(true, Ordering::SeqCst);
    for i in 2..5 {
        let reply = c.send(&oru(&format!("D-{i}"))).await.unwrap();
        assert_eq!(code(&reply), "AR", "{}", reply.raw);
    }
    fail.store(false, Ordering::SeqCst);
    // The next commit reopens the database and succeeds.
    let mut healed = false;
    for _ in 0..5 {
        if code(&c.send(&oru("D-9")).await.unwrap()) == "AA" {
            healed = true;
            break;
        }
    }
    assert!(healed, "gateway did not recover after the disk healed");
    let ids: Vec<String> = gw
        .queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .map(|e| e.meta.control_id)
        .collect();
    assert_eq!(ids, ["D-1", "D-9"], "nothing that got AR was stored");
    assert!(
        gw.metrics_text()
            .contains("caregate_queue_commit_failures_total")
    );
    gw.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_that_connection_while_another_sender_keeps_getting_acks() {
    let gw = Gateway::start("max_frame = \"1KiB\"\n", "").await;
    let mut big = gw.client().await;
    let mut other = gw.client().await;
    let mut frame = vec![0x0b];
    frame.extend(std::iter::repeat_n(b'A', 4096));
    big.write_raw(&frame).await.unwrap();
    assert!(
        big.closed_within(Duration::from_secs(5)).await,
        "oversized sender not disconnected"
    );
    assert_eq!(code(&other.send(&oru("O-1")).await.unwrap()), "AA");
    assert!(gw.metrics_text().contains("reason=\"oversized\""));
    gw.stop().await;
}

#[tokio::test]
async fn garbage_between_frames_is_skipped_and_counted() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    c.write_raw(b"\r\n\r\nnoise before the frame")
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("G-1")).await.unwrap()), "AA");
    let text = gw.metrics_text();
    assert!(
        text.contains("caregate_mllp_garbage_bytes_total{source=\"lab\"} 26"),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_half_frame_is_dropped_after_frame_timeout_and_others_keep_flowing() {
    let gw = Gateway::start("frame_timeout = \"300ms\"\n", "").await;
    let mut stalled = gw.client().await;
    let half = &oru("H-1")[..40];
    stalled.write_raw(&[0x0b]).await.unwrap();
    stalled.write_raw(half).await.unwrap();
    let mut other = gw.client().await;
    for i in 0..5 {
        assert_eq!(
            code(&other.send(&oru(&format!("H-OK-{i}"))).await.unwrap()),
            "AA"
        );
    }
    assert!(
        stalled.closed_within(Duration::from_secs(5)).await,
        "stalled sender not disconnected"
    );
    let ids: Vec<String> = gw
        .queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .map(|e| e.meta.control_id)
        .collect();
    assert!(!ids.contains(&"H-1".to_owned()));
    assert!(gw.metrics_text().contains("reason=\"frame_timeout\""));
    gw.stop().await;
}

#[tokio::test]
async fn two_hundred_idle_connections_do_not_hold_up_a_sender() {
    let gw = Gateway::start("max_connections = 300\n", "").await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(gw.addr()).await.unwrap());
    }
    let mut c = gw.client().await;
    for i in 0..10 {
        assert_eq!(code(&c.send(&oru(&format!("I-{i}"))).await.unwrap()), "AA");
    }
    drop(idle);
    gw.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_counted() {
    let gw = Gateway::start("max_connections = 2\n", "").await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    assert_eq!(code(&a.send(&oru("L-1")).await.unwrap()), "AA");
    assert_eq!(code(&b.send(&oru("L-2")).await.unwrap()), "AA");
    let mut third = gw.client().await;
    assert!(third.closed_within(Duration::from_secs(5)).await);
    assert!(gw.metrics_text().contains("reason=\"limit\""));
    drop(a);
    // A slot frees up when a connection ends.
    let mut ok = false;
    for _ in 0..50 {
        let mut d = gw.client().await;
        if let Ok(r) = d.send(&oru("L-3")).await {
            ok = code(&r) == "AA";
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    gw.stop().await;
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout() {
    let gw = Gateway::start("idle_timeout = \"200ms\"\n", "").await;
    let mut c = gw.client().await;
    assert_eq!(code(&c.send(&oru("IT-1")).await.unwrap()), "AA");
    assert!(c.closed_within(Duration::from_secs(5)).await);
    gw.stop().await;
}

#[tokio::test]
async fn peers_outside_allowed_networks_are_refused() {
    let gw = Gateway::start("allowed_peers = [\"10.99.0.0/16\"]\n", "").await;
    let mut c = gw.client().await;
    assert!(c.send(&oru("P-1")).await.is_err() || c.closed_within(Duration::from_secs(2)).await);
    assert!(gw.queue().scan("north").unwrap().is_empty());
    assert!(gw.metrics_text().contains("reason=\"peer_not_allowed\""));
    gw.stop().await;
    let gw = Gateway::start("allowed_peers = [\"127.0.0.0/8\"]\n", "").await;
    assert_eq!(
        code(&gw.client().await.send(&oru("P-2")).await.unwrap()),
        "AA"
    );
    gw.stop().await;
}

#[tokio::test]
async fn batch_in_one_frame_is_stored_atomically_and_answered_per_message() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    let mut frame = b"BHS|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105\r".to_vec();
    frame.extend(oru("B-1"));
    frame.extend(oru("B-2"));
    frame.extend(b"BTS|2\r");
    let reply = c.send(&frame).await.unwrap();
    let got: Vec<(String, String)> = reply
        .acks
        .iter()
        .map(|a| (a.code_text.clone(), a.control_id.clone()))
        .collect();
    assert_eq!(
        got,
        [("AA".into(), "B-1".into()), ("AA".into(), "B-2".into())],
        "{}",
        reply.raw
    );
    assert!(reply.raw.starts_with("BHS|"), "{}", reply.raw);
    assert_eq!(gw.queue().scan("north").unwrap().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_frame_in_hand_then_closes() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    let msg = oru("S-1");
    c.write_raw(&[0x0b]).await.unwrap();
    c.write_raw(&msg[..30]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Gateway { running, dir, .. } = gw;
    let running = running.unwrap();
    let queue = running.queue.clone();
    let stopping = tokio::spawn(running.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are no longer accepted...
    let addr_refused = stopping.is_finished();
    assert!(!addr_refused, "stop must wait for the frame in hand");
    // ...but the frame in hand completes, is committed and acknowledged.
    c.write_raw(&msg[30..]).await.unwrap();
    c.write_raw(&[0x1c, 0x0d]).await.unwrap();
    let reply = c.receive().await.unwrap();
    assert_eq!(code(&reply), "AA");
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let late = stopping.await.unwrap();
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(queue.scan("north").unwrap().len(), 1);
    drop(dir);
}

#[tokio::test]
async fn readiness_and_metrics_are_served_on_the_admin_listener() {
    let gw = Gateway::start("", "").await;
    let mut c = gw.client().await;
    assert_eq!(code(&c.send(&oru("M-1")).await.unwrap()), "AA");
    let admin = gw.running().admin.to_string();
    let ready = http_get(&admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let live = http_get(&admin, "/livez").await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let metrics = http_get(&admin, "/metrics").await;
    for needle in [
        "caregate_messages_received_total{source=\"lab\"} 1",
        "caregate_acks_sent_total{source=\"lab\",code=\"AA\"} 1",
        "caregate_queue_commit_seconds_bucket",
        "caregate_queue_messages 1",
        "caregate_ack_latency_seconds_count{source=\"lab\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    assert!(!metrics.contains("DOE"), "no patient data in metrics");
    gw.stop().await;
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

// === TLS ===

fn tls_source(pki: &support::Pki, mtls: bool) -> String {
    let mut s = format!(
        "[source.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    if mtls {
        s.push_str(&format!("client_ca = \"{}\"\n", pki.ca.display()));
    }
    s
}

#[tokio::test]
async fn tls13_client_gets_acks() {
    let pki = support::pki();
    let gw = Gateway::start(&tls_source(&pki, false), "").await;
    let config = caregate::mllp::tls::client_config(Some(&pki.ca), None).unwrap();
    let mut c = Client::connect_tls(&gw.addr(), "localhost", config, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("TLS-1")).await.unwrap()), "AA");
    gw.stop().await;
}

#[tokio::test]
async fn tls12_client_is_refused() {
    let pki = support::pki();
    let gw = Gateway::start(&tls_source(&pki, false), "").await;
    let roots = caregate::mllp::tls::load_roots(&pki.ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let r = Client::connect_tls(
        &gw.addr(),
        "localhost",
        std::sync::Arc::new(config),
        Duration::from_secs(5),
    )
    .await;
    assert!(r.is_err(), "TLS 1.2 handshake must fail");
    gw.stop().await;
}

#[tokio::test]
async fn with_client_ca_a_client_without_certificate_is_refused_and_one_with_is_served() {
    let pki = support::pki();
    let gw = Gateway::start(&tls_source(&pki, true), "").await;
    let anonymous = caregate::mllp::tls::client_config(Some(&pki.ca), None).unwrap();
    // TLS 1.3 client auth fails after the client's handshake completes: the first exchange fails.
    let refused =
        match Client::connect_tls(&gw.addr(), "localhost", anonymous, Duration::from_secs(5)).await
        {
            Err(_) => true,
            Ok(mut c) => c.send(&oru("MTLS-0")).await.is_err(),
        };
    assert!(refused, "client without a certificate must be refused");
    let with_cert = caregate::mllp::tls::client_config(
        Some(&pki.ca),
        Some((&pki.client_cert, &pki.client_key)),
    )
    .unwrap();
    let mut c = Client::connect_tls(&gw.addr(), "localhost", with_cert, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("MTLS-1")).await.unwrap()), "AA");
    let ids: Vec<String> = gw
        .queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .map(|e| e.meta.control_id)
        .collect();
    assert_eq!(ids, ["MTLS-1"]);
    gw.stop().await;
}
