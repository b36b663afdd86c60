//! Signing requests the way the network's gateways and scheduler do: for `fxn sign`, the
//! scripts, tests and benchmarks.

use ethers_core::utils::{hash_message, to_checksum};
use http::{HeaderMap, HeaderValue};
use k256::ecdsa::SigningKey;

use super::headers::{body_sha256, signed_message, X_ADDRESS, X_NONCE, X_PUBLIC_KEY, X_SIGNATURE, X_TIMESTAMP};

/// The headers of a request signed by `key`: `X-Address` (or `X-Public-Key` when
/// `with_public_key`), `X-Timestamp`, `X-Nonce` and `X-Signature` (r ‖ s ‖ v, v = 27/28, hex).
pub fn sign_request(
    key: &SigningKey,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
    with_public_key: bool,
) -> Result<HeaderMap, SigningError> {
    let digest = hash_message(signed_message(&body_sha256(body), &timestamp.to_string(), nonce));
    let (signature, recovery) = key.sign_prehash_recoverable(digest.as_bytes())?;
    let mut encoded = signature.to_bytes().to_vec();
    encoded.push(27 + recovery.to_byte());
    let identity = if with_public_key {
        let point = key.verifying_key().to_encoded_point(false);
        (X_PUBLIC_KEY.name, hex::encode(point.as_bytes()))
    } else {
        let address = ethers_core::utils::secret_key_to_address(key);
        (X_ADDRESS.name, to_checksum(&address, None))
    };
    let mut headers = HeaderMap::with_capacity(4);
    for (name, value) in [
        identity,
        (X_TIMESTAMP.name, timestamp.to_string()),
        (X_NONCE.name, nonce.to_string()),
        (X_SIGNATURE.name, hex::encode(encoded)),
    ] {
        headers.insert(name, HeaderValue::try_from(value).map_err(|_| SigningError::Nonce)?);
    }
    Ok(headers)
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing failed: {0}")]
    Curve(#[from] k256::ecdsa::Error),
    #[error("the nonce must be visible ASCII, as it is sent in the X-Nonce header")]
    Nonce,
}
