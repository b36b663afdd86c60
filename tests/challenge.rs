//! `/challenge` end to end: the scheduler's signed requests through the real node, the answers
//! checked by independent implementations where there is one.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;

use serde_json::json;
use support::*;

const NO_BACKEND: &str = "http://127.0.0.1:9";
/// A model_backend.yaml for tests that reach no backend.
const NO_MODELS: &str = "models:\n  m: {url: \"http://127.0.0.1:9\"}\n";

#[tokio::test]
async fn malformed_and_unknown_challenges_say_what_is_expected() {
    let node = Node::start_for(NO_BACKEND, "");
    let types = "IDENTITY, MATRIX_MULTIPLICATION, ENDPOINT_REACHABLE, PROXY";
    for (body, code) in [
        (b"{\"type\": \"IDENTITY\"".to_vec(), "invalid_challenge"),
        (br#"{"payload": {}}"#.to_vec(), "invalid_challenge"),
        (br#"{"type": 5}"#.to_vec(), "invalid_challenge"),
        (br#"["IDENTITY"]"#.to_vec(), "invalid_challenge"),
        (br#"{"type": "DANCE", "payload": {}}"#.to_vec(), "unknown_challenge_type"),
        (br#"{"type": "identity"}"#.to_vec(), "unknown_challenge_type"),
    ] {
        let response = signed_post(&scheduler_key(), node.url("/challenge"), body.clone()).send().await.unwrap();
        let (status, error) = api_error(response).await;
        assert_eq!((status, error["code"].as_str()), (400, Some(code)), "{}", String::from_utf8_lossy(&body));
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(types), "the accepted types are named: {message}");
    }
}

#[tokio::test]
async fn identity_is_signed_as_the_network_checks_it() {
    let key = fxn_node::keys::NodeKey::generate();
    let files = NodeFiles::new(NO_MODELS, "").with_node_key(&key).with_node_settings("  publicIp: \"203.0.113.7\"\n");
    let node = Node::start(files);
    let response = challenge(&node, json!({"type": "IDENTITY", "payload": {}})).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let keys: Vec<&str> = answer.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["gpuStats", "ipAddress", "publicKey", "signature"]);
    assert_eq!(answer["publicKey"], key.checksummed_address());
    assert_eq!(answer["ipAddress"], "203.0.113.7");
    // This machine has no NVIDIA driver: the stats are null, and the answer is still a success.
    assert!(answer["gpuStats"].is_null(), "{answer}");
    let signature = answer["signature"].as_str().unwrap();
    assert_eq!(signature.len(), 88, "standard padded base64 of 65 bytes");
    let recovered = python(&["identity_check.py", "recover", &key.public_key_hex(), "203.0.113.7", signature]);
    assert_eq!(recovered.trim(), key.checksummed_address(), "eth-keys recovers the node's address");
    let private_key = hex::encode(key.signing_key.to_bytes());
    let independent = python(&["identity_check.py", "sign", &private_key, "203.0.113.7"]);
    assert_eq!(independent.trim(), signature, "eth-keys signs the same bytes (RFC 6979)");
}

#[test]
fn the_protocol_identity_vector_reproduces_in_an_independent_signer() {
    let private_key = "19166bfe33bcf187f79f5a44ee58b339d2f8355b31777da89fa08cd9869f48d9";
    let expected = "BJ5s7SscpgmqdJFV3u54U/SeGp6ixjED0tPORenLcH0vnMPb3xTRIQXNK8oHrB7nu58M4FXTgfgrvpbvBaDWBAA=";
    assert_eq!(python(&["identity_check.py", "sign", private_key, "203.0.113.7"]).trim(), expected);
    let key = fxn_node::keys::NodeKey::from_private_key_hex(private_key).unwrap();
    assert_eq!(fxn_node::challenge::identity_signature(&key, "203.0.113.7"), expected);
}

/// Answers every connection with `body` as a plain-text HTTP response, `times` times.
fn serve_text(body: &'static str, times: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ip", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(times) {
            let mut stream = stream.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request);
            let response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(response.as_bytes());
        }
    });
    url
}

#[tokio::test]
async fn the_public_ip_is_looked_up_once_when_not_configured() {
    let key = fxn_node::keys::NodeKey::generate();
    // The lookup service answers only once: the second IDENTITY must use the cached answer.
    let url = serve_text("198.51.100.9\n", 1);
    let files =
        NodeFiles::new(NO_MODELS, "").with_node_key(&key).with_node_settings(&format!("  publicIpUrl: \"{url}\"\n"));
    let node = Node::start(files);
    for _ in 0..2 {
        let answer: serde_json::Value = challenge(&node, json!({"type": "IDENTITY"})).await.json().await.unwrap();
        assert_eq!(answer["ipAddress"], "198.51.100.9", "{answer}");
        let signature = answer["signature"].as_str().unwrap();
        let recovered = python(&["identity_check.py", "recover", &key.public_key_hex(), "198.51.100.9", signature]);
        assert_eq!(recovered.trim(), key.checksummed_address());
    }
    // A service that answers no address: an empty ipAddress, signed as such, not a failure.
    let files = NodeFiles::new(NO_MODELS, "")
        .with_node_key(&key)
        .with_node_settings(&format!("  publicIpUrl: \"{}\"\n", serve_text("<html>busy</html>", 1)));
    let node = Node::start(files);
    let answer: serde_json::Value = challenge(&node, json!({"type": "IDENTITY"})).await.json().await.unwrap();
    assert_eq!(answer["ipAddress"], "", "{answer}");
    let recovered =
        python(&["identity_check.py", "recover", &key.public_key_hex(), "", answer["signature"].as_str().unwrap()]);
    assert_eq!(recovered.trim(), key.checksummed_address());
}

#[tokio::test]
async fn identity_without_a_node_key_says_how_to_make_one() {
    let node = Node::start_for(NO_BACKEND, "");
    let (status, error) = api_error(challenge(&node, json!({"type": "IDENTITY"})).await).await;
    assert_eq!((status, error["code"].as_str()), (500, Some("node_key_not_configured")));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("node.keyFile") && message.contains("fxn accounts new"), "{message}");
}

#[tokio::test]
async fn proxy_streams_a_completion_through_the_models_route() {
    let backend = TestBackend::start_with(&["--chunks", "4", "--interval-ms", "20"]);
    let models = format!(
        "models:\n  \"fxn/test-model\":\n    url: \"{}\"\n    alias: \"served-name\"\n  \"down\":\n    url: \"{NO_BACKEND}\"\n",
        backend.url()
    );
    let node = Node::start(NodeFiles::new(&models, ""));
    let response =
        challenge(&node, json!({"type": "PROXY", "payload": {"model": "fxn/test-model", "maxTokens": 4}})).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["model"], "fxn/test-model");
    assert_eq!((answer["status"].as_u64(), answer["reachable"].as_bool()), (Some(200), Some(true)), "{answer}");
    assert_eq!(answer["completionTokens"], 4, "one token per event of the test backend: {answer}");
    let (ttft, total) = (answer["ttftMs"].as_f64().unwrap(), answer["totalMs"].as_f64().unwrap());
    // Three 20 ms pauses after the first event.
    assert!(ttft > 0.0 && total >= ttft + 60.0, "{answer}");
    let rate = answer["tokensPerSecond"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= 3.0 / 0.060 + 1.0, "3 tokens after the first in at least 60 ms: {answer}");
    assert_eq!(backend.requests().await, 1);

    // A backend that is down: a successful challenge that says so, naming no backend address.
    let response = challenge(&node, json!({"type": "PROXY", "payload": {"model": "down"}})).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!((answer["reachable"].as_bool(), answer["error"].as_str()), (Some(false), Some("backend_unavailable")));
    assert!(!text.contains("127.0.0.1") && !text.contains(":9"), "{text}");

    let (status, error) =
        api_error(challenge(&node, json!({"type": "PROXY", "payload": {"model": "nope"}})).await).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("model_not_found")));
    for payload in [
        json!({}),
        json!({"model": 3}),
        json!({"model": "down", "maxTokens": 0}),
        json!("down"),
        json!({"model": "down", "colour": 1}),
    ] {
        let (status, error) = api_error(challenge(&node, json!({"type": "PROXY", "payload": payload})).await).await;
        assert_eq!((status, error["code"].as_str()), (400, Some("invalid_challenge")), "{payload}");
        assert!(error["message"].as_str().unwrap().contains("\"model\""), "the shape is shown: {error}");
    }
}

#[tokio::test]
async fn heavy_challenges_beyond_max_concurrent_are_told_to_retry() {
    // Each PROXY challenge takes about a second: five events 250 ms apart.
    let backend = TestBackend::start_with(&["--chunks", "5", "--interval-ms", "250"]);
    let node = Node::start_for(&backend.url(), "challenge:\n  maxConcurrent: 1\n");
    let body = json!({"type": "PROXY", "payload": {"model": "fxn/test-model"}});
    let first = tokio::spawn({
        let request = signed_post(&scheduler_key(), node.url("/challenge"), body.to_string().into_bytes());
        async move { request.send().await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = challenge(&node, body.clone()).await;
    assert_eq!(second.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let (status, error) = api_error(second).await;
    assert_eq!((status, error["code"].as_str()), (429, Some("challenge_busy")));
    assert!(error["message"].as_str().unwrap().contains("challenge.maxConcurrent"), "{error}");
    // Cheap challenges are not held back, and the running one ends well.
    let identity = challenge(&node, json!({"type": "IDENTITY"})).await;
    assert_eq!(identity.status(), 500, "no node key here, but answered at once");
    let first: serde_json::Value = first.await.unwrap().json().await.unwrap();
    assert_eq!(first["reachable"], true, "{first}");
    let third = challenge(&node, body).await;
    assert_eq!(third.status(), 200, "the permit is returned");
}

/// Checks a MATRIX_MULTIPLICATION answer for `a`×`b` with Python (`tests/python/matmul_check.py`).
fn python_checks_product(a: &serde_json::Value, b: &serde_json::Value, answer: &serde_json::Value) {
    let case = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(case.path(), json!({"A": a, "B": b, "answer": answer}).to_string()).unwrap();
    assert_eq!(python(&["matmul_check.py", case.path().to_str().unwrap()]).trim(), "ok");
}

#[tokio::test]
async fn matrix_products_match_an_independent_computation() {
    let node = Node::start_for(NO_BACKEND, "");
    // Integers: Python's product is exact, so C and the merkle root must match to the byte.
    let a: Vec<Vec<i64>> = (0..7).map(|i| (0..5).map(|j| (i * 5 + j) % 11 - 5).collect()).collect();
    let b: Vec<Vec<i64>> = (0..5).map(|i| (0..3).map(|j| (i * 3 + j * 7) % 13 - 6).collect()).collect();
    let (a, b) = (json!(a), json!(b));
    for payload in
        [json!({"A": a, "B": b}), json!({"matrixA": a, "matrixB": b, "backend": "cuda", "precision": "fp64"})]
    {
        let response = challenge(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": payload})).await;
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["backend"], "cpu", "a GPU backend asked of this node falls back: {answer}");
        assert_eq!(answer["flops"], 2 * 7 * 5 * 3);
        python_checks_product(&a, &b, &answer);
    }
    // Fractions: C within tolerance, the merkle root over the node's own C.
    let a = json!([[0.1, 0.2, 0.3], [1.5, -2.25, 1e-3]]);
    let b = json!([[1.0 / 3.0, 2.5], [0.7, -0.125], [3.0, 1e6]]);
    let answer: serde_json::Value =
        challenge(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": {"A": a, "B": b}}))
            .await
            .json()
            .await
            .unwrap();
    python_checks_product(&a, &b, &answer);
    // A random product of 128: no C above 100, but its samples and a merkle root.
    let answer: serde_json::Value =
        challenge(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": {"size": 128}}))
            .await
            .json()
            .await
            .unwrap();
    assert!(answer.get("C").is_none(), "{answer}");
    assert_eq!(answer["resultSamples"].as_array().map(Vec::len), Some(2), "{answer}");
    assert_eq!(answer["merkleRoot"].as_str().map(str::len), Some(66), "{answer}");
}

#[tokio::test]
async fn bad_matrix_payloads_are_refused_with_what_was_expected() {
    let node = Node::start_for(NO_BACKEND, "challenge:\n  matrixMaxDim: 64\n");
    for payload in [
        json!({"A": [[1, 2], [3]], "B": [[1], [2]]}),
        json!({"A": [[1, 2]], "B": [[1, 2]]}),
        json!({"A": [], "B": []}),
        json!({"A": [["x"]], "B": [[1]]}),
        json!({"A": [[1e308]], "B": [[1e308]]}),
        json!({"size": 65}),
        json!({"size": 0}),
        json!({"size": -3}),
        json!({"size": 8, "backend": "tpu"}),
        json!({"size": 8, "precision": "fp16"}),
        json!({"B": [[1]]}),
        json!([1, 2]),
    ] {
        let response = challenge(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": payload})).await;
        let (status, error) = api_error(response).await;
        assert_eq!((status, error["code"].as_str()), (400, Some("invalid_challenge")), "{payload}: {error}");
        assert!(error["message"].as_str().unwrap().starts_with("MATRIX_MULTIPLICATION payload"), "{error}");
    }
    let response = challenge(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": {"size": 65}})).await;
    let (_, error) = api_error(response).await;
    assert!(error["message"].as_str().unwrap().contains("challenge.matrixMaxDim"), "{error}");
}

/// Reads an SSE stream of the test backend, returning how long each event took from the
/// backend's send (its `sent_at_us` stamp) to its arrival here, in microseconds.
async fn event_delays(mut response: reqwest::Response) -> Vec<u128> {
    let mut delays = Vec::new();
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("stream chunk") {
        let arrived = unix_micros();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let data = std::str::from_utf8(&event).unwrap().trim().trim_start_matches("data: ");
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(data) {
                let sent: u128 = event["sent_at_us"].as_str().unwrap().parse().unwrap();
                delays.push(arrived.saturating_sub(sent));
            }
        }
    }
    delays
}

#[tokio::test]
async fn streams_keep_flowing_while_a_large_product_runs() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    let stream = |node: &Node| {
        gateway_post(node, "/v1/chat/completions", chat_body(512, true))
            .header("x-test-chunks", "20")
            .header("x-test-interval-ms", "100")
            .send()
    };
    // The node's own delay per event, with nothing else running.
    let alone = event_delays(stream(&node).await.unwrap()).await;
    let asked_at = unix_micros();
    let product = challenge_owned(&node, json!({"type": "MATRIX_MULTIPLICATION", "payload": {"size": 2048}}));
    let matmul = tokio::spawn(async move {
        let response = product.await;
        (unix_micros(), response)
    });
    let beside = event_delays(stream(&node).await.unwrap()).await;
    let (answered_at, response) = matmul.await.unwrap();
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(answer["computationTimeMs"].as_f64().is_some(), "the product answered: {answer}");
    assert_eq!((alone.len(), beside.len()), (20, 20));
    let (alone_max, beside_max) = (*alone.iter().max().unwrap(), *beside.iter().max().unwrap());
    let product_took = answered_at - asked_at;
    assert!(product_took > 300_000, "the product ran beside at least three events ({product_took} µs)");
    // A stream held up behind the product would wait for most of it; one that flows is only
    // slowed by sharing the cores (two, on the CI machine).
    eprintln!("largest event delay: {alone_max} µs alone, {beside_max} µs beside a product of {product_took} µs");
    assert!(
        beside_max < alone_max + 100_000 && beside_max < product_took / 2,
        "an event waited {beside_max} µs beside a product of {product_took} µs ({alone_max} µs alone)"
    );
}

/// [`challenge`] for a spawned task.
fn challenge_owned(node: &Node, body: serde_json::Value) -> impl std::future::Future<Output = reqwest::Response> {
    let request = signed_post(&scheduler_key(), node.url("/challenge"), body.to_string().into_bytes());
    async move { request.send().await.expect("request to fxn") }
}

#[tokio::test]
async fn the_challenge_script_sends_every_type() {
    let backend = TestBackend::start_with(&["--chunks", "2", "--interval-ms", "5"]);
    let key = fxn_node::keys::NodeKey::generate();
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url());
    let files = NodeFiles::new(&models, "challenge:\n  endpointAllow: [\"127.0.0.1/32\"]\n")
        .with_node_key(&key)
        .with_node_settings("  publicIp: \"203.0.113.7\"\n");
    let node = Node::start(files);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/send_challenge_request.sh");
    for (body, expected) in [
        (json!({"type": "IDENTITY", "payload": {}}), "\"publicKey\""),
        (json!({"type": "MATRIX_MULTIPLICATION", "payload": {"A": [[1, 2]], "B": [[3], [4]]}}), "\"merkleRoot\""),
        (
            json!({"type": "ENDPOINT_REACHABLE", "payload": format!("{}/status/204", backend.url())}),
            "\"reachable\":true",
        ),
        (json!({"type": "PROXY", "payload": {"model": "fxn/test-model"}}), "\"completionTokens\":2"),
    ] {
        let mut command = std::process::Command::new(&script);
        command
            .arg(body.to_string())
            .env("NODE_URL", node.url(""))
            .env("FXN", FXN)
            .env("PRIVATE_KEY", hex::encode(scheduler_key().signing_key.to_bytes()));
        let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && stdout.contains(expected), "{body}: {stdout} {stderr}");
    }
}
