//! Active checks: each backend of an entry with `health` is asked its health path every
//! `health.interval`, runs of failures and passes past the thresholds marking it down and up;
//! each backend of a `backend_load` entry is asked its metrics page as often, for its load. The
//! table checked is the one in force at each round, so a reload is followed at once.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::load::reported_load;
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

    /// One round: asks every backend whose interval has passed, all at once, for its health
    /// (entries with `health`) and its load (entries with `policy: backend_load`).
    pub async fn round(&self) -> ControlFlow<()> {
        let router = self.routes.current();
        let now = Instant::now();
        let due: Vec<(&str, &BackendRoute, Probe)> = {
            let mut last_asked = self.last_asked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            router
                .entries()
                .flat_map(|route| {
                    let health = route.health.as_ref().map(Probe::Health);
                    let load = route
                        .load_path
                        .as_deref()
                        .map(|path| Probe::Load { path, schedule: route.health.as_ref().unwrap_or(&DEFAULT_SCHEDULE) });
                    let entry = route.entry.as_str();
                    health
                        .into_iter()
                        .chain(load)
                        .flat_map(move |probe| route.backends.iter().map(move |backend| (entry, backend, probe)))
                })
                .filter(|(_, backend, probe)| {
                    let key = format!("{} {}", probe.kind(), backend.url);
                    let interval = probe.schedule().interval;
                    let due = last_asked.get(&key).is_none_or(|at| now.duration_since(*at) >= interval);
                    if due {
                        last_asked.insert(key, now);
                    }
                    due
                })
                .collect()
        };
        join_all(due.into_iter().map(|(entry, backend, probe)| async move {
            match probe {
                Probe::Health(health) => self.check_health(entry, backend, health).await,
                Probe::Load { path, schedule } => {
                    let page = self.get(backend, path, schedule.timeout).await;
                    let load = page.as_deref().ok().and_then(reported_load);
                    if load.is_none() {
                        log::debug!(
                            "backend {} of model entry `{entry}` reports no load at {path}: {}",
                            backend.url,
                            page.err().unwrap_or_else(|| "no vllm: or sglang: request gauges".into())
                        );
                    }
                    backend.state.report_load(load);
                }
            }
        }))
        .await;
        ControlFlow::Continue(())
    }

    async fn check_health(&self, entry: &str, backend: &BackendRoute, health: &HealthCheck) {
        let healthy = self.get(backend, &health.path, health.timeout).await.map(drop);
        let thresholds = (health.healthy_threshold, health.unhealthy_threshold);
        match backend.state.checked(healthy.is_ok(), thresholds) {
            Some(true) => log::info!("backend {} of model entry `{entry}` passes its health checks again", backend.url),
            Some(false) => log::warn!(
                "backend {} of model entry `{entry}` is down: {} (after {} failed health checks)",
                backend.url,
                healthy.err().unwrap_or_default(),
                health.unhealthy_threshold
            ),
            None => {}
        }
    }

    /// The body of a 2xx answer to `GET path` under the backend's base URL within `timeout`;
    /// else what went wrong.
    async fn get(&self, backend: &BackendRoute, path: &str, timeout: Duration) -> Result<String, String> {
        let url = format!("{}{path}", backend.url.trim_end_matches('/'));
        let mut request = self.client.get(&url).timeout(timeout);
        if let Some((name, value)) = &backend.credential {
            request = request.header(name.clone(), value.clone());
        }
        let failed = |e: reqwest::Error| match e.is_timeout() {
            true => format!("GET {url} did not answer within {timeout:?}"),
            false => format!("GET {url} failed: {e}"),
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => response.text().await.map_err(failed),
            Ok(response) => Err(format!("GET {url} answered {}", response.status())),
            Err(e) => Err(failed(e)),
        }
    }
}

/// What a round asks a backend.
#[derive(Clone, Copy)]
enum Probe<'a> {
    Health(&'a HealthCheck),
    /// `backend_load`'s page, on the health checks' schedule (or its defaults).
    Load {
        path: &'a str,
        schedule: &'a HealthCheck,
    },
}

impl Probe<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::Health(_) => "health",
            Self::Load { .. } => "load",
        }
    }

    fn schedule(&self) -> &HealthCheck {
        match self {
            Self::Health(health) => health,
            Self::Load { schedule, .. } => schedule,
        }
    }
}

/// The interval and timeout of load reads for an entry without `health`.
static DEFAULT_SCHEDULE: LazyLock<HealthCheck> = LazyLock::new(HealthCheck::default);
