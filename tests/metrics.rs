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
    let head = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().unwrap();
    let commit = String::from_utf8(head.stdout).unwrap();
    assert_eq!(value(&before, "fxn_build_info", &[("commit", commit.trim())]), 1.0, "the build names its commit");
    assert_eq!(value(&before, "fxn_nonce_store_capacity", &[]), 1_000_000.0, "nonceCache.maxEntries' default");
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
    // The two answered requests, the unknown model and the challenge each used a nonce.
    assert_eq!(value(&after, "fxn_nonce_store_entries", &[]), 4.0);
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

/// A chat request whose one message has `words` words (the test backend's prompt tokens).
fn chat_of_words(words: usize, stream: bool, stream_options: Option<serde_json::Value>) -> Vec<u8> {
    let mut body = json!({"model": "fxn/test-model", "stream": stream,
                          "messages": [{"role": "user", "content": "word ".repeat(words)}]});
    if let Some(options) = stream_options {
        body["stream_options"] = options;
    }
    serde_json::to_vec(&body).unwrap()
}

fn tokens(scrape: &prometheus_parse::Scrape, kind: &str) -> f64 {
    let gateway = format!("{:?}", gateway_key().address);
    value(scrape, "fxn_tokens_total", &[("model", "fxn/test-model"), ("gateway", &gateway), ("kind", kind)])
}

/// Sends `body` with the test backend's `x-test-split-ms` (every event, and a JSON answer, in two
/// pieces 5 ms apart), returning the body the caller received.
async fn split_answer(node: &Node, path: &str, body: Vec<u8>) -> String {
    let response = gateway_post(node, path, body).header("x-test-split-ms", "5").send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn tokens_are_counted_from_answers_and_streams_split_across_pieces() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "5"]);
    let node = Node::start_for(&backend.url(), "");
    // JSON answers, the second on the relay path (its body is past Pingora's retry buffer).
    let relayed_words = BOTH_PATHS[1] / 5 + 1;
    for words in [5, relayed_words] {
        split_answer(&node, "/v1/chat/completions", chat_of_words(words, false, None)).await;
    }
    let embedding = serde_json::to_vec(&json!({"model": "fxn/test-model", "input": "three more words"})).unwrap();
    split_answer(&node, "/v1/embeddings", embedding).await;
    let after_json = scrape_until(&node, |s| value(s, "fxn_requests_total", &[]) >= 3.0).await;
    assert_eq!(tokens(&after_json, "prompt"), (5 + relayed_words + 3) as f64);
    assert_eq!(tokens(&after_json, "completion"), 4.0, "2 per chat answer, none for embeddings");

    // A stream that asks for usage reports it in a last chunk: 7 prompt words, 3 events.
    let with_usage = Some(json!({"include_usage": true}));
    let streamed = split_answer(&node, "/v1/chat/completions", chat_of_words(7, true, with_usage)).await;
    assert!(streamed.contains(r#""completion_tokens":3"#), "{streamed}");
    // One that does not is counted as such; usage.requestStreamUsage is off, so the node asks for none.
    let without = split_answer(&node, "/v1/chat/completions", chat_of_words(4, true, None)).await;
    assert!(!without.contains("completion_tokens"), "{without}");
    let after = scrape_until(&node, |s| value(s, "fxn_requests_total", &[]) >= 5.0).await;
    assert_eq!(tokens(&after, "prompt"), tokens(&after_json, "prompt") + 7.0);
    assert_eq!(tokens(&after, "completion"), tokens(&after_json, "completion") + 3.0);
    assert_eq!(value(&after, "fxn_streams_without_usage_total", &[("entry", "fxn/test-model")]), 1.0);
    assert_eq!(value(&after, "fxn_streams_open", &[]), 0.0);
    let lines = node.request_log_lines("/v1/chat/completions", 4);
    let (with_usage, without) = (&lines[2], &lines[3]);
    let logged = |line| (log_field(line, "prompt_tokens"), log_field(line, "completion_tokens"));
    assert_eq!(logged(with_usage), (Some("7"), Some("3")), "{with_usage}");
    assert_eq!(log_field(with_usage, "events"), Some("5"), "three, usage and [DONE]: {with_usage}");
    assert_eq!(logged(without), (None, None), "{without}");
}

#[tokio::test]
async fn request_stream_usage_asks_every_stream_for_its_usage() {
    let backend = TestBackend::start_with(&["--chunks", "2", "--interval-ms", "5"]);
    let node = Node::start_for(&backend.url(), "usage:\n  requestStreamUsage: true\n");
    // On both forwarding paths; the caller sees the usage chunk the node asked for.
    let relayed_words = BOTH_PATHS[1] / 5 + 1;
    for words in [6, relayed_words] {
        let streamed = split_answer(&node, "/v1/chat/completions", chat_of_words(words, true, None)).await;
        assert!(streamed.contains(&format!(r#""prompt_tokens":{words}"#)), "{streamed}");
    }
    // A caller's own stream_options are left as they are.
    let declined = Some(json!({"include_usage": false}));
    let streamed = split_answer(&node, "/v1/chat/completions", chat_of_words(3, true, declined)).await;
    assert!(!streamed.contains("prompt_tokens"), "{streamed}");
    // A request that does not stream is not touched either: the backend got its bytes unchanged.
    let plain = chat_of_words(2, false, None);
    let response = gateway_post(&node, "/v1/chat/completions", plain.clone()).send().await.unwrap();
    assert_eq!(header(&response, "x-backend-body-sha256"), sha256_hex(&plain));

    let after = scrape_until(&node, |s| value(s, "fxn_requests_total", &[]) >= 4.0).await;
    assert_eq!(tokens(&after, "prompt"), (6 + relayed_words + 2) as f64);
    assert_eq!(tokens(&after, "completion"), 2.0 + 2.0 + 2.0);
    assert_eq!(value(&after, "fxn_streams_without_usage_total", &[("entry", "fxn/test-model")]), 1.0);
}

#[tokio::test]
async fn open_streams_are_counted_while_they_last() {
    let backend = TestBackend::start_with(&["--chunks", "4", "--interval-ms", "400"]);
    let node = Node::start_for(&backend.url(), "");
    let response = gateway_post(&node, "/v1/chat/completions", chat_body(300, true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let during = scrape(&node).await;
    assert_eq!(value(&during, "fxn_streams_open", &[]), 1.0);
    assert_eq!(value(&during, "fxn_requests_in_flight", &[]), 1.0);
    response.text().await.unwrap();
    let after = scrape_until(&node, |s| value(s, "fxn_requests_total", &[]) >= 1.0).await;
    assert_eq!(value(&after, "fxn_streams_open", &[]), 0.0);
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let backend = TestBackend::start();
    let files = NodeFiles::new(&format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url()), "")
        .with_metrics_settings("  enabled: false\n");
    let metrics_port = files.metrics_port;
    let node = Node::start(files);
    let response = gateway_post(&node, "/v1/chat/completions", chat_body(300, false)).send().await.unwrap();
    assert_eq!(response.status(), 200, "the node serves without metrics");
    let listener = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert!(listener.unwrap_err().is_connect(), "no metrics listener");
    assert!(node.log().contains("(metrics off)"), "the start line says so");
}
