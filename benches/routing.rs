//! What choosing a backend costs a request, with one backend per entry and with eight under
//! `least_requests` (and the other policies over eight, for comparison): the route lookup and
//! the choice each attempt makes, in one run so that they compare.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fxn_node::config::{ModelBackends, ProxySettings};
use fxn_node::routing::{Router, Tried};

fn router(backends: usize, policy: &str) -> Router {
    let urls: Vec<String> = (0..backends).map(|i| format!("{{url: \"http://127.0.0.1:{}\"}}", 8000 + i)).collect();
    let yaml = format!("models:\n  \"fxn/test-model\":\n    policy: {policy}\n    backends: [{}]\n", urls.join(", "));
    let backends = ModelBackends::parse(Path::new("model_backend.yaml"), &yaml).expect("a valid model_backend.yaml");
    Router::new(&backends, &ProxySettings::default())
}

fn choose_backend(c: &mut Criterion) {
    let mut group = c.benchmark_group("choose_backend");
    let key: &[u8] = b"You are a helpful assistant. Summarise the following conversation";
    for (policy, backends) in
        [("least_requests", 1), ("least_requests", 8), ("round_robin", 8), ("prefix_affinity", 8), ("backend_load", 8)]
    {
        let router = router(backends, policy);
        group.bench_function(BenchmarkId::new(policy, backends), |b| {
            b.iter(|| {
                let route = router.select("fxn/test-model").unwrap();
                route.choose(Some(key), Tried::default()).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, choose_backend);
criterion_main!(benches);
