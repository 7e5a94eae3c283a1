//! ASTM E1381 receiver: arbitrary byte chunks interleaved with timer expiries, store results and
//! busy flips. Invariants: byte chunking does not change the actions (the same stream fed in
//! other chunks gives the same actions), messages respect the size limit, the receiver only
//! ever sends ACK/NAK/EOT, and a Message action leaves it awaiting storage.
#![no_main]

use std::time::Duration;

use caregate::astm::link::{ACK, Action, Config, EOT, NAK, Receiver, Timer};
use libfuzzer_sys::fuzz_target;

#[derive(Clone)]
enum Ev {
    Bytes(Vec<u8>),
    Timeout(Timer),
    Stored,
    StoreFailed,
    Busy(bool),
}

/// Input layout: byte 0 sets the limits, byte 1 the chunk size (1-64); the rest is the line's
/// bytes, cut into chunks of that size, where 0xF0-0xF5 are events instead of bytes (0xF6 x
/// is the literal byte x). A session log with 0xF2 after each frame is a good seed.
fn parse(chunk: usize, data: &[u8]) -> Vec<Ev> {
    let mut evs = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let flush = |bytes: &mut Vec<u8>, evs: &mut Vec<Ev>| {
        for c in bytes.chunks(chunk) {
            evs.push(Ev::Bytes(c.to_vec()));
        }
        bytes.clear();
    };
    let mut it = data.iter().copied();
    while let Some(b) = it.next() {
        let ev = match b {
            0xF0 => Ev::Timeout(Timer::Receive),
            0xF1 => Ev::Timeout(Timer::Reply),
            0xF2 => Ev::Stored,
            0xF3 => Ev::StoreFailed,
            0xF4 => Ev::Busy(true),
            0xF5 => Ev::Busy(false),
            0xF6 => {
                if let Some(x) = it.next() {
                    bytes.push(x);
                }
                continue;
            }
            _ => {
                bytes.push(b);
                continue;
            }
        };
        flush(&mut bytes, &mut evs);
        evs.push(ev);
    }
    flush(&mut bytes, &mut evs);
    evs
}

fn feed(rx: &mut Receiver, ev: &Ev, cfg: &Config) -> Vec<Action> {
    let out = match ev {
        Ev::Bytes(b) => rx.on_bytes(b),
        Ev::Timeout(t) => rx.on_timeout(*t),
        Ev::Stored => rx.stored(),
        Ev::StoreFailed => rx.store_failed(),
        Ev::Busy(b) => {
            rx.set_busy(*b);
            Vec::new()
        }
    };
    for a in &out {
        match a {
            Action::Send(b) => assert!(
                matches!(b.as_slice(), [ACK] | [NAK] | [EOT]),
                "receiver sent {a:?}"
            ),
            Action::Message(m) => {
                assert!(m.len() <= cfg.max_message, "message over max_message");
            }
            Action::Delivered => panic!("receiver reported Delivered"),
            _ => {}
        }
        let _ = format!("{a:?}");
    }
    if out.iter().any(|a| matches!(a, Action::Message(_))) {
        assert!(
            rx.awaiting_store(),
            "message emitted but not awaiting store"
        );
        assert!(!rx.is_neutral());
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let [c, step, data @ ..] = input else {
        return;
    };
    let c = *c;
    let cfg = Config {
        // Small limits so the oversized paths are reachable; 0xF in a nibble: the default.
        max_receive_frame: match c & 0x0F {
            0x0F => Config::default().max_receive_frame,
            n => 8 + usize::from(n) * 16,
        },
        max_message: match c >> 4 {
            0x0F => Config::default().max_message,
            n => 1 + usize::from(n) * 64,
        },
        receive_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let evs = parse(1 + usize::from(step % 64), data);

    let mut rx = Receiver::new(cfg.clone());
    let mut actions = Vec::new();
    for ev in &evs {
        actions.extend(feed(&mut rx, ev, &cfg));
    }

    // Same events with consecutive byte chunks merged into one: same actions.
    let mut merged: Vec<Ev> = Vec::new();
    for ev in &evs {
        match (merged.last_mut(), ev) {
            (Some(Ev::Bytes(acc)), Ev::Bytes(b)) => acc.extend_from_slice(b),
            _ => merged.push(ev.clone()),
        }
    }
    let mut rx2 = Receiver::new(cfg.clone());
    let mut actions2 = Vec::new();
    for ev in &merged {
        actions2.extend(feed(&mut rx2, ev, &cfg));
    }
    assert!(
        actions == actions2,
        "chunking changed the receiver's actions"
    );
});
