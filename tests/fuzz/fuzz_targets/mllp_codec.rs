//! MLLP codec: any split of the byte stream gives the same frames (up to the first error, after
//! which the listener closes the connection), no byte is counted twice, and encode → decode
//! round-trips.
#![no_main]

use bytes::BytesMut;
use caregate::mllp::codec::{Codec, EB, Frame, SB};
use libfuzzer_sys::fuzz_target;

/// Frames until the first error (and whether one happened), feeding `data` in the given chunks.
fn run(max: usize, data: &[u8], cuts: &[usize]) -> (Vec<Frame>, bool, u64) {
    let mut codec = Codec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut skipped = 0;
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    ends.push(data.len());
    for end in ends {
        if end < at {
            continue;
        }
        buf.extend_from_slice(&data[at..end]);
        at = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(!f.is_empty(), "empty frame yielded");
                    assert!(f.len() <= max, "frame over the limit");
                    assert!(!f.contains(&SB) && !f.contains(&EB), "frame holds SB/EB");
                    frames.push(f);
                }
                Ok(None) => break,
                Err(_) => return (frames, true, skipped + codec.take_skipped()),
            }
            skipped += codec.take_skipped();
        }
        skipped += codec.take_skipped();
    }
    // No byte is counted twice: frame payloads, skipped bytes and the buffered rest fit in the
    // input (an empty block `0B 1C 0D` is neither a frame nor skipped).
    let framed: usize = frames.iter().map(|f| f.len()).sum();
    assert!(
        framed as u64 + skipped + buf.len() as u64 <= data.len() as u64,
        "bytes counted twice: {} framed + {} skipped + {} buffered > {}",
        framed,
        skipped,
        buf.len(),
        data.len()
    );
    (frames, false, skipped)
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 3 {
        return;
    }
    // Byte 0: frame limit (small, to reach Oversized); byte 1: chunk-size seed.
    let max = 1 + usize::from(input[0]) * 4;
    let step = 1 + usize::from(input[1] % 17);
    let data = &input[2..];

    let (whole, whole_err, _) = run(max, data, &[]);
    let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
    let (split, split_err, _) = run(max, data, &cuts);
    let bytewise: Vec<usize> = (1..data.len()).collect();
    let (single, single_err, _) = run(max, data, &bytewise);
    if !whole_err && !split_err && !single_err {
        assert_eq!(whole, split, "chunked decode differs from whole decode");
        assert_eq!(
            whole, single,
            "byte-by-byte decode differs from whole decode"
        );
    } else {
        // Frames before an error must agree as far as the shorter run got.
        let n = whole.len().min(split.len()).min(single.len());
        assert_eq!(whole[..n], split[..n]);
        assert_eq!(whole[..n], single[..n]);
    }

    // Round trip: a payload without SB/EB comes back as one frame.
    let payload: Vec<u8> = data
        .iter()
        .copied()
        .filter(|&b| b != SB && b != EB)
        .collect();
    if !payload.is_empty() {
        let mut out = BytesMut::new();
        Codec::encode(&payload, &mut out);
        Codec::encode(&payload, &mut out);
        let mut codec = Codec::new(payload.len());
        let a = codec
            .decode(&mut out)
            .expect("within limit")
            .expect("a frame");
        let b = codec
            .decode(&mut out)
            .expect("within limit")
            .expect("a frame");
        assert_eq!(&a[..], &payload[..]);
        assert_eq!(&b[..], &payload[..]);
        assert_eq!(codec.decode(&mut out), Ok(None));
        assert_eq!(codec.take_skipped(), 0, "CR trailers counted as garbage");
    }
});
