//! The request body: read whole (bounded by `limits.maxBodyBytes`) so that it can be hashed,
//! routed by its `model` and forwarded byte-identical (but for an alias, `upstream`'s).

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

use super::api_error::{ApiError, ErrorCode, Rejected};
use super::model_field::{self, ModelField, ModelFieldError};

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body is larger than this node accepts ({limit} bytes, limits.maxBodyBytes)"),
    )
}

/// Reads the whole body, refusing one over `limit` as early as its `Content-Length` tells.
pub(crate) async fn read_whole(session: &mut Session, limit: usize) -> Result<Bytes, Rejected> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit).into());
    }
    // Pingora replays a body consumed here to the upstream only from its retry buffer, and
    // only when buffering was enabled before the first read.
    session.as_downstream_mut().enable_retry_buffering();
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(Rejected::Failed)? {
        let received = first.as_ref().map_or(0, Bytes::len) + rest.len() + chunk.len();
        if received > limit {
            return Err(too_large(limit).into());
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
