//! Trail files on disk: names, listing, reading lines (plain or gzip), compression.
//!
//! A file is named by the time it was opened and the seq of its first line:
//! `audit-20261124T100000Z-000000001000.jsonl`, and `….jsonl.gz` once compressed. Order is by
//! seq (parsed, not by string). Anything else in the directory is ignored by the writer and
//! reported by `verify`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use jiff::Timestamp;

use super::Error;
use super::entry::Hash;
use super::keys::sync_dir;

const PREFIX: &str = "audit-";
const PLAIN: &str = ".jsonl";
const GZ: &str = ".jsonl.gz";

/// One trail file (the plain or compressed form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailFile {
    /// File name within the directory.
    pub name: String,
    /// Seq of its first line, from the name.
    pub seq: u64,
    /// When it was opened (whole seconds), from the name.
    pub start: Timestamp,
    /// Compressed.
    pub gz: bool,
}

impl TrailFile {
    /// Full path.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.name)
    }
}

/// The name of a new plain file.
pub fn name(start: Timestamp, seq: u64) -> String {
    format!(
        "{PREFIX}{}-{seq:012}{PLAIN}",
        start.strftime("%Y%m%dT%H%M%SZ")
    )
}

/// Parses a trail file name; `None` for anything else.
pub fn parse_name(name: &str) -> Option<TrailFile> {
    let (stem, gz) = if let Some(s) = name.strip_suffix(GZ) {
        (s, true)
    } else {
        (name.strip_suffix(PLAIN)?, false)
    };
    let rest = stem.strip_prefix(PREFIX)?;
    let (time, seq) = rest.split_once('-')?;
    if seq.len() < 12 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = seq.parse().ok()?;
    let t = time.as_bytes();
    if t.len() != 16 || t[8] != b'T' || t[15] != b'Z' {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        time.get(0..4)?,
        time.get(4..6)?,
        time.get(6..8)?,
        time.get(9..11)?,
        time.get(11..13)?,
        time.get(13..15)?
    );
    let start: Timestamp = iso.parse().ok()?;
    Some(TrailFile {
        name: name.to_owned(),
        seq,
        start,
        gz,
    })
}

/// What is in the directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// Trail files by seq; where both forms of one file exist, the plain one.
    pub files: Vec<TrailFile>,
    /// Compressed copies that also exist in plain form (compression interrupted).
    pub shadowed: Vec<TrailFile>,
    /// Names that are not trail files (temporary files included).
    pub other: Vec<String>,
}

/// Lists the directory (missing directory: empty listing).
pub fn list(dir: &Path) -> Result<Listing, Error> {
    let mut out = Listing::default();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut all = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        match parse_name(&name) {
            Some(f) => all.push(f),
            None => out.other.push(name),
        }
    }
    // Plain before gz for the same seq, so the plain one is kept.
    all.sort_by_key(|f| (f.seq, f.gz));
    for f in all {
        match out.files.last() {
            Some(last) if last.seq == f.seq => out.shadowed.push(f),
            _ => out.files.push(f),
        }
    }
    out.other.sort();
    Ok(out)
}

/// A reader over a file's bytes (decompressed for gz).
pub fn open(dir: &Path, f: &TrailFile) -> Result<Box<dyn BufRead + Send>, Error> {
    let path = f.path(dir);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    Ok(if f.gz {
        Box::new(BufReader::with_capacity(
            256 << 10,
            GzDecoder::new(BufReader::new(file)),
        ))
    } else {
        Box::new(BufReader::with_capacity(256 << 10, file))
    })
}

/// Longest line the readers accept, newline not counted: 1 MiB. A valid line is under
/// 16 KiB ([`super::entry::MAX_RESOURCE_IDS`] keeps it there), so anything longer is damage or
/// tampering; the cap is what keeps a damaged file (e.g. a `.jsonl.gz` that inflates to
/// gigabytes without a newline) from making `verify`, `export`, retention or the writer's start
/// hold it in memory. It also bounds how far [`tail`] reads back from the end.
pub const MAX_LINE: usize = 1 << 20;

/// What [`next_line`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The end of the file: nothing read.
    End,
    /// A line is in the buffer, with its newline unless it is the file's unterminated last.
    Line,
    /// A line longer than [`MAX_LINE`]. It was read past, not kept (the buffer is empty), up to
    /// and including its newline, or to the end of the file when `terminated` is false; the
    /// next call reads the line after it.
    TooLong {
        /// It ended with a newline.
        terminated: bool,
    },
}

/// Reads the next line into `buf` (cleared first), keeping the newline if there is one. Never
/// holds more than [`MAX_LINE`] bytes of one line plus one read buffer; a longer line is
/// skipped and reported as [`Next::TooLong`].
pub fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Next> {
    buf.clear();
    let mut skipping = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if skipping {
                Next::TooLong { terminated: false }
            } else if buf.is_empty() {
                Next::End
            } else {
                Next::Line
            });
        }
        let newline = avail.iter().position(|&b| b == b'\n');
        let (used, content) = match newline {
            Some(i) => (i + 1, i),
            None => (avail.len(), avail.len()),
        };
        if !skipping {
            if buf.len() + content > MAX_LINE {
                skipping = true;
                buf.clear();
            } else {
                buf.extend_from_slice(avail.get(..used).unwrap_or(avail));
            }
        }
        r.consume(used);
        if newline.is_some() {
            return Ok(if skipping {
                Next::TooLong { terminated: true }
            } else {
                Next::Line
            });
        }
    }
}

/// The last complete line of a file (whole-file read: for gz, and for files being retired).
/// A last complete line longer than [`MAX_LINE`] is no valid line: [`Error::Corrupt`].
pub fn last_line(dir: &Path, f: &TrailFile) -> Result<Option<Vec<u8>>, Error> {
    let mut r = open(dir, f)?;
    let mut buf = Vec::new();
    let mut last = None;
    let mut last_too_long = false;
    loop {
        match next_line(&mut *r, &mut buf).map_err(|e| Error::io(&f.path(dir), e))? {
            Next::End => break,
            Next::Line => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    last = Some(std::mem::take(&mut buf));
                    last_too_long = false;
                }
            }
            Next::TooLong { terminated } => last_too_long |= terminated,
        }
    }
    if last_too_long {
        return Err(Error::Corrupt {
            file: f.name.clone(),
        });
    }
    Ok(last)
}

/// The end of a plain file: its length up to the last newline, the last complete line, and
/// how many bytes follow that newline (a torn write).
pub struct Tail {
    /// Bytes up to and including the last newline.
    pub complete_len: u64,
    /// The last complete line without its newline.
    pub last_line: Option<Vec<u8>>,
    /// Bytes after the last newline.
    pub torn: u64,
}

/// What [`tail`] found at the end of a plain file.
pub enum End {
    /// The last complete line (if any) and the torn bytes after it (at most [`MAX_LINE`]).
    Tail(Tail),
    /// The last complete line is longer than [`MAX_LINE`], so it is not a valid line.
    LastLineTooLong,
    /// More than [`MAX_LINE`] bytes follow the last newline (or the file has none and is that
    /// long). A crash tears at most one line, which is far shorter: this is damage, not a torn
    /// write, and the caller must not cut it off.
    TornTooLong,
}

/// Finds the [`End`] of an open plain file. Reads backwards in chunks, looking for newlines
/// only in each new chunk, and stops after two newlines, at the start, or once the torn part or
/// the last line is known to exceed [`MAX_LINE`]: at most `2 * (MAX_LINE + 64 KiB)` bytes,
/// whatever the file's size.
pub fn tail<F: Read + Seek>(file: &mut F) -> io::Result<End> {
    const CHUNK: u64 = 64 << 10;
    let max = MAX_LINE as u64;
    let len = file.seek(SeekFrom::End(0))?;
    // Chunks read so far, last one first; together they hold the bytes `pos..len`.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut pos = len;
    // File offsets of the last newline and the one before it.
    let mut last_nl: Option<u64> = None;
    let mut prev_nl: Option<u64> = None;
    while pos > 0 && prev_nl.is_none() {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        for (i, _) in chunk.iter().enumerate().rev().filter(|(_, b)| **b == b'\n') {
            let at = start + i as u64;
            if last_nl.is_none() {
                last_nl = Some(at);
            } else {
                prev_nl = Some(at);
                break;
            }
        }
        chunks.push(chunk);
        pos = start;
        // The line being searched (the torn part, then the last line) ends at the last newline
        // found, or at the end. Once it is longer than MAX_LINE the answer is known: stop.
        if last_nl.unwrap_or(len) - pos > max {
            break;
        }
    }
    let Some(last_nl) = last_nl else {
        // No newline in `pos..len`: all of the file, or more than MAX_LINE bytes of it.
        return Ok(if len - pos > max {
            End::TornTooLong
        } else {
            End::Tail(Tail {
                complete_len: 0,
                last_line: None,
                torn: len,
            })
        });
    };
    if len - last_nl - 1 > max {
        return Ok(End::TornTooLong);
    }
    let line_start = match prev_nl {
        Some(p) => p + 1,
        None if pos == 0 => 0,
        // Stopped before the line's start: it is longer than MAX_LINE.
        None => return Ok(End::LastLineTooLong),
    };
    if last_nl - line_start > max {
        return Ok(End::LastLineTooLong);
    }
    let mut back = Vec::with_capacity((len - pos) as usize);
    for c in chunks.iter().rev() {
        back.extend_from_slice(c);
    }
    let line = back
        .get((line_start - pos) as usize..(last_nl - pos) as usize)
        .ok_or_else(|| io::Error::other("audit tail: line offsets outside the bytes read"))?;
    Ok(End::Tail(Tail {
        complete_len: last_nl + 1,
        last_line: Some(line.to_vec()),
        torn: len - last_nl - 1,
    }))
}

/// Creates a new plain file for appending (mode 0640) and makes its name durable.
pub fn create(dir: &Path, name: &str) -> Result<File, Error> {
    let path = dir.join(name);
    let f = OpenOptions::new()
        .append(true)
        .read(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(f)
}

/// SHA-256 over a file's (decompressed) bytes, to check a compressed copy.
fn digest_of(dir: &Path, f: &TrailFile) -> Result<(Hash, u64), Error> {
    let mut r = open(dir, f)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io(&f.path(dir), e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        ctx.update(&buf[..n]);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((Hash(out), total))
}

/// Compresses a closed plain file to `.jsonl.gz`: write a temporary file, read it back and
/// compare with the original, fsync, rename, fsync the directory, then remove the original.
/// A crash at any point leaves the plain file, or both (the next run removes the plain one
/// after the same check). Returns the new file.
pub fn compress(dir: &Path, plain: &TrailFile) -> Result<TrailFile, Error> {
    let stem = plain.name.trim_end_matches(PLAIN);
    let gz = TrailFile {
        name: format!("{stem}{GZ}"),
        gz: true,
        ..plain.clone()
    };
    let gz_path = gz.path(dir);
    if !gz_path.exists() {
        let tmp = dir.join(format!(".{}.tmp", gz.name));
        let _ = fs::remove_file(&tmp);
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let mut enc = GzEncoder::new(io::BufWriter::new(out), Compression::default());
        let mut src = open(dir, plain)?;
        io::copy(&mut src, &mut enc).map_err(|e| Error::io(&tmp, e))?;
        let out = enc
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| Error::io(&tmp, e))?;
        out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(out);
        let tmp_file = TrailFile {
            name: format!(".{}.tmp", gz.name),
            ..gz.clone()
        };
        if digest_of(dir, &tmp_file)? != digest_of(dir, plain)? {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Compress {
                file: plain.name.clone(),
            });
        }
        fs::rename(&tmp, &gz_path).map_err(|e| Error::io(&gz_path, e))?;
        sync_dir(dir)?;
    } else if digest_of(dir, &gz)? != digest_of(dir, plain)? {
        // A compressed copy that does not match: keep the plain file, leave both for a human.
        return Err(Error::Compress {
            file: plain.name.clone(),
        });
    }
    let plain_path = plain.path(dir);
    fs::remove_file(&plain_path).map_err(|e| Error::io(&plain_path, e))?;
    sync_dir(dir)?;
    Ok(gz)
}

/// Writes through to the file then fsyncs its data (not its metadata beyond the size).
pub fn append_durably(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        let t = Timestamp::from_second(1_790_000_000).unwrap();
        let n = name(t, 42);
        assert_eq!(n, "audit-20260921T141320Z-000000000042.jsonl");
        let f = parse_name(&n).unwrap();
        assert_eq!((f.seq, f.start, f.gz), (42, t, false));
        let g = parse_name("audit-20260921T133320Z-1000000000042.jsonl.gz").unwrap();
        assert_eq!((g.seq, g.gz), (1_000_000_000_042, true));
        for bad in [
            "audit-20260921T133320Z-42.jsonl",
            "audit-2026-09-21-000000000042.jsonl",
            "audit-20260921T133320Z-000000000042.json",
            ".audit-20260921T133320Z-000000000042.jsonl.gz.tmp",
        ] {
            assert!(parse_name(bad).is_none(), "{bad}");
        }
    }

    fn tail_of(content: &[u8]) -> End {
        tail(&mut io::Cursor::new(content)).unwrap()
    }

    #[test]
    fn tail_finds_the_last_line_and_torn_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for (content, want_len, want_line, want_torn) in [
            (&b""[..], 0, None, 0),
            (b"abc", 0, None, 3),
            (b"abc\n", 4, Some(&b"abc"[..]), 0),
            (b"abc\ndef\n", 8, Some(&b"def"[..]), 0),
            (b"abc\ndef\ngh", 8, Some(&b"def"[..]), 2),
        ] {
            fs::write(&p, content).unwrap();
            let End::Tail(t) = tail(&mut File::open(&p).unwrap()).unwrap() else {
                panic!("{content:?}: not a plain tail");
            };
            assert_eq!(t.complete_len, want_len);
            assert_eq!(t.last_line.as_deref(), want_line);
            assert_eq!(t.torn, want_torn);
        }
        // Longer than one chunk.
        let mut big = vec![b'x'; 200_000];
        big.push(b'\n');
        big.extend_from_slice(&[b'y'; 100_000]);
        big.push(b'\n');
        big.extend_from_slice(b"zz");
        fs::write(&p, &big).unwrap();
        let End::Tail(t) = tail(&mut File::open(&p).unwrap()).unwrap() else {
            panic!("not a plain tail");
        };
        assert_eq!(t.last_line.unwrap().len(), 100_000);
        assert_eq!(t.torn, 2);
        assert_eq!(t.complete_len, 300_002);
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn tail_of_a_large_file_without_newline_reads_a_bounded_amount_and_reports_damage() {
        let mut f = Counting {
            inner: io::Cursor::new(vec![b'x'; 32 << 20]),
            read: 0,
        };
        assert!(matches!(tail(&mut f).unwrap(), End::TornTooLong));
        assert!(f.read <= 2 * (MAX_LINE as u64 + (64 << 10)), "{}", f.read);
        // The same with lines before it, and with a last line too long to be one.
        let mut f = Counting {
            inner: io::Cursor::new([&b"ok\n"[..], &vec![b'x'; 32 << 20], b"\n"].concat()),
            read: 0,
        };
        assert!(matches!(tail(&mut f).unwrap(), End::LastLineTooLong));
        assert!(f.read <= 2 * (MAX_LINE as u64 + (64 << 10)), "{}", f.read);
    }

    #[test]
    fn tail_allows_a_torn_part_and_a_last_line_up_to_the_cap() {
        let at_cap = vec![b'x'; MAX_LINE];
        let over = vec![b'x'; MAX_LINE + 1];
        let End::Tail(t) = tail_of(&[&b"a\n"[..], &at_cap].concat()) else {
            panic!("a torn part of MAX_LINE bytes is a torn write");
        };
        assert_eq!((t.complete_len, t.torn), (2, MAX_LINE as u64));
        assert!(matches!(
            tail_of(&[&b"a\n"[..], &over].concat()),
            End::TornTooLong
        ));
        assert!(matches!(tail_of(&over), End::TornTooLong));
        let End::Tail(t) = tail_of(&[&b"a\n"[..], &at_cap, b"\nzz"].concat()) else {
            panic!("a last line of MAX_LINE bytes is a line");
        };
        assert_eq!(t.last_line.map(|l| l.len()), Some(MAX_LINE));
        assert!(matches!(
            tail_of(&[&b"a\n"[..], &over, b"\nzz"].concat()),
            End::LastLineTooLong
        ));
        assert!(matches!(
            tail_of(&[&over[..], b"\n"].concat()),
            End::LastLineTooLong
        ));
    }

    #[test]
    fn next_line_skips_a_line_over_the_cap_without_holding_it_and_reads_on() {
        let over = vec![b'x'; 3 * MAX_LINE];
        let input = [&over[..], b"\nok\n", &over].concat();
        let mut r = BufReader::with_capacity(64 << 10, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            next_line(&mut r, &mut buf).unwrap(),
            Next::TooLong { terminated: true }
        );
        assert!(buf.is_empty());
        assert!(buf.capacity() <= 2 * MAX_LINE, "{}", buf.capacity());
        assert_eq!(next_line(&mut r, &mut buf).unwrap(), Next::Line);
        assert_eq!(buf, b"ok\n");
        assert_eq!(
            next_line(&mut r, &mut buf).unwrap(),
            Next::TooLong { terminated: false }
        );
        assert_eq!(next_line(&mut r, &mut buf).unwrap(), Next::End);
        // A stream with no newline at all (what a small .gz can inflate to).
        let mut r = BufReader::new(io::repeat(b'x').take(64 << 20));
        let mut buf = Vec::new();
        assert_eq!(
            next_line(&mut r, &mut buf).unwrap(),
            Next::TooLong { terminated: false }
        );
        assert!(buf.capacity() <= 2 * MAX_LINE, "{}", buf.capacity());
        // At the cap is still a line.
        let input = [&vec![b'y'; MAX_LINE][..], b"\n"].concat();
        let mut r = BufReader::new(&input[..]);
        assert_eq!(next_line(&mut r, &mut buf).unwrap(), Next::Line);
        assert_eq!(buf.len(), MAX_LINE + 1);
    }

    #[test]
    fn last_line_of_a_gz_file_refuses_an_over_long_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let t = Timestamp::from_second(1_790_000_000).unwrap();
        let over = vec![b'x'; MAX_LINE + 1];
        for (i, (content, want)) in [
            ([&b"a\n"[..], &over, b"\n"].concat(), None),
            ([&over[..], b"\nb\n"].concat(), Some(&b"b"[..])),
            ([&b"a\n"[..], &over].concat(), Some(&b"a"[..])),
        ]
        .into_iter()
        .enumerate()
        {
            let n = name(t, i as u64);
            fs::write(dir.path().join(&n), &content).unwrap();
            let gz = compress(dir.path(), &parse_name(&n).unwrap()).unwrap();
            match (last_line(dir.path(), &gz), want) {
                (Err(Error::Corrupt { file }), None) => assert_eq!(file, gz.name),
                (Ok(Some(line)), Some(want)) => assert_eq!(line, want),
                (got, _) => panic!("case {i}: {got:?}"),
            }
        }
    }

    #[test]
    fn compression_keeps_the_bytes_and_removes_the_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = Timestamp::from_second(1_790_000_000).unwrap();
        let n = name(t, 0);
        let content: Vec<u8> = (0..5000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        fs::write(dir.path().join(&n), &content).unwrap();
        let plain = parse_name(&n).unwrap();
        let gz = compress(dir.path(), &plain).unwrap();
        assert!(!plain.path(dir.path()).exists());
        let mut back = Vec::new();
        open(dir.path(), &gz)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, content);
        let listing = list(dir.path()).unwrap();
        assert_eq!(listing.files, vec![gz]);
        assert!(listing.other.is_empty());
    }
}
