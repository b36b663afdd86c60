//! SSE streams held open: one connection per stream, every event's delay measured from the
//! backend's `sent_at_us` stamp to its arrival here (both read the same wall clock).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::client;
use crate::proc_stats::Watched;
use crate::requests::RequestSet;
use crate::summary::{histogram, micros, percentiles};

/// Time a stream may take beyond its schedule before it counts as failed.
const SLACK: Duration = Duration::from_secs(30);
/// How often the proxy's RSS is sampled for its peak.
const RSS_SAMPLE: Duration = Duration::from_millis(100);

pub struct Plan {
    pub streams: usize,
    pub chunks: u32,
    pub interval: Duration,
    /// Stream `i` of `n` starts `ramp · i / n` after the first, so the proxy sees a steady
    /// arrival of new streams rather than one burst that every first event would wait behind.
    pub ramp: Duration,
}

struct Recorder {
    first_event: Histogram<u64>,
    delay: Histogram<u64>,
}

/// Streams now open, and the most open at once.
#[derive(Default)]
struct Gauge {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Outcome {
    events: u64,
    complete: bool,
    error: Option<String>,
}

pub async fn run(target: SocketAddr, set: RequestSet, plan: Plan, watched: &Watched) -> anyhow::Result<Value> {
    let recorder = Arc::new(Mutex::new(Recorder { first_event: histogram(), delay: histogram() }));
    let gauge = Arc::new(Gauge::default());
    let rss_idle = watched.rss_kib();
    let rss_peak = Arc::new(AtomicU64::new(rss_idle.unwrap_or(0)));
    let cpu_before = watched.cpu_us();
    let start = Instant::now();
    let deadline = start + plan.ramp + plan.interval * plan.chunks + SLACK;
    let mut streams = Vec::with_capacity(plan.streams);
    for index in 0..plan.streams {
        let request = set.next().context("fewer signed requests than streams")?;
        let opens_at = start + plan.ramp.mul_f64(index as f64 / plan.streams as f64);
        let (recorder, gauge) = (recorder.clone(), gauge.clone());
        streams.push(tokio::spawn(async move {
            tokio::time::sleep_until(opens_at.into()).await;
            one_stream(target, request, &recorder, &gauge, plan.chunks, deadline).await
        }));
    }
    let sampler = {
        let (pids, peak) = (watched.clone(), rss_peak.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RSS_SAMPLE);
            loop {
                ticks.tick().await;
                if let Some(rss) = pids.rss_kib() {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
            }
        })
    };
    let (mut events, mut completed, mut first_error) = (0u64, 0u64, None);
    for stream in streams {
        let outcome = stream.await?;
        events += outcome.events;
        completed += u64::from(outcome.complete);
        if first_error.is_none() {
            first_error = outcome.error;
        }
    }
    sampler.abort();
    let elapsed = start.elapsed();
    let proxy_cpu_us = watched.cpu_us().zip(cpu_before).map(|(after, before)| after - before);
    let recorder = recorder.lock().expect("no stream panicked holding it");
    let expected = plan.streams as u64 * u64::from(plan.chunks);
    Ok(json!({
        "mode": "stream",
        "streams": plan.streams,
        "chunks": plan.chunks,
        "interval_ms": plan.interval.as_millis() as u64,
        "ramp_s": plan.ramp.as_secs_f64(),
        "duration_s": elapsed.as_secs_f64(),
        "streams_completed": completed,
        "streams_failed": plan.streams as u64 - completed,
        "first_error": first_error,
        "events": events,
        "events_lost": expected - events.min(expected),
        "events_per_s": events as f64 / elapsed.as_secs_f64(),
        "peak_open_streams": gauge.peak.load(Ordering::Relaxed),
        "first_event_us": percentiles(&recorder.first_event),
        "event_delay_us": percentiles(&recorder.delay),
        "proxy_cpu_us": proxy_cpu_us,
        "cpu_per_event_us": proxy_cpu_us.filter(|_| events > 0).map(|cpu| cpu as f64 / events as f64),
        "rss_kib_idle": rss_idle,
        "rss_kib_peak": rss_idle.map(|_| rss_peak.load(Ordering::Relaxed)),
    }))
}

/// Opens one stream and reads it to its end; a stream is complete when every event and the
/// closing `[DONE]` arrived.
async fn one_stream(
    target: SocketAddr,
    request: Request<Full<Bytes>>,
    recorder: &Mutex<Recorder>,
    gauge: &Gauge,
    chunks: u32,
    deadline: Instant,
) -> Outcome {
    let sent = Instant::now();
    let opened = async {
        let mut connection = client::connect(target).await?;
        connection.ready().await?;
        let response = connection.send_request(request).await?;
        anyhow::ensure!(response.status().is_success(), "status {}", response.status());
        // The sender is kept so the connection lives as long as the body is read.
        Ok((connection, response))
    };
    let (_connection, response) = match tokio::time::timeout_at(deadline.into(), opened).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Outcome { events: 0, complete: false, error: Some(format!("{e:#}")) },
        Err(_) => return Outcome { events: 0, complete: false, error: Some("not opened by the deadline".into()) },
    };
    gauge.opened();
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let (mut events, mut done, mut error) = (0u64, false, None);
    while error.is_none() {
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(format!("stream cut: {e}"));
                break;
            }
            Err(_) => {
                error = Some("stream unfinished at the deadline".into());
                break;
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        buffer.extend_from_slice(&data);
        while let Some(end) = find(&buffer, b"\n\n") {
            let event = buffer.split_to(end + 2);
            if event.starts_with(b"data: [DONE]") {
                done = true;
            } else if let Some(sent_at) = sent_at_us(&event) {
                let delay = unix_micros().saturating_sub(sent_at);
                let mut recorder = recorder.lock().expect("no stream panicked holding it");
                recorder.delay.saturating_record(delay.max(1));
                if events == 0 {
                    recorder.first_event.saturating_record(micros(sent.elapsed()).max(1));
                }
                events += 1;
            }
        }
    }
    gauge.closed();
    let complete = done && events == u64::from(chunks) && error.is_none();
    if !complete && error.is_none() {
        error = Some(format!("{events} of {chunks} events, [DONE] {}", if done { "seen" } else { "missing" }));
    }
    Outcome { events, complete, error }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The backend's send time, stamped in each event as `"sent_at_us":"<unix micros>"`.
fn sent_at_us(event: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_at_us\":\"";
    let start = find(event, KEY)? + KEY.len();
    let digits = &event[start..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, micros)
}
