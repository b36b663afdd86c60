//! What the node knows of each backend's health and load: requests in flight from this node,
//! failures in a row (passive outlier detection, with a cooldown and then one trial request),
//! and the verdict of the active checks. Shared by every route table that lists the backend, so
//! a reload keeps it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::OutlierDetection;

/// Whether a backend takes requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Up,
    /// Its cooldown is over: one trial request may go, and its outcome decides.
    Trial,
    Down,
}

#[derive(Debug)]
pub struct BackendState {
    in_flight: AtomicU64,
    failures: AtomicU32,
    /// Milliseconds after [`epoch`] until which the backend is out; 0 when it is not.
    ejected_until_ms: AtomicU64,
    trial_taken: AtomicBool,
    /// The active checks found it down.
    checked_down: AtomicBool,
    /// The active checks' run of passes (or failures) since the verdict last changed.
    check_streak: AtomicU32,
    /// `backend_load`: the load the backend last reported (`NO_REPORT` before one), and the
    /// requests this node had in flight on it then.
    reported_load: AtomicU64,
    in_flight_at_report: AtomicU64,
}

const NO_REPORT: u64 = u64::MAX;

impl Default for BackendState {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            trial_taken: AtomicBool::new(false),
            checked_down: AtomicBool::new(false),
            check_streak: AtomicU32::new(0),
            reported_load: AtomicU64::new(NO_REPORT),
            in_flight_at_report: AtomicU64::new(0),
        }
    }
}

/// The node's clock for cooldowns: milliseconds fit an atomic, an `Instant` does not.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl BackendState {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub fn availability(&self) -> Availability {
        if self.checked_down.load(Relaxed) {
            return Availability::Down;
        }
        match self.ejected_until_ms.load(Relaxed) {
            0 => Availability::Up,
            until if now_ms() < until => Availability::Down,
            _ if self.trial_taken.load(Relaxed) => Availability::Down,
            _ => Availability::Trial,
        }
    }

    /// Takes the backend for one request: always while it is up; after a cooldown only for the
    /// first request that asks.
    pub fn claim(&self) -> bool {
        match self.availability() {
            Availability::Up => true,
            Availability::Trial => self.trial_taken.compare_exchange(false, true, Relaxed, Relaxed).is_ok(),
            Availability::Down => false,
        }
    }

    /// How long until it may take requests again, when it is out for a cooldown.
    pub fn cooldown_left(&self) -> Option<Duration> {
        let until = self.ejected_until_ms.load(Relaxed);
        (until != 0).then(|| Duration::from_millis(until.saturating_sub(now_ms())))
    }

    /// What the backend's own metrics page said of its load (`None`: it said nothing).
    pub fn report_load(&self, load: Option<u64>) {
        self.in_flight_at_report.store(self.in_flight(), Relaxed);
        self.reported_load.store(load.map_or(NO_REPORT, |load| load.min(NO_REPORT - 1)), Relaxed);
    }

    /// Its load as `backend_load` weighs it: the last report plus the requests this node sent
    /// it since; without a report, the requests in flight alone.
    pub fn load_estimate(&self) -> u64 {
        let in_flight = self.in_flight();
        match self.reported_load.load(Relaxed) {
            NO_REPORT => in_flight,
            reported => reported.saturating_add(in_flight.saturating_sub(self.in_flight_at_report.load(Relaxed))),
        }
    }

    /// A request reached it and it answered as a live backend does.
    pub fn succeeded(&self) {
        self.failures.store(0, Relaxed);
        if self.ejected_until_ms.swap(0, Relaxed) != 0 {
            self.trial_taken.store(false, Relaxed);
        }
    }

    /// A request failed on it (connect failure, reset, 5xx); `outlier.consecutive_failures` in a
    /// row take it out for `outlier.cooldown`. Returns whether this failure took it out.
    pub fn failed(&self, outlier: &OutlierDetection) -> bool {
        let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        if failures < outlier.consecutive_failures {
            return false;
        }
        let cooldown = u64::try_from(outlier.cooldown.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until_ms.store(now_ms().saturating_add(cooldown).max(1), Relaxed);
        self.trial_taken.store(false, Relaxed);
        true
    }

    /// One active check's result; `thresholds` are the healthy and unhealthy runs that flip the
    /// verdict. Returns the verdict when this result changed it.
    pub fn checked(&self, healthy: bool, (healthy_threshold, unhealthy_threshold): (u32, u32)) -> Option<bool> {
        let down = self.checked_down.load(Relaxed);
        // A result that agrees with the verdict ends any run against it.
        if healthy != down {
            self.check_streak.store(0, Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Relaxed) + 1;
        let threshold = if down { healthy_threshold } else { unhealthy_threshold };
        if streak < threshold {
            return None;
        }
        self.check_streak.store(0, Relaxed);
        self.checked_down.store(!healthy, Relaxed);
        if healthy {
            // A backend the checks bring back starts afresh.
            self.succeeded();
        }
        Some(healthy)
    }
}

/// A request in flight on one backend, counted until it is dropped.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn new(state: Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(consecutive_failures: u32, cooldown: Duration) -> OutlierDetection {
        OutlierDetection { consecutive_failures, cooldown }
    }

    #[test]
    fn failures_in_a_row_eject_until_a_trial_succeeds() {
        let state = BackendState::default();
        let rule = outlier(3, Duration::from_millis(30));
        assert!(!state.failed(&rule) && !state.failed(&rule));
        state.succeeded();
        // The run starts again after a success.
        assert!(!state.failed(&rule) && !state.failed(&rule));
        assert_eq!(state.availability(), Availability::Up);
        assert!(state.failed(&rule));
        assert_eq!(state.availability(), Availability::Down);
        assert!(!state.claim());
        assert!(state.cooldown_left().is_some_and(|left| left <= Duration::from_millis(30)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(state.availability(), Availability::Trial);
        // One trial at a time.
        assert!(state.claim());
        assert!(!state.claim());
        // A failed trial ejects again; a successful one brings it back.
        assert!(state.failed(&rule));
        assert_eq!(state.availability(), Availability::Down);
        std::thread::sleep(Duration::from_millis(40));
        assert!(state.claim());
        state.succeeded();
        assert_eq!(state.availability(), Availability::Up);
        assert!(state.claim() && state.claim());
        assert_eq!(state.cooldown_left(), None);
    }

    #[test]
    fn active_checks_flip_after_their_thresholds() {
        let state = BackendState::default();
        let thresholds = (2, 3);
        assert_eq!(state.checked(false, thresholds), None);
        assert_eq!(state.checked(false, thresholds), None);
        // A pass breaks the run of failures.
        assert_eq!(state.checked(true, thresholds), None);
        assert_eq!(state.checked(false, thresholds), None);
        assert_eq!(state.checked(false, thresholds), None);
        assert_eq!(state.checked(false, thresholds), Some(false));
        assert_eq!(state.availability(), Availability::Down);
        assert_eq!(state.checked(true, thresholds), None);
        assert_eq!(state.checked(true, thresholds), Some(true));
        assert_eq!(state.availability(), Availability::Up);
    }

    #[test]
    fn reported_load_adds_the_requests_sent_since() {
        let state = Arc::new(BackendState::default());
        let before = InFlight::new(state.clone());
        assert_eq!(state.load_estimate(), 1);
        state.report_load(Some(10));
        assert_eq!(state.load_estimate(), 10);
        let after = [InFlight::new(state.clone()), InFlight::new(state.clone())];
        assert_eq!(state.load_estimate(), 12);
        drop((before, after));
        assert_eq!(state.load_estimate(), 10);
        state.report_load(None);
        assert_eq!(state.load_estimate(), 0);
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let state = Arc::new(BackendState::default());
        let first = InFlight::new(state.clone());
        let second = InFlight::new(state.clone());
        assert_eq!(state.in_flight(), 2);
        drop(first);
        assert_eq!(state.in_flight(), 1);
        drop(second);
        assert_eq!(state.in_flight(), 0);
    }
}
