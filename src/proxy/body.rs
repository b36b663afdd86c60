//! The request body: read whole (bounded by `limits.maxBodyBytes` and `limits.bodyReadTimeout`)
//! so that it can be hashed, routed by its `model` and forwarded byte-identical (but for an
//! alias, `upstream`'s).

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora_proxy::Session;

use super::api_error::{ApiError, ErrorCode, Rejected};
use super::limits::{body_too_large, declared_body_length};
use super::model_field::{self, ModelField, ModelFieldError};
use crate::config::Limits;

/// Reads the whole body within `limits.bodyReadTimeout`, refusing one that grows past
/// `limits.maxBodyBytes` (a declared length over it was refused before, by `limits`).
pub(crate) async fn read_whole(session: &mut Session, limits: &Limits) -> Result<Bytes, Rejected> {
    let declared = declared_body_length(session.req_header()).and_then(|n| usize::try_from(n).ok());
    // Pingora replays a body consumed here to the upstream only from its retry buffer, and
    // only when buffering was enabled before the first read.
    let downstream = session.as_downstream_mut();
    downstream.enable_retry_buffering();
    // The whole read is bounded below; Pingora's own bound on each read (60 s) would cut a
    // longer `bodyReadTimeout` short.
    downstream.set_read_timeout(Some(limits.body_read_timeout));
    if expects_continue(downstream.req_header()) {
        // The caller waits for leave to send its body, which the node reads here.
        downstream.write_continue_response().await.map_err(Rejected::Failed)?;
    }
    let reading = read_bounded(session, limits, declared);
    match tokio::time::timeout(limits.body_read_timeout, reading).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} (limits.bodyReadTimeout)",
                crate::config::format_duration(limits.body_read_timeout)
            ),
        )
        .into()),
    }
}

async fn read_bounded(session: &mut Session, limits: &Limits, declared: Option<usize>) -> Result<Bytes, Rejected> {
    let limit = limits.max_body_bytes;
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    // Whatever fails here is the caller's (a bad chunk size, a reset): `fail_to_proxy` tells them
    // apart by source.
    while let Some(chunk) = session.read_request_body().await.map_err(|e| Rejected::Failed(e.into_down()))? {
        let received = first.as_ref().map_or(0, Bytes::len) + rest.len() + chunk.len();
        if received > limit {
            return Err(body_too_large(limits).into());
        }
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.reserve(declared.unwrap_or(received).min(limit));
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() { first.unwrap_or_default() } else { rest.freeze() })
}

/// `Expect: 100-continue` from an HTTP/1.1 caller (one of HTTP/1.0 gets no 100, RFC 9110 §10.1.1).
fn expects_continue(request: &RequestHeader) -> bool {
    request.version == http::Version::HTTP_11
        && request.headers.get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The top-level `model` of a JSON request body, with where its value sits (see [`model_field`]).
pub fn model_of(body: &[u8]) -> Result<ModelField<'_>, ApiError> {
    model_field::locate(body).map_err(|error| {
        let code = match error {
            ModelFieldError::Syntax { .. } => ErrorCode::InvalidJson,
            ModelFieldError::NotAnObject
            | ModelFieldError::ModelNotAString
            | ModelFieldError::DuplicateModel { .. } => ErrorCode::InvalidModel,
            ModelFieldError::MissingModel => ErrorCode::MissingModel,
        };
        ApiError::new(code, error.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_read_from_the_top_level() {
        let body = br#"{"messages":[{"model":"inner"}],"model":"m\u00e9ta/llama"}"#;
        assert_eq!(model_of(body).unwrap().name, "méta/llama");
    }

    #[test]
    fn bad_bodies_get_distinct_codes() {
        assert_eq!(model_of(b"{not json").unwrap_err().code, "invalid_json");
        assert_eq!(model_of(b"").unwrap_err().code, "invalid_json");
        assert_eq!(model_of(br#"{"model":5}"#).unwrap_err().code, "invalid_model");
        assert_eq!(model_of(br#"[1,2]"#).unwrap_err().code, "invalid_model");
        assert_eq!(model_of(br#"{"messages":[]}"#).unwrap_err().code, "missing_model");
        assert_eq!(model_of(br#"{"model":""}"#).unwrap_err().code, "missing_model");
        assert_eq!(model_of(br#"{"model":null}"#).unwrap_err().code, "missing_model");
        assert_eq!(model_of(br#"{"model":"a","model":"a"}"#).unwrap_err().code, "invalid_model");
    }
}
