//! What the challenges did, by type and outcome, kept for the node's metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Answer, ChallengeError, Figures};

/// How a challenge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Answered,
    /// Refused for what the scheduler sent (a bad payload, an unknown model).
    Invalid,
    /// Refused because `challenge.maxConcurrent` challenges were running.
    Busy,
    /// The node could not answer (no key, a failure of its own).
    Failed,
}

impl Outcome {
    pub(super) fn of(result: &Result<Answer, ChallengeError>) -> Self {
        match result {
            Ok(_) => Self::Answered,
            Err(ChallengeError::Busy(_)) => Self::Busy,
            Err(ChallengeError::NodeKeyMissing | ChallengeError::Internal(_)) => Self::Failed,
            Err(ChallengeError::Routing(crate::routing::RoutingError::Unresolvable { .. })) => Self::Failed,
            Err(_) => Self::Invalid,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The challenges of one type and outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    pub count: u64,
    pub total_duration: Duration,
    /// The figures of the latest one.
    pub last: Figures,
}

#[derive(Debug, Default)]
pub struct ChallengeStats {
    tallies: Mutex<BTreeMap<(&'static str, Outcome), Tally>>,
}

impl ChallengeStats {
    pub(super) fn record(&self, name: &'static str, result: &Result<Answer, ChallengeError>, took: Duration) {
        // Challenges come seconds apart: a lock costs nothing here, and no one holds it long.
        let mut tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tally = tallies.entry((name, Outcome::of(result))).or_default();
        tally.count += 1;
        tally.total_duration += took;
        if let Ok(answer) = result {
            tally.last = answer.figures;
        }
    }

    /// Every (type, outcome) seen so far, in order.
    pub fn snapshot(&self) -> Vec<(&'static str, Outcome, Tally)> {
        let tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tallies.iter().map(|(&(name, outcome), tally)| (name, outcome, *tally)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_tallied_by_type_and_outcome() {
        let stats = ChallengeStats::default();
        let figures = Figures { matrix_size: Some(4), gflops: Some(1.5), ttft: None };
        let answered = || Ok(Answer { json: serde_json::json!({}), figures });
        stats.record("MATRIX_MULTIPLICATION", &answered(), Duration::from_millis(3));
        stats.record("MATRIX_MULTIPLICATION", &answered(), Duration::from_millis(5));
        stats.record("MATRIX_MULTIPLICATION", &Err(ChallengeError::Busy(1)), Duration::ZERO);
        stats.record("IDENTITY", &Err(ChallengeError::NodeKeyMissing), Duration::ZERO);
        let snapshot = stats.snapshot();
        let rows: Vec<(&str, &str, u64)> = snapshot.iter().map(|(n, o, t)| (*n, o.as_str(), t.count)).collect();
        assert_eq!(
            rows,
            [("IDENTITY", "failed", 1), ("MATRIX_MULTIPLICATION", "answered", 2), ("MATRIX_MULTIPLICATION", "busy", 1)]
        );
        assert_eq!(snapshot[1].2.total_duration, Duration::from_millis(8));
        assert_eq!(snapshot[1].2.last, figures);
    }
}
