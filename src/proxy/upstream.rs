//! The exchange with a model backend, one home for both forwarding paths: the request rewrite
//! (the body's `model` replaced by the backend's alias, the headers never forwarded, the request id
//! set), the peer for
//! each attempt, the one retry rule, and the [`ResponseObserver`] that sees every response. Bodies within Pingora's 64 KiB retry buffer are
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
use pingora::{Error, ErrorType};
use pingora_proxy::Session;

use super::api_error::{ApiError, ErrorCode, Rejected};
use super::model_field::ModelField;
use super::request_id::{RequestId, X_REQUEST_ID};
use crate::auth::SigningHeader;
use crate::routing::{ModelRoute, Router};

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
    // The body is forwarded whole, framed by Content-Length.
    "transfer-encoding",
];

/// What `usage.requestStreamUsage` adds to a streamed request's top level.
const STREAM_USAGE_OPTION: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// Sees every backend response, on both forwarding paths, as it passes to the caller.
pub(crate) trait ResponseObserver {
    /// The backend's response header arrived, `ttfb` after the node began the exchange.
    fn on_response(&mut self, response: &ResponseHeader, ttfb: Duration);
    /// A piece of the response body is relayed to the caller.
    fn on_body(&mut self, chunk: &[u8]);
}

/// One request's exchange with the backend of its route.
pub(crate) struct Exchange<O> {
    pub(crate) route: Arc<ModelRoute>,
    peer: Box<HttpPeer>,
    /// The request target for the backend, when it differs from the caller's.
    uri: Option<Uri>,
    /// The body the backend gets: the caller's, with the route's alias in place of its `model`.
    body: Bytes,
    /// Sent to the backend and returned to the caller on the backend's response.
    request_id: RequestId,
    began: Instant,
    pub(crate) observer: O,
}

impl<O: ResponseObserver> Exchange<O> {
    /// Chooses the backend connection for `route`, checks that `request` can be sent to it, and
    /// makes the body for it from the caller's `body`, whose top-level `model` is `model`; with
    /// `ask_for_usage`, a streamed request that sets no `stream_options` asks for a usage chunk.
    pub(crate) async fn begin(
        router: &Router,
        route: Arc<ModelRoute>,
        request: &RequestHeader,
        (body, model, ask_for_usage): (&Bytes, &ModelField<'_>, bool),
        request_id: RequestId,
        observer: O,
    ) -> Result<Self, Rejected> {
        let began = Instant::now();
        let peer = Box::new(router.peer(&route).await?);
        // Most backends sit at the root and most callers send a bare path: then the target stays
        // as it is. An absolute-form target (`http://node/v1/…`) is cut to its path for the backend.
        let uri = if !route.base_path.is_empty() || request.uri.authority().is_some() {
            let path_and_query = request.uri.path_and_query().map_or("/", |p| p.as_str());
            let uri = format!("{}{}", route.base_path, path_and_query).parse::<Uri>().map_err(|e| {
                ApiError::new(ErrorCode::BadRequest, format!("cannot build the backend request path: {e}"))
            })?;
            Some(uri)
        } else {
            None
        };
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
        Ok(Self { route, peer, uri, body, request_id, began, observer })
    }

    /// The body for the backend, on either path.
    pub(crate) fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// The peer for an attempt; Pingora asks again for each retry.
    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        self.peer.clone()
    }

    /// Rewrites the caller's request for the backend: the target under the backend's base path,
    /// `Host` set to the backend, the caller's signing, credential and hop-by-hop headers dropped,
    /// the backend's credential added, the body framed by its length and `X-Request-Id` set to the
    /// request's id (replacing a caller's id the node did not accept).
    pub(crate) fn rewrite_request(&self, request: &mut RequestHeader) -> pingora::Result<()> {
        if let Some(uri) = &self.uri {
            request.set_uri(uri.clone());
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
        request.insert_header(header::HOST, self.route.host_header.clone())?;
        request.insert_header(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()))?;
        request.insert_header(X_REQUEST_ID, self.request_id.header())?;
        if let Some((name, value)) = &self.route.credential {
            request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// The backend's response header arrived: the caller gets it with the request's id.
    pub(crate) fn response_header(&mut self, response: &mut ResponseHeader) -> pingora::Result<()> {
        self.observer.on_response(response, self.began.elapsed());
        response.insert_header(X_REQUEST_ID, self.request_id.header())
    }

    pub(crate) fn response_body(&mut self, chunk: &[u8]) {
        self.observer.on_body(chunk);
    }

    /// Sends the request over a connection of the node's own, and relays the response to the
    /// caller as it comes.
    pub(crate) async fn relay(
        &mut self,
        connector: &Connector,
        session: &mut Session,
        max_attempts: usize,
    ) -> Result<(), Rejected> {
        let request = session.req_header().clone();
        let (mut upstream, response) = self.open(connector, request, max_attempts).await.map_err(Rejected::Failed)?;
        session.write_response_header(Box::new(response), false).await.map_err(Rejected::Failed)?;
        loop {
            // Dropping `upstream` on any error closes the backend connection, which cancels the
            // backend's work when the caller has gone.
            let chunk = self.next_body(&mut upstream).await.map_err(Rejected::Failed)?;
            let end = chunk.is_none();
            session.write_response_body(chunk, end).await.map_err(Rejected::Failed)?;
            if end {
                break;
            }
        }
        self.release(connector, upstream).await;
        Ok(())
    }

    /// Sends `request`, rewritten for the backend, over a connection of the node's own and
    /// reads the response header, which the observer has seen when this returns.
    pub(crate) async fn open(
        &mut self,
        connector: &Connector,
        mut request: RequestHeader,
        max_attempts: usize,
    ) -> pingora::Result<(HttpSession, ResponseHeader)> {
        self.rewrite_request(&mut request)?;
        let upstream = self.send(connector, request, max_attempts).await?;
        let mut response = upstream
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "backend sent no response header").into_up())?;
        self.response_header(&mut response)?;
        Ok((upstream, response))
    }

    /// The next piece of the response body of [`Self::open`]'s connection, which the observer
    /// has seen; `None` at its end.
    pub(crate) async fn next_body(&mut self, upstream: &mut HttpSession) -> pingora::Result<Option<Bytes>> {
        let chunk = upstream.read_response_body().await.map_err(|e| e.into_up())?;
        if let Some(chunk) = &chunk {
            self.response_body(chunk);
        }
        Ok(chunk)
    }

    /// Pools [`Self::open`]'s connection again once its response was read to the end.
    pub(crate) async fn release(&self, connector: &Connector, mut upstream: HttpSession) {
        if upstream.response_done() {
            connector.release_http_session(upstream, &*self.peer, self.peer.options.idle_timeout).await;
        }
    }

    /// Sends the request and reads the response header, under the retry rule of [`decide_retry`].
    async fn send(
        &self,
        connector: &Connector,
        request: RequestHeader,
        max_attempts: usize,
    ) -> pingora::Result<HttpSession> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut upstream, reused) =
                connector.get_http_session(&*self.peer).await.map_err(|e| connect_failure(e.into_up()))?;
            // Pingora's own path applies these per request; a session from the connector does not.
            upstream.set_read_timeout(self.peer.options.read_timeout);
            upstream.set_write_timeout(self.peer.options.write_timeout);
            let sent = async {
                upstream.write_request_header(Box::new(request.clone())).await?;
                upstream.write_request_body(self.body.clone(), true).await?;
                upstream.finish_request_body().await?;
                upstream.read_response_header().await
            }
            .await;
            match sent {
                Ok(()) => return Ok(upstream),
                Err(mut error) => {
                    decide_retry(&mut error, reused, false);
                    if !error.retry() || attempts >= max_attempts {
                        return Err(error.into_up());
                    }
                }
            }
        }
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

/// The one retry rule of both paths: an attempt is sent again only when it failed on a pooled
/// connection that the backend had closed while idle (so the backend cannot have run it), and
/// before any of its response reached the caller. A failure on a fresh connection is never
/// retried: the backend may have received the request, and one inference must never run twice.
pub(crate) fn decide_retry(error: &mut Error, reused: bool, response_started: bool) {
    error.retry.decide_reuse(reused);
    let retry = reused && !response_started && error.retry();
    error.set_retry(retry);
}

/// A backend that refuses a fresh connection will refuse the next one too.
pub(crate) fn connect_failure(mut error: Box<Error>) -> Box<Error> {
    error.set_retry(false);
    error
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

    fn router(yaml: &str) -> Router {
        let backends = ModelBackends::parse(Path::new("model_backend.yaml"), yaml).unwrap();
        Router::new(&backends, &ProxySettings::default())
    }

    struct Ignore;
    impl ResponseObserver for Ignore {
        fn on_response(&mut self, _: &ResponseHeader, _: Duration) {}
        fn on_body(&mut self, _: &[u8]) {}
    }

    async fn exchange(router: &Router, request: &RequestHeader, body: &[u8]) -> Exchange<Ignore> {
        let body = Bytes::copy_from_slice(body);
        let model = crate::proxy::model_of(&body).unwrap();
        let route = router.select(&model.name).unwrap();
        Exchange::begin(router, route, request, (&body, &model, false), RequestId::new(), Ignore).await.ok().unwrap()
    }

    /// `request` as the backend of `model` gets it, with the 13-byte body `{"model":"<model>"}`.
    async fn rewritten(router: &Router, model: &str, mut request: RequestHeader) -> RequestHeader {
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

    #[test]
    fn only_a_failure_on_a_pooled_connection_before_the_response_is_retried() {
        let stale = || Error::new(ErrorType::ConnectionClosed);
        let cases = [(true, false, true), (false, false, false), (true, true, false)];
        for (reused, response_started, retried) in cases {
            let mut error = stale();
            error.retry = pingora::RetryType::ReusedOnly;
            decide_retry(&mut error, reused, response_started);
            assert_eq!(error.retry(), retried, "reused={reused} response_started={response_started}");
        }
        // An error Pingora marks retryable whatever the connection is still not retried on a fresh one.
        let mut always = stale();
        always.set_retry(true);
        decide_retry(&mut always, false, false);
        assert!(!always.retry());
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
