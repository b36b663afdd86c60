//! What the node accepts of a request's head, checked before anything else reads it: the size
//! and count of its headers, and a declared body length within `limits.maxBodyBytes` (a body
//! that grows past it as it arrives is refused by `body`).

use pingora::http::RequestHeader;

use super::api_error::{ApiError, ErrorCode};
use crate::config::Limits;

pub(super) fn body_too_large(limits: &Limits) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!(
            "the request body is larger than this node accepts ({} bytes, limits.maxBodyBytes)",
            limits.max_body_bytes
        ),
    )
}

/// Refuses a head over the limits; `head_bytes` is its size as received (request line included).
pub(super) fn check_head(request: &RequestHeader, head_bytes: usize, limits: &Limits) -> Result<(), ApiError> {
    if head_bytes > limits.max_header_bytes {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request header is {head_bytes} bytes; this node accepts {} (limits.maxHeaderBytes)",
                limits.max_header_bytes
            ),
        ));
    }
    if request.headers.len() > limits.max_header_count {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request has {} header lines; this node accepts {} (limits.maxHeaderCount)",
                request.headers.len(),
                limits.max_header_count
            ),
        ));
    }
    // Refused before a byte of it is read, whatever the path: an answer given before the body
    // ends closes the connection rather than drain the rest.
    if declared_body_length(request).is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(body_too_large(limits));
    }
    Ok(())
}

/// The `Content-Length` of a request framed by it (Pingora has refused differing copies, and
/// dropped it beside `Transfer-Encoding`).
pub(super) fn declared_body_length(request: &RequestHeader) -> Option<u64> {
    request.headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("POST", b"/v1/completions", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn heads_over_a_limit_are_refused_with_their_code() {
        let limits = Limits { max_header_bytes: 100, max_header_count: 2, max_body_bytes: 10, ..Limits::default() };
        assert_eq!(check_head(&request(&[]), 101, &limits).unwrap_err().status, 431);
        let three = request(&[("a", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(check_head(&three, 50, &limits).unwrap_err().code, "headers_too_large");
        let large = request(&[("content-length", "11")]);
        assert_eq!(check_head(&large, 50, &limits).unwrap_err().code, "body_too_large");
        assert!(check_head(&request(&[("content-length", "10")]), 100, &limits).is_ok());
    }
}
