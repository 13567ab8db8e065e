//! Durations written as Go duration strings (`"5s"`, `"500ms"`, `"1m30s"`), as in Nomad job
//! specs. A bad value is reported at its own line and column by the config reader.

use std::fmt;
use std::time::Duration;

/// A non-negative duration read from a config string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// Parses Go's duration syntax: one or more `<decimal><unit>` terms, units `ns us µs ms s m h`.
/// A bare `0` is accepted, as in Go. Negative durations are rejected: no setting needs one.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration \"{text}\": expected a number and a unit (ns, us, ms, s, m, h) such as \"5s\" or \"1m30s\""
        )
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        total_nanos += decimal_times(number, nanos_per_unit).ok_or_else(invalid)?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid())?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// `number` (digits with at most one dot) times `scale`, truncated to whole nanoseconds.
fn decimal_times(number: &str, scale: u128) -> Option<u128> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(scale)?;
    let mut place = scale;
    for digit in frac.bytes() {
        place /= 10;
        value = value.checked_add(u128::from(digit - b'0') * place)?;
    }
    Some(value)
}

/// Formats like Go's `time.Duration.String()` (`5s`, `1m30s`, `30m0s`, `500ms`), which is what
/// Consul and Nomad print and accept.
/// Serialized as written in a config (`"5s"`), for `plan --json`.
impl miniserde::Serialize for Dur {
    fn begin(&self) -> miniserde::ser::Fragment<'_> {
        miniserde::ser::Fragment::Str(std::borrow::Cow::Owned(self.to_string()))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            let (value, unit) = if nanos.is_multiple_of(1_000_000) {
                (nanos / 1_000_000, "ms")
            } else if nanos.is_multiple_of(1_000) {
                (nanos / 1_000, "µs")
            } else {
                (nanos, "ns")
            };
            return write!(f, "{value}{unit}");
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = (nanos / 60_000_000_000) % 60;
        let secs = (nanos / 1_000_000_000) % 60;
        let sub = nanos % 1_000_000_000;
        if hours > 0 {
            write!(f, "{hours}h{minutes}m")?;
        } else if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{secs}")?;
        if sub > 0 {
            let digits = format!("{sub:09}");
            write!(f, ".{}", digits.trim_end_matches('0'))?;
        }
        f.write_str("s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-5s",
            "5 s",
            "1..5s",
            "5s3",
            ".s",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(Dur::secs(5).to_string(), "5s");
        assert_eq!(Dur::secs(90).to_string(), "1m30s");
        assert_eq!(Dur::secs(1800).to_string(), "30m0s");
        assert_eq!(Dur::secs(3600).to_string(), "1h0m0s");
        assert_eq!(Dur::millis(500).to_string(), "500ms");
        assert_eq!(Dur::millis(1500).to_string(), "1.5s");
        assert_eq!(Dur::default().to_string(), "0s");
    }
}
