//! Signed usage receipts through the real node and the real test backend: in the headers of plain
//! answers and after streams, on both forwarding paths, checked by eth-account (an independent
//! implementation) against what the test sent and received; `fxn receipt verify`; the openai SDK
//! with receipts on; and nothing new with receipts off.

mod support;

use base64::Engine;
use fxn_node::keys::NodeKey;
use serde_json::{json, Value};
use support::*;

/// Both the named test model and, through `default`, any other name, on one backend.
fn models(backend: &TestBackend) -> String {
    let url = backend.url();
    format!("models:\n  \"fxn/test-model\":\n    url: \"{url}\"\n  default:\n    url: \"{url}\"\n")
}

fn node_with(backend: &TestBackend, key: &NodeKey, config_extra: &str) -> Node {
    Node::start(NodeFiles::new(&models(backend), config_extra).with_node_key(key))
}

/// Receipts on, and every stream asked for its usage chunk.
fn receipts_node(backend: &TestBackend, key: &NodeKey) -> Node {
    node_with(backend, key, "receipts: {enabled: true}\nusage: {requestStreamUsage: true}\n")
}

/// What one request was signed with and what came back.
struct Answer {
    nonce: String,
    timestamp: String,
    sent: Vec<u8>,
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    /// The receipt and signature of a plain answer's headers.
    fn header_receipt(&self) -> (String, String) {
        let receipt = self.header("x-fxn-receipt").expect("an X-Fxn-Receipt header");
        (receipt.to_string(), self.header("x-fxn-receipt-signature").expect("its signature").to_string())
    }

    /// A stream's body before its receipt comment, and the receipt and signature on that line.
    fn stream_receipt(&self) -> (&[u8], (String, String)) {
        let text = std::str::from_utf8(&self.body).unwrap();
        let at = text.rfind("\n: fxn-receipt ").expect("a receipt comment after the stream") + 1;
        let line = text[at..].strip_prefix(": fxn-receipt ").unwrap();
        assert!(line.ends_with("\n\n") && line.matches('\n').count() == 2, "the comment ends the stream: {line:?}");
        let (receipt, signature) = line.trim_end().split_once(' ').unwrap();
        (&self.body[..at], (receipt.to_string(), signature.to_string()))
    }
}

/// Sends `body` to `path` as the trusted gateway, with `headers` besides.
async fn send(node: &Node, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
    let mut request = gateway_post(node, path, body.clone());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.build().unwrap();
    let signed = |name: &str| request.headers()[name].to_str().unwrap().to_string();
    let (nonce, timestamp) = (signed("x-nonce"), signed("x-timestamp"));
    let response = reqwest::Client::new().execute(request).await.expect("request to fxn");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let received = response.bytes().await.expect("the whole answer").to_vec();
    Answer { nonce, timestamp, sent: body, status, headers, body: received }
}

/// What eth-account recovers from each (receipt, signature), and the fields it read.
fn eth_account_verify(receipts: &[(String, String)]) -> Vec<(String, Value)> {
    let mut args = vec!["receipt_check.py", "verify"];
    for (receipt, signature) in receipts {
        args.extend([receipt.as_str(), signature.as_str()]);
    }
    let checked: Vec<Value> = serde_json::from_str(&python(&args)).unwrap();
    checked.into_iter().map(|entry| (entry["signer"].as_str().unwrap().to_string(), entry["fields"].clone())).collect()
}

/// The `usage` the backend reported: of a JSON answer, or of a stream's last usage chunk.
fn backend_usage(body: &[u8]) -> Value {
    if let Ok(answer) = serde_json::from_slice::<Value>(body) {
        return answer["usage"].clone();
    }
    let text = std::str::from_utf8(body).unwrap();
    let events = text.split("\n\n").filter_map(|event| event.strip_prefix("data: "));
    let chunks = events.filter_map(|data| serde_json::from_str::<Value>(data).ok());
    chunks.map(|chunk| chunk["usage"].clone()).filter(|usage| !usage.is_null()).last().unwrap_or(Value::Null)
}

/// Checks a receipt as eth-account read it against what the test sent and received: `covered`
/// is the body it must hash to, and `tokens` the backend's usage (prompt, completion).
fn assert_receipt(
    (signer, fields): &(String, Value),
    answer: &Answer,
    (node, model): (&NodeKey, &str),
    covered: &[u8],
    tokens: (Value, Value),
) {
    assert_eq!(*signer, node.checksummed_address(), "eth-account recovers the node's address");
    let expected = json!({
        "version": 1,
        "node": node.checksummed_address(),
        "gateway": gateway_key().checksummed_address(),
        "nonce": answer.nonce,
        "timestamp": answer.timestamp,
        "request_sha256": sha256_hex(&answer.sent),
        "model": model,
        "entry": if model == "fxn/test-model" { "fxn/test-model" } else { "default" },
        "status": answer.status,
        "response_sha256": sha256_hex(covered),
        "prompt_tokens": tokens.0,
        "completion_tokens": tokens.1,
        "ended_at_ms": fields["ended_at_ms"],
    });
    assert_eq!(*fields, expected);
    let ended_at_ms = fields["ended_at_ms"].as_u64().unwrap();
    let now_ms = (unix_micros() / 1000) as u64;
    assert!(ended_at_ms <= now_ms && now_ms - ended_at_ms < 30_000, "ended_at_ms {ended_at_ms}, now {now_ms}");
}

/// The prompt and completion tokens of the backend's `usage`.
fn usage_tokens(usage: &Value) -> (Value, Value) {
    (usage["prompt_tokens"].clone(), usage["completion_tokens"].clone())
}

#[tokio::test]
async fn plain_answers_carry_a_receipt_in_their_headers_at_both_body_sizes() {
    // (With receipts on, the node relays every plain answer itself, holding its header for the
    // receipt; the sizes are those of both paths all the same.)
    let backend = TestBackend::start();
    let key = NodeKey::generate();
    let node = receipts_node(&backend, &key);
    let mut answers = Vec::new();
    for size in BOTH_PATHS {
        answers.push(send(&node, "/v1/chat/completions", chat_body(size, false), &[]).await);
        // The backend sends this one in two pieces apart: the receipt covers both.
        answers.push(send(&node, "/v1/completions", chat_body(size, false), &[("x-test-split-ms", "20")]).await);
    }
    let embedding = br#"{"model":"fxn/test-model","input":"four words of input"}"#.to_vec();
    answers.push(send(&node, "/v1/embeddings", embedding, &[]).await);
    let receipts: Vec<_> = answers.iter().map(Answer::header_receipt).collect();
    let checked = eth_account_verify(&receipts);
    for (answer, checked) in answers.iter().zip(&checked) {
        assert_eq!(answer.status, 200);
        let usage = backend_usage(&answer.body);
        assert!(usage["prompt_tokens"].as_u64().is_some(), "the backend reports usage");
        // Embeddings report no completion tokens: the receipt counts none.
        let tokens = (usage["prompt_tokens"].clone(), usage["completion_tokens"].as_u64().unwrap_or(0).into());
        assert_receipt(checked, answer, (&key, "fxn/test-model"), &answer.body, tokens);
    }
}

#[tokio::test]
async fn streams_end_with_a_receipt_comment_on_both_paths() {
    let backend = TestBackend::start_with(&["--chunks", "4", "--interval-ms", "5"]);
    let key = NodeKey::generate();
    let node = receipts_node(&backend, &key);
    let mut answers = Vec::new();
    for size in BOTH_PATHS {
        answers.push(send(&node, "/v1/chat/completions", chat_body(size, true), &[]).await);
        answers.push(send(&node, "/v1/chat/completions", chat_body(size, true), &[("x-test-split-ms", "5")]).await);
    }
    // A stream that asks for no usage chunk: a receipt without tokens.
    let without_usage =
        br#"{"model":"fxn/test-model","stream":true,"stream_options":{"include_usage":false},"prompt":"hi"}"#;
    answers.push(send(&node, "/v1/completions", without_usage.to_vec(), &[]).await);
    let receipts: Vec<_> = answers.iter().map(|answer| answer.stream_receipt().1).collect();
    let checked = eth_account_verify(&receipts);
    for (answer, checked) in answers.iter().zip(&checked) {
        assert_eq!((answer.status, answer.header("x-fxn-receipt")), (200, None));
        let (events, _) = answer.stream_receipt();
        assert!(events.ends_with(b"data: [DONE]\n\n"), "{}", String::from_utf8_lossy(events));
        let tokens = usage_tokens(&backend_usage(events));
        if answer.sent.ends_with(br#""prompt":"hi"}"#) {
            assert_eq!(tokens, (Value::Null, Value::Null));
        } else {
            assert_eq!(tokens, (json!(1), json!(4)), "the usage chunk the node asked for");
            // The receipt hashes the body as the caller sent it, not as the backend got it.
            assert_ne!(answer.header("x-backend-body-sha256"), Some(sha256_hex(&answer.sent).as_str()));
        }
        assert_receipt(checked, answer, (&key, "fxn/test-model"), events, tokens);
    }
}

#[tokio::test]
async fn backend_errors_get_a_receipt_with_their_status() {
    let backend = TestBackend::start();
    let key = NodeKey::generate();
    let node = receipts_node(&backend, &key);
    let answer = send(&node, "/v1/chat/completions", chat_body(512, false), &[("x-test-fault", "status-500")]).await;
    assert_eq!(answer.status, 500);
    let checked = eth_account_verify(&[answer.header_receipt()]);
    assert_receipt(&checked[0], &answer, (&key, "fxn/test-model"), &answer.body, (Value::Null, Value::Null));
}

#[tokio::test]
async fn a_stream_cut_short_has_no_receipt() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "5"]);
    let node = receipts_node(&backend, &NodeKey::generate());
    for size in BOTH_PATHS {
        let request =
            gateway_post(&node, "/v1/chat/completions", chat_body(size, true)).header("x-test-fault", "close");
        let mut response = request.send().await.unwrap();
        // The node closes the connection mid-body, so that no client takes the stream for whole.
        let mut received = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            received.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&received);
        assert!(text.contains("tok0") && text.contains("backend_unavailable"), "{text}");
        assert!(!text.contains("fxn-receipt"), "{text}");
    }
}

#[tokio::test]
async fn an_answer_too_large_to_hold_is_relayed_whole_without_a_receipt() {
    let backend = TestBackend::start();
    let node = receipts_node(&backend, &NodeKey::generate());
    // About 10 MiB of JSON, past the 8 MiB the node holds for a receipt.
    let body = br#"{"model":"fxn/test-model","input":"hi","dimensions":600000}"#.to_vec();
    let answer = send(&node, "/v1/embeddings", body, &[]).await;
    assert!(answer.body.len() > 8 * 1024 * 1024, "{} bytes", answer.body.len());
    assert_eq!((answer.status, answer.header("x-fxn-receipt")), (200, None));
    let embedding: Value = serde_json::from_slice(&answer.body).expect("the whole answer");
    assert_eq!(embedding["data"][0]["embedding"].as_array().map(Vec::len), Some(600_000));
}

#[tokio::test]
async fn receipt_strings_are_escaped_as_python_json_escapes_them() {
    let backend = TestBackend::start();
    let key = NodeKey::generate();
    let node = receipts_node(&backend, &key);
    let model = "naïve \"q\" \\ tab\t 🦀";
    let body = json!({"model": model, "messages": [{"role": "user", "content": "a b c"}]}).to_string().into_bytes();
    let answer = send(&node, "/v1/chat/completions", body, &[]).await;
    let (encoded, _) = answer.header_receipt();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&encoded).unwrap();
    assert!(String::from_utf8(json).unwrap().contains(r#""model":"naïve \"q\" \\ tab\t 🦀""#));
    // eth-account's side refuses bytes that Python's json does not write the same.
    let checked = eth_account_verify(&[answer.header_receipt()]);
    let tokens = usage_tokens(&backend_usage(&answer.body));
    assert_receipt(&checked[0], &answer, (&key, model), &answer.body, tokens);
}

#[tokio::test]
async fn receipts_off_add_no_header_and_no_comment() {
    let backend = TestBackend::start_with(&["--chunks", "2", "--interval-ms", "5"]);
    let key = NodeKey::generate();
    let node = node_with(&backend, &key, "usage: {requestStreamUsage: true}\n");
    for size in BOTH_PATHS {
        for stream in [false, true] {
            let answer = send(&node, "/v1/chat/completions", chat_body(size, stream), &[]).await;
            assert_eq!(answer.status, 200);
            let names: Vec<&str> = answer.headers.keys().map(|name| name.as_str()).collect();
            assert!(!names.iter().any(|name| name.starts_with("x-fxn-receipt")), "{names:?}");
            let text = String::from_utf8(answer.body).unwrap();
            assert!(!text.contains("fxn-receipt"), "{text}");
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            }
        }
    }
}

#[tokio::test]
async fn the_nodes_own_answers_carry_no_receipt() {
    let backend = TestBackend::start();
    let node = receipts_node(&backend, &NodeKey::generate());
    let not_json = send(&node, "/v1/chat/completions", b"{not json".to_vec(), &[]).await;
    let models = signed_request(&gateway_key(), reqwest::Method::GET, node.url("/v1/models"), Vec::new());
    let models = models.send().await.unwrap();
    assert_eq!((not_json.status, models.status().as_u16()), (400, 200));
    assert_eq!((not_json.header("x-fxn-receipt"), models.headers().get("x-fxn-receipt")), (None, None));
}

#[tokio::test]
async fn fxn_receipt_verify_checks_receipts_and_refuses_tampered_ones() {
    let backend = TestBackend::start_with(&["--chunks", "2", "--interval-ms", "5"]);
    let key = NodeKey::generate();
    let node = receipts_node(&backend, &key);
    let dir = tempfile::tempdir().unwrap();
    let verify = |args: &[&str]| run_fxn(&[&["receipt", "verify"], args].concat(), dir.path());

    let plain = send(&node, "/v1/chat/completions", chat_body(512, false), &[]).await;
    let (receipt, signature) = plain.header_receipt();
    let (code, stdout, stderr) = verify(&[&receipt, &signature]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with(&format!("signed by {}, the node the receipt names\n", key.checksummed_address())));
    let printed: Value = serde_json::from_str(stdout.lines().skip(1).collect::<String>().as_str()).unwrap();
    assert_eq!(printed["nonce"], plain.nonce.as_str());
    assert_eq!(printed["response_sha256"], sha256_hex(&plain.body));
    assert_eq!(verify(&["--node", &key.checksummed_address().to_lowercase(), &receipt, &signature]).0, 0);
    let (code, _, stderr) = verify(&["--node", &gateway_key().checksummed_address(), &receipt, &signature]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not by --node"), "{stderr}");

    // More completion tokens than the node signed for: the signature no longer recovers to it.
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json_text = String::from_utf8(engine.decode(&receipt).unwrap()).unwrap();
    let completion = format!(r#""completion_tokens":{},"#, printed["completion_tokens"]);
    assert!(json_text.contains(&completion), "{json_text}");
    let tampered = json_text.replace(&completion, r#""completion_tokens":1000,"#);
    let version_last =
        format!("{},\"version\":1}}", json_text.replacen(r#""version":1,"#, "", 1).trim_end_matches('}'));
    let bad_cases = [
        (engine.encode(tampered), signature.clone(), "bad signature: it was made by 0x"),
        (engine.encode(json_text.replace(",\"", ", \"")), signature.clone(), "not in canonical form"),
        (engine.encode(version_last), signature.clone(), "not in canonical form"),
        ("%%%".to_string(), signature.clone(), "not base64url"),
        (engine.encode("{\"version\":1}"), signature.clone(), "missing field `node`"),
        (engine.encode("[]"), signature.clone(), "not a receipt's JSON"),
        (receipt.clone(), "xyz".to_string(), "not 65 bytes of hex"),
        (receipt.clone(), signature[..64].to_string(), "it is 32 bytes"),
    ];
    for (bad_receipt, bad_signature, expected) in bad_cases {
        let (code, stdout, stderr) = verify(&[&bad_receipt, &bad_signature]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
    }
    assert_ne!(verify(&[&receipt]).0, 0, "a receipt needs its signature");

    // Saved responses: a stream's body, and a plain answer as `curl -i` saves it.
    let stream = send(&node, "/v1/chat/completions", chat_body(512, true), &[]).await;
    std::fs::write(dir.path().join("stream.txt"), &stream.body).unwrap();
    let mut saved = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in &plain.headers {
        saved.extend(format!("{name}: {}\r\n", value.to_str().unwrap()).into_bytes());
    }
    saved.extend(b"\r\n");
    saved.extend(&plain.body);
    std::fs::write(dir.path().join("plain.txt"), &saved).unwrap();
    for file in ["stream.txt", "plain.txt"] {
        let (code, stdout, stderr) = verify(&["--response", file]);
        assert_eq!(code, 0, "{file}: {stderr}");
        assert!(stdout.trim_end().ends_with("bytes) hashes to response_sha256"), "{stdout}");
    }
    // The same receipt over a body it does not cover.
    let mut altered = stream.body.clone();
    altered[10] ^= 1;
    std::fs::write(dir.path().join("altered.txt"), &altered).unwrap();
    std::fs::write(dir.path().join("none.txt"), b"data: [DONE]\n\n").unwrap();
    for (file, expected) in [("altered.txt", "is not the one the receipt covers"), ("none.txt", "no receipt found")] {
        let (code, _, stderr) = verify(&["--response", file]);
        assert_eq!(code, 1, "{file}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
    }
}

#[tokio::test]
async fn openai_sdk_streams_unchanged_with_receipts_on() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "5"]);
    let key = NodeKey::generate();
    let with_receipts = node_with(&backend, &key, "receipts: {enabled: true}\n");
    let without = node_with(&backend, &key, "");
    let private_key = hex::encode(gateway_key().signing_key.to_bytes());
    let mut results = Vec::new();
    for node in [&with_receipts, &without] {
        let (url, private_key) = (node.url(""), private_key.clone());
        let output =
            tokio::task::spawn_blocking(move || python(&["sdk_client.py", &url, &private_key, "fxn/test-model"]))
                .await
                .unwrap();
        results.push(serde_json::from_str::<Value>(&output).unwrap());
    }
    assert_eq!(results[0]["chat_stream"], json!(["tok0 ", "tok1 ", "tok2 "]), "no extra chunk from the comment");
    assert_eq!(results[0], results[1]);
    // The SDK read past the comment: the streams it read had one.
    let answer = send(&with_receipts, "/v1/chat/completions", chat_body(512, true), &[]).await;
    assert_eq!(eth_account_verify(&[answer.stream_receipt().1])[0].0, key.checksummed_address());
}

#[test]
fn the_readme_test_vector_is_reproduced_by_eth_account() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme.split("```receipt-vector\n").nth(1).expect("the README has a receipt-vector block");
    let value = |name: &str| {
        let line = block.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": "));
        line.unwrap_or_else(|| panic!("no `{name}` in the vector")).to_string()
    };
    let signed: Value = serde_json::from_str(&python(&[
        "receipt_check.py",
        "sign",
        &value("node private key"),
        &value("canonical JSON"),
    ]))
    .unwrap();
    assert_eq!(signed["receipt"], value("X-Fxn-Receipt"));
    assert_eq!(signed["signature"], value("X-Fxn-Receipt-Signature"));
}
