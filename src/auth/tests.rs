use std::collections::HashSet;

use k256::ecdsa::{Signature, SigningKey};

use super::*;
use crate::proxy::ApiError;

/// The network's public gateway test address and PROTOCOL §1's vector, signed by eth-account.
const VECTOR_ADDRESS: &str = "0x0172b2911af6A2491ff76dDEc34aCb7AE2c03BA1";
const VECTOR_BODY: &[u8] = br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
const VECTOR_SIGNATURE: &str = "a521d4370a972cec0b4da2dbdce300e07bdf4d31a83a306e154d18e1bd5e36617c66e9adba83e3962a99c24bca4548414e5dcadc1b3e1df0e574161f0a4f4de91b";
const VECTOR_TIME: i64 = 1_700_000_000;

struct Directory {
    gateways: HashSet<Address>,
    schedulers: HashSet<Address>,
}

impl SignerDirectory for Directory {
    fn roles(&self, address: &Address) -> SignerRoles {
        SignerRoles {
            gateway: self.gateways.contains(address).into(),
            scheduler: self.schedulers.contains(address).into(),
        }
    }
}

struct Fixture {
    auth: Authenticator,
    gateway: SigningKey,
    scheduler: SigningKey,
    stranger: SigningKey,
    now: i64,
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn address_of(key: &SigningKey) -> Address {
    ethers_core::utils::secret_key_to_address(key)
}

fn fixture_with(max_nonces: usize) -> Fixture {
    let (gateway, scheduler, stranger) = (key(1), key(2), key(3));
    let directory = Directory {
        gateways: [address_of(&gateway), crate::config::parse_address(VECTOR_ADDRESS).unwrap()].into(),
        schedulers: [address_of(&scheduler)].into(),
    };
    let auth = Authenticator::new(
        DefaultCurve::default(),
        Arc::new(directory),
        Arc::new(NonceStore::new(max_nonces)),
        Duration::from_secs(300),
        Duration::from_secs(300),
    );
    Fixture { auth, gateway, scheduler, stranger, now: 1_800_000_000 }
}

fn fixture() -> Fixture {
    fixture_with(1000)
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    pairs.iter().map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap())).collect()
}

/// The status and code the caller gets for `error`.
fn answer(error: &AuthError) -> (u16, &'static str) {
    let api_error = ApiError::from(error.clone());
    (api_error.status, api_error.code.as_str())
}

fn signed(key: &SigningKey, body: &[u8], timestamp: i64, nonce: &str, with_public_key: bool) -> HeaderMap {
    sign_request(key, body, timestamp, nonce, with_public_key).unwrap()
}

impl Fixture {
    fn check<'h>(&self, headers: &'h HeaderMap, body: &[u8], role: Role) -> Result<Verified<'h>, AuthError> {
        self.check_at(headers, body, role, self.now)
    }

    fn check_at<'h>(
        &self,
        headers: &'h HeaderMap,
        body: &[u8],
        role: Role,
        now: i64,
    ) -> Result<Verified<'h>, AuthError> {
        // The in-memory store answers at once: the future never waits.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(self.auth.verify_at(headers, body, role, now))
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    headers.insert(name, value.parse().unwrap());
}

#[test]
fn protocol_vector_signed_by_eth_account_is_accepted() {
    let f = fixture();
    let request = headers(&[
        ("x-address", VECTOR_ADDRESS.to_string()),
        ("x-timestamp", VECTOR_TIME.to_string()),
        ("x-nonce", "abc123".into()),
        ("x-signature", VECTOR_SIGNATURE.into()),
    ]);
    let verified = f.check_at(&request, VECTOR_BODY, Role::Gateway, VECTOR_TIME + 10).unwrap();
    assert_eq!(verified.signer.address, crate::config::parse_address(VECTOR_ADDRESS).unwrap());
    // What the signature covers, as a receipt repeats it.
    assert_eq!(
        (hex::encode(verified.body_sha256), verified.timestamp, verified.nonce),
        ("e31948a7ef04e2d71097a6c9c864485f49b3a0d745e4a42d5424c74babef6fe3".into(), "1700000000", "abc123")
    );
    // Any case of the address, and `0x` on the signature, name the same signer.
    let mut request = request;
    set(&mut request, "x-address", &VECTOR_ADDRESS.to_lowercase());
    set(&mut request, "x-signature", &format!("0x{VECTOR_SIGNATURE}"));
    set(&mut request, "x-nonce", "abc123");
    // Same nonce: now a replay.
    assert_eq!(f.check_at(&request, VECTOR_BODY, Role::Gateway, VECTOR_TIME).unwrap_err(), AuthError::NonceReused);
}

#[test]
fn both_header_generations_are_accepted() {
    let f = fixture();
    for (i, with_public_key) in [false, true].into_iter().enumerate() {
        let request = signed(&f.gateway, b"{}", f.now, &format!("n{i}"), with_public_key);
        assert_eq!(f.check(&request, b"{}", Role::Gateway).unwrap().signer.address, address_of(&f.gateway));
    }
    // Both at once, agreeing; and a compressed key.
    let mut request = signed(&f.gateway, b"{}", f.now, "n2", true);
    set(&mut request, "x-address", &format!("{:?}", address_of(&f.gateway)));
    assert!(f.check(&request, b"{}", Role::Gateway).is_ok());
    let mut request = signed(&f.gateway, b"{}", f.now, "n3", true);
    let compressed = f.gateway.verifying_key().to_encoded_point(true);
    set(&mut request, "x-public-key", &format!("0x{}", hex::encode(compressed.as_bytes())));
    assert!(f.check(&request, b"{}", Role::Gateway).is_ok());
}

#[test]
fn recovered_key_is_cached_and_still_checked() {
    let f = fixture();
    for nonce in ["a", "b"] {
        let request = signed(&f.gateway, b"x", f.now, nonce, false);
        assert!(f.check(&request, b"x", Role::Gateway).is_ok());
    }
    assert_eq!(f.auth.keys_by_address.read().unwrap().len(), 1);
    // With the key cached, a forged signature is still refused.
    let mut forged = signed(&f.stranger, b"x", f.now, "c", false);
    set(&mut forged, "x-address", &format!("{:?}", address_of(&f.gateway)));
    assert_eq!(f.check(&forged, b"x", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
}

#[test]
fn each_missing_header_is_named() {
    let f = fixture();
    let full = signed(&f.gateway, b"{}", f.now, "n", false);
    for (name, shown) in [
        ("x-address", "X-Address"),
        ("x-timestamp", "X-Timestamp"),
        ("x-nonce", "X-Nonce"),
        ("x-signature", "X-Signature"),
    ] {
        let mut request = full.clone();
        request.remove(name);
        let error = f.check(&request, b"{}", Role::Gateway).unwrap_err();
        assert_eq!(error, AuthError::MissingHeader(shown));
        assert_eq!(answer(&error), (401, "missing_header"));
    }
}

#[test]
fn malformed_encodings_are_400() {
    let f = fixture();
    let full = signed(&f.gateway, b"{}", f.now, "n", false);
    let cases = [
        ("x-signature", "zz".repeat(65), "X-Signature", "not hex"),
        ("x-signature", "ab".repeat(64), "X-Signature", "65 bytes"),
        ("x-signature", "ab".repeat(66), "X-Signature", "65 bytes"),
        ("x-signature", "abc".to_string(), "X-Signature", "not hex"),
        ("x-address", "0x1234".to_string(), "X-Address", "20 bytes"),
        ("x-address", "0xzz72b2911af6A2491ff76dDEc34aCb7AE2c03BA1".to_string(), "X-Address", "not hex"),
        ("x-public-key", "04abcd".to_string(), "X-Public-Key", "65-byte"),
        ("x-public-key", format!("04{}", "00".repeat(64)), "X-Public-Key", "not a point"),
        ("x-timestamp", "12.5".to_string(), "X-Timestamp", "whole seconds"),
        ("x-timestamp", "-5".to_string(), "X-Timestamp", "whole seconds"),
        ("x-nonce", "n".repeat(129), "X-Nonce", "longer than 128"),
    ];
    for (name, value, header, reason_says) in cases {
        let mut request = full.clone();
        if name == "x-public-key" {
            request.remove("x-address");
        }
        set(&mut request, name, &value);
        let error = f.check(&request, b"{}", Role::Gateway).unwrap_err();
        assert!(
            matches!(&error, AuthError::BadEncoding { header: h, reason } if *h == header && reason.contains(reason_says)),
            "{name}={value}: {error:?}"
        );
        assert_eq!(answer(&error), (400, "bad_signature_encoding"));
    }
}

fn with_v(request: &HeaderMap, v: u8) -> HeaderMap {
    let mut request = request.clone();
    let mut signature = hex::decode(request["x-signature"].to_str().unwrap()).unwrap();
    signature[64] = v;
    set(&mut request, "x-signature", &hex::encode(signature));
    request
}

#[test]
fn each_recovery_byte_form_is_handled() {
    let f = fixture();
    for (i, with_public_key) in [false, true].into_iter().enumerate() {
        let request = signed(&f.gateway, b"{}", f.now, &format!("v{i}"), with_public_key);
        let v = hex::decode(request["x-signature"].to_str().unwrap()).unwrap()[64];
        assert!(v == 27 || v == 28);
        // 0/1 is the same signature.
        assert!(f.check(&with_v(&request, v - 27), b"{}", Role::Gateway).is_ok());
        for bad in [2u8, 26, 29, 255] {
            let error = f.check(&with_v(&request, bad), b"{}", Role::Gateway).unwrap_err();
            assert_eq!(answer(&error).1, "bad_signature_encoding", "v={bad}");
        }
    }
    // Without a cached key, the wrong parity of a valid v recovers another key: not the signer.
    let f = fixture();
    let request = signed(&f.gateway, b"{}", f.now, "w", false);
    let v = hex::decode(request["x-signature"].to_str().unwrap()).unwrap()[64];
    let flipped = with_v(&request, if v == 27 { 28 } else { 27 });
    assert_eq!(f.check(&flipped, b"{}", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
}

#[test]
fn high_s_twin_of_a_valid_signature_is_refused() {
    let f = fixture();
    for (i, with_public_key) in [false, true].into_iter().enumerate() {
        let request = signed(&f.gateway, b"{}", f.now, &format!("h{i}"), with_public_key);
        let bytes = hex::decode(request["x-signature"].to_str().unwrap()).unwrap();
        let signature = Signature::from_slice(&bytes[..64]).unwrap();
        let (r, s) = signature.split_scalars();
        let high = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        let mut twin = high.to_bytes().to_vec();
        twin.push(if bytes[64] == 27 { 28 } else { 27 });
        let mut forged = request.clone();
        set(&mut forged, "x-signature", &hex::encode(twin));
        assert_eq!(f.check(&forged, b"{}", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
    }
}

#[test]
fn tampering_with_any_signed_part_is_refused() {
    let f = fixture();
    let request = signed(&f.gateway, b"{\"a\":1}", f.now, "t", false);
    assert_eq!(f.check(&request, b"{\"a\":2}", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
    let mut changed = request.clone();
    set(&mut changed, "x-timestamp", &(f.now + 1).to_string());
    assert_eq!(f.check(&changed, b"{\"a\":1}", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
    let mut changed = request.clone();
    set(&mut changed, "x-nonce", "u");
    assert_eq!(f.check(&changed, b"{\"a\":1}", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
    // None of the refused attempts burnt the nonce: the genuine request still passes.
    assert!(f.check(&request, b"{\"a\":1}", Role::Gateway).is_ok());
}

#[test]
fn someone_elses_signature_is_refused() {
    let f = fixture();
    let mut forged = signed(&f.stranger, b"{}", f.now, "f", false);
    set(&mut forged, "x-address", &format!("{:?}", address_of(&f.gateway)));
    assert_eq!(f.check(&forged, b"{}", Role::Gateway).unwrap_err(), AuthError::InvalidSignature);
    let mut forged = signed(&f.stranger, b"{}", f.now, "g", true);
    set(&mut forged, "x-address", &format!("{:?}", address_of(&f.gateway)));
    assert_eq!(f.check(&forged, b"{}", Role::Gateway).unwrap_err(), AuthError::SignerMismatch);
}

#[test]
fn replayed_nonce_is_rejected() {
    let f = fixture();
    let request = signed(&f.gateway, b"{}", f.now, "once", false);
    assert!(f.check(&request, b"{}", Role::Gateway).is_ok());
    let error = f.check(&request, b"{}", Role::Gateway).unwrap_err();
    assert_eq!((answer(&error), error.to_string().as_str()), ((401, "nonce_reused"), "nonce already used"));
    // The same nonce from another signer is its own.
    let other = signed(&f.scheduler, b"{}", f.now, "once", false);
    assert!(f.check(&other, b"{}", Role::Scheduler).is_ok());
}

#[test]
fn stale_and_future_timestamps_are_rejected() {
    let f = fixture();
    for (offset, accepted) in [(-301, false), (301, false), (-300, true), (300, true)] {
        let request = signed(&f.gateway, b"{}", f.now + offset, &format!("ts{offset}"), false);
        let result = f.check(&request, b"{}", Role::Gateway);
        assert_eq!(result.is_ok(), accepted, "offset {offset}: {result:?}");
        if !accepted {
            assert_eq!(answer(&result.unwrap_err()).1, "stale_timestamp");
        }
    }
}

#[test]
fn full_nonce_store_refuses_with_503() {
    let f = fixture_with(2);
    for nonce in ["a", "b"] {
        assert!(f.check(&signed(&f.gateway, b"{}", f.now, nonce, false), b"{}", Role::Gateway).is_ok());
    }
    let error = f.check(&signed(&f.gateway, b"{}", f.now, "c", false), b"{}", Role::Gateway).unwrap_err();
    assert_eq!(answer(&error), (503, "nonce_store_full"));
    // And a replay is still a replay, not admitted for lack of room.
    let error = f.check(&signed(&f.gateway, b"{}", f.now, "a", false), b"{}", Role::Gateway).unwrap_err();
    assert_eq!(error, AuthError::NonceReused);
}

#[test]
fn roles_are_enforced() {
    let f = fixture();
    let error = f.check(&signed(&f.stranger, b"{}", f.now, "r1", false), b"{}", Role::Gateway).unwrap_err();
    assert_eq!(answer(&error), (401, "not_registered"));
    let error = f.check(&signed(&f.gateway, b"{}", f.now, "r2", false), b"{}", Role::Scheduler).unwrap_err();
    assert_eq!(answer(&error), (401, "wrong_role"));
    let error = f.check(&signed(&f.scheduler, b"{}", f.now, "r3", true), b"{}", Role::Gateway).unwrap_err();
    assert_eq!(answer(&error), (401, "wrong_role"));
    assert!(f.check(&signed(&f.scheduler, b"{}", f.now, "r4", false), b"{}", Role::Scheduler).is_ok());
    // Refusals before the signature check record nothing.
    assert_eq!(f.auth.nonce_store().len(), 1);
}

#[test]
fn a_signing_header_sent_twice_is_refused() {
    let f = fixture();
    for name in ["x-address", "x-timestamp", "x-nonce", "x-signature"] {
        let mut request = signed(&f.gateway, b"{}", f.now, &format!("twice-{name}"), false);
        let copy = request[name].clone();
        request.append(http::HeaderName::from_static(name), copy);
        let error = f.check(&request, b"{}", Role::Gateway).unwrap_err();
        assert_eq!(answer(&error), (400, "bad_signature_encoding"), "{name}");
        assert!(error.to_string().contains("sent more than once"), "{name}: {error}");
    }
}

#[test]
fn nonce_of_a_future_dated_request_is_kept_until_its_timestamp_leaves_the_window() {
    let f = fixture();
    // Valid for 290 s ahead plus the 300 s window after it: longer than the 300 s nonce TTL.
    let request = signed(&f.gateway, b"{}", f.now + 290, "future", false);
    assert!(f.check(&request, b"{}", Role::Gateway).is_ok());
    let store = f.auth.nonce_store();
    assert_eq!(store.purge_expired(Instant::now() + Duration::from_secs(580)), 0);
    assert_eq!(f.check(&request, b"{}", Role::Gateway).unwrap_err(), AuthError::NonceReused);
    assert_eq!(store.purge_expired(Instant::now() + Duration::from_secs(600)), 1);
}
