//! MSH-18 character sets (HL7 table 0211): raw bytes → UTF-8 text before parsing, and UTF-8 →
//! bytes for replies.
//!
//! Spec: `shared/reference/protocols.md` §2.6. Every supported charset is ASCII-compatible for
//! the bytes of an MSH segment's delimiters and MSH-18 value, so [`decode`] reads MSH-18 from the
//! raw bytes before decoding anything.
//!
//! | table-0211 code (and variants seen in the wild) | [`Charset`] | decoder |
//! |---|---|---|
//! | `ASCII`, `ISO IR6`, `US-ASCII` | `Ascii` | none (ASCII is UTF-8) |
//! | `UNICODE UTF-8`, `UTF-8`, `UTF8` | `Utf8` | `std::str::from_utf8`, borrowed |
//! | `8859/1`, `ISO-8859-1`, `ISO IR100`, `LATIN1` | `Latin1` | windows-1252 (see below) |
//! | `8859/2` … `8859/8` | `Iso8859_2` … `Iso8859_8` | encoding_rs |
//! | `8859/9` | `Iso8859_9` | exact table here (encoding_rs only has windows-1254) |
//! | `8859/15` | `Iso8859_15` | encoding_rs |
//! | `ISO IR14` | `ShiftJis` | encoding_rs Shift_JIS (a superset of JIS X 0201) |
//! | `ISO IR87` | `Iso2022Jp` | encoding_rs ISO-2022-JP |
//! | `GB 18030-2000` | `Gb18030` | encoding_rs |
//! | `KS X 1001` | `EucKr` | encoding_rs EUC-KR |
//! | `CNS 11643-1992`, `BIG-5` | `Big5` | encoding_rs |
//! | `UNICODE`, `UNICODE UTF-16`, `UNICODE UTF-32`, `ISO IR159`, others | — | [`Error::UnsupportedCharset`] |
//!
//! Codes are matched after trimming, upper-casing and removing spaces, hyphens and underscores.
//!
//! Leniency, decided here once:
//!
//! - **8859/1 is decoded as windows-1252**, its superset: bytes 0x80–0x9F are C1 control codes
//!   in ISO-8859-1, which no sender means; senders that put bytes there use windows-1252 (`€`,
//!   curly quotes). Every other byte decodes identically.
//! - **Declared ASCII (or nothing, with an ASCII fallback) but 8-bit bytes present:** UTF-8 when
//!   the bytes are valid UTF-8 (what modern senders that leave MSH-18 alone send), otherwise the
//!   fallback when it is a legacy charset, otherwise 8859/1. Dropping the message would lose
//!   data; the returned [`Charset`] says which decoder was used.
//! - **Declared UTF-8 but invalid:** [`Error::Encoding`] with the byte offset (the sender said
//!   something precise and it is wrong). When UTF-8 is only the *fallback* (MSH-18 empty), invalid
//!   UTF-8 is read as 8859/1 instead: the sender evidently used a legacy single-byte set.
//! - **A UTF-8 BOM** is stripped; when the rest is valid UTF-8, the text is read as UTF-8 whatever
//!   MSH-18 says (the BOM is written by the tool that encoded the file, MSH-18 by a person).
//! - **UTF-16/UTF-32** (BOM, or `M\0S\0H`) are rejected: MLLP framing bytes can't be carried in
//!   them (§1.1).

use std::borrow::Cow;

use encoding_rs::{DecoderResult, EncoderResult, Encoding};

use super::Error;

/// A character set of HL7 table 0211 that this gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// `ASCII`: printable 7-bit ASCII, the HL7 default.
    Ascii,
    /// `UNICODE UTF-8`.
    Utf8,
    /// `8859/1` (Latin-1), decoded as its superset windows-1252.
    Latin1,
    /// `8859/2` (Latin-2, Central European).
    Iso8859_2,
    /// `8859/3` (Latin-3, South European).
    Iso8859_3,
    /// `8859/4` (Latin-4, North European).
    Iso8859_4,
    /// `8859/5` (Cyrillic).
    Iso8859_5,
    /// `8859/6` (Arabic).
    Iso8859_6,
    /// `8859/7` (Greek).
    Iso8859_7,
    /// `8859/8` (Hebrew).
    Iso8859_8,
    /// `8859/9` (Latin-5, Turkish).
    Iso8859_9,
    /// `8859/15` (Latin-9, v2.6+).
    Iso8859_15,
    /// `ISO IR14` (JIS X 0201), decoded as Shift_JIS.
    ShiftJis,
    /// `ISO IR87` (JIS X 0208 with ISO 2022 escapes), decoded as ISO-2022-JP.
    Iso2022Jp,
    /// `GB 18030-2000`.
    Gb18030,
    /// `KS X 1001`, decoded as EUC-KR.
    EucKr,
    /// `BIG-5` (also `CNS 11643-1992`).
    Big5,
}

impl Charset {
    /// Looks up an MSH-18 value, normalising case, spaces, hyphens and underscores
    /// (`"UNICODE UTF-8"`, `"utf-8"`, `"UTF8"`, `"8859/1"`, `"ISO-8859-1"`, `"ISO IR6"`, …).
    ///
    /// UTF-16/32, `UNICODE` and unknown codes → [`Error::UnsupportedCharset`].
    pub fn from_code(code: &str) -> Result<Charset, Error> {
        let unsupported = || Error::UnsupportedCharset {
            code: sanitize(code.as_bytes()),
        };
        let mut buf = [0u8; 24];
        let mut len = 0;
        for b in code.trim().bytes() {
            if matches!(b, b' ' | b'-' | b'_') {
                continue;
            }
            *buf.get_mut(len).ok_or_else(unsupported)? = b.to_ascii_uppercase();
            len += 1;
        }
        let key = buf.get(..len).unwrap_or_default();
        let no_iso = key.strip_prefix(b"ISO").unwrap_or(key);
        if let Some(part) = no_iso.strip_prefix(b"8859") {
            return match part.strip_prefix(b"/").unwrap_or(part) {
                b"1" => Ok(Charset::Latin1),
                b"2" => Ok(Charset::Iso8859_2),
                b"3" => Ok(Charset::Iso8859_3),
                b"4" => Ok(Charset::Iso8859_4),
                b"5" => Ok(Charset::Iso8859_5),
                b"6" => Ok(Charset::Iso8859_6),
                b"7" => Ok(Charset::Iso8859_7),
                b"8" => Ok(Charset::Iso8859_8),
                b"9" => Ok(Charset::Iso8859_9),
                b"15" => Ok(Charset::Iso8859_15),
                _ => Err(unsupported()),
            };
        }
        match key {
            b"ASCII" | b"USASCII" | b"ISOIR6" => Ok(Charset::Ascii),
            b"UNICODEUTF8" | b"UTF8" => Ok(Charset::Utf8),
            b"ISOIR100" | b"LATIN1" | b"WINDOWS1252" | b"CP1252" => Ok(Charset::Latin1),
            b"ISOIR14" | b"SHIFTJIS" | b"SJIS" => Ok(Charset::ShiftJis),
            b"ISOIR87" | b"ISO2022JP" => Ok(Charset::Iso2022Jp),
            b"GB180302000" | b"GB18030" => Ok(Charset::Gb18030),
            b"KSX1001" | b"EUCKR" => Ok(Charset::EucKr),
            b"BIG5" | b"CNS116431992" => Ok(Charset::Big5),
            _ => Err(unsupported()),
        }
    }

    /// The canonical table-0211 code, e.g. `"UNICODE UTF-8"` or `"8859/1"`, for MSH-18 of a
    /// reply.
    pub fn code(&self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Latin1 => "8859/1",
            Charset::Iso8859_2 => "8859/2",
            Charset::Iso8859_3 => "8859/3",
            Charset::Iso8859_4 => "8859/4",
            Charset::Iso8859_5 => "8859/5",
            Charset::Iso8859_6 => "8859/6",
            Charset::Iso8859_7 => "8859/7",
            Charset::Iso8859_8 => "8859/8",
            Charset::Iso8859_9 => "8859/9",
            Charset::Iso8859_15 => "8859/15",
            Charset::ShiftJis => "ISO IR14",
            Charset::Iso2022Jp => "ISO IR87",
            Charset::Gb18030 => "GB 18030-2000",
            Charset::EucKr => "KS X 1001",
            Charset::Big5 => "BIG-5",
        }
    }

    /// The encoding_rs codec, for the charsets that use one.
    fn encoding(&self) -> Option<&'static Encoding> {
        match self {
            Charset::Ascii | Charset::Utf8 | Charset::Iso8859_9 => None,
            Charset::Latin1 => Some(encoding_rs::WINDOWS_1252),
            Charset::Iso8859_2 => Some(encoding_rs::ISO_8859_2),
            Charset::Iso8859_3 => Some(encoding_rs::ISO_8859_3),
            Charset::Iso8859_4 => Some(encoding_rs::ISO_8859_4),
            Charset::Iso8859_5 => Some(encoding_rs::ISO_8859_5),
            Charset::Iso8859_6 => Some(encoding_rs::ISO_8859_6),
            Charset::Iso8859_7 => Some(encoding_rs::ISO_8859_7),
            Charset::Iso8859_8 => Some(encoding_rs::ISO_8859_8),
            Charset::Iso8859_15 => Some(encoding_rs::ISO_8859_15),
            Charset::ShiftJis => Some(encoding_rs::SHIFT_JIS),
            Charset::Iso2022Jp => Some(encoding_rs::ISO_2022_JP),
            Charset::Gb18030 => Some(encoding_rs::GB18030),
            Charset::EucKr => Some(encoding_rs::EUC_KR),
            Charset::Big5 => Some(encoding_rs::BIG5),
        }
    }
}

/// Keeps a code printable and short for [`Error::UnsupportedCharset`] (never message content).
fn sanitize(code: &[u8]) -> String {
    code.iter()
        .map(|&b| char::from(b))
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '/' | '-' | '_' | '.'))
        .take(24)
        .collect::<String>()
        .trim()
        .to_owned()
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Decodes one message's bytes to UTF-8 text, using the first repetition of MSH-18 (read from
/// the raw bytes of the first MSH segment) or `fallback` when MSH-18 is empty or there is no MSH.
///
/// Returns the text and the charset it was actually decoded with (see the module docs for the
/// leniency rules; use it to encode the reply). Borrowed, without copying, when the bytes are
/// valid UTF-8 and the charset is ASCII/UTF-8, or when a legacy charset's text holds only ASCII.
pub fn decode(raw: &[u8], fallback: Charset) -> Result<(Cow<'_, str>, Charset), Error> {
    if is_utf16_or_32(raw) {
        return Err(Error::UnsupportedCharset {
            code: "UNICODE UTF-16".to_owned(),
        });
    }
    let (bytes, offset) = match raw.strip_prefix(UTF8_BOM) {
        Some(rest) => {
            if let Ok(text) = std::str::from_utf8(rest) {
                return Ok((Cow::Borrowed(text), Charset::Utf8));
            }
            (rest, UTF8_BOM.len())
        }
        None => (raw, 0),
    };
    let declared = msh_18(bytes)?;
    let charset = declared.unwrap_or(fallback);
    let invalid = |charset: Charset, at: usize| Error::Encoding {
        charset: charset.code(),
        offset: offset + at,
    };
    match charset {
        Charset::Utf8 => match std::str::from_utf8(bytes) {
            Ok(text) => Ok((Cow::Borrowed(text), Charset::Utf8)),
            Err(err) if declared.is_some() => Err(invalid(Charset::Utf8, err.valid_up_to())),
            Err(_) => Ok((decode_legacy(bytes, Charset::Latin1), Charset::Latin1)),
        },
        Charset::Ascii => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let used = if text.is_ascii() {
                    Charset::Ascii
                } else {
                    Charset::Utf8
                };
                return Ok((Cow::Borrowed(text), used));
            }
            let used = match fallback {
                Charset::Ascii | Charset::Utf8 => Charset::Latin1,
                legacy => legacy,
            };
            decode_strict(bytes, used)
                .map(|text| (text, used))
                .map_err(|at| invalid(used, at))
        }
        legacy => decode_strict(bytes, legacy)
            .map(|text| (text, legacy))
            .map_err(|at| invalid(legacy, at)),
    }
}

/// UTF-16/32 BOMs, or `MSH` with NUL bytes between the letters.
fn is_utf16_or_32(raw: &[u8]) -> bool {
    raw.starts_with(b"\xFF\xFE")
        || raw.starts_with(b"\xFE\xFF")
        || raw.starts_with(b"\0\0\xFE\xFF")
        || raw.starts_with(b"M\0S\0H\0")
        || raw.starts_with(b"\0M\0S\0H")
}

/// MSH-18 first repetition of the first MSH segment, looked up in table 0211; `None` when
/// empty or when there is no MSH.
fn msh_18(bytes: &[u8]) -> Result<Option<Charset>, Error> {
    let Some(msh) = bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .map(|line| line.trim_ascii_start())
        .find(|line| line.starts_with(b"MSH"))
    else {
        return Ok(None);
    };
    let Some(&separator) = msh.get(3) else {
        return Ok(None);
    };
    let mut elements = msh.get(4..).unwrap_or_default().split(|&b| b == separator);
    let encoding = elements.next().unwrap_or_default();
    // elements[0] is MSH-2, so MSH-18 is the 16th element after it.
    let Some(value) = elements.nth(15) else {
        return Ok(None);
    };
    let component = encoding.first().copied();
    let repetition = encoding.get(1).copied();
    let first = value
        .split(|&b| Some(b) == repetition || Some(b) == component)
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if first.is_empty() {
        return Ok(None);
    }
    match std::str::from_utf8(first) {
        Ok(code) => Charset::from_code(code).map(Some),
        Err(_) => Err(Error::UnsupportedCharset {
            code: sanitize(first),
        }),
    }
}

/// Decodes with a charset other than UTF-8/ASCII; `Err(offset)` of the first invalid byte.
fn decode_strict(bytes: &[u8], charset: Charset) -> Result<Cow<'_, str>, usize> {
    let Some(encoding) = charset.encoding() else {
        return Ok(decode_legacy(bytes, charset));
    };
    if let Some(text) = encoding.decode_without_bom_handling_and_without_replacement(bytes) {
        return Ok(text);
    }
    // Slow path, errors only: decode again to find where it went wrong.
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let capacity = decoder
        .max_utf8_buffer_length_without_replacement(bytes.len())
        .unwrap_or(0);
    let mut scratch = String::with_capacity(capacity);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut scratch, true);
    Err(match result {
        DecoderResult::Malformed(bad, after) => {
            read.saturating_sub(usize::from(bad) + usize::from(after))
        }
        DecoderResult::InputEmpty | DecoderResult::OutputFull => read,
    })
}

/// Decoders that can't fail: 8859/1 (as windows-1252) and 8859/9 (exact table).
fn decode_legacy(bytes: &[u8], charset: Charset) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.is_ascii() {
            return Cow::Borrowed(text);
        }
    }
    match charset {
        Charset::Iso8859_9 => Cow::Owned(bytes.iter().map(|&b| latin5_char(b)).collect()),
        _ => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

/// ISO-8859-9 differs from ISO-8859-1 in six positions (Turkish letters).
const LATIN5_DIFFERENCES: [(u8, char); 6] = [
    (0xD0, 'Ğ'),
    (0xDD, 'İ'),
    (0xDE, 'Ş'),
    (0xF0, 'ğ'),
    (0xFD, 'ı'),
    (0xFE, 'ş'),
];

fn latin5_char(b: u8) -> char {
    LATIN5_DIFFERENCES
        .iter()
        .find(|(byte, _)| *byte == b)
        .map_or(char::from(b), |(_, c)| *c)
}

fn latin5_byte(c: char) -> Option<u8> {
    if let Some((byte, _)) = LATIN5_DIFFERENCES.iter().find(|(_, ch)| *ch == c) {
        return Some(*byte);
    }
    let b = u8::try_from(u32::from(c)).ok()?;
    let replaced = LATIN5_DIFFERENCES.iter().any(|(byte, _)| *byte == b);
    (!replaced).then_some(b)
}

/// Encodes `text` (e.g. an ACK) in `charset`. Characters the charset can't represent become
/// `?` (never an HTML character reference: `&` is the subcomponent separator). Borrowed for
/// UTF-8, and for ASCII-only text in any charset.
pub fn encode(text: &str, charset: Charset) -> Cow<'_, [u8]> {
    if charset == Charset::Utf8 || text.is_ascii() {
        return Cow::Borrowed(text.as_bytes());
    }
    match charset {
        Charset::Ascii => Cow::Owned(
            text.chars()
                .map(|c| u8::try_from(c).ok().filter(u8::is_ascii).unwrap_or(b'?'))
                .collect(),
        ),
        Charset::Iso8859_9 => Cow::Owned(
            text.chars()
                .map(|c| latin5_byte(c).unwrap_or(b'?'))
                .collect(),
        ),
        other => match other.encoding() {
            Some(encoding) => Cow::Owned(encode_with(encoding, text)),
            None => Cow::Borrowed(text.as_bytes()),
        },
    }
}

/// encoding_rs without its HTML-style replacement: unmappable characters become `?`, pushed
/// through the encoder so stateful encodings (ISO-2022-JP) switch back to ASCII first.
fn encode_with(encoding: &'static Encoding, text: &str) -> Vec<u8> {
    let mut encoder = encoding.new_encoder();
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut pending: &str = text;
    let mut replacing = false;
    loop {
        let needed = encoder
            .max_buffer_length_from_utf8_without_replacement(pending.len())
            .unwrap_or(pending.len().saturating_mul(4))
            .saturating_add(8);
        out.reserve(needed);
        let input = if replacing { "?" } else { pending };
        let (result, read) =
            encoder.encode_from_utf8_to_vec_without_replacement(input, &mut out, false);
        if replacing {
            replacing = false;
            continue;
        }
        pending = pending.get(read..).unwrap_or_default();
        match result {
            EncoderResult::InputEmpty => break,
            EncoderResult::OutputFull => {}
            EncoderResult::Unmappable(_) => replacing = true,
        }
    }
    out.reserve(8);
    let _ = encoder.encode_from_utf8_to_vec_without_replacement("", &mut out, true);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn msh(charset: &str, body: &[u8]) -> Vec<u8> {
        let mut out =
            format!("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1||||||{charset}\rPID|1||")
                .into_bytes();
        out.extend_from_slice(body);
        out.push(b'\r');
        out
    }

    #[test]
    fn table_0211_codes_and_their_wild_variants_are_recognised() {
        for (code, expected) in [
            ("ASCII", Charset::Ascii),
            ("ISO IR6", Charset::Ascii),
            ("UNICODE UTF-8", Charset::Utf8),
            ("UTF-8", Charset::Utf8),
            ("utf8", Charset::Utf8),
            (" unicode utf-8 ", Charset::Utf8),
            ("8859/1", Charset::Latin1),
            ("8859/1 ", Charset::Latin1),
            ("ISO-8859-1", Charset::Latin1),
            ("iso_8859_1", Charset::Latin1),
            ("8859/2", Charset::Iso8859_2),
            ("8859/9", Charset::Iso8859_9),
            ("8859/15", Charset::Iso8859_15),
            ("ISO-8859-15", Charset::Iso8859_15),
            ("ISO IR14", Charset::ShiftJis),
            ("ISO IR87", Charset::Iso2022Jp),
            ("GB 18030-2000", Charset::Gb18030),
            ("KS X 1001", Charset::EucKr),
            ("CNS 11643-1992", Charset::Big5),
            ("BIG-5", Charset::Big5),
        ] {
            assert_eq!(Charset::from_code(code), Ok(expected), "{code}");
            assert_eq!(Charset::from_code(expected.code()), Ok(expected), "{code}");
        }
    }

    #[test]
    fn utf16_utf32_and_unknown_codes_are_unsupported() {
        for code in [
            "UNICODE",
            "UNICODE UTF-16",
            "UNICODE UTF-32",
            "UTF-16",
            "ISO IR159",
            "8859/10",
            "KLINGON",
            "",
        ] {
            assert!(
                matches!(
                    Charset::from_code(code),
                    Err(Error::UnsupportedCharset { .. })
                ),
                "{code}"
            );
        }
        let long = Charset::from_code("Doe^John DOB 1970-01-01 <script> and far too long");
        let Err(Error::UnsupportedCharset { code }) = long else {
            panic!("{long:?}")
        };
        assert!(code.len() <= 24 && !code.contains(['^', '<']), "{code}");
    }

    #[test]
    fn utf8_message_is_borrowed_without_copying() {
        let raw = msh("UNICODE UTF-8", "Zoë Ångström".as_bytes());
        let (text, charset) = decode(&raw, Charset::Latin1).unwrap();
        assert!(matches!(text, Cow::Borrowed(_)));
        assert_eq!(charset, Charset::Utf8);
        assert!(text.contains("Zoë Ångström"));
    }

    #[test]
    fn latin1_bytes_decode_to_utf8() {
        let raw = msh("8859/1", b"Ren\xE9e M\xFCller");
        let (text, charset) = decode(&raw, Charset::Utf8).unwrap();
        assert_eq!(charset, Charset::Latin1);
        assert!(text.contains("Renée Müller"));
        let raw = msh("8859/1", b"ascii only");
        assert!(matches!(
            decode(&raw, Charset::Utf8).unwrap().0,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn other_table_0211_charsets_decode_through_encoding_rs() {
        let raw = msh("8859/9", b"\xDDstanbul \xFE");
        assert!(
            decode(&raw, Charset::Utf8)
                .unwrap()
                .0
                .contains("İstanbul ş")
        );
        let raw = msh("8859/15", b"\xA4");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains('€'));
        let raw = msh("8859/5", b"\xB8\xD2\xD0\xDD");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains("Иван"));
        let raw = msh("ISO IR87", b"\x1b$B$3$s\x1b(B");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains("こん"));
        let raw = msh("ISO IR14", b"\x82\xb1");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains('こ'));
        let raw = msh("KS X 1001", b"\xc7\xd1");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains('한'));
        let raw = msh("GB 18030-2000", b"\xd6\xd0");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains('中'));
        let raw = msh("BIG-5", b"\xa4\xa4");
        assert!(decode(&raw, Charset::Utf8).unwrap().0.contains('中'));
    }

    #[test]
    fn msh_18_first_repetition_decides() {
        let raw = msh("UTF-8~UNICODE", "é".as_bytes());
        assert_eq!(decode(&raw, Charset::Latin1).unwrap().1, Charset::Utf8);
        let raw = msh("8859/1~UNICODE UTF-8", b"\xE9");
        assert_eq!(decode(&raw, Charset::Utf8).unwrap().1, Charset::Latin1);
    }

    #[test]
    fn empty_msh_18_uses_the_fallback() {
        let raw = msh("", b"\xE9");
        let (text, charset) = decode(&raw, Charset::Latin1).unwrap();
        assert_eq!(charset, Charset::Latin1);
        assert!(text.contains('é'));
        let raw = b"MSH|^~\\&|A|B\rPID|1||\xC3\xA9\r";
        assert_eq!(decode(raw, Charset::Utf8).unwrap().1, Charset::Utf8);
    }

    #[test]
    fn invalid_utf8_is_an_error_when_declared_and_latin1_when_only_the_fallback() {
        let raw = msh("UNICODE UTF-8", b"Ren\xE9e");
        let at = raw.iter().position(|&b| b == 0xE9).unwrap();
        assert_eq!(
            decode(&raw, Charset::Utf8),
            Err(Error::Encoding {
                charset: "UNICODE UTF-8",
                offset: at
            })
        );
        let raw = msh("", b"Ren\xE9e");
        let (text, charset) = decode(&raw, Charset::Utf8).unwrap();
        assert_eq!(charset, Charset::Latin1);
        assert!(text.contains("Renée"));
    }

    #[test]
    fn declared_ascii_with_8bit_bytes_is_read_leniently() {
        let raw = msh("ASCII", "é".as_bytes());
        assert_eq!(decode(&raw, Charset::Latin1).unwrap().1, Charset::Utf8);
        let raw = msh("ASCII", b"\xE9");
        let (text, charset) = decode(&raw, Charset::Utf8).unwrap();
        assert_eq!(charset, Charset::Latin1);
        assert!(text.contains('é'));
        let (_, charset) = decode(&raw, Charset::Iso8859_15).unwrap();
        assert_eq!(charset, Charset::Iso8859_15);
        let raw = msh("ASCII", b"plain");
        assert_eq!(decode(&raw, Charset::Utf8).unwrap().1, Charset::Ascii);
    }

    #[test]
    fn invalid_bytes_in_a_legacy_charset_report_their_offset() {
        let raw = msh("8859/3", b"ok\xA5");
        let at = raw.iter().position(|&b| b == 0xA5).unwrap();
        assert_eq!(
            decode(&raw, Charset::Utf8),
            Err(Error::Encoding {
                charset: "8859/3",
                offset: at
            })
        );
    }

    #[test]
    fn utf8_bom_is_stripped_and_wins_over_msh_18() {
        let mut raw = UTF8_BOM.to_vec();
        raw.extend(msh("8859/1", "é".as_bytes()));
        let (text, charset) = decode(&raw, Charset::Latin1).unwrap();
        assert!(matches!(text, Cow::Borrowed(_)));
        assert!(text.starts_with("MSH|"));
        assert!(text.contains('é'));
        assert_eq!(charset, Charset::Utf8);
        let mut raw = UTF8_BOM.to_vec();
        raw.extend(msh("UNICODE UTF-8", b"\xFF"));
        let at = raw.iter().position(|&b| b == 0xFF).unwrap();
        assert_eq!(
            decode(&raw, Charset::Utf8),
            Err(Error::Encoding {
                charset: "UNICODE UTF-8",
                offset: at
            })
        );
    }

    #[test]
    fn utf16_is_rejected() {
        let utf16: Vec<u8> = "MSH|^~\\&|"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert!(matches!(
            decode(&utf16, Charset::Utf8),
            Err(Error::UnsupportedCharset { .. })
        ));
        let mut with_bom = b"\xFF\xFE".to_vec();
        with_bom.extend(&utf16);
        assert!(matches!(
            decode(&with_bom, Charset::Utf8),
            Err(Error::UnsupportedCharset { .. })
        ));
        let raw = msh("UNICODE UTF-16", b"x");
        assert_eq!(
            decode(&raw, Charset::Utf8),
            Err(Error::UnsupportedCharset {
                code: "UNICODE UTF-16".into()
            })
        );
    }

    #[test]
    fn text_without_msh_uses_the_fallback() {
        let (text, charset) = decode(b"garbage \xE9", Charset::Latin1).unwrap();
        assert_eq!(charset, Charset::Latin1);
        assert_eq!(text, "garbage é");
        assert_eq!(decode(b"", Charset::Utf8).unwrap().0, "");
    }

    #[test]
    fn encode_replaces_unmappable_characters_with_question_marks() {
        assert!(matches!(
            encode("MSA|AA|1", Charset::Latin1),
            Cow::Borrowed(_)
        ));
        assert!(matches!(encode("Zoë", Charset::Utf8), Cow::Borrowed(_)));
        assert_eq!(&*encode("é€中", Charset::Latin1), b"\xE9\x80?");
        assert_eq!(&*encode("é中", Charset::Ascii), b"??");
        assert_eq!(&*encode("İş é", Charset::Iso8859_9), b"\xDD\xFE \xE9");
        assert_eq!(&*encode("Ð", Charset::Iso8859_9), b"?");
        let jis = encode("こ€ん", Charset::Iso2022Jp);
        assert_eq!(decode_strict(&jis, Charset::Iso2022Jp).unwrap(), "こ?ん");
        assert!(jis.ends_with(b"\x1b(B"));
    }

    fn charsets() -> impl Strategy<Value = Charset> {
        prop_oneof![
            Just(Charset::Ascii),
            Just(Charset::Utf8),
            Just(Charset::Latin1),
            Just(Charset::Iso8859_3),
            Just(Charset::Iso8859_9),
            Just(Charset::ShiftJis),
            Just(Charset::Iso2022Jp),
            Just(Charset::Gb18030),
            Just(Charset::EucKr),
            Just(Charset::Big5),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300), fallback in charsets()) {
            let _ = decode(&raw, fallback);
        }

        #[test]
        fn decode_never_panics_on_msh_like_bytes(
            code in "(UNICODE UTF-8|8859/1|8859/3|ISO IR87|ISO IR14|KS X 1001|BIG-5|GB 18030-2000|ASCII|UTF-16|)",
            body in proptest::collection::vec(any::<u8>(), 0..200),
            fallback in charsets(),
        ) {
            let _ = decode(&msh(&code, &body), fallback);
        }

        #[test]
        fn encoded_text_decodes_back_where_representable(text in "[a-zA-Zéü€ßİş|^~&\r]{0,30}", charset in charsets()) {
            let bytes = encode(&text, charset);
            let back = match charset {
                Charset::Utf8 | Charset::Ascii => String::from_utf8_lossy(&bytes).into_owned(),
                other => decode_strict(&bytes, other).unwrap().into_owned(),
            };
            prop_assert_eq!(back.chars().count(), text.chars().count());
            for (a, b) in back.chars().zip(text.chars()) {
                prop_assert!(a == b || a == '?', "{a:?} vs {b:?}");
            }
        }
    }
}
