//! The failed-authentication budget per peer address (`limits.authFailures`): an address that
//! failed more than `maxFailures` times within `window` is refused before its next requests'
//! signatures are checked, so that a flood of bad signatures costs a map lookup each rather
//! than the curve math, and gateways at other addresses keep the CPU.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Refusal;
use crate::config::{format_duration, AuthFailureBudget};

/// Failures counted per address, in fixed windows that begin at an address's first failure.
pub struct AuthFailureLimiter {
    max_failures: u32,
    window: Duration,
    max_addresses: usize,
    tracked: Mutex<Tracked>,
}

struct Tracked {
    addresses: HashMap<IpAddr, Window, foldhash::fast::RandomState>,
    /// While the map is full of live windows, when sweeping it may free a place again: one
    /// sweep per window at most, so that a full map does not cost a sweep per failure.
    next_sweep: Instant,
}

struct Window {
    started: Instant,
    failures: u32,
    /// The error code of the latest failure, for the refusal's message.
    last: &'static str,
}

/// The address a budget is kept for: an IPv6 peer's /64 (one host commonly holds a whole /64,
/// so its single addresses would be a budget each), an IPv4 peer (mapped into IPv6 or not) itself.
fn budget_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl AuthFailureLimiter {
    /// `None` when the budget is off.
    pub fn new(budget: &AuthFailureBudget) -> Option<Self> {
        budget.enabled.then(|| Self {
            max_failures: budget.max_failures,
            window: budget.window,
            max_addresses: budget.max_addresses,
            tracked: Mutex::new(Tracked { addresses: HashMap::default(), next_sweep: Instant::now() }),
        })
    }

    /// Refuses `peer` while it is over its budget; called before the request's signature is checked.
    pub fn check(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.check_at(peer, Instant::now())
    }

    fn check_at(&self, peer: IpAddr, now: Instant) -> Result<(), Refusal> {
        let tracked = self.tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(window) = tracked.addresses.get(&budget_key(peer)) else { return Ok(()) };
        let ends = window.started + self.window;
        if window.failures <= self.max_failures || now >= ends {
            return Ok(());
        }
        Err(Refusal::AuthFailures {
            max: self.max_failures,
            window: format_duration(self.window),
            last: window.last,
            retry_after: ends - now,
        })
    }

    /// Counts one failed authentication of `peer` (`code`, the error it was answered).
    pub fn failed(&self, peer: IpAddr, code: &'static str) {
        self.failed_at(peer, code, Instant::now());
    }

    fn failed_at(&self, peer: IpAddr, code: &'static str, now: Instant) {
        let key = budget_key(peer);
        let mut tracked = self.tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(window) = tracked.addresses.get_mut(&key) {
            if now >= window.started + self.window {
                *window = Window { started: now, failures: 0, last: code };
            }
            window.failures = window.failures.saturating_add(1);
            window.last = code;
            return;
        }
        if tracked.addresses.len() >= self.max_addresses {
            if now < tracked.next_sweep {
                // Full of live windows: this address goes untracked (it keeps its first
                // failures free, as a new address would anyway) rather than evict another's.
                return;
            }
            let period = self.window;
            tracked.addresses.retain(|_, window| now < window.started + period);
            tracked.next_sweep = now + period;
            if tracked.addresses.len() >= self.max_addresses {
                return;
            }
        }
        tracked.addresses.insert(key, Window { started: now, failures: 1, last: code });
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_failures: u32, max_addresses: usize) -> AuthFailureLimiter {
        AuthFailureLimiter::new(&AuthFailureBudget {
            enabled: true,
            max_failures,
            window: Duration::from_secs(10),
            max_addresses,
        })
        .unwrap()
    }

    #[test]
    fn an_address_over_its_budget_is_refused_until_the_window_ends() {
        let limits = budget(2, 16);
        let (attacker, other) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let start = Instant::now();
        for _ in 0..2 {
            limits.failed_at(attacker, "invalid_signature", start);
        }
        assert!(limits.check_at(attacker, start).is_ok(), "2 failures are within the budget");
        limits.failed_at(attacker, "invalid_signature", start);
        let refusal = limits.check_at(attacker, start + Duration::from_millis(2500)).unwrap_err();
        assert_eq!((refusal.reason(), refusal.retry_after_secs()), ("auth_failures", 8));
        assert!(refusal.to_string().contains("invalid_signature"), "{refusal}");
        assert!(limits.check_at(other, start).is_ok());
        assert!(limits.check_at(attacker, start + Duration::from_secs(10)).is_ok(), "the window ended");
        limits.failed_at(attacker, "stale_timestamp", start + Duration::from_secs(10));
        assert!(limits.check_at(attacker, start + Duration::from_secs(10)).is_ok(), "a new window began");
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let limits = budget(0, 16);
        let now = Instant::now();
        limits.failed_at("2001:db8::1".parse().unwrap(), "invalid_signature", now);
        assert!(limits.check_at("2001:db8::ffff:2".parse().unwrap(), now).is_err());
        assert!(limits.check_at("2001:db8:0:1::1".parse().unwrap(), now).is_ok());
        limits.failed_at("::ffff:10.0.0.1".parse().unwrap(), "invalid_signature", now);
        assert!(limits.check_at("10.0.0.1".parse().unwrap(), now).is_err());
    }

    #[test]
    fn the_map_stays_within_max_addresses() {
        let limits = budget(0, 4);
        let now = Instant::now();
        for last in 0..100u8 {
            limits.failed_at(IpAddr::from([10, 0, 0, last]), "invalid_signature", now);
        }
        assert_eq!(limits.tracked(), 4);
        assert!(limits.check_at(IpAddr::from([10, 0, 0, 0]), now).is_err(), "the first tracked stay tracked");
        // Once their windows have ended, new addresses take their places.
        let later = now + Duration::from_secs(11);
        limits.failed_at(IpAddr::from([10, 0, 1, 0]), "invalid_signature", later);
        assert_eq!(limits.tracked(), 1);
        assert!(limits.check_at(IpAddr::from([10, 0, 1, 0]), later).is_err());
    }
}
