//! The node's error responses: OpenAI-shaped JSON (`{"error": {"message", "type", "code"}}`)
//! with a stable `code` per reason, so OpenAI clients show them.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use crate::auth::AuthError;
use crate::challenge::ChallengeError;
use crate::routing::RoutingError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// A header the status calls for: `Allow` with a 405, `Retry-After` with a 503.
    pub header: Option<(http::HeaderName, &'static str)>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, code, message: message.into(), header: None }
    }

    pub fn invalid_request(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, "invalid_request_error", code, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            header: Some((http::header::ALLOW, allow)),
            ..Self::invalid_request(405, "method_not_allowed", format!("this path accepts {allow} only"))
        }
    }

    fn upstream(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, "upstream_error", code, message)
    }

    pub fn json_body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code }
        });
        Bytes::from(body.to_string())
    }

    /// Writes the response; the caller returns `Ok(true)` from `request_filter` afterwards.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        write_response(session, self.status, "application/json", self.header.as_ref(), self.json_body()).await
    }

    /// What to tell the caller about a failure while reaching the backend; `None` when the
    /// caller's own connection is gone and nothing can be sent.
    pub fn from_proxy_error(error: &Error) -> Option<Self> {
        use ErrorType::*;
        if let HTTPStatus(status) = error.etype() {
            return Some(Self::new(*status, "server_error", "http_error", "request failed"));
        }
        match (error.esource(), error.etype()) {
            (
                _,
                ConnectTimedout | ConnectRefused | ConnectNoRoute | TLSWantX509Lookup | TLSHandshakeFailure
                | TLSHandshakeTimedout | InvalidCert | HandshakeError | ConnectError | BindError | SocketError
                | ConnectProxyFailure,
            ) => Some(Self::upstream(
                502,
                "backend_unavailable",
                format!("the model backend could not be reached ({})", error.etype().as_str()),
            )),
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
            (ErrorSource::Downstream, ReadTimedout) => {
                Some(Self::invalid_request(408, "request_timeout", "the request body did not arrive in time"))
            }
            (ErrorSource::Downstream, _) => Some(Self::invalid_request(400, "bad_request", "malformed HTTP request")),
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => Some(Self::upstream(
                504,
                "backend_timeout",
                "the model backend did not answer within proxy.readTimeout",
            )),
            (ErrorSource::Upstream, _) => Some(Self::upstream(
                502,
                "backend_unavailable",
                format!("the model backend failed ({})", error.etype().as_str()),
            )),
            _ => Some(Self::new(500, "server_error", "internal_error", "the node failed to handle the request")),
        }
    }
}

/// Writes a whole response that the node answers itself.
pub(super) async fn write_response(
    session: &mut Session,
    status: u16,
    content_type: &str,
    extra_header: Option<&(http::HeaderName, &'static str)>,
    body: Bytes,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header(http::header::CONTENT_TYPE, content_type)?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if let Some((name, value)) = extra_header {
        header.insert_header(name.clone(), *value)?;
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let mut api_error = Self::new(error.status(), "authentication_error", error.code(), error.to_string());
        if error == AuthError::NonceStoreFull {
            api_error.header = Some((http::header::RETRY_AFTER, "1"));
        }
        api_error
    }
}

impl From<ChallengeError> for ApiError {
    fn from(error: ChallengeError) -> Self {
        let code = match error {
            ChallengeError::Malformed(_) => "invalid_challenge",
            ChallengeError::UnknownType(_) => "unknown_challenge_type",
        };
        Self::invalid_request(400, code, error.to_string())
    }
}

impl From<RoutingError> for ApiError {
    fn from(error: RoutingError) -> Self {
        match error {
            RoutingError::UnknownModel { .. } => Self::invalid_request(404, "model_not_found", error.to_string()),
            RoutingError::Unresolvable { .. } => Self::upstream(502, "backend_unavailable", error.to_string()),
            RoutingError::BadPath(_) => Self::invalid_request(400, "bad_request", error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let error = ApiError::invalid_request(400, "invalid_json", "body is not \"JSON\"");
        let parsed: serde_json::Value = serde_json::from_slice(&error.json_body()).unwrap();
        assert_eq!(parsed["error"]["code"], "invalid_json");
        assert_eq!(parsed["error"]["type"], "invalid_request_error");
        assert_eq!(parsed["error"]["message"], "body is not \"JSON\"");
    }

    #[test]
    fn backend_failures_map_to_gateway_statuses() {
        let timeout = Error::explain(ErrorType::ReadTimedout, "slow").into_up();
        assert_eq!(ApiError::from_proxy_error(&timeout).unwrap().status, 504);
        let refused = Error::explain(ErrorType::ConnectRefused, "no").into_up();
        assert_eq!(ApiError::from_proxy_error(&refused).unwrap().status, 502);
        let gone = Error::explain(ErrorType::WriteError, "client left").into_down();
        assert_eq!(ApiError::from_proxy_error(&gone), None);
    }
}
