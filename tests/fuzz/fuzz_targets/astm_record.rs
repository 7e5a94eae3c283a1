//! ASTM E1394 records: `decode`, `split`, `Message::parse` and every field accessor on every
//! record. Views stay inside the text.
#![no_main]

use caregate::astm::record::{self, Message, Record};
use libfuzzer_sys::fuzz_target;

fn inside(outer: &str, inner: &str) -> bool {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

fn walk(text: &str, r: &Record<'_>) {
    assert!(inside(text, r.raw()), "record outside the text");
    let _ = (r.number(), r.kind().id(), r.delimiters());
    let n = r.field_count();
    for i in 0..=n + 1 {
        let f = r.field(i);
        assert!(inside(text, f.raw()));
        let _ = (f.is_empty(), f.is_null(), f.text());
        for rep in f.repetitions() {
            assert!(inside(text, rep.raw()));
            let _ = (rep.is_empty(), rep.text(), rep.component_count());
            for c in rep.components() {
                assert!(inside(text, c.raw()));
                let _ = (c.is_empty(), c.text(), c.value());
            }
            let _ = rep.component(3).text();
        }
        let _ = f.repetition(2).component(2).text();
        let _ = f.component(1).value();
    }
    let _ = r.valued_fields().count();
    let _ = format!("{r:?}");
}

fuzz_target!(|data: &[u8]| {
    let text = record::decode(data);
    if std::str::from_utf8(data).is_err() {
        // Latin-1: one char per byte.
        assert_eq!(text.chars().count(), data.len());
    }
    for part in record::split(&text) {
        assert!(inside(&text, part));
        let Ok(msg) = Message::parse(part) else {
            continue;
        };
        let _ = format!("{msg:?}");
        walk(part, &msg.header);
        let _ = record::unescape(part, msg.delimiters);
        for r in msg
            .header_comments
            .iter()
            .chain(&msg.queries)
            .chain(&msg.manufacturer)
            .chain(&msg.other)
            .chain(msg.terminator.iter())
        {
            walk(part, r);
        }
        for p in &msg.patients {
            for r in p.patient.iter().chain(&p.comments) {
                walk(part, r);
            }
            for o in &p.orders {
                for r in o.order.iter().chain(&o.comments) {
                    walk(part, r);
                }
                for res in &o.results {
                    walk(part, &res.result);
                    for r in &res.comments {
                        walk(part, r);
                    }
                }
            }
        }
        let _ = msg.results().count();
    }
    // The first-message parse of the whole text must not panic either.
    let _ = Message::parse(&text);
});
