//! A real EVM chain for the registry tests: anvil (npm `@foundry-rs/anvil`) on a free loopback
//! port with the registry contracts of `tests/contracts/` (compiled by solc from npm) deployed,
//! and an RPC proxy in front of it that injects faults.

#![allow(dead_code)] // each test uses a different part

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ethers_core::abi::{Abi, Token};
use ethers_core::types::Address;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use super::support::free_port;

const CONTRACTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contracts");

/// anvil's first dev account: it deploys the contracts and is their admin.
pub const ADMIN: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

/// The contracts compiled once per test binary, into a folder of its own.
fn compiled() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("contracts-{}", std::process::id()));
        let status = Command::new("bash")
            .arg(format!("{CONTRACTS}/build.sh"))
            .arg(&dir)
            .status()
            .expect("run tests/contracts/build.sh");
        assert!(status.success(), "tests/contracts/build.sh failed");
        dir
    })
}

pub fn compiled_abi(name: &str) -> Value {
    let text = std::fs::read_to_string(compiled().join(format!("{name}_sol_{name}.abi"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn contract(name: &str) -> (Abi, Vec<u8>) {
    let abi = serde_json::from_value(compiled_abi(name)).unwrap();
    let bin = std::fs::read_to_string(compiled().join(format!("{name}_sol_{name}.bin"))).unwrap();
    (abi, hex::decode(bin.trim()).unwrap())
}

fn anvil_binary() -> PathBuf {
    PathBuf::from(CONTRACTS).join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// An anvil process; stopped when dropped.
pub struct Anvil {
    pub port: u16,
    chain_id: u64,
    child: Option<Child>,
}

impl Anvil {
    pub fn start(chain_id: u64) -> Self {
        let mut anvil = Self { port: free_port(), chain_id, child: None };
        anvil.restart();
        anvil
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts anvil (again) on the same port, with an empty chain.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(anvil_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--silent"])
            .args(["--chain-id", &self.chain_id.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start anvil (npm install --prefix tests/contracts)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "anvil did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let answer: Value = reqwest::Client::new()
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// The registry contracts on an anvil chain.
pub struct Chain {
    pub anvil: Anvil,
    pub router: Address,
    pub gateways: Address,
    pub providers: Address,
    gateway_abi: Abi,
    provider_abi: Abi,
    router_abi: Abi,
}

impl Chain {
    pub async fn start() -> Self {
        Self::start_with_chain_id(31337).await
    }

    pub async fn start_with_chain_id(chain_id: u64) -> Self {
        let anvil = Anvil::start(chain_id);
        let (gateway_abi, _) = contract("GatewayRegistry");
        let (provider_abi, _) = contract("ProviderRegistry");
        let (router_abi, _) = contract("Router");
        let mut chain = Self {
            anvil,
            router: Address::zero(),
            gateways: Address::zero(),
            providers: Address::zero(),
            gateway_abi,
            provider_abi,
            router_abi,
        };
        chain.deploy_all().await;
        chain
    }

    /// Deploys the three contracts; on a fresh chain they land at the same addresses each time.
    pub async fn deploy_all(&mut self) {
        self.gateways = self.deploy("GatewayRegistry", &[]).await;
        self.providers = self.deploy("ProviderRegistry", &[]).await;
        self.router = self.deploy("Router", &[Token::Address(self.gateways), Token::Address(self.providers)]).await;
    }

    pub fn url(&self) -> String {
        self.anvil.url()
    }

    pub async fn deploy(&self, name: &str, args: &[Token]) -> Address {
        let (abi, bin) = contract(name);
        let data = match abi.constructor() {
            Some(constructor) => constructor.encode_input(bin, args).unwrap(),
            None => bin,
        };
        let receipt = self.transact(ADMIN.parse().unwrap(), None, data).await;
        serde_json::from_value(receipt["contractAddress"].clone()).unwrap()
    }

    /// Sends a transaction from `from` (impersonated and funded when not a dev account) and
    /// waits for its receipt, which must show success.
    pub async fn transact(&self, from: Address, to: Option<Address>, data: Vec<u8>) -> Value {
        let url = self.url();
        rpc(&url, "anvil_impersonateAccount", json!([from])).await;
        rpc(&url, "anvil_setBalance", json!([from, "0x56BC75E2D63100000"])).await;
        let mut tx = json!({"from": from, "data": hex::encode_prefixed(data), "gas": "0x1c9c380"});
        if let Some(to) = to {
            tx["to"] = json!(to);
        }
        let hash = rpc(&url, "eth_sendTransaction", json!([tx])).await;
        // Mined at once, but the receipt may show a moment later.
        let mut receipt = Value::Null;
        for _ in 0..100 {
            receipt = rpc(&url, "eth_getTransactionReceipt", json!([hash])).await;
            if !receipt.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(receipt["status"], "0x1", "transaction reverted: {receipt}");
        receipt
    }

    async fn call(&self, from: Address, to: Address, abi: &Abi, function: &str, args: &[Token]) {
        let data = abi.function(function).unwrap().encode_input(args).unwrap();
        self.transact(from, Some(to), data).await;
    }

    pub async fn register_gateway(&self, owner: Address, id: &[u8]) {
        let args = [Token::Bytes(id.to_vec()), Token::String(format!("{{\"owner\":\"{owner:?}\"}}"))];
        self.call(owner, self.gateways, &self.gateway_abi, "register", &args).await;
    }

    /// `pause`, `unpause` or `remove` of the gateway `id`, sent by its owner.
    pub async fn change_gateway(&self, action: &str, owner: Address, id: &[u8]) {
        self.call(owner, self.gateways, &self.gateway_abi, action, &[Token::Bytes(id.to_vec())]).await;
    }

    /// Makes every read of the GatewayRegistry revert with "registry halted".
    pub async fn halt_gateways(&self, on: bool) {
        let admin = ADMIN.parse().unwrap();
        self.call(admin, self.gateways, &self.gateway_abi, "halt", &[Token::Bool(on)]).await;
    }

    pub async fn register_provider(&self, owner: Address, id: &[u8], model_id: u64) {
        let args = [Token::Bytes(id.to_vec()), Token::Uint(model_id.into()), Token::String("{}".into())];
        self.call(owner, self.providers, &self.provider_abi, "register", &args).await;
    }

    /// Deploys a new GatewayRegistry and points the Router at it.
    pub async fn replace_gateway_registry(&mut self) -> Address {
        let registry = self.deploy("GatewayRegistry", &[]).await;
        let admin = ADMIN.parse().unwrap();
        self.call(admin, self.router, &self.router_abi, "setGatewayRegistry", &[Token::Address(registry)]).await;
        self.gateways = registry;
        registry
    }
}

/// What the RPC proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards to anvil unchanged.
    None,
    /// Answers 200 with a body that is not JSON.
    Garbage,
    /// Answers a JSON-RPC error object.
    JsonRpcError,
    /// Forwards, but cuts `eth_call` results longer than three words to three words.
    WrongLength,
    /// Answers HTTP 500.
    Http500,
    /// Answers 200 with a 64 KiB JSON body.
    Oversize,
    /// Never answers.
    Hang,
}

/// An HTTP proxy in front of anvil that injects [`Fault`]s; stopped when dropped.
pub struct RpcProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl RpcProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::None));
        let shared = fault.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (fault, upstream) = (shared.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, *fault.lock().unwrap(), upstream.clone())
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Self { addr, fault, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    fault: Fault,
    upstream: String,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let reply = |status: u16, body: Vec<u8>| {
        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        Ok(response)
    };
    match fault {
        Fault::Garbage => return reply(200, b"<html>502 Bad Gateway</html>".to_vec()),
        Fault::JsonRpcError => {
            return reply(
                200,
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"daily request limit reached"}}"#.to_vec(),
            )
        }
        Fault::Http500 => return reply(500, b"internal error".to_vec()),
        Fault::Oversize => {
            return reply(
                200,
                format!(r#"{{"jsonrpc":"2.0","id":1,"result":"0x{}"}}"#, "00".repeat(32 * 1024)).into_bytes(),
            )
        }
        Fault::Hang => std::future::pending::<()>().await,
        Fault::None | Fault::WrongLength => {}
    }
    let is_call = serde_json::from_slice::<Value>(&body).is_ok_and(|b| b["method"] == "eth_call");
    let forwarded = reqwest::Client::new().post(upstream).header("content-type", "application/json").body(body).send();
    let Ok(response) = forwarded.await else { return reply(502, b"anvil is down".to_vec()) };
    let status = response.status().as_u16();
    let mut answer: Value = response.json().await.unwrap_or_default();
    if fault == Fault::WrongLength && is_call {
        if let Some(result) = answer["result"].as_str().filter(|r| r.len() > 2 + 64 * 3) {
            answer["result"] = json!(result[..2 + 64 * 3]);
        }
    }
    reply(status, answer.to_string().into_bytes())
}

/// `config.yaml` lines (after the generated `registry.static`) that read the chain at `rpc`.
pub fn chain_config(rpc: &str, router: Address, more_registry: &str) -> String {
    format!(
        "  routerSmartContractAddress: \"{router:?}\"\n  gateway: {{pollInterval: 1s}}\n  provider: {{pollInterval: 1s}}\n\
         {more_registry}rpcProvider: \"{rpc}\"\n"
    )
}
