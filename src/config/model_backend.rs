//! `model_backend.yaml`: which backend serves each model, and how the node authenticates to it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use super::yaml::{self, typed};
use super::{ConfigError, ConfigErrors};

/// The entry name that serves every model not listed by name.
pub const DEFAULT_ENTRY: &str = "default";

/// The validated contents of `model_backend.yaml`.
#[derive(Debug, Clone)]
pub struct ModelBackends {
    pub models: BTreeMap<String, Backend>,
    pub default: Option<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Base URL; the request's path is appended to its path.
    pub url: url::Url,
    pub auth: Option<BackendAuth>,
}

/// Credentials the node sends to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAuth {
    /// `Authorization: Bearer <token>`
    Bearer(String),
    /// `x-api-key: <key>`
    ApiKey(String),
}

/// Every field optional, so that each key of an entry can be checked alone (see `yaml::typed`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendEntry {
    url: Option<String>,
    auth: Option<AuthEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthEntry {
    bearer_token: Option<String>,
    api_key: Option<String>,
}

impl ModelBackends {
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = super::read_file(path, "model backend map (model_backend.yaml)")?;
        Self::parse(path, &text)
    }

    /// Parses the text of a `model_backend.yaml`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let document = yaml::parse_document(path, text)?;
        let mut errors = ConfigErrors::default();
        let mut entries = None;
        for (key, value) in document {
            match (key.as_str(), value) {
                (Some("models"), Value::Mapping(map)) => entries = Some(map),
                (Some("models"), _) => {
                    errors.push(ConfigError::new(path, "models", "expected a mapping of model name to backend"))
                }
                (name, _) => errors.push(ConfigError::new(
                    path,
                    name.unwrap_or("?"),
                    "unknown key; the file holds one key, `models`",
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
            let Some(backend) = validate_entry(path, &key, entry, &type_errors, &mut errors) else {
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
        errors.into_result(Self { models, default })
    }

    /// The names this node serves, in order (the `default` entry is not a name).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// Checks the values of an entry; a key in `type_errors` was left out, and is not missing.
fn validate_entry(
    path: &Path,
    key: &str,
    entry: BackendEntry,
    type_errors: &ConfigErrors,
    errors: &mut ConfigErrors,
) -> Option<Backend> {
    let before = errors.0.len();
    let url = match &entry.url {
        None => {
            if !type_errors.touches(&format!("{key}.url")) {
                errors.push(ConfigError::new(path, key, "needs a `url`"));
            }
            None
        }
        Some(url) => yaml::parse_http_url(url)
            .map_err(|message| errors.push(ConfigError::new(path, format!("{key}.url"), message)))
            .ok(),
    };
    let auth = entry.auth.and_then(|auth| {
        // api_key wins over bearer_token when both are set, as in the network's existing nodes.
        let (field, credential) = match (auth.api_key, auth.bearer_token) {
            (Some(api_key), _) => ("api_key", BackendAuth::ApiKey(api_key)),
            (None, Some(token)) => ("bearer_token", BackendAuth::Bearer(token)),
            (None, None) => {
                if !type_errors.touches(&format!("{key}.auth")) {
                    errors.push(ConfigError::new(
                        path,
                        format!("{key}.auth"),
                        "set `bearer_token` or `api_key`, or remove `auth`",
                    ));
                }
                return None;
            }
        };
        let secret = match &credential {
            BackendAuth::ApiKey(s) | BackendAuth::Bearer(s) => s,
        };
        if secret.is_empty() || http::HeaderValue::from_str(secret).is_err() {
            errors.push(ConfigError::new(
                path,
                format!("{key}.auth.{field}"),
                "must be non-empty printable text without line breaks",
            ));
            return None;
        }
        Some(credential)
    });
    if errors.0.len() != before || !type_errors.is_empty() {
        return None;
    }
    Some(Backend { url: url?, auth })
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
    fn missing_or_empty_models_is_an_error() {
        assert!(parse("").unwrap_err().to_string().contains("`models`: missing"));
        assert!(parse("models: {}").unwrap_err().to_string().contains("is empty"));
        assert!(parse("modles: {}").unwrap_err().to_string().contains("unknown key"));
        assert!(parse("models: [a]").unwrap_err().to_string().contains("mapping"));
    }
}
