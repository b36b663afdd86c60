//! Active health checks: each backend of an entry with `health` is asked its health path every
//! `health.interval`; runs of failures and passes past the thresholds mark it down and up. The
//! table checked is the one in force at each round, so a reload is followed at once.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::join_all;

use super::{BackendRoute, Routes};
use crate::config::HealthCheck;

/// How often the checker looks for backends whose interval has passed; `health.interval` is at
/// least this.
pub const CHECK_ROUND: std::time::Duration = crate::config::MIN_HEALTH_INTERVAL;

pub struct HealthChecker {
    routes: Arc<Routes>,
    client: reqwest::Client,
    /// When each backend (by URL) was last asked.
    last_asked: Mutex<HashMap<String, Instant>>,
}

impl HealthChecker {
    pub fn new(routes: Arc<Routes>) -> Self {
        // Health paths are asked as they are: a redirect is an answer of its own, not health.
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default();
        Self { routes, client, last_asked: Mutex::default() }
    }

    /// One round: asks every backend whose interval has passed, all at once.
    pub async fn round(&self) -> ControlFlow<()> {
        let router = self.routes.current();
        let now = Instant::now();
        let due: Vec<(&str, &BackendRoute, &HealthCheck)> = {
            let mut last_asked = self.last_asked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            router
                .entries()
                .filter_map(|route| Some((route, route.health.as_ref()?)))
                .flat_map(|(route, health)| {
                    route.backends.iter().map(move |backend| (route.entry.as_str(), backend, health))
                })
                .filter(|(_, backend, health)| {
                    let due = last_asked.get(&backend.url).is_none_or(|at| now.duration_since(*at) >= health.interval);
                    if due {
                        last_asked.insert(backend.url.clone(), now);
                    }
                    due
                })
                .collect()
        };
        join_all(due.into_iter().map(|(entry, backend, health)| async move {
            let healthy = self.ask(backend, health).await;
            let thresholds = (health.healthy_threshold, health.unhealthy_threshold);
            match backend.state.checked(healthy.is_ok(), thresholds) {
                Some(true) => {
                    log::info!("backend {} of model entry `{entry}` passes its health checks again", backend.url)
                }
                Some(false) => log::warn!(
                    "backend {} of model entry `{entry}` is down: {} (after {} failed health checks)",
                    backend.url,
                    healthy.err().unwrap_or_default(),
                    health.unhealthy_threshold
                ),
                None => {}
            }
        }))
        .await;
        ControlFlow::Continue(())
    }

    /// `Ok` for a 2xx answer within the timeout; else what went wrong.
    async fn ask(&self, backend: &BackendRoute, health: &HealthCheck) -> Result<(), String> {
        let url = format!("{}{}", backend.url.trim_end_matches('/'), health.path);
        let mut request = self.client.get(&url).timeout(health.timeout);
        if let Some((name, value)) = &backend.credential {
            request = request.header(name.clone(), value.clone());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("GET {url} answered {}", response.status())),
            Err(e) if e.is_timeout() => Err(format!("GET {url} did not answer within {:?}", health.timeout)),
            Err(e) => Err(format!("GET {url} failed: {e}")),
        }
    }
}
