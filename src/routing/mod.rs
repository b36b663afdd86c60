//! Model → backend routing: the route table built from `model_backend.yaml` (swapped whole on
//! reload), the backends of each entry and which takes an attempt, and the Pingora peer for it,
//! its host resolved without blocking; lists the models served. What is sent to the backend is
//! `proxy::upstream`'s.

mod balance;
mod checks;
mod health;
mod load;
mod reload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::upstreams::peer::{HttpPeer, ALPN};
use url::Host;

use crate::config::{
    Backend, BackendAuth, HealthCheck, ModelBackends, ModelEntry, OutlierDetection, Policy, ProxySettings,
    DEFAULT_MODEL_ENTRY,
};
pub use balance::Tried;
use balance::{Balancer, Candidate};
pub use checks::{HealthChecker, CHECK_ROUND};
pub use health::{Availability, BackendState, InFlight};
pub use reload::RouteReloader;

/// Each backend host and port resolved, with when.
type ResolvedAddresses = HashMap<(String, u16), (SocketAddr, Instant)>;

/// How long a resolved backend address is reused before its name is looked up again.
const RESOLVED_ADDRESS_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("model `{model}` is not served by this node; it serves: {}", .served.join(", "))]
    UnknownModel { model: String, served: Vec<String> },
    #[error("cannot resolve the backend host `{host}` of model entry `{entry}`: {reason}")]
    Unresolvable { entry: String, host: String, reason: String },
    #[error("every backend of model entry `{entry}` is down (failing health checks or cooling down after failures)")]
    AllDown { entry: String, retry_after: Duration },
}

/// The route table in force: requests take the one current when they begin and keep it, so
/// a reload never changes the backends of a request or stream in flight.
pub struct Routes(ArcSwap<Router>);

impl Routes {
    pub fn new(router: Router) -> Self {
        Self(ArcSwap::from_pointee(router))
    }

    pub fn current(&self) -> Arc<Router> {
        self.0.load_full()
    }

    /// Puts a table built from a new `model_backend.yaml` in force; the backends it shares with
    /// the current one keep their health and load.
    pub fn replace(&self, backends: &ModelBackends, proxy: &ProxySettings) {
        let current = self.current();
        self.0.store(Arc::new(Router::build(backends, proxy, Some(&current))));
    }
}

/// One backend of an entry, ready to receive requests.
#[derive(Debug)]
pub struct BackendRoute {
    /// The backend's base URL, for logs.
    pub url: String,
    tls: bool,
    host: Host<String>,
    port: u16,
    /// The URL's path without its trailing `/`: requests go under it.
    pub(crate) base_path: String,
    pub(crate) host_header: HeaderValue,
    pub(crate) credential: Option<(HeaderName, HeaderValue)>,
    weight: u32,
    pub(crate) state: Arc<BackendState>,
}

impl BackendRoute {
    fn new(backend: &Backend, state: Arc<BackendState>) -> Self {
        let url = &backend.url;
        let port = url.port_or_known_default().unwrap_or(80);
        let host = url.host().map(|h| h.to_owned()).unwrap_or(Host::Domain(String::new()));
        let host_text = url.host_str().unwrap_or_default();
        let host_header = match url.port() {
            Some(port) => format!("{host_text}:{port}"),
            None => host_text.to_string(),
        };
        let credential = backend.auth.as_ref().and_then(|auth| match auth {
            BackendAuth::Bearer(token) => {
                HeaderValue::try_from(format!("Bearer {token}")).ok().map(|v| (header::AUTHORIZATION, v))
            }
            BackendAuth::ApiKey(key) => {
                HeaderValue::try_from(key.as_str()).ok().map(|v| (HeaderName::from_static("x-api-key"), v))
            }
        });
        Self {
            url: url.to_string(),
            tls: url.scheme() == "https",
            host,
            port,
            base_path: url.path().trim_end_matches('/').to_string(),
            // Validated URL hosts are always valid header values.
            host_header: HeaderValue::try_from(host_header).unwrap_or(HeaderValue::from_static("localhost")),
            credential,
            weight: backend.weight,
            state,
        }
    }
}

impl Candidate for BackendRoute {
    fn state(&self) -> &BackendState {
        &self.state
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn identity(&self) -> &str {
        &self.url
    }
}

/// One `model_backend.yaml` entry: its backends and how a request picks one.
pub struct ModelRoute {
    /// The `model_backend.yaml` entry (a model name or `default`).
    pub entry: String,
    pub backends: Vec<BackendRoute>,
    balancer: Balancer,
    pub policy: Policy,
    pub(crate) prefix_bytes: Option<usize>,
    pub(crate) outlier: OutlierDetection,
    pub health: Option<HealthCheck>,
    /// `backend_load`'s metrics path; `None` under other policies.
    pub load_path: Option<String>,
    /// The backend's name for the model (`alias`), as the JSON string put in place of the
    /// body's `model`; encoded once here rather than per request.
    pub(crate) alias_json: Option<Bytes>,
    /// The network's model id this entry is registered for (`fxn_id`), to compare with the
    /// `modelId` the ProviderRegistry holds for this node.
    pub fxn_id: Option<String>,
}

impl ModelRoute {
    /// `states` finds the state of a backend the table before already had.
    fn new(entry: &str, model: &ModelEntry, states: &impl Fn(&Backend) -> Arc<BackendState>) -> Self {
        let backends: Vec<BackendRoute> = model.backends.iter().map(|b| BackendRoute::new(b, states(b))).collect();
        Self {
            entry: entry.to_string(),
            balancer: Balancer::new(model.policy, &backends, &model.affinity),
            backends,
            policy: model.policy,
            prefix_bytes: (model.policy == Policy::PrefixAffinity).then_some(model.affinity.prefix_bytes),
            outlier: model.outlier.clone(),
            health: model.health.clone(),
            load_path: (model.policy == Policy::BackendLoad).then(|| model.load.path.clone()),
            alias_json: model.alias.as_deref().map(|alias| Bytes::from(serde_json::Value::from(alias).to_string())),
            fxn_id: model.fxn_id.clone(),
        }
    }

    /// The backend for the next attempt of a request that tried those in `tried`, claimed for
    /// it; an error when every other one is down. `key` is the request's affinity key.
    pub fn choose(&self, key: Option<&[u8]>, tried: Tried) -> Result<usize, RoutingError> {
        self.balancer.choose(&self.backends, key, tried).ok_or_else(|| RoutingError::AllDown {
            entry: self.entry.clone(),
            retry_after: self.backends.iter().filter_map(|b| b.state.cooldown_left()).min().unwrap_or(
                match &self.health {
                    Some(health) => health.interval,
                    None => Duration::from_secs(1),
                },
            ),
        })
    }

    /// Whether a request that failed on the backends in `tried` has another to go to.
    pub fn has_another(&self, tried: Tried) -> bool {
        (0..self.backends.len()).any(|i| !tried.has(i) && self.backends[i].state.availability() != Availability::Down)
    }
}

/// Timeouts every backend connection gets.
#[derive(Debug, Clone)]
struct PeerTimeouts {
    connect: Duration,
    read: Duration,
    idle: Duration,
}

/// The routing table built from `model_backend.yaml`.
pub struct Router {
    routes: HashMap<String, Arc<ModelRoute>, foldhash::fast::RandomState>,
    default: Option<Arc<ModelRoute>>,
    served: Vec<String>,
    timeouts: PeerTimeouts,
    /// Shared with the tables that replace this one, so a reload resolves nothing again.
    resolved: Arc<Mutex<ResolvedAddresses>>,
    created_unix: u64,
}

impl Router {
    pub fn new(backends: &ModelBackends, proxy: &ProxySettings) -> Self {
        Self::build(backends, proxy, None)
    }

    /// The table for `backends`; the backends `before` listed keep their state there.
    fn build(backends: &ModelBackends, proxy: &ProxySettings, before: Option<&Router>) -> Self {
        let known: HashMap<&str, &Arc<BackendState>> = before
            .into_iter()
            .flat_map(|router| router.entries())
            .flat_map(|route| route.backends.iter())
            .map(|backend| (backend.url.as_str(), &backend.state))
            .collect();
        let states =
            |backend: &Backend| known.get(backend.url.as_str()).map_or_else(Arc::default, |&state| state.clone());
        let routes = backends
            .models
            .iter()
            .map(|(name, model)| (name.clone(), Arc::new(ModelRoute::new(name, model, &states))))
            .collect();
        Self {
            routes,
            default: backends
                .default
                .as_ref()
                .map(|model| Arc::new(ModelRoute::new(DEFAULT_MODEL_ENTRY, model, &states))),
            served: backends.names().map(str::to_owned).collect(),
            timeouts: PeerTimeouts {
                connect: proxy.connect_timeout,
                read: proxy.read_timeout,
                idle: proxy.idle_conn_timeout,
            },
            resolved: before.map_or_else(Arc::default, |router| router.resolved.clone()),
            created_unix: before.map_or_else(
                || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                |router| router.created_unix,
            ),
        }
    }

    /// Whether `model` has an entry of its own.
    pub fn lists(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The entry for `model`: its own, else the `default` entry.
    pub fn select(&self, model: &str) -> Result<Arc<ModelRoute>, RoutingError> {
        self.routes
            .get(model)
            .or(self.default.as_ref())
            .cloned()
            .ok_or_else(|| RoutingError::UnknownModel { model: model.to_string(), served: self.served.clone() })
    }

    /// The peer for `backend` of `route`, with the configured timeouts; a hostname is resolved
    /// asynchronously (Pingora's own lookup in `HttpPeer::new` blocks and panics on failure).
    pub async fn peer(&self, route: &ModelRoute, backend: &BackendRoute) -> Result<HttpPeer, RoutingError> {
        let address = self.resolve(&route.entry, backend).await?;
        let sni = match &backend.host {
            Host::Domain(name) => name.clone(),
            _ => String::new(),
        };
        let mut peer = HttpPeer::new(address, backend.tls, sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.timeouts.connect);
        options.total_connection_timeout = Some(self.timeouts.connect);
        options.read_timeout = Some(self.timeouts.read);
        options.write_timeout = Some(self.timeouts.read);
        options.idle_timeout = Some(self.timeouts.idle);
        options.alpn = ALPN::H1;
        Ok(peer)
    }

    async fn resolve(&self, entry: &str, backend: &BackendRoute) -> Result<SocketAddr, RoutingError> {
        let name = match &backend.host {
            Host::Ipv4(ip) => return Ok(SocketAddr::new((*ip).into(), backend.port)),
            Host::Ipv6(ip) => return Ok(SocketAddr::new((*ip).into(), backend.port)),
            Host::Domain(name) => name,
        };
        let key = (name.clone(), backend.port);
        let cached = self.lock_resolved().get(&key).copied();
        if let Some((address, at)) = cached {
            if at.elapsed() < RESOLVED_ADDRESS_TTL {
                return Ok(address);
            }
        }
        let looked_up = tokio::net::lookup_host((name.as_str(), backend.port))
            .await
            .map_err(|e| e.to_string())
            .and_then(|mut addresses| addresses.next().ok_or_else(|| "no addresses".to_string()));
        match (looked_up, cached) {
            (Ok(address), _) => {
                self.lock_resolved().insert(key, (address, Instant::now()));
                Ok(address)
            }
            // A resolver hiccup should not take a known backend down.
            (Err(_), Some((address, _))) => Ok(address),
            (Err(reason), None) => {
                Err(RoutingError::Unresolvable { entry: entry.to_string(), host: name.clone(), reason })
            }
        }
    }

    fn lock_resolved(&self) -> std::sync::MutexGuard<'_, ResolvedAddresses> {
        // The map holds plain values; a panic elsewhere cannot leave it inconsistent.
        self.resolved.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every entry: the named ones in name order, then `default`. Each carries its `fxn_id`, for
    /// comparing with the ProviderRegistry's `modelId` of this node.
    pub fn entries(&self) -> impl Iterator<Item = &ModelRoute> {
        self.served.iter().filter_map(|name| self.routes.get(name)).chain(&self.default).map(|route| &**route)
    }

    /// `GET /v1/models`: the models this node serves, in the shape the network's node answers.
    /// The `default` entry serves any name, so it is listed only by its network id, as the
    /// network's single-backend node lists itself.
    pub fn model_list(&self) -> serde_json::Value {
        let data: Vec<_> = self
            .entries()
            .filter_map(|route| {
                let id = match route.entry.as_str() {
                    DEFAULT_MODEL_ENTRY => route.fxn_id.as_deref()?,
                    name => name,
                };
                let mut model = serde_json::json!({
                    "id": id,
                    "object": "model",
                    "created": self.created_unix,
                    "owned_by": "fxn",
                });
                if let Some(fxn_id) = &route.fxn_id {
                    model["fxn_id"] = fxn_id.as_str().into();
                }
                Some(model)
            })
            .collect();
        serde_json::json!({ "object": "list", "data": data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(yaml: &str) -> Router {
        let backends = ModelBackends::parse(Path::new("model_backend.yaml"), yaml).unwrap();
        Router::new(&backends, &ProxySettings::default())
    }

    #[test]
    fn unknown_model_names_the_served_ones() {
        let router = router("models: {a: {url: 'http://127.0.0.1:1'}, b: {url: 'http://127.0.0.1:2'}}");
        assert_eq!(router.select("b").unwrap().entry, "b");
        let message = router.select("c").err().unwrap().to_string();
        assert!(message.contains("`c`") && message.contains("a, b"), "{message}");
    }

    #[test]
    fn default_entry_serves_unlisted_models() {
        let router = router("models: {a: {url: 'http://127.0.0.1:1'}, default: {url: 'http://127.0.0.1:2'}}");
        assert_eq!(router.select("zzz").unwrap().entry, "default");
        assert_eq!(router.model_list()["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn model_list_gives_network_ids_where_configured() {
        let router = router(
            "models: {b: {url: 'http://127.0.0.1:1', fxn_id: '7', alias: 'bee'}, a: {url: 'http://127.0.0.1:1'}, \
             default: {url: 'http://127.0.0.1:2', fxn_id: 2}}",
        );
        let list = router.model_list();
        assert_eq!(list["object"], "list");
        let data = list["data"].as_array().unwrap();
        let ids: Vec<_> = data.iter().map(|m| (m["id"].as_str().unwrap(), m.get("fxn_id"))).collect();
        assert_eq!(ids, [("a", None), ("b", Some(&"7".into())), ("2", Some(&"2".into()))]);
        for model in data {
            assert_eq!((&model["object"], &model["owned_by"]), (&"model".into(), &"fxn".into()));
            assert!(model["created"].as_u64().unwrap() > 1_600_000_000);
        }
        let fxn_ids: Vec<_> = router.entries().map(|r| (r.entry.as_str(), r.fxn_id.as_deref())).collect();
        assert_eq!(fxn_ids, [("a", None), ("b", Some("7")), ("default", Some("2"))]);
        assert_eq!(router.select("b").unwrap().alias_json.as_deref(), Some(&b"\"bee\""[..]));
    }

    #[test]
    fn a_reload_keeps_the_state_of_the_backends_it_still_lists() {
        let parse = |yaml: &str| ModelBackends::parse(Path::new("model_backend.yaml"), yaml).unwrap();
        let routes =
            Routes::new(router("models: {a: {backends: [{url: 'http://10.0.0.1:1'}, {url: 'http://10.0.0.2:1'}]}}"));
        let before = routes.current();
        let [kept, dropped] = [0, 1].map(|i| before.select("a").unwrap().backends[i].state.clone());
        let held = InFlight::new(kept.clone());
        routes.replace(
            &parse("models: {a: {backends: [{url: 'http://10.0.0.3:1'}, {url: 'http://10.0.0.1:1', weight: 2}]}}"),
            &ProxySettings::default(),
        );
        let after = routes.current().select("a").unwrap();
        assert!(Arc::ptr_eq(&after.backends[1].state, &kept) && after.backends[1].state.in_flight() == 1);
        assert!(!Arc::ptr_eq(&after.backends[0].state, &dropped) && after.backends[0].state.in_flight() == 0);
        // The table a request began with is the one it keeps.
        assert_eq!(before.select("a").unwrap().backends[1].url, "http://10.0.0.2:1/");
        drop(held);
        assert_eq!(kept.in_flight(), 0);
    }

    #[tokio::test]
    async fn https_backends_get_tls_with_their_host_as_sni() {
        use pingora::upstreams::peer::Peer;
        let router = router("models: {a: {url: 'https://localhost:8443'}, b: {url: 'http://127.0.0.1:8000'}}");
        let a = router.select("a").unwrap();
        let tls = router.peer(&a, &a.backends[0]).await.unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.sni(), "localhost");
        assert_eq!(tls.address().to_string().rsplit(':').next(), Some("8443"));
        let b = router.select("b").unwrap();
        let plain = router.peer(&b, &b.backends[0]).await.unwrap();
        assert!(!plain.is_tls());
        assert_eq!(plain.options.read_timeout, Some(ProxySettings::default().read_timeout));
    }

    #[tokio::test]
    async fn unresolvable_host_is_an_error_not_a_panic() {
        let router = router("models: {a: {url: 'http://no-such-host.invalid:8000'}}");
        let route = router.select("a").unwrap();
        let error = router.peer(&route, &route.backends[0]).await.unwrap_err();
        assert!(matches!(error, RoutingError::Unresolvable { .. }), "{error}");
    }
}
