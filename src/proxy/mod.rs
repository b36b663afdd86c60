//! The node's request path, one Pingora phase at a time: classify the path, read the body,
//! authenticate the signer, route by `model`, forward (through `upstream_peer`, or the connector relay for bodies beyond
//! Pingora's retry buffer), and log one line per request.

mod api_error;
mod body;
mod relay;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

pub use api_error::ApiError;
pub use body::model_of;

use crate::auth::{Authenticator, Role, Signer};
use crate::challenge;
use crate::config::Limits;
use crate::routing::{self, ModelRoute, Router};

/// What a path is, once its method is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    ModelList,
    ChatCompletions,
    Completions,
    Embeddings,
    Challenge,
}

impl Endpoint {
    pub fn classify(method: &http::Method, path: &str) -> Result<Self, ApiError> {
        let (endpoint, allowed) = match path {
            "/health" => (Self::Health, "GET"),
            "/v1/models" => (Self::ModelList, "GET"),
            "/v1/chat/completions" => (Self::ChatCompletions, "POST"),
            "/v1/completions" => (Self::Completions, "POST"),
            "/v1/embeddings" => (Self::Embeddings, "POST"),
            "/challenge" => (Self::Challenge, "POST"),
            _ => {
                return Err(ApiError::invalid_request(
                    404,
                    "unknown_path",
                    "no such path: this node serves POST /v1/chat/completions, /v1/completions, \
                     /v1/embeddings, /challenge and GET /v1/models",
                ))
            }
        };
        // HEAD is GET without a body, as every HTTP client expects.
        let accepted = method.as_str() == allowed || (allowed == "GET" && *method == http::Method::HEAD);
        if !accepted {
            return Err(ApiError::method_not_allowed(allowed));
        }
        Ok(endpoint)
    }

    pub fn path(self) -> &'static str {
        match self {
            Self::Health => "/health",
            Self::ModelList => "/v1/models",
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Challenge => "/challenge",
        }
    }
}

/// What one request learned in `request_filter`, read by the later phases.
pub struct RequestCtx {
    started: Instant,
    endpoint: Option<Endpoint>,
    route: Option<Arc<ModelRoute>>,
    /// The backend `request_filter` chose, handed to Pingora by `upstream_peer`.
    peer: Option<Box<HttpPeer>>,
    body_len: usize,
    signer: Option<Signer>,
}

/// How `request_filter` ended.
enum Handled {
    /// The node answered (or relayed) the request itself.
    Answered,
    /// Pingora forwards the request to `ctx.peer`.
    Forward,
}

/// Why `request_filter` stopped a request.
enum Rejected {
    Api(ApiError),
    /// The connection is past answering (the caller left, or the response had begun).
    Broken(Box<pingora::Error>),
}

impl<E: Into<ApiError>> From<E> for Rejected {
    fn from(error: E) -> Self {
        Self::Api(error.into())
    }
}

impl From<body::BodyError> for Rejected {
    fn from(error: body::BodyError) -> Self {
        match error {
            body::BodyError::Api(e) => Self::Api(e),
            body::BodyError::Read(e) => Self::Broken(e),
        }
    }
}

pub struct NodeProxy {
    auth: Arc<Authenticator>,
    router: Arc<Router>,
    limits: Limits,
    /// Backend connections for the relay path; pooled like Pingora's own.
    connector: Connector,
}

impl NodeProxy {
    pub fn new(auth: Arc<Authenticator>, router: Arc<Router>, limits: Limits, connector: Connector) -> Self {
        Self { auth, router, limits, connector }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Handled, Rejected> {
        let endpoint = Endpoint::classify(&session.req_header().method, session.req_header().uri.path())?;
        ctx.endpoint = Some(endpoint);
        match endpoint {
            Endpoint::Health => {
                respond(session, 200, "text/plain", Bytes::from_static(b"OK")).await?;
                Ok(Handled::Answered)
            }
            Endpoint::ModelList => {
                self.authenticate(session, ctx, Role::Gateway).await?;
                let list = Bytes::from(self.router.model_list().to_string());
                respond(session, 200, "application/json", list).await?;
                Ok(Handled::Answered)
            }
            Endpoint::Challenge => {
                let body = self.authenticate(session, ctx, Role::Scheduler).await?;
                let answer = Bytes::from(challenge::answer(&body)?.to_string());
                respond(session, 200, "application/json", answer).await?;
                Ok(Handled::Answered)
            }
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                let body = self.authenticate(session, ctx, Role::Gateway).await?;
                self.forward_inference(session, ctx, body).await
            }
        }
    }

    /// Reads the body and checks that a signer in `role` signed it; nothing else runs for a
    /// request that fails here.
    async fn authenticate(&self, session: &mut Session, ctx: &mut RequestCtx, role: Role) -> Result<Bytes, Rejected> {
        let body = body::read_whole(session, self.limits.max_body_bytes).await?;
        ctx.body_len = body.len();
        ctx.signer = Some(self.auth.verify(&session.req_header().headers, &body, role)?);
        Ok(body)
    }

    async fn forward_inference(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<Handled, Rejected> {
        let model = body::model_of(&body)?;
        log::debug!("request for model {model:?}");
        let route = self.router.select(&model)?;
        let peer = self.router.peer(&route).await?;
        ctx.route = Some(route.clone());
        if !session.as_downstream().retry_buffer_truncated() {
            ctx.peer = Some(Box::new(peer));
            return Ok(Handled::Forward);
        }
        let mut request = session.req_header().clone();
        routing::prepare_upstream_request(&route, body.len(), &mut request)?;
        // Boxed: the relay's state is kilobytes, and inline it would grow every request's
        // `request_filter` future, which is copied into a box on each call, though only
        // bodies beyond 64 KiB take this path.
        let relayed =
            Box::pin(relay::relay(&self.connector, session, &peer, request, body, self.router.idle_timeout())).await;
        match relayed {
            Ok(()) => Ok(Handled::Answered),
            Err(relay::RelayError::BeforeResponse(e)) => match ApiError::from_proxy_error(&e) {
                Some(api_error) => Err(Rejected::Api(api_error)),
                None => Err(Rejected::Broken(e)),
            },
            Err(relay::RelayError::AfterResponse(e)) => Err(Rejected::Broken(e)),
        }
    }
}

async fn respond(session: &mut Session, status: u16, content_type: &str, body: Bytes) -> Result<(), Rejected> {
    api_error::write_response(session, status, content_type, None, body).await.map_err(Rejected::Broken)
}

#[async_trait]
impl ProxyHttp for NodeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx { started: Instant::now(), endpoint: None, route: None, peer: None, body_len: 0, signer: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match self.handle(session, ctx).await {
            Ok(Handled::Forward) => Ok(false),
            Ok(Handled::Answered) => Ok(true),
            Err(Rejected::Api(error)) => {
                if error.status == 413 {
                    // The unread remainder of the body makes the connection unusable.
                    session.set_keepalive(None);
                }
                error.send(session).await?;
                Ok(true)
            }
            Err(Rejected::Broken(error)) => Err(error),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // A clone, not a take: Pingora asks again when it retries on a fresh connection.
        ctx.peer.clone().ok_or_else(|| Error::explain(InternalError, "no backend chosen for this request"))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let route =
            ctx.route.as_ref().ok_or_else(|| Error::explain(InternalError, "no backend chosen for this request"))?;
        routing::prepare_upstream_request(route, ctx.body_len, upstream_request)
            .map_err(|e| Error::because(InternalError, "rewriting the request for its backend", e))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A backend that refuses a fresh connection will refuse the next one too.
        e.set_retry(false);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // Requests on this path have their whole body in the retry buffer, so one that failed
        // on a pooled connection the backend had closed can be sent again, POST or not.
        let mut e = e.more_context(format!("Peer: {peer}"));
        e.retry.decide_reuse(client_reused);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut RequestCtx) -> FailToProxy {
        if let Some(written) = session.response_written() {
            // Part of the response is out: closing the connection is all that is left.
            return FailToProxy { error_code: written.status.as_u16(), can_reuse_downstream: false };
        }
        let Some(error) = ApiError::from_proxy_error(e) else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        if let Err(send_error) = error.send(session).await {
            log::debug!("could not send the error response: {send_error}");
        }
        FailToProxy { error_code: error.status, can_reuse_downstream: false }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `logging` writes the one line per request, errors included.
        true
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let level = if error.is_some() { log::Level::Warn } else { log::Level::Info };
        // This runs for every request: build the line only when it will be written.
        if !log::log_enabled!(level) {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let path = ctx.endpoint.map_or("(unknown path)", Endpoint::path);
        let (model, backend) =
            ctx.route.as_ref().map_or(("-", "-"), |route| (route.entry.as_str(), route.url.as_str()));
        let signer = ctx.signer.map_or_else(|| "-".to_string(), |s| format!("{}:{:?}", s.role, s.address));
        let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        let method = &session.req_header().method;
        let line = format!(
            "{method} {path} signer={signer} model={model} backend={backend} status={status} body_bytes={} duration_ms={elapsed_ms:.1}",
            ctx.body_len
        );
        match error {
            None => log::info!("{line}"),
            // Pingora's error text can quote the request; it stays at debug.
            Some(e) => {
                log::warn!("{line} error={}", e.etype().as_str());
                log::debug!("{line} error={e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods_are_classified() {
        let post = http::Method::POST;
        let get = http::Method::GET;
        assert_eq!(Endpoint::classify(&post, "/v1/embeddings").unwrap(), Endpoint::Embeddings);
        assert_eq!(Endpoint::classify(&get, "/v1/models").unwrap(), Endpoint::ModelList);
        assert_eq!(Endpoint::classify(&http::Method::HEAD, "/health").unwrap(), Endpoint::Health);
        let wrong = Endpoint::classify(&get, "/v1/chat/completions").unwrap_err();
        assert_eq!((wrong.status, wrong.header), (405, Some((http::header::ALLOW, "POST"))));
        assert_eq!(Endpoint::classify(&post, "/v2/chat").unwrap_err().status, 404);
    }
}
