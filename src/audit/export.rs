//! One tenant's entries for an auditor, in trail order, plain or compressed files alike.
//!
//! Only entries whose `tenant` is exactly the one asked for are returned (system-wide entries
//! are tenant `-` and exported only when `-` is asked for); checkpoints are skipped. `since`
//! is inclusive, `until` exclusive. Files entirely outside the window (judged by the start
//! times in their names, with a day of slack for clock steps) are not opened.
//!
//! Export does not verify: run `verify` on the same directory for that. A line that does not
//! parse, or is longer than 1 MiB (skipped, never held in memory), is returned as an error
//! (file and line, no content) and the export goes on. Export may run while the daemon writes:
//! an incomplete last line is not yet part of the trail and is left out.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};

use super::Error;
use super::entry::{Entry, Line, Tenant};
use super::files::{self, Next, TrailFile};

const SLACK: SignedDuration = SignedDuration::from_hours(24);

/// Iterator over one tenant's entries; see [`export`].
pub struct Export {
    dir: PathBuf,
    /// Files still to read, each with the start of the file after it (its end).
    files: VecDeque<(TrailFile, Option<Timestamp>)>,
    /// The file being read, its reader, lines read, and whether it is the newest file.
    current: Option<(TrailFile, Box<dyn BufRead + Send>, u64, bool)>,
    tenant: Tenant,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    buf: Vec<u8>,
}

/// The entries of `tenant` recorded in `[since, until)`, oldest first.
pub fn export(
    dir: &Path,
    tenant: &Tenant,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<Export, Error> {
    let listing = files::list(dir)?;
    let ends: Vec<Option<Timestamp>> = listing
        .files
        .iter()
        .skip(1)
        .map(|f| Some(f.start))
        .chain([None])
        .collect();
    let files = listing
        .files
        .into_iter()
        .zip(ends)
        .filter(|(f, end)| {
            let ends_before = match (end, since) {
                (Some(end), Some(since)) => end.saturating_add(SLACK).is_ok_and(|e| e < since),
                _ => false,
            };
            let starts_after =
                until.is_some_and(|u| u.saturating_add(SLACK).is_ok_and(|u| f.start >= u));
            !ends_before && !starts_after
        })
        .collect();
    Ok(Export {
        dir: dir.to_owned(),
        files,
        current: None,
        tenant: tenant.clone(),
        since,
        until,
        buf: Vec::new(),
    })
}

impl Iterator for Export {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some((f, reader, line_no, newest)) = &mut self.current else {
                let (f, end) = self.files.pop_front()?;
                match files::open(&self.dir, &f) {
                    Ok(r) => self.current = Some((f, r, 0, end.is_none())),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            };
            match files::next_line(&mut **reader, &mut self.buf) {
                Ok(Next::Line) => {}
                Ok(Next::End) => {
                    self.current = None;
                    continue;
                }
                Ok(Next::TooLong { .. }) => {
                    // Skipped, not held (a valid line is far shorter); export goes on after it.
                    *line_no += 1;
                    return Some(Err(Error::Malformed {
                        file: f.name.clone(),
                        line: *line_no,
                    }));
                }
                Err(e) => {
                    let path = f.path(&self.dir);
                    self.current = None;
                    return Some(Err(Error::io(&path, e)));
                }
            }
            *line_no += 1;
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            } else if *newest {
                // The writer is in the middle of this line (or crashed in it): not yet part of
                // the trail.
                self.current = None;
                continue;
            }
            match Line::parse(&self.buf) {
                Ok(Line::Checkpoint(_)) => {}
                Ok(Line::Entry(e)) => {
                    let t = e.time.timestamp();
                    if e.tenant == self.tenant
                        && self.since.is_none_or(|s| t >= s)
                        && self.until.is_none_or(|u| t < u)
                    {
                        return Some(Ok(e));
                    }
                }
                Err(_) => {
                    return Some(Err(Error::Malformed {
                        file: f.name.clone(),
                        line: *line_no,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::entry::{GENESIS, Hash};
    use crate::audit::testutil::{entry_line, joined, write_file};

    #[test]
    fn a_line_longer_than_the_cap_is_an_error_and_export_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let l0 = entry_line(0, GENESIS, None);
        let long = vec![b'x'; 2 * files::MAX_LINE];
        let l2 = entry_line(2, Hash([1; 32]), None);
        let name = write_file(dir.path(), 0, &joined(&[&l0, &long, &l2]));
        let got: Vec<_> = export(dir.path(), &Tenant::System, None, None)
            .unwrap()
            .collect();
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Ok(e) if e.seq == 0));
        assert!(
            matches!(&got[1], Err(Error::Malformed { file, line: 2 }) if *file == name),
            "{:?}",
            got[1]
        );
        assert!(matches!(&got[2], Ok(e) if e.seq == 2));
    }
}
