//! The `shop` command line: one subcommand per service. Every flag has an environment
//! variable (`SHOP_*`), which is how the mesh file configures a workload.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::serve::Faults;

#[derive(Debug, Parser)]
#[command(
    name = "shop",
    version,
    about = "The Sluice demo shop: run one of its services."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The web shop customers see: lists the catalog and places orders through checkout.
    Frontend {
        #[command(flatten)]
        common: Common,
        #[arg(long, env = "SHOP_CATALOG_URL", default_value = "http://catalog:8080")]
        catalog_url: String,
        #[arg(
            long,
            env = "SHOP_CHECKOUT_URL",
            default_value = "http://checkout:8080"
        )]
        checkout_url: String,
    },
    /// Turns an order into a charge: checks the price with catalog, charges with payments.
    Checkout {
        #[command(flatten)]
        common: Common,
        #[arg(long, env = "SHOP_CATALOG_URL", default_value = "http://catalog:8080")]
        catalog_url: String,
        #[arg(
            long,
            env = "SHOP_PAYMENTS_URL",
            default_value = "http://payments:8080"
        )]
        payments_url: String,
    },
    /// Charges and refunds, over HTTP and gRPC (`payments.v1.Payments`).
    Payments {
        #[command(flatten)]
        common: Common,
        /// Where the gRPC server listens.
        #[arg(long, env = "SHOP_GRPC_LISTEN", default_value = "0.0.0.0:9090")]
        grpc_listen: SocketAddr,
    },
    /// Products, prices and stock.
    Catalog {
        #[command(flatten)]
        common: Common,
    },
    /// A client, not a service: refund a charge over gRPC (`payments.v1.Payments/Refund`).
    Refund {
        /// The charge to refund, e.g. `ch_1`.
        charge_id: String,
        /// Cents to refund; 0 refunds what is left of the charge.
        #[arg(long, default_value_t = 0)]
        amount: i64,
        #[arg(
            long,
            env = "SHOP_PAYMENTS_GRPC",
            default_value = "http://payments:9090"
        )]
        payments_grpc: String,
    },
}

/// What every service takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Where the HTTP server listens.
    #[arg(long, env = "SHOP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The version this instance reports (`shop-version` header, logs).
    #[arg(long, env = "SHOP_VERSION", default_value = "v1")]
    pub version: String,
    /// The share of requests, 0.0–1.0, answered with 500 (gRPC: UNAVAILABLE) on purpose.
    #[arg(long, env = "SHOP_ERROR_RATE", default_value = "0", value_parser = parse_rate)]
    pub error_rate: f64,
    /// Latency added to every request, e.g. `50ms`.
    #[arg(long, env = "SHOP_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Up to this much more, uniformly at random, on top of `--latency`.
    #[arg(long, env = "SHOP_LATENCY_JITTER", default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency_jitter: Duration,
}

impl Common {
    pub fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            latency: self.latency,
            jitter: self.latency_jitter,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.trim().parse().map_err(|_| {
        format!("`{s}` is not a number; give a share between 0.0 and 1.0, e.g. 0.05")
    })?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "{rate} is outside 0.0–1.0; 0.05 means 5% of requests fail"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_shares() {
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("5%").is_err());
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
    }
}
