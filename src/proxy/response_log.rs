//! The one log line per request: what the node did with it and what the backend's response was
//! (its status, the time to its first byte, the body bytes relayed, the tokens it reported and,
//! for event streams, the events relayed), as text or with each field apart for the JSON log format.
//! The same observer gathers the answer's receipt, with receipts on, from what it has read.

use std::fmt;
use std::time::Duration;

use log::kv::{self, Key, Source, Value, VisitSource};
use pingora::http::ResponseHeader;

use super::receipt::PendingReceipt;
use super::upstream::{is_event_stream, Addendum, Exchange, ResponseObserver, SseEventCounter};
use super::usage::{Framing, Usage, UsageScanner};
use crate::metrics::{metrics, OpenStream, UpstreamRecord};

#[derive(Debug, Default)]
pub(crate) struct ResponseLog {
    ttfb: Option<Duration>,
    bytes_out: u64,
    /// Counted only for `text/event-stream` responses.
    events: Option<SseEventCounter>,
    /// Held while an event stream is relayed, so that it counts as open until the request ends.
    open_stream: Option<OpenStream>,
    usage: Option<UsageScanner>,
    receipt: Option<PendingReceipt>,
}

impl ResponseLog {
    pub(crate) fn with_receipt(receipt: PendingReceipt) -> Self {
        Self { receipt: Some(receipt), ..Self::default() }
    }

    pub(crate) fn upstream_record<'a>(&self, entry: &'a str) -> UpstreamRecord<'a> {
        UpstreamRecord {
            entry,
            ttfb: self.ttfb,
            bytes_out: self.bytes_out,
            events: self.events.as_ref().map(|counter| counter.events),
            usage: self.usage(),
        }
    }

    /// The request ended: its stream is no longer open. Called before the request is counted as
    /// finished, so that a scrape never sees a finished request's stream still open.
    pub(crate) fn end_stream(&mut self) {
        self.open_stream = None;
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().and_then(UsageScanner::usage)
    }
}

impl ResponseObserver for ResponseLog {
    fn on_response(&mut self, response: &ResponseHeader, ttfb: Duration) {
        self.ttfb = Some(ttfb);
        let event_stream = is_event_stream(response);
        self.events = event_stream.then(SseEventCounter::default);
        self.open_stream = event_stream.then(|| metrics().stream_opened());
        self.usage = Some(UsageScanner::new(if event_stream { Framing::EventStream } else { Framing::Json }));
        if let Some(receipt) = &mut self.receipt {
            receipt.on_response(response, event_stream);
        }
    }

    fn on_body(&mut self, chunk: &[u8]) {
        self.bytes_out += chunk.len() as u64;
        if let Some(events) = &mut self.events {
            events.feed(chunk);
        }
        if let Some(usage) = &mut self.usage {
            usage.feed(chunk);
        }
        if let Some(receipt) = &mut self.receipt {
            receipt.on_body(chunk);
        }
    }

    fn holds_header(&self) -> bool {
        self.receipt.as_ref().is_some_and(PendingReceipt::holds_header)
    }

    fn on_end(&mut self) -> Option<Addendum> {
        let at_event_boundary = self.events.as_ref().is_none_or(SseEventCounter::at_event_boundary);
        self.receipt.take()?.finish(self.usage(), at_event_boundary)
    }
}

/// ` ttfb_ms=… bytes_out=…[ events=…][ prompt_tokens=… completion_tokens=…]`, as the log line ends.
impl fmt::Display for ResponseLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ttfb {
            Some(ttfb) => write!(f, " ttfb_ms={:.1}", ttfb.as_secs_f64() * 1000.0)?,
            None => f.write_str(" ttfb_ms=-")?,
        }
        write!(f, " bytes_out={}", self.bytes_out)?;
        if let Some(events) = &self.events {
            write!(f, " events={}", events.events)?;
        }
        if let Some(usage) = self.usage() {
            write!(f, " prompt_tokens={} completion_tokens={}", usage.prompt_tokens, usage.completion_tokens)?;
        }
        Ok(())
    }
}

impl Source for ResponseLog {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        if let Some(ttfb) = self.ttfb {
            visitor.visit_pair(Key::from_str("ttfb_ms"), Value::from(ttfb.as_secs_f64() * 1000.0))?;
        }
        visitor.visit_pair(Key::from_str("bytes_out"), Value::from(self.bytes_out))?;
        if let Some(events) = &self.events {
            visitor.visit_pair(Key::from_str("events"), Value::from(events.events))?;
        }
        if let Some(usage) = self.usage() {
            visitor.visit_pair(Key::from_str("prompt_tokens"), Value::from(usage.prompt_tokens))?;
            visitor.visit_pair(Key::from_str("completion_tokens"), Value::from(usage.completion_tokens))?;
        }
        Ok(())
    }
}

/// One request's line: its `Display` is the text line, its [`Source`] the same fields apart
/// (absent ones left out, where the text says `-`).
pub(crate) struct RequestLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// `role:address`.
    pub signer: Option<&'a str>,
    pub model: Option<&'a str>,
    pub exchange: Option<&'a Exchange<ResponseLog>>,
    pub status: u16,
    pub body_bytes: usize,
    pub challenge: Option<&'static str>,
    pub duration_ms: f64,
    pub error: Option<&'a dyn fmt::Display>,
}

impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (method, path, status, body_bytes) = (self.method, self.path, self.status, self.body_bytes);
        let signer = self.signer.unwrap_or("-");
        let model = self.model.unwrap_or("-");
        let (entry, backend) = self.exchange.map_or(("-", "-"), |e| (e.route.entry.as_str(), e.backend().url.as_str()));
        write!(
            f,
            "{method} {path} signer={signer} model={model} entry={entry} backend={backend} status={status} body_bytes={body_bytes}"
        )?;
        if let Some(challenge) = self.challenge {
            write!(f, " challenge={challenge}")?;
        }
        if let Some(exchange) = self.exchange {
            write!(f, "{}", exchange.observer)?;
        }
        write!(f, " duration_ms={:.1} request_id={}", self.duration_ms, self.request_id)?;
        if let Some(error) = self.error {
            write!(f, " error={error}")?;
        }
        Ok(())
    }
}

impl Source for RequestLine<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        let mut pair = |key: &'static str, value: Value<'kvs>| visitor.visit_pair(Key::from_str(key), value);
        pair("request_id", self.request_id.into())?;
        pair("method", self.method.into())?;
        pair("path", self.path.into())?;
        let optional = [
            ("signer", self.signer),
            ("model", self.model),
            ("entry", self.exchange.map(|e| e.route.entry.as_str())),
            ("backend", self.exchange.map(|e| e.backend().url.as_str())),
            ("challenge", self.challenge),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                pair(key, value.into())?;
            }
        }
        pair("status", self.status.into())?;
        pair("body_bytes", self.body_bytes.into())?;
        pair("duration_ms", self.duration_ms.into())?;
        if let Some(error) = &self.error {
            pair("error", Value::from_display(error))?;
        }
        match self.exchange {
            Some(exchange) => exchange.observer.visit(visitor),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_logged_for_event_streams_only() {
        let body = b"data: 1\n\ndata: [DONE]\n\n";
        let mut logged = Vec::new();
        for content_type in ["text/event-stream; charset=utf-8", "application/json"] {
            let mut response = ResponseHeader::build(200, None).unwrap();
            response.insert_header("content-type", content_type).unwrap();
            let mut log = ResponseLog::default();
            log.on_response(&response, Duration::from_micros(2500));
            log.on_body(&body[..5]);
            log.on_body(&body[5..]);
            logged.push(log.to_string());
        }
        let bytes = body.len();
        assert_eq!(
            logged,
            [format!(" ttfb_ms=2.5 bytes_out={bytes} events=2"), format!(" ttfb_ms=2.5 bytes_out={bytes}")]
        );
        assert_eq!(ResponseLog::default().to_string(), " ttfb_ms=- bytes_out=0");
    }

    #[test]
    fn tokens_are_logged_when_the_backend_reports_them() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response.insert_header("content-type", "application/json").unwrap();
        let mut log = ResponseLog::default();
        log.on_response(&response, Duration::from_millis(4));
        let body = br#"{"choices":[],"usage":{"prompt_tokens":21,"completion_tokens":8}}"#;
        log.on_body(&body[..30]);
        log.on_body(&body[30..]);
        let expected_len = body.len();
        assert_eq!(
            log.to_string(),
            format!(" ttfb_ms=4.0 bytes_out={expected_len} prompt_tokens=21 completion_tokens=8")
        );
    }
}
