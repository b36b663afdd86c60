//! Signed-request authentication end to end: the real node, real signatures from our signer
//! and from eth-account (an independent implementation), and the official openai SDK.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

const CHAT: &[u8] = br#"{"model":"fxn/test-model","messages":[{"role":"user","content":"hi"}]}"#;

/// The status and code of an authentication failure.
async fn error_of(response: reqwest::Response) -> (u16, String) {
    let (status, error) = api_error(response).await;
    assert_eq!(error["type"], "authentication_error", "{error}");
    (status, error["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn unauthenticated_requests_never_reach_the_backend() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    let unsigned = reqwest::Client::new().post(node.url("/v1/chat/completions")).body(CHAT).send().await.unwrap();
    assert_eq!(error_of(unsigned).await, (401, "missing_header".into()));

    let stranger = fxn_node::keys::NodeKey::generate();
    let response = signed_post(&stranger, node.url("/v1/chat/completions"), CHAT.to_vec()).send().await.unwrap();
    assert_eq!(error_of(response).await, (401, "not_registered".into()));

    let scheduler_on_v1 =
        signed_post(&scheduler_key(), node.url("/v1/embeddings"), CHAT.to_vec()).send().await.unwrap();
    assert_eq!(error_of(scheduler_on_v1).await, (401, "wrong_role".into()));

    let mut forged = gateway_post(&node, "/v1/chat/completions", CHAT.to_vec()).build().unwrap();
    *forged.body_mut() = Some(br#"{"model":"fxn/test-model","messages":[]}"#.to_vec().into());
    let response = reqwest::Client::new().execute(forged).await.unwrap();
    assert_eq!(error_of(response).await, (401, "invalid_signature".into()));

    assert_eq!(backend.stats().await["requests"], 0, "a refused request reached the backend");

    let ok = gateway_post(&node, "/v1/chat/completions", CHAT.to_vec()).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(backend.stats().await["requests"], 1);
}

#[tokio::test]
async fn replay_and_stale_requests_are_refused() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    let request = gateway_post(&node, "/v1/completions", CHAT.to_vec()).build().unwrap();
    let replay = request.try_clone().unwrap();
    let client = reqwest::Client::new();
    assert_eq!(client.execute(request).await.unwrap().status(), 200);
    assert_eq!(error_of(client.execute(replay).await.unwrap()).await, (401, "nonce_reused".into()));

    let key = gateway_key();
    for timestamp in [now_unix() - 400, now_unix() + 400] {
        let headers = fxn_node::auth::sign_request(&key.signing_key, CHAT, timestamp, "stale", false).unwrap();
        let request = client.post(node.url("/v1/completions")).headers(headers).body(CHAT);
        assert_eq!(error_of(request.send().await.unwrap()).await, (401, "stale_timestamp".into()));
    }
}

#[tokio::test]
async fn challenge_needs_the_scheduler() {
    let node = Node::start_for("http://127.0.0.1:9", "");
    let body = br#"{"type":"NOT_A_CHALLENGE","payload":{}}"#.to_vec();
    let as_gateway = gateway_post(&node, "/challenge", body.clone()).send().await.unwrap();
    assert_eq!(error_of(as_gateway).await, (401, "wrong_role".into()));
    let unsigned = reqwest::Client::new().post(node.url("/challenge")).body(body.clone()).send().await.unwrap();
    assert_eq!(error_of(unsigned).await, (401, "missing_header".into()));
    // Past authentication, the challenge itself is judged.
    let as_scheduler = signed_post(&scheduler_key(), node.url("/challenge"), body).send().await.unwrap();
    assert_eq!(as_scheduler.status(), 400);
    let answer: serde_json::Value = as_scheduler.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "unknown_challenge_type");
}

#[tokio::test]
async fn full_nonce_store_answers_503_with_retry_after() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "nonceCache:\n  maxEntries: 2\n");
    for _ in 0..2 {
        assert_eq!(gateway_post(&node, "/v1/completions", CHAT.to_vec()).send().await.unwrap().status(), 200);
    }
    let response = gateway_post(&node, "/v1/completions", CHAT.to_vec()).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_of(response).await, (503, "nonce_store_full".into()));
}

#[tokio::test]
async fn expired_nonces_are_swept_so_a_full_store_recovers() {
    let backend = TestBackend::start();
    let config = "auth:\n  maxClockSkew: 2s\nnonceCache:\n  maxEntries: 2\n  ttl: 2s\n  cleanupInterval: 1s\n";
    let node = Node::start_for(&backend.url(), config);
    for _ in 0..2 {
        assert_eq!(gateway_post(&node, "/v1/completions", CHAT.to_vec()).send().await.unwrap().status(), 200);
    }
    let full = gateway_post(&node, "/v1/completions", CHAT.to_vec()).send().await.unwrap();
    assert_eq!(full.status(), 503);
    // Each nonce is kept until its timestamp leaves the 2 s window, then the sweeper drops it:
    // within about 4 s of signing (2 s skew + 1 s sweep, and the second of the timestamp).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let after = loop {
        let response = gateway_post(&node, "/v1/completions", CHAT.to_vec()).send().await.unwrap();
        if response.status() != 503 || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(after.status(), 200, "{}", node.log());
}

#[tokio::test]
async fn health_needs_no_signature() {
    let node = Node::start_for("http://127.0.0.1:9", "");
    let response = reqwest::get(node.url("/health")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "OK");
}

#[tokio::test]
async fn eth_account_signatures_are_accepted_by_the_node() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    let key = gateway_key();
    let body_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body_file.path(), CHAT).unwrap();
    let private_key = hex::encode(key.signing_key.to_bytes());
    for nonce in ["7f3a9c01d2e4b5a6", "eth-account-2"] {
        let headers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&python(&[
            "cross_sign.py",
            "sign",
            &private_key,
            body_file.path().to_str().unwrap(),
            &now_unix().to_string(),
            nonce,
        ]))
        .unwrap();
        let mut request = reqwest::Client::new().post(node.url("/v1/chat/completions")).body(CHAT);
        for (name, value) in &headers {
            request = request.header(name, value.as_str().unwrap());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "eth-account's signature refused: {headers:?}");
    }
}

#[test]
fn node_signatures_verify_in_eth_account() {
    let key = gateway_key();
    let body_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body_file.path(), CHAT).unwrap();
    for (timestamp, nonce) in [(1_700_000_000, "abc123"), (now_unix(), "0123456789abcdef")] {
        let output = Command::new(FXN)
            .args(["sign", "--body-file", body_file.path().to_str().unwrap()])
            .args(["--timestamp", &timestamp.to_string(), "--nonce", nonce])
            .env("PRIVATE_KEY", hex::encode(key.signing_key.to_bytes()))
            .output()
            .unwrap();
        assert!(output.status.success());
        let stdout = String::from_utf8(output.stdout).unwrap();
        let signature =
            stdout.lines().find_map(|line| line.strip_prefix("X-Signature: ")).expect("an X-Signature line");
        let recovered = python(&[
            "cross_sign.py",
            "recover",
            body_file.path().to_str().unwrap(),
            &timestamp.to_string(),
            nonce,
            signature,
        ]);
        assert_eq!(recovered.trim(), key.checksummed_address());
        assert!(stdout.contains(&format!("X-Address: {}", key.checksummed_address())), "{stdout}");
    }
}

#[tokio::test]
async fn openai_sdk_works_through_a_signing_hook() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "5"]);
    let node = Node::start_for(&backend.url(), "");
    let url = node.url("");
    let private_key = hex::encode(gateway_key().signing_key.to_bytes());
    let output = tokio::task::spawn_blocking(move || python(&["sdk_client.py", &url, &private_key, "fxn/test-model"]))
        .await
        .unwrap();
    let results: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(results["chat"], "hello there");
    assert_eq!(results["chat_stream"], serde_json::json!(["tok0 ", "tok1 ", "tok2 "]));
    assert_eq!(results["completion"], "hello there");
    assert_eq!(results["embedding_len"], 8);
    assert_eq!(results["models"], serde_json::json!(["fxn/test-model"]));
    assert_eq!(results["unsigned"]["status"], 401);
    assert_eq!(results["unsigned"]["code"], "missing_header");
    // The SDK shows the node's own message.
    let message = results["unsigned"]["message"].as_str().unwrap();
    assert!(message.ends_with("missing X-Address header"), "{message}");
}

/// Runs one of the request scripts against `node`, signing with `key`; returns its stdout.
async fn run_script(script: &str, args: Vec<String>, node: &Node, key: fxn_node::keys::NodeKey) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(script);
    let url = node.url("");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(path)
            .args(args)
            .env("NODE_URL", url)
            .env("FXN", FXN)
            .env("PRIVATE_KEY", hex::encode(key.signing_key.to_bytes()))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn send_gateway_request_script_streams_an_answer() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "5"]);
    let node = Node::start_for(&backend.url(), "");
    let body = r#"{"model":"fxn/test-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let args = vec!["/v1/chat/completions".to_string(), body.to_string()];
    let stdout = run_script("send_gateway_request.sh", args, &node, gateway_key()).await;
    assert!(stdout.contains("tok2") && stdout.contains("data: [DONE]"), "{stdout}");
}

#[tokio::test]
async fn send_challenge_request_script_signs_as_the_scheduler() {
    let node = Node::start_for("http://127.0.0.1:9", "");
    let args = vec![r#"{"type":"NOT_A_CHALLENGE"}"#.to_string()];
    let stdout = run_script("send_challenge_request.sh", args, &node, scheduler_key()).await;
    assert!(stdout.contains("unknown_challenge_type"), "the scheduler's signature was refused: {stdout}");
}

#[test]
fn trusting_a_public_test_key_is_warned_about_loudly() {
    let files = NodeFiles::new("models:\n  m: {url: \"http://127.0.0.1:9\"}\n", "");
    let config = std::fs::read_to_string(files.path("config.yaml")).unwrap();
    let repository_gateway = fxn_node::keys::NodeKey::parse(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gateway_test_key.json")).unwrap(),
    )
    .unwrap();
    let config = config.replace(&format!("{:?}", gateway_key().address), &repository_gateway.checksummed_address());
    std::fs::write(files.path("config.yaml"), config).unwrap();
    let node = Node::start(files);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = node.log();
    assert!(log.contains("TRUSTING A PUBLIC TEST KEY"), "{log}");
    assert!(log.contains("scripts/gateway_test_key.json"), "{log}");
}

#[test]
fn node_key_file_problems_are_reported() {
    let files = NodeFiles::new("models:\n  m: {url: \"http://127.0.0.1:9\"}\n", "");
    let key_path = files.path("node_key.json");
    let config = std::fs::read_to_string(files.path("config.yaml"))
        .unwrap()
        .replace("  listenPort:", &format!("  keyFile: \"{}\"\n  listenPort:", key_path.display()));
    std::fs::write(files.path("config.yaml"), config).unwrap();
    let check = || {
        let mut args = vec!["config", "check"];
        let file_args = files.file_args();
        args.extend(file_args.iter().map(String::as_str));
        run_fxn(&args, files.dir.path())
    };
    let (code, _, stderr) = check();
    assert_eq!(code, 1);
    assert!(stderr.contains("node.keyFile") && stderr.contains("fxn accounts new"), "{stderr}");

    let (code, stdout, stderr) = run_fxn(&["accounts", "new", "--out", key_path.to_str().unwrap()], files.dir.path());
    assert_eq!(code, 0, "{stderr}");
    let address = stdout.trim().to_string();
    assert_eq!(check().0, 0);
    let (_, shown, _) = run_fxn(&["account", "get", key_path.to_str().unwrap()], files.dir.path());
    assert!(shown.contains(&format!("address: {address}")), "{shown}");

    let (code, _, stderr) = run_fxn(&["accounts", "new", "--out", key_path.to_str().unwrap()], files.dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("--force"), "{stderr}");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = check();
    assert_eq!(code, 1);
    assert!(stderr.contains("chmod 600"), "{stderr}");

    std::fs::write(&key_path, "{\"private_key\": 5}").unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, stderr) = check();
    assert_eq!(code, 1);
    assert!(stderr.contains("not a key file"), "{stderr}");
}
