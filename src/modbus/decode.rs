//! Pure register decoding (protocols.md §8.3): Modbus words or bits → an exact decimal value,
//! scaling, the deadband decision and the per-device backoff. No I/O, no clock: time is an input.
//!
//! Values are kept as decimals (`mantissa × 10^-scale` in an `i128`), never as binary floats, so
//! that raw 1234 with `scale = 0.1` becomes `"123.4"` and not `123.40000000000001`. The number of
//! fraction digits of the result is the sum of those of the factors (1234 × 0.1 → one digit;
//! 1230 × 0.1 → `"123.0"`): the resolution the device and the configuration state, which FHIR
//! `valueQuantity.value` keeps as significant digits.
//!
//! An `f32` register is converted through its shortest round-trip text (`25.5f32` → `"25.5"`), the
//! digits the device most plausibly meant; NaN and ±∞ are [`Error::NotFinite`] and are never stored
//! as a number. Anything that would overflow the `i128` mantissa is [`Error::Overflow`].

use std::cmp::Ordering;
use std::fmt;
use std::time::{Duration, Instant};

/// Why a register value could not become a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The device answered with fewer or more words/bits than requested.
    #[error("expected {expected} values in the response, got {got}")]
    Length {
        /// Requested count.
        expected: usize,
        /// Received count.
        got: usize,
    },
    /// An `f32` register holds NaN or an infinity.
    #[error("value is not a finite number")]
    NotFinite,
    /// The value (after scaling) does not fit the decimal representation.
    #[error("value out of range")]
    Overflow,
}

/// How a register's contents are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A coil or discrete input: `1` or `0`.
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
}

impl Type {
    /// Parses the config spelling (`u16`, `i16`, `u32`, `i32`, `f32`, `bool`).
    pub fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "bool" => Type::Bool,
            "u16" => Type::U16,
            "i16" => Type::I16,
            "u32" => Type::U32,
            "i32" => Type::I32,
            "f32" => Type::F32,
            _ => return None,
        })
    }

    /// How many registers (or bits, for `Bool`) one value spans.
    pub fn count(self) -> u16 {
        match self {
            Type::Bool | Type::U16 | Type::I16 => 1,
            Type::U32 | Type::I32 | Type::F32 => 2,
        }
    }

    /// Whether this type spans two registers (so word order matters).
    pub fn is_wide(self) -> bool {
        self.count() == 2
    }
}

/// Order of the two registers of a 32-bit value; bytes inside a register are always big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WordOrder {
    /// High word first (`ABCD`), the common "Modbus standard" reading.
    #[default]
    Big,
    /// Low word first (`CDAB`, word-swapped; Schneider/Modicon style).
    Little,
}

impl WordOrder {
    /// Parses `big` / `little`.
    pub fn parse(s: &str) -> Option<WordOrder> {
        match s {
            "big" => Some(WordOrder::Big),
            "little" => Some(WordOrder::Little),
            _ => None,
        }
    }
}

// === impl Decimal ===

/// An exact decimal: `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// More fraction digits than any device or config needs; keeps `10^scale` far inside `i128`.
const MAX_SCALE: u32 = 30;

impl Decimal {
    /// An integer.
    pub fn from_int(i: i64) -> Decimal {
        Decimal {
            mantissa: i128::from(i),
            scale: 0,
        }
    }

    /// Parses plain decimal text (`-12.340`, `7`, `.5`); no exponent. `None` if malformed.
    pub fn parse(s: &str) -> Option<Decimal> {
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let scale = u32::try_from(frac.len()).ok().filter(|&s| s <= MAX_SCALE)?;
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        Some(Decimal {
            mantissa: if neg { -mantissa } else { mantissa },
            scale,
        })
    }

    /// The shortest decimal that round-trips to `f` (what a person wrote in the config file).
    pub fn from_f64(f: f64) -> Option<Decimal> {
        f.is_finite()
            .then(|| Decimal::parse(&f.to_string()))
            .flatten()
    }

    /// The shortest decimal that round-trips to `f` as an `f32`.
    pub fn from_f32(f: f32) -> Result<Decimal, Error> {
        if !f.is_finite() {
            return Err(Error::NotFinite);
        }
        Decimal::parse(&f.to_string()).ok_or(Error::Overflow)
    }

    fn rescale(self, scale: u32) -> Option<Decimal> {
        let up = scale.checked_sub(self.scale)?;
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(10i128.checked_pow(up)?)?,
            scale,
        })
    }

    /// Exact product.
    pub fn checked_mul(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale + other.scale;
        (scale <= 2 * MAX_SCALE).then_some(())?;
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(other.mantissa)?,
            scale,
        })
    }

    /// Exact sum.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.rescale(scale)?, other.rescale(scale)?);
        Some(Decimal {
            mantissa: a.mantissa.checked_add(b.mantissa)?,
            scale,
        })
    }

    /// Exact difference.
    pub fn checked_sub(self, other: Decimal) -> Option<Decimal> {
        self.checked_add(Decimal {
            mantissa: other.mantissa.checked_neg()?,
            scale: other.scale,
        })
    }

    /// Absolute value.
    pub fn abs(self) -> Option<Decimal> {
        Some(Decimal {
            mantissa: self.mantissa.checked_abs()?,
            scale: self.scale,
        })
    }

    /// Numeric comparison regardless of scale (`1.50 == 1.5`); `None` only on overflow.
    pub fn compare(self, other: Decimal) -> Option<Ordering> {
        let scale = self.scale.max(other.scale);
        Some(
            self.rescale(scale)?
                .mantissa
                .cmp(&other.rescale(scale)?.mantissa),
        )
    }

    /// Whether this is negative.
    pub fn is_negative(self) -> bool {
        self.mantissa < 0
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Decimal) -> bool {
        self.compare(*other) == Some(Ordering::Equal)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

// === decoding ===

/// Registers → raw value, per type and word order.
pub fn decode_words(ty: Type, order: WordOrder, words: &[u16]) -> Result<Decimal, Error> {
    let expected = usize::from(ty.count());
    let length = Error::Length {
        expected,
        got: words.len(),
    };
    let wide = |w0: u16, w1: u16| -> u32 {
        let (hi, lo) = match order {
            WordOrder::Big => (w0, w1),
            WordOrder::Little => (w1, w0),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    Ok(match (ty, words) {
        (Type::U16, &[w]) => Decimal::from_int(i64::from(w)),
        (Type::I16, &[w]) => Decimal::from_int(i64::from(w as i16)),
        (Type::U32, &[a, b]) => Decimal::from_int(i64::from(wide(a, b))),
        (Type::I32, &[a, b]) => Decimal::from_int(i64::from(wide(a, b) as i32)),
        (Type::F32, &[a, b]) => Decimal::from_f32(f32::from_bits(wide(a, b)))?,
        _ => return Err(length),
    })
}

/// Coils or discrete inputs → `1` / `0`.
pub fn decode_bits(bits: &[bool]) -> Result<Decimal, Error> {
    match bits {
        [b] => Ok(Decimal::from_int(i64::from(*b))),
        _ => Err(Error::Length {
            expected: 1,
            got: bits.len(),
        }),
    }
}

/// `engineering = raw × scale + offset`, exactly.
pub fn engineering(
    raw: Decimal,
    scale: Option<Decimal>,
    offset: Option<Decimal>,
) -> Result<Decimal, Error> {
    let scaled = match scale {
        Some(s) => raw.checked_mul(s).ok_or(Error::Overflow)?,
        None => raw,
    };
    match offset {
        Some(o) => scaled.checked_add(o).ok_or(Error::Overflow),
        None => Ok(scaled),
    }
}

// === impl Deadband ===

/// Report-by-exception for one register: store a value only when it moved by more than `band`
/// since the last *stored* one, and at least once every `max_silence`.
///
/// [`Deadband::should_store`] only asks; [`Deadband::stored`] records, and is called after the
/// queue commit returned, so a failed commit never suppresses the next reading.
#[derive(Debug, Clone)]
pub struct Deadband {
    band: Option<Decimal>,
    max_silence: Duration,
    last: Option<(Decimal, Instant)>,
}

impl Deadband {
    /// `band = None` stores every poll.
    pub fn new(band: Option<Decimal>, max_silence: Duration) -> Deadband {
        Deadband {
            band,
            max_silence,
            last: None,
        }
    }

    /// Whether a value polled at `now` should be stored.
    pub fn should_store(&self, value: Decimal, now: Instant) -> bool {
        let (Some(band), Some((last, at))) = (self.band, self.last) else {
            return true;
        };
        if now.saturating_duration_since(at) >= self.max_silence {
            return true;
        }
        match value.checked_sub(last).and_then(Decimal::abs) {
            Some(delta) => delta.compare(band) == Some(Ordering::Greater),
            None => true,
        }
    }

    /// Records a value as durably stored at `now`.
    pub fn stored(&mut self, value: Decimal, now: Instant) {
        self.last = Some((value, now));
    }
}

/// How long to wait before polling a device again after `failures` consecutive failed polls:
/// the poll interval, doubling per failure, capped at [`MAX_BACKOFF`] (or the interval if longer).
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval
        .checked_mul(factor)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF.max(interval))
}

/// Longest wait between attempts on a failing device.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn words(ty: Type, order: WordOrder, w: &[u16]) -> String {
        decode_words(ty, order, w).unwrap().to_string()
    }

    #[test]
    fn sixteen_bit_types_decode_with_sign() {
        assert_eq!(words(Type::U16, WordOrder::Big, &[0]), "0");
        assert_eq!(words(Type::U16, WordOrder::Big, &[0xFFFF]), "65535");
        assert_eq!(words(Type::I16, WordOrder::Big, &[0xFFFF]), "-1");
        assert_eq!(words(Type::I16, WordOrder::Big, &[0x8000]), "-32768");
        assert_eq!(words(Type::I16, WordOrder::Big, &[0x7FFF]), "32767");
        assert_eq!(words(Type::I16, WordOrder::Little, &[0xFF38]), "-200");
    }

    #[test]
    fn thirty_two_bit_types_follow_the_word_order() {
        // 0x0001_E240 = 123456
        assert_eq!(
            words(Type::U32, WordOrder::Big, &[0x0001, 0xE240]),
            "123456"
        );
        assert_eq!(
            words(Type::U32, WordOrder::Little, &[0xE240, 0x0001]),
            "123456"
        );
        assert_eq!(
            words(Type::U32, WordOrder::Big, &[0xFFFF, 0xFFFF]),
            "4294967295"
        );
        // -123456 = 0xFFFE_1DC0
        assert_eq!(
            words(Type::I32, WordOrder::Big, &[0xFFFE, 0x1DC0]),
            "-123456"
        );
        assert_eq!(
            words(Type::I32, WordOrder::Little, &[0x1DC0, 0xFFFE]),
            "-123456"
        );
        assert_eq!(
            words(Type::I32, WordOrder::Big, &[0x8000, 0x0000]),
            "-2147483648"
        );
    }

    #[test]
    fn f32_decodes_to_its_shortest_decimal() {
        // protocols.md §8.3: ABCD 0x41C8 0x0000 = 25.0
        assert_eq!(words(Type::F32, WordOrder::Big, &[0x41C8, 0x0000]), "25");
        assert_eq!(words(Type::F32, WordOrder::Little, &[0x0000, 0x41C8]), "25");
        // 36.6f32 = 0x42126666
        assert_eq!(words(Type::F32, WordOrder::Big, &[0x4212, 0x6666]), "36.6");
        // -0.5 = 0xBF000000
        assert_eq!(words(Type::F32, WordOrder::Big, &[0xBF00, 0x0000]), "-0.5");
        assert_eq!(words(Type::F32, WordOrder::Big, &[0x0000, 0x0000]), "0");
    }

    #[test]
    fn f32_nan_and_infinities_are_rejected() {
        for w in [[0x7FC0, 0], [0x7F80, 0], [0xFF80, 0], [0x7FFF, 0xFFFF]] {
            assert_eq!(
                decode_words(Type::F32, WordOrder::Big, &w),
                Err(Error::NotFinite),
                "{w:?}"
            );
        }
    }

    #[test]
    fn f32_too_large_for_the_decimal_is_an_overflow_not_a_panic() {
        // f32::MAX = 0x7F7FFFFF ≈ 3.4e38 > i128::MAX
        assert_eq!(
            decode_words(Type::F32, WordOrder::Big, &[0x7F7F, 0xFFFF]),
            Err(Error::Overflow)
        );
        // smallest subnormal: many digits, still exact or refused, never a panic
        let _ = decode_words(Type::F32, WordOrder::Big, &[0x0000, 0x0001]);
    }

    #[test]
    fn wrong_response_lengths_are_errors() {
        assert!(matches!(
            decode_words(Type::U32, WordOrder::Big, &[1]),
            Err(Error::Length {
                expected: 2,
                got: 1
            })
        ));
        assert!(decode_words(Type::U16, WordOrder::Big, &[]).is_err());
        assert!(decode_words(Type::U16, WordOrder::Big, &[1, 2]).is_err());
        assert!(decode_words(Type::Bool, WordOrder::Big, &[1]).is_err());
        assert!(decode_bits(&[]).is_err());
        assert!(decode_bits(&[true, false]).is_err());
    }

    #[test]
    fn bits_decode_to_one_and_zero() {
        assert_eq!(decode_bits(&[true]).unwrap().to_string(), "1");
        assert_eq!(decode_bits(&[false]).unwrap().to_string(), "0");
    }

    #[test]
    fn scaling_is_decimal_exact() {
        let s = |raw: i64, scale: f64, offset: Option<f64>| {
            engineering(
                Decimal::from_int(raw),
                Decimal::from_f64(scale),
                offset.and_then(Decimal::from_f64),
            )
            .unwrap()
            .to_string()
        };
        assert_eq!(s(1234, 0.1, None), "123.4");
        assert_eq!(s(1230, 0.1, None), "123.0");
        assert_eq!(s(215, 0.1, None), "21.5");
        assert_eq!(s(-5, 0.1, None), "-0.5");
        assert_eq!(s(7, 0.01, None), "0.07");
        assert_eq!(s(3, 0.1, None), "0.3"); // 3 × 0.1 = 0.30000000000000004 in f64
        assert_eq!(s(1234, 1.0, None), "1234");
        assert_eq!(s(12, 10.0, None), "120");
        assert_eq!(s(2731, 0.1, Some(-273.1)), "0.0");
        assert_eq!(s(100, 0.5, Some(0.25)), "50.25");
        let f = decode_words(Type::F32, WordOrder::Big, &[0x4212, 0x6666]).unwrap();
        assert_eq!(
            engineering(f, Some(d("10")), Some(d("0.01")))
                .unwrap()
                .to_string(),
            "366.01"
        );
    }

    #[test]
    fn scaling_overflow_is_reported() {
        let big = Decimal::parse("100000000000000000000000000000000000").unwrap();
        assert_eq!(
            engineering(big, Some(big), None).map(|_| ()),
            Err(Error::Overflow)
        );
    }

    #[test]
    fn decimal_parse_and_display_round_trip() {
        for s in ["0", "1", "-1", "123.4", "-0.05", "0.000", "1000000"] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d(".5").to_string(), "0.5");
        assert_eq!(d("+2").to_string(), "2");
        for bad in ["", "-", ".", "1.2.3", "1e5", "abc", " 1"] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Decimal::from_f64(f64::NAN).is_none());
        assert_eq!(Decimal::from_f64(0.1).unwrap().to_string(), "0.1");
        assert_eq!(d("1.50"), d("1.5"));
    }

    #[test]
    fn deadband_stores_only_changes_larger_than_the_band() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut db = Deadband::new(Some(d("0.5")), Duration::from_secs(300));
        assert!(db.should_store(d("20.0"), at(0)), "first value is stored");
        db.stored(d("20.0"), at(0));
        assert!(!db.should_store(d("20.3"), at(5)));
        assert!(!db.should_store(d("20.5"), at(10)), "exactly the band");
        assert!(
            !db.should_store(d("19.5"), at(10)),
            "exactly the band, down"
        );
        assert!(db.should_store(d("20.6"), at(15)));
        assert!(db.should_store(d("19.4"), at(15)));
        // drift of small steps is measured against the last *stored* value
        db.stored(d("20.4"), at(20));
        assert!(!db.should_store(d("20.8"), at(25)));
        assert!(db.should_store(d("20.95"), at(25)));
    }

    #[test]
    fn deadband_stores_at_least_every_max_silence() {
        let t0 = Instant::now();
        let mut db = Deadband::new(Some(d("1")), Duration::from_secs(300));
        db.stored(d("5"), t0);
        assert!(!db.should_store(d("5"), t0 + Duration::from_secs(299)));
        assert!(db.should_store(d("5"), t0 + Duration::from_secs(300)));
    }

    #[test]
    fn without_a_band_every_poll_is_stored() {
        let t0 = Instant::now();
        let mut db = Deadband::new(None, Duration::from_secs(300));
        db.stored(d("5"), t0);
        assert!(db.should_store(d("5"), t0));
    }

    #[test]
    fn zero_band_stores_every_change_only() {
        let t0 = Instant::now();
        let mut db = Deadband::new(Some(d("0")), Duration::from_secs(300));
        db.stored(d("1"), t0);
        assert!(!db.should_store(d("1"), t0 + Duration::from_secs(1)));
        assert!(db.should_store(d("0"), t0 + Duration::from_secs(1)));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let i = Duration::from_secs(5);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), i);
        assert_eq!(backoff(i, 2), Duration::from_secs(10));
        assert_eq!(backoff(i, 3), Duration::from_secs(20));
        assert_eq!(backoff(i, 20), MAX_BACKOFF);
        assert_eq!(backoff(i, u32::MAX), MAX_BACKOFF);
        let long = Duration::from_secs(600);
        assert_eq!(backoff(long, 5), long, "never shorter than the interval");
    }
}
