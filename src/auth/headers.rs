//! The signed-request headers, parsed and checked for form (not yet for truth).

use ethers_core::types::Address;
use http::HeaderMap;

use super::AuthError;

/// The headers a gateway or scheduler signs a request with.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    /// `X-Address` (newer clients).
    pub address: Option<Address>,
    /// `X-Public-Key`, SEC1-encoded: 65 bytes uncompressed or 33 compressed (older clients).
    pub public_key: Option<Vec<u8>>,
    /// `X-Timestamp`, exactly as sent: it is part of the signed bytes.
    pub timestamp_text: String,
    pub timestamp: i64,
    /// `X-Nonce`, exactly as sent.
    pub nonce: String,
    /// `X-Signature`: r ‖ s ‖ v.
    pub signature: [u8; 65],
}

/// The longest nonce accepted: the Go client sends at most 16 hex digits; this leaves room
/// for other clients while bounding what the nonce store holds per entry.
const MAX_NONCE_LEN: usize = 128;

fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, AuthError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| AuthError::BadEncoding { header: name, reason: "must be ASCII text".into() }),
    }
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthError> {
    text(headers, name)?
        .filter(|v| !v.is_empty())
        .ok_or(AuthError::MissingHeader(name))
}

fn hex_bytes(header: &'static str, value: &str) -> Result<Vec<u8>, AuthError> {
    let digits = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")).unwrap_or(value);
    hex::decode(digits).map_err(|e| AuthError::BadEncoding { header, reason: format!("not hex ({e})") })
}

impl SignedHeaders {
    pub fn parse(headers: &HeaderMap) -> Result<Self, AuthError> {
        let address = text(headers, "x-address")?.filter(|v| !v.is_empty());
        let public_key = text(headers, "x-public-key")?.filter(|v| !v.is_empty());
        if address.is_none() && public_key.is_none() {
            return Err(AuthError::MissingHeader("X-Address"));
        }
        let timestamp_text = required(headers, "x-timestamp")?;
        let nonce = required(headers, "x-nonce")?;
        let signature_text = required(headers, "x-signature")?;

        let address = address
            .map(|value| {
                let bytes = hex_bytes("X-Address", value)?;
                <[u8; 20]>::try_from(bytes.as_slice()).map(Address::from).map_err(|_| {
                    AuthError::BadEncoding { header: "X-Address", reason: "must be 20 bytes (40 hex digits)".into() }
                })
            })
            .transpose()?;
        let public_key = public_key
            .map(|value| {
                let bytes = hex_bytes("X-Public-Key", value)?;
                match (bytes.len(), bytes.first()) {
                    (65, Some(0x04)) | (33, Some(0x02 | 0x03)) => Ok(bytes),
                    _ => Err(AuthError::BadEncoding {
                        header: "X-Public-Key",
                        reason: "must be a 65-byte uncompressed (04…) or 33-byte compressed (02…/03…) key".into(),
                    }),
                }
            })
            .transpose()?;
        let timestamp = timestamp_text
            .parse::<i64>()
            .ok()
            .filter(|_| timestamp_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| AuthError::BadEncoding {
                header: "X-Timestamp",
                reason: "must be Unix time in whole seconds".into(),
            })?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(AuthError::BadEncoding {
                header: "X-Nonce",
                reason: format!("longer than {MAX_NONCE_LEN} characters"),
            });
        }
        let signature = <[u8; 65]>::try_from(hex_bytes("X-Signature", signature_text)?.as_slice()).map_err(|_| {
            AuthError::BadEncoding { header: "X-Signature", reason: "must be 65 bytes (130 hex digits)".into() }
        })?;
        Ok(Self {
            address,
            public_key,
            timestamp_text: timestamp_text.to_string(),
            timestamp,
            nonce: nonce.to_string(),
            signature,
        })
    }

    /// The exact bytes the client signed (before EIP-191 framing).
    pub fn signed_message(&self, body_sha256_hex: &str) -> String {
        format!("{body_sha256_hex}.{}.{}", self.timestamp_text, self.nonce)
    }
}
