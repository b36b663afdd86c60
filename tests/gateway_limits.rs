//! Limits through the real node: per-gateway request rates and requests in flight
//! (`limits.perGateway`), and the per-address budget of failed authentications
//! (`limits.authFailures`) that refuses a flood before its signatures are checked.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use fxn_node::keys::NodeKey;
use support::*;

/// A chat request signed by `key` with a fresh nonce, sent from `source`.
fn chat_from(node: &Node, key: &NodeKey, source: &str, extra: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = chat_body(256, false);
    let nonce = format!("{:016x}", rand::random::<u64>());
    let headers = fxn_node::auth::sign_request(&key.signing_key, &body, now_unix(), &nonce, false).unwrap();
    let client = reqwest::Client::builder().local_address(source.parse::<IpAddr>().unwrap()).build().unwrap();
    let mut request = client.post(node.url("/v1/chat/completions")).headers(headers).body(body);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request
}

async fn chat(node: &Node, key: &NodeKey) -> reqwest::Response {
    chat_from(node, key, "127.0.0.1", &[]).send().await.expect("request to fxn")
}

/// Sends what `request` builds until it is not refused for want of an in-flight slot (a slot is
/// freed a moment after the caller read its answer), and gives that answer; still refused after
/// 10 s, the slot was never freed.
async fn once_a_slot_is_free(request: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = request().send().await.expect("request to fxn");
        if response.status() != 429 {
            return response;
        }
        let (_, error) = api_error(response).await;
        assert!(Instant::now() < deadline, "the gateway's slot was never freed: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rate_limit_refuses_past_the_burst_and_serves_again_after_refill() {
    let backend = TestBackend::start();
    // One token every 5 s: the burst's two requests cannot have earned a third.
    let node = Node::start_for(&backend.url(), "limits:\n  perGateway: {requestsPerSecond: 0.2, burst: 2}\n");
    for _ in 0..2 {
        assert_eq!(chat(&node, &gateway_key()).await.status(), 200);
    }
    // The refused request's nonce is not spent: the same request is served after the wait.
    let body = chat_body(256, false);
    let headers =
        fxn_node::auth::sign_request(&gateway_key().signing_key, &body, now_unix(), "0123abcd", false).unwrap();
    let send = || gateway_post(&node, "/v1/chat/completions", body.clone()).headers(headers.clone()).send();
    let refused = send().await.unwrap();
    let retry_after: u64 = header(&refused, "retry-after").parse().expect("Retry-After in seconds");
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    let (status, error) = api_error(refused).await;
    assert_eq!((status, error["code"].as_str()), (429, Some("rate_limited")), "{error}");
    assert_eq!(error["type"], "rate_limit_error");
    assert!(error["message"].as_str().unwrap().contains("limits.perGateway"), "{error}");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(send().await.unwrap().status(), 200, "a token was due after Retry-After");
    let scraped =
        scrape_until(&node, |s| value(s, "fxn_rate_limited_total", &[("reason", "gateway_rate")]) >= 1.0).await;
    assert_eq!(value(&scraped, "fxn_rate_limited_total", &[("reason", "gateway_rate")]), 1.0);
    assert_eq!(value(&scraped, "fxn_auth_failures_total", &[]), 0.0, "a refusal is not a failed authentication");
}

#[tokio::test]
async fn one_gateway_at_its_limit_does_not_affect_another() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "limits:\n  perGateway: {requestsPerSecond: 0.1, burst: 1}\n");
    assert_eq!(chat(&node, &gateway_key()).await.status(), 200);
    assert_eq!(error_code(chat(&node, &gateway_key()).await).await, (429, "rate_limited".into()));
    assert_eq!(chat(&node, &second_gateway_key()).await.status(), 200);
    assert_eq!(error_code(chat(&node, &gateway_key()).await).await, (429, "rate_limited".into()));
}

#[tokio::test]
async fn in_flight_limit_counts_slow_requests_per_gateway() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "limits:\n  perGateway: {maxInFlight: 2}\n");
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(chat_from(&node, &gateway_key(), "127.0.0.1", &[("x-test-delay-ms", "3000")]).send()))
        .collect();
    eventually(Duration::from_secs(10), "both slow requests reach the backend", || async {
        backend.requests().await == 2
    })
    .await;
    let refused = chat(&node, &gateway_key()).await;
    assert_eq!(header(&refused, "retry-after"), "1");
    let (status, error) = api_error(refused).await;
    assert_eq!((status, error["code"].as_str()), (429, Some("rate_limited")));
    assert!(error["message"].as_str().unwrap().contains("maxInFlight"), "{error}");
    assert_eq!(chat(&node, &second_gateway_key()).await.status(), 200, "the other gateway has slots of its own");
    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(once_a_slot_is_free(|| chat_from(&node, &gateway_key(), "127.0.0.1", &[])).await.status(), 200);
    let scraped = scrape(&node).await;
    assert_eq!(value(&scraped, "fxn_rate_limited_total", &[("reason", "gateway_in_flight")]), 1.0);
}

#[tokio::test]
async fn slots_are_freed_after_streams_errors_and_callers_that_leave() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "limits:\n  perGateway: {maxInFlight: 1}\n");
    for size in BOTH_PATHS {
        // A stream read to its end.
        let stream = once_a_slot_is_free(|| gateway_post(&node, "/v1/chat/completions", chat_body(size, true))).await;
        assert_eq!(stream.status(), 200);
        assert!(stream.text().await.unwrap().contains("[DONE]"));
        // Errors: the backend's own, a backend that resets, a model nobody serves.
        for (fault, status) in [("status-500", 500), ("reset", 502)] {
            let request =
                || gateway_post(&node, "/v1/chat/completions", chat_body(size, false)).header("x-test-fault", fault);
            assert_eq!(once_a_slot_is_free(request).await.status(), status, "size {size}, {fault}");
        }
        let unknown = br#"{"model":"nobody/serves-this","messages":[]}"#.to_vec();
        let answer = once_a_slot_is_free(|| gateway_post(&node, "/v1/chat/completions", unknown.clone())).await;
        assert_eq!(error_code(answer).await, (404, "model_not_found".into()));
        // Callers that leave in the middle of a long stream, many times over.
        for _ in 0..10 {
            let request = || {
                gateway_post(&node, "/v1/chat/completions", chat_body(size, true))
                    .header("x-test-chunks", "100")
                    .header("x-test-interval-ms", "100")
            };
            let mut stream = once_a_slot_is_free(request).await;
            assert_eq!(stream.status(), 200);
            assert!(stream.chunk().await.unwrap().is_some(), "the first event");
            drop(stream);
        }
    }
    assert_eq!(
        once_a_slot_is_free(|| gateway_post(&node, "/v1/chat/completions", chat_body(512, false))).await.status(),
        200
    );
}

#[tokio::test]
async fn an_address_past_its_failure_budget_is_refused_before_verification() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "limits:\n  authFailures: {maxFailures: 3, window: 60s}\n");
    let attacker = "127.0.0.2";
    let key = gateway_key();
    // One of each unauthenticated failure, from one address.
    let body = chat_body(256, false);
    let signed = |timestamp: i64| {
        let nonce = format!("{:016x}", rand::random::<u64>());
        fxn_node::auth::sign_request(&key.signing_key, &body, timestamp, &nonce, false).unwrap()
    };
    let mut missing = signed(now_unix());
    missing.remove("x-signature");
    let mut malformed = signed(now_unix());
    malformed.insert("x-signature", "zz".parse().unwrap());
    let stale = signed(now_unix() - 3600);
    let other_body = b"{}".to_vec();
    let forged = fxn_node::auth::sign_request(&key.signing_key, &other_body, now_unix(), "f00d", false).unwrap();
    let client = reqwest::Client::builder().local_address(attacker.parse::<IpAddr>().unwrap()).build().unwrap();
    let send = |headers: http::HeaderMap| {
        client.post(node.url("/v1/chat/completions")).headers(headers).body(body.clone()).send()
    };
    for (headers, expected) in [
        (missing, "missing_header"),
        (malformed, "bad_signature_encoding"),
        (stale, "stale_timestamp"),
        (forged.clone(), "invalid_signature"),
    ] {
        assert_eq!(error_code(send(headers).await.unwrap()).await.1, expected);
    }
    // Past the budget even a good signature from that address is refused: nothing is checked.
    let refused = chat_from(&node, &key, attacker, &[]).send().await.unwrap();
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let (status, error) = api_error(refused).await;
    assert_eq!((status, error["code"].as_str()), (429, Some("rate_limited")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("invalid_signature"), "names the last failure: {error}");
    assert_eq!(error_code(send(forged).await.unwrap()).await, (429, "rate_limited".into()));

    // A gateway at another address is served.
    assert_eq!(chat(&node, &key).await.status(), 200);
    let scraped = scrape(&node).await;
    assert_eq!(value(&scraped, "fxn_rate_limited_total", &[("reason", "auth_failures")]), 2.0);
    // The refused forgery was never verified: invalid_signature was counted once, for the first.
    assert_eq!(value(&scraped, "fxn_auth_failures_total", &[("reason", "invalid_signature")]), 1.0);
    assert_eq!(value(&scraped, "fxn_auth_failures_total", &[]), 4.0);
    assert_eq!(backend.requests().await, 1, "only the other address's request reached the backend");
}

#[tokio::test]
async fn the_failure_budget_can_be_turned_off() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "limits:\n  authFailures: {enabled: false, maxFailures: 1}\n");
    let body = chat_body(256, false);
    let forged = fxn_node::auth::sign_request(&gateway_key().signing_key, b"{}", now_unix(), "f00d", false).unwrap();
    for _ in 0..4 {
        let response = gateway_post(&node, "/v1/chat/completions", body.clone()).headers(forged.clone()).send().await;
        assert_eq!(error_code(response.unwrap()).await, (401, "invalid_signature".into()));
    }
}
