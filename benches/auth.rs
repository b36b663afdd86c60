//! Request verification, the node's largest CPU cost per request: each header form, with the
//! recovered key cached and not. Run with `cargo bench --bench auth`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ethers_core::types::Address;
use fxn_node::auth::{sign_request, Authenticator, NonceStore, Role, SignerDirectory, K256};
use fxn_node::keys::NodeKey;
use http::HeaderMap;

struct Everyone;

impl SignerDirectory for Everyone {
    fn has_role(&self, _address: &Address, _role: Role) -> bool {
        true
    }
}

const BODY: &[u8] = br#"{"model":"meta/llama-4-scout-17b-16e-instruct","messages":[{"role":"user","content":"Say hello in five words."}],"stream":true}"#;

fn authenticator() -> Authenticator {
    Authenticator::new(
        K256,
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
    sign_request(&key.signing_key, BODY, now(), &nonce, with_public_key)
        .unwrap()
        .into_iter()
        .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
        .collect()
}

fn verification(c: &mut Criterion) {
    let key = NodeKey::generate();
    let mut group = c.benchmark_group("verify_request");

    let auth = authenticator();
    group.bench_function("x_public_key", |b| {
        b.iter_batched(
            || fresh_request(&key, true),
            |headers| auth.verify(&headers, BODY, Role::Gateway).unwrap(),
            BatchSize::SmallInput,
        )
    });

    let auth = authenticator();
    group.bench_function("x_address_cached_key", |b| {
        b.iter_batched(
            || fresh_request(&key, false),
            |headers| auth.verify(&headers, BODY, Role::Gateway).unwrap(),
            BatchSize::SmallInput,
        )
    });

    group.bench_function("x_address_recovered_each_time", |b| {
        b.iter_batched(
            || (authenticator(), fresh_request(&key, false)),
            |(auth, headers)| auth.verify(&headers, BODY, Role::Gateway).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
