//! `sluice-proxy`: the transparent sidecar in front of every workload. The logic lives in the
//! library; this file only parses the command line and picks an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_proxy::config::{Config, RuntimeShape};
use sluice_proxy::{app, init};

/// Exit code for bad configuration (BSD `EX_USAGE`... `EX_DATAERR` is 65; 64 is usage).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "sluice-proxy",
    version,
    about = "Sluice's data-plane sidecar proxy."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default). Configured by SLUICE_PROXY_* environment variables.
    Run,
    /// Install (or with --remove, remove) the iptables rules that redirect traffic to the proxy.
    Init(init::InitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(),
        Command::Init(args) => match init::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-proxy init: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            eprint!("sluice-proxy: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    app::init_tracing(&config);
    let mut builder = match config.runtime {
        RuntimeShape::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeShape::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ app::StartError::Config { .. }) => {
            tracing::error!(error = %e, "bad configuration");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}
