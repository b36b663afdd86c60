//! Pingora's server conf (`conf/fxn.yaml`), checked here because Pingora itself panics on a
//! bad file and silently ignores misspelt keys.

use std::path::Path;

use pingora::server::configuration::ServerConf;

use super::{yaml, ConfigError, ConfigErrors};

/// Applied when the conf leaves them out: Pingora's own default makes SIGTERM wait 300 s
/// before it even starts draining.
const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 5;
const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

pub fn load_server_conf(path: &Path) -> Result<ServerConf, ConfigErrors> {
    let text = super::read_file(path, "Pingora server conf")?;
    parse_server_conf(path, &text)
}

pub fn parse_server_conf(path: &Path, text: &str) -> Result<ServerConf, ConfigErrors> {
    let document = yaml::parse_document(path, text)?;
    let known =
        serde_yaml::to_value(ServerConf::default()).ok().and_then(|v| v.as_mapping().cloned()).unwrap_or_default();
    let mut errors = ConfigErrors::default();
    for key in document.keys() {
        if !known.contains_key(key) {
            errors.push(ConfigError::new(
                path,
                key.as_str().unwrap_or("?"),
                "not a Pingora server conf key; see the README's conf/fxn.yaml reference",
            ));
        }
    }
    // Pingora requires `version`; a conf without it is still ours to accept.
    let mut document = document;
    document.entry("version".into()).or_insert(serde_yaml::Value::Number(1.into()));
    let parse =
        |document: &serde_yaml::Mapping| ServerConf::from_yaml(&serde_yaml::to_string(document).unwrap_or_default());
    let mut conf = match parse(&document) {
        Ok(conf) => conf,
        Err(e) => {
            // Without its bad keys the conf is read again, so that the others are still checked.
            let bad = key_errors(path, &document, &e);
            for error in bad.iter() {
                document.remove(error.key.as_str());
            }
            errors.extend(bad);
            match parse(&document) {
                Ok(conf) => conf,
                Err(_) => return Err(errors),
            }
        }
    };
    if conf.threads == 0 {
        errors.push(ConfigError::new(path, "threads", "must be at least 1"));
    }
    if conf.upstream_keepalive_pool_size == 0 {
        errors.push(ConfigError::new(
            path,
            "upstream_keepalive_pool_size",
            "must be at least 1, or every backend request opens a new connection",
        ));
    }
    if let Some(ca_file) = &conf.ca_file {
        if let Err(reason) = check_ca_file(Path::new(ca_file)) {
            errors.push(ConfigError::new(path, "ca_file", reason));
        }
    }
    conf.grace_period_seconds.get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
    conf.graceful_shutdown_timeout_seconds.get_or_insert(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS);
    errors.into_result(conf)
}

/// Pingora's parse stops at the first bad key (and its validation at the first bad value):
/// each key is tried alone with the same parse, so that every bad one is named. `error`, the
/// whole file's, is reported when no key fails alone.
fn key_errors(path: &Path, document: &serde_yaml::Mapping, error: &pingora::Error) -> ConfigErrors {
    let mut errors = ConfigErrors::default();
    for (key, value) in document {
        let probe: serde_yaml::Mapping =
            [("version".into(), serde_yaml::Value::Number(1.into())), (key.clone(), value.clone())]
                .into_iter()
                .collect();
        let Err(probe_error) = ServerConf::from_yaml(&serde_yaml::to_string(&probe).unwrap_or_default()) else {
            continue;
        };
        // The typed error without the location in the probe's text, else Pingora's reason.
        let reason = serde_yaml::from_value::<ServerConf>(serde_yaml::Value::Mapping(probe))
            .err()
            .map_or_else(|| pingora_reason(&probe_error), |e| e.to_string());
        errors.push(ConfigError::new(path, key.as_str().unwrap_or("?"), format!("invalid server conf: {reason}")));
    }
    if errors.is_empty() {
        errors.push(ConfigError::new(path, "", format!("invalid server conf: {}", pingora_reason(error))));
    }
    errors
}

/// The cause (the YAML error, which names the key) or the explanation of a Pingora error,
/// without the context that repeats the whole file.
fn pingora_reason(error: &pingora::Error) -> String {
    match (&error.cause, &error.context) {
        (Some(cause), _) => cause.to_string(),
        (None, Some(context)) => context.as_str().to_string(),
        (None, None) => error.to_string(),
    }
}

/// Pingora panics when it cannot load `ca_file` (the roots it trusts for HTTPS backends).
fn check_ca_file(ca_file: &Path) -> Result<(), String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", ca_file.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca_file.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConf, ConfigErrors> {
        parse_server_conf(Path::new("conf/fxn.yaml"), text)
    }

    #[test]
    fn short_grace_is_the_default() {
        let conf = parse("threads: 2").unwrap();
        assert_eq!(conf.threads, 2);
        assert_eq!(conf.grace_period_seconds, Some(DEFAULT_GRACE_PERIOD_SECONDS));
        assert_eq!(conf.graceful_shutdown_timeout_seconds, Some(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS));
    }

    #[test]
    fn misspelt_key_is_named() {
        let errors = parse("thread: 2\nthreads: many").unwrap_err();
        let keys = errors.keys();
        assert_eq!(keys, ["thread", "threads"], "{errors}");
    }

    #[test]
    fn unusable_ca_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        for ca_file in [not_pem, dir.path().join("absent.pem")] {
            let errors = parse(&format!("ca_file: {}", ca_file.display())).unwrap_err();
            assert_eq!(errors.0[0].key, "ca_file", "{errors}");
        }
    }

    #[test]
    fn wrong_type_and_zero_threads_are_errors_not_panics() {
        let errors =
            parse("threads: many\ndaemon: maybe\npid_file: 1234\nupstream_keepalive_pool_size: 0").unwrap_err();
        let keys = errors.keys();
        assert_eq!(keys, ["threads", "daemon", "upstream_keepalive_pool_size"], "a number is a fine path: {errors}");
        assert!(errors.0[0].message.starts_with("invalid server conf: invalid type"), "{errors}");
        assert_eq!(parse("threads: 0").unwrap_err().0[0].key, "threads");
    }

    #[test]
    fn pingora_own_checks_are_errors_not_panics() {
        let errors = parse("max_blocking_threads: 0").unwrap_err();
        assert_eq!(errors.0[0].key, "max_blocking_threads", "{errors}");
        assert!(errors.to_string().contains("invalid server conf: max_blocking_threads must be"), "{errors}");
    }
}
