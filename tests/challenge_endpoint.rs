//! ENDPOINT_REACHABLE through the real node: the checks it answers, and the guard that keeps the
//! scheduler out of the operator's network.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The node needs a model to start; no test here asks it for one.
const MODELS: &str = "models:\n  m: {url: \"http://127.0.0.1:9\"}\n";

/// The node's answer to ENDPOINT_REACHABLE with `payload`, as its status and JSON.
async fn check(node: &Node, payload: serde_json::Value) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"type": "ENDPOINT_REACHABLE", "payload": payload});
    let response =
        signed_post(&scheduler_key(), node.url("/challenge"), body.to_string().into_bytes()).send().await.unwrap();
    (response.status().as_u16(), response.json().await.expect("a JSON answer"))
}

/// The answer to a check of `url`, which must be a 200.
async fn reach(node: &Node, url: &str) -> serde_json::Value {
    let (status, answer) = check(node, url.into()).await;
    assert_eq!(status, 200, "{url}: {answer}");
    answer
}

/// `backend`'s URL that redirects to `to`.
fn redirect(backend: &TestBackend, to: &str) -> String {
    format!("{}/redirect?to={}", backend.url(), url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>())
}

fn node_allowing(ranges: &str, extra: &str) -> Node {
    Node::start(NodeFiles::new(MODELS, &format!("challenge:\n  endpointAllow: [{ranges}]\n{extra}")))
}

fn not_allowed() -> serde_json::Value {
    serde_json::json!({"reachable": false, "error": "target not allowed"})
}

#[tokio::test]
async fn an_allowed_endpoint_answers_its_status_and_latency() {
    let backend = TestBackend::start();
    let node = node_allowing("\"127.0.0.0/8\"", "");
    let answer = reach(&node, &format!("{}/status/200", backend.url())).await;
    assert_eq!((answer["reachable"].as_bool(), answer["status"].as_u64()), (Some(true), Some(200)), "{answer}");
    assert!(answer["latencyMs"].as_f64().is_some_and(|ms| ms > 0.0), "{answer}");

    let answer = reach(&node, &format!("{}/status/404", backend.url())).await;
    assert_eq!((answer["reachable"].as_bool(), answer["status"].as_u64()), (Some(false), Some(404)), "{answer}");
    assert!(answer.get("error").is_none(), "{answer}");

    // A redirect status without a Location goes nowhere: it is the answer.
    let answer = reach(&node, &format!("{}/status/301", backend.url())).await;
    assert_eq!((answer["reachable"].as_bool(), answer["status"].as_u64()), (Some(false), Some(301)), "{answer}");
}

#[tokio::test]
async fn redirects_are_followed_up_to_three() {
    let backend = TestBackend::start();
    let node = node_allowing("\"127.0.0.0/8\"", "");
    let end = format!("{}/status/204", backend.url());
    let three = redirect(&backend, &redirect(&backend, &redirect(&backend, &end)));
    let answer = reach(&node, &three).await;
    assert_eq!((answer["reachable"].as_bool(), answer["status"].as_u64()), (Some(true), Some(204)), "{answer}");
    // A relative Location is resolved against the URL that answered it.
    let answer = reach(&node, &redirect(&backend, "/status/203")).await;
    assert_eq!(answer["status"], 203, "{answer}");

    let answer = reach(&node, &redirect(&backend, &three)).await;
    assert_eq!((answer["reachable"].as_bool(), answer["error"].as_str()), (Some(false), Some("too many redirects")));
    // Four hops, two, and four redirects with the fifth hop never fetched.
    assert_eq!(backend.requests().await, 4 + 2 + 4);
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(MODELS, ""));
    let port = backend.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/status/200"),
        format!("http://localhost:{port}/status/200"),
        format!("http://[::1]:{port}/status/200"),
        format!("http://[::ffff:127.0.0.1]:{port}/status/200"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/".into(),
    ] {
        assert_eq!(reach(&node, &url).await, not_allowed(), "{url}");
    }
    assert_eq!(backend.requests().await, 0, "nothing reached the backend");
    // The operator learns why; the scheduler does not.
    let log = node.log();
    assert!(log.lines().any(|l| l.contains("refused localhost at ") && l.contains(" (loopback)")), "{log}");
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_refused() {
    let backend = TestBackend::start();
    let node = node_allowing("\"127.0.0.1/32\"", "");
    for to in ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://127.0.0.2/"] {
        assert_eq!(reach(&node, &redirect(&backend, to)).await, not_allowed(), "{to}");
    }
}

#[tokio::test]
async fn payloads_that_are_not_an_http_url_are_invalid_challenges() {
    let node = Node::start(NodeFiles::new(MODELS, ""));
    for payload in [
        serde_json::json!("http://user:pw@example.com/"),
        serde_json::json!("ftp://example.com/file"),
        serde_json::json!("not a url"),
        serde_json::json!({"url": "https://example.com/"}),
        serde_json::json!(42),
        serde_json::Value::Null,
    ] {
        let (status, answer) = check(&node, payload.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_challenge")), "{payload}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{payload}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("ENDPOINT_REACHABLE"), "{answer}");
    }
    let (_, answer) = check(&node, "ftp://example.com/file".into()).await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("`ftp`"), "{answer}");
}

#[tokio::test]
async fn an_allowed_port_nothing_listens_on_is_a_failed_connection() {
    let node = node_allowing("\"127.0.0.0/8\"", "");
    let answer = reach(&node, &format!("http://127.0.0.1:{}/", free_port())).await;
    assert_eq!((answer["reachable"].as_bool(), answer["error"].as_str()), (Some(false), Some("connection failed")));
    assert!(answer["latencyMs"].is_number(), "{answer}");
}

#[tokio::test]
async fn a_host_that_does_not_resolve_is_a_failed_lookup() {
    let node = Node::start(NodeFiles::new(MODELS, ""));
    // `.invalid` never resolves (RFC 6761).
    let answer = reach(&node, "http://no-such-host.invalid/").await;
    assert_eq!((answer["reachable"].as_bool(), answer["error"].as_str()), (Some(false), Some("dns lookup failed")));
}

#[tokio::test]
async fn a_connect_that_hangs_ends_at_the_connect_timeout() {
    let unanswered = UnansweredListener::new();
    let addr = unanswered.addr;
    let node = node_allowing("\"127.0.0.0/8\"", "  endpointConnectTimeout: 1s\n  endpointTimeout: 10s\n");
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(8), reach(&node, &format!("http://{addr}/")))
        .await
        .expect("an answer well before the 10 s total timeout");
    assert_eq!((answer["reachable"].as_bool(), answer["error"].as_str()), (Some(false), Some("connect timeout")));
    assert!(started.elapsed() >= Duration::from_secs(1), "answered before the connect timeout: {answer}");

    // The total timeout bounds the check as a whole.
    let node = node_allowing("\"127.0.0.0/8\"", "  endpointConnectTimeout: 10s\n  endpointTimeout: 1s\n");
    let answer = tokio::time::timeout(Duration::from_secs(8), reach(&node, &format!("http://{addr}/")))
        .await
        .expect("an answer well before the 10 s connect timeout");
    assert_eq!((answer["reachable"].as_bool(), answer["error"].as_str()), (Some(false), Some("timeout")));
}
