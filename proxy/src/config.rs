//! Proxy configuration, read from `SLUICE_PROXY_*` environment variables.
//!
//! Everything is parsed up front and *all* problems are reported together, so an operator
//! fixing a pod spec sees every mistake in one restart instead of one per restart.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::Direction;

/// Address of the transparent inbound listener, or `off`. Default `0.0.0.0:4143`.
pub const ENV_INBOUND_ADDR: &str = "SLUICE_PROXY_INBOUND_ADDR";
/// Address of the transparent outbound listener, or `off`. Default `127.0.0.1:4140`.
pub const ENV_OUTBOUND_ADDR: &str = "SLUICE_PROXY_OUTBOUND_ADDR";
/// Address of the admin listener (`/metrics`, `/ready`, ...). Default `127.0.0.1:4191`.
pub const ENV_ADMIN_ADDR: &str = "SLUICE_PROXY_ADMIN_ADDR";
/// `plain` (default) or `json`.
pub const ENV_LOG_FORMAT: &str = "SLUICE_PROXY_LOG_FORMAT";
/// A `tracing` filter, e.g. `info` (default) or `sluice_proxy=debug`.
pub const ENV_LOG: &str = "SLUICE_PROXY_LOG";
/// How long in-flight work may continue after SIGTERM, e.g. `30s` (default).
pub const ENV_DRAIN_DEADLINE: &str = "SLUICE_PROXY_DRAIN_DEADLINE";
/// How long to wait for a client's first bytes before treating it as opaque TCP. Default `1s`.
pub const ENV_DETECT_TIMEOUT: &str = "SLUICE_PROXY_DETECT_TIMEOUT";
/// How long a client may take to send one request's headers (HTTP/1) before the connection
/// is closed: the slowloris bound. Default `10s`.
pub const ENV_HEADER_READ_TIMEOUT: &str = "SLUICE_PROXY_HEADER_READ_TIMEOUT";
/// HTTP/2 rapid reset (CVE-2023-44487): a client connection is closed once it has opened
/// this many streams and the client reset more than half of them soon after opening them
/// (see [`ENV_H2_RAPID_RESET_LIFETIME`]). Default `500`, Envoy's
/// `overload.premature_reset_total_stream_count`.
pub const ENV_H2_RAPID_RESET_STREAMS: &str = "SLUICE_PROXY_H2_RAPID_RESET_STREAMS";
/// What "soon" means for [`ENV_H2_RAPID_RESET_STREAMS`]: a stream reset by the client within
/// this long of opening. Default `1s`, Envoy's
/// `overload.premature_reset_min_stream_lifetime_seconds`; `0s` turns the rule off.
pub const ENV_H2_RAPID_RESET_LIFETIME: &str = "SLUICE_PROXY_H2_RAPID_RESET_LIFETIME";
/// Most connections each listener (inbound, outbound, explicit) serves at once; connections
/// over it are closed as they arrive, with one log line when the limit is reached. Default:
/// what the file-descriptor limit allows (see [`default_max_connections`]).
pub const ENV_MAX_CONNECTIONS: &str = "SLUICE_PROXY_MAX_CONNECTIONS";
/// Upstream connect timeout. Default `3s`.
pub const ENV_CONNECT_TIMEOUT: &str = "SLUICE_PROXY_CONNECT_TIMEOUT";
/// Comma-separated destination ports that skip protocol detection (server-speaks-first
/// protocols such as MySQL or SMTP would otherwise wait for the detect timeout).
pub const ENV_OPAQUE_PORTS: &str = "SLUICE_PROXY_OPAQUE_PORTS";
/// Explicit (no iptables) outbound listeners: `LISTEN=TARGET,...` where `LISTEN` is a port or
/// `ip:port` (ip defaults to 127.0.0.1) and `TARGET` is the `ip:port` treated as the original
/// destination, e.g. `15001=10.96.0.10:80`.
pub const ENV_EXPLICIT_OUTBOUND: &str = "SLUICE_PROXY_EXPLICIT_OUTBOUND";
/// Explicit inbound listeners, same syntax as [`ENV_EXPLICIT_OUTBOUND`].
pub const ENV_EXPLICIT_INBOUND: &str = "SLUICE_PROXY_EXPLICIT_INBOUND";
/// Standalone config source: a policy directory (the YAML `sluice policy check` reads),
/// watched for changes. Excludes [`ENV_SNAPSHOT`]. See [`crate::state::source`].
pub const ENV_POLICY_DIR: &str = "SLUICE_PROXY_POLICY_DIR";
/// With [`ENV_POLICY_DIR`]: a JSON file `{"services": [...]}` saying where services run (see
/// [`crate::state::endpoints`]), watched with the directory. Unset: no service has instances.
pub const ENV_ENDPOINTS: &str = "SLUICE_PROXY_ENDPOINTS";
/// Config source: a snapshot file, JSON shaped like the controller API's `ProxyConfig`
/// (`{"version", "policyBundle", "services"}`), watched for changes. Excludes
/// [`ENV_POLICY_DIR`]. With neither set no services are known and outbound traffic follows
/// [`ENV_UNKNOWN_DESTINATIONS`].
pub const ENV_SNAPSHOT: &str = "SLUICE_PROXY_SNAPSHOT";
/// How often the config source (policy directory, endpoints, snapshot file) is checked for
/// changes. Default `1s`.
pub const ENV_SNAPSHOT_POLL: &str = "SLUICE_PROXY_SNAPSHOT_POLL";
/// `passthrough` (default) or `refuse`: what to do with outbound traffic to an address that no
/// service in the snapshot owns.
pub const ENV_UNKNOWN_DESTINATIONS: &str = "SLUICE_PROXY_UNKNOWN_DESTINATIONS";
/// Name of the workload's own service, used as `src_service` outbound and `dst_service`
/// inbound.
pub const ENV_SERVICE: &str = "SLUICE_PROXY_SERVICE";
/// The workload's own version, used as `dst_version` inbound.
pub const ENV_SERVICE_VERSION: &str = "SLUICE_PROXY_SERVICE_VERSION";
/// The workload's namespace. Default `default`.
pub const ENV_NAMESPACE: &str = "SLUICE_PROXY_NAMESPACE";
/// The workload's environment: `stable` (default) or an ephemeral one such as `pr-42`.
pub const ENV_ENVIRONMENT: &str = "SLUICE_PROXY_ENVIRONMENT";
/// The workload instance's role: empty (default) for an ordinary instance, or `baseline` for a
/// rollout's fresh copy of the stable version (started beside the canary so it is judged
/// against a like-for-like baseline). Registered and reported with the instance, so that its
/// traffic is routed and counted apart from the version's ordinary instances.
pub const ENV_ROLE: &str = "SLUICE_PROXY_ROLE";
/// The workload instance's unique name (pod name). Default: the proxy id.
pub const ENV_INSTANCE: &str = "SLUICE_PROXY_INSTANCE";
/// This proxy's id for loop detection. Default: random per process.
pub const ENV_PROXY_ID: &str = "SLUICE_PROXY_ID";
/// If set, the proxy writes the addresses it actually bound (JSON) to this file once all
/// listeners are up. Lets tests and tooling use port 0.
pub const ENV_LISTEN_ADDRS_FILE: &str = "SLUICE_PROXY_LISTEN_ADDRS_FILE";
/// The controller's gRPC address (`127.0.0.1:7071` or `https://127.0.0.1:7071`; it serves TLS
/// only): certificates (`Certify`), denial reports (`ReportDenials`) and, unless a policy
/// directory or snapshot file is configured, the config itself (`Watch`, see
/// [`crate::state::controller`]).
pub const ENV_CONTROLLER_ADDR: &str = "SLUICE_PROXY_CONTROLLER_ADDR";
/// The mesh CA certificate(s), PEM, that the controller's certificate must chain to: how the
/// proxy trusts the controller before it has an identity of its own. Required with
/// [`ENV_CONTROLLER_ADDR`]. Read again for every new connection.
pub const ENV_CONTROLLER_CA: &str = "SLUICE_PROXY_CONTROLLER_CA";
/// Which config source to use: `controller`, `policy-dir`, `snapshot` or `none`. Unset: the
/// policy directory or snapshot file if one is set, else the controller if its address is set,
/// else none. Setting it makes a missing or conflicting source a configuration error.
pub const ENV_CONFIG_SOURCE: &str = "SLUICE_PROXY_CONFIG_SOURCE";
/// With the controller source: the `ip:port` peers should dial to reach this workload (its
/// inbound), announced with `Register` on every (re)connected `Watch` stream.
pub const ENV_REGISTER_ADDR: &str = "SLUICE_PROXY_REGISTER_ADDR";
/// The bootstrap token proving which workload this proxy fronts, for `Certify`.
pub const ENV_IDENTITY_TOKEN: &str = "SLUICE_PROXY_IDENTITY_TOKEN";
/// A file holding the bootstrap token (re-read at every renewal). Excludes
/// [`ENV_IDENTITY_TOKEN`].
pub const ENV_IDENTITY_TOKEN_FILE: &str = "SLUICE_PROXY_IDENTITY_TOKEN_FILE";
/// Instead of the controller: a directory with `cert.pem`, `key.pem` and `roots.pem`, polled
/// for changes (standalone and tests).
pub const ENV_IDENTITY_DIR: &str = "SLUICE_PROXY_IDENTITY_DIR";
/// How often [`ENV_IDENTITY_DIR`] is checked. Default `1s`.
pub const ENV_IDENTITY_POLL: &str = "SLUICE_PROXY_IDENTITY_POLL";
/// `enforce` or `off`: inbound authorization. Default `enforce` when the proxy has a mesh
/// identity source or a config source (policy directory, snapshot file or the controller),
/// `off` otherwise (a bare proxy only forwards).
pub const ENV_AUTHZ: &str = "SLUICE_PROXY_AUTHZ";
/// The shape of the async runtime: `current-thread` (every task on the main thread),
/// `multi-thread` (tokio's work-stealing pool, `TOKIO_WORKER_THREADS` workers, default one
/// per CPU) or `per-core` (one current-thread runtime per worker, each accepting its own
/// connections). See [`RuntimeShape`] for the default and why.
pub const ENV_RUNTIME: &str = "SLUICE_PROXY_RUNTIME";
/// How often denials are reported to the controller. Default `1s`.
pub const ENV_DENIAL_REPORT_INTERVAL: &str = "SLUICE_PROXY_DENIAL_REPORT_INTERVAL";
/// With the controller source: how often the inbound traffic totals are checked and, if they
/// changed, reported to the controller (`ReportTraffic`, for canary analysis). Default `1s`.
pub const ENV_TRAFFIC_REPORT_INTERVAL: &str = "SLUICE_PROXY_TRAFFIC_REPORT_INTERVAL";

/// The pod's kubelet probes, written by the injector: `PORT/PATH` or `PORT=grpc`,
/// comma-separated (`8080/ready,8080/live`). Exactly these plain-text calls are allowed without
/// identity, whatever the policy says (see [`sluice_policy::probes`]).
pub const ENV_PROBES: &str = "SLUICE_PROXY_PROBES";

/// File descriptors kept for everything but proxied connections: the admin listener and its
/// clients, the controller stream, config files, logs.
pub const RESERVED_FDS: u64 = 256;

/// The default connection limit per listener for a file-descriptor limit of `nofile` and
/// `listeners` listeners: a proxied connection holds two descriptors (client and upstream),
/// so the listeners together can never take the descriptors reserved for health checks.
pub fn default_max_connections(nofile: u64, listeners: usize) -> usize {
    let per_listener = nofile.saturating_sub(RESERVED_FDS) / (2 * listeners.max(1) as u64);
    usize::try_from(per_listener)
        .unwrap_or(usize::MAX)
        .clamp(16, 100_000)
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// How the proxy's tasks are scheduled ([`ENV_RUNTIME`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeShape {
    /// One thread runs every task: no cross-thread wake-ups, no work stealing, no atomics
    /// contended between cores. Linkerd's sidecar runs this way by default.
    CurrentThread,
    /// Tokio's work-stealing pool.
    MultiThread,
    /// One current-thread runtime per worker (`TOKIO_WORKER_THREADS`, default one per CPU),
    /// each accepting from every listener and handing a new connection to the least loaded
    /// worker, which serves it to the end with its own upstream connection pools: a connection
    /// and the connections it opens stay on one thread (no lock contended and no wake-up across
    /// cores, which HTTP/2's per-connection state pays for most), and every core is used. The
    /// controller stream, the admin server and the reporters run on the first.
    ///
    /// The default: in one run of `mesh_bench` on 2 cores it served 48% more gRPC unary calls
    /// and 29% more server streams than `multi-thread`, at a third less CPU per call, with the
    /// same CPU per HTTP/1.1 request and the same latency, for 5–12% less HTTP/1.1 closed-loop
    /// throughput (benches/README.md, "Runtime shape").
    PerCore,
}

impl RuntimeShape {
    /// The value of [`ENV_RUNTIME`] that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeShape::CurrentThread => "current-thread",
            RuntimeShape::MultiThread => "multi-thread",
            RuntimeShape::PerCore => "per-core",
        }
    }
}

/// What to do with outbound traffic no service owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownDestinations {
    /// Forward to the original destination.
    Passthrough,
    /// Refuse (HTTP 403 / closed connection).
    Refuse,
}

/// Where the proxy's config comes from (see [`ENV_CONFIG_SOURCE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// Nothing: the empty config.
    None,
    /// [`ENV_POLICY_DIR`] (and [`ENV_ENDPOINTS`]).
    PolicyDir,
    /// [`ENV_SNAPSHOT`].
    Snapshot,
    /// The controller's `Watch` stream at [`ENV_CONTROLLER_ADDR`].
    Controller,
}

impl SourceKind {
    /// The value of [`ENV_CONFIG_SOURCE`] that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::None => "none",
            SourceKind::PolicyDir => "policy-dir",
            SourceKind::Snapshot => "snapshot",
            SourceKind::Controller => "controller",
        }
    }
}

/// A listener that forwards to a fixed target instead of reading the original destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExplicitListener {
    /// Inbound or outbound rules apply.
    pub direction: Direction,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Treated as the connection's original destination.
    pub target: SocketAddr,
}

/// The whole proxy configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// See [`ENV_INBOUND_ADDR`].
    pub inbound_addr: Option<SocketAddr>,
    /// See [`ENV_OUTBOUND_ADDR`].
    pub outbound_addr: Option<SocketAddr>,
    /// See [`ENV_ADMIN_ADDR`].
    pub admin_addr: SocketAddr,
    /// See [`ENV_LOG_FORMAT`].
    pub log_format: LogFormat,
    /// See [`ENV_LOG`].
    pub log_filter: String,
    /// See [`ENV_DRAIN_DEADLINE`].
    pub drain_deadline: Duration,
    /// See [`ENV_DETECT_TIMEOUT`].
    pub detect_timeout: Duration,
    /// See [`ENV_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`ENV_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`ENV_H2_RAPID_RESET_STREAMS`] and [`ENV_H2_RAPID_RESET_LIFETIME`].
    pub rapid_reset: crate::http::RapidReset,
    /// See [`ENV_MAX_CONNECTIONS`]; `None`: derived from the fd limit at start.
    pub max_connections: Option<usize>,
    /// See [`ENV_OPAQUE_PORTS`].
    pub opaque_ports: BTreeSet<u16>,
    /// See [`ENV_EXPLICIT_OUTBOUND`] and [`ENV_EXPLICIT_INBOUND`].
    pub explicit: Vec<ExplicitListener>,
    /// See [`ENV_POLICY_DIR`].
    pub policy_dir: Option<PathBuf>,
    /// See [`ENV_ENDPOINTS`].
    pub endpoints: Option<PathBuf>,
    /// See [`ENV_SNAPSHOT`].
    pub snapshot: Option<PathBuf>,
    /// See [`ENV_SNAPSHOT_POLL`].
    pub snapshot_poll: Duration,
    /// See [`ENV_UNKNOWN_DESTINATIONS`].
    pub unknown_destinations: UnknownDestinations,
    /// See [`ENV_SERVICE`].
    pub service: String,
    /// See [`ENV_SERVICE_VERSION`].
    pub service_version: String,
    /// See [`ENV_NAMESPACE`].
    pub namespace: String,
    /// See [`ENV_ENVIRONMENT`].
    pub environment: String,
    /// See [`ENV_ROLE`].
    pub role: String,
    /// See [`ENV_INSTANCE`].
    pub instance: String,
    /// See [`ENV_PROXY_ID`].
    pub proxy_id: String,
    /// See [`ENV_LISTEN_ADDRS_FILE`].
    pub listen_addrs_file: Option<PathBuf>,
    /// See [`ENV_CONTROLLER_ADDR`].
    pub controller_addr: Option<String>,
    /// See [`ENV_CONTROLLER_CA`].
    pub controller_ca: Option<PathBuf>,
    /// See [`ENV_CONFIG_SOURCE`]: the source in use, explicit or inferred.
    pub source: SourceKind,
    /// See [`ENV_REGISTER_ADDR`].
    pub register_addr: Option<SocketAddr>,
    /// See [`ENV_IDENTITY_TOKEN`] and [`ENV_IDENTITY_TOKEN_FILE`].
    pub identity_token: Option<crate::identity::certify::Token>,
    /// See [`ENV_IDENTITY_DIR`].
    pub identity_dir: Option<PathBuf>,
    /// See [`ENV_IDENTITY_POLL`].
    pub identity_poll: Duration,
    /// See [`ENV_AUTHZ`].
    pub authz: bool,
    /// See [`ENV_DENIAL_REPORT_INTERVAL`].
    pub denial_report_interval: Duration,
    /// See [`ENV_RUNTIME`].
    pub runtime: RuntimeShape,
    /// See [`ENV_TRAFFIC_REPORT_INTERVAL`].
    pub traffic_report_interval: Duration,
    /// See [`ENV_PROBES`].
    pub probes: sluice_policy::probes::ProbeSet,
}

/// One bad variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable name.
    pub var: &'static str,
    /// What it was set to.
    pub value: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

/// Every bad variable at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} invalid configuration variable(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// The controller and how to trust it, if one is configured.
    pub fn controller(&self) -> Option<crate::identity::controller::ControllerConn> {
        Some(crate::identity::controller::ControllerConn {
            addr: self.controller_addr.clone()?,
            ca: self.controller_ca.clone()?,
        })
    }

    /// The local workload's identity.
    pub fn workload(&self) -> crate::state::Workload {
        crate::state::Workload {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            version: self.service_version.clone(),
            environment: self.environment.clone(),
            role: self.role.clone(),
            instance: self.instance.clone(),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut p = Parser {
            get: &get,
            errors: Vec::new(),
        };
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut config = Config {
            inbound_addr: p.optional_addr(ENV_INBOUND_ADDR, "0.0.0.0:4143"),
            outbound_addr: p.optional_addr(ENV_OUTBOUND_ADDR, "127.0.0.1:4140"),
            admin_addr: p
                .optional_addr(ENV_ADMIN_ADDR, "127.0.0.1:4191")
                .unwrap_or(SocketAddr::new(loopback, 4191)),
            log_format: p.parse(ENV_LOG_FORMAT, LogFormat::Plain, |s| match s {
                "plain" => Ok(LogFormat::Plain),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `plain` or `json`".into()),
            }),
            log_filter: p.get(ENV_LOG).unwrap_or_else(|| "info".into()),
            drain_deadline: p.duration(ENV_DRAIN_DEADLINE, Duration::from_secs(30)),
            detect_timeout: p.duration(ENV_DETECT_TIMEOUT, Duration::from_secs(1)),
            connect_timeout: p.duration(ENV_CONNECT_TIMEOUT, Duration::from_secs(3)),
            header_read_timeout: p.duration(ENV_HEADER_READ_TIMEOUT, Duration::from_secs(10)),
            rapid_reset: crate::http::RapidReset {
                min_streams: p.parse(ENV_H2_RAPID_RESET_STREAMS, 500, |s| {
                    match s.parse::<u32>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err("expected a positive number of streams, e.g. `500`".into()),
                    }
                }),
                min_lifetime: p.duration(ENV_H2_RAPID_RESET_LIFETIME, Duration::from_secs(1)),
            },
            max_connections: p.parse(ENV_MAX_CONNECTIONS, None, |s| match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err("expected a positive number of connections, e.g. `10000`".into()),
            }),
            opaque_ports: p.parse(ENV_OPAQUE_PORTS, BTreeSet::new(), parse_ports),
            explicit: {
                let mut v = p.parse(ENV_EXPLICIT_OUTBOUND, Vec::new(), |s| {
                    parse_explicit(s, Direction::Outbound)
                });
                v.extend(p.parse(ENV_EXPLICIT_INBOUND, Vec::new(), |s| {
                    parse_explicit(s, Direction::Inbound)
                }));
                v
            },
            policy_dir: p.path(ENV_POLICY_DIR),
            endpoints: p.path(ENV_ENDPOINTS),
            snapshot: p.path(ENV_SNAPSHOT),
            snapshot_poll: p.duration(ENV_SNAPSHOT_POLL, Duration::from_secs(1)),
            unknown_destinations: p.parse(
                ENV_UNKNOWN_DESTINATIONS,
                UnknownDestinations::Passthrough,
                |s| match s {
                    "passthrough" => Ok(UnknownDestinations::Passthrough),
                    "refuse" => Ok(UnknownDestinations::Refuse),
                    _ => Err("expected `passthrough` or `refuse`".into()),
                },
            ),
            service: p.get(ENV_SERVICE).unwrap_or_default(),
            service_version: p.get(ENV_SERVICE_VERSION).unwrap_or_default(),
            namespace: p.non_empty(ENV_NAMESPACE, "default"),
            environment: p.non_empty(ENV_ENVIRONMENT, crate::state::endpoints::STABLE),
            role: p.parse(ENV_ROLE, String::new(), |s| match s {
                "" | sluice_policy::resources::BASELINE_ROLE => Ok(s.to_owned()),
                _ => Err(format!(
                    "expected `{}` or nothing",
                    sluice_policy::resources::BASELINE_ROLE
                )),
            }),
            instance: p.get(ENV_INSTANCE).unwrap_or_default(),
            proxy_id: p
                .get(ENV_PROXY_ID)
                .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
            listen_addrs_file: p.get(ENV_LISTEN_ADDRS_FILE).map(PathBuf::from),
            controller_addr: p
                .get(ENV_CONTROLLER_ADDR)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s.contains("://") {
                        s
                    } else {
                        format!("https://{s}")
                    }
                }),
            controller_ca: p.path(ENV_CONTROLLER_CA),
            source: SourceKind::None,
            register_addr: p.parse(ENV_REGISTER_ADDR, None, |s| {
                s.parse()
                    .map(Some)
                    .map_err(|_| "expected the `ip:port` peers dial (e.g. 10.1.0.5:4143)".into())
            }),
            identity_token: match (p.get(ENV_IDENTITY_TOKEN), p.path(ENV_IDENTITY_TOKEN_FILE)) {
                (Some(t), None) if !t.is_empty() => Some(crate::identity::certify::Token::Value(t)),
                (_, Some(f)) => Some(crate::identity::certify::Token::File(f)),
                _ => None,
            },
            identity_dir: p.path(ENV_IDENTITY_DIR),
            identity_poll: p.duration(ENV_IDENTITY_POLL, Duration::from_secs(1)),
            authz: false,
            denial_report_interval: p.duration(ENV_DENIAL_REPORT_INTERVAL, Duration::from_secs(1)),
            runtime: p.parse(ENV_RUNTIME, RuntimeShape::PerCore, |s| match s {
                "current-thread" => Ok(RuntimeShape::CurrentThread),
                "multi-thread" => Ok(RuntimeShape::MultiThread),
                "per-core" => Ok(RuntimeShape::PerCore),
                _ => Err("expected `current-thread`, `multi-thread` or `per-core`".into()),
            }),
            traffic_report_interval: p
                .duration(ENV_TRAFFIC_REPORT_INTERVAL, Duration::from_secs(1)),
            probes: p.parse(ENV_PROBES, Default::default(), |s| {
                sluice_policy::probes::ProbeSet::parse(s).map_err(|e| e.to_string())
            }),
        };
        config.source = choose_source(&mut p, &config);
        // Any policy source makes this proxy a mesh member: a snapshot file is exactly what the
        // controller ships, so it must enforce like a policy directory does.
        let mesh_member = config.identity_dir.is_some()
            || config.identity_token.is_some()
            || config.source != SourceKind::None;
        config.authz = p.parse(ENV_AUTHZ, mesh_member, |s| match s {
            "enforce" => Ok(true),
            "off" => Ok(false),
            _ => Err("expected `enforce` or `off`".into()),
        });
        if let (Some(_), Some(_)) = (p.get(ENV_IDENTITY_TOKEN), p.get(ENV_IDENTITY_TOKEN_FILE)) {
            p.errors.push(ConfigError {
                var: ENV_IDENTITY_TOKEN_FILE,
                value: p.get(ENV_IDENTITY_TOKEN_FILE).unwrap_or_default(),
                reason: format!(
                    "set either {ENV_IDENTITY_TOKEN} or {ENV_IDENTITY_TOKEN_FILE}, not both"
                ),
            });
        }
        if config.identity_token.is_some() && config.controller_addr.is_none() {
            p.errors.push(ConfigError {
                var: ENV_CONTROLLER_ADDR,
                value: String::new(),
                reason: "a bootstrap token is set, so the controller address is needed to use it (e.g. 127.0.0.1:7071)".into(),
            });
        }
        if let Some(addr) = &config.controller_addr {
            if !addr.starts_with("https://") {
                p.errors.push(ConfigError {
                    var: ENV_CONTROLLER_ADDR,
                    value: addr.clone(),
                    reason: "the controller serves TLS only: use https://HOST:PORT, or HOST:PORT"
                        .into(),
                });
            }
            if config.controller_ca.is_none() {
                p.errors.push(ConfigError {
                    var: ENV_CONTROLLER_CA,
                    value: String::new(),
                    reason: "the controller's address is set, so the mesh CA certificate (PEM) \
                             that its certificate chains to is needed to trust it (the \
                             controller's STATE_DIR/ca/ca.crt, or the file given as --ca-cert)"
                        .into(),
                });
            }
        }
        if config.source == SourceKind::Controller
            && config.identity_token.is_none()
            && config.identity_dir.is_none()
        {
            p.errors.push(ConfigError {
                var: ENV_IDENTITY_TOKEN,
                value: String::new(),
                reason: format!(
                    "the controller streams config only to a workload that proves who it is: \
                     set {ENV_IDENTITY_TOKEN} or {ENV_IDENTITY_TOKEN_FILE} (a bootstrap token, \
                     for a certificate from the controller) or {ENV_IDENTITY_DIR}"
                ),
            });
        }
        if config.identity_token.is_some() && config.identity_dir.is_some() {
            p.errors.push(ConfigError {
                var: ENV_IDENTITY_DIR,
                value: config
                    .identity_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                reason: "set either an identity directory or a bootstrap token, not both".into(),
            });
        }
        if config.instance.is_empty() {
            config.instance = config.proxy_id.clone();
        }
        // A timer with a zero period would spin (tokio refuses it outright).
        if config.traffic_report_interval.is_zero() {
            p.errors.push(ConfigError {
                var: ENV_TRAFFIC_REPORT_INTERVAL,
                value: p.get(ENV_TRAFFIC_REPORT_INTERVAL).unwrap_or_default(),
                reason: "expected a positive duration like `1s`".into(),
            });
        }
        // Two sources would race each other; an endpoints file without a policy directory
        // would be silently ignored. Both are mistakes worth stopping for.
        if let (Some(_), Some(snapshot)) = (&config.policy_dir, &config.snapshot) {
            p.errors.push(ConfigError {
                var: ENV_SNAPSHOT,
                value: snapshot.display().to_string(),
                reason: format!("set either {ENV_POLICY_DIR} or {ENV_SNAPSHOT}, not both"),
            });
        }
        if let (None, Some(endpoints)) = (&config.policy_dir, &config.endpoints) {
            p.errors.push(ConfigError {
                var: ENV_ENDPOINTS,
                value: endpoints.display().to_string(),
                reason: format!("only used with {ENV_POLICY_DIR}, which is not set"),
            });
        }
        if p.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(p.errors))
        }
    }
}

/// The config source: [`ENV_CONFIG_SOURCE`] if set, else inferred (a file source wins over the
/// controller, whose address may be there only for `Certify`). Records what does not fit.
fn choose_source(p: &mut Parser<'_>, c: &Config) -> SourceKind {
    let explicit = p.parse(ENV_CONFIG_SOURCE, None, |s| match s {
        "controller" => Ok(Some(SourceKind::Controller)),
        "policy-dir" => Ok(Some(SourceKind::PolicyDir)),
        "snapshot" => Ok(Some(SourceKind::Snapshot)),
        "none" => Ok(Some(SourceKind::None)),
        _ => Err("expected `controller`, `policy-dir`, `snapshot` or `none`".into()),
    });
    let inferred = match (&c.policy_dir, &c.snapshot, &c.controller_addr) {
        (Some(_), _, _) => SourceKind::PolicyDir,
        (None, Some(_), _) => SourceKind::Snapshot,
        (None, None, Some(_)) => SourceKind::Controller,
        (None, None, None) => SourceKind::None,
    };
    let source = explicit.unwrap_or(inferred);
    let chosen = source.as_str();
    let mut error = |var: &'static str, value: String, reason: String| {
        p.errors.push(ConfigError { var, value, reason });
    };
    let shown = |path: &Option<PathBuf>| path.as_ref().map(|d| d.display().to_string());
    // An explicit choice must have what it needs and nothing that competes with it.
    if explicit.is_some() {
        let needs = match source {
            SourceKind::PolicyDir if c.policy_dir.is_none() => Some(ENV_POLICY_DIR),
            SourceKind::Snapshot if c.snapshot.is_none() => Some(ENV_SNAPSHOT),
            SourceKind::Controller if c.controller_addr.is_none() => Some(ENV_CONTROLLER_ADDR),
            _ => None,
        };
        if let Some(var) = needs {
            error(
                var,
                String::new(),
                format!("{ENV_CONFIG_SOURCE}={chosen} needs it"),
            );
        }
        for (var, kind, value) in [
            (ENV_POLICY_DIR, SourceKind::PolicyDir, shown(&c.policy_dir)),
            (ENV_SNAPSHOT, SourceKind::Snapshot, shown(&c.snapshot)),
        ] {
            if let Some(value) = value.filter(|_| kind != source) {
                error(
                    var,
                    value,
                    format!("{ENV_CONFIG_SOURCE}={chosen}: unset it, or choose that source"),
                );
            }
        }
    }
    if source == SourceKind::Controller {
        // The controller refuses a Watch without a service, forever: say so now instead.
        if c.service.is_empty() {
            error(
                ENV_SERVICE,
                String::new(),
                "the controller config source needs the workload's service name".into(),
            );
        }
    }
    if let Some(addr) = c.register_addr {
        if source != SourceKind::Controller {
            error(
                ENV_REGISTER_ADDR,
                addr.to_string(),
                format!(
                    "registration rides on the controller's Watch stream, but the config source is {chosen}"
                ),
            );
        } else if c.service_version.is_empty() {
            error(
                ENV_SERVICE_VERSION,
                String::new(),
                format!(
                    "{ENV_REGISTER_ADDR} is set, so the version peers route to is needed (e.g. v1)"
                ),
            );
        }
    }
    source
}

/// Collects errors instead of stopping at the first one.
struct Parser<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Parser<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.get)(var).map(|s| s.trim().to_owned())
    }

    fn path(&self, var: &str) -> Option<PathBuf> {
        self.get(var).filter(|s| !s.is_empty()).map(PathBuf::from)
    }

    fn non_empty(&self, var: &str, default: &str) -> String {
        self.get(var)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default.to_owned())
    }

    fn parse<T>(
        &mut self,
        var: &'static str,
        default: T,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(value) = self.get(var) else {
            return default;
        };
        match f(&value) {
            Ok(v) => v,
            Err(reason) => {
                self.errors.push(ConfigError { var, value, reason });
                default
            }
        }
    }

    fn optional_addr(&mut self, var: &'static str, default: &str) -> Option<SocketAddr> {
        let default = default.parse().ok();
        self.parse(var, default, |s| match s {
            "off" => Ok(None),
            _ => s
                .parse()
                .map(Some)
                .map_err(|_| "expected `ip:port` (e.g. 127.0.0.1:4140) or `off`".into()),
        })
    }

    fn duration(&mut self, var: &'static str, default: Duration) -> Duration {
        self.parse(var, default, |s| {
            humantime::parse_duration(s).map_err(|e| format!("expected a duration like `5s`: {e}"))
        })
    }
}

fn parse_ports(s: &str) -> Result<BTreeSet<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
        })
        .collect()
}

fn parse_explicit(s: &str, direction: Direction) -> Result<Vec<ExplicitListener>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (listen, target) = entry.split_once('=').ok_or_else(|| {
                format!("`{entry}`: expected LISTEN=TARGET, e.g. 15001=10.0.0.1:80")
            })?;
            let listen = match listen.trim().parse::<u16>() {
                Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                Err(_) => listen
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{listen}`: expected a port or ip:port"))?,
            };
            let target = target
                .trim()
                .parse()
                .map_err(|_| format!("`{target}`: expected ip:port"))?;
            Ok(ExplicitListener {
                direction,
                listen,
                target,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.inbound_addr, Some("0.0.0.0:4143".parse().expect("addr")));
        assert_eq!(
            c.outbound_addr,
            Some("127.0.0.1:4140".parse().expect("addr"))
        );
        assert_eq!(c.admin_addr, "127.0.0.1:4191".parse().expect("addr"));
        assert_eq!(c.log_format, LogFormat::Plain);
        assert_eq!(c.drain_deadline, Duration::from_secs(30));
        assert_eq!(c.unknown_destinations, UnknownDestinations::Passthrough);
        assert!(c.explicit.is_empty());
        let w = c.workload();
        assert_eq!(
            (w.namespace.as_str(), w.environment.as_str()),
            ("default", "stable")
        );
        assert_eq!(w.instance, c.proxy_id);
    }

    #[test]
    fn probes_are_parsed_strictly() {
        let c = parse(&[(ENV_PROBES, "8080/ready,8080/live")]).expect("valid");
        assert_eq!(c.probes.probes().len(), 2);
        let errs = parse(&[(ENV_PROBES, "8080/../admin")]).expect_err("refused");
        assert_eq!(errs.0[0].var, ENV_PROBES);
        assert!(errs.0[0].reason.contains("PORT/PATH"), "{}", errs.0[0]);
    }

    #[test]
    fn rapid_reset_limits() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.rapid_reset, crate::http::RapidReset::default());
        let c = parse(&[
            (ENV_H2_RAPID_RESET_STREAMS, "2000"),
            (ENV_H2_RAPID_RESET_LIFETIME, "200ms"),
        ])
        .expect("valid");
        assert_eq!(c.rapid_reset.min_streams, 2000);
        assert_eq!(c.rapid_reset.min_lifetime, Duration::from_millis(200));
        let errs = parse(&[(ENV_H2_RAPID_RESET_STREAMS, "0")]).expect_err("zero");
        assert_eq!(errs.0[0].var, ENV_H2_RAPID_RESET_STREAMS);
        assert!(errs.0[0].reason.contains("`500`"), "{}", errs.0[0]);
    }

    #[test]
    fn traffic_report_interval() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.traffic_report_interval, Duration::from_secs(1));
        let c = parse(&[(ENV_TRAFFIC_REPORT_INTERVAL, "250ms")]).expect("valid");
        assert_eq!(c.traffic_report_interval, Duration::from_millis(250));
        let errs = parse(&[(ENV_TRAFFIC_REPORT_INTERVAL, "0s")]).expect_err("zero");
        assert_eq!(errs.0[0].var, ENV_TRAFFIC_REPORT_INTERVAL);
    }

    #[test]
    fn one_config_source_at_a_time() {
        let errs =
            parse(&[(ENV_POLICY_DIR, "/p"), (ENV_SNAPSHOT, "/s.json")]).expect_err("both sources");
        assert_eq!(errs.0[0].var, ENV_SNAPSHOT);
        let errs = parse(&[(ENV_ENDPOINTS, "/e.json")]).expect_err("no dir");
        assert_eq!(errs.0[0].var, ENV_ENDPOINTS);
        let c = parse(&[(ENV_POLICY_DIR, "/p"), (ENV_ENDPOINTS, "/e.json")]).expect("valid");
        assert_eq!(c.endpoints, Some(PathBuf::from("/e.json")));
    }

    #[test]
    fn the_controller_is_the_source_unless_a_file_is_named() {
        let addr = (ENV_CONTROLLER_ADDR, "127.0.0.1:7071");
        let ca = (ENV_CONTROLLER_CA, "/run/ca.pem");
        let token = (ENV_IDENTITY_TOKEN, "t");
        let c = parse(&[addr, ca, token, (ENV_SERVICE, "web")]).expect("valid");
        assert_eq!(c.source, SourceKind::Controller);
        assert_eq!(c.controller_addr.as_deref(), Some("https://127.0.0.1:7071"));
        assert!(c.authz, "a controller-fed proxy enforces");
        // A file source wins; the controller is then only for Certify and denial reports.
        let c = parse(&[addr, ca, (ENV_POLICY_DIR, "/p")]).expect("valid");
        assert_eq!(c.source, SourceKind::PolicyDir);
        let c = parse(&[
            addr,
            ca,
            token,
            (ENV_SERVICE, "web"),
            (ENV_SERVICE_VERSION, "v1"),
            (ENV_REGISTER_ADDR, "10.0.0.1:4143"),
        ])
        .expect("valid");
        assert_eq!(
            c.register_addr,
            Some("10.0.0.1:4143".parse().expect("addr"))
        );

        let vars = |e: ConfigErrors| e.0.iter().map(|e| e.var).collect::<Vec<_>>();
        let errs = parse(&[
            addr,
            ca,
            token,
            (ENV_CONFIG_SOURCE, "controller"),
            (ENV_SNAPSHOT, "/s"),
        ])
        .expect_err("conflict");
        assert_eq!(vars(errs), [ENV_SNAPSHOT, ENV_SERVICE]);
        let errs = parse(&[
            (ENV_CONFIG_SOURCE, "controller"),
            (ENV_SERVICE, "web"),
            token,
        ])
        .expect_err("no address");
        assert_eq!(vars(errs), [ENV_CONTROLLER_ADDR, ENV_CONTROLLER_ADDR]);
        let errs = parse(&[(ENV_POLICY_DIR, "/p"), (ENV_REGISTER_ADDR, "10.0.0.1:1")])
            .expect_err("register without the controller");
        assert_eq!(vars(errs), [ENV_REGISTER_ADDR]);
        let errs = parse(&[(ENV_CONFIG_SOURCE, "etcd")]).expect_err("unknown");
        assert_eq!(vars(errs), [ENV_CONFIG_SOURCE]);
    }

    #[test]
    fn the_controller_is_reached_over_tls_by_a_workload_that_can_prove_who_it_is() {
        let vars = |e: ConfigErrors| e.0.iter().map(|e| e.var).collect::<Vec<_>>();
        let service = (ENV_SERVICE, "web");
        let token = (ENV_IDENTITY_TOKEN, "t");
        let ca = (ENV_CONTROLLER_CA, "/run/ca.pem");
        let errs = parse(&[
            (ENV_CONTROLLER_ADDR, "http://127.0.0.1:7071"),
            ca,
            token,
            service,
        ])
        .expect_err("plaintext");
        assert_eq!(vars(errs), [ENV_CONTROLLER_ADDR]);
        let errs = parse(&[(ENV_CONTROLLER_ADDR, "127.0.0.1:7071"), token, service])
            .expect_err("no CA to trust the controller with");
        assert_eq!(vars(errs), [ENV_CONTROLLER_CA]);
        let errs = parse(&[(ENV_CONTROLLER_ADDR, "127.0.0.1:7071"), ca, service])
            .expect_err("no identity to watch with");
        assert_eq!(vars(errs), [ENV_IDENTITY_TOKEN]);
        let c = parse(&[
            (ENV_CONTROLLER_ADDR, "https://ctl:7071"),
            ca,
            (ENV_IDENTITY_DIR, "/id"),
            service,
        ])
        .expect("certificates from files will do");
        assert_eq!(
            c.controller().map(|c| c.ca),
            Some(PathBuf::from("/run/ca.pem"))
        );
    }

    #[test]
    fn reports_every_error_at_once() {
        let errs = parse(&[
            (ENV_INBOUND_ADDR, "nope"),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_DRAIN_DEADLINE, "soon"),
            (ENV_OPAQUE_PORTS, "3306,0,abc"),
            (ENV_EXPLICIT_OUTBOUND, "15001"),
            (ENV_UNKNOWN_DESTINATIONS, "drop"),
        ])
        .expect_err("all invalid");
        let vars: Vec<_> = errs.0.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                ENV_INBOUND_ADDR,
                ENV_LOG_FORMAT,
                ENV_DRAIN_DEADLINE,
                ENV_OPAQUE_PORTS,
                ENV_EXPLICIT_OUTBOUND,
                ENV_UNKNOWN_DESTINATIONS
            ]
        );
        let text = errs.to_string();
        assert!(text.starts_with("6 invalid"), "{text}");
    }

    #[test]
    fn explicit_listeners_and_off() {
        let c = parse(&[
            (ENV_INBOUND_ADDR, "off"),
            (
                ENV_EXPLICIT_OUTBOUND,
                "15001=10.0.0.1:80, 127.0.0.2:0=[::1]:8080",
            ),
            (ENV_EXPLICIT_INBOUND, "15002=127.0.0.1:9090"),
            (ENV_LOG_FORMAT, "json"),
        ])
        .expect("valid");
        assert_eq!(c.inbound_addr, None);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.explicit.len(), 3);
        assert_eq!(
            c.explicit[0].listen,
            "127.0.0.1:15001".parse().expect("addr")
        );
        assert_eq!(c.explicit[1].target, "[::1]:8080".parse().expect("addr"));
        assert_eq!(c.explicit[2].direction, Direction::Inbound);
    }
}
