//! Latency histograms and the JSON they are reported as.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// What a set of workers saw: latencies of the successful requests, and the failures.
pub struct Tally {
    pub latency: Histogram<u64>,
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn new() -> Self {
        Self { latency: histogram(), completed: 0, errors: 0, first_error: None }
    }

    pub fn ok(&mut self, micros: u64) {
        self.latency.saturating_record(micros.max(1));
        self.completed += 1;
    }

    pub fn failed(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }

    pub fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("histograms with the same bounds");
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Microseconds from 1 µs to 10 minutes, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub fn percentiles(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": histogram.value_at_quantile(0.5),
        "p90": histogram.value_at_quantile(0.9),
        "p99": histogram.value_at_quantile(0.99),
        "p999": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
        "mean": histogram.mean().round() as u64,
        // Nagle's algorithm meeting a delayed ACK shows as a cluster within 35–45 ms: more
        // samples there than in the 10 ms on either side.
        "near_40ms": histogram.count_between(35_000, 45_000),
        "beside_40ms": histogram.count_between(25_000, 35_000) + histogram.count_between(45_000, 55_000),
    })
}

/// The report of a closed- or open-loop run; the proxy's CPU time is divided by the requests
/// it completed.
pub struct LoadReport<'a> {
    pub mode: &'static str,
    pub connections: usize,
    pub tally: &'a Tally,
    pub elapsed: Duration,
    pub proxy_cpu_us: Option<u64>,
    pub rss_kib: Option<u64>,
}

impl LoadReport<'_> {
    pub fn to_json(&self) -> Value {
        let completed = self.tally.completed;
        json!({
            "mode": self.mode,
            "connections": self.connections,
            "duration_s": self.elapsed.as_secs_f64(),
            "completed": completed,
            "errors": self.tally.errors,
            "first_error": self.tally.first_error,
            "rps": completed as f64 / self.elapsed.as_secs_f64(),
            "latency_us": percentiles(&self.tally.latency),
            "proxy_cpu_us": self.proxy_cpu_us,
            "cpu_per_request_us": self.proxy_cpu_us.filter(|_| completed > 0).map(|cpu| cpu as f64 / completed as f64),
            "rss_kib": self.rss_kib,
        })
    }
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
