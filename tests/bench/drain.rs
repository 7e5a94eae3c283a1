//! Drain benchmark: a backlog of N queued messages (default 100,000 CBC results, ~1.7 KB, 10
//! OBX each) delivered by caregate (the release binary, a child process, as in production) to a
//! local FHIR sink over TLS 1.3 / HTTP/2. Reports the time from spawn to ready (/readyz) with
//! the backlog on disk, messages/s from the daemon's start to an empty queue, the requests and
//! entries the sink saw, and the daemon's peak RSS (VmHWM).
//!
//! The sink answers every transaction with 200 and a transaction-response (one entry per
//! `"request":{` it counts in the body) without otherwise looking at the entries: it measures
//! caregate (lease, convert, merge, TLS, ack with fsync), not a server. The backlog is written beforehand with fsync off (that is not what is measured).
//!
//! ```text
//! scripts/bench-drain.sh [--messages 100000] [--batch 100]
//! ```

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caregate::envelope::{Kind, Lane, Meta};
use caregate::queue::{NewEnvelope, Queue};

mod support;
use support::oru;

const TARGET_RATE: f64 = 5_000.0;
const TARGET_RSS_MB: f64 = 50.0;

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    bytes: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let messages = arg("--messages", 100_000);
    let batch = arg("--batch", 100);
    let bin = std::env::var("CAREGATE_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/caregate").to_owned()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&bin, messages, batch));
}

async fn run(bin: &str, messages: usize, batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let seen = Arc::new(Seen::default());
    let sink = sink(&pki, seen.clone()).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let config = dir.path().join("caregate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[admin]\nlisten = \"{admin}\"\n[queue]\nmax_messages = 1000000\nmax_bytes = \"2GiB\"\n\
             [[tenant]]\nid = \"north\"\ntimezone = \"Europe/Berlin\"\n[tenant.upstream]\nurl = \"https://localhost:{sink}/fhir\"\n\
             ca_file = \"{ca}\"\nbatch_messages = {batch}\nbatch_entries = 5000\nbatch_bytes = \"16MiB\"\n",
            data.display(),
            ca = pki.display()
        ),
    )
    .unwrap();

    let fill = Instant::now();
    {
        let limits = caregate::config::Config::load(&config).unwrap().queue;
        std::fs::create_dir_all(&data).unwrap();
        let path = data.join("queue.redb");
        let q = Queue::open_with(
            Arc::new(move || redb::Database::create(&path)),
            limits,
            false,
            caregate::metrics::Metrics::new(),
        )
        .unwrap();
        let now = jiff::Timestamp::now().as_microsecond();
        for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
            let items = chunk
                .iter()
                .map(|i| {
                    let id = format!("DRAIN-{i}");
                    NewEnvelope {
                        tenant: "north".into(),
                        source: format!("lab-{}", i % 4),
                        received_at_us: now,
                        peer: "bench".into(),
                        kind: Kind::Hl7,
                        lane: Lane::Normal,
                        meta: Meta {
                            control_id: id.clone(),
                            message_type: "ORU^R01".into(),
                            version: "2.5.1".into(),
                            sender: "LABSYS|MAINLAB".into(),
                        },
                        payload: Bytes::from(oru(&id)),
                    }
                })
                .collect();
            q.push_all(items).await.unwrap();
        }
        q.close().await;
    }
    eprintln!("backlog of {messages} written in {:.1?}", fill.elapsed());

    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("CAREGATE_LOG", "warn")
        // As systemd/caregate.service sets it (unless the caller chose otherwise).
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    // Start: from spawn to the readiness latch (/readyz 200), with the whole backlog on disk.
    let ready_after = loop {
        if let Ok(r) = http.get(format!("http://{admin}/readyz")).send().await {
            if r.status().is_success() {
                break started.elapsed();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let mut peak_kb = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak_kb = peak_kb.max(vm_hwm_kb(child.id()).unwrap_or(0));
        // The queue gauge is exact and cheap (/status caches its full scan for 2 s).
        let Ok(r) = http.get(format!("http://{admin}/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap();
        let left = text
            .lines()
            .find(|l| l.starts_with("caregate_queue_messages "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        if left == Some(0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "did not drain: {left:?} left"
        );
    }
    let elapsed = started.elapsed();
    peak_kb = peak_kb.max(vm_hwm_kb(child.id()).unwrap_or(0));
    let cpu = cpu_seconds(child.id()).unwrap_or(0.0);
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let rate = messages as f64 / elapsed.as_secs_f64();
    let rss_mb = peak_kb as f64 / 1024.0;
    let requests = seen.requests.load(Ordering::Relaxed);
    println!(
        "drain: {messages} messages in {:.2}s = {rate:.0} msg/s; {requests} requests ({:.1} msg/request), {:.1} MB sent; peak RSS {rss_mb:.1} MB",
        elapsed.as_secs_f64(),
        messages as f64 / requests.max(1) as f64,
        seen.bytes.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!(
        "ready (/readyz 200) {:.0} ms after spawn, with {messages} messages queued",
        ready_after.as_secs_f64() * 1000.0
    );
    println!(
        "time in upstream requests {:.2}s, in queue commits {:.2}s ({} commits)",
        sum("caregate_upstream_request_seconds_sum"),
        sum("caregate_queue_commit_seconds_sum"),
        sum("caregate_queue_commit_seconds_count")
    );
    println!(
        "daemon CPU {cpu:.2}s ({:.0}% of one core; {:.0} msg per CPU-second)",
        100.0 * cpu / elapsed.as_secs_f64(),
        messages as f64 / cpu.max(0.001)
    );
    println!(
        "targets: >= {TARGET_RATE:.0} msg/s {}, RSS < {TARGET_RSS_MB:.0} MB {}",
        if rate >= TARGET_RATE {
            "MET"
        } else {
            "NOT MET"
        },
        if rss_mb < TARGET_RSS_MB {
            "MET"
        } else {
            "NOT MET"
        }
    );
}

/// utime + stime of a process, seconds (Linux clock ticks are 100/s on every supported box).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct SinkPki {
    ca: std::path::PathBuf,
    cert: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki(dir: &Path) -> SinkPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    SinkPki {
        ca,
        cert: vec![cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

impl SinkPki {
    fn display(&self) -> std::path::Display<'_> {
        self.ca.display()
    }
}

/// What a server answers a transaction with `return=minimal`: one `201 Created` per entry
/// (caregate checks the count). Entries are counted by their `"request":{` without parsing.
fn transaction_response(request: &[u8]) -> Vec<u8> {
    const ENTRY: &[u8] = br#"{"response":{"status":"201 Created"}}"#;
    let n = request
        .windows(11)
        .filter(|w| *w == br#""request":{"#)
        .count();
    let mut out = br#"{"resourceType":"Bundle","type":"transaction-response","entry":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(ENTRY);
    }
    out.extend_from_slice(b"]}");
    out
}

/// A TLS 1.3, h2/http1.1 sink that answers 200 to every request. Returns its port.
async fn sink(pki: &SinkPki, seen: Arc<Seen>) -> u16 {
    use http_body_util::BodyExt as _;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.cert.clone(), pki.key.clone_key())
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            // As FHIR servers do: without it, the answer's second write waits for the
            // client's delayed ACK (~40 ms per request on Linux).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            seen.requests.fetch_add(1, Ordering::Relaxed);
                            seen.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/fhir+json")
                                    .body(http_body_util::Full::new(Bytes::from(
                                        transaction_response(&body),
                                    )))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    port
}
