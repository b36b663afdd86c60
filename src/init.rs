//! `fxn init`: a new node's files in one directory, laid out as `fxn start` reads them by default
//! (`config.yaml`, `model_backend.yaml`, `conf/fxn.yaml`), and a fresh node key. A file that
//! exists is never replaced, so running it again changes nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigErrors, ModelBackends, NodeConfig};
use crate::keys::{KeyFileError, NodeKey};

/// The node key's name in the directory.
pub const KEY_FILE: &str = "node_key.json";
/// The shipped Pingora conf: short shutdown times, and pid_file and upgrade_sock where `fxn reload`
/// and `fxn start -u` look for them.
const SERVER_CONF: &str = include_str!("../conf/fxn.yaml");
const LISTEN_PORT: u16 = 8080;
const METRICS_PORT: u16 = 9100;

pub struct InitOptions {
    pub dir: PathBuf,
    /// Where the node and its metrics listen: loopback on a host, `0.0.0.0` in a container, whose
    /// published ports arrive from outside it.
    pub listen_address: IpAddr,
    /// The inference server the `default` entry sends every model to.
    pub backend_url: String,
    /// False for an image's files: the key is made in the volume they are copied to, not in a layer
    /// every container of the image would share.
    pub write_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// It existed and was left as it was.
    Kept,
}

pub struct Initialized {
    /// The directory, absolute: `node.keyFile` names the key by its absolute path.
    pub dir: PathBuf,
    /// Each file, relative to `dir`, and what became of it.
    pub files: Vec<(&'static str, Outcome)>,
    /// The node key's address, when there is a key.
    pub address: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: cannot create the directory ({source})")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot write it ({source}); check that its directory is writable")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Key(#[from] KeyFileError),
    #[error("{path} is not valid UTF-8, which config.yaml cannot name")]
    PathNotUtf8 { path: PathBuf },
    #[error("the files would not load: {0}")]
    Invalid(ConfigErrors),
}

/// Writes what `options.dir` lacks. The files are checked by the node's own loaders before any is
/// written, so a bad `--backend-url` writes nothing.
pub fn init(options: &InitOptions) -> Result<Initialized, InitError> {
    let conf_dir = options.dir.join("conf");
    std::fs::create_dir_all(&conf_dir).map_err(|source| InitError::CreateDir { path: conf_dir.clone(), source })?;
    let dir = std::fs::canonicalize(&options.dir)
        .map_err(|source| InitError::CreateDir { path: options.dir.clone(), source })?;
    let key_path = dir.join(KEY_FILE);
    let key_path_text = key_path.to_str().ok_or_else(|| InitError::PathNotUtf8 { path: key_path.clone() })?;
    let node_config = node_config(options.listen_address, key_path_text);
    let model_backend = model_backend(&options.backend_url);
    let mut errors = ConfigErrors::default();
    if let Err(e) = NodeConfig::parse(&dir.join(config::DEFAULT_CONFIG_PATH), &node_config) {
        errors.extend(e);
    }
    if let Err(e) = ModelBackends::parse(&dir.join(config::DEFAULT_MODEL_BACKEND_PATH), &model_backend) {
        errors.extend(e);
    }
    if !errors.is_empty() {
        return Err(InitError::Invalid(errors));
    }

    let mut files = Vec::new();
    for (name, text) in [
        (config::DEFAULT_CONFIG_PATH, node_config.as_str()),
        (config::DEFAULT_MODEL_BACKEND_PATH, model_backend.as_str()),
        (config::DEFAULT_SERVER_CONF_PATH, SERVER_CONF),
    ] {
        files.push((name, write_new(&dir.join(name), text)?));
    }
    let address = if options.write_key {
        let new_key = NodeKey::generate();
        let key = match new_key.write(&key_path, false) {
            Ok(()) => {
                files.push((KEY_FILE, Outcome::Written));
                new_key
            }
            Err(KeyFileError::Exists { .. }) => {
                files.push((KEY_FILE, Outcome::Kept));
                NodeKey::load(&key_path)?
            }
            Err(e) => return Err(e.into()),
        };
        Some(key.checksummed_address())
    } else {
        None
    };
    Ok(Initialized { dir, files, address })
}

/// Creates `path` with `text`; an existing file, whatever it holds, is kept.
fn write_new(path: &Path, text: &str) -> Result<Outcome, InitError> {
    let failed = |source| InitError::Write { path: path.to_path_buf(), source };
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut file) => file.write_all(text.as_bytes()).map(|()| Outcome::Written).map_err(failed),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Outcome::Kept),
        Err(e) => Err(failed(e)),
    }
}

fn node_config(listen_address: IpAddr, key_file: &str) -> String {
    let metrics = SocketAddr::new(listen_address, METRICS_PORT);
    // A JSON string is a YAML double-quoted scalar: any path is written back exactly.
    let key_file = serde_json::Value::from(key_file);
    format!(
        r#"# fxn node settings, written by `fxn init`. Durations are Go-style: 500ms, 90s, 5m, 1h. Every
# key is optional; README.md's Configuration section lists them all with their defaults.
node:
  listenAddress: "{listen_address}"   # 0.0.0.0: every interface (a container's published port)
  listenPort: {LISTEN_PORT}
  # The node's identity: register its address (`fxn accounts show` prints it) with the network.
  keyFile: {key_file}
  # publicIp: "203.0.113.7"    # what IDENTITY reports; or publicIpUrl: "https://api.ipify.org"
logger:
  verbosity: "info"            # error | warn | info | debug | trace; RUST_LOG overrides
# Who may send signed requests. Nobody is trusted yet: list your network's gateways and its
# scheduler, or have the node read the chain's registries.
# schedulerAddress: "0x…"
# rpcProvider: "https://…"
registry:
  # routerSmartContractAddress: "0x…"   # required with rpcProvider
  static:
    gateways: []
    schedulers: []
proxy:
  connectTimeout: "10s"
  readTimeout: "300s"          # longest wait for any backend read, the first token included
metrics:
  listenAddress: "{metrics}"   # Prometheus scrapes here; never the signed port
"#
    )
}

fn model_backend(backend_url: &str) -> String {
    let url = serde_json::Value::from(backend_url);
    format!(
        r#"# Which backend serves each model, written by `fxn init`. The request path is appended to `url`.
models:
  # Every model the gateways ask for, until models are listed by name.
  default:
    url: {url}
    # alias: "llama3.1:8b"      # the name the backend knows the model by
    # fxn_id: "2"               # the network's model id this node is registered for
    # auth:
    #   bearer_token: "sk-..."  # sent as Authorization: Bearer …
  # "meta-llama/Llama-3.1-8B-Instruct":      # vLLM (vllm serve MODEL --port 8000)
  #   url: "http://127.0.0.1:8000"
  # "llama3.1:8b":                           # Ollama
  #   url: "http://127.0.0.1:11434"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            listen_address: [0, 0, 0, 0].into(),
            backend_url: "http://backend:8000".into(),
            write_key: false,
        }
    }

    #[test]
    fn written_files_load_and_name_the_key_by_its_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let done = init(&options(&dir.path().join("new"))).unwrap();
        assert_eq!(done.address, None);
        assert_eq!(done.files.len(), 3);
        let paths = config::ConfigPaths {
            config: done.dir.join(config::DEFAULT_CONFIG_PATH),
            model_backend: done.dir.join(config::DEFAULT_MODEL_BACKEND_PATH),
            server_conf: done.dir.join(config::DEFAULT_SERVER_CONF_PATH),
        };
        let settings = config::Settings::load(&paths).unwrap();
        assert_eq!(settings.node.key_file, Some(done.dir.join(KEY_FILE)));
        assert_eq!(settings.node.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.node.metrics.listen_address.to_string(), "0.0.0.0:9100");
        // Nobody is trusted until the operator says whom: least of all the public test keys.
        let registry = &settings.node.registry;
        assert!(registry.static_signers.gateways.is_empty() && registry.static_signers.schedulers.is_empty());
        assert_eq!((registry.scheduler_address, registry.rpc_provider.as_ref()), (None, None));
    }

    #[test]
    fn a_bad_backend_url_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let error = init(&InitOptions { backend_url: "ftp://x".into(), ..options(dir.path()) }).err().unwrap();
        assert!(error.to_string().contains("models.default.url"), "{error}");
        assert!(!dir.path().join(config::DEFAULT_CONFIG_PATH).exists());
    }
}
