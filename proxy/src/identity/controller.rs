//! How the proxy reaches the controller: TLS 1.3, trusting only the mesh CA certificate it was
//! given (`SLUICE_PROXY_CONTROLLER_CA`), checking that the server is the controller
//! (`spiffe://<trust-domain>/sluice/controller`), and presenting this workload's certificate
//! once it has one. Every controller client — `Certify`, `Watch`, `Register`, the denial and
//! traffic reports — connects through [`ControllerConn`], so they all trust and prove the same
//! thing.
//!
//! The CA file is how a proxy trusts the controller before it has an identity of its own:
//! `sluice up` writes it next to the run, in Kubernetes it is a mounted ConfigMap (as Linkerd's
//! trust anchors are). It is read again for every new connection, so a file updated in place
//! (a CA rotation) is used from the next reconnect on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tonic::transport::{Channel, Endpoint};

use super::IdentityStore;
use super::certify::CertifyError;

/// Where the controller is and how to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConn {
    /// The controller's address, `https://127.0.0.1:7071`.
    pub addr: String,
    /// The mesh CA certificate(s), PEM (`SLUICE_PROXY_CONTROLLER_CA`).
    pub ca: PathBuf,
}

impl ControllerConn {
    /// The endpoint, for tuning (timeouts, keep-alive) before [`ControllerConn::connect`].
    pub fn endpoint(&self) -> Result<Endpoint, CertifyError> {
        Endpoint::from_shared(self.addr.clone())
            .map_err(|_| CertifyError::Address(self.addr.clone()))
    }

    /// The TLS client config: the CA file as it is now, and `identity`'s certificate while it
    /// is valid.
    pub async fn tls(
        &self,
        identity: &Arc<IdentityStore>,
    ) -> Result<Arc<rustls::ClientConfig>, CertifyError> {
        let ca_error = |reason: String| CertifyError::ControllerCa {
            path: self.ca.clone(),
            reason,
        };
        let pem = tokio::fs::read(&self.ca)
            .await
            .map_err(|e| ca_error(e.to_string()))?;
        let roots = sluice_api::tls::roots_from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
        sluice_api::tls::client_config(roots, Some(Arc::new(Current(identity.clone()))))
            .map_err(|e| ca_error(e.to_string()))
    }

    /// Connects `endpoint` (from [`ControllerConn::endpoint`]) over TLS.
    pub async fn connect(
        &self,
        endpoint: Endpoint,
        identity: &Arc<IdentityStore>,
    ) -> Result<Channel, CertifyError> {
        let connector = sluice_api::tls::Connector::new(self.tls(identity).await?);
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| CertifyError::Unreachable {
                addr: self.addr.clone(),
                reason: super::certify::error_chain(&e),
            })
    }

    /// A channel that connects on first use and reconnects by itself (for periodic reports).
    pub async fn connect_lazy(
        &self,
        endpoint: Endpoint,
        identity: &Arc<IdentityStore>,
    ) -> Result<Channel, CertifyError> {
        let connector = sluice_api::tls::Connector::new(self.tls(identity).await?);
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

/// Offers the workload certificate in force, unless it has expired (the controller would then
/// fail the whole handshake, and `Certify` with the bootstrap token is the way back).
#[derive(Debug)]
struct Current(Arc<IdentityStore>);

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0
            .current()
            .filter(|c| c.not_after > SystemTime::now())
            .map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
