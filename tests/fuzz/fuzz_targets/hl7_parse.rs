//! HL7 v2 parser: `charset::decode` then `Message::parse`, then every accessor over every
//! segment, field, repetition, component and subcomponent. Views stay inside the text.
#![no_main]

use caregate::hl7::{Charset, Message, charset};
use libfuzzer_sys::fuzz_target;

fn inside(outer: &str, inner: &str) -> bool {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

fuzz_target!(|data: &[u8]| {
    let Ok((text, cs)) = charset::decode(data, Charset::Latin1) else {
        return;
    };
    let _ = cs.code();
    // Encoding back must not panic.
    let _ = charset::encode(&text, cs);
    let Ok(msg) = Message::parse(&text) else {
        return;
    };
    let all = msg.as_str();
    let _ = msg.delimiters().encoding_characters();
    let _ = format!("{msg:?}");
    if let Ok(h) = msg.header() {
        let _ = h.structure();
        assert!(inside(all, h.control_id));
        assert!(inside(all, h.message_code));
    }
    let _ = msg.segment("MSH");
    let _ = msg.segments_named("OBX").count();
    for seg in msg.segments() {
        assert!(inside(all, seg.raw()), "segment outside the message");
        let _ = seg.id();
        let n = seg.field_count();
        for (i, f) in seg.fields().enumerate() {
            assert!(inside(all, f.raw()));
            let _ = (f.is_empty(), f.is_null(), f.text());
            let _ = seg.field(i);
            for r in f.repetitions() {
                assert!(inside(all, r.raw()));
                let _ = (r.is_empty(), r.is_null(), r.text(), r.component_count());
                for (ci, c) in r.components().enumerate() {
                    assert!(inside(all, c.raw()));
                    let _ = (c.is_empty(), c.is_null(), c.text(), c.subcomponent_text(1));
                    for s in c.subcomponents() {
                        assert!(inside(all, s));
                    }
                    let _ = r.component(ci + 1).subcomponent(2);
                }
            }
            let _ = f.repetition(2).component(3);
            let _ = f.component(2).text();
        }
        // Out-of-range accesses are empty, not panics.
        assert!(seg.field(n + 5).is_empty());
        let _ = format!("{seg:?}");
    }
});
