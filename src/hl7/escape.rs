//! HL7 v2 escape sequences: decoding a leaf value to plain text, and encoding text so that it
//! can be put in a field.
//!
//! Spec: `shared/reference/protocols.md` §2.3. Split on delimiters first, unescape each leaf
//! afterwards ([`crate::hl7::message`] does that order).
//!
//! What [`unescape`] produces, for escape character `\`:
//!
//! | sequence | result |
//! |---|---|
//! | `\F\` `\S\` `\T\` `\R\` `\E\` | field, component, subcomponent, repetition, escape character |
//! | `\P\` | truncation character (v2.7+); kept literally when the message has none |
//! | `\Xhhhh…\` | the hex bytes, as UTF-8 when they are valid UTF-8, else as ISO-8859-1 (one char per byte); the text was already decoded from the message charset, so UTF-8 is the best reading of multi-byte hex and Latin-1 of single bytes such as `\XE9\` |
//! | `\.br\` | `"\n"` |
//! | `\.sp n\` | `n` × `"\n"` (`\.sp\` = one), at most [`MAX_REPEAT`] |
//! | `\.sk n\` | `n` spaces (`\.sk\` = one), at most [`MAX_REPEAT`] |
//! | `\.ce\` | `"\n"` (the spec: end the current line, centre the next) |
//! | `\H\` `\N\` `\.fi\` `\.nf\` `\.in ±n\` `\.ti ±n\` | dropped: highlighting, fill and indent have no plain-text form |
//! | `\Zxxx\` `\Cxxyy\` `\Mxxyyzz\`, unknown, malformed or unterminated | kept literally, escape characters included |
//!
//! The repeat cap keeps a 12-byte `\.sp 99999\` from turning into 100 kB: unescaped output is at
//! most `MAX_REPEAT` times the input, and usually smaller than the input.
//!
//! [`escape`] is the inverse for everything that could break the structure: the escape
//! character first (`\E\`), then the delimiters (`\F\ \S\ \T\ \R\ \P\`), and CR/LF as `\X0D\` /
//! `\X0A\` so that a value can never end a segment. `unescape(escape(x)) == x` for every `x`
//! (property-tested below).
//!
//! Both return `Cow::Borrowed` when there is nothing to do, which is the common case.

use std::borrow::Cow;

use super::message::Delimiters;

/// Upper bound for the count of `\.sp n\` and `\.sk n\`.
pub const MAX_REPEAT: usize = 100;

/// Decodes the escape sequences in one leaf value. Never fails: what it can't decode it keeps.
///
/// Borrowed when `raw` contains no escape character (or the delimiters have none).
pub fn unescape<'a>(raw: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    let Some(first) = raw.find(esc) else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    let (head, mut rest) = raw.split_at_checked(first).unwrap_or((raw, ""));
    out.push_str(head);
    // Invariant: `rest` is empty or starts with the escape character.
    while let Some(after) = rest.strip_prefix(esc) {
        let Some(end) = after.find(esc) else {
            // Unterminated: keep the remainder as it is.
            out.push_str(rest);
            return Cow::Owned(out);
        };
        let (sequence, tail) = after.split_at_checked(end).unwrap_or((after, ""));
        if !decode_sequence(sequence, d, &mut out) {
            out.push(esc);
            out.push_str(sequence);
            out.push(esc);
        }
        let tail = tail.strip_prefix(esc).unwrap_or(tail);
        let next = tail.find(esc).unwrap_or(tail.len());
        let (plain, escaped) = tail.split_at_checked(next).unwrap_or((tail, ""));
        out.push_str(plain);
        rest = escaped;
    }
    Cow::Owned(out)
}

/// Writes the text for one escape sequence (without its escape characters) to `out`. Returns
/// false when the sequence is to be kept literally.
fn decode_sequence(sequence: &str, d: &Delimiters, out: &mut String) -> bool {
    let single = |c: Option<char>, out: &mut String| c.map(|c| out.push(c)).is_some();
    match sequence {
        "F" => single(Some(d.field), out),
        "S" => single(Some(d.component), out),
        "T" => single(d.subcomponent, out),
        "R" => single(Some(d.repetition), out),
        "E" => single(d.escape, out),
        "P" => single(d.truncation, out),
        "H" | "N" | ".fi" | ".nf" => true,
        ".br" | ".ce" => single(Some('\n'), out),
        _ => {
            if let Some(hex) = sequence.strip_prefix('X') {
                decode_hex(hex, out)
            } else if let Some(arg) = sequence.strip_prefix(".sp") {
                repeat(arg, '\n', out)
            } else if let Some(arg) = sequence.strip_prefix(".sk") {
                repeat(arg, ' ', out)
            } else if let Some(arg) = sequence
                .strip_prefix(".in")
                .or_else(|| sequence.strip_prefix(".ti"))
            {
                let arg = arg.trim();
                let digits = arg.strip_prefix(['+', '-']).unwrap_or(arg);
                arg.is_empty() || (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            } else {
                false
            }
        }
    }
}

/// `\.sp n\` / `\.sk n\`: `n` copies of `c` (no argument = 1), capped at [`MAX_REPEAT`].
fn repeat(arg: &str, c: char, out: &mut String) -> bool {
    let arg = arg.trim();
    let digits = arg.strip_prefix('+').unwrap_or(arg);
    let count = if arg.is_empty() {
        1
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and overflow means "more than the cap".
        digits.parse::<usize>().unwrap_or(MAX_REPEAT)
    } else {
        return false;
    };
    out.extend(std::iter::repeat_n(c, count.min(MAX_REPEAT)));
    true
}

/// `\Xhh…\`: pairs of hex digits → bytes → UTF-8 if valid, else ISO-8859-1.
fn decode_hex(hex: &str, out: &mut String) -> bool {
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let nibble = |b: u8| match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => b.wrapping_sub(b'A').wrapping_add(10),
            };
            pair.iter().fold(0u8, |acc, &b| (acc << 4) | nibble(b))
        })
        .collect();
    match std::str::from_utf8(&bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.extend(bytes.iter().map(|&b| char::from(b))),
    }
    true
}

/// Escapes `text` for use as one leaf value: escape character first, then the delimiters, then
/// CR/LF (as hex). Borrowed when nothing needs escaping, or when the delimiters have no escape
/// character (then nothing can be escaped).
pub fn escape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(text);
    };
    let code = |c: char| -> Option<&'static str> {
        // Order matters only for odd delimiter sets where two roles share a character; the
        // escape character is checked first as the spec requires.
        if c == esc {
            Some("E")
        } else if c == d.field {
            Some("F")
        } else if c == d.component {
            Some("S")
        } else if Some(c) == d.subcomponent {
            Some("T")
        } else if c == d.repetition {
            Some("R")
        } else if Some(c) == d.truncation {
            Some("P")
        } else if c == '\r' {
            Some("X0D")
        } else if c == '\n' {
            Some("X0A")
        } else {
            None
        }
    };
    if !text.chars().any(|c| code(c).is_some()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match code(c) {
            Some(code) => {
                out.push(esc);
                out.push_str(code);
                out.push(esc);
            }
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn d() -> Delimiters {
        Delimiters {
            truncation: Some('#'),
            ..Delimiters::default()
        }
    }

    fn un(raw: &str) -> String {
        unescape(raw, &d()).into_owned()
    }

    #[test]
    fn delimiter_escapes_decode_to_the_delimiters() {
        assert_eq!(un("a\\F\\b"), "a|b");
        assert_eq!(un("a\\S\\b"), "a^b");
        assert_eq!(un("a\\T\\b"), "a&b");
        assert_eq!(un("a\\R\\b"), "a~b");
        assert_eq!(un("a\\E\\b"), "a\\b");
        assert_eq!(un("a\\P\\b"), "a#b");
        assert_eq!(un("\\F\\\\S\\\\T\\\\R\\\\E\\\\P\\"), "|^&~\\#");
    }

    #[test]
    fn delimiter_escapes_follow_the_message_delimiters() {
        let odd = Delimiters {
            field: '!',
            component: '@',
            repetition: '*',
            escape: Some('$'),
            subcomponent: Some('%'),
            truncation: None,
        };
        assert_eq!(unescape("$F$$S$$T$$R$$E$", &odd), "!@%*$");
        assert_eq!(unescape("\\F\\", &odd), "\\F\\");
        assert_eq!(unescape("$P$", &odd), "$P$");
    }

    #[test]
    fn hex_escapes_decode_as_utf8_or_latin1() {
        assert_eq!(un("line1\\X0D0A\\line2"), "line1\r\nline2");
        assert_eq!(un("\\X0D\\"), "\r");
        assert_eq!(un("\\X0a\\"), "\n");
        assert_eq!(un("caf\\XC3A9\\"), "café");
        assert_eq!(un("caf\\XE9\\"), "café");
        assert_eq!(un("\\X\\"), "\\X\\");
        assert_eq!(un("\\X0\\"), "\\X0\\");
        assert_eq!(un("\\XZZ\\"), "\\XZZ\\");
    }

    #[test]
    fn formatting_escapes_become_plain_text() {
        assert_eq!(un("a\\.br\\b"), "a\nb");
        assert_eq!(un("a\\.sp 3\\b"), "a\n\n\nb");
        assert_eq!(un("a\\.sp\\b"), "a\nb");
        assert_eq!(un("a\\.sp+2\\b"), "a\n\nb");
        assert_eq!(un("a\\.sk 2\\b"), "a  b");
        assert_eq!(un("a\\.ce\\b"), "a\nb");
        assert_eq!(un("\\H\\bold\\N\\"), "bold");
        assert_eq!(un("\\.fi\\a\\.nf\\"), "a");
        assert_eq!(un("\\.in +4\\a\\.ti -2\\b\\.in\\"), "ab");
        assert_eq!(un("\\.sp x\\"), "\\.sp x\\");
        assert_eq!(un("\\.in 4x\\"), "\\.in 4x\\");
    }

    #[test]
    fn repeat_counts_are_capped() {
        assert_eq!(un("\\.sp 99999999999999999999999\\").len(), MAX_REPEAT);
        assert_eq!(un("\\.sk 1000\\").len(), MAX_REPEAT);
    }

    #[test]
    fn local_charset_unknown_and_unterminated_sequences_are_kept() {
        assert_eq!(un("\\Zlocal\\"), "\\Zlocal\\");
        assert_eq!(un("\\C2842\\x"), "\\C2842\\x");
        assert_eq!(un("\\M2442\\"), "\\M2442\\");
        assert_eq!(un("\\Q\\"), "\\Q\\");
        assert_eq!(un("\\\\"), "\\\\");
        assert_eq!(un("a\\F"), "a\\F");
        assert_eq!(un("a\\"), "a\\");
        assert_eq!(un("\\Zx\\\\F\\"), "\\Zx\\|");
    }

    #[test]
    fn unescape_borrows_when_there_is_no_escape_character() {
        assert!(matches!(unescape("plain^text", &d()), Cow::Borrowed(_)));
        let none = Delimiters {
            escape: None,
            ..d()
        };
        assert!(matches!(unescape("a\\F\\b", &none), Cow::Borrowed(_)));
    }

    #[test]
    fn escape_covers_escape_char_delimiters_and_line_breaks() {
        assert_eq!(
            escape("a|b^c&d~e\\f#g", &d()),
            "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\P\\g"
        );
        assert_eq!(escape("1\r\n2", &d()), "1\\X0D\\\\X0A\\2");
        assert!(matches!(escape("plain", &d()), Cow::Borrowed(_)));
        assert_eq!(escape("#", &Delimiters::default()), "#");
    }

    fn delimiter_sets() -> impl Strategy<Value = Delimiters> {
        let odd = Delimiters {
            field: '!',
            component: '@',
            repetition: '*',
            escape: Some('$'),
            subcomponent: Some('%'),
            truncation: Some('.'),
        };
        prop_oneof![Just(Delimiters::default()), Just(d()), Just(odd)]
    }

    proptest! {
        #[test]
        fn unescape_inverts_escape(text in any::<String>(), d in delimiter_sets()) {
            let escaped = escape(&text, &d);
            prop_assert_eq!(unescape(&escaped, &d), text.as_str());
        }

        #[test]
        fn unescape_inverts_escape_on_delimiter_heavy_text(
            text in "[|^~\\\\&#!@*$%.a-zXEFSTRP \r\n]{0,40}",
            d in delimiter_sets(),
        ) {
            let escaped = escape(&text, &d);
            prop_assert!(!escaped.contains(['\r', '\n']));
            prop_assert_eq!(unescape(&escaped, &d), text.as_str());
        }

        #[test]
        fn unescape_never_panics_and_stays_bounded(text in any::<String>(), d in delimiter_sets()) {
            let out = unescape(&text, &d);
            prop_assert!(out.len() <= text.len().max(1) * MAX_REPEAT);
        }
    }
}
