//! The curve math behind one small trait, so that a faster backend can replace k256.

use ethers_core::types::Address;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};

/// What request verification needs from secp256k1.
pub trait CurveVerifier: Send + Sync + 'static {
    type PublicKey: Clone + Send + Sync + 'static;

    /// Parses a SEC1 key (33 or 65 bytes); `None` if it is not a point on the curve.
    fn parse_public_key(&self, sec1: &[u8]) -> Option<Self::PublicKey>;
    fn address_of(&self, key: &Self::PublicKey) -> Address;
    /// Whether `signature` (r ‖ s, low-S) over `digest` was made by `key`.
    fn verify(&self, key: &Self::PublicKey, digest: &[u8; 32], signature: &[u8; 64]) -> bool;
    /// The key that made `signature` (r ‖ s, low-S) with recovery id `recovery` (0 or 1).
    fn recover(&self, digest: &[u8; 32], signature: &[u8; 64], recovery: u8) -> Option<Self::PublicKey>;
}

/// Pure-Rust secp256k1 from RustCrypto's `k256`.
#[derive(Debug, Default, Clone, Copy)]
pub struct K256;

impl CurveVerifier for K256 {
    type PublicKey = VerifyingKey;

    fn parse_public_key(&self, sec1: &[u8]) -> Option<VerifyingKey> {
        VerifyingKey::from_sec1_bytes(sec1).ok()
    }

    fn address_of(&self, key: &VerifyingKey) -> Address {
        ethers_core::utils::public_key_to_address(key)
    }

    fn verify(&self, key: &VerifyingKey, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        use k256::ecdsa::signature::hazmat::PrehashVerifier;
        Signature::from_slice(signature)
            .is_ok_and(|signature| key.verify_prehash(digest, &signature).is_ok())
    }

    fn recover(&self, digest: &[u8; 32], signature: &[u8; 64], recovery: u8) -> Option<VerifyingKey> {
        let signature = Signature::from_slice(signature).ok()?;
        let recovery = RecoveryId::from_byte(recovery)?;
        VerifyingKey::recover_from_prehash(digest, &signature, recovery).ok()
    }
}
