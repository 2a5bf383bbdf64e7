//! `Certify`: a workload certificate for a CSR, on the strength of the current certificate
//! (renewal) or a bootstrap token (the first one).

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_api::v1::{CertifyRequest, CertifyResponse};

use sluice_api::tls::PeerCertificates;

use super::ApiError;
use super::auth::{authenticate, certify_credential};
use crate::identity::{Certifier, WorkloadAuthenticator, WorkloadIdentity};

/// Checks the request's shape, authenticates the credential (the connection's certificate, else
/// the token), checks that it names the requested workload, then verifies the CSR and issues.
/// Authentication comes before the CSR is looked at, so anonymous callers cannot make the
/// controller verify signatures.
pub(super) async fn certify(
    certifier: &Certifier,
    authenticator: &dyn WorkloadAuthenticator,
    peer: Option<&PeerCertificates>,
    request: CertifyRequest,
) -> Result<CertifyResponse, ApiError> {
    let workload = request
        .workload
        .as_ref()
        .ok_or(ApiError::MissingField("workload"))?;
    let requested = WorkloadIdentity::new(&workload.namespace, &workload.service)?;
    let credential = certify_credential(peer, certifier.trust_domain(), &request.token)?;
    let authenticated = authenticate(&credential, authenticator).await?;
    if authenticated != requested {
        return Err(ApiError::NotYourIdentity {
            credential: credential.describe(),
            authenticated,
            requested,
        });
    }
    let issued = certifier.issue(&request.csr_der, &authenticated, SystemTime::now())?;
    let not_after_unix = issued
        .not_after
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(CertifyResponse {
        certificate_der: issued.der,
        chain_der: Vec::new(),
        trust_roots_der: certifier.trust_roots_der(),
        not_after_unix,
        spiffe_id: issued.spiffe_id,
    })
}
