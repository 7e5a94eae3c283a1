//! HL7 v2 DTM / DT / TM → FHIR `dateTime`, `instant`, `date` and `time` (protocols.md §5.13;
//! v2-to-FHIR IG datatype maps DTM\[dateTime\], TS\[dateTime\]).
//!
//! Rules kept here:
//! - precision is kept: `2024` → `2024`, `202401` → `2024-01`, `20240105` → `2024-01-05`; a
//!   value with a time keeps its fractional seconds as written (`.1234`);
//! - FHIR has no hour or minute precision: a value with hours but no minutes/seconds is padded
//!   with zeros (FHIR requires seconds whenever a time is present);
//! - a value with a time but without an offset is read in the facility's time zone
//!   ([`crate::convert::Context::timezone`]), resolving DST for that local date-time; in a DST gap
//!   or fold the earlier offset is taken (the caller reports the ambiguity);
//! - ranges are checked (month, day of month, hour, minute, second, offset ≤ 14:00) and an
//!   invalid value is an error naming what was wrong, never echoing the value.

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// Why a date/time could not be converted (no value in it: the value may be PHI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`.
    #[error("not an HL7 date/time")]
    Syntax,
    /// A component is out of range (month 13, 31 April, hour 24 ...).
    #[error("date/time component out of range")]
    Range,
    /// An `instant` needs at least a full date and time.
    #[error("date/time too imprecise for an instant")]
    Imprecise,
}

/// How precise an HL7 date/time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    /// YYYY.
    Year,
    /// YYYYMM.
    Month,
    /// YYYYMMDD.
    Day,
    /// YYYYMMDDHH.
    Hour,
    /// YYYYMMDDHHMM.
    Minute,
    /// YYYYMMDDHHMMSS[.S+].
    Second,
}

/// A parsed HL7 DTM (components as numbers, fraction as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtm<'a> {
    year: i16,
    month: i8,
    day: i8,
    hour: i8,
    minute: i8,
    second: i8,
    frac: &'a str,
    offset_minutes: Option<i32>,
    precision: Precision,
}

/// The outcome of a conversion with a time part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The FHIR text.
    pub text: String,
    /// True when the offset came from the facility zone at a DST gap or fold.
    pub ambiguous: bool,
}

fn num(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an HL7 DTM (also DT and the DTM in TS.1).
pub fn parse(text: &str) -> Result<Dtm<'_>, Error> {
    let t = text.trim();
    let (body, offset) = match t.find(['+', '-']) {
        Some(i) => (&t[..i], Some(&t[i..])),
        None => (t, None),
    };
    let (digits, frac) = match body.split_once('.') {
        Some((d, f)) => (d, f),
        None => (body, ""),
    };
    // Digits only before any slicing below: a multi-byte character would put a slice boundary
    // inside it (a panic found by fuzzing, see the test `non_ascii_never_panics`).
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (body.contains('.') && frac.is_empty())
    {
        return Err(Error::Syntax);
    }
    let precision = match digits.len() {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        14 => Precision::Second,
        _ => return Err(Error::Syntax),
    };
    if !frac.is_empty() && precision != Precision::Second {
        return Err(Error::Syntax);
    }
    let part = |from: usize, to: usize, default: i32| -> Result<i32, Error> {
        if digits.len() >= to {
            num(&digits[from..to]).ok_or(Error::Syntax)
        } else {
            Ok(default)
        }
    };
    let year = part(0, 4, 0)?;
    let month = part(4, 6, 1)?;
    let day = part(6, 8, 1)?;
    let hour = part(8, 10, 0)?;
    let minute = part(10, 12, 0)?;
    let second = part(12, 14, 0)?;
    let offset_minutes = match offset {
        None => None,
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let d = &o[1..];
            if d.len() != 4 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Syntax);
            }
            let h = num(&d[..2]).ok_or(Error::Syntax)?;
            let m = num(&d[2..]).ok_or(Error::Syntax)?;
            if m > 59 || h * 60 + m > 14 * 60 {
                return Err(Error::Range);
            }
            Some(sign * (h * 60 + m))
        }
    };
    let dim = days_in_month(year, month);
    if year == 0
        || !(1..=12).contains(&month)
        || day < 1
        || day > dim
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(Error::Range);
    }
    let narrow = |v: i32| i8::try_from(v).map_err(|_| Error::Range);
    Ok(Dtm {
        year: i16::try_from(year).map_err(|_| Error::Range)?,
        month: narrow(month)?,
        day: narrow(day)?,
        hour: narrow(hour)?,
        minute: narrow(minute)?,
        second: narrow(second)?,
        frac,
        offset_minutes,
        precision,
    })
}

fn days_in_month(year: i32, month: i32) -> i32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

impl Dtm<'_> {
    /// The precision the sender used.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// FHIR `date` (truncated to the day; no zone conversion).
    pub fn to_date(&self) -> String {
        let mut out = String::with_capacity(10);
        self.push_date(&mut out);
        out
    }

    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` by precision (day at most).
    fn push_date(&self, out: &mut String) {
        push_padded(out, self.year.into(), 4);
        if self.precision >= Precision::Month {
            out.push('-');
            push_padded(out, self.month.into(), 2);
        }
        if self.precision >= Precision::Day {
            out.push('-');
            push_padded(out, self.day.into(), 2);
        }
    }

    /// FHIR `dateTime`, keeping precision; a time without offset is read in `tz`.
    pub fn to_date_time(&self, tz: &TimeZone) -> Converted {
        if self.precision <= Precision::Day {
            return Converted {
                text: self.to_date(),
                ambiguous: false,
            };
        }
        let (offset, ambiguous) = match self.offset_minutes {
            Some(m) => (m, false),
            None => self.zone_offset(tz),
        };
        // What `format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}")` gives, without its cost.
        let mut text = String::with_capacity(26 + self.frac.len());
        self.push_date(&mut text);
        for (sep, v) in [('T', self.hour), (':', self.minute), (':', self.second)] {
            text.push(sep);
            push_padded(&mut text, v.into(), 2);
        }
        if !self.frac.is_empty() {
            text.push('.');
            text.push_str(self.frac);
        }
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.abs();
        text.push(sign);
        push_padded(&mut text, (abs / 60).into(), 2);
        text.push(':');
        push_padded(&mut text, (abs % 60).into(), 2);
        Converted { text, ambiguous }
    }

    /// FHIR `instant` (needs at least hours; padded like dateTime).
    pub fn to_instant(&self, tz: &TimeZone) -> Result<Converted, Error> {
        if self.precision <= Precision::Day {
            return Err(Error::Imprecise);
        }
        Ok(self.to_date_time(tz))
    }

    /// The value's own offset in minutes, if it has one.
    pub fn offset_minutes(&self) -> Option<i32> {
        self.offset_minutes
    }

    /// The offset `tz` has at this local date-time, in minutes (the earlier one in a gap or fold).
    pub fn zone_offset_minutes(&self, tz: &TimeZone) -> i32 {
        self.zone_offset(tz).0
    }

    fn zone_offset(&self, tz: &TimeZone) -> (i32, bool) {
        let Ok(dt) = DateTime::new(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second.min(59),
            0,
        ) else {
            return (0, true);
        };
        let (offset, ambiguous) = match tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => (offset, false),
            AmbiguousOffset::Gap { before, .. } | AmbiguousOffset::Fold { before, .. } => {
                (before, true)
            }
        };
        (offset.seconds() / 60, ambiguous)
    }
}

/// Appends `value` zero-padded to `width` digits, as `format!("{value:0width$}")` does.
fn push_padded(out: &mut String, value: i64, width: usize) {
    if value < 0 {
        use std::fmt::Write as _;
        let _ = write!(out, "{value:0width$}");
        return;
    }
    let mut digits = [b'0'; 20];
    let mut n = value.unsigned_abs();
    let mut len = 0;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push('0');
    }
    let start = digits.len() - len;
    for &d in digits.get(start..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// FHIR `time` (`hh:mm:ss[.fff]`) from an HL7 TM (`HH[MM[SS[.S+]]][+/-ZZZZ]`); the offset is
/// dropped (FHIR `time` has none) and reported by the caller.
pub fn to_time(text: &str) -> Result<(String, bool), Error> {
    let t = text.trim();
    let (body, had_offset) = match t.find(['+', '-']) {
        Some(i) => (&t[..i], true),
        None => (t, false),
    };
    let (digits, frac) = body.split_once('.').unwrap_or((body, ""));
    // All ASCII digits before any slicing: a multi-byte character among them would otherwise
    // put a slice boundary inside it.
    if !frac.bytes().all(|b| b.is_ascii_digit())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(digits.len(), 2 | 4 | 6)
    {
        return Err(Error::Syntax);
    }
    let get = |from: usize| -> Result<i32, Error> {
        if digits.len() > from {
            num(&digits[from..from + 2]).ok_or(Error::Syntax)
        } else {
            Ok(0)
        }
    };
    let (h, m, s) = (get(0)?, get(2)?, get(4)?);
    if h > 23 || m > 59 || s > 59 || (!frac.is_empty() && digits.len() != 6) {
        return Err(Error::Range);
    }
    let mut out = format!("{h:02}:{m:02}:{s:02}");
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Ok((out, had_offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").expect("tzdb has Europe/Berlin")
    }

    fn dt(s: &str) -> String {
        parse(s).expect("valid").to_date_time(&berlin()).text
    }

    #[test]
    fn non_ascii_never_panics() {
        // Minimised from a fuzz crash (tests/fuzz, convert_astm): a Latin-1 byte decoded to a
        // two-byte character inside the digits made `digits[6..8]` slice inside it.
        assert_eq!(parse("1970010\u{cf}M"), Err(Error::Syntax));
        assert_eq!(parse("1970010\u{cf}"), Err(Error::Syntax));
        // The same in the offset: `d[..2]` inside a character.
        assert_eq!(parse("20240105+1\u{cf}2"), Err(Error::Syntax));
        assert_eq!(parse("2024\u{e9}"), Err(Error::Syntax));
        // The same in a TM (fuzz crash, convert_hl7 without ASan, session 3): `1„30` is six
        // bytes, so it passed the length check and `digits[0..2]` sliced inside the `„`.
        assert_eq!(to_time("1\u{201e}30"), Err(Error::Syntax));
        assert_eq!(to_time("12\u{e9}0"), Err(Error::Syntax));
        assert_eq!(to_time("1230\u{e9}"), Err(Error::Syntax));
    }

    #[test]
    fn dtm_keeps_the_senders_precision_per_section_5_13() {
        assert_eq!(dt("2024"), "2024");
        assert_eq!(dt("202401"), "2024-01");
        assert_eq!(dt("20240105"), "2024-01-05");
        assert_eq!(dt("2024010510"), "2024-01-05T10:00:00+01:00");
        assert_eq!(dt("202401051030"), "2024-01-05T10:30:00+01:00");
        assert_eq!(dt("20240105103005"), "2024-01-05T10:30:05+01:00");
        assert_eq!(dt("20240105103005.1234"), "2024-01-05T10:30:05.1234+01:00");
    }

    #[test]
    fn dtm_offset_is_kept_and_written_with_a_colon() {
        assert_eq!(dt("20240105103005+0100"), "2024-01-05T10:30:05+01:00");
        assert_eq!(dt("20240105103005-0000"), "2024-01-05T10:30:05+00:00");
        assert_eq!(dt("20240105103005-0530"), "2024-01-05T10:30:05-05:30");
    }

    #[test]
    fn dtm_without_offset_uses_the_facility_zone_with_dst() {
        assert_eq!(dt("20240705103005"), "2024-07-05T10:30:05+02:00");
        let ny = TimeZone::get("America/New_York").expect("tzdb");
        let c = parse("20240105103005").expect("valid").to_date_time(&ny);
        assert_eq!(c.text, "2024-01-05T10:30:05-05:00");
        assert!(!c.ambiguous);
    }

    #[test]
    fn dtm_in_a_dst_gap_or_fold_takes_the_earlier_offset_and_says_so() {
        // 2024-03-31 02:30 does not exist in Berlin; 2024-10-27 02:30 happens twice.
        let gap = parse("202403310230")
            .expect("valid")
            .to_date_time(&berlin());
        assert_eq!(gap.text, "2024-03-31T02:30:00+01:00");
        assert!(gap.ambiguous);
        let fold = parse("202410270230")
            .expect("valid")
            .to_date_time(&berlin());
        assert_eq!(fold.text, "2024-10-27T02:30:00+02:00");
        assert!(fold.ambiguous);
    }

    #[test]
    fn invalid_dtm_is_rejected_by_kind() {
        assert_eq!(parse("2024013"), Err(Error::Syntax));
        assert_eq!(parse("2024-01-05"), Err(Error::Syntax));
        assert_eq!(parse("20241305"), Err(Error::Range));
        assert_eq!(parse("20240431"), Err(Error::Range));
        assert_eq!(parse("20230229"), Err(Error::Range));
        assert!(parse("20240229").is_ok());
        assert_eq!(parse("2024010524"), Err(Error::Range));
        assert_eq!(parse("20240105103005+1500"), Err(Error::Range));
        assert_eq!(parse("20240105.5"), Err(Error::Syntax));
        assert_eq!(parse(""), Err(Error::Syntax));
        assert_eq!(parse("0000"), Err(Error::Range));
    }

    #[test]
    fn date_only_values_ignore_a_trailing_offset() {
        assert_eq!(dt("20240105-0500"), "2024-01-05");
    }

    #[test]
    fn instant_needs_a_time() {
        let tz = berlin();
        assert_eq!(
            parse("20240105").expect("valid").to_instant(&tz),
            Err(Error::Imprecise)
        );
        assert_eq!(
            parse("202401051030")
                .expect("valid")
                .to_instant(&tz)
                .map(|c| c.text),
            Ok("2024-01-05T10:30:00+01:00".to_owned())
        );
    }

    #[test]
    fn tm_becomes_fhir_time_and_reports_a_dropped_offset() {
        assert_eq!(to_time("1030"), Ok(("10:30:00".to_owned(), false)));
        assert_eq!(
            to_time("103005.25+0100"),
            Ok(("10:30:05.25".to_owned(), true))
        );
        assert_eq!(to_time("25"), Err(Error::Range));
        assert_eq!(to_time("1"), Err(Error::Syntax));
    }
}
