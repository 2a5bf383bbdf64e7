//! The controller's gRPC server (`sluice.mesh.v1.Mesh`) and the `sluice controller` command.
//!
//! The API is served over TLS 1.3 only (`tls`): the controller's certificate comes from the
//! mesh CA, and a client may present its workload certificate. `Watch`, `Register`,
//! `ReportTraffic` and `ReportDenials` need one (`auth::caller`) and hand the proven workload to
//! the handler, which refuses requests for any other workload; `Certify` takes the certificate
//! (renewal) or a bootstrap token (the first certificate).
//!
//! Each RPC lives in its own module (`certify`, `watch`, `register`, `report_denials`,
//! `report_traffic`) as a
//! plain function returning `Result<_, ApiError>`; [`MeshService`] only dispatches, logs, and
//! converts errors with the single `From<ApiError> for Status` in `error.rs`.
//!
//! The control plane's live state (policy snapshot, registrations, connected proxies, the
//! published config) is [`state::ControlPlane`]; `policy_watch` keeps the policy current,
//! `store` (crate root) persists runtime state, `admin` serves `GET /status`. The whole design
//! is described in `docs/controller.md`.
//!
//! Proxies verify the controller against the mesh CA certificate they are given at start
//! (`SLUICE_PROXY_CONTROLLER_CA`); a plaintext client fails the handshake.

pub mod admin;
mod auth;
mod certify;
pub mod env_api;
mod error;
pub mod policy_watch;
pub(crate) mod register;
mod report_denials;
mod report_traffic;
pub mod rollout_api;
pub mod state;
pub mod tls;
pub mod view;
mod watch;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use sluice_api::tls::PeerCertificates;
use sluice_api::v1::mesh_server::{Mesh, MeshServer};
use sluice_api::v1::{
    CertifyRequest, CertifyResponse, DenialReport, DenialReportAck, ProxyConfig, Registration,
    RegistrationAck, TrafficReport, TrafficReportAck, WatchRequest,
};
use sluice_policy::PolicySet;
use sluice_policy::diagnostic::{Style, render};
use sluice_policy::validate::LoadError;
use state::{ControlPlane, PolicySnapshot};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tonic::{Request, Response, Status};

pub use error::ApiError;

use crate::identity::ca::CaOrigin;
use crate::identity::cli::parse_duration;
use crate::identity::issue::{MAX_LIFETIME, MIN_LIFETIME};
use crate::identity::{
    Certifier, IdentityError, MeshCa, TokenKey, TrustDomain, WorkloadAuthenticator,
    WorkloadIdentity,
};
use crate::status::{ADMIN_ADDR_FILE, ControllerInfo};
use crate::store::Store;
use crate::{CliError, Outcome};

/// The largest request message accepted (CSRs are bounded separately, at 16 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long in-flight calls get to finish after SIGTERM or ctrl-c.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a registration outlives its instance's last `Watch` stream, by default.
pub const DEFAULT_REGISTRATION_GRACE: Duration = Duration::from_secs(30);

/// The `Mesh` service.
pub struct MeshService {
    certifier: Arc<Certifier>,
    authenticator: Arc<dyn WorkloadAuthenticator>,
    plane: Arc<ControlPlane>,
}

impl MeshService {
    /// A service issuing certificates with `certifier` to workloads `authenticator` proves,
    /// and distributing `plane`'s configuration.
    pub fn new(
        certifier: Arc<Certifier>,
        authenticator: Arc<dyn WorkloadAuthenticator>,
        plane: Arc<ControlPlane>,
    ) -> Self {
        MeshService {
            certifier,
            authenticator,
            plane,
        }
    }

    /// The certificate authority it issues with.
    pub fn certifier(&self) -> &Arc<Certifier> {
        &self.certifier
    }

    /// The tonic service, with the request size bound applied.
    pub fn into_server(self) -> MeshServer<MeshService> {
        MeshServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// The stream type of `Watch`.
pub type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ProxyConfig, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Mesh for MeshService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let certs = peer_certificates(&request);
        let peer = certs.as_ref().and_then(|c| c.remote_addr);
        let request = request.into_inner();
        let (namespace, service) = request
            .workload
            .as_ref()
            .map(|w| (w.namespace.clone(), w.service.clone()))
            .unwrap_or_default();
        let result = certify::certify(
            &self.certifier,
            &*self.authenticator,
            certs.as_ref(),
            request,
        )
        .await;
        match &result {
            Ok(response) => tracing::info!(
                peer = ?peer,
                spiffe_id = %response.spiffe_id,
                not_after = response.not_after_unix,
                "issued a workload certificate"
            ),
            Err(e) if e.is_internal() => {
                tracing::error!(peer = ?peer, namespace, service, error = %e, "Certify failed");
            }
            Err(e) => {
                tracing::warn!(peer = ?peer, namespace, service, error = %e, "Certify refused");
            }
        }
        result.map(Response::new).map_err(Status::from)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let certs = peer_certificates(&request);
        let peer = certs.as_ref().and_then(|c| c.remote_addr);
        let result = auth::caller(certs.as_ref(), self.certifier.trust_domain())
            .and_then(|caller| watch::watch(&self.plane, &caller, request.into_inner(), peer));
        match result {
            Ok(stream) => Ok(Response::new(Box::pin(stream))),
            Err(e) => {
                tracing::warn!(peer = ?peer, error = %e, "Watch refused");
                Err(e.into())
            }
        }
    }

    async fn register(
        &self,
        request: Request<Registration>,
    ) -> Result<Response<RegistrationAck>, Status> {
        let certs = peer_certificates(&request);
        let peer = certs.as_ref().and_then(|c| c.remote_addr);
        let workload = request.get_ref().workload.clone().unwrap_or_default();
        let address = request.get_ref().address.clone();
        let result = match auth::caller(certs.as_ref(), self.certifier.trust_domain()) {
            Ok(caller) => register::register(&self.plane, &caller, request.into_inner()).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => tracing::info!(
                namespace = workload.namespace,
                service = workload.service,
                version = workload.version,
                environment = workload.environment,
                instance = workload.instance,
                address,
                "registered an instance"
            ),
            Err(e) if e.is_internal() => {
                tracing::error!(peer = ?peer, error = %e, "Register failed");
            }
            Err(e) => tracing::warn!(peer = ?peer, error = %e, "Register refused"),
        }
        result.map(Response::new).map_err(Status::from)
    }

    async fn report_denials(
        &self,
        request: Request<DenialReport>,
    ) -> Result<Response<DenialReportAck>, Status> {
        let certs = peer_certificates(&request);
        let peer = certs.as_ref().and_then(|c| c.remote_addr);
        let result = match auth::caller(certs.as_ref(), self.certifier.trust_domain()) {
            Ok(caller) => {
                report_denials::report_denials(&self.plane, &caller, request.into_inner()).await
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {}
            Err(e) if e.is_internal() => {
                tracing::error!(peer = ?peer, error = %e, "ReportDenials failed");
            }
            Err(e) => tracing::warn!(peer = ?peer, error = %e, "ReportDenials refused"),
        }
        result.map(Response::new).map_err(Status::from)
    }

    async fn report_traffic(
        &self,
        request: Request<TrafficReport>,
    ) -> Result<Response<TrafficReportAck>, Status> {
        let certs = peer_certificates(&request);
        let peer = certs.as_ref().and_then(|c| c.remote_addr);
        let result = match auth::caller(certs.as_ref(), self.certifier.trust_domain()) {
            Ok(caller) => {
                report_traffic::report_traffic(&self.plane, &caller, request.into_inner())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(peer = ?peer, error = %e, "ReportTraffic refused");
        }
        result.map(Response::new).map_err(Status::from)
    }
}

/// The connection's address and verified client certificate (`sluice_api::tls::incoming`).
fn peer_certificates<T>(request: &Request<T>) -> Option<PeerCertificates> {
    request.extensions().get::<PeerCertificates>().cloned()
}

/// Arguments of `sluice controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Where the controller keeps its state: the CA (`ca/`), the token key (`token.key`), the
    /// store (`controller.db`). Created (mode 0700) if missing.
    #[arg(long, value_name = "DIR", env = "SLUICE_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The address to serve the gRPC API on. Port 0 picks a free port; the address is printed.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    pub listen: SocketAddr,
    /// A directory of policy files, watched for changes. It must be valid at start; later
    /// invalid changes are refused (the last good version stays in force). Its Mesh sets the
    /// trust domain (default `cluster.local`).
    #[arg(long, value_name = "DIR")]
    pub policy: Option<PathBuf>,
    /// The read-only admin endpoint (`GET /status`). Port 0 picks a free port; the address is
    /// written to `STATE_DIR/admin.addr`, where `sluice status` finds it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub admin: SocketAddr,
    /// How long a registration outlives its instance's last Watch stream.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub registration_grace: Duration,
    /// Use this CA certificate (PEM) instead of the one in the state directory.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PKCS#8 PEM) of `--ca-cert`.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// How long workload certificates are valid (10s to 366d). Proxies renew at about 70%.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    pub cert_lifetime: Duration,
    /// Where services are dialled: JSON `{"services": [{"namespace", "service",
    /// "addresses": ["ip:port", ...]}]}` (the shape of the proxy's endpoints file; instances
    /// are not listed, they register themselves). `sluice up` writes it; in Kubernetes the
    /// Services' cluster IPs take its place (`--kubernetes`). Read at start.
    #[arg(long, value_name = "FILE")]
    pub service_addresses: Option<PathBuf>,
    /// The base URL of the rollout pages and charts in notifications. Default: the admin
    /// endpoint's address (`http://127.0.0.1:PORT`).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// A directory with each workload's log as `<instance>.log` (`sluice up` writes them):
    /// a rollback message quotes the canary's last lines from there.
    #[arg(long, value_name = "DIR")]
    pub workload_logs: Option<PathBuf>,
    /// The runtime starts a fresh copy of the stable version beside each canary (with the
    /// role `baseline`), so canaries can be judged against a like-for-like baseline (a
    /// CanaryPolicy's `analysis.baseline: copy`). `sluice up` does and sets this; with
    /// `--kubernetes` the controller starts them itself and this is implied.
    #[arg(long)]
    pub baseline_copies: bool,
    /// Once listening, write the bound address (`127.0.0.1:7071`) and a newline to this file.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// The portal's flags (boxed: they would make every `Command` as large as this one).
    #[command(flatten)]
    pub portal: Box<PortalArgs>,
    /// The Kubernetes backend's flags (`--kubernetes`, …).
    #[command(flatten)]
    pub kubernetes: Box<crate::kubernetes::KubernetesArgs>,
}

/// The portal's flags of `sluice controller`.
#[derive(Debug, Args)]
pub struct PortalArgs {
    /// Serve the portal (access requests, service pages) on this address. Off by default.
    /// Port 0 picks a free port; the address is written to `STATE_DIR/portal.addr`.
    #[arg(long, value_name = "ADDR")]
    pub portal: Option<SocketAddr>,
    /// An authenticating reverse proxy's address: requests from it must name the user in
    /// `X-Forwarded-User` (and may give `X-Forwarded-Email`). Repeatable.
    #[arg(long, value_name = "IP")]
    pub portal_trusted_proxy: Vec<std::net::IpAddr>,
    /// Dev mode: every other portal request is this user. Only on a loopback `--portal`.
    #[arg(long, value_name = "NAME")]
    pub portal_dev_user: Option<String>,
    /// The portal's base URL in notifications; its host is the only name the portal answers to
    /// (plus loopback names in dev mode). Default: `http://` and the portal's address.
    #[arg(long, value_name = "URL")]
    pub portal_url: Option<String>,
}

/// Why the controller could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate lifetime is out of range.
    #[error("--cert-lifetime {} is out of range: it must be between {} and {}",
        humantime::format_duration(*.0), humantime::format_duration(MIN_LIFETIME),
        humantime::format_duration(MAX_LIFETIME))]
    Lifetime(Duration),
    /// Setting up the process (runtime, signal handlers, ready file).
    #[error("cannot {action}: {source}")]
    Setup {
        /// What.
        action: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS could not be set up (the serving certificate, the roots).
    #[error("cannot serve TLS: {0}")]
    Tls(String),
    /// The server failed while running.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The `--service-addresses` file is unreadable or wrong.
    #[error("{file}: {reason}")]
    ServiceAddresses {
        /// The file.
        file: PathBuf,
        /// What is wrong, with the position.
        reason: String,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The portal's flags do not say how to identify users safely.
    #[error(transparent)]
    Portal(#[from] crate::portal::server::PortalConfigError),
    /// The cluster could not be read, or the webhook not served.
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubernetesError),
    /// `--public-url` names no host for the admin API to answer to.
    #[error("--public-url: {0}")]
    PublicUrl(#[from] crate::web::host::BadBaseUrl),
}

/// `sluice controller`.
pub(crate) fn run(
    args: &ControllerArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    init_tracing();
    if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&args.cert_lifetime) {
        return Err(ServeError::Lifetime(args.cert_lifetime).into());
    }
    if let Some(addr) = args.portal.portal {
        crate::portal::server::check_config(addr, &portal_auth(args)).map_err(ServeError::from)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| setup("start the async runtime", source))?;
    // In Kubernetes the cluster is listed before anything is served, so the first policy
    // proxies get is the cluster's, rebuilt from the API server at every start.
    let mut cluster = if args.kubernetes.kubernetes {
        Some(
            runtime
                .block_on(crate::kubernetes::start(&args.kubernetes))
                .map_err(ServeError::from)?,
        )
    } else {
        None
    };
    let (policy, applied) = match (&args.policy, &mut cluster) {
        (Some(dir), _) => initial_policy(dir, err)?,
        (None, Some(c)) => (
            std::mem::replace(&mut c.policy, PolicySnapshot::new(PolicySet::default())),
            0,
        ),
        (None, None) => (PolicySnapshot::new(PolicySet::default()), 0),
    };
    let trust_domain =
        TrustDomain::new(&policy.set.mesh.trust_domain).map_err(IdentityError::from)?;
    let now = SystemTime::now();
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            let ca = MeshCa::load_files(cert, key, now).map_err(IdentityError::from)?;
            tracing::info!(cert = %cert.display(), fingerprint = ca.fingerprint(), "loaded the mesh CA");
            ca
        }
        _ => {
            let (ca, origin) = match (&cluster, &args.kubernetes.ca_secret) {
                (Some(c), Some(secret)) => runtime
                    .block_on(crate::kubernetes::secret::load_or_create(
                        &c.client, secret, now,
                    ))
                    .map_err(|e| ServeError::from(crate::kubernetes::KubernetesError::from(e)))?,
                _ => MeshCa::load_or_create(&args.state_dir, now).map_err(IdentityError::from)?,
            };
            let verb = match origin {
                CaOrigin::Generated => "created a new mesh CA",
                CaOrigin::Loaded => "loaded the mesh CA",
            };
            tracing::info!(
                dir = %args.state_dir.join(crate::identity::ca::CA_DIR).display(),
                fingerprint = ca.fingerprint(),
                "{verb}"
            );
            ca
        }
    };
    let remaining = ca.not_after().duration_since(now).unwrap_or_default();
    if remaining < Duration::from_secs(30 * 24 * 3600) {
        tracing::warn!(
            not_after = %humantime::format_rfc3339_seconds(ca.not_after()),
            "the mesh CA expires within 30 days; rotate it"
        );
    }
    let tokens = TokenKey::load_or_create(&args.state_dir).map_err(IdentityError::from)?;
    tracing::info!(
        trust_domain = %trust_domain,
        cert_lifetime = %humantime::format_duration(args.cert_lifetime),
        "issuing workload certificates"
    );
    let certifier = Arc::new(Certifier::new(ca, trust_domain, args.cert_lifetime));
    let store = Store::open(&args.state_dir).map_err(ServeError::from)?;
    let version = policy.version.clone();
    let plane =
        ControlPlane::new(store, policy, args.registration_grace).map_err(ServeError::from)?;
    if let Some(file) = &args.service_addresses {
        plane.set_service_addresses(load_service_addresses(file)?);
    }
    tracing::info!(
        version,
        store = %plane.store_path().display(),
        registrations = plane.current().config.services.len(),
        "control plane ready"
    );
    if let Some(dir) = &args.policy {
        policy_watch::spawn(dir.clone(), applied, Arc::clone(&plane))
            .map_err(|source| setup("start the policy watcher", source))?;
    }
    let kube_client = cluster.as_ref().map(|c| c.client.clone());
    // In Kubernetes the controller starts environments' copies itself (Deployments), through
    // the same backend interface `sluice up` implements; the loop runs once environments are
    // loaded (`serve`).
    let instance_backend = kube_client.as_ref().map(|client| {
        crate::kubernetes::instances::KubeBackend::boxed(client.clone(), runtime.handle().clone())
    });
    if let Some(started) = cluster {
        let webhook = runtime
            .block_on(crate::kubernetes::spawn(
                &args.kubernetes,
                started,
                Arc::clone(&plane),
                certifier.ca(),
            ))
            .map_err(ServeError::from)?;
        if let Some(addr) = webhook {
            writeln!(out, "sluice controller webhook on {addr}")?;
        }
    }
    // In Kubernetes a workload proves itself with its pod's service-account token; the
    // bootstrap tokens keep working beside it for workloads outside the cluster.
    let authenticator: Arc<dyn WorkloadAuthenticator> = match kube_client {
        Some(client) => Arc::new(
            crate::kubernetes::identity::ServiceAccountAuthenticator::new(
                client,
                tokens,
                Arc::clone(&plane),
            ),
        ),
        None => Arc::new(tokens),
    };
    let service = MeshService::new(certifier, authenticator, Arc::clone(&plane));
    runtime.block_on(serve(args, service, plane, instance_backend, out))?;
    Ok(Outcome::Success)
}

/// Reads `--service-addresses`.
fn load_service_addresses(file: &Path) -> Result<state::ServiceAddresses, ServeError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        services: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        #[serde(default = "default_namespace")]
        namespace: String,
        service: String,
        addresses: Vec<SocketAddr>,
    }
    fn default_namespace() -> String {
        "default".into()
    }
    let error = |reason: String| ServeError::ServiceAddresses {
        file: file.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| error(e.to_string()))?;
    let parsed: File = serde_json::from_str(&text).map_err(|e| {
        error(format!(
            "line {} column {}: {e}; expected {{\"services\": [{{\"service\": \"payments\", \"addresses\": [\"10.0.0.2:8080\"]}}]}}",
            e.line(),
            e.column()
        ))
    })?;
    let mut map = state::ServiceAddresses::new();
    for e in parsed.services {
        WorkloadIdentity::new(&e.namespace, &e.service)
            .map_err(|err| error(format!("service `{}/{}`: {err}", e.namespace, e.service)))?;
        map.entry((e.namespace, e.service))
            .or_default()
            .extend(e.addresses.iter().map(SocketAddr::to_string));
    }
    Ok(map)
}

/// Binds, announces the address, serves until SIGTERM or SIGINT, then drains.
async fn serve(
    args: &ControllerArgs,
    service: MeshService,
    plane: Arc<ControlPlane>,
    instance_backend: Option<Box<dyn crate::instance::Backend + Send>>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Handlers first, so a signal that arrives right after the address is printed is ours.
    let mut shutdown = ShutdownSignals::install()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| setup("read the bound address", source))?;
    // TLS: the controller's own certificate from the mesh CA, renewed in memory; client
    // certificates verified against the same CA.
    let certifier = Arc::clone(service.certifier());
    let serving =
        tls::ServingCert::issue(&certifier).map_err(|e| ServeError::Tls(e.to_string()))?;
    let roots = sluice_api::tls::roots_from_der(&certifier.trust_roots_der())
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let tls_config = sluice_api::tls::server_config(roots, serving.clone())
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let renew = tokio::spawn(serving.renew_forever(Arc::clone(&certifier)));
    let admin = TcpListener::bind(args.admin)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.admin,
            source,
        })?;
    let admin_addr = admin
        .local_addr()
        .map_err(|source| setup("read the bound admin address", source))?;
    let admin_file = args.state_dir.join(ADMIN_ADDR_FILE);
    write_ready_file(&admin_file, admin_addr)?;
    plane.set_info(ControllerInfo {
        grpc: addr.to_string(),
        admin: admin_addr.to_string(),
        pid: std::process::id(),
        state_dir: args.state_dir.display().to_string(),
        policy_dir: args.policy.as_ref().map(|p| p.display().to_string()),
        ..ControllerInfo::default()
    });
    let engine = crate::rollout::engine::Engine::start(
        Arc::clone(&plane),
        Arc::new(crate::rollout::engine::ProxyTraffic(Arc::clone(&plane))),
        crate::rollout::engine::EngineConfig {
            public_url: args
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{admin_addr}")),
            workload_logs: args.workload_logs.clone(),
            delivery: Some(crate::notify::DeliveryConfig::default()),
            // A backend in this process (Kubernetes) starts baseline copies too.
            baseline_copies: args.baseline_copies || instance_backend.is_some(),
        },
    )
    .map_err(|e| {
        setup(
            "start the rollout engine",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let engine_task = tokio::spawn(Arc::clone(&engine).run());
    let env_routes = start_environments(args, &plane)?;
    // Instances are left running at shutdown: they live in the cluster, and the next
    // controller finds them there.
    let instances_task = instance_backend.map(|backend| {
        tokio::spawn(crate::env::driver::run(
            Arc::clone(&env_routes.envs),
            crate::env::driver::Driver::new(backend, "kubernetes")
                .with_rollouts(plane.store().clone()),
        ))
    });
    let portal_file = args.state_dir.join(PORTAL_ADDR_FILE);
    let portal_task = match args.portal.portal {
        Some(addr) => {
            Some(start_portal(args, addr, &portal_file, &plane, &engine, &env_routes.envs).await?)
        }
        None => None,
    };
    // The admin API answers to IP addresses, loopback names and `--public-url`'s host.
    let admin_hosts = match &args.public_url {
        Some(url) => {
            crate::web::host::AllowedHosts::from_base_url(url).map_err(ServeError::from)?
        }
        None => crate::web::host::AllowedHosts::default(),
    }
    .and_loopback()
    .and_ip_literals();
    let admin_state = admin::AdminState {
        plane: Arc::clone(&plane),
        engine: Some(engine),
        envs: Some(env_routes),
    };
    let admin_task = tokio::spawn(crate::web::serve(
        admin,
        admin::router(admin_state, admin_hosts),
    ));
    let reaper = tokio::spawn(reap_forever(Arc::clone(&plane), args.registration_grace));
    tracing::info!(addr = %admin_addr, "serving the admin endpoint (GET /status)");
    if let Some(file) = &args.ready_file {
        write_ready_file(file, addr)?;
    }
    tracing::info!(
        %addr,
        identity = sluice_api::tls::controller_spiffe_id(certifier.trust_domain().as_str()),
        "serving sluice.mesh.v1.Mesh over TLS"
    );
    writeln!(out, "sluice controller listening on {addr}")?;
    out.flush()?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(sluice_api::tls::incoming(listener, tls_config), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(ServeError::from)?,
        name = shutdown.recv() => {
            tracing::info!(signal = name, "shutting down");
            let _ = stop.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(result) => result.map_err(ServeError::from)?,
                Err(_) => tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "calls still open after the grace period were cut off"
                ),
            }
        }
    }
    admin_task.abort();
    if let Some(task) = portal_task {
        task.abort();
        let _ = std::fs::remove_file(&portal_file);
    }
    engine_task.abort();
    if let Some(task) = instances_task {
        task.abort();
    }
    reaper.abort();
    renew.abort();
    let _ = std::fs::remove_file(&admin_file);
    if let Some(file) = &args.ready_file {
        let _ = std::fs::remove_file(file);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where the portal's bound address is written (like `admin.addr`).
pub const PORTAL_ADDR_FILE: &str = "portal.addr";

/// Loads the environments from the store, starts their idle clocks, and makes the admin token
/// their changes need.
fn start_environments(
    args: &ControllerArgs,
    plane: &Arc<ControlPlane>,
) -> Result<env_api::EnvRoutes, ServeError> {
    let token = crate::env::api::load_or_create_token(&args.state_dir).map_err(|source| {
        setup(
            &format!(
                "write {}",
                crate::env::api::token_path(&args.state_dir).display()
            ),
            source,
        )
    })?;
    let notifier = crate::notify::Notifier::start(
        crate::notify::DeliveryConfig::default(),
        Arc::new(crate::rollout::store::StoreDeliveryLog(
            plane.store().clone(),
        )),
    )
    .map_err(|e| tracing::error!(error = %e, "environments: no team messages: cannot start the notifier"))
    .ok();
    let envs = crate::env::Environments::load(Arc::clone(plane), notifier)?;
    tokio::spawn(Arc::clone(&envs).run());
    Ok(env_api::EnvRoutes {
        envs,
        token: token.into(),
    })
}

fn portal_auth(args: &ControllerArgs) -> crate::portal::auth::AuthConfig {
    crate::portal::auth::AuthConfig {
        trusted_proxies: args.portal.portal_trusted_proxy.clone(),
        dev_user: args.portal.portal_dev_user.clone(),
    }
}

/// Binds the portal, writes its address to `file`, and serves it on a task.
async fn start_portal(
    args: &ControllerArgs,
    addr: SocketAddr,
    file: &Path,
    plane: &Arc<ControlPlane>,
    engine: &Arc<crate::rollout::engine::Engine>,
    envs: &Arc<crate::env::Environments>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    use crate::portal::{Portal, access::AccessState, auth::CsrfKey, server::PortalServer};
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| setup("read the bound portal address", source))?;
    write_ready_file(file, bound)?;
    let csrf = CsrfKey::generate().map_err(|_| {
        setup(
            "make the portal's CSRF key",
            std::io::Error::other("no randomness"),
        )
    })?;
    let notifier = crate::notify::Notifier::start(
        crate::notify::DeliveryConfig::default(),
        Arc::new(crate::rollout::store::StoreDeliveryLog(
            plane.store().clone(),
        )),
    )
    .map_err(|e| {
        setup(
            "start the portal's notifier",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let public_url = args
        .portal
        .portal_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let auth = portal_auth(args);
    let hosts = crate::portal::server::allowed_hosts(&public_url, &auth)?;
    let server = PortalServer {
        portal: Portal {
            plane: Arc::clone(plane),
            engine: Some(Arc::clone(engine)),
            envs: Some(Arc::clone(envs)),
        },
        access: AccessState {
            policy_dir: args.policy.clone(),
            public_url,
            notifier: Some(notifier),
            csrf,
            lock: tokio::sync::Mutex::new(()),
            dev_mode: args.portal.portal_dev_user.is_some(),
        },
        auth,
        hosts,
    };
    tracing::info!(
        addr = %bound,
        dev_user = args.portal.portal_dev_user.as_deref().unwrap_or(""),
        trusted_proxies = ?args.portal.portal_trusted_proxy,
        "serving the portal"
    );
    Ok(tokio::spawn(crate::web::serve(
        listener,
        crate::portal::server::router(Arc::new(server)),
    )))
}

/// Removes expired registrations, checking a few times per grace period.
async fn reap_forever(plane: Arc<ControlPlane>, grace: Duration) {
    let every = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = plane.reap(std::time::Instant::now()).await {
            tracing::error!(error = %e, "could not remove expired registrations");
        }
    }
}

/// SIGTERM (what process managers and Kubernetes send) and SIGINT (ctrl-c).
struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    fn install() -> Result<Self, ServeError> {
        let install =
            |kind| signal(kind).map_err(|source| setup("install signal handlers", source));
        Ok(ShutdownSignals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn setup(action: &str, source: std::io::Error) -> ServeError {
    ServeError::Setup {
        action: action.to_owned(),
        source,
    }
}

/// Writes `addr` to `file` atomically, so a watcher never reads half an address.
fn write_ready_file(file: &Path, addr: SocketAddr) -> Result<(), ServeError> {
    let temp = file.with_file_name(format!(
        ".{}.tmp-{}",
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&temp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&temp, file))
        .map_err(|source| setup(&format!("write {}", file.display()), source))
}

/// Loads and validates the policy set the controller starts with, and the hash of the contents
/// (where the watcher starts from). Problems are printed like `sluice policy check` prints
/// them, and the controller does not start.
fn initial_policy(dir: &Path, err: &mut dyn Write) -> Result<(PolicySnapshot, u64), CliError> {
    let read = sluice_policy::load::read_policy_dir(dir);
    let applied = policy_watch::hash_read(&read);
    let set = match PolicySet::from_read(read?) {
        Ok(set) => set,
        Err(LoadError::Read(e)) => return Err(e.into()),
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => {
            for d in diagnostics.iter().filter(|d| d.is_error()) {
                writeln!(err, "{}", render(d, &sources, Style::plain()))?;
            }
            return Err(CliError::PolicyInvalid);
        }
    };
    for w in set
        .warnings
        .iter()
        .filter(|w| w.code == "not-a-regular-file")
    {
        tracing::warn!(policy = %dir.display(), "{w}");
    }
    let policy = PolicySnapshot::new(set);
    tracing::info!(policy = %dir.display(), version = policy.version, "policy is valid; watching it for changes");
    Ok((policy, applied))
}

/// Logs to stderr, filtered by `SLUICE_LOG` (default `info`). Safe to call more than once.
/// `main.rs` passes unlocked stdio handles to the CLI, so worker threads can log freely.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::identity::issue::DEFAULT_LIFETIME;
    use crate::{Cli, Command};

    #[test]
    fn the_flag_default_is_the_documented_lifetime() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["sluice", "controller", "--state-dir", "/tmp/x"])?;
        let Command::Controller(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.cert_lifetime, DEFAULT_LIFETIME);
        Ok(())
    }
}
