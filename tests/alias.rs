//! Model aliases and network model ids end to end: the real node in front of the test backend,
//! which reports the hash of the body it received. Each expected body is spliced by Python's
//! `json` (an independent implementation), not by the node's own scanner.

mod support;

use support::*;

/// The name the backend knows `fxn/test-model` by.
const ALIAS: &str = "llama3.1:8b-instruct-q4_K_M";

fn models(backend: &TestBackend) -> String {
    format!(
        "models:\n  \"fxn/test-model\": {{url: \"{0}\", alias: \"{ALIAS}\", fxn_id: \"7\"}}\n  \
         plain: {{url: \"{0}\"}}\n",
        backend.url()
    )
}

/// `body` with its top-level `model` replaced by `alias`, as Python's `json` locates it.
fn python_spliced(body: &[u8], alias: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("body.json"), dir.path().join("spliced.json"));
    std::fs::write(&input, body).unwrap();
    python(&["splice_model.py", &input.display().to_string(), alias, &output.display().to_string()]);
    std::fs::read(output).unwrap()
}

/// Asserts that the backend received exactly `expected`, framed by its length.
fn assert_received(response: &reqwest::Response, expected: &[u8], case: &str) {
    assert_eq!(response.status(), 200, "{case}");
    assert_eq!(header(response, "x-backend-body-length"), expected.len().to_string(), "{case}");
    assert_eq!(header(response, "x-backend-content-length"), expected.len().to_string(), "{case}");
    assert_eq!(header(response, "x-backend-body-sha256"), sha256_hex(expected), "{case}: other bytes arrived");
}

async fn post(node: &Node, body: Vec<u8>) -> reqwest::Response {
    gateway_post(node, "/v1/chat/completions", body).send().await.expect("request to fxn")
}

/// Bodies whose `PAD` is replaced by text, short or long enough for either forwarding path.
const CASES: &[(&str, &str)] = &[
    (
        "nested model keys",
        r#"{"metadata":{"model":"fxn/test-model"},"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"model":{"type":"string","enum":["a"]}}}}}],"messages":[{"role":"user","content":"say \"model\": \"x\" PAD","model":"inner"}],"model":"fxn/test-model","response_format":{"model":"y"}}"#,
    ),
    ("unicode escapes in the key and the value", r#"{"mod\u0065l":"fxn\/test\u002dmodel","messages":[{"role":"user","content":"caf\u00e9 \ud83e\udd99 PAD"}]}"#),
    (
        "odd whitespace",
        "\r\n {\t\"stream\" :\tfalse ,\r\n\t\"model\"\n :\r\n  \"fxn/test-model\"  \t,\"messages\" : [ { \"role\" : \"user\" , \"content\" : \"PAD\" } ] \n}\r\n",
    ),
    (
        "model not first, numbers and non-ASCII kept",
        r#"{"messages":[{"role":"user","content":"héllo 世界 PAD"}],"temperature":0.70,"max_tokens":1e3,"seed":-0,"model":"fxn/test-model","n":1}"#,
    ),
];

#[tokio::test]
async fn alias_replaces_only_the_top_level_model_on_both_paths() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(&models(&backend), ""));
    for (case, template) in CASES {
        for pad in [String::new(), "x".repeat(RETRY_BUFFER)] {
            let body = template.replace("PAD", &pad).into_bytes();
            let expected = python_spliced(&body, ALIAS);
            assert_ne!(expected, body);
            // Signed over the body as sent: the node verifies that one, then rewrites.
            let response = post(&node, body.clone()).await;
            let case = format!("{case}, {} bytes", body.len());
            assert_received(&response, &expected, &case);
            // The response passes through as the backend sent it, naming the alias.
            let answer: serde_json::Value = response.json().await.unwrap();
            assert_eq!(answer["model"], ALIAS, "{case}");
        }
    }
    let lines = node.request_log_lines("/v1/chat/completions", CASES.len() * 2);
    assert!(lines.iter().all(|l| log_field(l, "model") == Some("fxn/test-model")), "{lines:?}");
}

#[tokio::test]
async fn without_an_alias_the_body_is_forwarded_unchanged() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(&models(&backend), ""));
    for size in BOTH_PATHS {
        // As long as `size` once the 14-byte model name is the 5-byte `plain`.
        let body = String::from_utf8(chat_body(size + 9, false)).unwrap().replacen("fxn/test-model", "plain", 1);
        assert_received(&post(&node, body.clone().into_bytes()).await, body.as_bytes(), &format!("{size} bytes"));
    }
}

#[tokio::test]
async fn bodies_up_to_5_mib_and_one_grown_past_the_retry_buffer_arrive_whole() {
    let backend = TestBackend::start();
    let long_alias = "a".repeat(300);
    let models = format!("models:\n  \"fxn/test-model\": {{url: \"{}\", alias: \"{long_alias}\"}}\n", backend.url());
    let node = Node::start(NodeFiles::new(&models, ""));
    // Exactly the retry buffer goes by Pingora's own path; the alias makes it 286 bytes longer.
    for size in [RETRY_BUFFER, RETRY_BUFFER + 1, 5 * 1024 * 1024] {
        let body = chat_body(size, false);
        let expected = python_spliced(&body, &long_alias);
        assert_eq!(expected.len(), size + long_alias.len() - "fxn/test-model".len());
        assert_received(&post(&node, body).await, &expected, &format!("{size} bytes"));
    }
}

#[tokio::test]
async fn streamed_request_with_an_alias_streams_on_both_paths() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(&models(&backend), ""));
    for size in BOTH_PATHS {
        let body = chat_body(size, true);
        let expected = python_spliced(&body, ALIAS);
        let response = gateway_post(&node, "/v1/chat/completions", body)
            .header("x-test-chunks", "3")
            .header("x-test-interval-ms", "10")
            .send()
            .await
            .unwrap();
        assert_received(&response, &expected, &format!("{size} bytes"));
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        let text = response.text().await.unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{text}");
        for event in &events[..3] {
            let chunk: serde_json::Value = serde_json::from_str(event.trim_start_matches("data: ")).unwrap();
            assert_eq!(chunk["model"], ALIAS);
        }
    }
}

#[tokio::test]
async fn a_top_level_model_sent_twice_is_refused_before_the_backend() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(&models(&backend), ""));
    for body in [
        &br#"{"model":"fxn/test-model","messages":[],"model":"plain"}"#[..],
        br#"{"model":"plain","mod\u0065l":"fxn/test-model"}"#,
        br#"{"model":null,"model":"fxn/test-model"}"#,
    ] {
        let (status, error) = api_error(post(&node, body.to_vec()).await).await;
        assert_eq!((status, error["code"].as_str()), (400, Some("invalid_model")), "{error}");
        assert!(error["message"].as_str().unwrap().contains("twice"), "{error}");
    }
    assert_eq!(backend.requests().await, 0);
    // The same key twice deeper down is the caller's business.
    let body = br#"{"model":"fxn/test-model","metadata":{"model":"a","model":"b"}}"#.to_vec();
    assert_received(&post(&node, body.clone()).await, &python_spliced(&body, ALIAS), "nested duplicate");
}

#[tokio::test]
async fn the_signature_covers_the_body_as_the_client_sent_it() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(&models(&backend), ""));
    let body = chat_body(600, false);
    let aliased = python_spliced(&body, ALIAS);
    // Signed over the aliased body, sent as the original: refused.
    let key = gateway_key();
    let headers = fxn_node::auth::sign_request(&key.signing_key, &aliased, now_unix(), "n-aliased", false).unwrap();
    let response = reqwest::Client::new()
        .post(node.url("/v1/chat/completions"))
        .headers(headers)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "invalid_signature".to_string()));
    assert_eq!(backend.requests().await, 0);
    assert_received(&post(&node, body).await, &aliased, "signed as sent");
}

async fn model_list(node: &Node) -> serde_json::Value {
    let response =
        signed_request(&gateway_key(), reqwest::Method::GET, node.url("/v1/models"), Vec::new()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn model_list_gives_each_network_id_where_one_is_configured() {
    let backend = TestBackend::start();
    let node = Node::start(NodeFiles::new(&models(&backend), ""));
    let list = model_list(&node).await;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list}");
    let created = data[0]["created"].as_u64().unwrap();
    assert!(created.abs_diff(now_unix() as u64) < 600, "{list}");
    assert_eq!(
        data[0],
        serde_json::json!({"id": "fxn/test-model", "object": "model", "created": created, "owned_by": "fxn", "fxn_id": "7"})
    );
    assert_eq!(data[1], serde_json::json!({"id": "plain", "object": "model", "created": created, "owned_by": "fxn"}));
}

#[tokio::test]
async fn the_networks_flat_file_serves_every_model_from_its_one_backend() {
    let backend = TestBackend::start();
    let flat = format!(
        "backendProvider: \"custom\"\nurl: \"{}\"\nfxnId: \"2\"\napiKey: \"\"\nbearerToken: \"secret\"\n\
         modelNameAlias: \"local-model-name\"\n",
        backend.url()
    );
    let node = Node::start(NodeFiles::new(&flat, ""));
    for model in ["fxn/test-model", "anything-else"] {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"model":"{model}"}}"#).into_bytes();
        let response = post(&node, body.clone()).await;
        assert_received(&response, &python_spliced(&body, "local-model-name"), model);
        assert_eq!(header(&response, "x-backend-credential"), "authorization=Bearer secret");
    }
    let list = model_list(&node).await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    assert_eq!((&data[0]["id"], &data[0]["fxn_id"], &data[0]["owned_by"]), (&"2".into(), &"2".into(), &"fxn".into()));
}
