//! Modbus register decoding on any answer a device (or a man in the middle) can send: words or
//! bits of any count, any `type`/`word_order`, any `scale`/`offset` text. Never panics; besides:
//! - a wrong count is `Error::Length`, never a value;
//! - every value prints as plain decimal text (`-?digits[.digits]`) that parses back to the same
//!   value where it fits (`i128::MIN` does not);
//! - `engineering` is exactly `raw × scale + offset` (checked against the two-step arithmetic);
//! - comparison agrees with the sign of the difference.
//!
//! Layout: type, word order + count, then count × 2 bytes of words (BE), then `scale|offset` text.
#![no_main]

use caregate::modbus::decode::{
    Decimal, Error, Type, WordOrder, decode_bits, decode_words, engineering,
};
use libfuzzer_sys::fuzz_target;

const TYPES: [Type; 6] = [Type::Bool, Type::U16, Type::I16, Type::U32, Type::I32, Type::F32];

fn plain(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    !int.is_empty()
        && !frac.is_empty()
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
}

fn check_text(v: Decimal) {
    let shown = v.to_string();
    assert!(plain(&shown), "{shown:?} is not plain decimal text");
    if let Some(back) = Decimal::parse(&shown) {
        assert!(back == v, "{shown} parses back to {back}");
    }
}

fuzz_target!(|data: &[u8]| {
    let [ty, shape, rest @ ..] = data else {
        return;
    };
    let ty = TYPES[usize::from(*ty) % TYPES.len()];
    let order = if shape & 1 == 0 {
        WordOrder::Big
    } else {
        WordOrder::Little
    };
    let count = usize::from(shape >> 1) % 4;
    let (words, text) = rest.split_at((count * 2).min(rest.len()));
    let words: Vec<u16> = words
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let text = String::from_utf8_lossy(text);
    let (scale, offset) = text.split_once('|').unwrap_or((&text, ""));
    let (scale, offset) = (Decimal::parse(scale), Decimal::parse(offset));

    let raw = if ty == Type::Bool {
        decode_bits(&words.iter().map(|w| w & 1 == 1).collect::<Vec<_>>())
    } else {
        decode_words(ty, order, &words)
    };
    let expected = if ty == Type::Bool { 1 } else { usize::from(ty.count()) };
    if words.len() != expected {
        assert!(matches!(raw, Err(Error::Length { .. })), "{ty:?} from {} words", words.len());
        return;
    }
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            assert!(ty == Type::F32, "{ty:?} failed: {e}");
            return;
        }
    };
    check_text(raw);
    for d in [scale, offset].into_iter().flatten() {
        check_text(d);
    }
    let two_step = scale
        .map_or(Some(raw), |s| raw.checked_mul(s))
        .and_then(|v| offset.map_or(Some(v), |o| v.checked_add(o)));
    match engineering(raw, scale, offset) {
        Ok(v) => {
            check_text(v);
            assert!(two_step == Some(v), "engineering differs from raw × scale + offset");
        }
        Err(e) => assert!(two_step.is_none(), "engineering failed ({e}) where arithmetic did not"),
    }
    if let (Some(a), Some(b)) = (scale, offset)
        && let (Some(ord), Some(diff)) = (a.compare(b), a.checked_sub(b))
    {
        assert_eq!(ord, diff.compare(Decimal::from_int(0)).expect("compares with zero"));
    }
});
