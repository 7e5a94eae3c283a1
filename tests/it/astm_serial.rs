//! ASTM through the real driver and the whole gateway: a simulated analyzer (`link::Sender`, as in
//! astm.rs) talks to a `kind = "astm"` source over a REAL pseudo-terminal pair (the gateway opens
//! the pty's slave path like any /dev/tty*, tokio-serial on both ends), and to a
//! `kind = "astm-tcp"` source over loopback. Faults: a bad checksum (NAK and resend), a partial
//! message then silence (receive timeout discards it) and a partial message cut by EOT; every
//! message is stored exactly once. Inputs: the ASTM fixtures and, when present, the shared corpus
//! transcripts (skipped visibly when absent).
//!
//! The pty tests wait on real time (a pty cannot be driven by tokio's paused clock); timeouts are
//! shortened in the config so the whole file runs in a few seconds.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use caregate::astm::link::{self, Action, Role, Sender, Timer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};

use crate::support::{Gateway, corpus_dir, walk};

fn sender_config() -> link::Config {
    link::Config {
        establish_timeout: Duration::from_secs(3),
        reply_timeout: Duration::from_secs(3),
        busy_backoff: Duration::from_millis(300),
        interrupt_backoff: Duration::from_millis(300),
        ..link::Config::default()
    }
}

/// Runs the analyzer until every message is delivered (or `limit` passes). `corrupt_first`
/// sends the first frame with a wrong checksum.
pub(crate) async fn analyzer<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    messages: &[Vec<u8>],
    corrupt_first: bool,
    limit: Duration,
) -> usize {
    let mut tx = Sender::new(sender_config(), Role::Instrument);
    let mut actions = Vec::new();
    for m in messages {
        tx.enqueue(m.clone());
    }
    actions.extend(tx.poll_start());
    let mut timers: [Option<Instant>; 4] = [None; 4];
    let idx = |t: Timer| match t {
        Timer::Receive => 0,
        Timer::Establish => 1,
        Timer::Reply => 2,
        Timer::Backoff => 3,
    };
    let all = [
        Timer::Receive,
        Timer::Establish,
        Timer::Reply,
        Timer::Backoff,
    ];
    let mut corrupt = corrupt_first;
    let mut delivered = 0;
    let end = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    loop {
        for a in std::mem::take(&mut actions) {
            match a {
                Action::Send(mut b) => {
                    if corrupt && b.first() == Some(&link::STX) && b.len() > 7 {
                        let i = b.len() - 4;
                        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
                        corrupt = false;
                    }
                    io.write_all(&b).await.unwrap();
                    io.flush().await.unwrap();
                }
                Action::ArmTimer(t, d) => timers[idx(t)] = Some(Instant::now() + d),
                Action::CancelTimer(t) => timers[idx(t)] = None,
                Action::Delivered => delivered += 1,
                Action::Message(_) | Action::Error(_) => {}
            }
        }
        if tx.pending() == 0 && !tx.is_active() {
            return delivered;
        }
        if Instant::now() > end {
            return delivered;
        }
        if tx.is_neutral() && tx.pending() > 0 {
            let a = tx.poll_start();
            if !a.is_empty() {
                actions = a;
                continue;
            }
        }
        let next = timers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (t, i)))
            .min();
        let sleep_to = next.map_or(end, |(t, _)| t.min(end));
        tokio::select! {
            r = io.read(&mut buf) => {
                let n = r.unwrap();
                assert!(n > 0, "gateway closed the line");
                actions = tx.on_bytes(&buf[..n]);
            }
            _ = tokio::time::sleep_until(sleep_to) => {
                if let Some((t, i)) = next {
                    if t <= Instant::now() {
                        timers[i] = None;
                        actions = tx.on_timeout(all[i]);
                        if matches!(all[i], Timer::Backoff) {
                            tx.end_backoff();
                            actions.extend(tx.poll_start());
                        }
                    }
                }
            }
        }
    }
}

/// Records of a text file as sent: `#` comments and blank lines dropped, CR after each record.
fn as_wire_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n' || *b == b'\r') {
        if line.is_empty() || line.first() == Some(&b'#') {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\r');
    }
    out
}

/// Messages of a wire text (a new message at each H record), keeping those ending with L.
fn messages_of(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for record in wire.split_inclusive(|b| *b == b'\r') {
        if matches!(record.first(), Some(b'H')) || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().extend_from_slice(record);
    }
    out.retain(|m| {
        m.starts_with(b"H")
            && m.split(|b| *b == b'\r')
                .rfind(|r| !r.is_empty())
                .is_some_and(|r| r.starts_with(b"L"))
    });
    out
}

fn fixture_messages() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/astm");
    let mut files: Vec<_> = walk(&dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".txt") && !n.starts_with("session_")
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| messages_of(&as_wire_text(&std::fs::read(p).unwrap())))
        .collect()
}

fn corpus_messages(max: usize) -> Vec<Vec<u8>> {
    let Some(dir) = corpus_dir("astm") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in walk(&dir) {
        let name = p.to_string_lossy();
        if !name.ends_with(".txt") || name.ends_with(".out.txt") {
            continue;
        }
        out.extend(messages_of(&as_wire_text(&std::fs::read(&p).unwrap())));
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    out
}

fn astm_config(dir: &Path, source: &str) -> String {
    format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[[tenant]]
id = "north"
timezone = "America/Chicago"
[[source]]
name = "analyzer"
tenant = "north"
{source}
"#,
        data = dir.join("data").display()
    )
}

fn stored_astm(gw: &Gateway) -> Vec<Vec<u8>> {
    gw.queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == caregate::envelope::Kind::Astm)
        .map(|e| e.payload.to_vec())
        .collect()
}

/// A pty pair: the test keeps the master; the gateway opens the slave by its path.
fn pty() -> (SerialStream, SerialStream, String) {
    let (master, slave) = SerialStream::pair().expect("a pseudo-terminal pair");
    let path = slave.name().expect("the slave pty has a path");
    (master, slave, path)
}

async fn wait_for(gw: &Gateway, n: usize) -> Vec<Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stored_astm(gw);
        if s.len() >= n || Instant::now() > end {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn astm_serial_session_over_a_pty_stores_every_message_once_despite_faults() {
    let (mut master, _slave, path) = pty();
    let dir = tempfile::tempdir().unwrap();
    let text = astm_config(
        dir.path(),
        &format!("kind = \"astm\"\nport = \"{path}\"\nbaud = 9600\nreceive_timeout = \"1s\"\n"),
    );
    let gw = Gateway::start_text(dir, &text).await;
    // Let the source open the port.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut messages = fixture_messages();
    let corpus = corpus_messages(20);
    println!(
        "fixture messages: {}, corpus messages: {}",
        messages.len(),
        corpus.len()
    );
    messages.extend(corpus);
    messages.dedup();
    assert!(!messages.is_empty());

    // 1. A partial message, then silence: the receive timeout (1 s) discards it.
    let first = &messages[0];
    master.write_all(&[link::ENQ]).await.unwrap();
    let mut b = [0u8; 16];
    let n = master.read(&mut b).await.unwrap();
    assert_eq!(&b[..n], &[link::ACK], "ENQ is answered with ACK");
    let half = &first[..first.len() / 2];
    master
        .write_all(&link::encode_frame(1, half, false))
        .await
        .unwrap();
    let n = master.read(&mut b).await.unwrap();
    assert_eq!(&b[..n], &[link::ACK], "intermediate frame ACKed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 2. A partial message cut by EOT.
    master.write_all(&[link::ENQ]).await.unwrap();
    let n = master.read(&mut b).await.unwrap();
    assert_eq!(&b[..n], &[link::ACK]);
    master
        .write_all(&link::encode_frame(1, half, false))
        .await
        .unwrap();
    let n = master.read(&mut b).await.unwrap();
    assert_eq!(&b[..n], &[link::ACK]);
    master.write_all(&[link::EOT]).await.unwrap();
    assert!(
        stored_astm(&gw).is_empty(),
        "partial messages are never stored"
    );

    // 3. Everything, the first frame with a bad checksum (NAK, resend).
    let delivered = analyzer(&mut master, &messages, true, Duration::from_secs(60)).await;
    assert_eq!(delivered, messages.len(), "every message got its final ACK");
    let stored = wait_for(&gw, messages.len()).await;
    assert_eq!(stored.len(), messages.len(), "stored exactly once each");
    for m in &messages {
        assert_eq!(stored.iter().filter(|s| *s == m).count(), 1);
    }

    // 4. A full resend (the analyzer lost our final ACK) is deduplicated.
    let again = analyzer(&mut master, &messages[..1], false, Duration::from_secs(20)).await;
    assert_eq!(again, 1);
    assert_eq!(
        stored_astm(&gw).len(),
        messages.len(),
        "resend not stored twice"
    );
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("source=\"analyzer\""),
        "per-source metrics"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn astm_serial_source_reopens_a_port_that_appears_later() {
    let dir = tempfile::tempdir().unwrap();
    let link_path = dir.path().join("ttyANALYZER");
    let text = astm_config(
        dir.path(),
        &format!(
            "kind = \"astm\"\nport = \"{}\"\nbaud = 9600\n",
            link_path.display()
        ),
    );
    let gw = Gateway::start_text(dir, &text).await;
    // The adapter is "plugged in" after start: a symlink to a fresh pty, as udev's by-id links.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut master, _slave, path) = pty();
    std::os::unix::fs::symlink(&path, &link_path).unwrap();
    let messages = fixture_messages();
    let delivered = analyzer(&mut master, &messages[..1], false, Duration::from_secs(20)).await;
    assert_eq!(delivered, 1);
    assert_eq!(wait_for(&gw, 1).await.len(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn astm_tcp_listen_source_stores_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = astm_config(
        dir.path(),
        "kind = \"astm-tcp\"\nlisten = \"127.0.0.1:0\"\nreceive_timeout = \"2s\"\n",
    );
    let gw = Gateway::start_text(dir, &text).await;
    let addr = gw.running().mllp_addr("analyzer").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let messages = fixture_messages();
    let delivered = analyzer(&mut conn, &messages, true, Duration::from_secs(60)).await;
    assert_eq!(delivered, messages.len());
    assert_eq!(wait_for(&gw, messages.len()).await.len(), messages.len());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_serial_source_over_a_pty_acks_after_storing() {
    let (mut master, _slave, path) = pty();
    let dir = tempfile::tempdir().unwrap();
    let text = astm_config(
        dir.path(),
        &format!("kind = \"mllp-serial\"\nport = \"{path}\"\nbaud = 19200\n"),
    );
    let gw = Gateway::start_text(dir, &text).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["S1", "S2", "S1"] {
        let mut frame = vec![0x0b];
        frame.extend(crate::support::oru(id));
        frame.extend([0x1c, 0x0d]);
        master.write_all(&frame).await.unwrap();
        let mut reply = Vec::new();
        let mut b = [0u8; 512];
        while !reply.ends_with(&[0x1c, 0x0d]) {
            let n = tokio::time::timeout(Duration::from_secs(10), master.read(&mut b))
                .await
                .expect("an ACK")
                .unwrap();
            reply.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains(&format!("MSA|AA|{id}")), "{text}");
    }
    let stored = gw.queue().scan("north").unwrap();
    assert_eq!(stored.len(), 2, "the resend of S1 is not stored twice");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_prints_control_characters_from_a_pty() {
    let (mut master, _slave, path) = pty();
    let line = caregate::serial::Line::new(&path, 9600);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        master
            .write_all(b"\x05\x021H|\\^&\r\x03A5\r\n\x04")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(master);
    });
    let mut out = Vec::new();
    let n = caregate::cli::probe_serial(&line, Duration::from_secs(1), &mut out)
        .await
        .unwrap();
    writer.abort();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n, 15, "{text}");
    assert!(
        text.contains("<ENQ><STX>1H|\\^&<CR><ETX>A5<CR><LF>\n<EOT>"),
        "{text}"
    );
}

/// Observation ids caregate derives for an ASTM message of source `analyzer`, tenant `north`.
fn astm_observation_ids(msg: &[u8]) -> Vec<String> {
    let zone = jiff::tz::TimeZone::get("America/Chicago").unwrap();
    let systems = Default::default();
    let ctx = caregate::convert::Context {
        tenant: "north",
        source: "analyzer",
        timezone: &zone,
        identifier_systems: &systems,
        system_base: "urn:caregate",
    };
    let Ok(c) = caregate::convert::convert_astm(&ctx, msg) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&c.bundle.to_json()).unwrap();
    v["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["resource"]["resourceType"] == "Observation")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn astm_results_over_a_pty_arrive_at_the_fhir_server_as_observations() {
    use crate::support::fhir_server::{FhirServer, Options};
    let pki = crate::support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let (mut master, _slave, path) = pty();
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
url = "{url}"
ca_file = "{ca}"
retry_initial = "50ms"
retry_max = "500ms"
[[source]]
name = "analyzer"
tenant = "north"
kind = "astm"
port = "{path}"
baud = 9600
receive_timeout = "2s"
"#,
        data = dir.path().join("data").display(),
        url = server.base_url(),
        ca = pki.ca.display(),
    );
    let gw = Gateway::start_text(dir, &text).await;
    let mut messages = fixture_messages();
    messages.extend(corpus_messages(20));
    let delivered = analyzer(&mut master, &messages, true, Duration::from_secs(60)).await;
    assert_eq!(delivered, messages.len());
    let mut want: Vec<String> = messages
        .iter()
        .flat_map(|m| astm_observation_ids(m))
        .collect();
    want.sort();
    want.dedup();
    assert!(!want.is_empty());
    let end = Instant::now() + Duration::from_secs(60);
    while server.count("Observation").await < want.len() as u64 {
        assert!(Instant::now() < end, "ASTM results not at the FHIR server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.count("Observation").await,
        want.len() as u64,
        "one per result"
    );
    for chunk in want.chunks(40) {
        let found = server
            .search(
                "Observation",
                &format!("_id={}&_summary=count", chunk.join(",")),
            )
            .await;
        assert_eq!(found["total"], chunk.len());
    }
    assert!(
        server.count("Device").await >= 1,
        "the instrument as a Device"
    );
    // The chemistry fixture flags potassium HH and sodium LL: stored in the critical lane and
    // alerted (counted here; the webhook path is what tests/it/clinical.rs checks).
    let text = gw.metrics_text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("caregate_critical_results_total{tenant=\"north\",source=\"analyzer\"}")
        })
        .unwrap_or_else(|| panic!("no critical result counted: {text}"));
    assert!(!line.ends_with(" 0"), "{line}");
    eprintln!(
        "astm to FHIR: {} messages over a pty, {} Observations at the server",
        messages.len(),
        want.len()
    );
    gw.stop().await;
}
