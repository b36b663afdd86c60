//! What the metrics cost a request: recording one finished chat request as the node does (its
//! in-flight guard, the request counters and histograms, the backend's bytes, events and tokens),
//! with metrics on and then with `metrics.enabled: false`, in one run so the two compare.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ethers_core::types::Address;
use fxn_node::auth::{Role, Signer};
use fxn_node::metrics::{self, metrics, RequestRecord, UpstreamRecord};
use fxn_node::proxy::Usage;

/// A streamed chat request of a registered gateway, as `logging` reports it.
fn record(signer: &Signer) -> RequestRecord<'_> {
    RequestRecord {
        route: "/v1/chat/completions",
        model: "fxn/test-model",
        status: 200,
        signer: Some(*signer),
        duration: Duration::from_millis(850),
        body_bytes: 256,
        upstream: Some(UpstreamRecord {
            entry: "fxn/test-model",
            ttfb: Some(Duration::from_millis(40)),
            bytes_out: 12_000,
            events: Some(60),
            usage: Some(Usage { prompt_tokens: 120, completion_tokens: 60 }),
        }),
    }
}

fn one_request() {
    let signer = Signer { address: Address::repeat_byte(0x11), role: Role::Gateway };
    let in_flight = metrics().request_started();
    let stream = metrics().stream_opened();
    metrics().request_finished(&record(&signer));
    drop((stream, in_flight));
}

fn request_metrics(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_metrics");
    group.bench_function("on", |b| b.iter(one_request));
    // Irreversible for the process: the last measurement of the run.
    metrics::disable();
    group.bench_function("off", |b| b.iter(one_request));
    group.finish();
}

criterion_group!(benches, request_metrics);
criterion_main!(benches);
