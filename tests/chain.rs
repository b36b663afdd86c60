//! The on-chain registries, end to end: the real `fxn` binary reading the project's registry
//! contracts on a real anvil chain, directly or through an RPC proxy that injects faults.

#[path = "support/chain.rs"]
mod chain;
mod support;

use std::path::Path;
use std::time::Duration;

use chain::{chain_config, Chain, Fault, RpcProxy};
use ethers_core::types::Address;
use fxn_node::keys::NodeKey;
use fxn_node::registry::{ChainReader, GatewayEntry};
use support::{
    api_error, chat_body, error_code, eventually, header, now_unix, run_fxn, scrape_until, signed_post, value, Node,
    NodeFiles, TestBackend,
};

/// The poll interval of the test nodes: every "within one interval" below allows many, so that
/// a machine busy with other builds does not fail a check that only waits for something to happen.
const POLL: Duration = Duration::from_secs(1);
const WITHIN: Duration = Duration::from_secs(15);

fn start_node(backend: &TestBackend, rpc: &str, router: Address, more_registry: &str, own: &NodeKey) -> Node {
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url());
    Node::start(NodeFiles::new(&models, &chain_config(rpc, router, more_registry)).with_node_key(own))
}

/// The status and error code (empty on success) of a chat request signed by `key`.
async fn chat_as(node: &Node, key: &NodeKey) -> (u16, String) {
    let response = signed_post(key, node.url("/v1/chat/completions"), chat_body(200, false)).send().await.unwrap();
    if response.status() == 200 {
        return (200, String::new());
    }
    error_code(response).await
}

async fn accepted(node: &Node, key: &NodeKey) -> bool {
    chat_as(node, key).await.0 == 200
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// How many times the gateway registry has recovered from an outage.
fn gateway_recoveries(log: &str) -> usize {
    log.lines().filter(|l| l.contains("gateway registry:") && l.contains("the chain answers again")).count()
}

#[tokio::test]
async fn chain_gateways_are_followed_as_they_change() {
    let mut chain = Chain::start().await;
    let backend = TestBackend::start();
    let (first, second, third, own) =
        (NodeKey::generate(), NodeKey::generate(), NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(first.address, b"gateway-one").await;
    let node = start_node(&backend, &chain.url(), chain.router, "", &own);

    eventually(WITHIN, "a registered gateway is accepted", || accepted(&node, &first)).await;
    assert_eq!(chat_as(&node, &second).await, (401, "not_registered".into()));
    // Absent from the ProviderRegistry: warned, and served anyway.
    let own_address = ethers_core::utils::to_checksum(&own.address, None);
    eventually(WITHIN, "the missing registration is warned", || async {
        node.log().contains(&format!("this node's address {own_address} is not registered in the ProviderRegistry"))
    })
    .await;

    chain.change_gateway("pause", first.address, b"gateway-one").await;
    eventually(WITHIN, "a paused gateway is refused", || async { !accepted(&node, &first).await }).await;
    assert_eq!(chat_as(&node, &first).await, (401, "not_registered".into()));
    chain.change_gateway("unpause", first.address, b"gateway-one").await;
    eventually(WITHIN, "an unpaused gateway is accepted again", || accepted(&node, &first)).await;
    chain.change_gateway("remove", first.address, b"gateway-one").await;
    eventually(WITHIN, "a removed gateway is refused", || async { !accepted(&node, &first).await }).await;

    chain.register_gateway(second.address, b"gateway-two").await;
    eventually(WITHIN, "a newly registered gateway is accepted", || accepted(&node, &second)).await;
    // The static gateway is trusted beside the chain's.
    assert!(accepted(&node, &support::gateway_key()).await);
    // A scheduler is not a gateway, wherever it is listed.
    assert_eq!(chat_as(&node, &support::scheduler_key()).await, (401, "wrong_role".into()));

    chain.register_provider(own.address, b"node", 7).await;
    eventually(WITHIN, "the node's registration is reported", || async {
        node.log().contains(&format!("this node ({own_address}) is registered in the ProviderRegistry"))
            && node.log().contains("for modelId 7")
    })
    .await;

    let new_registry = chain.replace_gateway_registry().await;
    chain.register_gateway(third.address, b"gateway-three").await;
    eventually(WITHIN, "the Router's new registry is followed", || accepted(&node, &third)).await;
    assert_eq!(chat_as(&node, &second).await, (401, "not_registered".into()), "the old registry is left");
    let new_registry = ethers_core::utils::to_checksum(&new_registry, None);
    assert!(node.log().contains(&format!("from {new_registry} at block")), "{}", node.log());
    assert!(node.log().contains("the Router names a new gateway registry"), "{}", node.log());
}

#[tokio::test]
async fn a_network_model_id_unlike_the_registered_one_is_warned() {
    let chain = Chain::start().await;
    let backend = TestBackend::start();
    let own = NodeKey::generate();
    chain.register_provider(own.address, b"node", 7).await;
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n    fxn_id: \"8\"\n", backend.url());
    let files = NodeFiles::new(&models, &chain_config(&chain.url(), chain.router, "")).with_node_key(&own);
    let node = Node::start(files);
    eventually(WITHIN, "the mismatch is warned", || async {
        node.log().contains("model_backend.yaml's fxn_id (8) is not this node's modelId 7")
    })
    .await;
    let matching = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n    fxn_id: \"7\"\n", backend.url());
    let files = NodeFiles::new(&matching, &chain_config(&chain.url(), chain.router, "")).with_node_key(&own);
    let node = Node::start(files);
    eventually(WITHIN, "the registration is read", || async { node.log().contains("for modelId 7") }).await;
    assert!(!node.log().contains("is not this node's modelId"), "{}", node.log());
}

#[tokio::test]
async fn requests_wait_for_the_first_load_and_outlive_the_chain() {
    let mut chain = Chain::start().await;
    let proxy = RpcProxy::start(chain.url()).await;
    proxy.set(Fault::Http500);
    let backend = TestBackend::start();
    let (gateway, own) = (NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(gateway.address, b"gw").await;
    let node = start_node(&backend, &proxy.url(), chain.router, "  rpc: {retries: 0}\n", &own);

    // Not loaded yet: the chain's gateways are told to come back, not that they are unknown.
    let response = signed_post(&gateway, node.url("/v1/chat/completions"), chat_body(200, false)).send().await.unwrap();
    assert_eq!(header(&response, "retry-after"), "5");
    let (status, error) = api_error(response).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (503, "registry_unavailable"), "{error}");
    assert_eq!(error["type"], "authentication_error");
    assert!(accepted(&node, &support::gateway_key()).await, "static gateways need no chain");
    eventually(WITHIN, "the outage is logged", || async { node.log().contains("nothing read yet") }).await;

    proxy.set(Fault::None);
    eventually(WITHIN, "the first load lets the gateway in", || accepted(&node, &gateway)).await;

    // The chain goes away: the last good read is kept, and the outage logged once.
    let before = node.log().len();
    chain.anvil.stop();
    eventually(WITHIN, "the outage is noticed", || async { node.log().contains("keeping the last good read") }).await;
    tokio::time::sleep(POLL * 3).await;
    assert!(accepted(&node, &gateway).await, "served from the last good read");
    let log = node.log()[before..].to_string();
    assert_eq!(count(&log, "gateway registry refresh failed:"), 1, "one warning per outage:\n{log}");
    assert!(count(&log, "gateway registry refresh failed again") >= 2, "{log}");

    // It comes back (a fresh chain with the same deployment): recovered within an interval.
    chain.anvil.restart();
    chain.deploy_all().await;
    let other = NodeKey::generate();
    chain.register_gateway(other.address, b"other").await;
    eventually(WITHIN, "the node reads the returned chain", || accepted(&node, &other)).await;
    assert!(node.log().contains("the chain answers again after"), "{}", node.log());
    assert_eq!(chat_as(&node, &gateway).await, (401, "not_registered".into()), "the new chain's state rules");
}

#[tokio::test]
async fn garbled_answers_keep_the_last_good_read() {
    let chain = Chain::start().await;
    let proxy = RpcProxy::start(chain.url()).await;
    let backend = TestBackend::start();
    let (gateway, own) = (NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(gateway.address, b"gw").await;
    let more = "  rpc: {retries: 0, timeout: 1s, maxResponseBytes: 32768}\n";
    let node = start_node(&backend, &proxy.url(), chain.router, more, &own);
    eventually(WITHIN, "first load", || accepted(&node, &gateway)).await;

    let faults = [
        (Fault::Garbage, "the answer is not JSON-RPC"),
        (Fault::JsonRpcError, "JSON-RPC error -32005: daily request limit reached"),
        (Fault::WrongLength, "eth_call getActiveGatewaysLive() on GatewayRegistry"),
        (Fault::Http500, "the RPC answered HTTP 500"),
        (Fault::Oversize, "larger than registry.rpc.maxResponseBytes (32768 bytes)"),
        (Fault::Hang, "no whole answer within registry.rpc.timeout"),
    ];
    for (recoveries, (fault, expected)) in faults.into_iter().enumerate() {
        proxy.set(fault);
        eventually(WITHIN, &format!("{fault:?} is logged as {expected:?}"), || async {
            node.log().lines().any(|l| l.contains("WARN") && l.contains("refresh failed") && l.contains(expected))
        })
        .await;
        assert!(accepted(&node, &gateway).await, "{fault:?}: served from the last good read");
        proxy.set(Fault::None);
        eventually(WITHIN, &format!("recovery after {fault:?}"), || async {
            gateway_recoveries(&node.log()) > recoveries
        })
        .await;
    }
    assert!(node.log().contains("is not an ABI-encoded (address,bytes,uint256,string,bool)[]"), "{}", node.log());

    // A revert from the EVM itself.
    chain.halt_gateways(true).await;
    eventually(WITHIN, "the revert is logged", || async { node.log().contains("the call reverted: registry halted") })
        .await;
    assert!(accepted(&node, &gateway).await);
}

#[tokio::test]
async fn stale_registry_is_refused_after_max_staleness() {
    let chain = Chain::start().await;
    let proxy = RpcProxy::start(chain.url()).await;
    let backend = TestBackend::start();
    let (gateway, own) = (NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(gateway.address, b"gw").await;
    let node = start_node(&backend, &proxy.url(), chain.router, "  maxStaleness: 3s\n  rpc: {retries: 0}\n", &own);
    eventually(WITHIN, "first load", || accepted(&node, &gateway)).await;
    proxy.set(Fault::Http500);
    eventually(WITHIN, "a snapshot older than maxStaleness is not trusted", || async {
        chat_as(&node, &gateway).await == (503, "registry_unavailable".into())
    })
    .await;
    assert!(accepted(&node, &support::gateway_key()).await, "static gateways stay trusted");
    proxy.set(Fault::None);
    eventually(WITHIN, "trusted again once read", || accepted(&node, &gateway)).await;
}

#[tokio::test]
async fn an_rpc_of_another_chain_is_refused() {
    let chain = Chain::start_with_chain_id(999).await;
    let backend = TestBackend::start();
    let (gateway, own) = (NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(gateway.address, b"gw").await;
    let node = start_node(&backend, &chain.url(), chain.router, "  chainId: 31337\n", &own);
    eventually(WITHIN, "the mismatch is logged", || async {
        node.log().contains("eth_chainId: the RPC serves chain 999, but registry.chainId is 31337")
    })
    .await;
    assert_eq!(chat_as(&node, &gateway).await, (503, "registry_unavailable".into()));

    let right = start_node(&backend, &chain.url(), chain.router, "  chainId: 999\n", &own);
    eventually(WITHIN, "the right chain is read", || accepted(&right, &gateway)).await;
}

#[tokio::test]
async fn registry_show_prints_what_the_chain_holds() {
    let chain = Chain::start().await;
    let (gateway, own) = (NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(gateway.address, b"gw-id").await;
    chain.register_provider(own.address, b"node", 42).await;
    let files = NodeFiles::new("", &chain_config(&chain.url(), chain.router, "")).with_node_key(&own);
    let config = files.path("config.yaml").display().to_string();
    let show = |config: String| run_fxn(&["registry", "show", "--config", &config], Path::new("."));

    let (code, stdout, stderr) = show(config.clone());
    assert_eq!(code, 0, "{stderr}");
    let checksummed = |a: &Address| ethers_core::utils::to_checksum(a, None);
    for expected in [
        "chain id: 31337".to_string(),
        format!("router: {}", checksummed(&chain.router)),
        format!("gateway registry: {} (1 active gateways)", checksummed(&chain.gateways)),
        format!("gateway owner={} id=0x67772d6964 paused=no", checksummed(&gateway.address)),
        format!("provider owner={} id=0x6e6f6465 modelId=42 paused=no", checksummed(&own.address)),
        format!("this node: {} is registered for modelId 42", checksummed(&own.address)),
    ] {
        assert!(stdout.contains(&expected), "no {expected:?} in:\n{stdout}");
    }

    chain.halt_gateways(true).await;
    let (code, _, stderr) = show(config);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("getActiveGatewaysLive() on GatewayRegistry") && stderr.contains("registry halted"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let wrong_chain = NodeFiles::new("", &chain_config(&chain.url(), chain.router, "  chainId: 1\n"));
    let (code, _, stderr) = show(wrong_chain.path("config.yaml").display().to_string());
    assert_eq!(code, 1);
    assert!(stderr.contains("serves chain 31337, but registry.chainId is 1"), "{stderr}");

    let down = format!("http://127.0.0.1:{}", support::free_port());
    let down = NodeFiles::new("", &chain_config(&down, chain.router, "  rpc: {retries: 0}\n"));
    let (code, _, stderr) = show(down.path("config.yaml").display().to_string());
    assert_eq!(code, 1);
    assert!(stderr.contains("eth_chainId: the RPC could not be reached"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let no_chain = NodeFiles::new("", "");
    let (code, _, stderr) = show(no_chain.path("config.yaml").display().to_string());
    assert_eq!(code, 1);
    assert!(stderr.contains("rpcProvider is empty"), "{stderr}");
}

#[tokio::test]
async fn decoded_gateways_match_an_independent_decoder() {
    let chain = Chain::start().await;
    for i in 0..5u8 {
        let owner = NodeKey::generate().address;
        chain.register_gateway(owner, &[i; 20][..usize::from(i) * 4 + 1]).await;
        if i % 2 == 1 {
            chain.change_gateway("pause", owner, &[i; 20][..usize::from(i) * 4 + 1]).await;
        }
    }
    let files = NodeFiles::new("", &chain_config(&chain.url(), chain.router, ""));
    let settings = fxn_node::config::NodeConfig::load(&files.path("config.yaml")).unwrap().registry;
    let reader = ChainReader::new(&settings).unwrap().unwrap();
    let ours: Vec<serde_json::Value> = reader
        .read::<GatewayEntry>()
        .await
        .unwrap()
        .entries
        .iter()
        .map(|g| {
            serde_json::json!({
                "owner": ethers_core::utils::to_checksum(&g.owner, None),
                "id": format!("{}", g.id),
                "registeredAt": g.registered_at.as_u64(),
                "metadata": g.metadata,
                "paused": g.paused,
            })
        })
        .collect();
    let output = support::python(&["read_gateways.py", &chain.url(), &format!("{:?}", chain.gateways)]);
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&output).unwrap();
    assert_eq!(theirs.len(), 5);
    assert_eq!(ours, theirs);
}

#[test]
fn abi_folder_matches_the_compiled_contracts() {
    for name in ["Router", "GatewayRegistry", "ProviderRegistry"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("abi/{name}.json"));
        let shipped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            shipped,
            chain::compiled_abi(name),
            "abi/{name}.json differs from tests/contracts: run tests/contracts/build.sh --write-abi"
        );
    }
}

#[tokio::test]
async fn registry_metrics_follow_the_chain() {
    let chain = Chain::start().await;
    let backend = TestBackend::start();
    let (gateway, own) = (NodeKey::generate(), NodeKey::generate());
    chain.register_gateway(gateway.address, b"gw").await;
    chain.register_provider(own.address, b"node", 7).await;
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n    fxn_id: \"7\"\n", backend.url());
    let node = Node::start(NodeFiles::new(&models, &chain_config(&chain.url(), chain.router, "")).with_node_key(&own));
    let loaded = scrape_until(&node, |s| value(s, "fxn_node_registered", &[]) == 1.0).await;
    for registry in ["gateway", "provider"] {
        assert_eq!(value(&loaded, "fxn_registry_entries", &[("registry", registry)]), 1.0, "{registry}");
        assert!(value(&loaded, "fxn_registry_block", &[("registry", registry)]) > 0.0, "{registry}");
        let at = value(&loaded, "fxn_registry_last_success_timestamp_seconds", &[("registry", registry)]);
        assert!((at - now_unix() as f64).abs() < 60.0, "{registry} read at {at}");
    }
    assert_eq!(value(&loaded, "fxn_node_model_id_agrees", &[]), 1.0);

    chain.halt_gateways(true).await;
    let failing =
        scrape_until(&node, |s| value(s, "fxn_registry_refresh_failures_total", &[("registry", "gateway")]) > 0.0)
            .await;
    assert!(
        value(&failing, "fxn_registry_refresh_failures_total", &[("registry", "gateway"), ("cause", "reverted")]) > 0.0
    );
    assert_eq!(value(&failing, "fxn_registry_entries", &[("registry", "gateway")]), 1.0, "the last good read is kept");
}
