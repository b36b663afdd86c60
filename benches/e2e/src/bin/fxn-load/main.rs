//! Load generator for the end-to-end benchmarks: a closed loop, an open loop (latency counted
//! from each request's intended send time) and SSE streams held open, all over hyper HTTP/1.1
//! keep-alive connections with TCP_NODELAY. Prints one JSON object per run on stdout.

mod client;
mod closed;
mod flood;
mod open;
mod proc_stats;
mod redis_round_trip;
mod requests;
mod stream;
mod summary;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use proc_stats::Watched;
use requests::RequestSpec;

#[derive(Parser)]
#[command(about = "Load generator for fxn's end-to-end benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// C connections, each sending requests back to back for the duration.
    Closed {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        request: RequestSpec,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Bound on the request rate a signed run can sustain: each request needs its own
        /// nonce, so rate × duration requests are signed before the run.
        #[arg(long, default_value_t = 12000)]
        max_rate: u64,
    },
    /// A fixed request rate over a fixed set of connections.
    Open {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        request: RequestSpec,
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// S streaming chat requests held open at once, one connection each.
    Stream {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        request: RequestSpec,
        #[arg(long)]
        streams: usize,
        /// Events each stream carries (sent to the test backend as `x-test-chunks`).
        #[arg(long)]
        chunks: u32,
        /// Pause between events (`x-test-interval-ms`).
        #[arg(long)]
        interval_ms: u64,
        /// Seconds over which the streams' starts are spread evenly.
        #[arg(long, default_value_t = 1.0)]
        ramp_s: f64,
    },
    /// C connections from one source address sending requests back to back, whatever the
    /// answers (with `--auth forged`, a bad-signature flood); answers counted by status.
    Flood {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        request: RequestSpec,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The address the flood comes from (a loopback alias, such as 127.0.0.2).
        #[arg(long)]
        source: IpAddr,
    },
    /// Prints the address the harness signs as, for the node's `registry.static.gateways`.
    SignerAddress,
    /// Times single Redis round trips made the way the node records a nonce.
    RedisRoundTrip {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 50_000)]
        count: usize,
    },
}

#[derive(Args)]
struct Common {
    #[arg(long)]
    target: SocketAddr,
    /// Measured seconds (for streams: how long the schedule lasts is chunks × interval).
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Process whose CPU time and RSS are measured; repeat it for a process tree (summed).
    #[arg(long = "proxy-pid")]
    proxy_pids: Vec<u32>,
    /// `key=value` copied into the report.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The test backend behind the target: the connections it accepted during the run (warm-up
    /// included) are reported as `backend_connections_opened`.
    #[arg(long)]
    backend: Option<SocketAddr>,
}

impl Command {
    fn common(&self) -> Option<&Common> {
        match self {
            Command::Closed { common, .. }
            | Command::Open { common, .. }
            | Command::Stream { common, .. }
            | Command::Flood { common, .. } => Some(common),
            Command::SignerAddress | Command::RedisRoundTrip { .. } => None,
        }
    }
}

/// Connections the test backend has accepted, counting the one this question opens.
fn backend_connections(runtime: &tokio::runtime::Runtime, backend: SocketAddr) -> anyhow::Result<u64> {
    let stats = runtime.block_on(client::backend_stats(backend))?;
    stats["connections"].as_u64().context("the backend's /stats has no `connections` count")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the generator is pinned to one core beside the backend, so more threads would
    // only contend with it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let backend = cli.command.common().and_then(|common| common.backend);
    let backend_before = backend.map(|addr| backend_connections(&runtime, addr)).transpose()?;
    let (common, mut report) = match cli.command {
        Command::SignerAddress => {
            println!("{}", requests::signer().checksummed_address());
            return Ok(());
        }
        Command::RedisRoundTrip { url, count } => {
            println!("{}", runtime.block_on(redis_round_trip::run(&url, count))?);
            return Ok(());
        }
        Command::Closed { common, request, connections, max_rate } => {
            let count = (max_rate as f64 * common.duration_s).ceil() as usize + connections;
            let set = request.build(common.target, count, false)?;
            let watched = Watched::new(common.proxy_pids.clone());
            let duration = Duration::from_secs_f64(common.duration_s);
            let report = runtime.block_on(closed::run(common.target, set, connections, duration, &watched))?;
            (common, report)
        }
        Command::Flood { common, request, connections, source } => {
            // A forged or unsigned set never runs out; a signed one holds what a saturated
            // node could answer.
            let set = request.build(common.target, (20_000.0 * common.duration_s) as usize, false)?;
            let duration = Duration::from_secs_f64(common.duration_s);
            let report = runtime.block_on(flood::run(common.target, source, set, connections, duration))?;
            (common, report)
        }
        Command::Open { common, request, rate, connections } => {
            let count = (rate as f64 * common.duration_s).ceil() as usize;
            // One extra request per connection warms it up before the schedule starts.
            let set = request.build(common.target, count + connections, false)?;
            let watched = Watched::new(common.proxy_pids.clone());
            let report = runtime.block_on(open::run(common.target, set, rate, count as u64, connections, &watched))?;
            (common, report)
        }
        Command::Stream { common, mut request, streams, chunks, interval_ms, ramp_s } => {
            request.headers.push(format!("x-test-chunks:{chunks}"));
            request.headers.push(format!("x-test-interval-ms:{interval_ms}"));
            let set = request.build(common.target, streams, true)?;
            let watched = Watched::new(common.proxy_pids.clone());
            let plan = stream::Plan {
                streams,
                chunks,
                interval: Duration::from_millis(interval_ms),
                ramp: Duration::from_secs_f64(ramp_s),
            };
            let report = runtime.block_on(stream::run(common.target, set, plan, &watched))?;
            (common, report)
        }
    };
    if let (Some(addr), Some(before)) = (backend, backend_before) {
        // Less the connection each stats question opened.
        let opened = backend_connections(&runtime, addr)?.saturating_sub(before + 1);
        report["backend_connections_opened"] = opened.into();
    }
    report["target"] = common.target.to_string().into();
    for label in &common.labels {
        let (key, value) = label.split_once('=').unwrap_or((label, ""));
        report[key] = value.into();
    }
    println!("{report}");
    Ok(())
}
