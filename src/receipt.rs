//! Signed usage receipts: what the node served for one inference request, as canonical JSON
//! signed by the node key with EIP-191 (the scheme gateways already verify requests with), and
//! their verification, for `fxn receipt verify`. The README's Receipts section is the spec.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::Bytes;
use ethers_core::types::Address;
use ethers_core::utils::{hash_message, to_checksum};
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::auth::{CurveVerifier, DefaultCurve, DefaultSigner};
use crate::keys::NodeKey;

/// The receipt format this node writes and reads.
pub const VERSION: u32 = 1;
/// The base64url of the receipt's JSON, on an answer that is not streamed.
pub const RECEIPT_HEADER: &str = "x-fxn-receipt";
/// The receipt's signature, on an answer that is not streamed.
pub const SIGNATURE_HEADER: &str = "x-fxn-receipt-signature";
/// How the comment line that ends a stream begins: `: fxn-receipt <base64url> <signature>`.
pub const COMMENT_PREFIX: &str = ": fxn-receipt ";

/// A receipt's fields. The canonical JSON is this struct as serde_json writes it: these keys in
/// this order, no whitespace, strings escaped only where JSON must (`"`, `\` and U+0000–U+001F,
/// those with a short form as `\b \f \n \r \t`, others as `\u00xx`), everything else as UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    /// The node's address, EIP-55.
    pub node: String,
    /// The signer of the request, EIP-55.
    pub gateway: String,
    /// `X-Nonce` and `X-Timestamp` exactly as signed.
    pub nonce: String,
    pub timestamp: String,
    /// Lower-case hex of the sha256 of the request body as received (before any alias).
    pub request_sha256: String,
    /// The `model` the request asked for, and the model_backend.yaml entry that served it.
    pub model: String,
    pub entry: String,
    /// The response's status, and the sha256 of its body as relayed (a stream's, up to this
    /// receipt's comment).
    pub status: u16,
    pub response_sha256: String,
    /// The backend's `usage`; `null` when it reported none.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// When the answer ended, Unix milliseconds.
    pub ended_at_ms: u64,
}

impl Receipt {
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a receipt serializes")
    }
}

/// A receipt as the caller gets it: the base64url (unpadded) of its canonical JSON, and the
/// EIP-191 signature over that JSON, hex `r ‖ s ‖ v` with `v` 27 or 28.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    pub encoded: String,
    pub signature: String,
}

impl SignedReceipt {
    /// The values of [`RECEIPT_HEADER`] and [`SIGNATURE_HEADER`] (base64url and hex are header-safe).
    pub fn header_values(&self) -> [HeaderValue; 2] {
        [&self.encoded, &self.signature].map(|text| HeaderValue::from_str(text).expect("base64url and hex"))
    }

    /// The comment line (and the blank line after it) that follows a stream's last event; SSE
    /// readers skip comment lines.
    pub fn sse_comment(&self) -> Bytes {
        Bytes::from(format!("{COMMENT_PREFIX}{} {}\n\n", self.encoded, self.signature))
    }
}

/// Signs receipts with the node key.
pub struct ReceiptSigner {
    signer: DefaultSigner,
    node: String,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiptSigner({})", self.node)
    }
}

impl ReceiptSigner {
    pub fn new(key: &NodeKey) -> Self {
        Self { signer: DefaultSigner::new(&key.signing_key), node: key.checksummed_address() }
    }

    /// The node's address as receipts name it.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn sign(&self, receipt: &Receipt) -> SignedReceipt {
        let json = receipt.canonical_json();
        let signature = self.signer.sign(&hash_message(&json).0);
        SignedReceipt { encoded: URL_SAFE_NO_PAD.encode(&json), signature: hex::encode(signature) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt is not base64url ({0})")]
    NotBase64(base64::DecodeError),
    #[error("the receipt is not a receipt's JSON ({0})")]
    NotReceipt(serde_json::Error),
    #[error("the receipt's JSON is not in canonical form (the node writes its keys in order, without spaces)")]
    NotCanonical,
    #[error("the receipt is version {0}; this node reads version {VERSION}")]
    UnsupportedVersion(u32),
    #[error("the receipt's node `{0}` is not an address")]
    BadNodeAddress(String),
    #[error("the signature is not 65 bytes of hex (r ‖ s ‖ v): {0}")]
    BadSignatureEncoding(String),
    #[error("bad signature: no key recovers from it over this receipt")]
    Unrecoverable,
    #[error("bad signature: it was made by {signer}, not by the node the receipt names ({node})")]
    WrongSigner { signer: String, node: String },
    #[error(
        "no receipt found: a saved response has {RECEIPT_HEADER} and {SIGNATURE_HEADER} headers (as `curl -i` \
         saves them) or a `{COMMENT_PREFIX}…` line after its stream"
    )]
    NotFound,
    #[error("the `{COMMENT_PREFIX}…` line must hold the receipt and its signature, separated by one space")]
    BadComment,
}

/// A receipt whose signature recovered to the node it names.
#[derive(Debug, Clone)]
pub struct VerifiedReceipt {
    pub signer: Address,
    pub receipt: Receipt,
}

/// Checks a receipt (`encoded`, base64url, padded or not) and its `signature`: the JSON must be
/// a canonical receipt of this version, and the signature must recover to the receipt's node.
pub fn verify(encoded: &str, signature: &str) -> Result<VerifiedReceipt, ReceiptError> {
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let json = lenient.decode(encoded.trim()).map_err(ReceiptError::NotBase64)?;
    let receipt: Receipt = serde_json::from_slice(&json).map_err(ReceiptError::NotReceipt)?;
    if receipt.canonical_json() != json {
        return Err(ReceiptError::NotCanonical);
    }
    if receipt.version != VERSION {
        return Err(ReceiptError::UnsupportedVersion(receipt.version));
    }
    let node =
        crate::config::parse_address(&receipt.node).map_err(|_| ReceiptError::BadNodeAddress(receipt.node.clone()))?;
    let digits = signature.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    let bytes = hex::decode(digits).map_err(|e| ReceiptError::BadSignatureEncoding(e.to_string()))?;
    let Ok(bytes) = <[u8; 65]>::try_from(bytes.as_slice()) else {
        return Err(ReceiptError::BadSignatureEncoding(format!("it is {} bytes", bytes.len())));
    };
    let recovery = match bytes[64] {
        v @ (27 | 28) => v - 27,
        v @ (0 | 1) => v,
        v => return Err(ReceiptError::BadSignatureEncoding(format!("v is {v}; it must be 27, 28, 0 or 1"))),
    };
    let rs: &[u8; 64] = bytes[..64].try_into().expect("64 of 65 bytes");
    let curve = DefaultCurve::default();
    let key = curve.recover(&hash_message(&json).0, rs, recovery).ok_or(ReceiptError::Unrecoverable)?;
    let signer = curve.address_of(&key);
    if signer != node {
        return Err(ReceiptError::WrongSigner { signer: to_checksum(&signer, None), node: receipt.node });
    }
    Ok(VerifiedReceipt { signer, receipt })
}

/// A receipt found in a saved response, with the body it covers.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundReceipt<'a> {
    pub encoded: &'a str,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// Finds the receipt of a saved response: a stream (its body alone, or after the header as
/// `curl -i` saves it) ending in the receipt's comment line, or a response with the receipt's
/// headers.
pub fn find_in_response(saved: &[u8]) -> Result<FoundReceipt<'_>, ReceiptError> {
    let (head, body) = if saved.starts_with(b"HTTP/") {
        let end = memchr::memmem::find(saved, b"\r\n\r\n").map(|at| (at, at + 4));
        let end = end.or_else(|| memchr::memmem::find(saved, b"\n\n").map(|at| (at, at + 2)));
        let (head_end, body_start) = end.unwrap_or((saved.len(), saved.len()));
        (&saved[..head_end], &saved[body_start..])
    } else {
        (&saved[..0], saved)
    };
    let comment =
        memchr::memmem::rfind_iter(body, COMMENT_PREFIX.as_bytes()).find(|&at| at == 0 || body[at - 1] == b'\n');
    if let Some(at) = comment {
        let line = &body[at + COMMENT_PREFIX.len()..];
        let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
        let line = std::str::from_utf8(line).map_err(|_| ReceiptError::BadComment)?.trim_end_matches('\r');
        let (encoded, signature) = line.split_once(' ').ok_or(ReceiptError::BadComment)?;
        if encoded.is_empty() || signature.is_empty() || signature.contains(' ') {
            return Err(ReceiptError::BadComment);
        }
        return Ok(FoundReceipt { encoded, signature, body: &body[..at] });
    }
    let header = |name: &str| {
        head.split(|&byte| byte == b'\n').find_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    };
    match (header(RECEIPT_HEADER), header(SIGNATURE_HEADER)) {
        (Some(encoded), Some(signature)) => Ok(FoundReceipt { encoded, signature, body }),
        _ => Err(ReceiptError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's test vector: its fields, and the lines that give the receipt's bytes.
    fn readme_vector() -> (NodeKey, Receipt, [String; 3]) {
        let readme = include_str!("../README.md");
        let block = readme.split("```receipt-vector\n").nth(1).expect("the README has a receipt-vector block");
        let block = &block[..block.find("```").expect("the block ends")];
        let value = |name: &str| {
            block
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                .unwrap_or_else(|| panic!("the vector has no `{name}` line"))
                .to_string()
        };
        let key = NodeKey::from_private_key_hex(&value("node private key")).unwrap();
        let receipt: Receipt = serde_json::from_str(&value("canonical JSON")).unwrap();
        (key, receipt, [value("canonical JSON"), value("X-Fxn-Receipt"), value("X-Fxn-Receipt-Signature")])
    }

    #[test]
    fn the_readme_vector_is_what_the_node_signs() {
        let (key, receipt, [json, encoded, signature]) = readme_vector();
        assert_eq!(receipt.node, key.checksummed_address());
        assert_eq!(String::from_utf8(receipt.canonical_json()).unwrap(), json);
        let signed = ReceiptSigner::new(&key).sign(&receipt);
        assert_eq!((signed.encoded.as_str(), signed.signature.as_str()), (encoded.as_str(), signature.as_str()));
        let verified = verify(&encoded, &signature).unwrap();
        assert_eq!((verified.signer, verified.receipt), (key.address, receipt));
    }

    fn sample(key: &NodeKey) -> Receipt {
        Receipt {
            version: VERSION,
            node: key.checksummed_address(),
            gateway: "0x0172b2911af6A2491ff76dDEc34aCb7AE2c03BA1".into(),
            nonce: "n\"o\\nce".into(),
            timestamp: "1700000000".into(),
            request_sha256: "00".repeat(32),
            model: "naïve \u{1}\t\n\"model\"".into(),
            entry: "default".into(),
            status: 200,
            response_sha256: "11".repeat(32),
            prompt_tokens: None,
            completion_tokens: None,
            ended_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn canonical_json_escapes_only_what_json_must() {
        let json = String::from_utf8(sample(&NodeKey::generate()).canonical_json()).unwrap();
        assert!(json.contains(r#","nonce":"n\"o\\nce","#), "{json}");
        assert!(json.contains(r#","model":"naïve \u0001\t\n\"model\"","#), "{json}");
        assert!(json.ends_with(r#","prompt_tokens":null,"completion_tokens":null,"ended_at_ms":1700000000123}"#));
        assert!(json.starts_with(r#"{"version":1,"node":"0x"#) && !json.contains(": "), "{json}");
    }

    #[test]
    fn tampered_or_malformed_receipts_are_refused() {
        let key = NodeKey::generate();
        let receipt = sample(&key);
        let signed = ReceiptSigner::new(&key).sign(&receipt);
        assert_eq!(verify(&signed.encoded, &signed.signature).unwrap().receipt, receipt);
        // Padding and `0x` are accepted; v as 0/1 too.
        let padded = base64::engine::general_purpose::URL_SAFE.encode(receipt.canonical_json());
        let mut v01 = hex::decode(&signed.signature).unwrap();
        v01[64] -= 27;
        assert!(verify(&padded, &format!("0x{}", hex::encode(&v01))).is_ok());

        let encode = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let json = String::from_utf8(receipt.canonical_json()).unwrap();
        let more_tokens = json.replace(r#""completion_tokens":null"#, r#""completion_tokens":1000"#);
        let spaced = json.replacen(r#""version":1"#, r#""version": 1"#, 1);
        let escaped = json.replacen("ï", r"\u00ef", 1);
        let version_2 = json.replacen(r#""version":1"#, r#""version":2"#, 1);
        let unknown = json.replacen('{', r#"{"extra":1,"#, 1);
        let cases: [(String, &str, &str); 10] = [
            (encode(&more_tokens), &signed.signature, "bad signature: it was made by 0x"),
            (encode(&spaced), &signed.signature, "not in canonical form"),
            (encode(&escaped), &signed.signature, "not in canonical form"),
            (encode(&version_2), &signed.signature, "version 2"),
            (encode(&unknown), &signed.signature, "unknown field `extra`"),
            (encode("[1,2]"), &signed.signature, "not a receipt's JSON"),
            ("not base64!".into(), &signed.signature, "not base64url"),
            (signed.encoded.clone(), "zz", "not 65 bytes of hex"),
            (signed.encoded.clone(), &signed.signature[..128], "it is 64 bytes"),
            (signed.encoded.clone(), &format!("{}1d", &signed.signature[..128]), "v is 29"),
        ];
        for (encoded, signature, expected) in cases {
            let error = verify(&encoded, signature).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn receipts_are_found_in_saved_responses() {
        let stream = b"data: {\"a\":1}\n\ndata: [DONE]\n\n: fxn-receipt eyJ4 abcd\n\n";
        let found = find_in_response(stream).unwrap();
        assert_eq!(
            found,
            FoundReceipt { encoded: "eyJ4", signature: "abcd", body: b"data: {\"a\":1}\n\ndata: [DONE]\n\n" }
        );
        let curl_i = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n: fxn-receipt e s\r\n\r\n";
        assert_eq!(
            find_in_response(curl_i).unwrap(),
            FoundReceipt { encoded: "e", signature: "s", body: b"data: 1\n\n" }
        );
        let headers = b"HTTP/1.1 200 OK\r\nX-Fxn-Receipt: eyJ5\r\nx-fxn-receipt-signature:  ef01 \r\n\r\n{\"id\":1}";
        assert_eq!(
            find_in_response(headers).unwrap(),
            FoundReceipt { encoded: "eyJ5", signature: "ef01", body: b"{\"id\":1}" }
        );
        // A comment that is not at a line's start is event data, not the receipt.
        assert!(matches!(find_in_response(b"data: x: fxn-receipt a b\n\n"), Err(ReceiptError::NotFound)));
        assert!(matches!(
            find_in_response(b"HTTP/1.1 200 OK\r\nX-Fxn-Receipt: a\r\n\r\n{}"),
            Err(ReceiptError::NotFound)
        ));
        assert!(matches!(find_in_response(b": fxn-receipt onlyone\n\n"), Err(ReceiptError::BadComment)));
    }
}
