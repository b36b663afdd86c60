//! The connection-level limits (`limits.*`), through the real node in front of the real test
//! backend, on raw connections: slow headers and bodies, large heads and bodies, idle keep-alive
//! connections, and connections beyond `limits.maxConnections`.

mod support;

use std::time::Duration;

use support::*;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n";

/// How long a misbehaving caller keeps at it: many times each limit the tests set (1 s), so that
/// a node that does not enforce its limit is seen to let it through.
const PATIENCE: Duration = Duration::from_secs(15);

fn node_with(backend: &TestBackend, limits: &str) -> Node {
    Node::start_for(&backend.url(), &format!("limits:\n{limits}"))
}

/// Sends `bytes` one at a time, `pause` apart, until they are all sent or the node closes the
/// connection; how many it took.
fn trickle(connection: &mut RawConnection, bytes: &[u8], pause: Duration) -> usize {
    for (sent, byte) in bytes.iter().enumerate() {
        if connection.send(std::slice::from_ref(byte)).is_err() {
            return sent;
        }
        std::thread::sleep(pause);
    }
    bytes.len()
}

fn answers_health(node: &Node) {
    let mut connection = RawConnection::open(node.addr);
    connection.send(HEALTH).unwrap();
    assert_eq!(connection.response().expect("an answer").status, 200);
}

#[tokio::test]
async fn a_header_sent_a_byte_at_a_time_is_cut_off_once_its_timeout_has_passed() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  headerReadTimeout: 1s\n");
    // Each byte comes well within Pingora's own wait for one read (60 s); the whole header would
    // take PATIENCE.
    let pause = Duration::from_millis(250);
    let filler = "x".repeat((PATIENCE.as_millis() / pause.as_millis()) as usize);
    let head = format!("GET /health HTTP/1.1\r\nHost: n\r\nX-Slow: {filler}\r\n\r\n");
    let mut connection = RawConnection::open(node.addr);
    let mut writer = RawConnection::on(connection.stream.try_clone().unwrap());
    let sent = std::thread::spawn(move || trickle(&mut writer, head.as_bytes(), pause));
    assert!(connection.response().is_none(), "the node answered a header that never ended");
    let sent = sent.join().unwrap();
    assert!(sent < filler.len(), "the node read all {sent} bytes of the slow header");
    answers_health(&node);
    assert_eq!(backend.requests().await, 0);
    scrape_until(&node, |scrape| value(scrape, "fxn_connections_cut_total", &[("limit", "header_timeout")]) == 1.0)
        .await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_once_the_header_timeout_has_passed() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  headerReadTimeout: 1s\n");
    let mut connection = RawConnection::open(node.addr);
    assert!(connection.closes_within(PATIENCE), "a silent connection was held past limits.headerReadTimeout");
}

#[tokio::test]
async fn a_slow_body_is_answered_408_and_its_connection_closed() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  bodyReadTimeout: 1s\n");
    let body = chat_body(200, false);
    let request = signed_raw_request("/v1/chat/completions", &body);
    let head_length = request.len() - body.len();
    let mut connection = RawConnection::open(node.addr);
    connection.send(&request[..head_length]).unwrap();
    let writer = connection.stream.try_clone().unwrap();
    let pause = PATIENCE / body.len() as u32;
    std::thread::spawn(move || trickle(&mut RawConnection::on(writer), &body, pause));
    let response = connection.response().expect("an answer to the slow body");
    assert_eq!((response.status, response.error_code().as_str()), (408, "request_timeout"));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(connection.closes_within(PATIENCE));
    assert_eq!(backend.requests().await, 0);
}

#[tokio::test]
async fn a_large_header_or_too_many_headers_get_431_and_beyond_pingoras_bounds_400() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  maxHeaderBytes: 4096\n  maxHeaderCount: 20\n");
    let large = format!("GET /health HTTP/1.1\r\nHost: n\r\nX-Large: {}\r\n\r\n", "v".repeat(5000));
    let many: String = (0..25).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let many = format!("GET /health HTTP/1.1\r\nHost: n\r\n{many}\r\n");
    for request in [large, many] {
        let mut connection = RawConnection::open(node.addr);
        connection.send(request.as_bytes()).unwrap();
        let response = connection.response().expect("an answer");
        assert_eq!((response.status, response.error_code().as_str()), (431, "headers_too_large"));
    }
    // Within the limits, the same request is served.
    let fine: String = (0..15).map(|i| format!("X-Header-{i}: {}\r\n", "v".repeat(200))).collect();
    let mut connection = RawConnection::open(node.addr);
    connection.send(format!("GET /health HTTP/1.1\r\nHost: n\r\n{fine}\r\n").as_bytes()).unwrap();
    assert_eq!(connection.response().expect("an answer").status, 200);
    // Past Pingora's own bound (256 headers) the node never sees the request: a bare 400.
    let too_many: String = (0..300).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let mut connection = RawConnection::open(node.addr);
    connection.send(format!("GET /health HTTP/1.1\r\nHost: n\r\n{too_many}\r\n").as_bytes()).unwrap();
    assert_eq!(connection.response().expect("an answer").status, 400);
    assert_eq!(backend.requests().await, 0);
}

#[tokio::test]
async fn a_body_declared_too_large_is_refused_before_it_is_sent_on_any_path() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  maxBodyBytes: 1000\n");
    for path in ["/v1/chat/completions", "/challenge", "/nowhere", "/health"] {
        let mut connection = RawConnection::open(node.addr);
        // No byte of the body is sent: the answer can only come from the declared length.
        connection
            .send(format!("POST {path} HTTP/1.1\r\nHost: n\r\nContent-Length: 1000000000\r\n\r\n").as_bytes())
            .unwrap();
        let response = connection.response().expect("an answer before the body");
        assert_eq!((response.status, response.error_code().as_str()), (413, "body_too_large"), "{path}");
        assert!(connection.closes_within(PATIENCE), "{path}: the connection stayed open with a body unread");
    }
    assert_eq!(backend.requests().await, 0);
}

#[tokio::test]
async fn a_chunked_body_that_grows_past_the_limit_is_refused_before_its_end() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  maxBodyBytes: 1000\n");
    let body = chat_body(3000, false);
    let framed = chunked(&body, 500);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n{}\r\n",
        signing_lines(&body)
    );
    let mut connection = RawConnection::open(node.addr);
    connection.send(head.as_bytes()).unwrap();
    // Three chunks of six (each `1f4`, CRLF, 500 bytes, CRLF): 1,500 bytes, and not the last
    // chunk, so the node must answer without the rest.
    connection.send(&framed[..3 * (5 + 500 + 2)]).unwrap();
    let response = connection.response().expect("an answer before the body's end");
    assert_eq!((response.status, response.error_code().as_str()), (413, "body_too_large"));
    assert!(connection.closes_within(PATIENCE));
    assert_eq!(backend.requests().await, 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_whatever_keep_alive_the_caller_asks() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  idleTimeout: 1s\n");
    for keep_alive in ["", "Keep-Alive: timeout=600\r\n"] {
        let mut connection = RawConnection::open(node.addr);
        connection.send(format!("GET /health HTTP/1.1\r\nHost: n\r\n{keep_alive}\r\n").as_bytes()).unwrap();
        let response = connection.response().expect("an answer");
        assert_eq!((response.status, response.header("connection")), (200, Some("keep-alive")));
        // A second request within the idle time is served on the same connection.
        connection.send(HEALTH).unwrap();
        assert_eq!(connection.response().expect("a second answer").status, 200);
        assert!(connection.closes_within(PATIENCE), "{keep_alive:?}: an idle connection stayed open");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_those_held_are_still_served() {
    let backend = TestBackend::start();
    let node = node_with(&backend, "  maxConnections: 3\n");
    // The connection that saw the node start may not be closed on the node's side yet.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut connection = RawConnection::open(node.addr);
        if connection.send(HEALTH).is_ok() && connection.response().is_some_and(|r| r.status == 200) {
            held.push(connection);
        }
        if held.len() == 3 {
            break;
        }
    }
    assert_eq!(held.len(), 3, "three connections were not served");
    let mut refused = RawConnection::open(node.addr);
    // The request may be written before the node closes the connection, or fail.
    let _ = refused.send(HEALTH);
    assert!(refused.response().is_none(), "a fourth connection was served");
    scrape_until(&node, |scrape| value(scrape, "fxn_connections_cut_total", &[("limit", "max_connections")]) >= 1.0)
        .await;
    for connection in &mut held {
        connection.send(HEALTH).unwrap();
        assert_eq!(connection.response().expect("an answer on a held connection").status, 200);
    }
    // A connection that ends gives its place back.
    held.pop();
    eventually(PATIENCE, "a new connection is served once one has closed", || async {
        let mut connection = RawConnection::open(node.addr);
        connection.send(HEALTH).is_ok() && connection.response().is_some_and(|r| r.status == 200)
    })
    .await;
}
