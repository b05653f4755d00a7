//! Instants on the command line (`--from`, `--to`, `--before`) and in what we print: UTC always,
//! so that a timeline reads the same on every ops laptop and matches the server's logs.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::duration::parse_seconds;

/// Below this a bare number is unix seconds, above it unix milliseconds (1e11 s is the year 5138,
/// 1e11 ms is March 1973: no history of ours is that old).
const SECONDS_OR_MILLIS: i64 = 100_000_000_000;

/// Parses an instant into unix milliseconds.
///
/// Accepted: RFC 3339 (`2024-05-01T10:00:00Z`, `2024-05-01T12:00:00+02:00`), a UTC date and time
/// without offset (`2024-05-01T10:00`, `2024-05-01 10:00:05`), a UTC date (`2024-05-01`, its
/// midnight), unix seconds or milliseconds (`1714557600`, `1714557600000`), or a duration with a
/// unit meaning that long before now (`90m`, `2h`, `30d`).
///
/// # Errors
/// A message for clap listing the accepted forms.
pub fn parse_instant(raw: &str) -> Result<i64, String> {
    parse_instant_at(raw, trackline_core::now_ms())
}

/// [`parse_instant`] with "now" given, for tests.
///
/// # Errors
/// As [`parse_instant`].
pub fn parse_instant_at(raw: &str, now_ms: i64) -> Result<i64, String> {
    let text = raw.trim();
    if let Ok(number) = text.parse::<i64>() {
        return Ok(if number.abs() < SECONDS_OR_MILLIS {
            number.saturating_mul(1000)
        } else {
            number
        });
    }
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(unix_ms(at));
    }
    let with_t = text.replacen(' ', "T", 1);
    let primitive = [
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ];
    for format in primitive {
        if let Ok(at) = PrimitiveDateTime::parse(&with_t, format) {
            return Ok(unix_ms(at.assume_utc()));
        }
    }
    if let Ok(day) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Ok(unix_ms(day.midnight().assume_utc()));
    }
    if text.chars().any(|c| c.is_ascii_alphabetic()) {
        if let Ok(ago_s) = parse_seconds(text) {
            return Ok(now_ms - ago_s.saturating_mul(1000));
        }
    }
    Err(format!(
        "{raw:?} is not a time; write 2024-05-01T10:00:00Z (RFC 3339), 2024-05-01 10:00 or 2024-05-01 (UTC), \
         unix seconds, or a duration ago such as 90m, 2h, 30d"
    ))
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn utc(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// `2024-05-01T10:00:05Z` (milliseconds dropped), or the raw number when out of range.
pub fn format_utc(ms: i64) -> String {
    utc(ms)
        .and_then(|at| {
            at.format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `10:00:05` (UTC time of day).
pub fn format_clock(ms: i64) -> String {
    utc(ms)
        .and_then(|at| {
            at.format(format_description!("[hour]:[minute]:[second]"))
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A span for people: `45s`, `4m05s`, `1h02m`, `3d04h`.
pub fn format_span(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".to_string();
    }
    let sign = if seconds < 0.0 { "-" } else { "" };
    let s = seconds.abs().round() as u64;
    let text = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    };
    format!("{sign}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_714_557_600_000; // 2024-05-01T10:00:00Z

    #[test]
    fn reads_every_documented_form() {
        let cases = [
            ("2024-05-01T10:00:00Z", NOW),
            ("2024-05-01T12:00:00+02:00", NOW),
            ("2024-05-01T10:00:00.250Z", NOW + 250),
            ("2024-05-01T10:00", NOW),
            ("2024-05-01 10:00:05", NOW + 5000),
            ("2024-05-01", NOW - 10 * 3600 * 1000),
            ("1714557600", NOW),
            ("1714557600000", NOW),
            ("2h", NOW - 7_200_000),
            ("30d", NOW - 30 * 86_400_000),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_instant_at(raw, NOW), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn refuses_garbage_with_the_accepted_forms() {
        for raw in ["yesterday", "2024-13-01", "", "10:00"] {
            let err = parse_instant_at(raw, NOW).unwrap_err();
            assert!(err.contains("RFC 3339"), "{raw}: {err}");
        }
    }

    #[test]
    fn formats_in_utc() {
        assert_eq!(format_utc(NOW + 999), "2024-05-01T10:00:00Z");
        assert_eq!(format_clock(NOW + 65_000), "10:01:05");
        assert_eq!(format_span(45.0), "45s");
        assert_eq!(format_span(245.0), "4m05s");
        assert_eq!(format_span(3720.0), "1h02m");
        assert_eq!(format_span(-90.0), "-1m30s");
        assert_eq!(format_span(f64::NAN), "-");
    }
}
