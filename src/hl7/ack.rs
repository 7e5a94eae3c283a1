//! Acknowledgements (protocols.md §3): which code, whether to send one, and the ACK message.
//!
//! The decision is one table, [`code`], tested row by row:
//!
//! | outcome                                   | original | enhanced | ERR-3 (table 0357)      |
//! |-------------------------------------------|----------|----------|-------------------------|
//! | stored (committed), or a resend of one    | AA       | CA       | —                       |
//! | malformed: cannot be parsed / header bad  | AE       | CE       | 100/101/102/207         |
//! | refused by listener policy (type/id/ver)  | AR       | CR       | 200/201/202/203         |
//! | not stored: queue full, storage failure   | AR       | CR       | 207 (206 when full)     |
//!
//! AA/CA is only ever chosen for an outcome that says the commit happened. AE tells the sender
//! to fix the message (most stop and raise an error); AR tells it the problem was ours or its
//! header, and most retry it unchanged, which is what a full queue or a failing disk needs. For
//! enhanced mode the issue fixes CR for "queue full / storage failure" (protocols.md §3.5 would
//! allow CE); CR makes senders keep and retry the message, which is the promise we need.
//!
//! The ERR segment carries a code, a location and a fixed text: never a value from the message.

use std::fmt::Write as _;

use crate::hl7::escape;
use crate::hl7::message::{Delimiters, Header};

/// Original (AA/AE/AR) or enhanced (CA/CE/CR) acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MSH-15 and MSH-16 empty.
    Original,
    /// MSH-15 or MSH-16 valued: an accept acknowledgement.
    Enhanced,
}

/// MSA-1, table 0008.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept.
    CA,
    /// Commit error.
    CE,
    /// Commit reject.
    CR,
}

impl Code {
    /// The two-letter code.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AA => "AA",
            Code::AE => "AE",
            Code::AR => "AR",
            Code::CA => "CA",
            Code::CE => "CE",
            Code::CR => "CR",
        }
    }

    /// Parses MSA-1.
    pub fn parse(s: &str) -> Option<Code> {
        Some(match s {
            "AA" => Code::AA,
            "AE" => Code::AE,
            "AR" => Code::AR,
            "CA" => Code::CA,
            "CE" => Code::CE,
            "CR" => Code::CR,
            _ => return None,
        })
    }

    /// AA or CA.
    pub fn is_accept(self) -> bool {
        matches!(self, Code::AA | Code::CA)
    }
}

/// What happened to the message, as far as the ACK is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed to the durable queue.
    Stored,
    /// A resend of a message already committed.
    Duplicate,
    /// Cannot be parsed or its header is unusable.
    Malformed(Problem),
    /// Refused by listener policy: message type, event, processing id, version.
    Unsupported(Problem),
    /// Not stored for a reason unrelated to content: queue full, storage failure.
    NotStored(Problem),
}

/// A reportable problem: table-0357 code, location, fixed text (never message content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Table 0357 code.
    pub code: u16,
    /// ERR-2: segment id, sequence, field.
    pub location: Option<(&'static str, u16, u16)>,
    /// Short human text (MSA-3, ERR-8).
    pub text: String,
}

impl Problem {
    /// A problem with a code and text.
    pub fn new(code: u16, text: impl Into<String>) -> Problem {
        Problem {
            code,
            location: None,
            text: text.into(),
        }
    }

    /// Sets the location.
    pub fn at(mut self, segment: &'static str, sequence: u16, field: u16) -> Problem {
        self.location = Some((segment, sequence, field));
        self
    }
}

/// The mode a message asks for. `force_original` is the per-sender override for senders that
/// fill MSH-15 but still expect AA.
pub fn mode(accept_ack_type: &str, application_ack_type: &str, force_original: bool) -> Mode {
    if force_original
        || (accept_ack_type.trim().is_empty() && application_ack_type.trim().is_empty())
    {
        Mode::Original
    } else {
        Mode::Enhanced
    }
}

/// The table.
pub fn code(mode: Mode, outcome: &Outcome) -> Code {
    match (mode, outcome) {
        (Mode::Original, Outcome::Stored | Outcome::Duplicate) => Code::AA,
        (Mode::Original, Outcome::Malformed(_)) => Code::AE,
        (Mode::Original, Outcome::Unsupported(_) | Outcome::NotStored(_)) => Code::AR,
        (Mode::Enhanced, Outcome::Stored | Outcome::Duplicate) => Code::CA,
        (Mode::Enhanced, Outcome::Malformed(_)) => Code::CE,
        (Mode::Enhanced, Outcome::Unsupported(_) | Outcome::NotStored(_)) => Code::CR,
    }
}

/// Whether an accept ACK is wanted (MSH-15, table 0155). Original mode always answers; empty
/// MSH-15 in enhanced mode is treated as AL because an MLLP sender is waiting on the socket.
pub fn wanted(mode: Mode, accept_ack_type: &str, code: Code) -> bool {
    match mode {
        Mode::Original => true,
        Mode::Enhanced => match accept_ack_type.trim() {
            "NE" => false,
            "ER" => !code.is_accept(),
            "SU" => code.is_accept(),
            _ => true,
        },
    }
}

/// Whether caregate accepts this MSH-12 version: 2.1 through 2.8 and their point releases.
pub fn version_supported(version: &str) -> bool {
    let mut parts = version.trim().split('.');
    let major_ok = parts.next() == Some("2");
    let minor_ok = parts
        .next()
        .is_some_and(|m| m.len() == 1 && matches!(m.as_bytes()[0], b'1'..=b'8'));
    major_ok && minor_ok && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The inbound header fields an ACK needs. Built from a parsed [`Header`], or scanned leniently
/// from raw text when the message could not be parsed (so even malformed input gets an AE).
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// Delimiters to answer with.
    pub delimiters: Delimiters,
    /// MSH-3.
    pub sending_application: &'a str,
    /// MSH-4.
    pub sending_facility: &'a str,
    /// MSH-5.
    pub receiving_application: &'a str,
    /// MSH-6.
    pub receiving_facility: &'a str,
    /// MSH-9.2.
    pub trigger_event: &'a str,
    /// MSH-10.
    pub control_id: &'a str,
    /// MSH-11.1.
    pub processing_id: &'a str,
    /// MSH-12.1.
    pub version: &'a str,
    /// MSH-15.
    pub accept_ack_type: &'a str,
    /// MSH-16.
    pub application_ack_type: &'a str,
    /// MSH-18 first repetition.
    pub charset: &'a str,
}

impl<'a> Inbound<'a> {
    /// From a parsed header.
    pub fn from_header(h: &Header<'a>, delimiters: Delimiters) -> Inbound<'a> {
        Inbound {
            delimiters,
            sending_application: h.sending_application,
            sending_facility: h.sending_facility,
            receiving_application: h.receiving_application,
            receiving_facility: h.receiving_facility,
            trigger_event: h.trigger_event,
            control_id: h.control_id,
            processing_id: h.processing_id,
            version: h.version,
            accept_ack_type: h.accept_ack_type,
            application_ack_type: h.application_ack_type,
            charset: h.charset,
        }
    }

    /// Best effort from text that did not parse: whatever MSH fields can be found. Never panics;
    /// fields that cannot be found are empty.
    pub fn scan(text: &'a str) -> Inbound<'a> {
        let t = text.trim_start_matches(['\u{feff}', '\r', '\n', ' ', '\t']);
        let line = t.split(['\r', '\n']).next().unwrap_or("");
        let mut d = Delimiters::default();
        let mut fields: Vec<&str> = Vec::new();
        if let Some(rest) = line.strip_prefix("MSH") {
            if let Some(sep) = rest.chars().next().filter(|c| c.is_ascii_punctuation()) {
                d.field = sep;
                fields = line.split(sep).collect();
                // Use the sender's encoding characters only when they are usable (distinct
                // punctuation); otherwise answer with the defaults so the ACK itself parses.
                let enc: Vec<char> = fields
                    .get(1)
                    .map(|e| e.chars().take(4).collect())
                    .unwrap_or_default();
                let mut seen = vec![sep];
                let usable = enc.len() == 4
                    && enc.iter().all(|c| {
                        let fresh = c.is_ascii_punctuation() && !seen.contains(c);
                        seen.push(*c);
                        fresh
                    });
                if usable {
                    d.component = enc[0];
                    d.repetition = enc[1];
                    d.escape = Some(enc[2]);
                    d.subcomponent = Some(enc[3]);
                }
            }
        }
        // element n of the split is MSH-(n+1)
        let f = |n: usize| fields.get(n - 1).copied().unwrap_or("");
        let first = |s: &'a str, sep: char| s.split(sep).next().unwrap_or("");
        let comp = |s: &'a str, n: usize| s.split(d.component).nth(n - 1).unwrap_or("");
        let repsep = d.repetition;
        Inbound {
            delimiters: d,
            sending_application: f(3),
            sending_facility: f(4),
            receiving_application: f(5),
            receiving_facility: f(6),
            trigger_event: comp(f(9), 2),
            control_id: f(10),
            processing_id: comp(f(11), 1),
            version: comp(f(12), 1),
            accept_ack_type: f(15),
            application_ack_type: f(16),
            charset: first(f(18), repsep),
        }
    }
}

/// ACK text for table-0357 codes.
pub fn code_text(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        104 => "Value too long",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        _ => "Application internal error",
    }
}

/// Builds the ACK message text (segments joined by CR, no MLLP framing).
///
/// `now` is MSH-7 (`YYYYMMDDHHMMSS.SSS±ZZZZ`) and `ack_control_id` a new unique MSH-10; both are
/// inputs so this stays pure and testable.
pub fn build(
    inbound: &Inbound<'_>,
    code: Code,
    outcome: &Outcome,
    now: &str,
    ack_control_id: &str,
) -> String {
    let d = inbound.delimiters;
    let f = d.field;
    let enc = d.encoding_characters();
    let old_layout = matches!(
        inbound.version.get(..3),
        Some("2.1" | "2.2" | "2.3" | "2.4")
    );
    let msg_type = if inbound.trigger_event.is_empty() {
        "ACK".to_owned()
    } else if matches!(inbound.version, "2.1" | "2.2" | "2.3") {
        format!("ACK{}{}", d.component, inbound.trigger_event)
    } else {
        format!("ACK{c}{}{c}ACK", inbound.trigger_event, c = d.component)
    };
    let version = if inbound.version.is_empty() {
        "2.5.1"
    } else {
        inbound.version
    };
    let processing = if inbound.processing_id.is_empty() {
        "P"
    } else {
        inbound.processing_id
    };
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "MSH{f}{enc}{f}{}{f}{}{f}{}{f}{}{f}{now}{f}{f}{msg_type}{f}{ack_control_id}{f}{processing}{f}{version}",
        inbound.receiving_application,
        inbound.receiving_facility,
        inbound.sending_application,
        inbound.sending_facility,
    );
    if !inbound.charset.is_empty() {
        let _ = write!(s, "{f}{f}{f}{f}{f}{f}{}", inbound.charset);
    }
    let problem = match outcome {
        Outcome::Stored | Outcome::Duplicate => None,
        Outcome::Malformed(p) | Outcome::Unsupported(p) | Outcome::NotStored(p) => Some(p),
    };
    let _ = write!(s, "\rMSA{f}{}{f}{}", code.as_str(), inbound.control_id);
    if let Some(p) = problem {
        let text = escape::escape(&p.text, &d);
        let _ = write!(s, "{f}{text}");
        let c = d.component;
        let sub = d.subcomponent.unwrap_or('&');
        let code_name = code_text(p.code);
        if old_layout {
            let (seg, seq, field) = p.location.unwrap_or(("", 0, 0));
            let loc = if seg.is_empty() {
                format!("{c}{c}{c}")
            } else {
                format!("{seg}{c}{seq}{c}{field}{c}")
            };
            let _ = write!(s, "\rERR{f}{loc}{}{sub}{code_name}{sub}HL70357", p.code);
        } else {
            let loc = p
                .location
                .map(|(seg, seq, field)| format!("{seg}{c}{seq}{c}{field}"))
                .unwrap_or_default();
            let severity = "E";
            let _ = write!(
                s,
                "\rERR{f}{f}{loc}{f}{}{c}{code_name}{c}HL70357{f}{severity}{f}{f}{f}{f}{text}",
                p.code
            );
        }
    }
    s.push('\r');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(code: u16) -> Problem {
        Problem::new(code, "test")
    }

    #[test]
    fn the_code_table_row_by_row() {
        use Code::*;
        use Mode::*;
        let rows: [(Mode, Outcome, Code); 10] = [
            (Original, Outcome::Stored, AA),
            (Original, Outcome::Duplicate, AA),
            (Original, Outcome::Malformed(problem(101)), AE),
            (Original, Outcome::Unsupported(problem(203)), AR),
            (Original, Outcome::NotStored(problem(207)), AR),
            (Enhanced, Outcome::Stored, CA),
            (Enhanced, Outcome::Duplicate, CA),
            (Enhanced, Outcome::Malformed(problem(101)), CE),
            (Enhanced, Outcome::Unsupported(problem(200)), CR),
            (Enhanced, Outcome::NotStored(problem(206)), CR),
        ];
        for (m, o, c) in rows {
            assert_eq!(code(m, &o), c, "{m:?} {o:?}");
        }
    }

    #[test]
    fn only_committed_outcomes_are_accepted() {
        for m in [Mode::Original, Mode::Enhanced] {
            for o in [
                Outcome::Malformed(problem(100)),
                Outcome::Unsupported(problem(200)),
                Outcome::NotStored(problem(207)),
            ] {
                assert!(!code(m, &o).is_accept());
            }
        }
    }

    #[test]
    fn mode_follows_msh15_and_msh16() {
        assert_eq!(mode("", "", false), Mode::Original);
        assert_eq!(mode("AL", "NE", false), Mode::Enhanced);
        assert_eq!(mode("", "AL", false), Mode::Enhanced);
        assert_eq!(mode("AL", "NE", true), Mode::Original);
    }

    #[test]
    fn accept_ack_type_decides_whether_to_answer() {
        assert!(wanted(Mode::Enhanced, "AL", Code::CA));
        assert!(!wanted(Mode::Enhanced, "NE", Code::CA));
        assert!(!wanted(Mode::Enhanced, "NE", Code::CR));
        assert!(wanted(Mode::Enhanced, "ER", Code::CR));
        assert!(!wanted(Mode::Enhanced, "ER", Code::CA));
        assert!(wanted(Mode::Enhanced, "SU", Code::CA));
        assert!(!wanted(Mode::Enhanced, "SU", Code::CE));
        assert!(wanted(Mode::Original, "NE", Code::AA));
    }

    #[test]
    fn versions_two_one_to_two_eight_are_supported() {
        for v in [
            "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8",
            "2.8.2",
        ] {
            assert!(version_supported(v), "{v}");
        }
        for v in ["", "2", "2.9", "3.0", "2.3.z", "2.10", "2.5.", "1.5"] {
            assert!(!version_supported(v), "{v}");
        }
    }

    const INBOUND: &str = "MSH|^~\\&|LABSYS|MAINLAB|GATEWAY|HOSP|20240105103000+0100||ORU^R01^ORU_R01|LAB000123|P|2.5.1\rPID|1||123^^^H\r";

    #[test]
    fn accept_ack_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let i = Inbound::scan(INBOUND);
        let ack = build(
            &i,
            Code::AA,
            &Outcome::Stored,
            "20240105103000.412+0100",
            "GW-1",
        );
        assert_eq!(
            ack,
            "MSH|^~\\&|GATEWAY|HOSP|LABSYS|MAINLAB|20240105103000.412+0100||ACK^R01^ACK|GW-1|P|2.5.1\rMSA|AA|LAB000123\r"
        );
    }

    #[test]
    fn error_ack_has_an_err_segment_in_the_v25_layout() {
        let i = Inbound::scan(INBOUND);
        let p = Problem::new(102, "OBX-5 not numeric").at("OBX", 3, 5);
        let ack = build(
            &i,
            Code::AE,
            &Outcome::Malformed(p),
            "20240105103000+0100",
            "GW-2",
        );
        assert!(
            ack.contains("\rMSA|AE|LAB000123|OBX-5 not numeric\r"),
            "{ack}"
        );
        assert!(
            ack.contains("\rERR||OBX^3^5|102^Data type error^HL70357|E||||OBX-5 not numeric\r"),
            "{ack}"
        );
    }

    #[test]
    fn error_ack_for_v23_uses_err1() {
        let text = INBOUND.replace("2.5.1", "2.3").replace("^ORU_R01", "");
        let i = Inbound::scan(&text);
        let p = Problem::new(102, "OBX-5 not numeric").at("OBX", 3, 5);
        let ack = build(
            &i,
            Code::AE,
            &Outcome::Malformed(p),
            "20240105103000",
            "GW-3",
        );
        assert!(ack.contains("||ACK^R01|GW-3|P|2.3\r"), "{ack}");
        assert!(
            ack.contains("\rERR|OBX^3^5^102&Data type error&HL70357\r"),
            "{ack}"
        );
    }

    #[test]
    fn ack_keeps_odd_delimiters_and_the_charset() {
        let text = "MSH#*~\\&#A#B#C#D#20240101##ADT*A01#X1#T#2.4######8859/1\r";
        let i = Inbound::scan(text);
        let ack = build(&i, Code::AA, &Outcome::Stored, "20240101", "GW-4");
        assert!(
            ack.starts_with("MSH#*~\\&#C#D#A#B#20240101##ACK*A01*ACK#GW-4#T#2.4######8859/1\r"),
            "{ack}"
        );
    }

    #[test]
    fn unusable_encoding_characters_are_replaced_by_the_defaults() {
        let i = Inbound::scan("MSH|&&&&|A|B|C|D|2024||ORU^R01|X1|P|2.5.1\r");
        assert_eq!(i.delimiters, Delimiters::default());
        assert_eq!(i.control_id, "X1");
    }

    #[test]
    fn scan_of_garbage_never_panics_and_finds_nothing() {
        for t in [
            "",
            "MSH",
            "MSH|",
            "PID|1",
            "MSH\u{e9}abc",
            "\u{feff}MSH|^",
            "MSH|||||||||",
            "MSH|&&&&|A",
        ] {
            let i = Inbound::scan(t);
            let _ = build(&i, Code::AE, &Outcome::Malformed(problem(100)), "x", "y");
        }
    }
}
