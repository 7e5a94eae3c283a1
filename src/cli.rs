//! Command line (clap derive). Config-file settings describe the pipeline; flags here only
//! change how this process runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

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
        /// Configuration file (for the admin address).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The `/status` JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the durable queue.
    Queue {
        /// What to show.
        #[command(subcommand)]
        command: QueueCommand,
    },
}

/// `caregate queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts and bytes per tenant and source, oldest entry age.
    Stats {
        /// Configuration file (for data_dir).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List dead letters (messages the upstream or the converter refused) with the reason.
    DeadLetters {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue, in their original order (after fixing the cause).
    Replay {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
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
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Tenant (default: the only one).
        #[arg(long)]
        tenant: Option<String>,
        /// Envelope id.
        id: u64,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
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
