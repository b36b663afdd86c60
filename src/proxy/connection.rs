//! The callers' connections: how many the node holds at once (`limits.maxConnections`), how long
//! a request header may take to arrive (`limits.headerReadTimeout`) and how long a keep-alive
//! connection may wait for its next request (`limits.idleTimeout`).
//!
//! Pingora bounds each read of a header, not the whole header, so a caller that sends a byte
//! every few seconds would hold its connection for as long as it likes. Here the header's
//! deadline runs from the request's first byte (from the opening, for a connection's first
//! request), and the connection is dropped when it passes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, IO,
};
use pingora::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Limits;
use crate::metrics::metrics;

/// Pingora's HTTP application, behind the node's connection limits.
pub(crate) struct CallerConnections<A> {
    app: Arc<A>,
    open: AtomicUsize,
    max_connections: usize,
    header_read_timeout: Duration,
}

impl<A> CallerConnections<A> {
    pub fn new(app: A, limits: &Limits) -> Self {
        Self {
            app: Arc::new(app),
            open: AtomicUsize::new(0),
            max_connections: limits.max_connections,
            header_read_timeout: limits.header_read_timeout,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CallerConnections<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_slot) = Slot::take(&self.open, self.max_connections) else {
            // Closed unread: the connections the node holds keep being served.
            metrics().connection_cut("max_connections");
            return None;
        };
        let clock = Arc::new(HeaderClock::new());
        let watched: Stream = Box::new(Watched { stream, clock: clock.clone() });
        tokio::select! {
            // Pingora's HTTP application serves every request of the connection before it
            // returns, and then hands nothing back to reuse.
            _ = self.app.process_new(watched, shutdown) => {}
            () = clock.overdue(self.header_read_timeout) => metrics().connection_cut("header_timeout"),
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// One of `limits.maxConnections`, given back when the connection ends.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(open: &'a AtomicUsize, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok().map(|_| Self(open))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request being read on the connection has begun at `began` nanoseconds after `opened`,
/// or is not being read.
const WAITING: u64 = u64::MAX;
const RECEIVED: u64 = u64::MAX - 1;

/// When the header of the connection's current request began, for its deadline.
struct HeaderClock {
    opened: Instant,
    /// Nanoseconds after `opened`; [`WAITING`] between requests (the next byte begins one),
    /// [`RECEIVED`] once the header is in.
    began: AtomicU64,
    changed: Notify,
}

impl HeaderClock {
    fn new() -> Self {
        // A connection's first request begins when it opens: one that sends nothing is cut off too.
        Self { opened: Instant::now(), began: AtomicU64::new(0), changed: Notify::new() }
    }

    fn set(&self, began: u64) {
        self.began.store(began, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn bytes_arrived(&self) {
        if self.began.load(Ordering::Acquire) == WAITING {
            let now = (Instant::now() - self.opened).as_nanos().min(u128::from(RECEIVED - 1)) as u64;
            if self.began.compare_exchange(WAITING, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.changed.notify_waiters();
            }
        }
    }

    /// Resolves once a request's header has been arriving for longer than `timeout`.
    async fn overdue(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the load, so that no change between the two is missed.
            changed.as_mut().enable();
            let began = self.began.load(Ordering::Acquire);
            if began == WAITING || began == RECEIVED {
                changed.await;
                continue;
            }
            let deadline = self.opened + Duration::from_nanos(began) + timeout;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.began.load(Ordering::Acquire) == began {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// The request's header is in: its deadline no longer runs, and the connection may then wait at
/// most `limits.idleTimeout` for the next request (Pingora waits forever for a caller that sends
/// no `Keep-Alive: timeout`, and as long as one that sends it asks).
pub(super) fn request_began(session: &mut Session, limits: &Limits) {
    if let Some(clock) = clock_of(session) {
        clock.set(RECEIVED);
    }
    let idle = limits.idle_timeout_secs();
    // `None` is a connection that closes after this request, `Some(0)` one kept forever.
    if let Some(kept) = session.get_keepalive() {
        if kept == 0 || kept > idle {
            session.set_keepalive(Some(idle));
        }
    }
}

/// The request is answered: the next byte on the connection begins the next one.
pub(super) fn request_ended(session: &Session) {
    if let Some(clock) = clock_of(session) {
        clock.set(WAITING);
    }
}

fn clock_of(session: &Session) -> Option<&HeaderClock> {
    let stream: &dyn IO = &**session.as_downstream().stream()?;
    stream.as_any().downcast_ref::<Watched>().map(|watched| &*watched.clock)
}

/// The caller's stream, telling its clock when bytes arrive; everything else passes through.
#[derive(Debug)]
struct Watched {
    stream: Stream,
    clock: Arc<HeaderClock>,
}

impl std::fmt::Debug for HeaderClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderClock").field("began", &self.began).finish()
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.stream.shutdown().await;
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.stream.id()
    }
}

/// The node's listener is plain TCP (see `server.rs`): there is no TLS to tell of.
impl Ssl for Watched {}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.stream.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.stream.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.stream.get_proxy_digest()
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.stream.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let open = AtomicUsize::new(0);
        let first = Slot::take(&open, 2).unwrap();
        let second = Slot::take(&open, 2).unwrap();
        assert!(Slot::take(&open, 2).is_none());
        drop(first);
        assert!(Slot::take(&open, 2).is_some());
        drop(second);
        assert_eq!(open.load(Ordering::Acquire), 0);
    }
}
