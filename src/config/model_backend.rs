//! `model_backend.yaml`: which backends serve each model, how requests are spread over them and
//! checked, the name they know the model by, and how the node authenticates to them. Two forms
//! are read: the map of `models` (the seed era's, with our `alias`, `fxn_id` and `backends`), and
//! the network's later flat file for one backend, which is mapped onto a single `default` entry.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use super::yaml::{self, typed};
use super::{ConfigError, ConfigErrors};

/// The entry name that serves every model not listed by name.
pub const DEFAULT_ENTRY: &str = "default";

/// The keys of the flat form, as the network's node reads them.
const FLAT_KEYS: [&str; 6] = ["backendProvider", "url", "fxnId", "apiKey", "bearerToken", "modelNameAlias"];

/// The validated contents of `model_backend.yaml`.
#[derive(Debug, Clone)]
pub struct ModelBackends {
    pub models: BTreeMap<String, ModelEntry>,
    pub default: Option<ModelEntry>,
    /// Which form the file was written in.
    pub form: FileForm,
}

/// The most backends one entry may list: the balancer keeps a bit per backend.
pub const MAX_BACKENDS_PER_ENTRY: usize = 64;

/// One entry of the file: the backends serving a model name (or `default`), and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// At least one, at most [`MAX_BACKENDS_PER_ENTRY`].
    pub backends: Vec<Backend>,
    pub policy: Policy,
    /// The name the backends know the model by, put in place of the body's `model`.
    pub alias: Option<String>,
    /// The network's model id these backends are registered for.
    pub fxn_id: Option<String>,
    /// Active checks; none unless configured, since not every server has a health path.
    pub health: Option<HealthCheck>,
    pub outlier: OutlierDetection,
    pub affinity: Affinity,
    pub load: LoadReports,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Base URL; the request's path is appended to its path.
    pub url: url::Url,
    /// Its share of requests under `round_robin`, and of the load under `least_requests`.
    pub weight: u32,
    pub auth: Option<BackendAuth>,
}

/// How an entry's requests are spread over its backends (`policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Policy {
    /// The backend with the fewest requests in flight from this node, relative to its weight.
    #[default]
    LeastRequests,
    /// In turn, each backend as often as its weight says.
    RoundRobin,
    /// A conversation's requests to the same backend (its prefix cache), within a bounded load.
    PrefixAffinity,
    /// The backend whose own metrics page reports the fewest requests waiting and running
    /// (vLLM's, SGLang's), with those this node sent it since.
    BackendLoad,
}

/// The shortest `health.interval`: the checker looks for due backends once a second.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Active health checks of an entry's backends (`health`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Asked with GET under each backend's base URL; any 2xx is healthy.
    pub path: String,
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub interval: Duration,
    /// Generous by default: a slow but alive backend is not dead.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub timeout: Duration,
    /// Passed checks in a row that bring a backend marked down back.
    pub healthy_threshold: u32,
    /// Failed checks in a row that mark a backend down.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive checks: backends taken out after failing requests in a row (`outlier`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Connect failures and 5xx answers in a row that take a backend out.
    pub consecutive_failures: u32,
    /// How long it stays out before one trial request may bring it back.
    #[serde(deserialize_with = "yaml::positive_duration")]
    pub cooldown: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self { consecutive_failures: 5, cooldown: Duration::from_secs(30) }
    }
}

/// `backend_load`'s settings (`load`): where each backend reports its load. It is read every
/// `health.interval` (whether or not `health` checks are on).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadReports {
    /// The backend's Prometheus page, under its base URL (vLLM and SGLang serve `/metrics`).
    pub path: String,
}

impl Default for LoadReports {
    fn default() -> Self {
        Self { path: "/metrics".into() }
    }
}

/// `prefix_affinity`'s settings (`affinity`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Affinity {
    /// Without an `X-Session-Id`, the key is this many first bytes of the messages (or prompt).
    pub prefix_bytes: usize,
    /// A backend with more than this times the mean requests in flight is passed over.
    pub load_factor: f64,
}

impl Default for Affinity {
    fn default() -> Self {
        Self { prefix_bytes: 1024, load_factor: 1.25 }
    }
}

/// Credentials the node sends to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAuth {
    /// `Authorization: Bearer <token>`
    Bearer(String),
    /// `x-api-key: <key>`
    ApiKey(String),
}

/// The two forms of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileForm {
    /// `models:`, one entry per model name (and `default`).
    Map,
    /// The network's single-backend keys (`backendProvider`, `url`, …), read as one `default` entry.
    Flat(BackendProvider),
}

impl fmt::Display for FileForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Map => write!(f, "the map form (`models`)"),
            Self::Flat(provider) => write!(f, "the flat form (`backendProvider: {provider}`), as one `default` entry"),
        }
    }
}

/// The flat form's `backendProvider`: what kind of server the one backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum BackendProvider {
    Custom,
    Vllm,
    Ollama,
    Fxn,
}

impl BackendProvider {
    /// Where the server listens when started with its own defaults; `None` where there is no such
    /// place and the file must give a `url`.
    fn default_url(self) -> Option<&'static str> {
        match self {
            Self::Vllm => Some("http://127.0.0.1:8000"),
            Self::Ollama => Some("http://127.0.0.1:11434"),
            Self::Custom | Self::Fxn => None,
        }
    }
}

/// Every field optional, so that each key of an entry can be checked alone (see `yaml::typed`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EntryFields {
    url: Option<String>,
    /// Of `url`, or of each of `backends` that sets none of its own.
    auth: Option<AuthEntry>,
    backends: Option<Vec<BackendFields>>,
    policy: Option<Policy>,
    alias: Option<String>,
    #[serde(default, deserialize_with = "network_id")]
    fxn_id: Option<String>,
    health: Option<HealthCheck>,
    #[serde(default)]
    outlier: OutlierDetection,
    #[serde(default)]
    affinity: Affinity,
    #[serde(default)]
    load: LoadReports,
}

/// One of an entry's `backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFields {
    url: String,
    #[serde(default = "one")]
    weight: u32,
    auth: Option<AuthEntry>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthEntry {
    bearer_token: Option<String>,
    api_key: Option<String>,
}

/// The flat form, keyed as the network's node keys it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlatFile {
    backend_provider: Option<BackendProvider>,
    url: Option<String>,
    #[serde(default, deserialize_with = "network_id")]
    fxn_id: Option<String>,
    api_key: Option<String>,
    bearer_token: Option<String>,
    model_name_alias: Option<String>,
}

/// A network model id: text, or a whole number as YAML reads `fxnId: 2`.
fn network_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct NetworkId;
    impl serde::de::Visitor<'_> for NetworkId {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the network's model id, as text or a whole number")
        }
        fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<Self::Value, E> {
            Ok(Some(id.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<Self::Value, E> {
            Ok(Some(id.to_string()))
        }
    }
    deserializer.deserialize_any(NetworkId)
}

/// An entry's settings in either form, with the key each was read from, before validation.
struct Entry {
    backends: Vec<BackendKeys>,
    alias: Option<String>,
    fxn_id: Option<String>,
    settings: EntrySettings,
}

/// What the flat form has no keys for.
#[derive(Default)]
struct EntrySettings {
    policy: Policy,
    health: Option<HealthCheck>,
    outlier: OutlierDetection,
    affinity: Affinity,
    load: LoadReports,
}

/// One backend before validation, with the keys of its fields.
struct BackendKeys {
    url_key: String,
    url: Option<String>,
    weight: (String, u32),
    credential: Option<(String, BackendAuth)>,
}

/// Where the fields of an [`Entry`] sit in the file, for errors.
struct EntryKeys {
    /// The entry itself (`models.NAME`, or the top level of the flat form).
    entry: String,
    alias: String,
    fxn_id: String,
}

impl ModelBackends {
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = super::read_file(path, "model backend map (model_backend.yaml)")?;
        Self::parse(path, &text)
    }

    /// Parses the text of a `model_backend.yaml`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let document = yaml::parse_document(path, text)?;
        let is_flat_key = |key: &Value| key.as_str().is_some_and(|key| FLAT_KEYS.contains(&key));
        if !document.contains_key("models") && document.keys().any(is_flat_key) {
            return parse_flat(path, document);
        }
        let mut errors = ConfigErrors::default();
        let mut entries = None;
        for (key, value) in document {
            match (key.as_str(), value) {
                (Some("models"), Value::Mapping(map)) => entries = Some(map),
                (Some("models"), _) => {
                    errors.push(ConfigError::new(path, "models", "expected a mapping of model name to backend"))
                }
                (Some(name), _) if FLAT_KEYS.contains(&name) => errors.push(ConfigError::new(
                    path,
                    name,
                    "belongs to the flat form, but the file also has `models` (the map form): \
                     write one form, e.g. move it into a `models` entry",
                )),
                (name, _) => errors.push(ConfigError::new(
                    path,
                    name.unwrap_or("?"),
                    "unknown key; the file holds either `models` or the flat form's keys (`backendProvider`, `url`, …)",
                )),
            }
        }
        let Some(entries) = entries else {
            if errors.is_empty() {
                errors.push(ConfigError::new(path, "models", "missing: list each model name with its backend `url`"));
            }
            return Err(errors);
        };

        let mut models = BTreeMap::new();
        let mut default = None;
        for (name, entry) in entries {
            let Some(name) = name.as_str().map(str::to_owned) else {
                errors.push(ConfigError::new(path, "models", "model names must be strings"));
                continue;
            };
            let key = format!("models.{name}");
            if name.trim().is_empty() {
                errors.push(ConfigError::new(path, &key, "model names must not be empty"));
                continue;
            }
            let was_null = entry.is_null();
            let before = errors.0.len();
            let Some(fields) = typed::<Option<EntryFields>>(path, &key, entry, &mut errors) else {
                if was_null {
                    errors.push(ConfigError::new(path, &key, "needs a `url`"));
                }
                continue;
            };
            let type_errors = ConfigErrors(errors.0[before..].to_vec());
            let entry = map_entry(path, &key, fields, &type_errors, &mut errors);
            let keys = EntryKeys { alias: format!("{key}.alias"), fxn_id: format!("{key}.fxn_id"), entry: key };
            let Some(backend) = validate_entry(path, &keys, entry, &type_errors, "needs a `url`", &mut errors) else {
                continue;
            };
            if name == DEFAULT_ENTRY {
                default = Some(backend);
            } else {
                models.insert(name, backend);
            }
        }
        if errors.is_empty() && models.is_empty() && default.is_none() {
            errors.push(ConfigError::new(
                path,
                "models",
                "is empty: list at least one model (or a `default` entry) with its backend `url`",
            ));
        }
        errors.into_result(Self { models, default, form: FileForm::Map })
    }

    /// The names this node serves, in order (the `default` entry is not a name).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// The flat form: one backend, which serves every model as the `default` entry. An empty value
/// counts as absent, as the network's node reads it, so its template's `apiKey: ""` loads.
fn parse_flat(path: &Path, document: serde_yaml::Mapping) -> Result<ModelBackends, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let flat: FlatFile = typed(path, "", Value::Mapping(document), &mut errors);
    let type_errors = errors.clone();
    let given = |value: Option<String>| value.filter(|v| !v.is_empty());
    let Some(provider) = flat.backend_provider else {
        if !type_errors.touches("backendProvider") {
            errors.push(ConfigError::new(path, "backendProvider", "missing: one of custom, vllm, ollama, fxn"));
        }
        return Err(errors);
    };
    let credential = match (given(flat.api_key), given(flat.bearer_token)) {
        (Some(key), _) => Some(("apiKey".to_string(), BackendAuth::ApiKey(key))),
        (None, Some(token)) => Some(("bearerToken".to_string(), BackendAuth::Bearer(token))),
        (None, None) => None,
    };
    let backend = BackendKeys {
        url_key: "url".into(),
        url: given(flat.url).or(provider.default_url().map(str::to_owned)),
        weight: (String::new(), 1),
        credential,
    };
    let entry = Entry {
        backends: vec![backend],
        alias: given(flat.model_name_alias),
        fxn_id: given(flat.fxn_id),
        settings: EntrySettings::default(),
    };
    let keys = EntryKeys { entry: "url".into(), alias: "modelNameAlias".into(), fxn_id: "fxnId".into() };
    let missing_url = format!("missing: `backendProvider: {provider}` needs the backend's `url`");
    let default = validate_entry(path, &keys, entry, &type_errors, &missing_url, &mut errors);
    errors.into_result(ModelBackends { models: BTreeMap::new(), default, form: FileForm::Flat(provider) })
}

/// A `models` entry as an [`Entry`]: its one `url`, or its `backends`.
fn map_entry(
    path: &Path,
    key: &str,
    fields: EntryFields,
    type_errors: &ConfigErrors,
    errors: &mut ConfigErrors,
) -> Entry {
    let entry_credential = credential(path, &format!("{key}.auth"), fields.auth, type_errors, errors);
    let backends = match (fields.url, fields.backends) {
        (url, None) => vec![BackendKeys {
            url_key: format!("{key}.url"),
            url,
            weight: (String::new(), 1),
            credential: entry_credential,
        }],
        (url, Some(listed)) => {
            let backends_key = format!("{key}.backends");
            if url.is_some() {
                errors.push(ConfigError::new(
                    path,
                    &backends_key,
                    "and `url` are alternatives: list every backend under `backends`, or give the one `url`",
                ));
            }
            if listed.is_empty() {
                errors.push(ConfigError::new(path, &backends_key, "is empty: list at least one backend `url`"));
            }
            if listed.len() > MAX_BACKENDS_PER_ENTRY {
                errors.push(ConfigError::new(
                    path,
                    &backends_key,
                    format!("lists {} backends; at most {MAX_BACKENDS_PER_ENTRY} are served", listed.len()),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for (index, backend) in listed.iter().enumerate() {
                if !seen.insert(backend.url.trim_end_matches('/')) {
                    errors.push(ConfigError::new(
                        path,
                        format!("{backends_key}[{index}].url"),
                        "is listed twice in this entry: give it one entry with a larger `weight`",
                    ));
                }
            }
            listed
                .into_iter()
                .enumerate()
                .map(|(index, backend)| {
                    let backend_key = format!("{backends_key}[{index}]");
                    let own = credential(path, &format!("{backend_key}.auth"), backend.auth, type_errors, errors);
                    BackendKeys {
                        url_key: format!("{backend_key}.url"),
                        url: Some(backend.url),
                        weight: (format!("{backend_key}.weight"), backend.weight),
                        credential: own.or_else(|| entry_credential.clone()),
                    }
                })
                .collect()
        }
    };
    let settings = EntrySettings {
        policy: fields.policy.unwrap_or_default(),
        health: fields.health,
        outlier: fields.outlier,
        affinity: fields.affinity,
        load: fields.load,
    };
    check_settings(path, key, &settings, errors);
    Entry { backends, alias: fields.alias, fxn_id: fields.fxn_id, settings }
}

/// The credential an `auth` at `key` names; one that names none is an error.
fn credential(
    path: &Path,
    key: &str,
    auth: Option<AuthEntry>,
    type_errors: &ConfigErrors,
    errors: &mut ConfigErrors,
) -> Option<(String, BackendAuth)> {
    match auth? {
        // api_key wins over bearer_token when both are set, as in the network's existing nodes.
        AuthEntry { api_key: Some(api_key), .. } => Some((format!("{key}.api_key"), BackendAuth::ApiKey(api_key))),
        AuthEntry { bearer_token: Some(token), .. } => {
            Some((format!("{key}.bearer_token"), BackendAuth::Bearer(token)))
        }
        _ => {
            if !type_errors.touches(key) {
                errors.push(ConfigError::new(path, key, "set `bearer_token` or `api_key`, or remove `auth`"));
            }
            None
        }
    }
}

/// The bounds serde cannot say: thresholds of at least one, a path, a load factor above one.
fn check_settings(path: &Path, key: &str, settings: &EntrySettings, errors: &mut ConfigErrors) {
    let mut at_least_one = |field: String, value: u32| {
        if value == 0 {
            errors.push(ConfigError::new(path, field, "must be at least 1"));
        }
    };
    at_least_one(format!("{key}.outlier.consecutive_failures"), settings.outlier.consecutive_failures);
    if let Some(health) = &settings.health {
        at_least_one(format!("{key}.health.healthy_threshold"), health.healthy_threshold);
        at_least_one(format!("{key}.health.unhealthy_threshold"), health.unhealthy_threshold);
        if health.interval < MIN_HEALTH_INTERVAL {
            errors.push(ConfigError::new(path, format!("{key}.health.interval"), "must be at least 1s"));
        }
        if !health.path.starts_with('/') {
            errors.push(ConfigError::new(path, format!("{key}.health.path"), "must start with `/`, as `/health`"));
        }
    }
    if !settings.load.path.starts_with('/') {
        errors.push(ConfigError::new(path, format!("{key}.load.path"), "must start with `/`, as `/metrics`"));
    }
    let affinity = &settings.affinity;
    if affinity.prefix_bytes == 0 {
        errors.push(ConfigError::new(path, format!("{key}.affinity.prefix_bytes"), "must be at least 1"));
    }
    if !(affinity.load_factor.is_finite() && affinity.load_factor > 1.0) {
        errors.push(ConfigError::new(
            path,
            format!("{key}.affinity.load_factor"),
            "must be a number above 1 (1.25 lets a backend take a quarter more than the mean)",
        ));
    }
}

/// Checks the values of an entry; a key in `type_errors` was left out, and is not missing.
fn validate_entry(
    path: &Path,
    keys: &EntryKeys,
    entry: Entry,
    type_errors: &ConfigErrors,
    missing_url: &str,
    errors: &mut ConfigErrors,
) -> Option<ModelEntry> {
    let before = errors.0.len();
    let backends: Vec<Option<Backend>> = entry
        .backends
        .into_iter()
        .map(|backend| validate_backend(path, keys, backend, type_errors, missing_url, errors))
        .collect();
    for (key, value) in [(&keys.alias, &entry.alias), (&keys.fxn_id, &entry.fxn_id)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            errors.push(ConfigError::new(path, key, "must not be empty: give a name, or remove the key"));
        }
    }
    if errors.0.len() != before || !type_errors.is_empty() {
        return None;
    }
    let EntrySettings { policy, health, outlier, affinity, load } = entry.settings;
    Some(ModelEntry {
        backends: backends.into_iter().collect::<Option<_>>()?,
        policy,
        alias: entry.alias,
        fxn_id: entry.fxn_id,
        health,
        outlier,
        affinity,
        load,
    })
}

fn validate_backend(
    path: &Path,
    keys: &EntryKeys,
    backend: BackendKeys,
    type_errors: &ConfigErrors,
    missing_url: &str,
    errors: &mut ConfigErrors,
) -> Option<Backend> {
    let url = match &backend.url {
        None => {
            if !type_errors.touches(&backend.url_key) {
                errors.push(ConfigError::new(path, &keys.entry, missing_url));
            }
            None
        }
        Some(url) => yaml::parse_http_url(url)
            .map_err(|message| errors.push(ConfigError::new(path, &backend.url_key, message)))
            .ok(),
    };
    if let Some((key, BackendAuth::ApiKey(secret) | BackendAuth::Bearer(secret))) = &backend.credential {
        if secret.is_empty() || http::HeaderValue::from_str(secret).is_err() {
            errors.push(ConfigError::new(path, key, "must be non-empty printable text without line breaks"));
        }
    }
    let (weight_key, weight) = backend.weight;
    if weight == 0 {
        errors.push(ConfigError::new(
            path,
            weight_key,
            "must be at least 1: remove the backend to send it no requests",
        ));
    }
    Some(Backend { url: url?, weight, auth: backend.credential.map(|(_, credential)| credential) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelBackends, ConfigErrors> {
        ModelBackends::parse(Path::new("model_backend.yaml"), text)
    }

    #[test]
    fn seed_format_loads() {
        let backends = parse(
            r#"
models:
  "meta/llama-4-scout-17b-16e-instruct":
    url: "https://api.example.com"
    auth:
      bearer_token: "secret"
  "gpt-4":
    url: "http://127.0.0.1:8082/openai"
    auth: {api_key: "k", bearer_token: "ignored"}
  default:
    url: "http://127.0.0.1:11434"
"#,
        )
        .unwrap();
        let scout = &backends.models["meta/llama-4-scout-17b-16e-instruct"];
        assert_eq!(scout.backends[0].auth, Some(BackendAuth::Bearer("secret".into())));
        assert_eq!(backends.models["gpt-4"].backends[0].auth, Some(BackendAuth::ApiKey("k".into())));
        assert_eq!(backends.default.as_ref().unwrap().backends[0].url.port(), Some(11434));
        assert_eq!(backends.names().collect::<Vec<_>>(), ["gpt-4", "meta/llama-4-scout-17b-16e-instruct"]);
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let errors = parse(
            r#"
models:
  a: {url: "ftp://x"}
  b: {url: "http://x", auth: {}}
  c: {url: "http://x", weight: 3}
  d:
  e: {url: "http://x", auth: {bearer_token: "line\nbreak"}}
  f: {url: 5, auth: {bearer_token: [1]}, colour: red}
  g: {auth: {api_key: "k"}}
  h: {url: "ftp://x", auth: {api_key: 5}}
"#,
        )
        .unwrap_err();
        let keys = errors.keys();
        for expected in [
            "models.a.url",
            "models.b.auth",
            "models.c.weight",
            "models.d",
            "models.e.auth.bearer_token",
            "models.f.url",
            "models.f.auth.bearer_token",
            "models.f.colour",
            "models.g",
            "models.h.url",
            "models.h.auth.api_key",
        ] {
            assert!(keys.contains(&expected), "no error for {expected}: {errors}");
        }
        // A key with a type error is not also missing.
        assert!(
            !keys.contains(&"models.f") && !keys.contains(&"models.f.auth") && !keys.contains(&"models.h.auth"),
            "{errors}"
        );
        assert!(errors.to_string().contains("weight"));
    }

    #[test]
    fn aliases_and_network_ids_are_read_per_entry() {
        let backends = parse(
            r#"
models:
  "meta-llama/Llama-3.1-8B-Instruct": {url: "http://127.0.0.1:8000", alias: "llama-3.1-8b", fxn_id: "7"}
  plain: {url: "http://127.0.0.1:8001"}
  default: {url: "http://127.0.0.1:11434", alias: "llama3.1:8b", fxn_id: 2}
"#,
        )
        .unwrap();
        let llama = &backends.models["meta-llama/Llama-3.1-8B-Instruct"];
        assert_eq!((llama.alias.as_deref(), llama.fxn_id.as_deref()), (Some("llama-3.1-8b"), Some("7")));
        assert_eq!((backends.models["plain"].alias.as_ref(), backends.models["plain"].fxn_id.as_ref()), (None, None));
        let default = backends.default.as_ref().unwrap();
        assert_eq!((default.alias.as_deref(), default.fxn_id.as_deref()), (Some("llama3.1:8b"), Some("2")));
        assert_eq!(backends.form, FileForm::Map);

        let errors =
            parse("models:\n  a: {url: 'http://x', alias: '', fxn_id: [1]}\n  b: {url: 'http://x', fxn_id: ' '}\n")
                .unwrap_err();
        assert_eq!(errors.keys(), ["models.a.fxn_id", "models.a.alias", "models.b.fxn_id"], "{errors}");
    }

    #[test]
    fn several_backends_are_read_with_their_weights_policy_and_checks() {
        let backends = parse(
            r#"
models:
  llama:
    policy: prefix_affinity
    auth: {bearer_token: shared}
    backends:
      - {url: "http://10.0.0.1:8000", weight: 3}
      - {url: "http://10.0.0.2:8000", auth: {api_key: own}}
    health: {path: /ready, interval: 2s}
    outlier: {consecutive_failures: 3}
    affinity: {prefix_bytes: 256}
  plain: {url: "http://127.0.0.1:8001"}
"#,
        )
        .unwrap();
        let llama = &backends.models["llama"];
        assert_eq!(llama.policy, Policy::PrefixAffinity);
        let listed: Vec<_> = llama.backends.iter().map(|b| (b.url.as_str(), b.weight, b.auth.clone())).collect();
        assert_eq!(
            listed,
            [
                ("http://10.0.0.1:8000/", 3, Some(BackendAuth::Bearer("shared".into()))),
                ("http://10.0.0.2:8000/", 1, Some(BackendAuth::ApiKey("own".into()))),
            ]
        );
        let health = llama.health.as_ref().unwrap();
        assert_eq!(
            (health.path.as_str(), health.interval, health.timeout),
            ("/ready", Duration::from_secs(2), Duration::from_secs(5))
        );
        assert_eq!((llama.outlier.consecutive_failures, llama.outlier.cooldown), (3, Duration::from_secs(30)));
        assert_eq!((llama.affinity.prefix_bytes, llama.affinity.load_factor), (256, 1.25));
        let plain = &backends.models["plain"];
        assert_eq!((plain.policy, plain.backends.len(), plain.health.is_none()), (Policy::LeastRequests, 1, true));
    }

    #[test]
    fn bad_backend_lists_name_their_key() {
        for (entry, key, message) in [
            ("{url: 'http://x', backends: [{url: 'http://y'}]}", "models.m.backends", "alternatives"),
            ("{backends: []}", "models.m.backends", "is empty"),
            ("{backends: [{url: 'ftp://y'}]}", "models.m.backends[0].url", "ftp"),
            ("{backends: [{url: 'http://y'}, {url: 'http://y/'}]}", "models.m.backends[1].url", "listed twice"),
            ("{backends: [{url: 'http://y', weight: 0}]}", "models.m.backends[0].weight", "at least 1"),
            ("{backends: [{url: 'http://y', colour: red}]}", "models.m.backends[0].colour", "unknown field `colour`"),
            ("{backends: [{url: 'http://y', auth: {}}]}", "models.m.backends[0].auth", "bearer_token"),
            ("{url: 'http://y', policy: fastest}", "models.m.policy", "least_requests"),
            ("{url: 'http://y', health: {interval: 500ms}}", "models.m.health.interval", "at least 1s"),
            ("{url: 'http://y', health: {path: ready}}", "models.m.health.path", "start with `/`"),
            (
                "{url: 'http://y', health: {unhealthy_threshold: 0}}",
                "models.m.health.unhealthy_threshold",
                "at least 1",
            ),
            ("{url: 'http://y', health: {timeout: 5}}", "models.m.health.timeout", "Go duration"),
            (
                "{url: 'http://y', outlier: {consecutive_failures: 0}}",
                "models.m.outlier.consecutive_failures",
                "at least 1",
            ),
            ("{url: 'http://y', affinity: {load_factor: 1}}", "models.m.affinity.load_factor", "above 1"),
            ("{url: 'http://y', affinity: {prefix_bytes: 0}}", "models.m.affinity.prefix_bytes", "at least 1"),
            ("{url: 'http://y', load: {path: metrics}}", "models.m.load.path", "start with `/`"),
            ("{url: 'http://y', policy: backend_loads}", "models.m.policy", "backend_load"),
        ] {
            let errors = parse(&format!("models:\n  m: {entry}\n")).unwrap_err();
            let found = errors.iter().find(|e| e.key == key);
            assert!(
                found.is_some_and(|e| e.message.contains(message)),
                "{entry}: want `{key}`: {message}; got {errors}"
            );
        }
        let many: Vec<String> = (0..=MAX_BACKENDS_PER_ENTRY).map(|i| format!("{{url: 'http://10.0.0.{i}'}}")).collect();
        let errors = parse(&format!("models:\n  m: {{backends: [{}]}}\n", many.join(", "))).unwrap_err();
        assert!(errors.to_string().contains("at most 64"), "{errors}");
    }

    #[test]
    fn flat_form_is_one_default_entry() {
        let backends = parse(
            r#"
backendProvider: "custom"
url: "http://your-backend:8082"
fxnId: "2"
apiKey: "k"
bearerToken: "ignored"
modelNameAlias: "local-model-name"
"#,
        )
        .unwrap();
        assert_eq!(backends.form, FileForm::Flat(BackendProvider::Custom));
        assert!(backends.models.is_empty());
        let default = backends.default.unwrap();
        assert_eq!(
            default.backends,
            [Backend {
                url: "http://your-backend:8082".parse().unwrap(),
                weight: 1,
                auth: Some(BackendAuth::ApiKey("k".into()))
            }]
        );
        assert_eq!((default.alias.as_deref(), default.fxn_id.as_deref()), (Some("local-model-name"), Some("2")));

        // Empty values are absent, as in the network's template; vLLM and Ollama have a default URL.
        let ollama =
            parse("backendProvider: ollama\nurl: ''\napiKey: ''\nbearerToken: t\nmodelNameAlias: ''\nfxnId: 3\n")
                .unwrap();
        let default = ollama.default.unwrap();
        assert_eq!(default.backends[0].url.as_str(), "http://127.0.0.1:11434/");
        assert_eq!(
            (&default.backends[0].auth, default.alias, default.fxn_id),
            (&Some(BackendAuth::Bearer("t".into())), None, Some("3".into()))
        );
        assert_eq!(ollama.form.to_string(), "the flat form (`backendProvider: ollama`), as one `default` entry");
        assert_eq!(parse("backendProvider: vllm").unwrap().default.unwrap().backends[0].url.port(), Some(8000));
    }

    #[test]
    fn bad_flat_files_name_their_key() {
        for (text, key, message) in [
            ("backendProvider: sglang\nurl: 'http://x'", "backendProvider", "unknown variant `sglang`"),
            ("url: 'http://x'", "backendProvider", "missing"),
            ("backendProvider: custom", "url", "`backendProvider: custom` needs the backend's `url`"),
            ("backendProvider: fxn\nurl: ''", "url", "`backendProvider: fxn` needs"),
            ("backendProvider: custom\nurl: 'ftp://x'", "url", "ftp"),
            ("backendProvider: custom\nurl: 'http://x'\nbearerToken: \"a\\nb\"", "bearerToken", "printable"),
            ("backendProvider: custom\nurl: 'http://x'\nmodelNameAlias: [a]", "modelNameAlias", "invalid type"),
            ("backendProvider: custom\nurl: 'http://x'\ncolour: red", "colour", "unknown field"),
            ("models: {a: {url: 'http://x'}}\nurl: 'http://y'", "url", "also has `models`"),
            ("models: {a: {url: 'http://x'}}\nbackendProvider: vllm", "backendProvider", "write one form"),
        ] {
            let errors = parse(text).unwrap_err();
            let found = errors.iter().find(|e| e.key == key);
            assert!(
                found.is_some_and(|e| e.message.contains(message)),
                "{text:?}: want `{key}`: {message}; got {errors}"
            );
        }
    }

    #[test]
    fn missing_or_empty_models_is_an_error() {
        assert!(parse("").unwrap_err().to_string().contains("`models`: missing"));
        assert!(parse("models: {}").unwrap_err().to_string().contains("is empty"));
        assert!(parse("modles: {}").unwrap_err().to_string().contains("unknown key"));
        assert!(parse("models: [a]").unwrap_err().to_string().contains("mapping"));
    }
}
