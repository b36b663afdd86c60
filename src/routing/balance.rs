//! Which of an entry's backends takes the next attempt, by the entry's `policy`: fewest requests
//! in flight (for the weight), weighted turns, a consistent hash of the conversation with a
//! bound on any one backend's load, or the least load the backends report of themselves. Backends that are down, or already tried by the request, are
//! passed over.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use pingora_ketama::{Bucket, Continuum};
use sha2::{Digest, Sha256};

use super::health::{Availability, BackendState};
use crate::config::{Affinity, Policy};

/// The backends a request has tried (or must not take), a bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn with(self, index: usize) -> Self {
        Self(self.0 | 1 << index)
    }

    pub fn has(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}

/// What the balancer reads of one backend.
pub(crate) trait Candidate {
    fn state(&self) -> &BackendState;
    fn weight(&self) -> u32;
    /// The text its place on the hash ring is derived from (its URL): stable across reloads
    /// and orderings of the list.
    fn identity(&self) -> &str;
}

pub(crate) enum Balancer {
    LeastRequests {
        /// Where the scan for the least loaded begins, turning, so that ties spread.
        start: AtomicUsize,
    },
    /// The least [`BackendState::load_estimate`] for the weight.
    BackendLoad { start: AtomicUsize },
    RoundRobin {
        /// Backend indices in the order they take turns, each as often as its weight.
        schedule: Vec<u8>,
        next: AtomicUsize,
    },
    PrefixAffinity {
        ring: Continuum,
        /// Each backend's stand-in address on the ring, by index.
        points: Vec<SocketAddr>,
        load_factor: f64,
    },
}

impl Balancer {
    pub(crate) fn new<C: Candidate>(policy: Policy, backends: &[C], affinity: &Affinity) -> Self {
        match policy {
            Policy::LeastRequests => Self::LeastRequests { start: AtomicUsize::new(0) },
            Policy::BackendLoad => Self::BackendLoad { start: AtomicUsize::new(0) },
            Policy::RoundRobin => Self::RoundRobin {
                schedule: smooth_weighted_schedule(&backends.iter().map(C::weight).collect::<Vec<_>>()),
                next: AtomicUsize::new(0),
            },
            Policy::PrefixAffinity => {
                let points: Vec<SocketAddr> = backends.iter().map(|b| ring_point(b.identity())).collect();
                let buckets: Vec<Bucket> =
                    points.iter().zip(backends).map(|(&point, b)| Bucket::new(point, b.weight())).collect();
                Self::PrefixAffinity { ring: Continuum::new(&buckets), points, load_factor: affinity.load_factor }
            }
        }
    }

    /// The backend for the next attempt, claimed (a backend past its cooldown takes one trial
    /// request only); `None` when every backend not in `tried` is down. `key` is the request's
    /// affinity key, read only by `prefix_affinity`.
    pub(crate) fn choose<C: Candidate>(&self, backends: &[C], key: Option<&[u8]>, tried: Tried) -> Option<usize> {
        let mut passed = tried;
        // A backend whose trial another request just took is passed over, and the choice made again.
        for _ in 0..backends.len() {
            let index = self.pick(backends, key, passed)?;
            if backends[index].state().claim() {
                return Some(index);
            }
            passed = passed.with(index);
        }
        None
    }

    fn pick<C: Candidate>(&self, backends: &[C], key: Option<&[u8]>, passed: Tried) -> Option<usize> {
        let open = |index: usize| !passed.has(index) && backends[index].state().availability() != Availability::Down;
        match self {
            Self::LeastRequests { start } | Self::BackendLoad { start } => {
                let start = start.fetch_add(1, Relaxed);
                let candidates = (0..backends.len()).map(|i| (start + i) % backends.len()).filter(|&i| open(i));
                match self {
                    Self::BackendLoad { .. } => least_by(backends, candidates, BackendState::load_estimate),
                    _ => least_loaded(backends, candidates),
                }
            }
            Self::RoundRobin { schedule, next } => {
                let turn = next.fetch_add(1, Relaxed);
                (0..schedule.len()).map(|i| usize::from(schedule[(turn + i) % schedule.len()])).find(|&i| open(i))
            }
            Self::PrefixAffinity { ring, points, load_factor } => {
                let open_backends: Vec<usize> = (0..backends.len()).filter(|&i| open(i)).collect();
                let Some(key) = key else {
                    return least_loaded(backends, open_backends.iter().copied());
                };
                // Consistent hashing with bounded loads: a backend already holding more than
                // `load_factor` times the mean (this request included) is passed over.
                let total: u64 = open_backends.iter().map(|&i| backends[i].state().in_flight()).sum();
                let mean = (total + 1) as f64 / open_backends.len().max(1) as f64;
                let capacity = (mean * load_factor).ceil() as u64;
                let mut seen = Tried::default();
                for point in ring.node_iter(key) {
                    let Some(index) = points.iter().position(|p| p == point) else { continue };
                    if seen.has(index) {
                        if open_backends.iter().all(|&i| seen.has(i)) {
                            break;
                        }
                        continue;
                    }
                    seen = seen.with(index);
                    if open(index) && backends[index].state().in_flight() < capacity {
                        return Some(index);
                    }
                }
                least_loaded(backends, open_backends.iter().copied())
            }
        }
    }
}

/// The candidate with the fewest requests in flight for its weight; the first of equals.
fn least_loaded<C: Candidate>(backends: &[C], candidates: impl Iterator<Item = usize>) -> Option<usize> {
    least_by(backends, candidates, BackendState::in_flight)
}

/// The candidate with the least `load` for its weight; the first of equals.
fn least_by<C: Candidate>(
    backends: &[C],
    candidates: impl Iterator<Item = usize>,
    load: impl Fn(&BackendState) -> u64,
) -> Option<usize> {
    // load / weight compared without division: a.load * b.weight < b.load * a.weight.
    let load = |i: usize| (u128::from(load(backends[i].state())), u128::from(backends[i].weight()));
    candidates.reduce(|best, i| {
        let ((best_load, best_weight), (load, weight)) = (load(best), load(i));
        if load * best_weight < best_load * weight {
            i
        } else {
            best
        }
    })
}

/// nginx's smooth weighted round robin, run once over a whole cycle: each backend appears as
/// often as its weight, spread out rather than in runs. Weights are divided by their greatest
/// common divisor first, so `2, 2` is the cycle `0, 1`.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u8> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    // A cycle of a few thousand turns is as fair as a longer one; long ones only cost memory.
    let length = total.min(4096);
    let mut current = vec![0i64; weights.len()];
    (0..length)
        .map(|_| {
            current.iter_mut().zip(&weights).for_each(|(c, w)| *c += w);
            let (chosen, _) =
                current.iter().enumerate().max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i))).unwrap_or((0, &0));
            current[chosen] -= total;
            // Entries list at most 64 backends (config::MAX_BACKENDS_PER_ENTRY).
            chosen as u8
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A stand-in socket address for a backend on the hash ring, which places nodes by address:
/// derived from its URL, so a backend keeps its place when others are added or reordered.
fn ring_point(identity: &str) -> SocketAddr {
    let digest = Sha256::digest(identity.as_bytes());
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&digest[..16]);
    SocketAddr::new(Ipv6Addr::from(octets).into(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, OutlierDetection};
    use crate::routing::health::InFlight;
    use crate::routing::BackendRoute;
    use std::sync::Arc;
    use std::time::Duration;

    fn fakes(weights: &[u32]) -> Vec<BackendRoute> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let url = format!("http://10.0.0.{i}:8000").parse().unwrap();
                BackendRoute::new(&Backend { url, weight, auth: None }, Arc::default())
            })
            .collect()
    }

    fn counts(picks: impl Iterator<Item = usize>, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        picks.for_each(|i| counts[i] += 1);
        counts
    }

    #[test]
    fn schedule_gives_each_its_weight_spread_out() {
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[2, 2]), [0, 1]);
        assert_eq!(smooth_weighted_schedule(&[1]), [0]);
        let schedule = smooth_weighted_schedule(&[3, 7, 1000]);
        assert_eq!(counts(schedule.iter().map(|&i| usize::from(i)), 3), [3, 7, 1000]);
    }

    #[test]
    fn round_robin_follows_weights_and_skips_the_down() {
        let backends = fakes(&[1, 3]);
        let balancer = Balancer::new(Policy::RoundRobin, &backends, &Affinity::default());
        let picks = (0..400).map(|_| balancer.choose(&backends, None, Tried::default()).unwrap());
        assert_eq!(counts(picks, 2), [100, 300]);
        let rule = OutlierDetection { consecutive_failures: 1, cooldown: Duration::from_secs(60) };
        backends[1].state.failed(&rule);
        assert!((0..10).all(|_| balancer.choose(&backends, None, Tried::default()) == Some(0)));
        assert_eq!(balancer.choose(&backends, None, Tried::default().with(0)), None);
    }

    #[test]
    fn least_requests_prefers_the_idle_for_its_weight() {
        let backends = fakes(&[1, 1, 2]);
        let balancer = Balancer::new(Policy::LeastRequests, &backends, &Affinity::default());
        let _busy: Vec<_> = [0, 0, 2, 2].iter().map(|&i| InFlight::new(backends[i].state.clone())).collect();
        // 2 of weight 1, 0 of weight 1, 2 of weight 2: backend 1 is the least loaded.
        assert_eq!(balancer.choose(&backends, None, Tried::default()), Some(1));
        // Held requests shift the choice: 2 of weight 1 weigh more than 2 of weight 2.
        let _more: Vec<_> = (0..2).map(|_| InFlight::new(backends[1].state.clone())).collect();
        let picks: Vec<_> =
            (0..6).map(|_| balancer.choose(&backends, None, Tried::default().with(0)).unwrap()).collect();
        assert_eq!(picks, [2; 6]);
        // Ties go round.
        let idle = fakes(&[1, 1, 1]);
        let picks = (0..300).map(|_| balancer.choose(&idle, None, Tried::default()).unwrap());
        assert_eq!(counts(picks, 3), [100, 100, 100]);
    }

    #[test]
    fn backend_load_prefers_what_the_backends_report_plus_what_was_sent_since() {
        let backends = fakes(&[1, 1]);
        let balancer = Balancer::new(Policy::BackendLoad, &backends, &Affinity::default());
        backends[0].state.report_load(Some(3));
        backends[1].state.report_load(Some(0));
        // Backend 1 takes requests until what it was sent since its report passes backend 0's load.
        let held: Vec<_> = (0..3)
            .map(|_| {
                let index = balancer.choose(&backends, None, Tried::default()).unwrap();
                InFlight::new(backends[index].state.clone())
            })
            .collect();
        assert_eq!(backends[1].state.in_flight(), 3);
        assert_eq!(backends[1].state.load_estimate(), 3);
        drop(held);
        backends[0].state.report_load(Some(0));
        backends[1].state.report_load(Some(9));
        assert!((0..5).all(|_| balancer.choose(&backends, None, Tried::default()) == Some(0)));
    }

    #[test]
    fn affinity_keeps_a_key_on_one_backend_within_a_bounded_load() {
        let backends = fakes(&[1, 1, 1, 1]);
        let affinity = Affinity { load_factor: 1.5, ..Affinity::default() };
        let balancer = Balancer::new(Policy::PrefixAffinity, &backends, &affinity);
        let home = balancer.choose(&backends, Some(b"session-7"), Tried::default()).unwrap();
        assert!((0..20).all(|_| balancer.choose(&backends, Some(b"session-7"), Tried::default()) == Some(home)));
        // Keys spread over the backends.
        let picks =
            (0..400).map(|k| balancer.choose(&backends, Some(format!("s{k}").as_bytes()), Tried::default()).unwrap());
        assert!(counts(picks, 4).iter().all(|&n| n > 40), "keys do not spread");
        // The same ring from a reordered list puts the key on the same backend.
        let reversed: Vec<BackendRoute> = fakes(&[1, 1, 1, 1]).into_iter().rev().collect();
        let again = Balancer::new(Policy::PrefixAffinity, &reversed, &affinity);
        let moved = again.choose(&reversed, Some(b"session-7"), Tried::default()).unwrap();
        assert_eq!(reversed[moved].url, backends[home].url);
        // Its home holding more than 1.5 times the mean, the key goes elsewhere.
        let _held: Vec<_> = (0..4).map(|_| InFlight::new(backends[home].state.clone())).collect();
        let spilled = balancer.choose(&backends, Some(b"session-7"), Tried::default()).unwrap();
        assert_ne!(spilled, home);
        // Tried backends are passed over.
        let tried = Tried::default().with(0).with(1).with(2);
        assert_eq!(balancer.choose(&backends, Some(b"session-7"), tried), Some(3));
    }
}
