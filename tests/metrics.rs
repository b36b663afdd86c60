//! The metrics listener end to end: real traffic through the real node, then its metrics scraped
//! over HTTP and read by an independent parser of the Prometheus text format.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn counters_move_with_traffic_auth_failures_and_challenges() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "5"]);
    let node = Node::start_for(&backend.url(), "");
    let before = scrape(&node).await;
    assert_eq!(value(&before, "fxn_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0, "process metrics are served");
    let chat = [("route", "/v1/chat/completions"), ("model", "fxn/test-model"), ("status", "2xx"), ("role", "gateway")];
    assert_eq!(value(&before, "fxn_requests_total", &chat), 0.0);

    // Two answers, one of them streamed, on the two forwarding paths.
    for (size, stream) in BOTH_PATHS.into_iter().zip([false, true]) {
        let response = gateway_post(&node, "/v1/chat/completions", chat_body(size, stream)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // A model the node does not serve, an unsigned request, a challenge.
    let unknown = br#"{"model":"caller-chosen-name","messages":[]}"#.to_vec();
    assert_eq!(gateway_post(&node, "/v1/chat/completions", unknown).send().await.unwrap().status(), 404);
    let unsigned = reqwest::Client::new().post(node.url("/v1/completions")).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let product = challenge(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": {"size": 8}})).await;
    assert_eq!(product.status(), 200);

    let after = scrape_until(&node, |s| value(s, "fxn_requests_total", &[]) >= 5.0).await;
    assert_eq!(value(&after, "fxn_requests_total", &chat), 2.0);
    let other = [("model", "other"), ("status", "4xx"), ("role", "gateway")];
    assert_eq!(value(&after, "fxn_requests_total", &other), 1.0, "a caller's model name is no label");
    assert!(after.samples.iter().all(|s| s.labels.get("model") != Some("caller-chosen-name")));
    let refused = [("route", "/v1/completions"), ("model", "none"), ("status", "4xx"), ("role", "none")];
    assert_eq!(value(&after, "fxn_requests_total", &refused), 1.0);
    assert_eq!(value(&after, "fxn_auth_failures_total", &[("reason", "missing_header")]), 1.0);
    let answered = [("type", "MATRIX_MULTIPLICATION"), ("outcome", "answered")];
    assert_eq!(value(&after, "fxn_challenges_total", &answered), 1.0);
    assert_eq!(value(&after, "fxn_challenge_matmul_size", &[]), 8.0);
    assert!(value(&after, "fxn_challenge_matmul_gflops", &[("backend", "cpu")]) > 0.0);
    // Three events and `[DONE]` from the one stream.
    assert_eq!(value(&after, "fxn_sse_events_total", &[("entry", "fxn/test-model")]), 4.0);
    let body_bytes = (BOTH_PATHS[0] + BOTH_PATHS[1]) as f64;
    let sent = value(&after, "fxn_request_bytes_total", &[("route", "/v1/chat/completions")]);
    assert!(sent >= body_bytes, "{sent} request bytes counted, {body_bytes} sent in the two answered bodies");
    assert!(value(&after, "fxn_response_bytes_total", &[("entry", "fxn/test-model")]) > 0.0);
    assert_eq!(value(&after, "fxn_requests_in_flight", &[]), 0.0);
    let histogram = after
        .samples
        .iter()
        .find(|s| s.metric == "fxn_upstream_ttfb_seconds" && s.labels.get("entry") == Some("fxn/test-model"));
    match histogram.map(|s| &s.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(total, 2.0, "both answers' time to first byte: {buckets:?}");
        }
        other => panic!("no time-to-first-byte histogram: {other:?}"),
    }
}

#[tokio::test]
async fn the_signed_port_serves_no_metrics() {
    let node = Node::start_for("http://127.0.0.1:9", "");
    let response = reqwest::get(node.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains("fxn_requests_total"));
}
