//! An OpenAI-compatible backend for tests and benchmarks: canned JSON, SSE streams at a set
//! pace, delays and faults, and an echo of what it received so callers can prove that the
//! node forwarded the request unchanged.
//!
//! Behaviour per request, from headers (the node forwards them):
//! - `x-test-fault`: `status-500` (an error body), `hang` (never answers), `close` (closes the
//!   connection mid-stream after the first event), `stall-after-first` (sends the first event, or
//!   the first half of a JSON body sent chunked, then nothing more while the connection stays
//!   open), `reset` (resets the connection unanswered),
//!   `reset-if-reused` (the same, but only on a connection that has served a request before: a
//!   pooled connection the backend dropped just as the node reused it), `malformed` (answers
//!   bytes that are not HTTP, then closes);
//! - `x-test-response-bytes`: a chat answer whose content is this many letters, sent chunked in
//!   pieces of a MiB as the caller takes them;
//! - `x-test-delay-ms`: wait before the first byte;
//! - `x-test-chunks`, `x-test-interval-ms`: events per stream and the pause between them;
//! - `x-test-split-ms`: each event of a stream, and a JSON body, is sent in two pieces this many
//!   milliseconds apart, cut in the middle (for readers that must join what arrives apart).
//!
//! Usage is reported as OpenAI does: `prompt_tokens` is the number of whitespace-separated words of
//! the prompt or the messages' contents, `completion_tokens` 2 for a JSON answer and the number of
//! events for a stream, whose usage comes in a last chunk only when `stream_options.include_usage`
//! asks for it (every earlier chunk then says `"usage": null`).
//!
//! Every response carries `x-backend-body-sha256`, `x-backend-body-length`, `x-backend-path`,
//! `x-backend-connection` (the connection's number), `x-backend-headers` (names received), and
//! the values received of `Host`, `Content-Length`, `Transfer-Encoding` and `X-Request-Id` as
//! `x-backend-host`, `x-backend-content-length`, `x-backend-transfer-encoding` and
//! `x-backend-request-id` (`-` when absent).
//! `GET /stats` reports connections accepted, requests served and streams cut short.
//! Every response also carries `x-backend-listen`, the address this backend listens on.
//!
//! A test sets how the whole backend behaves, as a replica would, with
//! `POST /control` and a JSON object of any of: `health` (the status `GET /health` answers, 200
//! at first), `failStatus` (every inference request answered with this status, as an overloaded
//! server answers 503; 0 for none), `delayMs` (every inference request waits this long first, a
//! slow replica), `waiting` and `running` (the gauges `vllm:num_requests_waiting` and
//! `vllm:num_requests_running` of `GET /metrics`, 0 at first). `GET /health` and `GET /metrics`
//! are not counted in `requests`.
//! For ENDPOINT_REACHABLE: `GET /redirect?to=<percent-encoded URL>` answers 302 to that URL, and
//! `GET /status/<code>` answers that status with a short body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::channel::Sender;
use http_body_util::{combinators::BoxBody, BodyExt, Channel, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(version, about = "OpenAI-compatible test backend for fxn")]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Events per streamed response.
    #[arg(long, default_value_t = 5)]
    chunks: u32,
    /// Pause between streamed events, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Floats per embedding.
    #[arg(long, default_value_t = 8)]
    dimensions: usize,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
    cancelled_streams: AtomicU64,
}

/// What `POST /control` sets.
struct Controls {
    health: AtomicU64,
    fail_status: AtomicU64,
    delay_ms: AtomicU64,
    waiting: AtomicU64,
    running: AtomicU64,
}

impl Default for Controls {
    fn default() -> Self {
        Self {
            health: AtomicU64::new(200),
            fail_status: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// How a fault cuts a body short after its first piece.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// `close`: the body is aborted, so hyper closes the connection mid-body.
    Close,
    /// `stall-after-first`: the body waits forever, as `hang` does before the header; nothing
    /// more is sent and the connection stays open until the client goes away.
    Stall,
}

impl Cut {
    fn of(fault: Option<&str>) -> Option<Self> {
        match fault {
            Some("close") => Some(Self::Close),
            Some("stall-after-first") => Some(Self::Stall),
            _ => None,
        }
    }

    /// Ends a body of [`fed_body`] after its first piece, the sender handed over.
    fn apply(self, sender: Sender<Bytes, std::io::Error>) {
        match self {
            Self::Close => sender.abort(std::io::Error::other("injected close mid-stream")),
            // The channel ends here, and the body of `fed_body` then waits for trailers that never come.
            Self::Stall => drop(sender),
        }
    }
}

struct Backend {
    args: Args,
    listen: String,
    stats: Arc<Stats>,
    controls: Controls,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let listen = listener.local_addr()?.to_string();
    println!("listening on {listen}");
    let backend = Arc::new(Backend { args, listen, stats: Arc::default(), controls: Controls::default() });
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let connection = backend.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let fd = stream.as_raw_fd();
        let backend = backend.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, backend, connection, fd).await;
                    }
                }
                None => serve(stream, backend, connection, fd).await,
            }
        });
    }
}

async fn serve<S>(stream: S, backend: Arc<Backend>, connection: u64, fd: RawFd)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |request| {
        let backend = backend.clone();
        let reused = served.fetch_add(1, Ordering::Relaxed) > 0;
        async move { Ok::<_, Infallible>(backend.handle(request, connection, reused, fd).await) }
    });
    // Errors here are the faults this backend injects, or callers that left.
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    let read = |path: &std::path::Path| std::fs::read(path).map(std::io::Cursor::new);
    let chain = rustls_pemfile::certs(&mut read(cert)?).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut read(key)?)?
        .ok_or_else(|| std::io::Error::other(format!("no private key in {}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(std::io::Error::other)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn header_value<T: std::str::FromStr>(request: &Request<Incoming>, name: &str) -> Option<T> {
    request.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn unix_micros() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

impl Backend {
    async fn handle(&self, request: Request<Incoming>, connection: u64, reused: bool, fd: RawFd) -> Response<Body> {
        let mut response = self.respond(request, connection, reused, fd).await;
        if let Ok(listen) = self.listen.parse() {
            response.headers_mut().insert("x-backend-listen", listen);
        }
        response
    }

    /// `POST /control`: sets the fields given, answers what is now set.
    async fn control(&self, request: Request<Incoming>) -> Response<Body> {
        let body = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&body) else {
            return status(StatusCode::BAD_REQUEST, "POST /control takes a JSON object");
        };
        let controls = &self.controls;
        for (name, value) in fields {
            let slot = match name.as_str() {
                "health" => &controls.health,
                "failStatus" => &controls.fail_status,
                "delayMs" => &controls.delay_ms,
                "waiting" => &controls.waiting,
                "running" => &controls.running,
                _ => return status(StatusCode::BAD_REQUEST, &format!("unknown control `{name}`")),
            };
            let Some(value) = value.as_u64() else {
                return status(StatusCode::BAD_REQUEST, &format!("`{name}` takes a whole number"));
            };
            slot.store(value, Ordering::Relaxed);
        }
        let now = serde_json::json!({
            "health": controls.health.load(Ordering::Relaxed),
            "failStatus": controls.fail_status.load(Ordering::Relaxed),
            "delayMs": controls.delay_ms.load(Ordering::Relaxed),
            "waiting": controls.waiting.load(Ordering::Relaxed),
            "running": controls.running.load(Ordering::Relaxed),
        });
        Response::new(full(now.to_string()))
    }

    async fn respond(&self, request: Request<Incoming>, connection: u64, reused: bool, fd: RawFd) -> Response<Body> {
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        if request.method() == hyper::Method::POST && path == "/control" {
            return self.control(request).await;
        }
        if request.method() == hyper::Method::GET && path == "/metrics" {
            let controls = &self.controls;
            let page = format!(
                "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {}\n\
                 # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} {}\n",
                controls.waiting.load(Ordering::Relaxed),
                controls.running.load(Ordering::Relaxed)
            );
            return Response::new(full(page));
        }
        if request.method() == hyper::Method::GET && path == "/health" {
            let code = u16::try_from(self.controls.health.load(Ordering::Relaxed)).ok();
            let code = code.and_then(|code| StatusCode::from_u16(code).ok()).unwrap_or(StatusCode::OK);
            let mut response = Response::new(full(format!("health {}", code.as_u16())));
            *response.status_mut() = code;
            return response;
        }
        if request.method() == hyper::Method::GET && path == "/stats" {
            let stats = serde_json::json!({
                "connections": self.stats.connections.load(Ordering::Relaxed),
                "requests": self.stats.requests.load(Ordering::Relaxed),
                "cancelled_streams": self.stats.cancelled_streams.load(Ordering::Relaxed),
            });
            return Response::new(full(stats.to_string()));
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if request.method() == hyper::Method::GET {
            if let Some(response) = reachability_target(&path) {
                return response;
            }
        }
        let fault: Option<String> = header_value(&request, "x-test-fault");
        let delay = Duration::from_millis(
            header_value(&request, "x-test-delay-ms").unwrap_or(self.controls.delay_ms.load(Ordering::Relaxed)),
        );
        let fail_status = u16::try_from(self.controls.fail_status.load(Ordering::Relaxed)).ok();
        let fail_status = fail_status.and_then(|code| StatusCode::from_u16(code).ok());
        let chunks = header_value(&request, "x-test-chunks").unwrap_or(self.args.chunks);
        let response_bytes: Option<usize> = header_value(&request, "x-test-response-bytes");
        let interval =
            Duration::from_millis(header_value(&request, "x-test-interval-ms").unwrap_or(self.args.interval_ms));
        let split = header_value(&request, "x-test-split-ms").map(Duration::from_millis);
        let mut names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        let echo_headers = names.join(",");
        let credential = ["authorization", "x-api-key"]
            .iter()
            .filter_map(|name| Some(format!("{name}={}", request.headers().get(*name)?.to_str().ok()?)))
            .collect::<Vec<_>>()
            .join(";");
        let received = |name| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        let (host, content_length, transfer_encoding, request_id) =
            (received("host"), received("content-length"), received("transfer-encoding"), received("x-request-id"));

        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return status(StatusCode::BAD_REQUEST, &format!("body read failed: {e}")),
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let model = json["model"].as_str().unwrap_or("unknown").to_string();

        let (reset, garbage): (bool, &[u8]) = match fault.as_deref() {
            Some("hang") => std::future::pending().await,
            Some("reset") => (true, b""),
            Some("reset-if-reused") => (reused, b""),
            Some("malformed") => (true, b"this is not HTTP\r\n\r\n"),
            _ => (false, b""),
        };
        if reset {
            // SO_LINGER 0 makes the close that follows a reset; the fd is alive while its
            // connection is being served.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let _ = socket.send(garbage);
            let _ = socket.set_linger(Some(Duration::ZERO));
            let _ = socket.shutdown(std::net::Shutdown::Both);
            std::future::pending::<()>().await;
        }
        // A zero sleep would still wait for tokio's next 1 ms timer tick.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }

        let cut = Cut::of(fault.as_deref());
        let mut response = if let Some(code) = fail_status {
            status(code, "injected by POST /control")
        } else if fault.as_deref() == Some("status-500") {
            status(StatusCode::INTERNAL_SERVER_ERROR, "injected backend failure")
        } else if let Some(bytes) = response_bytes.filter(|_| path.ends_with("/chat/completions")) {
            padded_chat_answer(&model, bytes)
        } else if json["stream"].as_bool() == Some(true) && !path.ends_with("/embeddings") {
            let usage = (json["stream_options"]["include_usage"].as_bool() == Some(true)).then(|| prompt_words(&json));
            self.stream(StreamShape { model, chunks, interval, split, usage }, cut)
        } else {
            let canned = Bytes::from(self.canned(&path, &model, &json).to_string());
            match (cut, split) {
                // Its first half, chunked (a fed body declares no length); `close` cuts streams only.
                (Some(cut @ Cut::Stall), _) => {
                    let (mut sender, body) = fed_body(Some(cut));
                    let _ = sender.try_send(Frame::data(canned.slice(..canned.len() / 2)));
                    cut.apply(sender);
                    Response::new(body)
                }
                (_, Some(pause)) => {
                    let (mut sender, body) = fed_body(None);
                    tokio::spawn(async move { send_split(&mut sender, canned, pause).await });
                    let mut response = Response::new(body);
                    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
                    response
                }
                _ => Response::new(full(canned)),
            }
        };
        let digest = hex::encode(Sha256::digest(&body));
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-backend-body-sha256", digest),
            ("x-backend-body-length", body.len().to_string()),
            ("x-backend-path", path),
            ("x-backend-connection", connection.to_string()),
            ("x-backend-headers", echo_headers),
            ("x-backend-credential", credential),
            ("x-backend-host", host),
            ("x-backend-content-length", content_length),
            ("x-backend-transfer-encoding", transfer_encoding),
            ("x-backend-request-id", request_id),
        ] {
            if let Ok(value) = value.parse() {
                headers.insert(name, value);
            }
        }
        response
    }

    fn canned(&self, path: &str, model: &str, request: &serde_json::Value) -> serde_json::Value {
        let created = unix_micros() / 1_000_000;
        if path.ends_with("/embeddings") {
            let dimensions = request["dimensions"].as_u64().map_or(self.args.dimensions, |d| d as usize);
            let embedding: Vec<f32> = (0..dimensions).map(|i| (i as f32 * 0.001).sin()).collect();
            return serde_json::json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
                "model": model,
                "usage": {"prompt_tokens": prompt_words(request), "total_tokens": prompt_words(request)},
            });
        }
        let prompt_tokens = prompt_words(request);
        let usage = serde_json::json!({
            "prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2,
        });
        if path.ends_with("/chat/completions") {
            serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"},
                             "finish_reason": "stop"}],
                "usage": usage,
            })
        } else {
            serde_json::json!({
                "id": "cmpl-test", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": "hello there", "finish_reason": "stop"}],
                "usage": usage,
            })
        }
    }

    /// Streams `chunks` events `interval` apart, each stamped with its send time, then the usage
    /// chunk when asked for, then `[DONE]`; a `cut` comes after the first event.
    fn stream(&self, shape: StreamShape, cut: Option<Cut>) -> Response<Body> {
        let (mut sender, body) = fed_body(cut);
        let stats = self.stats.clone();
        let created = unix_micros() / 1_000_000;
        let StreamShape { model, chunks, interval, split, usage } = shape;
        let task = async move {
            for index in 0..chunks {
                if index > 0 {
                    tokio::time::sleep(interval).await;
                }
                if let Some(cut) = cut.filter(|_| index == 1) {
                    cut.apply(sender);
                    return;
                }
                let mut event = serde_json::json!({
                    "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": created,
                    "model": model, "sent_at_us": unix_micros().to_string(),
                    "choices": [{"index": 0, "delta": {"content": format!("tok{index} ")}, "finish_reason": null}],
                });
                if usage.is_some() {
                    event["usage"] = serde_json::Value::Null;
                }
                if !send_event(&mut sender, &event, split).await {
                    stats.cancelled_streams.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            if let Some(prompt_tokens) = usage {
                let event = serde_json::json!({
                    "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": chunks,
                              "total_tokens": prompt_tokens + u64::from(chunks)},
                });
                if !send_event(&mut sender, &event, split).await {
                    return;
                }
            }
            let _ = sender.send(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        };
        tokio::spawn(task);
        let mut response = Response::new(body);
        response.headers_mut().insert("content-type", "text/event-stream".parse().expect("static header"));
        response.headers_mut().insert("cache-control", "no-cache".parse().expect("static header"));
        response
    }
}

/// What a streamed answer is made of.
struct StreamShape {
    model: String,
    chunks: u32,
    interval: Duration,
    /// Each event in two pieces this far apart.
    split: Option<Duration>,
    /// The prompt's tokens, when the caller asked for a usage chunk.
    usage: Option<u64>,
}

/// A chat answer whose content is `bytes` letters, sent chunked in pieces of a MiB as fast as the
/// caller takes them: its header leaves at once, and it is never whole in memory.
fn padded_chat_answer(model: &str, bytes: usize) -> Response<Body> {
    const PIECE: usize = 1 << 20;
    let model = serde_json::Value::from(model);
    let head = format!(
        r#"{{"id":"chatcmpl-test","object":"chat.completion","model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":""#
    );
    let (mut sender, body) = fed_body(None);
    tokio::spawn(async move {
        let piece = Bytes::from(vec![b'x'; PIECE]);
        let pieces = (0..bytes).step_by(PIECE).map(|at| piece.slice(..PIECE.min(bytes - at)));
        let tail = Bytes::from_static(br#""},"finish_reason":"stop"}]}"#);
        for frame in std::iter::once(Bytes::from(head)).chain(pieces).chain(std::iter::once(tail)) {
            if sender.send(Frame::data(frame)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(body);
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    response
}

/// The prompt's whitespace-separated words: of `prompt`, or of every message's string `content`.
fn prompt_words(request: &serde_json::Value) -> u64 {
    let words = |text: &str| text.split_whitespace().count() as u64;
    match (&request["prompt"], &request["input"], request["messages"].as_array()) {
        (serde_json::Value::String(prompt), _, _) | (_, serde_json::Value::String(prompt), _) => words(prompt),
        (_, _, Some(messages)) => messages.iter().filter_map(|m| m["content"].as_str()).map(words).sum(),
        _ => 0,
    }
}

/// Sends one event, whole or split; false once the caller has gone.
async fn send_event(
    sender: &mut Sender<Bytes, std::io::Error>,
    event: &serde_json::Value,
    split: Option<Duration>,
) -> bool {
    let bytes = Bytes::from(format!("data: {event}\n\n"));
    match split {
        Some(pause) => send_split(sender, bytes, pause).await,
        None => sender.send(Frame::data(bytes)).await.is_ok(),
    }
}

/// Sends `bytes` in two pieces, cut in the middle, `pause` apart; false once the caller has gone.
async fn send_split(sender: &mut Sender<Bytes, std::io::Error>, bytes: Bytes, pause: Duration) -> bool {
    let middle = bytes.len() / 2;
    if sender.send(Frame::data(bytes.slice(..middle))).await.is_err() {
        return false;
    }
    tokio::time::sleep(pause).await;
    sender.send(Frame::data(bytes.slice(middle..))).await.is_ok()
}

/// A body fed piece by piece through the sender returned; with a `Stall` cut, once the sender is
/// dropped it sends nothing more and never ends (a pending future, as `hang` awaits).
fn fed_body(cut: Option<Cut>) -> (Sender<Bytes, std::io::Error>, Body) {
    let (sender, body) = Channel::new(4);
    let body = match cut {
        Some(Cut::Stall) => body.with_trailers(std::future::pending()).boxed(),
        _ => body.boxed(),
    };
    (sender, body)
}

/// The answers of `/redirect?to=` and `/status/<code>`; none for other paths.
fn reachability_target(path: &str) -> Option<Response<Body>> {
    if let Some(query) = path.strip_prefix("/redirect?") {
        let Some((_, to)) = form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "to") else {
            return Some(status(StatusCode::BAD_REQUEST, "/redirect needs ?to=<percent-encoded URL>"));
        };
        let mut response = Response::new(full("redirecting"));
        *response.status_mut() = StatusCode::FOUND;
        match to.parse() {
            Ok(location) => response.headers_mut().insert(hyper::header::LOCATION, location),
            Err(_) => return Some(status(StatusCode::BAD_REQUEST, "`to` is not a header value")),
        };
        return Some(response);
    }
    let code = path.strip_prefix("/status/")?;
    Some(match code.parse::<u16>().ok().and_then(|code| StatusCode::from_u16(code).ok()) {
        Some(code) => {
            let mut response = Response::new(full(format!("status {}", code.as_u16())));
            *response.status_mut() = code;
            response
        }
        None => status(StatusCode::BAD_REQUEST, "/status/<code> needs an HTTP status code"),
    })
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": message, "type": "server_error", "code": code.as_u16()}});
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    response
}
