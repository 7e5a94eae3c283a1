//! ASTM E1394 (CLSI LIS2-A2) messages: records, delimiters, escapes and the
//! header/patient/order/result hierarchy (protocols.md §7.6).
//!
//! ```text
//!  bytes ──decode──▶ &str ──Message::parse──▶ Message
//!                                              ├─ header: Record (H; defines the delimiters)
//!                                              ├─ patients: [PatientGroup { patient: P,
//!                                              │     orders: [OrderGroup { order: O,
//!                                              │        results: [ResultGroup { result: R,
//!                                              │                                comments: [C] }] }] }]
//!                                              ├─ queries (Q), manufacturer (M), other (S, unknown)
//!                                              ├─ terminator: L
//!                                              └─ warnings (record number + what, never a value)
//! ```
//!
//! Rules kept here:
//! - The delimiters are the four characters after `H` (`H|\^&` → field `|`, repeat `\`,
//!   component `^`, escape `&`); a header without an escape character is accepted.
//! - Records end with CR; LF and CR LF are accepted too (files and logs often use them).
//!   Empty lines are skipped. Record type ids are case-insensitive.
//! - Record numbers are 1-based positions in the message (H = 1), counting non-empty lines;
//!   field numbers are 1-based with the record type as field 1 (so `R-3` is the universal test
//!   id, as in the standard's tables). `H-2` is the delimiter definition and is never split.
//! - A comment (C) belongs to the nearest preceding non-comment record. Records out of the
//!   standard order (an O before any P, an R before any O) are kept under an implicit parent
//!   and reported; records after L, or after a second H, are ignored and reported
//!   ([`split`] separates several messages first).
//! - Escapes (escape character `&`): `&F&` `&S&` `&R&` `&E&` become the delimiter, `&H&`/`&N&`
//!   (highlight on/off) are removed, `&Xhh..&` becomes the bytes it encodes (ISO 8859-1), local
//!   `&Z..&` and anything unknown or unterminated stay as written.
//!
//! Invariants: no panic on any input (slicing only at ASCII delimiter positions the code found
//! itself; property tests feed arbitrary bytes); views borrow the decoded text and copy only
//! when an escape is present; [`Error`] and [`Warning`] name record numbers and fields, never a
//! value; `Debug` of the views prints record types and sizes only.

use std::borrow::Cow;
use std::fmt;

/// ISO 8859-1 (LIS2-A2 data is single-byte Latin-1) or UTF-8 when the bytes are valid UTF-8.
pub fn decode(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(raw.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Why a text is not an E1394 message. Never holds a value from the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No record at all.
    #[error("message is empty")]
    Empty,
    /// The first record is not an H record.
    #[error("record 1: not a header (H) record")]
    MissingHeader,
    /// H-1/H-2 do not define usable delimiters (missing, alphanumeric, repeated, CR/LF).
    #[error("record 1, H-2: invalid delimiter definition")]
    BadDelimiters,
}

/// Something in the message that was tolerated; located by record number only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record {record}: {kind}")]
pub struct Warning {
    /// 1-based record number (H = 1).
    pub record: usize,
    /// What.
    pub kind: WarningKind,
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// A record type E1394 does not define, or a type id not followed by the field
    /// delimiter; kept in [`Message::other`].
    UnknownRecordType,
    /// An O before any P, or an R before any O: kept under an implicit parent.
    OutOfOrder,
    /// A record after the terminator (L) or a second H: ignored.
    AfterTerminator,
    /// The message has no terminator (L) record; `record` is the last record's number.
    MissingTerminator,
}

impl fmt::Display for WarningKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WarningKind::UnknownRecordType => "unknown record type",
            WarningKind::OutOfOrder => "record out of the E1394 order",
            WarningKind::AfterTerminator => "record after the terminator, ignored",
            WarningKind::MissingTerminator => "no terminator (L) record",
        })
    }
}

// === impl Delimiters ===

/// The delimiters of one message (all ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Between fields (`|`).
    pub field: u8,
    /// Between repetitions (`\`).
    pub repeat: u8,
    /// Between components (`^`).
    pub component: u8,
    /// Starts and ends an escape sequence (`&`), when the header defines one.
    pub escape: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Delimiters {
        Delimiters {
            field: b'|',
            repeat: b'\\',
            component: b'^',
            escape: Some(b'&'),
        }
    }
}

fn usable(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

impl Delimiters {
    /// The delimiters defined by an H record (`H|\^&...`).
    pub fn from_header(record: &str) -> Result<Delimiters, Error> {
        let b = record.as_bytes();
        let (field, repeat, component) = match (b.get(1), b.get(2), b.get(3)) {
            (Some(&f), Some(&r), Some(&c)) => (f, r, c),
            _ => return Err(Error::BadDelimiters),
        };
        let escape = b.get(4).copied().filter(|&e| e != field);
        let all = [Some(field), Some(repeat), Some(component), escape];
        let defined: Vec<u8> = all.iter().flatten().copied().collect();
        let distinct = defined
            .iter()
            .enumerate()
            .all(|(i, x)| !defined.iter().skip(i + 1).any(|y| y == x));
        if !distinct || !defined.iter().all(|&d| usable(d)) {
            return Err(Error::BadDelimiters);
        }
        Ok(Delimiters {
            field,
            repeat,
            component,
            escape,
        })
    }
}

/// Replaces the escape sequences of `raw` (see the module documentation).
pub fn unescape(raw: &str, d: Delimiters) -> Cow<'_, str> {
    let Some(e) = d.escape.map(char::from) else {
        return Cow::Borrowed(raw);
    };
    if !raw.contains(e) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(e) {
        out.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start + 1..).unwrap_or_default();
        let Some(len) = after.find(e) else {
            // Unterminated: the rest stays as written.
            out.push_str(rest.get(start..).unwrap_or_default());
            return Cow::Owned(out);
        };
        let seq = after.get(..len).unwrap_or_default();
        match seq {
            "F" => out.push(char::from(d.field)),
            "S" => out.push(char::from(d.component)),
            "R" => out.push(char::from(d.repeat)),
            "E" => out.push(e),
            "H" | "N" => {}
            _ => match hex(seq) {
                Some(bytes) => out.extend(bytes.into_iter().map(char::from)),
                None => {
                    out.push(e);
                    out.push_str(seq);
                    out.push(e);
                }
            },
        }
        rest = after.get(len + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `Xhhhh` → bytes (`None` unless an X followed by an even number of hex digits).
fn hex(seq: &str) -> Option<Vec<u8>> {
    let digits = seq.strip_prefix('X')?.as_bytes();
    if digits.is_empty() || digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|p| {
            let hi = char::from(*p.first()?).to_digit(16)?;
            let lo = char::from(*p.get(1)?).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// True when `raw` holds something besides delimiters and spaces.
fn has_content(raw: &str, d: Delimiters) -> bool {
    raw.bytes()
        .any(|b| b != d.field && b != d.repeat && b != d.component && b != b' ')
}

// === record types ===

/// E1394 record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// H: message header.
    Header,
    /// P: patient information.
    Patient,
    /// O: test order.
    Order,
    /// R: result.
    Result,
    /// C: comment.
    Comment,
    /// Q: request information (host query).
    Query,
    /// M: manufacturer information.
    Manufacturer,
    /// S: scientific.
    Scientific,
    /// L: message terminator.
    Terminator,
    /// Anything else.
    Unknown,
}

impl RecordType {
    fn of(b: u8) -> RecordType {
        match b.to_ascii_uppercase() {
            b'H' => RecordType::Header,
            b'P' => RecordType::Patient,
            b'O' => RecordType::Order,
            b'R' => RecordType::Result,
            b'C' => RecordType::Comment,
            b'Q' => RecordType::Query,
            b'M' => RecordType::Manufacturer,
            b'S' => RecordType::Scientific,
            b'L' => RecordType::Terminator,
            _ => RecordType::Unknown,
        }
    }

    /// The record type id (`H`, `P`, … ; `?` for unknown types).
    pub fn id(self) -> &'static str {
        match self {
            RecordType::Header => "H",
            RecordType::Patient => "P",
            RecordType::Order => "O",
            RecordType::Result => "R",
            RecordType::Comment => "C",
            RecordType::Query => "Q",
            RecordType::Manufacturer => "M",
            RecordType::Scientific => "S",
            RecordType::Terminator => "L",
            RecordType::Unknown => "?",
        }
    }
}

// === views ===

/// One record: a line of the message.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    number: usize,
    kind: RecordType,
    raw: &'a str,
    delimiters: Delimiters,
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Record({} #{}, {} bytes)",
            self.kind.id(),
            self.number,
            self.raw.len()
        )
    }
}

impl<'a> Record<'a> {
    /// A record parsed with the given delimiters (for fragments outside a message).
    pub fn new(number: usize, raw: &'a str, delimiters: Delimiters) -> Record<'a> {
        let kind = match raw.as_bytes() {
            [t] => RecordType::of(*t),
            [t, d, ..] if *d == delimiters.field => RecordType::of(*t),
            _ => RecordType::Unknown,
        };
        Record {
            number,
            kind,
            raw,
            delimiters,
        }
    }

    /// 1-based position in the message (H = 1).
    pub fn number(&self) -> usize {
        self.number
    }

    /// The record type.
    pub fn kind(&self) -> RecordType {
        self.kind
    }

    /// The record text as received.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The delimiters in force.
    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }

    /// Field `n` (1-based; field 1 is the record type id). Absent fields are empty.
    pub fn field(&self, n: usize) -> Field<'a> {
        let raw = n
            .checked_sub(1)
            .and_then(|i| self.raw.split(char::from(self.delimiters.field)).nth(i))
            .unwrap_or("");
        Field {
            raw,
            delimiters: self.delimiters,
            literal: self.kind == RecordType::Header && n == 2,
        }
    }

    /// Number of fields present (trailing empty fields may be omitted by senders).
    pub fn field_count(&self) -> usize {
        self.raw.split(char::from(self.delimiters.field)).count()
    }

    /// Numbers of the fields (from 2 on) that hold something besides delimiters.
    pub fn valued_fields(&self) -> impl Iterator<Item = usize> + '_ {
        self.raw
            .split(char::from(self.delimiters.field))
            .enumerate()
            .skip(1)
            .filter(|(_, f)| has_content(f, self.delimiters))
            .map(|(i, _)| i + 1)
    }
}

/// A field: repetitions of components.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    literal: bool,
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({} bytes)", self.raw.len())
    }
}

impl<'a> Field<'a> {
    /// The field as received (escapes not replaced).
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// True when nothing besides delimiters and spaces is in it.
    pub fn is_empty(&self) -> bool {
        !has_content(self.raw, self.delimiters)
    }

    /// True for `""` (E1394: delete the existing value).
    pub fn is_null(&self) -> bool {
        self.raw.trim() == "\"\""
    }

    /// The whole field with escapes replaced (delimiters inside it stay as written).
    pub fn text(&self) -> Cow<'a, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, self.delimiters)
        }
    }

    /// The repetitions (one for a field without repeat delimiters).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let d = self.delimiters;
        let sep = if self.literal { None } else { Some(d.repeat) };
        let raw = self.raw;
        let mut parts: Vec<&'a str> = match sep {
            Some(s) => raw.split(char::from(s)).collect(),
            None => vec![raw],
        };
        if parts.is_empty() {
            parts.push("");
        }
        parts
            .into_iter()
            .map(move |raw| Repetition { raw, delimiters: d })
    }

    /// Repetition `n` (1-based; empty when absent).
    pub fn repetition(&self, n: usize) -> Repetition<'a> {
        n.checked_sub(1)
            .and_then(|i| self.repetitions().nth(i))
            .unwrap_or(Repetition {
                raw: "",
                delimiters: self.delimiters,
            })
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Component<'a> {
        self.repetition(1).component(n)
    }
}

/// One repetition of a field.
#[derive(Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    delimiters: Delimiters,
}

impl fmt::Debug for Repetition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repetition({} bytes)", self.raw.len())
    }
}

impl<'a> Repetition<'a> {
    /// As received.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// True when nothing besides delimiters and spaces is in it.
    pub fn is_empty(&self) -> bool {
        !has_content(self.raw, self.delimiters)
    }

    /// With escapes replaced (component delimiters stay as written).
    pub fn text(&self) -> Cow<'a, str> {
        unescape(self.raw, self.delimiters)
    }

    /// The components.
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let d = self.delimiters;
        self.raw
            .split(char::from(d.component))
            .map(move |raw| Component { raw, delimiters: d })
    }

    /// Number of components present.
    pub fn component_count(&self) -> usize {
        self.raw
            .split(char::from(self.delimiters.component))
            .count()
    }

    /// Component `n` (1-based; empty when absent).
    pub fn component(&self, n: usize) -> Component<'a> {
        n.checked_sub(1)
            .and_then(|i| self.components().nth(i))
            .unwrap_or(Component {
                raw: "",
                delimiters: self.delimiters,
            })
    }
}

/// One component.
#[derive(Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    delimiters: Delimiters,
}

impl fmt::Debug for Component<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Component({} bytes)", self.raw.len())
    }
}

impl<'a> Component<'a> {
    /// As received.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// With escapes replaced.
    pub fn text(&self) -> Cow<'a, str> {
        unescape(self.raw, self.delimiters)
    }

    /// Trimmed text; `None` when empty, blank or the null value `""`.
    pub fn value(&self) -> Option<String> {
        let t = self.text();
        let t = t.trim();
        (!t.is_empty() && t != "\"\"").then(|| t.to_owned())
    }

    /// True when empty or blank.
    pub fn is_empty(&self) -> bool {
        self.raw.trim().is_empty()
    }
}

// === impl Message ===

/// A result and its comments.
#[derive(Debug, Clone)]
pub struct ResultGroup<'a> {
    /// The R record.
    pub result: Record<'a>,
    /// C records after it.
    pub comments: Vec<Record<'a>>,
}

/// An order with its comments and results.
#[derive(Debug, Clone, Default)]
pub struct OrderGroup<'a> {
    /// The O record; `None` for results that came before any O (reported).
    pub order: Option<Record<'a>>,
    /// C records after the O.
    pub comments: Vec<Record<'a>>,
    /// Its results.
    pub results: Vec<ResultGroup<'a>>,
}

/// A patient with comments and orders.
#[derive(Debug, Clone, Default)]
pub struct PatientGroup<'a> {
    /// The P record; `None` for orders that came before any P (reported).
    pub patient: Option<Record<'a>>,
    /// C records after the P.
    pub comments: Vec<Record<'a>>,
    /// Its orders.
    pub orders: Vec<OrderGroup<'a>>,
}

/// One E1394 message (H … L).
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The H record.
    pub header: Record<'a>,
    /// The delimiters it defines.
    pub delimiters: Delimiters,
    /// C records after the H.
    pub header_comments: Vec<Record<'a>>,
    /// The P groups in order.
    pub patients: Vec<PatientGroup<'a>>,
    /// Q records.
    pub queries: Vec<Record<'a>>,
    /// M records.
    pub manufacturer: Vec<Record<'a>>,
    /// S records, records of unknown type, and comments that follow them.
    pub other: Vec<Record<'a>>,
    /// The L record.
    pub terminator: Option<Record<'a>>,
    /// Records in the message (H … L), ignored ones not counted.
    pub records: usize,
    /// What was tolerated.
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Header,
    Patient,
    Order,
    Result,
    Other,
}

/// Non-empty lines of `text` (CR, LF or CR LF terminated), with a leading BOM removed.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.strip_prefix('\u{feff}')
        .unwrap_or(text)
        .split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
}

fn is_header_line(line: &str) -> bool {
    matches!(line.as_bytes().first(), Some(b'H' | b'h')) && Delimiters::from_header(line).is_ok()
}

/// Splits a text holding several messages at each H record; text before the first H is
/// dropped.
pub fn split(text: &str) -> Vec<&str> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for piece in text.split_inclusive(['\r', '\n']) {
        let line = piece.trim_start_matches('\u{feff}');
        if is_header_line(line.trim_end_matches(['\r', '\n'])) {
            starts.push(offset + (piece.len() - line.len()));
        }
        offset += piece.len();
    }
    let mut out = Vec::with_capacity(starts.len());
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(text.len());
        if let Some(m) = text.get(s..e) {
            out.push(m);
        }
    }
    out
}

impl<'a> Message<'a> {
    /// Parses one message (the first, when the text holds several: see [`split`]).
    pub fn parse(text: &'a str) -> Result<Message<'a>, Error> {
        let mut lines = lines(text);
        let first = lines.next().ok_or(Error::Empty)?;
        if !matches!(first.as_bytes().first(), Some(b'H' | b'h')) {
            return Err(Error::MissingHeader);
        }
        let delimiters = Delimiters::from_header(first)?;
        let header = Record {
            number: 1,
            kind: RecordType::Header,
            raw: first,
            delimiters,
        };
        let mut msg = Message {
            header,
            delimiters,
            header_comments: Vec::new(),
            patients: Vec::new(),
            queries: Vec::new(),
            manufacturer: Vec::new(),
            other: Vec::new(),
            terminator: None,
            records: 1,
            warnings: Vec::new(),
        };
        let mut last = Last::Header;
        let mut ended = false;
        for (i, line) in lines.enumerate() {
            let number = i + 2;
            let record = Record::new(number, line, delimiters);
            if ended || record.kind == RecordType::Header {
                ended = true;
                msg.warnings.push(Warning {
                    record: number,
                    kind: WarningKind::AfterTerminator,
                });
                continue;
            }
            msg.records += 1;
            last = msg.place(record, last);
            if record.kind == RecordType::Terminator {
                msg.terminator = Some(record);
                ended = true;
            }
        }
        if msg.terminator.is_none() {
            msg.warnings.push(Warning {
                record: msg.records,
                kind: WarningKind::MissingTerminator,
            });
        }
        Ok(msg)
    }

    fn warn(&mut self, record: usize, kind: WarningKind) {
        self.warnings.push(Warning { record, kind });
    }

    /// Files `record` under its parent; returns what a following comment belongs to.
    fn place(&mut self, record: Record<'a>, last: Last) -> Last {
        let n = record.number;
        match record.kind {
            RecordType::Patient => {
                self.patients.push(PatientGroup {
                    patient: Some(record),
                    ..PatientGroup::default()
                });
                Last::Patient
            }
            RecordType::Order => {
                if self.patients.is_empty() {
                    self.warn(n, WarningKind::OutOfOrder);
                    self.patients.push(PatientGroup::default());
                }
                if let Some(p) = self.patients.last_mut() {
                    p.orders.push(OrderGroup {
                        order: Some(record),
                        ..OrderGroup::default()
                    });
                }
                Last::Order
            }
            RecordType::Result => {
                let has_order = self.patients.last().is_some_and(|p| !p.orders.is_empty());
                if !has_order {
                    self.warn(n, WarningKind::OutOfOrder);
                    if self.patients.is_empty() {
                        self.patients.push(PatientGroup::default());
                    }
                    if let Some(p) = self.patients.last_mut() {
                        p.orders.push(OrderGroup::default());
                    }
                }
                if let Some(o) = self.patients.last_mut().and_then(|p| p.orders.last_mut()) {
                    o.results.push(ResultGroup {
                        result: record,
                        comments: Vec::new(),
                    });
                }
                Last::Result
            }
            RecordType::Comment => {
                let target = match last {
                    Last::Header => Some(&mut self.header_comments),
                    Last::Patient => self.patients.last_mut().map(|p| &mut p.comments),
                    Last::Order => self
                        .patients
                        .last_mut()
                        .and_then(|p| p.orders.last_mut())
                        .map(|o| &mut o.comments),
                    Last::Result => self
                        .patients
                        .last_mut()
                        .and_then(|p| p.orders.last_mut())
                        .and_then(|o| o.results.last_mut())
                        .map(|r| &mut r.comments),
                    Last::Other => None,
                };
                match target {
                    Some(list) => list.push(record),
                    None => self.other.push(record),
                }
                last
            }
            RecordType::Query => {
                self.queries.push(record);
                Last::Other
            }
            RecordType::Manufacturer => {
                self.manufacturer.push(record);
                Last::Other
            }
            RecordType::Scientific => {
                self.other.push(record);
                Last::Other
            }
            RecordType::Unknown => {
                self.warn(n, WarningKind::UnknownRecordType);
                self.other.push(record);
                Last::Other
            }
            RecordType::Header | RecordType::Terminator => Last::Other,
        }
    }

    /// Every R record in message order.
    pub fn results(&self) -> impl Iterator<Item = &ResultGroup<'a>> {
        self.patients
            .iter()
            .flat_map(|p| p.orders.iter())
            .flat_map(|o| o.results.iter())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GLUCOSE: &str = "H|\\^&|||ACME^Analyzer^1.0|||||||P|LIS2-A2|20240105103000\r\
        P|1||PAT123||Doe^John||19700101|M\r\
        O|1|SPEC001||^^^GLU|R|20240105101500|||||N||||Serum\r\
        R|1|^^^GLU|5.6|mmol/L|3.9 to 6.1|N||F||OP1|20240105102000|20240105102900|ACME01\r\
        L|1|N\r";

    #[test]
    fn the_protocols_7_5_message_parses_into_the_hierarchy() {
        let m = Message::parse(GLUCOSE).expect("parses");
        assert_eq!(m.delimiters, Delimiters::default());
        assert_eq!(m.records, 5);
        assert!(m.warnings.is_empty());
        assert_eq!(m.header.field(5).component(2).raw(), "Analyzer");
        assert_eq!(m.header.field(13).raw(), "LIS2-A2");
        let p = m.patients.first().expect("a patient");
        assert_eq!(
            p.patient.map(|r| r.field(6).component(1).raw()),
            Some("Doe")
        );
        let o = p.orders.first().expect("an order");
        assert_eq!(o.order.map(|r| r.field(3).raw()), Some("SPEC001"));
        let r = o.results.first().expect("a result").result;
        assert_eq!(r.number(), 4);
        assert_eq!(r.field(3).component(4).raw(), "GLU");
        assert_eq!(r.field(13).raw(), "20240105102900");
        assert_eq!(m.terminator.map(|t| t.field(3).raw()), Some("N"));
    }

    #[test]
    fn h_2_is_the_delimiter_definition_and_is_not_split() {
        let m = Message::parse(GLUCOSE).expect("parses");
        let f = m.header.field(2);
        assert_eq!(f.text(), "\\^&");
        assert_eq!(f.repetitions().count(), 1);
    }

    #[test]
    fn other_delimiters_are_taken_from_the_header() {
        let m = Message::parse("H!~#$!!\nR!1!#A#B~C#D!x$F$y\nL!1").expect("parses");
        let r = m.results().next().expect("a result").result;
        assert_eq!(r.field(3).repetition(1).component(3).raw(), "B");
        assert_eq!(r.field(3).repetition(2).component(2).raw(), "D");
        assert_eq!(r.field(4).component(1).text(), "x!y");
    }

    #[test]
    fn a_header_without_escape_character_is_accepted() {
        let m = Message::parse("H|\\^|\rL|1\r").expect("parses");
        assert_eq!(m.delimiters.escape, None);
        let m = Message::parse("H|\\^\rL|1\r").expect("parses");
        assert_eq!(m.delimiters.escape, None);
        assert_eq!(unescape("a&F&b", m.delimiters), "a&F&b");
    }

    #[test]
    fn bad_headers_are_errors_naming_the_position() {
        assert_eq!(Message::parse("").err(), Some(Error::Empty));
        assert_eq!(Message::parse("\r\n\r").err(), Some(Error::Empty));
        assert_eq!(Message::parse("P|1\rL\r").err(), Some(Error::MissingHeader));
        assert_eq!(Message::parse("H|\r").err(), Some(Error::BadDelimiters));
        assert_eq!(Message::parse("H||^&\r").err(), Some(Error::BadDelimiters));
        assert_eq!(Message::parse("H|a^&\r").err(), Some(Error::BadDelimiters));
        assert_eq!(
            Error::BadDelimiters.to_string(),
            "record 1, H-2: invalid delimiter definition"
        );
    }

    #[test]
    fn every_escape_sequence_is_replaced_or_kept() {
        let d = Delimiters::default();
        assert_eq!(unescape("a&F&b&S&c&R&d&E&e", d), "a|b^c\\d&e");
        assert_eq!(unescape("&H&bold&N&", d), "bold");
        assert_eq!(unescape("&X41E9&", d), "A\u{e9}");
        assert_eq!(unescape("&X4&", d), "&X4&");
        assert_eq!(unescape("&Zlocal&", d), "&Zlocal&");
        assert_eq!(unescape("Smith & Jones", d), "Smith & Jones");
        assert_eq!(unescape("a & b & c", d), "a & b & c");
        assert_eq!(unescape("&&", d), "&&");
        assert!(matches!(unescape("plain", d), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_are_replaced_after_splitting() {
        let m = Message::parse("H|\\^&\rC|1|I|a&S&b^c&F&d|G\rL\r").expect("parses");
        let c = m.header_comments.first().expect("a comment");
        assert_eq!(c.field(4).component(1).text(), "a^b");
        assert_eq!(c.field(4).component(2).text(), "c|d");
    }

    #[test]
    fn comments_attach_to_the_nearest_preceding_record() {
        let text = "H|\\^&\rC|1|L|h\rP|1\rC|1|L|p\rO|1|S\rC|1|L|o\rR|1|^^^A|1\rC|1|I|r1\rC|2|I|r2\rM|1|x\rC|1|I|m\rL|1\r";
        let m = Message::parse(text).expect("parses");
        assert_eq!(m.header_comments.len(), 1);
        let p = m.patients.first().expect("p");
        assert_eq!(p.comments.len(), 1);
        let o = p.orders.first().expect("o");
        assert_eq!(o.comments.len(), 1);
        assert_eq!(o.results.first().map(|r| r.comments.len()), Some(2));
        assert_eq!(m.manufacturer.len(), 1);
        assert_eq!(m.other.len(), 1, "the comment after M");
    }

    #[test]
    fn repeated_patients_orders_and_results_build_the_tree() {
        let text =
            "H|\\^&\rP|1\rO|1|A\rR|1|^^^X|1\rR|2|^^^Y|2\rO|2|B\rR|1|^^^Z|3\rP|2\rO|1|C\rL|1\r";
        let m = Message::parse(text).expect("parses");
        let shape: Vec<Vec<usize>> = m
            .patients
            .iter()
            .map(|p| p.orders.iter().map(|o| o.results.len()).collect())
            .collect();
        assert_eq!(shape, [vec![2, 1], vec![0]]);
        assert_eq!(m.results().count(), 3);
    }

    #[test]
    fn out_of_order_unknown_and_trailing_records_are_reported_by_number() {
        let text = "H|\\^&\rR|1|^^^X|1\rO|1|A\rZ|1|x\rQ|1|ALL\rS|1\rXY\rL|1\rP|9\rH|\\^&\r";
        let m = Message::parse(text).expect("parses");
        let w: Vec<(usize, WarningKind)> = m.warnings.iter().map(|w| (w.record, w.kind)).collect();
        assert_eq!(
            w,
            [
                (2, WarningKind::OutOfOrder),
                (4, WarningKind::UnknownRecordType),
                (7, WarningKind::UnknownRecordType),
                (9, WarningKind::AfterTerminator),
                (10, WarningKind::AfterTerminator),
            ]
        );
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.other.len(), 3);
        assert_eq!(m.records, 8);
        assert_eq!(
            m.warnings.first().map(ToString::to_string).as_deref(),
            Some("record 2: record out of the E1394 order")
        );
        // The R before any O sits in an implicit patient/order, the O after it in the same
        // patient group.
        let p = m.patients.first().expect("implicit patient");
        assert!(p.patient.is_none());
        assert_eq!(p.orders.len(), 2);
        assert!(p.orders.first().is_some_and(|o| o.order.is_none()));
    }

    #[test]
    fn a_missing_terminator_is_reported_and_lf_and_crlf_end_records() {
        let m = Message::parse("H|\\^&\r\nP|1\nO|1|S\r").expect("parses");
        assert_eq!(m.records, 3);
        assert_eq!(
            m.warnings,
            [Warning {
                record: 3,
                kind: WarningKind::MissingTerminator
            }]
        );
    }

    #[test]
    fn record_types_are_case_insensitive() {
        let m = Message::parse("h|\\^&\rp|1\ro|1|S\rr|1|^^^A|1\rl|1\r").expect("parses");
        assert_eq!(m.results().count(), 1);
        assert!(m.terminator.is_some());
    }

    #[test]
    fn fields_repetitions_and_components_are_one_based_and_absent_ones_empty() {
        let r = Record::new(2, "O|1|SID102\\SID103||^^^A^B", Delimiters::default());
        assert_eq!(r.kind(), RecordType::Order);
        assert_eq!(r.field(0).raw(), "");
        assert_eq!(r.field(1).raw(), "O");
        assert_eq!(r.field(3).repetition(2).raw(), "SID103");
        assert_eq!(r.field(3).repetition(3).raw(), "");
        assert_eq!(r.field(5).repetition(1).component_count(), 5);
        assert_eq!(r.field(5).component(5).value().as_deref(), Some("B"));
        assert_eq!(r.field(5).component(1).value(), None);
        assert_eq!(r.field(99).raw(), "");
        assert_eq!(r.field_count(), 5);
        assert_eq!(r.valued_fields().collect::<Vec<_>>(), [2, 3, 5]);
        assert!(
            Record::new(1, "\"\"", Delimiters::default())
                .field(1)
                .is_null()
        );
    }

    #[test]
    fn split_separates_messages_at_each_header() {
        let text = "junk\rH|\\^&\rL|1\rH|\\^&\rP|1\rL|1\r";
        let parts = split(text);
        assert_eq!(parts, ["H|\\^&\rL|1\r", "H|\\^&\rP|1\rL|1\r"]);
        assert!(split("P|1\r").is_empty());
    }

    #[test]
    fn latin_1_bytes_decode_to_their_characters() {
        assert_eq!(decode(b"M\xfcller"), "M\u{fc}ller");
        assert!(matches!(decode("Müller".as_bytes()), Cow::Borrowed(_)));
    }

    #[test]
    fn debug_output_holds_no_values() {
        let m = Message::parse(GLUCOSE).expect("parses");
        let text = format!("{m:?}");
        for secret in ["Doe", "PAT123", "19700101", "SPEC001", "5.6"] {
            assert!(!text.contains(secret), "{secret}");
        }
    }

    #[test]
    fn the_phadia_parse_dump_of_the_shared_corpus_is_reproduced() {
        // Same layout as tgenaux's PhadiaLIS2SampleMessage.out.txt (field.repetition.component),
        // from a message written here with the same structure.
        let text = "H|\\^&|||Lab.Soft^1.2^4.0|||||^10.0.0.1||P|1|20120522101251\n\
                    O|1|B1^N^^0|B1|^^^t2^sIgE^1\nL|1|N\n";
        let m = Message::parse(text).expect("parses");
        let dump = dump(&m);
        assert!(dump.contains(&"H.5.1.2:1.2".to_owned()));
        assert!(dump.contains(&"H.10:^10.0.0.1".to_owned()));
        assert!(dump.contains(&"O.3.1.4:0".to_owned()));
        assert!(dump.contains(&"O.5.1.6:1".to_owned()));
        assert!(!dump.iter().any(|l| l.starts_with("H.2")));
    }

    /// The `field-path: value` dump of tgenaux's parser (`X.f` for the field, `X.f.r.c` for
    /// each valued component of fields that have components).
    fn dump(m: &Message<'_>) -> Vec<String> {
        let mut out = Vec::new();
        let mut records = vec![m.header];
        for p in &m.patients {
            records.extend(p.patient);
            records.extend(p.comments.iter().copied());
            for o in &p.orders {
                records.extend(o.order);
                records.extend(o.comments.iter().copied());
                for r in &o.results {
                    records.push(r.result);
                    records.extend(r.comments.iter().copied());
                }
            }
        }
        records.extend(m.terminator);
        for r in records {
            let id = r.kind().id();
            for n in 1..=r.field_count() {
                if id == "H" && n == 2 {
                    continue;
                }
                let f = r.field(n);
                if f.raw().is_empty() {
                    continue;
                }
                out.push(format!("{id}.{n}:{}", f.raw()));
                for (ri, rep) in f.repetitions().enumerate() {
                    if rep.component_count() < 2 && f.repetitions().count() < 2 {
                        continue;
                    }
                    for (ci, c) in rep.components().enumerate() {
                        if !c.raw().is_empty() {
                            out.push(format!("{id}.{n}.{}.{}:{}", ri + 1, ci + 1, c.raw()));
                        }
                    }
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let text = decode(&bytes);
            if let Ok(m) = Message::parse(&text) {
                for r in m.results() {
                    for n in 0..20 {
                        let f = r.result.field(n);
                        let _ = f.text();
                        for rep in f.repetitions() {
                            for c in rep.components() {
                                let _ = c.value();
                            }
                        }
                    }
                }
            }
            let _ = split(&text);
        }

        #[test]
        fn parse_never_panics_on_messages_with_a_valid_header(
            body in "[HPORCQMLSZ\\|\\\\^&X0-9a-f\r\n ]{0,300}",
            delims in "[!-/:-@\\[-`{-~]{4}",
        ) {
            let text = format!("H{delims}\r{body}");
            let _ = Message::parse(&text).map(|m| m.results().count());
        }

        #[test]
        fn unescape_never_panics_and_is_identity_without_escape_chars(s in "\\PC{0,60}") {
            let d = Delimiters::default();
            let out = unescape(&s, d);
            if !s.contains('&') {
                prop_assert_eq!(out.as_ref(), s.as_str());
            }
        }
    }
}
