//! The id one request carries through the node, the backend and the logs: the caller's
//! `X-Request-Id` when it is a short printable token, one the node makes otherwise.

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Long enough for a UUID or a trace id with a prefix; short enough for every log line.
const MAX_LEN: usize = 128;

#[derive(Debug, Clone)]
pub(crate) struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's `X-Request-Id` when it is 1 to [`MAX_LEN`] printable ASCII characters
    /// (`!` to `~`: no spaces, which would split the log line), otherwise a new one.
    pub(crate) fn of(request: &RequestHeader) -> Self {
        match request.headers.get(X_REQUEST_ID) {
            Some(value) if Self::acceptable(value.as_bytes()) => Self(value.clone()),
            _ => Self::new(),
        }
    }

    /// Stands in until `request_filter` has read the request's header.
    pub(crate) fn unset() -> Self {
        Self(HeaderValue::from_static("-"))
    }

    /// A new random id of 128 bits, in 32 hex digits.
    pub(crate) fn new() -> Self {
        Self(HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>())).expect("hex digits are a header value"))
    }

    fn acceptable(id: &[u8]) -> bool {
        (1..=MAX_LEN).contains(&id.len()) && id.iter().all(|byte| (b'!'..=b'~').contains(byte))
    }

    pub(crate) fn as_str(&self) -> &str {
        // Printable ASCII by construction.
        self.0.to_str().unwrap_or_default()
    }

    pub(crate) fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: &[u8]) -> String {
        let mut request = RequestHeader::build("POST", b"/v1/embeddings", None).unwrap();
        request.insert_header(X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap()).unwrap();
        RequestId::of(&request).as_str().to_string()
    }

    #[test]
    fn a_short_printable_id_is_kept() {
        for id in ["a", "req-42_x.y:z/~!", &"x".repeat(MAX_LEN)] {
            assert_eq!(id_for(id.as_bytes()), id);
        }
    }

    #[test]
    fn a_bad_or_missing_id_is_replaced_by_a_new_one() {
        let made = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        for bad in [&b""[..], b"has space", b"tab\there", &[b'x'; MAX_LEN + 1], b"caf\xc3\xa9"] {
            let id = id_for(bad);
            assert!(made(&id), "{bad:?} gave {id:?}");
        }
        let absent = RequestHeader::build("GET", b"/health", None).unwrap();
        let (first, second) = (RequestId::of(&absent), RequestId::of(&absent));
        assert!(made(first.as_str()));
        assert_ne!(first.as_str(), second.as_str());
    }
}
