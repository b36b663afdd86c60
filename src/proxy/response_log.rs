//! What the one log line per request says about the backend's response: its status, the time to
//! its first byte, the body bytes relayed and, for event streams, the events relayed.

use std::fmt;
use std::time::Duration;

use pingora::http::ResponseHeader;

use super::upstream::{ResponseObserver, SseEventCounter};

#[derive(Debug, Default)]
pub(crate) struct ResponseLog {
    ttfb: Option<Duration>,
    bytes_out: u64,
    /// Counted only for `text/event-stream` responses.
    events: Option<SseEventCounter>,
}

impl ResponseLog {
    pub(crate) fn upstream_record<'a>(&self, entry: &'a str) -> crate::metrics::UpstreamRecord<'a> {
        crate::metrics::UpstreamRecord {
            entry,
            ttfb: self.ttfb,
            bytes_out: self.bytes_out,
            events: self.events.map(|counter| counter.events),
        }
    }
}

impl ResponseObserver for ResponseLog {
    fn on_response(&mut self, response: &ResponseHeader, ttfb: Duration) {
        self.ttfb = Some(ttfb);
        let content_type = response.headers.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
        let event_stream =
            content_type.is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"));
        self.events = event_stream.then(SseEventCounter::default);
    }

    fn on_body(&mut self, chunk: &[u8]) {
        self.bytes_out += chunk.len() as u64;
        if let Some(events) = &mut self.events {
            events.feed(chunk);
        }
    }
}

/// ` ttfb_ms=… bytes_out=…[ events=…]`, as the log line ends.
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
        Ok(())
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
}
