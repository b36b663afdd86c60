//! Prometheus metrics, in the process's default registry, which `pingora-prometheus` serves on
//! the node's metrics listener (`metrics.listenAddress`; the signed port never serves them).
//! With prometheus's `process` feature that registry also reports the process's RSS, open fds
//! and CPU time (`process_*`). Every label takes a value from a fixed set or from the node's own config, never one a caller
//! chose: the count of series stays bounded whatever traffic arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    register_gauge_vec, register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, GaugeVec, Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::auth::{NonceStore, Role, Signer};
use crate::challenge::GpuStat;
use crate::proxy::Usage;
use crate::registry::{ChainRegistries, OwnRegistration};
use crate::routing::{Availability, Routes};

/// Buckets from 1 ms to about a minute: a signed request answered by the node itself takes
/// milliseconds, a long generation tens of seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The node's metrics; registered once, on first use.
pub struct Metrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_ttfb: HistogramVec,
    in_flight: IntGauge,
    streams_open: IntGauge,
    streams_without_usage: IntCounterVec,
    tokens: IntCounterVec,
    sse_events: IntCounterVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    auth_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    challenges: IntCounterVec,
    challenge_duration: HistogramVec,
    matmul_size: IntGauge,
    matmul_gflops: GaugeVec,
    proxy_ttft: Histogram,
    gpu_utilization: GaugeVec,
    gpu_memory_used: IntGaugeVec,
    gpu_memory_total: IntGaugeVec,
    backend_failures: IntCounterVec,
    backend_ejections: IntCounterVec,
    failovers: IntCounterVec,
    connections_cut: IntCounterVec,
}

/// `metrics.enabled: false` turns every recording into a no-op (the listener is not started).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Stops all recording, for `metrics.enabled: false`; called once, before the node serves.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Names are fixed at compile time and registered once: a failure is a programming error that
/// the first test run shows.
fn registered<T>(metric: prometheus::Result<T>) -> T {
    metric.expect("the node's metric names are valid and registered once")
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let build_info: IntGaugeVec = registered(register_int_gauge_vec!(
        "fxn_build_info",
        "Always 1; the labels name the running build (its version and git commit).",
        &["version", "commit"]
    ));
    build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("FXN_COMMIT")]).set(1);
    Metrics {
        requests: registered(register_int_counter_vec!(
            "fxn_requests_total",
            "Requests answered, by route, model (`other` for names model_backend.yaml does not list, `none` before one was read), status class and caller role.",
            &["route", "model", "status", "role"]
        )),
        request_duration: registered(register_histogram_vec!(
            "fxn_request_duration_seconds",
            "Time from the request's arrival to the end of its answer, by route.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )),
        upstream_ttfb: registered(register_histogram_vec!(
            "fxn_upstream_ttfb_seconds",
            "Time from sending a request to a backend to its response header, by model entry.",
            &["entry"],
            LATENCY_BUCKETS.to_vec()
        )),
        in_flight: registered(register_int_gauge!("fxn_requests_in_flight", "Requests being handled now.")),
        streams_open: registered(register_int_gauge!(
            "fxn_streams_open",
            "Event streams being relayed from backends now."
        )),
        streams_without_usage: registered(register_int_counter_vec!(
            "fxn_streams_without_usage_total",
            "Event streams that ended without reporting token usage, by model entry (see usage.requestStreamUsage).",
            &["entry"]
        )),
        tokens: registered(register_int_counter_vec!(
            "fxn_tokens_total",
            "Tokens backends reported in their responses' usage, by model (as for fxn_requests_total), gateway (its address; `unregistered` for other callers) and kind (prompt or completion).",
            &["model", "gateway", "kind"]
        )),
        sse_events: registered(register_int_counter_vec!(
            "fxn_sse_events_total",
            "Server-sent events relayed from backends, by model entry.",
            &["entry"]
        )),
        request_bytes: registered(register_int_counter_vec!(
            "fxn_request_bytes_total",
            "Request body bytes received from callers, by route.",
            &["route"]
        )),
        response_bytes: registered(register_int_counter_vec!(
            "fxn_response_bytes_total",
            "Response body bytes relayed from backends, by model entry.",
            &["entry"]
        )),
        auth_failures: registered(register_int_counter_vec!(
            "fxn_auth_failures_total",
            "Requests refused by authentication, by reason (the error code).",
            &["reason"]
        )),
        rate_limited: registered(register_int_counter_vec!(
            "fxn_rate_limited_total",
            "Requests refused by a limit (429 rate_limited), by reason: gateway_rate, gateway_in_flight (limits.perGateway), auth_failures (limits.authFailures, refused before their signature was checked).",
            &["reason"]
        )),
        challenges: registered(register_int_counter_vec!(
            "fxn_challenges_total",
            "Challenges answered or refused, by type and outcome.",
            &["type", "outcome"]
        )),
        challenge_duration: registered(register_histogram_vec!(
            "fxn_challenge_duration_seconds",
            "Time to answer a challenge, by type.",
            &["type"],
            LATENCY_BUCKETS.to_vec()
        )),
        matmul_size: registered(register_int_gauge!(
            "fxn_challenge_matmul_size",
            "The n of the latest square MATRIX_MULTIPLICATION product (n×n)."
        )),
        matmul_gflops: registered(register_gauge_vec!(
            "fxn_challenge_matmul_gflops",
            "The rate of the latest MATRIX_MULTIPLICATION, by backend.",
            &["backend"]
        )),
        proxy_ttft: registered(register_histogram!(
            "fxn_challenge_proxy_ttft_seconds",
            "PROXY challenges' time to the first token.",
            LATENCY_BUCKETS.to_vec()
        )),
        gpu_utilization: registered(register_gauge_vec!(
            "fxn_gpu_utilization_ratio",
            "The share of time the GPU was busy over NVML's last sample period, by device index and name.",
            &["gpu", "name"]
        )),
        gpu_memory_used: registered(register_int_gauge_vec!(
            "fxn_gpu_memory_used_bytes",
            "GPU memory in use, by device index and name.",
            &["gpu", "name"]
        )),
        gpu_memory_total: registered(register_int_gauge_vec!(
            "fxn_gpu_memory_total_bytes",
            "GPU memory in all, by device index and name.",
            &["gpu", "name"]
        )),
        backend_failures: registered(register_int_counter_vec!(
            "fxn_backend_failures_total",
            "Requests that failed on a backend (connect failure, reset, 5xx other than a prompt too long), by model entry and backend URL.",
            &["entry", "backend"]
        )),
        backend_ejections: registered(register_int_counter_vec!(
            "fxn_backend_ejections_total",
            "Times a backend was taken out for its cooldown after outlier.consecutive_failures failures in a row, by model entry and backend URL.",
            &["entry", "backend"]
        )),
        failovers: registered(register_int_counter_vec!(
            "fxn_failovers_total",
            "Requests sent again to another backend of their model entry after a failure before any byte reached the caller.",
            &["entry"]
        )),
        connections_cut: registered(register_int_counter_vec!(
            "fxn_connections_cut_total",
            "Callers' connections the node closed for a limit, by limit (`max_connections`: over limits.maxConnections, closed as accepted; `header_timeout`: a request header that took longer than limits.headerReadTimeout).",
            &["limit"]
        )),
    }
});

/// The node's metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// One finished request, as the log line reports it.
pub struct RequestRecord<'a> {
    pub route: &'static str,
    pub model: &'a str,
    pub status: u16,
    /// Who signed the request, once authenticated.
    pub signer: Option<Signer>,
    pub duration: Duration,
    pub body_bytes: usize,
    /// The backend's part, when the request was forwarded.
    pub upstream: Option<UpstreamRecord<'a>>,
}

pub struct UpstreamRecord<'a> {
    pub entry: &'a str,
    pub ttfb: Option<Duration>,
    pub bytes_out: u64,
    /// Events relayed, for event streams.
    pub events: Option<u64>,
    pub usage: Option<Usage>,
}

/// A status as its class: `2xx` … `5xx`, or `none` when no answer was sent.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// The `gateway` label of a signer: its address when a registry lists it as a gateway (every
/// authenticated gateway is), so the label's values are bounded by the registries.
fn gateway_label(signer: Option<Signer>) -> String {
    match signer {
        Some(Signer { address, role: Role::Gateway }) => format!("{address:?}"),
        _ => "unregistered".to_string(),
    }
}

impl Metrics {
    pub fn request_started(&self) -> InFlight {
        let counted = enabled();
        if counted {
            self.in_flight.inc();
        }
        InFlight { counted }
    }

    /// Counts an event stream open until the guard is dropped.
    pub fn stream_opened(&self) -> OpenStream {
        let counted = enabled();
        if counted {
            self.streams_open.inc();
        }
        OpenStream { counted }
    }

    pub fn request_finished(&self, record: &RequestRecord<'_>) {
        if !enabled() {
            return;
        }
        let role = record.signer.map_or("none", |signer| signer.role.as_str());
        self.requests.with_label_values(&[record.route, record.model, status_class(record.status), role]).inc();
        self.request_duration.with_label_values(&[record.route]).observe(record.duration.as_secs_f64());
        self.request_bytes.with_label_values(&[record.route]).inc_by(record.body_bytes as u64);
        if let Some(upstream) = &record.upstream {
            if let Some(ttfb) = upstream.ttfb {
                self.upstream_ttfb.with_label_values(&[upstream.entry]).observe(ttfb.as_secs_f64());
            }
            self.response_bytes.with_label_values(&[upstream.entry]).inc_by(upstream.bytes_out);
            if let Some(events) = upstream.events {
                self.sse_events.with_label_values(&[upstream.entry]).inc_by(events);
                if upstream.usage.is_none() {
                    self.streams_without_usage.with_label_values(&[upstream.entry]).inc();
                }
            }
            if let Some(usage) = upstream.usage {
                let gateway = gateway_label(record.signer);
                for (kind, count) in [("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)] {
                    self.tokens.with_label_values(&[record.model, &gateway, kind]).inc_by(count);
                }
            }
        }
    }

    /// A request failed on `backend` of `entry`; `ejected` when that took the backend out.
    pub fn backend_failed(&self, entry: &str, backend: &str, ejected: bool) {
        if enabled() {
            self.backend_failures.with_label_values(&[entry, backend]).inc();
            if ejected {
                self.backend_ejections.with_label_values(&[entry, backend]).inc();
            }
        }
    }

    /// A request of `entry` goes to another backend after a failure.
    pub fn failed_over(&self, entry: &str) {
        if enabled() {
            self.failovers.with_label_values(&[entry]).inc();
        }
    }

    /// `limit` is one of a fixed set: `max_connections`, `header_timeout`.
    pub fn connection_cut(&self, limit: &'static str) {
        if enabled() {
            self.connections_cut.with_label_values(&[limit]).inc();
        }
    }

    /// `reason` is an authentication error code: a fixed set.
    pub fn auth_failed(&self, reason: &'static str) {
        if enabled() {
            self.auth_failures.with_label_values(&[reason]).inc();
        }
    }

    /// A request refused by a limit; `reason` is one of `limits::Refusal::reason`'s.
    pub fn rate_limited(&self, reason: &'static str) {
        if enabled() {
            self.rate_limited.with_label_values(&[reason]).inc();
        }
    }

    /// The latest stats of every GPU (index, as NVML numbers them, and stats).
    pub fn gpus_read(&self, stats: &[GpuStat]) {
        const MIB: i64 = 1024 * 1024;
        for (index, gpu) in stats.iter().enumerate() {
            let labels = [index.to_string(), gpu.name.clone()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            self.gpu_utilization.with_label_values(&labels).set(f64::from(gpu.utilization_gpu_pct) / 100.0);
            let bytes = |mib: u64| i64::try_from(mib).unwrap_or(i64::MAX / MIB) * MIB;
            self.gpu_memory_used.with_label_values(&labels).set(bytes(gpu.vram_used_mb));
            self.gpu_memory_total.with_label_values(&labels).set(bytes(gpu.vram_total_mb));
        }
    }

    pub fn challenge_finished(
        &self,
        kind: &'static str,
        outcome: &'static str,
        took: Duration,
        figures: &crate::challenge::Figures,
    ) {
        if !enabled() {
            return;
        }
        self.challenges.with_label_values(&[kind, outcome]).inc();
        self.challenge_duration.with_label_values(&[kind]).observe(took.as_secs_f64());
        if let Some(size) = figures.matrix_size {
            self.matmul_size.set(i64::try_from(size).unwrap_or(i64::MAX));
        }
        if let Some(gflops) = figures.gflops {
            self.matmul_gflops.with_label_values(&["cpu"]).set(gflops);
        }
        if let Some(ttft) = figures.ttft {
            self.proxy_ttft.observe(ttft.as_secs_f64());
        }
    }
}

/// Counts a request in flight until dropped, whichever way the request ends.
pub struct InFlight {
    counted: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.counted {
            METRICS.in_flight.dec();
        }
    }
}

/// Counts an event stream open until dropped, with the exchange that relays it.
#[derive(Debug)]
pub struct OpenStream {
    counted: bool,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.counted {
            METRICS.streams_open.dec();
        }
    }
}

/// The in-memory nonce store's size, read at each scrape.
pub struct NonceStoreCollector {
    store: Arc<NonceStore>,
    entries: IntGauge,
    capacity: IntGauge,
}

impl NonceStoreCollector {
    pub fn register(store: Arc<NonceStore>) {
        let collector = Self {
            store,
            entries: registered(IntGauge::new(
                "fxn_nonce_store_entries",
                "Nonces the node's own store holds (those still within nonceCache.ttl).",
            )),
            capacity: registered(IntGauge::new(
                "fxn_nonce_store_capacity",
                "Nonces the node's own store can hold (nonceCache.maxEntries); when full, requests get 503.",
            )),
        };
        registered(prometheus::register(Box::new(collector)));
    }
}

impl Collector for NonceStoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.entries.desc().into_iter().chain(self.capacity.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauge = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
        self.entries.set(gauge(self.store.len()));
        self.capacity.set(gauge(self.store.capacity()));
        self.entries.collect().into_iter().chain(self.capacity.collect()).collect()
    }
}

/// Each backend's state in the route table in force, read at each scrape (a reload changes the
/// backends listed).
pub struct BackendCollector {
    routes: Arc<Routes>,
    up: IntGaugeVec,
    in_flight: IntGaugeVec,
}

impl BackendCollector {
    pub fn register(routes: Arc<Routes>) {
        let gauge = |name: &str, help: &str| registered(IntGaugeVec::new(Opts::new(name, help), &["entry", "backend"]));
        let collector = Self {
            routes,
            up: gauge(
                "fxn_backend_up",
                "1 while a backend takes requests; 0 while its health checks fail or it cools down after failures.",
            ),
            in_flight: gauge("fxn_backend_requests_in_flight", "Requests (streams until they end) on a backend now."),
        };
        registered(prometheus::register(Box::new(collector)));
    }
}

impl Collector for BackendCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.up.desc().into_iter().chain(self.in_flight.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.up.reset();
        self.in_flight.reset();
        let router = self.routes.current();
        for route in router.entries() {
            for backend in &route.backends {
                let labels = [route.entry.as_str(), backend.url.as_str()];
                let up = backend.state.availability() != Availability::Down;
                self.up.with_label_values(&labels).set(i64::from(up));
                self.in_flight
                    .with_label_values(&labels)
                    .set(i64::try_from(backend.state.in_flight()).unwrap_or(i64::MAX));
            }
        }
        self.up.collect().into_iter().chain(self.in_flight.collect()).collect()
    }
}

/// The chain registries' state, read at each scrape from what the refresher last stored (so the
/// refresher itself knows nothing of metrics).
pub struct RegistryCollector {
    registries: Arc<ChainRegistries>,
    /// The `fxn_id`s model_backend.yaml names, compared with this node's registered `modelId`.
    network_model_ids: Vec<String>,
    entries: IntGaugeVec,
    last_success: IntGaugeVec,
    block: IntGaugeVec,
    failures: IntCounterVec,
    registered: IntGauge,
    model_id_agrees: IntGauge,
}

impl RegistryCollector {
    /// Registers the collector; the node does once, when it reads a chain.
    pub fn register(registries: Arc<ChainRegistries>, network_model_ids: Vec<String>) {
        let gauge = |name: &str, help: &str| registered(IntGaugeVec::new(Opts::new(name, help), &["registry"]));
        let collector = Self {
            registries,
            network_model_ids,
            entries: gauge("fxn_registry_entries", "Entries of the registry's last good read, paused ones included."),
            last_success: gauge(
                "fxn_registry_last_success_timestamp_seconds",
                "When the registry was last read successfully (Unix seconds).",
            ),
            block: gauge("fxn_registry_block", "The chain's block at the registry's last good read."),
            failures: registered(IntCounterVec::new(
                Opts::new("fxn_registry_refresh_failures_total", "Failed refreshes of the registry, by cause."),
                &["registry", "cause"],
            )),
            registered: registered(IntGauge::new(
                "fxn_node_registered",
                "1 when the provider registry lists this node (node.keyFile's address) unpaused, else 0.",
            )),
            model_id_agrees: registered(IntGauge::new(
                "fxn_node_model_id_agrees",
                "1 when a model_backend.yaml fxn_id is the modelId this node is registered for, else 0.",
            )),
        };
        registered(prometheus::register(Box::new(collector)));
    }
}

impl Collector for RegistryCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = Vec::new();
        for collector in [&self.entries as &dyn Collector, &self.last_success, &self.block, &self.failures] {
            descs.extend(collector.desc());
        }
        descs.extend(self.registered.desc());
        descs.extend(self.model_id_agrees.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let statuses =
            [("gateway", self.registries.gateways.status()), ("provider", self.registries.providers.status())];
        for (name, status) in &statuses {
            self.entries.with_label_values(&[name]).set(i64::try_from(status.entries).unwrap_or(i64::MAX));
            let unix = |at: SystemTime| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if let Some(at) = status.last_success {
                self.last_success.with_label_values(&[name]).set(i64::try_from(unix(at)).unwrap_or(i64::MAX));
            }
            if let Some(block) = status.block {
                self.block.with_label_values(&[name]).set(i64::try_from(block).unwrap_or(i64::MAX));
            }
            for (cause, count) in &status.failures {
                // The registry keeps the running total; the counter is brought up to it.
                let counter = self.failures.with_label_values(&[name, cause]);
                counter.inc_by(count.saturating_sub(counter.get()));
            }
        }
        let mut families = Vec::new();
        for collector in [&self.entries as &dyn Collector, &self.last_success, &self.block, &self.failures] {
            families.extend(collector.collect());
        }
        if let Some(registration) = self.registries.own_registration() {
            let model_id = match registration {
                OwnRegistration::Registered { model_id } => Some(model_id),
                _ => None,
            };
            self.registered.set(i64::from(model_id.is_some()));
            families.extend(self.registered.collect());
            if let Some(model_id) = model_id.filter(|_| !self.network_model_ids.is_empty()) {
                self.model_id_agrees.set(i64::from(self.network_model_ids.contains(&model_id.to_string())));
                families.extend(self.model_id_agrees.collect());
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_counted_by_class() {
        let classes: Vec<&str> = [0, 101, 200, 204, 302, 401, 429, 502, 600].into_iter().map(status_class).collect();
        assert_eq!(classes, ["none", "1xx", "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "none"]);
    }

    #[test]
    fn in_flight_requests_are_counted_until_they_end() {
        let before = metrics().in_flight.get();
        let first = metrics().request_started();
        let second = metrics().request_started();
        assert_eq!(metrics().in_flight.get(), before + 2);
        drop((first, second));
        assert_eq!(metrics().in_flight.get(), before);
    }
}
