//! Request smuggling and HTTP/1.1 edge cases, written as raw bytes to the real node in front of
//! the real test backend. Each is answered correctly or refused with 400, and the backend sees
//! exactly one well-framed request (its body's hash echoed back) or none.

mod support;

use std::time::Duration;

use support::*;

const CHAT: &str = "/v1/chat/completions";

/// The test backend, and a node in front of it.
fn started() -> (TestBackend, Node) {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    (backend, node)
}

/// A chat body and its signed head (without the blank line), the framing left to the test.
fn signed_head(body: &[u8], framing: &str) -> String {
    format!("POST {CHAT} HTTP/1.1\r\nHost: n\r\n{framing}{}", signing_lines(body))
}

/// Sends `request` on a fresh connection: the answer, or `None` when the node closed it unanswered.
fn exchange(node: &Node, request: &[u8]) -> (Option<RawResponse>, RawConnection) {
    let mut connection = RawConnection::open(node.addr);
    connection.send(request).unwrap();
    (connection.response(), connection)
}

/// The request reached the backend whole: its body's hash and length, framed by `Content-Length`.
fn assert_forwarded(response: &RawResponse, body: &[u8]) {
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.header("x-backend-body-sha256"), Some(sha256_hex(body).as_str()));
    assert_eq!(response.header("x-backend-content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(response.header("x-backend-transfer-encoding"), Some("-"));
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_read_as_chunked_and_the_connection_closed() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    // A front that framed by the length would take the rest for a request of its own.
    let mut request = signed_head(&body, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").into_bytes();
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(&chunked(&body, 100));
    let (response, mut connection) = exchange(&node, &request);
    assert_forwarded(&response.expect("an answer"), &body);
    assert!(connection.closes_within(Duration::from_secs(5)), "RFC 9112 §6.1: the connection must close");
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    for framing in [
        format!("Content-Length: {0}\r\nContent-Length: {1}\r\n", body.len(), body.len() + 1),
        format!("Content-Length: {0}, {1}\r\n", body.len(), body.len() + 1),
    ] {
        let mut request = format!("{}\r\n", signed_head(&body, &framing)).into_bytes();
        request.extend_from_slice(&body);
        request.extend_from_slice(b"x");
        let (response, _) = exchange(&node, &request);
        assert_eq!(response.expect("an answer").status, 400, "{framing}");
    }
    // The same length twice is one length.
    let mut request = signed_head(&body, &format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len()));
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(&body);
    assert_forwarded(&exchange(&node, &request).0.expect("an answer"), &body);
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn an_obsolete_folded_header_line_is_refused() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    let mut request =
        signed_head(&body, &format!("Content-Length: {}\r\nX-Folded: a\r\n b\r\n", body.len())).into_bytes();
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(&body);
    let (response, _) = exchange(&node, &request);
    assert_eq!(response.expect("an answer").status, 400);
    assert_eq!(backend.requests().await, 0);
}

#[tokio::test]
async fn invalid_chunk_sizes_are_refused() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    for bad in ["zz\r\n", "-5\r\n", "fffffffffffffffffffff\r\n", "12c 0\r\n"] {
        let mut request = signed_head(&body, "Transfer-Encoding: chunked\r\n").into_bytes();
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(bad.as_bytes());
        request.extend_from_slice(&body);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
        let (response, _) = exchange(&node, &request);
        assert_eq!(response.map(|r| r.status), Some(400), "chunk size {bad:?}");
    }
    assert_eq!(backend.requests().await, 0);
}

#[tokio::test]
async fn a_chunked_body_with_trailers_is_forwarded_whole_without_them() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    let mut request = signed_head(&body, "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n").into_bytes();
    request.extend_from_slice(b"\r\n");
    let framed = chunked(&body, 128);
    request.extend_from_slice(&framed[..framed.len() - 2]);
    request.extend_from_slice(b"X-Checksum: abc\r\n\r\n");
    let (response, _) = exchange(&node, &request);
    let response = response.expect("an answer");
    assert_forwarded(&response, &body);
    let received = response.header("x-backend-headers").unwrap_or_default();
    assert!(!received.contains("x-checksum") && !received.contains("trailer"), "{received}");
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn an_absolute_form_target_is_forwarded_as_its_path_and_one_that_disagrees_with_host_refused() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    let absolute = |host: &str| {
        let head = signed_head(&body, &format!("Content-Length: {}\r\n", body.len()))
            .replacen(CHAT, &format!("http://{}{CHAT}?trace=1", node.addr), 1)
            .replacen("Host: n", &format!("Host: {host}"), 1);
        let mut request = format!("{head}\r\n").into_bytes();
        request.extend_from_slice(&body);
        request
    };
    let response = exchange(&node, &absolute(&node.addr.to_string())).0.expect("an answer");
    assert_forwarded(&response, &body);
    assert_eq!(response.header("x-backend-path"), Some("/v1/chat/completions?trace=1"));
    // Which of the two names the target would be ambiguous.
    assert_eq!(exchange(&node, &absolute("other.example")).0.expect("an answer").status, 400);
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    let head = signed_head(&body, &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", body.len()));
    let mut connection = RawConnection::open(node.addr);
    connection.send(format!("{head}\r\n").as_bytes()).unwrap();
    assert_eq!(connection.response().expect("leave to send the body").status, 100);
    connection.send(&body).unwrap();
    let response = connection.response().expect("an answer");
    assert_forwarded(&response, &body);
    assert!(!response.header("x-backend-headers").unwrap_or_default().contains("expect"));
    // A body declared too large gets its refusal instead of leave to send it.
    let mut connection = RawConnection::open(node.addr);
    connection.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: n\r\nContent-Length: 999999999\r\nExpect: 100-continue\r\n\r\n").unwrap();
    assert_eq!(connection.response().expect("an answer").status, 413);
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn http_1_0_without_keep_alive_is_answered_and_closed() {
    let (backend, node) = started();
    let body = chat_body(300, false);
    let head = signed_head(&body, &format!("Content-Length: {}\r\n", body.len())).replacen("HTTP/1.1", "HTTP/1.0", 1);
    let mut request = format!("{head}\r\n").into_bytes();
    request.extend_from_slice(&body);
    let (response, mut connection) = exchange(&node, &request);
    assert_forwarded(&response.expect("an answer"), &body);
    assert!(connection.closes_within(Duration::from_secs(5)), "an HTTP/1.0 connection without keep-alive stayed open");
    let (response, mut connection) = exchange(&node, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(response.expect("an answer").status, 200);
    assert!(connection.closes_within(Duration::from_secs(5)));
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn of_two_pipelined_requests_the_first_is_answered_and_the_second_dropped_unforwarded() {
    let (backend, node) = started();
    let first = chat_body(300, false);
    let second = chat_body(400, false);
    let mut both = signed_raw_request(CHAT, &first);
    both.extend_from_slice(&signed_raw_request(CHAT, &second));
    let (response, mut connection) = exchange(&node, &both);
    assert_forwarded(&response.expect("the first answer"), &first);
    // With Pingora's pipelining off, bytes of a next request that came with a request mark the
    // connection for closing after its answer; the caller sends the rest again (RFC 9112 §9.3.2).
    assert!(connection.response().is_none(), "the second request was answered");
    assert_eq!(backend.requests().await, 1, "the second request was forwarded unanswered");
}
