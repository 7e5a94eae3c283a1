//! The writer: one thread owns the active file and the chain state; callers send records.
//!
//! Group commit as in the queue: the thread takes the first pending command, drains whatever
//! else is pending (up to [`MAX_GROUP`]), encodes every line (each `prev` is the hash of the
//! line before), writes them with one `write` and one `fdatasync`, then answers every caller
//! with its seq. Rotation, periodic checkpoints and the shutdown checkpoint happen inside a
//! group, so the chain is only ever extended by this thread.
//!
//! On any write or sync error the whole group is answered with an error, and the next group
//! first re-reads the state from disk, the same way as at open (truncating a torn line, with a
//! note). Some of the failed group's lines may have reached the disk anyway: an error means
//! "maybe recorded", so a caller that retries may record an event twice, never zero times.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::oneshot;

use super::entry::{
    Action, Actor, ActorKind, Checkpoint, CheckpointReason, GENESIS, Hash, Id, Line,
    MAX_RESOURCE_IDS, PatientRef, Purpose, Record, Recovered, Retention, Signed, Tenant, Time,
};
use super::files::{self, TrailFile};
use super::keys::{Keys, PatientKey, PublicKey, SigningKey, sync_dir};
use super::{Config, Error};

/// Most commands written with one fsync.
pub const MAX_GROUP: usize = 1024;

/// How long the writer keeps gathering appends after the first one of a group. The trail
/// shares the disk with the queue: without a window, one sender at a time costs an audit
/// `fdatasync` per message beside the queue's, which slows the queue's commits (measured with
/// `scripts/bench-ingest.sh`: 1 connection 2,321 msg/s with one audit fsync per message, 2,940
/// with the window). Only detached appends ([`Trail::append_detached`], which the data path
/// uses and never waits for) wait for the window, so it widens the loss window of a crash by
/// at most this much (the entries of the last group, as before). A group holding an awaited
/// append, a checkpoint or a close is written at once.
pub const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

/// Where the trail gets the time. Tests inject a settable clock; production uses
/// [`system_clock`].
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

enum Reply {
    Async(oneshot::Sender<Result<u64, Error>>),
    Blocking(mpsc::SyncSender<Result<u64, Error>>),
    /// Nobody waits (the daemon's fire-and-forget records): such appends may wait for the
    /// group window.
    Detached,
}

impl Reply {
    fn send(self, r: Result<u64, Error>) {
        match self {
            Reply::Async(tx) => drop(tx.send(r)),
            Reply::Blocking(tx) => drop(tx.send(r)),
            Reply::Detached => {}
        }
    }
}

impl Command {
    /// Someone waits for it (or it is a checkpoint or close): write the group at once.
    fn urgent(&self) -> bool {
        !matches!(self, Command::Append(_, Reply::Detached))
    }
}

enum Command {
    Append(Box<Record>, Reply),
    Checkpoint(Reply),
    Close(Reply),
}

/// Resolves when the line is durable (written and fdatasynced), to its seq. Dropping it does
/// not cancel the write.
pub struct Appended(AppendedInner);

enum AppendedInner {
    Pending(oneshot::Receiver<Result<u64, Error>>),
    Failed(Option<Error>),
}

impl std::future::Future for Appended {
    type Output = Result<u64, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            AppendedInner::Pending(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
            AppendedInner::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Closed))),
        }
    }
}

struct Shared {
    config: Config,
    patient: PatientKey,
    public: PublicKey,
    /// Start seq of the active file: files before it are closed.
    active_seq: AtomicU64,
    /// One maintenance run at a time.
    maintenance: Mutex<()>,
    /// Groups written (one fdatasync each) and lines in them.
    groups: AtomicU64,
    lines: AtomicU64,
}

/// Writer counters since open (for metrics and the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Groups written, one `fdatasync` each.
    pub groups: u64,
    /// Lines written (entries and checkpoints).
    pub lines: u64,
}

/// A handle to the audit trail; cheap to clone, usable from async and blocking code.
#[derive(Clone)]
pub struct Trail {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// What one [`Trail::maintain`] run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// Files compressed (new names).
    pub compressed: Vec<String>,
    /// Files deleted by retention.
    pub deleted: Vec<String>,
    /// Seq of the `purged` entry recording the deletion.
    pub purge_entry: Option<u64>,
}

impl Trail {
    /// Opens (creating if needed) the trail in `config.dir` with the keys in `config.key_dir`,
    /// recovers from a torn last line, and starts the writer thread.
    pub fn open(config: &Config) -> Result<Trail, Error> {
        Trail::open_with(config, system_clock())
    }

    /// [`Trail::open`] with an injected clock (tests).
    pub fn open_with(config: &Config, clock: Clock) -> Result<Trail, Error> {
        let keys = Keys::load_or_create(&config.key_dir)?;
        std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(&config.dir, e))?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            public: *keys.signing.public(),
            patient: keys.patient,
            active_seq: AtomicU64::new(0),
            maintenance: Mutex::new(()),
            groups: AtomicU64::new(0),
            lines: AtomicU64::new(0),
        });
        let writer = Writer::open(shared.clone(), keys.signing, clock)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io(&config.dir, e))?;
        Ok(Trail { tx, shared })
    }

    /// Appends one record. The returned future resolves once it is durable; dropping it
    /// does not cancel the write (fire-and-forget keeps the order and the durability, the
    /// caller just does not wait for it).
    pub fn append(&self, record: Record) -> Appended {
        let (tx, rx) = oneshot::channel();
        match self
            .tx
            .send(Command::Append(Box::new(record), Reply::Async(tx)))
        {
            Ok(()) => Appended(AppendedInner::Pending(rx)),
            Err(_) => Appended(AppendedInner::Failed(Some(Error::Closed))),
        }
    }

    /// Appends one record nobody waits for (the daemon's data-path records): it is durable
    /// within one group, which may gather appends for up to `GROUP_WINDOW` (2 ms). A failure is
    /// logged by the writer, not returned.
    pub fn append_detached(&self, record: Record) {
        drop(
            self.tx
                .send(Command::Append(Box::new(record), Reply::Detached)),
        );
    }

    /// Appends one record and blocks the thread until it is durable (for non-async code;
    /// do not call it on an async runtime's worker thread).
    pub fn append_blocking(&self, record: Record) -> Result<u64, Error> {
        self.call_blocking(|r| Command::Append(Box::new(record), r))
    }

    /// Writes a checkpoint now (e.g. from a timer, so an idle trail's tail gets signed).
    pub fn checkpoint(&self) -> Appended {
        let (tx, rx) = oneshot::channel();
        match self.tx.send(Command::Checkpoint(Reply::Async(tx))) {
            Ok(()) => Appended(AppendedInner::Pending(rx)),
            Err(_) => Appended(AppendedInner::Failed(Some(Error::Closed))),
        }
    }

    /// Writes everything pending and a shutdown checkpoint, then stops the writer. Later
    /// appends fail with [`Error::Closed`]. Resolves to the checkpoint's seq.
    pub fn close(&self) -> Appended {
        let (tx, rx) = oneshot::channel();
        match self.tx.send(Command::Close(Reply::Async(tx))) {
            Ok(()) => Appended(AppendedInner::Pending(rx)),
            Err(_) => Appended(AppendedInner::Failed(Some(Error::Closed))),
        }
    }

    fn call_blocking(&self, make: impl FnOnce(Reply) -> Command) -> Result<u64, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(make(Reply::Blocking(tx)))
            .map_err(|_| Error::Closed)?;
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// The keyed hash of a patient identifier, for [`super::Scope::patient`].
    pub fn patient_ref(&self, system: &str, value: &str) -> PatientRef {
        self.shared.patient.reference(system, value)
    }

    /// The public key checkpoints are signed with.
    pub fn public_key(&self) -> PublicKey {
        self.shared.public
    }

    /// Groups and lines written since open.
    pub fn counters(&self) -> Counters {
        Counters {
            groups: self.shared.groups.load(Ordering::Relaxed),
            lines: self.shared.lines.load(Ordering::Relaxed),
        }
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    /// Compresses closed files older than `cold_after` and deletes those older than `retain`
    /// (recording a `purged` entry first), as of `now`. A file's age is counted from when it
    /// was closed (the start of the next file). Blocking and I/O heavy (compression): run it
    /// on a blocking thread (`spawn_blocking`), e.g. once a day.
    pub fn maintain(&self, now: Timestamp) -> Result<Maintenance, Error> {
        let _one = self
            .shared
            .maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let cfg = &self.shared.config;
        let dir = &cfg.dir;
        let mut out = Maintenance::default();
        let listing = files::list(dir)?;
        let active = self.shared.active_seq.load(Ordering::Acquire);
        // (file, closed at) for every closed file, oldest first.
        let closed: Vec<(TrailFile, Timestamp)> = listing
            .files
            .windows(2)
            .filter(|w| w[0].seq < active)
            .map(|w| (w[0].clone(), w[1].start))
            .collect();
        let older_than = |closed_at: Timestamp, age: std::time::Duration| {
            SignedDuration::try_from(age)
                .ok()
                .and_then(|a| closed_at.checked_add(a).ok())
                .is_some_and(|limit| limit <= now)
        };

        // Retention: only a prefix, so the trail keeps one unbroken run from its head.
        let expired: Vec<TrailFile> = closed
            .iter()
            .take_while(|(_, at)| older_than(*at, cfg.retain))
            .map(|(f, _)| f.clone())
            .collect();
        if let Some(last) = expired.last() {
            let line = files::last_line(dir, last)?.ok_or_else(|| Error::Corrupt {
                file: last.name.clone(),
            })?;
            let through_seq = Line::parse(&line)
                .map_err(|_| Error::Corrupt {
                    file: last.name.clone(),
                })?
                .seq();
            let mut names: Vec<String> = expired.iter().map(|f| f.name.clone()).collect();
            names.extend(
                listing
                    .shadowed
                    .iter()
                    .filter(|s| s.seq <= last.seq)
                    .map(|s| s.name.clone()),
            );
            // A constant, valid by construction; an error here would only mean the Id rules
            // changed, and then retention stops rather than panicking.
            let actor = Id::new("retention").map_err(|e| Error::Invalid(e.0))?;
            let mut record = Record::new(
                Tenant::System,
                Actor::new(ActorKind::System, actor),
                Action::Purged,
                Purpose::Compliance,
            );
            record.retention = Some(Retention {
                files: names.clone(),
                through_seq,
                through_hash: Hash::of(&line),
            });
            out.purge_entry = Some(self.append_blocking(record)?);
            for name in &names {
                let p = dir.join(name);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&p, e)),
                }
            }
            sync_dir(dir)?;
            tracing::info!(
                files = names.len(),
                through_seq,
                "audit retention deleted old files"
            );
            out.deleted = names;
        }

        // Cold storage: everything closed, old enough and still plain.
        for (f, at) in closed.iter().skip(expired.len()) {
            if !f.gz && older_than(*at, cfg.cold_after) {
                let gz = files::compress(dir, f)?;
                out.compressed.push(gz.name);
            }
        }
        Ok(out)
    }
}

// === the writer thread ===

struct Writer {
    shared: Arc<Shared>,
    key: SigningKey,
    clock: Clock,
    dir: PathBuf,
    active: Active,
    next_seq: u64,
    prev: Hash,
    since_checkpoint: u64,
    /// Notes for the next entry; cleared once a group carrying them is durable.
    recovered: Vec<Recovered>,
    recovered_in_buf: bool,
    buf: Vec<u8>,
    healthy: bool,
}

/// The file being appended to.
struct Active {
    file: File,
    name: String,
    start: Timestamp,
    len: u64,
}

/// Where the chain stands on disk.
struct State {
    next_seq: u64,
    prev: Hash,
    /// The file to continue, if any.
    open: Option<(TrailFile, File, u64)>,
    recovered: Vec<Recovered>,
}

impl Writer {
    fn open(shared: Arc<Shared>, key: SigningKey, clock: Clock) -> Result<Writer, Error> {
        let dir = shared.config.dir.clone();
        let state = read_state(&dir)?;
        let active = activate(&dir, &shared, &clock, state.next_seq, state.open)?;
        Ok(Writer {
            shared,
            key,
            clock,
            dir,
            active,
            next_seq: state.next_seq,
            prev: state.prev,
            since_checkpoint: 0,
            recovered: state.recovered,
            recovered_in_buf: false,
            buf: Vec::with_capacity(256 << 10),
            healthy: true,
        })
    }

    /// Re-reads the state from disk after a write error.
    fn reopen(&mut self) -> Result<(), Error> {
        let state = read_state(&self.dir)?;
        self.active = activate(
            &self.dir,
            &self.shared,
            &self.clock,
            state.next_seq,
            state.open,
        )?;
        self.next_seq = state.next_seq;
        self.prev = state.prev;
        self.recovered.extend(state.recovered);
        self.recovered_in_buf = false;
        self.buf.clear();
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut urgent = first.urgent();
            let mut group = vec![first];
            let deadline = std::time::Instant::now() + GROUP_WINDOW;
            while group.len() < MAX_GROUP {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let next = if urgent || left.is_zero() {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(left).ok()
                };
                match next {
                    Some(c) => {
                        urgent |= c.urgent();
                        group.push(c);
                    }
                    // Nothing pending after the window (or at once for an urgent group).
                    None => break,
                }
            }
            if self.process(group) {
                return;
            }
        }
        // Every handle is gone without `close`: still leave a signed end if we can.
        self.buf.clear();
        if self.healthy && self.active.len > 0 {
            let _ = self
                .push_checkpoint(CheckpointReason::Shutdown)
                .and_then(|_| self.flush());
        }
    }

    /// Handles one group; true when the writer should stop.
    fn process(&mut self, group: Vec<Command>) -> bool {
        if !self.healthy {
            match self.reopen() {
                Ok(()) => {
                    self.healthy = true;
                    tracing::warn!("audit trail reopened after a write error");
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit trail still unavailable");
                    let mut closing = false;
                    for c in group {
                        match c {
                            Command::Append(_, r) | Command::Checkpoint(r) => {
                                r.send(Err(Error::Write(e.to_string())))
                            }
                            Command::Close(r) => {
                                r.send(Err(Error::Write(e.to_string())));
                                closing = true;
                            }
                        }
                    }
                    return closing;
                }
            }
        }
        let mut replies: Vec<(Reply, Result<u64, Error>)> = Vec::with_capacity(group.len());
        let mut close = None;
        let mut failed: Option<Error> = None;
        for c in group {
            if failed.is_some() {
                match c {
                    Command::Append(_, r) | Command::Checkpoint(r) => {
                        replies.push((r, Err(Error::Closed)))
                    }
                    Command::Close(r) => close = Some(r),
                }
                continue;
            }
            let r = match c {
                Command::Append(rec, r) => (r, self.push_entry(*rec)),
                Command::Checkpoint(r) => (r, self.push_checkpoint(CheckpointReason::Periodic)),
                Command::Close(r) => {
                    close = Some(r);
                    continue;
                }
            };
            match &r.1 {
                // A refused record fails alone; anything else is I/O and fails the group.
                Ok(_) | Err(Error::Invalid(_)) => {}
                Err(e) => failed = Some(Error::Write(e.to_string())),
            }
            replies.push(r);
        }
        let mut close_seq = None;
        if close.is_some() && failed.is_none() {
            match self.push_checkpoint(CheckpointReason::Shutdown) {
                Ok(seq) => close_seq = Some(seq),
                Err(e) => failed = Some(Error::Write(e.to_string())),
            }
        }
        if failed.is_none() {
            if let Err(e) = self.flush() {
                failed = Some(e);
            }
        }
        match failed {
            None => {
                for (r, res) in replies {
                    r.send(res);
                }
                if let Some(r) = close {
                    r.send(close_seq.ok_or(Error::Closed));
                    tracing::debug!("audit trail closed");
                    return true;
                }
            }
            Some(e) => {
                tracing::error!(error = %e, "audit write failed; the group was answered with errors");
                self.healthy = false;
                self.buf.clear();
                self.recovered_in_buf = false;
                let msg = e.to_string();
                for (r, res) in replies {
                    // Refused records (invalid input) keep their own error.
                    match res {
                        Err(Error::Invalid(w)) => r.send(Err(Error::Invalid(w))),
                        _ => r.send(Err(Error::Write(msg.clone()))),
                    }
                }
                if let Some(r) = close {
                    r.send(Err(Error::Write(msg)));
                    return true;
                }
            }
        }
        false
    }

    /// Encodes one entry into the group buffer, rotating first if the file is full or old.
    fn push_entry(&mut self, rec: Record) -> Result<u64, Error> {
        if rec.scope.resource_ids.len() > MAX_RESOURCE_IDS {
            return Err(Error::Invalid("more than 64 resource ids in one entry"));
        }
        let now = (self.clock)();
        self.rotate_if_due(now)?;
        let recovered = if self.recovered_in_buf {
            Vec::new()
        } else {
            self.recovered_in_buf = !self.recovered.is_empty();
            self.recovered.clone()
        };
        let seq = self.next_seq;
        let entry = super::Entry::from_record(rec, seq, self.prev, Time::new(now), recovered);
        self.push_line(&entry)?;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.shared.config.checkpoint_every {
            self.push_checkpoint(CheckpointReason::Periodic)?;
        }
        Ok(seq)
    }

    fn rotate_if_due(&mut self, now: Timestamp) -> Result<(), Error> {
        let used = self.active.len + self.buf.len() as u64;
        if used == 0 {
            return Ok(());
        }
        let cfg = &self.shared.config;
        let too_old = SignedDuration::try_from(cfg.rotate_every)
            .ok()
            .and_then(|d| self.active.start.checked_add(d).ok())
            .is_some_and(|limit| now >= limit);
        if used < cfg.max_file_size && !too_old {
            return Ok(());
        }
        self.push_checkpoint(CheckpointReason::Rotate)?;
        self.flush()?;
        self.active = activate(&self.dir, &self.shared, &self.clock, self.next_seq, None)?;
        Ok(())
    }

    fn push_checkpoint(&mut self, reason: CheckpointReason) -> Result<u64, Error> {
        let seq = self.next_seq;
        let time = Time::new((self.clock)());
        let sig = self
            .key
            .sign(&Checkpoint::message(seq, &self.prev, &time, reason));
        let c = Checkpoint {
            seq,
            prev: self.prev,
            checkpoint: Signed {
                time,
                reason,
                key: self.key.public().id(),
                sig,
            },
        };
        self.push_line(&c)?;
        self.since_checkpoint = 0;
        Ok(seq)
    }

    fn push_line<T: serde::Serialize>(&mut self, line: &T) -> Result<(), Error> {
        // A line with seq u64::MAX could have no successor (verify flags it); only a forged
        // trail gets here, but it must not wrap to 0.
        let next_seq = self
            .next_seq
            .checked_add(1)
            .ok_or_else(|| Error::Write("audit seq numbers exhausted".to_owned()))?;
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, line)
            .map_err(|e| Error::Write(format!("encoding an audit line: {e}")))?;
        self.prev = Hash::of(&self.buf[start..]);
        self.buf.push(b'\n');
        self.next_seq = next_seq;
        Ok(())
    }

    /// Writes the group buffer and fdatasyncs.
    fn flush(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        files::append_durably(&mut self.active.file, &self.buf)
            .map_err(|e| Error::io(&self.dir.join(&self.active.name), e))?;
        let lines = self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.shared.groups.fetch_add(1, Ordering::Relaxed);
        self.shared.lines.fetch_add(lines, Ordering::Relaxed);
        self.active.len += self.buf.len() as u64;
        self.buf.clear();
        if self.recovered_in_buf {
            self.recovered.clear();
            self.recovered_in_buf = false;
        }
        Ok(())
    }
}

/// The file to append to: the one `read_state` left open, or a new one named by the clock
/// (whole seconds: file age is computed from the name) and `next_seq`.
fn activate(
    dir: &Path,
    shared: &Shared,
    clock: &Clock,
    next_seq: u64,
    open: Option<(TrailFile, File, u64)>,
) -> Result<Active, Error> {
    let active = match open {
        Some((f, file, len)) => Active {
            file,
            name: f.name,
            start: f.start,
            len,
        },
        None => {
            let now = clock();
            let start = Timestamp::from_second(now.as_second()).unwrap_or(now);
            let name = files::name(start, next_seq);
            Active {
                file: files::create(dir, &name)?,
                name,
                start,
                len: 0,
            }
        }
    };
    let seq = files::parse_name(&active.name).map_or(next_seq, |f| f.seq);
    shared.active_seq.store(seq, Ordering::Release);
    Ok(active)
}

/// Reads where the chain stands: the newest file's last complete line, truncating a torn
/// tail (noted in `recovered`). Empty newest files are removed (they hold nothing) and the
/// one before is looked at instead.
fn read_state(dir: &Path) -> Result<State, Error> {
    let mut listing = files::list(dir)?;
    let mut recovered = Vec::new();
    while let Some(f) = listing.files.pop() {
        let path = f.path(dir);
        if f.gz {
            let line = files::last_line(dir, &f)?.ok_or_else(|| Error::Corrupt {
                file: f.name.clone(),
            })?;
            let (next_seq, prev, _) = after(&f, &line)?;
            return Ok(State {
                next_seq,
                prev,
                open: None,
                recovered,
            });
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let tail = match files::tail(&mut file).map_err(|e| Error::io(&path, e))? {
            files::End::Tail(t) => t,
            // Not a line the writer wrote: the same as any other corrupt last line.
            files::End::LastLineTooLong => {
                return Err(Error::Corrupt {
                    file: f.name.clone(),
                });
            }
            // Megabytes without a newline are not what a crash leaves: cutting them off (or
            // deleting a file that has no newline at all) would destroy evidence. Refuse, as
            // for a corrupt last line, and leave the file for `verify` and a human.
            files::End::TornTooLong => {
                return Err(Error::Damaged {
                    file: f.name.clone(),
                });
            }
        };
        if tail.torn > 0 {
            file.set_len(tail.complete_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(&path, e))?;
            tracing::warn!(
                file = %f.name,
                bytes = tail.torn,
                "audit trail: removed a torn last line left by a crash"
            );
            recovered.push(Recovered {
                file: f.name.clone(),
                truncated_bytes: tail.torn,
            });
        }
        let Some(line) = tail.last_line else {
            drop(file);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            sync_dir(dir)?;
            continue;
        };
        let (next_seq, prev, rotated) = after(&f, &line)?;
        return Ok(State {
            next_seq,
            prev,
            // A file closed by rotation stays closed (the crash came before the next file).
            open: (!rotated).then_some((f, file, tail.complete_len)),
            recovered,
        });
    }
    Ok(State {
        next_seq: 0,
        prev: GENESIS,
        open: None,
        recovered,
    })
}

/// The chain position after `line`, and whether it closed its file.
fn after(f: &TrailFile, line: &[u8]) -> Result<(u64, Hash, bool), Error> {
    let parsed = Line::parse(line).map_err(|_| Error::Corrupt {
        file: f.name.clone(),
    })?;
    let rotated = matches!(
        &parsed,
        Line::Checkpoint(c) if c.checkpoint.reason == CheckpointReason::Rotate
    );
    // No line can follow seq u64::MAX (the writer never writes it): a forged or damaged line,
    // refused like any other corrupt last line rather than continuing the chain from 0.
    let next_seq = parsed.seq().checked_add(1).ok_or_else(|| Error::Corrupt {
        file: f.name.clone(),
    })?;
    Ok((next_seq, Hash::of(line), rotated))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::testutil::{entry_line, joined, write_file};

    #[test]
    fn a_last_line_with_the_largest_seq_is_refused_not_continued_from_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let line = entry_line(u64::MAX, Hash([1; 32]), None);
        let name = write_file(tmp.path(), u64::MAX, &joined(&[&line]));
        match read_state(tmp.path()) {
            Err(Error::Corrupt { file }) => assert_eq!(file, name),
            Err(e) => panic!("{e}"),
            Ok(s) => panic!("continued at seq {}", s.next_seq),
        }
    }

    #[test]
    fn the_writer_refuses_to_write_the_largest_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::new(tmp.path());
        let line = entry_line(u64::MAX - 1, Hash([1; 32]), None);
        let bytes = joined(&[&line]);
        let name = write_file(&config.dir, u64::MAX - 1, &bytes);
        let trail = Trail::open(&config).unwrap();
        let rec = Record::new(
            Tenant::System,
            Actor::new(ActorKind::System, Id::new("test").unwrap()),
            Action::Received,
            Purpose::Compliance,
        );
        assert!(matches!(trail.append_blocking(rec), Err(Error::Write(_))));
        assert_eq!(std::fs::read(config.dir.join(name)).unwrap(), bytes);
    }

    #[test]
    fn a_newest_file_with_megabytes_and_no_newline_is_kept_and_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let l0 = entry_line(0, GENESIS, None);
        let l1 = entry_line(1, Hash::of(&l0), None);
        write_file(tmp.path(), 0, &joined(&[&l0, &l1]));
        let junk = vec![b'x'; 4 << 20];
        for (seq, bytes) in [
            // No newline at all: not a torn first line of a new file.
            (2, junk.clone()),
            // A valid line, then megabytes without a newline.
            (
                3,
                [&joined(&[&entry_line(2, Hash::of(&l1), None)])[..], &junk].concat(),
            ),
        ] {
            let name = write_file(tmp.path(), seq, &bytes);
            match read_state(tmp.path()) {
                Err(Error::Damaged { file }) => assert_eq!(file, name),
                Err(e) => panic!("{e}"),
                Ok(s) => panic!("continued at seq {}", s.next_seq),
            }
            assert_eq!(std::fs::read(tmp.path().join(&name)).unwrap(), bytes);
            std::fs::remove_file(tmp.path().join(&name)).unwrap();
        }
        // A short torn tail is still cut, as before.
        let l2 = entry_line(2, Hash::of(&l1), None);
        let name = write_file(
            tmp.path(),
            2,
            &[&joined(&[&l2])[..], b"{\"seq\":3"].concat(),
        );
        let s = read_state(tmp.path()).unwrap();
        assert_eq!(s.next_seq, 3);
        assert_eq!(s.recovered.len(), 1);
        assert_eq!(
            std::fs::read(tmp.path().join(name)).unwrap(),
            joined(&[&l2])
        );
    }
}
