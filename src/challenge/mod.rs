//! `POST /challenge` (PROTOCOL §3): the scheduler's checks, answered by the node itself.
//! The request is `{"type": "<TYPE>", "payload": <any JSON>}`. Each type is a [`Challenge`] in a
//! module of its own, found by name in [`Challenges`]' table; the heavy ones (a matrix product, a
//! model's round trip) run under one bound of `challenge.maxConcurrent`.

mod endpoint;
mod gpu;
mod identity;
mod matmul;
mod model_probe;
mod outcome;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::NodeConfig;
use crate::keys::NodeKey;
use crate::routing::RoutingError;
pub use gpu::{poll_into_metrics as poll_gpus_into_metrics, GpuStat};
pub use identity::identity_signature;
pub use matmul::MatrixMultiplication;
pub use model_probe::ModelProbe;
pub use outcome::Outcome;

/// The types this node answers, as the scheduler names them.
const TYPE_NAMES: &str = "IDENTITY, MATRIX_MULTIPLICATION, ENDPOINT_REACHABLE, PROXY";

/// Bodies larger than this are parsed on the blocking pool: a matrix payload of megabytes would
/// hold up every stream on the proxy thread that parsed it.
const INLINE_PARSE_LIMIT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    #[error(
        "the challenge must be a JSON object {{\"type\": \"<TYPE>\", \"payload\": …}} with `type` one of {types} ({0})",
        types = TYPE_NAMES
    )]
    Malformed(String),
    #[error("unknown challenge type `{0}`: this node answers {types}", types = TYPE_NAMES)]
    UnknownType(String),
    /// The payload does not have the shape `challenge` expects; `reason` says what was expected.
    #[error("{challenge} payload: {reason}")]
    InvalidPayload { challenge: &'static str, reason: String },
    #[error(
        "{0} MATRIX_MULTIPLICATION or PROXY challenge(s) already running, as many as challenge.maxConcurrent allows; retry shortly"
    )]
    Busy(usize),
    #[error(
        "IDENTITY needs the node's key: set node.keyFile in config.yaml (create one with `fxn accounts new --out node_key.json`)"
    )]
    NodeKeyMissing,
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("the challenge failed inside the node: {0}")]
    Internal(String),
}

impl ChallengeError {
    pub(crate) fn payload(challenge: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidPayload { challenge, reason: reason.into() }
    }
}

/// A challenge's payload: the raw JSON text of `payload` (`null` when absent) within the body.
pub struct Payload {
    body: Bytes,
    span: Option<Range<usize>>,
}

impl Payload {
    /// A payload given as its JSON text, as a bench or test holds it.
    pub fn from_json(json: impl Into<Bytes>) -> Self {
        let body = json.into();
        Self { span: Some(0..body.len()), body }
    }

    pub fn json(&self) -> &[u8] {
        self.span.clone().map_or(b"null", |span| &self.body[span])
    }

    /// The payload as `T`, or the error that names `challenge` and what it expected (`shape`).
    pub(crate) fn parse<'a, T: Deserialize<'a>>(
        &'a self,
        challenge: &'static str,
        shape: &str,
    ) -> Result<T, ChallengeError> {
        serde_json::from_slice(self.json())
            .map_err(|e| ChallengeError::payload(challenge, format!("{e}; expected {shape}")))
    }
}

/// What a challenge answered, with the figures the node's metrics report.
#[derive(Debug)]
pub struct Answer {
    pub json: serde_json::Value,
    pub figures: Figures,
}

impl From<serde_json::Value> for Answer {
    fn from(json: serde_json::Value) -> Self {
        Self { json, figures: Figures::default() }
    }
}

/// Measurements a challenge took, beyond its duration.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Figures {
    /// MATRIX_MULTIPLICATION: the product's dimension n (of n×n), and its rate.
    pub matrix_size: Option<usize>,
    pub gflops: Option<f64>,
    /// PROXY: the time to the first token.
    pub ttft: Option<Duration>,
}

/// One challenge type: its name on the wire and how it is answered.
#[async_trait]
pub trait Challenge: Send + Sync {
    /// `type` as the scheduler sends it.
    fn name(&self) -> &'static str;

    /// Whether it runs under `challenge.maxConcurrent`: the ones that keep CPU or a backend busy.
    fn bounded(&self) -> bool {
        false
    }

    async fn answer(&self, payload: Payload) -> Result<Answer, ChallengeError>;
}

/// The challenge service the proxy holds: every type's state, and the bound on the heavy ones.
pub struct Challenges {
    table: Vec<Box<dyn Challenge>>,
    heavy: Arc<Semaphore>,
    max_concurrent: usize,
}

impl Challenges {
    /// `probe` reaches the backends for PROXY as the proxy does.
    pub fn new(config: &NodeConfig, node_key: Option<NodeKey>, probe: ModelProbe) -> Self {
        let table: Vec<Box<dyn Challenge>> = vec![
            Box::new(identity::Identity::new(node_key, &config.public_ip)),
            Box::new(matmul::MatrixMultiplication::new(config.challenge.matrix_max_dim)),
            Box::new(endpoint::EndpointReachable::new(&config.challenge)),
            Box::new(probe),
        ];
        let max_concurrent = config.challenge.max_concurrent;
        Self { table, heavy: Arc::new(Semaphore::new(max_concurrent)), max_concurrent }
    }

    /// Answers a challenge request body; the type's name comes back with the answer or the error,
    /// when the body named a type this node knows.
    pub async fn answer(&self, body: Bytes) -> (Option<&'static str>, Result<Answer, ChallengeError>) {
        let started = Instant::now();
        let (challenge, payload) = match self.find(body).await {
            Ok(found) => found,
            Err(error) => return (None, Err(error)),
        };
        let result = self.run(challenge, payload).await;
        let took = started.elapsed();
        let figures = result.as_ref().map(|answer| answer.figures).unwrap_or_default();
        crate::metrics::metrics().challenge_finished(challenge.name(), Outcome::of(&result).as_str(), took, &figures);
        (Some(challenge.name()), result)
    }

    async fn run(&self, challenge: &dyn Challenge, payload: Payload) -> Result<Answer, ChallengeError> {
        if !challenge.bounded() {
            return challenge.answer(payload).await;
        }
        let _permit = self.heavy.try_acquire().map_err(|_| ChallengeError::Busy(self.max_concurrent))?;
        challenge.answer(payload).await
    }

    async fn find(&self, body: Bytes) -> Result<(&dyn Challenge, Payload), ChallengeError> {
        let (name, span) = if body.len() <= INLINE_PARSE_LIMIT {
            envelope(&body)?
        } else {
            let parsed = body.clone();
            tokio::task::spawn_blocking(move || envelope(&parsed))
                .await
                .map_err(|e| ChallengeError::Internal(e.to_string()))??
        };
        let challenge = self.table.iter().find(|c| c.name() == name).ok_or(ChallengeError::UnknownType(name))?;
        Ok((challenge.as_ref(), Payload { body, span }))
    }
}

/// The request's `type`, and where its `payload` is in `body` (none when absent).
fn envelope(body: &Bytes) -> Result<(String, Option<Range<usize>>), ChallengeError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: String,
        #[serde(borrow, default)]
        payload: Option<&'a RawValue>,
    }
    // serde would also read a struct from an array (`["IDENTITY"]`), which is no challenge.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ChallengeError::Malformed("the body is not a JSON object".into()));
    }
    let request: Envelope = serde_json::from_slice(body).map_err(|e| ChallengeError::Malformed(e.to_string()))?;
    // The raw text borrows from `body`: its place there is where it starts.
    let span = request.payload.map(|raw| {
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        start..start + raw.get().len()
    });
    Ok((request.kind, span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_names_the_type_and_the_payloads_place() {
        let body = Bytes::from_static(br#"{"payload": {"size": 3} ,"type":"MATRIX_MULTIPLICATION"}"#);
        let (name, span) = envelope(&body).unwrap();
        let payload = Payload { body: body.clone(), span };
        assert_eq!((name.as_str(), payload.json()), ("MATRIX_MULTIPLICATION", &br#"{"size": 3}"#[..]));
        let (_, span) = envelope(&Bytes::from_static(br#"{"type":"IDENTITY"}"#)).unwrap();
        assert_eq!(Payload { body, span }.json(), b"null");
        for malformed in
            [&b"[]"[..], br#"["IDENTITY"]"#, br#"{"payload":1}"#, br#"{"type":7}"#, b"{\"type\":\"IDENTITY\"", b""]
        {
            let error = envelope(&Bytes::from_static(malformed)).unwrap_err();
            assert!(matches!(error, ChallengeError::Malformed(_)), "{error}");
            assert!(error.to_string().contains(TYPE_NAMES), "{error}");
        }
    }
}
