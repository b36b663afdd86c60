//! Several instances behind one address sharing replay protection through a real Redis.

mod support;

use std::time::{Duration, Instant};

use support::*;

const CHAT: &[u8] = br#"{"model":"fxn/test-model","messages":[{"role":"user","content":"hi"}]}"#;

fn shared_config(redis_url: &str, extra: &str) -> String {
    format!("nonceCache:\n  backend: redis\n  redis:\n    url: \"{redis_url}\"\n{extra}")
}

/// One signed request, to be sent as it is to any instance.
fn signed_chat() -> reqwest::header::HeaderMap {
    let nonce = format!("{:016x}", rand::random::<u64>());
    fxn_node::auth::sign_request(&gateway_key().signing_key, CHAT, now_unix(), &nonce, false).unwrap()
}

/// Two instances behind one backend, both with `config`.
fn two_instances(config: &str) -> (TestBackend, Node, Node) {
    let backend = TestBackend::start();
    let (a, b) = (Node::start_for(&backend.url(), config), Node::start_for(&backend.url(), config));
    (backend, a, b)
}

async fn send(node: &Node, headers: &reqwest::header::HeaderMap) -> reqwest::Response {
    reqwest::Client::new()
        .post(node.url("/v1/chat/completions"))
        .headers(headers.clone())
        .body(CHAT)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn request_accepted_by_one_instance_is_a_replay_to_the_other() {
    let redis = RedisServer::start();
    let (backend, a, b) = two_instances(&shared_config(&redis.url(), ""));
    let request = signed_chat();
    assert_eq!(send(&a, &request).await.status(), 200, "{}", a.log());
    assert_eq!(error_code(send(&b, &request).await).await, (401, "nonce_reused".into()));
    assert_eq!(error_code(send(&a, &request).await).await, (401, "nonce_reused".into()));
    assert_eq!(backend.requests().await, 1);
}

#[tokio::test]
async fn the_same_request_raced_against_both_instances_is_admitted_once() {
    let redis = RedisServer::start();
    let (_backend, a, b) = two_instances(&shared_config(&redis.url(), ""));
    let request = signed_chat();
    let sends = (0..20).map(|i| send(if i % 2 == 0 { &a } else { &b }, &request));
    let statuses: Vec<u16> = futures_util::future::join_all(sends).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 19, "{statuses:?}");
}

#[tokio::test]
async fn a_nonce_is_kept_in_redis_for_the_whole_replay_window() {
    let (redis, backend) = (RedisServer::start(), TestBackend::start());
    let extra = "    keyPrefix: \"test:\"\n  ttl: 2m\nauth:\n  maxClockSkew: 2m\n";
    let node = Node::start_for(&backend.url(), &shared_config(&redis.url(), extra));
    // Dated 100 s ahead, the request stays valid until 2 min after that: 220 s, past the 2 min TTL.
    let request =
        fxn_node::auth::sign_request(&gateway_key().signing_key, CHAT, now_unix() + 100, "ahead", false).unwrap();
    assert_eq!(send(&node, &request).await.status(), 200, "{}", node.log());
    let key = format!("test:{:x}:ahead", gateway_key().address);
    let millis: u64 = redis.cli(&["PTTL", &key]).parse().unwrap_or_else(|_| panic!("no key {key}"));
    assert!((210_000..=220_000).contains(&millis), "PTTL {millis} ms");
}

#[tokio::test]
async fn redis_down_is_a_503_until_it_returns_and_the_node_stays_up() {
    let (mut redis, backend) = (RedisServer::start(), TestBackend::start());
    let node = Node::start_for(&backend.url(), &shared_config(&redis.url(), ""));
    assert_eq!(send(&node, &signed_chat()).await.status(), 200);
    redis.stop();
    for _ in 0..3 {
        let response = send(&node, &signed_chat()).await;
        assert_eq!(header(&response, "retry-after"), "1");
        assert_eq!(error_code(response).await, (503, "nonce_store_unavailable".into()));
    }
    assert_eq!(reqwest::get(node.url("/health")).await.unwrap().status(), 200);
    let _redis = RedisServer::start_on(redis.port);
    let returned = Instant::now();
    let recovered = loop {
        let status = send(&node, &signed_chat()).await.status();
        if status == 200 || returned.elapsed() > Duration::from_secs(10) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(recovered, 200, "{}", node.log());
    println!("recovered {:?} after Redis returned", returned.elapsed());
    let log = node.log();
    assert_eq!(log.matches("is unavailable").count(), 1, "one warning per outage:\n{log}");
    assert!(log.contains("answers again"), "{log}");
}

#[tokio::test]
async fn on_unavailable_memory_falls_back_to_this_instance_and_says_so() {
    let backend = TestBackend::start();
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let node = Node::start_for(&backend.url(), &shared_config(&nowhere, "    onUnavailable: memory\n"));
    let request = signed_chat();
    assert_eq!(send(&node, &request).await.status(), 200, "{}", node.log());
    assert_eq!(error_code(send(&node, &request).await).await, (401, "nonce_reused".into()));
    assert!(node.log().contains("replay protection is per instance"), "{}", node.log());
}

#[tokio::test]
async fn a_redis_cluster_is_shared_the_same_way() {
    let redis = RedisServer::start_cluster();
    let config = format!("nonceCache:\n  backend: redis\n  redis:\n    cluster: [\"{}\"]\n", redis.url());
    let (_backend, a, b) = two_instances(&config);
    let request = signed_chat();
    assert_eq!(send(&a, &request).await.status(), 200, "{}", a.log());
    assert_eq!(error_code(send(&b, &request).await).await, (401, "nonce_reused".into()));
    let key = format!("fxn:nonce:{:x}:{}", gateway_key().address, request["x-nonce"].to_str().unwrap());
    assert_eq!(redis.cli(&["EXISTS", &key]), "1", "recorded in the cluster under {key}");
}

#[tokio::test]
async fn a_sentinel_named_master_is_followed_through_a_failover() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let sentinel = RedisServer::start_sentinel_of(&master, &replica);
    let sentinels = format!("    sentinel:\n      masterName: fxn\n      nodes: [\"{}\"]\n", sentinel.url());
    let config = format!("nonceCache:\n  backend: redis\n  redis:\n{sentinels}");
    let (_backend, a, b) = two_instances(&config);
    let request = signed_chat();
    assert_eq!(send(&a, &request).await.status(), 200, "{}", a.log());
    assert_eq!(error_code(send(&b, &request).await).await, (401, "nonce_reused".into()));
    let key = format!("fxn:nonce:{:x}:{}", gateway_key().address, request["x-nonce"].to_str().unwrap());
    // Replication is asynchronous: the nonce is on the replica before the master goes.
    eventually(Duration::from_secs(5), "the nonce replicated", || async { replica.cli(&["EXISTS", &key]) == "1" })
        .await;

    master.stop();
    for node in [&a, &b] {
        eventually(Duration::from_secs(15), "the instance follows the new master", || async {
            send(node, &signed_chat()).await.status() == 200
        })
        .await;
    }
    assert!(replica.cli(&["ROLE"]).starts_with("master"), "the Sentinel promoted the replica");
    assert_eq!(error_code(send(&b, &request).await).await, (401, "nonce_reused".into()), "still a replay");
}

#[tokio::test]
async fn rediss_is_tls_checked_against_the_trusted_roots() {
    let ((redis, cert), backend) = (RedisServer::start_tls(), TestBackend::start());
    let config = shared_config(&format!("rediss://localhost:{}", redis.port), "");
    // The certificate is self-signed: refused against the system roots, accepted once trusted.
    let untrusting = Node::start_for(&backend.url(), &config);
    assert_eq!(error_code(send(&untrusting, &signed_chat()).await).await, (503, "nonce_store_unavailable".into()));
    drop(untrusting);
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url());
    let trusting = Node::start_with_env(NodeFiles::new(&models, &config), "SSL_CERT_FILE", cert.display().to_string());
    let request = signed_chat();
    assert_eq!(send(&trusting, &request).await.status(), 200, "{}", trusting.log());
    let key = format!("fxn:nonce:{:x}:{}", gateway_key().address, request["x-nonce"].to_str().unwrap());
    assert_eq!(redis.cli(&["EXISTS", &key]), "1");
}
