//! The receipt of one inference answer (`receipts.enabled`), gathered as the answer passes:
//! what the signature covered, then the response's status and body hash, signed once the body
//! has ended. How it reaches the caller is decided when the response header arrives.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ethers_core::types::Address;
use ethers_core::utils::to_checksum;
use pingora::http::ResponseHeader;
use sha2::{Digest, Sha256};

use super::upstream::Addendum;
use super::usage::Usage;
use crate::auth::Verified;
use crate::receipt::{Receipt, ReceiptSigner, VERSION};

/// What a receipt repeats of the signed request.
#[derive(Debug)]
pub(crate) struct SignedRequest {
    gateway: Address,
    nonce: String,
    timestamp: String,
    body_sha256: [u8; 32],
}

impl SignedRequest {
    pub(crate) fn of(verified: &Verified<'_>) -> Self {
        Self {
            gateway: verified.signer.address,
            nonce: verified.nonce.to_string(),
            timestamp: verified.timestamp.to_string(),
            body_sha256: verified.body_sha256,
        }
    }
}

/// How a receipt reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// In the response header, which waits for the body (an answer that is not streamed).
    Headers,
    /// As a comment line after the stream's last event.
    StreamComment,
}

#[derive(Debug)]
pub(crate) struct PendingReceipt {
    signer: Arc<ReceiptSigner>,
    request: SignedRequest,
    model: String,
    entry: String,
    /// The caller asked for a stream.
    streamed: bool,
    /// Set when the response header arrives; none when the answer cannot carry a receipt.
    delivery: Option<Delivery>,
    status: u16,
    body: Sha256,
}

impl PendingReceipt {
    pub(crate) fn new(
        signer: Arc<ReceiptSigner>,
        request: SignedRequest,
        (model, entry): (&str, &str),
        streamed: bool,
    ) -> Self {
        Self {
            signer,
            request,
            model: model.to_string(),
            entry: entry.to_string(),
            streamed,
            delivery: None,
            status: 0,
            body: Sha256::new(),
        }
    }

    /// A streamed request's receipt comes after its stream; a plain request's in its header. A
    /// streamed request answered with plain JSON (a backend's error) has none: on Pingora's path
    /// its header has gone before the body's hash is known. Nor has a stream framed by
    /// `Content-Length`, which the comment would overrun (SSE servers send streams chunked).
    pub(crate) fn on_response(&mut self, response: &ResponseHeader, event_stream: bool) {
        let framed_by_length = response.headers.contains_key(http::header::CONTENT_LENGTH);
        self.delivery = match (event_stream, self.streamed) {
            (true, _) if framed_by_length => None,
            (true, _) => Some(Delivery::StreamComment),
            (false, false) => Some(Delivery::Headers),
            (false, true) => None,
        };
        self.status = response.status.as_u16();
    }

    pub(crate) fn on_body(&mut self, chunk: &[u8]) {
        if self.delivery.is_some() {
            self.body.update(chunk);
        }
    }

    pub(crate) fn holds_header(&self) -> bool {
        self.delivery == Some(Delivery::Headers)
    }

    /// Signs the receipt of a body that ended whole; a stream's only when it ended between
    /// events (`at_event_boundary`), where a comment line cannot join the backend's last line.
    pub(crate) fn finish(self, usage: Option<Usage>, at_event_boundary: bool) -> Option<Addendum> {
        let delivery = self.delivery.filter(|&delivery| delivery == Delivery::Headers || at_event_boundary)?;
        let ended_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let receipt = Receipt {
            version: VERSION,
            node: self.signer.node().to_string(),
            gateway: to_checksum(&self.request.gateway, None),
            nonce: self.request.nonce,
            timestamp: self.request.timestamp,
            request_sha256: hex::encode(self.request.body_sha256),
            model: self.model,
            entry: self.entry,
            status: self.status,
            response_sha256: hex::encode(self.body.finalize()),
            prompt_tokens: usage.map(|usage| usage.prompt_tokens),
            completion_tokens: usage.map(|usage| usage.completion_tokens),
            ended_at_ms,
        };
        let signed = self.signer.sign(&receipt);
        Some(match delivery {
            Delivery::Headers => Addendum::Headers(signed),
            Delivery::StreamComment => Addendum::Trailing(signed.sse_comment()),
        })
    }
}
