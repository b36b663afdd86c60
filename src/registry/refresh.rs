//! The background service that keeps the chain registries fresh, each on its own interval.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ethers_core::utils::to_checksum;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::abi::RegistryEntry;
use super::cache::{CachedRegistry, Snapshot};
use super::chain::ChainReader;
use super::{own_registration_in, ChainRegistries, OwnRegistration, ProviderEntry};

/// While a registry cannot be read, it is tried again this often (or at its interval, if
/// shorter): before its first load every request that needs it is refused. The 503's
/// `Retry-After` says as much.
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

pub struct RegistryRefresher {
    reader: Arc<ChainReader>,
    registries: Arc<ChainRegistries>,
    gateway_interval: Duration,
    provider_interval: Duration,
    /// The `fxn_id`s of `model_backend.yaml`, compared with the node's registered `modelId`.
    network_model_ids: Vec<String>,
}

impl RegistryRefresher {
    pub fn new(
        reader: Arc<ChainReader>,
        registries: Arc<ChainRegistries>,
        gateway_interval: Duration,
        provider_interval: Duration,
        network_model_ids: Vec<String>,
    ) -> Self {
        Self { reader, registries, gateway_interval, provider_interval, network_model_ids }
    }

    /// Reads one registry every `interval` until shutdown; a failed read keeps the last good
    /// snapshot and is logged once per outage.
    async fn keep_fresh<E: RegistryEntry>(
        &self,
        cache: &CachedRegistry<E>,
        interval: Duration,
        mut shutdown: ShutdownWatch,
        mut on_load: impl FnMut(&Snapshot<E>),
    ) {
        let kind = E::KIND;
        let mut failures_in_outage = 0u64;
        loop {
            let read = tokio::select! {
                _ = shutdown.changed() => return,
                read = self.reader.read::<E>() => read,
            };
            let wait = match read {
                Ok(read) => {
                    let previous = cache.snapshot();
                    let snapshot = cache.store(read);
                    let summary = format!(
                        "{kind} registry: {} entries ({} trusted) from {} at block {}",
                        snapshot.entries.len(),
                        snapshot.trusted_count(),
                        to_checksum(&snapshot.registry, None),
                        snapshot.block
                    );
                    match previous {
                        _ if failures_in_outage > 0 => {
                            log::info!("{summary}; the chain answers again after {failures_in_outage} failed refreshes")
                        }
                        None => log::info!("{summary}, read from {}", self.reader.endpoint()),
                        Some(previous) if previous.registry != snapshot.registry => {
                            log::info!("{summary}: the Router names a new {kind} registry")
                        }
                        Some(_) => log::debug!("{summary}"),
                    }
                    failures_in_outage = 0;
                    on_load(&snapshot);
                    interval
                }
                Err(e) => {
                    cache.record_failure(e.cause());
                    if failures_in_outage == 0 {
                        let kept = match cache.snapshot() {
                            Some(s) => {
                                format!("keeping the last good read ({} entries, block {})", s.entries.len(), s.block)
                            }
                            None => format!(
                                "nothing read yet: requests that need a chain {kind} get 503 registry_unavailable"
                            ),
                        };
                        log::warn!(
                            "{kind} registry refresh failed: {e}; {kept}; trying again every {:?} until it answers",
                            interval.min(OUTAGE_RETRY)
                        );
                    } else {
                        log::debug!("{kind} registry refresh failed again: {e}");
                    }
                    failures_in_outage += 1;
                    interval.min(OUTAGE_RETRY)
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Logs where the node's own address stands whenever that changes (and at the first read).
    fn own_registration_reporter(&self) -> impl FnMut(&Snapshot<ProviderEntry>) {
        let own = self.registries.own_address();
        let configured = self.network_model_ids.clone();
        let mut last = None;
        move |providers| {
            let Some(own) = own else { return };
            let now = own_registration_in(&providers.entries, own);
            if last == Some(now) {
                return;
            }
            last = Some(now);
            let address = to_checksum(&own, None);
            let registry = to_checksum(&providers.registry, None);
            let registered_model = match now {
                OwnRegistration::Registered { model_id } | OwnRegistration::Paused { model_id } => Some(model_id),
                OwnRegistration::NotRegistered => None,
            };
            if let Some(model_id) = registered_model {
                if !configured.is_empty() && !configured.contains(&model_id.to_string()) {
                    log::warn!(
                        "model_backend.yaml's fxn_id ({}) is not this node's modelId {model_id} in the \
                         ProviderRegistry {registry}: the network routes modelId {model_id} here",
                        configured.join(", ")
                    );
                }
            }
            match now {
                OwnRegistration::Registered { model_id } => {
                    log::info!(
                        "this node ({address}) is registered in the ProviderRegistry {registry} for modelId {model_id}"
                    )
                }
                OwnRegistration::Paused { model_id } => log::warn!(
                    "this node ({address}) is registered in the ProviderRegistry {registry} for modelId {model_id}, \
                     but paused: the network sends it no traffic until it is unpaused. Serving anyway."
                ),
                OwnRegistration::NotRegistered => log::warn!(
                    "this node's address {address} is not registered in the ProviderRegistry {registry}: register \
                     it there to receive the network's traffic. Serving anyway."
                ),
            }
        }
    }
}

#[async_trait]
impl BackgroundService for RegistryRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        if self.registries.own_address().is_none() {
            log::warn!("node.keyFile is not set: the node cannot check its own registration in the ProviderRegistry");
        }
        let registries = &self.registries;
        tokio::join!(
            self.keep_fresh(&registries.gateways, self.gateway_interval, shutdown.clone(), |_| {}),
            self.keep_fresh(&registries.providers, self.provider_interval, shutdown, self.own_registration_reporter()),
        );
    }
}
