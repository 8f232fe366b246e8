//! FHIR date, dateTime and instant values as NEMS requires them: the spec's dateTime
//! pattern, and a time zone offset whenever a time is given.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// A parsed FHIR date/dateTime: a date, and the instant when a time was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FhirDateTime {
    /// The calendar date as written (year, month and day; missing parts are 1).
    pub date: Date,
    /// The instant, when a time (and so an offset) was given.
    pub instant: Option<OffsetDateTime>,
}

/// Parses a FHIR dateTime (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or with `Thh:mm:ss[.f]` and a
/// mandatory `Z` or `±hh:mm` offset between `-14:00`... `+14:00`). Returns `None` when the
/// text does not follow the pattern or names an impossible date or time.
pub fn parse_date_time(s: &str) -> Option<FhirDateTime> {
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let date = parse_date_part(date_part)?;
    let Some(time_text) = time_part else {
        return Some(FhirDateTime {
            date,
            instant: None,
        });
    };
    if date_part.len() != 10 {
        return None;
    }
    if !offset_is_valid(time_text) {
        return None;
    }
    let instant = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some(FhirDateTime {
        date,
        instant: Some(instant),
    })
}

/// Parses a FHIR instant: a full dateTime with seconds and an offset.
pub fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    parse_date_time(s)?.instant
}

/// Formats an instant as FHIR text in UTC with milliseconds, e.g. `2024-01-31T09:00:00.000+00:00`.
pub fn format_instant_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Formats a calendar date as FHIR `date` text, e.g. `2024-01-31`.
pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Milliseconds since the epoch of an instant (0 before the epoch).
pub fn to_ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Completed years between `birth` and `on` (both calendar dates; 29 February birthdays
/// are reached on 1 March in non-leap years).
pub fn completed_years(birth: Date, on: Date) -> Option<u32> {
    if on < birth {
        return None;
    }
    let mut years = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// The UTC calendar date of an epoch-milliseconds time.
pub fn utc_date(ms: u64) -> Date {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(UtcOffset::UTC)
        .date()
}

fn parse_date_part(s: &str) -> Option<Date> {
    let bytes = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = match bytes.len() {
        4 => (digits(0..4)?, 1, 1),
        7 if bytes[4] == b'-' => (digits(0..4)?, digits(5..7)?, 1),
        10 if bytes[4] == b'-' && bytes[7] == b'-' => {
            (digits(0..4)?, digits(5..7)?, digits(8..10)?)
        }
        _ => return None,
    };
    if year == 0 {
        return None;
    }
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()
}

/// Checks the time part `hh:mm:ss[.f](Z|±hh:mm)` against the spec's pattern, which allows
/// offsets from `-13:59`... up to `+14:00` (hours 00–13 with any minutes, or exactly 14:00).
fn offset_is_valid(time_text: &str) -> bool {
    let (clock, offset) = if let Some(clock) = time_text.strip_suffix('Z') {
        (clock, None)
    } else {
        let Some(pos) = time_text.rfind(['+', '-']) else {
            return false;
        };
        (&time_text[..pos], Some(&time_text[pos + 1..]))
    };
    let clock_ok = clock.len() >= 8
        && clock.as_bytes()[2] == b':'
        && clock.as_bytes()[5] == b':'
        && (clock.len() == 8
            || (clock.as_bytes()[8] == b'.'
                && clock.len() > 9
                && clock[9..].bytes().all(|b| b.is_ascii_digit())));
    if !clock_ok {
        return false;
    }
    match offset {
        None => true,
        Some(off) => {
            let b = off.as_bytes();
            if b.len() != 5 || b[2] != b':' {
                return false;
            }
            let (Ok(h), Ok(m)) = (off[..2].parse::<u32>(), off[3..].parse::<u32>()) else {
                return false;
            };
            (h <= 13 && m <= 59) || (h == 14 && m == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn date_time_table() {
        for (text, ok, has_instant) in [
            ("2017", true, false),
            ("2017-10", true, false),
            ("2017-10-02", true, false),
            ("2017-10-02T12:00:00+00:00", true, true),
            ("2017-10-02T12:00:00Z", true, true),
            ("2017-10-02T12:00:00.123+01:00", true, true),
            ("2017-10-02T12:00:00-05:30", true, true),
            ("2017-10-02T12:00:00+14:00", true, true),
            // The spec's pattern: offsets beyond 14:00 are invalid (nipe-outcome-1-update).
            ("2017-11-01T16:02:04+58:00", false, false),
            ("2017-11-01T16:02:04+14:30", false, false),
            // A time needs an offset.
            ("2017-10-02T12:00:00", false, false),
            ("2017-10-02T12:00+00:00", false, false),
            ("2017-13-02", false, false),
            ("2017-02-30", false, false),
            ("17-10-02", false, false),
            ("2017-10-02T25:00:00Z", false, false),
            ("", false, false),
        ] {
            let parsed = parse_date_time(text);
            assert_eq!(parsed.is_some(), ok, "{text}");
            if let Some(p) = parsed {
                assert_eq!(p.instant.is_some(), has_instant, "{text}");
            }
        }
    }

    #[test]
    fn completed_years_counts_birthdays() {
        assert_eq!(
            completed_years(date!(2010 - 06 - 15), date!(2024 - 06 - 14)),
            Some(13)
        );
        assert_eq!(
            completed_years(date!(2010 - 06 - 15), date!(2024 - 06 - 15)),
            Some(14)
        );
        assert_eq!(
            completed_years(date!(2012 - 02 - 29), date!(2013 - 02 - 28)),
            Some(0)
        );
        assert_eq!(
            completed_years(date!(2012 - 02 - 29), date!(2013 - 03 - 01)),
            Some(1)
        );
        assert_eq!(
            completed_years(date!(2024 - 01 - 01), date!(2023 - 01 - 01)),
            None
        );
    }

    #[test]
    fn instants_format_in_utc() {
        assert_eq!(format_instant_ms(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(
            format_instant_ms(1_706_691_600_123),
            "2024-01-31T09:00:00.123+00:00"
        );
        let t = parse_instant("2024-01-31T10:00:00.123+01:00").unwrap();
        assert_eq!(to_ms(t), 1_706_691_600_123);
    }
}
