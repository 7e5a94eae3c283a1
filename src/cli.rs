//! Command line (clap derive). Config-file settings describe the pipeline; flags here only
//! change how this process runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;

/// caregate: on-premises HL7 v2 / device gateway with durable store-and-forward to FHIR R4.
#[derive(Debug, Parser)]
#[command(name = "caregate", version, about, long_about = None)]
pub struct Cli {
    /// Where and how to log: `auto` writes to the journal natively when stderr is connected to
    /// it (systemd's `JOURNAL_STREAM`), else text lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `journald` when stderr is the journal's stream, else `text`.
    Auto,
    /// The journal's native protocol: every field (`source`, `envelope_id`, ...) becomes a journal
    /// field (`SOURCE=`, `ENVELOPE_ID=`), queryable with `journalctl SOURCE=lab`.
    Journald,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
}

/// The journal's native socket (systemd.journal-fields(7), sd_journal_print(3)).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// What the log format choice depends on, read from the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEnv {
    /// `$JOURNAL_STREAM`: `<device>:<inode>` of the stream systemd connected to stderr/stdout.
    pub journal_stream: Option<String>,
    /// `(st_dev, st_ino)` of our stderr.
    pub stderr: Option<(u64, u64)>,
    /// Whether [`JOURNAL_SOCKET`] exists.
    pub journal_socket: bool,
}

impl LogEnv {
    /// Reads the environment variable, stats stderr and looks for the socket.
    pub fn read() -> LogEnv {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        LogEnv {
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            stderr,
            journal_socket: std::path::Path::new(JOURNAL_SOCKET).exists(),
        }
    }

    /// systemd.exec(5): a service should switch to the native journal protocol only when
    /// `$JOURNAL_STREAM` names the very stream its stderr is (a child whose stderr was
    /// redirected inherits the variable but not the stream).
    pub fn stderr_is_journal(&self) -> bool {
        let (Some(stream), Some((dev, ino))) = (&self.journal_stream, self.stderr) else {
            return false;
        };
        let Some((d, i)) = stream.split_once(':') else {
            return false;
        };
        d.parse() == Ok(dev) && i.parse() == Ok(ino)
    }
}

impl LogFormat {
    /// The concrete format (never `Auto`): `auto` becomes `journald` when stderr is the journal
    /// and its socket exists, else `text`; an explicit `journald` without the socket falls back
    /// to `text` (the caller says so in the log). `text` and `json` stay as asked.
    pub fn resolve(self, env: &LogEnv) -> LogFormat {
        match self {
            LogFormat::Auto if env.journal_socket && env.stderr_is_journal() => LogFormat::Journald,
            LogFormat::Auto => LogFormat::Text,
            LogFormat::Journald if !env.journal_socket => LogFormat::Text,
            other => other,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Commit without fsync. Acknowledged messages can be lost on power failure: only for
        /// the ingest benchmark's "what does durability cost" run.
        #[arg(long, hide = true)]
        unsafe_no_fsync: bool,
    },
    /// Validate the configuration without opening any port; exit 0, or 64 with file, key and line.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print the fully commented default configuration.
    PrintConfig,
    /// Send HL7 files over MLLP and print each ACK (MSA-1, MSA-2, error text).
    Send {
        /// Target `HOST:PORT`.
        #[arg(long)]
        to: String,
        /// Use TLS 1.3.
        #[arg(long)]
        tls: bool,
        /// CA bundle to trust (default: the system bundle).
        #[arg(long, requires = "tls")]
        ca: Option<PathBuf>,
        /// Client certificate for mTLS.
        #[arg(long, requires_all = ["tls", "key"])]
        cert: Option<PathBuf>,
        /// Client key for mTLS.
        #[arg(long, requires_all = ["tls", "cert"])]
        key: Option<PathBuf>,
        /// Name to verify in the server certificate (default: the host part of --to).
        #[arg(long, requires = "tls")]
        server_name: Option<String>,
        /// How long to wait for each ACK.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Files holding one or more HL7 messages (batches and multi-message files are split).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Convert HL7 v2 messages to FHIR R4 transaction Bundles (one JSON line per message).
    Convert {
        /// Configuration file (tenant time zone and identifier systems); without it, UTC and
        /// no identifier mapping.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Tenant to convert for (default: the only one in the config).
        #[arg(long)]
        tenant: Option<String>,
        /// Source name to convert as (its time zone applies; ids match the daemon's).
        #[arg(long)]
        source: Option<String>,
        /// Print the conversion report instead of the Bundle.
        #[arg(long)]
        report: bool,
        /// HL7 file, or `-` for stdin.
        input: String,
    },
    /// What is flowing and what is stuck: per tenant and source (asks the running daemon).
    Status {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// The `/status` JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The audit trail: verify its integrity, export a tenant's entries.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List serial ports, with their stable /dev/serial/by-id names (use those in the config).
    Ports,
    /// Look at what a device or broker sends, without storing anything (for biomed engineers).
    Probe {
        /// What to probe.
        #[command(subcommand)]
        command: ProbeCommand,
    },
    /// Admin API tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Inspect the durable queue.
    Queue {
        /// What to show.
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Patient consent: withdraw (messages are held), reinstate (held messages are released in
    /// order), list (keyed hashes only). Needs the running daemon and an org-admin or
    /// system-admin token.
    Consent {
        /// What to do.
        #[command(subcommand)]
        command: ConsentCommand,
    },
}

/// How a command reaches the running daemon's admin API, and as whom.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Configuration file (for the admin address and the tenants).
    #[arg(long, short, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// File holding the admin API bearer token (default: $CAREGATE_TOKEN_FILE, else
    /// /etc/caregate/cli.token when readable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// `caregate consent ...`.
#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record a patient's consent status.
    Set {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// Tenant (default: the only one).
        #[arg(long)]
        tenant: Option<String>,
        /// Assigning authority as senders put it in PID-3.4 (for example `NORTH-MRN`): the
        /// identifier system is the one the converter uses for it (the tenant's
        /// `identifier_systems`, else `urn:caregate:<tenant>:identifiers:<authority>`).
        #[arg(long, conflicts_with = "system", required_unless_present = "system")]
        authority: Option<String>,
        /// Identifier system URI, as the converter emits it.
        #[arg(long)]
        system: Option<String>,
        /// `active` (consent on file or reinstated) or `withdrawn`.
        #[arg(long)]
        status: crate::consent::Status,
        /// The patient identifier value; `-` reads it from standard input, which keeps it out
        /// of the shell history and the process list.
        value: String,
    },
    /// List a tenant's recorded consents (keyed hashes, status, time).
    List {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// Tenant (default: the only one).
        #[arg(long)]
        tenant: Option<String>,
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn parse_parity(s: &str) -> Result<crate::modbus::Parity, String> {
    match s {
        "none" => Ok(crate::modbus::Parity::None),
        "even" => Ok(crate::modbus::Parity::Even),
        "odd" => Ok(crate::modbus::Parity::Odd),
        _ => Err("expected none, even or odd".into()),
    }
}

/// `caregate probe modbus`: prints one line per point; fails if the device does not answer.
pub async fn probe_modbus(
    addr: &str,
    unit: u8,
    points: &[crate::modbus::probe::Point],
    timeout: Duration,
    serial: (u32, crate::modbus::Parity),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let transport =
        crate::modbus::probe::transport(addr, Some(serial)).map_err(anyhow::Error::msg)?;
    let lines = crate::modbus::probe::run(&transport, unit, points, timeout)
        .await
        .with_context(|| format!("probing {addr} unit {unit}"))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// `caregate token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token once (give it to its holder) and its SHA-256 for the config.
    New {
        /// Token name, e.g. `ops-alice` (logged and audited as the actor).
        #[arg(long)]
        name: String,
        /// Also write the hash to this file (the `hash_file` of its `[[admin.token]]`).
        #[arg(long)]
        hash_file: Option<PathBuf>,
    },
}

/// `caregate token new`: the token on stdout's first line, then a config snippet.
pub fn token_new(
    name: &str,
    hash_file: Option<&std::path::Path>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let (token, hash) = crate::access::new_token()
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let hex = crate::access::to_hex(&hash);
    if let Some(p) = hash_file {
        std::fs::write(p, format!("{hex}\n"))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    writeln!(out, "{token}")?;
    writeln!(
        out,
        "# Shown once: give the line above to {name} (e.g. in a file for --token-file).\n\
         # Add to [admin] in caregate.toml (role: system-admin | org-admin | auditor):\n\
         # [[admin.token]]\n# name = \"{name}\"\n# role = \"org-admin\"\n# tenant = \"north\"\n{}",
        match hash_file {
            Some(p) => format!("# hash_file = \"{}\"", p.display()),
            None => format!("# hash = \"{hex}\""),
        }
    )?;
    Ok(())
}

/// `caregate audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; names file and line of every break.
    /// Exit 0 intact, 2 not intact, 1 unreadable.
    Verify {
        /// Configuration file (for the trail and key locations).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Public key file (default: `audit-signing.pub` in data_dir).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// One tenant's entries as JSON lines, for an auditor.
    Export {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Tenant id (`-` for system-wide entries).
        #[arg(long)]
        tenant: String,
        /// From (RFC 3339 or a date), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Until (RFC 3339 or a date), exclusive.
        #[arg(long)]
        until: Option<String>,
    },
}

/// `caregate probe ...`.
#[derive(Debug, Subcommand)]
pub enum ProbeCommand {
    /// Read Modbus points and print raw words and decoded values.
    Modbus {
        /// `HOST:PORT` (Modbus TCP) or a serial device path (RTU).
        addr: String,
        /// Unit (slave) id.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// `FUNCTION:ADDRESS:TYPE[:WORD_ORDER]`, e.g. `3:100:u16` or `4:0:f32:little`; repeat.
        #[arg(long = "register", required = true, value_parser = crate::modbus::probe::parse_point)]
        registers: Vec<crate::modbus::probe::Point>,
        /// How long to wait for each answer.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
        /// RTU only: baud rate.
        #[arg(long, default_value_t = 19_200)]
        baud: u32,
        /// RTU only: parity (none, even, odd).
        #[arg(long, default_value = "even", value_parser = parse_parity)]
        parity: crate::modbus::Parity,
    },
    /// Open a serial port read-only in spirit (nothing is sent) and print what arrives.
    Serial {
        /// Device, e.g. /dev/serial/by-id/usb-FTDI_...-if00-port0.
        port: PathBuf,
        /// Bits per second.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// Data bits (5-8).
        #[arg(long, default_value_t = 8)]
        data_bits: u8,
        /// none, even or odd.
        #[arg(long, default_value = "none")]
        parity: String,
        /// Stop bits (1 or 2).
        #[arg(long, default_value_t = 1)]
        stop_bits: u8,
        /// How long to listen, in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Subscribe to an MQTT broker and print every publish: topic, QoS, retain, size and the
    /// payload with control characters made visible. Clean session: leaves no state behind.
    Mqtt {
        /// `mqtt://host[:port]` or `mqtts://host[:port]`.
        broker: String,
        /// Topic filter (repeatable); default `#`.
        #[arg(long = "topic", short)]
        topics: Vec<String>,
        /// CA bundle for `mqtts://` (default: the system bundle).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// User name.
        #[arg(long)]
        username: Option<String>,
        /// File whose first line is the password.
        #[arg(long, requires = "username")]
        password_file: Option<PathBuf>,
        /// Stop after this many publishes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Print at most this many payload bytes per publish.
        #[arg(long, default_value_t = 4096)]
        max_bytes: usize,
    },
}

/// A payload for a terminal: printable ASCII as is, CR as `<CR>`, LF as `<LF>` (followed by a
/// line break), HL7/MLLP framing bytes by name, other bytes as `\xNN`.
pub fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 16);
    for &b in bytes {
        match b {
            b'\r' => out.push_str("<CR>"),
            b'\n' => out.push_str("<LF>\n"),
            b'\t' => out.push_str("<TAB>"),
            0x0b => out.push_str("<VT>"),
            0x1c => out.push_str("<FS>"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out
}

/// `caregate probe mqtt`: prints publishes to stdout until `count`, `duration` or Ctrl-C.
pub async fn probe_mqtt(opts: &ProbeMqtt) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, Transport};
    let (host, port, tls) =
        crate::mqtt::parse_broker(&opts.broker).map_err(|m| anyhow::anyhow!("broker: {m}"))?;
    let id = format!("caregate-probe-{}", std::process::id());
    let mut o = MqttOptions::new(id, (host, port));
    o.set_clean_session(true);
    o.set_keep_alive(30);
    o.set_max_packet_size(256 << 20, 1 << 20);
    if let Some(u) = &opts.username {
        let password = match &opts.password_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        };
        o.set_credentials(u.clone(), password);
    }
    if tls {
        let cfg = crate::mllp::tls::client_config(opts.ca.as_deref(), None)?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(cfg),
        ));
    }
    let topics = if opts.topics.is_empty() {
        vec!["#".to_owned()]
    } else {
        opts.topics.clone()
    };
    for t in &topics {
        if !crate::mqtt::valid_filter(t) {
            anyhow::bail!("--topic: not a valid MQTT topic filter");
        }
    }
    let (client, mut events) = AsyncClient::new(o, 16);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    let mut out = std::io::stdout();
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        match ev? {
            Event::Incoming(Packet::ConnAck(_)) => {
                let subs = topics
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                client.try_subscribe_many(subs)?;
                eprintln!(
                    "connected to {}; subscribed to {}",
                    opts.broker,
                    topics.join(", ")
                );
            }
            Event::Incoming(Packet::Publish(p)) => {
                seen += 1;
                let shown = &p.payload[..p.payload.len().min(opts.max_bytes)];
                let more = if shown.len() < p.payload.len() {
                    " [truncated]"
                } else {
                    ""
                };
                use std::io::Write as _;
                writeln!(
                    out,
                    "--- topic={} qos={} retain={} dup={} bytes={}{more}\n{}",
                    visible(&p.topic),
                    p.qos as u8,
                    p.retain,
                    p.dup,
                    p.payload.len(),
                    visible(shown)
                )?;
                out.flush()?;
                if opts.count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    Ok(seen)
}

/// Options of `caregate probe mqtt`.
#[derive(Debug, Clone)]
pub struct ProbeMqtt {
    /// Broker URL.
    pub broker: String,
    /// Filters.
    pub topics: Vec<String>,
    /// CA bundle.
    pub ca: Option<PathBuf>,
    /// User name.
    pub username: Option<String>,
    /// Password file.
    pub password_file: Option<PathBuf>,
    /// Stop after this many.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Payload bytes shown per publish.
    pub max_bytes: usize,
}

/// `caregate queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts and bytes per tenant and source, oldest entry age.
    Stats {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List dead letters (messages the upstream or the converter refused) with the reason.
    DeadLetters {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue, in their original order (after fixing the cause).
    Replay {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// Tenant (default: the only one).
        #[arg(long)]
        tenant: Option<String>,
        /// Every dead letter of the tenant.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Envelope id, as `queue dead-letters` lists it.
        #[arg(required_unless_present = "all")]
        id: Option<u64>,
    },
    /// Delete one dead letter for good.
    Purge {
        /// The running daemon and the operator's token.
        #[command(flatten)]
        api: ApiArgs,
        /// Tenant (default: the only one).
        #[arg(long)]
        tenant: Option<String>,
        /// Envelope id.
        id: u64,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > crate::config::MAX_DURATION {
        return Err("longer than 100 years".into());
    }
    Ok(d)
}

/// Settings of `caregate send`.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Target `HOST:PORT`.
    pub to: String,
    /// Use TLS.
    pub tls: bool,
    /// CA bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify.
    pub server_name: Option<String>,
    /// ACK timeout.
    pub timeout: Duration,
}

/// `caregate send`: sends every message of every file, one at a time, and prints one line per
/// ACK. Returns false when any message was not accepted (AE/AR/CE/CR, no ACK, or timeout).
pub async fn send(opts: &SendOptions, files: &[PathBuf]) -> anyhow::Result<bool> {
    use anyhow::Context as _;

    use crate::hl7::batch;
    use crate::mllp::client::Client;

    let mut client = if opts.tls {
        let identity = opts
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let config = crate::mllp::tls::client_config(opts.ca.as_deref(), identity)?;
        let host = opts.server_name.clone().unwrap_or_else(|| {
            opts.to
                .rsplit_once(':')
                .map_or(opts.to.as_str(), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_owned()
        });
        Client::connect_tls(&opts.to, &host, config, opts.timeout).await?
    } else {
        Client::connect(&opts.to, opts.timeout).await?
    };
    let mut all_ok = true;
    let mut sent = 0usize;
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let split = batch::split(&bytes);
        if split.messages.is_empty() {
            println!("{}: no HL7 message found", file.display());
            all_ok = false;
            continue;
        }
        for (i, m) in split.messages.iter().enumerate() {
            sent += 1;
            // Files use LF or CRLF between segments; MLLP wants CR.
            let payload = normalise_segments(m);
            match client.send(&payload).await {
                Ok(reply) if reply.acks.is_empty() => {
                    println!("{}#{}: reply without MSA", file.display(), i + 1);
                    all_ok = false;
                }
                Ok(reply) => {
                    for a in &reply.acks {
                        let codes = if a.error_codes.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", a.error_codes.join(","))
                        };
                        println!(
                            "{}#{}: {} {}{}{}",
                            file.display(),
                            i + 1,
                            a.code_text,
                            a.control_id,
                            if a.text.is_empty() {
                                String::new()
                            } else {
                                format!(" {}", a.text)
                            },
                            codes
                        );
                        if !a.code.is_some_and(|c| c.is_accept()) {
                            all_ok = false;
                        }
                    }
                }
                Err(e) => {
                    println!("{}#{}: {e}", file.display(), i + 1);
                    return Ok(false);
                }
            }
        }
    }
    eprintln!("sent {sent} messages");
    Ok(all_ok)
}

/// Turns LF and CRLF segment separators into CR (the HL7 terminator), dropping empty lines.
pub fn normalise_segments(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for line in m.split(|&b| b == b'\r' || b == b'\n') {
        if line.is_empty() {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\r');
    }
    out
}

/// `caregate ports`: one line per port, by-id names indented below it.
pub fn ports(out: &mut impl std::io::Write) -> anyhow::Result<usize> {
    let ports = crate::serial::ports();
    if ports.is_empty() {
        writeln!(out, "no serial ports found")?;
    }
    for p in &ports {
        writeln!(out, "{}\t{}", p.path, p.description)?;
        for l in &p.by_id {
            writeln!(out, "\tby-id: {}", l.display())?;
        }
    }
    Ok(ports.len())
}

/// `caregate probe serial`: prints what arrives on the line for `duration`, control characters
/// made visible, and returns the number of bytes seen. Nothing is written to the line.
pub async fn probe_serial(
    line: &crate::serial::Line,
    duration: Duration,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<u64> {
    use tokio::io::AsyncReadExt as _;
    let mut port = line
        .open()
        .with_context(|| format!("opening {}", line.port.display()))?;
    writeln!(
        out,
        "listening on {} at {} baud for {}s (nothing is sent)",
        line.port.display(),
        line.baud,
        duration.as_secs()
    )?;
    out.flush()?;
    let deadline = tokio::time::Instant::now() + duration;
    let mut buf = vec![0u8; 4096];
    let mut total = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, port.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                total += n as u64;
                write!(
                    out,
                    "{}",
                    crate::serial::visible(buf.get(..n).unwrap_or_default())
                )?;
                out.flush()?;
            }
            Ok(Err(e)) => {
                writeln!(out)?;
                return Err(anyhow::Error::new(e).context("reading the port"));
            }
        }
    }
    writeln!(out)?;
    writeln!(out, "{total} bytes")?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(stream: Option<&str>, stderr: Option<(u64, u64)>, socket: bool) -> LogEnv {
        LogEnv {
            journal_stream: stream.map(str::to_owned),
            stderr,
            journal_socket: socket,
        }
    }

    #[test]
    fn auto_uses_the_journal_only_when_stderr_is_the_journal_stream() {
        let under_systemd = env(Some("8:12345"), Some((8, 12345)), true);
        assert_eq!(LogFormat::Auto.resolve(&under_systemd), LogFormat::Journald);
        // Inherited variable, stderr redirected elsewhere (e.g. `caregate status 2>file`).
        let redirected = env(Some("8:12345"), Some((8, 999)), true);
        assert_eq!(LogFormat::Auto.resolve(&redirected), LogFormat::Text);
        // A terminal: no variable.
        assert_eq!(
            LogFormat::Auto.resolve(&env(None, Some((8, 12345)), true)),
            LogFormat::Text
        );
        // The stream matches but the socket is gone (a container with a log pipe).
        assert_eq!(
            LogFormat::Auto.resolve(&env(Some("8:12345"), Some((8, 12345)), false)),
            LogFormat::Text
        );
        // Malformed variable values never match.
        for bad in ["", "8", "8:", ":12345", "x:y", "8:12345:1"] {
            assert_eq!(
                LogFormat::Auto.resolve(&env(Some(bad), Some((8, 12345)), true)),
                LogFormat::Text,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn explicit_formats_are_kept_and_journald_needs_the_socket() {
        let none = env(None, None, false);
        assert_eq!(LogFormat::Json.resolve(&none), LogFormat::Json);
        assert_eq!(LogFormat::Text.resolve(&none), LogFormat::Text);
        assert_eq!(LogFormat::Journald.resolve(&none), LogFormat::Text);
        let socket = env(None, None, true);
        assert_eq!(LogFormat::Journald.resolve(&socket), LogFormat::Journald);
        let journal = env(Some("1:2"), Some((1, 2)), true);
        assert_eq!(LogFormat::Json.resolve(&journal), LogFormat::Json);
    }
}
