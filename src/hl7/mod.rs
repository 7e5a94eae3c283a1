//! HL7 v2 message model: bytes → text → zero-copy views, and the one parse error type.
//!
//! Implements the ER7 ("pipe") encoding of `shared/reference/protocols.md` §2:
//! delimiters from MSH-1/MSH-2 (§2.1), segment/field/repetition/component/subcomponent
//! structure (§2.2), escape sequences (§2.3), null vs empty (§2.4), the MSH summary (§2.5),
//! MSH-18 character sets (§2.6), FHS/BHS batches (§2.7) and the union of versions 2.1–2.8 (§2.8).
//!
//! The path of an inbound payload is:
//!
//! ```text
//! raw bytes ──batch::split──▶ one &[u8] per message ──charset::decode──▶ Cow<str> (UTF-8)
//!           ──Message::parse──▶ Message (segment index) ──▶ Segment ▶ Field ▶ Repetition ▶ Component
//!                                                         └─header()─▶ Header (MSH summary)
//! ```
//!
//! Invariants kept by every function in this module:
//!
//! - **No panic on any input.** No `unwrap`, no indexing that can fail; the text is only sliced
//!   at positions of ASCII delimiter bytes the code found itself. Property tests feed arbitrary
//!   bytes through every function.
//! - **Zero copy.** Views borrow the decoded text; the only allocations are the segment index
//!   (one `Vec`) and unescaped text when an escape sequence is present (`Cow::Owned`).
//! - **No PHI in errors.** [`Error`] carries segment ids, field numbers, byte offsets and
//!   charset codes, never a value from the message; the `Debug` output of the views prints
//!   sizes and segment ids only.
//! - **Versions are not policed here.** The parser accepts the union of 2.1–2.8; deciding what
//!   to do with a version is the caller's business.

pub mod ack;
pub mod batch;
pub mod charset;
pub mod escape;
pub mod message;

pub use charset::Charset;
pub use message::{Component, Delimiters, Field, Header, Message, Repetition, Segment};

/// Why a payload could not be decoded or parsed as an HL7 v2 message.
///
/// Messages are lowercase and never include a value from the message (no PHI): only segment
/// ids, field numbers, byte offsets and table-0211 charset codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No bytes, or only whitespace / a byte-order mark.
    #[error("message is empty")]
    Empty,
    /// The text does not start with `MSH` (after a BOM and leading whitespace).
    #[error("message does not start with an MSH segment")]
    MissingMsh,
    /// MSH-1/MSH-2 are missing or invalid: fewer than 4 or more than 5 encoding characters, a
    /// delimiter used twice, alphanumeric, whitespace or not ASCII.
    #[error("MSH-1/MSH-2: invalid delimiters")]
    BadDelimiters,
    /// A segment id is not 3 ASCII uppercase letters/digits followed by the field separator or
    /// the end of the segment.
    #[error("segment {index}: invalid segment id")]
    BadSegment {
        /// 0-based position of the segment in the message (blank lines not counted).
        index: usize,
    },
    /// A required header field is empty or null: `"MSH-9"`, `"MSH-10"` or `"MSH-12"`.
    #[error("{field}: required field is empty")]
    MissingField {
        /// The field, written `SEG-n`.
        field: &'static str,
    },
    /// MSH-18 names a character set this gateway does not decode (UTF-16/32, unknown codes).
    #[error("MSH-18: unsupported character set {code}")]
    UnsupportedCharset {
        /// The MSH-18 value, reduced to at most 24 characters of `A-Z a-z 0-9 space / - _ .`
        /// so that a misused field cannot smuggle content into logs.
        code: String,
    },
    /// The bytes are not valid in the declared character set.
    #[error("bytes invalid for character set {charset} at offset {offset}")]
    Encoding {
        /// Canonical table-0211 code of the declared character set.
        charset: &'static str,
        /// Byte offset of the first invalid byte in the raw payload.
        offset: usize,
    },
}

impl Error {
    /// HL7 table 0357 code for ERR-3 (and ERR-1.4 before v2.5).
    ///
    /// 100 segment sequence error (no MSH, empty, unreadable segment), 101 required field
    /// missing, 102 data type error (delimiters, bytes not valid in the charset), 103 table
    /// value not found (MSH-18 not in the table-0211 codes we decode).
    pub fn hl7_code(&self) -> u16 {
        match self {
            Error::Empty | Error::MissingMsh | Error::BadSegment { .. } => 100,
            Error::MissingField { .. } => 101,
            Error::BadDelimiters | Error::Encoding { .. } => 102,
            Error::UnsupportedCharset { .. } => 103,
        }
    }

    /// ERR-2 location, when one field is to blame: (segment id, segment sequence 1-based,
    /// field position), e.g. `("MSH", 1, 10)`.
    pub fn location(&self) -> Option<(&'static str, u16, u16)> {
        match self {
            Error::BadDelimiters => Some(("MSH", 1, 2)),
            Error::UnsupportedCharset { .. } => Some(("MSH", 1, 18)),
            Error::MissingField { field } => {
                let (segment, number) = field.split_once('-')?;
                Some((segment, 1, number.parse().ok()?))
            }
            Error::Empty
            | Error::MissingMsh
            | Error::BadSegment { .. }
            | Error::Encoding { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn missing_field_location_points_at_the_msh_field() {
        let err = Error::MissingField { field: "MSH-10" };
        assert_eq!(err.location(), Some(("MSH", 1, 10)));
        assert_eq!(err.hl7_code(), 101);
        assert_eq!(Error::BadDelimiters.location(), Some(("MSH", 1, 2)));
        assert_eq!(Error::BadSegment { index: 2 }.location(), None);
    }

    #[test]
    fn error_texts_are_lowercase_and_carry_no_message_values() {
        let raw =
            b"MSH|^~\\&|SECRETAPP|||||||SECRETID|P|2.5\rPID|1||SECRETMRN\rbad segment SECRET\r";
        let text = std::str::from_utf8(raw).unwrap();
        let mut errors = vec![
            Message::parse(text).unwrap_err(),
            Message::parse("MSH|^~\\&|SECRET")
                .unwrap()
                .header()
                .unwrap_err(),
            Message::parse("SECRET|x").unwrap_err(),
            Message::parse("MSH|SECRET|").unwrap_err(),
            Message::parse("").unwrap_err(),
            charset::decode(
                b"MSH|^~\\&||||||||||||||||UNICODE UTF-8\rPID|SECRET\xFF",
                Charset::Utf8,
            )
            .unwrap_err(),
            charset::decode(b"MSH|^~\\&||||||||||||||||SECRET<>^&~", Charset::Utf8).unwrap_err(),
        ];
        errors.push(Error::MissingMsh);
        for err in errors {
            let display = err.to_string();
            assert!(!display.contains("SECRET") || matches!(err, Error::UnsupportedCharset { .. }));
            assert!(!display.ends_with('.'), "{display}");
            assert!(matches!(err.hl7_code(), 100..=103), "{display}");
        }
        // The charset code is table data, but even a misused MSH-18 is cut short and stripped.
        let err = charset::decode(
            b"MSH|^~\\&||||||||||||||||Doe^John~born 1970-01-01 at St Mary's",
            Charset::Utf8,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "MSH-18: unsupported character set Doe");
    }

    /// Visits every view and every unescaped text; returns how many leaves it saw.
    fn walk(message: &Message<'_>) -> usize {
        let mut leaves = 0;
        if let Ok(header) = message.header() {
            leaves += header.structure().len().min(1);
        }
        for segment in message.segments() {
            let count = segment.field_count();
            let by_index: Vec<&str> = (1..=count).map(|n| segment.field(n).raw()).collect();
            let by_iter: Vec<&str> = segment.fields().map(|f| f.raw()).collect();
            assert_eq!(by_index, by_iter);
            assert!(segment.field(count + 1).is_empty());
            for field in segment.fields() {
                let _ = (field.text(), field.is_null(), field.component(2).text());
                for repetition in field.repetitions() {
                    let _ = repetition.text();
                    assert_eq!(
                        repetition.component_count(),
                        repetition.components().count()
                    );
                    for component in repetition.components() {
                        let _ = component.text();
                        for (i, sub) in component.subcomponents().enumerate() {
                            assert_eq!(component.subcomponent(i + 1), sub);
                            let _ = component.subcomponent_text(i + 1);
                            leaves += 1;
                        }
                    }
                }
            }
        }
        leaves
    }

    fn split_decode_parse(raw: &[u8]) -> Vec<Result<usize, Error>> {
        batch::split(raw)
            .messages
            .iter()
            .map(|bytes| {
                let (text, _) = charset::decode(bytes, Charset::Latin1)?;
                let message = Message::parse(&text)?;
                message.header()?;
                Ok(walk(&message))
            })
            .collect()
    }

    const ESCAPES: &[u8] =
        include_bytes!("../../tests/fixtures/hl7/oru_r01_escapes_all_sequences.hl7");

    #[test]
    fn fixture_with_every_escape_sequence_unescapes_per_section_2_3() {
        let (text, charset) = charset::decode(ESCAPES, Charset::Ascii).unwrap();
        assert_eq!(charset, Charset::Utf8);
        let message = Message::parse(&text).unwrap();
        assert_eq!(message.delimiters().truncation, Some('#'));
        let value = |set_id: &str| {
            let obx = message
                .segments_named("OBX")
                .find(|s| s.field(1).raw() == set_id)
                .unwrap();
            obx.field(5).text().into_owned()
        };
        assert_eq!(
            value("1"),
            "pipe | caret ^ amp & tilde ~ backslash \\ hash #"
        );
        assert_eq!(
            value("2"),
            "line1\nline2\n\nline3   indented\ncentred bold plain end"
        );
        assert_eq!(value("3"), "crlf\r\nutf8 café latin1 café");
        assert_eq!(
            value("4"),
            "local \\Zfoo\\ sb \\C2842\\ mb \\M2442\\ unknown \\Q\\ unterminated \\F"
        );
        let obx5 = message.segments_named("OBX").nth(4).unwrap();
        assert!(obx5.field(5).is_null());
        assert!(obx5.field(6).is_empty() && !obx5.field(6).is_null());
        assert!(obx5.field(8).is_null());
        assert_eq!(message.header().unwrap().version, "2.8");
    }

    #[test]
    fn fixture_in_8859_1_decodes_to_utf8_names() {
        let raw = include_bytes!("../../tests/fixtures/hl7/adt_a01_8859_1_latin1_names.hl7");
        let (text, charset) = charset::decode(raw, Charset::Utf8).unwrap();
        assert_eq!(charset, Charset::Latin1);
        let message = Message::parse(&text).unwrap();
        let name = message.segment("PID").unwrap().field(5);
        assert_eq!(name.component(1).text(), "Müller");
        assert_eq!(name.component(2).text(), "Renée");
        assert_eq!(message.header().unwrap().charset, "8859/1");
    }

    #[test]
    fn fixture_batch_splits_into_two_messages_matching_bts_1() {
        let raw = include_bytes!("../../tests/fixtures/hl7/oru_r01_batch_fhs_bhs_two_messages.hl7");
        let batch = batch::split(raw);
        assert!(batch.is_batch);
        assert_eq!(batch.declared_messages, Some(2));
        assert_eq!(batch.stray_segments, 0);
        let ids: Vec<String> = batch
            .messages
            .iter()
            .map(|m| {
                let (text, _) = charset::decode(m, Charset::Utf8).unwrap();
                let message = Message::parse(&text).unwrap();
                assert_eq!(message.segments().len(), 3);
                message.header().unwrap().control_id.to_owned()
            })
            .collect();
        assert_eq!(ids, ["BAT-0001", "BAT-0002"]);
    }

    #[test]
    fn fixture_headerless_file_with_mixed_terminators_splits_and_parses() {
        let raw = include_bytes!(
            "../../tests/fixtures/hl7/oru_r01_headerless_multi_msh_mixed_terminators.hl7"
        );
        let batch = batch::split(raw);
        assert!(!batch.is_batch);
        assert_eq!(batch.stray_segments, 1);
        assert_eq!(batch.messages.len(), 2);
        for bytes in &batch.messages {
            let (text, _) = charset::decode(bytes, Charset::Utf8).unwrap();
            let message = Message::parse(&text).unwrap();
            let ids: Vec<&str> = message.segments().iter().map(|s| s.id()).collect();
            assert_eq!(ids, ["MSH", "PID", "OBX"]);
            let header = message.header().unwrap();
            assert_eq!(
                (header.version, header.structure().as_str()),
                ("2.3", "ORU_R01")
            );
        }
    }

    #[test]
    fn fixture_with_bom_and_repeated_msh_18_is_borrowed_utf8() {
        let raw =
            include_bytes!("../../tests/fixtures/hl7/oru_r01_utf8_bom_lf_repeated_msh_18.hl7");
        let (text, charset) = charset::decode(raw, Charset::Latin1).unwrap();
        assert!(matches!(text, Cow::Borrowed(_)));
        assert_eq!(charset, Charset::Utf8);
        let message = Message::parse(&text).unwrap();
        assert_eq!(message.header().unwrap().charset, "UNICODE UTF-8");
        let pid5 = message.segment("PID").unwrap().field(5);
        assert_eq!(pid5.component(1).text(), "Østergård");
    }

    #[test]
    fn fixture_without_control_id_parses_but_has_no_header() {
        let raw = include_bytes!("../../tests/fixtures/hl7/adt_a01_msh_missing_control_id.hl7");
        let results = split_decode_parse(raw);
        assert_eq!(results, [Err(Error::MissingField { field: "MSH-10" })]);
    }

    /// Byte soup biased towards HL7 structure, so that the parser gets past the MSH checks.
    fn hl7ish_bytes() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"MSH|^~\\&|".to_vec()),
            Just(b"MSH|^~\\&#|".to_vec()),
            Just(b"MSH|^~\\\\&|".to_vec()),
            Just(b"||||||||UNICODE UTF-8".to_vec()),
            Just(b"|||||||||8859/1~UTF-8".to_vec()),
            Just(b"ORU^R01^ORU_R01|ID|P|2.5.1".to_vec()),
            Just(b"FHS|^~\\&".to_vec()),
            Just(b"BHS|".to_vec()),
            Just(b"BTS|2".to_vec()),
            Just(b"FTS|".to_vec()),
            Just(b"PID|".to_vec()),
            Just(b"OBX|".to_vec()),
            Just(b"\"\"".to_vec()),
            Just(b"\\X0D0A\\".to_vec()),
            Just(b"\\XC3\\".to_vec()),
            Just(b"\\.sp 5\\".to_vec()),
            Just(b"\\F\\".to_vec()),
            Just(b"\\Zx\\".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just("é".as_bytes().to_vec()),
            Just(b"\xE9".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            "[|^~\\\\&#a-z0-9 ]{1,6}".prop_map(String::into_bytes),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(token, 0..60).prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_through_the_whole_pipeline(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = split_decode_parse(&raw);
            for fallback in [Charset::Utf8, Charset::Ascii, Charset::Latin1] {
                if let Ok((text, _)) = charset::decode(&raw, fallback) {
                    if let Ok(message) = Message::parse(&text) {
                        walk(&message);
                    }
                }
            }
        }

        #[test]
        fn hl7_like_bytes_never_panic_through_the_whole_pipeline(raw in hl7ish_bytes()) {
            let _ = split_decode_parse(&raw);
            if let Ok((text, _)) = charset::decode(&raw, Charset::Utf8) {
                if let Ok(message) = Message::parse(&text) {
                    walk(&message);
                }
            }
        }

        #[test]
        fn well_formed_segments_with_arbitrary_values_parse_and_walk(
            msh2 in "(\\^~\\\\&|\\^~\\\\&#|\\^~\\\\\\\\&)",
            segments in proptest::collection::vec(
                (
                    "(PID|OBX|NTE|ZLR|MSH|BHS)",
                    "[|^~\\\\&#\"a-zA-Z0-9 .+XHNFSTREP\u{e9}\u{4e2d}]{0,60}",
                    "(\r|\n|\r\n|\n\n)",
                ),
                0..12,
            ),
        ) {
            let mut text = format!("MSH|{msh2}|APP\r");
            for (id, value, terminator) in &segments {
                text.push_str(id);
                text.push('|');
                text.push_str(value);
                text.push_str(terminator);
            }
            let message = Message::parse(&text).unwrap();
            prop_assert_eq!(message.segments().len(), segments.len() + 1);
            walk(&message);
        }

        #[test]
        fn arbitrary_text_after_a_valid_msh_never_panics(body in any::<String>()) {
            let text = format!("MSH|^~\\&|{body}");
            let message = Message::parse(&text);
            if let Ok(message) = message {
                walk(&message);
            }
        }
    }
}
