//! A flood of forged requests from one source address: each names the registered gateway but is
//! signed over another body, so the node checks its signature (the expensive part) and refuses
//! it, unless its failure budget (`limits.authFailures`) refuses the address first. Connections
//! send back to back for the duration; answers are counted by status.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::client::{self, Connection};
use crate::requests::RequestSet;

pub async fn run(
    target: SocketAddr,
    source: IpAddr,
    set: RequestSet,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    let set = Arc::new(set);
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..connections).map(|_| tokio::spawn(worker(target, source, set.clone(), end))).collect();
    let mut statuses = BTreeMap::<String, u64>::new();
    let mut first_error = None;
    for worker in workers {
        let (counts, error) = worker.await?;
        for (status, count) in counts {
            *statuses.entry(status).or_default() += count;
        }
        first_error = first_error.or(error);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let answered: u64 = statuses.values().sum();
    Ok(json!({
        "mode": "flood",
        "source": source.to_string(),
        "connections": connections,
        "duration_s": elapsed,
        "answered": answered,
        "rps": answered as f64 / elapsed,
        "statuses": statuses,
        "first_error": first_error,
    }))
}

/// Counts of answers by status, and the first transport error.
async fn worker(
    target: SocketAddr,
    source: IpAddr,
    set: Arc<RequestSet>,
    end: Instant,
) -> (BTreeMap<String, u64>, Option<String>) {
    let mut counts = BTreeMap::new();
    let mut first_error = None;
    let mut slot: Option<Connection> = None;
    while Instant::now() < end {
        let Some(request) = set.next() else { break };
        match send(&mut slot, target, source, request).await {
            Ok(status) => *counts.entry(status.to_string()).or_insert(0) += 1,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
                slot = None;
            }
        }
    }
    (counts, first_error)
}

async fn send(
    slot: &mut Option<Connection>,
    target: SocketAddr,
    source: IpAddr,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> anyhow::Result<u16> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        *slot = Some(client::connect_from(target, Some(source)).await?);
    }
    let connection = slot.as_mut().expect("set above");
    connection.ready().await?;
    let response = connection.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}
