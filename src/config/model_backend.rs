//! `model_backend.yaml`: which backend serves each model, the name it knows the model by, and
//! how the node authenticates to it. Two forms are read: the map of `models` (the seed era's,
//! with our `alias` and `fxn_id`), and the network's later flat file for one backend, which is
//! mapped onto a single `default` entry.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

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
    pub models: BTreeMap<String, Backend>,
    pub default: Option<Backend>,
    /// Which form the file was written in.
    pub form: FileForm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Base URL; the request's path is appended to its path.
    pub url: url::Url,
    pub auth: Option<BackendAuth>,
    /// The name the backend knows the model by, put in place of the body's `model`.
    pub alias: Option<String>,
    /// The network's model id this backend is registered for.
    pub fxn_id: Option<String>,
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
struct BackendEntry {
    url: Option<String>,
    auth: Option<AuthEntry>,
    alias: Option<String>,
    #[serde(default, deserialize_with = "network_id")]
    fxn_id: Option<String>,
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

/// One backend's settings in either form, with the key each was read from, before validation.
struct Entry {
    url: Option<String>,
    credential: Option<(String, BackendAuth)>,
    alias: Option<String>,
    fxn_id: Option<String>,
}

/// Where the fields of an [`Entry`] sit in the file, for errors.
struct EntryKeys {
    /// The entry itself (`models.NAME`, or the top level of the flat form).
    entry: String,
    url: String,
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
            let Some(entry) = typed::<Option<BackendEntry>>(path, &key, entry, &mut errors) else {
                if was_null {
                    errors.push(ConfigError::new(path, &key, "needs a `url`"));
                }
                continue;
            };
            let type_errors = ConfigErrors(errors.0[before..].to_vec());
            let entry = map_entry(path, &key, entry, &type_errors, &mut errors);
            let keys = EntryKeys {
                url: format!("{key}.url"),
                alias: format!("{key}.alias"),
                fxn_id: format!("{key}.fxn_id"),
                entry: key,
            };
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
    let entry = Entry {
        url: given(flat.url).or(provider.default_url().map(str::to_owned)),
        credential,
        alias: given(flat.model_name_alias),
        fxn_id: given(flat.fxn_id),
    };
    let keys =
        EntryKeys { entry: "url".into(), url: "url".into(), alias: "modelNameAlias".into(), fxn_id: "fxnId".into() };
    let missing_url = format!("missing: `backendProvider: {provider}` needs the backend's `url`");
    let default = validate_entry(path, &keys, entry, &type_errors, &missing_url, &mut errors);
    errors.into_result(ModelBackends { models: BTreeMap::new(), default, form: FileForm::Flat(provider) })
}

/// A `models` entry as an [`Entry`]; an `auth` that names no credential is an error.
fn map_entry(
    path: &Path,
    key: &str,
    entry: BackendEntry,
    type_errors: &ConfigErrors,
    errors: &mut ConfigErrors,
) -> Entry {
    let credential = match entry.auth {
        None => None,
        // api_key wins over bearer_token when both are set, as in the network's existing nodes.
        Some(AuthEntry { api_key: Some(api_key), .. }) => {
            Some((format!("{key}.auth.api_key"), BackendAuth::ApiKey(api_key)))
        }
        Some(AuthEntry { bearer_token: Some(token), .. }) => {
            Some((format!("{key}.auth.bearer_token"), BackendAuth::Bearer(token)))
        }
        Some(_) => {
            if !type_errors.touches(&format!("{key}.auth")) {
                errors.push(ConfigError::new(
                    path,
                    format!("{key}.auth"),
                    "set `bearer_token` or `api_key`, or remove `auth`",
                ));
            }
            None
        }
    };
    Entry { url: entry.url, credential, alias: entry.alias, fxn_id: entry.fxn_id }
}

/// Checks the values of an entry; a key in `type_errors` was left out, and is not missing.
fn validate_entry(
    path: &Path,
    keys: &EntryKeys,
    entry: Entry,
    type_errors: &ConfigErrors,
    missing_url: &str,
    errors: &mut ConfigErrors,
) -> Option<Backend> {
    let before = errors.0.len();
    let url = match &entry.url {
        None => {
            if !type_errors.touches(&keys.url) {
                errors.push(ConfigError::new(path, &keys.entry, missing_url));
            }
            None
        }
        Some(url) => {
            yaml::parse_http_url(url).map_err(|message| errors.push(ConfigError::new(path, &keys.url, message))).ok()
        }
    };
    if let Some((key, BackendAuth::ApiKey(secret) | BackendAuth::Bearer(secret))) = &entry.credential {
        if secret.is_empty() || http::HeaderValue::from_str(secret).is_err() {
            errors.push(ConfigError::new(path, key, "must be non-empty printable text without line breaks"));
        }
    }
    for (key, value) in [(&keys.alias, &entry.alias), (&keys.fxn_id, &entry.fxn_id)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            errors.push(ConfigError::new(path, key, "must not be empty: give a name, or remove the key"));
        }
    }
    if errors.0.len() != before || !type_errors.is_empty() {
        return None;
    }
    Some(Backend {
        url: url?,
        auth: entry.credential.map(|(_, credential)| credential),
        alias: entry.alias,
        fxn_id: entry.fxn_id,
    })
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
        assert_eq!(scout.auth, Some(BackendAuth::Bearer("secret".into())));
        assert_eq!(backends.models["gpt-4"].auth, Some(BackendAuth::ApiKey("k".into())));
        assert_eq!(backends.default.as_ref().unwrap().url.port(), Some(11434));
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
        assert_eq!(default.url.as_str(), "http://your-backend:8082/");
        assert_eq!(default.auth, Some(BackendAuth::ApiKey("k".into())));
        assert_eq!((default.alias.as_deref(), default.fxn_id.as_deref()), (Some("local-model-name"), Some("2")));

        // Empty values are absent, as in the network's template; vLLM and Ollama have a default URL.
        let ollama =
            parse("backendProvider: ollama\nurl: ''\napiKey: ''\nbearerToken: t\nmodelNameAlias: ''\nfxnId: 3\n")
                .unwrap();
        let default = ollama.default.unwrap();
        assert_eq!(default.url.as_str(), "http://127.0.0.1:11434/");
        assert_eq!(
            (default.auth, default.alias, default.fxn_id),
            (Some(BackendAuth::Bearer("t".into())), None, Some("3".into()))
        );
        assert_eq!(ollama.form.to_string(), "the flat form (`backendProvider: ollama`), as one `default` entry");
        assert_eq!(parse("backendProvider: vllm").unwrap().default.unwrap().url.port(), Some(8000));
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
