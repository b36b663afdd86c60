//! Several backends per model through the real node: how each policy spreads requests, health
//! (passive and active), failover before the first byte, the error event after it, every
//! backend down, and reloading model_backend.yaml while a stream is in flight.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::*;

/// How long anything that polls here may take: health rounds are a second apart.
const WITHIN: Duration = Duration::from_secs(15);

fn entry(backends: &[&TestBackend], settings: &str) -> String {
    let listed: Vec<String> = backends.iter().map(|b| format!("      - url: \"{}\"\n", b.url())).collect();
    format!("models:\n  \"fxn/test-model\":\n{settings}    backends:\n{}", listed.concat())
}

async fn control(backend: &TestBackend, settings: serde_json::Value) {
    let response = reqwest::Client::new().post(format!("{}/control", backend.url())).json(&settings).send().await;
    assert!(response.expect("the backend's control").status().is_success());
}

/// Sends a chat request and returns its status and the backend that answered (`x-backend-listen`).
async fn chat(node: &Node, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
    let mut request = gateway_post(node, "/v1/chat/completions", body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request to fxn");
    let served_by = header(&response, "x-backend-listen").to_string();
    (response.status().as_u16(), served_by)
}

#[tokio::test]
async fn round_robin_follows_the_weights() {
    let (a, b) = (TestBackend::start(), TestBackend::start());
    let models = format!(
        "models:\n  \"fxn/test-model\":\n    policy: round_robin\n    backends:\n      - {{url: \"{}\", weight: 1}}\n      - {{url: \"{}\", weight: 3}}\n",
        a.url(),
        b.url()
    );
    let node = Node::start(NodeFiles::new(&models, ""));
    for _ in 0..40 {
        assert_eq!(chat(&node, &[], chat_body(200, false)).await.0, 200);
    }
    assert_eq!((a.requests().await, b.requests().await), (10, 30));
}

#[tokio::test]
async fn least_requests_sends_less_to_a_slow_backend() {
    let (slow, fast) = (TestBackend::start(), TestBackend::start());
    control(&slow, json!({"delayMs": 400})).await;
    let node = Node::start(NodeFiles::new(&entry(&[&slow, &fast], ""), ""));
    // Eight callers at once: requests held by the slow backend steer the next ones away from it.
    let callers = (0..8).map(|_| async {
        for _ in 0..6 {
            assert_eq!(chat(&node, &[], chat_body(200, false)).await.0, 200);
        }
    });
    futures_util::future::join_all(callers).await;
    let (slow_count, fast_count) = (slow.requests().await, fast.requests().await);
    assert_eq!(slow_count + fast_count, 48);
    // Taking turns would give each 24.
    assert!(fast_count > 3 * slow_count, "slow {slow_count}, fast {fast_count}");
}

#[tokio::test]
async fn prefix_affinity_keeps_a_conversation_on_one_backend_and_spreads_others() {
    let backends = [TestBackend::start(), TestBackend::start(), TestBackend::start()];
    let all: Vec<&TestBackend> = backends.iter().collect();
    let node = Node::start(NodeFiles::new(&entry(&all, "    policy: prefix_affinity\n"), ""));
    // A session id keeps its requests on one backend.
    let mut homes = HashMap::new();
    for session in 0..24 {
        let session = format!("conversation-{session}");
        for _ in 0..3 {
            let (status, served_by) = chat(&node, &[("x-session-id", &session)], chat_body(200, false)).await;
            assert_eq!(status, 200);
            let home = homes.entry(session.clone()).or_insert(served_by.clone());
            assert_eq!(*home, served_by, "{session} moved");
        }
    }
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert_eq!(distinct.len(), 3, "24 sessions on {distinct:?}");
    // Without one, the same opening messages go to the same backend.
    let first = chat(&node, &[], chat_body(300, false)).await.1;
    for _ in 0..5 {
        assert_eq!(chat(&node, &[], chat_body(300, false)).await.1, first);
    }
}

#[tokio::test]
async fn prefix_affinity_spills_over_a_backend_past_its_bounded_load() {
    let (a, b) = (TestBackend::start(), TestBackend::start());
    let settings = "    policy: prefix_affinity\n    affinity: {load_factor: 1.25}\n";
    let node = Node::start(NodeFiles::new(&entry(&[&a, &b], settings), ""));
    let session = [("x-session-id", "one-hot-conversation"), ("x-test-chunks", "40"), ("x-test-interval-ms", "50")];
    // Two long streams of the session open on its home backend…
    let mut held = Vec::new();
    for _ in 0..2 {
        let response = gateway_post(&node, "/v1/chat/completions", chat_body(200, true))
            .headers(session.iter().map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap())).collect())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    let home = header(&held[0], "x-backend-listen").to_string();
    assert_eq!(header(&held[1], "x-backend-listen"), home);
    // …so that it holds more than 1.25 times the mean: the next request of the session goes to the other.
    let (status, served_by) = chat(&node, &session[..1], chat_body(200, false)).await;
    assert_eq!(status, 200);
    assert_ne!(served_by, home);
    drop(held);
}

#[tokio::test]
async fn backend_load_prefers_the_backend_whose_gauges_say_it_is_idle() {
    let (busy, idle) = (TestBackend::start(), TestBackend::start());
    control(&busy, json!({"waiting": 40, "running": 8})).await;
    let settings = "    policy: backend_load\n    health: {interval: 1s}\n";
    let node = Node::start(NodeFiles::new(&entry(&[&busy, &idle], settings), ""));
    // The first round reads both pages as the node starts.
    eventually(WITHIN, "requests go to the idle backend", || async {
        chat(&node, &[], chat_body(200, false)).await.1 == idle.addr.to_string()
    })
    .await;
    for _ in 0..10 {
        assert_eq!(chat(&node, &[], chat_body(200, false)).await, (200, idle.addr.to_string()));
    }
    // The gauges turn: within a round or two, requests follow them.
    control(&busy, json!({"waiting": 0, "running": 0})).await;
    control(&idle, json!({"waiting": 30, "running": 8})).await;
    eventually(WITHIN, "requests follow the reported load", || async {
        chat(&node, &[], chat_body(200, false)).await.1 == busy.addr.to_string()
    })
    .await;
    for _ in 0..10 {
        assert_eq!(chat(&node, &[], chat_body(200, false)).await, (200, busy.addr.to_string()));
    }
}

#[tokio::test]
async fn a_dead_backend_is_failed_over_and_then_left_out() {
    let alive = TestBackend::start();
    let dead = TestBackend::start();
    let dead_url = dead.url();
    let models = format!(
        "models:\n  \"fxn/test-model\":\n    policy: round_robin\n    outlier: {{consecutive_failures: 2, cooldown: 1m}}\n    backends:\n      - url: \"{}\"\n      - url: \"{dead_url}\"\n",
        alive.url()
    );
    let node = Node::start(NodeFiles::new(&models, ""));
    drop(dead);
    // Every request succeeds: those sent to the dead backend fail to connect and go to the live one.
    for size in BOTH_PATHS {
        for _ in 0..6 {
            assert_eq!(chat(&node, &[], chat_body(size, false)).await.0, 200);
        }
    }
    let scraped = scrape(&node).await;
    let dead_labels = [("entry", "fxn/test-model"), ("backend", &format!("{dead_url}/")[..])];
    // Two failures took it out: no request reached it after that.
    assert_eq!(value(&scraped, "fxn_backend_failures_total", &dead_labels), 2.0);
    assert_eq!(value(&scraped, "fxn_backend_ejections_total", &dead_labels), 1.0);
    assert_eq!(value(&scraped, "fxn_failovers_total", &[("entry", "fxn/test-model")]), 2.0);
    assert_eq!(value(&scraped, "fxn_backend_up", &dead_labels), 0.0);
    assert_eq!(alive.requests().await, 12);
}

#[tokio::test]
async fn an_unavailable_answer_is_tried_on_another_backend() {
    let (overloaded, fine) = (TestBackend::start(), TestBackend::start());
    control(&overloaded, json!({"failStatus": 503})).await;
    let models = format!(
        "models:\n  \"fxn/test-model\":\n    policy: round_robin\n    backends:\n      - url: \"{}\"\n      - url: \"{}\"\n",
        overloaded.url(),
        fine.url()
    );
    let node = Node::start(NodeFiles::new(&models, ""));
    for size in BOTH_PATHS {
        for _ in 0..2 {
            let (status, served_by) = chat(&node, &[], chat_body(size, false)).await;
            assert_eq!((status, served_by), (200, fine.addr.to_string()));
        }
    }
    // It was asked, and answered 503, before the request went on.
    assert!(overloaded.requests().await >= 2);
    // A 500 is the caller's to see: not retried, and counted against the backend.
    control(&overloaded, json!({"failStatus": 500})).await;
    control(&fine, json!({"failStatus": 500})).await;
    assert_eq!(chat(&node, &[], chat_body(200, false)).await.0, 500);
}

#[tokio::test]
async fn every_backend_down_is_answered_503_at_once() {
    let (a, b) = (TestBackend::start(), TestBackend::start());
    let settings = "    outlier: {consecutive_failures: 1, cooldown: 30s}\n";
    let node = Node::start(NodeFiles::new(&entry(&[&a, &b], settings), ""));
    drop((a, b));
    // The first request finds both dead, one attempt each.
    let (status, code) =
        error_code(gateway_post(&node, "/v1/chat/completions", chat_body(200, false)).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (502, "backend_unavailable"));
    let response = gateway_post(&node, "/v1/chat/completions", chat_body(200, false)).send().await.unwrap();
    let retry_after: u64 = header(&response, "retry-after").parse().expect("a Retry-After in seconds");
    assert!((1..=30).contains(&retry_after), "Retry-After: {retry_after}");
    let (status, error) = api_error(response).await;
    assert_eq!((status, error["code"].as_str()), (503, Some("backend_unavailable")));
    assert!(error["message"].as_str().unwrap().contains("every backend"), "{error}");
    // The model list is the configuration's, whatever the backends' state.
    let models =
        signed_request(&gateway_key(), reqwest::Method::GET, node.url("/v1/models"), Vec::new()).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let list: serde_json::Value = models.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], "fxn/test-model");
}

#[tokio::test]
async fn active_checks_take_a_failing_backend_out_and_bring_it_back() {
    let (a, b) = (TestBackend::start(), TestBackend::start());
    let settings = "    policy: round_robin\n    health: {interval: 1s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1}\n";
    let node = Node::start(NodeFiles::new(&entry(&[&a, &b], settings), ""));
    let b_labels = [("entry", "fxn/test-model"), ("backend", &format!("{}/", b.url())[..])];
    control(&b, json!({"health": 503})).await;
    eventually(WITHIN, "the failing check marks the backend down", || async {
        value(&scrape(&node).await, "fxn_backend_up", &b_labels) == 0.0
    })
    .await;
    let before = b.requests().await;
    for _ in 0..6 {
        assert_eq!(chat(&node, &[], chat_body(200, false)).await, (200, a.addr.to_string()));
    }
    assert_eq!(b.requests().await, before);
    control(&b, json!({"health": 200})).await;
    eventually(WITHIN, "a passing check brings it back", || async {
        value(&scrape(&node).await, "fxn_backend_up", &b_labels) == 1.0
    })
    .await;
    let served: std::collections::HashSet<String> = futures_util::stream::iter(0..4)
        .then(|_| chat(&node, &[], chat_body(200, false)))
        .map(|(_, by)| by)
        .collect()
        .await;
    assert!(served.contains(&b.addr.to_string()), "{served:?}");
    assert!(node.log().contains("is down: GET"), "the down backend is logged");
}

#[tokio::test]
async fn a_stream_failing_after_its_header_ends_with_an_error_event() {
    let backend = TestBackend::start_with(&["--chunks", "4", "--interval-ms", "20"]);
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let response = chat_with_fault(&node, "close", size, true).await;
        assert_eq!(response.status(), 200);
        let mut response = response;
        let mut received = Vec::new();
        // The body ends in a transport error, after the event.
        while let Ok(Some(chunk)) = response.chunk().await {
            received.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&received).to_string();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
        assert!(events.len() >= 2, "{text}");
        let last: serde_json::Value =
            serde_json::from_str(events.last().unwrap().trim().strip_prefix("data: ").expect("a data event")).unwrap();
        assert_eq!(last["error"]["code"], "backend_unavailable", "{text}");
        assert!(last["error"]["request_id"].is_string());
    }
}

#[tokio::test]
async fn reload_swaps_the_backends_and_keeps_streams_and_refuses_bad_files() {
    let (old, new) = (TestBackend::start(), TestBackend::start());
    let node = Node::start_for(&old.url(), "");
    let stream = gateway_post(&node, "/v1/chat/completions", chat_body(200, true))
        .header("x-test-chunks", "30")
        .header("x-test-interval-ms", "50")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&stream, "x-backend-listen"), old.addr.to_string());
    let model_backend = node.files.path("model_backend.yaml");
    std::fs::write(&model_backend, format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", new.url())).unwrap();
    let conf = node.files.path("fxn.yaml");
    let (model_backend, conf) = (model_backend.display().to_string(), conf.display().to_string());
    let (code, out, err) = run_fxn(&["reload", "--model-backend", &model_backend, "-c", &conf], node.files.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    eventually(WITHIN, "the node logs the reload", || async { node.log().contains("reloaded ") }).await;
    assert_eq!(chat(&node, &[], chat_body(200, false)).await, (200, new.addr.to_string()));
    // The stream begun before goes on with its backend to its end.
    let text = String::from_utf8(stream.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(text.matches("\"chat.completion.chunk\"").count(), 30);

    // A bad file is refused before the node is signalled; signalled anyway, the node keeps its table.
    std::fs::write(node.files.path("model_backend.yaml"), "models:\n  \"fxn/test-model\": {url: \"ftp://x\"}\n")
        .unwrap();
    let (code, _, err) = run_fxn(&["reload", "--model-backend", &model_backend, "-c", &conf], node.files.dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("not asked to reload") && err.contains("url"), "{err}");
    node.process.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(WITHIN, "the node logs the refused file", || async { node.log().contains("was not reloaded") }).await;
    assert_eq!(chat(&node, &[], chat_body(200, false)).await, (200, new.addr.to_string()));
}
