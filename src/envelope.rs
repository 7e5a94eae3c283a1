//! The unit of work: one received message with where it came from, as stored in the queue.
//!
//! Encoding (version 1), little-endian, length-prefixed so that it can be read without the
//! payload being valid text:
//!
//! ```text
//! u8  format version (1)
//! u64 id            i64 received_at (µs since the Unix epoch, UTC)
//! u8  kind          u8  lane
//! str tenant, source, peer, control_id, message_type, version, sender   (u16 length + UTF-8)
//! ..  payload       (the rest: raw bytes exactly as received, before charset decoding)
//! ```
//!
//! The raw bytes are kept unchanged so that conversion can be re-run after a mapping fix and so
//! that an auditor can see exactly what was acknowledged.

use bytes::Bytes;

/// What kind of payload an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One HL7 v2 message (ER7), as received.
    Hl7 = 1,
    /// One ASTM E1394 message (records separated by CR, frames already joined), as received.
    Astm = 2,
    /// One device reading (MQTT JSON, Modbus poll) as a [`crate::reading::Reading`] in JSON.
    Reading = 3,
}

/// Forwarding priority. [`Lane::slot`] is where it sorts in the queue's ready index (the
/// variants themselves have no order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Critical results: ahead of any backlog of their tenant.
    Critical = 0,
    /// Everything else.
    Normal = 1,
    /// A critical result that was delivered ahead of older messages of its source and is
    /// delivered once more at its arrival place, so that none of those older messages, sent
    /// after it, leaves the upstream with an older version of a resource it also writes (an
    /// ASTM result and its correction share one Observation id). See `queue` ("Critical lane").
    Resend = 2,
}

impl Lane {
    /// The lane's place in the queue's ready index: critical first; a resend waits in the
    /// normal lane, ordered by its id like any message of its source.
    pub fn slot(self) -> u8 {
        match self {
            Lane::Critical => 0,
            Lane::Normal | Lane::Resend => 1,
        }
    }
}

/// Parsed metadata kept beside the raw bytes (no patient data: ids and codes only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// MSH-10.
    pub control_id: String,
    /// MSH-9 code^trigger, e.g. `ORU^R01`.
    pub message_type: String,
    /// MSH-12.
    pub version: String,
    /// MSH-3 and MSH-4 joined by `|`: with the control id, the sender's resend key.
    pub sender: String,
}

/// A message as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Queue-assigned id, unique and increasing across the database.
    pub id: u64,
    /// Tenant (organization) the message belongs to.
    pub tenant: String,
    /// Configured source name.
    pub source: String,
    /// When it was received, µs since the Unix epoch (UTC).
    pub received_at_us: i64,
    /// Remote address (or device path) it came from.
    pub peer: String,
    /// Payload kind.
    pub kind: Kind,
    /// Forwarding lane.
    pub lane: Lane,
    /// Header metadata.
    pub meta: Meta,
    /// Raw bytes as received.
    pub payload: Bytes,
}

/// Debug without the payload: envelopes end up in logs and panics must never carry PHI.
impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("source", &self.source)
            .field("control_id", &self.meta.control_id)
            .field("message_type", &self.meta.message_type)
            .field("bytes", &self.payload.len())
            .finish()
    }
}

/// Decoding problems: the stored bytes are not an envelope of a known format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Unknown format version byte.
    #[error("unknown envelope format version {0}")]
    Version(u8),
    /// The bytes end early or a field is not UTF-8.
    #[error("truncated or corrupt envelope at byte {0}")]
    Corrupt(usize),
}

const FORMAT: u8 = 1;

impl Envelope {
    /// Appends the stored form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(64 + self.payload.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.received_at_us.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.lane as u8);
        for s in [
            &self.tenant,
            &self.source,
            &self.peer,
            &self.meta.control_id,
            &self.meta.message_type,
            &self.meta.version,
            &self.meta.sender,
        ] {
            // Longer strings are cut at a char boundary: these are ids and codes, never payload.
            let mut end = s.len().min(u16::MAX as usize);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&(end as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..end]);
        }
        out.extend_from_slice(&self.payload);
    }

    /// Reads the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, Error> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8()?;
        if version != FORMAT {
            return Err(Error::Version(version));
        }
        let id = u64::from_le_bytes(r.array()?);
        let received_at_us = i64::from_le_bytes(r.array()?);
        let kind = match r.u8()? {
            1 => Kind::Hl7,
            2 => Kind::Astm,
            3 => Kind::Reading,
            _ => return Err(Error::Corrupt(r.pos)),
        };
        let lane = match r.u8()? {
            0 => Lane::Critical,
            1 => Lane::Normal,
            2 => Lane::Resend,
            _ => return Err(Error::Corrupt(r.pos)),
        };
        let tenant = r.str()?;
        let source = r.str()?;
        let peer = r.str()?;
        let meta = Meta {
            control_id: r.str()?,
            message_type: r.str()?,
            version: r.str()?,
            sender: r.str()?,
        };
        let payload = Bytes::copy_from_slice(&bytes[r.pos..]);
        Ok(Envelope {
            id,
            tenant,
            source,
            received_at_us,
            peer,
            kind,
            lane,
            meta,
            payload,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Corrupt(self.pos))?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(Error::Corrupt(self.pos))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let pos = self.pos;
        self.take(N)?.try_into().map_err(|_| Error::Corrupt(pos))
    }
    fn str(&mut self) -> Result<String, Error> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let pos = self.pos;
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| Error::Corrupt(pos))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Envelope {
        Envelope {
            id: 42,
            tenant: "north".into(),
            source: "lab-lis".into(),
            received_at_us: 1_700_000_000_123_456,
            peer: "10.0.0.5:4000".into(),
            kind: Kind::Hl7,
            lane: Lane::Normal,
            meta: Meta {
                control_id: "MSG0001".into(),
                message_type: "ORU^R01".into(),
                version: "2.5.1".into(),
                sender: "LAB|MAIN".into(),
            },
            payload: Bytes::from_static(b"MSH|^~\\&|LAB\rPID|1||\xe9\r"),
        }
    }

    #[test]
    fn encoding_round_trips_in_every_lane() {
        for lane in [Lane::Critical, Lane::Normal, Lane::Resend] {
            let e = Envelope { lane, ..sample() };
            let mut buf = Vec::new();
            e.encode(&mut buf);
            assert_eq!(Envelope::decode(&buf).unwrap(), e);
        }
    }

    #[test]
    fn a_resend_waits_in_the_normal_lane() {
        assert_eq!(Lane::Resend.slot(), Lane::Normal.slot());
        assert!(Lane::Critical.slot() < Lane::Normal.slot());
    }

    #[test]
    fn debug_never_shows_the_payload() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("PID"), "{s}");
    }

    #[test]
    fn unknown_version_and_truncation_are_errors() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        let mut v = buf.clone();
        v[0] = 9;
        assert_eq!(Envelope::decode(&v), Err(Error::Version(9)));
        assert!(Envelope::decode(&buf[..20]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Envelope::decode(&data);
        }
    }
}
