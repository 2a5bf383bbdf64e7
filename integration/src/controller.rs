//! A stand-in for the controller's `Mesh` gRPC service, for proxy tests that run before (or
//! without) the real controller: `Certify` signs CSRs with a [`TestCa`] after checking the
//! credential (the client certificate on renewal, else the bootstrap token), `ReportDenials`
//! records what it receives. It speaks the real `sluice.mesh.v1` contract over the real
//! transport (TLS with a `spiffe://…/sluice/controller` certificate from the same CA), so the
//! proxy cannot tell it from the controller.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_api::tls::PeerCertificates;
use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::mesh_server::{Mesh, MeshServer};
use sluice_api::v1::{
    CertifyRequest, CertifyResponse, DenialReport, DenialReportAck, ProxyConfig, Registration,
    RegistrationAck, TrafficReport, TrafficReportAck, WatchRequest,
};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::mtls::{Leaf, TRUST_DOMAIN, TestCa};

/// What a pair of test proxies needs to get certificates from a controller: where it is, the
/// mesh CA file to trust it with, and each proxy's bootstrap token.
#[derive(Clone, Debug)]
pub struct ControllerAccess {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The mesh CA certificate, PEM (`SLUICE_PROXY_CONTROLLER_CA`).
    pub ca: PathBuf,
    /// The server-side proxy's (payments') token.
    pub server_token: String,
    /// The client-side proxy's (checkout's) token.
    pub client_token: String,
}

/// What the fake controller saw and decides.
#[derive(Debug)]
pub struct State {
    /// Signs certificates.
    pub ca: TestCa,
    /// The only token accepted.
    pub token: String,
    /// Certificate lifetime.
    pub lifetime: Duration,
    /// Successful `Certify` calls.
    pub certified: Mutex<Vec<String>>,
    /// Of those, the ones that proved themselves with a client certificate (renewals).
    pub renewed_with_certificate: Mutex<Vec<String>>,
    /// `ca`'s certificate as a file, for `SLUICE_PROXY_CONTROLLER_CA`; it outlives restarts of
    /// the stand-in, as the real controller's does.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
    /// Every denial report.
    pub reports: Mutex<Vec<DenialReport>>,
}

impl State {
    /// A stand-in's state: `ca` signs, `token` is the only token accepted.
    pub fn new(ca: TestCa, token: &str, lifetime: Duration) -> State {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).expect("write the CA certificate");
        State {
            ca,
            ca_file,
            _dir: dir,
            token: token.to_owned(),
            lifetime,
            certified: Mutex::new(Vec::new()),
            renewed_with_certificate: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
        }
    }
}

/// A running fake controller; stopped on drop.
#[derive(Debug)]
pub struct FakeController {
    /// Its state.
    pub state: Arc<State>,
    /// The gRPC address, `https://127.0.0.1:port`.
    pub url: String,
    /// Its CA's certificate, PEM, for `SLUICE_PROXY_CONTROLLER_CA`.
    pub ca_file: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeController {
    /// Starts on 127.0.0.1:0 (or `addr`, to come back on the same port after [`Self::stop`]).
    pub async fn start(state: Arc<State>, addr: Option<SocketAddr>) -> FakeController {
        let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let ca_file = state.ca_file.clone();
        let (cert, key) = state.ca.issue(&Leaf {
            uris: vec![sluice_api::tls::controller_spiffe_id(TRUST_DOMAIN)],
            not_before: time::Duration::minutes(-1),
            not_after: time::Duration::hours(1),
        });
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
        let roots =
            sluice_api::tls::roots_from_der(std::slice::from_ref(&state.ca.der)).expect("the CA");
        let tls = sluice_api::tls::server_config(
            roots,
            sluice_api::tls::fixed_server_cert(chain, key).expect("the serving certificate"),
        )
        .expect("TLS config");
        let svc = MeshServer::new(Svc(state.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(sluice_api::tls::incoming(listener, tls))
                .await;
        });
        FakeController {
            state,
            url,
            ca_file,
            task,
        }
    }

    /// What the test proxies need, with these tokens.
    pub fn access(&self, server_token: &str, client_token: &str) -> ControllerAccess {
        ControllerAccess {
            url: self.url.clone(),
            ca: self.ca_file.clone(),
            server_token: server_token.to_owned(),
            client_token: client_token.to_owned(),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("https://")
            .parse()
            .expect("addr")
    }

    /// Stops serving (the proxy sees an unreachable controller).
    pub fn stop(self) -> Arc<State> {
        self.task.abort();
        self.state.clone()
    }
}

struct Svc(Arc<State>);

#[tonic::async_trait]
impl Mesh for Svc {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        // The credential: the client certificate (renewal), else the token. The certificate
        // was verified against the CA in the handshake; it must name the same workload.
        let presented = request
            .extensions()
            .get::<PeerCertificates>()
            .and_then(|p| p.chain.as_ref())
            .and_then(|c| c.first())
            .map(|leaf| sluice_api::tls::spiffe_uris(leaf).unwrap_or_default());
        let req = request.into_inner();
        let w = req
            .workload
            .ok_or_else(|| Status::invalid_argument("no workload"))?;
        let id = format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/svc/{}",
            w.namespace, w.service
        );
        match presented {
            Some(uris) if uris == [id.clone()] => {
                if let Ok(mut r) = self.0.renewed_with_certificate.lock() {
                    r.push(id.clone());
                }
            }
            Some(uris) => {
                return Err(Status::permission_denied(format!(
                    "the client certificate is for {uris:?}, not {id}"
                )));
            }
            None if req.token != self.0.token => {
                return Err(Status::unauthenticated("bad bootstrap token"));
            }
            None => {}
        }
        let der = self
            .0
            .ca
            .sign_csr(&req.csr_der, &id, self.0.lifetime)
            .map_err(Status::invalid_argument)?;
        if let Ok(mut c) = self.0.certified.lock() {
            c.push(id.clone());
        }
        Ok(Response::new(CertifyResponse {
            certificate_der: der,
            chain_der: Vec::new(),
            trust_roots_der: vec![self.0.ca.der.clone()],
            not_after_unix: 0,
            spiffe_id: id,
        }))
    }

    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<ProxyConfig, Status>> + Send + 'static>,
    >;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn register(
        &self,
        _: Request<Registration>,
    ) -> Result<Response<RegistrationAck>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn report_denials(
        &self,
        request: Request<DenialReport>,
    ) -> Result<Response<DenialReportAck>, Status> {
        if let Ok(mut r) = self.0.reports.lock() {
            r.push(request.into_inner());
        }
        Ok(Response::new(DenialReportAck {}))
    }

    async fn report_traffic(
        &self,
        _: Request<TrafficReport>,
    ) -> Result<Response<TrafficReportAck>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// The `sluice` binary (controller and CLI), built once per test process like
/// [`crate::proxy_bin`].
pub fn sluice_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| crate::workspace_bin("sluice-controller", "sluice"))
}

/// The real controller (`sluice controller`), killed on drop.
#[derive(Debug)]
pub struct RealController {
    child: std::process::Child,
    /// Its state directory (CA, token key).
    pub state: tempfile::TempDir,
    /// `https://127.0.0.1:port`.
    pub url: String,
    policy_dir: std::path::PathBuf,
    lifetime: String,
}

impl RealController {
    /// Starts it on a free loopback port with `policy_dir` and `lifetime` certificates.
    pub fn start(policy_dir: &std::path::Path, lifetime: &str) -> RealController {
        let state = tempfile::tempdir().expect("state dir");
        let child = Self::spawn(state.path(), policy_dir, lifetime, "127.0.0.1:0");
        let mut me = RealController {
            child,
            state,
            url: String::new(),
            policy_dir: policy_dir.to_owned(),
            lifetime: lifetime.to_owned(),
        };
        me.wait_ready();
        me
    }

    fn spawn(
        dir: &std::path::Path,
        policy_dir: &std::path::Path,
        lifetime: &str,
        listen: &str,
    ) -> std::process::Child {
        // A SIGKILLed controller leaves its ready file behind.
        let _ = std::fs::remove_file(dir.join("ready"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("controller.log"))
            .expect("log");
        std::process::Command::new(sluice_bin())
            .args([
                "controller",
                "--listen",
                listen,
                "--cert-lifetime",
                lifetime,
            ])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--policy")
            .arg(policy_dir)
            .arg("--ready-file")
            .arg(dir.join("ready"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice controller")
    }

    fn wait_ready(&mut self) {
        let ready = self.state.path().join("ready");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&ready)
                && addr.ends_with('\n')
            {
                self.url = format!("https://{}", addr.trim());
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("controller exited ({status}): {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "controller did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("https://")
            .parse()
            .expect("addr")
    }

    /// The mesh CA certificate (`SLUICE_PROXY_CONTROLLER_CA` for its proxies).
    pub fn ca_file(&self) -> PathBuf {
        self.state.path().join("state/ca/ca.crt")
    }

    /// What the test proxies need, with each one's token.
    pub fn access(&self) -> ControllerAccess {
        ControllerAccess {
            url: self.url.clone(),
            ca: self.ca_file(),
            server_token: self.token("payments"),
            client_token: self.token("checkout"),
        }
    }

    /// A gRPC client presenting a fresh certificate for `default/<service>` (from `Certify`
    /// with the service's token), as that service's proxy would.
    pub async fn client_as(&self, service: &str) -> MeshClient<tonic::transport::Channel> {
        client_as(&self.url, &self.ca_file(), &self.token(service), service).await
    }

    /// SIGKILL, as a crash: nothing is flushed or closed gracefully.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again (after [`Self::kill`]) on the same address, state directory and
    /// policy directory, as a supervisor would.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr().to_string();
        self.child = Self::spawn(self.state.path(), &self.policy_dir, &self.lifetime, &listen);
        self.wait_ready();
    }

    /// A bootstrap token for `service` in `default`, as the local runner would mint it.
    pub fn token(&self, service: &str) -> String {
        self.token_ttl(service, "24h")
    }

    /// A bootstrap token for `service` in `default` that expires after `ttl` (`8s`).
    pub fn token_ttl(&self, service: &str, ttl: &str) -> String {
        bootstrap_token(&self.state.path().join("state"), service, ttl)
    }

    /// The controller's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("controller.log")).unwrap_or_default()
    }
}

impl Drop for RealController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC client of the controller at `url` (`https://…`), trusting `ca_file`, presenting a
/// fresh certificate for `default/<service>` from `Certify` with `token`: what that service's
/// proxy has once it started.
pub async fn client_as(
    url: &str,
    ca_file: &std::path::Path,
    token: &str,
    service: &str,
) -> MeshClient<tonic::transport::Channel> {
    let (issued, key) = certify_as(url, ca_file, token, service)
        .await
        .expect("Certify");
    let cert = sluice_api::tls::fixed_client_cert(
        vec![CertificateDer::from(issued.certificate_der)],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("the issued certificate");
    MeshClient::new(channel(url, ca_file, Some(cert)).await)
}

/// One `Certify` call for `default/<service>` with `token` and a fresh key, as a proxy makes
/// it at start: the controller's answer (or refusal), and the key the CSR was made with.
pub async fn certify_as(
    url: &str,
    ca_file: &std::path::Path,
    token: &str,
    service: &str,
) -> Result<(sluice_api::v1::CertifyResponse, rcgen::KeyPair), tonic::Status> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .expect("csr");
    let issued = MeshClient::new(channel(url, ca_file, None).await)
        .certify(CertifyRequest {
            workload: Some(sluice_api::v1::Workload {
                namespace: "default".into(),
                service: service.into(),
                ..Default::default()
            }),
            csr_der: csr.der().to_vec(),
            token: token.to_owned(),
        })
        .await?
        .into_inner();
    Ok((issued, key))
}

async fn channel(
    url: &str,
    ca_file: &std::path::Path,
    cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> tonic::transport::Channel {
    let pem = std::fs::read(ca_file).expect("the mesh CA");
    let roots = sluice_api::tls::roots_from_pem(&pem).expect("PEM");
    let config = sluice_api::tls::client_config(roots, cert).expect("TLS config");
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect_with_connector(sluice_api::tls::Connector::new(config))
        .await
        .expect("connect to the controller")
}

/// `sluice identity token --service SERVICE --ttl TTL --state-dir STATE`: a bootstrap token for
/// `service` in `default`, signed with the key of the controller whose state is `state`.
pub fn bootstrap_token(state: &Path, service: &str, ttl: &str) -> String {
    let out = std::process::Command::new(sluice_bin())
        .args(["identity", "token", "--service", service, "--ttl", ttl])
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("sluice identity token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
