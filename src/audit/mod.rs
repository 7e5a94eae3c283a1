//! The append-only audit trail: one entry per data movement (received, stored, converted,
//! forwarded, …) and per operator action (replay, purge, config reload), kept 10 years and
//! compressed after 2 (platform requirements: "logged with actor, organization, timestamp,
//! data scope, and purpose … 10-year retention, automated cold storage after 2 years").
//!
//! An entry says who (actor), whose data (exactly one tenant, or `-` for system-wide actions),
//! what (action and data scope: message type, control id, envelope id, resource ids, and the
//! patient as a keyed hash), when (UTC, µs), why (purpose), how it ended (outcome and a reason
//! code) and which request it belongs to (correlation id). **It never holds patient data**:
//! the API takes typed values only ([`Id`], [`Code`], [`PatientRef`]); there is no free-text
//! field, and a patient identifier enters only through HMAC-SHA256 under a per-installation
//! key ([`Trail::patient_ref`]), so the trail can be handed to an auditor as is.
//!
//! # On disk
//!
//! ```text
//! <data_dir>/audit-signing.key   Ed25519 private key (PKCS#8, 0600), created on first start
//! <data_dir>/audit-signing.pub   its public key, hex: what an auditor verifies with
//! <data_dir>/audit-patient.key   HMAC key for patient references (0600)
//! <dir>/audit-20261124T100000Z-000000000000.jsonl      closed: ends with a rotate checkpoint
//! <dir>/audit-20261125T100000Z-000000051234.jsonl.gz   closed and older than cold_after
//! <dir>/audit-20261126T100000Z-000000103311.jsonl      active: appended to
//! ```
//!
//! Files are named by the time they were opened and the seq of their first line. Every line
//! is one canonical JSON object ([`Line::parse`] accepts nothing else):
//!
//! ```text
//! {"seq":41,"prev":"<sha256 of line 40>","time":"2026-11-24T10:00:00.123456Z","tenant":"north",
//!  "actor":{"kind":"source","name":"lab-mllp"},"action":"stored","scope":{"message_type":"ORU^R01",
//!  "control_id":"MSG00001","envelope_id":42,"patient":"<hmac>"},"purpose":"treatment",
//!  "outcome":{"result":"success"},"correlation_id":"env-42"}
//! {"seq":42,"prev":"<sha256 of line 41>","checkpoint":{"time":"…","reason":"periodic",
//!  "key":"<key id>","sig":"<ed25519 over seq, prev, time, reason>"}}
//! ```
//!
//! (Shown wrapped; each is one line.)
//!
//! # Invariants
//!
//! 1. **Chained.** `seq` numbers every line of the trail (entries and checkpoints) from 0
//!    without gaps, across files. `prev` is the SHA-256 of the previous line's bytes (without
//!    the newline); a file's first line chains to the previous file's last line, seq 0 to the
//!    genesis value (64 zeros). Changing, removing, inserting or reordering any line breaks a
//!    link, and [`verify`] names the file and line.
//! 2. **Signed.** A checkpoint signs the chain hash so far (its `prev`) with the installation's
//!    Ed25519 key: every `checkpoint_every` entries, at every rotation (the last line of every
//!    closed file) and on clean shutdown. A forger who rewrites the chain cannot re-sign it.
//! 3. **Durable before answered.** One writer thread appends in groups: one `write` and one
//!    `fdatasync` for everything pending, then every caller's [`Appended`] resolves. A caller
//!    that must not proceed before the entry is on disk awaits it; others drop it.
//! 4. **Crash-safe, never silently.** A crash can leave a torn last line (a partial write).
//!    On open it is truncated away and the next entry carries a `recovered` note (file and
//!    byte count); the chain continues from the last complete line. Complete lines are never
//!    removed or rewritten by the writer. A torn line is a prefix of one line, so more than
//!    1 MiB after the last newline is not a torn write but damage: the writer then leaves the
//!    file as it is (it is evidence) and refuses to start, as it does for a corrupt last line.
//!    Readers never hold more than 1 MiB of one line: a longer one is reported as malformed.
//! 5. **Closed files are immutable.** Only the active file is appended to. Compression writes
//!    a `.gz` copy, checks it decompresses to the same bytes, renames it into place, then
//!    removes the plain file; the chain is verified over the decompressed bytes.
//! 6. **Retention leaves evidence.** Files older than `retain` (counted from when they were
//!    closed) are deleted oldest first, only after a `purged` entry naming them and the last
//!    deleted line's seq and hash is durable; `verify` accepts a trail whose head is gone only
//!    with such a record.
//!
//! # Configuration (`[audit]`, all optional)
//!
//! ```toml
//! [audit]
//! dir = "/var/lib/caregate/audit"   # default: <data_dir>/audit
//! max_file_size = "64MiB"           # rotate when a file reaches this size
//! rotate_every = "1d"               # … or this age
//! cold_after = "2y"                 # compress closed files older than this
//! retain = "10y"                    # delete closed files older than this (at least 6y)
//! checkpoint_every = 1000           # entries between periodic checkpoints
//! ```
//!
//! # Use (the daemon)
//!
//! Open once at start ([`Trail::open`]) after validating config; record with
//! [`Trail::append`] at each data movement, awaiting it where the action must not be
//! acknowledged before it is recorded; run [`Trail::maintain`] daily on a blocking thread;
//! call [`Trail::close`] last in the ordered shutdown. The CLI calls [`verify_command`] and
//! [`export_command`].

mod entry;
mod export;
mod files;
mod keys;
mod recorder;
#[cfg(test)]
mod testutil;
mod verify;
mod writer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ByteSize, HumanDuration};

pub use entry::{
    Action, Actor, ActorKind, Checkpoint, CheckpointReason, Code, Entry, GENESIS, Hash, Id,
    Invalid, Line, LineError, MAX_RESOURCE_IDS, Outcome, PatientRef, Purpose, Record, Recovered,
    Retention, Scope, Signed, Status, Tenant, Time,
};
pub use export::{Export, export};
pub use keys::{PATIENT_KEY_FILE, PUBLIC_KEY_FILE, PublicKey, SIGNING_KEY_FILE};
pub use recorder::{Event, Recorder};
pub use verify::{Finding, FindingKind, Loc, MAX_FINDINGS, MAX_FINDINGS_PER_FILE, Report, verify};
pub use writer::{Appended, Clock, Counters, MAX_GROUP, Maintenance, Trail, system_clock};

/// Exit status of the CLI helpers: the trail is intact / the export completed.
pub const EXIT_OK: u8 = 0;
/// Exit status: the trail (or the key, directory) could not be read.
pub const EXIT_ERROR: u8 = 1;
/// Exit status of [`verify_command`]: problems were found.
pub const EXIT_NOT_INTACT: u8 = 2;

/// One year as humantime counts it (365.25 days).
const YEAR: Duration = Duration::from_secs(31_557_600);

/// Audit errors. None of them carries entry content or patient data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is unusable.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A private key file can be read by group or others.
    #[error("{}: mode {mode:03o} lets others read the key; it must be 0600", path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The newest file's last complete line is not a valid audit line, so the chain cannot
    /// be continued (this is not a torn write: run `caregate audit verify`).
    #[error("{file}: last complete line is not a valid audit line (run `caregate audit verify`)")]
    Corrupt {
        /// File name.
        file: String,
    },
    /// The newest file ends with more than 1 MiB after its last newline (or without any
    /// newline): no crash tears that much of one line, so this is damage, not a torn write.
    /// The file is left as it is, for inspection, and the writer does not start.
    #[error(
        "{file}: more than 1 MiB after the last newline is not a torn write; the file was left as is (run `caregate audit verify`)"
    )]
    Damaged {
        /// File name.
        file: String,
    },
    /// A line read by export is not a valid audit line.
    #[error("{file}:{line}: not a valid audit line")]
    Malformed {
        /// File name.
        file: String,
        /// 1-based line.
        line: u64,
    },
    /// A compressed copy did not read back identical; the plain file was kept.
    #[error("{file}: compressed copy does not match; plain file kept")]
    Compress {
        /// File name.
        file: String,
    },
    /// A write or fsync failed: the entry may or may not be on disk.
    #[error("writing the audit trail: {0}")]
    Write(String),
    /// The record was refused (nothing written).
    #[error("audit record refused: {0}")]
    Invalid(&'static str),
    /// The writer has stopped.
    #[error("audit trail closed")]
    Closed,
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

// === configuration ===

/// Validated `[audit]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory of the trail files.
    pub dir: PathBuf,
    /// Directory of the key files (`data_dir`; not a config key: keys stay out of `dir`).
    pub key_dir: PathBuf,
    /// Rotate when the active file reaches this many bytes.
    pub max_file_size: u64,
    /// Rotate when the active file is this old.
    pub rotate_every: Duration,
    /// Compress closed files this long after they were closed.
    pub cold_after: Duration,
    /// Delete closed files this long after they were closed.
    pub retain: Duration,
    /// Entries between periodic checkpoints.
    pub checkpoint_every: u64,
}

impl Config {
    /// The defaults for a data directory.
    pub fn new(data_dir: &Path) -> Config {
        Config {
            dir: data_dir.join("audit"),
            key_dir: data_dir.to_owned(),
            max_file_size: 64 << 20,
            rotate_every: Duration::from_secs(24 * 3600),
            cold_after: 2 * YEAR,
            retain: 10 * YEAR,
            checkpoint_every: 1000,
        }
    }
}

/// File form of `[audit]` (`deny_unknown_fields`; sizes and durations as strings with units).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    dir: Option<PathBuf>,
    max_file_size: Option<ByteSize>,
    rotate_every: Option<HumanDuration>,
    cold_after: Option<HumanDuration>,
    retain: Option<HumanDuration>,
    checkpoint_every: Option<u64>,
}

impl RawConfig {
    /// Validates against the (already resolved) `data_dir`; a relative `dir` is taken relative
    /// to `base` (the config file's folder). Errors are `(key, message)`.
    pub fn validate(self, data_dir: &Path, base: &Path) -> Result<Config, (String, String)> {
        let d = Config::new(data_dir);
        let c = Config {
            dir: self.dir.map_or(d.dir, |p| crate::config::resolve(base, &p)),
            key_dir: d.key_dir,
            max_file_size: self.max_file_size.map_or(d.max_file_size, |b| b.0),
            rotate_every: self.rotate_every.map_or(d.rotate_every, |h| h.0),
            cold_after: self.cold_after.map_or(d.cold_after, |h| h.0),
            retain: self.retain.map_or(d.retain, |h| h.0),
            checkpoint_every: self.checkpoint_every.unwrap_or(d.checkpoint_every),
        };
        let err = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        if c.max_file_size < 64 << 10 {
            return err("max_file_size", "must be at least 64KiB");
        }
        if c.rotate_every < Duration::from_secs(60) {
            return err("rotate_every", "must be at least 1m");
        }
        if c.cold_after.is_zero() {
            return err("cold_after", "must be greater than zero");
        }
        // A typo here ("10d" for "10y") would destroy evidence: HIPAA keeps documentation
        // 6 years (45 CFR 164.316(b)(2)); the platform asks for 10.
        if c.retain < 6 * YEAR {
            return err("retain", "must be at least 6y (the platform requires 10y)");
        }
        if c.checkpoint_every == 0 {
            return err("checkpoint_every", "must be at least 1");
        }
        Ok(c)
    }
}

// === CLI helpers ===

/// `caregate audit verify`: verifies the trail in `dir` with the public key file at
/// `pubkey_path` and writes the findings and a summary to `out`. Returns [`EXIT_OK`],
/// [`EXIT_NOT_INTACT`] or [`EXIT_ERROR`] (key or directory unreadable).
pub fn verify_command(dir: &Path, pubkey_path: &Path, out: &mut impl Write) -> u8 {
    let key = match PublicKey::load(pubkey_path) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            return EXIT_ERROR;
        }
    };
    match verify(dir, &key) {
        Ok(report) => {
            let _ = write!(out, "{report}");
            if report.is_intact() {
                EXIT_OK
            } else {
                EXIT_NOT_INTACT
            }
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            EXIT_ERROR
        }
    }
}

/// `caregate audit export --tenant T [--since S] [--until U]`: writes the tenant's entries as
/// JSON lines to `out`; unreadable lines are reported on `err` (file and line) and the export
/// goes on. Returns [`EXIT_OK`], or [`EXIT_ERROR`] if anything could not be read.
pub fn export_command(
    dir: &Path,
    tenant: &str,
    since: Option<jiff::Timestamp>,
    until: Option<jiff::Timestamp>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let tenant = match Tenant::parse(tenant) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "error: --tenant: {e}");
            return EXIT_ERROR;
        }
    };
    let entries = match export(dir, &tenant, since, until) {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_ERROR;
        }
    };
    let mut status = EXIT_OK;
    for item in entries {
        match item {
            Ok(e) => {
                let written = serde_json::to_writer(&mut *out, &e)
                    .map_err(std::io::Error::other)
                    .and_then(|()| out.write_all(b"\n"));
                if let Err(e) = written {
                    let _ = writeln!(err, "error: writing the export: {e}");
                    return EXIT_ERROR;
                }
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                status = EXIT_ERROR;
            }
        }
    }
    if out.flush().is_err() {
        return EXIT_ERROR;
    }
    status
}

/// Parses a `--since`/`--until` value: an RFC 3339 time (`2026-11-24T10:00:00Z`) or a date
/// (`2026-11-24`, midnight UTC).
pub fn parse_time(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!(
                "{s:?}: expected an RFC 3339 time (2026-11-24T10:00:00Z) or a date (2026-11-24)"
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(toml: &str) -> Result<Config, (String, String)> {
        let r: RawConfig = toml::from_str(toml).map_err(|e| ("<toml>".into(), e.to_string()))?;
        r.validate(Path::new("/var/lib/caregate"), Path::new("/etc/caregate"))
    }

    #[test]
    fn config_defaults_follow_the_platform_requirements() {
        let c = raw("").unwrap();
        assert_eq!(c.dir, Path::new("/var/lib/caregate/audit"));
        assert_eq!(c.key_dir, Path::new("/var/lib/caregate"));
        assert_eq!(c.max_file_size, 64 << 20);
        assert_eq!(c.rotate_every, Duration::from_secs(86_400));
        assert_eq!(c.cold_after, 2 * YEAR);
        assert_eq!(c.retain, 10 * YEAR);
        assert_eq!(c.checkpoint_every, 1000);
    }

    #[test]
    fn config_reads_units_and_refuses_unknown_keys_and_short_retention() {
        let c = raw(
            "dir = \"trail\"\nmax_file_size = \"1MiB\"\nrotate_every = \"1h\"\ncold_after = \"30d\"\nretain = \"10y\"\ncheckpoint_every = 10\n",
        )
        .unwrap();
        assert_eq!(c.dir, Path::new("/etc/caregate/trail"));
        assert_eq!(c.max_file_size, 1 << 20);
        assert_eq!(c.rotate_every, Duration::from_secs(3600));
        assert_eq!(c.cold_after, Duration::from_secs(30 * 86_400));
        assert_eq!(c.checkpoint_every, 10);
        assert!(
            raw("retension = \"10y\"")
                .unwrap_err()
                .1
                .contains("unknown field")
        );
        assert_eq!(raw("retain = \"10d\"").unwrap_err().0, "retain");
        assert_eq!(raw("max_file_size = 64").unwrap_err().0, "<toml>");
        assert_eq!(
            raw("checkpoint_every = 0").unwrap_err().0,
            "checkpoint_every"
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_date() {
        assert_eq!(
            parse_time("2026-11-24").unwrap(),
            "2026-11-24T00:00:00Z".parse::<jiff::Timestamp>().unwrap()
        );
        assert!(parse_time("2026-11-24T10:00:00+01:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
