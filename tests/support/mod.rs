//! Starts the real `fxn` binary and the real test backend on ephemeral loopback ports, and
//! stops them when dropped.

#![allow(dead_code)] // each test binary uses a different part of the support code

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const FXN: &str = env!("CARGO_BIN_EXE_fxn");

/// The test backend, a crate of its own (`tests/backend`), built beside `fxn` by `scripts/test.sh`.
pub fn test_backend_binary() -> PathBuf {
    let binary = Path::new(FXN).with_file_name("fxn-test-backend");
    assert!(binary.exists(), "{} is missing: build it with `cargo build -p fxn-test-backend`", binary.display());
    binary
}

pub struct TestBackend {
    pub addr: SocketAddr,
    child: Child,
}

impl TestBackend {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(test_backend_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the backend's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected backend banner: {line:?}"));
        Self { addr, child }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/stats", self.url())).await.expect("backend stats").json().await.expect("stats JSON")
    }

    /// Requests the backend has received, answered or not.
    pub async fn requests(&self) -> u64 {
        self.stats().await["requests"].as_u64().expect("stats.requests")
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pingora's retry buffer: bodies up to it are forwarded by Pingora's proxy loop, larger ones by
/// the node's relay.
pub const RETRY_BUFFER: usize = 64 * 1024;

/// A body size for each forwarding path.
pub const BOTH_PATHS: [usize; 2] = [512, RETRY_BUFFER + 1];

/// A port nothing listens on right now (another process may take it before it is bound:
/// `Node::start` picks again when that happens).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The node key file's name in [`NodeFiles`]'s directory.
const NODE_KEY_FILE: &str = "node_key.json";
/// Lines for config.yaml's `node` section, kept beside it (see [`NodeFiles::with_node_settings`]).
const NODE_SETTINGS_FILE: &str = "node_settings.yaml";
/// Lines for config.yaml's `metrics` section, kept beside it (see [`NodeFiles::with_metrics_settings`]).
const METRICS_SETTINGS_FILE: &str = "metrics_settings.yaml";
/// config.yaml's `logger.format`, kept beside it (see [`NodeFiles::with_log_format`]).
const LOG_FORMAT_FILE: &str = "log_format";

/// The Pingora conf's line unless [`NodeFiles::with_grace_period`] sets another.
const NO_GRACE_PERIOD: &str = "grace_period_seconds: 0\n";

/// The node's three files in a temporary directory.
pub struct NodeFiles {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Where the node serves its metrics.
    pub metrics_port: u16,
}

impl NodeFiles {
    /// `config_extra` is appended to a config.yaml that ends in the `registry` section (its
    /// indented lines continue it).
    pub fn new(model_backend: &str, config_extra: &str) -> Self {
        Self::with_threads(model_backend, config_extra, 1)
    }

    /// [`Self::new`] with `threads` Pingora worker threads.
    pub fn with_threads(model_backend: &str, config_extra: &str, threads: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_backend.yaml"), model_backend).unwrap();
        std::fs::write(dir.path().join("config_extra.yaml"), config_extra).unwrap();
        let conf = format!(
            "version: 1\nthreads: {threads}\npid_file: {0}/fxn.pid\nupgrade_sock: {0}/upgrade.sock\n\
             {NO_GRACE_PERIOD}graceful_shutdown_timeout_seconds: 1\nupstream_keepalive_pool_size: 16\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("fxn.yaml"), conf).unwrap();
        let mut files = Self { dir, port: 0, metrics_port: 0 };
        files.pick_port();
        files
    }

    /// Sets the Pingora conf's `grace_period_seconds`, the time a stopping node gives the requests
    /// in flight (none by default, so that tests which stop nodes do not wait).
    pub fn with_grace_period(self, seconds: u64) -> Self {
        let conf = std::fs::read_to_string(self.path("fxn.yaml")).unwrap();
        assert!(conf.contains(NO_GRACE_PERIOD), "the grace period is set once");
        let conf = conf.replace(NO_GRACE_PERIOD, &format!("grace_period_seconds: {seconds}\n"));
        std::fs::write(self.path("fxn.yaml"), conf).unwrap();
        self
    }

    /// Writes `key` as the node's own key file and config.yaml naming it.
    pub fn with_node_key(mut self, key: &fxn_node::keys::NodeKey) -> Self {
        key.write(&self.path(NODE_KEY_FILE), false).unwrap();
        self.pick_port();
        self
    }

    /// Adds `lines` (YAML, each indented two spaces) to config.yaml's `node` section.
    pub fn with_node_settings(self, lines: &str) -> Self {
        self.with_file(NODE_SETTINGS_FILE, lines)
    }

    /// Adds `lines` (YAML, each indented two spaces) to config.yaml's `metrics` section.
    pub fn with_metrics_settings(self, lines: &str) -> Self {
        self.with_file(METRICS_SETTINGS_FILE, lines)
    }

    /// Sets config.yaml's `logger.format`.
    pub fn with_log_format(self, format: &str) -> Self {
        self.with_file(LOG_FORMAT_FILE, format)
    }

    /// Keeps `text` beside config.yaml, which is written again with it.
    fn with_file(mut self, name: &str, text: &str) -> Self {
        std::fs::write(self.path(name), text).unwrap();
        self.pick_port();
        self
    }

    /// Writes config.yaml listening on a port free right now.
    fn pick_port(&mut self) {
        self.port = free_port();
        let config_extra = std::fs::read_to_string(self.path("config_extra.yaml")).unwrap();
        // A key file the test wrote is the node's own (node.keyFile).
        let key_file = self.path(NODE_KEY_FILE);
        let key_file =
            if key_file.exists() { format!("  keyFile: \"{}\"\n", key_file.display()) } else { String::new() };
        let node_settings = std::fs::read_to_string(self.path(NODE_SETTINGS_FILE)).unwrap_or_default();
        let metrics_settings = std::fs::read_to_string(self.path(METRICS_SETTINGS_FILE)).unwrap_or_default();
        self.metrics_port = free_port();
        let log_format = std::fs::read_to_string(self.path(LOG_FORMAT_FILE)).unwrap_or_else(|_| "text".into());
        let config = format!(
            "node:\n  listenAddress: \"127.0.0.1\"\n  listenPort: {}\n{key_file}{node_settings}logger:\n  verbosity: debug\n  format: {log_format}\n\
             metrics:\n  listenAddress: \"127.0.0.1:{}\"\n{metrics_settings}\
             registry:\n  static:\n    gateways: [\"{:?}\", \"{:?}\"]\n    schedulers: [\"{:?}\"]\n{config_extra}",
            self.port,
            self.metrics_port,
            gateway_key().address,
            second_gateway_key().address,
            scheduler_key().address,
        );
        std::fs::write(self.path("config.yaml"), config).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file_args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.path("config.yaml").display().to_string(),
            "--model-backend".into(),
            self.path("model_backend.yaml").display().to_string(),
            "-c".into(),
            self.path("fxn.yaml").display().to_string(),
        ]
    }
}

/// Whether a node at `addr` answers `GET /health`.
pub fn answers_health(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n").is_err() {
        return false;
    }
    // The node's own answer, `200` with the body `OK`: while the node still waits for its port,
    // the process that holds it (another test node's metrics listener, which answers any path)
    // may answer 200 too.
    let mut answer = Vec::new();
    let mut piece = [0; 1024];
    while answer.len() < 4096 && !answer.ends_with(b"\r\n\r\nOK") {
        match stream.read(&mut piece) {
            Ok(0) | Err(_) => return false,
            Ok(read) => answer.extend_from_slice(&piece[..read]),
        }
    }
    answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"\r\n\r\nOK")
}

/// What Pingora logs while its listening port is taken (it tries again a few times).
const PORT_IN_USE: &str = " is in use, will try again";

pub struct Node {
    pub addr: SocketAddr,
    /// Declared before `files`, so that the node is stopped before its directory is removed.
    pub process: FxnProcess,
    pub files: NodeFiles,
}

impl Node {
    /// Starts `fxn` serving every model in `models` from `backend_url`.
    pub fn start_for(backend_url: &str, config_extra: &str) -> Self {
        let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{backend_url}\"\n");
        Self::start(NodeFiles::new(&models, config_extra))
    }

    pub fn start(files: NodeFiles) -> Self {
        Self::start_with(files, || Command::new(FXN))
    }

    /// Starts the node with `name` set to `value` in its environment.
    pub fn start_with_env(files: NodeFiles, name: &'static str, value: String) -> Self {
        Self::start_with(files, move || {
            let mut command = Command::new(FXN);
            command.env(name, &value);
            command
        })
    }

    /// Starts the node with the soft open-file limit lowered to `soft` (the hard one kept).
    pub fn start_with_soft_fd_limit(files: NodeFiles, soft: u64) -> Self {
        use std::os::unix::process::CommandExt;
        Self::start_with(files, || {
            let mut command = Command::new(FXN);
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
                    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard)
                });
            }
            command
        })
    }

    fn start_with(mut files: NodeFiles, command: impl Fn() -> Command) -> Self {
        for _ in 0..5 {
            let process = FxnProcess::spawn(command(), &files, &[], files.path("fxn.log"));
            let addr: SocketAddr = ([127, 0, 0, 1], files.port).into();
            let mut node = Self { addr, process, files };
            match node.wait_until_serving() {
                Ok(()) => return node,
                // Another process took the port between `free_port` and the node's bind.
                Err(log) if log.contains(PORT_IN_USE) => {
                    files = node.take_files();
                    files.pick_port();
                }
                Err(log) => panic!("{log}"),
            }
        }
        panic!("fxn found no free port in 5 tries");
    }

    fn wait_until_serving(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                return Err(format!("fxn exited with {status}:\n{}", self.log()));
            }
            if self.log().contains(PORT_IN_USE) {
                return Err(self.log());
            }
            // Asked for its health, since whoever took the port may accept connections too.
            if answers_health(self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("fxn did not start listening:\n{}", self.log()))
    }

    /// Stops this node and hands back its files, for a start on another port.
    fn take_files(self) -> NodeFiles {
        let Self { process, files, .. } = self;
        drop(process);
        files
    }

    /// Starts a second `fxn` on this node's files with `-u`: it waits on the conf's `upgrade_sock`
    /// for the listening sockets, which this one sends there once it gets SIGQUIT. Its output goes
    /// to `fxn-upgrade.log` beside this one's.
    pub fn start_upgrade(&self) -> FxnProcess {
        FxnProcess::spawn(Command::new(FXN), &self.files, &["-u"], self.files.path("fxn-upgrade.log"))
    }

    /// The log lines of finished requests to `path` (Pingora writes each once the response is done),
    /// waiting up to 5 s for at least `count` of them.
    pub fn request_log_lines(&self, path: &str, count: usize) -> Vec<String> {
        let prefix = format!(" {path} signer=");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // A failed request's line is repeated at debug with the whole error; the first says it all.
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(&prefix) && !l.contains(" DEBUG "))
                .map(str::to_owned)
                .collect();
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The file descriptors the node holds open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("the node's /proc entry").count()
    }

    /// The node's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("the node's /proc entry");
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in KiB")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// One `fxn start` process, its output in a file; killed when dropped.
pub struct FxnProcess {
    child: Child,
    log: PathBuf,
}

impl FxnProcess {
    /// Runs `command` as `start` on `files` with `flags`, its output to `log`.
    fn spawn(mut command: Command, files: &NodeFiles, flags: &[&str], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .arg("start")
            .args(files.file_args())
            .args(flags)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start fxn");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to fxn (pid {pid}): {e}"));
    }

    /// Waits up to `within` for the process to exit by itself, polling.
    pub async fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for fxn") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fxn (pid {}) did not exit within {within:?}:\n{}",
                self.pid(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FxnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateways and the scheduler the test nodes trust.
pub fn gateway_key() -> fxn_node::keys::NodeKey {
    fxn_node::keys::NodeKey::from_private_key_hex(&"11".repeat(32)).unwrap()
}

/// Another gateway the test nodes trust, whose limits are apart from the first's.
pub fn second_gateway_key() -> fxn_node::keys::NodeKey {
    fxn_node::keys::NodeKey::from_private_key_hex(&"44".repeat(32)).unwrap()
}

pub fn scheduler_key() -> fxn_node::keys::NodeKey {
    fxn_node::keys::NodeKey::from_private_key_hex(&"22".repeat(32)).unwrap()
}

pub fn now_unix() -> i64 {
    (unix_micros() / 1_000_000) as i64
}

/// A request signed by `key` with a fresh nonce.
pub fn signed_request(
    key: &fxn_node::keys::NodeKey,
    method: reqwest::Method,
    url: String,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let nonce = format!("{:016x}", rand::random::<u64>());
    let headers = fxn_node::auth::sign_request(&key.signing_key, &body, now_unix(), &nonce, false).unwrap();
    reqwest::Client::new().request(method, url).header("content-type", "application/json").headers(headers).body(body)
}

pub fn signed_post(key: &fxn_node::keys::NodeKey, url: String, body: Vec<u8>) -> reqwest::RequestBuilder {
    signed_request(key, reqwest::Method::POST, url, body)
}

/// A challenge sent to `node` as the trusted scheduler sends it.
pub async fn challenge(node: &Node, body: serde_json::Value) -> reqwest::Response {
    signed_post(&scheduler_key(), node.url("/challenge"), body.to_string().into_bytes())
        .send()
        .await
        .expect("request to fxn")
}

/// A POST to `node` signed by the trusted gateway.
pub fn gateway_post(node: &Node, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    signed_post(&gateway_key(), node.url(path), body)
}

/// Sends a chat request with `fault` (the test backend's `x-test-fault`, or none when empty).
pub async fn chat_with_fault(node: &Node, fault: &str, size: usize, stream: bool) -> reqwest::Response {
    let request = gateway_post(node, "/v1/chat/completions", chat_body(size, stream));
    let request = if fault.is_empty() { request } else { request.header("x-test-fault", fault) };
    request.send().await.expect("request to fxn")
}

/// The status and the `error` object of one of the node's OpenAI-shaped error answers.
pub async fn api_error(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("an OpenAI-style JSON error");
    (status, body["error"].clone())
}

/// The status and `code` of one of the node's error answers.
pub async fn error_code(response: reqwest::Response) -> (u16, String) {
    let (status, error) = api_error(response).await;
    (status, error["code"].as_str().unwrap_or_default().to_string())
}

/// The value of `field=` in a log line.
pub fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let key = format!(" {field}=");
    let start = line.find(&key)? + key.len();
    line[start..].split(' ').next()
}

/// Runs `fxn` with `args` to completion: (exit code, stdout, stderr).
/// A run that has not exited after 30 s fails the test (a command that should exit at once, such as
/// `start -t`, must not hang the suite if it would serve instead).
pub fn run_fxn(args: &[&str], cwd: &Path) -> (i32, String, String) {
    use std::io::Read;
    let mut child = Command::new(FXN)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fxn");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fxn") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fxn {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), stdout.join().unwrap(), stderr.join().unwrap())
}

/// Runs `tests/python/ARGS[0]` with the rest of `args`, returning its standard output.
pub fn python(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(args[0]);
    let output = Command::new("python3")
        .arg(script)
        .args(&args[1..])
        .output()
        .expect("python3 (scripts/test.sh installs what these tests need)");
    assert!(
        output.status.success(),
        "python {args:?} failed (scripts/test.sh installs eth-account and openai):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A JSON chat request for the test model, padded to exactly `size` bytes.
pub fn chat_body(size: usize, stream: bool) -> Vec<u8> {
    let head = format!(r#"{{"model":"fxn/test-model","stream":{stream},"messages":[{{"role":"user","content":""#);
    let tail = r#""}]}"#;
    assert!(size >= head.len() + tail.len(), "body too small for its JSON");
    let mut body = head.into_bytes();
    // A repeating, non-uniform pattern so a dropped or reordered chunk changes the hash.
    let pad = size - body.len() - tail.len();
    body.extend((0..pad).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + i / 36) % 36]));
    body.extend_from_slice(tail.as_bytes());
    body
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Wall-clock microseconds since the epoch, comparable with the backend's `sent_at_us`.
pub fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
}

/// A real `redis-server` on a loopback port, without persistence; stopped when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// The certificate of a server that speaks TLS only.
    tls_cert: Option<PathBuf>,
    /// Its working directory, never the tests': where a replica writes the copy it gets of its
    /// master's data, a cluster node its state, a Sentinel its conf; and TLS files.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts it on `port` (again, after [`Self::stop`]), waiting until it answers.
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, &[], None, None)
    }

    /// A replica of `master`, which a Sentinel can promote.
    pub fn start_replica_of(master: &RedisServer) -> Self {
        Self::spawn(free_port(), &["--replicaof", "127.0.0.1", &master.port.to_string()], None, None)
    }

    /// A Sentinel that watches `master` under the name `fxn` and fails it over alone (quorum 1)
    /// 300 ms after it stops answering; returned once it knows `replica`, its failover target.
    pub fn start_sentinel_of(master: &RedisServer, replica: &RedisServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        let monitor = format!(
            "sentinel monitor fxn 127.0.0.1 {} 1\nsentinel down-after-milliseconds fxn 300\n\
             sentinel failover-timeout fxn 2000\n",
            master.port
        );
        std::fs::write(&conf, monitor).unwrap();
        let conf = conf.display().to_string();
        let sentinel = Self::spawn(free_port(), &[&conf, "--sentinel"], Some(dir), None);
        let replica_address = format!("127.0.0.1:{}", replica.port);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sentinel.cli(&["SENTINEL", "REPLICAS", "fxn"]).contains(&replica_address) {
            assert!(Instant::now() < deadline, "the Sentinel did not learn of the replica {replica_address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    /// A Redis Cluster of one node that holds every slot.
    pub fn start_cluster() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes = dir.path().join("nodes.conf").display().to_string();
        let cluster = ["--cluster-enabled", "yes", "--cluster-config-file", &nodes];
        let server = Self::spawn(free_port(), &cluster, Some(dir), None);
        assert_eq!(server.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]), "OK");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the one-node cluster did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A server that speaks TLS only, with a self-signed certificate for `localhost`, returned
    /// with the path of its PEM.
    pub fn start_tls() -> (Self, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certificate.cert.pem()).unwrap();
        std::fs::write(&key, certificate.key_pair.serialize_pem()).unwrap();
        let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
        let tls = ["--tls-cert-file", &cert_arg, "--tls-key-file", &key_arg, "--tls-ca-cert-file", &cert_arg];
        let server =
            Self::spawn(free_port(), &[&tls[..], &["--tls-auth-clients", "no"]].concat(), Some(dir), Some(&cert));
        (server, cert)
    }

    /// `extra` may begin with a config file and `--sentinel`, which redis-server reads first.
    fn spawn(port: u16, extra: &[&str], dir: Option<tempfile::TempDir>, tls_cert: Option<&Path>) -> Self {
        let port_text = port.to_string();
        let ports = match tls_cert {
            Some(_) => ["--port", "0", "--tls-port", &port_text],
            None => ["--port", &port_text, "--tls-port", "0"],
        };
        let (leading, options) = match extra {
            [_, "--sentinel", rest @ ..] => (&extra[..2], rest),
            _ => (&[][..], extra),
        };
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let child = Command::new("redis-server")
            .args(leading)
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(options)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let server = Self { port, child: Some(child), tls_cert: tls_cert.map(Path::to_path_buf), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What `redis-cli` prints for `args`, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(cert) = &self.tls_cert {
            command.args(["--tls", "--cacert"]).arg(cert);
        }
        let output = command.args(args).output();
        output.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One scrape of the node's metrics listener, parsed.
pub async fn scrape(node: &Node) -> prometheus_parse::Scrape {
    let url = format!("http://127.0.0.1:{}/metrics", node.files.metrics_port);
    let text = reqwest::get(url).await.expect("the metrics listener answers").text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format")
}

/// The value of the sample `name` whose labels include every pair of `labels` (a histogram's
/// `_count`, a counter's or gauge's value); 0 when there is none.
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: std::collections::HashMap<&str, &str> = labels.iter().copied().collect();
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| wanted.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
        .map(|sample| match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .sum()
}

/// Waits up to `within` for `check` to hold, polling.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scrapes until `done` holds: a request is counted once its answer is out, a moment after the
/// caller has read it.
pub async fn scrape_until(node: &Node, done: impl Fn(&prometheus_parse::Scrape) -> bool) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(node).await;
        if done(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A listener whose accept queue is full: the kernel drops further handshakes, so connecting to
/// it hangs as it would to a host that is down. It stays so while this value lives.
pub struct UnansweredListener {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

impl UnansweredListener {
    pub fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            queued.push(stream);
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        Self { addr, _listener: listener, _queued: queued }
    }
}

/// A caller's connection to the node, written and read as raw bytes, for what HTTP clients
/// will not send.
pub struct RawConnection {
    pub stream: std::net::TcpStream,
    /// Bytes read and not yet taken as a response.
    received: Vec<u8>,
}

/// One response read off a [`RawConnection`].
pub struct RawResponse {
    pub status: u16,
    /// The status line and headers, lower-cased.
    pub head: String,
    /// The body as sent (a chunked one with its framing).
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.head.lines().find_map(|line| line.strip_prefix(&prefix)).map(str::trim)
    }

    /// The `code` of one of the node's OpenAI-shaped errors.
    pub fn error_code(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not a JSON error: {}\n{}", self.head, String::from_utf8_lossy(&self.body)));
        body["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

impl RawConnection {
    pub fn open(addr: SocketAddr) -> Self {
        Self::on(std::net::TcpStream::connect(addr).unwrap())
    }

    /// On a connection already open (a clone of another's, to write from a thread of its own).
    pub fn on(stream: std::net::TcpStream) -> Self {
        // A test that waits longer than this for the node is stuck.
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { stream, received: Vec::new() }
    }

    /// Writes `bytes`; an error means the node closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(bytes)
    }

    /// Reads more; `false` when the node closed (or reset) the connection.
    fn read_more(&mut self) -> bool {
        use std::io::Read;
        let mut buffer = [0; 16384];
        match self.stream.read(&mut buffer) {
            Ok(0) => false,
            Ok(read) => {
                self.received.extend_from_slice(&buffer[..read]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the node sent nothing for 30 s")
            }
            Err(_) => false,
        }
    }

    /// The next response, or `None` when the node closes the connection before one is whole.
    pub fn response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(end) = self.received.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if !self.read_more() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.received[..head_end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line: {head}"));
        let mut response = RawResponse { status, head, body: Vec::new() };
        let body_end = if response.header("transfer-encoding") == Some("chunked") {
            loop {
                if let Some(end) = self.received[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                    break head_end + end + 5;
                }
                if !self.read_more() {
                    return None;
                }
            }
        } else {
            let length: usize = response.header("content-length").map_or(0, |v| v.parse().unwrap());
            while self.received.len() < head_end + length {
                if !self.read_more() {
                    return None;
                }
            }
            head_end + length
        };
        response.body = self.received[head_end..body_end].to_vec();
        self.received.drain(..body_end);
        Some(response)
    }

    /// Whether the node closes the connection within `within`, reading and dropping anything
    /// it sends meanwhile.
    pub fn closes_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let closed = loop {
            use std::io::Read;
            let mut buffer = [0; 4096];
            match self.stream.read(&mut buffer) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        closed
    }
}

/// The signing headers of `body` by the trusted gateway, as header lines ending in CRLF.
pub fn signing_lines(body: &[u8]) -> String {
    let nonce = format!("{:016x}", rand::random::<u64>());
    let headers = fxn_node::auth::sign_request(&gateway_key().signing_key, body, now_unix(), &nonce, false).unwrap();
    headers.iter().map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap())).collect()
}

/// A signed request for `path` with `body`, framed by its `Content-Length`.
pub fn signed_raw_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: n\r\nContent-Length: {}\r\n{}\r\n", body.len(), signing_lines(body))
            .into_bytes();
    request.extend_from_slice(body);
    request
}

/// `body` in chunks of `size` bytes, with the last chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut framed = Vec::new();
    for piece in body.chunks(size) {
        framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    framed
}
