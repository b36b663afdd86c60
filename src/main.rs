use std::process::ExitCode;

fn main() -> ExitCode {
    fxn_node::cli::run()
}
