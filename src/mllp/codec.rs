//! Sans-IO MLLP framing (protocols.md §1.1-1.2): `0x0B <payload> 0x1C 0x0D`.
//!
//! A streaming state machine over a `BytesMut` that a socket driver fills: it returns `Ok(None)`
//! when it needs more bytes (incomplete is not invalid), a [`Frame`] when a block is complete,
//! and an error only when the peer broke a limit.
//!
//! Receiver rules kept here:
//! - bytes outside a block are skipped and counted ([`Codec::take_skipped`]);
//! - `0x0B` inside a block means the sender restarted: the partial block is dropped (counted);
//! - a block is complete at `0x1C`; the trailing `0x0D` is consumed when it follows, and its
//!   absence is tolerated (some senders omit it and then wait for the ACK, so waiting for it
//!   would deadlock);
//! - an empty block `0B 1C 0D` yields nothing;
//! - a payload longer than the configured maximum is an error: the caller closes the
//!   connection, since no MSH-10 can be trusted and the rest of the stream is unframed.

use bytes::{Buf, Bytes, BytesMut};

/// Start block (VT).
pub const SB: u8 = 0x0B;
/// End block (FS).
pub const EB: u8 = 0x1C;
/// Trailer (CR).
pub const CR: u8 = 0x0D;

/// A complete block's payload (without SB/EB/CR).
pub type Frame = Bytes;

/// Framing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The block grew past the limit before its end byte arrived.
    #[error("frame exceeds the limit of {limit} bytes")]
    Oversized {
        /// The configured limit.
        limit: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for SB; `after_eb` is set right after a block so its CR is not counted as garbage.
    Hunt { after_eb: bool },
    /// Inside a block; `scanned` bytes of the buffer after SB hold no EB.
    Block { scanned: usize },
}

/// The MLLP decoder and encoder.
#[derive(Debug)]
pub struct Codec {
    max_frame: usize,
    state: State,
    skipped: u64,
}

impl Codec {
    /// A codec accepting payloads up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Codec {
        Codec {
            max_frame,
            state: State::Hunt { after_eb: false },
            skipped: 0,
        }
    }

    /// Whether a block has started and not yet ended (for the partial-frame timeout).
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::Block { .. })
    }

    /// Bytes skipped outside blocks (and abandoned partial blocks) since the last call.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// Drops a partial block (after a timeout); its bytes count as skipped.
    pub fn reset(&mut self, buf: &mut BytesMut) {
        self.skipped += buf.len() as u64;
        buf.clear();
        self.state = State::Hunt { after_eb: false };
    }

    /// Takes the next complete frame out of `buf`, or `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        loop {
            match self.state {
                State::Hunt { after_eb } => {
                    let mut start = 0;
                    if after_eb {
                        match buf.first() {
                            None => return Ok(None),
                            Some(&CR) => start = 1,
                            Some(_) => {}
                        }
                        self.state = State::Hunt { after_eb: false };
                    }
                    match buf[start..].iter().position(|&b| b == SB) {
                        Some(p) => {
                            self.skipped += p as u64;
                            buf.advance(start + p);
                            self.state = State::Block { scanned: 0 };
                        }
                        None => {
                            self.skipped += (buf.len() - start) as u64;
                            buf.clear();
                            return Ok(None);
                        }
                    }
                }
                State::Block { scanned } => {
                    // buf[0] is SB; payload starts at 1.
                    let from = 1 + scanned;
                    let hit = buf[from..].iter().position(|&b| b == EB || b == SB);
                    match hit {
                        None => {
                            let payload = buf.len() - 1;
                            if payload > self.max_frame {
                                self.skipped += buf.len() as u64;
                                buf.clear();
                                self.state = State::Hunt { after_eb: false };
                                return Err(Error::Oversized {
                                    limit: self.max_frame,
                                });
                            }
                            self.state = State::Block { scanned: payload };
                            return Ok(None);
                        }
                        Some(p) => {
                            let at = from + p;
                            if buf[at] == SB {
                                // The sender restarted mid-block: drop the partial one.
                                self.skipped += at as u64;
                                buf.advance(at);
                                self.state = State::Block { scanned: 0 };
                                continue;
                            }
                            let len = at - 1;
                            if len > self.max_frame {
                                self.skipped += (at + 1) as u64;
                                buf.advance(at + 1);
                                self.state = State::Hunt { after_eb: true };
                                return Err(Error::Oversized {
                                    limit: self.max_frame,
                                });
                            }
                            let mut block = buf.split_to(at + 1);
                            block.advance(1);
                            block.truncate(len);
                            self.state = State::Hunt { after_eb: true };
                            if len == 0 {
                                continue;
                            }
                            return Ok(Some(block.freeze()));
                        }
                    }
                }
            }
        }
    }

    /// Appends one framed block with `payload` to `out`.
    pub fn encode(payload: &[u8], out: &mut BytesMut) {
        out.reserve(payload.len() + 3);
        out.extend_from_slice(&[SB]);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[EB, CR]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn all(codec: &mut Codec, buf: &mut BytesMut) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf).unwrap() {
            out.push(f.to_vec());
        }
        out
    }

    #[test]
    fn one_block_is_one_frame() {
        let mut c = Codec::new(100);
        let mut b = BytesMut::from(&b"\x0bMSH|a\x1c\x0d"[..]);
        assert_eq!(all(&mut c, &mut b), vec![b"MSH|a".to_vec()]);
        assert_eq!(c.take_skipped(), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn garbage_between_blocks_is_skipped_and_counted() {
        let mut c = Codec::new(100);
        let mut b = BytesMut::from(&b"xx\r\n\x0bA\x1c\x0dyyy\x0bB\x1c\x0d\n"[..]);
        assert_eq!(all(&mut c, &mut b), vec![b"A".to_vec(), b"B".to_vec()]);
        assert_eq!(c.take_skipped(), 4 + 3 + 1);
    }

    #[test]
    fn missing_trailing_cr_is_tolerated() {
        let mut c = Codec::new(100);
        let mut b = BytesMut::from(&b"\x0bA\x1c\x0bB\x1c"[..]);
        assert_eq!(all(&mut c, &mut b), vec![b"A".to_vec(), b"B".to_vec()]);
        assert_eq!(c.take_skipped(), 0);
    }

    #[test]
    fn start_byte_inside_block_restarts_it() {
        let mut c = Codec::new(100);
        let mut b = BytesMut::from(&b"\x0bpartial\x0bwhole\x1c\x0d"[..]);
        assert_eq!(all(&mut c, &mut b), vec![b"whole".to_vec()]);
        assert_eq!(c.take_skipped(), 8);
    }

    #[test]
    fn empty_block_yields_nothing() {
        let mut c = Codec::new(100);
        let mut b = BytesMut::from(&b"\x0b\x1c\x0d\x0bA\x1c\x0d"[..]);
        assert_eq!(all(&mut c, &mut b), vec![b"A".to_vec()]);
    }

    #[test]
    fn incomplete_block_waits_for_more_bytes() {
        let mut c = Codec::new(100);
        let mut b = BytesMut::from(&b"\x0bMSH|"[..]);
        assert_eq!(c.decode(&mut b).unwrap(), None);
        assert!(c.in_frame());
        b.extend_from_slice(b"x\x1c");
        assert_eq!(c.decode(&mut b).unwrap().unwrap().as_ref(), b"MSH|x");
        assert!(!c.in_frame());
    }

    #[test]
    fn oversized_block_is_an_error_before_its_end_arrives() {
        let mut c = Codec::new(4);
        let mut b = BytesMut::from(&b"\x0b12345"[..]);
        assert_eq!(c.decode(&mut b), Err(Error::Oversized { limit: 4 }));
        let mut c = Codec::new(4);
        let mut b = BytesMut::from(&b"\x0b12345\x1c\x0d\x0bok\x1c\x0d"[..]);
        assert_eq!(c.decode(&mut b), Err(Error::Oversized { limit: 4 }));
        assert_eq!(all(&mut c, &mut b), vec![b"ok".to_vec()]);
    }

    #[test]
    fn block_of_exactly_the_limit_is_accepted() {
        let mut c = Codec::new(4);
        let mut b = BytesMut::from(&b"\x0b1234"[..]);
        assert_eq!(c.decode(&mut b).unwrap(), None);
        b.extend_from_slice(b"\x1c\x0d");
        assert_eq!(c.decode(&mut b).unwrap().unwrap().as_ref(), b"1234");
    }

    #[test]
    fn encode_frames_the_payload() {
        let mut out = BytesMut::new();
        Codec::encode(b"MSA|AA", &mut out);
        assert_eq!(&out[..], b"\x0bMSA|AA\x1c\x0d");
    }

    proptest! {
        /// Any split of the byte stream gives the same frames and the same skipped count.
        #[test]
        fn any_split_of_the_stream_gives_the_same_frames(
            payloads in proptest::collection::vec(proptest::collection::vec(0x0du8..=0xff, 0..40), 0..6),
            garbage in proptest::collection::vec(any::<u8>().prop_filter("no SB", |b| *b != SB), 0..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let payloads: Vec<Vec<u8>> = payloads.into_iter()
                .map(|p| p.into_iter().filter(|b| *b != SB && *b != EB).collect())
                .collect();
            let mut stream = Vec::new();
            for p in &payloads {
                stream.extend_from_slice(&garbage);
                let mut out = BytesMut::new();
                Codec::encode(p, &mut out);
                stream.extend_from_slice(&out);
            }
            let expected: Vec<Vec<u8>> = payloads.iter().filter(|p| !p.is_empty()).cloned().collect();

            let mut whole = Codec::new(1000);
            let mut b = BytesMut::from(&stream[..]);
            let got_whole = all(&mut whole, &mut b);
            prop_assert_eq!(&got_whole, &expected);

            let mut cut_points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            cut_points.sort_unstable();
            let mut split = Codec::new(1000);
            let mut b = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for cp in cut_points.into_iter().chain(std::iter::once(stream.len())) {
                b.extend_from_slice(&stream[last..cp]);
                last = cp;
                got.extend(all(&mut split, &mut b));
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(split.take_skipped(), whole.take_skipped());
        }

        /// Arbitrary bytes never panic and never yield a frame over the limit.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), limit in 1usize..64) {
            let mut c = Codec::new(limit);
            let mut b = BytesMut::from(&data[..]);
            for _ in 0..400 {
                match c.decode(&mut b) {
                    Ok(Some(f)) => prop_assert!(f.len() <= limit),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }
    }
}
