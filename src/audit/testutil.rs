//! Helpers for the audit unit tests: canonical lines and trail files written by hand, for
//! trails the writer would never produce (forged seqs, damaged files).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use jiff::Timestamp;

use super::entry::Time;
use super::entry::{Action, Actor, ActorKind, Entry, Hash, Id, Purpose, Record, Retention, Tenant};
use super::files;

/// When every hand-written file and line says it was made.
pub fn start() -> Timestamp {
    Timestamp::from_second(1_790_000_000).unwrap()
}

/// A canonical entry line (no newline) with this seq and prev, optionally a retention record.
pub fn entry_line(seq: u64, prev: Hash, retention: Option<Retention>) -> Vec<u8> {
    let mut r = Record::new(
        Tenant::System,
        Actor::new(ActorKind::System, Id::new("test").unwrap()),
        Action::Received,
        Purpose::Compliance,
    );
    r.retention = retention;
    let e = Entry::from_record(r, seq, prev, Time::new(start()), Vec::new());
    serde_json::to_vec(&e).unwrap()
}

/// Writes a plain trail file named for `seq` holding `bytes`; returns its name.
pub fn write_file(dir: &Path, seq: u64, bytes: &[u8]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let name = files::name(start(), seq);
    std::fs::write(dir.join(&name), bytes).unwrap();
    name
}

/// `lines` each followed by a newline.
pub fn joined(lines: &[&[u8]]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect()
}
