//! ASTM E1381/E1394 end to end without a serial port: a simulated analyzer (`link::Sender`) and
//! caregate's `link::Receiver` exchange bytes over an in-memory wire with a virtual clock
//! (timers are inputs of the sans-IO machines, so nothing sleeps), with faults injected on the
//! wire (wrong checksum, lost and garbled replies, a silent analyzer, failing storage). Every
//! message that arrives is parsed and converted to FHIR.
//!
//! Inputs: the fixtures of tests/fixtures/astm (written here) and, when present, every
//! transcript of the shared corpus (../shared/corpus/astm, third-party; skipped visibly when
//! absent). The astmio logs are also replayed byte for byte, as the analyzers sent them.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use caregate::astm::link::{self, Action, Config, Framing, Link, Receiver, Role, Sender, Timer};
use caregate::astm::record::{self, Delimiters, Message, Record};
use caregate::convert::{self, Context, ObxReason, WarningKind};
use serde_json::Value;

use crate::support::corpus_dir;

// === harness: stations, wire, virtual clock ===

/// One end of the line.
trait Station {
    fn bytes(&mut self, b: &[u8]) -> Vec<Action>;
    fn timeout(&mut self, t: Timer) -> Vec<Action>;
    fn stored(&mut self) -> Vec<Action>;
    fn store_failed(&mut self) -> Vec<Action>;
    fn idle(&self) -> bool;
}

impl Station for Sender {
    fn bytes(&mut self, b: &[u8]) -> Vec<Action> {
        self.on_bytes(b)
    }
    fn timeout(&mut self, t: Timer) -> Vec<Action> {
        self.on_timeout(t)
    }
    fn stored(&mut self) -> Vec<Action> {
        Vec::new()
    }
    fn store_failed(&mut self) -> Vec<Action> {
        Vec::new()
    }
    fn idle(&self) -> bool {
        self.pending() == 0 && !self.is_active()
    }
}

impl Station for Receiver {
    fn bytes(&mut self, b: &[u8]) -> Vec<Action> {
        self.on_bytes(b)
    }
    fn timeout(&mut self, t: Timer) -> Vec<Action> {
        self.on_timeout(t)
    }
    fn stored(&mut self) -> Vec<Action> {
        Receiver::stored(self)
    }
    fn store_failed(&mut self) -> Vec<Action> {
        Receiver::store_failed(self)
    }
    fn idle(&self) -> bool {
        self.is_neutral()
    }
}

impl Station for Link {
    fn bytes(&mut self, b: &[u8]) -> Vec<Action> {
        self.on_bytes(b)
    }
    fn timeout(&mut self, t: Timer) -> Vec<Action> {
        self.on_timeout(t)
    }
    fn stored(&mut self) -> Vec<Action> {
        Link::stored(self)
    }
    fn store_failed(&mut self) -> Vec<Action> {
        Link::store_failed(self)
    }
    fn idle(&self) -> bool {
        self.is_idle()
    }
}

/// Faults on the wire; frame indexes count every frame the analyzer sends, resends included.
#[derive(Default, Clone)]
struct Faults {
    /// This frame goes out with a wrong checksum.
    corrupt_frame: Option<usize>,
    /// From this frame on, the analyzer's bytes are lost for this long.
    silence_from_frame: Option<(usize, Duration)>,
    /// The reply to this frame is lost.
    drop_reply_to_frame: Option<usize>,
    /// The reply to this frame arrives as junk.
    garble_reply_to_frame: Option<usize>,
    /// The first stores fail.
    fail_stores: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    /// The analyzer (or the instrument station).
    A,
    /// caregate.
    B,
}

fn timer_key(t: Timer) -> u8 {
    match t {
        Timer::Receive => 0,
        Timer::Establish => 1,
        Timer::Reply => 2,
        Timer::Backoff => 3,
    }
}

fn key_timer(k: u8) -> Timer {
    match k {
        0 => Timer::Receive,
        1 => Timer::Establish,
        2 => Timer::Reply,
        _ => Timer::Backoff,
    }
}

struct Sim<A, B> {
    a: A,
    b: B,
    now: Duration,
    timers: BTreeMap<(Side, u8), Duration>,
    wire: VecDeque<(Side, Vec<u8>)>,
    faults: Faults,
    frames_sent: usize,
    silence_until: Option<Duration>,
    /// Messages stored, by the side that stored them.
    stored: Vec<(Side, Vec<u8>)>,
    /// `Message` actions (a failed store makes the same message arrive again).
    emitted: usize,
    errors: Vec<(Side, link::Error)>,
    delivered: usize,
}

impl<A: Station, B: Station> Sim<A, B> {
    fn new(a: A, b: B, faults: Faults) -> Sim<A, B> {
        Sim {
            a,
            b,
            now: Duration::ZERO,
            timers: BTreeMap::new(),
            wire: VecDeque::new(),
            faults,
            frames_sent: 0,
            silence_until: None,
            stored: Vec::new(),
            emitted: 0,
            errors: Vec::new(),
            delivered: 0,
        }
    }

    fn station(&mut self, side: Side) -> &mut dyn Station {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn apply(&mut self, side: Side, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(bytes) => self.transmit(side, bytes),
                Action::Message(m) => {
                    self.emitted += 1;
                    let more = if self.faults.fail_stores > 0 {
                        self.faults.fail_stores -= 1;
                        self.station(side).store_failed()
                    } else {
                        self.stored.push((side, m));
                        self.station(side).stored()
                    };
                    queue.extend(more);
                }
                Action::ArmTimer(t, d) => {
                    self.timers.insert((side, timer_key(t)), self.now + d);
                }
                Action::CancelTimer(t) => {
                    self.timers.remove(&(side, timer_key(t)));
                }
                Action::Delivered => self.delivered += 1,
                Action::Error(e) => self.errors.push((side, e)),
            }
        }
    }

    fn transmit(&mut self, side: Side, mut bytes: Vec<u8>) {
        if side == Side::A {
            if bytes.first() == Some(&link::STX) {
                let n = self.frames_sent;
                self.frames_sent += 1;
                if self.faults.corrupt_frame == Some(n) {
                    let at = bytes.len().saturating_sub(4);
                    if let Some(c) = bytes.get_mut(at) {
                        *c = if *c == b'0' { b'1' } else { b'0' };
                    }
                }
                if let Some((k, d)) = self.faults.silence_from_frame {
                    if k == n {
                        self.silence_until = Some(self.now + d);
                    }
                }
            }
            if self.silence_until.is_some_and(|u| self.now < u) {
                return;
            }
        } else if bytes.len() == 1 && self.frames_sent > 0 {
            let n = self.frames_sent - 1;
            if self.faults.drop_reply_to_frame == Some(n) {
                self.faults.drop_reply_to_frame = None;
                return;
            }
            if self.faults.garble_reply_to_frame == Some(n) {
                self.faults.garble_reply_to_frame = None;
                bytes = vec![b'?'];
            }
        }
        self.wire.push_back((side, bytes));
    }

    /// Runs until both sides are idle with nothing in flight; false when stuck.
    fn run(&mut self) -> bool {
        for _ in 0..100_000 {
            if let Some((from, bytes)) = self.wire.pop_front() {
                let to = if from == Side::A { Side::B } else { Side::A };
                let actions = self.station(to).bytes(&bytes);
                self.apply(to, actions);
                continue;
            }
            if self.a.idle() && self.b.idle() {
                return true;
            }
            let Some((&(side, k), &at)) = self.timers.iter().min_by_key(|(_, at)| **at) else {
                return false;
            };
            self.timers.remove(&(side, k));
            self.now = self.now.max(at);
            let actions = self.station(side).timeout(key_timer(k));
            self.apply(side, actions);
        }
        false
    }

    fn errors_of(&self, side: Side) -> Vec<link::Error> {
        self.errors
            .iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// A fault scenario and what the link must report for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Clean,
    CorruptChecksum,
    ReceiverTimeout,
    InterruptedByEot,
    GarbledAckMakesDuplicate,
    StoreFailsOnce,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::Clean,
    Scenario::CorruptChecksum,
    Scenario::ReceiverTimeout,
    Scenario::InterruptedByEot,
    Scenario::GarbledAckMakesDuplicate,
    Scenario::StoreFailsOnce,
];

impl Scenario {
    fn faults(self) -> Faults {
        let mut f = Faults::default();
        match self {
            Scenario::Clean => {}
            Scenario::CorruptChecksum => f.corrupt_frame = Some(1),
            Scenario::ReceiverTimeout => {
                f.silence_from_frame = Some((1, Duration::from_secs(31)));
            }
            Scenario::InterruptedByEot => f.drop_reply_to_frame = Some(1),
            Scenario::GarbledAckMakesDuplicate => f.garble_reply_to_frame = Some(1),
            Scenario::StoreFailsOnce => f.fail_stores = 1,
        }
        f
    }
}

/// How the simulated analyzer cuts a message into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Packed in 240-character frames (ETB … ETX), the usual frame size.
    Packed240,
    /// Packed in three or more ETB/ETX frames, so that every fault hits a frame before the
    /// last one.
    PackedThirds,
    /// One record per ETX frame (messages here have at least three records).
    PerRecord,
}

const CUTS: [Cut; 3] = [Cut::Packed240, Cut::PackedThirds, Cut::PerRecord];

/// Every cut with every scenario, except a lost reply with 240-character frames: there the
/// lost reply can be the final ACK, after which the analyzer rightly resends the stored
/// message (see `astm_a_lost_final_ack_stores_the_message_twice_under_the_same_ids`).
fn combinations() -> impl Iterator<Item = (Cut, Scenario)> {
    CUTS.into_iter()
        .flat_map(|c| SCENARIOS.into_iter().map(move |s| (c, s)))
        .filter(|&(c, s)| !(c == Cut::Packed240 && s == Scenario::InterruptedByEot))
}

/// Sends `message` from a simulated analyzer to caregate's receiver under `scenario` and checks
/// the link did what protocols.md §7 says; returns the one stored message.
fn deliver(message: &[u8], cut: Cut, scenario: Scenario) -> Vec<u8> {
    let (framing, frame_size) = match cut {
        Cut::Packed240 => (Framing::Packed, Config::default().frame_size),
        Cut::PackedThirds => (
            Framing::Packed,
            (message.len() / 3).max(1) + link::FRAME_OVERHEAD,
        ),
        Cut::PerRecord => (Framing::RecordPerFrame, Config::default().frame_size),
    };
    let config = Config {
        frame_size,
        ..Config::default()
    };
    let mut analyzer = Sender::new(config, Role::Instrument).with_framing(framing);
    let first = analyzer.send(message.to_vec());
    let mut sim = Sim::new(
        analyzer,
        Receiver::new(Config::default()),
        scenario.faults(),
    );
    sim.apply(Side::A, first);
    assert!(sim.run(), "{scenario:?} {cut:?}: the link got stuck");
    assert_eq!(sim.delivered, 1, "{scenario:?} {cut:?}: delivered once");
    assert_eq!(sim.stored.len(), 1, "{scenario:?} {cut:?}: stored once");
    let a = sim.errors_of(Side::A);
    let b = sim.errors_of(Side::B);
    let has = |errs: &[link::Error], f: fn(&link::Error) -> bool| errs.iter().any(f);
    // With one frame only (short messages packed in 240), faults aimed at frame 2 never fire.
    let multi = sim.frames_sent > 1 && cut != Cut::Packed240;
    match scenario {
        Scenario::Clean | Scenario::GarbledAckMakesDuplicate => {
            assert!(b.is_empty(), "{scenario:?} {cut:?}: {b:?}");
            assert_eq!(sim.emitted, 1);
        }
        Scenario::CorruptChecksum if multi => {
            assert!(
                has(&b, |e| matches!(e, link::Error::Checksum { .. })),
                "{b:?}"
            );
        }
        Scenario::ReceiverTimeout if multi => {
            assert!(
                has(
                    &b,
                    |e| matches!(e, link::Error::ReceiveTimeout { bytes } if *bytes > 0)
                ),
                "{b:?}"
            );
            assert!(
                has(&a, |e| matches!(e, link::Error::ReplyTimeout { .. })),
                "{a:?}"
            );
        }
        Scenario::InterruptedByEot if multi => {
            assert!(
                has(
                    &b,
                    |e| matches!(e, link::Error::Incomplete { bytes } if *bytes > 0)
                ),
                "{b:?}"
            );
            assert!(
                has(&a, |e| matches!(e, link::Error::ReplyTimeout { .. })),
                "{a:?}"
            );
        }
        Scenario::StoreFailsOnce => assert_eq!(sim.emitted, 2),
        _ => {}
    }
    sim.stored.pop().map(|(_, m)| m).unwrap_or_default()
}

// === inputs ===

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Message fixtures (everything in fixtures/astm but the session logs), sorted by stem.
fn message_fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixtures().join("astm"))
        .expect("fixtures/astm exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".txt")?.to_owned();
            (!stem.starts_with("session_")).then(|| (stem, std::fs::read(e.path()).ok()))
        })
        .filter_map(|(stem, bytes)| Some((stem, bytes?)))
        .collect();
    out.sort();
    out
}

/// Records of a text file as the analyzer sends them: `#` comment lines and blank lines
/// dropped, each record ended by CR.
fn as_wire_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n' || *b == b'\r') {
        if line.is_empty() || line.first() == Some(&b'#') {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\r');
    }
    out
}

/// Splits wire text into messages at each H record (byte-wise: Latin-1 text stays as is).
fn messages_of(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for record in wire.split_inclusive(|b| *b == b'\r') {
        if matches!(record.first(), Some(b'H' | b'h')) || out.is_empty() {
            out.push(Vec::new());
        }
        if let Some(m) = out.last_mut() {
            m.extend_from_slice(record);
        }
    }
    out
}

fn with_ctx<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").expect("tzdb has Europe/Berlin");
    let mut systems = BTreeMap::new();
    systems.insert("HOSP".to_owned(), "https://hospital.example/mrn".to_owned());
    systems.insert(
        "ASTM-P3".to_owned(),
        "https://hospital.example/mrn".to_owned(),
    );
    let ctx = Context {
        tenant: "north",
        source: "chem-analyzer",
        timezone: &tz,
        identifier_systems: &systems,
        system_base: "urn:caregate",
    };
    f(&ctx)
}

fn convert_astm(raw: &[u8]) -> Result<convert::Conversion, convert::Error> {
    with_ctx(|ctx| convert::convert_astm(ctx, raw))
}

/// One chunk of an astmio log: bytes from the analyzer, or the LIS side's replies.
#[derive(Debug, PartialEq)]
enum Chunk {
    Analyzer(Vec<u8>),
    Lis(Vec<u8>),
}

/// Reads the astmio notation: lines starting with ` - ` are the LIS side, all others analyzer
/// bytes; line breaks are where the logger's reads ended, not bytes on the wire, so consecutive
/// analyzer lines are joined before `[STX]`, `[CR]`, … become control bytes.
fn parse_log(text: &str) -> Vec<Chunk> {
    let mut raw: Vec<(bool, String)> = Vec::new();
    for line in text.lines() {
        let (lis, body) = match line.strip_prefix(" - ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        match raw.last_mut() {
            Some((l, s)) if *l == lis => s.push_str(body),
            _ => raw.push((lis, body.to_owned())),
        }
    }
    raw.into_iter()
        .map(|(lis, s)| {
            let bytes = translate(&s);
            if lis {
                Chunk::Lis(bytes)
            } else {
                Chunk::Analyzer(bytes)
            }
        })
        .collect()
}

fn translate(s: &str) -> Vec<u8> {
    const TOKENS: [(&str, u8); 9] = [
        ("[STX]", link::STX),
        ("[ETX]", link::ETX),
        ("[ETB]", link::ETB),
        ("[EOT]", link::EOT),
        ("[ENQ]", link::ENQ),
        ("[ACK]", link::ACK),
        ("[NAK]", link::NAK),
        ("[CR]", link::CR),
        ("[LF]", link::LF),
    ];
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for (token, byte) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push(byte);
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        rest = chars.as_str();
    }
    out
}

/// What a byte-for-byte replay of a log through the receiver gave.
#[derive(Default)]
struct Replay {
    sessions: usize,
    frames: usize,
    messages: Vec<Vec<u8>>,
    replies: Vec<u8>,
    logged_replies: Vec<u8>,
    errors: Vec<link::Error>,
}

fn replay(chunks: &[Chunk]) -> Replay {
    let mut r = Receiver::new(Config::default());
    let mut out = Replay::default();
    for chunk in chunks {
        let bytes = match chunk {
            Chunk::Lis(b) => {
                out.logged_replies.extend(b);
                continue;
            }
            Chunk::Analyzer(b) => b,
        };
        out.sessions += bytes.iter().filter(|b| **b == link::ENQ).count();
        out.frames += bytes.iter().filter(|b| **b == link::STX).count();
        let mut queue: VecDeque<Action> = r.on_bytes(bytes).into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send(b) => out.replies.extend(b),
                Action::Message(m) => {
                    out.messages.push(m);
                    queue.extend(r.stored());
                }
                Action::Error(e) => out.errors.push(e),
                _ => {}
            }
        }
    }
    out
}

/// tgenaux's `field-path: value` dump (`X.f`, and `X.f.r.c` for the valued components of
/// fields with components), to compare with PhadiaLIS2SampleMessage.out.txt.
fn dump(m: &Message<'_>) -> Vec<String> {
    let mut records: Vec<Record<'_>> = vec![m.header];
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
    let mut out = Vec::new();
    for r in records {
        let id = r.kind().id();
        for n in 1..=r.field_count() {
            let f = r.field(n);
            if (id == "H" && n == 2) || f.raw().is_empty() {
                continue;
            }
            out.push(format!("{id}.{n}:{}", f.raw()));
            let reps = f.repetitions().count();
            for (ri, rep) in f.repetitions().enumerate() {
                if rep.component_count() < 2 && reps < 2 {
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

// === golden Bundles ===

fn diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => diff(&format!("{path}.{k}"), ev, av, out),
                    None => out.push(format!("{path}.{k}: missing (expected {ev})")),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("{path}.{k}: unexpected {av}"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!("{path}: {} items, expected {}", a.len(), e.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{path}: {a}, expected {e}")),
    }
}

/// Stems with a golden `fhir/astm_<stem>.json`.
const GOLDEN: [&str; 4] = [
    "chemistry_panel_flags_ranges_comments",
    "glucose_protocols_7_5",
    "latin1_custom_delimiters_escapes",
    "qc_run_unknown_and_trailing_records",
];

#[test]
fn astm_fixtures_convert_to_their_golden_bundles() {
    let regenerate = std::env::var_os("CAREGATE_REGENERATE_ASTM_GOLDENS").is_some();
    for stem in GOLDEN {
        let raw = std::fs::read(fixtures().join(format!("astm/{stem}.txt"))).expect("fixture");
        let conv = convert_astm(&raw).expect("converts");
        let actual: Value = serde_json::from_str(&conv.bundle.to_json()).expect("json");
        let path = fixtures().join(format!("fhir/astm_{stem}.json"));
        if regenerate {
            let text = serde_json::to_string_pretty(&actual).expect("json");
            std::fs::write(&path, text + "\n").expect("golden written");
            eprintln!("REGENERATED {} (review it by eye)", path.display());
            continue;
        }
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("golden exists"))
                .expect("golden is JSON");
        let mut out = Vec::new();
        diff("$", &expected, &actual, &mut out);
        assert!(
            out.is_empty(),
            "{stem}: {} difference(s) from {}:\n  {}",
            out.len(),
            path.display(),
            out.join("\n  ")
        );
    }
}

#[test]
fn astm_fixture_reports_account_for_every_result_and_hold_no_patient_data() {
    for (stem, raw) in message_fixtures() {
        let a = convert_astm(&raw).expect("converts");
        let b = convert_astm(&raw).expect("converts");
        assert_eq!(
            a.bundle.to_json(),
            b.bundle.to_json(),
            "{stem}: deterministic"
        );
        let r = &a.report;
        assert_eq!(r.message_type, "ASTM^E1394");
        assert_eq!(
            r.obx_in,
            r.observations_out + r.obx_not_converted.len(),
            "{stem}"
        );
        let json = serde_json::to_string(r).expect("json");
        for phi in [
            "TEST000",
            "Testperson",
            "Erika",
            "Doe",
            "John",
            "PAT123",
            "19000101",
            "19700101",
            "5550100",
            "Test Street",
            "ACC1001",
            "SPEC001",
            "ller",
        ] {
            assert!(!json.contains(phi), "{stem}: report leaks {phi}");
        }
    }
}

#[test]
fn astm_chemistry_panel_reports_the_result_that_is_not_a_result_and_the_unknown_flag() {
    let raw = std::fs::read(fixtures().join("astm/chemistry_panel_flags_ranges_comments.txt"))
        .expect("fixture");
    let r = convert_astm(&raw).expect("converts").report;
    assert_eq!((r.obx_in, r.observations_out), (10, 9));
    let outcomes: Vec<(usize, ObxReason)> = r
        .obx_not_converted
        .iter()
        .map(|o| (o.segment, o.reason))
        .collect();
    assert_eq!(outcomes, [(15, ObxReason::NotAResult)]);
    assert!(
        r.warnings.iter().any(|w| w.segment == 13
            && w.field == "R-7"
            && w.kind == WarningKind::UnknownTableCode)
    );
    assert_eq!(r.unmapped_segments.get("C"), Some(&1), "the C after O");
    assert_eq!(
        r.unmapped_fields.get("R-3.5"),
        Some(&1),
        "the dilution component"
    );
}

#[test]
fn astm_qc_run_counts_every_record_it_does_not_convert() {
    let raw = std::fs::read(fixtures().join("astm/qc_run_unknown_and_trailing_records.txt"))
        .expect("fixture");
    let c = convert_astm(&raw).expect("converts");
    let r = &c.report;
    assert_eq!((r.obx_in, r.observations_out), (2, 1));
    let segments: Vec<(&str, usize)> = r
        .unmapped_segments
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(segments, [("?", 1), ("C", 1), ("M", 1), ("Q", 1), ("S", 1)]);
    let kinds: Vec<(usize, WarningKind)> = r.warnings.iter().map(|w| (w.segment, w.kind)).collect();
    assert!(
        kinds.contains(&(12, WarningKind::UnexpectedRecord)),
        "P after L"
    );
    assert!(kinds.contains(&(4, WarningKind::PatientNotIdentified)));
    assert!(
        c.bundle
            .to_json()
            .contains(r#""tag":[{"system":"urn:caregate:astm:processing-id","code":"Q"}]"#)
    );
}

// === the link with the fixtures ===

#[test]
fn astm_every_fixture_message_arrives_once_through_the_link_under_every_fault_and_converts() {
    for (stem, raw) in message_fixtures() {
        let wire = as_wire_text(&raw);
        let messages = messages_of(&wire);
        assert_eq!(messages.len(), 1, "{stem}: one message per fixture");
        let expected = messages.into_iter().next().unwrap_or_default();
        // The fixture with a record after L: only H … L is one message.
        let expected_message = match expected
            .windows(3)
            .position(|w| w == b"\rL|" || w == b"\rL!")
        {
            Some(i) => {
                let end = expected
                    .iter()
                    .skip(i + 1)
                    .position(|b| *b == b'\r')
                    .map_or(expected.len(), |e| i + 1 + e + 1);
                expected.get(..end).unwrap_or_default().to_vec()
            }
            None => expected.clone(),
        };
        for (cut, scenario) in combinations() {
            let got = deliver(&expected_message, cut, scenario);
            assert_eq!(got, expected_message, "{stem} {cut:?} {scenario:?}");
            convert_astm(&got).unwrap_or_else(|e| panic!("{stem} {scenario:?}: {e}"));
        }
    }
}

#[test]
fn astm_six_failed_stores_make_the_analyzer_abort_and_resend_the_whole_message_later() {
    let message = b"H|\\^&\rP|1|TEST0001\rO|1|S1\rR|1|^^^K|4.1\rL|1|N\r".to_vec();
    let mut analyzer = Sender::new(Config::default(), Role::Instrument);
    let first = analyzer.send(message.clone());
    let faults = Faults {
        fail_stores: 6,
        ..Faults::default()
    };
    let mut sim = Sim::new(analyzer, Receiver::new(Config::default()), faults);
    sim.apply(Side::A, first);
    assert!(sim.run());
    assert_eq!(sim.emitted, 7, "6 refused stores, then the complete resend");
    assert_eq!(sim.stored, [(Side::B, message)]);
    assert!(
        sim.errors_of(Side::A)
            .contains(&link::Error::RetriesExhausted {
                frame: 1,
                attempts: 6
            })
    );
    assert!(
        sim.now >= Duration::from_secs(10),
        "the resend waited for the back-off"
    );
}

#[test]
fn astm_a_record_longer_than_a_frame_is_split_with_etb_and_reassembled() {
    let long = format!("H|\\^&\rC|1|I|{}|G\rL|1\r", "x".repeat(700));
    let got = deliver(long.as_bytes(), Cut::PerRecord, Scenario::CorruptChecksum);
    assert_eq!(got, long.as_bytes());
}

#[test]
fn astm_contention_is_won_by_the_instrument_and_both_messages_arrive() {
    let to_lis = b"H|\\^&\rP|1|TEST0001\rL|1|N\r".to_vec();
    let to_instrument = b"H|\\^&\rQ|1|ALL\rL|1|N\r".to_vec();
    let mut instrument = Link::with_role(Config::default(), Role::Instrument);
    let mut lis = Link::new(Config::default());
    let a = instrument.send(to_lis.clone());
    let b = lis.send(to_instrument.clone());
    let mut sim = Sim::new(instrument, lis, Faults::default());
    // Both ENQs are on the wire before either arrives: contention.
    sim.apply(Side::A, a);
    sim.apply(Side::B, b);
    assert!(sim.run());
    assert_eq!(
        sim.stored,
        [(Side::B, to_lis), (Side::A, to_instrument)],
        "the instrument's message first"
    );
    assert!(sim.errors_of(Side::A).contains(&link::Error::Contention));
    assert!(sim.errors_of(Side::B).contains(&link::Error::Contention));
    assert!(
        sim.now >= Duration::from_secs(1),
        "the instrument waited 1 s"
    );
    assert!(
        sim.now < Duration::from_secs(20),
        "the LIS did not wait its full 20 s"
    );
}

#[test]
fn astm_session_log_fixture_gets_exactly_the_logged_replies() {
    let text = std::fs::read_to_string(
        fixtures().join("astm/session_glucose_nak_resend_and_etb_frames.txt"),
    )
    .expect("fixture");
    let r = replay(&parse_log(&text));
    assert_eq!(r.sessions, 2);
    assert_eq!(r.replies, r.logged_replies, "replies differ from the log");
    assert_eq!(r.messages.len(), 2);
    let glucose = as_wire_text(
        &std::fs::read(fixtures().join("astm/glucose_protocols_7_5.txt")).expect("fixture"),
    );
    assert!(r.messages.iter().all(|m| *m == glucose));
    assert_eq!(r.errors, [link::Error::Checksum { frame: b'2' }]);
}

// === the shared corpus ===

/// Messages of every transcript of the shared corpus, with the figures printed as they go.
struct CorpusFigures {
    transcripts: usize,
    messages: usize,
    parsed: usize,
    converted: usize,
    observations: usize,
}

fn check_message(name: &str, m: &[u8], figures: &mut CorpusFigures) {
    figures.messages += 1;
    let text = record::decode(m);
    match Message::parse(&text) {
        Ok(_) => figures.parsed += 1,
        Err(e) => {
            eprintln!("  {name}: does not parse: {e}");
            return;
        }
    }
    match convert_astm(m) {
        Ok(c) => {
            figures.converted += 1;
            figures.observations += c.report.observations_out;
            assert_eq!(
                c.report.obx_in,
                c.report.observations_out + c.report.obx_not_converted.len(),
                "{name}"
            );
        }
        Err(e) => eprintln!("  {name}: does not convert: {e}"),
    }
}

/// BS-240: 24 sessions fail the checksum; in 21 more the logger wrote the frame after the
/// session's EOT (or logged no frame), so replayed as logged the receiver is neutral when the
/// frame comes and rightly ignores it; in 17 of the delivered ones the EOT was logged before
/// the LIS reply (`TerminatedBeforeReply`: stored, not answered).
const BS240_DELIVERED: usize = 112;
const BS240_PARSED: usize = 112;

#[test]
fn astm_corpus_analyzer_logs_replay_byte_for_byte_and_every_intact_session_converts() {
    let Some(dir) = corpus_dir("astm") else {
        return;
    };
    // (log, sessions, frames, messages delivered, of which parse and convert). The logger
    // garbled some sessions by interleaving lines: their frames fail the checksum or carry a
    // wrong frame number and are refused (NAK), never delivered. The corpus README counts 3
    // Access 2 sessions whose checksums are all right; in one of them a frame-number character
    // was moved inside its frame, so 2 arrive. A sum checksum cannot see bytes moved within a
    // frame: one delivered Access 2 session has its H record scrambled that way, is stored
    // (the link cannot know) and is refused by the parser (bad H-2 delimiters).
    let logs = [
        (
            "astmio/example_astm/Acquired/access2_logs.txt",
            12,
            63,
            2,
            1,
        ),
        (
            "astmio/example_astm/Acquired/bs240_logs.txt",
            157,
            157,
            BS240_DELIVERED,
            BS240_PARSED,
        ),
    ];
    for (name, sessions, frames, delivered, parsed) in logs {
        let text = std::fs::read_to_string(dir.join(name)).expect("corpus log");
        let r = replay(&parse_log(&text));
        let mut figures = CorpusFigures {
            transcripts: 1,
            messages: 0,
            parsed: 0,
            converted: 0,
            observations: 0,
        };
        for m in &r.messages {
            check_message(name, m, &mut figures);
        }
        let checksum_naks = r
            .errors
            .iter()
            .filter(|e| matches!(e, link::Error::Checksum { .. }))
            .count();
        eprintln!(
            "ASTM corpus {name}: {} sessions, {} frames ({checksum_naks} checksum NAKs), {} messages delivered, {} parsed, {} converted, {} Observations",
            r.sessions,
            r.frames,
            figures.messages,
            figures.parsed,
            figures.converted,
            figures.observations
        );
        assert_eq!(
            (r.sessions, r.frames, r.messages.len()),
            (sessions, frames, delivered),
            "{name}"
        );
        assert_eq!(figures.parsed, parsed, "{name}");
        assert_eq!(figures.converted, parsed, "{name}");
        assert_eq!(figures.transcripts, 1);
    }
}

#[test]
fn astm_corpus_transcripts_go_through_the_simulated_analyzer_under_every_fault() {
    let Some(dir) = corpus_dir("astm") else {
        return;
    };
    let mut figures = CorpusFigures {
        transcripts: 0,
        messages: 0,
        parsed: 0,
        converted: 0,
        observations: 0,
    };
    let mut fragments = 0;
    let mut files: Vec<PathBuf> = crate::support::walk(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .filter(|p| !p.to_string_lossy().ends_with(".out.txt"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .strip_prefix(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        figures.transcripts += 1;
        let bytes = std::fs::read(&path).expect("corpus file");
        let messages = if name.starts_with("astmio/") {
            // Analyzer logs: the messages of the sessions that arrived intact byte for byte.
            replay(&parse_log(&String::from_utf8_lossy(&bytes))).messages
        } else {
            messages_of(&as_wire_text(&bytes))
        };
        for m in messages {
            if !matches!(m.first(), Some(b'H' | b'h')) {
                // A record fragment without H and L: the receiver must not deliver it.
                fragments += 1;
                let mut analyzer = Sender::new(Config::default(), Role::Instrument)
                    .with_framing(Framing::RecordPerFrame);
                let first = analyzer.send(m.clone());
                let mut sim = Sim::new(
                    analyzer,
                    Receiver::new(Config::default()),
                    Faults::default(),
                );
                sim.apply(Side::A, first);
                assert!(sim.run(), "{name}");
                assert!(sim.stored.is_empty(), "{name}: a fragment was delivered");
                assert!(
                    sim.errors_of(Side::B)
                        .iter()
                        .any(|e| matches!(e, link::Error::Incomplete { .. }))
                );
                eprintln!(
                    "  {name}: record fragment without H/L: discarded by the receiver as incomplete"
                );
                continue;
            }
            for (cut, scenario) in combinations() {
                let got = deliver(&m, cut, scenario);
                assert_eq!(got, m, "{name} {scenario:?} {cut:?}");
            }
            check_message(&name, &m, &mut figures);
        }
    }
    eprintln!(
        "ASTM corpus via simulated analyzer ({} fault/framing combinations each): {} transcripts, {} messages ({} fragments discarded), {} parsed, {} converted, {} Observations",
        combinations().count(),
        figures.transcripts,
        figures.messages,
        fragments,
        figures.parsed,
        figures.converted,
        figures.observations
    );
    assert_eq!(figures.transcripts, 6);
    assert_eq!(fragments, 1);
    // Access 2 (2 delivered as logged), BS-240 (112), tgenaux (3 messages and the fragment);
    // the one that does not parse is the scrambled Access 2 session described above.
    assert_eq!(figures.messages, 2 + BS240_DELIVERED + 3);
    assert_eq!(figures.parsed, figures.messages - 1);
    assert_eq!(figures.converted, figures.parsed);
}

#[test]
fn astm_corpus_phadia_message_parses_to_the_authors_field_dump() {
    let Some(dir) = corpus_dir("astm/tgenaux-astm-lis/ExampleMessages/ASTM") else {
        return;
    };
    let raw = std::fs::read(dir.join("PhadiaLIS2SampleMessage.txt")).expect("corpus file");
    let wire = as_wire_text(&raw);
    let text = record::decode(&wire);
    let m = Message::parse(&text).expect("parses");
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let expected: Vec<String> =
        std::fs::read_to_string(dir.join("PhadiaLIS2SampleMessage.out.txt"))
            .expect("dump")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
    assert_eq!(dump(&m), expected);
}

#[test]
fn astm_corpus_repeat_fields_fragment_parses_with_default_delimiters() {
    let Some(dir) = corpus_dir("astm/tgenaux-astm-lis/ExampleMessages/ASTM") else {
        return;
    };
    let raw = std::fs::read_to_string(dir.join("RepeatFields.txt")).expect("corpus file");
    let line = raw.lines().next().unwrap_or_default();
    let o = Record::new(1, line, Delimiters::default());
    assert_eq!(o.kind(), record::RecordType::Order);
    let ids: Vec<&str> = o.field(3).repetitions().map(|r| r.raw()).collect();
    assert_eq!(ids, ["SID102", "SID103"]);
    assert_eq!(o.field(16).repetitions().count(), 2);
    assert_eq!(
        Message::parse(&raw).err(),
        Some(record::Error::MissingHeader)
    );
}

#[test]
fn astm_a_lost_final_ack_stores_the_message_twice_under_the_same_ids() {
    // The ACK of the frame that completed the message is lost after the message was stored:
    // the analyzer times out, terminates and later resends the whole message. The gateway
    // stores it again (at-least-once); both copies convert to the same resource ids, so the
    // FHIR server ends up with one copy of each result.
    let message = as_wire_text(
        &std::fs::read(fixtures().join("astm/glucose_protocols_7_5.txt")).expect("fixture"),
    );
    let mut analyzer =
        Sender::new(Config::default(), Role::Instrument).with_framing(Framing::RecordPerFrame);
    let first = analyzer.send(message.clone());
    let faults = Faults {
        drop_reply_to_frame: Some(4),
        ..Faults::default()
    };
    let mut sim = Sim::new(analyzer, Receiver::new(Config::default()), faults);
    sim.apply(Side::A, first);
    assert!(sim.run());
    assert_eq!(sim.stored.len(), 2);
    let ids = |m: &[u8]| -> Vec<String> {
        convert_astm(m)
            .expect("converts")
            .bundle
            .entry
            .iter()
            .map(|e| e.full_url.clone())
            .collect()
    };
    let copies: Vec<Vec<String>> = sim.stored.iter().map(|(_, m)| ids(m)).collect();
    assert_eq!(copies.first(), copies.get(1));
}

#[test]
fn astm_resource_ids_match_uuid5_computed_independently() {
    // Python: uuid.uuid5(UUID("c1ec1301-88f4-5f90-bdf1-c762c5e1f42f"), "\x1f".join(parts))
    // with the name layouts documented in src/convert/astm.rs and src/convert/id.rs.
    let raw = std::fs::read(fixtures().join("astm/glucose_protocols_7_5.txt")).expect("fixture");
    let bundle = convert_astm(&raw).expect("converts").bundle;
    let urls: Vec<&str> = bundle.entry.iter().map(|e| e.full_url.as_str()).collect();
    for expected in [
        // north ␟ chem-analyzer ␟ astm ␟ Observation ␟ ACME01 ␟ SPEC001 ␟ ^^GLU ␟ 20240105102900
        "urn:uuid:d57e5bf3-72c6-5cb9-a09c-2b1105e0ce84",
        // north ␟ Patient ␟ urn:caregate:north:identifiers:ASTM-P4 ␟ PAT123
        "urn:uuid:7baa06e9-860c-5daf-a26f-e133c79390cf",
        // north ␟ Specimen ␟ urn:caregate:north:identifiers:ASTM-O3 ␟ SPEC001
        "urn:uuid:8ccbcc9a-8464-5e37-8bd1-2a8540dc0859",
    ] {
        assert!(urls.contains(&expected), "{expected} not in {urls:?}");
    }
}
