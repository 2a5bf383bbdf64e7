//! The API's listener: TLS 1.3 with a serving certificate the controller issues itself from
//! the mesh CA, and the workload identity of each client certificate.
//!
//! The serving certificate names `spiffe://<trust-domain>/sluice/controller`
//! (`sluice_api::tls`), is valid for [`SERVING_LIFETIME`] (never past the CA) and is renewed
//! in memory at about 70%; its key never touches the disk. Proxies verify it against the mesh
//! CA certificate they are given (`SLUICE_PROXY_CONTROLLER_CA`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sluice_api::tls::PeerCertificates;

use crate::identity::{Certifier, TrustDomain, WorkloadIdentity};

/// How long the controller's serving certificate is valid.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue the controller's serving certificate: {0}")]
pub struct ServingCertError(String);

/// The controller's serving certificate, swapped whole on renewal.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    not_after: ArcSwap<SystemTime>,
}

impl ServingCert {
    /// Issues the first certificate.
    pub fn issue(certifier: &Certifier) -> Result<Arc<ServingCert>, ServingCertError> {
        let (key, not_after) = make(certifier)?;
        Ok(Arc::new(ServingCert {
            current: ArcSwap::from_pointee(key),
            not_after: ArcSwap::from_pointee(not_after),
        }))
    }

    /// Renews at about 70% of each certificate's lifetime, forever; a failure is retried a
    /// minute later while the current one keeps serving.
    pub async fn renew_forever(self: Arc<Self>, certifier: Arc<Certifier>) {
        loop {
            let now = SystemTime::now();
            let left = self
                .not_after
                .load()
                .duration_since(now)
                .unwrap_or_default();
            tokio::time::sleep(left.mul_f64(0.7).max(Duration::from_secs(1))).await;
            match make(&certifier) {
                Ok((key, not_after)) => {
                    self.current.store(Arc::new(key));
                    self.not_after.store(Arc::new(not_after));
                    tracing::info!(
                        not_after = %humantime::format_rfc3339_seconds(not_after),
                        "renewed the controller's serving certificate"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not renew the controller's serving certificate; retrying in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn make(certifier: &Certifier) -> Result<(CertifiedKey, SystemTime), ServingCertError> {
    let fail = |e: &dyn std::fmt::Display| ServingCertError(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| fail(&e))?;
    let issued = certifier
        .issue_controller(&key, SERVING_LIFETIME, SystemTime::now())
        .map_err(|e| fail(&e))?;
    let certified = CertifiedKey::from_der(
        vec![CertificateDer::from(issued.der)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        &rustls::crypto::ring::default_provider(),
    )
    .map_err(|e| fail(&e))?;
    Ok((certified, issued.not_after))
}

/// What a client's certificate says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No certificate (allowed only for `Certify` with a bootstrap token).
    None,
    /// A workload of this mesh.
    Workload(WorkloadIdentity),
    /// A certificate from the mesh CA that names no workload (the controller's own, another
    /// trust domain's): why.
    NotAWorkload(String),
}

/// The identity in the client certificate of a connection (verified against the mesh roots
/// during the handshake).
pub fn peer_identity(peer: Option<&PeerCertificates>, trust_domain: &TrustDomain) -> PeerIdentity {
    let Some(leaf) = peer
        .and_then(|p| p.chain.as_ref())
        .and_then(|chain| chain.first())
    else {
        return PeerIdentity::None;
    };
    match sluice_api::tls::spiffe_uris(leaf) {
        Ok(uris) => match uris.as_slice() {
            [uri] => match WorkloadIdentity::from_spiffe_id(uri, trust_domain) {
                Ok(id) => PeerIdentity::Workload(id),
                Err(why) => PeerIdentity::NotAWorkload(why),
            },
            [] => PeerIdentity::NotAWorkload("the certificate has no spiffe:// URI SAN".into()),
            _ => PeerIdentity::NotAWorkload(
                "the certificate has more than one spiffe:// URI SAN".into(),
            ),
        },
        Err(e) => PeerIdentity::NotAWorkload(format!("the certificate is unreadable: {e}")),
    }
}
