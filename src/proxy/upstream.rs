//! The exchange with a model backend, one home for both forwarding paths: the request rewrite
//! (the body's `model` replaced by the backend's alias, the headers never forwarded, the request id
//! set), the backend and peer of each attempt, the one retry and failover rule, what each attempt
//! tells of its backend's health, and the [`ResponseObserver`] that sees every response. Bodies
//! within Pingora's 64 KiB retry buffer are
//! sent by Pingora's proxy loop (`upstream_peer` and the filters in `proxy/mod.rs` call in here);
//! larger ones by [`Exchange::relay`], since Pingora 0.9 replays a body read in `request_filter`
//! only from that buffer. The two differ only in how the body is sent.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::Uri;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use super::api_error::{ApiError, Rejected};
use super::model_field::ModelField;
use super::request_id::{RequestId, X_REQUEST_ID};
use crate::auth::SigningHeader;
use crate::metrics::metrics;
use crate::receipt::{SignedReceipt, RECEIPT_HEADER, SIGNATURE_HEADER};
use crate::routing::{BackendRoute, InFlight, ModelRoute, Router, RoutingError, Tried};

/// Headers that belong to the caller's connection or credentials, never to the backend (the
/// signing headers are matched apart, by [`SigningHeader::named`]).
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    // The backend's credentials come from model_backend.yaml only.
    "authorization",
    "x-api-key",
    // Hop-by-hop (RFC 9110 §7.6.1).
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    // The body is forwarded whole, framed by Content-Length, and the node answered any
    // `Expect: 100-continue` itself before reading it.
    "transfer-encoding",
    "expect",
];

/// What `usage.requestStreamUsage` adds to a streamed request's top level.
const STREAM_USAGE_OPTION: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// Sees every backend response, on both forwarding paths, as it passes to the caller.
pub(crate) trait ResponseObserver {
    /// The backend's response header arrived, `ttfb` after the node began the exchange.
    fn on_response(&mut self, response: &ResponseHeader, ttfb: Duration);
    /// A piece of the response body is relayed to the caller.
    fn on_body(&mut self, chunk: &[u8]);
    /// Whether the caller's response header waits for the end of the body, for
    /// [`Addendum::Headers`]; asked after [`Self::on_response`] on the relay path, the one that
    /// can hold it.
    fn holds_header(&self) -> bool {
        false
    }
    /// The body ended whole: what goes with it.
    fn on_end(&mut self) -> Option<Addendum> {
        None
    }
}

/// What the node adds to a response once its body has ended whole (`receipts.enabled`).
pub(crate) enum Addendum {
    /// The receipt's headers, in a response header held until now.
    Headers(SignedReceipt),
    /// Bytes after the body's last (a stream's receipt comment).
    Trailing(Bytes),
}

/// The most bytes of an answer held for its receipt's headers: a chat or completion answer is
/// a few KiB and an embedding's tens; a larger answer is relayed as it comes, without a receipt.
const HELD_ANSWER_LIMIT: usize = 8 * 1024 * 1024;

/// Whether `response` is a Server-Sent Events stream.
pub(crate) fn is_event_stream(response: &ResponseHeader) -> bool {
    let content_type = response.headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    content_type.is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"))
}

/// One request's exchange with the backends of its route.
pub(crate) struct Exchange<O> {
    /// The route table the request began with, kept for every attempt of it.
    router: Arc<Router>,
    pub(crate) route: Arc<ModelRoute>,
    attempt: Attempt,
    /// The backends attempts failed on, not to be tried again.
    tried: Tried,
    attempts: usize,
    max_attempts: usize,
    /// What the next attempt does; set when one fails.
    next: NextAttempt,
    /// `prefix_affinity`'s key: the caller's session id, or the first bytes of the conversation.
    affinity_key: Option<Vec<u8>>,
    /// The body the backend gets: the caller's, with the route's alias in place of its `model`.
    body: Bytes,
    /// Sent to the backend and returned to the caller on the backend's response.
    request_id: RequestId,
    began: Instant,
    /// The first bytes of a `500` answer, judged at the end: a prompt too long is no fault of
    /// the backend's.
    error_body: Option<Vec<u8>>,
    pub(crate) observer: O,
}

/// The backend an attempt goes to, counted in flight while the attempt lasts.
struct Attempt {
    index: usize,
    peer: Box<HttpPeer>,
    _in_flight: InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextAttempt {
    /// The first, to the backend chosen at the start.
    First,
    /// The same backend again: a pooled connection it had closed failed.
    SameBackend,
    /// Another backend of the route.
    OtherBackend,
}

/// The most bytes of a `500` answer kept to judge it.
const ERROR_BODY_KEPT: usize = 1024;

/// How backends say a prompt exceeds the model's context, which is the caller's fault.
const PROMPT_TOO_LONG: &[&str] =
    &["too long", "context length", "maximum context", "context window", "too many tokens"];

impl<O: ResponseObserver> Exchange<O> {
    /// Chooses the backend of `route` for the first attempt, checks that `request` can be sent to
    /// it, and makes the body for it from the caller's `body`, whose top-level `model` is
    /// `model`; with `ask_for_usage`, a streamed request that sets no `stream_options` asks for a
    /// usage chunk. At most `max_attempts` attempts are made.
    pub(crate) async fn begin(
        router: Arc<Router>,
        route: Arc<ModelRoute>,
        request: &RequestHeader,
        (body, model, ask_for_usage): (&Bytes, &ModelField<'_>, bool),
        (request_id, max_attempts): (RequestId, usize),
        observer: O,
    ) -> Result<Self, Rejected> {
        let began = Instant::now();
        let affinity_key = route.prefix_bytes.map(|prefix_bytes| affinity_key(request, body, prefix_bytes));
        let index = route.choose(affinity_key.as_deref(), Tried::default())?;
        let attempt = Attempt::to(&router, &route, index).await?;
        let usage_edit = (ask_for_usage && model.streams && !model.has_stream_options).then(|| {
            // Only whitespace comes before the opening `{`, and `model` follows it: the comma is sound.
            let opening = body.iter().position(|&byte| byte == b'{').map_or(0, |at| at + 1);
            (opening..opening, STREAM_USAGE_OPTION)
        });
        let alias_edit = route.alias_json.as_deref().map(|alias| (model.span.clone(), alias));
        let body = match (usage_edit, alias_edit) {
            (None, None) => body.clone(),
            (Some(edit), None) | (None, Some(edit)) => splice(body, &[edit]),
            (Some(usage), Some(alias)) => splice(body, &[usage, alias]),
        };
        Ok(Self {
            router,
            route,
            attempt,
            tried: Tried::default(),
            attempts: 0,
            max_attempts,
            next: NextAttempt::First,
            affinity_key,
            body,
            request_id,
            began,
            error_body: None,
            observer,
        })
    }

    /// The body for the backend, on either path.
    pub(crate) fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// The peer for the next attempt; Pingora asks again for each retry, which goes to the
    /// backend the failure before chose.
    pub(crate) async fn next_peer(&mut self) -> pingora::Result<Box<HttpPeer>> {
        match self.next {
            NextAttempt::First | NextAttempt::SameBackend => {}
            NextAttempt::OtherBackend => {
                let index = self
                    .route
                    .choose(self.affinity_key.as_deref(), self.tried)
                    .map_err(|e| Error::explain(ErrorType::ConnectError, e.to_string()))?;
                self.attempt = Attempt::to(&self.router, &self.route, index)
                    .await
                    .map_err(|e| Error::explain(ErrorType::ConnectError, e.to_string()))?;
            }
        }
        self.attempts += 1;
        Ok(self.attempt.peer.clone())
    }

    /// An attempt failed before any of its response reached the caller (`response_started`
    /// false) or after: records it against the backend when it is the backend's failure, and
    /// marks `error` retryable when the next attempt may go (see [`Self::next_peer`]).
    ///
    /// The retry rule of both paths: a failure on a pooled connection that the backend had
    /// closed while idle is sent again to the same backend (which cannot have run it); a
    /// connect failure, a failure before the response header, or a `502`/`503` goes to
    /// another backend of the route when it has one that is up; nothing is retried once a
    /// response byte reached the caller, nor beyond `proxy.maxAttempts` attempts. A failure on
    /// a fresh connection is never sent to the same backend again: it may have received the
    /// request, and one inference must not run twice on it.
    pub(crate) fn attempt_failed(&mut self, error: &mut Error, reused: bool, response_started: bool) {
        // A `502`/`503` of [`Self::response_header`]: the backend answered, on whatever connection.
        let answered = matches!(error.etype(), ErrorType::HTTPStatus(_));
        error.retry.decide_reuse(reused);
        let stale_pooled = reused && !answered && error.retry();
        let caller_gone = error.esource() == &ErrorSource::Downstream;
        if !stale_pooled && !caller_gone {
            self.backend_failed();
        }
        self.tried = self.tried.with(self.attempt.index);
        let next = if response_started || caller_gone || self.attempts >= self.max_attempts {
            None
        } else if stale_pooled {
            Some(NextAttempt::SameBackend)
        } else if self.route.has_another(self.tried) {
            Some(NextAttempt::OtherBackend)
        } else {
            None
        };
        error.set_retry(next.is_some());
        if let Some(next) = next {
            if next == NextAttempt::OtherBackend {
                metrics().failed_over(&self.route.entry);
            }
            self.next = next;
        }
    }

    /// Rewrites the caller's request for the current attempt's backend: the target under the
    /// backend's base path, `Host` set to the backend, the caller's signing, credential and
    /// hop-by-hop headers dropped, the backend's credential added, the body framed by its length
    /// and `X-Request-Id` set to the request's id (replacing a caller's id the node did not accept).
    pub(crate) fn rewrite_request(&self, request: &mut RequestHeader) -> pingora::Result<()> {
        let backend = self.backend();
        // Most backends sit at the root and most callers send a bare path: then the target stays
        // as it is. An absolute-form target (`http://node/v1/…`) is cut to its path for the backend.
        if !backend.base_path.is_empty() || request.uri.authority().is_some() {
            let path_and_query = request.uri.path_and_query().map_or("/", |p| p.as_str());
            let uri = format!("{}{}", backend.base_path, path_and_query).parse::<Uri>().map_err(|e| {
                Error::explain(ErrorType::InvalidHTTPHeader, format!("cannot build the backend request path: {e}"))
            })?;
            request.set_uri(uri);
        }
        // One pass over the caller's few headers finds what to drop; removing every listed name
        // instead would hash and look up each of them on every request.
        let named_by_connection: Vec<&str> = request
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let stripped: Vec<HeaderName> = request
            .headers
            .keys()
            .filter(|name| {
                STRIPPED_REQUEST_HEADERS.contains(&name.as_str())
                    || SigningHeader::named(name).is_some()
                    || named_by_connection.iter().any(|named| named.eq_ignore_ascii_case(name.as_str()))
            })
            .cloned()
            .collect();
        for name in stripped {
            request.remove_header(&name);
        }
        request.insert_header(header::HOST, backend.host_header.clone())?;
        request.insert_header(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()))?;
        request.insert_header(X_REQUEST_ID, self.request_id.header())?;
        if let Some((name, value)) = &backend.credential {
            request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// The backend's response header arrived. A `502` or `503` with attempts and another backend
    /// left is an error to retry (nothing has reached the caller yet), which both paths hand to
    /// [`Self::attempt_failed`]; any other answer goes to the caller with the request's id.
    pub(crate) fn response_header(&mut self, response: &mut ResponseHeader) -> pingora::Result<()> {
        let status = response.status.as_u16();
        let can_fail_over =
            self.attempts < self.max_attempts && self.route.has_another(self.tried.with(self.attempt.index));
        match status {
            502 | 503 if can_fail_over => {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "the backend answered that it is unavailable",
                ))
            }
            500 => self.error_body = Some(Vec::new()),
            501.. => self.backend_failed(),
            _ => self.backend().state.succeeded(),
        }
        self.observer.on_response(response, self.began.elapsed());
        response.insert_header(X_REQUEST_ID, self.request_id.header())
    }

    pub(crate) fn response_body(&mut self, chunk: &[u8]) {
        if let Some(kept) = &mut self.error_body {
            kept.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_KEPT - kept.len().min(ERROR_BODY_KEPT))]);
        }
        self.observer.on_body(chunk);
    }

    /// Sends the request over connections of the node's own, and relays the response to the
    /// caller as it comes (or, when the observer holds the header, once the body has ended).
    pub(crate) async fn relay(&mut self, connector: &Connector, session: &mut Session) -> Result<(), Rejected> {
        let request = session.req_header().clone();
        let (mut upstream, mut response) = self.open(connector, request).await.map_err(Rejected::Failed)?;
        let holds_header = self.observer.holds_header();
        // Dropping `upstream` on any error closes the backend connection, which cancels the
        // backend's work when the caller has gone.
        // A failure here reaches `fail_to_proxy`, which ends a stream with its error event.
        let (held, mut ended) =
            if holds_header { self.hold(&mut upstream).await.map_err(Rejected::Failed)? } else { (Vec::new(), false) };
        let addendum = if ended { self.observer.on_end() } else { None };
        if let Some(Addendum::Headers(receipt)) = addendum {
            let [encoded, signature] = receipt.header_values();
            response.insert_header(RECEIPT_HEADER, encoded).map_err(Rejected::Failed)?;
            response.insert_header(SIGNATURE_HEADER, signature).map_err(Rejected::Failed)?;
        }
        session.write_response_header(Box::new(response), false).await.map_err(Rejected::Failed)?;
        for chunk in held {
            session.write_response_body(Some(chunk), false).await.map_err(Rejected::Failed)?;
        }
        while !ended {
            match self.next_body(&mut upstream).await.map_err(Rejected::Failed)? {
                Some(chunk) => session.write_response_body(Some(chunk), false).await.map_err(Rejected::Failed)?,
                None => ended = true,
            }
        }
        // A held header that outgrew the hold went out without its receipt.
        if !holds_header {
            if let Some(Addendum::Trailing(bytes)) = self.observer.on_end() {
                session.write_response_body(Some(bytes), false).await.map_err(Rejected::Failed)?;
            }
        }
        session.write_response_body(None, true).await.map_err(Rejected::Failed)?;
        self.release(connector, upstream).await;
        Ok(())
    }

    /// Reads the body of [`Self::open`]'s connection to its end, or past [`HELD_ANSWER_LIMIT`]:
    /// its pieces, and whether it ended.
    async fn hold(&mut self, upstream: &mut HttpSession) -> pingora::Result<(Vec<Bytes>, bool)> {
        let mut held = Vec::new();
        let mut len = 0;
        while len <= HELD_ANSWER_LIMIT {
            match self.next_body(upstream).await? {
                Some(chunk) => {
                    len += chunk.len();
                    held.push(chunk);
                }
                None => return Ok((held, true)),
            }
        }
        Ok((held, false))
    }

    /// Sends `request`, rewritten for the backend, over a connection of the node's own and
    /// reads the response header, which the observer has seen when this returns.
    pub(crate) async fn open(
        &mut self,
        connector: &Connector,
        request: RequestHeader,
    ) -> pingora::Result<(HttpSession, ResponseHeader)> {
        loop {
            let peer = self.next_peer().await?;
            let mut rewritten = request.clone();
            self.rewrite_request(&mut rewritten)?;
            let (mut upstream, reused) = match connector.get_http_session(&*peer).await {
                Ok(session) => session,
                Err(mut error) => {
                    error.as_up();
                    self.attempt_failed(&mut error, false, false);
                    if error.retry() {
                        continue;
                    }
                    return Err(error);
                }
            };
            // Pingora's own path applies these per request; a session from the connector does not.
            upstream.set_read_timeout(peer.options.read_timeout);
            upstream.set_write_timeout(peer.options.write_timeout);
            let sent = async {
                upstream.write_request_header(Box::new(rewritten)).await?;
                upstream.write_request_body(self.body.clone(), true).await?;
                upstream.finish_request_body().await?;
                upstream.read_response_header().await
            }
            .await;
            if let Err(mut error) = sent {
                error.as_up();
                self.attempt_failed(&mut error, reused, false);
                if error.retry() {
                    continue;
                }
                return Err(error);
            }
            let mut response = upstream.response_header().cloned().ok_or_else(|| {
                Error::explain(ErrorType::InvalidHTTPHeader, "backend sent no response header").into_up()
            })?;
            if let Err(mut error) = self.response_header(&mut response) {
                self.attempt_failed(&mut error, reused, false);
                if error.retry() {
                    continue;
                }
                return Err(error);
            }
            return Ok((upstream, response));
        }
    }

    /// The next piece of the response body of [`Self::open`]'s connection, which the observer
    /// has seen; `None` at its end.
    pub(crate) async fn next_body(&mut self, upstream: &mut HttpSession) -> pingora::Result<Option<Bytes>> {
        let chunk = match upstream.read_response_body().await {
            Ok(chunk) => chunk,
            Err(mut error) => {
                error.as_up();
                self.attempt_failed(&mut error, false, true);
                return Err(error);
            }
        };
        if let Some(chunk) = &chunk {
            self.response_body(chunk);
        }
        Ok(chunk)
    }

    /// Pools [`Self::open`]'s connection again once its response was read to the end.
    pub(crate) async fn release(&self, connector: &Connector, mut upstream: HttpSession) {
        if upstream.response_done() {
            let peer = &*self.attempt.peer;
            connector.release_http_session(upstream, peer, peer.options.idle_timeout).await;
        }
    }
}

impl<O> Exchange<O> {
    /// The backend the current attempt goes to.
    pub(crate) fn backend(&self) -> &BackendRoute {
        &self.route.backends[self.attempt.index]
    }

    /// Counts a failure against the current attempt's backend.
    fn backend_failed(&self) {
        let backend = self.backend();
        let ejected = backend.state.failed(&self.route.outlier);
        metrics().backend_failed(&self.route.entry, &backend.url, ejected);
        if ejected {
            log::warn!(
                "backend {} of model entry `{}` is taken out for {:?} after {} failures in a row",
                backend.url,
                self.route.entry,
                self.route.outlier.cooldown,
                self.route.outlier.consecutive_failures
            );
        }
    }
}

impl<O> Drop for Exchange<O> {
    /// A `500` is the backend's failure unless it said the prompt was too long.
    fn drop(&mut self) {
        let Some(kept) = self.error_body.take() else { return };
        let text = String::from_utf8_lossy(&kept).to_ascii_lowercase();
        if PROMPT_TOO_LONG.iter().any(|phrase| text.contains(phrase)) {
            self.backend().state.succeeded();
        } else {
            self.backend_failed();
        }
    }
}

impl Attempt {
    async fn to(router: &Router, route: &ModelRoute, index: usize) -> Result<Self, RoutingError> {
        let backend = &route.backends[index];
        // Counted from the choice on, so that requests choosing at once see each other.
        let in_flight = InFlight::new(backend.state.clone());
        let peer = Box::new(router.peer(route, backend).await?);
        Ok(Self { index, peer, _in_flight: in_flight })
    }
}

/// `prefix_affinity`'s key for a request: its `X-Session-Id`, else the first `prefix_bytes` of
/// its `messages` (or `prompt`) as sent, where a prefix cache begins.
fn affinity_key(request: &RequestHeader, body: &[u8], prefix_bytes: usize) -> Vec<u8> {
    if let Some(session) = request.headers.get(X_SESSION_ID) {
        return session.as_bytes().to_vec();
    }
    #[derive(serde::Deserialize)]
    struct Conversation<'a> {
        #[serde(borrow)]
        messages: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        prompt: Option<&'a serde_json::value::RawValue>,
    }
    let text = match serde_json::from_slice::<Conversation>(body) {
        Ok(Conversation { messages: Some(text), .. } | Conversation { prompt: Some(text), .. }) => {
            text.get().as_bytes()
        }
        // Nothing to place it by: the whole body, which spreads such requests.
        _ => body,
    };
    text[..text.len().min(prefix_bytes)].to_vec()
}

/// The caller's conversation id for `prefix_affinity`.
const X_SESSION_ID: &str = "x-session-id";

/// Sends a stream that failed after its response header an SSE error event, so that the caller
/// reads why it ends; the connection is then closed mid-body, so that no client takes the stream
/// for complete. Other bodies are only cut.
pub(crate) async fn end_stream_with_error(session: &mut Session, error: &Error, request_id: &RequestId) {
    let streaming = session.response_written().is_some_and(is_event_stream);
    let Some(api_error) = ApiError::from_proxy_error(error).filter(|_| streaming) else { return };
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&api_error.json_body(request_id));
    event.extend_from_slice(b"\n\n");
    if let Err(write_error) = session.write_response_body(Some(Bytes::from(event)), false).await {
        log::debug!("could not end the stream with an error event: {write_error}");
    }
}

/// `body` with the bytes at each span replaced by the bytes beside it (an empty span inserts
/// them): one copy, every other byte as it was. The spans are in order and do not overlap (the
/// top-level `model`'s value, see `proxy::model_of`, and the place after the body's opening `{`).
pub fn splice(body: &[u8], edits: &[(Range<usize>, &[u8])]) -> Bytes {
    let len = edits.iter().fold(body.len(), |len, (span, bytes)| len - span.len() + bytes.len());
    let mut spliced = Vec::with_capacity(len);
    let mut copied = 0;
    for (span, bytes) in edits {
        spliced.extend_from_slice(&body[copied..span.start]);
        spliced.extend_from_slice(bytes);
        copied = span.end;
    }
    spliced.extend_from_slice(&body[copied..]);
    Bytes::from(spliced)
}

/// Counts Server-Sent Events as their bytes pass, across chunk boundaries. An event ends at a
/// blank line (a line ends at LF, CR or CRLF); a block of comment lines (`:` first) is no event.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SseEventCounter {
    pub(crate) events: u64,
    in_line: bool,
    comment_line: bool,
    after_cr: bool,
    /// The current event has a field line and ends at the next blank line.
    pending: bool,
}

impl SseEventCounter {
    /// Whether the bytes so far end between events: no line and no event left open.
    pub(crate) fn at_event_boundary(&self) -> bool {
        !self.in_line && !self.pending
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    if self.in_line {
                        self.in_line = false;
                        self.pending |= !self.comment_line;
                    } else if self.pending {
                        self.events += 1;
                        self.pending = false;
                    }
                }
                _ => {
                    self.after_cr = false;
                    if !self.in_line {
                        self.in_line = true;
                        self.comment_line = byte == b':';
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::config::{ModelBackends, ProxySettings};

    fn router(yaml: &str) -> Arc<Router> {
        let backends = ModelBackends::parse(Path::new("model_backend.yaml"), yaml).unwrap();
        Arc::new(Router::new(&backends, &ProxySettings::default()))
    }

    struct Ignore;
    impl ResponseObserver for Ignore {
        fn on_response(&mut self, _: &ResponseHeader, _: Duration) {}
        fn on_body(&mut self, _: &[u8]) {}
    }

    async fn exchange(router: &Arc<Router>, request: &RequestHeader, body: &[u8]) -> Exchange<Ignore> {
        let body = Bytes::copy_from_slice(body);
        let model = crate::proxy::model_of(&body).unwrap();
        let route = router.select(&model.name).unwrap();
        let id_and_attempts = (RequestId::new(), 2);
        Exchange::begin(router.clone(), route, request, (&body, &model, false), id_and_attempts, Ignore)
            .await
            .ok()
            .unwrap()
    }

    /// `request` as the backend of `model` gets it, with the 13-byte body `{"model":"<model>"}`.
    async fn rewritten(router: &Arc<Router>, model: &str, mut request: RequestHeader) -> RequestHeader {
        let body = format!(r#"{{"model":"{model}"}}"#);
        exchange(router, &request, body.as_bytes()).await.rewrite_request(&mut request).unwrap();
        request
    }

    #[tokio::test]
    async fn the_alias_replaces_the_top_level_model_and_nothing_else() {
        let router = router(
            "models: {a: {url: 'http://127.0.0.1:1', alias: 'llama3:8b \"q\"'}, b: {url: 'http://127.0.0.1:1'}}",
        );
        let request = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        let body = br#"{ "messages":[{"model":"a"}], "mod\u0065l" :  "a" ,"x":1.50}"#;
        let mut exchange = exchange(&router, &request, body).await;
        assert_eq!(
            &exchange.body()[..],
            &br#"{ "messages":[{"model":"a"}], "mod\u0065l" :  "llama3:8b \"q\"" ,"x":1.50}"#[..]
        );
        let mut header = request.clone();
        exchange.rewrite_request(&mut header).unwrap();
        assert_eq!(header.headers.get("content-length").unwrap().to_str().unwrap(), exchange.body().len().to_string());
        // Without an alias the caller's bytes are sent as they came.
        exchange = self::exchange(&router, &request, br#"{"model":"b"}"#).await;
        assert_eq!(&exchange.body()[..], br#"{"model":"b"}"#);
    }

    #[tokio::test]
    async fn request_is_rewritten_for_the_backend() {
        let router = router("models: {a: {url: 'https://localhost:8443/openai/', auth: {bearer_token: t0k}}}");
        let mut request = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        for (name, value) in [
            ("host", "node.example"),
            ("x-signature", "aa"),
            ("x-address", "0x01"),
            ("authorization", "Bearer caller"),
            ("x-api-key", "caller-key"),
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-request-id", "not the exchange's"),
        ] {
            request.insert_header(name, value).unwrap();
        }
        let request = rewritten(&router, "a", request).await;
        assert_eq!(request.uri.to_string(), "/openai/v1/chat/completions?x=1");
        let header = |name: &str| request.headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header("host").as_deref(), Some("localhost:8443"));
        assert_eq!(header("authorization").as_deref(), Some("Bearer t0k"));
        assert_eq!(header("content-length").as_deref(), Some("13"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        // The exchange's id, whatever the caller sent (`proxy::RequestId` decides which it is).
        assert_eq!(header("x-request-id").map(|id| id.len()), Some(32));
        for gone in ["x-signature", "x-address", "x-api-key", "connection", "x-custom-hop", "transfer-encoding"] {
            assert_eq!(header(gone), None, "{gone} was forwarded");
        }
    }

    #[tokio::test]
    async fn root_backend_keeps_the_callers_path_and_query() {
        let router = router("models: {a: {url: 'http://127.0.0.1:8000'}}");
        let mut request = RequestHeader::build("POST", b"/v1/embeddings?trace=1", None).unwrap();
        request.insert_header("x-nonce", "n").unwrap();
        let request = rewritten(&router, "a", request).await;
        assert_eq!(request.uri.to_string(), "/v1/embeddings?trace=1");
        assert_eq!(request.headers.get("host").unwrap(), "127.0.0.1:8000");
        assert!(request.headers.get("x-nonce").is_none());

        let absolute = RequestHeader::build("POST", b"http://node.example/v1/embeddings", None).unwrap();
        assert_eq!(rewritten(&router, "a", absolute).await.uri.to_string(), "/v1/embeddings");
    }

    #[tokio::test]
    async fn failures_are_retried_only_where_the_request_cannot_run_twice_on_one_backend() {
        let request = RequestHeader::build("POST", b"/v1/completions", None).unwrap();
        let failure = |retry| {
            let mut error = Error::new(ErrorType::ConnectionClosed);
            error.retry = retry;
            error.as_up();
            error
        };
        let one = router("models: {a: {url: 'http://127.0.0.1:1'}}");
        let two = router("models: {a: {backends: [{url: 'http://127.0.0.1:1'}, {url: 'http://127.0.0.1:2'}]}}");
        // (backends, reused, response started, retried, the next attempt's backend is another)
        let cases = [
            (&one, true, false, true, false),
            (&one, false, false, false, false),
            (&one, true, true, false, false),
            (&two, true, false, true, false),
            (&two, false, false, true, true),
            (&two, false, true, false, false),
        ];
        for (router, reused, response_started, retried, moved) in cases {
            let mut exchange = exchange(router, &request, br#"{"model":"a"}"#).await;
            exchange.next_peer().await.unwrap();
            let first = exchange.backend().url.clone();
            let mut error = failure(pingora::RetryType::ReusedOnly);
            exchange.attempt_failed(&mut error, reused, response_started);
            assert_eq!(error.retry(), retried, "{cases:?}", cases = (reused, response_started));
            if retried {
                exchange.next_peer().await.unwrap();
                assert_eq!(exchange.backend().url != first, moved, "{first}");
                // The second attempt was the last.
                let mut again = failure(pingora::RetryType::Decided(true));
                exchange.attempt_failed(&mut again, false, false);
                assert!(!again.retry());
            }
        }
        // The caller leaving is no reason to try again, nor the backend's failure.
        let mut exchange = exchange(&two, &request, br#"{"model":"a"}"#).await;
        exchange.next_peer().await.unwrap();
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.as_down();
        exchange.attempt_failed(&mut gone, false, false);
        assert!(!gone.retry());
    }

    fn events_in(pieces: &[&[u8]]) -> u64 {
        let mut counter = SseEventCounter::default();
        for piece in pieces {
            counter.feed(piece);
        }
        counter.events
    }

    #[test]
    fn sse_events_are_counted_across_chunk_boundaries() {
        let stream: &[u8] =
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\nevent: x\ndata: y\rdata: z\r\r: ping\n\ndata: [DONE]\n\n";
        assert_eq!(events_in(&[stream]), 4);
        // Every split point, including between CR and LF, gives the same count.
        for split in 0..stream.len() {
            let (head, tail) = stream.split_at(split);
            assert_eq!(events_in(&[head, tail]), 4, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events_in(&bytewise), 4);
        assert_eq!(events_in(&[b"data: unfinished\n"]), 0);
        assert_eq!(events_in(&[b"\n\n\n: comment only\n\n"]), 0);
    }
}
