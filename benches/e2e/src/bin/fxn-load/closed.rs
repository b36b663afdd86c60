//! Closed loop: each connection sends its next request as soon as the last one is answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Connection};
use crate::proc_stats::Watched;
use crate::requests::RequestSet;
use crate::summary::{micros, LoadReport, Tally};

pub async fn run(
    target: SocketAddr,
    set: RequestSet,
    connections: usize,
    duration: Duration,
    watched: &Watched,
) -> anyhow::Result<Value> {
    let set = Arc::new(set);
    let ready = client::warmed_up(target, &set, connections).await?;
    let cpu_before = watched.cpu_us();
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> =
        ready.into_iter().map(|connection| tokio::spawn(worker(target, set.clone(), connection, end))).collect();
    let mut tally = Tally::new();
    let mut ran_out = false;
    for worker in workers {
        let (worker_tally, worker_ran_out) = worker.await?;
        tally.merge(worker_tally);
        ran_out |= worker_ran_out;
    }
    let elapsed = start.elapsed();
    let proxy_cpu_us = watched.cpu_us().zip(cpu_before).map(|(after, before)| after - before);
    let mut report =
        LoadReport { mode: "closed", connections, tally: &tally, elapsed, proxy_cpu_us, rss_kib: watched.rss_kib() }
            .to_json();
    // A signed run that used every pre-signed request ended early; its rate is still right.
    report["ran_out_of_signed_requests"] = ran_out.into();
    Ok(report)
}

/// Returns what the connection saw, and whether it stopped for want of requests.
async fn worker(target: SocketAddr, set: Arc<RequestSet>, connection: Connection, end: Instant) -> (Tally, bool) {
    let mut tally = Tally::new();
    let mut slot = Some(connection);
    while Instant::now() < end {
        let Some(request) = set.next() else { return (tally, true) };
        let started = Instant::now();
        let result = match client::usable(&mut slot, target).await {
            Ok(connection) => client::exchange(connection, request).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tally.ok(micros(started.elapsed())),
            Err(e) => tally.failed(&e),
        }
    }
    (tally, false)
}
