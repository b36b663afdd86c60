//! `config.yaml`: the node's own settings (seed-era keys in camelCase, Go durations).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ethers_core::types::Address;
use serde::Deserialize;
use serde_yaml::Value;

use super::yaml::{self, typed};
use super::{ConfigError, ConfigErrors};

const TOP_LEVEL_KEYS: &[&str] = &[
    "node",
    "logger",
    "registry",
    "rpcProvider",
    "schedulerAddress",
    "nonceCache",
    "proxy",
    "limits",
    "auth",
    "challenge",
    "metrics",
    "usage",
    "receipts",
];

/// The validated contents of `config.yaml`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    /// The node's own key file (written by `fxn accounts new`).
    pub key_file: Option<PathBuf>,
    pub public_ip: PublicIp,
    pub log: LogSettings,
    pub registry: RegistrySettings,
    pub nonce_cache: NonceCacheSettings,
    pub proxy: ProxySettings,
    pub limits: Limits,
    pub auth: AuthSettings,
    pub challenge: ChallengeSettings,
    pub metrics: MetricsSettings,
    pub usage: UsageSettings,
    pub receipts: ReceiptSettings,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = super::read_file(path, "node config (config.yaml)")?;
        Self::parse(path, &text)
    }

    /// Parses the text of a `config.yaml`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let mut document = yaml::parse_document(path, text)?;
        let mut errors = ConfigErrors::default();
        for key in document.keys() {
            let known = key.as_str().is_some_and(|k| TOP_LEVEL_KEYS.contains(&k));
            if !known {
                errors.push(ConfigError::new(
                    path,
                    yaml_key_name(key),
                    format!("unknown key; the keys are: {}", TOP_LEVEL_KEYS.join(", ")),
                ));
            }
        }
        let mut section = |key: &str| document.remove(key).unwrap_or(Value::Null);
        let node: NodeSection = typed(path, "node", section("node"), &mut errors);
        let logger: LogSettings = typed(path, "logger", section("logger"), &mut errors);
        let registry_section: RegistrySection = typed(path, "registry", section("registry"), &mut errors);
        let rpc_provider: RpcProvider = typed(path, "rpcProvider", section("rpcProvider"), &mut errors);
        let scheduler: SchedulerAddress = typed(path, "schedulerAddress", section("schedulerAddress"), &mut errors);
        let nonce_cache: NonceCacheSettings = typed(path, "nonceCache", section("nonceCache"), &mut errors);
        let proxy: ProxySettings = typed(path, "proxy", section("proxy"), &mut errors);
        let limits: Limits = typed(path, "limits", section("limits"), &mut errors);
        let auth: AuthSettings = typed(path, "auth", section("auth"), &mut errors);
        let challenge: ChallengeSettings = typed(path, "challenge", section("challenge"), &mut errors);
        let metrics: MetricsSettings = typed(path, "metrics", section("metrics"), &mut errors);
        let usage: UsageSettings = typed(path, "usage", section("usage"), &mut errors);
        let receipts: ReceiptSettings = typed(path, "receipts", section("receipts"), &mut errors);

        if node.listen_port == 0 {
            errors.push(ConfigError::new(path, "node.listenPort", "must be a port from 1 to 65535"));
        }
        if challenge.matrix_max_dim == 0 {
            errors.push(ConfigError::new(path, "challenge.matrixMaxDim", "must be at least 1"));
        }
        if challenge.max_concurrent == 0 {
            errors.push(ConfigError::new(
                path,
                "challenge.maxConcurrent",
                "must be at least 1: with none, every MATRIX_MULTIPLICATION and PROXY challenge is refused",
            ));
        }
        if proxy.max_attempts == 0 {
            errors.push(ConfigError::new(path, "proxy.maxAttempts", "must be at least 1 (the first attempt)"));
        }
        if limits.max_body_bytes == 0 {
            errors.push(ConfigError::new(path, "limits.maxBodyBytes", "must be at least 1 byte"));
        }
        if !(1..=PINGORA_MAX_HEADER_BYTES).contains(&limits.max_header_bytes) {
            errors.push(ConfigError::new(
                path,
                "limits.maxHeaderBytes",
                format!("must be from 1 to {PINGORA_MAX_HEADER_BYTES} (Pingora refuses larger headers itself)"),
            ));
        }
        if !(1..=PINGORA_MAX_HEADER_COUNT).contains(&limits.max_header_count) {
            errors.push(ConfigError::new(
                path,
                "limits.maxHeaderCount",
                format!("must be from 1 to {PINGORA_MAX_HEADER_COUNT} (Pingora refuses more headers itself)"),
            ));
        }
        if limits.max_connections == 0 {
            errors.push(ConfigError::new(
                path,
                "limits.maxConnections",
                "must be at least 1: with none, every connection is closed",
            ));
        }
        check_limits(path, &limits, &mut errors);
        if nonce_cache.max_entries == 0 {
            errors.push(ConfigError::new(path, "nonceCache.maxEntries", "must be at least 1"));
        }
        let redis = &nonce_cache.redis;
        let redis_chosen = nonce_cache.backend == NonceBackend::Redis
            && !["url", "cluster", "sentinel"].iter().any(|field| errors.touches(&format!("nonceCache.redis.{field}")));
        let chosen: Vec<&str> = [
            ("url", redis.url.is_some()),
            ("cluster", !redis.cluster.is_empty()),
            ("sentinel", redis.sentinel.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        match chosen.as_slice() {
            [] if redis_chosen => errors.push(ConfigError::new(
                path,
                "nonceCache.redis.url",
                "is required with nonceCache.backend: redis (such as `redis://127.0.0.1:6379`), \
                 unless nonceCache.redis.cluster lists a Redis Cluster's nodes or nonceCache.redis.sentinel \
                 names the Sentinels of a monitored master",
            )),
            [_] | [] => {}
            [_, second, ..] => errors.push(ConfigError::new(
                path,
                format!("nonceCache.redis.{second}"),
                format!("and nonceCache.redis.{} are alternatives: set one of them", chosen[0]),
            )),
        }
        if let Some(sentinel) = &redis.sentinel {
            if sentinel.nodes.is_empty() {
                errors.push(ConfigError::new(
                    path,
                    "nonceCache.redis.sentinel.nodes",
                    "must list at least one Sentinel (such as `redis://10.0.0.1:26379`)",
                ));
            }
            if sentinel.master_name.trim().is_empty() {
                errors.push(ConfigError::new(
                    path,
                    "nonceCache.redis.sentinel.masterName",
                    "must name the master the Sentinels monitor (`sentinel monitor <name> …` in their conf)",
                ));
            }
        }
        let chain_wanted = rpc_provider.0.is_some() && !errors.touches("registry.routerSmartContractAddress");
        if chain_wanted && registry_section.router_smart_contract_address.is_none() {
            errors.push(ConfigError::new(
                path,
                "registry.routerSmartContractAddress",
                "is required when rpcProvider is set: the Router contract the gateway and provider \
                 registries are found through (or leave rpcProvider empty to trust registry.static alone)",
            ));
        }
        if registry_section.rpc.max_response_bytes == 0 {
            errors.push(ConfigError::new(path, "registry.rpc.maxResponseBytes", "must be at least 1 byte"));
        }
        if receipts.enabled && node.key_file.is_none() && !errors.touches("node.keyFile") {
            errors.push(ConfigError::new(
                path,
                "receipts.enabled",
                "needs node.keyFile: receipts are signed with the node's key (`fxn accounts new` writes one)",
            ));
        }
        // A key with a type error has its default, which is not what the operator wrote.
        let compare_ttl = !errors.touches("nonceCache.ttl") && !errors.touches("auth.maxClockSkew");
        if compare_ttl && nonce_cache.ttl < auth.max_clock_skew {
            errors.push(ConfigError::new(
                path,
                "nonceCache.ttl",
                format!(
                    "must be at least auth.maxClockSkew ({}): a nonce forgotten sooner could be replayed",
                    yaml::format_duration(auth.max_clock_skew)
                ),
            ));
        }

        errors.into_result(NodeConfig {
            listen: SocketAddr::new(node.listen_address, node.listen_port),
            key_file: node.key_file,
            public_ip: PublicIp { address: node.public_ip, lookup_url: node.public_ip_url.0 },
            log: logger,
            registry: RegistrySettings {
                router_contract: registry_section.router_smart_contract_address,
                gateway_poll_interval: registry_section.gateway.poll_interval,
                scheduler_poll_interval: registry_section.scheduler.poll_interval,
                provider_poll_interval: registry_section.provider.poll_interval,
                rpc_provider: rpc_provider.0,
                scheduler_address: scheduler.0,
                static_signers: registry_section.static_signers,
                chain_id: registry_section.chain_id,
                max_staleness: registry_section.max_staleness,
                rpc: registry_section.rpc,
            },
            nonce_cache,
            proxy,
            limits,
            auth,
            challenge,
            metrics,
            usage,
            receipts,
        })
    }
}

/// The per-gateway limits and the failure budget: a zero would refuse everything.
fn check_limits(path: &Path, limits: &Limits, errors: &mut ConfigErrors) {
    let gateway = &limits.per_gateway;
    let mut at_least_one = |key: &str, value: Option<u64>, what_to_do: &str| {
        if value == Some(0) {
            errors.push(ConfigError::new(path, key, format!("must be at least 1 ({what_to_do})")));
        }
    };
    let no_limit = "leave it out for no limit";
    at_least_one("limits.perGateway.maxInFlight", gateway.max_in_flight.map(u64::from), no_limit);
    at_least_one("limits.perGateway.burst", gateway.burst.map(u64::from), no_limit);
    at_least_one(
        "limits.authFailures.maxFailures",
        Some(u64::from(limits.auth_failures.max_failures)),
        "`enabled: false` turns the budget off",
    );
    at_least_one("limits.authFailures.maxAddresses", Some(limits.auth_failures.max_addresses as u64), "such as 65536");
    match gateway.requests_per_second {
        // At most one request per nanosecond: the bucket refills in whole nanoseconds.
        Some(rate) if !(rate > 0.0 && rate <= 1e9) => errors.push(ConfigError::new(
            path,
            "limits.perGateway.requestsPerSecond",
            "must be a number above 0 and at most 1e9 (such as 20, or 0.5 for one request every 2 s); \
             leave it out for no limit",
        )),
        None if gateway.burst.is_some() => errors.push(ConfigError::new(
            path,
            "limits.perGateway.burst",
            "needs limits.perGateway.requestsPerSecond: the burst is the size of that rate's bucket",
        )),
        _ => {}
    }
}

fn yaml_key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct NodeSection {
    listen_port: u16,
    listen_address: IpAddr,
    key_file: Option<PathBuf>,
    public_ip: Option<IpAddr>,
    public_ip_url: PublicIpUrl,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            listen_port: 8080,
            listen_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            key_file: None,
            public_ip: None,
            public_ip_url: PublicIpUrl::default(),
        }
    }
}

#[derive(Default, Deserialize)]
struct PublicIpUrl(#[serde(deserialize_with = "yaml::optional_http_url")] Option<url::Url>);

/// `node.publicIp` and `node.publicIpUrl`: the address IDENTITY reports and signs.
#[derive(Debug, Clone, Default)]
pub struct PublicIp {
    pub address: Option<IpAddr>,
    /// Asked for the address (its whole answer is the address) when `address` is unset.
    pub lookup_url: Option<url::Url>,
}

/// `logger`: the default log level (`RUST_LOG`, when set, overrides it) and the line format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LogSettings {
    pub verbosity: log::LevelFilter,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { verbosity: log::LevelFilter::Info, format: LogFormat::Text }
    }
}

/// `logger.format`: lines for people, or one JSON object per line for a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RegistrySection {
    #[serde(deserialize_with = "yaml::optional_address")]
    router_smart_contract_address: Option<Address>,
    gateway: PollSection,
    scheduler: PollSection,
    provider: PollSection,
    #[serde(rename = "static")]
    static_signers: StaticSigners,
    chain_id: Option<u64>,
    #[serde(deserialize_with = "yaml::optional_positive_duration")]
    max_staleness: Option<Duration>,
    rpc: RpcSettings,
}

/// `registry.rpc`: how the JSON-RPC endpoint of `rpcProvider` is called.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RpcSettings {
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub connect_timeout: Duration,
    /// The longest one call may take, connecting and reading the whole answer included.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub timeout: Duration,
    /// Further tries of a call that failed on the way (connection, timeout, HTTP 5xx or 429).
    pub retries: u32,
    /// Answers larger than this are refused rather than read.
    pub max_response_bytes: usize,
}

impl Default for RpcSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            retries: 2,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct PollSection {
    #[serde(deserialize_with = "yaml::positive_duration")]
    poll_interval: Duration,
}

impl Default for PollSection {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(60) }
    }
}

/// `registry.static`: signers trusted in addition to the on-chain registries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StaticSigners {
    #[serde(deserialize_with = "yaml::addresses")]
    pub gateways: Vec<Address>,
    #[serde(deserialize_with = "yaml::addresses")]
    pub schedulers: Vec<Address>,
}

#[derive(Default, Deserialize)]
struct RpcProvider(#[serde(deserialize_with = "yaml::optional_http_url")] Option<url::Url>);

#[derive(Default, Deserialize)]
struct SchedulerAddress(#[serde(deserialize_with = "yaml::optional_address")] Option<Address>);

/// `registry`, `rpcProvider` and `schedulerAddress`: where the trusted signers come from.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The Router the chain registries are found through; always set when `rpc_provider` is.
    pub router_contract: Option<Address>,
    pub gateway_poll_interval: Duration,
    pub scheduler_poll_interval: Duration,
    pub provider_poll_interval: Duration,
    pub rpc_provider: Option<url::Url>,
    pub scheduler_address: Option<Address>,
    pub static_signers: StaticSigners,
    /// When set, an RPC that serves another chain is refused.
    pub chain_id: Option<u64>,
    /// When set, a registry whose last good load is older is not trusted.
    pub max_staleness: Option<Duration>,
    pub rpc: RpcSettings,
}

/// `nonceCache`: how long used nonces are remembered, how often expired ones are purged,
/// the bound on how many are held, and where they are recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct NonceCacheSettings {
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub cleanup_interval: Duration,
    pub max_entries: usize,
    pub backend: NonceBackend,
    pub redis: RedisSettings,
}

impl Default for NonceCacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            cleanup_interval: Duration::from_secs(60),
            max_entries: 1_000_000,
            backend: NonceBackend::Memory,
            redis: RedisSettings::default(),
        }
    }
}

/// `nonceCache.backend`: this process's memory, or a Redis (or Valkey) that every instance
/// behind one address shares, so that a request accepted by one cannot be replayed to another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonceBackend {
    #[default]
    Memory,
    Redis,
}

/// `nonceCache.redis`: the shared store and what to do while it cannot be reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), with the password and database the URL form allows.
    #[serde(deserialize_with = "yaml::optional_redis_url")]
    pub url: Option<url::Url>,
    /// Instead of `url`: some nodes of a Redis Cluster, which tell the client the rest.
    #[serde(deserialize_with = "yaml::redis_urls")]
    pub cluster: Vec<url::Url>,
    /// Instead of `url`: the Sentinels that say which server is the master now.
    pub sentinel: Option<SentinelSettings>,
    /// Put before every key, so that several deployments can share one Redis.
    pub key_prefix: String,
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub command_timeout: Duration,
    pub on_unavailable: OnRedisUnavailable,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            cluster: Vec::new(),
            sentinel: None,
            key_prefix: "fxn:nonce:".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            on_unavailable: OnRedisUnavailable::FailClosed,
        }
    }
}

/// `nonceCache.redis.sentinel`: a master and its replicas watched by Redis Sentinel, which names
/// the master again after a failover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SentinelSettings {
    /// As in the Sentinels' `sentinel monitor <name> …`.
    pub master_name: String,
    /// Some of the Sentinels, `redis://` or `rediss://`, with their own password in the URL if
    /// they have one; `rediss://` Sentinels mean TLS to the master as well.
    #[serde(deserialize_with = "yaml::redis_urls")]
    pub nodes: Vec<url::Url>,
    /// The master's own password, when it has one.
    #[serde(default)]
    pub master_password: Option<String>,
    #[serde(default)]
    pub master_db: i64,
}

/// `nonceCache.redis.onUnavailable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisUnavailable {
    /// Refuse signed requests (503) rather than accept one whose nonce could not be recorded.
    #[default]
    FailClosed,
    /// Record nonces in this process until Redis returns: replay protection is per instance meanwhile.
    Memory,
}

/// `proxy`: timeouts and pooling of backend connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ProxySettings {
    /// Seed-era key; when set it overrides `upstream_keepalive_pool_size` of the server conf.
    pub max_idle_conns: Option<usize>,
    /// How long an idle pooled backend connection is kept.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub idle_conn_timeout: Duration,
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub connect_timeout: Duration,
    /// The longest wait for any read from a backend, the first token included.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub read_timeout: Duration,
    /// Attempts per request in all, the first included: a failure before the response reached
    /// the caller is tried once more on another backend of the model by default.
    pub max_attempts: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            max_idle_conns: None,
            idle_conn_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            max_attempts: 2,
        }
    }
}

/// Pingora's own bounds on a request header (`pingora-core`'s `MAX_HEADER_SIZE` and
/// `MAX_HEADERS`): past them it answers a bare `400` before the node sees the request, so the
/// node's limits must stay within them to be the ones that answer.
const PINGORA_MAX_HEADER_BYTES: usize = 1_048_575;
const PINGORA_MAX_HEADER_COUNT: usize = 256;

/// `limits`: bounds on what a caller may send, and on how long and how many of its connections
/// the node holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// The request line and headers, in bytes as received.
    pub max_header_bytes: usize,
    /// Header lines (a name sent twice counts twice).
    pub max_header_count: usize,
    /// From a connection's first byte (or its opening) to the end of the request header.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub header_read_timeout: Duration,
    /// From the end of the request header to the body's last byte.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request; Pingora counts it in
    /// whole seconds, so it is rounded up to one.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub idle_timeout: Duration,
    /// Callers' connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    pub per_gateway: PerGatewayLimits,
    pub auth_failures: AuthFailureBudget,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            per_gateway: PerGatewayLimits::default(),
            auth_failures: AuthFailureBudget::default(),
        }
    }
}

impl Limits {
    /// `idleTimeout` in the whole seconds Pingora's keep-alive takes (at least 1: 0 means forever).
    pub fn idle_timeout_secs(&self) -> u64 {
        self.idle_timeout.as_secs() + u64::from(self.idle_timeout.subsec_nanos() > 0)
    }
}

/// `limits.perGateway`: what one registered gateway may ask at once and per second. None by
/// default: only the operator knows what each gateway is expected to send.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PerGatewayLimits {
    /// Requests of one gateway being handled at once (streams until they end).
    pub max_in_flight: Option<u32>,
    /// Requests one gateway may start per second, on average (a token bucket's refill).
    pub requests_per_second: Option<f64>,
    /// Requests one gateway may start at once after a quiet spell (the bucket's size); one
    /// second's worth unless set.
    pub burst: Option<u32>,
}

impl PerGatewayLimits {
    /// The token bucket's size, once `requests_per_second` is set.
    pub fn effective_burst(&self) -> Option<u32> {
        let rate = self.requests_per_second?;
        Some(self.burst.unwrap_or((rate.ceil() as u32).max(1)))
    }
}

/// `limits.authFailures`: how many failed authentications a peer address may cause before its
/// requests are refused without their signature being checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuthFailureBudget {
    pub enabled: bool,
    /// Failures one address may cause within `window`; past them it is refused until the window ends.
    pub max_failures: u32,
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub window: Duration,
    /// Addresses tracked at once: the bound on the budget's memory.
    pub max_addresses: usize,
}

impl Default for AuthFailureBudget {
    fn default() -> Self {
        Self { enabled: true, max_failures: 50, window: Duration::from_secs(10), max_addresses: 65_536 }
    }
}

/// `challenge`: bounds on the work the scheduler's challenges may ask of the node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ChallengeSettings {
    /// The largest dimension of a MATRIX_MULTIPLICATION operand, and the largest `size`.
    pub matrix_max_dim: usize,
    /// MATRIX_MULTIPLICATION and PROXY challenges running at once; more are answered 429.
    pub max_concurrent: usize,
    /// The longest an ENDPOINT_REACHABLE check waits to connect to each hop.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub endpoint_connect_timeout: Duration,
    /// The longest an ENDPOINT_REACHABLE check may take, redirects included.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub endpoint_timeout: Duration,
    /// Address ranges ENDPOINT_REACHABLE may reach although the guard refuses them (private
    /// networks, say), as CIDR (`10.0.0.0/8`, `fd00::/8`) or single addresses.
    #[serde(deserialize_with = "yaml::ip_ranges")]
    pub endpoint_allow: Vec<ipnet::IpNet>,
}

impl Default for ChallengeSettings {
    fn default() -> Self {
        Self {
            matrix_max_dim: 2048,
            max_concurrent: 1,
            endpoint_connect_timeout: Duration::from_secs(5),
            endpoint_timeout: Duration::from_secs(5),
            endpoint_allow: Vec::new(),
        }
    }
}

/// `metrics`: where Prometheus scrapes the node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MetricsSettings {
    /// `false`: no metrics listener and nothing recorded.
    pub enabled: bool,
    /// Apart from the signed port, so that metrics need no signature and can stay off the network.
    pub listen_address: SocketAddr,
    /// How often the GPUs' utilisation and memory are read through NVML.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub gpu_poll_interval: Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100),
            gpu_poll_interval: Duration::from_secs(15),
        }
    }
}

/// `usage`: how token usage is learned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct UsageSettings {
    /// Ask the backend for a usage chunk (`"stream_options": {"include_usage": true}`) on every
    /// streamed chat or completion request that sets no `stream_options`, so every stream's tokens
    /// are counted; the caller then receives that extra last chunk too.
    pub request_stream_usage: bool,
}

/// `receipts`: signed usage receipts on inference answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ReceiptSettings {
    /// Sign a receipt of every answered inference request with the node's key, and send it in the
    /// answer's headers or after its stream.
    pub enabled: bool,
}

/// `auth`: how signed requests are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuthSettings {
    /// How far `X-Timestamp` may be from the node's clock, either way.
    #[serde(deserialize_with = "yaml::duration")]
    pub max_clock_skew: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { max_clock_skew: Duration::from_secs(300) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigErrors> {
        NodeConfig::parse(Path::new("config.yaml"), text)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.limits.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.idle_timeout_secs(), 60);
        assert_eq!(parse("limits: {idleTimeout: 1500ms}").unwrap().limits.idle_timeout_secs(), 2);
        assert_eq!(config.proxy.read_timeout, Duration::from_secs(300));
        assert_eq!(config.nonce_cache.max_entries, 1_000_000);
    }

    #[test]
    fn seed_era_file_loads() {
        let config = parse(
            r#"
node: {listenPort: 9090, listenAddress: "0.0.0.0"}
logger: {verbosity: "debug"}
registry:
  routerSmartContractAddress: "0x63bb292Cf4C94c4FE34756D650b66cdb34E376bB"
  gateway: {pollInterval: "1m"}
  scheduler: {pollInterval: "2m"}
  provider: {pollInterval: "1h"}
rpcProvider: "https://rpc.example.org"
schedulerAddress: "0x9EC5501b7db525648C46098CCe1Df11EbBA9c16a"
nonceCache: {ttl: "5m", cleanupInterval: "10m"}
proxy: {maxIdleConns: 100, idleConnTimeout: "90s"}
"#,
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.log.verbosity, log::LevelFilter::Debug);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.registry.scheduler_poll_interval, Duration::from_secs(120));
        assert_eq!(config.registry.provider_poll_interval, Duration::from_secs(3600));
        assert_eq!(config.proxy.max_idle_conns, Some(100));
        assert!(config.registry.scheduler_address.is_some());
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let errors = parse(
            r#"
colour: blue
node: {listenPort: 0}
proxy: {readTimeout: "soon"}
limits: {maxBodyBytes: 0, maxHeaderBytes: 2000000, maxHeaderCount: 0, maxConnections: 0, idleTimeout: 0s}
registry: {gateway: {pollInterval: "0s"}}
schedulerAddress: "0x12"
"#,
        )
        .unwrap_err();
        let keys = errors.keys();
        for expected in [
            "colour",
            "node.listenPort",
            "proxy.readTimeout",
            "limits.maxBodyBytes",
            "limits.maxHeaderBytes",
            "limits.maxHeaderCount",
            "limits.maxConnections",
            "limits.idleTimeout",
            "registry.gateway.pollInterval",
            "schedulerAddress",
        ] {
            assert!(keys.contains(&expected), "no error for {expected} in {errors}");
        }
        assert!(errors.to_string().contains("config.yaml: `proxy.readTimeout`"));
    }

    #[test]
    fn every_type_error_of_one_section_is_reported() {
        let errors =
            parse("proxy: {readTimeout: 5min, connectTimeout: 10, idleConnTimeout: 1.5h, colour: red}").unwrap_err();
        let keys = errors.keys();
        assert_eq!(keys, ["proxy.readTimeout", "proxy.connectTimeout", "proxy.colour"], "{errors}");
        // Within a list, one error names every bad entry.
        let errors = parse(r#"registry: {static: {gateways: ["0x12", "0x34"]}}"#).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(errors.0[0].message.contains("`0x12`") && errors.0[0].message.contains("`0x34`"), "{errors}");
    }

    #[test]
    fn limits_are_off_or_generous_by_default_and_checked() {
        let limits = parse("").unwrap().limits;
        assert_eq!(
            (limits.per_gateway.max_in_flight, limits.per_gateway.requests_per_second, limits.per_gateway.burst),
            (None, None, None)
        );
        assert!(limits.auth_failures.enabled);
        let limits = parse("limits: {perGateway: {requestsPerSecond: 2.5}}").unwrap().limits;
        assert_eq!(limits.per_gateway.effective_burst(), Some(3), "one second's worth, rounded up");
        let errors = parse(
            "limits:\n  perGateway: {maxInFlight: 0, requestsPerSecond: -1, burst: 0}\n  \
             authFailures: {maxFailures: 0, window: 0s, maxAddresses: 0}\n",
        )
        .unwrap_err();
        assert_eq!(
            errors.keys(),
            [
                "limits.authFailures.window",
                "limits.perGateway.maxInFlight",
                "limits.perGateway.burst",
                "limits.authFailures.maxFailures",
                "limits.authFailures.maxAddresses",
                "limits.perGateway.requestsPerSecond",
            ],
            "{errors}"
        );
        let errors = parse("limits: {perGateway: {burst: 10, rate: 5}}").unwrap_err();
        assert_eq!(errors.keys(), ["limits.perGateway.rate", "limits.perGateway.burst"], "{errors}");
        assert!(errors.to_string().contains("needs limits.perGateway.requestsPerSecond"), "{errors}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(parse("logger: {format: json}").unwrap().log.format, LogFormat::Json);
        let errors = parse("logger: {format: xml}").unwrap_err();
        assert_eq!(errors.keys(), ["logger.format"], "{errors}");
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let errors = parse("proxy: {readTimeOut: 5s}").unwrap_err();
        let message = errors.to_string();
        assert!(message.contains("readTimeOut"), "{message}");
        assert!(message.contains("readTimeout"), "should list the known keys: {message}");
    }

    #[test]
    fn redis_nonce_store_is_read_and_checked() {
        let config = parse(
            "nonceCache:\n  backend: redis\n  redis: {url: \"rediss://:pw@cache.internal:6380/2\", onUnavailable: memory}\n",
        )
        .unwrap();
        assert_eq!(config.nonce_cache.backend, NonceBackend::Redis);
        let redis = &config.nonce_cache.redis;
        assert_eq!(redis.url.as_ref().map(url::Url::as_str), Some("rediss://:pw@cache.internal:6380/2"));
        assert_eq!((redis.key_prefix.as_str(), redis.on_unavailable), ("fxn:nonce:", OnRedisUnavailable::Memory));

        let errors = parse("nonceCache: {backend: redis}").unwrap_err();
        assert_eq!(errors.keys(), ["nonceCache.redis.url"], "{errors}");
        assert!(errors.to_string().contains("is required with nonceCache.backend: redis"), "{errors}");
        let errors =
            parse("nonceCache: {backend: valkey, redis: {url: \"http://x:1\", commandTimeout: 5min}}").unwrap_err();
        assert_eq!(
            errors.keys(),
            ["nonceCache.backend", "nonceCache.redis.url", "nonceCache.redis.commandTimeout"],
            "{errors}"
        );
        assert!(errors.to_string().contains("must start with redis:// or rediss://"), "{errors}");

        let cluster = parse("nonceCache: {backend: redis, redis: {cluster: [\"redis://a:7000\", \"redis://b:7000\"]}}");
        assert_eq!(cluster.unwrap().nonce_cache.redis.cluster.len(), 2);
        let both = parse("nonceCache: {backend: redis, redis: {url: \"redis://a:1\", cluster: [\"redis://b:2\"]}}");
        assert_eq!(both.unwrap_err().keys(), ["nonceCache.redis.cluster"]);

        let sentinel = parse(
            "nonceCache: {backend: redis, redis: {sentinel: {masterName: fxn, nodes: [\"rediss://:s@a:26379\"], \
             masterPassword: pw, masterDb: 3}}}",
        );
        let sentinel = sentinel.unwrap().nonce_cache.redis.sentinel.unwrap();
        assert_eq!((sentinel.master_name.as_str(), sentinel.master_password.as_deref()), ("fxn", Some("pw")));
        assert_eq!((sentinel.nodes.len(), sentinel.master_db), (1, 3));
        let both =
            parse("nonceCache: {backend: redis, redis: {url: \"redis://a:1\", sentinel: {masterName: m, nodes: []}}}");
        let errors = both.unwrap_err();
        assert_eq!(errors.keys(), ["nonceCache.redis.sentinel", "nonceCache.redis.sentinel.nodes"], "{errors}");
        assert!(errors.to_string().contains("and nonceCache.redis.url are alternatives"), "{errors}");
        let unnamed =
            parse("nonceCache: {backend: redis, redis: {sentinel: {masterName: \" \", nodes: [\"redis://a:1\"]}}}");
        assert_eq!(unnamed.unwrap_err().keys(), ["nonceCache.redis.sentinel.masterName"]);
        let missing = parse("nonceCache: {backend: redis, redis: {sentinel: {nodes: [\"redis://a:1\"]}}}");
        assert!(missing.unwrap_err().to_string().contains("masterName"));
    }

    #[test]
    fn nonce_ttl_shorter_than_clock_window_is_refused() {
        let errors = parse("nonceCache: {ttl: 1m}\nauth: {maxClockSkew: 5m}").unwrap_err();
        assert_eq!(errors.0[0].key, "nonceCache.ttl");
        assert!(errors.0[0].message.contains("(5m0s)"), "{errors}");
        // A key that failed is not compared: its default is not what the operator wrote.
        let errors = parse("nonceCache: {ttl: 10s, maxEntries: many}\nauth: {maxClockSkew: 6}").unwrap_err();
        let keys = errors.keys();
        assert_eq!(keys, ["nonceCache.maxEntries", "auth.maxClockSkew"], "{errors}");
        // The good keys of a section with a type error are still checked.
        let errors =
            parse("nonceCache: {ttl: 1m, maxEntries: many}\nnode: {listenPort: 0, listenAddress: x}").unwrap_err();
        let keys = errors.keys();
        assert_eq!(
            keys,
            ["node.listenAddress", "nonceCache.maxEntries", "node.listenPort", "nonceCache.ttl"],
            "{errors}"
        );
    }

    #[test]
    fn chain_settings_are_read_and_checked() {
        // Empty rpcProvider: no chain, as the shipped config.yaml has it.
        let config = parse("rpcProvider: \"\"").unwrap();
        assert!(config.registry.rpc_provider.is_none());
        let errors = parse("rpcProvider: \"https://rpc.example.org/v3/KEY\"").unwrap_err();
        assert_eq!(errors.keys(), ["registry.routerSmartContractAddress"], "{errors}");
        assert!(errors.to_string().contains("is required when rpcProvider is set"), "{errors}");
        let config = parse(
            "rpcProvider: \"http://127.0.0.1:8545\"\nregistry:\n  routerSmartContractAddress: \"0x63bb292Cf4C94c4FE34756D650b66cdb34E376bB\"\n  \
             chainId: 8453\n  maxStaleness: 10m\n  rpc: {timeout: 3s, retries: 5, maxResponseBytes: 1000}\n",
        )
        .unwrap();
        let registry = config.registry;
        assert_eq!((registry.chain_id, registry.max_staleness), (Some(8453), Some(Duration::from_secs(600))));
        assert_eq!((registry.rpc.timeout, registry.rpc.retries), (Duration::from_secs(3), 5));
        assert_eq!(registry.rpc.connect_timeout, Duration::from_secs(5), "default kept");
        let errors =
            parse("registry: {chainId: -1, maxStaleness: 0s, rpc: {maxResponseBytes: 0, retries: many}}").unwrap_err();
        let keys = errors.keys();
        assert_eq!(
            keys,
            ["registry.chainId", "registry.maxStaleness", "registry.rpc.retries", "registry.rpc.maxResponseBytes"],
            "{errors}"
        );
    }

    #[test]
    fn challenge_settings_are_read_and_checked() {
        let config = parse(
            "node: {publicIp: 203.0.113.7}\nchallenge: {matrixMaxDim: 512, maxConcurrent: 2, endpointTimeout: 2s, \
             endpointAllow: [\"10.0.0.0/8\", \"fd00::1\"]}",
        )
        .unwrap();
        assert_eq!(config.public_ip.address, Some("203.0.113.7".parse().unwrap()));
        let challenge = config.challenge;
        assert_eq!((challenge.matrix_max_dim, challenge.max_concurrent), (512, 2));
        assert_eq!(challenge.endpoint_timeout, Duration::from_secs(2));
        assert_eq!(challenge.endpoint_connect_timeout, Duration::from_secs(5), "default kept");
        let allowed: Vec<String> = challenge.endpoint_allow.iter().map(ToString::to_string).collect();
        assert_eq!(allowed, ["10.0.0.0/8", "fd00::1/128"]);

        let errors = parse(
            "node: {publicIp: my-host, publicIpUrl: \"ftp://x\"}\nchallenge: {matrixMaxDim: 0, maxConcurrent: 0, \
             endpointAllow: [\"10.0.0.0/33\", \"x\"]}",
        )
        .unwrap_err();
        let keys = errors.keys();
        assert_eq!(
            keys,
            [
                "node.publicIp",
                "node.publicIpUrl",
                "challenge.endpointAllow",
                "challenge.matrixMaxDim",
                "challenge.maxConcurrent"
            ],
            "{errors}"
        );
        let message = errors.to_string();
        assert!(message.contains("`10.0.0.0/33`") && message.contains("`x`"), "{message}");
    }

    #[test]
    fn metrics_listen_address_is_read_and_checked() {
        let defaults = parse("").unwrap();
        assert_eq!(defaults.metrics.listen_address, "127.0.0.1:9100".parse().unwrap());
        assert!(defaults.metrics.enabled && !defaults.usage.request_stream_usage);
        let config =
            parse("metrics: {enabled: false, gpuPollInterval: 2s}\nusage: {requestStreamUsage: true}").unwrap();
        assert!(!config.metrics.enabled && config.usage.request_stream_usage);
        assert_eq!(config.metrics.gpu_poll_interval, Duration::from_secs(2));
        let errors = parse("metrics: {gpuPollInterval: 0s}\nusage: {requestStreamUsage: 1}").unwrap_err();
        assert_eq!(errors.keys(), ["metrics.gpuPollInterval", "usage.requestStreamUsage"], "{errors}");
        let config = parse("metrics: {listenAddress: \"0.0.0.0:9464\"}").unwrap();
        assert_eq!(config.metrics.listen_address, "0.0.0.0:9464".parse().unwrap());
        let errors = parse("metrics: {listenAddress: \"localhost\"}").unwrap_err();
        assert_eq!(errors.keys(), ["metrics.listenAddress"], "{errors}");
    }

    #[test]
    fn receipts_are_off_by_default_and_need_the_node_key() {
        assert!(!parse("").unwrap().receipts.enabled);
        let config = parse("node: {keyFile: node_key.json}\nreceipts: {enabled: true}").unwrap();
        assert!(config.receipts.enabled);
        let errors = parse("receipts: {enabled: true}").unwrap_err();
        assert_eq!(errors.keys(), ["receipts.enabled"], "{errors}");
        assert!(errors.to_string().contains("needs node.keyFile"), "{errors}");
        let errors = parse("receipts: {enabled: yes please, sign: all}").unwrap_err();
        assert_eq!(errors.keys(), ["receipts.enabled", "receipts.sign"], "{errors}");
    }

    #[test]
    fn not_a_mapping_is_refused() {
        let errors = parse("- a\n- b").unwrap_err();
        assert!(errors.to_string().contains("mapping"));
    }
}
