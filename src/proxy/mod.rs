//! The node's request path, one Pingora phase at a time: classify the path, read the body,
//! authenticate the signer, route by `model`, forward (the exchange with the backend is
//! `upstream`'s, on both paths), and log one line per request.

mod api_error;
mod body;
mod connection;
mod limits;
mod model_field;
mod receipt;
mod request_id;
mod response_log;
mod upstream;
mod usage;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

pub(crate) use api_error::{ApiError, ErrorCode, Rejected};
pub use body::model_of;
pub(crate) use connection::CallerConnections;
pub use model_field::ModelField;
use receipt::{PendingReceipt, SignedRequest};
pub(crate) use request_id::RequestId;
use response_log::{RequestLine, ResponseLog};
pub use upstream::splice;
use upstream::Addendum;
pub(crate) use upstream::{Exchange, ResponseObserver};
pub use usage::Usage;

use crate::auth::{Authenticator, Role, Signer};
use crate::challenge::Challenges;
use crate::config::Limits;
use crate::limits::{AuthFailureLimiter, GatewayLimiter, GatewaySlot, Refusal};
use crate::metrics::{metrics, InFlight, RequestRecord};
use crate::receipt::ReceiptSigner;
use crate::routing::Routes;

/// What a path is, once its method is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
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
                return Err(ApiError::new(
                    api_error::ErrorCode::UnknownPath,
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

    /// The routes forwarded to a model's backend.
    fn is_inference(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions | Self::Embeddings)
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
pub(crate) struct RequestCtx {
    started: Instant,
    request_id: RequestId,
    endpoint: Option<Endpoint>,
    /// The body's `model`, as the caller named it.
    model: Option<String>,
    exchange: Option<Exchange<ResponseLog>>,
    body_len: usize,
    signer: Option<Signer>,
    /// What the answer's receipt repeats of the signature, with receipts on, until the
    /// exchange takes it.
    signed: Option<SignedRequest>,
    /// The challenge type `/challenge` was asked, once known.
    challenge: Option<&'static str>,
    /// The caller's address (none on a Unix socket), whose failed authentications are counted.
    peer: Option<IpAddr>,
    /// The gateway's in-flight slot (`limits.perGateway.maxInFlight`), freed with the context
    /// whichever way the request ends.
    _gateway_slot: Option<GatewaySlot>,
    _in_flight: InFlight,
}

/// How `request_filter` ended.
enum Handled {
    /// The node answered (or relayed) the request itself.
    Answered,
    /// Pingora forwards the request to `ctx.exchange`'s peer.
    Forward,
}

pub(crate) struct NodeProxy {
    auth: Arc<Authenticator>,
    routes: Arc<Routes>,
    challenges: Arc<Challenges>,
    limits: Limits,
    gateway_limits: Arc<GatewayLimiter>,
    /// `limits.authFailures`, when on.
    auth_failures: Option<AuthFailureLimiter>,
    /// Backend connections for the relay path and the PROXY challenge; pooled like Pingora's own.
    connector: Arc<Connector>,
    forwarding: Forwarding,
}

/// How inference requests are forwarded and answered.
pub(crate) struct Forwarding {
    /// `proxy.maxAttempts`, on both forwarding paths.
    pub max_attempts: usize,
    /// `usage.requestStreamUsage`.
    pub request_stream_usage: bool,
    /// With `receipts.enabled`, what signs each answer's receipt.
    pub receipts: Option<Arc<ReceiptSigner>>,
}

impl NodeProxy {
    pub fn new(
        auth: Arc<Authenticator>,
        routes: Arc<Routes>,
        challenges: Arc<Challenges>,
        limits: Limits,
        connector: Arc<Connector>,
        forwarding: Forwarding,
    ) -> Self {
        let gateway_limits = Arc::new(GatewayLimiter::new(&limits.per_gateway));
        let auth_failures = AuthFailureLimiter::new(&limits.auth_failures);
        Self { auth, routes, challenges, limits, gateway_limits, auth_failures, connector, forwarding }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Handled, Rejected> {
        let head_bytes = session.as_downstream().to_h1_raw().len();
        limits::check_head(session.req_header(), head_bytes, &self.limits)?;
        let endpoint = Endpoint::classify(&session.req_header().method, session.req_header().uri.path())?;
        ctx.endpoint = Some(endpoint);
        match endpoint {
            Endpoint::Health => {
                respond(session, ctx, 200, "text/plain", Bytes::from_static(b"OK")).await?;
                Ok(Handled::Answered)
            }
            Endpoint::ModelList => {
                self.authenticate(session, ctx, Role::Gateway).await?;
                let list = Bytes::from(self.routes.current().model_list().to_string());
                respond(session, ctx, 200, "application/json", list).await?;
                Ok(Handled::Answered)
            }
            Endpoint::Challenge => {
                let body = self.authenticate(session, ctx, Role::Scheduler).await?;
                let (challenge, answer) = self.challenges.answer(body).await;
                ctx.challenge = challenge;
                let answer = Bytes::from(answer?.json.to_string());
                respond(session, ctx, 200, "application/json", answer).await?;
                Ok(Handled::Answered)
            }
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                let body = self.authenticate(session, ctx, Role::Gateway).await?;
                self.forward_inference(session, ctx, endpoint, body).await
            }
        }
    }

    /// Reads the body and checks that a signer in `role` signed it, and that a gateway is within
    /// its limits; nothing else runs for a request that fails here. An address over its budget of
    /// failed authentications is refused first, before its body is read or its signature checked.
    async fn authenticate(&self, session: &mut Session, ctx: &mut RequestCtx, role: Role) -> Result<Bytes, Rejected> {
        if let (Some(budget), Some(peer)) = (&self.auth_failures, ctx.peer) {
            budget.check(peer).map_err(refused)?;
        }
        let body = body::read_whole(session, &self.limits).await?;
        ctx.body_len = body.len();
        let checked = self.auth.check(&session.req_header().headers, &body, role)?;
        // Between the signature and the nonce: only a registered gateway's own requests spend
        // its budget, and a refused request's nonce stays unused, for its retry. The scheduler's
        // challenges have `challenge.maxConcurrent` instead.
        if role == Role::Gateway {
            ctx._gateway_slot = self.gateway_limits.admit(checked.signer().address).map_err(refused)?;
        }
        let verified = self.auth.record_nonce(checked).await?;
        ctx.signer = Some(verified.signer);
        if self.forwarding.receipts.is_some() && ctx.endpoint.is_some_and(Endpoint::is_inference) {
            ctx.signed = Some(SignedRequest::of(&verified));
        }
        Ok(body)
    }

    async fn forward_inference(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: Endpoint,
        body: Bytes,
    ) -> Result<Handled, Rejected> {
        let model = body::model_of(&body)?;
        let router = self.routes.current();
        let route = router.select(&model.name);
        // Logged whether or not it is served.
        ctx.model = Some(model.name.to_string());
        let route = route?;
        let forwarding = &self.forwarding;
        let observer = match (&forwarding.receipts, ctx.signed.take()) {
            (Some(signer), Some(signed)) => ResponseLog::with_receipt(PendingReceipt::new(
                signer.clone(),
                signed,
                (&model.name, &route.entry),
                model.streams,
            )),
            _ => ResponseLog::default(),
        };
        // The receipt of an answer that is not streamed goes in its header, which must then wait
        // for the body's hash: only the relay can hold it, as Pingora's proxy loop sends the
        // header on as it arrives (and trailers, which could follow the body, go unread by most
        // HTTP/1.1 clients). A stream's receipt follows its last event, on either path.
        let held_for_receipt = forwarding.receipts.is_some() && !model.streams;
        let exchange = ctx.exchange.insert(
            Exchange::begin(
                router,
                route,
                session.req_header(),
                (&body, &model, forwarding.request_stream_usage && endpoint != Endpoint::Embeddings),
                (ctx.request_id.clone(), forwarding.max_attempts),
                observer,
            )
            .await?,
        );
        if !session.as_downstream().retry_buffer_truncated() && !held_for_receipt {
            return Ok(Handled::Forward);
        }
        // Boxed: the relay's state is kilobytes, and inline it would grow every request's
        // `request_filter` future, which is copied into a box on each call, though only
        // bodies beyond 64 KiB (and, with receipts, answers not streamed) take this path.
        Box::pin(exchange.relay(&self.connector, session)).await?;
        Ok(Handled::Answered)
    }
}

impl NodeProxy {
    /// The `model` label of a request: the name asked for when model_backend.yaml lists it,
    /// `other` for any other name (served by `default`, or not at all), `none` before a body
    /// was read.
    fn metric_model<'a>(&self, ctx: &'a RequestCtx) -> &'a str {
        match ctx.model.as_deref() {
            Some(model) if self.routes.current().lists(model) => model,
            Some(_) => "other",
            None => "none",
        }
    }
}

/// A request refused by a limit, counted by its reason.
fn refused(refusal: Refusal) -> Rejected {
    metrics().rate_limited(refusal.reason());
    Rejected::Answer(refusal.into())
}

async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> Result<(), Rejected> {
    api_error::write_response(session, status, content_type, None, &ctx.request_id, body)
        .await
        .map_err(Rejected::Failed)
}

/// Writes the request's line with its fields apart too, for the JSON log format; the target is
/// this module's, as `RUST_LOG` names it.
fn write_request_line(level: log::Level, request: &RequestLine<'_>) {
    log::logger().log(
        &log::Record::builder()
            .args(format_args!("{request}"))
            .level(level)
            .target(module_path!())
            .module_path_static(Some(module_path!()))
            .file_static(Some(file!()))
            .line(Some(line!()))
            .key_values(request)
            .build(),
    );
}

#[async_trait]
impl ProxyHttp for NodeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: RequestId::unset(),
            endpoint: None,
            model: None,
            exchange: None,
            body_len: 0,
            signer: None,
            signed: None,
            challenge: None,
            peer: None,
            _gateway_slot: None,
            _in_flight: metrics().request_started(),
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        connection::request_began(session, &self.limits);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = RequestId::of(session.req_header());
        ctx.peer = session.client_addr().and_then(|addr| addr.as_inet()).map(|addr| addr.ip());
        match self.handle(session, ctx).await {
            Ok(Handled::Forward) => Ok(false),
            Ok(Handled::Answered) => Ok(true),
            Err(Rejected::Answer(error)) => {
                if error.code.kind() == "authentication_error" {
                    metrics().auth_failed(error.code.as_str());
                }
                if let (true, Some(budget), Some(peer)) =
                    (error.code.is_failed_authentication(), &self.auth_failures, ctx.peer)
                {
                    budget.failed(peer, error.code.as_str());
                }
                if error.status == 413 {
                    // The unread remainder of the body makes the connection unusable.
                    session.set_keepalive(None);
                }
                error.send(session, &ctx.request_id).await?;
                Ok(true)
            }
            Err(Rejected::Failed(error)) => Err(error),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        exchange_of(ctx)?.next_peer().await
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        exchange_of(ctx)?.rewrite_request(upstream_request)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora replays the body read in `request_filter` here, whole, from its retry buffer
        // (once per attempt); the backend gets the exchange's body instead, which carries the
        // alias and may have grown past that buffer.
        if let (Some(replayed), Some(exchange)) = (body.as_mut(), ctx.exchange.as_ref()) {
            *replayed = exchange.body();
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        exchange_of(ctx)?.response_header(upstream_response)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let Some(exchange) = ctx.exchange.as_mut() else { return Ok(None) };
        if let Some(chunk) = body.as_ref() {
            exchange.response_body(chunk);
        }
        if !end_of_stream {
            return Ok(None);
        }
        // A stream's receipt is signed once its last byte has been seen, and follows it. Pingora
        // writes what it read at once only after filtering all of it, so what a backend sent
        // together with the stream's end (its `[DONE]`, at most) waits for the one signature;
        // no earlier event does.
        if let Some(Addendum::Trailing(comment)) = exchange.observer.on_end() {
            *body = Some(match body.take() {
                Some(last) if !last.is_empty() => [last, comment].concat().into(),
                _ => comment,
            });
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(exchange) = ctx.exchange.as_mut() {
            exchange.attempt_failed(&mut e, false, false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(exchange) = ctx.exchange.as_mut() {
            exchange.attempt_failed(&mut e, client_reused, session.response_written().is_some());
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        if let Some(status) = session.response_written().map(|written| written.status.as_u16()) {
            // Part of the response is out: a stream gets an error event, then the connection closes.
            upstream::end_stream_with_error(session, e, &ctx.request_id).await;
            return FailToProxy { error_code: status, can_reuse_downstream: false };
        }
        let Some(error) = ApiError::from_proxy_error(e) else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        if let Err(send_error) = error.send(session, &ctx.request_id).await {
            log::debug!("could not send the error response: {send_error}");
        }
        // Pingora closes the caller's connection after its own proxy loop failed, whatever this
        // says; the relay's failures close it too, so both paths end alike.
        FailToProxy { error_code: error.status, can_reuse_downstream: false }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `logging` writes the one line per request, errors included.
        true
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        connection::request_ended(session);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(exchange) = ctx.exchange.as_mut() {
            exchange.observer.end_stream();
        }
        metrics().request_finished(&RequestRecord {
            route: ctx.endpoint.map_or("unknown", Endpoint::path),
            model: self.metric_model(ctx),
            status,
            signer: ctx.signer,
            duration: ctx.started.elapsed(),
            body_bytes: ctx.body_len,
            upstream: ctx.exchange.as_ref().map(|exchange| exchange.observer.upstream_record(&exchange.route.entry)),
        });
        let level = if error.is_some() { log::Level::Warn } else { log::Level::Info };
        // This runs for every request: build the line only when it will be written.
        if !log::log_enabled!(level) {
            return;
        }
        let signer = ctx.signer.map(|s| format!("{}:{:?}", s.role, s.address));
        let mut line = RequestLine {
            request_id: ctx.request_id.as_str(),
            method: session.req_header().method.as_str(),
            path: ctx.endpoint.map_or("(unknown path)", Endpoint::path),
            signer: signer.as_deref(),
            model: ctx.model.as_deref(),
            exchange: ctx.exchange.as_ref(),
            status,
            body_bytes: ctx.body_len,
            challenge: ctx.challenge,
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            error: None,
        };
        match error {
            None => write_request_line(level, &line),
            // Pingora's error text can quote the request; it stays at debug.
            Some(e) => {
                let kind = e.etype().as_str();
                line.error = Some(&kind);
                write_request_line(level, &line);
                line.error = Some(e);
                write_request_line(log::Level::Debug, &line);
            }
        }
    }
}

/// The exchange `request_filter` began; Pingora's forwarding phases run only after one did.
fn exchange_of(ctx: &mut RequestCtx) -> Result<&mut Exchange<ResponseLog>> {
    ctx.exchange.as_mut().ok_or_else(|| Error::explain(InternalError, "no backend chosen for this request"))
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
        assert_eq!(
            (wrong.status, wrong.header),
            (405, Some((http::header::ALLOW, http::HeaderValue::from_static("POST"))))
        );
        assert_eq!(Endpoint::classify(&post, "/v2/chat").unwrap_err().status, 404);
    }
}
