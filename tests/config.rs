//! `fxn config check` and `fxn start` on good and bad files: every error named, no panic.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

const GOOD_MODELS: &str = "models:\n  m: {url: \"http://127.0.0.1:9\"}\n";

fn check(files: &NodeFiles) -> (i32, String, String) {
    let mut args = vec!["config", "check"];
    let file_args = files.file_args();
    args.extend(file_args.iter().map(String::as_str));
    run_fxn(&args, files.dir.path())
}

#[test]
fn shipped_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, stdout, stderr) = run_fxn(&["config", "check"], root);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok:"), "{stdout}");
}

#[test]
fn check_reports_every_error_of_every_file() {
    let files = NodeFiles::new(
        "models:\n  a: {url: \"ftp://x\"}\n  b: {url: \"http://x\", auth: {tokn: 1}}\n",
        "proxy:\n  readTimeout: \"soon\"\nlimits: {maxBodyBytes: 0}\nnonceCach: {}\n",
    );
    std::fs::write(files.path("fxn.yaml"), "version: 1\nthreads: 0\ngrace_period: 3\n").unwrap();
    let (code, _, stderr) = check(&files);
    assert_eq!(code, 1);
    for expected in [
        "config.yaml: `proxy.readTimeout`: `soon` is not a duration",
        "config.yaml: `limits.maxBodyBytes`",
        "config.yaml: `nonceCach`: unknown key",
        "model_backend.yaml: `models.a.url`",
        "model_backend.yaml: `models.b.auth.tokn`",
        "fxn.yaml: `grace_period`",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

/// Each key is read on its own: two type errors in one section are two errors, and the keys that
/// read well are still checked (`limits.maxBodyBytes` beside the unknown `limits.colour`).
#[test]
fn check_reports_every_type_error_of_a_section() {
    let files = NodeFiles::new(
        "models:\n  m: {url: 5, auth: {bearer_token: [1]}}\n",
        "proxy:\n  readTimeout: 5min\n  connectTimeout: 10\n  idleConnTimeout: -1s\n\
         nonceCache: {ttl: 1.5h, cleanupInterval: 1h30m0.5s, maxEntries: many}\n\
         limits: {maxBodyBytes: 0, colour: red}\n",
    );
    std::fs::write(files.path("fxn.yaml"), "threads: many\ndaemon: maybe\n").unwrap();
    let (code, _, stderr) = check(&files);
    assert_eq!(code, 1);
    let go_form = r#"expected a Go duration such as "90s", "5m" or "1h30m""#;
    for expected in [
        format!(
            "config.yaml: `proxy.readTimeout`: `5min` is not a duration: unknown unit `min` \
             (the units are ns, us, µs, ms, s, m and h); {go_form}"
        ),
        format!("config.yaml: `proxy.connectTimeout`: invalid type: integer `10`, {go_form}"),
        format!("config.yaml: `proxy.idleConnTimeout`: `-1s` is negative: a timeout or interval cannot be negative; {go_form}"),
        "config.yaml: `nonceCache.maxEntries`: invalid type".into(),
        "config.yaml: `limits.colour`: unknown field".into(),
        "config.yaml: `limits.maxBodyBytes`: must be at least 1 byte".into(),
        "model_backend.yaml: `models.m.url`: invalid type".into(),
        "model_backend.yaml: `models.m.auth.bearer_token`: invalid type".into(),
        "fxn.yaml: `threads`: invalid server conf: invalid type".into(),
        "fxn.yaml: `daemon`: invalid server conf: invalid type".into(),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("has 10 problem(s)"), "Go's 1.5h and 1h30m0.5s are durations:\n{stderr}");
}

#[test]
fn check_and_start_say_which_form_of_model_backend_yaml_they_read() {
    let flat =
        "backendProvider: \"vllm\"\nfxnId: \"2\"\napiKey: \"\"\nmodelNameAlias: \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\n";
    for (text, form) in [
        ("models:\n  m: {url: \"http://127.0.0.1:9\", alias: \"served-name\", fxn_id: 3}\n", "the map form (`models`)"),
        (flat, "the flat form (`backendProvider: vllm`), as one `default` entry"),
    ] {
        let files = NodeFiles::new(text, "");
        let (code, stdout, stderr) = check(&files);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(&format!("model_backend.yaml: read in {form}")), "{stdout}");
        let log = Node::start(files).log();
        let start_line = log.lines().find(|line| line.contains(" INFO ") && line.contains("listening on"));
        assert!(start_line.is_some_and(|line| line.contains(&format!("(model_backend.yaml read in {form})"))), "{log}");
    }
}

#[test]
fn each_bad_model_backend_yaml_names_its_key() {
    for (text, expected) in [
        (
            "models:\n  m: {url: \"http://127.0.0.1:9\"}\nbackendProvider: custom\nurl: \"http://127.0.0.1:9\"\n",
            &[
                "model_backend.yaml: `backendProvider`: belongs to the flat form",
                "model_backend.yaml: `url`: belongs to the flat form",
            ][..],
        ),
        (
            "backendProvider: tgi\nurl: \"http://127.0.0.1:9\"\n",
            &["model_backend.yaml: `backendProvider`: unknown variant `tgi`"],
        ),
        (
            "backendProvider: custom\napiKey: k\n",
            &["model_backend.yaml: `url`: missing: `backendProvider: custom` needs the backend's `url`"],
        ),
        ("backendProvider: fxn\nurl: \"\"\n", &["model_backend.yaml: `url`: missing: `backendProvider: fxn`"]),
        ("url: \"http://127.0.0.1:9\"\n", &["model_backend.yaml: `backendProvider`: missing"]),
        (
            "models:\n  m: {url: \"http://127.0.0.1:9\", alias: \"\"}\n",
            &["model_backend.yaml: `models.m.alias`: must not be empty"],
        ),
    ] {
        let (code, _, stderr) = check(&NodeFiles::new(text, ""));
        assert_eq!(code, 1, "{text}");
        for expected in expected {
            assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
        }
    }
}

#[test]
fn missing_files_are_named() {
    let files = NodeFiles::new(GOOD_MODELS, "");
    std::fs::remove_file(files.path("model_backend.yaml")).unwrap();
    let (code, _, stderr) = check(&files);
    assert_eq!(code, 1);
    assert!(stderr.contains("model_backend.yaml: cannot read"), "{stderr}");
}

#[test]
fn start_refuses_bad_config_without_panicking() {
    let files = NodeFiles::new("models:\n  m: {url: \"http://127.0.0.1:9\", auth: {}}\n", "");
    std::fs::write(files.path("fxn.yaml"), "threads: [1, 2]\n").unwrap();
    let mut args = vec!["start"];
    let file_args = files.file_args();
    args.extend(file_args.iter().map(String::as_str));
    let (code, _, stderr) = run_fxn(&args, files.dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("models.m.auth") && stderr.contains("invalid server conf"), "{stderr}");
}

#[test]
fn start_with_pingora_test_flag_validates_and_exits() {
    let files = NodeFiles::new(GOOD_MODELS, "");
    let mut args = vec!["start", "-t"];
    let file_args = files.file_args();
    args.extend(file_args.iter().map(String::as_str));
    let (code, _, stderr) = run_fxn(&args, files.dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains(" WARN "), "valid files start without warnings: {stderr}");
}

#[test]
fn version_and_help_everywhere() {
    let here = Path::new(".");
    // The commit is git's HEAD, as build.rs asks it (FXN_COMMIT where there is no .git).
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok();
    let commit = match head.filter(|o| o.status.success()) {
        Some(output) => String::from_utf8(output.stdout).unwrap().trim().to_string(),
        None => env!("FXN_COMMIT").to_string(),
    };
    let version = format!("{} (commit {commit})", env!("CARGO_PKG_VERSION"));
    // A subcommand names itself (`fxn-start 0.1.0 …`).
    for (args, name) in [(&["--version"][..], "fxn"), (&["start", "--version"], "fxn-start")] {
        let (code, stdout, _) = run_fxn(args, here);
        assert_eq!((code, stdout.trim()), (0, format!("{name} {version}").as_str()), "{args:?}");
    }
    for args in [&["start", "--help"][..], &["config", "check", "--help"], &["config", "check", "--version"]] {
        let (code, stdout, _) = run_fxn(args, here);
        assert_eq!(code, 0, "{args:?}");
        assert!(!stdout.is_empty());
    }
}
