//! Checks a trail: every line canonical, `seq` without gaps, every `prev` the hash of the line
//! before, every checkpoint signed by the given key, every closed file ending with its rotate
//! checkpoint, and a head that is either the genesis or covered by a retention record.
//!
//! Findings name a file and a line (1-based), never content. Where one change explains
//! several symptoms, the line that was changed is named:
//!
//! - line *i* changed anywhere: the next line's `prev` no longer matches → "line *i* altered";
//! - line *i*'s own `prev` changed: both link *i−1→i* and *i→i+1* fail → still line *i*;
//! - a line removed, or two swapped: `seq` jumps → the first line out of order is named;
//! - a file removed: the next file's first line jumps in `seq`.
//!
//! Lines after the last checkpoint (the active tail) are chained but not yet signed: a change
//! there is still found by the chain, except in the very last line; [`Report::notes`] says how
//! many lines are unsigned. Deleting the newest lines, or the newest file entirely, cannot be
//! told from a trail that simply ended there: that needs checkpoints kept elsewhere.

use std::fmt;
use std::path::Path;

use super::Error;
use super::entry::{CheckpointReason, GENESIS, Hash, Line, LineError};
use super::files;
use super::keys::PublicKey;
use crate::audit::entry::Checkpoint;

/// A position: file name and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// File name within the audit directory.
    pub file: String,
    /// 1-based line number.
    pub line: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where (file and line), when it is about one place.
    pub file: Option<String>,
    /// 1-based line, when it is about one line.
    pub line: Option<u64>,
    /// What.
    pub kind: FindingKind,
}

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingKind {
    // --- problems ---
    /// No trail files at all.
    NoFiles,
    /// A file could not be read.
    Unreadable(String),
    /// Not a valid audit line.
    Malformed(LineError),
    /// A line without its newline that is not the trail's last.
    Unterminated,
    /// `seq` is not the one expected: lines removed, reordered or inserted.
    SeqGap {
        /// The seq that should have come.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// This line's bytes do not match the hash recorded by the line at `witness`.
    Altered {
        /// The line whose `prev` disagrees.
        witness: Loc,
    },
    /// The first line (seq 0) does not chain to the genesis value.
    BadGenesis,
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A checkpoint names another signing key.
    WrongKey,
    /// A file that is not the newest does not end with its rotate checkpoint.
    NotClosed,
    /// A file that is not the newest has no lines.
    EmptyFile,
    /// The seq in the file name is not the seq of its first line.
    NameMismatch {
        /// Seq from the name.
        name_seq: u64,
        /// Seq of the first line.
        first_seq: u64,
    },
    /// The trail does not start at seq 0 and no retention record covers the lines before.
    HeadMissing {
        /// Seq of the first line present.
        first_seq: u64,
    },
    // --- notes (not problems) ---
    /// Lines after the last valid checkpoint.
    UnsignedTail {
        /// How many.
        lines: u64,
    },
    /// The newest file's last line has no newline yet (being written, or torn by a crash: the
    /// writer removes it on its next start, with a note).
    UnterminatedTail,
    /// The trail starts after lines removed by retention (covered by its record).
    HeadRetained {
        /// Last seq removed.
        through_seq: u64,
    },
    /// A compressed copy beside its plain file (compression interrupted); the plain one was read.
    Shadowed,
    /// A file that is not part of the trail.
    Foreign,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => {}
        }
        match &self.kind {
            FindingKind::NoFiles => write!(f, "no audit files found"),
            FindingKind::Unreadable(e) => write!(f, "unreadable: {e}"),
            FindingKind::Malformed(e) => write!(f, "{e}"),
            FindingKind::Unterminated => write!(f, "line has no newline but is not the last"),
            FindingKind::SeqGap { expected, found } => write!(
                f,
                "expected seq {expected}, found {found} (lines removed, reordered or inserted)"
            ),
            FindingKind::Altered { witness } => write!(
                f,
                "line altered: its hash does not match the prev recorded at {witness}"
            ),
            FindingKind::BadGenesis => write!(f, "seq 0 does not chain to the genesis value"),
            FindingKind::BadSignature => write!(f, "checkpoint signature does not verify"),
            FindingKind::WrongKey => write!(f, "checkpoint signed with another key"),
            FindingKind::NotClosed => {
                write!(
                    f,
                    "file does not end with its rotate checkpoint (truncated?)"
                )
            }
            FindingKind::EmptyFile => write!(f, "empty file in the middle of the trail"),
            FindingKind::NameMismatch {
                name_seq,
                first_seq,
            } => write!(
                f,
                "file name says seq {name_seq}, first line has seq {first_seq}"
            ),
            FindingKind::HeadMissing { first_seq } => write!(
                f,
                "trail starts at seq {first_seq} but no retention record covers the lines before"
            ),
            FindingKind::UnsignedTail { lines } => {
                write!(
                    f,
                    "{lines} line(s) after the last checkpoint are not signed yet"
                )
            }
            FindingKind::UnterminatedTail => {
                write!(
                    f,
                    "last line incomplete (being written, or torn by a crash)"
                )
            }
            FindingKind::HeadRetained { through_seq } => write!(
                f,
                "lines through seq {through_seq} were deleted by retention (recorded)"
            ),
            FindingKind::Shadowed => write!(f, "compressed copy beside the plain file (ignored)"),
            FindingKind::Foreign => write!(f, "not an audit file (ignored)"),
        }
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Trail files read.
    pub files: usize,
    /// Lines read.
    pub lines: u64,
    /// Entries among them.
    pub entries: u64,
    /// Checkpoints among them.
    pub checkpoints: u64,
    /// Seq of the first line.
    pub first_seq: Option<u64>,
    /// Seq of the last line.
    pub last_seq: Option<u64>,
    /// Seq of the last checkpoint whose signature verified.
    pub signed_through: Option<u64>,
    /// Evidence of change or loss.
    pub problems: Vec<Finding>,
    /// Worth knowing, not a problem.
    pub notes: Vec<Finding>,
}

impl Report {
    /// No problems.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let seqs = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "no lines".to_owned(),
        };
        let signed = self
            .signed_through
            .map_or("none".to_owned(), |s| format!("through seq {s}"));
        writeln!(
            f,
            "{}: {} files, {} lines ({} entries, {} checkpoints), {seqs}, signed {signed}, {} problem(s)",
            if self.is_intact() {
                "intact"
            } else {
                "NOT INTACT"
            },
            self.files,
            self.lines,
            self.entries,
            self.checkpoints,
            self.problems.len()
        )
    }
}

/// The last line seen, for the link check of the next.
struct Prev {
    loc: Loc,
    hash: Hash,
    /// A problem was already reported for it: a broken link to it is not reported again.
    flagged: bool,
}

/// A failed link `a → b` (b's prev is not a's hash): a was altered, unless b's own hash also
/// fails to match the line after b, in which case b's prev was.
struct Pending {
    a: Loc,
    b: Loc,
}

struct Verifier<'k> {
    key: &'k PublicKey,
    key_id: String,
    report: Report,
    expected: Option<u64>,
    /// After a wrong seq, the seq that would mean "only that one line was wrong".
    alt: Option<u64>,
    prev: Option<Prev>,
    pending: Option<Pending>,
    head: Option<(Loc, u64, Hash)>,
    retained: Vec<(u64, Hash)>,
    since_checkpoint: u64,
    /// The current file's last line was a rotate checkpoint.
    closed_by_rotate: bool,
    /// Was the last line read a checkpoint whose signature verified.
    last_signed: bool,
}

/// Verifies the trail in `dir` against `key`. `Err` only if the directory cannot be listed;
/// everything else is a finding in the report.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<Report, Error> {
    let listing = files::list(dir)?;
    let mut v = Verifier {
        key,
        key_id: key.id(),
        report: Report::default(),
        expected: None,
        alt: None,
        prev: None,
        pending: None,
        head: None,
        retained: Vec::new(),
        since_checkpoint: 0,
        closed_by_rotate: false,
        last_signed: false,
    };
    for name in &listing.other {
        v.note(Some(name.clone()), None, FindingKind::Foreign);
    }
    for s in &listing.shadowed {
        v.note(Some(s.name.clone()), None, FindingKind::Shadowed);
    }
    if listing.files.is_empty() {
        v.problem(None, None, FindingKind::NoFiles);
        return Ok(v.report);
    }
    let n = listing.files.len();
    for (i, f) in listing.files.iter().enumerate() {
        v.file(dir, f, i + 1 == n);
    }
    Ok(v.finish())
}

impl Verifier<'_> {
    fn problem(&mut self, file: Option<String>, line: Option<u64>, kind: FindingKind) {
        self.report.problems.push(Finding { file, line, kind });
    }

    fn note(&mut self, file: Option<String>, line: Option<u64>, kind: FindingKind) {
        self.report.notes.push(Finding { file, line, kind });
    }

    fn at(&mut self, loc: &Loc, kind: FindingKind) {
        self.problem(Some(loc.file.clone()), Some(loc.line), kind);
    }

    fn file(&mut self, dir: &Path, f: &files::TrailFile, newest: bool) {
        self.report.files += 1;
        self.closed_by_rotate = false;
        let mut reader = match files::open(dir, f) {
            Ok(r) => r,
            Err(e) => {
                self.problem(
                    Some(f.name.clone()),
                    None,
                    FindingKind::Unreadable(e.to_string()),
                );
                self.lost_track();
                return;
            }
        };
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            match files::next_line(&mut *reader, &mut buf) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.problem(
                        Some(f.name.clone()),
                        Some(line_no + 1),
                        FindingKind::Unreadable(e.to_string()),
                    );
                    self.lost_track();
                    return;
                }
            }
            line_no += 1;
            let loc = Loc {
                file: f.name.clone(),
                line: line_no,
            };
            if buf.last() == Some(&b'\n') {
                buf.pop();
            } else if !newest {
                self.at(&loc, FindingKind::Unterminated);
            } else {
                self.note(
                    Some(f.name.clone()),
                    Some(line_no),
                    FindingKind::UnterminatedTail,
                );
                // A prefix of a line (being written, or torn by a crash) is not checked; a
                // complete line without its newline, or one followed by junk, is.
                if Line::parse(&buf) == Err(LineError::Truncated) {
                    break;
                }
            }
            let first_seq = self.line(&loc, &buf);
            if line_no == 1 {
                if let Some(s) = first_seq.filter(|s| *s != f.seq) {
                    self.at(
                        &loc,
                        FindingKind::NameMismatch {
                            name_seq: f.seq,
                            first_seq: s,
                        },
                    );
                }
            }
        }
        if !newest {
            if line_no == 0 {
                self.problem(Some(f.name.clone()), None, FindingKind::EmptyFile);
            } else if !self.closed_by_rotate {
                let loc = Loc {
                    file: f.name.clone(),
                    line: line_no,
                };
                self.at(&loc, FindingKind::NotClosed);
            }
        }
    }

    /// After an unreadable stretch nothing is known about the next line's seq or prev.
    fn lost_track(&mut self) {
        self.resolve_pending(None);
        self.expected = None;
        self.alt = None;
        self.prev = None;
    }

    /// Decides a pending link failure: `next_link_failed` is whether the link from the
    /// pending `b` to the line after it failed too (`None`: unknown).
    fn resolve_pending(&mut self, next_link_failed: Option<bool>) {
        if let Some(p) = self.pending.take() {
            if next_link_failed == Some(true) {
                let witness = p.b.clone();
                self.at(&p.b, FindingKind::Altered { witness });
            } else {
                self.at(&p.a, FindingKind::Altered { witness: p.b });
            }
        }
    }

    /// One line (without its newline). Returns its seq if it parsed.
    fn line(&mut self, loc: &Loc, bytes: &[u8]) -> Option<u64> {
        self.report.lines += 1;
        let hash = Hash::of(bytes);
        let parsed = match Line::parse(bytes) {
            Ok(l) => l,
            Err(e) => {
                self.resolve_pending(None);
                self.at(loc, FindingKind::Malformed(e));
                self.expected = None;
                self.alt = None;
                self.closed_by_rotate = false;
                self.last_signed = false;
                self.since_checkpoint += 1;
                self.prev = Some(Prev {
                    loc: loc.clone(),
                    hash,
                    flagged: true,
                });
                return None;
            }
        };
        let seq = parsed.seq();
        let problems_before = self.report.problems.len();

        // Sequence.
        let mut seq_ok = true;
        match self.expected {
            Some(e) if seq != e && Some(seq) != self.alt => {
                self.at(
                    loc,
                    FindingKind::SeqGap {
                        expected: e,
                        found: seq,
                    },
                );
                seq_ok = false;
                self.alt = Some(e + 1);
            }
            _ => self.alt = None,
        }
        self.expected = Some(seq + 1);
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);

        // Chain link to the line before.
        let link_failed = self.prev.as_ref().map(|p| p.hash != parsed.prev());
        if self.pending.is_some() {
            let known = if seq_ok { link_failed } else { None };
            self.resolve_pending(known);
            if known == Some(true) {
                // The line before was altered (its prev): that also explains this link.
                if let Some(p) = &mut self.prev {
                    p.flagged = true;
                }
            }
        }
        match &self.prev {
            None => {
                if seq == 0 {
                    if parsed.prev() != GENESIS {
                        self.at(loc, FindingKind::BadGenesis);
                    }
                } else if self.head.is_none() {
                    self.head = Some((loc.clone(), seq, parsed.prev()));
                }
            }
            Some(p) => {
                if link_failed == Some(true) && seq_ok && !p.flagged {
                    self.pending = Some(Pending {
                        a: p.loc.clone(),
                        b: loc.clone(),
                    });
                }
            }
        }

        // Kind-specific checks.
        self.closed_by_rotate = false;
        self.last_signed = false;
        match &parsed {
            Line::Checkpoint(c) => {
                self.report.checkpoints += 1;
                if c.checkpoint.key != self.key_id {
                    self.at(loc, FindingKind::WrongKey);
                } else {
                    let msg = Checkpoint::message(
                        c.seq,
                        &c.prev,
                        &c.checkpoint.time,
                        c.checkpoint.reason,
                    );
                    if self.key.verify(&msg, &c.checkpoint.sig) {
                        self.last_signed = true;
                        self.report.signed_through = Some(c.seq);
                        self.since_checkpoint = 0;
                    } else {
                        self.at(loc, FindingKind::BadSignature);
                    }
                }
                self.closed_by_rotate = c.checkpoint.reason == CheckpointReason::Rotate;
                if !self.last_signed {
                    self.since_checkpoint += 1;
                }
            }
            Line::Entry(e) => {
                self.report.entries += 1;
                self.since_checkpoint += 1;
                if let Some(r) = &e.retention {
                    self.retained.push((r.through_seq, r.through_hash));
                }
            }
        }
        self.prev = Some(Prev {
            loc: loc.clone(),
            hash,
            flagged: self.report.problems.len() > problems_before,
        });
        Some(seq)
    }

    fn finish(mut self) -> Report {
        if self.pending.is_some() {
            // The last line's prev is trustworthy if the line is a valid checkpoint (the
            // signature covers it): then the line before was altered. Otherwise either could
            // have been: name the earlier one, as for any single failed link.
            let next_failed = if self.last_signed { Some(false) } else { None };
            self.resolve_pending(next_failed);
        }
        if let Some((loc, first_seq, prev)) = self.head.take() {
            match self
                .retained
                .iter()
                .find(|(s, h)| s + 1 == first_seq && *h == prev)
            {
                Some((through_seq, _)) => self.note(
                    None,
                    None,
                    FindingKind::HeadRetained {
                        through_seq: *through_seq,
                    },
                ),
                None => self.at(&loc, FindingKind::HeadMissing { first_seq }),
            }
        }
        if self.since_checkpoint > 0 {
            let lines = self.since_checkpoint;
            self.note(None, None, FindingKind::UnsignedTail { lines });
        }
        // Report problems in trail order.
        let order: Vec<String> = {
            let mut names: Vec<String> = self
                .report
                .problems
                .iter()
                .filter_map(|p| p.file.clone())
                .collect();
            names.sort_by_key(|n| files::parse_name(n).map_or(u64::MAX, |f| f.seq));
            names.dedup();
            names
        };
        self.report.problems.sort_by_key(|p| {
            (
                p.file
                    .as_ref()
                    .and_then(|f| order.iter().position(|n| n == f))
                    .unwrap_or(usize::MAX),
                p.line.unwrap_or(0),
            )
        });
        self.report
    }
}
