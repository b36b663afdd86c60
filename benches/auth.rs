//! Micro-benchmarks of the per-request work: request verification (each header form, cached and
//! uncached key, each curve backend, a 10,000-gateway registry static or from the chain), body hashing,
//! `model` extraction, the allowlist lookup, a chain refresh (decode and index 10,000 gateways) and
//! signing an answer's receipt (each curve backend, and the whole receipt).
//! Run with `cargo bench --bench auth`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ethers_core::types::Address;
use fxn_node::auth::{
    sign_request, Authenticator, CurveVerifier, DefaultCurve, K256Signer, Membership, NonceStore, Role,
    SignerDirectory, SignerRoles, K256,
};
use fxn_node::config::{NodeConfig, RegistrySettings};
use fxn_node::keys::NodeKey;
use fxn_node::receipt::{Receipt, ReceiptSigner, VERSION};
use fxn_node::registry::{
    CachedRegistry, ChainRead, ChainRegistries, Directory, GatewayEntry, RegistryCalls, StaticRegistry,
};
use http::HeaderMap;
use sha2::{Digest, Sha256};

struct Everyone;

impl SignerDirectory for Everyone {
    fn roles(&self, _address: &Address) -> SignerRoles {
        SignerRoles { gateway: Membership::Member, scheduler: Membership::Member }
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
                |headers| runtime.block_on(auth.verify(&headers, BODY, Role::Gateway)).unwrap().signer,
                BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("x_address_recovered_each_time", |b| {
        b.iter_batched(
            || (authenticator::<V>(), fresh_request(&key, false)),
            |(auth, headers)| runtime.block_on(auth.verify(&headers, BODY, Role::Gateway)).unwrap().signer,
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

/// Registry settings trusting `gateways` statically.
fn static_settings(gateways: Vec<Address>) -> RegistrySettings {
    let listed: Vec<String> = gateways.iter().map(|a| format!("\"{a:?}\"")).collect();
    let text = format!("registry: {{static: {{gateways: [{}]}}}}", listed.join(", "));
    NodeConfig::parse(std::path::Path::new("config.yaml"), &text).unwrap().registry
}

fn gateway_entries(count: u64) -> Vec<GatewayEntry> {
    (0..count)
        .map(|i| GatewayEntry {
            owner: Address::from_low_u64_be(i + 1),
            id: i.to_be_bytes().to_vec().into(),
            registered_at: (1_700_000_000 + i).into(),
            metadata: format!("{{\"url\":\"https://gateway-{i}.example.org\"}}"),
            paused: i % 10 == 9,
        })
        .collect()
}

fn allowlist_lookup(c: &mut Criterion) {
    let gateways: Vec<Address> = (0..1000u32).map(|i| Address::from_low_u64_be(u64::from(i) + 1)).collect();
    let directory = Directory::new(StaticRegistry::from_settings(&static_settings(gateways.clone())), None);
    let member = gateways[500];
    let stranger = Address::repeat_byte(0xee);
    c.bench_function("allowlist_lookup/1000_gateways", |b| {
        b.iter(|| {
            directory.roles(&member).gateway == Membership::Member
                && directory.roles(&stranger).gateway == Membership::NotMember
        })
    });
}

/// A refresh's own work: decoding `getActiveGatewaysLive()` and indexing the snapshot.
fn chain_registry_refresh(c: &mut Criterion) {
    let answer = RegistryCalls::encode_gateways(&gateway_entries(10_000));
    let calls = RegistryCalls::default();
    let cache = CachedRegistry::new(None);
    let mut group = c.benchmark_group("chain_registry");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("decode_and_index_10000_gateways", |b| {
        b.iter(|| {
            let entries = calls.decode_gateways(&answer).unwrap();
            cache.store(ChainRead { registry: Address::repeat_byte(1), block: 1, entries })
        })
    });
    group.finish();
}

/// The verify path of a gateway found in a 10,000-entry chain registry, against the same
/// gateway in a 10,000-entry static list.
fn verification_by_registry(c: &mut Criterion) {
    let key = NodeKey::generate();
    let mut entries = gateway_entries(9_999);
    entries.push(GatewayEntry { owner: key.address, ..entries[0].clone() });
    let chain = Arc::new(ChainRegistries::new(None, None));
    chain.gateways.store(ChainRead { registry: Address::repeat_byte(1), block: 1, entries: entries.clone() });
    let on_chain = Directory::new(StaticRegistry::default(), Some(chain));
    let listed = Directory::new(
        StaticRegistry::from_settings(&static_settings(entries.iter().map(|e| e.owner).collect())),
        None,
    );
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("verify_request/registry");
    for (name, directory) in [("static_10000", listed), ("chain_10000", on_chain)] {
        let auth = Authenticator::new(
            DefaultCurve::default(),
            Arc::new(directory),
            Arc::new(NonceStore::new(10_000_000)),
            Duration::from_secs(300),
            Duration::from_secs(300),
        );
        group.bench_function(name, |b| {
            b.iter_batched(
                || fresh_request(&key, false),
                |headers| runtime.block_on(auth.verify(&headers, BODY, Role::Gateway)).unwrap().signer,
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The one signature of an answer's receipt: the digest's alone on each backend, and the whole
/// receipt (canonical JSON, EIP-191 hash, signature, base64url and hex) on the node's.
fn receipt_signing(c: &mut Criterion) {
    let key = NodeKey::generate();
    let digest = ethers_core::utils::keccak256(b"a receipt");
    let mut group = c.benchmark_group("receipt");
    let k256 = K256Signer::new(&key.signing_key);
    group.bench_function("sign_digest/k256", |b| b.iter(|| k256.sign(&digest)));
    #[cfg(feature = "libsecp256k1")]
    {
        let libsecp256k1 = fxn_node::auth::LibSecp256k1Signer::new(&key.signing_key);
        group.bench_function("sign_digest/libsecp256k1", |b| b.iter(|| libsecp256k1.sign(&digest)));
    }
    let signer = ReceiptSigner::new(&key);
    let receipt = Receipt {
        version: VERSION,
        node: signer.node().to_string(),
        gateway: format!("{:?}", Address::repeat_byte(0x11)),
        nonce: "0123456789abcdef".into(),
        timestamp: now().to_string(),
        request_sha256: "ab".repeat(32),
        model: "meta/llama-4-scout-17b-16e-instruct".into(),
        entry: "meta/llama-4-scout-17b-16e-instruct".into(),
        status: 200,
        response_sha256: "cd".repeat(32),
        prompt_tokens: Some(21),
        completion_tokens: Some(180),
        ended_at_ms: 1_700_000_000_000,
    };
    group.bench_function("sign_receipt", |b| b.iter(|| signer.sign(&receipt)));
    group.finish();
}

criterion_group!(
    benches,
    verification,
    body_hash,
    model_extraction,
    allowlist_lookup,
    chain_registry_refresh,
    verification_by_registry,
    receipt_signing
);
criterion_main!(benches);
