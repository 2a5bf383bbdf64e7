//! A stand-in for the controller's `Mesh` gRPC service, for proxy tests that run before (or
//! without) the real controller: `Certify` signs CSRs with a [`TestCa`] after checking the
//! bootstrap token, `ReportDenials` records what it receives. It speaks the real
//! `sluice.mesh.v1` contract, so the proxy cannot tell it from the controller.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_api::v1::mesh_server::{Mesh, MeshServer};
use sluice_api::v1::{
    CertifyRequest, CertifyResponse, DenialReport, DenialReportAck, ProxyConfig, Registration,
    RegistrationAck, TrafficReport, TrafficReportAck, WatchRequest,
};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::mtls::{TRUST_DOMAIN, TestCa};

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
    /// Every denial report.
    pub reports: Mutex<Vec<DenialReport>>,
}

/// A running fake controller; stopped on drop.
#[derive(Debug)]
pub struct FakeController {
    /// Its state.
    pub state: Arc<State>,
    /// The gRPC address, `http://127.0.0.1:port`.
    pub url: String,
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
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let svc = MeshServer::new(Svc(state.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        FakeController { state, url, task }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
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
        let req = request.into_inner();
        if req.token != self.0.token {
            return Err(Status::unauthenticated("bad bootstrap token"));
        }
        let w = req
            .workload
            .ok_or_else(|| Status::invalid_argument("no workload"))?;
        let id = format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/svc/{}",
            w.namespace, w.service
        );
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
    /// `http://127.0.0.1:port`.
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
                self.url = format!("http://{}", addr.trim());
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
            .trim_start_matches("http://")
            .parse()
            .expect("addr")
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
        let out = std::process::Command::new(sluice_bin())
            .args(["identity", "token", "--service", service])
            .arg("--state-dir")
            .arg(self.state.path().join("state"))
            .output()
            .expect("sluice identity token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
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
