//! A JSON-RPC client of an Ethereum node (`rpcProvider`): bounded in time and size, retrying
//! what fails on the way, and telling every other failure apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::RpcSettings;

/// Why a call failed. The label (`cause()`) is what failures are counted by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum RpcError {
    #[error("the RPC could not be reached, or broke off ({0})")]
    Transport(String),
    #[error("no whole answer within registry.rpc.timeout ({0})")]
    Timeout(String),
    #[error("the RPC answered HTTP {0}")]
    HttpStatus(u16),
    #[error("the answer is larger than registry.rpc.maxResponseBytes ({0} bytes)")]
    TooLarge(usize),
    #[error("the answer is not JSON-RPC: {0}")]
    NotJsonRpc(String),
    #[error("JSON-RPC error {code}: {message}")]
    JsonRpc { code: i64, message: String },
    #[error("the call reverted: {0}")]
    Reverted(String),
    #[error("unexpected result: {0}")]
    BadResult(String),
    #[error("the RPC serves chain {actual}, but registry.chainId is {expected}")]
    WrongChain { expected: u64, actual: u64 },
}

impl RpcError {
    pub fn cause(&self) -> &'static str {
        self.into()
    }

    /// Worth another try soon: the call may not have reached the chain.
    fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Timeout(_) => true,
            Self::HttpStatus(status) => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    message: String,
    #[serde(default)]
    data: Option<Value>,
}

impl ErrorObject {
    /// Nodes report a revert as an error whose `data` is the revert data (geth, anvil, erigon),
    /// or only in the message (some hosted RPCs).
    fn into_error(self) -> RpcError {
        let reason = self
            .data
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|data| hex::decode(data).ok())
            .and_then(|data| super::abi::revert_reason(&data));
        match reason {
            Some(reason) => RpcError::Reverted(reason),
            None if self.message.contains("revert") => RpcError::Reverted(self.message),
            None => RpcError::JsonRpc { code: self.code, message: self.message },
        }
    }
}

pub struct RpcClient {
    http: reqwest::Client,
    url: url::Url,
    settings: RpcSettings,
    next_id: AtomicU64,
}

/// The first wait between tries; each further one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl RpcClient {
    pub fn new(url: url::Url, settings: &RpcSettings) -> Result<Self, RpcError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("fxn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        Ok(Self { http, url, settings: settings.clone(), next_id: AtomicU64::new(1) })
    }

    /// The endpoint without its path: hosted RPCs put the API key there.
    pub fn endpoint(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{}://{host}:{port}", self.url.scheme()),
            None => format!("{}://{host}", self.url.scheme()),
        }
    }

    /// Calls `method`, trying again with backoff and jitter while failures are transient.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let mut attempt = 0;
        loop {
            match self.request_once(method, &params).await {
                Err(e) if e.is_transient() && attempt < self.settings.retries => {
                    let backoff = FIRST_BACKOFF.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
                    let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
                    log::debug!("{method} to {}: {e}; trying again in {jittered:?}", self.endpoint());
                    tokio::time::sleep(jittered).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn request_once(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let request = self.http.post(self.url.clone()).header(http::header::CONTENT_TYPE, "application/json");
        let mut response = request.body(body.to_string()).send().await.map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(RpcError::HttpStatus(response.status().as_u16()));
        }
        let limit = self.settings.max_response_bytes;
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Err(RpcError::TooLarge(limit));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if answer.len() + chunk.len() > limit {
                return Err(RpcError::TooLarge(limit));
            }
            answer.extend_from_slice(&chunk);
        }
        let answer: Answer = serde_json::from_slice(&answer).map_err(|e| {
            let start = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
            RpcError::NotJsonRpc(format!("{e} (it starts {start:?})"))
        })?;
        match answer {
            Answer { error: Some(error), .. } => Err(error.into_error()),
            Answer { result: Some(result), .. } => Ok(result),
            Answer { result: None, error: None } => {
                Err(RpcError::NotJsonRpc("neither `result` nor `error` in the answer".into()))
            }
        }
    }

    /// A quantity (`eth_chainId`, `eth_blockNumber`): a `0x` hex number.
    pub async fn quantity(&self, method: &str) -> Result<u64, RpcError> {
        let result = self.request(method, json!([])).await?;
        let text = result.as_str().ok_or_else(|| RpcError::BadResult(format!("{result} is not a hex quantity")))?;
        text.strip_prefix("0x")
            .and_then(|digits| u64::from_str_radix(digits, 16).ok())
            .ok_or_else(|| RpcError::BadResult(format!("{text:?} is not a hex quantity")))
    }

    /// `eth_call` of `data` on `to`, at block `block`.
    pub async fn call(&self, to: ethers_core::types::Address, data: &[u8], block: u64) -> Result<Vec<u8>, RpcError> {
        let params = json!([{"to": to, "data": hex::encode_prefixed(data)}, format!("{block:#x}")]);
        let result = self.request("eth_call", params).await?;
        let text = result.as_str().ok_or_else(|| RpcError::BadResult(format!("{result} is not hex data")))?;
        hex::decode(text).map_err(|e| RpcError::BadResult(format!("not hex data ({e})")))
    }
}

fn transport_error(error: reqwest::Error) -> RpcError {
    // reqwest's messages name the URL, and with it a hosted RPC's API key.
    let error = error.without_url();
    let detail = std::error::Error::source(&error).map_or_else(|| error.to_string(), ToString::to_string);
    if error.is_timeout() {
        RpcError::Timeout(detail)
    } else {
        RpcError::Transport(detail)
    }
}
