//! IDENTITY: the node's address, its public IP, a signature over both that proves it holds the
//! key, and its GPUs (PROTOCOL §3).

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use ethers_core::utils::keccak256;
use tokio::sync::OnceCell;

use super::gpu::Gpus;
use super::{Answer, Challenge, ChallengeError, Payload};
use crate::config::PublicIp;
use crate::keys::NodeKey;

/// How long `node.publicIpUrl` may take to answer.
const IP_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct Identity {
    key: Option<NodeKey>,
    configured_ip: Option<IpAddr>,
    lookup_url: Option<url::Url>,
    /// The address `lookup_url` answered, once it has.
    looked_up: OnceCell<IpAddr>,
}

impl Identity {
    pub(super) fn new(key: Option<NodeKey>, public_ip: &PublicIp) -> Self {
        Self {
            key,
            configured_ip: public_ip.address,
            lookup_url: public_ip.lookup_url.clone(),
            looked_up: OnceCell::new(),
        }
    }

    /// `node.publicIp`, else what `node.publicIpUrl` answers, else none (an empty string on the
    /// wire: the scheduler knows the address it reached the node at).
    async fn public_ip(&self) -> Option<IpAddr> {
        if let Some(ip) = self.configured_ip {
            return Some(ip);
        }
        let url = self.lookup_url.as_ref()?;
        let lookup = self.looked_up.get_or_try_init(|| look_up(url)).await;
        match lookup {
            Ok(ip) => Some(*ip),
            Err(reason) => {
                log::warn!("IDENTITY: node.publicIpUrl {url}: {reason}; answering an empty ipAddress");
                None
            }
        }
    }
}

async fn look_up(url: &url::Url) -> Result<IpAddr, String> {
    let client = reqwest::Client::builder().timeout(IP_LOOKUP_TIMEOUT).build().map_err(|e| e.to_string())?;
    let response = client.get(url.clone()).send().await.map_err(|e| format!("no answer ({e})"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let text = response.text().await.map_err(|e| format!("unreadable answer ({e})"))?;
    text.trim().parse().map_err(|_| format!("answered {:?}, not an IP address", truncate(&text)))
}

fn truncate(text: &str) -> &str {
    text.char_indices().nth(64).map_or(text, |(end, _)| &text[..end])
}

/// The 65-byte recoverable signature (`r ‖ s ‖ v`, `v` 0/1) over
/// `keccak256(uncompressed public key ‖ "." ‖ ip)`, base64: PROTOCOL §3.
pub fn identity_signature(key: &NodeKey, ip: &str) -> String {
    let public_key = key.signing_key.verifying_key().to_encoded_point(false);
    let mut message = public_key.as_bytes().to_vec();
    message.push(b'.');
    message.extend_from_slice(ip.as_bytes());
    let (signature, recovery) =
        key.signing_key.sign_prehash_recoverable(&keccak256(&message)).expect("a 32-byte digest is always signable");
    let mut bytes = signature.to_bytes().to_vec();
    bytes.push(recovery.to_byte());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[async_trait]
impl Challenge for Identity {
    fn name(&self) -> &'static str {
        "IDENTITY"
    }

    async fn answer(&self, _payload: Payload) -> Result<Answer, ChallengeError> {
        let key = self.key.as_ref().ok_or(ChallengeError::NodeKeyMissing)?;
        let ip = self.public_ip().await.map_or_else(String::new, |ip| ip.to_string());
        let gpu_stats = tokio::task::spawn_blocking(|| Gpus::shared().stats())
            .await
            .map_err(|e| ChallengeError::Internal(format!("reading GPU stats: {e}")))?;
        Ok(serde_json::json!({
            "publicKey": key.checksummed_address(),
            "ipAddress": ip,
            "signature": identity_signature(key, &ip),
            "gpuStats": gpu_stats,
        })
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_vector_reproduces() {
        let key =
            NodeKey::from_private_key_hex("19166bfe33bcf187f79f5a44ee58b339d2f8355b31777da89fa08cd9869f48d9").unwrap();
        assert_eq!(
            identity_signature(&key, "203.0.113.7"),
            "BJ5s7SscpgmqdJFV3u54U/SeGp6ixjED0tPORenLcH0vnMPb3xTRIQXNK8oHrB7nu58M4FXTgfgrvpbvBaDWBAA="
        );
    }

    #[tokio::test]
    async fn without_a_key_identity_says_to_configure_one() {
        let identity = Identity::new(None, &PublicIp::default());
        let error = identity.answer(Payload::from_json("null")).await.unwrap_err();
        assert!(matches!(error, ChallengeError::NodeKeyMissing));
        assert!(error.to_string().contains("node.keyFile"), "{error}");
    }

    #[tokio::test]
    async fn the_configured_ip_is_signed_and_no_gpu_is_null() {
        let key = NodeKey::generate();
        let public_ip = PublicIp { address: Some("198.51.100.4".parse().unwrap()), lookup_url: None };
        let answer = Identity::new(Some(key.clone()), &public_ip).answer(Payload::from_json("{}")).await.unwrap();
        assert_eq!(answer.json["publicKey"], key.checksummed_address());
        assert_eq!(answer.json["ipAddress"], "198.51.100.4");
        assert_eq!(answer.json["signature"], identity_signature(&key, "198.51.100.4"));
        // This machine has no NVIDIA driver; the GPU path is checked where one is.
        if Gpus::shared().stats().is_none() {
            assert!(answer.json["gpuStats"].is_null());
        }
    }
}
