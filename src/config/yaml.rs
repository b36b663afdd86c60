//! Shared parsing helpers: YAML documents into sections with key paths in their errors,
//! and the value types the files use (Go durations, Ethereum addresses, URLs).

use std::path::Path;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use super::go_duration::{self, GoDurationError};
use super::{ConfigError, ConfigErrors};

/// Parses a whole document, which must be a mapping (an empty file is an empty mapping).
pub(super) fn parse_document(path: &Path, text: &str) -> Result<serde_yaml::Mapping, ConfigErrors> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(serde_yaml::Mapping::new()),
        Ok(Value::Mapping(map)) => Ok(map),
        Ok(_) => Err(ConfigError::new(path, "", "expected a YAML mapping of keys at the top level").into()),
        Err(e) => Err(ConfigError::new(path, "", format!("not valid YAML: {e}")).into()),
    }
}

/// Deserializes one value into `T`, recording an error at `key` (plus the path inside the value).
/// A missing (null) value gives `T::default()`.
///
/// Serde stops at a value's first error; to report every one, a value that fails is split into
/// one probe per key (recursively, down to the innermost mapping) and each probe is
/// deserialized alone. `T` and the structs inside it must therefore accept any subset of their
/// keys (`#[serde(default)]` or optional fields); a failure no single key explains is reported
/// as it is. The value is then read without its failing keys, so that the good ones can still
/// be checked: a key that failed has its default (see [`ConfigErrors::touches`]).
pub(super) fn typed<T: DeserializeOwned + Default>(
    path: &Path,
    key: &str,
    value: Value,
    errors: &mut ConfigErrors,
) -> T {
    if value.is_null() {
        return T::default();
    }
    let first = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(parsed) => return parsed,
        Err(first) => first,
    };
    let mut found = Vec::new();
    collect_errors::<T>(value.clone(), first, &mut found);
    let mut rest = value;
    for error in found {
        let keys: Vec<&str> = error
            .path()
            .iter()
            .map_while(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        remove_key(&mut rest, &keys);
        let inner = error.path().to_string();
        let full = match inner.as_str() {
            "." | "" => key.to_string(),
            _ if key.is_empty() => inner,
            _ => format!("{key}.{inner}"),
        };
        errors.push(ConfigError::new(path, full, error.into_inner().to_string()));
    }
    serde_yaml::from_value(rest).unwrap_or_default()
}

/// Removes the key at the end of `keys` (a path of mapping keys) from `value`.
fn remove_key(value: &mut Value, keys: &[&str]) {
    let (Some((first, rest)), Value::Mapping(map)) = (keys.split_first(), value) else {
        return;
    };
    if rest.is_empty() {
        map.remove(*first);
    } else if let Some(inner) = map.get_mut(*first) {
        remove_key(inner, rest);
    }
}

type PathError = serde_path_to_error::Error<serde_yaml::Error>;

/// The errors of `value`, which failed with `error`: those of each of its probes, or `error`
/// itself when it cannot be split or no probe fails alone.
fn collect_errors<T: DeserializeOwned>(value: Value, error: PathError, found: &mut Vec<PathError>) {
    let before = found.len();
    for probe in split(&value).unwrap_or_default() {
        if let Err(probe_error) = serde_path_to_error::deserialize::<_, T>(probe.clone()) {
            collect_errors::<T>(probe, probe_error, found);
        }
    }
    if found.len() == before {
        found.push(error);
    }
}

/// One value per key of the outermost mapping that has several, each keeping only that key
/// (and the single-key mappings around it); `None` when there is no such mapping.
fn split(value: &Value) -> Option<Vec<Value>> {
    let Value::Mapping(map) = value else {
        return None;
    };
    let single = |key: &Value, value: Value| Value::Mapping([(key.clone(), value)].into_iter().collect());
    match map.len() {
        0 => None,
        1 => {
            let (key, inner) = map.iter().next()?;
            Some(split(inner)?.into_iter().map(|probe| single(key, probe)).collect())
        }
        _ => Some(map.iter().map(|(key, value)| single(key, value.clone())).collect()),
    }
}

/// What every bad duration is told to look like.
const GO_DURATION: &str = r#"a Go duration such as "90s", "5m" or "1h30m""#;

/// Parses a duration exactly as Go's `time.ParseDuration` does (`300ms`, `1.5h`, `1h30m0.5s`),
/// refusing negative ones: every duration here is a timeout, an interval or a window.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let nanos = go_duration::parse(text).map_err(|reason| match reason {
        GoDurationError::Empty if text.is_empty() => format!("empty; expected {GO_DURATION}"),
        reason => format!("`{text}` is not a duration: {reason}; expected {GO_DURATION}"),
    })?;
    let nanos = u64::try_from(nanos).map_err(|_| {
        format!("`{text}` is negative: a timeout or interval cannot be negative; expected {GO_DURATION}")
    })?;
    Ok(Duration::from_nanos(nanos))
}

/// Writes a duration back in Go's form (`5m0s`, `1h30m0s`, `250ms`), as the operator's files do.
pub fn format_duration(duration: Duration) -> String {
    go_duration::format(duration)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// Takes only strings, so that a bare number (`10`) is told the Go form too.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(GO_DURATION)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }
}

/// A positive duration: a zero timeout or interval would disable what it bounds.
pub(super) fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let parsed = duration(deserializer)?;
    if parsed.is_zero() {
        return Err(D::Error::custom("must be longer than zero"));
    }
    Ok(parsed)
}

pub(super) fn optional_positive_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    positive_duration(deserializer).map(Some)
}

pub fn parse_address(text: &str) -> Result<ethers_core::types::Address, String> {
    let hex_digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if hex_digits.len() != 40 || !hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{text}` is not an Ethereum address: write 0x followed by 40 hex digits"));
    }
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(hex_digits, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes.into())
}

pub(super) fn address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ethers_core::types::Address, D::Error> {
    parse_address(&String::deserialize(deserializer)?).map_err(D::Error::custom)
}

pub(super) fn optional_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ethers_core::types::Address>, D::Error> {
    address(deserializer).map(Some)
}

pub(super) fn addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ethers_core::types::Address>, D::Error> {
    every_entry(deserializer, parse_address)
}

/// A list of strings, each parsed by `parse`, with every bad entry in one message: serde stops
/// at a list's first error.
fn every_entry<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    let (parsed, bad): (Vec<_>, Vec<_>) = texts.iter().map(|text| parse(text)).partition(Result::is_ok);
    if !bad.is_empty() {
        let reasons: Vec<String> = bad.into_iter().filter_map(Result::err).collect();
        return Err(D::Error::custom(reasons.join("; ")));
    }
    Ok(parsed.into_iter().filter_map(Result::ok).collect())
}

/// Address ranges as CIDR (`10.0.0.0/8`) or single addresses, every bad entry named at once.
pub(super) fn ip_ranges<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    every_entry(deserializer, |text| {
        let text = text.trim();
        text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(
            |_| {
                format!(
                    "`{text}` is not an address range: write CIDR such as `10.0.0.0/8` or `fd00::/8`, or one address"
                )
            },
        )
    })
}

/// A URL with a host whose scheme is one of `schemes` (the first is the plain one, shown in the
/// example along with `example_host`).
fn parse_url(text: &str, schemes: [&str; 2], example_host: &str) -> Result<url::Url, String> {
    let [plain, secure] = schemes;
    let parsed = url::Url::parse(text)
        .map_err(|e| format!("`{text}` is not a URL ({e}): write one such as `{plain}://{example_host}`"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("`{text}` must start with {plain}:// or {secure}:// (TLS)"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    Ok(parsed)
}

/// An `http` or `https` URL with a host, such as a backend's base URL or an RPC endpoint.
pub fn parse_http_url(text: &str) -> Result<url::Url, String> {
    let parsed = parse_url(text, ["http", "https"], "127.0.0.1:8000")?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "`{text}` must not have a query or fragment: the request path and query are appended to it"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{text}` must not carry credentials: use the `auth` keys"));
    }
    Ok(parsed)
}

/// A `redis://` or `rediss://` URL with a host, as the Redis client reads it.
pub fn parse_redis_url(text: &str) -> Result<url::Url, String> {
    let parsed = parse_url(text, ["redis", "rediss"], "127.0.0.1:6379")?;
    // What the client itself refuses (a database that is not a number, say).
    redis::Client::open(text).map_err(|e| format!("`{text}`: {e}"))?;
    Ok(parsed)
}

pub(super) fn optional_redis_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<url::Url>, D::Error> {
    parse_redis_url(&String::deserialize(deserializer)?).map(Some).map_err(D::Error::custom)
}

pub(super) fn redis_urls<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<url::Url>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts.iter().map(|text| parse_redis_url(text)).collect::<Result<_, _>>().map_err(D::Error::custom)
}

/// An empty string means none, as in the shipped `config.yaml` (`rpcProvider: ""`).
pub(super) fn optional_http_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<url::Url>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_http_url(&text).map(Some).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m0.5s"), Ok(Duration::from_millis(5_400_500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("-0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        for bad in ["", "5", "10", "five minutes", "5min", "1d", "2 days", "1 h", "h", "5 parsecs"] {
            let message = parse_duration(bad).unwrap_err();
            assert!(
                message.ends_with(r#"expected a Go duration such as "90s", "5m" or "1h30m""#),
                "{bad:?} gave {message}"
            );
        }
        assert_eq!(
            parse_duration("5min").unwrap_err(),
            "`5min` is not a duration: unknown unit `min` (the units are ns, us, µs, ms, s, m and h); \
             expected a Go duration such as \"90s\", \"5m\" or \"1h30m\""
        );
    }

    #[test]
    fn negative_durations_are_refused() {
        for bad in ["-1s", "-1.5h"] {
            let message = parse_duration(bad).unwrap_err();
            assert!(message.starts_with(&format!("`{bad}` is negative")), "{message}");
        }
    }

    #[test]
    fn durations_are_shown_in_go_form() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn every_key_of_a_failing_value_is_probed() {
        #[derive(Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct Inner {
            a: u8,
            b: u8,
        }
        #[derive(Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct Outer {
            x: u8,
            inner: Inner,
            y: u8,
        }
        let value: Value = serde_yaml::from_str("{x: no, inner: {a: no, b: 1, c: 2}, y: 3}").unwrap();
        let mut errors = ConfigErrors::default();
        typed::<Outer>(Path::new("f.yaml"), "s", value, &mut errors);
        let keys = errors.keys();
        assert_eq!(keys, ["s.x", "s.inner.a", "s.inner.c"], "{errors}");
        assert!(errors.0[2].message.contains("unknown field `c`"), "{errors}");
    }

    #[test]
    fn addresses_need_forty_hex_digits() {
        let parsed = parse_address("0x0172b2911af6A2491ff76dDEc34aCb7AE2c03BA1").unwrap();
        assert_eq!(parsed.as_bytes()[0], 0x01);
        assert_eq!(parsed.as_bytes()[19], 0xa1);
        for bad in ["0x1234", "0xZZ72b2911af6A2491ff76dDEc34aCb7AE2c03BA1", ""] {
            assert!(parse_address(bad).unwrap_err().contains("40 hex digits"));
        }
    }

    #[test]
    fn backend_urls_are_checked() {
        assert!(parse_http_url("https://api.example.com/openai").is_ok());
        assert!(parse_http_url("ftp://x").unwrap_err().contains("http://"));
        assert!(parse_http_url("http://x/?a=1").unwrap_err().contains("query"));
        assert!(parse_http_url("http://u:p@x").unwrap_err().contains("credentials"));
        assert!(parse_http_url("not a url").unwrap_err().contains("not a URL"));
    }
}
