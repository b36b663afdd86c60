//! Open loop: requests are due at a fixed rate whether or not earlier ones were answered, and
//! each latency runs from when its request was due, not from when a connection was free to send
//! it (the correction for coordinated omission). A timerfd paces the schedule: tokio's timers
//! tick in whole milliseconds, too coarse for 10,000 requests a second.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Semaphore;

use crate::client::{self, Connection};
use crate::proc_stats::Watched;
use crate::requests::RequestSet;
use crate::summary::{micros, LoadReport, Tally};

/// How long requests still queued or in flight when the schedule ends may take to finish.
const DRAIN: Duration = Duration::from_secs(15);

/// The shared schedule: request `k` is due at `start + (k + 1) · period`, and may be sent once
/// the pacer has released `k + 1` permits.
struct Schedule {
    start: Instant,
    period: Duration,
    count: u64,
    claimed: AtomicU64,
    due: Semaphore,
}

pub async fn run(
    target: SocketAddr,
    set: RequestSet,
    rate: u64,
    count: u64,
    connections: usize,
    watched: &Watched,
) -> anyhow::Result<Value> {
    let set = Arc::new(set);
    let ready = client::warmed_up(target, &set, connections).await?;
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let cpu_before = watched.cpu_us();
    let ticker = Ticker::start(period)?;
    let schedule =
        Arc::new(Schedule { start: Instant::now(), period, count, claimed: AtomicU64::new(0), due: Semaphore::new(0) });
    let pacer = tokio::spawn(pace(ticker, schedule.clone()));
    let workers: Vec<_> = ready
        .into_iter()
        .map(|connection| tokio::spawn(worker(target, set.clone(), connection, schedule.clone())))
        .collect();
    let deadline = schedule.start + period * u32::try_from(count).unwrap_or(u32::MAX) + DRAIN;
    let mut tally = Tally::new();
    for worker in workers {
        // A worker still busy at the deadline is left out: its requests count as unfinished.
        if let Ok(joined) = tokio::time::timeout_at(deadline.into(), worker).await {
            tally.merge(joined?);
        }
    }
    pacer.abort();
    let elapsed = schedule.start.elapsed();
    let proxy_cpu_us = watched.cpu_us().zip(cpu_before).map(|(after, before)| after - before);
    let mut report =
        LoadReport { mode: "open", connections, tally: &tally, elapsed, proxy_cpu_us, rss_kib: watched.rss_kib() }
            .to_json();
    report["rate"] = rate.into();
    report["scheduled"] = count.into();
    report["unfinished"] = count.saturating_sub(tally.completed + tally.errors).into();
    Ok(report)
}

async fn pace(ticker: Ticker, schedule: Arc<Schedule>) -> io::Result<()> {
    let mut released = 0;
    while released < schedule.count {
        let expirations = ticker.expirations().await?.min(schedule.count - released);
        schedule.due.add_permits(expirations as usize);
        released += expirations;
    }
    Ok(())
}

async fn worker(target: SocketAddr, set: Arc<RequestSet>, connection: Connection, schedule: Arc<Schedule>) -> Tally {
    let mut tally = Tally::new();
    let mut slot = Some(connection);
    loop {
        // Claiming the index and queueing for its permit happen in one poll, so the semaphore's
        // FIFO order hands permits out in index order.
        let index = schedule.claimed.fetch_add(1, Ordering::Relaxed);
        if index >= schedule.count {
            return tally;
        }
        let Ok(permit) = schedule.due.acquire().await else { return tally };
        permit.forget();
        let due = schedule.start + schedule.period * u32::try_from(index + 1).unwrap_or(u32::MAX);
        let Some(request) = set.next() else {
            tally.failed(&anyhow::anyhow!("ran out of signed requests"));
            continue;
        };
        let result = match client::usable(&mut slot, target).await {
            Ok(connection) => client::exchange(connection, request).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tally.ok(micros(due.elapsed())),
            Err(e) => tally.failed(&e),
        }
    }
}

/// A periodic CLOCK_MONOTONIC timerfd (the clock `Instant` reads), first expiring one period
/// after it starts.
struct Ticker {
    fd: AsyncFd<OwnedFd>,
}

impl Ticker {
    fn start(period: Duration) -> io::Result<Self> {
        // SAFETY: plain syscalls on a descriptor this function creates and then owns.
        let fd = unsafe {
            let raw = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let interval = libc::timespec {
                tv_sec: period.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(period.subsec_nanos() as i32),
            };
            let spec = libc::itimerspec { it_interval: interval, it_value: interval };
            if libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
            fd
        };
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Periods elapsed since the last call (at least one).
    async fn expirations(&self) -> io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                let mut buffer = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
                if n == 8 {
                    Ok(u64::from_ne_bytes(buffer))
                } else {
                    Err(io::Error::last_os_error())
                }
            });
            if let Ok(result) = read {
                return result;
            }
        }
    }
}
