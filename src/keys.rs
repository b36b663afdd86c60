//! Key files (PROTOCOL §1): JSON with `public_key`, `address` and `private_key`, mode 0600.
//! `fxn accounts new` writes them; the node loads its own with `node.keyFile`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ethers_core::types::Address;
use ethers_core::utils::{secret_key_to_address, to_checksum};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};

/// Keys whose private half is public, as (checksummed address, what it is): the repository's test
/// keys and the network's published test keys. Trusting one lets anyone sign requests as it.
pub(crate) const PUBLICLY_KNOWN_KEYS: [(&str, &str); 4] = [
    ("0x4e95104030ECA5926555e8CafC8783Cf911C7f2B", "scripts/gateway_test_key.json"),
    ("0x5D6aDbfaF1602c7b28fFCd1cc85027694de4351D", "scripts/scheduler_test_key.json"),
    ("0x0172b2911af6A2491ff76dDEc34aCb7AE2c03BA1", "the network's public gateway test key"),
    ("0x9EC5501b7db525648C46098CCe1Df11EbBA9c16a", "the network's public scheduler test key"),
];

/// What `address` is, when its private key is public.
pub(crate) fn publicly_known(address: &Address) -> Option<&'static str> {
    PUBLICLY_KNOWN_KEYS.iter().find(|(known, _)| to_checksum(address, None) == *known).map(|(_, name)| *name)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: cannot read the key file ({source}); create one with `fxn accounts new --out {path}`")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path}: readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: not a key file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("{path}: cannot write the key file ({source}); check that its directory exists and is writable")]
    Unwritable { path: PathBuf, source: std::io::Error },
}

#[derive(Serialize, Deserialize)]
struct KeyFileJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    private_key: String,
}

/// A secp256k1 key with its Ethereum address.
#[derive(Clone)]
pub struct NodeKey {
    pub signing_key: SigningKey,
    pub address: Address,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.checksummed_address())
    }
}

impl NodeKey {
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::random(&mut rand::rngs::OsRng))
    }

    pub fn from_signing_key(signing_key: SigningKey) -> Self {
        let address = secret_key_to_address(&signing_key);
        Self { signing_key, address }
    }

    /// Parses a private key: 64 hex digits (`0x` optional), a scalar below the curve order.
    pub fn from_private_key_hex(text: &str) -> Result<Self, String> {
        let digits = text.trim();
        let digits = digits.strip_prefix("0x").unwrap_or(digits);
        let bytes = hex::decode(digits).map_err(|e| format!("private key is not hex ({e})"))?;
        if bytes.len() != 32 {
            return Err(format!("private key is {} bytes; it must be 32 (64 hex digits)", bytes.len()));
        }
        SigningKey::from_slice(&bytes)
            .map(Self::from_signing_key)
            .map_err(|_| "private key is zero or not below the secp256k1 order".to_string())
    }

    pub fn checksummed_address(&self) -> String {
        to_checksum(&self.address, None)
    }

    /// Uncompressed SEC1 public key, hex without `0x` (130 digits).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing_key.verifying_key().to_encoded_point(false).as_bytes())
    }

    /// Loads a key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let unreadable = |source| KeyFileError::Unreadable { path: path.to_path_buf(), source };
        let mode = std::fs::metadata(path).map_err(unreadable)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen { path: path.to_path_buf(), mode: mode & 0o777 });
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        Self::parse(&text).map_err(|reason| KeyFileError::Malformed { path: path.to_path_buf(), reason })
    }

    /// Parses key-file JSON; `public_key` and `address`, when present, must match the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let json: KeyFileJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let key = Self::from_private_key_hex(&json.private_key)?;
        if let Some(public_key) = &json.public_key {
            let given = public_key.trim_start_matches("0x").to_ascii_lowercase();
            if given != key.public_key_hex() {
                return Err("`public_key` does not belong to `private_key`".into());
            }
        }
        if let Some(address) = &json.address {
            let given = crate::config::parse_address(address)?;
            if given != key.address {
                return Err("`address` does not belong to `private_key`".into());
            }
        }
        Ok(key)
    }

    /// Writes the key file with mode 0600; an existing file is replaced only with `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), KeyFileError> {
        let json = KeyFileJson {
            public_key: Some(self.public_key_hex()),
            address: Some(self.checksummed_address()),
            private_key: hex::encode(self.signing_key.to_bytes()),
        };
        let text = serde_json::to_string_pretty(&json).expect("key JSON serializes");
        let mut options = OpenOptions::new();
        options.write(true).mode(0o600);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.to_path_buf() },
            _ => KeyFileError::Unwritable { path: path.to_path_buf(), source },
        })?;
        let unwritable = |source| KeyFileError::Unwritable { path: path.to_path_buf(), source };
        // An existing file keeps its old mode when truncated.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(unwritable)?;
        file.write_all(text.as_bytes()).map_err(unwritable)?;
        file.write_all(b"\n").map_err(unwritable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publicly_known_keys_match_the_repository_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (address, name) in &PUBLICLY_KNOWN_KEYS[..2] {
            let key = NodeKey::parse(&std::fs::read_to_string(root.join(name)).unwrap()).unwrap();
            assert_eq!(key.checksummed_address(), *address, "{name}");
            assert_eq!(publicly_known(&key.address), Some(*name));
        }
        for (address, _) in PUBLICLY_KNOWN_KEYS {
            assert_eq!(to_checksum(&crate::config::parse_address(address).unwrap(), None), address, "{address}");
        }
        assert_eq!(publicly_known(&NodeKey::generate().address), None);
    }

    #[test]
    fn written_key_loads_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let key = NodeKey::generate();
        key.write(&path, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = NodeKey::load(&path).unwrap();
        assert_eq!(loaded.address, key.address);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["public_key"].as_str().unwrap().len(), 130);
        assert_eq!(json["private_key"].as_str().unwrap().len(), 64);
        assert_eq!(json["address"], key.checksummed_address());
    }

    #[test]
    fn existing_file_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        NodeKey::generate().write(&path, false).unwrap();
        assert!(matches!(NodeKey::generate().write(&path, false), Err(KeyFileError::Exists { .. })));
        let replacement = NodeKey::generate();
        replacement.write(&path, true).unwrap();
        assert_eq!(NodeKey::load(&path).unwrap().address, replacement.address);
    }

    #[test]
    fn missing_directory_and_open_mode_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let error = NodeKey::generate().write(&dir.path().join("no/such/key.json"), false).unwrap_err();
        assert!(error.to_string().contains("directory exists"), "{error}");
        let path = dir.path().join("key.json");
        NodeKey::generate().write(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = NodeKey::load(&path).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        let error = NodeKey::load(&dir.path().join("absent.json")).unwrap_err();
        assert!(error.to_string().contains("fxn accounts new"), "{error}");
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let key = NodeKey::generate();
        let private = hex::encode(key.signing_key.to_bytes());
        for (text, reason) in [
            ("not json".to_string(), "expected"),
            (r#"{"private_key":"abcd"}"#.to_string(), "must be 32"),
            (format!(r#"{{"private_key":"{}"}}"#, "0".repeat(64)), "zero or not below"),
            (format!(r#"{{"private_key":"{}"}}"#, "f".repeat(64)), "zero or not below"),
            (format!(r#"{{"private_key":"{private}","address":"0x{}"}}"#, "11".repeat(20)), "`address`"),
            (format!(r#"{{"private_key":"{private}","public_key":"04{}"}}"#, "11".repeat(64)), "`public_key`"),
        ] {
            let error = NodeKey::parse(&text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert_eq!(NodeKey::parse(&format!(r#"{{"private_key":"0x{private}"}}"#)).unwrap().address, key.address);
    }
}
