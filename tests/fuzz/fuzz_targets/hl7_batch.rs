//! HL7 batch splitter: never panics; messages are in-order, non-overlapping subslices of the
//! input; each is then parsed like a stored message.
#![no_main]

use caregate::hl7::{Charset, Message, batch, charset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = batch::split(data);
    let _ = format!("{b:?}");
    let base = data.as_ptr() as usize;
    let mut prev_end = base;
    for m in &b.messages {
        let start = m.as_ptr() as usize;
        assert!(start >= prev_end, "messages overlap or are out of order");
        assert!(
            start + m.len() <= base + data.len(),
            "message outside the input"
        );
        assert!(!m.is_empty(), "empty message");
        prev_end = start + m.len();
        if let Ok((text, _)) = charset::decode(m, Charset::Latin1) {
            if let Ok(msg) = Message::parse(&text) {
                let _ = msg.header();
            }
        }
    }
    if !b.is_batch {
        assert!(b.declared_messages.is_none() || data.windows(3).any(|w| w == b"BTS"));
    }
});
