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
    if !errors.is_empty() {
        return Err(errors);
    }
    // Pingora requires `version`; a conf without it is still ours to accept.
    let mut document = document;
    document.entry("version".into()).or_insert(serde_yaml::Value::Number(1.into()));
    let normalized = serde_yaml::to_string(&document).unwrap_or_default();
    let mut conf = ServerConf::from_yaml(&normalized).map_err(|e| {
        // The cause is the YAML error, which names the key; the context repeats the whole file.
        let reason = e.cause.as_ref().map_or_else(|| e.to_string(), |cause| cause.to_string());
        ConfigErrors::from(ConfigError::new(path, "", format!("invalid server conf: {reason}")))
    })?;
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
        let errors = parse("thread: 2").unwrap_err();
        assert_eq!(errors.0[0].key, "thread");
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
        assert!(parse("threads: many").unwrap_err().to_string().contains("invalid server conf"));
        assert_eq!(parse("threads: 0").unwrap_err().0[0].key, "threads");
    }
}
