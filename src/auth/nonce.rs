//! Used nonces, remembered per signer for as long as their request could still be accepted.
//! Bounded: when full it refuses new requests rather than forget a live nonce.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ethers_core::types::Address;
use foldhash::fast::RandomState;

/// Independent locks, so that concurrent requests rarely wait on each other.
const SHARDS: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum NonceOutcome {
    Recorded,
    Reused,
    /// The store holds `max_entries` live nonces.
    Full,
}

type Shard = HashMap<(Address, Box<str>), Instant, RandomState>;

/// At most `max_entries` (signer, nonce) pairs, each kept until its expiry.
pub struct NonceStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    len: AtomicUsize,
    max_entries: usize,
}

impl NonceStore {
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            len: AtomicUsize::new(0),
            max_entries,
        }
    }

    fn shard(&self, signer: &Address, nonce: &str) -> std::sync::MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one((signer, nonce)) as usize % SHARDS;
        // Entries are plain values: a panic elsewhere cannot leave a shard inconsistent.
        self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `nonce` for `signer` until `expires`, unless it is already live.
    pub fn record(&self, signer: Address, nonce: &str, expires: Instant, now: Instant) -> NonceOutcome {
        let mut shard = self.shard(&signer, nonce);
        let key = (signer, Box::from(nonce));
        match shard.get_mut(&key) {
            Some(expiry) if *expiry > now => NonceOutcome::Reused,
            Some(expiry) => {
                // Expired but not yet purged: the slot is reused, the count unchanged.
                *expiry = expires;
                NonceOutcome::Recorded
            }
            None => {
                let reserved = self.len.fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                    (len < self.max_entries).then_some(len + 1)
                });
                if reserved.is_err() {
                    return NonceOutcome::Full;
                }
                shard.insert(key, expires);
                NonceOutcome::Recorded
            }
        }
    }

    /// Drops every nonce expired at `now`; returns how many.
    pub fn purge_expired(&self, now: Instant) -> usize {
        let mut purged = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let before = shard.len();
            shard.retain(|_, expiry| *expiry > now);
            purged += before - shard.len();
        }
        self.len.fetch_sub(purged, Ordering::AcqRel);
        purged
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_live_nonce_is_refused_per_signer() {
        let store = NonceStore::new(10);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let (alice, bob) = (Address::repeat_byte(1), Address::repeat_byte(2));
        assert_eq!(store.record(alice, "n1", later, now), NonceOutcome::Recorded);
        assert_eq!(store.record(alice, "n1", later, now), NonceOutcome::Reused);
        assert_eq!(store.record(bob, "n1", later, now), NonceOutcome::Recorded);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn full_store_refuses_instead_of_forgetting() {
        let store = NonceStore::new(3);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let signer = Address::repeat_byte(7);
        for nonce in ["a", "b", "c"] {
            assert_eq!(store.record(signer, nonce, later, now), NonceOutcome::Recorded);
        }
        assert_eq!(store.record(signer, "d", later, now), NonceOutcome::Full);
        // Every recorded nonce is still refused.
        for nonce in ["a", "b", "c"] {
            assert_eq!(store.record(signer, nonce, later, now), NonceOutcome::Reused);
        }
        // Once they expire and are purged, there is room again.
        assert_eq!(store.purge_expired(later + Duration::from_secs(1)), 3);
        assert_eq!(store.record(signer, "d", later + Duration::from_secs(60), later), NonceOutcome::Recorded);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn concurrent_recording_admits_each_nonce_once() {
        let store = std::sync::Arc::new(NonceStore::new(100_000));
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .filter(|i| store.record(Address::zero(), &i.to_string(), later, now) == NonceOutcome::Recorded)
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 2000);
        assert_eq!(store.len(), 2000);
    }
}
