//! Shared test harness: start the whole gateway in-process on loopback port 0, MLLP clients,
//! test-time certificates, a fault-injecting storage backend, and the corpus location.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use caregate::app::{self, Running};
use caregate::config::Config;
use caregate::metrics::Metrics;
use caregate::mllp::client::{Client, Reply};
use caregate::queue::{Opener, Queue};

pub mod fhir_server;

/// A started in-process gateway and its temporary directory.
pub struct Gateway {
    pub running: Option<Running>,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

/// The base config: one tenant `north`, one MLLP source `lab` on a free port, extra TOML
/// appended inside that `[[source]]` table (e.g. `"max_connections = 2\n"`), and `queue_extra`
/// inside `[queue]`.
pub fn config_text(dir: &Path, source_extra: &str, queue_extra: &str) -> String {
    format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[queue]
{queue_extra}
[[tenant]]
id = "north"
timezone = "America/Chicago"
[[source]]
name = "lab"
tenant = "north"
kind = "mllp"
listen = "127.0.0.1:0"
{source_extra}
"#,
        data = dir.join("data").display()
    )
}

impl Gateway {
    /// Starts a gateway with `config_text(dir, source_extra, queue_extra)`.
    pub async fn start(source_extra: &str, queue_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(dir.path(), source_extra, queue_extra);
        Gateway::start_text(dir, &text).await
    }

    /// Starts a gateway from full config text.
    pub async fn start_text(dir: tempfile::TempDir, text: &str) -> Gateway {
        let path = dir.path().join("caregate.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let running = app::start(&config, app::Options::default()).await.unwrap();
        Gateway {
            running: Some(running),
            config,
            dir,
        }
    }

    /// Starts with a queue the test opened (fault injection).
    pub async fn start_with_queue(source_extra: &str, opener: Opener) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(dir.path(), source_extra, "");
        let path = dir.path().join("caregate.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let metrics = Metrics::new();
        let queue = Queue::open_with(opener, config.queue, true, metrics.clone()).unwrap();
        let running = app::start_with_queue(&config, queue, metrics)
            .await
            .unwrap();
        Gateway {
            running: Some(running),
            config,
            dir,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn addr(&self) -> String {
        self.running().mllp_addr("lab").unwrap().to_string()
    }

    pub fn queue(&self) -> &Queue {
        &self.running().queue
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr(), Duration::from_secs(10))
            .await
            .unwrap()
    }

    pub fn metrics_text(&self) -> String {
        self.running().metrics.render()
    }

    /// Stops in order and returns the names of tasks that missed the deadline.
    pub async fn stop(mut self) -> Vec<String> {
        self.running.take().unwrap().stop().await
    }
}

/// A small valid ORU^R01 with the given control id (synthetic data).
pub fn oru(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||TEST123^^^NORTH-MRN^MR||DOE^JANE||19800101|F\r\
         OBR|1||ORD1|2345-7^Glucose^LN|||20240105100000\r\
         OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|70-99|N|||F\r"
    )
    .into_bytes()
}

/// Same message in enhanced mode (MSH-15 = AL, MSH-16 = NE), as IHE PCD-01 senders do.
pub fn oru_enhanced(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|MONITOR|ICU|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE\r\
         PID|1||TEST123^^^NORTH-MRN^MR\r\
         OBR|1||ORD1|2345-7^Glucose^LN\r\
         OBX|1|NM|2345-7^Glucose^LN||98|mg/dL\r"
    )
    .into_bytes()
}

/// The single reply's MSA-1 as text ("" when none).
pub fn code(reply: &Reply) -> String {
    reply
        .acks
        .first()
        .map(|a| a.code_text.clone())
        .unwrap_or_default()
}

/// `../shared/corpus` if present; prints a visible skip message otherwise.
pub fn corpus_dir(sub: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not present (tests that read the shared corpus run in CI)",
            dir.display()
        );
        None
    }
}

/// Every file under `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// === TLS material, generated at test time ===

/// A CA, a server certificate for `localhost` and 127.0.0.1 and a client certificate, as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "caregate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["analyzer-1".to_owned()]).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "analyzer-1");
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        dir,
    }
}

// === storage fault injection ===

/// A redb storage backend over a real file that fails writes and syncs while `fail` is set:
/// a disk that has gone bad (or full) under a running gateway.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: redb::backends::FileBackend,
    fail: Arc<AtomicBool>,
}

impl FaultyBackend {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected disk failure"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
}

/// An opener over `path` whose backend fails while the returned flag is set.
pub fn faulty_opener(path: PathBuf) -> (Opener, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    let flag = fail.clone();
    let opener: Opener = Arc::new(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let backend = FaultyBackend {
            inner: redb::backends::FileBackend::new(file)?,
            fail: flag.clone(),
        };
        redb::Database::builder().create_with_backend(backend)
    });
    (opener, fail)
}

// === admin API tokens ===

/// The system-admin token the harness configs carry (`ops`), for tests that call the operator API.
pub const ADMIN_TOKEN: &str = "test-ops-token-0123456789";

/// An `[[admin.token]]` table (put it after `[admin]`, before any other table).
pub fn admin_token_toml(name: &str, role: &str, tenant: Option<&str>, token: &str) -> String {
    let hash = caregate::access::to_hex(&caregate::access::hash(token));
    let tenant = tenant
        .map(|t| format!("tenant = \"{t}\"\n"))
        .unwrap_or_default();
    format!("[[admin.token]]\nname = \"{name}\"\nrole = \"{role}\"\n{tenant}hash = \"{hash}\"\n")
}

/// Polls `f` every 50 ms until it holds or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Observation ids caregate derives for an HL7 message of `tenant`/`source` read in `zone`
/// (what the tests look up at the FHIR server).
pub fn observation_ids_in(tenant: &str, source: &str, zone: &str, msg: &[u8]) -> Vec<String> {
    observation_ids_by(caregate::convert::convert_bytes, tenant, source, zone, msg)
}

/// The same for an ASTM E1394 message.
pub fn astm_observation_ids_in(tenant: &str, source: &str, zone: &str, msg: &[u8]) -> Vec<String> {
    observation_ids_by(caregate::convert::convert_astm, tenant, source, zone, msg)
}

type Converter = fn(
    &caregate::convert::Context<'_>,
    &[u8],
) -> Result<caregate::convert::Conversion, caregate::convert::Error>;

fn observation_ids_by(
    convert: Converter,
    tenant: &str,
    source: &str,
    zone: &str,
    msg: &[u8],
) -> Vec<String> {
    let zone = jiff::tz::TimeZone::get(zone).unwrap();
    let systems = Default::default();
    let ctx = caregate::convert::Context {
        tenant,
        source,
        timezone: &zone,
        identifier_systems: &systems,
        system_base: "urn:caregate",
    };
    let c = convert(&ctx, msg).unwrap();
    let v: serde_json::Value = serde_json::from_str(&c.bundle.to_json()).unwrap();
    v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A loopback port free at the time of the call (for configs that need a fixed port: a
/// reload that moves a source, a child process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that every id in `acked` is stored in `queue` for `tenant`, and nothing twice;
/// returns how many copies of each control id are stored.
pub fn assert_stored_once(
    queue: &Queue,
    tenant: &str,
    acked: &[String],
) -> std::collections::HashMap<String, usize> {
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in queue.scan(tenant).unwrap() {
        *counts.entry(e.meta.control_id).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    counts
}
