//! The signed-request headers, parsed and checked for form (not yet for truth).

use ethers_core::types::Address;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use super::AuthError;

/// The headers a gateway or scheduler signs a request with, borrowed from the request.
#[derive(Debug, Clone)]
pub struct SignedHeaders<'a> {
    /// `X-Address` (newer clients).
    pub address: Option<Address>,
    /// `X-Public-Key`, SEC1-encoded: 65 bytes uncompressed or 33 compressed (older clients).
    pub public_key: Option<Vec<u8>>,
    /// `X-Timestamp`, exactly as sent: it is part of the signed bytes.
    pub timestamp_text: &'a str,
    pub timestamp: i64,
    /// `X-Nonce`, exactly as sent.
    pub nonce: &'a str,
    /// `X-Signature`: r ‖ s ‖ v.
    pub signature: [u8; 65],
}

/// The longest nonce accepted: the Go client sends at most 16 hex digits; this leaves room
/// for other clients while bounding what the nonce store holds per entry.
const MAX_NONCE_LEN: usize = 128;

/// One of the headers a request is signed with: its name, prebuilt (looking a header up by
/// `&str` would parse the name on every request), and its spelling in messages and output.
#[derive(Debug)]
pub struct SigningHeader {
    pub name: HeaderName,
    pub display: &'static str,
}

pub const X_ADDRESS: SigningHeader = SigningHeader { name: HeaderName::from_static("x-address"), display: "X-Address" };
pub const X_PUBLIC_KEY: SigningHeader =
    SigningHeader { name: HeaderName::from_static("x-public-key"), display: "X-Public-Key" };
pub const X_TIMESTAMP: SigningHeader =
    SigningHeader { name: HeaderName::from_static("x-timestamp"), display: "X-Timestamp" };
pub const X_NONCE: SigningHeader = SigningHeader { name: HeaderName::from_static("x-nonce"), display: "X-Nonce" };
pub const X_SIGNATURE: SigningHeader =
    SigningHeader { name: HeaderName::from_static("x-signature"), display: "X-Signature" };

/// Every signing header: the network's scheme, never forwarded to a backend.
pub static SIGNING_HEADERS: [SigningHeader; 5] = [X_ADDRESS, X_PUBLIC_KEY, X_TIMESTAMP, X_NONCE, X_SIGNATURE];

impl SigningHeader {
    /// The signing header called `name`, if it is one.
    pub fn named(name: &HeaderName) -> Option<&'static SigningHeader> {
        SIGNING_HEADERS.iter().find(|header| header.name == *name)
    }
}

/// A signing header's value. One sent twice is refused: which copy was signed is ambiguous, and
/// a proxy in between may have added the second.
fn text<'a>(headers: &'a HeaderMap, header: &SigningHeader) -> Result<Option<&'a str>, AuthError> {
    let mut values = headers.get_all(&header.name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::BadEncoding { header: header.display, reason: "sent more than once".into() });
    }
    value
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| AuthError::BadEncoding { header: header.display, reason: "must be ASCII text".into() })
}

fn required<'a>(headers: &'a HeaderMap, header: &SigningHeader) -> Result<&'a str, AuthError> {
    text(headers, header)?.filter(|v| !v.is_empty()).ok_or(AuthError::MissingHeader(header.display))
}

fn hex_digits(value: &str) -> &str {
    value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")).unwrap_or(value)
}

fn hex_bytes(header: &'static str, value: &str) -> Result<Vec<u8>, AuthError> {
    hex::decode(hex_digits(value)).map_err(|e| AuthError::BadEncoding { header, reason: format!("not hex ({e})") })
}

/// Hex of exactly `N` bytes, decoded without a heap buffer.
fn hex_array<const N: usize>(header: &'static str, value: &str) -> Result<[u8; N], AuthError> {
    let digits = hex_digits(value);
    let mut bytes = [0; N];
    if digits.len() != 2 * N {
        // Tell bad digits apart from a wrong length, as the caller needs to know which.
        hex::decode(digits).map_err(|e| AuthError::BadEncoding { header, reason: format!("not hex ({e})") })?;
        return Err(AuthError::BadEncoding { header, reason: format!("must be {N} bytes ({} hex digits)", 2 * N) });
    }
    hex::decode_to_slice(digits, &mut bytes)
        .map_err(|e| AuthError::BadEncoding { header, reason: format!("not hex ({e})") })?;
    Ok(bytes)
}

impl<'a> SignedHeaders<'a> {
    pub fn parse(headers: &'a HeaderMap) -> Result<Self, AuthError> {
        let address = text(headers, &X_ADDRESS)?.filter(|v| !v.is_empty());
        let public_key = text(headers, &X_PUBLIC_KEY)?.filter(|v| !v.is_empty());
        if address.is_none() && public_key.is_none() {
            return Err(AuthError::MissingHeader(X_ADDRESS.display));
        }
        let timestamp_text = required(headers, &X_TIMESTAMP)?;
        let nonce = required(headers, &X_NONCE)?;
        let signature_text = required(headers, &X_SIGNATURE)?;

        let address = address.map(|value| hex_array::<20>(X_ADDRESS.display, value).map(Address::from)).transpose()?;
        let public_key = public_key
            .map(|value| {
                let bytes = hex_bytes(X_PUBLIC_KEY.display, value)?;
                match (bytes.len(), bytes.first()) {
                    (65, Some(0x04)) | (33, Some(0x02 | 0x03)) => Ok(bytes),
                    _ => Err(AuthError::BadEncoding {
                        header: X_PUBLIC_KEY.display,
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
                header: X_TIMESTAMP.display,
                reason: "must be Unix time in whole seconds".into(),
            })?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(AuthError::BadEncoding {
                header: X_NONCE.display,
                reason: format!("longer than {MAX_NONCE_LEN} characters"),
            });
        }
        let signature = hex_array::<65>(X_SIGNATURE.display, signature_text)?;
        Ok(Self { address, public_key, timestamp_text, timestamp, nonce, signature })
    }
}

/// The sha256 of a request body, which its signature covers.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The exact bytes a client signs (before EIP-191 framing): the body's sha256 in lower-case
/// hex, the timestamp and the nonce, joined by dots.
pub fn signed_message(body_sha256: &[u8; 32], timestamp: &str, nonce: &str) -> Vec<u8> {
    let mut hex_buffer = hex::Buffer::<32>::new();
    let body_hash = hex_buffer.format(body_sha256);
    let mut message = Vec::with_capacity(body_hash.len() + timestamp.len() + nonce.len() + 2);
    message.extend_from_slice(body_hash.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(nonce.as_bytes());
    message
}
