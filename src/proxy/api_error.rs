//! The node's error vocabulary: every reason the node answers a request with an error, as one
//! [`ErrorCode`] (its stable `code`, OpenAI `type`, HTTP status and the header it calls for), the
//! conversions from each module's typed errors, and the OpenAI-shaped JSON response
//! (`{"error": {"message", "type", "code", "request_id"}}`) that OpenAI clients show.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use super::request_id::{RequestId, X_REQUEST_ID};
use crate::auth::AuthError;
use crate::challenge::ChallengeError;
use crate::limits::Refusal;
use crate::routing::RoutingError;

/// Why the node refused or failed a request. The README's error tables list exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    // The request itself.
    UnknownPath,
    MethodNotAllowed,
    BodyTooLarge,
    HeadersTooLarge,
    InvalidJson,
    InvalidModel,
    MissingModel,
    ModelNotFound,
    BadRequest,
    RequestTimeout,
    // Authentication.
    MissingHeader,
    BadSignatureEncoding,
    StaleTimestamp,
    InvalidSignature,
    NotRegistered,
    WrongRole,
    NonceReused,
    NonceStoreFull,
    NonceStoreUnavailable,
    RegistryUnavailable,
    // Limits.
    RateLimited,
    // Challenges.
    InvalidChallenge,
    UnknownChallengeType,
    ChallengeBusy,
    NodeKeyNotConfigured,
    // The backend, or the node itself.
    BackendUnavailable,
    BackendTimeout,
    HttpError,
    InternalError,
}

impl ErrorCode {
    /// The `code` field clients act on.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The HTTP status; the network's existing nodes answer authentication failures the same way.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidJson | InvalidModel | MissingModel | BadRequest | BadSignatureEncoding | InvalidChallenge
            | UnknownChallengeType => 400,
            MissingHeader | StaleTimestamp | InvalidSignature | NotRegistered | WrongRole | NonceReused => 401,
            UnknownPath | ModelNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            BodyTooLarge => 413,
            ChallengeBusy | RateLimited => 429,
            HeadersTooLarge => 431,
            InternalError | HttpError | NodeKeyNotConfigured => 500,
            BackendUnavailable => 502,
            NonceStoreFull | NonceStoreUnavailable | RegistryUnavailable => 503,
            BackendTimeout => 504,
        }
    }

    /// The OpenAI error `type`.
    pub fn kind(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MissingHeader
            | BadSignatureEncoding
            | StaleTimestamp
            | InvalidSignature
            | NotRegistered
            | WrongRole
            | NonceReused
            | NonceStoreFull
            | NonceStoreUnavailable
            | RegistryUnavailable => "authentication_error",
            BackendUnavailable | BackendTimeout => "upstream_error",
            RateLimited => "rate_limit_error",
            HttpError | InternalError | NodeKeyNotConfigured => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The header this answer carries: what the caller may do next.
    pub fn header(self) -> Option<HeaderName> {
        match self {
            Self::MethodNotAllowed => Some(header::ALLOW),
            Self::NonceStoreFull
            | Self::NonceStoreUnavailable
            | Self::RegistryUnavailable
            | Self::ChallengeBusy
            | Self::RateLimited => Some(header::RETRY_AFTER),
            _ => None,
        }
    }
}

impl ErrorCode {
    /// An authentication the caller failed, as a flood of forged or broken requests does (not one
    /// the node could not complete: a full or unavailable nonce store, a registry not loaded).
    /// These spend the caller address's `limits.authFailures` budget.
    pub fn is_failed_authentication(self) -> bool {
        use ErrorCode::*;
        self.kind() == "authentication_error"
            && !matches!(self, NonceStoreFull | NonceStoreUnavailable | RegistryUnavailable)
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error response the node sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// `code`'s status, or the status of a Pingora `HTTPStatus` error (`http_error`).
    pub status: u16,
    pub message: String,
    /// The header `code` calls for, with its value.
    pub header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let header = match code {
            // Nonces expire continuously, and the shared store reconnects at once: a second is
            // enough; most challenges end within one too.
            ErrorCode::NonceStoreFull | ErrorCode::NonceStoreUnavailable | ErrorCode::ChallengeBusy => {
                code.header().map(|name| (name, HeaderValue::from_static("1")))
            }
            // A registry that is not loaded is retried every few seconds (registry/refresh.rs).
            ErrorCode::RegistryUnavailable => code.header().map(|name| (name, HeaderValue::from_static("5"))),
            _ => None,
        };
        Self { code, status: code.status(), message: message.into(), header }
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let code = ErrorCode::MethodNotAllowed;
        Self {
            header: code.header().map(|name| (name, HeaderValue::from_static(allow))),
            ..Self::new(code, format!("this path accepts {allow} only"))
        }
    }

    pub(crate) fn json_body(&self, request_id: &RequestId) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.code.kind(),
                "code": self.code.as_str(),
                "request_id": request_id.as_str(),
            }
        });
        Bytes::from(body.to_string())
    }

    /// Writes the response; the caller returns `Ok(true)` from `request_filter` afterwards.
    pub(crate) async fn send(&self, session: &mut Session, request_id: &RequestId) -> pingora::Result<()> {
        let body = self.json_body(request_id);
        write_response(session, self.status, "application/json", self.header.as_ref(), request_id, body).await
    }

    /// What to tell the caller about a failure while reaching the backend; `None` when the
    /// caller's own connection is gone and nothing can be sent.
    pub fn from_proxy_error(error: &Error) -> Option<Self> {
        use ErrorType::*;
        if let HTTPStatus(status) = error.etype() {
            return Some(Self { status: *status, ..Self::new(ErrorCode::HttpError, "request failed") });
        }
        Some(match (error.esource(), error.etype()) {
            (
                _,
                ConnectTimedout | ConnectRefused | ConnectNoRoute | TLSWantX509Lookup | TLSHandshakeFailure
                | TLSHandshakeTimedout | InvalidCert | HandshakeError | ConnectError | BindError | SocketError
                | ConnectProxyFailure,
            ) => Self::new(
                ErrorCode::BackendUnavailable,
                format!("the model backend could not be reached ({})", error.etype().as_str()),
            ),
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, ReadTimedout) => {
                Self::new(ErrorCode::RequestTimeout, "the request body did not arrive in time")
            }
            (ErrorSource::Downstream, _) => Self::new(ErrorCode::BadRequest, "malformed HTTP request"),
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => {
                Self::new(ErrorCode::BackendTimeout, "the model backend did not answer within proxy.readTimeout")
            }
            (ErrorSource::Upstream, _) => Self::new(
                ErrorCode::BackendUnavailable,
                format!("the model backend failed ({})", error.etype().as_str()),
            ),
            _ => Self::new(ErrorCode::InternalError, "the node failed to handle the request"),
        })
    }
}

/// Why `request_filter` stopped a request.
#[derive(Debug)]
pub enum Rejected {
    /// The request is refused: answer with this error.
    Answer(ApiError),
    /// Reaching the backend or the caller failed. Pingora's error path takes it, as it does every
    /// failure of its own proxy loop: `fail_to_proxy` answers it with [`ApiError::from_proxy_error`]
    /// while nothing was sent, and closes the connection once something was.
    Failed(Box<Error>),
}

impl<E: Into<ApiError>> From<E> for Rejected {
    fn from(error: E) -> Self {
        Self::Answer(error.into())
    }
}

/// Writes a whole response that the node answers itself.
pub(super) async fn write_response(
    session: &mut Session,
    status: u16,
    content_type: &str,
    extra_header: Option<&(HeaderName, HeaderValue)>,
    request_id: &RequestId,
    body: Bytes,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header(header::CONTENT_TYPE, content_type)?;
    header.insert_header(header::CONTENT_LENGTH, body.len())?;
    header.insert_header(X_REQUEST_ID, request_id.header())?;
    if let Some((name, value)) = extra_header {
        header.insert_header(name.clone(), value.clone())?;
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let code = match error {
            AuthError::MissingHeader(_) => ErrorCode::MissingHeader,
            AuthError::BadEncoding { .. } => ErrorCode::BadSignatureEncoding,
            AuthError::StaleTimestamp { .. } => ErrorCode::StaleTimestamp,
            AuthError::SignerMismatch | AuthError::InvalidSignature => ErrorCode::InvalidSignature,
            AuthError::NotRegistered => ErrorCode::NotRegistered,
            AuthError::WrongRole(_) => ErrorCode::WrongRole,
            AuthError::NonceReused => ErrorCode::NonceReused,
            AuthError::NonceStoreFull => ErrorCode::NonceStoreFull,
            AuthError::NonceStoreUnavailable => ErrorCode::NonceStoreUnavailable,
            AuthError::RegistryUnavailable(_) => ErrorCode::RegistryUnavailable,
        };
        Self::new(code, error.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self {
            header: Some((header::RETRY_AFTER, HeaderValue::from(refusal.retry_after_secs()))),
            ..Self::new(ErrorCode::RateLimited, refusal.to_string())
        }
    }
}

impl From<ChallengeError> for ApiError {
    fn from(error: ChallengeError) -> Self {
        let code = match error {
            ChallengeError::Malformed(_) | ChallengeError::InvalidPayload { .. } => ErrorCode::InvalidChallenge,
            ChallengeError::UnknownType(_) => ErrorCode::UnknownChallengeType,
            ChallengeError::Busy(_) => ErrorCode::ChallengeBusy,
            ChallengeError::NodeKeyMissing => ErrorCode::NodeKeyNotConfigured,
            ChallengeError::Routing(routing) => return routing.into(),
            ChallengeError::Internal(_) => ErrorCode::InternalError,
        };
        Self::new(code, error.to_string())
    }
}

impl From<RoutingError> for ApiError {
    fn from(error: RoutingError) -> Self {
        let code = match error {
            RoutingError::UnknownModel { .. } => ErrorCode::ModelNotFound,
            RoutingError::Unresolvable { .. } => ErrorCode::BackendUnavailable,
            // Answered at once, with when to come back: not a backend that failed this request.
            RoutingError::AllDown { retry_after, .. } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                return Self {
                    status: 503,
                    header: Some((header::RETRY_AFTER, HeaderValue::from(seconds))),
                    ..Self::new(ErrorCode::BackendUnavailable, error.to_string())
                };
            }
        };
        Self::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn body_is_openai_shaped() {
        let error = ApiError::new(ErrorCode::InvalidJson, "body is not \"JSON\"");
        let request_id = RequestId::new();
        let parsed: serde_json::Value = serde_json::from_slice(&error.json_body(&request_id)).unwrap();
        assert_eq!(parsed["error"]["request_id"], request_id.as_str());
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

    #[test]
    fn auth_failures_keep_the_networks_statuses() {
        let cases = [
            (AuthError::MissingHeader("X-Nonce"), 401, "missing_header"),
            (AuthError::BadEncoding { header: "X-Signature", reason: "x".into() }, 400, "bad_signature_encoding"),
            (AuthError::SignerMismatch, 401, "invalid_signature"),
            (AuthError::NonceStoreFull, 503, "nonce_store_full"),
        ];
        for (error, status, code) in cases {
            let api_error = ApiError::from(error);
            assert_eq!((api_error.status, api_error.code.as_str()), (status, code));
        }
        let full = ApiError::from(AuthError::NonceStoreFull);
        assert_eq!(full.header, Some((header::RETRY_AFTER, HeaderValue::from_static("1"))));
    }

    #[test]
    fn readme_lists_every_error_code() {
        let readme = include_str!("../../README.md");
        for code in ErrorCode::iter() {
            let row = format!("| `{}` | {} |", code.as_str(), code.status());
            assert!(readme.contains(&row), "README.md has no error-table row starting {row:?}");
        }
    }
}
