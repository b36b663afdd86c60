//! Signed-request authentication (PROTOCOL §1) and role authorization: who signed this request,
//! is it fresh, and may that signer call this route.

mod curve;
mod headers;
mod nonce;
mod shared_nonces;
mod signing;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ethers_core::types::Address;
use http::HeaderMap;

pub use curve::{CurveVerifier, DefaultCurve, DefaultSigner, K256Signer, K256};
#[cfg(feature = "libsecp256k1")]
pub use curve::{LibSecp256k1, LibSecp256k1Signer};
pub use headers::{body_sha256, SignedHeaders, SigningHeader, SIGNING_HEADERS};
use headers::{signed_message, X_ADDRESS, X_PUBLIC_KEY, X_SIGNATURE};
pub use nonce::{NonceOutcome, NonceStore};
use shared_nonces::SharedOutcome;
pub use shared_nonces::{RedisServers, SharedNonceStore};
pub use signing::{sign_request, SigningError};

/// What a signer is registered as; each route needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Scheduler,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Scheduler => "scheduler",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Gateway => Self::Scheduler,
            Self::Scheduler => Self::Gateway,
        }
    }
}

/// Whether a registry lists a signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    /// The registry has not loaded yet, or its last load is older than `registry.maxStaleness`.
    Unavailable,
}

impl From<bool> for Membership {
    /// Listed or not, in a registry that is always loaded (a static list).
    fn from(listed: bool) -> Self {
        if listed {
            Self::Member
        } else {
            Self::NotMember
        }
    }
}

/// What one signer is registered as, in every registry at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerRoles {
    pub gateway: Membership,
    pub scheduler: Membership,
}

impl SignerRoles {
    pub fn get(&self, role: Role) -> Membership {
        match role {
            Role::Gateway => self.gateway,
            Role::Scheduler => self.scheduler,
        }
    }
}

/// Who is registered as what: one lookup per request (`registry::Directory`).
pub trait SignerDirectory: Send + Sync {
    fn roles(&self, address: &Address) -> SignerRoles;
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    pub address: Address,
    pub role: Role,
}

/// A request whose signature verified: who signed it, and what the signature covers (which a
/// receipt for the answer repeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified<'a> {
    pub signer: Signer,
    pub body_sha256: [u8; 32],
    /// `X-Timestamp`, exactly as signed.
    pub timestamp: &'a str,
    /// `X-Nonce`, exactly as signed.
    pub nonce: &'a str,
}

/// A request whose signature verified and whose signer may call the route, its nonce not yet
/// recorded ([`Authenticator::record_nonce`]).
#[derive(Debug)]
pub struct Checked<'a> {
    verified: Verified<'a>,
    keep_nonce_for: Duration,
}

impl Checked<'_> {
    pub fn signer(&self) -> Signer {
        self.verified.signer
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {header} header: {reason}")]
    BadEncoding { header: &'static str, reason: String },
    #[error("X-Timestamp is {skew_secs} s from the node's clock; at most {max_secs} s either way is accepted")]
    StaleTimestamp { skew_secs: i64, max_secs: u64 },
    #[error("X-Address and X-Public-Key name different signers")]
    SignerMismatch,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("signer is not registered")]
    NotRegistered,
    #[error("signer is registered, but not as a {0}")]
    WrongRole(Role),
    #[error("the {0} registry is not loaded (the chain has not answered yet, or longer than registry.maxStaleness); retry shortly")]
    RegistryUnavailable(Role),
    #[error("nonce already used")]
    NonceReused,
    #[error("the node is holding as many recent nonces as it may (nonceCache.maxEntries); retry shortly")]
    NonceStoreFull,
    #[error(
        "the node cannot record the nonce: its shared nonce store (nonceCache.redis) is unavailable; retry shortly"
    )]
    NonceStoreUnavailable,
}

/// Bound on public keys remembered per address; only registered signers get in, so it is
/// reached only if the registries are huge, and then the cache starts over.
const MAX_CACHED_KEYS: usize = 65_536;

/// Checks signed requests: form, freshness, signature, role and nonce, in the order that keeps
/// the expensive curve math for registered signers and records a nonce only for a request
/// that passed everything else.
pub struct Authenticator<V: CurveVerifier = DefaultCurve> {
    curve: V,
    directory: Arc<dyn SignerDirectory>,
    nonces: Arc<NonceStore>,
    /// The store every instance shares, when `nonceCache.backend` is `redis`.
    shared_nonces: Option<SharedNonceStore>,
    max_clock_skew: Duration,
    nonce_ttl: Duration,
    /// Public keys recovered for `X-Address` requests, so later ones verify instead of
    /// recovering (verification costs about half of a recovery).
    keys_by_address: RwLock<HashMap<Address, V::PublicKey, foldhash::fast::RandomState>>,
}

impl<V: CurveVerifier> Authenticator<V> {
    pub fn new(
        curve: V,
        directory: Arc<dyn SignerDirectory>,
        nonces: Arc<NonceStore>,
        max_clock_skew: Duration,
        nonce_ttl: Duration,
    ) -> Self {
        Self {
            curve,
            directory,
            nonces,
            shared_nonces: None,
            max_clock_skew,
            nonce_ttl,
            keys_by_address: RwLock::default(),
        }
    }

    /// Records nonces in `store`, shared with other instances, instead of this process's store.
    pub fn with_shared_nonces(self, store: SharedNonceStore) -> Self {
        Self { shared_nonces: Some(store), ..self }
    }

    pub fn nonce_store(&self) -> &Arc<NonceStore> {
        &self.nonces
    }

    /// Authenticates a request to a route that needs `role`.
    pub async fn verify<'a>(&self, headers: &'a HeaderMap, body: &[u8], role: Role) -> Result<Verified<'a>, AuthError> {
        self.verify_at(headers, body, role, unix_now()).await
    }

    /// [`Self::verify`] with the node's clock reading `now_unix`.
    pub async fn verify_at<'a>(
        &self,
        headers: &'a HeaderMap,
        body: &[u8],
        role: Role,
        now_unix: i64,
    ) -> Result<Verified<'a>, AuthError> {
        let checked = self.check_at(headers, body, role, now_unix)?;
        self.record_nonce(checked).await
    }

    /// The first half of [`Self::verify`]: everything but recording the nonce, so that a request
    /// refused between the two (by a gateway's rate limit) leaves its nonce unused.
    pub fn check<'a>(&self, headers: &'a HeaderMap, body: &[u8], role: Role) -> Result<Checked<'a>, AuthError> {
        self.check_at(headers, body, role, unix_now())
    }

    fn check_at<'a>(
        &self,
        headers: &'a HeaderMap,
        body: &[u8],
        role: Role,
        now_unix: i64,
    ) -> Result<Checked<'a>, AuthError> {
        let signed = SignedHeaders::parse(headers)?;
        let skew_secs = signed.timestamp.saturating_sub(now_unix);
        let max_secs = self.max_clock_skew.as_secs();
        if skew_secs.unsigned_abs() > max_secs {
            return Err(AuthError::StaleTimestamp { skew_secs, max_secs });
        }

        let header_key = signed
            .public_key
            .as_deref()
            .map(|sec1| {
                self.curve.parse_public_key(sec1).ok_or(AuthError::BadEncoding {
                    header: X_PUBLIC_KEY.display,
                    reason: "not a point on secp256k1".into(),
                })
            })
            .transpose()?;
        let address = match (signed.address, &header_key) {
            (Some(claimed), Some(key)) if self.curve.address_of(key) != claimed => {
                return Err(AuthError::SignerMismatch)
            }
            (Some(claimed), _) => claimed,
            (None, Some(key)) => self.curve.address_of(key),
            (None, None) => return Err(AuthError::MissingHeader(X_ADDRESS.display)),
        };
        self.authorize(&address, role)?;

        let (rs, v) = signed.signature.split_at(64);
        let rs: &[u8; 64] = rs.try_into().map_err(|_| AuthError::InvalidSignature)?;
        let recovery = match v[0] {
            27 | 28 => v[0] - 27,
            0 | 1 => v[0],
            other => {
                return Err(AuthError::BadEncoding {
                    header: X_SIGNATURE.display,
                    reason: format!("recovery byte v is {other}; it must be 27, 28, 0 or 1"),
                })
            }
        };
        let body_sha256 = body_sha256(body);
        let digest =
            ethers_core::utils::hash_message(signed_message(&body_sha256, signed.timestamp_text, signed.nonce)).0;
        let authentic = match header_key {
            Some(key) => self.curve.verify(&key, &digest, rs),
            None => self.verify_for_address(&address, &digest, rs, recovery),
        };
        if !authentic {
            return Err(AuthError::InvalidSignature);
        }

        // Kept until the timestamp leaves the window (a future-dated request stays valid
        // longer than the TTL), and at least for nonceCache.ttl.
        let valid_for = (signed.timestamp + max_secs as i64 - now_unix).max(0) as u64;
        let signer = Signer { address, role };
        Ok(Checked {
            verified: Verified { signer, body_sha256, timestamp: signed.timestamp_text, nonce: signed.nonce },
            keep_nonce_for: self.nonce_ttl.max(Duration::from_secs(valid_for)),
        })
    }

    /// The second half of [`Self::verify`]: records the checked request's nonce, refusing a replay.
    pub async fn record_nonce<'a>(&self, checked: Checked<'a>) -> Result<Verified<'a>, AuthError> {
        let Checked { verified, keep_nonce_for } = checked;
        self.store_nonce(verified.signer.address, verified.nonce, keep_nonce_for).await?;
        Ok(verified)
    }

    async fn store_nonce(&self, signer: Address, nonce: &str, keep_for: Duration) -> Result<(), AuthError> {
        if let Some(shared) = &self.shared_nonces {
            // Boxed: inline, the Redis command's state would grow every request's future.
            match Box::pin(shared.record(&signer, nonce, keep_for)).await {
                SharedOutcome::Recorded => return Ok(()),
                SharedOutcome::Reused => return Err(AuthError::NonceReused),
                SharedOutcome::Unavailable if !shared.falls_back_to_memory => {
                    return Err(AuthError::NonceStoreUnavailable)
                }
                SharedOutcome::Unavailable => {}
            }
        }
        let now = Instant::now();
        match self.nonces.record(signer, nonce, now + keep_for, now) {
            NonceOutcome::Recorded => Ok(()),
            NonceOutcome::Reused => Err(AuthError::NonceReused),
            NonceOutcome::Full => Err(AuthError::NonceStoreFull),
        }
    }

    fn authorize(&self, address: &Address, role: Role) -> Result<(), AuthError> {
        let roles = self.directory.roles(address);
        match (roles.get(role), roles.get(role.other())) {
            (Membership::Member, _) => Ok(()),
            (_, Membership::Member) => Err(AuthError::WrongRole(role)),
            (Membership::Unavailable, _) => Err(AuthError::RegistryUnavailable(role)),
            (Membership::NotMember, _) => Err(AuthError::NotRegistered),
        }
    }

    fn verify_for_address(&self, address: &Address, digest: &[u8; 32], rs: &[u8; 64], recovery: u8) -> bool {
        let cached = self.keys_by_address.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(address).cloned();
        if let Some(key) = cached {
            return self.curve.verify(&key, digest, rs);
        }
        let Some(key) = self.curve.recover(digest, rs, recovery) else {
            return false;
        };
        if self.curve.address_of(&key) != *address {
            return false;
        }
        let mut keys = self.keys_by_address.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(*address, key);
        true
    }
}

#[cfg(test)]
mod tests;
