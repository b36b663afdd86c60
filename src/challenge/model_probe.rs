//! PROXY (this node's own challenge type, beside the network's three): proves that the node
//! serves a model end to end. It sends a short streamed chat completion through the route a
//! gateway's request for that model takes (its backend, credential, alias and connection pool)
//! and reports how the backend answered: status, time to the first token, tokens and their rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use serde_json::json;

use super::{Answer, Challenge, ChallengeError, Figures, Payload};
use crate::proxy::{model_of, ApiError, ErrorCode, Exchange, Rejected, RequestId, ResponseObserver};
use crate::routing::Routes;

const NAME: &str = "PROXY";
const SHAPE: &str =
    r#"{"model": "<a model this node serves>", "prompt": "<optional text>", "maxTokens": <optional 1-256>}"#;
const DEFAULT_PROMPT: &str = "Say hello in one short sentence.";
const DEFAULT_MAX_TOKENS: u32 = 16;
/// A probe, not a workload: the scheduler measures latency and rate, which a few hundred tokens show.
const MAX_TOKENS_CAP: u32 = 256;
/// A longer line in the backend's stream is not an event this probe reads.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How the node reaches its backends: the same router, pool and attempt bound as the proxy.
pub struct ModelProbe {
    routes: Arc<Routes>,
    connector: Arc<Connector>,
    max_attempts: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProbeRequest {
    model: String,
    prompt: Option<String>,
    max_tokens: Option<u32>,
}

impl ModelProbe {
    pub fn new(routes: Arc<Routes>, connector: Arc<Connector>, max_attempts: usize) -> Self {
        Self { routes, connector, max_attempts }
    }

    async fn probe(&self, model: &str, body: Bytes) -> Result<serde_json::Value, ChallengeError> {
        let router = self.routes.current();
        let route = router.select(model)?;
        let field = model_of(&body).map_err(|e| ChallengeError::Internal(e.message))?;
        let mut request = RequestHeader::build("POST", b"/v1/chat/completions", Some(2))
            .map_err(|e| ChallengeError::Internal(e.to_string()))?;
        request
            .insert_header(http::header::CONTENT_TYPE, "application/json")
            .map_err(|e| ChallengeError::Internal(e.to_string()))?;
        let observer = StreamProbe::new();
        let began = observer.began;
        let exchange = Exchange::begin(
            router,
            route,
            &request,
            (&body, &field, false),
            (RequestId::new(), self.max_attempts),
            observer,
        )
        .await;
        let mut exchange = match exchange {
            Ok(exchange) => exchange,
            Err(Rejected::Answer(error)) => return Ok(unreachable(model, &error, began)),
            Err(Rejected::Failed(error)) => return Err(ChallengeError::Internal(error.to_string())),
        };
        let read = async {
            let (mut upstream, _) = exchange.open(&self.connector, request).await?;
            while exchange.next_body(&mut upstream).await?.is_some() {}
            exchange.release(&self.connector, upstream).await;
            Ok::<_, Box<pingora::Error>>(())
        };
        if let Err(error) = read.await {
            // A backend that answered with an error status is reported by that status below;
            // one that failed before or during a good answer, by the node's error code.
            let answered_error = exchange.observer.status.is_some_and(|status| !(200..300).contains(&status));
            if !answered_error {
                let error = ApiError::from_proxy_error(&error)
                    .unwrap_or_else(|| ApiError::new(ErrorCode::BackendUnavailable, "the backend connection failed"));
                return Ok(unreachable(model, &error, began));
            }
        }
        Ok(exchange.observer.answer(model))
    }
}

/// A backend that could not be reached or failed mid-answer: the node's error code, and no
/// detail that names the backend.
fn unreachable(model: &str, error: &ApiError, began: Instant) -> serde_json::Value {
    json!({ "model": model, "reachable": false, "error": error.code.as_str(), "totalMs": millis(began.elapsed()) })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[async_trait]
impl Challenge for ModelProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn bounded(&self) -> bool {
        true
    }

    async fn answer(&self, payload: Payload) -> Result<Answer, ChallengeError> {
        let request: ProbeRequest = payload.parse(NAME, SHAPE)?;
        let max_tokens = match request.max_tokens {
            Some(0) => {
                return Err(ChallengeError::payload(NAME, format!("maxTokens must be at least 1; expected {SHAPE}")))
            }
            Some(n) => n.min(MAX_TOKENS_CAP),
            None => DEFAULT_MAX_TOKENS,
        };
        let body = json!({
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt.as_deref().unwrap_or(DEFAULT_PROMPT)}],
            "max_tokens": max_tokens,
            "stream": true,
        });
        let json = self.probe(&request.model, Bytes::from(body.to_string())).await?;
        let ttft = json["ttftMs"].as_f64().map(|ms| Duration::from_secs_f64(ms / 1000.0));
        Ok(Answer { json, figures: Figures { ttft, ..Figures::default() } })
    }
}

/// Watches the backend's answer: its status, and the stream's tokens as they arrive.
struct StreamProbe {
    began: Instant,
    status: Option<u16>,
    first_token: Option<Duration>,
    last_byte: Option<Duration>,
    /// Events that carried generated text: one token each, unless the backend reports usage.
    content_events: u64,
    reported_tokens: Option<u64>,
    line: Vec<u8>,
}

impl StreamProbe {
    fn new() -> Self {
        Self {
            began: Instant::now(),
            status: None,
            first_token: None,
            last_byte: None,
            content_events: 0,
            reported_tokens: None,
            line: Vec::new(),
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else { return };
        // `[DONE]` and anything else that is not an event object carries no tokens.
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else { return };
        let choice = &event["choices"][0];
        let text = choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str());
        if text.is_some_and(|text| !text.is_empty()) {
            self.content_events += 1;
            self.first_token.get_or_insert(self.began.elapsed());
        }
        if let Some(tokens) = event["usage"]["completion_tokens"].as_u64() {
            self.reported_tokens = Some(tokens);
        }
    }

    fn answer(&self, model: &str) -> serde_json::Value {
        let total = self.last_byte.unwrap_or_else(|| self.began.elapsed());
        let tokens = self.reported_tokens.unwrap_or(self.content_events);
        // The rate of generation, after the first token; with one token, over the whole answer.
        let generating = match self.first_token {
            Some(first) if tokens > 1 && total > first => total - first,
            _ => total,
        };
        let rate = match tokens {
            0 => 0.0,
            1 => 1.0 / generating.as_secs_f64(),
            _ => (tokens - 1) as f64 / generating.as_secs_f64(),
        };
        let ok = self.status.is_some_and(|status| (200..300).contains(&status));
        json!({
            "model": model,
            "status": self.status,
            "ttftMs": self.first_token.map(millis),
            "totalMs": millis(total),
            "completionTokens": tokens,
            "tokensPerSecond": rate,
            "reachable": ok && tokens > 0,
        })
    }
}

impl ResponseObserver for StreamProbe {
    fn on_response(&mut self, response: &ResponseHeader, _ttfb: Duration) {
        self.status = Some(response.status.as_u16());
    }

    fn on_body(&mut self, chunk: &[u8]) {
        self.last_byte = Some(self.began.elapsed());
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            if self.line.len() + piece.len() <= MAX_LINE_BYTES {
                self.line.extend_from_slice(piece);
            }
            if piece.ends_with(b"\n") {
                let line = std::mem::take(&mut self.line);
                self.on_line(line.trim_ascii_end());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_counted_across_chunks_and_usage_wins() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        for split in 0..stream.len() {
            let mut probe = StreamProbe::new();
            probe.on_response(&ResponseHeader::build(200, None).unwrap(), Duration::ZERO);
            probe.on_body(&stream.as_bytes()[..split]);
            probe.on_body(&stream.as_bytes()[split..]);
            let answer = probe.answer("m");
            assert_eq!(answer["completionTokens"], 2, "split at {split}");
            assert_eq!(answer["reachable"], true);
            assert!(answer["ttftMs"].as_f64().is_some());
        }
        let mut probe = StreamProbe::new();
        probe.on_body(
            b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":7}}\n\n",
        );
        let answer = probe.answer("m");
        assert_eq!((answer["completionTokens"].as_u64(), answer["reachable"].as_bool()), (Some(7), Some(false)));
    }
}
