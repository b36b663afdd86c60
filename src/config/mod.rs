//! Loading and validating the node's three files: `config.yaml` (node settings),
//! `model_backend.yaml` (model → backend) and Pingora's server conf. Every file is parsed
//! into typed settings; every problem found is reported with its file and key path.

mod error;
mod go_duration;
mod model_backend;
mod node;
mod server_conf;
mod yaml;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use model_backend::{
    Affinity, Backend, BackendAuth, BackendProvider, FileForm, HealthCheck, LoadReports, ModelBackends, ModelEntry,
    OutlierDetection, Policy, DEFAULT_ENTRY as DEFAULT_MODEL_ENTRY, MAX_BACKENDS_PER_ENTRY, MIN_HEALTH_INTERVAL,
};
pub use node::{
    AuthFailureBudget, AuthSettings, ChallengeSettings, Limits, LogFormat, LogSettings, MetricsSettings, NodeConfig,
    NonceBackend, NonceCacheSettings, OnRedisUnavailable, PerGatewayLimits, ProxySettings, PublicIp, ReceiptSettings,
    RedisSettings, RegistrySettings, RpcSettings, StaticSigners, UsageSettings,
};
pub use server_conf::load_server_conf;
pub use yaml::{format_duration, parse_address, parse_duration, parse_http_url};

pub const DEFAULT_CONFIG_PATH: &str = "config.yaml";
pub const DEFAULT_MODEL_BACKEND_PATH: &str = "model_backend.yaml";
pub const DEFAULT_SERVER_CONF_PATH: &str = "conf/fxn.yaml";

/// Where the node's files are; each defaults to its path relative to the working directory.
#[derive(Debug, Clone)]
pub struct ConfigPaths {
    pub config: PathBuf,
    pub model_backend: PathBuf,
    pub server_conf: PathBuf,
}

impl Default for ConfigPaths {
    fn default() -> Self {
        Self {
            config: DEFAULT_CONFIG_PATH.into(),
            model_backend: DEFAULT_MODEL_BACKEND_PATH.into(),
            server_conf: DEFAULT_SERVER_CONF_PATH.into(),
        }
    }
}

/// Everything the node runs on, validated.
pub struct Settings {
    pub node: NodeConfig,
    pub models: ModelBackends,
    pub server: pingora::server::configuration::ServerConf,
}

impl Settings {
    /// Loads and validates all three files, collecting the errors of every file before failing.
    pub fn load(paths: &ConfigPaths) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let node = NodeConfig::load(&paths.config).map_err(|e| errors.extend(e)).ok();
        let models = ModelBackends::load(&paths.model_backend).map_err(|e| errors.extend(e)).ok();
        let server = load_server_conf(&paths.server_conf).map_err(|e| errors.extend(e)).ok();
        match (node, models, server) {
            (Some(node), Some(models), Some(server)) if errors.is_empty() => Ok(Self { node, models, server }),
            _ => Err(errors),
        }
    }
}

fn read_file(path: &Path, what_it_is: &str) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            "",
            format!("cannot read the {what_it_is}: {e}; create it or pass its path on the command line"),
        )
        .into()
    })
}
