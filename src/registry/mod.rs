//! Who the node trusts: the static lists of `config.yaml` (`registry.static`, plus
//! `schedulerAddress`) and, with `rpcProvider` set, the chain's gateway and provider registries,
//! found through the Router. [`Directory`] answers for all of them in one lookup.

mod abi;
mod cache;
mod chain;
mod refresh;
mod rpc;
pub(crate) mod show;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ethers_core::types::{Address, U256};

pub use abi::{GatewayEntry, ProviderEntry, RegistryCalls, RegistryEntry};
pub use cache::{CachedRegistry, RegistryStatus, Snapshot};
pub use chain::{ChainError, ChainRead, ChainReader};
pub use refresh::RegistryRefresher;
pub use rpc::RpcError;

use crate::auth::{Membership, Role, SignerDirectory, SignerRoles};
use crate::config::RegistrySettings;

/// Signers trusted by configuration.
#[derive(Debug, Default, Clone)]
pub struct StaticRegistry {
    gateways: HashSet<Address, foldhash::fast::RandomState>,
    schedulers: HashSet<Address, foldhash::fast::RandomState>,
}

impl StaticRegistry {
    pub fn from_settings(settings: &RegistrySettings) -> Self {
        Self {
            gateways: settings.static_signers.gateways.iter().copied().collect(),
            schedulers: settings.static_signers.schedulers.iter().copied().chain(settings.scheduler_address).collect(),
        }
    }

    /// Every trusted address with its role.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Role, &Address)> {
        let gateways = self.gateways.iter().map(|a| (Role::Gateway, a));
        gateways.chain(self.schedulers.iter().map(|a| (Role::Scheduler, a)))
    }
}

/// Where this node's own address stands in the ProviderRegistry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRegistration {
    Registered { model_id: U256 },
    Paused { model_id: U256 },
    NotRegistered,
}

/// The chain's registries as last read.
pub struct ChainRegistries {
    pub gateways: CachedRegistry<GatewayEntry>,
    pub providers: CachedRegistry<ProviderEntry>,
    /// This node's address (`node.keyFile`), looked up among the providers.
    own_address: Option<Address>,
}

impl ChainRegistries {
    pub fn new(max_staleness: Option<Duration>, own_address: Option<Address>) -> Self {
        Self {
            gateways: CachedRegistry::new(max_staleness),
            providers: CachedRegistry::new(max_staleness),
            own_address,
        }
    }

    pub fn own_address(&self) -> Option<Address> {
        self.own_address
    }

    /// This node's registration in the last provider read; `None` before it, or without a key.
    /// Its `modelId` is what a configured network model id is compared with.
    pub fn own_registration(&self) -> Option<OwnRegistration> {
        let own = self.own_address?;
        let providers = self.providers.snapshot()?;
        Some(own_registration_in(&providers.entries, own))
    }
}

/// An unpaused entry wins over paused ones of the same owner, as it does for trust.
fn own_registration_in(providers: &[ProviderEntry], own: Address) -> OwnRegistration {
    let mut found = OwnRegistration::NotRegistered;
    for entry in providers.iter().filter(|p| p.owner == own) {
        if !entry.paused {
            return OwnRegistration::Registered { model_id: entry.model_id };
        }
        found = OwnRegistration::Paused { model_id: entry.model_id };
    }
    found
}

/// Every source of trust, answering one lookup per request.
pub struct Directory {
    static_signers: StaticRegistry,
    chain: Option<Arc<ChainRegistries>>,
}

impl Directory {
    pub fn new(static_signers: StaticRegistry, chain: Option<Arc<ChainRegistries>>) -> Self {
        Self { static_signers, chain }
    }
}

impl SignerDirectory for Directory {
    fn roles(&self, address: &Address) -> SignerRoles {
        let gateway = match &self.chain {
            _ if self.static_signers.gateways.contains(address) => Membership::Member,
            Some(chain) => chain.gateways.membership(address),
            None => Membership::NotMember,
        };
        // Schedulers come from configuration only: the network has no scheduler registry.
        SignerRoles { gateway, scheduler: self.static_signers.schedulers.contains(address).into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(gateways: Vec<Address>, schedulers: Vec<Address>) -> RegistrySettings {
        let text = format!(
            "registry: {{static: {{gateways: {:?}, schedulers: {:?}}}}}",
            gateways.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            schedulers.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>()
        );
        crate::config::NodeConfig::parse(std::path::Path::new("config.yaml"), &text).unwrap().registry
    }

    fn provider(owner: Address, model_id: u64, paused: bool) -> ProviderEntry {
        ProviderEntry {
            owner,
            id: vec![1].into(),
            model_id: model_id.into(),
            registered_at: U256::zero(),
            metadata: String::new(),
            paused,
        }
    }

    #[test]
    fn static_and_chain_signers_merge() {
        let (static_gateway, chain_gateway, scheduler) =
            (Address::repeat_byte(1), Address::repeat_byte(2), Address::repeat_byte(3));
        let chain = Arc::new(ChainRegistries::new(None, None));
        let directory = Directory::new(
            StaticRegistry::from_settings(&settings(vec![static_gateway], vec![scheduler])),
            Some(chain.clone()),
        );
        assert_eq!(directory.roles(&static_gateway).gateway, Membership::Member, "static needs no chain");
        assert_eq!(directory.roles(&chain_gateway).gateway, Membership::Unavailable);
        assert_eq!(directory.roles(&scheduler).scheduler, Membership::Member);
        let gateway = GatewayEntry {
            owner: chain_gateway,
            id: vec![7].into(),
            registered_at: U256::zero(),
            metadata: String::new(),
            paused: false,
        };
        chain.gateways.store(ChainRead { registry: Address::repeat_byte(9), block: 1, entries: vec![gateway] });
        assert_eq!(directory.roles(&chain_gateway).gateway, Membership::Member);
        assert_eq!(directory.roles(&scheduler).gateway, Membership::NotMember);
        let without_chain = Directory::new(StaticRegistry::default(), None);
        assert_eq!(without_chain.roles(&chain_gateway).gateway, Membership::NotMember);
    }

    #[test]
    fn own_registration_is_found_by_owner() {
        let own = Address::repeat_byte(5);
        let chain = ChainRegistries::new(None, Some(own));
        assert_eq!(chain.own_registration(), None, "nothing read yet");
        let store = |entries| chain.providers.store(ChainRead { registry: Address::zero(), block: 1, entries });
        store(vec![provider(Address::repeat_byte(6), 1, false)]);
        assert_eq!(chain.own_registration(), Some(OwnRegistration::NotRegistered));
        store(vec![provider(own, 4, true)]);
        assert_eq!(chain.own_registration(), Some(OwnRegistration::Paused { model_id: 4.into() }));
        store(vec![provider(own, 4, true), provider(own, 9, false)]);
        assert_eq!(chain.own_registration(), Some(OwnRegistration::Registered { model_id: 9.into() }));
        assert_eq!(ChainRegistries::new(None, None).own_registration(), None);
    }
}
