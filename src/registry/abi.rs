//! The registry contracts' calls, encoded and decoded by `ethers-core` from the ABI JSON in `abi/`
//! (compiled from `tests/contracts/`; a test keeps the two in step).

use ethers_core::abi::{Abi, Function, Token, Tokenizable};
use ethers_core::types::{Address, Bytes, U256};

const ROUTER_ABI: &str = include_str!("../../abi/Router.json");
const GATEWAY_REGISTRY_ABI: &str = include_str!("../../abi/GatewayRegistry.json");
const PROVIDER_REGISTRY_ABI: &str = include_str!("../../abi/ProviderRegistry.json");

/// A call's answer did not have the ABI's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// One entry of `getActiveGatewaysLive()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEntry {
    pub owner: Address,
    pub id: Bytes,
    pub registered_at: U256,
    pub metadata: String,
    pub paused: bool,
}

/// One entry of `getActiveProvidersLive()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEntry {
    pub owner: Address,
    pub id: Bytes,
    pub model_id: U256,
    pub registered_at: U256,
    pub metadata: String,
    pub paused: bool,
}

/// One kind of registry entry, and how its registry is found and read.
pub trait RegistryEntry: Clone + Send + Sync + 'static {
    /// `gateway` or `provider`, as logs and metrics name the registry.
    const KIND: &'static str;
    /// The address that signs as this entry: the key the node looks signers up by.
    fn owner(&self) -> Address;
    fn paused(&self) -> bool;
    /// The Router's getter of this registry's address.
    fn router_getter(calls: &RegistryCalls) -> &Call;
    /// The registry's list of active entries.
    fn list_call(calls: &RegistryCalls) -> &Call;
    fn decode_list(calls: &RegistryCalls, answer: &[u8]) -> Result<Vec<Self>, DecodeError>;
}

impl RegistryEntry for GatewayEntry {
    const KIND: &'static str = "gateway";
    fn owner(&self) -> Address {
        self.owner
    }
    fn paused(&self) -> bool {
        self.paused
    }
    fn router_getter(calls: &RegistryCalls) -> &Call {
        &calls.gateway_registry
    }
    fn list_call(calls: &RegistryCalls) -> &Call {
        &calls.active_gateways
    }
    fn decode_list(calls: &RegistryCalls, answer: &[u8]) -> Result<Vec<Self>, DecodeError> {
        calls.decode_gateways(answer)
    }
}

impl RegistryEntry for ProviderEntry {
    const KIND: &'static str = "provider";
    fn owner(&self) -> Address {
        self.owner
    }
    fn paused(&self) -> bool {
        self.paused
    }
    fn router_getter(calls: &RegistryCalls) -> &Call {
        &calls.provider_registry
    }
    fn list_call(calls: &RegistryCalls) -> &Call {
        &calls.active_providers
    }
    fn decode_list(calls: &RegistryCalls, answer: &[u8]) -> Result<Vec<Self>, DecodeError> {
        calls.decode_providers(answer)
    }
}

/// A contract call without arguments: its name, for errors and logs, and its ABI.
#[derive(Debug, Clone)]
pub struct Call {
    pub contract: &'static str,
    function: Function,
}

impl Call {
    fn load(contract: &'static str, abi_json: &str, name: &str) -> Self {
        // The ABI is compiled into the binary and checked by the unit tests below: it cannot
        // differ between a tested build and a running node.
        let abi: Abi = serde_json::from_str(abi_json).unwrap_or_else(|e| panic!("abi/{contract}.json: {e}"));
        let function = abi.function(name).unwrap_or_else(|e| panic!("abi/{contract}.json: {e}")).clone();
        Self { contract, function }
    }

    /// `name()`, as errors and logs name the call.
    pub fn signature(&self) -> String {
        format!("{}()", self.function.name)
    }

    /// The call data: the 4-byte selector (no arguments).
    pub fn data(&self) -> Bytes {
        self.function.short_signature().to_vec().into()
    }

    fn decode<T: Tokenizable>(&self, answer: &[u8]) -> Result<T, DecodeError> {
        // ABI encoding is whole 32-byte words; the decoder would accept a cut-off padding.
        if !answer.len().is_multiple_of(32) {
            let why = format!("the {}-byte answer is not whole 32-byte words of a {}", answer.len(), self.outputs());
            return Err(DecodeError(why));
        }
        let mut tokens = self.function.decode_output(answer).map_err(|e| {
            DecodeError(format!("the {}-byte answer is not an ABI-encoded {}: {e}", answer.len(), self.outputs()))
        })?;
        let token = match tokens.len() {
            1 => tokens.remove(0),
            n => return Err(DecodeError(format!("expected one value, decoded {n}"))),
        };
        T::from_token(token).map_err(|e| DecodeError(format!("not a {}: {e}", self.outputs())))
    }

    /// The answer of a getter that returns one address.
    pub fn decode_address(&self, answer: &[u8]) -> Result<Address, DecodeError> {
        self.decode(answer)
    }

    fn outputs(&self) -> String {
        let types: Vec<String> = self.function.outputs.iter().map(|p| p.kind.to_string()).collect();
        types.join(",")
    }
}

type GatewayTuple = (Address, Bytes, U256, String, bool);
type ProviderTuple = (Address, Bytes, U256, U256, String, bool);

/// The four calls a node makes.
#[derive(Debug, Clone)]
pub struct RegistryCalls {
    pub gateway_registry: Call,
    pub provider_registry: Call,
    pub active_gateways: Call,
    pub active_providers: Call,
}

impl Default for RegistryCalls {
    fn default() -> Self {
        Self {
            gateway_registry: Call::load("Router", ROUTER_ABI, "gatewayRegistry"),
            provider_registry: Call::load("Router", ROUTER_ABI, "providerRegistry"),
            active_gateways: Call::load("GatewayRegistry", GATEWAY_REGISTRY_ABI, "getActiveGatewaysLive"),
            active_providers: Call::load("ProviderRegistry", PROVIDER_REGISTRY_ABI, "getActiveProvidersLive"),
        }
    }
}

impl RegistryCalls {
    pub fn decode_gateways(&self, answer: &[u8]) -> Result<Vec<GatewayEntry>, DecodeError> {
        let tuples: Vec<GatewayTuple> = self.active_gateways.decode(answer)?;
        Ok(tuples
            .into_iter()
            .map(|(owner, id, registered_at, metadata, paused)| GatewayEntry {
                owner,
                id,
                registered_at,
                metadata,
                paused,
            })
            .collect())
    }

    pub fn decode_providers(&self, answer: &[u8]) -> Result<Vec<ProviderEntry>, DecodeError> {
        let tuples: Vec<ProviderTuple> = self.active_providers.decode(answer)?;
        Ok(tuples
            .into_iter()
            .map(|(owner, id, model_id, registered_at, metadata, paused)| ProviderEntry {
                owner,
                id,
                model_id,
                registered_at,
                metadata,
                paused,
            })
            .collect())
    }

    /// `answer` of `getActiveGatewaysLive()` listing `entries`: for tests and benches.
    pub fn encode_gateways(entries: &[GatewayEntry]) -> Vec<u8> {
        let tuples: Vec<GatewayTuple> =
            entries.iter().map(|e| (e.owner, e.id.clone(), e.registered_at, e.metadata.clone(), e.paused)).collect();
        ethers_core::abi::encode(&[tuples.into_token()])
    }
}

/// The reason string of a Solidity `Error(string)` revert, when `data` is one.
pub fn revert_reason(data: &[u8]) -> Option<String> {
    const ERROR_STRING_SELECTOR: [u8; 4] = [0x08, 0xc3, 0x79, 0xa0];
    let encoded = data.strip_prefix(&ERROR_STRING_SELECTOR)?;
    match ethers_core::abi::decode(&[ethers_core::abi::ParamType::String], encoded).ok()?.pop()? {
        Token::String(reason) => Some(reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use ethers_core::utils::id;

    use super::*;

    #[test]
    fn selectors_match_the_networks_signatures() {
        let calls = RegistryCalls::default();
        for (call, signature) in [
            (&calls.gateway_registry, "gatewayRegistry()"),
            (&calls.provider_registry, "providerRegistry()"),
            (&calls.active_gateways, "getActiveGatewaysLive()"),
            (&calls.active_providers, "getActiveProvidersLive()"),
        ] {
            assert_eq!(call.data().to_vec(), id(signature).to_vec(), "{signature}");
            assert_eq!(call.signature(), signature);
        }
        assert_eq!(calls.active_gateways.outputs(), "(address,bytes,uint256,string,bool)[]");
        assert_eq!(calls.active_providers.outputs(), "(address,bytes,uint256,uint256,string,bool)[]");
        assert_eq!(calls.gateway_registry.outputs(), "address");
    }

    #[test]
    fn gateways_round_trip() {
        let entries: Vec<GatewayEntry> = (0..3u64)
            .map(|i| GatewayEntry {
                owner: Address::from_low_u64_be(i + 1),
                id: vec![i as u8; 7].into(),
                registered_at: U256::from(1_700_000_000 + i),
                metadata: format!("{{\"url\":\"https://gw{i}.example\"}}"),
                paused: i == 1,
            })
            .collect();
        let calls = RegistryCalls::default();
        assert_eq!(calls.decode_gateways(&RegistryCalls::encode_gateways(&entries)).unwrap(), entries);
        assert_eq!(calls.decode_gateways(&RegistryCalls::encode_gateways(&[])).unwrap(), vec![]);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let calls = RegistryCalls::default();
        let good = RegistryCalls::encode_gateways(&[GatewayEntry {
            owner: Address::repeat_byte(1),
            id: vec![1, 2].into(),
            registered_at: U256::one(),
            metadata: "m".into(),
            paused: false,
        }]);
        let mut huge_length = good.clone();
        huge_length[32..64].copy_from_slice(&[0xff; 32]);
        let mut far_offset = good.clone();
        far_offset[28..32].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        for (name, answer) in [
            ("empty", vec![]),
            ("one word short", good[..good.len() - 32].to_vec()),
            ("odd length", good[..good.len() - 1].to_vec()),
            ("huge array length", huge_length),
            ("offset past the end", far_offset),
            ("an address", [&[0u8; 12][..], &[0x11; 20]].concat()),
        ] {
            let error = calls.decode_gateways(&answer).expect_err(name);
            assert!(error.to_string().contains("(address,bytes,uint256,string,bool)[]"), "{name}: {error}");
            assert!(error.to_string().contains(&format!("{}-byte answer", answer.len())), "{name}: {error}");
        }
        // A providers' answer is not a gateways' answer.
        assert!(calls.decode_providers(&good).is_err());
        // Every truncation and every flipped byte decodes or fails, never panics.
        for end in 0..good.len() {
            let _ = calls.decode_gateways(&good[..end]);
        }
        for at in 0..good.len() {
            let mut flipped = good.clone();
            flipped[at] ^= 0xa5;
            let _ = calls.decode_gateways(&flipped);
            let _ = calls.decode_providers(&flipped);
        }
    }

    #[test]
    fn revert_reasons_are_read() {
        let data =
            [&[0x08, 0xc3, 0x79, 0xa0][..], &ethers_core::abi::encode(&[Token::String("registry halted".into())])]
                .concat();
        assert_eq!(revert_reason(&data).as_deref(), Some("registry halted"));
        assert_eq!(revert_reason(&data[..10]), None);
        assert_eq!(revert_reason(b"\x4e\x48\x7b\x71"), None);
    }
}
