//! Shared parsing helpers: YAML documents into sections with key paths in their errors,
//! and the value types the files use (Go-style durations, Ethereum addresses, URLs).

use std::path::Path;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

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
pub(super) fn typed<T: DeserializeOwned + Default>(
    path: &Path,
    key: &str,
    value: Value,
    errors: &mut ConfigErrors,
) -> T {
    if value.is_null() {
        return T::default();
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => parsed,
        Err(e) => {
            let inner = e.path().to_string();
            let full = match inner.as_str() {
                "." | "" => key.to_string(),
                _ if key.is_empty() => inner,
                _ => format!("{key}.{inner}"),
            };
            errors.push(ConfigError::new(path, full, e.into_inner().to_string()));
            T::default()
        }
    }
}

/// Parses a Go-style duration: `500ms`, `90s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: write one such as `90s`, `5m` or `1h`".into());
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}): write one such as `90s`, `5m` or `1h`"))
}

pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(D::Error::custom)
}

/// A positive duration: a zero timeout or interval would disable what it bounds.
pub(super) fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let parsed = duration(deserializer)?;
    if parsed.is_zero() {
        return Err(D::Error::custom("must be longer than zero"));
    }
    Ok(parsed)
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
    Vec::<String>::deserialize(deserializer)?.iter().map(|text| parse_address(text).map_err(D::Error::custom)).collect()
}

/// An `http` or `https` URL with a host, such as a backend's base URL or an RPC endpoint.
pub fn parse_http_url(text: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(text)
        .map_err(|e| format!("`{text}` is not a URL ({e}): write one such as `http://127.0.0.1:8000`"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{text}` must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
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

pub(super) fn optional_http_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<url::Url>, D::Error> {
    parse_http_url(&String::deserialize(deserializer)?).map(Some).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        for bad in ["", "5", "five minutes", "-1s", "5 parsecs"] {
            let message = parse_duration(bad).unwrap_err();
            assert!(message.contains("`90s`"), "{bad:?} gave {message}");
        }
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
