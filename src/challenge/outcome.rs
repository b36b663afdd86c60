//! How a challenge ended, as the node's metrics count it.

use super::{Answer, ChallengeError};

/// How a challenge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
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
            Err(ChallengeError::Routing(
                crate::routing::RoutingError::Unresolvable { .. } | crate::routing::RoutingError::AllDown { .. },
            )) => Self::Failed,
            Err(_) => Self::Invalid,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingError;

    #[test]
    fn each_result_has_its_outcome() {
        let unresolvable = RoutingError::Unresolvable { entry: "m".into(), host: "h".into(), reason: "r".into() };
        let unknown = RoutingError::UnknownModel { model: "m".into(), served: Vec::new() };
        let cases = [
            (Ok(Answer::from(serde_json::json!({}))), "answered"),
            (Err(ChallengeError::Busy(1)), "busy"),
            (Err(ChallengeError::NodeKeyMissing), "failed"),
            (Err(ChallengeError::Internal("x".into())), "failed"),
            (Err(ChallengeError::Routing(unresolvable)), "failed"),
            (Err(ChallengeError::Routing(unknown)), "invalid"),
            (Err(ChallengeError::payload("PROXY", "x")), "invalid"),
            (Err(ChallengeError::UnknownType("X".into())), "invalid"),
        ];
        for (result, outcome) in cases {
            assert_eq!(Outcome::of(&result).as_str(), outcome, "{result:?}");
        }
    }
}
