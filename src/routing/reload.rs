//! Hot reload of `model_backend.yaml` on SIGHUP (`fxn reload` sends it): the new table is put in
//! force whole; one with any error is refused, every error logged, and the table in force kept.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use super::Routes;
use crate::config::{ModelBackends, ProxySettings};

pub struct RouteReloader {
    pub routes: Arc<Routes>,
    pub path: PathBuf,
    pub proxy: ProxySettings,
}

impl RouteReloader {
    /// Reads the file again and puts it in force when it is valid.
    pub fn reload(&self) -> bool {
        match ModelBackends::load(&self.path) {
            Ok(backends) => {
                self.routes.replace(&backends, &self.proxy);
                log::info!(
                    "reloaded {}: {} model entries; requests in flight keep the backends they began with",
                    self.path.display(),
                    backends.models.len() + usize::from(backends.default.is_some())
                );
                true
            }
            Err(errors) => {
                log::error!(
                    "{} was not reloaded ({} problem(s)); the routes in force stay:",
                    self.path.display(),
                    errors.0.len()
                );
                errors.iter().for_each(|error| log::error!("  {error}"));
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for RouteReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, so model_backend.yaml cannot be reloaded: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = hangups.recv() => { self.reload(); }
            }
        }
    }
}
