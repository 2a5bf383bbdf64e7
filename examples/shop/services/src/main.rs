//! `shop`: the demo shop's services, one subcommand each. See `examples/shop/README.md`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sluice_shop::cli::{Cli, Command, Common};
use sluice_shop::proto::RefundRequest;
use sluice_shop::proto::payments_client::PaymentsClient;
use sluice_shop::serve::{self, Identity};
use sluice_shop::{catalog, checkout, frontend, payments};
use tokio::net::TcpListener;
use tracing::error;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    // Small services on a shared machine: two worker threads are plenty.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

fn identity(service: &'static str, common: &Common) -> Arc<Identity> {
    Arc::new(Identity {
        service,
        version: common.version.clone(),
        faults: common.faults(),
    })
}

/// Binds, logs the startup line with the addresses actually bound (port 0 becomes a real
/// port), and serves until SIGTERM or Ctrl-C.
async fn run(command: Command) -> Result<(), String> {
    let shutdown = serve::shutdown_signal();
    match command {
        Command::Catalog { common } => {
            let listener = bind("http", common.listen).await?;
            let id = identity("catalog", &common);
            serve::log_started(&id, &format!("http={}", addr(&listener)));
            catalog::run(listener, id, shutdown).await;
        }
        Command::Checkout {
            common,
            catalog_url,
            payments_url,
        } => {
            let listener = bind("http", common.listen).await?;
            let id = identity("checkout", &common);
            serve::log_started(&id, &format!("http={}", addr(&listener)));
            checkout::run(listener, id, &catalog_url, &payments_url, shutdown).await;
        }
        Command::Frontend {
            common,
            catalog_url,
            checkout_url,
        } => {
            let listener = bind("http", common.listen).await?;
            let id = identity("frontend", &common);
            serve::log_started(&id, &format!("http={}", addr(&listener)));
            frontend::run(listener, id, &catalog_url, &checkout_url, shutdown).await;
        }
        Command::Payments {
            common,
            grpc_listen,
        } => {
            let http = bind("http", common.listen).await?;
            let grpc = bind("grpc", grpc_listen).await?;
            let id = identity("payments", &common);
            serve::log_started(&id, &format!("http={} grpc={}", addr(&http), addr(&grpc)));
            payments::run(http, grpc, id, shutdown)
                .await
                .map_err(|e| format!("the gRPC server failed: {e}"))?;
        }
        Command::Refund {
            charge_id,
            amount,
            payments_grpc,
        } => {
            let mut client = PaymentsClient::connect(payments_grpc.clone())
                .await
                .map_err(|e| format!("cannot connect to {payments_grpc}: {e}"))?;
            let reply = client
                .refund(RefundRequest { charge_id, amount })
                .await
                .map_err(|s| format!("refund failed: {:?}: {}", s.code(), s.message()))?;
            let version = reply
                .metadata()
                .get(serve::VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            let r = reply.into_inner();
            println!(
                "refund {} of {} cents on {}: {} (payments {version})",
                r.refund_id, r.amount, r.charge_id, r.status
            );
        }
    }
    Ok(())
}

fn addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
}
