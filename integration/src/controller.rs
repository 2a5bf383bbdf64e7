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
    RegistrationAck, WatchRequest,
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
}
