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
//!
//! The files may be damaged or forged, so reading them is bounded: a line longer than 1 MiB is
//! reported, not held; at most [`MAX_FINDINGS_PER_FILE`] findings per file and
//! [`MAX_FINDINGS`] in all are listed, the rest only counted ([`Report::problems_unlisted`]);
//! and a seq that would overflow is a finding, not a wrap to 0.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::Error;
use super::entry::{CheckpointReason, GENESIS, Hash, Line, LineError};
use super::files::{self, Next};
use super::keys::PublicKey;
use crate::audit::entry::Checkpoint;

/// Most problems (and, separately, notes) listed for one file; the rest are counted.
pub const MAX_FINDINGS_PER_FILE: usize = 1000;
/// Most problems (and, separately, notes) listed in all; the rest are counted.
pub const MAX_FINDINGS: usize = 10_000;

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
    /// The line has seq `u64::MAX`, which no line can follow: the writer never writes it, so
    /// the line was forged or damaged.
    SeqOverflow,
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
            FindingKind::SeqOverflow => write!(
                f,
                "seq {} can have no successor and is never written (forged or damaged)",
                u64::MAX
            ),
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
    /// Evidence of change or loss (at most [`MAX_FINDINGS_PER_FILE`] per file and
    /// [`MAX_FINDINGS`] in all).
    pub problems: Vec<Finding>,
    /// Problems found beyond those limits, counted but not listed.
    pub problems_unlisted: u64,
    /// Worth knowing, not a problem (limited like `problems`).
    pub notes: Vec<Finding>,
    /// Notes beyond the limits, counted but not listed.
    pub notes_unlisted: u64,
}

impl Report {
    /// No problems.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty() && self.problems_unlisted == 0
    }

    /// Problems found, listed or not.
    pub fn problem_count(&self) -> u64 {
        self.problems.len() as u64 + self.problems_unlisted
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limits = format!(
            "at most {MAX_FINDINGS_PER_FILE} per file and {MAX_FINDINGS} in all are listed"
        );
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.problems_unlisted > 0 {
            writeln!(
                f,
                "problem: {} more problem(s) not listed ({limits})",
                self.problems_unlisted
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if self.notes_unlisted > 0 {
            writeln!(
                f,
                "note: {} more note(s) not listed ({limits})",
                self.notes_unlisted
            )?;
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
            self.problem_count()
        )
    }
}

/// The last line seen, for the link check of the next.
struct Prev {
    loc: Loc,
    /// `None` for a line too long to be hashed (it is flagged).
    hash: Option<Hash>,
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
    /// Problems found, listed or not: tells whether a line got one.
    found: u64,
    /// Problems and notes listed per file name, for [`MAX_FINDINGS_PER_FILE`].
    listed_problems: HashMap<String, usize>,
    listed_notes: HashMap<String, usize>,
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
        found: 0,
        listed_problems: HashMap::new(),
        listed_notes: HashMap::new(),
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
        v.note(Some(name), None, FindingKind::Foreign);
    }
    for s in &listing.shadowed {
        v.note(Some(&s.name), None, FindingKind::Shadowed);
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
    fn problem(&mut self, file: Option<&str>, line: Option<u64>, kind: FindingKind) {
        self.found += 1;
        let listed = self.report.problems.len();
        if room(&mut self.listed_problems, listed, file) {
            let file = file.map(str::to_owned);
            self.report.problems.push(Finding { file, line, kind });
        } else {
            self.report.problems_unlisted += 1;
        }
    }

    fn note(&mut self, file: Option<&str>, line: Option<u64>, kind: FindingKind) {
        let listed = self.report.notes.len();
        if room(&mut self.listed_notes, listed, file) {
            let file = file.map(str::to_owned);
            self.report.notes.push(Finding { file, line, kind });
        } else {
            self.report.notes_unlisted += 1;
        }
    }

    fn at(&mut self, loc: &Loc, kind: FindingKind) {
        self.problem(Some(&loc.file), Some(loc.line), kind);
    }

    fn file(&mut self, dir: &Path, f: &files::TrailFile, newest: bool) {
        self.report.files += 1;
        self.closed_by_rotate = false;
        let mut reader = match files::open(dir, f) {
            Ok(r) => r,
            Err(e) => {
                self.problem(Some(&f.name), None, FindingKind::Unreadable(e.to_string()));
                self.lost_track();
                return;
            }
        };
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            let next = match files::next_line(&mut *reader, &mut buf) {
                Ok(Next::End) => break,
                Ok(next) => next,
                Err(e) => {
                    self.problem(
                        Some(&f.name),
                        Some(line_no + 1),
                        FindingKind::Unreadable(e.to_string()),
                    );
                    self.lost_track();
                    return;
                }
            };
            line_no += 1;
            let loc = Loc {
                file: f.name.clone(),
                line: line_no,
            };
            if let Next::TooLong { .. } = next {
                // Not kept, so not hashed: reported as malformed (also when it is the newest
                // file's unterminated last line: no torn write is that long).
                self.report.lines += 1;
                self.unparsable(&loc, LineError::TooLong, None);
                continue;
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            } else if !newest {
                self.at(&loc, FindingKind::Unterminated);
            } else {
                self.note(Some(&f.name), Some(line_no), FindingKind::UnterminatedTail);
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
                self.problem(Some(&f.name), None, FindingKind::EmptyFile);
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
                self.unparsable(loc, e, Some(hash));
                return None;
            }
        };
        let seq = parsed.seq();
        let problems_before = self.found;

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
                self.alt = e.checked_add(1);
            }
            _ => self.alt = None,
        }
        self.expected = seq.checked_add(1);
        if self.expected.is_none() {
            // The next line's seq cannot be checked (as after a malformed line).
            self.at(loc, FindingKind::SeqOverflow);
        }
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);

        // Chain link to the line before.
        let link_failed = self
            .prev
            .as_ref()
            .and_then(|p| p.hash)
            .map(|h| h != parsed.prev());
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
            hash: Some(hash),
            flagged: self.found > problems_before,
        });
        Some(seq)
    }

    /// A line that is not a valid audit line: reported; nothing is known about the seq or
    /// prev of the next, and a broken link from it is not reported again.
    fn unparsable(&mut self, loc: &Loc, e: LineError, hash: Option<Hash>) {
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
                .find(|(s, h)| s.checked_add(1) == Some(first_seq) && *h == prev)
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
        let order: HashMap<String, usize> = {
            let mut names: Vec<String> = self
                .report
                .problems
                .iter()
                .filter_map(|p| p.file.clone())
                .collect();
            names.sort_by_key(|n| files::parse_name(n).map_or(u64::MAX, |f| f.seq));
            let mut order = HashMap::new();
            for (i, n) in names.into_iter().enumerate() {
                order.entry(n).or_insert(i);
            }
            order
        };
        self.report.problems.sort_by_key(|p| {
            (
                p.file
                    .as_ref()
                    .and_then(|f| order.get(f).copied())
                    .unwrap_or(usize::MAX),
                p.line.unwrap_or(0),
            )
        });
        self.report
    }
}

/// Whether one more finding about `file` may be listed, `listed` being listed already; counts
/// it against the file's limit if so.
fn room(per_file: &mut HashMap<String, usize>, listed: usize, file: Option<&str>) -> bool {
    if listed >= MAX_FINDINGS {
        return false;
    }
    let Some(file) = file else {
        return true;
    };
    match per_file.get_mut(file) {
        Some(n) if *n >= MAX_FINDINGS_PER_FILE => false,
        Some(n) => {
            *n += 1;
            true
        }
        None => {
            per_file.insert(file.to_owned(), 1);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::entry::{GENESIS, Retention};
    use crate::audit::keys::Keys;
    use crate::audit::testutil::{entry_line, joined, write_file};

    fn key(dir: &Path) -> PublicKey {
        *Keys::load_or_create(&dir.join("keys"))
            .unwrap()
            .signing
            .public()
    }

    fn kinds(r: &Report) -> Vec<(Option<u64>, FindingKind)> {
        r.problems
            .iter()
            .map(|p| (p.line, p.kind.clone()))
            .collect()
    }

    #[test]
    fn a_seq_that_would_overflow_is_a_finding_not_a_wrap() {
        let tmp = tempfile::tempdir().unwrap();
        let key = key(tmp.path());

        // A line with the largest seq: nothing can follow it.
        let dir = tmp.path().join("max");
        let l0 = entry_line(0, GENESIS, None);
        let l1 = entry_line(u64::MAX, Hash::of(&l0), None);
        write_file(&dir, 0, &joined(&[&l0, &l1]));
        let r = verify(&dir, &key).unwrap();
        assert!(
            kinds(&r).contains(&(Some(2), FindingKind::SeqOverflow)),
            "{r}"
        );
        assert_eq!(r.last_seq, Some(u64::MAX));

        // A wrong seq right after u64::MAX - 1: "only that line was wrong" has no seq to expect.
        let dir = tmp.path().join("alt");
        let l0 = entry_line(u64::MAX - 1, Hash([1; 32]), None);
        let l1 = entry_line(7, Hash::of(&l0), None);
        write_file(&dir, u64::MAX - 1, &joined(&[&l0, &l1]));
        let r = verify(&dir, &key).unwrap();
        assert!(
            kinds(&r).contains(&(
                Some(2),
                FindingKind::SeqGap {
                    expected: u64::MAX,
                    found: 7
                }
            )),
            "{r}"
        );

        // A retention record claiming to cover through u64::MAX covers no head.
        let dir = tmp.path().join("retained");
        let l0 = entry_line(5, Hash([2; 32]), None);
        let retention = Retention {
            files: Vec::new(),
            through_seq: u64::MAX,
            through_hash: Hash([2; 32]),
        };
        let l1 = entry_line(6, Hash::of(&l0), Some(retention));
        write_file(&dir, 5, &joined(&[&l0, &l1]));
        let r = verify(&dir, &key).unwrap();
        assert_eq!(
            kinds(&r),
            vec![(Some(1), FindingKind::HeadMissing { first_seq: 5 })],
            "{r}"
        );
    }

    #[test]
    fn findings_past_the_limits_are_counted_and_said_not_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let key = key(tmp.path());

        // One file of empty lines: one problem each.
        let dir = tmp.path().join("one");
        write_file(&dir, 0, &vec![b'\n'; 200_000]);
        let r = verify(&dir, &key).unwrap();
        assert_eq!(r.lines, 200_000);
        assert_eq!(r.problems.len(), MAX_FINDINGS_PER_FILE);
        assert_eq!(r.problems_unlisted, 199_000);
        assert_eq!(r.problem_count(), 200_000);
        assert!(!r.is_intact());
        let text = r.to_string();
        assert!(
            text.contains("problem: 199000 more problem(s) not listed"),
            "{text}"
        );
        assert!(text.contains("200000 problem(s)"), "{text}");

        // Eleven such files: the total limit applies across them.
        let dir = tmp.path().join("many");
        for i in 0..11 {
            write_file(&dir, i * 10_000, &vec![b'\n'; 1001]);
        }
        let r = verify(&dir, &key).unwrap();
        // 1001 malformed lines per file, and "not closed" for all but the newest.
        let found = 11 * 1001 + 10;
        assert_eq!(r.problems.len(), MAX_FINDINGS);
        assert_eq!(r.problem_count(), found);
        assert!(r.problems.iter().all(|p| p.file.is_some()));
    }

    #[test]
    fn a_line_longer_than_the_cap_is_malformed_and_verify_reads_on() {
        let tmp = tempfile::tempdir().unwrap();
        let key = key(tmp.path());
        let dir = tmp.path().join("trail");
        let l0 = entry_line(0, GENESIS, None);
        let long = vec![b'x'; 2 * files::MAX_LINE];
        let l2 = entry_line(2, Hash([3; 32]), None);
        // The newest file ends with megabytes and no newline: damage, not a torn write.
        let mut bytes = joined(&[&l0, &long, &l2]);
        bytes.extend_from_slice(&long);
        write_file(&dir, 0, &bytes);
        let r = verify(&dir, &key).unwrap();
        assert_eq!((r.lines, r.entries), (4, 2));
        assert_eq!(
            kinds(&r),
            vec![
                (Some(2), FindingKind::Malformed(LineError::TooLong)),
                (Some(4), FindingKind::Malformed(LineError::TooLong)),
            ],
            "{r}"
        );
        assert!(
            !r.notes
                .iter()
                .any(|n| n.kind == FindingKind::UnterminatedTail)
        );
    }
}
