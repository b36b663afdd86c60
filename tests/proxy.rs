//! The proxy end to end: the real `fxn` in front of the real test backend.

mod support;

use std::time::Duration;

use support::*;

async fn post(node: &Node, path: &str, body: Vec<u8>) -> reqwest::Response {
    gateway_post(node, path, body).send().await.expect("request to fxn")
}

#[tokio::test]
async fn bodies_of_every_size_reach_the_backend_byte_identical() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in [1024, RETRY_BUFFER, RETRY_BUFFER + 1, 5 * 1024 * 1024] {
        let body = chat_body(size, false);
        let response = post(&node, "/v1/chat/completions", body.clone()).await;
        assert_eq!(response.status(), 200, "size {size}: {}", node.log());
        assert_eq!(header(&response, "x-backend-body-length"), size.to_string());
        assert_eq!(header(&response, "x-backend-body-sha256"), sha256_hex(&body), "size {size}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["object"], "chat.completion");
    }
}

#[tokio::test]
async fn each_endpoint_is_forwarded_to_the_same_path_under_the_backend_url() {
    let backend = TestBackend::start();
    let node = Node::start_for(&format!("{}/base/", backend.url()), "");
    for (path, object) in [
        ("/v1/chat/completions", "chat.completion"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "list"),
    ] {
        let body = br#"{"model":"fxn/test-model","input":"hi","prompt":"hi"}"#.to_vec();
        let response = post(&node, path, body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-backend-path"), format!("/base{path}"));
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["object"], object, "{path}");
    }
}

/// Reads an SSE response, returning each event's data with the time it arrived.
async fn read_events(mut response: reqwest::Response) -> Vec<(String, u128)> {
    let mut events = Vec::new();
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.expect("stream chunk") {
        let arrived = unix_micros();
        pending.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            events.push((event.trim().trim_start_matches("data: ").to_string(), arrived));
        }
    }
    events
}

#[tokio::test]
async fn sse_events_pass_one_by_one_on_both_paths() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        // 700 ms between events: a margin a loaded machine keeps, so that an event held back by
        // the node (and only that) arrives after the backend sent the next one.
        let response = gateway_post(&node, "/v1/chat/completions", chat_body(size, true))
            .header("x-test-chunks", "5")
            .header("x-test-interval-ms", "700")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        let events = read_events(response).await;
        assert_eq!(events.len(), 6, "5 events and [DONE]: {events:?}");
        assert_eq!(events[5].0, "[DONE]");
        let sent_at: Vec<u128> = events[..5]
            .iter()
            .map(|(data, _)| {
                let event: serde_json::Value = serde_json::from_str(data).unwrap();
                event["sent_at_us"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        // The client holds each event before the backend sends the next one.
        for i in 0..4 {
            let arrived = events[i].1;
            assert!(
                arrived < sent_at[i + 1],
                "body {size}: event {i} arrived at {arrived}, after event {} was sent at {}",
                i + 1,
                sent_at[i + 1]
            );
        }
    }
}

#[tokio::test]
async fn client_leaving_mid_stream_cancels_the_backend_request() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for (round, size) in BOTH_PATHS.into_iter().enumerate() {
        let mut response = gateway_post(&node, "/v1/chat/completions", chat_body(size, true))
            .header("x-test-chunks", "50")
            .header("x-test-interval-ms", "100")
            .send()
            .await
            .unwrap();
        response.chunk().await.unwrap().expect("a first event");
        drop(response);
        let mut cancelled = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancelled = backend.stats().await["cancelled_streams"].as_u64().unwrap();
            if cancelled > round as u64 {
                break;
            }
        }
        assert_eq!(cancelled, round as u64 + 1, "body {size}: the backend kept streaming");
    }
}

#[tokio::test]
async fn caller_signing_and_hop_headers_are_dropped_and_backend_auth_added() {
    let backend = TestBackend::start();
    let models = format!(
        "models:\n  bearer: {{url: \"{0}\", auth: {{bearer_token: \"tok\"}}}}\n  keyed: {{url: \"{0}\", auth: {{api_key: \"k3y\"}}}}\n  plain: {{url: \"{0}\"}}\n",
        backend.url()
    );
    let node = Node::start(NodeFiles::new(&models, ""));
    for (model, credential) in [("bearer", "authorization=Bearer tok"), ("keyed", "x-api-key=k3y"), ("plain", "")] {
        // Signed with X-Public-Key as well as X-Address: neither may reach the backend. The
        // X-Public-Key signature's headers replace those of `gateway_post`, which keeps X-Address.
        let body = format!(r#"{{"model":"{model}"}}"#).into_bytes();
        let key = gateway_key();
        let signed = fxn_node::auth::sign_request(&key.signing_key, &body, now_unix(), model, true).unwrap();
        let response = gateway_post(&node, "/v1/chat/completions", body)
            .headers(signed)
            .header("authorization", "Bearer from-the-caller")
            .header("x-api-key", "from-the-caller")
            .header("x-custom", "kept")
            .header("connection", "x-hop")
            .header("x-hop", "dropped")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = header(&response, "x-backend-headers").to_string();
        for gone in ["x-address", "x-public-key", "x-signature", "x-timestamp", "x-nonce", "x-hop", "connection"] {
            assert!(!seen.split(',').any(|h| h == gone), "{gone} reached the backend: {seen}");
        }
        assert!(seen.split(',').any(|h| h == "x-custom"), "{seen}");
        assert_eq!(header(&response, "x-backend-credential"), credential, "{model}");
    }
}

#[tokio::test]
async fn host_header_names_the_backend() {
    let backend = TestBackend::start();
    let node = Node::start_for(&format!("http://localhost:{}", backend.addr.port()), "");
    let response = post(&node, "/v1/completions", br#"{"model":"fxn/test-model"}"#.to_vec()).await;
    assert_eq!(response.status(), 200, "{}", node.log());
    assert_eq!(header(&response, "x-backend-host"), format!("localhost:{}", backend.addr.port()));
}

#[tokio::test]
async fn bad_requests_get_openai_style_errors() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "limits:\n  maxBodyBytes: 100000\n");
    let client = reqwest::Client::new();

    let (status, error) = api_error(post(&node, "/v1/chat/completions", b"{nope".to_vec()).await).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("invalid_json")));
    assert_eq!(error["type"], "invalid_request_error");

    let (status, error) = api_error(post(&node, "/v1/chat/completions", br#"{"messages":[]}"#.to_vec()).await).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("missing_model")));

    let (status, error) = api_error(post(&node, "/v1/embeddings", br#"{"model":"gpt-5"}"#.to_vec()).await).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("model_not_found")));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("gpt-5") && message.contains("fxn/test-model"), "{message}");

    let (status, error) = api_error(post(&node, "/v1/chat/completions", chat_body(100_001, false)).await).await;
    assert_eq!((status, error["code"].as_str()), (413, Some("body_too_large")));

    // A chunked body declares no length: the cap applies as it arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![b' '; 60_000]), Ok(vec![b' '; 60_000])];
    let response = client
        .post(node.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let (status, error) = api_error(response).await;
    assert_eq!((status, error["code"].as_str()), (413, Some("body_too_large")));

    let (status, error) = api_error(post(&node, "/v2/anything", b"{}".to_vec()).await).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("unknown_path")));

    let response = client.get(node.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(header(&response, "allow"), "POST");
    let (status, error) = api_error(response).await;
    assert_eq!((status, error["code"].as_str()), (405, Some("method_not_allowed")));

    // The node is still healthy after all of that.
    assert_eq!(client.get(node.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn model_list_and_default_entry() {
    let backend = TestBackend::start();
    let models = format!(
        "models:\n  alpha: {{url: \"{0}\"}}\n  beta: {{url: \"{0}\"}}\n  default: {{url: \"{0}/fallback\"}}\n",
        backend.url()
    );
    let node = Node::start(NodeFiles::new(&models, ""));
    let list: serde_json::Value =
        signed_request(&gateway_key(), reqwest::Method::GET, node.url("/v1/models"), Vec::new())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let response = post(&node, "/v1/completions", br#"{"model":"unlisted"}"#.to_vec()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-backend-path"), "/fallback/v1/completions");
}

#[tokio::test]
async fn upstream_connections_are_reused_across_200_requests() {
    let backend = TestBackend::start_with(&["--chunks", "3", "--interval-ms", "1"]);
    let node = Node::start_for(&backend.url(), "");
    for i in 0..200 {
        let size = if i % 2 == 0 { 700 } else { RETRY_BUFFER + 100 };
        let stream = i % 4 < 2;
        let response = gateway_post(&node, "/v1/chat/completions", chat_body(size, stream)).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty());
    }
    let stats = backend.stats().await;
    let connections = stats["connections"].as_u64().unwrap();
    assert_eq!(stats["requests"], 200);
    // One pooled connection for Pingora's path and one for the relay; a few to spare.
    assert!(connections <= 4, "{connections} backend connections for 200 sequential requests");
}

#[tokio::test]
async fn https_backends_work_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certificate.cert.pem()).unwrap();
    std::fs::write(&key, certificate.key_pair.serialize_pem()).unwrap();
    let backend = TestBackend::start_with(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let models = format!("models:\n  \"fxn/test-model\": {{url: \"https://localhost:{}\"}}\n", backend.addr.port());
    // Untrusted, the backend's certificate is refused.
    let untrusting = Node::start(NodeFiles::new(&models, ""));
    let response = post(&untrusting, "/v1/chat/completions", chat_body(1024, false)).await;
    assert_eq!(response.status(), 502);
    drop(untrusting);

    let files = NodeFiles::new(&models, "");
    // The node trusts the backend's self-signed certificate through Pingora's `ca_file`.
    let mut conf = std::fs::read_to_string(files.path("fxn.yaml")).unwrap();
    conf.push_str(&format!("ca_file: {}\n", cert.display()));
    std::fs::write(files.path("fxn.yaml"), conf).unwrap();
    let node = Node::start(files);
    for size in [1024, RETRY_BUFFER + 1] {
        let body = chat_body(size, false);
        let response = post(&node, "/v1/chat/completions", body.clone()).await;
        assert_eq!(response.status(), 200, "size {size}: {}", node.log());
        assert_eq!(header(&response, "x-backend-body-sha256"), sha256_hex(&body));
    }
}

#[test]
fn node_raises_its_open_file_limit_to_the_hard_limit() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(hard > 1024, "this test needs a hard limit above 1024");
    let node =
        Node::start_with_soft_fd_limit(NodeFiles::new("models:\n  m: {url: \"http://127.0.0.1:9\"}\n", ""), 1024);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, [hard.to_string(), hard.to_string()], "{open_files}");
}

/// The events of an SSE body, split as a client does (on blank lines), [DONE] included.
fn sse_events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body).split("\n\n").filter(|e| !e.trim().is_empty()).map(str::to_owned).collect()
}

#[tokio::test]
async fn log_line_reports_model_entry_ttfb_bytes_and_events_on_both_paths() {
    let backend = TestBackend::start();
    let models =
        format!("models:\n  \"fxn/test-model\": {{url: \"{0}\"}}\n  default: {{url: \"{0}\"}}\n", backend.url());
    let node = Node::start(NodeFiles::new(&models, ""));
    let mut expected = Vec::new();
    for size in BOTH_PATHS {
        for stream in [false, true] {
            let response = gateway_post(&node, "/v1/chat/completions", chat_body(size, stream))
                .header("x-test-delay-ms", "150")
                .header("x-test-chunks", "7")
                .header("x-test-interval-ms", "5")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.bytes().await.unwrap();
            let events = stream.then(|| sse_events(&body).len());
            expected.push(("fxn/test-model", "fxn/test-model", body.len(), events, size, stream));
        }
    }
    let unlisted = br#"{"model":"other/model","messages":[]}"#.to_vec();
    let body = post(&node, "/v1/chat/completions", unlisted).await.bytes().await.unwrap();
    expected.push(("other/model", "default", body.len(), None, 0, false));

    let lines = node.request_log_lines("/v1/chat/completions", expected.len());
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (model, entry, bytes, events, size, stream)) in lines.iter().zip(expected) {
        let case = format!("size {size}, stream {stream}: {line}");
        assert_eq!(log_field(line, "model"), Some(model), "{case}");
        assert_eq!(log_field(line, "entry"), Some(entry), "{case}");
        assert_eq!(log_field(line, "bytes_out"), Some(bytes.to_string().as_str()), "{case}");
        assert_eq!(log_field(line, "events"), events.map(|n| n.to_string()).as_deref(), "{case}");
        let millis = |field| log_field(line, field).and_then(|v| v.parse::<f64>().ok()).expect(field);
        let (ttfb, duration) = (millis("ttfb_ms"), millis("duration_ms"));
        if model != "other/model" {
            assert!(ttfb >= 150.0, "the backend waited 150 ms before its first byte: {case}");
        }
        assert!(ttfb <= duration, "{case}");
    }
    let streamed: usize =
        lines.iter().filter_map(|l| log_field(l, "events")).map(|n| n.parse::<usize>().unwrap()).sum();
    assert_eq!(streamed, 2 * 8, "7 events and [DONE] on each path");
}

#[tokio::test]
async fn chunked_upload_is_forwarded_whole_with_a_content_length() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let body = chat_body(size, false);
        let headers = fxn_node::auth::sign_request(
            &gateway_key().signing_key,
            &body,
            now_unix(),
            &format!("chunked{size}"),
            false,
        )
        .unwrap();
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
        let response = reqwest::Client::new()
            .post(node.url("/v1/chat/completions"))
            .headers(headers)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "size {size}");
        assert_eq!(header(&response, "x-backend-content-length"), size.to_string(), "size {size}");
        assert_eq!(header(&response, "x-backend-transfer-encoding"), "-", "size {size}");
        assert_eq!(header(&response, "x-backend-body-sha256"), sha256_hex(&body), "size {size}");
    }
}

/// One HTTP/1.1 exchange on a raw connection: the response's status and whether the node closed
/// the connection after it.
fn exchange_raw(connection: &mut RawConnection, request: &[u8]) -> (u16, bool) {
    connection.send(request).unwrap();
    let response = connection.response().expect("a response");
    (response.status, connection.closes_within(Duration::from_millis(500)))
}

#[test]
fn callers_connection_stays_open_after_a_refusal_and_closes_after_a_413_or_a_backend_failure() {
    let node = Node::start_for("http://127.0.0.1:9", "limits:\n  maxBodyBytes: 100000\n");
    let mut connection = RawConnection::open(node.addr);
    let unsigned = b"POST /v1/completions HTTP/1.1\r\nHost: n\r\nContent-Length: 2\r\n\r\n{}";
    for (request, status) in [
        (&b"GET /nowhere HTTP/1.1\r\nHost: n\r\n\r\n"[..], 404),
        (&unsigned[..], 401),
        (&b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n"[..], 200),
    ] {
        let (answered, closed) = exchange_raw(&mut connection, request);
        assert_eq!(answered, status);
        assert!(!closed, "the node closed the connection after {answered}");
    }
    // A backend failure closes the connection after its answer, alike on both paths.
    for size in BOTH_PATHS {
        let request = signed_raw_request("/v1/chat/completions", &chat_body(size, false));
        let (answered, closed) = exchange_raw(&mut connection, &request);
        assert_eq!(answered, 502, "size {size}");
        assert!(closed, "size {size}: the connection stayed open after a backend failure");
        connection = RawConnection::open(node.addr);
    }
    let too_large = b"POST /v1/completions HTTP/1.1\r\nHost: n\r\nContent-Length: 200000\r\n\r\n{\"model\":";
    let (answered, closed) = exchange_raw(&mut connection, too_large);
    assert_eq!(answered, 413);
    assert!(closed, "the unread body would be taken for the next request");
}

#[tokio::test]
async fn concurrent_streams_on_two_worker_threads_arrive_whole_and_in_order() {
    let backend = TestBackend::start();
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url());
    let node = Node::start(NodeFiles::with_threads(&models, "", 2));
    let streams = BOTH_PATHS.into_iter().flat_map(|size| std::iter::repeat_n(size, 12)).map(|size| {
        let request = gateway_post(&node, "/v1/chat/completions", chat_body(size, true))
            .header("x-test-chunks", "10")
            .header("x-test-interval-ms", "20");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            (size, sse_events(&response.bytes().await.unwrap()))
        }
    });
    for (size, events) in futures_util::future::join_all(streams).await {
        assert_eq!(events.len(), 11, "size {size}: {events:?}");
        for (index, event) in events[..10].iter().enumerate() {
            assert!(event.contains(&format!("tok{index} ")), "size {size}: event {index} is {event}");
        }
        assert_eq!(events[10], "data: [DONE]", "size {size}");
    }
}

#[test]
fn node_whose_port_was_taken_before_it_bound_starts_on_another() {
    let files = NodeFiles::new("models:\n  m: {url: \"http://127.0.0.1:9\"}\n", "");
    let taken = std::net::TcpListener::bind(("127.0.0.1", files.port)).unwrap();
    let node = Node::start(files);
    assert_ne!(node.addr, taken.local_addr().unwrap());
    let mut connection = RawConnection::open(node.addr);
    let (answered, _) = exchange_raw(&mut connection, b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n");
    assert_eq!(answered, 200);
}

/// Whether `id` is one the node made (32 hex digits).
fn made_by_the_node(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn request_ids_are_kept_made_or_replaced_and_reach_the_backend_and_the_log() {
    let backend = TestBackend::start();
    let node = Node::start_for(&backend.url(), "");
    for size in BOTH_PATHS {
        let chat = |id: Option<&str>| {
            let request = gateway_post(&node, "/v1/chat/completions", chat_body(size, false));
            match id {
                Some(id) => request.header("x-request-id", id),
                None => request,
            }
        };
        let kept = chat(Some("trace-42/a:b")).send().await.unwrap();
        assert_eq!(kept.status(), 200);
        assert_eq!(header(&kept, "x-request-id"), "trace-42/a:b", "body {size}");
        assert_eq!(header(&kept, "x-backend-request-id"), "trace-42/a:b", "body {size}");
        for id in [None, Some("has space"), Some(&"x".repeat(129)[..])] {
            let made = chat(id).send().await.unwrap();
            let returned = header(&made, "x-request-id");
            assert!(made_by_the_node(returned), "body {size}, {id:?}: {returned:?}");
            assert_eq!(header(&made, "x-backend-request-id"), returned, "body {size}, {id:?}");
        }
    }
    let lines = node.request_log_lines("/v1/chat/completions", 2 * 4);
    assert!(lines.iter().any(|l| log_field(l, "request_id") == Some("trace-42/a:b")), "{lines:#?}");

    // The node's own answers and errors carry it too, in the header and in the error body.
    let health = |id: &'static str| reqwest::Client::new().get(node.url("/health")).header("x-request-id", id);
    assert_eq!(header(&health("h-1").send().await.unwrap(), "x-request-id"), "h-1");
    let (first, second) =
        (reqwest::get(node.url("/health")).await.unwrap(), reqwest::get(node.url("/health")).await.unwrap());
    assert!(made_by_the_node(header(&first, "x-request-id")));
    assert_ne!(header(&first, "x-request-id"), header(&second, "x-request-id"));
    let unknown_model = gateway_post(&node, "/v1/chat/completions", br#"{"model":"nope"}"#.to_vec())
        .header("x-request-id", "e-404")
        .send()
        .await
        .unwrap();
    let unsigned =
        reqwest::Client::new().post(node.url("/v1/embeddings")).header("x-request-id", "e-401").send().await.unwrap();
    for (response, status, id) in [(unknown_model, 404, "e-404"), (unsigned, 401, "e-401")] {
        assert_eq!(header(&response, "x-request-id"), id);
        let (got, error) = api_error(response).await;
        assert_eq!((got, error["request_id"].as_str()), (status, Some(id)));
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_fields_apart() {
    let backend = TestBackend::start();
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url());
    let node = Node::start(NodeFiles::new(&models, "").with_log_format("json"));
    let response =
        gateway_post(&node, "/v1/chat/completions", chat_body(512, true)).header("x-request-id", "j-1").send().await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(node.request_log_lines("/v1/chat/completions", 1).len(), 1);
    let records: Vec<serde_json::Value> = node
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for record in &records {
        for key in ["time", "level", "target", "message"] {
            assert!(record[key].is_string(), "no {key}: {record}");
        }
    }
    let request = records.iter().find(|r| r["request_id"] == "j-1").expect("the request's line");
    assert_eq!(request["level"], "INFO");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], "/v1/chat/completions");
    assert_eq!(request["model"], "fxn/test-model");
    assert_eq!(request["entry"], "fxn/test-model");
    assert_eq!(request["status"], 200);
    assert_eq!(request["body_bytes"], 512);
    assert!(request["signer"].as_str().unwrap().starts_with("gateway:0x"), "{request}");
    assert!(request["backend"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{request}");
    assert!(request["events"].as_u64().unwrap() > 0, "{request}");
    assert!(request["bytes_out"].as_u64().unwrap() > 0, "{request}");
    for millis in ["ttfb_ms", "duration_ms"] {
        assert!(request[millis].as_f64().is_some(), "no {millis}: {request}");
    }
}
