//! Signing requests the way the network's gateways and scheduler do: for `fxn sign`, the
//! scripts and tests.

use ethers_core::utils::{hash_message, to_checksum};
use k256::ecdsa::SigningKey;

use super::headers::signed_message;

/// The headers of a request signed by `key`: `X-Address` (or `X-Public-Key` when
/// `with_public_key`), `X-Timestamp`, `X-Nonce` and `X-Signature` (r ‖ s ‖ v, v = 27/28, hex).
pub fn sign_request(
    key: &SigningKey,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
    with_public_key: bool,
) -> Result<Vec<(&'static str, String)>, k256::ecdsa::Error> {
    let digest = hash_message(signed_message(body, &timestamp.to_string(), nonce));
    let (signature, recovery) = key.sign_prehash_recoverable(digest.as_bytes())?;
    let mut encoded = signature.to_bytes().to_vec();
    encoded.push(27 + recovery.to_byte());
    let identity = if with_public_key {
        let point = key.verifying_key().to_encoded_point(false);
        ("X-Public-Key", hex::encode(point.as_bytes()))
    } else {
        let address = ethers_core::utils::secret_key_to_address(key);
        ("X-Address", to_checksum(&address, None))
    };
    Ok(vec![
        identity,
        ("X-Timestamp", timestamp.to_string()),
        ("X-Nonce", nonce.to_string()),
        ("X-Signature", hex::encode(encoded)),
    ])
}
