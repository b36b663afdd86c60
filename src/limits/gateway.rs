//! Per-gateway limits (`limits.perGateway`): requests in flight, counted by a slot that the
//! request holds until its context is dropped (whichever way it ended), and a token bucket per
//! gateway (governor's GCRA, keyed by the signer's address).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ethers_core::types::Address;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::Refusal;
use crate::config::PerGatewayLimits;

/// How often the buckets of gateways that stopped sending are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Counts each gateway's requests in flight and paces their starts.
pub struct GatewayLimiter {
    max_in_flight: Option<u32>,
    /// Gateways with requests in flight now, and how many; an entry goes at its last request's end.
    in_flight: Mutex<HashMap<Address, u32, foldhash::fast::RandomState>>,
    rate: Option<RateLimit>,
}

struct RateLimit {
    buckets: DefaultKeyedRateLimiter<Address>,
    per_second: f64,
    burst: u32,
    created: Instant,
    /// Seconds after `created` when the next sweep is due.
    next_sweep: AtomicU64,
}

impl GatewayLimiter {
    pub fn new(limits: &PerGatewayLimits) -> Self {
        let rate = limits.requests_per_second.zip(limits.effective_burst()).and_then(|(per_second, burst)| {
            // The config check keeps both in range; a value that still fails means no limit.
            let quota =
                Quota::with_period(Duration::from_secs_f64(1.0 / per_second))?.allow_burst(NonZeroU32::new(burst)?);
            Some(RateLimit {
                buckets: DefaultKeyedRateLimiter::keyed(quota),
                per_second,
                burst,
                created: Instant::now(),
                next_sweep: AtomicU64::new(SWEEP_INTERVAL.as_secs()),
            })
        });
        Self { max_in_flight: limits.max_in_flight, in_flight: Mutex::default(), rate }
    }

    /// Admits one request of `gateway`, or says why not. The slot, when in-flight requests are
    /// limited, is held until it is dropped.
    pub fn admit(self: &Arc<Self>, gateway: Address) -> Result<Option<GatewaySlot>, Refusal> {
        // The slot first: a request refused for want of one spends no token.
        let slot = self.max_in_flight.map(|max| self.take_slot(gateway, max)).transpose()?;
        if let Some(rate) = &self.rate {
            rate.sweep_when_due();
            if let Err(not_until) = rate.buckets.check_key(&gateway) {
                let retry_after = not_until.wait_time_from(rate.buckets.clock().now());
                return Err(Refusal::GatewayRate { per_second: rate.per_second, burst: rate.burst, retry_after });
            }
        }
        Ok(slot)
    }

    fn take_slot(self: &Arc<Self>, gateway: Address, max: u32) -> Result<GatewaySlot, Refusal> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = in_flight.entry(gateway).or_insert(0);
        if *count >= max {
            return Err(Refusal::GatewayInFlight { max });
        }
        *count += 1;
        Ok(GatewaySlot { limiter: self.clone(), gateway })
    }

    /// The requests of `gateway` in flight now.
    pub fn in_flight(&self, gateway: &Address) -> u32 {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(gateway).copied().unwrap_or(0)
    }
}

impl RateLimit {
    /// Drops the buckets that have refilled (their gateways have been quiet since), so that the
    /// state holds only gateways that send; one request in a minute pays for it.
    fn sweep_when_due(&self) {
        let now = self.created.elapsed().as_secs();
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_sweep
                .compare_exchange(due, now + SWEEP_INTERVAL.as_secs(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
    }
}

/// One request of a gateway in flight; dropped with the request's context, on every path
/// (answered, failed, the caller gone, a stream ended).
pub struct GatewaySlot {
    limiter: Arc<GatewayLimiter>,
    gateway: Address,
}

impl std::fmt::Debug for GatewaySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySlot").field("gateway", &self.gateway).finish()
    }
}

impl Drop for GatewaySlot {
    fn drop(&mut self) {
        let mut in_flight = self.limiter.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = in_flight.get_mut(&self.gateway) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.gateway);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(
        max_in_flight: Option<u32>,
        requests_per_second: Option<f64>,
        burst: Option<u32>,
    ) -> Arc<GatewayLimiter> {
        Arc::new(GatewayLimiter::new(&PerGatewayLimits { max_in_flight, requests_per_second, burst }))
    }

    #[test]
    fn slots_are_counted_per_gateway_and_freed_on_drop() {
        let limits = limiter(Some(2), None, None);
        let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::GatewayInFlight { max: 2 });
        assert!(limits.admit(b).unwrap().is_some(), "another gateway has slots of its own");
        drop(first);
        assert_eq!(limits.in_flight(&a), 1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn rate_refuses_past_the_burst_with_the_wait() {
        let limits = limiter(None, Some(0.5), Some(3));
        let gateway = Address::repeat_byte(1);
        for _ in 0..3 {
            assert!(limits.admit(gateway).unwrap().is_none());
        }
        let refusal = limits.admit(gateway).unwrap_err();
        // One token every 2 s.
        assert_eq!(refusal.retry_after_secs(), 2, "{refusal:?}");
        assert_eq!(refusal.reason(), "gateway_rate");
        assert!(limits.admit(Address::repeat_byte(2)).is_ok());
    }

    #[test]
    fn no_limits_admit_everything_without_state() {
        let limits = limiter(None, None, None);
        for _ in 0..1000 {
            assert!(limits.admit(Address::repeat_byte(1)).unwrap().is_none());
        }
        assert!(limits.in_flight.lock().unwrap().is_empty());
    }
}
