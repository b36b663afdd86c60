//! What callers see when a backend fails, and that the node survives it.

mod support;

use support::*;

async fn chat(node: &Node, fault: &str, size: usize, stream: bool) -> reqwest::Response {
    gateway_post(node, "/v1/chat/completions", chat_body(size, stream))
        .header("x-test-fault", fault)
        .send()
        .await
        .expect("request to fxn")
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("JSON error");
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

const SIZES: [usize; 2] = [512, 64 * 1024 + 1];

#[tokio::test]
async fn backend_error_status_and_body_pass_through_unchanged() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in SIZES {
        let response = chat(&node, "status-500", size, false).await;
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["message"], "injected backend failure", "size {size}");
    }
}

#[tokio::test]
async fn refused_connection_is_a_502() {
    let node = Node::start_for(&format!("http://127.0.0.1:{}", free_port()), "");
    for size in SIZES {
        assert_eq!(error_code(chat(&node, "", size, false).await).await, (502, "backend_unavailable".into()));
    }
}

#[tokio::test]
async fn unresolvable_backend_is_a_502_not_a_crash() {
    let node = Node::start_for("http://backend.invalid:8000", "");
    assert_eq!(error_code(chat(&node, "", 512, false).await).await, (502, "backend_unavailable".into()));
    assert_eq!(reqwest::get(node.url("/health")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn hanging_backend_is_a_504_after_the_read_timeout() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "proxy:\n  readTimeout: 1s\n");
    for size in SIZES {
        assert_eq!(error_code(chat(&node, "hang", size, false).await).await, (504, "backend_timeout".into()));
    }
}

#[tokio::test]
async fn reset_connection_is_a_502() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in SIZES {
        assert_eq!(error_code(chat(&node, "reset", size, false).await).await, (502, "backend_unavailable".into()));
    }
}

#[tokio::test]
async fn pooled_connection_the_backend_dropped_is_retried_on_a_fresh_one_with_the_whole_body() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in SIZES {
        let warm = chat(&node, "", size, false).await;
        assert_eq!(warm.status(), 200, "size {size}");
        let pooled = header(&warm, "x-backend-connection").to_string();
        let requests_before = backend.stats().await["requests"].as_u64().unwrap();

        let response = chat(&node, "reset-if-reused", size, false).await;
        assert_eq!(response.status(), 200, "size {size}: {}", node.log());
        assert_ne!(header(&response, "x-backend-connection"), pooled, "size {size}: retried on the pooled connection");
        let sent = chat_body(size, false);
        assert_eq!(header(&response, "x-backend-body-sha256"), sha256_hex(&sent), "size {size}");
        // One attempt on the pooled connection, which the backend reset, and one on a fresh one.
        let requests_after = backend.stats().await["requests"].as_u64().unwrap();
        assert_eq!(requests_after - requests_before, 2, "size {size}");
    }
}

#[tokio::test]
async fn stream_cut_by_the_backend_ends_the_callers_stream_and_the_node_carries_on() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in SIZES {
        let mut response = chat(&node, "close", size, true).await;
        assert_eq!(response.status(), 200);
        let mut received = Vec::new();
        let outcome = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => received.extend_from_slice(&chunk),
                Ok(None) => break "clean end",
                Err(_) => break "error",
            }
        };
        let text = String::from_utf8_lossy(&received);
        assert!(text.contains("tok0"), "the first event arrives: {text}");
        assert!(!text.contains("[DONE]"), "a cut stream must not look complete");
        assert_eq!(outcome, "error", "the caller must see the stream was cut");
    }
    let ok = chat(&node, "", 512, false).await;
    assert_eq!(ok.status(), 200);
}
