//! The `fxn` command line: `fxn init`, `fxn start`, `fxn reload`, `fxn config check`, `fxn accounts`,
//! `fxn sign`, `fxn receipt verify`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ethers_core::utils::to_checksum;
use pingora::server::configuration::Opt;

use crate::config::{self, ConfigPaths, LogFormat, LogSettings, Settings};
use crate::init::{InitOptions, Outcome};
use crate::keys::NodeKey;

/// What `--version` prints after the name: the release and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FXN_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "fxn", version = VERSION, about = "Function Network provider node", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new node's files (config.yaml, model_backend.yaml, conf/fxn.yaml) and a fresh key
    /// in one directory, keeping any that exist, and print the address to register.
    Init(InitArgs),
    /// Run the node.
    Start(StartArgs),
    /// Check model_backend.yaml, then have the running node (found by the server conf's
    /// pid_file) read it again; requests in flight keep their backends.
    Reload(ReloadArgs),
    /// Work with the node's configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create and inspect key files.
    #[command(alias = "account")]
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Read the on-chain registries once, as the node would.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Print the signed-request headers for a body, one `Name: value` per line (for curl -H).
    /// The key comes from --key-file or the PRIVATE_KEY environment variable.
    Sign(SignArgs),
    /// Check the signed usage receipts of a node's answers.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
}

#[derive(Args)]
struct InitArgs {
    /// Where to write them; `fxn start` run there reads them without flags.
    #[arg(long, value_name = "PATH", default_value = ".")]
    dir: PathBuf,
    /// Where the node and its metrics listen: 0.0.0.0 in a container, so that its published ports reach them.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    listen_address: IpAddr,
    /// The OpenAI-compatible server every model is sent to (vLLM's port; Ollama's is 11434).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8000")]
    backend_url: String,
    /// Write no key (an image's files: each container's key is made in its own volume).
    #[arg(long)]
    no_key: bool,
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Print a receipt's signer and fields; exit 1 unless it is signed by the node it names
    /// (and by --node, when given).
    Verify(VerifyReceiptArgs),
}

#[derive(Args)]
struct VerifyReceiptArgs {
    /// The receipt: the X-Fxn-Receipt header's value (base64url).
    #[arg(required_unless_present = "response", requires = "signature")]
    receipt: Option<String>,
    /// Its signature: the X-Fxn-Receipt-Signature header's value.
    signature: Option<String>,
    /// Instead of both: a saved response that carries one (`curl -i` output, or a stream's body
    /// with its `: fxn-receipt` line); its body must then hash to the receipt's response_sha256.
    #[arg(long, value_name = "PATH", conflicts_with = "receipt")]
    response: Option<PathBuf>,
    /// The node the receipt must come from.
    #[arg(long, value_name = "ADDRESS")]
    node: Option<String>,
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Write a new key file (mode 0600) and print its address.
    New {
        /// Where to write it.
        #[arg(long, value_name = "PATH", default_value = "node_key.json")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the address and public key of a key file.
    #[command(alias = "get")]
    Show {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Print the Router's registries, the chain's id and block, every active gateway and
    /// provider, and whether this node's own address is registered.
    Show {
        /// The node config (its rpcProvider, registry and node.keyFile).
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Args)]
struct SignArgs {
    /// The request body, as it will be sent.
    #[arg(long, value_name = "PATH")]
    body_file: PathBuf,
    /// A key file; without it the hex key in PRIVATE_KEY signs.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Unix seconds to sign with (default: now).
    #[arg(long)]
    timestamp: Option<i64>,
    /// Nonce to sign with (default: 16 random hex digits).
    #[arg(long)]
    nonce: Option<String>,
    /// Send X-Public-Key (older clients) instead of X-Address.
    #[arg(long)]
    public_key: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate every configuration file and print every problem found (exit 1 on any).
    Check(CheckArgs),
}

#[derive(Args)]
struct NodeFiles {
    /// The node config.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The model → backend map.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_MODEL_BACKEND_PATH)]
    model_backend: PathBuf,
}

#[derive(Args)]
struct StartArgs {
    #[command(flatten)]
    files: NodeFiles,
    /// Pingora's own flags: `-c` server conf (default conf/fxn.yaml), `-d` daemon,
    /// `-t` test the conf and exit, `-u` graceful upgrade.
    #[command(flatten)]
    pingora: Opt,
}

#[derive(Args)]
struct ReloadArgs {
    /// The model → backend map the node reads (checked here first).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_MODEL_BACKEND_PATH)]
    model_backend: PathBuf,
    /// The Pingora server conf, whose pid_file names the running node.
    #[arg(short = 'c', long = "conf", value_name = "PATH", default_value = config::DEFAULT_SERVER_CONF_PATH)]
    server_conf: PathBuf,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    files: NodeFiles,
    /// The Pingora server conf.
    #[arg(short = 'c', long = "conf", value_name = "PATH", default_value = config::DEFAULT_SERVER_CONF_PATH)]
    server_conf: PathBuf,
}

pub fn run() -> ExitCode {
    match Cli::parse().command {
        Command::Init(args) => init(args),
        Command::Start(args) => start(args),
        Command::Reload(args) => reload(&args),
        Command::Config { command: ConfigCommand::Check(args) } => check(args),
        Command::Accounts { command: AccountsCommand::New { out, force } } => accounts_new(&out, force),
        Command::Accounts { command: AccountsCommand::Show { path } } => accounts_show(&path),
        Command::Registry { command: RegistryCommand::Show { config } } => registry_show(&config),
        Command::Sign(args) => sign(args),
        Command::Receipt { command: ReceiptCommand::Verify(args) } => verify_receipt(&args),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("fxn: {message}");
    ExitCode::FAILURE
}

fn init(args: InitArgs) -> ExitCode {
    let options = InitOptions {
        dir: args.dir,
        listen_address: args.listen_address,
        backend_url: args.backend_url,
        write_key: !args.no_key,
    };
    let done = match crate::init::init(&options) {
        Ok(done) => done,
        Err(e) => return fail(e),
    };
    let named = |outcome| {
        let names: Vec<&str> = done.files.iter().filter(|(_, o)| *o == outcome).map(|(name, _)| *name).collect();
        names.join(", ")
    };
    let (written, kept) = (named(Outcome::Written), named(Outcome::Kept));
    let dir = done.dir.display();
    if written.is_empty() {
        println!("nothing changed: {dir} has {kept} already");
    } else {
        println!("wrote {written} in {dir}");
        if !kept.is_empty() {
            println!("kept as they were: {kept}");
        }
    }
    match &done.address {
        Some(address) => println!("\nnode address: {address}\n  register it with the network as this node's provider address"),
        None => println!(
            "\nno key written: create it where config.yaml's node.keyFile names it, with `fxn init` or `fxn accounts new`"
        ),
    }
    println!(
        "\nnext:\n  1. list your gateways and scheduler (or rpcProvider) in config.yaml, and your models in model_backend.yaml\n  \
         2. cd {} && fxn config check && fxn start",
        shell_quoted(&dir.to_string())
    );
    ExitCode::SUCCESS
}

/// `text` as one shell word, for a command the operator copies.
fn shell_quoted(text: &str) -> String {
    let plain = text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b));
    if plain && !text.is_empty() {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn accounts_new(out: &Path, force: bool) -> ExitCode {
    let key = NodeKey::generate();
    match key.write(out, force) {
        Ok(()) => {
            println!("{}", key.checksummed_address());
            eprintln!("key written to {} (mode 0600); keep it secret", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn accounts_show(path: &Path) -> ExitCode {
    match NodeKey::load(path) {
        Ok(key) => {
            println!("address: {}", key.checksummed_address());
            println!("public_key: {}", key.public_key_hex());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn sign(args: SignArgs) -> ExitCode {
    let key = match &args.key_file {
        Some(path) => NodeKey::load(path).map_err(|e| e.to_string()),
        None => std::env::var("PRIVATE_KEY")
            .map_err(|_| "set PRIVATE_KEY (64 hex digits) or pass --key-file".to_string())
            .and_then(|hex| NodeKey::from_private_key_hex(&hex).map_err(|e| format!("PRIVATE_KEY: {e}"))),
    };
    let key = match key {
        Ok(key) => key,
        Err(e) => return fail(e),
    };
    let body = match std::fs::read(&args.body_file) {
        Ok(body) => body,
        Err(e) => return fail(format!("{}: {e}", args.body_file.display())),
    };
    let timestamp = args.timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    });
    let nonce = args.nonce.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    match crate::auth::sign_request(&key.signing_key, &body, timestamp, &nonce, args.public_key) {
        Ok(headers) => {
            for (name, value) in &headers {
                let spelled = crate::auth::SigningHeader::named(name).map_or(name.as_str(), |header| header.display);
                println!("{spelled}: {}", value.to_str().unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn verify_receipt(args: &VerifyReceiptArgs) -> ExitCode {
    use crate::receipt;
    let expected_node = match args.node.as_deref().map(config::parse_address).transpose() {
        Ok(node) => node,
        Err(e) => return fail(format!("--node: {e}")),
    };
    let saved = match &args.response {
        Some(path) => match std::fs::read(path) {
            Ok(saved) => Some(saved),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => None,
    };
    let found = match &saved {
        Some(saved) => match receipt::find_in_response(saved) {
            Ok(found) => Some(found),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let (encoded, signature) = match (&found, &args.receipt, &args.signature) {
        (Some(found), _, _) => (found.encoded, found.signature),
        (None, Some(encoded), Some(signature)) => (encoded.as_str(), signature.as_str()),
        _ => return fail("give a receipt and its signature, or --response FILE"),
    };
    let verified = match receipt::verify(encoded, signature) {
        Ok(verified) => verified,
        Err(e) => return fail(e),
    };
    let signer = to_checksum(&verified.signer, None);
    if let Some(expected) = expected_node.filter(|expected| *expected != verified.signer) {
        return fail(format!("the receipt is signed by {signer}, not by --node {}", to_checksum(&expected, None)));
    }
    println!("signed by {signer}, the node the receipt names");
    println!("{}", serde_json::to_string_pretty(&verified.receipt).expect("a receipt serializes"));
    if let Some(found) = found {
        let body_sha256 = hex::encode(crate::auth::body_sha256(found.body));
        if body_sha256 != verified.receipt.response_sha256 {
            return fail(format!(
                "the saved body ({} bytes, sha256 {body_sha256}) is not the one the receipt covers",
                found.body.len()
            ));
        }
        println!("the saved body ({} bytes) hashes to response_sha256", found.body.len());
    }
    ExitCode::SUCCESS
}

fn registry_show(path: &Path) -> ExitCode {
    let node = match config::NodeConfig::load(path) {
        Ok(node) => node,
        Err(errors) => return report_config_errors(&errors),
    };
    let own_address = match node.key_file.as_deref().map(NodeKey::load).transpose() {
        Ok(key) => key.map(|key| key.address),
        Err(e) => return fail(format!("node.keyFile: {e}")),
    };
    let reader = match crate::registry::ChainReader::new(&node.registry) {
        Ok(Some(reader)) => reader,
        Ok(None) => {
            return fail(format!("{}: rpcProvider is empty: the node trusts registry.static alone", path.display()))
        }
        Err(e) => return fail(format!("rpcProvider: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(e),
    };
    match runtime.block_on(crate::registry::show::print(&reader, own_address)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// The node's own key, when `node.keyFile` names one.
fn load_node_key(settings: &Settings) -> Result<Option<NodeKey>, ExitCode> {
    settings.node.key_file.as_deref().map(NodeKey::load).transpose().map_err(|e| fail(format!("node.keyFile: {e}")))
}

fn start(args: StartArgs) -> ExitCode {
    let mut pingora_opt = args.pingora;
    // The conf file is read and validated with the node's own files; handed to Pingora too,
    // it would only warn that it ignores the path.
    let paths = ConfigPaths {
        config: args.files.config,
        model_backend: args.files.model_backend,
        server_conf: pingora_opt.conf.take().map_or_else(|| config::DEFAULT_SERVER_CONF_PATH.into(), PathBuf::from),
    };
    let settings = match Settings::load(&paths) {
        Ok(settings) => settings,
        Err(errors) => return report_config_errors(&errors),
    };
    let node_key = match load_node_key(&settings) {
        Ok(key) => key,
        Err(code) => return code,
    };
    init_logging(&settings.node.log);
    crate::server::run(settings, paths.model_backend, node_key, pingora_opt)
}

fn reload(args: &ReloadArgs) -> ExitCode {
    if let Err(errors) = config::ModelBackends::load(&args.model_backend) {
        eprintln!("fxn: the node was not asked to reload:");
        return report_config_errors(&errors);
    }
    let server = match config::load_server_conf(&args.server_conf) {
        Ok(server) => server,
        Err(errors) => return report_config_errors(&errors),
    };
    let pid = match std::fs::read_to_string(&server.pid_file) {
        Ok(text) => text,
        Err(e) => {
            return fail(format!("cannot read the node's pid_file {}: {e}; is the node running?", server.pid_file))
        }
    };
    let pid = match pid.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => pid,
        _ => return fail(format!("the pid_file {} holds `{}`, not a process id", server.pid_file, pid.trim())),
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP) {
        Ok(()) => {
            println!("asked the node (pid {pid}) to reload {}; its log says when it has", args.model_backend.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot signal the node (pid {pid} from {}): {e}", server.pid_file)),
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let paths = ConfigPaths {
        config: args.files.config,
        model_backend: args.files.model_backend,
        server_conf: args.server_conf,
    };
    match Settings::load(&paths) {
        Ok(settings) => {
            if let Err(code) = load_node_key(&settings) {
                return code;
            }
            println!(
                "ok: {}, {} and {} are valid",
                paths.config.display(),
                paths.model_backend.display(),
                paths.server_conf.display()
            );
            println!("{}: read in {}", paths.model_backend.display(), settings.models.form);
            ExitCode::SUCCESS
        }
        Err(errors) => report_config_errors(&errors),
    }
}

fn report_config_errors(errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("fxn: the configuration has {} problem(s):", errors.0.len());
    for error in errors.iter() {
        eprintln!("  {error}");
    }
    ExitCode::FAILURE
}

/// `logger.verbosity` is the default; `RUST_LOG`, when set, overrides it.
fn init_logging(settings: &LogSettings) {
    let default = settings.verbosity.as_str().to_ascii_lowercase();
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    match settings.format {
        LogFormat::Text => builder.format_timestamp_millis(),
        LogFormat::Json => builder.format(write_json_record),
    };
    builder.init();
}

/// One JSON object per record: its time (RFC 3339), level, target and message, and the record's
/// key-values (the request line's fields) as keys of their own.
fn write_json_record(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut object = serde_json::Map::new();
    object.insert("time".into(), buf.timestamp_millis().to_string().into());
    object.insert("level".into(), record.level().as_str().into());
    object.insert("target".into(), record.target().into());
    object.insert("message".into(), record.args().to_string().into());
    // A failed visit leaves out only the fields it did not reach.
    let _ = record.key_values().visit(&mut JsonFields(&mut object));
    writeln!(buf, "{}", serde_json::Value::Object(object))
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}
