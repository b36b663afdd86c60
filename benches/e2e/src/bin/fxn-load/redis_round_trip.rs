//! One Redis round trip at a time as the node makes it (the same client crate, its connection
//! manager, the node's `SET … NX PX` command), for the nonce store's cost to be read against.

use std::time::Instant;

use redis::aio::ConnectionManager;
use serde_json::{json, Value};

use crate::summary::{percentiles, Tally};

pub async fn run(url: &str, count: usize) -> anyhow::Result<Value> {
    let mut connection = ConnectionManager::new(redis::Client::open(url)?).await?;
    let mut tally = Tally::new();
    for i in 0..count {
        let command = redis::cmd("SET")
            .arg(format!("fxn-bench:round-trip:{i}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .to_owned();
        let started = Instant::now();
        command.query_async::<Option<String>>(&mut connection).await?;
        tally.ok(started.elapsed().as_micros() as u64);
    }
    Ok(json!({"mode": "redis_round_trip", "round_trips": count, "latency_us": percentiles(&tally.latency)}))
}
