//! `fxn init` as an operator's first command, and the packaging files (systemd unit, Dockerfile,
//! compose file) checked against the binary and the files `fxn init` writes, so they cannot rot.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fxn_node::keys::NodeKey;
use support::*;

const FILES: [&str; 4] = ["config.yaml", "model_backend.yaml", "conf/fxn.yaml", "node_key.json"];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn repository_file(name: &str) -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
}

/// `fxn init` with `args`, run in `cwd`: its standard output, after checking it succeeded.
fn init(args: &[&str], cwd: &Path) -> String {
    let (code, stdout, stderr) = run_fxn(&[&["init"][..], args].concat(), cwd);
    assert_eq!(code, 0, "fxn init {args:?}: {stderr}");
    stdout
}

/// The address `fxn init` printed.
fn printed_address(stdout: &str) -> &str {
    let line = stdout.lines().find_map(|l| l.strip_prefix("node address: ")).unwrap_or_else(|| panic!("{stdout}"));
    line.trim()
}

/// Every file under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
                files.insert(path.clone(), (std::fs::read(&path).unwrap(), modified));
            }
        }
    }
    files
}

/// Replaces `from` with `to` in `path`, which must hold it.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`:\n{text}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// `fxn start` with no flags in a directory, as the files' default paths have it; killed when dropped.
struct StartedIn {
    child: Child,
    log: PathBuf,
}

impl StartedIn {
    /// Starts the node on the files of `dir` once its ports are moved to free ones, and waits for
    /// `/health` to answer.
    fn dir(dir: &Path) -> (Self, std::net::SocketAddr) {
        edit(&dir.join("conf/fxn.yaml"), "/tmp/fxn", &format!("{}/fxn", dir.display()));
        let (mut port, mut metrics_port) = (8080, 9100);
        for _ in 0..5 {
            let (new_port, new_metrics_port) = (free_port(), free_port());
            edit(&dir.join("config.yaml"), &format!("listenPort: {port}"), &format!("listenPort: {new_port}"));
            edit(&dir.join("config.yaml"), &format!(":{metrics_port}\""), &format!(":{new_metrics_port}\""));
            (port, metrics_port) = (new_port, new_metrics_port);
            let log = dir.join("fxn.log");
            let output = std::fs::File::create(&log).unwrap();
            let child = Command::new(FXN)
                .arg("start")
                .current_dir(dir)
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .stdin(Stdio::null())
                .spawn()
                .expect("start fxn");
            let mut node = Self { child, log };
            let addr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if answers_health(addr) {
                    return (node, addr);
                }
                if node.child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            // Another process took a port between `free_port` and the node's bind: pick again.
            assert!(log.contains(" is in use"), "fxn did not serve /health:\n{log}");
        }
        panic!("fxn found no free port in 5 tries");
    }
}

impl Drop for StartedIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn init_in_an_empty_folder_then_start_serves_health() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = init(&[], dir.path());
    assert!(stdout.starts_with("wrote config.yaml, model_backend.yaml, conf/fxn.yaml, node_key.json in "), "{stdout}");
    assert!(stdout.contains("fxn config check && fxn start"), "the next commands: {stdout}");
    let (code, checked, stderr) = run_fxn(&["config", "check"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(checked.starts_with("ok:"), "{checked}");

    let (node, addr) = StartedIn::dir(dir.path());
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains(&format!("node address {}", printed_address(&stdout))), "{log}");
    assert!(!log.contains("TRUSTING A PUBLIC TEST KEY"), "{log}");
    assert!(answers_health(addr));
}

#[test]
fn second_init_changes_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let first = init(&["--dir", "node"], dir.path());
    let before = snapshot(dir.path());
    assert_eq!(before.len(), FILES.len(), "{before:?}");
    let second = init(&["--dir", "node"], dir.path());
    assert!(
        second.starts_with("nothing changed: ")
            && second
                .lines()
                .next()
                .unwrap()
                .ends_with(" has config.yaml, model_backend.yaml, conf/fxn.yaml, node_key.json already"),
        "{second}"
    );
    assert_eq!(printed_address(&second), printed_address(&first));
    assert!(snapshot(dir.path()) == before, "a second fxn init changed a file");

    // A folder with some of them gets the rest, and those it has are kept as they are.
    let partial = dir.path().join("partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("model_backend.yaml"), "models:\n  m: {url: \"http://127.0.0.1:9\"}\n").unwrap();
    let stdout = init(&["--dir", partial.to_str().unwrap()], dir.path());
    assert!(stdout.starts_with("wrote config.yaml, conf/fxn.yaml, node_key.json in "), "{stdout}");
    assert!(stdout.contains("\nkept as they were: model_backend.yaml\n"), "{stdout}");
    assert!(std::fs::read_to_string(partial.join("model_backend.yaml")).unwrap().contains("127.0.0.1:9"));
}

#[test]
fn init_key_is_private_loads_and_is_the_one_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = init(&["--dir", "a/b"], dir.path());
    let node_dir = dir.path().join("a/b").canonicalize().unwrap();
    let key_path = node_dir.join("node_key.json");
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let key = NodeKey::load(&key_path).unwrap();
    assert_eq!(key.checksummed_address(), printed_address(&stdout));
    let config: serde_yaml::Value = serde_yaml::from_str(&read(&node_dir.join("config.yaml"))).unwrap();
    assert_eq!(config["node"]["keyFile"].as_str(), Some(key_path.to_str().unwrap()));

    // Another folder, another key.
    let other = init(&["--dir", "c"], dir.path());
    assert_ne!(printed_address(&other), printed_address(&stdout));
}

#[test]
fn init_refuses_a_bad_backend_url_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_fxn(&["init", "--backend-url", "ftp://x"], dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("models.default.url"), "{stderr}");
    assert!(!dir.path().join("config.yaml").exists() && !dir.path().join("node_key.json").exists());
}

/// Where the README's install steps put the binary, and the files' folder.
const INSTALLED_FXN: &str = "/usr/local/bin/fxn";
const ETC_FXN: &str = "/etc/fxn";

/// Runs `fxn` with `args` and `--help`: clap prints the help, exit 0, only when every argument
/// before it is one the command takes.
fn assert_flags_exist(args: &[&str], whence: &str) {
    let (code, _, stderr) = run_fxn(&[args, &["--help"][..]].concat(), Path::new("."));
    assert_eq!(code, 0, "{whence}: fxn does not take {args:?}: {stderr}");
}

/// The values of `key=` lines in the unit file.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

#[test]
fn systemd_unit_runs_the_files_init_writes_with_flags_fxn_takes() {
    let unit = repository_file("packaging/fxn.service");
    let dir = tempfile::tempdir().unwrap();
    init(&["--dir", "etc"], dir.path());
    for key in ["ExecStart", "ExecReload"] {
        let [command] = unit_values(&unit, key)[..] else { panic!("one {key}") };
        let argv: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(argv[0], INSTALLED_FXN, "{key}");
        assert_flags_exist(&argv[1..], key);
        for path in argv.iter().filter_map(|a| a.strip_prefix(ETC_FXN)) {
            assert!(dir.path().join("etc").join(path.trim_start_matches('/')).is_file(), "{key} names {path}");
        }
    }
    // Two sockets per stream: room for tens of thousands of streams.
    let nofile: u64 = unit_values(&unit, "LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 65_536, "LimitNOFILE={nofile}");
    // systemd must not kill the node before its streams' grace period and shutdown are over.
    let conf: serde_yaml::Value = serde_yaml::from_str(&repository_file("conf/fxn.yaml")).unwrap();
    let shutdown =
        conf["grace_period_seconds"].as_u64().unwrap() + conf["graceful_shutdown_timeout_seconds"].as_u64().unwrap();
    let stop_timeout: u64 = unit_values(&unit, "TimeoutStopSec")[0].parse().unwrap();
    assert!(stop_timeout > shutdown, "TimeoutStopSec={stop_timeout}, shutdown takes up to {shutdown} s");
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }
}

/// The Dockerfile's instructions, continuation lines joined: (instruction, arguments).
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = repository_file("Dockerfile");
    let mut joined = String::new();
    let mut instructions = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        joined.push_str(line.trim_end_matches('\\'));
        joined.push(' ');
        if !line.ends_with('\\') {
            let (instruction, arguments) = joined.trim().split_once(' ').unwrap();
            instructions.push((instruction.to_string(), arguments.to_string()));
            joined.clear();
        }
    }
    instructions
}

#[test]
fn image_serves_on_the_ports_it_exposes_with_the_files_it_writes() {
    let instructions = dockerfile_instructions();
    let values =
        |name: &str| instructions.iter().filter(|(i, _)| i == name).map(|(_, a)| a.as_str()).collect::<Vec<_>>();
    let [entrypoint] = values("ENTRYPOINT")[..] else { panic!("one ENTRYPOINT") };
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint[0], INSTALLED_FXN);
    assert!(values("COPY").iter().any(|c| c.ends_with(&format!(" {INSTALLED_FXN}"))), "the binary is copied there");
    assert_flags_exist(&entrypoint[1..].iter().map(String::as_str).collect::<Vec<_>>(), "ENTRYPOINT");
    assert_eq!(values("WORKDIR").last(), Some(&ETC_FXN), "the entrypoint reads the files where the volume is");
    assert_eq!(values("VOLUME"), [ETC_FXN]);

    // The image's own `fxn init`, run here into a folder of the test's.
    let run = values("RUN").into_iter().find(|r| r.contains("fxn init")).expect("a RUN of fxn init");
    let init_command = run.split("&&").next().unwrap();
    let argv: Vec<&str> = init_command.split_whitespace().collect();
    assert_eq!((argv[0], argv[1]), (INSTALLED_FXN, "init"));
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = argv[2..].iter().map(|a| if *a == ETC_FXN { "etc" } else { a }).collect();
    let stdout = init(&args, dir.path());
    assert!(stdout.contains("no key written"), "{stdout}");
    let config: serde_yaml::Value = serde_yaml::from_str(&read(&dir.path().join("etc/config.yaml"))).unwrap();
    let key_file = dir.path().join("etc").canonicalize().unwrap().join("node_key.json");
    assert_eq!(config["node"]["keyFile"].as_str(), key_file.to_str(), "the key its volume will hold");
    let port = config["node"]["listenPort"].as_u64().unwrap();
    let metrics: std::net::SocketAddr = config["metrics"]["listenAddress"].as_str().unwrap().parse().unwrap();
    assert_eq!(config["node"]["listenAddress"].as_str(), Some("0.0.0.0"), "published ports reach the node");
    assert!(metrics.ip().is_unspecified(), "published ports reach the metrics");
    assert_eq!(values("EXPOSE"), [format!("{port} {}", metrics.port())]);
    let [healthcheck] = values("HEALTHCHECK")[..] else { panic!("one HEALTHCHECK") };
    assert!(healthcheck.contains(&format!("/dev/tcp/127.0.0.1/{port} ")) && healthcheck.contains("GET /health "));

    // The compose file publishes those ports, keeps the files in the volume, and its Prometheus
    // scrapes the node's metrics port.
    let compose: serde_yaml::Value = serde_yaml::from_str(&repository_file("docker-compose.yaml")).unwrap();
    let node = &compose["services"]["fxn"];
    let ports: Vec<&str> = node["ports"].as_sequence().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(ports.contains(&format!("{port}:{port}").as_str()), "{ports:?}");
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{0}:{0}", metrics.port()))), "{ports:?}");
    assert!(node["volumes"][0].as_str().unwrap().ends_with(&format!(":{ETC_FXN}")));
    let prometheus_volume = compose["services"]["prometheus"]["volumes"][0].as_str().unwrap();
    let prometheus = repository_file(prometheus_volume.split(':').next().unwrap().trim_start_matches("./"));
    assert!(prometheus.contains(&format!("\"fxn:{}\"", metrics.port())), "{prometheus}");
    let model_backend = read(&dir.path().join("etc/model_backend.yaml"));
    for backend in ["vllm", "ollama"] {
        assert_eq!(compose["services"][backend]["networks"]["default"]["aliases"][0].as_str(), Some("backend"));
    }
    assert!(model_backend.contains("\"http://backend:8000\""), "{model_backend}");
}
