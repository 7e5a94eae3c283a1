//! The real binary as a child process: SIGKILL under load, CLI commands, shipped config files.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caregate::mllp::client::Client;

use crate::support::{code, oru};

const BIN: &str = env!("CARGO_BIN_EXE_caregate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
            "data_dir = \"{}\"\n[admin]\nlisten = \"{admin}\"\n[[tenant]]\nid = \"north\"\n\
             [[source]]\nname = \"lab\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"{mllp}\"\n",
            dir.join("data").display()
        );
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
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in queue.scan("north").unwrap() {
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
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:10:", config.display())), "{err}");
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
