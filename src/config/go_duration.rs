//! Go's duration strings, exactly as `time.ParseDuration` reads them and `Duration.String`
//! writes them: the network's existing config files are written in them.
//!
//! The grammar, the signed 64-bit nanosecond range and the rounding of fractions are Go's, so a
//! string Go accepts gives the same nanoseconds here and a string Go refuses is refused; the
//! unit tests hold Go's documented cases.

use std::fmt;
use std::time::Duration;

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// `1 << 63`: one past the longest positive Go duration, the magnitude of the most negative.
const LIMIT: u64 = 1 << 63;

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoDurationError {
    /// Nothing, or only a sign.
    Empty,
    /// Go durations have no whitespace anywhere.
    Space,
    /// A number without a unit (`10`); only `0` may stand alone.
    MissingUnit,
    /// A unit Go does not know (`min`, `d`).
    UnknownUnit(String),
    /// Beyond Go's `time.Duration`, a signed 64-bit count of nanoseconds.
    OutOfRange,
    /// Anything else Go calls an invalid duration (`h`, `.s`, `+.s`).
    Invalid,
}

impl fmt::Display for GoDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it has no number and unit"),
            Self::Space => f.write_str("Go durations have no spaces"),
            Self::MissingUnit => f.write_str("a number needs a unit (ns, us, µs, ms, s, m or h)"),
            Self::UnknownUnit(unit) => write!(f, "unknown unit `{unit}` (the units are ns, us, µs, ms, s, m and h)"),
            Self::OutOfRange => f.write_str("it is longer than Go's limit of 2562047h47m16.854775807s"),
            Self::Invalid => f.write_str("it is not a number followed by a unit"),
        }
    }
}

/// Parses `text` as Go's `time.ParseDuration` does, into signed nanoseconds: an optional sign,
/// then one or more decimal numbers, each with an optional fraction and a unit among `ns`,
/// `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`, such as `300ms`, `-1.5h`, `2h45m`;
/// `0` alone needs no unit.
pub fn parse(text: &str) -> Result<i64, GoDurationError> {
    if text.chars().any(char::is_whitespace) {
        // Go refuses these too, at the first space; this says why.
        return Err(GoDurationError::Space);
    }
    let mut s = text.as_bytes();
    let mut neg = false;
    if let [sign @ (b'-' | b'+'), rest @ ..] = s {
        neg = *sign == b'-';
        s = rest;
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(GoDurationError::Empty);
    }
    let mut d: u64 = 0;
    while !s.is_empty() {
        // The next character must be [0-9.].
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(GoDurationError::Invalid);
        }
        let before = s.len();
        let (mut v, rest) = leading_int(s).ok_or(GoDurationError::OutOfRange)?;
        s = rest;
        let pre = before != s.len();

        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if let [b'.', rest @ ..] = s {
            let before = rest.len();
            (f, scale, s) = leading_fraction(rest);
            post = before != s.len();
        }
        if !pre && !post {
            // No digits, as in ".s" or "-.s".
            return Err(GoDurationError::Invalid);
        }

        let unit_len = s.iter().position(|&c| c == b'.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(GoDurationError::MissingUnit);
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit = match unit {
            b"ns" => NANOSECOND,
            // "µs" (U+00B5, micro sign) and "μs" (U+03BC, Greek mu), in UTF-8.
            b"us" | b"\xC2\xB5s" | b"\xCE\xBCs" => MICROSECOND,
            b"ms" => MILLISECOND,
            b"s" => SECOND,
            b"m" => MINUTE,
            b"h" => HOUR,
            // The unit ends before an ASCII byte or at the end, so it is whole UTF-8.
            _ => return Err(GoDurationError::UnknownUnit(String::from_utf8_lossy(unit).into_owned())),
        };
        if v > LIMIT / unit {
            return Err(GoDurationError::OutOfRange);
        }
        v *= unit;
        if f > 0 {
            // As in Go: float64 keeps fractions of hours nanosecond-accurate, and
            // f * unit / scale <= 3.6e12 fits.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(GoDurationError::OutOfRange);
            }
        }
        // Go's uint64 addition wraps; both terms are at most 1 << 63.
        d = d.wrapping_add(v);
        if d > LIMIT {
            return Err(GoDurationError::OutOfRange);
        }
    }
    if neg {
        return Ok((d as i64).wrapping_neg());
    }
    i64::try_from(d).map_err(|_| GoDurationError::OutOfRange)
}

/// Consumes the leading `[0-9]*`; `None` on overflow.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut x: u64 = 0;
    for &c in &s[..digits] {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > LIMIT {
            return None;
        }
    }
    Some((x, &s[digits..]))
}

/// Consumes the leading `[0-9]*` of a fraction: its value, 10 to the power of the digits
/// kept, and the rest. Past 63 bits it stops keeping digits instead of failing.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    for &c in &s[..digits] {
        if overflow {
            continue;
        }
        if x > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[digits..])
}

/// Writes `duration` as Go's `Duration.String` does: `1h30m0s`, `5m0s`, `1.5s`, `250ms`, `0s`.
pub fn format(duration: Duration) -> String {
    let mut u = duration.as_nanos();
    if u < u128::from(SECOND) {
        // Under a second, the largest unit that keeps an integer part: 1.2ms, 3µs, 5ns.
        let (prec, unit) = match u {
            0 => return "0s".into(),
            _ if u < u128::from(MICROSECOND) => (0, "ns"),
            _ if u < u128::from(MILLISECOND) => (3, "µs"),
            _ => (6, "ms"),
        };
        let fraction = split_fraction(&mut u, prec);
        return format!("{u}{fraction}{unit}");
    }
    let fraction = split_fraction(&mut u, 9);
    let (seconds, minutes, hours) = (u % 60, u / 60 % 60, u / 3600);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}{fraction}s"),
        (0, _) => format!("{minutes}m{seconds}{fraction}s"),
        _ => format!("{hours}h{minutes}m{seconds}{fraction}s"),
    }
}

/// Splits off the last `prec` decimal digits of `v` as `.digits` without trailing zeros
/// (nothing when they are all zero), leaving the integer part in `v`.
fn split_fraction(v: &mut u128, prec: u32) -> String {
    let scale = 10u128.pow(prec);
    let digits = *v % scale;
    *v /= scale;
    if digits == 0 {
        return String::new();
    }
    let text = format!(".{digits:0width$}", width = prec as usize);
    text.trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1;
    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;

    /// Go's own table (`parseDurationTests` in time_test.go).
    #[test]
    fn go_accepts_these() {
        let cases: &[(&str, i64)] = &[
            // simple
            ("0", 0),
            ("5s", 5 * S),
            ("30s", 30 * S),
            ("1478s", 1478 * S),
            // sign
            ("-5s", -5 * S),
            ("+5s", 5 * S),
            ("-0", 0),
            ("+0", 0),
            // decimal
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600 * MS),
            ("5.s", 5 * S),
            (".5s", 500 * MS),
            ("1.0s", S),
            ("1.00s", S),
            ("1.004s", S + 4 * MS),
            ("1.0040s", S + 4 * MS),
            ("100.00100s", 100 * S + MS),
            // different units
            ("10ns", 10 * NS),
            ("11us", 11 * US),
            ("12µs", 12 * US),
            ("12μs", 12 * US),
            ("13ms", 13 * MS),
            ("14s", 14 * S),
            ("15m", 15 * M),
            ("16h", 16 * H),
            // composite durations
            ("3h30m", 3 * H + 30 * M),
            ("10.5s4m", 4 * M + 10 * S + 500 * MS),
            ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
            ("1h2m3s4ms5us6ns", H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS),
            ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
            // large value
            ("52763797000ns", 52763797000 * NS),
            // more than 9 digits after decimal point
            ("0.3333333333333333333h", 20 * M),
            // 9007199254740993 = 1<<53+1 cannot be stored precisely in a float64
            ("9007199254740993ns", (1 << 53) + 1),
            // largest duration that can be represented by int64 in nanoseconds
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            // largest negative value
            ("-9223372036854775808ns", i64::MIN),
            // largest negative round trip value
            ("-2562047h47m16.854775808s", i64::MIN),
            // huge string; issue 15011.
            ("0.100000000000000000000h", 6 * M),
            // This value tests the first overflow check in leadingFraction.
            ("0.830103483285477580700h", 49 * M + 48 * S + 372539827 * NS),
            // The examples of the brief and of Go's documentation.
            ("300ms", 300 * MS),
            ("-1.5h", -(H + 30 * M)),
            ("2h45m", 2 * H + 45 * M),
            ("1h30m0.5s", H + 30 * M + 500 * MS),
            ("1.5h", H + 30 * M),
        ];
        for &(text, nanos) in cases {
            assert_eq!(parse(text), Ok(nanos), "{text}");
        }
    }

    /// Go's `parseDurationErrorTests`, and forms other parsers accept that Go does not.
    #[test]
    fn go_refuses_these() {
        let cases: &[(&str, GoDurationError)] = &[
            ("", GoDurationError::Empty),
            ("3", GoDurationError::MissingUnit),
            ("-", GoDurationError::Empty),
            ("s", GoDurationError::Invalid),
            (".", GoDurationError::Invalid),
            ("-.", GoDurationError::Invalid),
            (".s", GoDurationError::Invalid),
            ("+.s", GoDurationError::Invalid),
            ("1d", GoDurationError::UnknownUnit("d".into())),
            // Go's own cases here are invalid UTF-8 bytes, which a `&str` cannot hold.
            ("\u{85}\u{85}", GoDurationError::Space),
            ("\u{ff}ff", GoDurationError::Invalid),
            ("\u{FFFD}", GoDurationError::Invalid),
            ("9223372036854775810ns", GoDurationError::OutOfRange),
            ("9223372036854775808ns", GoDurationError::OutOfRange),
            ("-9223372036854775809ns", GoDurationError::OutOfRange),
            ("9223372036854776us", GoDurationError::OutOfRange),
            ("3000000h", GoDurationError::OutOfRange),
            ("9223372036854775.808us", GoDurationError::OutOfRange),
            ("9223372036854ms775us808ns", GoDurationError::OutOfRange),
            ("2562047h47m16.854775808s", GoDurationError::OutOfRange),
            // Forms other duration parsers accept.
            ("5min", GoDurationError::UnknownUnit("min".into())),
            ("10", GoDurationError::MissingUnit),
            ("00", GoDurationError::MissingUnit),
            ("1 h", GoDurationError::Space),
            (" 5s", GoDurationError::Space),
            ("2 days", GoDurationError::Space),
            ("h", GoDurationError::Invalid),
            ("1h-30m", GoDurationError::UnknownUnit("h-".into())),
            ("1..5s", GoDurationError::MissingUnit),
            ("5S", GoDurationError::UnknownUnit("S".into())),
            ("1hr", GoDurationError::UnknownUnit("hr".into())),
            ("1µ", GoDurationError::UnknownUnit("µ".into())),
        ];
        for (text, error) in cases {
            assert_eq!(parse(text).as_ref(), Err(error), "{text:?}");
        }
    }

    /// Go's `durationTests` for `Duration.String`.
    #[test]
    fn written_as_go_writes_them() {
        let cases: &[(&str, Duration)] = &[
            ("0s", Duration::ZERO),
            ("1ns", Duration::from_nanos(1)),
            ("1.1µs", Duration::from_nanos(1100)),
            ("2.2ms", Duration::from_micros(2200)),
            ("3.3s", Duration::from_millis(3300)),
            ("4m5s", Duration::from_secs(4 * 60 + 5)),
            ("4m5.001s", Duration::from_millis(4 * 60_000 + 5001)),
            ("5h6m7.001s", Duration::from_millis(5 * 3_600_000 + 6 * 60_000 + 7001)),
            ("8m0.000000001s", Duration::from_nanos(8 * 60 * 1_000_000_000 + 1)),
            ("2562047h47m16.854775807s", Duration::from_nanos(i64::MAX as u64)),
            ("5m0s", Duration::from_secs(300)),
            ("1h30m0s", Duration::from_secs(5400)),
            ("1m30s", Duration::from_secs(90)),
        ];
        for &(text, duration) in cases {
            assert_eq!(format(duration), text);
            assert_eq!(parse(text), Ok(duration.as_nanos() as i64), "{text} reads back");
        }
    }
}
