//! The requests a run sends, built (and, for fxn, signed with a fresh nonce each) before the
//! run starts so that the generator pays no signing cost while it measures.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{Method, Request, Uri};
use http_body_util::Full;

use fxn_node::keys::NodeKey;

/// How a request proves who sent it.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    /// fxn's gateway signature (`X-Address`, `X-Timestamp`, `X-Nonce`, `X-Signature`).
    Sign,
    /// A forgery: the gateway's headers, but signed over another body; one set for every request.
    Forged,
    /// `Authorization: Bearer TOKEN` (LiteLLM's master key).
    Bearer(String),
}

impl FromStr for Auth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "sign" => Ok(Self::Sign),
            "forged" => Ok(Self::Forged),
            _ => text
                .strip_prefix("bearer:")
                .map(|token| Self::Bearer(token.to_string()))
                .ok_or_else(|| format!("expected none, sign, forged or bearer:TOKEN, got {text:?}")),
        }
    }
}

#[derive(Args)]
pub struct RequestSpec {
    #[arg(long, default_value = "/v1/chat/completions")]
    pub path: String,
    #[arg(long, default_value = "fxn/test-model")]
    pub model: String,
    /// Size of the chat request's JSON body, padded in the message content.
    #[arg(long, default_value_t = 256)]
    pub body_bytes: usize,
    /// Send an embeddings request whose answer holds this many floats instead of a chat request.
    #[arg(long)]
    pub embedding_dimensions: Option<usize>,
    #[arg(long, default_value = "none")]
    pub auth: Auth,
    /// Extra `name:value` header.
    #[arg(long = "header")]
    pub headers: Vec<String>,
}

/// The key the harness signs with; the node under test trusts its address as a gateway.
pub fn signer() -> NodeKey {
    NodeKey::from_private_key_hex(&"11".repeat(32)).expect("a valid constant key")
}

impl RequestSpec {
    /// `count` requests' worth; unsigned requests are all alike, so only signed ones are counted.
    pub fn build(&self, target: SocketAddr, count: usize, stream: bool) -> anyhow::Result<RequestSet> {
        let body = Bytes::from(match self.embedding_dimensions {
            Some(dimensions) => embeddings_body(&self.model, dimensions),
            None => chat_body(&self.model, self.body_bytes, stream),
        });
        let mut common = HeaderMap::new();
        common.insert(HOST, HeaderValue::from_str(&target.to_string())?);
        common.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        common.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        for header in &self.headers {
            let (name, value) = header.split_once(':').with_context(|| format!("header {header:?} lacks ':'"))?;
            common.insert(HeaderName::from_str(name.trim())?, HeaderValue::from_str(value.trim())?);
        }
        let signed = match &self.auth {
            Auth::None => Vec::new(),
            Auth::Bearer(token) => {
                common.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}"))?);
                Vec::new()
            }
            Auth::Sign => sign_all(&body, count)?,
            Auth::Forged => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
                let other_body = b"not the body sent";
                common.extend(fxn_node::auth::sign_request(&signer().signing_key, other_body, now, "f0f0f0f0", false)?);
                Vec::new()
            }
        };
        let uri = Uri::from_str(&self.path).with_context(|| format!("bad path {:?}", self.path))?;
        Ok(RequestSet { uri, common, signed, body, next: AtomicUsize::new(0) })
    }
}

/// Signs `count` copies of `body`, each with its own nonce, on every core the process may use.
fn sign_all(body: &[u8], count: usize) -> anyhow::Result<Vec<HeaderMap>> {
    let key = signer();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    // Nonces are 16 hex digits, as the network's Go client sends: this run's start in the
    // upper half keeps runs apart, the request's index in the lower half.
    let run = now.as_nanos() as u32;
    let timestamp = now.as_secs() as i64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads).max(1);
    let chunks: Vec<anyhow::Result<Vec<HeaderMap>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(per_thread)
            .map(|first| {
                let key = &key;
                scope.spawn(move || {
                    (first..count.min(first + per_thread))
                        .map(|index| {
                            let nonce = format!("{run:08x}{index:08x}");
                            Ok(fxn_node::auth::sign_request(&key.signing_key, body, timestamp, &nonce, false)?)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("signing thread panicked")).collect()
    });
    let mut all = Vec::with_capacity(count);
    for chunk in chunks {
        all.extend(chunk?);
    }
    Ok(all)
}

/// A chat request for `model`, padded to exactly `size` bytes (or its minimum).
fn chat_body(model: &str, size: usize, stream: bool) -> Vec<u8> {
    let head = format!(r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":""#);
    let tail = r#""}]}"#;
    let mut body = head.into_bytes();
    let pad = size.saturating_sub(body.len() + tail.len());
    body.extend((0..pad).map(|i| b"abcdefghijklmnopqrstuvwxyz "[i % 27]));
    body.extend_from_slice(tail.as_bytes());
    body
}

fn embeddings_body(model: &str, dimensions: usize) -> Vec<u8> {
    format!(r#"{{"model":"{model}","input":"the quick brown fox","dimensions":{dimensions}}}"#).into_bytes()
}

/// Pre-built requests handed out in order; a signed set runs out, an unsigned one never does.
pub struct RequestSet {
    uri: Uri,
    common: HeaderMap,
    signed: Vec<HeaderMap>,
    body: Bytes,
    next: AtomicUsize,
}

impl RequestSet {
    pub fn next(&self) -> Option<Request<Full<Bytes>>> {
        let mut headers = self.common.clone();
        if !self.signed.is_empty() {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            headers.extend(self.signed.get(index)?.clone());
        }
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        Some(request)
    }
}
