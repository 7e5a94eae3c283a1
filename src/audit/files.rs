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

/// Reads the next line into `buf` (cleared first), keeping the newline if there is one.
/// Returns false at the end.
pub fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    Ok(r.read_until(b'\n', buf)? > 0)
}

/// The last complete line of a file (whole-file read: for gz, and for files being retired).
pub fn last_line(dir: &Path, f: &TrailFile) -> Result<Option<Vec<u8>>, Error> {
    let mut r = open(dir, f)?;
    let mut buf = Vec::new();
    let mut last = None;
    while next_line(&mut *r, &mut buf).map_err(|e| Error::io(&f.path(dir), e))? {
        if buf.last() == Some(&b'\n') {
            buf.pop();
            last = Some(std::mem::take(&mut buf));
        }
    }
    Ok(last)
}

/// The end of a plain file: its length up to the last newline, the last complete line, and
/// how many bytes follow that newline (a torn write). Reads backwards, not the whole file.
pub struct Tail {
    /// Bytes up to and including the last newline.
    pub complete_len: u64,
    /// The last complete line without its newline.
    pub last_line: Option<Vec<u8>>,
    /// Bytes after the last newline.
    pub torn: u64,
}

/// Finds the [`Tail`] of an open plain file.
pub fn tail(file: &mut File) -> io::Result<Tail> {
    const CHUNK: u64 = 64 << 10;
    let len = file.seek(SeekFrom::End(0))?;
    // Collect bytes from the end until two newlines are seen (or the start is reached).
    let mut back: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let newlines = back.iter().filter(|&&b| b == b'\n').count();
        if newlines >= 2 || pos == 0 {
            break;
        }
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&back);
        back = chunk;
        pos = start;
    }
    let Some(last_nl) = back.iter().rposition(|&b| b == b'\n') else {
        return Ok(Tail {
            complete_len: 0,
            last_line: None,
            torn: len,
        });
    };
    let line_start = back[..last_nl]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Ok(Tail {
        complete_len: pos + last_nl as u64 + 1,
        last_line: Some(back[line_start..last_nl].to_vec()),
        torn: (back.len() - last_nl - 1) as u64,
    })
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
            let t = tail(&mut File::open(&p).unwrap()).unwrap();
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
        let t = tail(&mut File::open(&p).unwrap()).unwrap();
        assert_eq!(t.last_line.unwrap().len(), 100_000);
        assert_eq!(t.torn, 2);
        assert_eq!(t.complete_len, 300_002);
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
