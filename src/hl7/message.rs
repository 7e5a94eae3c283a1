//! Zero-copy views of one HL7 v2 message: `Message` ▶ `Segment` ▶ `Field` ▶ `Repetition` ▶
//! `Component` ▶ subcomponent, all borrowing the decoded text.
//!
//! Spec: `shared/reference/protocols.md` §2.1 (delimiters from MSH-1/MSH-2 and the MSH numbering
//! quirk), §2.2 (structure, segment terminators), §2.4 (null vs empty), §2.5 (MSH fields), §2.8
//! (MSH-9.3 derived when absent in 2.3).
//!
//! Cost model: [`Message::parse`] makes one pass over the text to build the segment index (one
//! `Vec<Segment>`), validates the delimiters and each segment id, and records where each
//! segment's first 32 field separators are (a fixed array inside the `Segment`, no allocation),
//! so `Segment::field(n)` is two array reads; only fields past the 32nd are found by scanning
//! on. Everything below a field (repetitions, components, subcomponents) is split lazily, on
//! access, by scanning for the ASCII delimiter; the `*s()` iterators walk their text once.
//! Nothing allocates except unescaping text that contains the escape character
//! ([`crate::hl7::escape`]).
//!
//! Tolerances (all in the "be liberal in what you accept" sense, none changes a value):
//!
//! - segment terminators CR, LF and CRLF, also mixed in one message; blank and
//!   whitespace-only lines are skipped; a leading UTF-8 BOM and leading whitespace are skipped.
//! - `MSH|^~\\&` (the escape character doubled, a common artefact of string-escaping bugs in
//!   senders) is read as `MSH|^~\&`; MSH-2 still returns the raw text.
//! - a second MSH in the text is just another segment; splitting files into messages is
//!   [`crate::hl7::batch::split`]'s job.
//!
//! Null vs empty (§2.4): `is_empty()` is true for a value absent on the wire (`||`),
//! `is_null()` for the explicit HL7 null `""` (`|""|`). They never overlap.

use std::borrow::Cow;
use std::fmt;

use super::Error;
use super::escape;

// === impl Delimiters ===

/// The message's delimiters, read from MSH-1 (field separator) and MSH-2 (encoding characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator, MSH-1 (usually `|`).
    pub field: char,
    /// Component separator, MSH-2 position 1 (usually `^`).
    pub component: char,
    /// Repetition separator, MSH-2 position 2 (usually `~`).
    pub repetition: char,
    /// Escape character, MSH-2 position 3 (usually `\`); `None` disables escape sequences.
    pub escape: Option<char>,
    /// Subcomponent separator, MSH-2 position 4 (usually `&`); `None`: components don't split.
    pub subcomponent: Option<char>,
    /// Truncation character, MSH-2 position 5 (v2.7+, usually `#`), when present.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    /// `|` `^` `~` `\` `&`, no truncation character.
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: Some('&'),
            truncation: None,
        }
    }
}

impl Delimiters {
    /// The MSH-2 value for these delimiters, e.g. `^~\&` (`^~\&#` with a truncation character),
    /// for building an outbound MSH. Absent optional characters are left out.
    pub fn encoding_characters(&self) -> String {
        let mut out = String::with_capacity(5);
        out.push(self.component);
        out.push(self.repetition);
        out.extend(self.escape);
        out.extend(self.subcomponent);
        out.extend(self.truncation);
        out
    }

    /// Reads MSH-1/MSH-2 from a header segment (`MSH`, `FHS` or `BHS`) at the start of `line`.
    ///
    /// Rules: MSH-1 is the byte after the segment id; MSH-2 runs to the next field separator
    /// (or segment terminator) and holds 4 or 5 characters. Every delimiter must be a printable,
    /// non-alphanumeric ASCII character, and all must differ. The doubled escape quirk
    /// (`^~\\&`) is accepted as described in the module docs.
    pub(crate) fn from_header(line: &str) -> Result<Delimiters, Error> {
        let bytes = line.as_bytes();
        let field = *bytes.get(3).ok_or(Error::BadDelimiters)?;
        let mut enc = [0u8; 6];
        let mut len = 0;
        for &b in bytes.get(4..).unwrap_or_default() {
            if b == field || b == b'\r' || b == b'\n' {
                break;
            }
            let slot = enc.get_mut(len).ok_or(Error::BadDelimiters)?;
            *slot = b;
            len += 1;
        }
        let (component, repetition, escape, subcomponent, truncation) =
            match *enc.get(..len).unwrap_or_default() {
                [c, r, e, s] => (c, r, e, s, None),
                [c, r, e, e2, s] if e == e2 => (c, r, e, s, None),
                [c, r, e, s, t] => (c, r, e, s, Some(t)),
                [c, r, e, e2, s, t] if e == e2 => (c, r, e, s, Some(t)),
                _ => return Err(Error::BadDelimiters),
            };
        let all = [
            Some(field),
            Some(component),
            Some(repetition),
            Some(escape),
            Some(subcomponent),
            truncation,
        ];
        for (i, b) in all.iter().enumerate() {
            let Some(b) = *b else { continue };
            let usable = b.is_ascii_graphic() && !b.is_ascii_alphanumeric();
            let repeated = all.iter().skip(i + 1).any(|other| *other == Some(b));
            if !usable || repeated {
                return Err(Error::BadDelimiters);
            }
        }
        Ok(Delimiters {
            field: char::from(field),
            component: char::from(component),
            repetition: char::from(repetition),
            escape: Some(char::from(escape)),
            subcomponent: Some(char::from(subcomponent)),
            truncation: truncation.map(char::from),
        })
    }
}

// === impl Message ===

/// One parsed HL7 v2 message: the decoded text plus an index of its segments.
///
/// `Debug` prints the segment ids only, never content.
#[derive(Clone)]
pub struct Message<'a> {
    text: &'a str,
    delimiters: Delimiters,
    segments: Vec<Segment<'a>>,
}

impl<'a> Message<'a> {
    /// Parses `text` (already decoded to UTF-8, see [`crate::hl7::charset::decode`]) as ONE
    /// message.
    ///
    /// Segment terminators CR, LF, CRLF and mixes of them are accepted; blank lines are
    /// skipped; a leading BOM and whitespace are tolerated. Errors: [`Error::Empty`],
    /// [`Error::MissingMsh`], [`Error::BadDelimiters`], [`Error::BadSegment`]. Header fields are
    /// checked by [`Message::header`], not here.
    pub fn parse(text: &'a str) -> Result<Message<'a>, Error> {
        let body = text.trim_start_matches(|c: char| c == '\u{feff}' || c.is_whitespace());
        if body.is_empty() {
            return Err(Error::Empty);
        }
        if !body.starts_with("MSH") {
            return Err(Error::MissingMsh);
        }
        let delimiters = Delimiters::from_header(body)?;
        // One segment per ~80 bytes is typical; a good guess saves regrowing the index.
        let mut segments = Vec::with_capacity(body.len() / 64 + 1);
        for line in Lines(Some(body)) {
            if line.trim().is_empty() {
                continue;
            }
            let segment = Segment::new(line, delimiters).ok_or(Error::BadSegment {
                index: segments.len(),
            })?;
            segments.push(segment);
        }
        Ok(Message {
            text,
            delimiters,
            segments,
        })
    }

    /// The text this message was parsed from, exactly as given to [`Message::parse`].
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The delimiters read from MSH-1/MSH-2.
    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }

    /// All segments in order; the first is always the MSH.
    pub fn segments(&self) -> &[Segment<'a>] {
        &self.segments
    }

    /// The first segment with this id (e.g. `"PID"`).
    pub fn segment(&self, id: &str) -> Option<&Segment<'a>> {
        self.segments.iter().find(|s| s.id() == id)
    }

    /// Every segment with this id, in order.
    pub fn segments_named<'s>(&'s self, id: &'s str) -> impl Iterator<Item = &'s Segment<'a>> + 's {
        self.segments.iter().filter(move |s| s.id() == id)
    }

    /// The MSH summary.
    ///
    /// Errors with [`Error::MissingField`] when MSH-9.1 (`"MSH-9"`), MSH-10 (`"MSH-10"`) or
    /// MSH-12.1 (`"MSH-12"`) is empty or the HL7 null `""`, checked in that order.
    pub fn header(&self) -> Result<Header<'a>, Error> {
        let msh = self.segments.first().ok_or(Error::MissingMsh)?;
        let required = |value: &'a str, field: &'static str| {
            if value.is_empty() || value == NULL {
                Err(Error::MissingField { field })
            } else {
                Ok(value)
            }
        };
        let message_type = msh.field(9);
        let message_code = required(message_type.component(1).raw(), "MSH-9")?;
        let control_id = required(msh.field(10).raw(), "MSH-10")?;
        let version = required(msh.field(12).component(1).raw(), "MSH-12")?;
        Ok(Header {
            sending_application: msh.field(3).raw(),
            sending_facility: msh.field(4).raw(),
            receiving_application: msh.field(5).raw(),
            receiving_facility: msh.field(6).raw(),
            date_time: msh.field(7).component(1).raw(),
            message_code,
            trigger_event: message_type.component(2).raw(),
            message_structure: message_type.component(3).raw(),
            control_id,
            processing_id: msh.field(11).component(1).raw(),
            version,
            accept_ack_type: msh.field(15).raw(),
            application_ack_type: msh.field(16).raw(),
            charset: msh.field(18).repetition(1).raw(),
        })
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("bytes", &self.text.len())
            .field("segments", &SegmentIds(&self.segments))
            .finish()
    }
}

/// Prints `[MSH, PID, OBX]` without quotes or content.
struct SegmentIds<'s, 'a>(&'s [Segment<'a>]);

impl fmt::Debug for SegmentIds<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for segment in self.0 {
            list.entry(&format_args!("{}", segment.id()));
        }
        list.finish()
    }
}

/// MSH summary; every value is a raw (still escaped) slice of the input, `""` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// MSH-3 whole (HD with its components).
    pub sending_application: &'a str,
    /// MSH-4 whole.
    pub sending_facility: &'a str,
    /// MSH-5 whole.
    pub receiving_application: &'a str,
    /// MSH-6 whole.
    pub receiving_facility: &'a str,
    /// MSH-7.1, the message date/time (DTM, the first component of a TS before v2.7).
    pub date_time: &'a str,
    /// MSH-9.1, e.g. `ORU`.
    pub message_code: &'a str,
    /// MSH-9.2, e.g. `R01`.
    pub trigger_event: &'a str,
    /// MSH-9.3, e.g. `ORU_R01`; often empty before v2.3.1.
    pub message_structure: &'a str,
    /// MSH-10 raw, to be echoed byte-for-byte in MSA-2.
    pub control_id: &'a str,
    /// MSH-11.1 (P, D or T).
    pub processing_id: &'a str,
    /// MSH-12.1, e.g. `2.5.1`.
    pub version: &'a str,
    /// MSH-15 (AL, NE, ER, SU; empty in original acknowledgment mode).
    pub accept_ack_type: &'a str,
    /// MSH-16 (AL, NE, ER, SU).
    pub application_ack_type: &'a str,
    /// MSH-18, first repetition (the message's character set).
    pub charset: &'a str,
}

impl Header<'_> {
    /// The message structure: MSH-9.3 when present, otherwise derived as `CODE_TRIGGER`
    /// (`ORU_R01`), or just the code when there is no trigger. The derivation is mechanical;
    /// events that share a structure (ADT^A04 uses ADT_A01) are not looked up here.
    pub fn structure(&self) -> String {
        if !self.message_structure.is_empty() {
            self.message_structure.to_owned()
        } else if self.trigger_event.is_empty() {
            self.message_code.to_owned()
        } else {
            format!("{}_{}", self.message_code, self.trigger_event)
        }
    }
}

/// The HL7 explicit null, `""` on the wire (§2.4).
const NULL: &str = "\"\"";

// === impl Segment ===

/// One segment (one line), borrowing the message text.
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    /// The whole line without terminator; starts with a valid 3-character id.
    raw: &'a str,
    delimiters: Delimiters,
    /// MSH, FHS or BHS: field 1 is the separator itself and field 2 is never split.
    header: bool,
    /// Where the fields are: see [`FieldIndex`].
    index: FieldIndex,
}

/// How many field separators a [`Segment`] records at parse time. Covers every field the
/// converter reads in the usual segments (OBX-1..25, the first 32 of PID/PV1/OBR); beyond it,
/// fields are found by scanning on from the last recorded separator.
const INDEXED_SEPARATORS: usize = 32;

/// Byte offsets (in the segment line) of the first field separators after the id's, so
/// `Segment::field(n)` is two array reads instead of a scan of the line. Offsets are `u16`:
/// recording stops at the first separator past 65,535 bytes (a long OBX-5 with encapsulated
/// data), and the rest of such a line is scanned on access as before.
#[derive(Clone, Copy)]
struct FieldIndex {
    /// `seps[..len]`: offsets of field separators 2, 3, … (the one after the id is at 3).
    seps: [u16; INDEXED_SEPARATORS],
    /// How many offsets `seps` holds.
    len: u8,
    /// True when separators after `seps[len - 1]` were not recorded (index full or offsets
    /// too large); false when the text after the last recorded one holds no separator.
    more: bool,
}

impl FieldIndex {
    /// Records the separators in `raw[4..]` (`raw[3]` is the first separator).
    fn new(raw: &str, separator: u8) -> FieldIndex {
        let mut index = FieldIndex {
            seps: [0; INDEXED_SEPARATORS],
            len: 0,
            more: false,
        };
        let mut len = 0usize;
        for (at, &b) in raw.as_bytes().iter().enumerate().skip(4) {
            if b != separator {
                continue;
            }
            match (index.seps.get_mut(len), u16::try_from(at)) {
                (Some(slot), Ok(at)) => {
                    *slot = at;
                    len += 1;
                }
                _ => {
                    index.more = true;
                    break;
                }
            }
        }
        // len <= INDEXED_SEPARATORS (32), so it fits.
        index.len = u8::try_from(len).unwrap_or(u8::MAX);
        index
    }
}

impl<'a> Segment<'a> {
    /// Validates the segment id (3 ASCII uppercase letters/digits, then the field separator or
    /// the end of the line).
    fn new(raw: &'a str, delimiters: Delimiters) -> Option<Segment<'a>> {
        let id = raw.get(..3)?;
        let rest = raw.get(3..)?;
        let id_ok = id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !id_ok || !(rest.is_empty() || rest.starts_with(delimiters.field)) {
            return None;
        }
        // Delimiters are ASCII when read from MSH (`Delimiters::from_header`); a non-ASCII
        // one (built by hand) gets an empty index and every lookup scans.
        let index = match u8::try_from(delimiters.field) {
            Ok(separator) if separator.is_ascii() => FieldIndex::new(raw, separator),
            _ => FieldIndex {
                seps: [0; INDEXED_SEPARATORS],
                len: 0,
                more: true,
            },
        };
        Some(Segment {
            raw,
            delimiters,
            header: matches!(id, "MSH" | "FHS" | "BHS"),
            index,
        })
    }

    /// The segment id, e.g. `PID` or `ZLR`.
    pub fn id(&self) -> &'a str {
        self.raw.get(..3).unwrap_or_default()
    }

    /// The whole segment line, without its terminator.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Field `n`, 1-based as in HL7 (`PID-3` is `field(3)`); an absent field is an empty
    /// `Field`. `field(0)` is the segment id.
    ///
    /// MSH/FHS/BHS numbering quirk (§2.1): `field(1)` is the field separator itself and
    /// `field(2)` the encoding characters; neither is ever split or unescaped; `field(3)` is
    /// MSH-3 and so on.
    pub fn field(&self, n: usize) -> Field<'a> {
        let d = self.delimiters;
        match (n, self.header) {
            (0, _) => Field::literal(self.id(), d),
            (1, true) => Field::literal(self.separator(), d),
            (2, true) => Field::literal(self.element(0), d),
            (n, true) => Field::new(self.element(n - 2), d),
            (n, false) => Field::new(self.element(n - 1), d),
        }
    }

    /// Element `k` (0-based) of [`Segment::elements`], from the index when it covers it.
    fn element(&self, k: usize) -> &'a str {
        if self.separator().is_empty() {
            return "";
        }
        let index = &self.index;
        let len = usize::from(index.len);
        let seps = index.seps.get(..len).unwrap_or_default();
        // Element k starts after separator k (the id's separator at 3 is separator 0).
        let start_of = |k: usize| match k.checked_sub(1) {
            None => Some(4),
            Some(i) => seps.get(i).map(|&at| usize::from(at) + 1),
        };
        if let (Some(start), Some(&end)) = (start_of(k), seps.get(k)) {
            return self.raw.get(start..usize::from(end)).unwrap_or_default();
        }
        // Past the recorded separators: the rest of the line after the last one.
        let Some(tail) = start_of(len).and_then(|start| self.raw.get(start..)) else {
            return "";
        };
        let skip = k - len;
        if index.more {
            Parts::keep_empty(tail, Some(self.delimiters.field))
                .nth(skip)
                .unwrap_or_default()
        } else if skip == 0 {
            tail
        } else {
            ""
        }
    }

    /// The highest field number present (trailing empty fields count when their separator is
    /// on the wire).
    pub fn field_count(&self) -> usize {
        if self.separator().is_empty() {
            return 0;
        }
        let elements = self.elements().count();
        if self.header { elements + 1 } else { elements }
    }

    /// Fields `1..=field_count()`, in order, in one pass over the segment.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + use<'a> {
        let d = self.delimiters;
        let header = self.header;
        let separator =
            (header && !self.separator().is_empty()).then(|| Field::literal(self.separator(), d));
        let elements = self.elements().enumerate().map(move |(i, raw)| {
            if header && i == 0 {
                Field::literal(raw, d)
            } else {
                Field::new(raw, d)
            }
        });
        separator.into_iter().chain(elements)
    }

    /// The field separator as it appears after the id (`""` for a bare id like `PID`).
    fn separator(&self) -> &'a str {
        self.raw.get(3..4).unwrap_or_default()
    }

    /// The `|`-separated elements after the id and the first separator; none for a bare id.
    /// The recorded ones come from the index, the rest from a scan of the remaining text.
    fn elements(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let seg = *self;
        let (indexed, tail) = if self.separator().is_empty() {
            (0, Parts::none())
        } else {
            let len = usize::from(self.index.len);
            let start = match len.checked_sub(1) {
                None => Some(4),
                Some(i) => self.index.seps.get(i).map(|&at| usize::from(at) + 1),
            };
            match start.and_then(|start| self.raw.get(start..)) {
                Some(rest) => (len, Parts::keep_empty(rest, Some(self.delimiters.field))),
                None => (0, Parts::none()),
            }
        };
        (0..indexed).map(move |k| seg.element(k)).chain(tail)
    }
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id())
            .field("fields", &self.field_count())
            .finish()
    }
}

// === impl Field ===

/// One field (all its repetitions), borrowing the message text.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    /// MSH-1/MSH-2 (and segment ids): never split, never unescaped.
    literal: bool,
}

impl<'a> Field<'a> {
    fn new(raw: &'a str, delimiters: Delimiters) -> Self {
        Field {
            raw,
            delimiters,
            literal: false,
        }
    }

    fn literal(raw: &'a str, delimiters: Delimiters) -> Self {
        Field {
            raw,
            delimiters,
            literal: true,
        }
    }

    /// The raw (still escaped) field text, all repetitions included.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// True when nothing was sent (`||`): the receiver keeps what it has.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// True for the explicit HL7 null `""`: the receiver should delete its value (§2.4).
    pub fn is_null(&self) -> bool {
        self.raw == NULL
    }

    /// The repetitions, in order; an empty field has none.
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + use<'a> {
        let (d, literal) = (self.delimiters, self.literal);
        let separator = (!literal).then_some(d.repetition);
        Parts::skip_empty(self.raw, separator).map(move |raw| Repetition {
            raw,
            delimiters: d,
            literal,
        })
    }

    /// Repetition `n`, 1-based; absent (or `n == 0`) → an empty `Repetition`.
    pub fn repetition(&self, n: usize) -> Repetition<'a> {
        let raw = n
            .checked_sub(1)
            .and_then(|i| self.repetitions().nth(i))
            .map(|r| r.raw)
            .unwrap_or_default();
        Repetition {
            raw,
            delimiters: self.delimiters,
            literal: self.literal,
        }
    }

    /// Component `n` (1-based) of the first repetition.
    pub fn component(&self, n: usize) -> Component<'a> {
        self.repetition(1).component(n)
    }

    /// The first repetition, unescaped as a whole (component separators are kept).
    pub fn text(&self) -> Cow<'a, str> {
        self.repetition(1).text()
    }
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("len", &self.raw.len())
            .finish()
    }
}

// === impl Repetition ===

/// One repetition of a field, borrowing the message text.
#[derive(Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    literal: bool,
}

impl<'a> Repetition<'a> {
    /// The raw (still escaped) text of this repetition.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// True when nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// True for the explicit HL7 null `""`.
    pub fn is_null(&self) -> bool {
        self.raw == NULL
    }

    /// Component `n`, 1-based; absent (or `n == 0`) → an empty `Component`.
    pub fn component(&self, n: usize) -> Component<'a> {
        let raw = n
            .checked_sub(1)
            .and_then(|i| self.components().nth(i))
            .map(|c| c.raw)
            .unwrap_or_default();
        Component {
            raw,
            delimiters: self.delimiters,
            literal: self.literal,
        }
    }

    /// The components, in order; an empty repetition has none.
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + use<'a> {
        let (d, literal) = (self.delimiters, self.literal);
        let separator = (!literal).then_some(d.component);
        Parts::skip_empty(self.raw, separator).map(move |raw| Component {
            raw,
            delimiters: d,
            literal,
        })
    }

    /// Number of components (0 for an empty repetition).
    pub fn component_count(&self) -> usize {
        self.components().count()
    }

    /// This repetition unescaped as a whole (component separators are kept).
    pub fn text(&self) -> Cow<'a, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            escape::unescape(self.raw, &self.delimiters)
        }
    }
}

impl fmt::Debug for Repetition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repetition")
            .field("len", &self.raw.len())
            .finish()
    }
}

// === impl Component ===

/// One component of a repetition, borrowing the message text.
#[derive(Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    literal: bool,
}

impl<'a> Component<'a> {
    /// The raw (still escaped) text of this component, subcomponent separators included.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// True when nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// True for the explicit HL7 null `""`.
    pub fn is_null(&self) -> bool {
        self.raw == NULL
    }

    /// Subcomponent `n` raw, 1-based; absent (or `n == 0`) → `""`.
    pub fn subcomponent(&self, n: usize) -> &'a str {
        n.checked_sub(1)
            .and_then(|i| self.subcomponents().nth(i))
            .unwrap_or_default()
    }

    /// The raw subcomponents, in order; an empty component has none.
    pub fn subcomponents(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let separator = if self.literal {
            None
        } else {
            self.delimiters.subcomponent
        };
        Parts::skip_empty(self.raw, separator)
    }

    /// This component unescaped (subcomponent separators are kept as they are).
    pub fn text(&self) -> Cow<'a, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            escape::unescape(self.raw, &self.delimiters)
        }
    }

    /// Subcomponent `n` (1-based) unescaped.
    pub fn subcomponent_text(&self, n: usize) -> Cow<'a, str> {
        let raw = self.subcomponent(n);
        if self.literal {
            Cow::Borrowed(raw)
        } else {
            escape::unescape(raw, &self.delimiters)
        }
    }
}

impl fmt::Debug for Component<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component")
            .field("len", &self.raw.len())
            .finish()
    }
}

// === splitting helpers ===

/// Splits on one delimiter character without allocating. `find(char)` is memchr-backed, and the
/// text is only cut at positions it returned, so cutting can't fail.
#[derive(Clone)]
struct Parts<'a> {
    rest: Option<&'a str>,
    separator: Option<char>,
}

impl<'a> Parts<'a> {
    /// Empty text → one empty part (field lists: `PID|` has a field 1).
    fn keep_empty(text: &'a str, separator: Option<char>) -> Self {
        Parts {
            rest: Some(text),
            separator,
        }
    }

    /// Empty text → no parts (an empty field has no repetitions).
    fn skip_empty(text: &'a str, separator: Option<char>) -> Self {
        Parts {
            rest: (!text.is_empty()).then_some(text),
            separator,
        }
    }

    fn none() -> Self {
        Parts {
            rest: None,
            separator: None,
        }
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let cut = self.separator.and_then(|sep| {
            let at = match u8::try_from(sep) {
                // An ASCII byte is always a whole character: a plain byte scan is enough and,
                // for the short parts of HL7 text, cheaper than `str::find`.
                Ok(b) if b.is_ascii() => rest.bytes().position(|c| c == b)?,
                _ => rest.find(sep)?,
            };
            let (head, tail) = rest.split_at_checked(at)?;
            Some((head, tail.get(sep.len_utf8()..)?))
        });
        match cut {
            Some((head, tail)) => {
                self.rest = Some(tail);
                Some(head)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Splits text into lines on CR, LF or CRLF (each CR and each LF ends a line; the empty line
/// between CR and LF is skipped by the caller like any blank line).
struct Lines<'a>(Option<&'a str>);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'\r' || b == b'\n') {
            Some(at) => {
                let (line, tail) = rest.split_at_checked(at)?;
                self.0 = tail.get(1..);
                Some(line)
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ORU: &str = "MSH|^~\\&|LAB^1.2.3^ISO|HOSP|GW|CLOUD|20240102030405+0100||ORU^R01^ORU_R01|CTRL-1|P|2.5.1|||AL|NE||UNICODE UTF-8\r\
PID|1||12345^^^HOSP&1.2.3&ISO^MR~67890^^^SSA^SS||\"\"||19700101|F\r\
OBX|1|NM|8867-4^Heart rate^LN||72|/min^^UCUM|60-100|N|||F\r";

    fn parse(text: &str) -> Message<'_> {
        Message::parse(text).unwrap()
    }

    #[test]
    fn delimiters_come_from_msh_1_and_msh_2() {
        let msg = parse("MSH!@#$%!A!B\rPID!x@y#z$w\r");
        let d = msg.delimiters();
        assert_eq!(
            d,
            Delimiters {
                field: '!',
                component: '@',
                repetition: '#',
                escape: Some('$'),
                subcomponent: Some('%'),
                truncation: None,
            }
        );
        let pid = msg.segment("PID").unwrap();
        assert_eq!(pid.field(1).repetition(1).component(2).raw(), "y");
        assert_eq!(pid.field(1).repetition(2).raw(), "z$w");
        assert_eq!(msg.segment("MSH").unwrap().field(3).raw(), "A");
    }

    #[test]
    fn truncation_character_is_read_from_the_fifth_encoding_character() {
        let msg = parse("MSH|^~\\&#|A\r");
        assert_eq!(msg.delimiters().truncation, Some('#'));
        assert_eq!(msg.delimiters().encoding_characters(), "^~\\&#");
        assert_eq!(Delimiters::default().encoding_characters(), "^~\\&");
    }

    #[test]
    fn invalid_delimiters_are_rejected() {
        for text in [
            "MSH",
            "MSH|",
            "MSH||",
            "MSH|^~\\|",
            "MSH|^~\\&#!|",
            "MSH|^^\\&|",
            "MSH|^~|&|",
            "MSH|^~\\A|",
            "MSHA^~\\&|",
            "MSH|^ \\&|",
            "MSH|^~\\é|",
            "MSH\r^~\\&",
        ] {
            assert_eq!(
                Message::parse(text).err(),
                Some(Error::BadDelimiters),
                "{text:?}"
            );
        }
    }

    #[test]
    fn doubled_escape_character_in_msh_2_is_read_as_one() {
        let msg = parse("MSH|^~\\\\&|SE050|050\rPID|1||A^B&C\r");
        assert_eq!(msg.delimiters(), Delimiters::default());
        assert_eq!(msg.segments()[0].field(2).raw(), "^~\\\\&");
        assert_eq!(msg.segments()[0].field(3).raw(), "SE050");
        let pid = msg.segment("PID").unwrap();
        assert_eq!(pid.field(3).component(2).subcomponent(2), "C");
    }

    #[test]
    fn msh_field_numbering_counts_the_separator_as_msh_1() {
        let msg = parse(ORU);
        let msh = &msg.segments()[0];
        assert_eq!(msh.field(0).raw(), "MSH");
        assert_eq!(msh.field(1).raw(), "|");
        assert_eq!(msh.field(2).raw(), "^~\\&");
        assert_eq!(msh.field(3).raw(), "LAB^1.2.3^ISO");
        assert_eq!(msh.field(10).raw(), "CTRL-1");
        assert_eq!(msh.field(18).raw(), "UNICODE UTF-8");
        assert_eq!(msh.field_count(), 18);
        let all: Vec<&str> = msh.fields().map(|f| f.raw()).collect();
        assert_eq!(all.len(), 18);
        assert_eq!(all[0], "|");
        assert_eq!(all[1], "^~\\&");
        assert_eq!(all[9], "CTRL-1");
    }

    #[test]
    fn msh_2_is_never_split_or_unescaped() {
        let msg = parse(ORU);
        let enc = msg.segments()[0].field(2);
        assert_eq!(enc.repetitions().count(), 1);
        assert_eq!(enc.component(1).raw(), "^~\\&");
        assert_eq!(enc.component(1).subcomponents().count(), 1);
        assert_eq!(enc.text(), "^~\\&");
        assert!(matches!(enc.text(), Cow::Borrowed(_)));
    }

    #[test]
    fn other_segments_number_fields_from_the_first_separator() {
        let msg = parse(ORU);
        let obx = msg.segment("OBX").unwrap();
        assert_eq!(obx.field(0).raw(), "OBX");
        assert_eq!(obx.field(1).raw(), "1");
        assert_eq!(obx.field(3).component(2).raw(), "Heart rate");
        assert_eq!(obx.field(11).raw(), "F");
        assert_eq!(obx.field_count(), 11);
        assert!(obx.field(12).is_empty());
        assert!(obx.field(usize::MAX).is_empty());
        assert_eq!(obx.fields().count(), 11);
    }

    /// `field(n)` by a plain split of the line, as the index must agree with it.
    fn naive_field(line: &str, n: usize) -> &str {
        let header = ["MSH", "FHS", "BHS"].contains(&&line[..3]);
        let parts: Vec<&str> = match line.get(4..) {
            Some(rest) => rest.split('|').collect(),
            None => Vec::new(),
        };
        let k = if header { n - 2 } else { n - 1 };
        parts.get(k).copied().unwrap_or("")
    }

    #[test]
    fn field_index_agrees_with_a_plain_split_past_its_size_and_u16_offsets() {
        let long = "x".repeat(70_000);
        let mut lines = vec![
            "NTE".to_owned(),
            "NTE|".to_owned(),
            "NTE||".to_owned(),
            format!("OBX|1|ED|x||{long}|u|r"),
            format!("OBX|{long}|2|3"),
            format!("OBX|{long}"),
            format!("MSH|^~\\&|{long}|a|b"),
        ];
        for fields in [1, 2, 31, 32, 33, 34, 40, 64, 70] {
            let values: Vec<String> = (1..=fields).map(|i| format!("v{i}é")).collect();
            lines.push(format!("PV1|{}", values.join("|")));
            lines.push(format!("PV1|{}|", values.join("|")));
            lines.push(format!("MSH|^~\\&|{}", values.join("|")));
        }
        for line in &lines {
            let text = if line.starts_with("MSH") {
                line.clone()
            } else {
                format!("MSH|^~\\&\r{line}")
            };
            let msg = parse(&text);
            let seg = msg.segments().last().unwrap();
            let first = if seg.id() == "MSH" { 2 } else { 1 };
            for n in first..80 {
                assert_eq!(seg.field(n).raw(), naive_field(line, n), "field {n}");
            }
            let walked: Vec<&str> = seg.fields().map(|f| f.raw()).collect();
            assert_eq!(walked.len(), seg.field_count());
            for (i, raw) in walked.iter().enumerate() {
                assert_eq!(seg.field(i + 1).raw(), *raw, "field {}", i + 1);
            }
        }
    }

    #[test]
    fn repetitions_components_and_subcomponents_split_lazily() {
        let msg = parse(ORU);
        let pid3 = msg.segment("PID").unwrap().field(3);
        assert_eq!(pid3.repetitions().count(), 2);
        let first = pid3.repetition(1);
        assert_eq!(first.component_count(), 5);
        assert_eq!(first.component(1).raw(), "12345");
        assert!(first.component(2).is_empty());
        let authority = first.component(4);
        assert_eq!(authority.raw(), "HOSP&1.2.3&ISO");
        assert_eq!(
            authority.subcomponents().collect::<Vec<_>>(),
            ["HOSP", "1.2.3", "ISO"]
        );
        assert_eq!(authority.subcomponent(3), "ISO");
        assert_eq!(authority.subcomponent(4), "");
        assert_eq!(authority.subcomponent(0), "");
        assert_eq!(pid3.repetition(2).component(5).raw(), "SS");
        assert!(pid3.repetition(3).is_empty());
        assert!(pid3.repetition(0).is_empty());
        assert!(first.component(0).is_empty());
    }

    #[test]
    fn explicit_null_is_distinct_from_empty() {
        let msg = parse(ORU);
        let pid = msg.segment("PID").unwrap();
        let null = pid.field(5);
        assert!(null.is_null());
        assert!(!null.is_empty());
        let empty = pid.field(4);
        assert!(empty.is_empty());
        assert!(!empty.is_null());
        assert!(pid.field(99).is_empty());
        assert!(!pid.field(99).is_null());
        assert!(null.repetition(1).is_null());
        assert!(null.component(1).is_null());
        let msg = parse("MSH|^~\\&|\rOBX|1|ST|x||\"\"^\"\"&x\r");
        let value = msg.segment("OBX").unwrap().field(5);
        assert!(!value.is_null());
        assert!(value.component(1).is_null());
        assert!(!value.component(2).is_null());
        assert_eq!(value.component(2).subcomponent(1), "\"\"");
    }

    #[test]
    fn empty_field_has_no_repetitions_and_empty_repetition_no_components() {
        let msg = parse("MSH|^~\\&\rNTE|1||\r");
        let nte = msg.segment("NTE").unwrap();
        assert_eq!(nte.field(3).repetitions().count(), 0);
        assert_eq!(nte.field(3).repetition(1).component_count(), 0);
        assert_eq!(nte.field(3).component(1).subcomponents().count(), 0);
        assert_eq!(nte.field_count(), 3);
    }

    #[test]
    fn text_unescapes_but_raw_does_not() {
        let msg = parse("MSH|^~\\&\rNTE|1||Na\\T\\K 5\\S\\7^second\\F\\~rep2\r");
        let field = msg.segment("NTE").unwrap().field(3);
        assert_eq!(field.raw(), "Na\\T\\K 5\\S\\7^second\\F\\~rep2");
        assert_eq!(field.text(), "Na&K 5^7^second|");
        assert_eq!(field.component(1).text(), "Na&K 5^7");
        assert_eq!(field.component(2).text(), "second|");
        assert_eq!(field.repetition(2).text(), "rep2");
        let msg = parse("MSH|^~\\&\rNTE|1||a\\E\\b&c\\T\\d\r");
        let comp = msg.segment("NTE").unwrap().field(3).component(1);
        assert_eq!(comp.subcomponent_text(1), "a\\b");
        assert_eq!(comp.subcomponent_text(2), "c&d");
        assert!(matches!(
            msg.segment("NTE").unwrap().field(1).text(),
            Cow::Borrowed("1")
        ));
    }

    #[test]
    fn lf_crlf_and_mixed_terminators_give_the_same_segments() {
        let cr = "MSH|^~\\&|A\rPID|1\rOBX|1\r";
        let variants = [
            cr.to_owned(),
            cr.replace('\r', "\n"),
            cr.replace('\r', "\r\n"),
            "MSH|^~\\&|A\r\nPID|1\nOBX|1\r".to_owned(),
            "MSH|^~\\&|A\n\n\rPID|1\r\n\r\n  \nOBX|1".to_owned(),
        ];
        for text in &variants {
            let msg = parse(text);
            let raws: Vec<&str> = msg.segments().iter().map(|s| s.raw()).collect();
            assert_eq!(raws, ["MSH|^~\\&|A", "PID|1", "OBX|1"], "{text:?}");
        }
    }

    #[test]
    fn leading_bom_and_whitespace_are_skipped() {
        let msg = parse("\u{feff}\r\n  MSH|^~\\&|A\rPID|1");
        assert_eq!(msg.segments().len(), 2);
        assert_eq!(msg.segments()[0].field(3).raw(), "A");
        assert!(msg.as_str().starts_with('\u{feff}'));
    }

    #[test]
    fn empty_and_non_msh_texts_are_rejected() {
        assert_eq!(Message::parse("").err(), Some(Error::Empty));
        assert_eq!(Message::parse(" \r\n\t\u{feff}").err(), Some(Error::Empty));
        assert_eq!(Message::parse("PID|1").err(), Some(Error::MissingMsh));
        assert_eq!(Message::parse("FHS|^~\\&").err(), Some(Error::MissingMsh));
        assert_eq!(Message::parse("msh|^~\\&").err(), Some(Error::MissingMsh));
    }

    #[test]
    fn bad_segment_ids_are_reported_with_their_index() {
        for (text, index) in [
            ("MSH|^~\\&\rPID|1\rpid|2\r", 2),
            ("MSH|^~\\&\rPI\r", 1),
            ("MSH|^~\\&\rPIDX|1\r", 1),
            ("MSH|^~\\&\rPID^1\r", 1),
            ("MSH|^~\\&\r\n\r\nwrapped text|||\r", 1),
            ("MSH|^~\\&\rPÏD|1\r", 1),
        ] {
            assert_eq!(
                Message::parse(text).err(),
                Some(Error::BadSegment { index }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn z_segments_bare_ids_and_second_msh_are_plain_segments() {
        let msg = parse("MSH|^~\\&|A\rZLR|x\rNTE\rMSH|^~\\&|B\r");
        let ids: Vec<&str> = msg.segments().iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "ZLR", "NTE", "MSH"]);
        let nte = msg.segment("NTE").unwrap();
        assert_eq!(nte.field_count(), 0);
        assert_eq!(nte.fields().count(), 0);
        assert!(nte.field(1).is_empty());
        assert_eq!(msg.segments_named("MSH").count(), 2);
        assert_eq!(
            msg.segments_named("MSH").nth(1).unwrap().field(3).raw(),
            "B"
        );
        assert!(msg.segment("PID").is_none());
    }

    #[test]
    fn header_summarises_msh() {
        let msg = parse(ORU);
        let h = msg.header().unwrap();
        assert_eq!(
            h,
            Header {
                sending_application: "LAB^1.2.3^ISO",
                sending_facility: "HOSP",
                receiving_application: "GW",
                receiving_facility: "CLOUD",
                date_time: "20240102030405+0100",
                message_code: "ORU",
                trigger_event: "R01",
                message_structure: "ORU_R01",
                control_id: "CTRL-1",
                processing_id: "P",
                version: "2.5.1",
                accept_ack_type: "AL",
                application_ack_type: "NE",
                charset: "UNICODE UTF-8",
            }
        );
        assert_eq!(h.structure(), "ORU_R01");
    }

    #[test]
    fn header_derives_the_structure_when_msh_9_3_is_absent() {
        let msg = parse("MSH|^~\\&|||||200001011200||ADT^A01|1|P|2.3");
        let h = msg.header().unwrap();
        assert_eq!(h.message_structure, "");
        assert_eq!(h.structure(), "ADT_A01");
        assert_eq!(h.charset, "");
        let msg = parse("MSH|^~\\&|||||||ACK|1|P|2.1");
        assert_eq!(msg.header().unwrap().structure(), "ACK");
    }

    #[test]
    fn header_takes_the_first_repetition_of_msh_18() {
        let msg = parse("MSH|^~\\&|||||||ORU^R01|1|P|2.5.1||||||UTF-8~UNICODE");
        assert_eq!(msg.header().unwrap().charset, "UTF-8");
    }

    #[test]
    fn header_reports_missing_msh_9_10_and_12() {
        for (text, field) in [
            ("MSH|^~\\&|||||||^R01|1|P|2.5", "MSH-9"),
            ("MSH|^~\\&|||||||\"\"|1|P|2.5", "MSH-9"),
            ("MSH|^~\\&|||||||ORU^R01||P|2.5", "MSH-10"),
            ("MSH|^~\\&|||||||ORU^R01|1|P", "MSH-12"),
            ("MSH|^~\\&|||||||ORU^R01|1|P|^x", "MSH-12"),
            ("MSH|^~\\&", "MSH-9"),
        ] {
            let msg = parse(text);
            assert_eq!(msg.header(), Err(Error::MissingField { field }), "{text:?}");
        }
    }

    #[test]
    fn debug_output_shows_structure_but_no_values() {
        let msg = parse(ORU);
        let all = format!(
            "{msg:?} {:?} {:?} {:?} {:?}",
            msg.segments()[1],
            msg.segments()[1].field(3),
            msg.segments()[1].field(3).repetition(1),
            msg.segments()[1].field(3).component(1),
        );
        assert!(all.contains("PID"), "{all}");
        for secret in ["12345", "19700101", "Heart", "CTRL-1", "LAB"] {
            assert!(!all.contains(secret), "{all}");
        }
    }
}
