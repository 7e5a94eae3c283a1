//! Sans-IO ASTM E1381 (CLSI LIS1-A) link layer: establishment, frames, replies, termination
//! (protocols.md §7.2-7.4), for both ends of the line.
//!
//! - [`Receiver`]: the LIS side caregate plays (an analyzer sends, caregate answers).
//! - [`Sender`]: the sending side, for the analyzer simulator in tests and for caregate's own
//!   outbound messages.
//! - [`Link`]: a computer (LIS) station holding both, with the contention rule of §7.2.
//!
//! None of them does I/O or reads a clock. Bytes, timer expiries and the outcome of storing a
//! message go in; [`Action`]s come out, in the order they must be carried out:
//!
//! ```text
//!   serial bytes ──on_bytes──▶ ┌──────────┐ ──Send(bytes)────────▶ serial port
//!   Timeout(timer) ─────────▶  │ Receiver │ ──ArmTimer/CancelTimer▶ driver timers
//!   stored() / store_failed() ▶│ (Sender) │ ──Message(text)──────▶ queue.push, then stored()
//!                              └──────────┘ ──Error(..)──────────▶ log / metrics
//! ```
//!
//! Wire format (§7.4): `STX FN text ETB|ETX C1 C2 CR LF`, FN `1`..`7`,`0`,`1`.. (a new transfer
//! starts at 1, a resent frame keeps its number), C1 C2 = sum of the bytes from FN through
//! ETB/ETX modulo 256 as two hex digits (upper case sent, either case accepted).
//!
//! Receiver states:
//!
//! ```text
//!            ENQ / ACK (NAK when busy)            frame ok / ACK   (dup: ACK, not appended)
//!  Neutral ─────────────────────────────▶ Transfer ◀───────┐ bad frame / NAK
//!     ▲  ◀── EOT, 30 s timeout (partial    │  │ ───────────┘
//!     │      message discarded)            │  │ ETX frame ending in an L record
//!     │                                    │  ▼ / Message(text), no reply yet
//!     └──── (EOT seen while storing) ── AwaitingStore ── stored() / ACK ──────▶ Transfer
//!                                                     ── store_failed() / NAK ─▶ Transfer
//! ```
//!
//! Invariants:
//! - **Durability before acknowledgement.** The frame that completes a message (an ETX frame
//!   whose text ends with the E1394 terminator record `L`) is not answered when it arrives: the
//!   receiver emits [`Action::Message`] and waits. [`Receiver::stored`] sends the ACK;
//!   [`Receiver::store_failed`] sends a NAK, so the sender resends that same frame (same frame
//!   number), the message is emitted again and storing is retried; after 6 NAKs the sender gives
//!   up with EOT and keeps the message to resend later (§7.2). While a message awaits the
//!   outcome nothing else is answered, so a late `stored()` can never acknowledge another
//!   message.
//! - **Message boundaries are E1394 ones.** Analyzers send either one record per ETX frame or
//!   many records split over ETB frames (§7.4); both are reassembled and a message ends with its
//!   `L` record. EOT, a new ENQ or the 30 s receive timeout before that discard the partial
//!   message (§7.5 default) and report it.
//! - **No panic and no unbounded growth on any input.** Frames longer than the configured cap
//!   are NAKed without being buffered; a message longer than its cap is refused until EOT.
//! - **No patient data in errors or `Debug`.** [`Error`] carries frame numbers and sizes only;
//!   `Debug` of an [`Action`] prints lengths, not bytes.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Start of frame.
pub const STX: u8 = 0x02;
/// End of the last frame of a message part.
pub const ETX: u8 = 0x03;
/// End of transmission (termination; receiver interrupt when sent as a reply).
pub const EOT: u8 = 0x04;
/// Enquiry (establishment).
pub const ENQ: u8 = 0x05;
/// Positive reply.
pub const ACK: u8 = 0x06;
/// Line feed (frame trailer).
pub const LF: u8 = 0x0A;
/// Carriage return (record terminator and frame trailer).
pub const CR: u8 = 0x0D;
/// Negative reply.
pub const NAK: u8 = 0x15;
/// End of an intermediate frame.
pub const ETB: u8 = 0x17;

/// Characters per frame besides the text: STX, FN, ETB/ETX, C1, C2, CR, LF.
pub const FRAME_OVERHEAD: usize = 7;

// === impl Config ===

/// Link-layer settings. Defaults are the values of protocols.md §7.3-7.4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Size of the frames this side sends, overhead included: 247 (240 text characters), the
    /// limit of E1381-91/95 that most analyzers expect.
    pub frame_size: usize,
    /// Largest frame the receiver accepts, overhead included: 64,000 (CLSI LIS1-A). Not 247:
    /// analyzers in the field send longer frames (the Mindray BS-240 of the shared corpus sends
    /// a whole message of about 3,000 characters in one frame), and refusing them would lose
    /// every such message after six NAKs.
    pub max_receive_frame: usize,
    /// Largest reassembled message the receiver buffers (bytes of text).
    pub max_message: usize,
    /// A frame NAKed this many times makes the sender abort the message (6).
    pub max_retries: u8,
    /// Sender: wait for the reply to ENQ (15 s).
    pub establish_timeout: Duration,
    /// Sender: wait for the reply to a frame (15 s).
    pub reply_timeout: Duration,
    /// Receiver: wait for the next frame or EOT after each reply (30 s).
    pub receive_timeout: Duration,
    /// Sender: pause after a NAK to ENQ, and after an aborted message, before the next ENQ
    /// (10 s).
    pub busy_backoff: Duration,
    /// Sender: pause after honouring a receiver interrupt (15 s).
    pub interrupt_backoff: Duration,
    /// Instrument: pause after contention before its next ENQ (1 s).
    pub contention_backoff: Duration,
    /// Computer: how long it waits for the instrument's ENQ after contention before it regards
    /// the line as neutral again (20 s).
    pub contention_wait: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            frame_size: 247,
            max_receive_frame: 64_000,
            max_message: 4 * 1024 * 1024,
            max_retries: 6,
            establish_timeout: Duration::from_secs(15),
            reply_timeout: Duration::from_secs(15),
            receive_timeout: Duration::from_secs(30),
            busy_backoff: Duration::from_secs(10),
            interrupt_backoff: Duration::from_secs(15),
            contention_backoff: Duration::from_secs(1),
            contention_wait: Duration::from_secs(20),
        }
    }
}

impl Config {
    /// Text characters per frame this side sends (at least 1).
    pub fn text_per_frame(&self) -> usize {
        self.frame_size.saturating_sub(FRAME_OVERHEAD).max(1)
    }
}

// === Timer, Event, Action, Error ===

/// The timers a link needs; the driver keeps at most one running per kind (arming a running
/// timer restarts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Receiver: next frame or EOT (30 s).
    Receive,
    /// Sender: reply to ENQ (15 s).
    Establish,
    /// Sender: reply to a frame (15 s).
    Reply,
    /// Sender: pause before the next ENQ (busy, interrupt, contention).
    Backoff,
}

/// An input to a state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Bytes read from the line.
    Bytes(&'a [u8]),
    /// A timer armed by an [`Action::ArmTimer`] expired.
    Timeout(Timer),
    /// The message of the last [`Action::Message`] is stored durably.
    Stored,
    /// The message of the last [`Action::Message`] could not be stored.
    StoreFailed,
}

/// What the driver must do, in order.
#[derive(Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the line.
    Send(Vec<u8>),
    /// A complete message: the text of its frames concatenated (frame numbers, checksums and
    /// CR LF trailers removed), records separated by CR. Store it, then call
    /// [`Receiver::stored`] (or [`Receiver::store_failed`]).
    Message(Vec<u8>),
    /// Sender: the oldest queued message was accepted by the receiver and left the queue.
    Delivered,
    /// Start (or restart) a timer.
    ArmTimer(Timer, Duration),
    /// Stop a timer (no effect when it is not running).
    CancelTimer(Timer),
    /// Something to log and count; the machine has already reacted to it.
    Error(Error),
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lengths only: message text is patient data.
        match self {
            Action::Send(b) => match b.as_slice() {
                [ACK] => f.write_str("Send(ACK)"),
                [NAK] => f.write_str("Send(NAK)"),
                [ENQ] => f.write_str("Send(ENQ)"),
                [EOT] => f.write_str("Send(EOT)"),
                [STX, n, ..] => write!(f, "Send(frame {} of {} bytes)", *n as char, b.len()),
                _ => write!(f, "Send({} bytes)", b.len()),
            },
            Action::Message(m) => write!(f, "Message({} bytes)", m.len()),
            Action::Delivered => f.write_str("Delivered"),
            Action::ArmTimer(t, d) => write!(f, "ArmTimer({t:?}, {d:?})"),
            Action::CancelTimer(t) => write!(f, "CancelTimer({t:?})"),
            Action::Error(e) => write!(f, "Error({e:?})"),
        }
    }
}

/// Link events worth logging. The machine has already answered them as §7 says; none carries
/// message content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A frame's checksum did not match (answered NAK).
    #[error("frame {frame}: checksum mismatch")]
    Checksum {
        /// The frame number as received (`0`-`7`, or the raw byte when not a digit).
        frame: u8,
    },
    /// A frame number was neither the expected one nor a repeat of the last (answered NAK).
    #[error("frame {got}: expected frame number {expected}")]
    FrameNumber {
        /// The number the receiver expected.
        expected: u8,
        /// The number received.
        got: u8,
    },
    /// The frame number or checksum characters are not valid (answered NAK).
    #[error("malformed frame (frame number or checksum characters)")]
    MalformedFrame,
    /// A frame longer than the configured cap (answered NAK, not buffered).
    #[error("frame longer than {limit} characters")]
    FrameTooLong {
        /// The configured cap.
        limit: usize,
    },
    /// The reassembled message outgrew its cap: it is discarded and every further frame of the
    /// transfer is NAKed until EOT.
    #[error("message longer than {limit} bytes")]
    MessageTooLong {
        /// The configured cap.
        limit: usize,
    },
    /// EOT before the message's terminator record: the partial message was discarded.
    #[error("transfer ended before the terminator record, {bytes} bytes discarded")]
    Incomplete {
        /// Bytes of text discarded.
        bytes: usize,
    },
    /// A new ENQ in the middle of a transfer: the partial message was discarded.
    #[error("transfer restarted by ENQ, {bytes} bytes discarded")]
    Restarted {
        /// Bytes of text discarded.
        bytes: usize,
    },
    /// Neither a frame nor EOT within the receive timeout: partial message discarded.
    #[error("receive timeout, {bytes} bytes discarded")]
    ReceiveTimeout {
        /// Bytes of text discarded.
        bytes: usize,
    },
    /// The sender terminated while the completed message was being stored: it received no
    /// reply, so it will resend the message (a duplicate, harmless with idempotent ids).
    #[error("sender terminated before the message was acknowledged")]
    TerminatedBeforeReply,
    /// Sender: the receiver answered ENQ with NAK (busy).
    #[error("receiver busy")]
    Busy,
    /// Sender: no reply to ENQ in time (EOT sent).
    #[error("no reply to ENQ")]
    EstablishTimeout,
    /// Sender: no reply to a frame in time (EOT sent, message kept for a full resend).
    #[error("frame {frame}: no reply")]
    ReplyTimeout {
        /// The frame number.
        frame: u8,
    },
    /// Sender: a frame was refused `attempts` times (EOT sent, message kept).
    #[error("frame {frame}: refused {attempts} times, message aborted")]
    RetriesExhausted {
        /// The frame number.
        frame: u8,
        /// How many times it was refused.
        attempts: u8,
    },
    /// Sender: the receiver answered a frame with EOT (interrupt); honoured.
    #[error("receiver interrupted the transfer")]
    Interrupted,
    /// Both sides sent ENQ; resolved by the §7.2 rule (the computer yields).
    #[error("contention: both sides sent ENQ")]
    Contention,
}

// === frames ===

/// Sum of `bytes` modulo 256 (the E1381 checksum over FN .. ETB/ETX).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

fn hex_digit(n: u8) -> u8 {
    match n & 0x0f {
        d @ 0..=9 => b'0' + d,
        d => b'A' + d - 10,
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// One frame on the wire: `STX FN text ETB|ETX C1 C2 CR LF` (`number` is taken modulo 8).
pub fn encode_frame(number: u8, text: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + FRAME_OVERHEAD);
    out.push(STX);
    out.push(b'0' + number % 8);
    out.extend_from_slice(text);
    out.push(if last { ETX } else { ETB });
    let sum = checksum(out.get(1..).unwrap_or_default());
    out.push(hex_digit(sum >> 4));
    out.push(hex_digit(sum));
    out.push(CR);
    out.push(LF);
    out
}

/// True when the last record of `text` is an E1394 terminator record (`L`, any case, followed
/// by a delimiter or the end of the record).
fn ends_with_terminator(text: &[u8]) -> bool {
    let end = text
        .iter()
        .rposition(|b| *b != CR && *b != LF)
        .map_or(0, |i| i + 1);
    let body = text.get(..end).unwrap_or_default();
    let start = body
        .iter()
        .rposition(|b| *b == CR || *b == LF)
        .map_or(0, |i| i + 1);
    let last = body.get(start..).unwrap_or_default();
    matches!(last.first(), Some(b'L' | b'l'))
        && last.get(1).is_none_or(|b| !b.is_ascii_alphanumeric())
}

// === impl Receiver ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Neutral,
    Transfer,
    /// A Message was emitted; its last frame is unanswered.
    AwaitingStore {
        number: u8,
        rollback: usize,
        terminated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    /// Between frames: only STX, EOT, ENQ matter.
    Idle,
    /// After STX: the frame number comes next.
    Number,
    /// Collecting text up to ETB/ETX.
    Text,
    /// After ETB/ETX: first checksum character next.
    Check1,
    /// Second checksum character next.
    Check2(u8),
}

/// The receiving end of an E1381 link (caregate's side of an analyzer connection). See the
/// module documentation for the states and the durability contract.
#[derive(Debug)]
pub struct Receiver {
    config: Config,
    busy: bool,
    phase: Phase,
    frame: FrameState,
    number: u8,
    sum: u8,
    end: u8,
    frame_text: Vec<u8>,
    oversized: bool,
    last_number: Option<u8>,
    text: Vec<u8>,
    rejecting: bool,
}

impl Receiver {
    /// A neutral receiver.
    pub fn new(config: Config) -> Receiver {
        Receiver {
            config,
            busy: false,
            phase: Phase::Neutral,
            frame: FrameState::Idle,
            number: 0,
            sum: 0,
            end: ETX,
            frame_text: Vec::new(),
            oversized: false,
            last_number: None,
            text: Vec::new(),
            rejecting: false,
        }
    }

    /// While busy, ENQ is answered with NAK (the sender waits 10 s and tries again): for when
    /// messages cannot be stored (queue full), so none is accepted only to be refused later.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// True in the neutral state (no transfer in progress, nothing awaiting storage).
    pub fn is_neutral(&self) -> bool {
        self.phase == Phase::Neutral
    }

    /// True while an emitted message awaits [`Receiver::stored`] / [`Receiver::store_failed`].
    pub fn awaiting_store(&self) -> bool {
        matches!(self.phase, Phase::AwaitingStore { .. })
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: Event<'_>) -> Vec<Action> {
        match event {
            Event::Bytes(b) => self.on_bytes(b),
            Event::Timeout(t) => self.on_timeout(t),
            Event::Stored => self.stored(),
            Event::StoreFailed => self.store_failed(),
        }
    }

    /// Feeds bytes read from the line.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        for &b in bytes {
            self.step(b, &mut out);
        }
        out
    }

    /// A timer expired. Only [`Timer::Receive`] concerns the receiver; stale expiries are
    /// ignored.
    pub fn on_timeout(&mut self, timer: Timer) -> Vec<Action> {
        let mut out = Vec::new();
        if timer == Timer::Receive && self.phase == Phase::Transfer {
            let bytes = self.discard();
            self.phase = Phase::Neutral;
            out.push(Action::Error(Error::ReceiveTimeout { bytes }));
        }
        out
    }

    /// The last emitted message is stored: acknowledge its final frame.
    pub fn stored(&mut self) -> Vec<Action> {
        let Phase::AwaitingStore {
            number, terminated, ..
        } = self.phase
        else {
            return Vec::new();
        };
        self.text.clear();
        if terminated {
            self.phase = Phase::Neutral;
            return Vec::new();
        }
        self.last_number = Some(number);
        self.phase = Phase::Transfer;
        vec![
            Action::Send(vec![ACK]),
            Action::ArmTimer(Timer::Receive, self.config.receive_timeout),
        ]
    }

    /// The last emitted message could not be stored: NAK its final frame, so the sender
    /// resends it (the message is emitted again) or, after its retry limit, aborts and keeps
    /// the message for later.
    pub fn store_failed(&mut self) -> Vec<Action> {
        let Phase::AwaitingStore {
            rollback,
            terminated,
            ..
        } = self.phase
        else {
            return Vec::new();
        };
        if terminated {
            self.text.clear();
            self.phase = Phase::Neutral;
            return Vec::new();
        }
        self.text.truncate(rollback);
        self.phase = Phase::Transfer;
        vec![
            Action::Send(vec![NAK]),
            Action::ArmTimer(Timer::Receive, self.config.receive_timeout),
        ]
    }

    /// Drops the partial message and frame; returns how many text bytes were dropped.
    fn discard(&mut self) -> usize {
        let bytes = self.text.len()
            + match self.frame {
                FrameState::Idle => 0,
                _ => self.frame_text.len(),
            };
        self.text.clear();
        self.frame_text.clear();
        self.frame = FrameState::Idle;
        self.last_number = None;
        self.rejecting = false;
        bytes
    }

    fn establish(&mut self, out: &mut Vec<Action>) {
        if self.busy {
            out.push(Action::Send(vec![NAK]));
            self.phase = Phase::Neutral;
            return;
        }
        self.discard();
        self.phase = Phase::Transfer;
        out.push(Action::Send(vec![ACK]));
        out.push(Action::ArmTimer(
            Timer::Receive,
            self.config.receive_timeout,
        ));
    }

    fn reply(&self, byte: u8, out: &mut Vec<Action>) {
        out.push(Action::Send(vec![byte]));
        out.push(Action::ArmTimer(
            Timer::Receive,
            self.config.receive_timeout,
        ));
    }

    fn step(&mut self, b: u8, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Neutral => {
                if b == ENQ {
                    self.establish(out);
                }
            }
            Phase::AwaitingStore {
                number,
                rollback,
                terminated: false,
            } if b == EOT => {
                self.phase = Phase::AwaitingStore {
                    number,
                    rollback,
                    terminated: true,
                };
                out.push(Action::Error(Error::TerminatedBeforeReply));
            }
            Phase::AwaitingStore { .. } => {}
            Phase::Transfer => self.step_transfer(b, out),
        }
    }

    fn step_transfer(&mut self, b: u8, out: &mut Vec<Action>) {
        if b == EOT {
            let bytes = self.discard();
            self.phase = Phase::Neutral;
            out.push(Action::CancelTimer(Timer::Receive));
            if bytes > 0 {
                out.push(Action::Error(Error::Incomplete { bytes }));
            }
            return;
        }
        if b == STX {
            self.frame = FrameState::Number;
            self.frame_text.clear();
            self.oversized = false;
            self.sum = 0;
            return;
        }
        match self.frame {
            FrameState::Idle => {
                if b == ENQ {
                    let bytes = self.discard();
                    if bytes > 0 {
                        out.push(Action::Error(Error::Restarted { bytes }));
                    }
                    self.establish(out);
                }
            }
            FrameState::Number => {
                self.number = b;
                self.sum = b;
                self.frame = FrameState::Text;
            }
            FrameState::Text => {
                self.sum = self.sum.wrapping_add(b);
                if b == ETX || b == ETB {
                    self.end = b;
                    self.frame = FrameState::Check1;
                } else if self.frame_text.len() + FRAME_OVERHEAD < self.config.max_receive_frame {
                    self.frame_text.push(b);
                } else {
                    self.oversized = true;
                }
            }
            FrameState::Check1 => self.frame = FrameState::Check2(b),
            FrameState::Check2(c1) => {
                self.frame = FrameState::Idle;
                self.evaluate(c1, b, out);
            }
        }
    }

    /// Validates a complete frame and answers it (§7.4 frame validation).
    fn evaluate(&mut self, c1: u8, c2: u8, out: &mut Vec<Action>) {
        let received = match (hex_value(c1), hex_value(c2)) {
            (Some(h), Some(l)) => (h << 4) | l,
            _ => {
                out.push(Action::Error(Error::MalformedFrame));
                return self.reply(NAK, out);
            }
        };
        if self.oversized {
            out.push(Action::Error(Error::FrameTooLong {
                limit: self.config.max_receive_frame,
            }));
            return self.reply(NAK, out);
        }
        if received != self.sum {
            out.push(Action::Error(Error::Checksum { frame: self.number }));
            return self.reply(NAK, out);
        }
        let number = match self.number {
            n @ b'0'..=b'7' => n - b'0',
            _ => {
                out.push(Action::Error(Error::MalformedFrame));
                return self.reply(NAK, out);
            }
        };
        if self.rejecting {
            return self.reply(NAK, out);
        }
        if self.last_number == Some(number) {
            // A repeat after a lost ACK: acknowledge, do not append twice (§7.4).
            return self.reply(ACK, out);
        }
        let expected = self.last_number.map_or(1, |l| (l + 1) % 8);
        if number != expected {
            out.push(Action::Error(Error::FrameNumber {
                expected,
                got: number,
            }));
            return self.reply(NAK, out);
        }
        if self.text.len() + self.frame_text.len() > self.config.max_message {
            self.text.clear();
            self.rejecting = true;
            out.push(Action::Error(Error::MessageTooLong {
                limit: self.config.max_message,
            }));
            return self.reply(NAK, out);
        }
        let rollback = self.text.len();
        self.text.append(&mut self.frame_text);
        if self.end == ETX && ends_with_terminator(&self.text) {
            self.phase = Phase::AwaitingStore {
                number,
                rollback,
                terminated: false,
            };
            out.push(Action::CancelTimer(Timer::Receive));
            out.push(Action::Message(self.text.clone()));
            return;
        }
        self.last_number = Some(number);
        self.reply(ACK, out);
    }
}

// === impl Sender ===

/// Which end of the line a [`Sender`] is: it decides who yields on contention (§7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The analyzer: has priority; after contention it waits 1 s and sends ENQ again.
    Instrument,
    /// The LIS (caregate): yields; waits up to 20 s for the instrument's ENQ.
    Computer,
}

/// How a sender cuts a message into frames (§7.4: analyzers do both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The message text in as few frames as the frame size allows (ETB … ETX).
    Packed,
    /// Each record in its own ETX frame (a long record over ETB frames).
    RecordPerFrame,
}

#[derive(Debug)]
enum SenderState {
    Neutral,
    Backoff,
    Establishing,
    Transfer {
        chunks: Vec<(Vec<u8>, bool)>,
        index: usize,
        refused: u8,
    },
}

/// The sending end of an E1381 link: queues messages and sends each one in its own transfer
/// phase (ENQ … frames … EOT). A message leaves the queue only when its last frame was
/// accepted ([`Action::Delivered`]); an aborted message is resent completely later.
#[derive(Debug)]
pub struct Sender {
    config: Config,
    role: Role,
    framing: Framing,
    queue: VecDeque<Vec<u8>>,
    state: SenderState,
    number: u8,
}

impl Sender {
    /// An idle sender.
    pub fn new(config: Config, role: Role) -> Sender {
        Sender {
            config,
            role,
            framing: Framing::Packed,
            queue: VecDeque::new(),
            state: SenderState::Neutral,
            number: 1,
        }
    }

    /// Sets how messages are cut into frames.
    pub fn with_framing(mut self, framing: Framing) -> Sender {
        self.framing = framing;
        self
    }

    /// Messages not yet delivered (including the one in transfer).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// True while establishing or transferring (the sender owns the line).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            SenderState::Establishing | SenderState::Transfer { .. }
        )
    }

    /// True when neither active nor waiting out a back-off.
    pub fn is_neutral(&self) -> bool {
        matches!(self.state, SenderState::Neutral)
    }

    /// Queues a message (records separated by CR; a final CR is added when missing) and starts
    /// establishment when the sender is neutral.
    pub fn send(&mut self, message: Vec<u8>) -> Vec<Action> {
        self.enqueue(message);
        self.poll_start()
    }

    /// Queues a message without starting.
    pub fn enqueue(&mut self, mut message: Vec<u8>) {
        if message.last() != Some(&CR) {
            message.push(CR);
        }
        self.queue.push_back(message);
    }

    /// Starts establishment when neutral with messages queued.
    pub fn poll_start(&mut self) -> Vec<Action> {
        if !self.is_neutral() || self.queue.is_empty() {
            return Vec::new();
        }
        self.state = SenderState::Establishing;
        vec![
            Action::Send(vec![ENQ]),
            Action::ArmTimer(Timer::Establish, self.config.establish_timeout),
        ]
    }

    /// Ends a back-off early (the peer finished its own transfer and returned the line to
    /// neutral) and starts when messages are queued.
    pub fn resume(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, SenderState::Backoff) {
            self.state = SenderState::Neutral;
            out.push(Action::CancelTimer(Timer::Backoff));
        }
        out.extend(self.poll_start());
        out
    }

    /// Ends a back-off without starting (the line is in use); [`Sender::resume`] starts later.
    pub fn end_backoff(&mut self) {
        if matches!(self.state, SenderState::Backoff) {
            self.state = SenderState::Neutral;
        }
    }

    /// Feeds one event (`Stored`/`StoreFailed` do not concern a sender).
    pub fn handle(&mut self, event: Event<'_>) -> Vec<Action> {
        match event {
            Event::Bytes(b) => self.on_bytes(b),
            Event::Timeout(t) => self.on_timeout(t),
            Event::Stored | Event::StoreFailed => Vec::new(),
        }
    }

    /// Feeds bytes read from the line.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        for &b in bytes {
            self.step(b, &mut out);
        }
        out
    }

    /// A timer expired; stale expiries are ignored.
    pub fn on_timeout(&mut self, timer: Timer) -> Vec<Action> {
        let mut out = Vec::new();
        match (&self.state, timer) {
            (SenderState::Establishing, Timer::Establish) => {
                out.push(Action::Send(vec![EOT]));
                out.push(Action::Error(Error::EstablishTimeout));
                self.back_off(self.config.busy_backoff, &mut out);
            }
            (SenderState::Transfer { .. }, Timer::Reply) => {
                out.push(Action::Send(vec![EOT]));
                out.push(Action::Error(Error::ReplyTimeout { frame: self.number }));
                self.back_off(self.config.busy_backoff, &mut out);
            }
            (SenderState::Backoff, Timer::Backoff) => {
                self.state = SenderState::Neutral;
                out.extend(self.poll_start());
            }
            _ => {}
        }
        out
    }

    fn back_off(&mut self, wait: Duration, out: &mut Vec<Action>) {
        self.state = SenderState::Backoff;
        out.push(Action::ArmTimer(Timer::Backoff, wait));
    }

    fn chunks(&self, message: &[u8]) -> Vec<(Vec<u8>, bool)> {
        let n = self.config.text_per_frame();
        let mut out = Vec::new();
        let mut push_split = |text: &[u8]| {
            let parts: Vec<&[u8]> = text.chunks(n).collect();
            let count = parts.len();
            for (i, p) in parts.into_iter().enumerate() {
                out.push((p.to_vec(), i + 1 == count));
            }
        };
        match self.framing {
            Framing::Packed => push_split(message),
            Framing::RecordPerFrame => {
                for record in message.split_inclusive(|b| *b == CR) {
                    push_split(record);
                }
            }
        }
        if out.is_empty() {
            out.push((Vec::new(), true));
        }
        out
    }

    fn send_frame(&self, chunks: &[(Vec<u8>, bool)], index: usize, out: &mut Vec<Action>) {
        if let Some((text, last)) = chunks.get(index) {
            out.push(Action::Send(encode_frame(self.number, text, *last)));
            out.push(Action::ArmTimer(Timer::Reply, self.config.reply_timeout));
        }
    }

    fn step(&mut self, b: u8, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.state, SenderState::Neutral) {
            SenderState::Establishing => match b {
                ACK => {
                    let chunks = self.queue.front().map(|m| self.chunks(m));
                    let Some(chunks) = chunks else {
                        // Nothing to send after all: terminate.
                        out.push(Action::CancelTimer(Timer::Establish));
                        out.push(Action::Send(vec![EOT]));
                        return;
                    };
                    self.number = 1;
                    out.push(Action::CancelTimer(Timer::Establish));
                    self.send_frame(&chunks, 0, out);
                    self.state = SenderState::Transfer {
                        chunks,
                        index: 0,
                        refused: 0,
                    };
                }
                NAK => {
                    out.push(Action::CancelTimer(Timer::Establish));
                    out.push(Action::Error(Error::Busy));
                    self.back_off(self.config.busy_backoff, out);
                }
                ENQ => {
                    out.push(Action::CancelTimer(Timer::Establish));
                    out.push(Action::Error(Error::Contention));
                    let wait = match self.role {
                        Role::Instrument => self.config.contention_backoff,
                        Role::Computer => self.config.contention_wait,
                    };
                    self.back_off(wait, out);
                }
                _ => self.state = SenderState::Establishing,
            },
            SenderState::Transfer {
                chunks,
                index,
                refused,
            } => self.step_transfer(b, chunks, index, refused, out),
            other => self.state = other,
        }
    }

    fn step_transfer(
        &mut self,
        b: u8,
        chunks: Vec<(Vec<u8>, bool)>,
        index: usize,
        refused: u8,
        out: &mut Vec<Action>,
    ) {
        if b == ACK || b == EOT {
            // EOT as a reply is a positive acknowledgement plus a request to stop (§7.2).
            let next = index + 1;
            self.number = (self.number + 1) % 8;
            let done = next >= chunks.len();
            if done {
                self.queue.pop_front();
                out.push(Action::Delivered);
            }
            if b == EOT {
                out.push(Action::CancelTimer(Timer::Reply));
                out.push(Action::Send(vec![EOT]));
                out.push(Action::Error(Error::Interrupted));
                return self.back_off(self.config.interrupt_backoff, out);
            }
            if done {
                out.push(Action::CancelTimer(Timer::Reply));
                out.push(Action::Send(vec![EOT]));
                self.state = SenderState::Neutral;
                out.extend(self.poll_start());
                return;
            }
            self.send_frame(&chunks, next, out);
            self.state = SenderState::Transfer {
                chunks,
                index: next,
                refused: 0,
            };
            return;
        }
        // NAK, or any other character, which counts as NAK (§7.2).
        let refused = refused.saturating_add(1);
        if refused >= self.config.max_retries {
            out.push(Action::CancelTimer(Timer::Reply));
            out.push(Action::Send(vec![EOT]));
            out.push(Action::Error(Error::RetriesExhausted {
                frame: self.number,
                attempts: refused,
            }));
            return self.back_off(self.config.busy_backoff, out);
        }
        self.send_frame(&chunks, index, out);
        self.state = SenderState::Transfer {
            chunks,
            index,
            refused,
        };
    }
}

// === impl Link ===

/// A computer (LIS) station: receives from the instrument and may send to it, resolving
/// contention as §7.2 says (the instrument has priority; the computer stops, answers the
/// instrument's next ENQ and retries its own message once the line is neutral again, or after
/// 20 s without that ENQ).
#[derive(Debug)]
pub struct Link {
    receiver: Receiver,
    sender: Sender,
}

impl Link {
    /// A neutral computer (LIS) station.
    pub fn new(config: Config) -> Link {
        Link::with_role(config, Role::Computer)
    }

    /// A neutral station of either role (an instrument station is for simulators).
    pub fn with_role(config: Config, role: Role) -> Link {
        Link {
            receiver: Receiver::new(config.clone()),
            sender: Sender::new(config, role),
        }
    }

    /// True when nothing is in progress or queued.
    pub fn is_idle(&self) -> bool {
        self.receiver.is_neutral() && self.sender.pending() == 0 && !self.sender.is_active()
    }

    /// The receiving half (to set it busy, or inspect it).
    pub fn receiver_mut(&mut self) -> &mut Receiver {
        &mut self.receiver
    }

    /// Messages queued for the instrument and not yet delivered.
    pub fn pending(&self) -> usize {
        self.sender.pending()
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: Event<'_>) -> Vec<Action> {
        match event {
            Event::Bytes(b) => self.on_bytes(b),
            Event::Timeout(t) => self.on_timeout(t),
            Event::Stored => self.stored(),
            Event::StoreFailed => self.store_failed(),
        }
    }

    /// Feeds bytes read from the line: replies go to the sender while it owns the line, all
    /// else to the receiver.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        for b in bytes {
            let one = std::slice::from_ref(b);
            if self.sender.is_active() {
                out.extend(self.sender.on_bytes(one));
            } else {
                let was_neutral = self.receiver.is_neutral();
                out.extend(self.receiver.on_bytes(one));
                self.after_receiver(was_neutral, &mut out);
            }
        }
        out
    }

    /// A timer expired.
    pub fn on_timeout(&mut self, timer: Timer) -> Vec<Action> {
        let mut out = Vec::new();
        match timer {
            Timer::Receive => {
                let was_neutral = self.receiver.is_neutral();
                out.extend(self.receiver.on_timeout(timer));
                self.after_receiver(was_neutral, &mut out);
            }
            Timer::Backoff if !self.receiver.is_neutral() => {
                // The instrument is sending: the computer starts once it has finished.
                self.sender.end_backoff();
            }
            _ => out.extend(self.sender.on_timeout(timer)),
        }
        out
    }

    /// Queues a message for the instrument; it starts when the line is neutral.
    pub fn send(&mut self, message: Vec<u8>) -> Vec<Action> {
        self.sender.enqueue(message);
        if self.receiver.is_neutral() {
            self.sender.poll_start()
        } else {
            Vec::new()
        }
    }

    /// See [`Receiver::stored`].
    pub fn stored(&mut self) -> Vec<Action> {
        let was_neutral = self.receiver.is_neutral();
        let mut out = self.receiver.stored();
        self.after_receiver(was_neutral, &mut out);
        out
    }

    /// See [`Receiver::store_failed`].
    pub fn store_failed(&mut self) -> Vec<Action> {
        let was_neutral = self.receiver.is_neutral();
        let mut out = self.receiver.store_failed();
        self.after_receiver(was_neutral, &mut out);
        out
    }

    /// When the instrument has just returned the line to neutral, the computer's own messages
    /// go (§7.2: the back-off ends early once the other side has sent its message).
    fn after_receiver(&mut self, was_neutral: bool, out: &mut Vec<Action>) {
        if !was_neutral && self.receiver.is_neutral() {
            out.extend(self.sender.resume());
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S15: Duration = Duration::from_secs(15);
    const S30: Duration = Duration::from_secs(30);

    fn send(b: u8) -> Action {
        Action::Send(vec![b])
    }

    fn arm_receive() -> Action {
        Action::ArmTimer(Timer::Receive, S30)
    }

    /// A receiver that has ACKed an ENQ.
    fn transfer() -> Receiver {
        let mut r = Receiver::new(Config::default());
        assert_eq!(r.on_bytes(&[ENQ]), [send(ACK), arm_receive()]);
        r
    }

    fn frame(n: u8, text: &str, last: bool) -> Vec<u8> {
        encode_frame(n, text.as_bytes(), last)
    }

    // --- frames and checksums ---

    #[test]
    fn checksums_match_the_worked_examples_of_protocols_7_4() {
        assert_eq!(checksum(b"5L|1|N\r\x03"), 0x08);
        assert_eq!(checksum(b"2P|1||PAT123||Doe^John||19700101|M\r\x03"), 0x03);
        assert_eq!(
            checksum(
                b"4R|1|^^^GLU|5.6|mmol/L|3.9 to 6.1|N||F||OP1|20240105102000|20240105102900|ACME01\r\x03"
            ),
            0x76
        );
        assert_eq!(
            encode_frame(5, b"L|1|N\r", true),
            b"\x025L|1|N\r\x0308\r\n".to_vec()
        );
    }

    #[test]
    fn frame_numbers_are_written_modulo_8_and_checksums_in_upper_case_hex() {
        let f = encode_frame(9, b"\xff\xff", false);
        assert_eq!(f.get(1), Some(&b'1'));
        assert_eq!(f.get(4), Some(&ETB));
        // 0x31 + 0xff + 0xff + 0x17 = 0x246 → 0x46
        assert_eq!(f.get(5..7), Some(&b"46"[..]));
    }

    #[test]
    fn terminator_detection_needs_an_l_record_last() {
        assert!(ends_with_terminator(b"H|\\^&\rL|1|N\r"));
        assert!(ends_with_terminator(b"l|1\r\n"));
        assert!(ends_with_terminator(b"L"));
        assert!(!ends_with_terminator(b"H|\\^&\rLX|1\r"));
        assert!(!ends_with_terminator(b"L|1|N\rR|1\r"));
        assert!(!ends_with_terminator(b""));
    }

    // --- receiver: neutral ---

    #[test]
    fn neutral_receiver_ignores_everything_but_enq() {
        let mut r = Receiver::new(Config::default());
        assert!(r.on_bytes(&frame(1, "H|\\^&\r", true)).is_empty());
        assert!(r.on_bytes(&[ACK, NAK, EOT, b'x', CR, LF]).is_empty());
        assert!(r.is_neutral());
        assert!(r.on_timeout(Timer::Receive).is_empty());
        assert!(r.stored().is_empty());
        assert!(r.store_failed().is_empty());
    }

    #[test]
    fn enq_is_acked_and_starts_the_receive_timer() {
        let r = transfer();
        assert!(!r.is_neutral());
    }

    #[test]
    fn a_busy_receiver_naks_enq_and_stays_neutral() {
        let mut r = Receiver::new(Config::default());
        r.set_busy(true);
        assert_eq!(r.on_bytes(&[ENQ]), [send(NAK)]);
        assert!(r.is_neutral());
        r.set_busy(false);
        assert_eq!(r.on_bytes(&[ENQ]), [send(ACK), arm_receive()]);
    }

    // --- receiver: transfer ---

    #[test]
    fn intermediate_frames_are_acked_and_the_completing_frame_waits_for_storage() {
        let mut r = transfer();
        assert_eq!(
            r.on_bytes(&frame(1, "H|\\^&\rP|1\rO|1|S", false)),
            [send(ACK), arm_receive()]
        );
        let out = r.on_bytes(&frame(2, "1\rR|1|^^^GLU|5\rL|1|N\r", true));
        assert_eq!(
            out,
            [
                Action::CancelTimer(Timer::Receive),
                Action::Message(b"H|\\^&\rP|1\rO|1|S1\rR|1|^^^GLU|5\rL|1|N\r".to_vec())
            ]
        );
        assert!(r.awaiting_store());
        assert_eq!(r.stored(), [send(ACK), arm_receive()]);
        assert!(!r.awaiting_store());
        assert_eq!(r.on_bytes(&[EOT]), [Action::CancelTimer(Timer::Receive)]);
        assert!(r.is_neutral());
    }

    #[test]
    fn one_record_per_etx_frame_is_reassembled_until_the_l_record() {
        let mut r = transfer();
        for (n, rec) in [
            (1, "H|\\^&\r"),
            (2, "P|1\r"),
            (3, "O|1|S1\r"),
            (4, "R|1|^^^K|4\r"),
        ] {
            assert_eq!(r.on_bytes(&frame(n, rec, true)), [send(ACK), arm_receive()]);
        }
        let out = r.on_bytes(&frame(5, "L|1|N\r", true));
        assert_eq!(
            out.last(),
            Some(&Action::Message(
                b"H|\\^&\rP|1\rO|1|S1\rR|1|^^^K|4\rL|1|N\r".to_vec()
            ))
        );
    }

    #[test]
    fn the_trailer_and_junk_between_frames_are_ignored() {
        let mut r = transfer();
        let mut bytes = b"junk\r\n".to_vec();
        bytes.extend(frame(1, "H|\\^&\r", true));
        bytes.extend(b"\r\n\r\n");
        assert_eq!(r.on_bytes(&bytes), [send(ACK), arm_receive()]);
    }

    #[test]
    fn store_failure_naks_the_final_frame_and_its_resend_is_emitted_again() {
        let mut r = transfer();
        r.on_bytes(&frame(1, "H|\\^&\r", true));
        let last = frame(2, "L|1|N\r", true);
        let out = r.on_bytes(&last);
        assert_eq!(
            out.last(),
            Some(&Action::Message(b"H|\\^&\rL|1|N\r".to_vec()))
        );
        assert_eq!(r.store_failed(), [send(NAK), arm_receive()]);
        assert!(!r.awaiting_store());
        let out = r.on_bytes(&last);
        assert_eq!(
            out.last(),
            Some(&Action::Message(b"H|\\^&\rL|1|N\r".to_vec()))
        );
        assert_eq!(r.stored(), [send(ACK), arm_receive()]);
        // A repeat of the acknowledged final frame (its ACK was lost) is ACKed, not re-emitted.
        assert_eq!(r.on_bytes(&last), [send(ACK), arm_receive()]);
    }

    #[test]
    fn nothing_is_answered_while_a_message_awaits_storage() {
        let mut r = transfer();
        let last = frame(1, "H|\\^&\rL|1\r", true);
        r.on_bytes(&last);
        assert!(r.on_bytes(&last).is_empty());
        assert!(r.on_bytes(&[ENQ, ACK, b'x']).is_empty());
        assert!(r.on_bytes(&frame(2, "H|\\^&\r", true)).is_empty());
        assert!(r.on_timeout(Timer::Receive).is_empty());
        assert!(r.awaiting_store());
        assert_eq!(r.stored(), [send(ACK), arm_receive()]);
    }

    #[test]
    fn eot_while_storing_means_no_reply_and_neutral_after_the_outcome() {
        for stored in [true, false] {
            let mut r = transfer();
            r.on_bytes(&frame(1, "H|\\^&\rL|1\r", true));
            assert_eq!(
                r.on_bytes(&[EOT]),
                [Action::Error(Error::TerminatedBeforeReply)]
            );
            assert!(r.on_bytes(&[EOT]).is_empty());
            let out = if stored { r.stored() } else { r.store_failed() };
            assert!(out.is_empty());
            assert!(r.is_neutral());
        }
    }

    #[test]
    fn two_messages_in_one_transfer_are_emitted_one_after_the_other() {
        let mut r = transfer();
        r.on_bytes(&frame(1, "H|\\^&\rL|1\r", true));
        r.stored();
        let out = r.on_bytes(&frame(2, "H|\\^&\rP|1\rL|1\r", true));
        assert_eq!(
            out.last(),
            Some(&Action::Message(b"H|\\^&\rP|1\rL|1\r".to_vec()))
        );
    }

    #[test]
    fn a_wrong_checksum_is_naked_and_the_resend_accepted() {
        let mut r = transfer();
        let mut bad = frame(1, "H|\\^&\r", true);
        if let Some(b) = bad.get_mut(3) {
            *b ^= 0x01;
        }
        assert_eq!(
            r.on_bytes(&bad),
            [
                Action::Error(Error::Checksum { frame: b'1' }),
                send(NAK),
                arm_receive()
            ]
        );
        assert_eq!(
            r.on_bytes(&frame(1, "H|\\^&\r", true)),
            [send(ACK), arm_receive()]
        );
    }

    #[test]
    fn lower_case_checksums_are_accepted() {
        let mut r = transfer();
        let f = b"\x021\xff\x03".to_vec();
        let sum = checksum(b"1\xff\x03");
        let mut bytes = f;
        bytes.extend(format!("{sum:02x}\r\n").into_bytes());
        assert_eq!(r.on_bytes(&bytes), [send(ACK), arm_receive()]);
    }

    #[test]
    fn non_hex_checksum_or_non_digit_frame_number_is_malformed() {
        let mut r = transfer();
        assert_eq!(
            r.on_bytes(b"\x021H\x03ZZ\r\n"),
            [
                Action::Error(Error::MalformedFrame),
                send(NAK),
                arm_receive()
            ]
        );
        let mut bytes = b"\x029H\x03".to_vec();
        bytes.extend(format!("{:02X}\r\n", checksum(b"9H\x03")).into_bytes());
        assert_eq!(
            r.on_bytes(&bytes),
            [
                Action::Error(Error::MalformedFrame),
                send(NAK),
                arm_receive()
            ]
        );
    }

    #[test]
    fn the_first_frame_must_be_number_1_and_then_each_one_higher() {
        let mut r = transfer();
        assert_eq!(
            r.on_bytes(&frame(2, "H|\\^&\r", true)),
            [
                Action::Error(Error::FrameNumber {
                    expected: 1,
                    got: 2
                }),
                send(NAK),
                arm_receive()
            ]
        );
        r.on_bytes(&frame(1, "H|\\^&\r", true));
        assert_eq!(
            r.on_bytes(&frame(3, "P|1\r", true)),
            [
                Action::Error(Error::FrameNumber {
                    expected: 2,
                    got: 3
                }),
                send(NAK),
                arm_receive()
            ]
        );
    }

    #[test]
    fn a_repeated_frame_is_acked_and_not_appended_twice() {
        let mut r = transfer();
        let f1 = frame(1, "H|\\^&\r", true);
        r.on_bytes(&f1);
        assert_eq!(r.on_bytes(&f1), [send(ACK), arm_receive()]);
        let out = r.on_bytes(&frame(2, "L|1\r", true));
        assert_eq!(
            out.last(),
            Some(&Action::Message(b"H|\\^&\rL|1\r".to_vec()))
        );
    }

    #[test]
    fn frame_numbers_wrap_from_7_to_0() {
        let mut r = transfer();
        let mut expected = Vec::new();
        for n in 1..=9u8 {
            let text = format!("R|{n}\r");
            assert_eq!(
                r.on_bytes(&frame(n % 8, &text, false)),
                [send(ACK), arm_receive()]
            );
            expected.extend(text.into_bytes());
        }
        expected.extend(b"L|1\r");
        let out = r.on_bytes(&frame(10 % 8, "L|1\r", true));
        assert_eq!(out.last(), Some(&Action::Message(expected)));
    }

    #[test]
    fn stx_inside_a_frame_restarts_the_frame() {
        let mut r = transfer();
        let mut bytes = b"\x021H|garbage".to_vec();
        bytes.extend(frame(1, "H|\\^&\r", true));
        assert_eq!(r.on_bytes(&bytes), [send(ACK), arm_receive()]);
    }

    #[test]
    fn an_oversized_frame_is_naked_without_being_buffered() {
        let config = Config {
            max_receive_frame: 20,
            ..Config::default()
        };
        let mut r = Receiver::new(config);
        r.on_bytes(&[ENQ]);
        assert_eq!(
            r.on_bytes(&frame(1, "H|\\^&|1234567890123", true)),
            [
                Action::Error(Error::FrameTooLong { limit: 20 }),
                send(NAK),
                arm_receive()
            ]
        );
        assert_eq!(
            r.on_bytes(&frame(1, "H|\\^&|123456", true)),
            [send(ACK), arm_receive()]
        );
    }

    #[test]
    fn an_oversized_message_is_refused_until_eot() {
        let config = Config {
            max_message: 10,
            ..Config::default()
        };
        let mut r = Receiver::new(config);
        r.on_bytes(&[ENQ]);
        assert_eq!(
            r.on_bytes(&frame(1, "H|\\^&|1\r", false)),
            [send(ACK), arm_receive()]
        );
        assert_eq!(
            r.on_bytes(&frame(2, "P|1|2345\r", false)),
            [
                Action::Error(Error::MessageTooLong { limit: 10 }),
                send(NAK),
                arm_receive()
            ]
        );
        assert_eq!(
            r.on_bytes(&frame(2, "L\r", true)),
            [send(NAK), arm_receive()]
        );
        assert_eq!(r.on_bytes(&[EOT]), [Action::CancelTimer(Timer::Receive)]);
        r.on_bytes(&[ENQ]);
        let out = r.on_bytes(&frame(1, "H|\\^&\rL\r", true));
        assert_eq!(out.last(), Some(&Action::Message(b"H|\\^&\rL\r".to_vec())));
    }

    #[test]
    fn eot_mid_message_discards_the_partial_message() {
        let mut r = transfer();
        r.on_bytes(&frame(1, "H|\\^&\r", true));
        r.on_bytes(&frame(2, "P|1\r", true));
        assert_eq!(
            r.on_bytes(&[EOT]),
            [
                Action::CancelTimer(Timer::Receive),
                Action::Error(Error::Incomplete { bytes: 10 })
            ]
        );
        assert!(r.is_neutral());
        // A fresh transfer starts at frame 1 with nothing left over.
        r.on_bytes(&[ENQ]);
        let out = r.on_bytes(&frame(1, "H|\\^&\rL\r", true));
        assert_eq!(out.last(), Some(&Action::Message(b"H|\\^&\rL\r".to_vec())));
    }

    #[test]
    fn eot_inside_a_frame_ends_the_transfer() {
        let mut r = transfer();
        assert_eq!(
            r.on_bytes(b"\x021H|\\^&\x04"),
            [
                Action::CancelTimer(Timer::Receive),
                Action::Error(Error::Incomplete { bytes: 5 })
            ]
        );
        assert!(r.is_neutral());
    }

    #[test]
    fn enq_mid_transfer_restarts_establishment() {
        let mut r = transfer();
        r.on_bytes(&frame(1, "H|\\^&\r", true));
        assert_eq!(
            r.on_bytes(&[ENQ]),
            [
                Action::Error(Error::Restarted { bytes: 6 }),
                send(ACK),
                arm_receive()
            ]
        );
        assert_eq!(
            r.on_bytes(&frame(1, "H|\\^&\r", true)),
            [send(ACK), arm_receive()]
        );
    }

    #[test]
    fn the_receive_timeout_discards_the_partial_message() {
        let mut r = transfer();
        r.on_bytes(&frame(1, "H|\\^&\r", true));
        assert_eq!(
            r.on_timeout(Timer::Receive),
            [Action::Error(Error::ReceiveTimeout { bytes: 6 })]
        );
        assert!(r.is_neutral());
        assert!(r.on_timeout(Timer::Receive).is_empty());
        for t in [Timer::Establish, Timer::Reply, Timer::Backoff] {
            let mut r = transfer();
            assert!(r.on_timeout(t).is_empty());
        }
    }

    #[test]
    fn handle_dispatches_events() {
        let mut r = Receiver::new(Config::default());
        assert_eq!(r.handle(Event::Bytes(&[ENQ])), [send(ACK), arm_receive()]);
        r.handle(Event::Bytes(&frame(1, "H|\\^&\rL\r", true)));
        assert_eq!(r.handle(Event::StoreFailed), [send(NAK), arm_receive()]);
        r.handle(Event::Bytes(&frame(1, "H|\\^&\rL\r", true)));
        assert_eq!(r.handle(Event::Stored), [send(ACK), arm_receive()]);
        // Reported even with nothing to discard: the sender went silent.
        assert_eq!(
            r.handle(Event::Timeout(Timer::Receive)),
            [Action::Error(Error::ReceiveTimeout { bytes: 0 })]
        );
    }

    #[test]
    fn debug_of_actions_shows_no_content() {
        let a = Action::Message(b"P|1||SECRET".to_vec());
        assert_eq!(format!("{a:?}"), "Message(11 bytes)");
        let f = Action::Send(frame(3, "P|1||SECRET", true));
        assert_eq!(format!("{f:?}"), "Send(frame 3 of 18 bytes)");
        assert_eq!(format!("{:?}", send(ACK)), "Send(ACK)");
    }

    // --- sender ---

    fn instrument() -> Sender {
        Sender::new(Config::default(), Role::Instrument)
    }

    fn sent_frames(actions: &[Action]) -> Vec<Vec<u8>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(b) if b.first() == Some(&STX) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn send_starts_with_enq_and_the_establishment_timer() {
        let mut s = instrument();
        assert_eq!(
            s.send(b"H|\\^&\rL|1".to_vec()),
            [send(ENQ), Action::ArmTimer(Timer::Establish, S15)]
        );
        assert!(s.is_active());
        // A second message waits its turn.
        assert!(s.send(b"H|\\^&\rL|1".to_vec()).is_empty());
        assert_eq!(s.pending(), 2);
    }

    #[test]
    fn ack_to_enq_sends_frame_1_and_each_ack_the_next_until_eot() {
        let mut s = instrument().with_framing(Framing::RecordPerFrame);
        s.send(b"H|\\^&\rL|1\r".to_vec());
        assert_eq!(
            s.on_bytes(&[ACK]),
            [
                Action::CancelTimer(Timer::Establish),
                Action::Send(frame(1, "H|\\^&\r", true)),
                Action::ArmTimer(Timer::Reply, S15)
            ]
        );
        assert_eq!(
            s.on_bytes(&[ACK]),
            [
                Action::Send(frame(2, "L|1\r", true)),
                Action::ArmTimer(Timer::Reply, S15)
            ]
        );
        assert_eq!(
            s.on_bytes(&[ACK]),
            [
                Action::Delivered,
                Action::CancelTimer(Timer::Reply),
                send(EOT)
            ]
        );
        assert!(s.is_neutral());
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn the_next_queued_message_gets_its_own_establishment() {
        let mut s = instrument();
        s.send(b"H|\\^&\rL|1\r".to_vec());
        s.send(b"H|\\^&\rL|2\r".to_vec());
        s.on_bytes(&[ACK]);
        let out = s.on_bytes(&[ACK]);
        assert_eq!(
            out,
            [
                Action::Delivered,
                Action::CancelTimer(Timer::Reply),
                send(EOT),
                send(ENQ),
                Action::ArmTimer(Timer::Establish, S15)
            ]
        );
        let out = s.on_bytes(&[ACK]);
        assert_eq!(sent_frames(&out), [frame(1, "H|\\^&\rL|2\r", true)]);
    }

    #[test]
    fn packed_framing_splits_at_240_characters_with_etb() {
        let mut s = instrument();
        let text: String = "R|1|"
            .chars()
            .chain(std::iter::repeat_n('x', 500))
            .collect();
        s.send(format!("{text}\r").into_bytes());
        let mut frames = sent_frames(&s.on_bytes(&[ACK]));
        frames.extend(sent_frames(&s.on_bytes(&[ACK])));
        frames.extend(sent_frames(&s.on_bytes(&[ACK])));
        assert_eq!(frames.len(), 3);
        let lens: Vec<usize> = frames.iter().map(Vec::len).collect();
        assert_eq!(lens, [247, 247, 505 - 480 + 7]);
        let ends: Vec<u8> = frames
            .iter()
            .filter_map(|f| f.get(f.len() - 5).copied())
            .collect();
        assert_eq!(ends, [ETB, ETB, ETX]);
    }

    #[test]
    fn sender_frame_numbers_wrap_from_7_to_0() {
        let mut s = instrument().with_framing(Framing::RecordPerFrame);
        let msg: String = (1..=9).map(|i| format!("R|{i}\r")).collect();
        s.send(msg.into_bytes());
        let mut numbers = Vec::new();
        for _ in 0..9 {
            for f in sent_frames(&s.on_bytes(&[ACK])) {
                numbers.extend(f.get(1).copied());
            }
        }
        assert_eq!(numbers, b"123456701");
    }

    #[test]
    fn nak_to_enq_backs_off_10_s_then_retries() {
        let mut s = instrument();
        s.send(b"L\r".to_vec());
        assert_eq!(
            s.on_bytes(&[NAK]),
            [
                Action::CancelTimer(Timer::Establish),
                Action::Error(Error::Busy),
                Action::ArmTimer(Timer::Backoff, Duration::from_secs(10))
            ]
        );
        assert!(!s.is_active() && !s.is_neutral());
        assert_eq!(
            s.on_timeout(Timer::Backoff),
            [send(ENQ), Action::ArmTimer(Timer::Establish, S15)]
        );
    }

    #[test]
    fn the_sender_ignores_other_bytes_while_establishing() {
        let mut s = instrument();
        s.send(b"L\r".to_vec());
        assert!(s.on_bytes(&[b'x', EOT, CR, LF]).is_empty());
        assert!(s.is_active());
    }

    #[test]
    fn no_reply_to_enq_terminates_and_backs_off() {
        let mut s = instrument();
        s.send(b"L\r".to_vec());
        assert_eq!(
            s.on_timeout(Timer::Establish),
            [
                send(EOT),
                Action::Error(Error::EstablishTimeout),
                Action::ArmTimer(Timer::Backoff, Duration::from_secs(10))
            ]
        );
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn a_naked_frame_is_resent_with_the_same_number_and_six_refusals_abort() {
        let mut s = instrument();
        s.send(b"H|\\^&\rL\r".to_vec());
        let first = sent_frames(&s.on_bytes(&[ACK]));
        for _ in 0..5 {
            let out = s.on_bytes(&[NAK]);
            assert_eq!(sent_frames(&out), first);
        }
        // Any other character counts as NAK: the 6th refusal aborts.
        assert_eq!(
            s.on_bytes(b"?"),
            [
                Action::CancelTimer(Timer::Reply),
                send(EOT),
                Action::Error(Error::RetriesExhausted {
                    frame: 1,
                    attempts: 6
                }),
                Action::ArmTimer(Timer::Backoff, Duration::from_secs(10))
            ]
        );
        assert_eq!(s.pending(), 1, "the message is kept for a full resend");
        s.on_timeout(Timer::Backoff);
        assert_eq!(
            sent_frames(&s.on_bytes(&[ACK])),
            first,
            "resent from frame 1"
        );
    }

    #[test]
    fn no_reply_to_a_frame_aborts_and_keeps_the_message() {
        let mut s = instrument();
        s.send(b"H|\\^&\rL\r".to_vec());
        s.on_bytes(&[ACK]);
        assert_eq!(
            s.on_timeout(Timer::Reply),
            [
                send(EOT),
                Action::Error(Error::ReplyTimeout { frame: 1 }),
                Action::ArmTimer(Timer::Backoff, Duration::from_secs(10))
            ]
        );
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn eot_as_reply_is_an_ack_plus_an_interrupt_that_is_honoured() {
        // Mid-message: the message is not complete, so it is kept.
        let mut s = instrument().with_framing(Framing::RecordPerFrame);
        s.send(b"H|\\^&\rL\r".to_vec());
        s.on_bytes(&[ACK]);
        assert_eq!(
            s.on_bytes(&[EOT]),
            [
                Action::CancelTimer(Timer::Reply),
                send(EOT),
                Action::Error(Error::Interrupted),
                Action::ArmTimer(Timer::Backoff, S15)
            ]
        );
        assert_eq!(s.pending(), 1);
        // On the last frame: delivered, then the interrupt is honoured.
        let mut s = instrument();
        s.send(b"H|\\^&\rL\r".to_vec());
        s.on_bytes(&[ACK]);
        let out = s.on_bytes(&[EOT]);
        assert_eq!(out.first(), Some(&Action::Delivered));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn on_contention_the_instrument_waits_1_s_and_the_computer_20_s() {
        let mut s = instrument();
        s.send(b"L\r".to_vec());
        assert_eq!(
            s.on_bytes(&[ENQ]),
            [
                Action::CancelTimer(Timer::Establish),
                Action::Error(Error::Contention),
                Action::ArmTimer(Timer::Backoff, Duration::from_secs(1))
            ]
        );
        assert_eq!(
            s.on_timeout(Timer::Backoff),
            [send(ENQ), Action::ArmTimer(Timer::Establish, S15)]
        );
        let mut c = Sender::new(Config::default(), Role::Computer);
        c.send(b"L\r".to_vec());
        let out = c.on_bytes(&[ENQ]);
        assert_eq!(
            out.last(),
            Some(&Action::ArmTimer(Timer::Backoff, Duration::from_secs(20)))
        );
    }

    #[test]
    fn stale_sender_timeouts_are_ignored() {
        let mut s = instrument();
        for t in [
            Timer::Establish,
            Timer::Reply,
            Timer::Backoff,
            Timer::Receive,
        ] {
            assert!(s.on_timeout(t).is_empty());
        }
        s.send(b"L\r".to_vec());
        assert!(s.on_timeout(Timer::Reply).is_empty());
        assert!(s.handle(Event::Stored).is_empty());
    }

    #[test]
    fn resume_ends_a_back_off_early_and_end_backoff_waits() {
        let mut s = instrument();
        s.send(b"L\r".to_vec());
        s.on_bytes(&[NAK]);
        assert_eq!(
            s.resume(),
            [
                Action::CancelTimer(Timer::Backoff),
                send(ENQ),
                Action::ArmTimer(Timer::Establish, S15)
            ]
        );
        s.on_bytes(&[NAK]);
        s.end_backoff();
        assert!(s.is_neutral());
        assert!(s.on_timeout(Timer::Backoff).is_empty());
    }

    // --- link (computer station) ---

    #[test]
    fn link_receives_like_a_receiver() {
        let mut l = Link::new(Config::default());
        assert_eq!(l.handle(Event::Bytes(&[ENQ])), [send(ACK), arm_receive()]);
        let out = l.on_bytes(&frame(1, "H|\\^&\rL\r", true));
        assert_eq!(out.last(), Some(&Action::Message(b"H|\\^&\rL\r".to_vec())));
        assert_eq!(l.handle(Event::StoreFailed), [send(NAK), arm_receive()]);
        l.on_bytes(&frame(1, "H|\\^&\rL\r", true));
        assert_eq!(l.handle(Event::Stored), [send(ACK), arm_receive()]);
        assert_eq!(l.on_bytes(&[EOT]), [Action::CancelTimer(Timer::Receive)]);
        l.receiver_mut().set_busy(true);
        assert_eq!(l.on_bytes(&[ENQ]), [send(NAK)]);
    }

    #[test]
    fn link_yields_on_contention_answers_the_next_enq_and_sends_afterwards() {
        let mut l = Link::new(Config::default());
        assert_eq!(
            l.send(b"H|\\^&\rL\r".to_vec()),
            [send(ENQ), Action::ArmTimer(Timer::Establish, S15)]
        );
        // The instrument's ENQ crosses ours: no reply, wait up to 20 s.
        let out = l.on_bytes(&[ENQ]);
        assert!(!out.iter().any(|a| matches!(a, Action::Send(_))));
        assert_eq!(
            out.last(),
            Some(&Action::ArmTimer(Timer::Backoff, Duration::from_secs(20)))
        );
        // Its next ENQ is answered; its message is received.
        assert_eq!(l.on_bytes(&[ENQ]), [send(ACK), arm_receive()]);
        l.on_bytes(&frame(1, "H|\\^&\rL\r", true));
        l.stored();
        // The back-off expiring while the instrument sends does not start ours...
        assert!(l.on_timeout(Timer::Backoff).is_empty());
        // ...its EOT does.
        assert_eq!(
            l.on_bytes(&[EOT]),
            [
                Action::CancelTimer(Timer::Receive),
                send(ENQ),
                Action::ArmTimer(Timer::Establish, S15)
            ]
        );
        let out = l.on_bytes(&[ACK]);
        assert_eq!(sent_frames(&out), [frame(1, "H|\\^&\rL\r", true)]);
        let out = l.on_bytes(&[ACK]);
        assert_eq!(out.first(), Some(&Action::Delivered));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn link_starts_its_message_after_20_s_without_the_instruments_enq() {
        let mut l = Link::new(Config::default());
        l.send(b"L\r".to_vec());
        l.on_bytes(&[ENQ]);
        assert_eq!(
            l.on_timeout(Timer::Backoff),
            [send(ENQ), Action::ArmTimer(Timer::Establish, S15)]
        );
    }

    #[test]
    fn link_defers_its_message_while_receiving_and_after_a_receive_timeout_sends_it() {
        let mut l = Link::new(Config::default());
        l.on_bytes(&[ENQ]);
        assert!(l.send(b"L\r".to_vec()).is_empty());
        let out = l.on_timeout(Timer::Receive);
        assert_eq!(
            out,
            [
                Action::Error(Error::ReceiveTimeout { bytes: 0 }),
                send(ENQ),
                Action::ArmTimer(Timer::Establish, S15)
            ]
        );
        assert_eq!(l.on_timeout(Timer::Reply), Vec::<Action>::new());
    }

    #[test]
    fn link_does_not_cut_a_busy_back_off_short_on_stray_bytes() {
        let mut l = Link::new(Config::default());
        l.send(b"L\r".to_vec());
        l.on_bytes(&[NAK]);
        assert!(l.on_bytes(b"junk").is_empty());
    }

    // --- properties ---

    proptest! {
        #[test]
        fn receiver_never_panics_and_answers_only_with_control_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            outcomes in proptest::collection::vec(any::<bool>(), 0..16),
        ) {
            let mut r = Receiver::new(Config { max_receive_frame: 40, max_message: 100, ..Config::default() });
            let mut outcome = outcomes.into_iter();
            for c in &chunks {
                let mut bytes = vec![ENQ];
                bytes.extend(c);
                for a in r.on_bytes(&bytes) {
                    match a {
                        Action::Send(b) => prop_assert!(b == [ACK] || b == [NAK]),
                        Action::Message(m) => prop_assert!(m.len() <= 100),
                        _ => {}
                    }
                }
                if r.awaiting_store() {
                    let _ = if outcome.next().unwrap_or(true) { r.stored() } else { r.store_failed() };
                }
                let _ = r.on_timeout(Timer::Receive);
            }
        }

        #[test]
        fn feeding_byte_by_byte_gives_the_same_actions_as_one_slice(
            records in proptest::collection::vec("[A-Z][|^A-Za-z0-9 ]{0,40}", 1..6),
            corrupt in any::<u8>(),
        ) {
            let mut s = Sender::new(Config { frame_size: 30, ..Config::default() }, Role::Instrument);
            let mut text = records.join("\r");
            text.push_str("\rL|1\r");
            s.send(text.into_bytes());
            let mut wire = vec![ENQ];
            let mut out = s.on_bytes(&[ACK]);
            while let Some(f) = sent_frames(&out).pop() {
                wire.extend(f);
                out = s.on_bytes(&[ACK]);
            }
            if let Some(b) = wire.get_mut(usize::from(corrupt) % 16 + 1) {
                *b ^= corrupt;
            }
            let whole = Receiver::new(Config::default()).on_bytes(&wire);
            let mut r = Receiver::new(Config::default());
            let split: Vec<Action> = wire.iter().flat_map(|b| r.on_bytes(std::slice::from_ref(b))).collect();
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn sender_never_panics_on_any_reply_bytes(
            replies in proptest::collection::vec(any::<u8>(), 0..200),
            timeouts in proptest::collection::vec(0u8..4, 0..20),
        ) {
            let mut s = instrument();
            s.send(b"H|\\^&\rP|1\rL|1\r".to_vec());
            for (i, b) in replies.iter().enumerate() {
                let _ = s.on_bytes(std::slice::from_ref(b));
                if let Some(t) = timeouts.get(i % 32) {
                    let t = [Timer::Establish, Timer::Reply, Timer::Backoff, Timer::Receive][usize::from(*t)];
                    let _ = s.on_timeout(t);
                }
            }
        }
    }
}
