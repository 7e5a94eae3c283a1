//! What one audit line holds, as typed values, and its exact JSON form.
//!
//! Two kinds of line share a file: an [`Entry`] (one data movement or operator action) and a
//! [`Checkpoint`] (a signature over the chain so far). Both start with `seq` and `prev`.
//!
//! Every line is written in one **canonical** form (serde_json, compact, fields in declaration
//! order, times with exactly six fractional digits, lowercase hex). [`Line::parse`] accepts a
//! line only if re-encoding the parsed value gives back the same bytes, so a change that still
//! parses (an extra space, `1.0` for `1`, a seventh fractional digit) is still a change.
//!
//! No field can hold free text: identifiers are [`Id`] (no spaces, at most 128 characters from
//! a small set), reasons are [`Code`] (lowercase kebab codes), the patient is a keyed hash
//! ([`PatientRef`]) that only [`crate::audit::Trail::patient_ref`] can make from an identifier.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most resource ids one entry may name (keeps a line well under 16 KiB).
pub const MAX_RESOURCE_IDS: usize = 64;

// === Hash ===

/// A SHA-256 value, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

/// What the first line of a trail chains to: 32 zero bytes.
pub const GENESIS: Hash = Hash([0; 32]);

impl Hash {
    /// SHA-256 of one line's bytes (without its newline).
    pub fn of(line: &[u8]) -> Hash {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line);
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Hash(out)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl FromStr for Hash {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Hash, &'static str> {
        let v = unhex(s).ok_or("not lowercase hex")?;
        v.try_into()
            .map(Hash)
            .map_err(|_| "not 32 bytes (64 hex digits)")
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = <&str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Strict lowercase hex (the canonical form); `None` for anything else.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

// === Time ===

/// A UTC instant with microsecond precision, written `2026-11-24T10:00:00.123456Z`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Timestamp);

impl Time {
    /// Truncates to whole microseconds.
    pub fn new(t: Timestamp) -> Time {
        Time(Timestamp::from_microsecond(t.as_microsecond()).unwrap_or(t))
    }

    /// The instant.
    pub fn timestamp(self) -> Timestamp {
        self.0
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}", self.0)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        let s = <&str>::deserialize(d)?;
        s.parse::<Timestamp>()
            .map(Time::new)
            .map_err(|_| serde::de::Error::custom("not an RFC 3339 UTC time"))
    }
}

// === Id and Code ===

/// An identifier safe to keep in the trail: 1-128 characters, the first a letter or digit,
/// the rest letters, digits or `. _ - : @ / ^ + =`. No spaces, quotes or control characters,
/// so no free text. Used for tenants, actor names, message types, control ids, resource ids and
/// correlation ids.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(String);

/// A value was refused by [`Id::new`] or [`Code::new`] (the value itself is not repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid audit {0} (allowed: short identifiers without spaces)")]
pub struct Invalid(pub &'static str);

impl Id {
    /// Checks and wraps an identifier.
    pub fn new(s: &str) -> Result<Id, Invalid> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-:@/^+=".contains(c));
        if ok {
            Ok(Id(s.to_owned()))
        } else {
            Err(Invalid("identifier"))
        }
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short machine-readable reason: 1-64 characters of `a-z 0-9 . _ -`, starting with a
/// letter or digit (`upstream-422`, `consent-withdrawn`, `queue-full`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code(String);

impl Code {
    /// Checks and wraps a reason code.
    pub fn new(s: &str) -> Result<Code, Invalid> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
        if ok {
            Ok(Code(s.to_owned()))
        } else {
            Err(Invalid("reason code"))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_serde {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let s = <&str>::deserialize(d)?;
                $t::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_newtype_serde!(Id);
string_newtype_serde!(Code);

// === Tenant, actor, action, purpose, outcome ===

/// Whose data: exactly one tenant, or the whole installation (written `-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// One organization.
    Id(Id),
    /// A system-wide action (configuration reload, retention): written as `-`.
    System,
}

impl Tenant {
    /// A tenant by its configured id.
    pub fn new(id: &str) -> Result<Tenant, Invalid> {
        Id::new(id).map(Tenant::Id)
    }

    /// Parses the written form (`-` or an id).
    pub fn parse(s: &str) -> Result<Tenant, Invalid> {
        if s == "-" {
            Ok(Tenant::System)
        } else {
            Tenant::new(s)
        }
    }

    /// The written form.
    pub fn as_str(&self) -> &str {
        match self {
            Tenant::Id(id) => id.as_str(),
            Tenant::System => "-",
        }
    }
}

impl Serialize for Tenant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tenant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tenant, D::Error> {
        let s = <&str>::deserialize(d)?;
        Tenant::parse(s).map_err(serde::de::Error::custom)
    }
}

/// What kind of actor caused the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// A configured source (e.g. an MLLP listener): its configured name.
    Source,
    /// A device (analyzer, monitor): its configured id.
    Device,
    /// An API token or operator credential: the token's name, never the secret.
    Token,
    /// caregate itself (pipeline, retention, reload): the component name.
    System,
}

/// Who: kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// Kind.
    pub kind: ActorKind,
    /// Configured name.
    pub name: Id,
}

impl Actor {
    /// An actor of this kind and name.
    pub fn new(kind: ActorKind, name: Id) -> Actor {
        Actor { kind, name }
    }
}

/// What happened. Written in kebab-case (`dead-lettered`, `consent-held`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A message arrived from a source.
    Received,
    /// It was committed to the queue (the sender may now be acknowledged).
    Stored,
    /// It was refused (malformed, not allowed) and kept in the rejected area.
    Rejected,
    /// It was converted to FHIR resources.
    Converted,
    /// The upstream accepted it.
    Forwarded,
    /// An attempt failed and will be retried.
    Failed,
    /// It was parked as a dead letter.
    DeadLettered,
    /// An operator replayed a dead letter.
    Replayed,
    /// Stored data was deleted (queue purge, audit retention).
    Purged,
    /// Held because the patient's consent is withdrawn.
    ConsentHeld,
    /// Released after consent was restored.
    ConsentReleased,
    /// A patient's consent was recorded as given or reinstated (operator, CLI or the
    /// platform's Consent resources).
    ConsentGranted,
    /// A patient's consent was recorded as withdrawn.
    ConsentWithdrawn,
    /// A critical-value alert was raised.
    AlertRaised,
    /// The configuration was reloaded.
    ConfigReloaded,
}

/// Why: the purpose of use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// Care of the patient (results, orders, alerts).
    Treatment,
    /// Billing and claims.
    Payment,
    /// Running the service (retries, replays, configuration).
    Operations,
    /// Compliance duties (retention, audit export).
    Compliance,
}

/// Success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It worked.
    Success,
    /// It did not.
    Failure,
}

/// The result, with a short reason code for failures (and optionally for successes, such as
/// `duplicate`). Never patient data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// Success or failure.
    pub result: Status,
    /// Reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Code>,
}

impl Outcome {
    /// Success, no reason.
    pub fn success() -> Outcome {
        Outcome {
            result: Status::Success,
            reason: None,
        }
    }

    /// Failure with a reason code.
    pub fn failure(reason: Code) -> Outcome {
        Outcome {
            result: Status::Failure,
            reason: Some(reason),
        }
    }
}

// === Scope ===

/// A patient identifier, as HMAC-SHA256 under the installation's key: the same patient gives
/// the same reference within one installation, and nobody without the key can test a guess.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PatientRef(Hash);

impl PatientRef {
    pub(crate) fn from_mac(mac: [u8; 32]) -> PatientRef {
        PatientRef(Hash(mac))
    }
}

impl fmt::Debug for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PatientRef({})", self.0)
    }
}

impl fmt::Display for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What data: ids only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// MSH-9 as `code^trigger`, e.g. `ORU^R01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<Id>,
    /// MSH-10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_id: Option<Id>,
    /// Queue envelope id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<u64>,
    /// FHIR resource ids (`Observation/…`), at most [`MAX_RESOURCE_IDS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_ids: Vec<Id>,
    /// The patient, as a keyed hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<PatientRef>,
}

impl Scope {
    fn is_empty(&self) -> bool {
        *self == Scope::default()
    }
}

// === Record (what callers give) and Entry (what is stored) ===

/// One event as a caller describes it; the trail adds `seq`, `prev` and `time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Whose data.
    pub tenant: Tenant,
    /// Who.
    pub actor: Actor,
    /// What happened.
    pub action: Action,
    /// Which data.
    pub scope: Scope,
    /// Why.
    pub purpose: Purpose,
    /// How it ended.
    pub outcome: Outcome,
    /// Ties the entries of one message or request together.
    pub correlation_id: Option<Id>,
    pub(crate) retention: Option<Retention>,
}

impl Record {
    /// A successful event with an empty scope; set the rest with the builder methods.
    pub fn new(tenant: Tenant, actor: Actor, action: Action, purpose: Purpose) -> Record {
        Record {
            tenant,
            actor,
            action,
            scope: Scope::default(),
            purpose,
            outcome: Outcome::success(),
            correlation_id: None,
            retention: None,
        }
    }

    /// Sets the data scope.
    pub fn scope(mut self, scope: Scope) -> Record {
        self.scope = scope;
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Record {
        self.outcome = outcome;
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Id) -> Record {
        self.correlation_id = Some(id);
        self
    }
}

/// A note that the writer found and removed a torn (partial) last line when it opened the
/// trail after a crash. Carried by the next entry written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovered {
    /// File name (within the audit directory).
    pub file: String,
    /// Bytes removed from its end.
    pub truncated_bytes: u64,
}

/// Carried by the `purged` entry that retention writes before deleting old files: what was
/// deleted and the last line it held, so that `verify` can accept a trail whose head is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Deleted file names.
    pub files: Vec<String>,
    /// Seq of the last deleted line.
    pub through_seq: u64,
    /// Hash of the last deleted line (the `prev` of the first remaining line).
    pub through_hash: Hash,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Line number in the whole trail (entries and checkpoints), from 0, no gaps.
    pub seq: u64,
    /// SHA-256 of the previous line's bytes ([`GENESIS`] for seq 0).
    pub prev: Hash,
    /// When it was recorded.
    pub time: Time,
    /// Whose data.
    pub tenant: Tenant,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: Action,
    /// Which data.
    #[serde(default, skip_serializing_if = "Scope::is_empty")]
    pub scope: Scope,
    /// Why.
    pub purpose: Purpose,
    /// How it ended.
    pub outcome: Outcome,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Id>,
    /// Torn lines removed on open, noted in the first entry after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<Recovered>,
    /// Files deleted by retention (only on the `purged` entry retention writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

impl Entry {
    pub(crate) fn from_record(
        r: Record,
        seq: u64,
        prev: Hash,
        time: Time,
        recovered: Vec<Recovered>,
    ) -> Entry {
        Entry {
            seq,
            prev,
            time,
            tenant: r.tenant,
            actor: r.actor,
            action: r.action,
            scope: r.scope,
            purpose: r.purpose,
            outcome: r.outcome,
            correlation_id: r.correlation_id,
            recovered,
            retention: r.retention,
        }
    }
}

// === Checkpoint ===

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointReason {
    /// Every `checkpoint_every` entries, or on request.
    Periodic,
    /// Closes a file; the next line is in the next file.
    Rotate,
    /// Clean shutdown.
    Shutdown,
}

impl CheckpointReason {
    fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::Periodic => "periodic",
            CheckpointReason::Rotate => "rotate",
            CheckpointReason::Shutdown => "shutdown",
        }
    }
}

/// A signed checkpoint line: `prev` is the chain hash so far (it commits to every earlier
/// line), signed with the installation's Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Line number in the trail.
    pub seq: u64,
    /// The chain hash so far: SHA-256 of the previous line.
    pub prev: Hash,
    /// The signed part.
    pub checkpoint: Signed,
}

/// The body of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// When it was written.
    pub time: Time,
    /// Why.
    pub reason: CheckpointReason,
    /// Key id: the first 8 bytes of SHA-256 of the public key, in hex.
    pub key: String,
    /// Ed25519 signature of [`Checkpoint::message`], in hex.
    pub sig: String,
}

impl Checkpoint {
    /// The bytes signed: a fixed label, seq, chain hash, time and reason, one per line.
    pub fn message(seq: u64, prev: &Hash, time: &Time, reason: CheckpointReason) -> Vec<u8> {
        format!(
            "caregate-audit-checkpoint/1\n{seq}\n{prev}\n{time}\n{}\n",
            reason.as_str()
        )
        .into_bytes()
    }
}

// === Line ===

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed lines are consumed one at a time; boxing would allocate per line"
)]
pub enum Line {
    /// An event.
    Entry(Entry),
    /// A signature over the chain so far.
    Checkpoint(Checkpoint),
}

/// Why a line is not a valid audit line (position only: never its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line ends before its JSON object does: what a torn write leaves.
    #[error("line ends early (a torn write)")]
    Truncated,
    /// Not JSON, or not the expected fields and types.
    #[error("not a valid audit line (column {column})")]
    Malformed {
        /// 1-based column where parsing stopped.
        column: usize,
    },
    /// Valid values, but not byte-for-byte the canonical form.
    #[error("not in canonical form (bytes were changed)")]
    NotCanonical,
    /// Longer than any audit line (over 1 MiB; valid lines stay under 16 KiB): not read.
    #[error("line longer than 1 MiB (not a valid audit line)")]
    TooLong,
}

impl Line {
    /// Parses one line (without its newline), accepting only the canonical form.
    pub fn parse(bytes: &[u8]) -> Result<Line, LineError> {
        // The third key tells the kind; ids cannot contain quotes, so this cannot be faked
        // from inside an entry's values.
        let head = &bytes[..bytes.len().min(128)];
        let is_checkpoint = head.windows(15).any(|w| w == b",\"checkpoint\":{");
        let malformed = |e: serde_json::Error| {
            if e.is_eof() {
                LineError::Truncated
            } else {
                LineError::Malformed { column: e.column() }
            }
        };
        let (line, again) = if is_checkpoint {
            let c: Checkpoint = serde_json::from_slice(bytes).map_err(malformed)?;
            let again = serde_json::to_vec(&c).map_err(malformed)?;
            (Line::Checkpoint(c), again)
        } else {
            let e: Entry = serde_json::from_slice(bytes).map_err(malformed)?;
            let again = serde_json::to_vec(&e).map_err(malformed)?;
            (Line::Entry(e), again)
        };
        if again != bytes {
            return Err(LineError::NotCanonical);
        }
        Ok(line)
    }

    /// The line's seq.
    pub fn seq(&self) -> u64 {
        match self {
            Line::Entry(e) => e.seq,
            Line::Checkpoint(c) => c.seq,
        }
    }

    /// The line's prev.
    pub fn prev(&self) -> Hash {
        match self {
            Line::Entry(e) => e.prev,
            Line::Checkpoint(c) => c.prev,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry() -> Entry {
        let r = Record::new(
            Tenant::new("north").unwrap(),
            Actor::new(ActorKind::Source, Id::new("lab-mllp").unwrap()),
            Action::DeadLettered,
            Purpose::Treatment,
        )
        .scope(Scope {
            message_type: Some(Id::new("ORU^R01").unwrap()),
            control_id: Some(Id::new("MSG00001").unwrap()),
            envelope_id: Some(42),
            resource_ids: vec![Id::new("Observation/abc-1").unwrap()],
            patient: Some(PatientRef::from_mac([7; 32])),
        })
        .outcome(Outcome::failure(Code::new("upstream-422").unwrap()))
        .correlation_id(Id::new("env-42").unwrap());
        let t = Time::new(Timestamp::from_microsecond(1_790_000_000_123_456).unwrap());
        Entry::from_record(r, 3, GENESIS, t, Vec::new())
    }

    #[test]
    fn entry_line_has_the_documented_shape() {
        let line = serde_json::to_string(&entry()).unwrap();
        assert_eq!(
            line,
            r#"{"seq":3,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":"2026-09-21T14:13:20.123456Z","tenant":"north","actor":{"kind":"source","name":"lab-mllp"},"action":"dead-lettered","scope":{"message_type":"ORU^R01","control_id":"MSG00001","envelope_id":42,"resource_ids":["Observation/abc-1"],"patient":"0707070707070707070707070707070707070707070707070707070707070707"},"purpose":"treatment","outcome":{"result":"failure","reason":"upstream-422"},"correlation_id":"env-42"}"#
        );
        assert_eq!(Line::parse(line.as_bytes()), Ok(Line::Entry(entry())));
    }

    #[test]
    fn whole_second_times_keep_six_digits() {
        let t = Time::new(Timestamp::from_second(1_790_000_000).unwrap());
        assert_eq!(t.to_string(), "2026-09-21T14:13:20.000000Z");
    }

    #[test]
    fn a_change_that_still_parses_is_not_canonical() {
        let line = serde_json::to_string(&entry()).unwrap();
        let spaced = line.replacen("\"seq\":3", "\"seq\": 3", 1);
        assert_eq!(Line::parse(spaced.as_bytes()), Err(LineError::NotCanonical));
        let seven = line.replacen(".123456Z", ".1234560Z", 1);
        assert_eq!(Line::parse(seven.as_bytes()), Err(LineError::NotCanonical));
        assert_eq!(
            Line::parse(&line.as_bytes()[..40]),
            Err(LineError::Truncated)
        );
        let junk = format!("{line}x");
        assert!(matches!(
            Line::parse(junk.as_bytes()),
            Err(LineError::Malformed { .. })
        ));
        let upper_hex = line.replacen("\"0000", "\"000A", 1);
        assert!(matches!(
            Line::parse(upper_hex.as_bytes()),
            Err(LineError::Malformed { .. })
        ));
    }

    #[test]
    fn unknown_fields_and_free_text_are_refused() {
        let line = serde_json::to_string(&entry()).unwrap();
        let extra = line.replacen("{\"seq\"", "{\"note\":\"x\",\"seq\"", 1);
        assert!(matches!(
            Line::parse(extra.as_bytes()),
            Err(LineError::Malformed { .. })
        ));
        let text = line.replacen("MSG00001", "John Smith", 1);
        assert!(matches!(
            Line::parse(text.as_bytes()),
            Err(LineError::Malformed { .. })
        ));
    }

    #[test]
    fn ids_and_codes_refuse_free_text() {
        assert!(Id::new("ORU^R01").is_ok());
        assert!(Id::new("Observation/x.1-2_3").is_ok());
        for bad in [
            "",
            "-lead",
            "two words",
            "quote\"",
            "new\nline",
            &"x".repeat(129),
        ] {
            assert!(Id::new(bad).is_err(), "{bad:?}");
        }
        assert!(Code::new("upstream-422").is_ok());
        for bad in ["", "Upstream", "with space", "-x", &"x".repeat(65)] {
            assert!(Code::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Tenant::parse("-"), Ok(Tenant::System));
        assert_eq!(Tenant::System.as_str(), "-");
    }

    #[test]
    fn every_action_is_kebab_case() {
        let all = [
            (Action::Received, "received"),
            (Action::Stored, "stored"),
            (Action::Rejected, "rejected"),
            (Action::Converted, "converted"),
            (Action::Forwarded, "forwarded"),
            (Action::Failed, "failed"),
            (Action::DeadLettered, "dead-lettered"),
            (Action::Replayed, "replayed"),
            (Action::Purged, "purged"),
            (Action::ConsentHeld, "consent-held"),
            (Action::ConsentReleased, "consent-released"),
            (Action::ConsentGranted, "consent-granted"),
            (Action::ConsentWithdrawn, "consent-withdrawn"),
            (Action::AlertRaised, "alert-raised"),
            (Action::ConfigReloaded, "config-reloaded"),
        ];
        for (a, s) in all {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn hex_round_trips_and_is_strict() {
        let h = Hash::of(b"abc");
        assert_eq!(
            h.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().parse::<Hash>(), Ok(h));
        assert!("BA78".parse::<Hash>().is_err());
        assert!("abc".parse::<Hash>().is_err());
    }
}
