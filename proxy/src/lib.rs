//! `sluice-proxy` owns Sluice's data plane: the per-workload sidecar that intercepts inbound and
//! outbound TCP (via iptables or explicit port mappings), detects the protocol of each
//! connection, proxies HTTP/1.1, HTTP/2 and gRPC per request and everything else as opaque TCP,
//! routes outbound traffic, and exports golden-signal metrics, access logs and an admin
//! endpoint. Everything it acts on is one immutable, hot-swapped [`state::ProxyState`]: the
//! policy `Snapshot` compiled by the `sluice-policy` crate, where services run, and the routing
//! table compiled from both, loaded from a [`state::ConfigSource`].
//!
//! The binary (`src/main.rs`) is a thin wrapper around [`app::run`] and [`init::run`] so that
//! integration tests and benchmarks can drive the same code.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod config;
pub mod detect;
pub mod drain;
pub mod http;
pub mod identity;
pub mod init;
pub mod io;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod routing;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod traffic_report;

/// Which side of the workload a connection is on. Every listener, metric and log line is
/// tagged with it because the two sides have different trust and routing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic from the network to the local workload.
    Inbound,
    /// Traffic from the local workload to the network.
    Outbound,
}

impl Direction {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
