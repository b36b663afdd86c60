//! The last good read of one chain registry, swapped in whole so that the request path reads
//! it without a lock, and what its refreshes have seen.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use ethers_core::types::Address;

use super::abi::RegistryEntry;
use super::chain::ChainRead;
use crate::auth::Membership;

/// One good read of a registry.
#[derive(Debug)]
pub struct Snapshot<E> {
    pub registry: Address,
    pub block: u64,
    pub entries: Vec<E>,
    /// Owners of at least one unpaused entry: who signs as this registry's members.
    trusted: HashSet<Address, foldhash::fast::RandomState>,
    pub loaded_at: SystemTime,
    loaded: Instant,
}

impl<E: RegistryEntry> Snapshot<E> {
    fn new(read: ChainRead<E>) -> Self {
        let trusted = read.entries.iter().filter(|e| !e.paused()).map(RegistryEntry::owner).collect();
        Self {
            registry: read.registry,
            block: read.block,
            entries: read.entries,
            trusted,
            loaded_at: SystemTime::now(),
            loaded: Instant::now(),
        }
    }

    pub fn trusted_count(&self) -> usize {
        self.trusted.len()
    }
}

/// What the refreshes of one registry have seen, for operators and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryStatus {
    /// Entries of the last good read (paused ones included).
    pub entries: usize,
    pub last_success: Option<SystemTime>,
    /// The chain's block at the last good read.
    pub block: Option<u64>,
    /// Failed refreshes since start, by cause (`timeout`, `reverted`, …).
    pub failures: BTreeMap<&'static str, u64>,
}

pub struct CachedRegistry<E> {
    snapshot: ArcSwapOption<Snapshot<E>>,
    max_staleness: Option<Duration>,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl<E: RegistryEntry> CachedRegistry<E> {
    pub fn new(max_staleness: Option<Duration>) -> Self {
        Self { snapshot: ArcSwapOption::empty(), max_staleness, failures: Mutex::default() }
    }

    /// Whether `address` owns an unpaused entry. Lock-free: one atomic load and one hash lookup.
    pub fn membership(&self, address: &Address) -> Membership {
        let guard = self.snapshot.load();
        let Some(snapshot) = guard.as_deref() else {
            return Membership::Unavailable;
        };
        if self.max_staleness.is_some_and(|max| snapshot.loaded.elapsed() > max) {
            return Membership::Unavailable;
        }
        if snapshot.trusted.contains(address) {
            Membership::Member
        } else {
            Membership::NotMember
        }
    }

    /// Replaces the snapshot with `read`, and hands back the new one.
    pub fn store(&self, read: ChainRead<E>) -> Arc<Snapshot<E>> {
        let snapshot = Arc::new(Snapshot::new(read));
        self.snapshot.store(Some(snapshot.clone()));
        snapshot
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot<E>>> {
        self.snapshot.load_full()
    }

    pub fn record_failure(&self, cause: &'static str) {
        *self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(cause).or_default() += 1;
    }

    pub fn status(&self) -> RegistryStatus {
        let snapshot = self.snapshot();
        RegistryStatus {
            entries: snapshot.as_ref().map_or(0, |s| s.entries.len()),
            last_success: snapshot.as_ref().map(|s| s.loaded_at),
            block: snapshot.as_ref().map(|s| s.block),
            failures: self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use ethers_core::types::U256;

    use super::*;
    use crate::registry::GatewayEntry;

    fn gateway(owner: u64, paused: bool) -> GatewayEntry {
        GatewayEntry {
            owner: Address::from_low_u64_be(owner),
            id: vec![owner as u8].into(),
            registered_at: U256::zero(),
            metadata: String::new(),
            paused,
        }
    }

    fn read(entries: Vec<GatewayEntry>) -> ChainRead<GatewayEntry> {
        ChainRead { registry: Address::repeat_byte(9), block: 7, entries }
    }

    #[test]
    fn unloaded_registry_is_unavailable_then_answers_by_owner() {
        let cache = CachedRegistry::new(None);
        let owner = Address::from_low_u64_be(1);
        assert_eq!(cache.membership(&owner), Membership::Unavailable);
        cache.store(read(vec![gateway(1, false), gateway(2, true)]));
        assert_eq!(cache.membership(&owner), Membership::Member);
        assert_eq!(cache.membership(&Address::from_low_u64_be(2)), Membership::NotMember, "paused");
        assert_eq!(cache.membership(&Address::from_low_u64_be(3)), Membership::NotMember);
        let status = cache.status();
        assert_eq!((status.entries, status.block), (2, Some(7)));
        assert_eq!(cache.snapshot().unwrap().trusted_count(), 1);
    }

    #[test]
    fn an_owner_with_one_unpaused_entry_is_trusted() {
        let cache = CachedRegistry::new(None);
        let mut second = gateway(1, false);
        second.id = vec![0xaa].into();
        cache.store(read(vec![gateway(1, true), second]));
        assert_eq!(cache.membership(&Address::from_low_u64_be(1)), Membership::Member);
    }

    #[test]
    fn stale_snapshot_is_not_trusted() {
        let cache = CachedRegistry::new(Some(Duration::from_millis(30)));
        cache.store(read(vec![gateway(1, false)]));
        assert_eq!(cache.membership(&Address::from_low_u64_be(1)), Membership::Member);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.membership(&Address::from_low_u64_be(1)), Membership::Unavailable);
        cache.store(read(vec![gateway(1, false)]));
        assert_eq!(cache.membership(&Address::from_low_u64_be(1)), Membership::Member);
    }

    #[test]
    fn failures_are_counted_by_cause() {
        let cache = CachedRegistry::<GatewayEntry>::new(None);
        cache.record_failure("timeout");
        cache.record_failure("timeout");
        cache.record_failure("reverted");
        let failures = cache.status().failures;
        assert_eq!(failures.get("timeout"), Some(&2));
        assert_eq!(failures.get("reverted"), Some(&1));
        assert_eq!(cache.status().last_success, None);
    }
}
