//! Micro-benchmarks of the per-request work: request verification (each header form, cached and
//! uncached key, each curve backend), body hashing, `model` extraction and the allowlist lookup.
//! Run with `cargo bench --bench auth`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ethers_core::types::Address;
use fxn_node::auth::{sign_request, Authenticator, CurveVerifier, NonceStore, Role, SignerDirectory, K256};
use fxn_node::config::{RegistrySettings, StaticSigners};
use fxn_node::keys::NodeKey;
use fxn_node::registry::StaticRegistry;
use http::HeaderMap;
use sha2::{Digest, Sha256};

struct Everyone;

impl SignerDirectory for Everyone {
    fn has_role(&self, _address: &Address, _role: Role) -> bool {
        true
    }
}

const BODY: &[u8] = br#"{"model":"meta/llama-4-scout-17b-16e-instruct","messages":[{"role":"user","content":"Say hello in five words."}],"stream":true}"#;

fn authenticator<V: CurveVerifier + Default>() -> Authenticator<V> {
    Authenticator::new(
        V::default(),
        Arc::new(Everyone),
        Arc::new(NonceStore::new(10_000_000)),
        Duration::from_secs(300),
        Duration::from_secs(300),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A signed request with a nonce never used before (signing happens outside the timing).
fn fresh_request(key: &NodeKey, with_public_key: bool) -> HeaderMap {
    let nonce = format!("{:016x}", rand::random::<u64>());
    sign_request(&key.signing_key, BODY, now(), &nonce, with_public_key).unwrap()
}

fn verification_with<V: CurveVerifier + Default>(c: &mut Criterion, backend: &str) {
    let key = NodeKey::generate();
    // Verification is async for the shared nonce store; the in-memory store answers at once.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group(format!("verify_request/{backend}"));
    for (form, with_public_key) in [("x_public_key", true), ("x_address_cached_key", false)] {
        let auth = authenticator::<V>();
        group.bench_function(form, |b| {
            b.iter_batched(
                || fresh_request(&key, with_public_key),
                |headers| runtime.block_on(auth.verify(&headers, BODY, Role::Gateway)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("x_address_recovered_each_time", |b| {
        b.iter_batched(
            || (authenticator::<V>(), fresh_request(&key, false)),
            |(auth, headers)| runtime.block_on(auth.verify(&headers, BODY, Role::Gateway)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn verification(c: &mut Criterion) {
    verification_with::<K256>(c, "k256");
    #[cfg(feature = "libsecp256k1")]
    verification_with::<fxn_node::auth::LibSecp256k1>(c, "libsecp256k1");
}

fn body_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256_body");
    for kib in [1, 10, 100] {
        let body = vec![b'x'; kib * 1024];
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(format!("{kib}KiB")), &body, |b, body| {
            b.iter(|| hex::encode(Sha256::digest(body)))
        });
    }
    group.finish();
}

fn model_extraction(c: &mut Criterion) {
    let mut group = c.benchmark_group("model_of");
    let long_chat = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"meta/llama-4-scout-17b-16e-instruct"}}"#,
        "word ".repeat(2000)
    );
    for (name, body) in [("small_chat", BODY.to_vec()), ("10KiB_chat_model_last", long_chat.into_bytes())] {
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| fxn_node::proxy::model_of(body).unwrap())
        });
    }
    group.finish();
}

fn allowlist_lookup(c: &mut Criterion) {
    let gateways: Vec<Address> = (0..1000u32).map(|i| Address::from_low_u64_be(u64::from(i) + 1)).collect();
    let settings = RegistrySettings {
        router_contract: None,
        gateway_poll_interval: Duration::from_secs(60),
        scheduler_poll_interval: Duration::from_secs(60),
        provider_poll_interval: Duration::from_secs(60),
        rpc_provider: None,
        scheduler_address: None,
        static_signers: StaticSigners { gateways: gateways.clone(), schedulers: vec![] },
    };
    let registry = StaticRegistry::from_settings(&settings);
    let member = gateways[500];
    let stranger = Address::repeat_byte(0xee);
    c.bench_function("allowlist_lookup/1000_gateways", |b| {
        b.iter(|| registry.has_role(&member, Role::Gateway) && !registry.has_role(&stranger, Role::Gateway))
    });
}

criterion_group!(benches, verification, body_hash, model_extraction, allowlist_lookup);
criterion_main!(benches);
