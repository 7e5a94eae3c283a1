//! The file source (`kind = "file"`): HL7 v2 files dropped in a folder by a lab system or an
//! export job — one message, back-to-back messages, or FHS/BHS batches ([`hl7::batch::split`]).
//!
//! ```text
//!  dir/*.hl7 ──poll──▶ size+mtime stable across two polls? ──▶ split ──▶ check each message
//!      good ones ──▶ queue.push_all (one commit, dedup by MSH-3|MSH-4|MSH-10)
//!      bad ones  ──▶ queue.reject (rejected area, with the reason)
//!      then: report ──▶ done/<name>.report.json or failed/<name>.report.json
//!            file   ──▶ done/<name> (all good) or failed/<name> (any malformed)
//! ```
//!
//! Invariants:
//! - **Crash-safe, never duplicated.** The file is moved only after every push returned. A crash
//!   before the move leaves it in `dir`; it is processed again and the queue's dedup (control id
//!   = MSH-10, or a SHA-256 of the message when MSH-10 is empty) answers with the stored copies,
//!   so nothing is lost and nothing is stored twice. A storage failure leaves the file in place
//!   for the next poll.
//! - **A partial failure keeps the good messages.** Malformed messages do not stop the others;
//!   the file goes to `failed/` and its report names the bad ones by index and control id.
//! - **Bounded.** A file over `max_file` (default 64 MiB) is not read: it moves to `failed/`
//!   whole, its report says why (`refused`), and
//!   `caregate_messages_rejected_total{reason="too-large"}` counts it.
//! - **Complete files only.** A file is taken when its size and mtime are the same at two polls
//!   in a row (writers that copy slowly are not read half-way); empty files wait.
//! - **Reports carry no patient data**: counts, indexes, control ids, error codes and texts that
//!   name fields, never values.
//!
//! Why polling and not inotify: the folders are often network mounts (SMB/NFS shares the lab
//! system writes to), where inotify sees no remote writes; the stability rule needs two looks
//! at the file anyway; and it needs no extra crate. The cost is `poll_interval` of latency,
//! acceptable for batch files.
//!
//! `schedule = "02:00-04:00"` restricts taking files to a daily window in the source's (or
//! tenant's) time zone; a window may wrap midnight (`"22:00-02:00"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::HumanDuration;
use crate::envelope::{Kind, Lane, Meta};
use crate::hl7::{self, Charset, Message, batch, charset};
use crate::metrics::Metrics;
use crate::queue::{NewEnvelope, Queue};
use crate::shutdown::Shutdown;

/// Validated settings of a `kind = "file"` source.
#[derive(Debug, Clone)]
pub struct Config {
    /// The watched folder; `done/` and `failed/` are created inside it.
    pub dir: PathBuf,
    /// File-name pattern (`*` and `?` wildcards), e.g. `*.hl7`.
    pub pattern: String,
    /// Time between two looks at the folder.
    pub poll_interval: Duration,
    /// Daily window (minutes after local midnight, start and end) in which files are taken.
    pub schedule: Option<(u16, u16)>,
    /// IANA zone the schedule is read in (source's, else tenant's, else the system's).
    pub timezone: Option<String>,
    /// Charset assumed when MSH-18 is empty.
    pub default_charset: Charset,
    /// Largest file taken; a larger one goes to `failed/` unread, with a report saying so.
    pub max_file: u64,
}

/// Default `max_file`: a batch of some 30,000 lab results.
pub const DEFAULT_MAX_FILE: u64 = 64 << 20;

/// File form of a `kind = "file"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[allow(
        dead_code,
        reason = "read by config's first pass; allowed here so deny_unknown_fields accepts it"
    )]
    kind: String,
    pub(crate) name: String,
    pub(crate) tenant: String,
    pub(crate) timezone: Option<String>,
    dir: PathBuf,
    pattern: Option<String>,
    poll_interval: Option<HumanDuration>,
    schedule: Option<String>,
    charset: Option<String>,
    max_file: Option<crate::config::ByteSize>,
}

impl RawConfig {
    /// Validates; errors are `(key relative to the source, message)`. `timezone` is the
    /// tenant's, used when the source sets none.
    pub(crate) fn validate(
        self,
        base: &Path,
        tenant_timezone: Option<&str>,
    ) -> Result<Config, (String, String)> {
        if self.dir.as_os_str().is_empty() {
            return Err(("dir".into(), "must name a folder".into()));
        }
        let pattern = self.pattern.unwrap_or_else(|| "*".into());
        if pattern.is_empty() || pattern.contains('/') {
            return Err((
                "pattern".into(),
                "must be a file-name pattern such as \"*.hl7\" (no '/')".into(),
            ));
        }
        let poll_interval = self.poll_interval.map_or(Duration::from_secs(10), |d| d.0);
        if poll_interval < Duration::from_millis(100) || poll_interval > Duration::from_secs(3600) {
            return Err((
                "poll_interval".into(),
                "must be between 100ms and 1h".into(),
            ));
        }
        let schedule = match &self.schedule {
            None => None,
            Some(s) => Some(parse_schedule(s).ok_or_else(|| {
                (
                    "schedule".to_owned(),
                    "expected \"HH:MM-HH:MM\" (24-hour, local time), e.g. \"02:00-04:00\""
                        .to_owned(),
                )
            })?),
        };
        let default_charset = match &self.charset {
            None => Charset::Latin1,
            Some(c) => Charset::from_code(c).map_err(|_| {
                (
                    "charset".to_owned(),
                    "not a supported MSH-18 character set".to_owned(),
                )
            })?,
        };
        let max_file = match self.max_file {
            None => DEFAULT_MAX_FILE,
            Some(crate::config::ByteSize(n)) if (1 << 10..=1 << 30).contains(&n) => n,
            Some(_) => return Err(("max_file".into(), "must be between 1KiB and 1GiB".into())),
        };
        Ok(Config {
            dir: crate::config::resolve(base, &self.dir),
            max_file,
            pattern,
            poll_interval,
            schedule,
            timezone: self.timezone.or(tenant_timezone.map(str::to_owned)),
            default_charset,
        })
    }
}

/// `"HH:MM-HH:MM"` → minutes after midnight; start and end must differ.
pub fn parse_schedule(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.trim().split_once('-')?;
    let hm = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = (hm(a)?, hm(b)?);
    (a != b).then_some((a, b))
}

/// Whether `minute` (after local midnight) is inside the window; windows may wrap midnight.
pub fn in_window((start, end): (u16, u16), minute: u16) -> bool {
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

/// `*` (any run) and `?` (one character) wildcards over a file name.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

// === examining a file (pure) ===

/// What one message of a file turned out to be.
#[derive(Debug, Clone)]
pub enum Checked {
    /// Well-formed: stored with this metadata; `range` locates it in the file.
    Good {
        /// Header metadata (control id from MSH-10).
        meta: Meta,
        /// Byte range in the file.
        range: std::ops::Range<usize>,
    },
    /// Malformed: kept in the rejected area.
    Bad {
        /// MSH-10 when it could be read.
        control_id: String,
        /// What is wrong (names fields, never values).
        reason: String,
        /// Byte range in the file.
        range: std::ops::Range<usize>,
    },
}

/// Splits a file and checks each message. Never fails: no message at all gives an empty list.
pub fn examine(bytes: &[u8], fallback: Charset) -> Vec<Checked> {
    let split = batch::split(bytes);
    let base = bytes.as_ptr() as usize;
    split
        .messages
        .iter()
        .map(|m| {
            let start = (m.as_ptr() as usize).saturating_sub(base);
            let range = start..start + m.len();
            check(m, fallback, range)
        })
        .collect()
}

fn check(raw: &[u8], fallback: Charset, range: std::ops::Range<usize>) -> Checked {
    let bad = |control_id: String, e: &hl7::Error, range| Checked::Bad {
        control_id,
        reason: format!("{} {e}", e.hl7_code()),
        range,
    };
    let text = match charset::decode(raw, fallback) {
        Ok((t, _)) => t,
        Err(e) => return bad(String::new(), &e, range),
    };
    let scanned = || hl7::ack::Inbound::scan(&text).control_id.to_owned();
    let msg = match Message::parse(&text) {
        Ok(m) => m,
        Err(e) => return bad(scanned(), &e, range),
    };
    let header = match msg.header() {
        Ok(h) => h,
        Err(e) => return bad(scanned(), &e, range),
    };
    let control_id = if header.control_id.is_empty() {
        // No MSH-10: a content hash still makes re-processing idempotent.
        crate::astm::serial::control_id(raw).replacen("astm-", "sha256-", 1)
    } else {
        header.control_id.to_owned()
    };
    Checked::Good {
        meta: Meta {
            control_id,
            message_type: format!("{}^{}", header.message_code, header.trigger_event),
            version: header.version.to_owned(),
            sender: format!("{}|{}", header.sending_application, header.sending_facility),
        },
        range,
    }
}

// === the report ===

/// `<name>.report.json`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// The file's name as it was found.
    pub file: String,
    /// Source name.
    pub source: String,
    /// When it was processed (RFC 3339, UTC).
    pub processed_at: String,
    /// `done` or `failed`.
    pub result: String,
    /// Messages found.
    pub messages: usize,
    /// Newly stored.
    pub stored: usize,
    /// Already stored earlier (a re-processed file, or a resend).
    pub duplicates: usize,
    /// Malformed, kept in the rejected area.
    pub rejected: usize,
    /// Why the whole file was refused unread (larger than `max_file`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// One entry per message, in file order.
    pub outcomes: Vec<MessageOutcome>,
}

/// One message's fate.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageOutcome {
    /// 0-based position in the file.
    pub index: usize,
    /// MSH-10 (or the content hash used instead).
    pub control_id: String,
    /// `stored`, `duplicate` or `rejected`.
    pub outcome: String,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Envelope id in the queue (or the rejected area).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<u64>,
}

/// File-source errors (the file stays where it is and is tried again at the next poll).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing or moving a file failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The queue did not store the messages.
    #[error("storing the messages")]
    Queue(#[from] crate::queue::Error),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

// === the source ===

/// A running file source.
pub struct Source {
    name: String,
    tenant: String,
    cfg: Config,
    queue: Queue,
    metrics: Arc<Metrics>,
    /// Size and mtime seen at the previous poll.
    seen: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    critical: Option<Arc<crate::critical::Notifier>>,
}

impl Source {
    /// A source over `cfg.dir` (created with `done/` and `failed/` on the first poll).
    pub fn new(
        name: &str,
        tenant: &str,
        cfg: &Config,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Source {
        Source {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            cfg: cfg.clone(),
            queue,
            metrics,
            seen: HashMap::new(),
            critical: None,
        }
    }

    /// Classifies every stored message: critical ones go in the critical lane and raise an
    /// alert right after their commit.
    pub fn with_critical(mut self, notifier: Arc<crate::critical::Notifier>) -> Source {
        self.critical = Some(notifier);
        self
    }

    /// Polls until shutdown; the file in hand is finished first.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        tracing::info!(source = %self.name, dir = %self.cfg.dir.display(), "file source started");
        loop {
            self.poll().await;
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn window_open(&self) -> bool {
        let Some(w) = self.cfg.schedule else {
            return true;
        };
        let tz = self
            .cfg
            .timezone
            .as_deref()
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
            .unwrap_or_else(jiff::tz::TimeZone::system);
        let now = jiff::Timestamp::now().to_zoned_datetime(tz);
        let minute =
            u16::try_from(i32::from(now.hour()) * 60 + i32::from(now.minute())).unwrap_or(0);
        in_window(w, minute)
    }

    /// One look at the folder: processes the files that are complete. Returns how many files
    /// were moved.
    pub async fn poll(&mut self) -> usize {
        let entries = match std::fs::read_dir(&self.cfg.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(source = %self.name, dir = %self.cfg.dir.display(), error = %e, "cannot list the folder");
                return 0;
            }
        };
        let mut now_seen = HashMap::new();
        let mut ready = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || name.ends_with(".report.json") {
                continue;
            }
            if !matches(&self.cfg.pattern, name) {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            let stamp = (md.len(), md.modified().ok());
            if md.len() > 0 && self.seen.get(&path) == Some(&stamp) {
                ready.push(path.clone());
            }
            now_seen.insert(path, stamp);
        }
        self.seen = now_seen;
        if ready.is_empty() || !self.window_open() {
            return 0;
        }
        ready.sort();
        let mut moved = 0;
        for path in ready {
            match self.process(&path).await {
                Ok(_) => {
                    self.seen.remove(&path);
                    moved += 1;
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, file = %file_name(&path), error = %e,
                        "file not processed; it stays and is tried again at the next poll");
                }
            }
        }
        moved
    }

    /// Stores a file's good messages, keeps its bad ones, writes the report and moves the file.
    pub async fn process(&self, path: &Path) -> Result<Report, Error> {
        let bytes = read_at_most(path, self.cfg.max_file).map_err(io("reading", path))?;
        let Some(bytes) = bytes else {
            return self.refuse_too_large(path);
        };
        let bytes = Bytes::from(bytes);
        let checked = examine(&bytes, self.cfg.default_charset);
        let received_at_us = jiff::Timestamp::now().as_microsecond();
        let name = file_name(path);
        let envelope = |meta: Meta, range: &std::ops::Range<usize>| NewEnvelope {
            tenant: self.tenant.clone(),
            source: self.name.clone(),
            received_at_us,
            peer: format!("file:{name}"),
            kind: Kind::Hl7,
            lane: Lane::Normal,
            meta,
            payload: bytes.slice(range.clone()),
        };
        let good: Vec<NewEnvelope> = checked
            .iter()
            .filter_map(|c| match c {
                Checked::Good { meta, range } => Some(envelope(meta.clone(), range)),
                Checked::Bad { .. } => None,
            })
            .collect();
        let label = Metrics::source(&self.name);
        self.metrics
            .received
            .get_or_create(&label)
            .inc_by(checked.len() as u64);
        let mut good = good;
        let marked = match &self.critical {
            Some(n) => n.mark(&mut good),
            None => Vec::new(),
        };
        let pushed = if good.is_empty() {
            Vec::new()
        } else {
            self.queue.push_all(good).await?
        };
        if let Some(n) = &self.critical {
            n.raise_marked(&marked, &pushed);
        }
        let mut pushed = pushed.into_iter();
        let mut outcomes = Vec::with_capacity(checked.len());
        let (mut stored, mut duplicates, mut rejected) = (0, 0, 0);
        for (index, c) in checked.into_iter().enumerate() {
            match c {
                Checked::Good { meta, .. } => {
                    let p = pushed.next();
                    let dup = p.as_ref().is_some_and(|p| p.duplicate);
                    if dup {
                        duplicates += 1;
                        self.metrics.duplicates.get_or_create(&label).inc();
                    } else {
                        stored += 1;
                    }
                    outcomes.push(MessageOutcome {
                        index,
                        control_id: meta.control_id,
                        outcome: if dup { "duplicate" } else { "stored" }.into(),
                        reason: None,
                        envelope_id: p.map(|p| p.id),
                    });
                }
                Checked::Bad {
                    control_id,
                    reason,
                    range,
                } => {
                    rejected += 1;
                    self.metrics
                        .rejected
                        .get_or_create(&Metrics::source_and(&self.name, "reason", "malformed"))
                        .inc();
                    let meta = Meta {
                        control_id: control_id.clone(),
                        ..Meta::default()
                    };
                    let id = self
                        .queue
                        .reject(
                            envelope(meta, &range),
                            format!("file {name} message {index}: {reason}"),
                        )
                        .await?;
                    tracing::warn!(source = %self.name, file = %name, index, envelope_id = id,
                        control_id = %control_id, error = %reason, "malformed message kept in the rejected area");
                    outcomes.push(MessageOutcome {
                        index,
                        control_id,
                        outcome: "rejected".into(),
                        reason: Some(reason),
                        envelope_id: Some(id),
                    });
                }
            }
        }
        let failed = rejected > 0 || outcomes.is_empty();
        let result = if failed { "failed" } else { "done" };
        let report = Report {
            file: name.clone(),
            source: self.name.clone(),
            processed_at: jiff::Timestamp::now().to_string(),
            result: result.into(),
            messages: outcomes.len(),
            stored,
            duplicates,
            rejected,
            refused: None,
            outcomes,
        };
        // Every push has returned: only now may the file leave the watched folder.
        self.file_away(path, &report)?;
        tracing::info!(source = %self.name, file = %name, result, messages = report.messages,
            stored, duplicates, rejected, "file processed");
        Ok(report)
    }

    /// A file over `max_file`: nothing of it is read or stored; it goes to `failed/` whole,
    /// with a report that says why, for the operator to split or re-send.
    fn refuse_too_large(&self, path: &Path) -> Result<Report, Error> {
        let name = file_name(path);
        let why = format!("larger than max_file ({} bytes)", self.cfg.max_file);
        self.metrics
            .rejected
            .get_or_create(&Metrics::source_and(&self.name, "reason", "too-large"))
            .inc();
        let report = Report {
            file: name.clone(),
            source: self.name.clone(),
            processed_at: jiff::Timestamp::now().to_string(),
            result: "failed".into(),
            messages: 0,
            stored: 0,
            duplicates: 0,
            rejected: 0,
            refused: Some(why.clone()),
            outcomes: Vec::new(),
        };
        self.file_away(path, &report)?;
        tracing::warn!(source = %self.name, file = %name, error = %why,
            "file refused unread: moved to failed/");
        Ok(report)
    }

    /// Writes the report and moves the file to `done/` or `failed/` (never over another file).
    fn file_away(&self, path: &Path, report: &Report) -> Result<(), Error> {
        let name = file_name(path);
        let target_dir = self.cfg.dir.join(&report.result);
        std::fs::create_dir_all(&target_dir).map_err(io("creating", &target_dir))?;
        let mut target = target_dir.join(&name);
        if target.exists() {
            let now = jiff::Timestamp::now().as_microsecond();
            target = target_dir.join(format!("{name}.{now}"));
        }
        let target_name = file_name(&target);
        let report_path = target_dir.join(format!("{target_name}.report.json"));
        let tmp = target_dir.join(format!(".{target_name}.report.json.tmp"));
        let json = serde_json::to_vec_pretty(report).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &report_path).map_err(io("writing", &report_path))?;
        std::fs::rename(path, &target).map_err(io("moving", path))?;
        Ok(())
    }
}

/// The whole file, or `None` when it holds more than `max` bytes (read no further than that).
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > max {
        return Ok(None);
    }
    let mut out = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= max).then_some(out))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patterns_match_file_names() {
        assert!(matches("*.hl7", "a.hl7"));
        assert!(matches("*.hl7", ".hl7"));
        assert!(!matches("*.hl7", "a.hl7.tmp"));
        assert!(matches("lab_??.txt", "lab_01.txt"));
        assert!(!matches("lab_??.txt", "lab_1.txt"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn schedules_parse_and_wrap_midnight() {
        assert_eq!(parse_schedule("02:00-04:00"), Some((120, 240)));
        assert_eq!(parse_schedule("22:00-2:00"), Some((1320, 120)));
        assert_eq!(parse_schedule("02:00-02:00"), None);
        assert_eq!(parse_schedule("25:00-02:00"), None);
        assert_eq!(parse_schedule("2-4"), None);
        assert!(in_window((120, 240), 120));
        assert!(!in_window((120, 240), 240));
        assert!(in_window((1320, 120), 1400));
        assert!(in_window((1320, 120), 60));
        assert!(!in_window((1320, 120), 600));
    }

    #[test]
    fn a_batch_with_one_malformed_message_is_examined_per_message() {
        let file = b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r\
MSH|^~\\&|LAB|F|||20240101||ORU^R01|C1|P|2.5\rOBX|1|NM|x||1\r\
MSH|^~\\&|LAB|F|||20240101||ORU^R01|C2|P|2.5\rOBX|1|NM|x||1\r\
MSH|^~\\&|LAB|F|||20240101||ORU^R01|C3|P|2.5\rOBX|1|NM|x||1\r\
BTS|3\rFTS|1\r";
        let checked = examine(file, Charset::Latin1);
        assert_eq!(checked.len(), 3);
        let ids: Vec<String> = checked
            .iter()
            .map(|c| match c {
                Checked::Good { meta, .. } => meta.control_id.clone(),
                Checked::Bad { control_id, .. } => format!("bad:{control_id}"),
            })
            .collect();
        assert_eq!(ids, ["C1", "C2", "C3"]);
        let bad = b"MSH|^~\\&|LAB|F|||20240101||ORU^R01|C1|P|2.5\rOBX|1|NM|x||1\rMSH|^~\rMSH|^~\\&|LAB|F|||20240101||ORU^R01|C3|P|2.5\r";
        let checked = examine(bad, Charset::Latin1);
        assert_eq!(checked.len(), 3);
        assert!(matches!(checked[1], Checked::Bad { .. }), "{checked:?}");
        assert!(matches!(checked[2], Checked::Good { .. }));
    }

    #[test]
    fn examine_never_panics_on_junk() {
        for junk in [
            &b""[..],
            b"\x00\xff",
            b"MSH",
            b"MSH|",
            b"MSH|^~\\&\r\r\r",
            b"\xef\xbb\xbfMSH|",
        ] {
            let _ = examine(junk, Charset::Latin1);
        }
    }
}
