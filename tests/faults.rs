//! What callers see when a backend fails, and that the node survives it.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test]
async fn backend_error_status_and_body_pass_through_unchanged() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let response = chat_with_fault(&node, "status-500", size, false).await;
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["message"], "injected backend failure", "size {size}");
    }
}

#[tokio::test]
async fn refused_connection_is_a_502() {
    let node = Node::start_for(&format!("http://127.0.0.1:{}", free_port()), "");
    for size in BOTH_PATHS {
        assert_eq!(
            error_code(chat_with_fault(&node, "", size, false).await).await,
            (502, "backend_unavailable".into())
        );
    }
}

#[tokio::test]
async fn unresolvable_backend_is_a_502_not_a_crash() {
    let node = Node::start_for("http://backend.invalid:8000", "");
    assert_eq!(error_code(chat_with_fault(&node, "", 512, false).await).await, (502, "backend_unavailable".into()));
    assert_eq!(reqwest::get(node.url("/health")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn hanging_backend_is_a_504_after_the_read_timeout() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "proxy:\n  readTimeout: 1s\n");
    for size in BOTH_PATHS {
        let answered = tokio::time::timeout(Duration::from_secs(10), chat_with_fault(&node, "hang", size, false))
            .await
            .unwrap_or_else(|_| panic!("size {size}: no answer 10 s after a 1 s read timeout"));
        assert_eq!(error_code(answered).await, (504, "backend_timeout".into()));
    }
}

#[tokio::test]
async fn reset_connection_is_a_502() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let requests_before = backend.requests().await;
        assert_eq!(
            error_code(chat_with_fault(&node, "reset", size, false).await).await,
            (502, "backend_unavailable".into())
        );
        // Reset on a fresh connection, the request may have run: it is not sent again.
        let requests_after = backend.requests().await;
        assert_eq!(requests_after - requests_before, 1, "size {size}: retried after a reset on a fresh connection");
    }
}

#[tokio::test]
async fn pooled_connection_the_backend_dropped_is_retried_on_a_fresh_one_with_the_whole_body() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let warm = chat_with_fault(&node, "", size, false).await;
        assert_eq!(warm.status(), 200, "size {size}");
        let pooled = header(&warm, "x-backend-connection").to_string();
        let requests_before = backend.requests().await;

        let response = chat_with_fault(&node, "reset-if-reused", size, false).await;
        assert_eq!(response.status(), 200, "size {size}: {}", node.log());
        assert_ne!(header(&response, "x-backend-connection"), pooled, "size {size}: retried on the pooled connection");
        let sent = chat_body(size, false);
        assert_eq!(header(&response, "x-backend-body-sha256"), sha256_hex(&sent), "size {size}");
        // One attempt on the pooled connection, which the backend reset, and one on a fresh one.
        let requests_after = backend.requests().await;
        assert_eq!(requests_after - requests_before, 2, "size {size}");
    }
}

#[tokio::test]
async fn stream_cut_by_the_backend_ends_the_callers_stream_and_the_node_carries_on() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let response = chat_with_fault(&node, "close", size, true).await;
        assert_eq!(response.status(), 200);
        let (received, outcome) = read_to_end(response).await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.contains("tok0"), "the first event arrives: {text}");
        assert!(!text.contains("[DONE]"), "a cut stream must not look complete");
        assert!(text.contains(r#""code":"backend_unavailable""#), "an error event says why: {text}");
        assert_eq!(outcome, "error", "the caller must see the stream was cut");
    }
    let ok = chat_with_fault(&node, "", 512, false).await;
    assert_eq!(ok.status(), 200);
}

/// Reads `response` to its end: what arrived, and whether it ended cleanly.
async fn read_to_end(mut response: reqwest::Response) -> (Vec<u8>, &'static str) {
    let mut received = Vec::new();
    let outcome = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break "clean end",
            Err(_) => break "error",
        }
    };
    (received, outcome)
}

#[tokio::test]
async fn backend_stalling_after_the_first_token_is_cut_off_at_the_read_timeout() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "proxy:\n  readTimeout: 1s\n");
    for size in BOTH_PATHS {
        for stream in [true, false] {
            let started = Instant::now();
            let response = chat_with_fault(&node, "stall-after-first", size, stream).await;
            assert_eq!(response.status(), 200, "size {size}, stream {stream}");
            let (received, outcome) = tokio::time::timeout(Duration::from_secs(10), read_to_end(response))
                .await
                .unwrap_or_else(|_| panic!("size {size}, stream {stream}: still open 10 s after a 1 s read timeout"));
            let waited = started.elapsed();
            assert!(!received.is_empty(), "size {size}, stream {stream}: the first piece arrives");
            assert_eq!(outcome, "error", "size {size}, stream {stream}: a stalled response must not look complete");
            assert!(waited >= Duration::from_secs(1), "size {size}, stream {stream}: cut after {waited:?}");
        }
    }
    assert_eq!(chat_with_fault(&node, "", 512, false).await.status(), 200, "the node carries on");
}

#[tokio::test]
async fn backend_that_never_accepts_is_a_502_after_the_connect_timeout() {
    let unanswered = UnansweredListener::new();
    let addr = unanswered.addr;
    let node = Node::start_for(&format!("http://{addr}"), "proxy:\n  connectTimeout: 1s\n");
    for size in BOTH_PATHS {
        let started = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(10), chat_with_fault(&node, "", size, false))
            .await
            .unwrap_or_else(|_| panic!("size {size}: no answer 10 s after a 1 s connect timeout"));
        assert_eq!(error_code(answered).await, (502, "backend_unavailable".into()), "size {size}");
        assert!(started.elapsed() >= Duration::from_secs(1), "size {size}: answered before the timeout");
    }
    let lines = node.request_log_lines("/v1/chat/completions", 2);
    assert!(lines.iter().all(|line| line.contains("error=ConnectTimedout")), "{lines:?}");
}

/// Every fault a backend or a caller can cause, one after another on both forwarding paths,
/// while a healthy stream runs beside them: each gets a prompt, clear answer, the healthy stream
/// arrives whole, and the node's open files and memory come back to where they were.
#[tokio::test]
async fn faults_leave_the_node_as_it_was_and_other_requests_untouched() {
    const TEN_MIB: usize = 10 << 20;
    let backend = TestBackend::start();
    // Long enough that a busy machine does not cut the healthy stream; short enough for the hangs.
    let node = Node::start_for(&backend.url(), "proxy:\n  readTimeout: 3s\n");
    // Warm what is made once: pooled connections, the allocator's arenas, lazily built state.
    for size in BOTH_PATHS {
        for stream in [false, true] {
            assert_eq!(read_to_end(chat_with_fault(&node, "", size, stream).await).await.1, "clean end");
        }
    }
    let (fds_before, rss_before) = (node.open_fds(), node.rss_kib());

    let healthy = gateway_post(&node, "/v1/chat/completions", chat_body(512, true))
        .header("x-test-chunks", "500")
        .header("x-test-interval-ms", "60")
        .send();
    let healthy = tokio::spawn(async move { read_to_end(healthy.await.expect("request to fxn")).await });

    for size in BOTH_PATHS {
        for (fault, expected) in [
            ("malformed", (502, "backend_unavailable")),
            ("reset", (502, "backend_unavailable")),
            ("hang", (504, "backend_timeout")),
        ] {
            let answered = tokio::time::timeout(Duration::from_secs(10), chat_with_fault(&node, fault, size, false))
                .await
                .unwrap_or_else(|_| panic!("size {size}, fault {fault}: no answer within 10 s"));
            assert_eq!(error_code(answered).await, (expected.0, expected.1.into()), "size {size}, fault {fault}");
        }
        for (fault, stream) in [("close", true), ("stall-after-first", true), ("stall-after-first", false)] {
            let cut = chat_with_fault(&node, fault, size, stream).await;
            let (received, outcome) = tokio::time::timeout(Duration::from_secs(10), read_to_end(cut))
                .await
                .unwrap_or_else(|_| panic!("size {size}, fault {fault}: still open after 10 s"));
            assert_eq!(outcome, "error", "size {size}, fault {fault}: a cut answer must not look complete");
            assert!(!received.is_empty(), "size {size}, fault {fault}: the first piece arrives");
        }

        // A 10 MiB answer arrives whole.
        let large = gateway_post(&node, "/v1/chat/completions", chat_body(size, false))
            .header("x-test-response-bytes", TEN_MIB.to_string())
            .send()
            .await
            .expect("request to fxn");
        assert_eq!(large.status(), 200, "size {size}: {}", node.log());
        let answer: serde_json::Value = large.json().await.expect("a whole JSON answer");
        let content = answer["choices"][0]["message"]["content"].as_str().map(str::len);
        assert_eq!(content, Some(TEN_MIB), "size {size}");

        // An endless stream the caller leaves after a few events: the backend's is cancelled too.
        let cancelled_before = backend.stats().await["cancelled_streams"].as_u64().unwrap();
        let mut endless = gateway_post(&node, "/v1/chat/completions", chat_body(size, true))
            .header("x-test-chunks", u32::MAX.to_string())
            .header("x-test-interval-ms", "1")
            .send()
            .await
            .expect("request to fxn");
        for _ in 0..3 {
            assert!(endless.chunk().await.expect("events of the endless stream").is_some(), "size {size}");
        }
        drop(endless);
        let mut waited = 0;
        while backend.stats().await["cancelled_streams"].as_u64().unwrap() == cancelled_before {
            assert!(waited < 100, "size {size}: the backend still streams 10 s after the caller left");
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }

        // A caller that stops reading a large answer: the node holds a bounded part of it, not
        // the whole, while it waits.
        let unread = gateway_post(&node, "/v1/chat/completions", chat_body(size, false))
            .header("x-test-response-bytes", (128 << 20).to_string())
            .send()
            .await
            .expect("request to fxn");
        assert_eq!(unread.status(), 200, "size {size}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held_kib = node.rss_kib().saturating_sub(rss_before);
        assert!(held_kib < 16 << 10, "size {size}: the node grew by {held_kib} KiB for a 128 MiB answer left unread");
        drop(unread);
    }

    let (received, outcome) = healthy.await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert_eq!(outcome, "clean end", "the healthy stream beside the faults: {text}");
    assert!(text.contains("tok499 ") && text.ends_with("data: [DONE]\n\n"), "the healthy stream whole: {text}");
    assert_eq!(read_to_end(chat_with_fault(&node, "", 512, true).await).await.1, "clean end", "the node serves on");

    // Connections the faults closed are closed on the node's side too; what may remain beside
    // the warm state is a few more idle pooled backend connections.
    let mut fds_after = node.open_fds();
    for _ in 0..50 {
        if fds_after <= fds_before + 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = node.open_fds();
    }
    assert!(fds_after <= fds_before + 4, "open files {fds_before} before the faults, {fds_after} after");
    let grown_kib = node.rss_kib().saturating_sub(rss_before);
    assert!(grown_kib < 16 << 10, "the node kept {grown_kib} KiB after the faults ended");
}
