//! Reads the registries from the chain: the Router's registry addresses, then their entries,
//! all at one block so that a read is one consistent state of the chain.

use ethers_core::types::Address;
use ethers_core::utils::to_checksum;

use super::abi::{Call, RegistryCalls, RegistryEntry};
use super::rpc::{RpcClient, RpcError};
use crate::config::RegistrySettings;

/// A failed read: which call on which contract, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call}: {source}")]
pub struct ChainError {
    /// Such as `eth_call getActiveGatewaysLive() on GatewayRegistry 0x…`.
    pub call: String,
    pub source: RpcError,
}

impl ChainError {
    pub fn cause(&self) -> &'static str {
        self.source.cause()
    }
}

/// One registry as the chain held it at `block`.
#[derive(Debug, Clone)]
pub struct ChainRead<E> {
    pub registry: Address,
    pub block: u64,
    pub entries: Vec<E>,
}

pub struct ChainReader {
    rpc: RpcClient,
    router: Address,
    expected_chain: Option<u64>,
    calls: RegistryCalls,
}

impl ChainReader {
    /// The reader of `rpcProvider`, or `None` when the node runs without a chain.
    pub fn new(settings: &RegistrySettings) -> Result<Option<Self>, RpcError> {
        let (Some(url), Some(router)) = (&settings.rpc_provider, settings.router_contract) else {
            return Ok(None);
        };
        let rpc = RpcClient::new(url.clone(), &settings.rpc)?;
        Ok(Some(Self { rpc, router, expected_chain: settings.chain_id, calls: RegistryCalls::default() }))
    }

    /// Where it reads, without the URL's path (which may hold an API key).
    pub fn endpoint(&self) -> String {
        self.rpc.endpoint()
    }

    pub fn router(&self) -> Address {
        self.router
    }

    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.rpc.quantity("eth_chainId").await.map_err(|source| ChainError { call: "eth_chainId".into(), source })
    }

    pub async fn block_number(&self) -> Result<u64, ChainError> {
        let block = self.rpc.quantity("eth_blockNumber").await;
        block.map_err(|source| ChainError { call: "eth_blockNumber".into(), source })
    }

    /// The chain's id, refused when `registry.chainId` names another.
    pub async fn checked_chain_id(&self) -> Result<u64, ChainError> {
        let actual = self.chain_id().await?;
        match self.expected_chain {
            Some(expected) if expected != actual => {
                Err(ChainError { call: "eth_chainId".into(), source: RpcError::WrongChain { expected, actual } })
            }
            _ => Ok(actual),
        }
    }

    /// Reads one registry: its address from the Router, then its active entries.
    pub async fn read<E: RegistryEntry>(&self) -> Result<ChainRead<E>, ChainError> {
        self.checked_chain_id().await?;
        let block = self.block_number().await?;
        let getter = E::router_getter(&self.calls);
        let answer = self.call(getter, self.router, block).await?;
        let registry = getter.decode_address(&answer).map_err(|e| bad_result(getter, self.router, e))?;
        let list = E::list_call(&self.calls);
        if registry.is_zero() {
            let reason = format!("the Router names no {} (address zero)", list.contract);
            return Err(bad_result(getter, self.router, reason));
        }
        let answer = self.call(list, registry, block).await?;
        let entries = E::decode_list(&self.calls, &answer).map_err(|e| bad_result(list, registry, e))?;
        Ok(ChainRead { registry, block, entries })
    }

    async fn call(&self, call: &Call, to: Address, block: u64) -> Result<Vec<u8>, ChainError> {
        let answer = self.rpc.call(to, &call.data(), block).await;
        let answer = answer.map_err(|source| ChainError { call: describe(call, to), source })?;
        if answer.is_empty() {
            // What an eth_call to an address without code answers.
            return Err(bad_result(call, to, "empty answer: no contract at this address on this chain"));
        }
        Ok(answer)
    }
}

fn bad_result(call: &Call, to: Address, reason: impl ToString) -> ChainError {
    ChainError { call: describe(call, to), source: RpcError::BadResult(reason.to_string()) }
}

fn describe(call: &Call, to: Address) -> String {
    format!("eth_call {} on {} {}", call.signature(), call.contract, to_checksum(&to, None))
}
