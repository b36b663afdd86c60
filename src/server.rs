//! Builds Pingora's server from validated settings: the proxy service and the background
//! services beside it.

use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ethers_core::types::Address;
use ethers_core::utils::to_checksum;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::Opt;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::auth::{Authenticator, DefaultCurve, NonceStore, RedisServers, SharedNonceStore};
use crate::challenge::{poll_gpus_into_metrics, Challenges, ModelProbe};
use crate::config::{NonceBackend, NonceCacheSettings, OnRedisUnavailable, RegistrySettings, Settings};
use crate::keys::publicly_known;
use crate::keys::NodeKey;
use crate::proxy::{CallerConnections, Forwarding, NodeProxy};
use crate::receipt::ReceiptSigner;
use crate::registry::{ChainReader, ChainRegistries, Directory, RegistryRefresher, StaticRegistry};
use crate::routing::{HealthChecker, RouteReloader, Router, Routes, CHECK_ROUND};

/// Callers' connections read straight into Pingora's header and body buffers. Pingora's default
/// adds a 64 KiB read buffer per connection that tokio fills with zeros, which costs each open
/// stream about 8 KiB of resident memory and every read a copy; it pays off only under TLS,
/// which the node's listener does not terminate.
const DOWNSTREAM_BUFFERS: L4BufferSettings =
    L4BufferSettings { read: Some(0), write: Some(DEFAULT_L4_WRITE_BUFFER_SIZE) };

/// Runs the node until it is told to stop; Pingora handles `-d`, `-t` and `-u` itself.
/// `model_backend` is the file SIGHUP reloads.
pub fn run(settings: Settings, model_backend: PathBuf, node_key: Option<NodeKey>, opt: Opt) -> ! {
    let Settings { node, models, mut server } = settings;
    if let Some(pool_size) = node.proxy.max_idle_conns {
        server.upstream_keepalive_pool_size = pool_size;
    }
    let mut pingora_server = Server::new_with_opt_and_conf(opt, server);
    pingora_server.bootstrap();
    raise_open_file_limit();

    let static_signers = StaticRegistry::from_settings(&node.registry);
    warn_about_public_keys(&static_signers);
    let own_address = node_key.as_ref().map(|key| key.address);
    let router = Router::new(&models, &node.proxy);
    let network_model_ids = router.entries().filter_map(|route| route.fxn_id.clone()).collect();
    let routes = Arc::new(Routes::new(router));
    let reloader = RouteReloader { routes: routes.clone(), path: model_backend, proxy: node.proxy.clone() };
    pingora_server.add_service(background_service("route reloader", reloader));
    let checker = Arc::new(HealthChecker::new(routes.clone()));
    let check_round = move || {
        let checker = checker.clone();
        async move { checker.round().await }
    };
    pingora_server
        .add_service(background_service("health checker", Periodic { interval: CHECK_ROUND, tick: check_round }));
    let chain = chain_registries(&node.registry, own_address, network_model_ids, &mut pingora_server);
    let nonces = Arc::new(NonceStore::new(node.nonce_cache.max_entries));
    let auth = Authenticator::new(
        DefaultCurve::default(),
        Arc::new(Directory::new(static_signers, chain)),
        nonces.clone(),
        node.auth.max_clock_skew,
        node.nonce_cache.ttl,
    );
    let auth = Arc::new(match shared_nonce_store(&node.nonce_cache) {
        Some(store) => auth.with_shared_nonces(store),
        None => auth,
    });
    let sweep = {
        let nonces = nonces.clone();
        move || {
            let purged = nonces.purge_expired(Instant::now());
            log::debug!("purged {purged} expired nonces; {} held", nonces.len());
            std::future::ready(ControlFlow::Continue(()))
        }
    };
    let sweeper = Periodic { interval: node.nonce_cache.cleanup_interval, tick: sweep };
    pingora_server.add_service(background_service("nonce sweeper", sweeper));

    if node.metrics.enabled {
        // Registered now, so the first scrape already shows the build and process.
        crate::metrics::metrics();
        crate::metrics::NonceStoreCollector::register(nonces.clone());
        crate::metrics::BackendCollector::register(routes.clone());
        let mut metrics_service = pingora_prometheus::prometheus_http_service();
        metrics_service.add_tcp(&node.metrics.listen_address.to_string());
        pingora_server.add_service(metrics_service);
        let poller = Periodic { interval: node.metrics.gpu_poll_interval, tick: poll_gpus_into_metrics };
        pingora_server.add_service(background_service("GPU poller", poller));
    } else {
        crate::metrics::disable();
    }

    let conf = pingora_server.configuration.clone();
    let connector = Arc::new(Connector::new(Some(ConnectorOptions::from_server_conf(&conf))));
    // Pingora's own loop stops at its `max_retries` whatever the node says.
    let max_attempts = node.proxy.max_attempts.min(conf.max_retries.max(1));
    let probe = ModelProbe::new(routes.clone(), connector.clone(), max_attempts);
    let challenges = Arc::new(Challenges::new(&node, node_key.clone(), probe));
    let forwarding = Forwarding {
        max_attempts,
        request_stream_usage: node.usage.request_stream_usage,
        // The config check made sure that receipts have a key to be signed with.
        receipts: node_key.as_ref().filter(|_| node.receipts.enabled).map(|key| Arc::new(ReceiptSigner::new(key))),
    };
    let proxy = NodeProxy::new(auth, routes, challenges, node.limits.clone(), connector, forwarding);
    let app = CallerConnections::new(pingora::proxy::http_proxy(&conf, proxy), &node.limits);
    let mut service = Service::new("fxn proxy".to_string(), app);
    service.add_listener(ListenerConfig::tcp(node.listen.to_string()).l4_buffer(DOWNSTREAM_BUFFERS));
    pingora_server.add_service(service);
    log::info!(
        "fxn {} ({}) listening on {} (metrics {}) serving {} model entries (model_backend.yaml read in {}); node address {}; receipts {}",
        env!("CARGO_PKG_VERSION"),
        env!("FXN_COMMIT"),
        node.listen,
        if node.metrics.enabled { format!("on {}", node.metrics.listen_address) } else { "off".to_string() },
        models.models.len() + usize::from(models.default.is_some()),
        models.form,
        node_key.map_or_else(|| "not set (node.keyFile)".to_string(), |key| key.checksummed_address()),
        if node.receipts.enabled { "on" } else { "off" },
    );
    write_pid_file(&conf);
    pingora_server.run_forever()
}

/// Pingora writes `pid_file` only for a daemon; `fxn reload` and the README's stop and upgrade
/// commands read it whichever way the node runs, so a node in the foreground writes its own.
fn write_pid_file(conf: &pingora::server::configuration::ServerConf) {
    if conf.daemon || conf.pid_file.is_empty() {
        return;
    }
    if let Err(e) = std::fs::write(&conf.pid_file, format!("{}\n", std::process::id())) {
        log::warn!("cannot write the pid_file {}: {e}; `fxn reload` will not find the node", conf.pid_file);
    }
}

/// The chain registries and the service that refreshes them, when `rpcProvider` is set.
fn chain_registries(
    settings: &RegistrySettings,
    own_address: Option<Address>,
    network_model_ids: Vec<String>,
    pingora_server: &mut Server,
) -> Option<Arc<ChainRegistries>> {
    let reader = match ChainReader::new(settings) {
        Ok(reader) => reader?,
        Err(e) => {
            log::error!("rpcProvider: {e}");
            std::process::exit(1)
        }
    };
    let registries = Arc::new(ChainRegistries::new(settings.max_staleness, own_address));
    log::info!(
        "trusting the gateways of the chain at {} through the Router {} (and registry.static)",
        reader.endpoint(),
        to_checksum(&reader.router(), None)
    );
    crate::metrics::RegistryCollector::register(registries.clone(), network_model_ids.clone());
    let refresher = RegistryRefresher::new(
        Arc::new(reader),
        registries.clone(),
        settings.gateway_poll_interval,
        settings.provider_poll_interval,
        network_model_ids,
    );
    pingora_server.add_service(background_service("registry refresher", refresher));
    Some(registries)
}

/// The Redis store of `nonceCache.backend: redis`; the config check made sure it has one of a URL,
/// cluster nodes or Sentinels.
fn shared_nonce_store(settings: &NonceCacheSettings) -> Option<SharedNonceStore> {
    let redis = &settings.redis;
    if settings.backend != NonceBackend::Redis {
        return None;
    }
    let servers = match (&redis.url, &redis.sentinel) {
        (Some(url), _) => RedisServers::Single(url),
        (None, Some(sentinel)) => RedisServers::Sentinel {
            nodes: &sentinel.nodes,
            master_name: &sentinel.master_name,
            master_password: sentinel.master_password.as_deref(),
            master_db: sentinel.master_db,
        },
        (None, None) => RedisServers::Cluster(&redis.cluster),
    };
    let falls_back = redis.on_unavailable == OnRedisUnavailable::Memory;
    match SharedNonceStore::new(servers, &redis.key_prefix, redis.connect_timeout, redis.command_timeout, falls_back) {
        Ok(store) => {
            log::info!("nonces are recorded in the shared store at {}", store.server());
            Some(store)
        }
        Err(e) => {
            // The config check opened the same URL; serving without the shared store would
            // quietly allow replays between instances.
            log::error!("nonceCache.redis: {e}");
            std::process::exit(1)
        }
    }
}

/// Each open stream holds two sockets (caller and backend); a default soft limit of 1,024
/// would cap the node near 500 streams, so it takes what the hard limit allows.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::info!("open file limit: {limit} (about {} concurrent streams)", limit / 2),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
}

fn warn_about_public_keys(registry: &StaticRegistry) {
    for (role, address) in registry.entries() {
        if let Some(name) = publicly_known(address) {
            log::warn!(
                "!!! TRUSTING A PUBLIC TEST KEY: {} ({name}) is trusted as a {role}. Its private key is \
                 public, so anyone can sign requests as it. Remove it from registry.static before serving real traffic.",
                to_checksum(address, None)
            );
        }
    }
}

/// Runs `tick` every `interval` until the server stops, or until `tick` breaks.
struct Periodic<F> {
    interval: Duration,
    tick: F,
}

#[async_trait]
impl<F, Fut> BackgroundService for Periodic<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = ControlFlow<()>> + Send,
{
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => if (self.tick)().await.is_break() { return },
            }
        }
    }
}
