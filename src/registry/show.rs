//! `fxn registry show`: one read of the chain, printed for an operator.

use ethers_core::types::Address;
use ethers_core::utils::to_checksum;

use super::chain::{ChainError, ChainRead, ChainReader};
use super::{own_registration_in, GatewayEntry, OwnRegistration, ProviderEntry};

fn paused(paused: bool) -> &'static str {
    if paused {
        "yes"
    } else {
        "no"
    }
}

pub async fn print(reader: &ChainReader, own_address: Option<Address>) -> Result<(), ChainError> {
    let chain_id = reader.checked_chain_id().await?;
    let gateways = reader.read::<GatewayEntry>().await?;
    let providers = reader.read::<ProviderEntry>().await?;
    println!("rpc: {}", reader.endpoint());
    println!("chain id: {chain_id}");
    println!("block: {}", gateways.block.max(providers.block));
    println!("router: {}", to_checksum(&reader.router(), None));
    println!(
        "gateway registry: {} ({} active gateways)",
        to_checksum(&gateways.registry, None),
        gateways.entries.len()
    );
    for g in &gateways.entries {
        println!(
            "  gateway owner={} id={} paused={} registeredAt={} metadata={:?}",
            to_checksum(&g.owner, None),
            g.id,
            paused(g.paused),
            g.registered_at,
            g.metadata
        );
    }
    print_providers(&providers);
    match own_address {
        None => println!("this node: node.keyFile is not set, so its own registration is not known"),
        Some(own) => {
            let address = to_checksum(&own, None);
            match own_registration_in(&providers.entries, own) {
                OwnRegistration::Registered { model_id } => {
                    println!("this node: {address} is registered for modelId {model_id}")
                }
                OwnRegistration::Paused { model_id } => {
                    println!("this node: {address} is registered for modelId {model_id}, but paused")
                }
                OwnRegistration::NotRegistered => println!("this node: {address} is not registered"),
            }
        }
    }
    Ok(())
}

fn print_providers(providers: &ChainRead<ProviderEntry>) {
    println!(
        "provider registry: {} ({} active providers)",
        to_checksum(&providers.registry, None),
        providers.entries.len()
    );
    for p in &providers.entries {
        println!(
            "  provider owner={} id={} modelId={} paused={} registeredAt={} metadata={:?}",
            to_checksum(&p.owner, None),
            p.id,
            p.model_id,
            paused(p.paused),
            p.registered_at,
            p.metadata
        );
    }
}
