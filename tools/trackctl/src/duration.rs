//! Human durations for flags such as `--ttl 1d`: plain seconds, or number-unit pairs (`90`, `15m`, `1h30m`).

use std::time::Duration;

/// Parses `90`, `90s`, `15m`, `12h`, `7d`, `2w` or a sum such as `1h30m` into whole seconds.
///
/// # Errors
/// A message for clap when the text is not a positive duration in those units.
pub fn parse_seconds(raw: &str) -> Result<i64, String> {
    let text = raw.trim();
    let bad = || {
        format!("{raw:?} is not a duration; write seconds (3600) or units like 90s, 15m, 12h, 7d, 1h30m")
    };
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return if seconds > 0 {
            Ok(seconds)
        } else {
            Err(format!("{raw:?}: a duration must be positive"))
        };
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let amount: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = amount
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("{raw:?} is too long"))?;
    }
    // a trailing bare number ("1h30") is ambiguous, so it is refused rather than guessed
    if !digits.is_empty() {
        return Err(bad());
    }
    if total > 0 {
        Ok(total)
    } else {
        Err(format!("{raw:?}: a duration must be positive"))
    }
}

/// [`parse_seconds`] as a [`Duration`], for clap.
///
/// # Errors
/// As [`parse_seconds`].
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    parse_seconds(raw).map(|s| Duration::from_secs(s.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seconds_units_and_sums() {
        assert_eq!(parse_seconds("3600"), Ok(3600));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("15m"), Ok(900));
        assert_eq!(parse_seconds("1d"), Ok(86_400));
        assert_eq!(parse_seconds("2w"), Ok(14 * 86_400));
        assert_eq!(parse_seconds("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn refuses_zero_negative_and_garbage() {
        for bad in [
            "",
            "0",
            "-5",
            "0s",
            "1x",
            "h",
            "1h30",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_seconds(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
