//! Model → backend routing: picks the backend for a request's `model`, builds the Pingora peer
//! for it (resolving its host without blocking), and rewrites the request for that backend.
//! Both ways of reaching a backend (Pingora's `upstream_peer` and the connector relay) use it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::{HttpPeer, ALPN};
use url::Host;

use crate::config::{Backend, BackendAuth, ModelBackends, ProxySettings};

/// Headers that belong to the caller's connection or to the network's signing scheme, never
/// to the backend.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "x-address",
    "x-public-key",
    "x-signature",
    "x-timestamp",
    "x-nonce",
    // The backend's credentials come from model_backend.yaml only.
    "authorization",
    "x-api-key",
    // Hop-by-hop (RFC 9110 §7.6.1).
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    // The body is forwarded whole, framed by Content-Length.
    "transfer-encoding",
];

/// How long a resolved backend address is reused before its name is looked up again.
const RESOLVED_ADDRESS_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("model `{model}` is not served by this node; it serves: {}", .served.join(", "))]
    UnknownModel { model: String, served: Vec<String> },
    #[error("cannot resolve the backend host `{host}` of model entry `{entry}`: {reason}")]
    Unresolvable { entry: String, host: String, reason: String },
    #[error("cannot build the backend request path: {0}")]
    BadPath(String),
}

/// One backend, ready to receive requests.
#[derive(Debug)]
pub struct ModelRoute {
    /// The `model_backend.yaml` entry (a model name or `default`).
    pub entry: String,
    /// The backend's base URL, for logs.
    pub url: String,
    tls: bool,
    host: Host<String>,
    port: u16,
    base_path: String,
    host_header: HeaderValue,
    credential: Option<(HeaderName, HeaderValue)>,
}

impl ModelRoute {
    fn new(entry: &str, backend: &Backend) -> Self {
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
            entry: entry.to_string(),
            url: url.to_string(),
            tls: url.scheme() == "https",
            host,
            port,
            base_path: url.path().trim_end_matches('/').to_string(),
            // Validated URL hosts are always valid header values.
            host_header: HeaderValue::try_from(host_header).unwrap_or(HeaderValue::from_static("localhost")),
            credential,
        }
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
    resolved: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
    created_unix: u64,
}

impl Router {
    pub fn new(backends: &ModelBackends, proxy: &ProxySettings) -> Self {
        let routes = backends
            .models
            .iter()
            .map(|(name, backend)| (name.clone(), Arc::new(ModelRoute::new(name, backend))))
            .collect();
        Self {
            routes,
            default: backends
                .default
                .as_ref()
                .map(|backend| Arc::new(ModelRoute::new(crate::config::DEFAULT_MODEL_ENTRY, backend))),
            served: backends.names().map(str::to_owned).collect(),
            timeouts: PeerTimeouts {
                connect: proxy.connect_timeout,
                read: proxy.read_timeout,
                idle: proxy.idle_conn_timeout,
            },
            resolved: Mutex::default(),
            created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// The backend for `model`: its own entry, else the `default` entry.
    pub fn select(&self, model: &str) -> Result<Arc<ModelRoute>, RoutingError> {
        self.routes
            .get(model)
            .or(self.default.as_ref())
            .cloned()
            .ok_or_else(|| RoutingError::UnknownModel { model: model.to_string(), served: self.served.clone() })
    }

    /// The peer for `route`, with the configured timeouts; a hostname is resolved
    /// asynchronously (Pingora's own lookup in `HttpPeer::new` blocks and panics on failure).
    pub async fn peer(&self, route: &ModelRoute) -> Result<HttpPeer, RoutingError> {
        let address = self.resolve(route).await?;
        let sni = match &route.host {
            Host::Domain(name) => name.clone(),
            _ => String::new(),
        };
        let mut peer = HttpPeer::new(address, route.tls, sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.timeouts.connect);
        options.total_connection_timeout = Some(self.timeouts.connect);
        options.read_timeout = Some(self.timeouts.read);
        options.write_timeout = Some(self.timeouts.read);
        options.idle_timeout = Some(self.timeouts.idle);
        options.alpn = ALPN::H1;
        Ok(peer)
    }

    /// How long an idle backend connection stays in the pool.
    pub fn idle_timeout(&self) -> Duration {
        self.timeouts.idle
    }

    async fn resolve(&self, route: &ModelRoute) -> Result<SocketAddr, RoutingError> {
        let name = match &route.host {
            Host::Ipv4(ip) => return Ok(SocketAddr::new((*ip).into(), route.port)),
            Host::Ipv6(ip) => return Ok(SocketAddr::new((*ip).into(), route.port)),
            Host::Domain(name) => name,
        };
        let key = (name.clone(), route.port);
        let cached = self.lock_resolved().get(&key).copied();
        if let Some((address, at)) = cached {
            if at.elapsed() < RESOLVED_ADDRESS_TTL {
                return Ok(address);
            }
        }
        let looked_up = tokio::net::lookup_host((name.as_str(), route.port))
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
                Err(RoutingError::Unresolvable { entry: route.entry.clone(), host: name.clone(), reason })
            }
        }
    }

    fn lock_resolved(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), (SocketAddr, Instant)>> {
        // The map holds plain values; a panic elsewhere cannot leave it inconsistent.
        self.resolved.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `GET /v1/models`: the models this node serves, in OpenAI's list shape.
    pub fn model_list(&self) -> serde_json::Value {
        let data: Vec<_> = self
            .served
            .iter()
            .map(|id| {
                serde_json::json!({
                    "id": id,
                    "object": "model",
                    "created": self.created_unix,
                    "owned_by": "fxn",
                })
            })
            .collect();
        serde_json::json!({ "object": "list", "data": data })
    }
}

/// Rewrites the caller's request for `route`: the path under the backend's base path, `Host`
/// set to the backend, the caller's signing, credential and hop-by-hop headers dropped, the
/// backend's credential added and the body framed by its length.
pub fn prepare_upstream_request(
    route: &ModelRoute,
    body_len: usize,
    request: &mut RequestHeader,
) -> Result<(), RoutingError> {
    // Most backends sit at the root and most callers send a bare path: then the URI stays as
    // it is. An absolute-form target (`http://node/v1/…`) is cut to its path for the backend.
    if !route.base_path.is_empty() || request.uri.authority().is_some() {
        let path_and_query = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{}", route.base_path, path_and_query)
            .parse::<http::Uri>()
            .map_err(|e| RoutingError::BadPath(e.to_string()))?;
        request.set_uri(uri);
    }

    // One pass over the caller's few headers finds what to drop; removing every listed name
    // instead would hash and look up each of them on every request.
    let named_by_connection: Vec<&str> = request
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let stripped: Vec<HeaderName> = request
        .headers
        .keys()
        .filter(|name| {
            STRIPPED_REQUEST_HEADERS.contains(&name.as_str())
                || named_by_connection.iter().any(|named| named.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    for name in stripped {
        request.remove_header(&name);
    }
    let set = |request: &mut RequestHeader, name: HeaderName, value: HeaderValue| {
        request.insert_header(name, value).map_err(|e| RoutingError::BadPath(e.to_string()))
    };
    set(request, header::HOST, route.host_header.clone())?;
    set(request, header::CONTENT_LENGTH, HeaderValue::from(body_len))?;
    if let Some((name, value)) = &route.credential {
        set(request, name.clone(), value.clone())?;
    }
    Ok(())
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
        let message = router.select("c").unwrap_err().to_string();
        assert!(message.contains("`c`") && message.contains("a, b"), "{message}");
    }

    #[test]
    fn default_entry_serves_unlisted_models() {
        let router = router("models: {a: {url: 'http://127.0.0.1:1'}, default: {url: 'http://127.0.0.1:2'}}");
        assert_eq!(router.select("zzz").unwrap().entry, "default");
        assert_eq!(router.model_list()["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn request_is_rewritten_for_the_backend() {
        let router = router("models: {a: {url: 'https://api.example.com:8443/openai/', auth: {bearer_token: t0k}}}");
        let route = router.select("a").unwrap();
        let mut request = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        for (name, value) in [
            ("host", "node.example"),
            ("x-signature", "aa"),
            ("x-address", "0x01"),
            ("authorization", "Bearer caller"),
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ] {
            request.insert_header(name, value).unwrap();
        }
        prepare_upstream_request(&route, 42, &mut request).unwrap();
        assert_eq!(request.uri.to_string(), "/openai/v1/chat/completions?x=1");
        let header = |name: &str| request.headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header("host").as_deref(), Some("api.example.com:8443"));
        assert_eq!(header("authorization").as_deref(), Some("Bearer t0k"));
        assert_eq!(header("content-length").as_deref(), Some("42"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        for gone in ["x-signature", "x-address", "connection", "x-custom-hop", "transfer-encoding"] {
            assert_eq!(header(gone), None, "{gone} was forwarded");
        }
    }

    #[test]
    fn root_backend_keeps_the_callers_path_and_query() {
        let router = router("models: {a: {url: 'http://127.0.0.1:8000'}}");
        let mut request = RequestHeader::build("POST", b"/v1/embeddings?trace=1", None).unwrap();
        request.insert_header("x-nonce", "n").unwrap();
        prepare_upstream_request(&router.select("a").unwrap(), 7, &mut request).unwrap();
        assert_eq!(request.uri.to_string(), "/v1/embeddings?trace=1");
        assert_eq!(request.headers.get("host").unwrap(), "127.0.0.1:8000");
        assert!(request.headers.get("x-nonce").is_none());

        let mut absolute = RequestHeader::build("POST", b"http://node.example/v1/embeddings", None).unwrap();
        prepare_upstream_request(&router.select("a").unwrap(), 7, &mut absolute).unwrap();
        assert_eq!(absolute.uri.to_string(), "/v1/embeddings");
    }

    #[tokio::test]
    async fn https_backends_get_tls_with_their_host_as_sni() {
        use pingora::upstreams::peer::Peer;
        let router = router("models: {a: {url: 'https://localhost:8443'}, b: {url: 'http://127.0.0.1:8000'}}");
        let tls = router.peer(&router.select("a").unwrap()).await.unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.sni(), "localhost");
        assert_eq!(tls.address().to_string().rsplit(':').next(), Some("8443"));
        let plain = router.peer(&router.select("b").unwrap()).await.unwrap();
        assert!(!plain.is_tls());
        assert_eq!(plain.options.read_timeout, Some(ProxySettings::default().read_timeout));
    }

    #[tokio::test]
    async fn unresolvable_host_is_an_error_not_a_panic() {
        let router = router("models: {a: {url: 'http://no-such-host.invalid:8000'}}");
        let route = router.select("a").unwrap();
        let error = router.peer(&route).await.unwrap_err();
        assert!(matches!(error, RoutingError::Unresolvable { .. }), "{error}");
    }
}
