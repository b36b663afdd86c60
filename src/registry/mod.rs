//! Who the node trusts: the registries of gateways and schedulers. Today the static lists of
//! `config.yaml` (`registry.static`, plus `schedulerAddress`); the on-chain registries plug in
//! as further sources behind the same `SignerDirectory`.

use std::collections::HashSet;

use ethers_core::types::Address;

use crate::auth::{Role, SignerDirectory};
use crate::config::RegistrySettings;

/// Signers trusted by configuration.
#[derive(Debug, Default, Clone)]
pub struct StaticRegistry {
    gateways: HashSet<Address>,
    schedulers: HashSet<Address>,
}

impl StaticRegistry {
    pub fn from_settings(settings: &RegistrySettings) -> Self {
        Self {
            gateways: settings.static_signers.gateways.iter().copied().collect(),
            schedulers: settings.static_signers.schedulers.iter().copied().chain(settings.scheduler_address).collect(),
        }
    }

    /// Every trusted address with its role.
    pub fn entries(&self) -> impl Iterator<Item = (Role, &Address)> {
        let gateways = self.gateways.iter().map(|a| (Role::Gateway, a));
        gateways.chain(self.schedulers.iter().map(|a| (Role::Scheduler, a)))
    }
}

impl SignerDirectory for StaticRegistry {
    fn has_role(&self, address: &Address, role: Role) -> bool {
        match role {
            Role::Gateway => self.gateways.contains(address),
            Role::Scheduler => self.schedulers.contains(address),
        }
    }
}

/// Keys whose private half is public: the repository's test keys and the network's published
/// test keys. Trusting one lets anyone sign requests as that gateway or scheduler.
pub fn publicly_known_keys() -> Vec<(Address, &'static str)> {
    let repository_keys = [
        (include_str!("../../scripts/gateway_test_key.json"), "scripts/gateway_test_key.json"),
        (include_str!("../../scripts/scheduler_test_key.json"), "scripts/scheduler_test_key.json"),
    ];
    let network_test_keys = [
        ("0x0172b2911af6A2491ff76dDEc34aCb7AE2c03BA1", "the network's public gateway test key"),
        ("0x9EC5501b7db525648C46098CCe1Df11EbBA9c16a", "the network's public scheduler test key"),
    ];
    repository_keys
        .into_iter()
        .filter_map(|(json, name)| Some((crate::keys::NodeKey::parse(json).ok()?.address, name)))
        .chain(
            network_test_keys
                .into_iter()
                .filter_map(|(address, name)| Some((crate::config::parse_address(address).ok()?, name))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_test_keys_are_known() {
        let known = publicly_known_keys();
        assert_eq!(known.len(), 4, "every shipped key parses: {known:?}");
    }
}
