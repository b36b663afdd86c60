//! Starts the real `fxn` binary and the real test backend on ephemeral loopback ports, and
//! stops them when dropped.

#![allow(dead_code)] // each test binary uses a different part of the support code

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const FXN: &str = env!("CARGO_BIN_EXE_fxn");
pub const TEST_BACKEND: &str = env!("CARGO_BIN_EXE_fxn-test-backend");

pub struct TestBackend {
    pub addr: SocketAddr,
    child: Child,
}

impl TestBackend {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(TEST_BACKEND)
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
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The node's three files in a temporary directory.
pub struct NodeFiles {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl NodeFiles {
    /// `config_extra` is appended to a config.yaml that sets only `node`.
    pub fn new(model_backend: &str, config_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "node:\n  listenAddress: \"127.0.0.1\"\n  listenPort: {port}\nlogger:\n  verbosity: debug\n\
             registry:\n  static:\n    gateways: [\"{:?}\"]\n    schedulers: [\"{:?}\"]\n{config_extra}",
            gateway_key().address,
            scheduler_key().address,
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        std::fs::write(dir.path().join("model_backend.yaml"), model_backend).unwrap();
        let conf = format!(
            "version: 1\nthreads: 1\npid_file: {0}/fxn.pid\nupgrade_sock: {0}/upgrade.sock\n\
             grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\nupstream_keepalive_pool_size: 16\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("fxn.yaml"), conf).unwrap();
        Self { dir, port }
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

pub struct Node {
    pub addr: SocketAddr,
    pub files: NodeFiles,
    child: Child,
}

impl Node {
    /// Starts `fxn` serving every model in `models` from `backend_url`.
    pub fn start_for(backend_url: &str, config_extra: &str) -> Self {
        let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{backend_url}\"\n");
        Self::start(NodeFiles::new(&models, config_extra))
    }

    pub fn start(files: NodeFiles) -> Self {
        Self::start_with(files, Command::new(FXN))
    }

    /// Starts the node with the soft open-file limit lowered to `soft` (the hard one kept).
    pub fn start_with_soft_fd_limit(files: NodeFiles, soft: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(FXN);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
                rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard)
            });
        }
        Self::start_with(files, command)
    }

    fn start_with(files: NodeFiles, mut command: Command) -> Self {
        let log = std::fs::File::create(files.path("fxn.log")).unwrap();
        let child = command
            .arg("start")
            .args(files.file_args())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start fxn");
        let addr: SocketAddr = ([127, 0, 0, 1], files.port).into();
        let mut node = Self { addr, files, child };
        node.wait_until_serving();
        node
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fxn exited with {status}:\n{}", self.log());
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fxn did not start listening:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files.path("fxn.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway and scheduler the test nodes trust.
pub fn gateway_key() -> fxn_node::keys::NodeKey {
    fxn_node::keys::NodeKey::from_private_key_hex(&"11".repeat(32)).unwrap()
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
    let mut request = reqwest::Client::new().request(method, url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.body(body)
}

pub fn signed_post(key: &fxn_node::keys::NodeKey, url: String, body: Vec<u8>) -> reqwest::RequestBuilder {
    signed_request(key, reqwest::Method::POST, url, body)
}

/// A POST to `node` signed by the trusted gateway.
pub fn gateway_post(node: &Node, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    signed_post(&gateway_key(), node.url(path), body)
}

/// Runs `fxn` with `args` to completion: (exit code, stdout, stderr).
pub fn run_fxn(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let output = Command::new(FXN).args(args).current_dir(cwd).output().expect("run fxn");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
