//! The real binary as a child process: SIGKILL under load, CLI commands, shipped config files.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caregate::mllp::client::Client;

use crate::support::{ADMIN_TOKEN, assert_stored_once, code, free_port, oru};

/// The harness's system-admin `[[admin.token]]`.
fn admin_token() -> String {
    crate::support::admin_token_toml("ops", "system-admin", None, ADMIN_TOKEN)
}

const BIN: &str = env!("CARGO_BIN_EXE_caregate");

struct Daemon {
    mllp: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn write_config(dir: &Path) -> (PathBuf, String) {
        let mllp = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "data_dir = \"{}\"\n[admin]\nlisten = \"{admin}\"\n{token}[[tenant]]\nid = \"north\"\n\
             [[source]]\nname = \"lab\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"{mllp}\"\n",
            dir.join("data").display(),
            token = admin_token(),
        );
        std::fs::write(dir.join("cli.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        let path = dir.join("caregate.toml");
        std::fs::write(&path, text).unwrap();
        (path, mllp)
    }

    fn start(config: &Path, mllp: &str, log: PathBuf) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let d = Daemon {
            mllp: mllp.to_owned(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&d.mllp).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_eight_connection_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mllp) = Daemon::write_config(dir.path());
    let mut daemon = Daemon::start(&config, &mllp, dir.path().join("log"));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for conn in 0..8 {
        let acked = acked.clone();
        let addr = mllp.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = Client::connect(&addr, Duration::from_secs(5)).await else {
                return;
            };
            for i in 0.. {
                let id = format!("K-{conn}-{i}");
                match c.send(&oru(&id)).await {
                    Ok(r) if code(&r) == "AA" => acked.lock().unwrap().push(id),
                    Ok(r) => panic!("unexpected reply {}", r.raw),
                    Err(_) => return, // the daemon died mid-exchange: this one was never ACKed
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "load too small to mean anything: {}",
        acked.len()
    );

    // Restart on the same data: it must open cleanly and keep serving.
    let mut daemon = Daemon::start(&config, &mllp, dir.path().join("log"));
    let mut c = Client::connect(&mllp, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("AFTER-RESTART")).await.unwrap()), "AA");
    drop(c);
    assert!(daemon.terminate().success());

    let queue = caregate::queue::Queue::open(
        &dir.path().join("data"),
        caregate::queue::Limits::default(),
        caregate::metrics::Metrics::new(),
    )
    .unwrap();
    let counts = assert_stored_once(&queue, "north", &acked);
    eprintln!(
        "sigkill test: {} ACKed before the kill, {} stored after restart",
        acked.len(),
        counts.len()
    );
}

#[tokio::test]
async fn send_prints_each_ack_and_exits_non_zero_on_a_reject() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mllp) = Daemon::write_config(dir.path());
    let mut daemon = Daemon::start(&config, &mllp, dir.path().join("log"));
    // A multi-message file with LF segment separators, as files usually have.
    let good = dir.path().join("two.hl7");
    let text = [oru("CLI-1"), oru("CLI-2")].concat();
    std::fs::write(&good, String::from_utf8(text).unwrap().replace('\r', "\n")).unwrap();
    let out = Command::new(BIN)
        .args(["send", "--to", &mllp])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("#1: AA CLI-1") && stdout.contains("#2: AA CLI-2"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.hl7");
    std::fs::write(&bad, "MSH|^~\\&|A|B|C|D|2024||ORU^R01||P|2.5.1\n").unwrap();
    let out = Command::new(BIN)
        .args(["send", "--to", &mllp])
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(": AE ") && stdout.contains("[101]"),
        "{stdout}"
    );

    // queue stats works while the daemon runs (read-only open).
    let out = Command::new(BIN)
        .args(["queue", "stats", "--json", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total_messages"], 2, "{v}");
    assert_eq!(v["rejected"], 1, "{v}");
    assert_eq!(v["sources"][0]["source"], "lab", "{v}");
    assert_eq!(v["tenants"][0]["tenant"], "north", "{v}");
    assert!(daemon.terminate().success());
    // After a clean stop the database was closed: it reads offline without a repair.
    let out = Command::new(BIN)
        .args(["queue", "stats", "--json", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn send_times_out_against_a_silent_peer() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.hl7");
    std::fs::write(&f, oru("T-1")).unwrap();
    let out = Command::new(BIN)
        .args(["send", "--timeout", "300ms", "--to", &addr])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no acknowledgement"));
}

#[test]
fn every_shipped_config_file_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let files = crate::support::walk(&root);
    assert!(!files.is_empty());
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "toml"))
    {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_names_file_key_and_line_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = Daemon::write_config(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "kind = \"mllp\"",
        "kind = \"mllp\"\nmax_frame = \"8 parsecs\"",
    );
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("max_frame"))
        .unwrap();
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:{line}:", config.display())),
        "{err}"
    );
    assert!(err.contains("source[0].max_frame"), "{err}");
}

#[test]
fn print_config_is_the_shipped_default_and_it_validates() {
    let out = Command::new(BIN).arg("print-config").output().unwrap();
    assert!(out.status.success());
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/caregate.toml")).unwrap();
    assert_eq!(out.stdout, shipped);
}

/// A lab result for the kill test (synthetic): two Observations, one of `mrns` patients.
fn kill_lab(control: &str, mrn: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\r\
         PID|1||KMRN{mrn}^^^NORTH-MRN^MR||DOE^JANE||19800101|F\r\
         OBR|1||ORD-{control}|24323-8^Metabolic panel^LN|||20240105100000\r\
         OBX|1|NM|2345-7^Glucose^LN||97|mg/dL|70-99|N|||F\r\
         OBX|2|NM|2823-3^Potassium^LN||4.1|mmol/L|3.5-5.1|N|||F\r"
    )
    .into_bytes()
}

fn kill_observation_ids(msg: &[u8]) -> Vec<String> {
    crate::support::observation_ids_in("north", "lab", "UTC", msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_forwarding_ten_times_delivers_every_acked_message_once() {
    use crate::support::fhir_server::{FhirServer, Options};
    let pki = crate::support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mllp = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "data_dir = \"{data}\"\n[admin]\nlisten = \"{admin}\"\n{token}\
         [[tenant]]\nid = \"north\"\ntimezone = \"UTC\"\n\
         [tenant.upstream]\nurl = \"{url}\"\nca_file = \"{ca}\"\nbatch_messages = 5\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\n\
         [[source]]\nname = \"lab\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"{mllp}\"\n",
        data = dir.path().join("data").display(),
        token = admin_token(),
        url = server.base_url(),
        ca = pki.ca.display(),
    );
    let config = dir.path().join("caregate.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("log");

    const MRNS: usize = 7;
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut sent = 0usize;
    let mut kills_mid_flight = 0;
    let mut unacked: Vec<Vec<u8>> = Vec::new();
    for cycle in 0..10 {
        let mut daemon = Daemon::start(&config, &mllp, log.clone());
        // Send while the daemon forwards, and kill it in the middle of both.
        let addr = mllp.clone();
        let sender = tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut tried = 0usize;
            let mut unanswered = None;
            let Ok(mut c) = Client::connect(&addr, Duration::from_secs(5)).await else {
                return (ok, tried, unanswered);
            };
            for i in 0..400 {
                let msg = kill_lab(&format!("KF-{cycle}-{i}"), (cycle * 400 + i) % MRNS);
                tried += 1;
                match c.send(&msg).await {
                    Ok(r) if code(&r) == "AA" => ok.push(msg),
                    Ok(r) => panic!("cycle {cycle}: unexpected reply {}", r.raw),
                    Err(_) => {
                        // Killed mid-exchange: never ACKed, but it may have been stored.
                        unanswered = Some(msg);
                        break;
                    }
                }
            }
            (ok, tried, unanswered)
        });
        tokio::time::sleep(Duration::from_millis(150 + 40 * cycle as u64)).await;
        daemon.kill9();
        let (ok, tried, maybe) = sender.await.unwrap();
        sent += tried;
        acked.extend(ok);
        unacked.extend(maybe);
        if server.count("Observation").await < acked.len() as u64 * 2 {
            kills_mid_flight += 1;
        }
    }
    // The last start drains what is left.
    let mut daemon = Daemon::start(&config, &mllp, log.clone());
    let http = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let s: serde_json::Value = http
            .get(format!("http://{admin}/status"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["tenants"][0]["queued"] == 0 {
            break;
        }
        assert!(Instant::now() < end, "queue did not drain: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(daemon.terminate().success());

    // Every ACKed message's Observations are at the server, and nothing is there twice.
    let ids: Vec<String> = acked.iter().flat_map(|m| kill_observation_ids(m)).collect();
    for chunk in ids.chunks(40) {
        let found = server
            .search(
                "Observation",
                &format!("_id={}&_summary=count", chunk.join(",")),
            )
            .await;
        assert_eq!(
            found["total"],
            chunk.len(),
            "an ACKed message is missing at the server"
        );
    }
    // A message stored but killed before its ACK went out may be delivered too (the sender
    // will resend it and the server keeps one copy): count those that arrived.
    let mut arrived_unacked = 0u64;
    for m in &unacked {
        let mine = kill_observation_ids(m);
        let found = server
            .search(
                "Observation",
                &format!("_id={}&_summary=count", mine.join(",")),
            )
            .await;
        arrived_unacked += u64::from(found["total"] == mine.len());
    }
    let messages = acked.len() as u64 + arrived_unacked;
    assert_eq!(
        server.count("Observation").await,
        messages * 2,
        "Observations at the server beyond one per delivered message"
    );
    assert_eq!(server.count("DiagnosticReport").await, messages);
    assert_eq!(
        server.count("Patient").await,
        MRNS as u64,
        "one Patient per MRN"
    );
    assert!(
        kills_mid_flight >= 5,
        "only {kills_mid_flight} kills happened while forwarding"
    );
    eprintln!(
        "sigkill forwarding test: {sent} sent, {} ACKed, {arrived_unacked} stored before an ACK could go out, {kills_mid_flight}/10 kills mid-flight, {} Observations at the server",
        acked.len(),
        messages * 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_queue_commands_use_the_running_daemon_or_the_queue_directly() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mllp) = Daemon::write_config(dir.path());
    let mut daemon = Daemon::start(&config, &mllp, dir.path().join("log"));
    let mut c = Client::connect(&mllp, Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(code(&c.send(&oru(&format!("ST-{i}"))).await.unwrap()), "AA");
    }
    drop(c);
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["sources"][0]["source"], "lab");
    assert_eq!(s["sources"][0]["received"], 3);
    assert_eq!(s["tenants"][0]["queued"], 3);
    assert!(
        s["tenants"][0]["upstream"].is_null(),
        "no upstream configured"
    );
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TENANT") && text.contains("north"), "{text}");
    // While it runs, the queue commands go through its admin API.
    let out = Command::new(BIN)
        .args(["queue", "dead-letters", "--json", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = Command::new(BIN)
        .args(["queue", "purge", "1", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a ready message cannot be purged");
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    assert!(daemon.terminate().success());
    // Stopped: status says so; the queue commands open the queue themselves.
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no caregate answered"));
    let out = Command::new(BIN)
        .args(["queue", "replay", "--all", "--config"])
        .arg(&config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_ready_watchdog_and_stopping_are_notified_and_sighup_reloads() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let (config, mllp) = Daemon::write_config(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut got: Vec<String> = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < end && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 4 {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 4,
        "{got:?}"
    );
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");

    // A reload with a broken file is refused; the daemon keeps serving.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\nbogus_key = 1\n")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Client::connect(&mllp, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&oru("AFTER-HUP")).await.unwrap()), "AA");
    drop(c);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop caregate"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("invalid and was refused"), "{text}");

    // A valid change is applied in place: a second source starts listening.
    let added = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!("{good}[[source]]\nname = \"lab2\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"{added}\"\n"),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match Client::connect(&added, Duration::from_secs(1)).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the added source never listened: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(code(&c.send(&oru("ON-ADDED-SOURCE")).await.unwrap()), "AA");
    drop(c);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("configuration reloaded") && text.contains("lab2"),
        "{text}"
    );
    let mut reloading = false;
    while let Ok(n) = sock.recv(&mut buf) {
        reloading |= String::from_utf8_lossy(&buf[..n]).contains("RELOADING=1");
        if reloading {
            break;
        }
    }
    assert!(reloading, "RELOADING=1 while the reload runs");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "STOPPING=1 on shutdown");
}

/// Runs the real binary with `--log-format journald` in a private mount namespace where a fresh
/// tmpfs on /run holds a stand-in journal socket (tracing-journald's socket path is a
/// constant, so the only way to point it elsewhere is to put something else at that path). The
/// datagrams must carry the house log fields as journal fields. Needs root and `unshare`;
/// prints `SKIP:` otherwise.
#[test]
fn journald_logging_sends_the_house_fields_as_journal_fields() {
    let usable = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let python = Command::new("python3").arg("--version").output().is_ok();
    if !usable || !python {
        eprintln!("SKIP: journald field test needs unshare -m (root) and python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("caregate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nshutdown_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[tenant]]\nid = \"north\"\n[[source]]\nname = \"lab\"\ntenant = \"north\"\n\
             kind = \"mllp\"\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let message = dir.path().join("oru.hl7");
    std::fs::write(&message, oru("JRNL0001")).unwrap();
    let capture = dir.path().join("journal.bin");
    let receiver = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
        s.bind('/run/systemd/journal/socket')\n\
        f=open(sys.argv[1],'ab')\n\
        while True:\n\
        \x20   d=s.recv(1<<20)\n\
        \x20   f.write(d+b'\\n\\x1e\\n'); f.flush()\n";
    let script = r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
python3 -c "$RECEIVER" "$CAPTURE" &
rpid=$!
for i in $(seq 1 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
CAREGATE_LOG=debug "$BIN" --log-format journald run --config "$CONFIG" 2>"$CAPTURE.stderr" &
cpid=$!
for i in $(seq 1 200); do grep -q "caregate ready" "$CAPTURE" 2>/dev/null && break; sleep 0.05; done
"$BIN" --log-format text send --to "127.0.0.1:$PORT" "$MESSAGE" >/dev/null
kill -TERM $cpid
wait $cpid || true
kill $rpid
"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("RECEIVER", receiver)
        .env("CAPTURE", &capture)
        .env("BIN", BIN)
        .env("CONFIG", &config)
        .env("PORT", port.to_string())
        .env("MESSAGE", &message)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = std::fs::read_to_string(dir.path().join("journal.bin.stderr")).unwrap_or_default();
    assert!(
        stderr.trim().is_empty(),
        "nothing on stderr when logging to the journal: {stderr}"
    );
    let raw = std::fs::read(&capture).unwrap();
    let records: Vec<HashMap<String, String>> = raw
        .split(|&b| b == 0x1e)
        .map(journal_fields)
        .filter(|r| !r.is_empty())
        .collect();
    let find = |message: &str| {
        records
            .iter()
            .find(|r| r.get("MESSAGE").is_some_and(|m| m == message))
            .unwrap_or_else(|| panic!("no {message:?} record in {records:#?}"))
    };
    let ready = find("caregate ready");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "caregate");
    assert_eq!(ready["PRIORITY"], "6", "info");
    assert_eq!(ready["SOURCES"], "1");
    let stored = find("stored");
    assert_eq!(stored["SOURCE"], "lab");
    assert!(stored["PEER"].starts_with("127.0.0.1:"), "{stored:?}");
    assert!(stored["ENVELOPE_ID"].parse::<u64>().is_ok(), "{stored:?}");
    assert_eq!(stored["CONTROL_ID"], "JRNL0001");
    assert_eq!(stored["PRIORITY"], "7", "debug");
    let shutdown = find("shutting down");
    assert!(shutdown.contains_key("SIGNAL"), "{shutdown:?}");
    // No patient data: the synthetic message's patient name never reaches the journal.
    assert!(!String::from_utf8_lossy(&raw).contains("DOE"));
}

/// One datagram of the journal's native protocol (systemd "Native Journal Protocol"):
/// `KEY=value\n`, or `KEY\n` + 64-bit little-endian length + value + `\n` for values that may
/// hold newlines. The capture wraps each datagram in `\n` ... `\n` (separator 0x1e).
fn journal_fields(datagram: &[u8]) -> HashMap<String, String> {
    let mut rest = datagram.strip_prefix(b"\n").unwrap_or(datagram);
    let mut fields = HashMap::new();
    while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'=') {
        let key = String::from_utf8_lossy(&rest[..end]).into_owned();
        if rest[end] == b'=' {
            let line_end = rest[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| end + p);
            fields.insert(
                key,
                String::from_utf8_lossy(&rest[end + 1..line_end]).into_owned(),
            );
            rest = rest.get(line_end + 1..).unwrap_or_default();
        } else {
            let Some(len) = rest.get(end + 1..end + 9) else {
                break;
            };
            let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
            let value = &rest[end + 9..end + 9 + len];
            fields.insert(key, String::from_utf8_lossy(value).into_owned());
            rest = rest.get(end + 9 + len + 1..).unwrap_or_default();
        }
    }
    fields.retain(|k, _| !k.is_empty());
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_log_lines_never_carry_the_other_tenants_data() {
    use crate::support::fhir_server::{FhirServer, Options};
    let pki = crate::support::pki();
    let (Some(a), Some(b)) = (
        FhirServer::start(&pki, Options::default()).await,
        FhirServer::start(&pki, Options::default()).await,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mn, ms) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let mut text = format!(
        "data_dir = \"{}\"\n[admin]\nlisten = \"{admin}\"\n",
        dir.path().join("data").display()
    );
    for (t, s) in [("north", &a), ("south", &b)] {
        text.push_str(&format!(
            "[[tenant]]\nid = \"{t}\"\ntimezone = \"UTC\"\n[tenant.upstream]\nurl = \"{}\"\nca_file = \"{}\"\n",
            s.base_url(),
            pki.ca.display()
        ));
    }
    text.push_str(&format!(
        "[[source]]\nname = \"lab-n\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"{mn}\"\n\
         [[source]]\nname = \"lab-s\"\ntenant = \"south\"\nkind = \"mllp\"\nlisten = \"{ms}\"\n"
    ));
    let config = dir.path().join("caregate.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("CAREGATE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for addr in [&mn, &ms] {
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr.as_str()).is_err() {
            assert!(Instant::now() < end, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Same control ids and patient in both tenants; one malformed message each (error paths).
    for addr in [&mn, &ms] {
        let mut c = Client::connect(addr, Duration::from_secs(5)).await.unwrap();
        for i in 0..5 {
            assert_eq!(
                code(&c.send(&oru(&format!("SAME-{i}"))).await.unwrap()),
                "AA"
            );
        }
        let _ = c.send(b"MSH|^~\\&|X\rPID|garbage").await;
    }
    let end = Instant::now() + Duration::from_secs(30);
    while a.count("Observation").await < 5 || b.count("Observation").await < 5 {
        assert!(Instant::now() < end, "not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut tagged = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let tenant = v["tenant"].as_str().unwrap_or_default();
        let (other, other_source, other_port) = match tenant {
            "north" => ("south", "lab-s", b.port()),
            "south" => ("north", "lab-n", a.port()),
            _ => continue,
        };
        tagged += 1;
        assert!(
            !line.contains(other)
                && !line.contains(other_source)
                && !line.contains(&format!(":{other_port}")),
            "a {tenant} log line carries {other}'s data: {line}"
        );
        let source = v["source"].as_str().unwrap_or_default();
        assert!(
            source.is_empty() || source.ends_with(&tenant[..1]),
            "{line}"
        );
    }
    assert!(
        tagged > 4,
        "too few tenant-tagged log lines to mean anything: {tagged}"
    );
    // Requests at each server carry only their tenant's correlation ids.
    for (s, t) in [(&a, "north"), (&b, "south")] {
        for r in s.requests().await.iter().filter(|r| r.method == "POST") {
            assert!(
                r.request_id
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with(&format!("cg-{t}-"))
            );
        }
    }
}

/// `caregate consent set|list` against the running daemon: a withdrawn patient's message is
/// held (ACKed, stored, not forwarded), reinstating releases it, and the CLI never prints the
/// identifier (the value is read from stdin, and only its keyed hash comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_commands_hold_and_release_through_the_running_daemon() {
    use crate::support::fhir_server::{FhirServer, Options};
    use std::io::Write as _;
    let pki = crate::support::pki();
    let Some(server) = FhirServer::start(&pki, Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mllp, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = dir.path().join("caregate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[admin]\nlisten = \"{admin}\"\n{}\
             [[tenant]]\nid = \"north\"\ntimezone = \"UTC\"\n[tenant.upstream]\nurl = \"{}\"\nca_file = \"{}\"\n\
             [[source]]\nname = \"lab\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"{mllp}\"\n",
            dir.path().join("data").display(),
            admin_token(),
            server.base_url(),
            pki.ca.display()
        ),
    )
    .unwrap();
    let token = dir.path().join("cli.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut daemon = Daemon::start(&config, &mllp, dir.path().join("log"));
    let consent = |status: &str| {
        let mut child = Command::new(BIN)
            .args(["consent", "set", "--config"])
            .arg(&config)
            .arg("--token-file")
            .arg(&token)
            .args(["--authority", "NORTH-MRN", "--status", status, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"CONSENTMRN7\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("CONSENTMRN7"), "identifier echoed: {text}");
        text
    };
    let said = consent("withdrawn");
    assert!(
        said.contains("Withdrawn") && said.contains("0 held messages released"),
        "{said}"
    );

    let msg = crate::forward::lab("CONS-1", "CONSENTMRN7", 90);
    let other = crate::forward::lab("CONS-2", "OTHERMRN", 91);
    let mut c = Client::connect(&mllp, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code(&c.send(&msg).await.unwrap()), "AA");
    assert_eq!(code(&c.send(&other).await.unwrap()), "AA");
    drop(c);
    crate::support::eventually(30, "the other patient forwarded", || async {
        server.count("Observation").await == 2
    })
    .await;
    let status = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["tenants"][0]["held"], 1, "{status}");

    let said = consent("active");
    assert!(said.contains("1 held messages released"), "{said}");
    crate::support::eventually(30, "the held message forwarded", || async {
        server.count("Observation").await == 4
    })
    .await;
    let list = Command::new(BIN)
        .args(["consent", "list", "--json", "--config"])
        .arg(&config)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["status"], "active");
    assert!(!list.to_string().contains("CONSENTMRN7"));
    assert!(daemon.terminate().success());

    // Without a daemon the command says why instead of changing a registry nobody reads.
    let out = Command::new(BIN)
        .args(["consent", "set", "--config"])
        .arg(&config)
        .arg("--token-file")
        .arg(&token)
        .args(["--authority", "NORTH-MRN", "--status", "active", "X"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("need the running daemon"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
