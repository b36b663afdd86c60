//! `POST /challenge` (PROTOCOL §3): the scheduler's checks, answered by the node itself.
//! The request is `{"type": "<TYPE>", "payload": <any JSON>}`; each supported type gets a
//! module here. A type the node does not support is a 400, as the network expects.

use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChallengeError {
    #[error("the challenge must be a JSON object with a string `type` ({0})")]
    Malformed(String),
    #[error("unknown challenge type `{0}`")]
    UnknownType(String),
}

#[derive(Deserialize)]
struct ChallengeRequest {
    #[serde(rename = "type")]
    kind: String,
}

/// The answer to a challenge request body.
pub fn answer(body: &[u8]) -> Result<serde_json::Value, ChallengeError> {
    let request: ChallengeRequest =
        serde_json::from_slice(body).map_err(|e| ChallengeError::Malformed(e.to_string()))?;
    Err(ChallengeError::UnknownType(request.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_unknown_challenges_are_refused() {
        assert!(matches!(answer(b"[]"), Err(ChallengeError::Malformed(_))));
        assert!(matches!(answer(br#"{"payload":1}"#), Err(ChallengeError::Malformed(_))));
        assert_eq!(answer(br#"{"type":"DANCE"}"#), Err(ChallengeError::UnknownType("DANCE".into())));
    }
}
