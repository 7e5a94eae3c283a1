//! Ingest benchmark: N connections x M messages against a running caregate (the release binary
//! as a child process, as in production), one message in flight per connection as real senders
//! do. Reports msg/s and ACK latency p50/p99/max; the `no-fsync` run (`run --unsafe-no-fsync`,
//! the commit without its fsync) shows what durability costs.
//!
//! It builds nothing: `scripts/bench-ingest.sh` builds the release binary first. Each run gets a
//! fresh data directory, so runs do not influence each other and the queue can be checked
//! exactly: after a durable run, `caregate queue stats --json` (a second process reading the
//! database while the daemon still runs) must count every message that got its AA. `commits`, `msg/commit` and `commit ms` (mean) come from the daemon's
//! `caregate_queue_commit_seconds` histogram: how many ACKs one group commit served.
//!
//! ```text
//! cargo bench --bench ingest -- [--connections 1,8] [--messages 5000] [--modes durable,no-fsync]
//! CAREGATE_BIN=path/to/caregate   (default target/release/caregate)
//! ```
//!
//! The messages are synthetic: a ~1.7 KB ORU^R01 with 10 OBX and MSH-10 `BENCH-<conn>-<i>`.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caregate::mllp::client::Client;

mod support;
use support::oru;

/// How long one ACK may take before the message counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Non-AA replies printed per run (all are counted).
const MAX_PRINTED_FAILURES: usize = 10;

/// The issue's targets for the 2-core reference machine (durable runs).
struct Target {
    connections: usize,
    min_rate: f64,
    max_p99_ms: Option<f64>,
}

const TARGETS: [Target; 2] = [
    Target {
        connections: 1,
        min_rate: 2500.0,
        max_p99_ms: None,
    },
    Target {
        connections: 8,
        min_rate: 10_000.0,
        max_p99_ms: Some(5.0),
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Durable,
    NoFsync,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "durable" => Ok(Mode::Durable),
            "no-fsync" => Ok(Mode::NoFsync),
            other => Err(format!("unknown mode {other:?} (durable, no-fsync)")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::NoFsync => "no-fsync",
        }
    }
}

struct Args {
    bin: PathBuf,
    connections: Vec<usize>,
    messages: usize,
    modes: Vec<Mode>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bin: std::env::var_os("CAREGATE_BIN")
            .map_or_else(|| PathBuf::from("target/release/caregate"), PathBuf::from),
        connections: vec![1, 8],
        messages: 5000,
        modes: vec![Mode::Durable, Mode::NoFsync],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            // `cargo bench` passes --bench to harness = false targets.
            "--bench" => {}
            "--connections" => {
                args.connections = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--connections: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--modes" => {
                args.modes = value()?
                    .split(',')
                    .map(|m| Mode::parse(m.trim()))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => {
                return Err("usage: ingest [--connections 1,8] [--messages PER_CONNECTION] [--modes durable,no-fsync]\n\
                     env CAREGATE_BIN: the caregate binary (default target/release/caregate)"
                    .to_owned());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.connections.contains(&0) || args.messages == 0 {
        return Err("connections and messages must be at least 1".to_owned());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !args.bin.is_file() {
        eprintln!(
            "no caregate binary at {} (run `cargo build --release` or set CAREGATE_BIN)",
            args.bin.display()
        );
        std::process::exit(2);
    }
    let sample = oru("BENCH-0-0");
    eprintln!(
        "ingest benchmark: {} ({} bytes per message, one in flight per connection), {} CPUs",
        args.bin.display(),
        sample.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    eprintln!("load average before: {}", load_average());

    let mut results = Vec::new();
    let mut ok = true;
    for &conns in &args.connections {
        for &mode in &args.modes {
            match run_one(&args.bin, mode, conns, args.messages) {
                Ok(r) => {
                    ok &= r.failures == 0 && r.stored_ok != Some(false);
                    results.push(r);
                }
                Err(e) => {
                    eprintln!("{} x{conns}: {e}", mode.name());
                    ok = false;
                }
            }
        }
    }

    eprintln!("load average after: {}", load_average());
    println!();
    println!(
        "{:<9} {:>5} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10} {:>10}",
        "mode",
        "conns",
        "messages",
        "seconds",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failures",
        "commits",
        "msg/commit",
        "commit ms"
    );
    for r in &results {
        println!(
            "{:<9} {:>5} {:>8} {:>7.2} {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>8} {:>8} {:>10.1} {:>10.3}",
            r.mode.name(),
            r.connections,
            r.messages,
            r.seconds,
            r.messages as f64 / r.seconds,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            r.failures,
            r.commits.map_or("-".to_owned(), |(n, _)| n.to_string()),
            r.commits
                .map_or(0.0, |(n, _)| r.messages as f64 / n.max(1) as f64),
            r.commits.map_or(0.0, |(n, s)| s * 1e3 / n.max(1) as f64),
        );
    }
    println!();
    for r in results.iter().filter(|r| r.mode == Mode::Durable) {
        let rate = r.messages as f64 / r.seconds;
        for t in TARGETS.iter().filter(|t| t.connections == r.connections) {
            let met = rate >= t.min_rate && t.max_p99_ms.is_none_or(|p| ms(r.p99) <= p);
            let p99 = t
                .max_p99_ms
                .map_or(String::new(), |p| format!(", p99 <= {p} ms"));
            println!(
                "target durable x{}: >= {} msg/s{p99}: {}",
                t.connections,
                t.min_rate,
                if met { "met" } else { "MISSED" }
            );
        }
    }
    if !ok {
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

struct RunResult {
    mode: Mode,
    connections: usize,
    messages: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    failures: usize,
    /// Group commits during the run and their total seconds (from `/metrics`): how many ACKs
    /// one commit served and how long a commit took.
    commits: Option<(u64, f64)>,
    /// Whether `queue stats` counted exactly the messages sent (durable runs only).
    stored_ok: Option<bool>,
}

/// The daemon under test; killed if dropped without a clean stop.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, config: &Path, mode: Mode, log: PathBuf) -> Result<Daemon, String> {
        let out =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"]).arg(config);
        if mode == Mode::NoFsync {
            cmd.arg("--unsafe-no-fsync");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Daemon {
            child: Some(child),
            log,
        })
    }

    fn wait_ready(&mut self, admin: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "caregate exited with {status} before it was ready:\n{}",
                    self.log_text()
                ));
            }
            if http_get(admin, "/readyz").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "caregate not ready within 30s:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| format!("running kill: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM failed: {sent}"));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "caregate exited with {status}:\n{}",
                        self.log_text()
                    ));
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("caregate did not exit within 30s of SIGTERM".to_owned());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for caregate: {e}")),
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

fn run_one(
    bin: &Path,
    mode: Mode,
    connections: usize,
    messages: usize,
) -> Result<RunResult, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mllp = format!("127.0.0.1:{}", free_port()?);
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = dir.path().join("caregate.toml");
    // max_connections leaves room for the requested connections; the rest is the default config.
    // A system-admin token for `caregate queue stats` (the operator API needs one).
    let token_file = dir.path().join("cli.token");
    std::fs::write(&token_file, BENCH_TOKEN).map_err(|e| format!("writing the token: {e}"))?;
    let hash = caregate::access::to_hex(&caregate::access::hash(BENCH_TOKEN));
    let text = format!(
        "data_dir = \"{data}\"\n\
         [admin]\nlisten = \"{admin}\"\n\
         [[admin.token]]\nname = \"bench\"\nrole = \"system-admin\"\nhash = \"{hash}\"\n\
         [[tenant]]\nid = \"bench\"\n\
         [[source]]\nname = \"bench\"\ntenant = \"bench\"\nkind = \"mllp\"\nlisten = \"{mllp}\"\n\
         max_connections = {max}\n",
        data = dir.path().join("data").display(),
        max = connections.max(64),
    );
    std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;

    let mut daemon = Daemon::start(bin, &config, mode, dir.path().join("caregate.log"))?;
    daemon.wait_ready(&admin)?;
    let commits_before = commit_stats(&admin);

    let load = load_average();
    let send = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?
        .block_on(drive(&mllp, connections, messages))?;
    let commits = commit_stats(&admin)
        .zip(commits_before)
        .map(|((n, s), (n0, s0))| (n - n0, s - s0));

    let sent = connections * messages;
    let stored_ok = if mode == Mode::Durable {
        // A second process reads the database while the daemon runs: what it sees is committed.
        let stored = queue_total(bin, &config)?;
        let ok = stored == sent as u64;
        eprintln!(
            "{} x{connections}: queue stats total_messages = {stored}, sent {sent}: {}",
            mode.name(),
            if ok { "ok" } else { "MISMATCH" }
        );
        Some(ok)
    } else {
        None
    };
    daemon.terminate()?;

    let mut lat = send.latencies;
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank.
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1]
    };
    let r = RunResult {
        mode,
        connections,
        messages: sent,
        seconds: send.elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or_default(),
        failures: send.failures,
        commits,
        stored_ok,
    };
    eprintln!(
        "{} x{connections}: {sent} messages in {:.2}s = {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
         {} failures (load average at start: {load})",
        mode.name(),
        r.seconds,
        sent as f64 / r.seconds,
        ms(r.p50),
        ms(r.p99),
        ms(r.max),
        r.failures,
    );
    Ok(r)
}

struct Sent {
    elapsed: Duration,
    latencies: Vec<Duration>,
    failures: usize,
}

/// One task per connection, each sending its messages one at a time.
async fn drive(addr: &str, connections: usize, messages: usize) -> Result<Sent, String> {
    // Connect everyone first so connection setup is not timed.
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(
            Client::connect(addr, ACK_TIMEOUT)
                .await
                .map_err(|e| format!("connecting: {e}"))?,
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (conn, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            let mut failures = Vec::new();
            for i in 0..messages {
                let id = format!("BENCH-{conn}-{i}");
                let payload = oru(&id);
                let t = Instant::now();
                let reply = client.send(&payload).await;
                let took = t.elapsed();
                match reply {
                    Ok(r) => {
                        latencies.push(took);
                        let good = r.acks.len() == 1
                            && r.acks[0].code_text == "AA"
                            && r.acks[0].control_id == id;
                        if !good {
                            let what = r.acks.first().map_or_else(
                                || "reply without MSA".to_owned(),
                                |a| format!("{} for {} {}", a.code_text, a.control_id, a.text),
                            );
                            failures.push(format!("{id}: {what}"));
                        }
                    }
                    Err(e) => {
                        // The connection is unusable: the rest of this connection's messages fail.
                        failures.push(format!("{id}: {e}; {} more not sent", messages - i - 1));
                        return (latencies, failures, messages - i);
                    }
                }
            }
            let n = failures.len();
            (latencies, failures, n)
        }));
    }
    let mut latencies = Vec::with_capacity(connections * messages);
    let mut failures = 0;
    let mut printed = 0;
    for t in tasks {
        let (l, f, n) = t.await.map_err(|e| format!("client task: {e}"))?;
        latencies.extend(l);
        failures += n;
        for line in f {
            if printed < MAX_PRINTED_FAILURES {
                eprintln!("failure: {line}");
                printed += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    if failures > printed {
        eprintln!("({} more failures not printed)", failures - printed);
    }
    Ok(Sent {
        elapsed,
        latencies,
        failures,
    })
}

fn free_port() -> Result<u16, String> {
    // Bound and released: the daemon binds it moments later (another process could race us, but
    // on a benchmark machine that is vanishingly rare and fails loudly at startup).
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// A minimal HTTP/1.0 GET (no client crate needed for two admin endpoints).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Group commits so far and the seconds they took, from the commit-latency histogram.
fn commit_stats(admin: &str) -> Option<(u64, f64)> {
    let (_, body) = http_get(admin, "/metrics").ok()?;
    let value = |name: &str| {
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        value("caregate_queue_commit_seconds_count")? as u64,
        value("caregate_queue_commit_seconds_sum")?,
    ))
}

/// The operator token the benchmark's config accepts (a throwaway, not a secret).
const BENCH_TOKEN: &str = "bench-token-not-a-secret";

/// `caregate queue stats --config X --json` → total_messages.
fn queue_total(bin: &Path, config: &Path) -> Result<u64, String> {
    let out = Command::new(bin)
        .args(["queue", "stats", "--json", "--config"])
        .arg(config)
        .env("CAREGATE_TOKEN_FILE", config.with_file_name("cli.token"))
        .output()
        .map_err(|e| format!("running queue stats: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "queue stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("queue stats output is not JSON: {e}"))?;
    v["total_messages"]
        .as_u64()
        .ok_or_else(|| "queue stats JSON has no total_messages".to_owned())
}
