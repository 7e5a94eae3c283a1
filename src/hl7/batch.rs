//! Splitting a payload or file into its HL7 v2 messages: FHS/BHS/BTS/FTS batches and
//! header-less files of back-to-back MSH messages.
//!
//! Spec: `shared/reference/protocols.md` §2.7. Works on raw bytes, before charset decoding
//! (every supported charset is ASCII-compatible for segment ids and terminators), so each
//! message can then be decoded with its own MSH-18.
//!
//! ```text
//! FHS|…                 ─┐ file header    (is_batch)
//! BHS|…                  │ batch header   (is_batch)
//! MSH|… ┐                │
//! PID|… ├ messages[0]    │ a message runs from its MSH to the next MSH/FHS/BHS/BTS/FTS
//! OBX|… ┘                │ or the end; terminators and blank lines inside it are kept
//! MSH|… ─ messages[1]    │
//! BTS|2                  │ batch trailer: BTS-1 adds to declared_messages
//! FTS|1                 ─┘ file trailer
//! ```
//!
//! A segment starts at offset 0, after a CR or LF, and after a UTF-8 BOM there (files that were
//! concatenated keep their BOMs). Non-blank segments outside any message (text before the first
//! MSH, or between a BHS and the first MSH) are counted in `stray_segments` and dropped.
//! Never fails and never panics: bytes that contain no MSH give an empty `messages`.

use std::fmt;

/// The messages of one payload or file.
///
/// `Debug` prints counts only (the message bytes are PHI).
#[derive(Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    /// Each message's complete bytes, from `MSH` to the end of its last segment (terminators
    /// kept).
    pub messages: Vec<&'a [u8]>,
    /// True when an FHS or BHS segment was present.
    pub is_batch: bool,
    /// Sum of BTS-1 (batch message count) over the BTS segments that carry a number; `None`
    /// when none does. Compare with `messages.len()` to detect a truncated batch.
    pub declared_messages: Option<u64>,
    /// Non-blank segments outside any message (e.g. garbage before the first MSH).
    pub stray_segments: usize,
}

impl fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.messages.len())
            .field("is_batch", &self.is_batch)
            .field("declared_messages", &self.declared_messages)
            .field("stray_segments", &self.stray_segments)
            .finish()
    }
}

/// What a segment means to the splitter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Msh,
    Header,
    Bts,
    Fts,
    Other,
    Blank,
}

/// Splits `raw` into messages. See the module docs for the rules.
pub fn split(raw: &[u8]) -> Batch<'_> {
    let mut batch = Batch {
        messages: Vec::new(),
        is_batch: false,
        declared_messages: None,
        stray_segments: 0,
    };
    // Start offset of the message being collected, and the end of its last non-blank segment
    // including that segment's terminator.
    let mut current: Option<(usize, usize)> = None;
    let mut offset = 0;
    while offset < raw.len() {
        let rest = raw.get(offset..).unwrap_or_default();
        let line_len = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let line = rest.get(..line_len).unwrap_or_default();
        let terminator = match rest.get(line_len..) {
            Some([b'\r', b'\n', ..]) => 2,
            Some([_, ..]) => 1,
            _ => 0,
        };
        let (bom, segment) = match line.strip_prefix(b"\xEF\xBB\xBF") {
            Some(segment) => (3, segment),
            None => (0, line),
        };
        let end = offset + line_len + terminator;
        match kind(segment) {
            Kind::Blank => {}
            Kind::Msh => {
                close(&mut batch, raw, current.take());
                current = Some((offset + bom, end));
            }
            Kind::Other => match current.as_mut() {
                Some((_, last)) => *last = end,
                None => batch.stray_segments += 1,
            },
            boundary => {
                close(&mut batch, raw, current.take());
                match boundary {
                    Kind::Header => batch.is_batch = true,
                    Kind::Bts => {
                        if let Some(count) = bts_1(segment) {
                            let sum = batch.declared_messages.unwrap_or(0).saturating_add(count);
                            batch.declared_messages = Some(sum);
                        }
                    }
                    _ => {}
                }
            }
        }
        offset = end;
    }
    close(&mut batch, raw, current);
    batch
}

fn close<'a>(batch: &mut Batch<'a>, raw: &'a [u8], message: Option<(usize, usize)>) {
    if let Some(bytes) = message.and_then(|(start, end)| raw.get(start..end)) {
        batch.messages.push(bytes);
    }
}

fn kind(segment: &[u8]) -> Kind {
    if segment.iter().all(|b| b.is_ascii_whitespace()) {
        return Kind::Blank;
    }
    // "MSH" only when followed by a non-alphanumeric byte (its field separator) or nothing.
    let id = match segment {
        [a, b, c] => [*a, *b, *c],
        [a, b, c, next, ..] if !next.is_ascii_alphanumeric() => [*a, *b, *c],
        _ => return Kind::Other,
    };
    match &id {
        b"MSH" => Kind::Msh,
        b"FHS" | b"BHS" => Kind::Header,
        b"BTS" => Kind::Bts,
        b"FTS" => Kind::Fts,
        _ => Kind::Other,
    }
}

/// BTS-1, the batch message count, when it is a number.
fn bts_1(segment: &[u8]) -> Option<u64> {
    let separator = *segment.get(3)?;
    let field = segment.get(4..)?.split(|&b| b == separator).next()?;
    let digits = std::str::from_utf8(field).ok()?.trim();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn texts<'a>(batch: &Batch<'a>) -> Vec<&'a str> {
        batch
            .messages
            .iter()
            .map(|m| std::str::from_utf8(m).unwrap())
            .collect()
    }

    #[test]
    fn fhs_bhs_batch_is_split_into_its_messages() {
        let raw = b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\rMSH|^~\\&|A|||||||ORU^R01|1|P|2.5\rPID|1\rMSH|^~\\&|A|||||||ORU^R01|2|P|2.5\rOBX|1\rBTS|2\rFTS|1\r";
        let batch = split(raw);
        assert!(batch.is_batch);
        assert_eq!(
            texts(&batch),
            [
                "MSH|^~\\&|A|||||||ORU^R01|1|P|2.5\rPID|1\r",
                "MSH|^~\\&|A|||||||ORU^R01|2|P|2.5\rOBX|1\r"
            ]
        );
        assert_eq!(batch.declared_messages, Some(2));
        assert_eq!(batch.stray_segments, 0);
    }

    #[test]
    fn bts_1_counts_are_summed_over_batches() {
        let raw = b"BHS|^~\\&\nMSH|^~\\&|1\nBTS|1\nBHS|^~\\&\nMSH|^~\\&|2\nMSH|^~\\&|3\nBTS| 2 |comment\nFTS|2\n";
        let batch = split(raw);
        assert_eq!(batch.messages.len(), 3);
        assert_eq!(batch.declared_messages, Some(3));
        let raw = b"BHS|^~\\&\nMSH|^~\\&|1\nBTS||no count\n";
        assert_eq!(split(raw).declared_messages, None);
        let raw = b"BHS|^~\\&\nMSH|^~\\&|1\nBTS|one\n";
        assert_eq!(split(raw).declared_messages, None);
    }

    #[test]
    fn headerless_multi_msh_file_is_split_at_each_msh() {
        let raw = b"MSH|^~\\&|A\nPID|1\n\nMSH|^~\\&|B\r\nPID|2\r\nMSH|^~\\&|C";
        let batch = split(raw);
        assert!(!batch.is_batch);
        assert_eq!(
            texts(&batch),
            [
                "MSH|^~\\&|A\nPID|1\n",
                "MSH|^~\\&|B\r\nPID|2\r\n",
                "MSH|^~\\&|C"
            ]
        );
        assert_eq!(batch.declared_messages, None);
    }

    #[test]
    fn single_message_is_one_message_with_terminators_kept() {
        let raw = b"MSH|^~\\&|A\rPID|1\r\r\n";
        let batch = split(raw);
        assert_eq!(texts(&batch), ["MSH|^~\\&|A\rPID|1\r"]);
    }

    #[test]
    fn garbage_before_the_first_msh_is_counted_as_stray() {
        let raw = b"junk line\r\nmore junk\r\n\r\nMSH|^~\\&|A\rPID|1\r";
        let batch = split(raw);
        assert_eq!(batch.stray_segments, 2);
        assert_eq!(texts(&batch), ["MSH|^~\\&|A\rPID|1\r"]);
        let raw = b"BHS|^~\\&\rNTE|between\rMSH|^~\\&|A\rBTS|1\rNTE|after\r";
        assert_eq!(split(raw).stray_segments, 2);
    }

    #[test]
    fn boms_at_segment_starts_are_skipped() {
        let raw = b"\xEF\xBB\xBFMSH|^~\\&|A\n\xEF\xBB\xBFMSH|^~\\&|B\n";
        let batch = split(raw);
        assert_eq!(texts(&batch), ["MSH|^~\\&|A\n", "MSH|^~\\&|B\n"]);
    }

    #[test]
    fn msh_must_be_a_whole_segment_id() {
        let raw = b"MSH|^~\\&|A\rMSHX|not a header\r MSH|indented\rXMSH|1\r";
        let batch = split(raw);
        assert_eq!(batch.messages.len(), 1);
        assert_eq!(split(b"MSH").messages, [b"MSH".as_slice()]);
    }

    #[test]
    fn empty_and_blank_input_has_no_messages() {
        for raw in [&b""[..], b"\r\n\r\n", b"   \n\t\n", b"\xEF\xBB\xBF"] {
            let batch = split(raw);
            assert!(batch.messages.is_empty());
            assert_eq!(batch.stray_segments, 0);
            assert!(!batch.is_batch);
        }
    }

    #[test]
    fn debug_prints_counts_only() {
        let text = format!("{:?}", split(b"MSH|^~\\&|SECRET\r"));
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("messages: 1"), "{text}");
    }

    proptest! {
        #[test]
        fn split_never_panics_and_messages_start_with_msh(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let batch = split(&raw);
            for message in &batch.messages {
                prop_assert!(message.starts_with(b"MSH"));
            }
        }

        #[test]
        fn split_never_panics_on_segment_soup(
            parts in proptest::collection::vec(
                "(MSH\\|\\^~\\\\&|FHS\\||BHS\\||BTS\\|[0-9 ]{0,3}|FTS\\||PID\\||\r|\n|\r\n|\u{feff}|x|\\|)",
                0..40,
            )
        ) {
            let raw = parts.concat();
            let batch = split(raw.as_bytes());
            let msh_lines = raw.split(['\r', '\n']).filter(|l| kind(l.strip_prefix('\u{feff}').unwrap_or(l).as_bytes()) == Kind::Msh).count();
            prop_assert_eq!(batch.messages.len(), msh_lines);
        }
    }
}
