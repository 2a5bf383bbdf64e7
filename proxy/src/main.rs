//! `sluice-proxy`: the transparent sidecar in front of every workload. The logic lives in the
//! library; this file only parses the command line and picks an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_proxy::config::{Config, RuntimeShape};
use sluice_proxy::{app, init, lifecycle};

/// The allocator: jemalloc, with a background thread that hands freed pages back to the
/// kernel after a second ([`MALLOC_CONF`]). With glibc's malloc, the memory a burst of
/// connections used stayed in the process after they closed (a slowloris attack of 2,000
/// connections left the proxy at 5× its idle RSS for good, whatever the arena settings); with
/// this it is back near idle within seconds. Measured in `benches/README.md`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, as its `malloc_conf` global (a C `const char *`, read at its first
/// allocation, before `main`): a background thread purges freed pages, dirty ones after 1 s and
/// muzzy ones at once. Without the thread nothing is purged however short the decay, because an
/// idle proxy makes no allocator calls and jemalloc purges only from inside them.
///
/// The thread caches are garbage-collected once per MiB allocated instead of per 64 KiB:
/// collection was 3% of an HTTP/1.1 request's instructions, and a proxy's allocations are
/// the same few sizes over and over, which the caches are for. Each cache stays bounded per
/// size class; RSS under load and after the slowloris attack did not move
/// (benches/README.md).
///
/// Set here rather than at build time (`JEMALLOC_SYS_WITH_MALLOC_CONF`), so that no cargo
/// configuration or environment can drop it silently; `MALLOC_CONF`-style overrides at run time
/// (`_RJEM_MALLOC_CONF`) still win. `_rjem_` is tikv-jemalloc-sys's symbol prefix on Linux.
#[allow(unsafe_code)] // Exporting a symbol is `unsafe`: this one, for jemalloc to read.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_gc_incr_bytes:1048576\0"
        [0];

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
    /// Wait until the proxy is ready (`GET /ready` on the admin port): the injected proxy's
    /// `postStart` hook on servers without native sidecars, so the app starts after it.
    WaitReady(lifecycle::WaitArgs),
    /// Run the app's command, then stop the proxy when it exits (Jobs on servers without
    /// native sidecars); exits with the app's status.
    Await(lifecycle::AwaitArgs),
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
        Command::WaitReady(args) => match lifecycle::run_wait(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-proxy wait-ready: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Await(args) => match lifecycle::run_await(&args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("sluice-proxy await: {e}");
                // What a shell says for a command it cannot run.
                ExitCode::from(127)
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
        // Per-core: this thread is the first worker; `app::run` starts the others.
        RuntimeShape::CurrentThread | RuntimeShape::PerCore => {
            tokio::runtime::Builder::new_current_thread()
        }
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
