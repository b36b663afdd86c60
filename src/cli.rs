//! The `fxn` command line: `fxn start`, `fxn config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pingora::server::configuration::Opt;

use crate::config::{self, ConfigPaths, Settings};

#[derive(Parser)]
#[command(name = "fxn", version, about = "Function Network provider node", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node.
    Start(StartArgs),
    /// Work with the node's configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
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
struct CheckArgs {
    #[command(flatten)]
    files: NodeFiles,
    /// The Pingora server conf.
    #[arg(short = 'c', long = "conf", value_name = "PATH", default_value = config::DEFAULT_SERVER_CONF_PATH)]
    server_conf: PathBuf,
}

pub fn run() -> ExitCode {
    match Cli::parse().command {
        Command::Start(args) => start(args),
        Command::Config { command: ConfigCommand::Check(args) } => check(args),
    }
}

fn start(args: StartArgs) -> ExitCode {
    let paths = ConfigPaths {
        config: args.files.config,
        model_backend: args.files.model_backend,
        server_conf: args
            .pingora
            .conf
            .clone()
            .map_or_else(|| config::DEFAULT_SERVER_CONF_PATH.into(), PathBuf::from),
    };
    let settings = match Settings::load(&paths) {
        Ok(settings) => settings,
        Err(errors) => return report_config_errors(&errors),
    };
    init_logging(settings.node.log.verbosity);
    crate::server::run(settings, args.pingora)
}

fn check(args: CheckArgs) -> ExitCode {
    let paths = ConfigPaths {
        config: args.files.config,
        model_backend: args.files.model_backend,
        server_conf: args.server_conf,
    };
    match Settings::load(&paths) {
        Ok(_) => {
            println!(
                "ok: {}, {} and {} are valid",
                paths.config.display(),
                paths.model_backend.display(),
                paths.server_conf.display()
            );
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
fn init_logging(verbosity: log::LevelFilter) {
    let default = verbosity.as_str().to_ascii_lowercase();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}
