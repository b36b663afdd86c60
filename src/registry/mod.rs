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
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Role, &Address)> {
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
