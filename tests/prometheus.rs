//! A real Prometheus server (Debian's `prometheus`, which scripts/test.sh installs) scrapes a
//! node that reads a real chain and serves real traffic; then every PromQL query of the README and
//! of the Grafana dashboard is asked of it through its HTTP API, and each must answer with data.

#[path = "support/chain.rs"]
mod chain;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chain::{chain_config, Chain};
use fxn_node::keys::NodeKey;
use serde_json::{json, Value};
use support::*;

/// A Prometheus server scraping the node's metrics every second; stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(metrics_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: fxn\n    static_configs: [{{targets: [\"127.0.0.1:{metrics_port}\"]}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (scripts/test.sh installs Debian's package)");
        let server = Self { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(server.url("/-/ready")).await.is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "Prometheus did not become ready:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant query; fails the test on a query Prometheus refuses.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let response = reqwest::Client::new().get(self.url("/api/v1/query")).query(&[("query", expr)]).send().await;
        let answer: Value = response.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's PromQL, one query a line (a `#` comment after each).
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme.split("```promql\n").nth(1).expect("the README has a promql block");
    let block = &block[..block.find("```").unwrap()];
    block.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split(" # ").next().unwrap().trim().to_string()).collect()
}

fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana/fxn-node.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("the dashboard has panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("each target has an expr").to_string())
        .collect()
}

#[test]
fn the_dashboard_shows_the_readmes_queries() {
    let (mut readme, mut dashboard) = (readme_queries(), dashboard_queries());
    readme.sort();
    dashboard.sort();
    assert!(readme.len() >= 10, "{readme:?}");
    assert_eq!(readme, dashboard);
}

/// Traffic of every kind the queries look at: answers and streams (with and without usage),
/// an unsigned request, a challenge.
async fn traffic(node: &Node) {
    let chat = |stream: bool, options: Option<Value>| {
        let mut body = json!({"model": "fxn/test-model", "stream": stream,
                              "messages": [{"role": "user", "content": "a few words here"}]});
        if let Some(options) = options {
            body["stream_options"] = options;
        }
        serde_json::to_vec(&body).unwrap()
    };
    let bodies = [chat(false, None), chat(true, Some(json!({"include_usage": true}))), chat(true, None)];
    for body in bodies {
        let response = gateway_post(node, "/v1/chat/completions", body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let unsigned = reqwest::Client::new().post(node.url("/v1/chat/completions")).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let product = challenge(node, json!({"type": "MATRIX_MULTIPLICATION", "payload": {"size": 4}})).await;
    assert_eq!(product.status(), 200);
}

#[tokio::test]
async fn every_documented_query_answers_from_a_real_prometheus() {
    let chain = Chain::start().await;
    let own = NodeKey::generate();
    chain.register_provider(own.address, b"node", 7).await;
    let backend = TestBackend::start_with(&["--chunks", "2", "--interval-ms", "5"]);
    let models = format!("models:\n  \"fxn/test-model\":\n    url: \"{}\"\n    fxn_id: \"7\"\n", backend.url());
    let files = NodeFiles::new(&models, &chain_config(&chain.url(), chain.router, "")).with_node_key(&own);
    let node = Node::start(files);
    let prometheus = Prometheus::start(node.files.metrics_port).await;

    // Traffic across several scrapes, so that every rate has two samples that differ.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        traffic(&node).await;
        let scrapes = prometheus.query(r#"count_over_time(up{job="fxn"}[1m])"#).await;
        let scraped = scrapes.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()).unwrap_or(0.0);
        if scraped >= 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape the node:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let up = prometheus.query(r#"up{job="fxn"}"#).await;
    assert_eq!(up[0]["value"][1], "1", "the scrape succeeds: {up:?}");

    for expr in readme_queries() {
        let result = prometheus.query(&expr).await;
        let values: Vec<f64> =
            result.iter().filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok()).collect();
        assert!(values.iter().any(|v| v.is_finite()), "{expr} answered no number: {result:?}");
    }
    // The numbers are this traffic's: the node is registered and its tokens were counted.
    assert_eq!(prometheus.query("min(fxn_node_registered)").await[0]["value"][1], "1");
    let gateway = format!("{:?}", gateway_key().address);
    let tokens = prometheus.query(&format!(r#"fxn_tokens_total{{gateway="{gateway}",kind="prompt"}}"#)).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
}
