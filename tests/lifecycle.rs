//! Stopping and upgrading the real node: SIGTERM lets a stream in flight finish, refuses new
//! connections and closes idle keep-alive ones at once; `fxn start -u` and SIGQUIT hand the
//! listening socket to a new process while the old one finishes its streams.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The nodes' grace period: longer than the streams that must finish in it, short for the suite.
const GRACE_SECONDS: u64 = 3;

fn node_for(backend: &TestBackend, grace_seconds: u64) -> Node {
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n", backend.url());
    Node::start(NodeFiles::new(&models, "").with_grace_period(grace_seconds))
}

/// A streamed chat answer being read.
struct Stream {
    response: reqwest::Response,
    text: String,
}

impl Stream {
    /// Asks for `chunks` events `interval_ms` apart and reads the first of them.
    async fn begin(node: &Node, chunks: u32, interval_ms: u64) -> Self {
        let response = gateway_post(node, "/v1/chat/completions", chat_body(200, true))
            .header("x-test-chunks", chunks.to_string())
            .header("x-test-interval-ms", interval_ms.to_string())
            .send()
            .await
            .expect("request to fxn");
        assert_eq!(response.status(), 200);
        let mut stream = Self { response, text: String::new() };
        assert!(stream.read_more().await, "the stream ended before its first event");
        stream
    }

    /// Reads what arrives next; false at the stream's end.
    async fn read_more(&mut self) -> bool {
        match self.response.chunk().await.expect("the stream is not cut") {
            Some(bytes) => {
                self.text.push_str(std::str::from_utf8(&bytes).unwrap());
                true
            }
            None => false,
        }
    }

    /// Asserts that the stream came whole: `chunks` events, then `[DONE]`.
    fn assert_complete(&self, chunks: usize) {
        assert_eq!(self.text.matches("\"chat.completion.chunk\"").count(), chunks, "{}", self.text);
        assert!(self.text.trim_end().ends_with("data: [DONE]"), "{}", self.text);
    }

    /// When the backend sent the last event (its `sent_at_us`, as [`unix_micros`] counts).
    fn last_event_sent_at(&self) -> u128 {
        let last = self.text.split("\n\n").filter(|event| event.contains("\"sent_at_us\"")).last();
        let event: serde_json::Value =
            serde_json::from_str(last.expect("an event").trim_start_matches("data: ")).unwrap();
        event["sent_at_us"].as_str().unwrap().parse().unwrap()
    }
}

#[tokio::test]
async fn sigterm_lets_a_stream_finish_refuses_new_connections_and_exits_0() {
    let backend = TestBackend::start();
    let mut node = node_for(&backend, GRACE_SECONDS);
    // Two seconds of events, inside the grace period.
    let mut stream = Stream::begin(&node, 20, 100).await;
    node.process.signal(Signal::SIGTERM);
    eventually(Duration::from_secs(2), "new connections are refused", || async {
        matches!(TcpStream::connect(node.addr).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    let refused_at = unix_micros();
    while stream.read_more().await {}
    stream.assert_complete(20);
    assert!(stream.last_event_sent_at() > refused_at, "the stream went on after the listener closed");
    let status = node.process.wait_for_exit(Duration::from_secs(GRACE_SECONDS + 5)).await;
    assert!(status.success(), "fxn exited with {status}:\n{}", node.log());
}

/// Asks for `/health` on `connection` and reads the whole answer; returns its status line.
async fn health_on(connection: &mut TcpStream) -> String {
    connection.write_all(b"GET /health HTTP/1.1\r\nHost: fxn\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut piece = [0; 1024];
    loop {
        let read = connection.read(&mut piece).await.unwrap();
        assert!(read > 0, "closed mid-answer: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&piece[..read]);
        let text = String::from_utf8_lossy(&answer);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().unwrap())
        });
        if body.len() >= length.expect("a Content-Length") {
            return head.lines().next().unwrap().to_string();
        }
    }
}

/// Why the node needs no draining `/health`: a balancer's pooled connections are closed as soon
/// as SIGTERM arrives, so it cannot go on sending requests to a node that is stopping.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_unasked() {
    let backend = TestBackend::start();
    let mut node = node_for(&backend, GRACE_SECONDS);
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut connection = TcpStream::connect(node.addr).await.unwrap();
        // A second answer on the same connection: it is kept alive.
        for _ in 0..2 {
            assert_eq!(health_on(&mut connection).await, "HTTP/1.1 200 OK");
        }
        idle.push(connection);
    }
    let signalled = Instant::now();
    node.process.signal(Signal::SIGTERM);
    for mut connection in idle {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), connection.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "an idle connection was not closed within 1 s: {read:?}");
    }
    let closed_after = signalled.elapsed();
    let status = node.process.wait_for_exit(Duration::from_secs(GRACE_SECONDS + 5)).await;
    assert!(status.success(), "fxn exited with {status}:\n{}", node.log());
    // The process itself lived on through its grace period: the node closed them, not its exit.
    assert!(signalled.elapsed() >= Duration::from_secs(GRACE_SECONDS), "closed after {closed_after:?}");
}

/// The request ids of the request log lines in `log`.
fn request_ids(log: &str) -> HashSet<String> {
    log.lines()
        .filter(|line| line.contains(" signer="))
        .filter_map(|line| log_field(line, "request_id"))
        .map(str::to_owned)
        .collect()
}

/// Sends a chat request every 50 ms, each on a connection of its own, until `stop` is set; returns
/// each request's id and its status or error.
async fn probe_until(url: &str, stop: &AtomicBool) -> Vec<(String, Result<u16, String>)> {
    let mut probes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let id = format!("probe-{}", probes.len());
        let request = signed_post(&gateway_key(), url.to_string(), chat_body(200, false));
        let response = request.header("x-request-id", &id).send().await;
        probes.push((id, response.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probes
}

#[tokio::test]
async fn upgrade_hands_over_the_listener_while_the_old_process_finishes_its_stream() {
    let backend = TestBackend::start();
    // Seven seconds of events: past the 5 s the old process keeps accepting after the handover,
    // into its grace period, which leaves them 2 s to spare on either side.
    let mut old = node_for(&backend, GRACE_SECONDS + 1);
    let mut stream = Stream::begin(&old, 70, 100).await;
    let stop = AtomicBool::new(false);
    let url = old.url("/v1/chat/completions");
    let upgrade = async {
        let new = old.start_upgrade();
        let upgrade_sock = old.files.path("upgrade.sock");
        eventually(Duration::from_secs(10), "the new process waits on upgrade_sock", || async {
            upgrade_sock.exists()
        })
        .await;
        old.process.signal(Signal::SIGQUIT);
        eventually(Duration::from_secs(10), "the new process answers requests", || async {
            request_ids(&new.log()).iter().any(|id| id.starts_with("probe-"))
        })
        .await;
        // The stream goes on in the old process after it stopped accepting.
        let mut shutdown_seen_at = None;
        while stream.read_more().await {
            if shutdown_seen_at.is_none() && old.log().contains("Graceful shutdown: grace period") {
                shutdown_seen_at = Some(unix_micros());
            }
        }
        stream.assert_complete(70);
        let shutdown_seen_at = shutdown_seen_at.expect("the old process began its grace period during the stream");
        assert!(stream.last_event_sent_at() > shutdown_seen_at);
        let status = old.process.wait_for_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "the old fxn exited with {status}:\n{}", old.log());
        stop.store(true, Ordering::Relaxed);
        new
    };
    let (probes, new) = tokio::join!(probe_until(&url, &stop), upgrade);

    let refused: Vec<_> = probes.iter().filter(|(_, answer)| answer != &Ok(200)).collect();
    assert!(
        refused.is_empty(),
        "{} of {} requests failed across the handover: {refused:?}",
        refused.len(),
        probes.len()
    );
    let after = signed_post(&gateway_key(), url, chat_body(200, false)).header("x-request-id", "after-exit");
    assert_eq!(after.send().await.unwrap().status(), 200);
    // Each request is logged once it is done, a moment after its caller has the answer.
    eventually(Duration::from_secs(5), "every request is logged", || async {
        let logged: HashSet<String> = request_ids(&old.log()).union(&request_ids(&new.log())).cloned().collect();
        logged.contains("after-exit") && probes.iter().all(|(id, _)| logged.contains(id))
    })
    .await;
    let (by_old, by_new) = (request_ids(&old.log()), request_ids(&new.log()));
    assert!(by_old.is_disjoint(&by_new), "a request logged by both: {:?}", by_old.intersection(&by_new));
    assert!(by_old.contains("probe-0"), "the old process answered before the handover");
    assert!(by_new.contains("after-exit"), "the new process answers once the old one is gone");
    // The metrics listener was handed over with the proxy's.
    scrape(&old).await;
    // `fxn reload` and the next upgrade find the new process.
    let pid_file = std::fs::read_to_string(old.files.path("fxn.pid")).unwrap();
    assert_eq!(pid_file.trim(), new.pid().to_string());
}
