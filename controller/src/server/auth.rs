//! Who is calling: the workload certificate the connection presented, or, for `Certify` only,
//! a bootstrap token.
//!
//! Every call but `Certify` needs the caller's workload certificate (issued by `Certify`,
//! verified against the mesh CA during the TLS handshake) and may only speak for the workload
//! it names: a certificate for `checkout` cannot watch, register or report as `payments`.
//! `Certify` takes a [`Credential`]: the certificate when the connection has one (renewal), else
//! the bootstrap token in the request (the first certificate). Tokens are checked by a
//! [`WorkloadAuthenticator`] — HMAC tokens standalone; in Kubernetes, ServiceAccount tokens
//! checked with TokenReview — which is the one thing a new credential source replaces.

use sluice_api::tls::PeerCertificates;

use super::ApiError;
use super::tls::{PeerIdentity, peer_identity};
use crate::identity::{AuthError, TrustDomain, WorkloadAuthenticator, WorkloadIdentity};

/// What a `Certify` call proves its identity with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// The workload certificate the connection presented (renewal): already verified.
    Certificate(WorkloadIdentity),
    /// A bootstrap token (the first certificate), to be checked by the authenticator.
    BootstrapToken(&'a str),
}

impl Credential<'_> {
    /// What it is, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Credential::Certificate(_) => "client certificate",
            // A JWT is a Kubernetes service-account token; the mesh's own have one `.`.
            Credential::BootstrapToken(t) if t.matches('.').count() == 2 => "service-account token",
            Credential::BootstrapToken(_) => "bootstrap token",
        }
    }
}

/// The credential of a `Certify` call: the connection's certificate if it has one, else the
/// request's `token`.
pub(super) fn certify_credential<'a>(
    peer: Option<&PeerCertificates>,
    trust_domain: &TrustDomain,
    token: &'a str,
) -> Result<Credential<'a>, ApiError> {
    match peer_identity(peer, trust_domain) {
        PeerIdentity::Workload(id) => Ok(Credential::Certificate(id)),
        PeerIdentity::NotAWorkload(why) => Err(ApiError::NotAWorkloadCertificate(why)),
        PeerIdentity::None if token.is_empty() => Err(AuthError::Missing.into()),
        PeerIdentity::None => Ok(Credential::BootstrapToken(token)),
    }
}

/// The workload a credential proves.
pub(super) async fn authenticate(
    credential: &Credential<'_>,
    authenticator: &dyn WorkloadAuthenticator,
) -> Result<WorkloadIdentity, ApiError> {
    match credential {
        Credential::Certificate(id) => Ok(id.clone()),
        Credential::BootstrapToken(token) => Ok(authenticator.authenticate(token).await?),
    }
}

/// The workload the connection's certificate proves; every call but `Certify` needs one.
/// Checked before the request is looked at, so an anonymous caller learns nothing about what
/// the controller would accept.
pub(super) fn caller(
    peer: Option<&PeerCertificates>,
    trust_domain: &TrustDomain,
) -> Result<WorkloadIdentity, ApiError> {
    match peer_identity(peer, trust_domain) {
        PeerIdentity::Workload(id) => Ok(id),
        PeerIdentity::None => Err(ApiError::NoClientCertificate),
        PeerIdentity::NotAWorkload(why) => Err(ApiError::NotAWorkloadCertificate(why)),
    }
}

/// Refuses a request for another workload than the certificate proves.
pub(super) fn require_same(
    authenticated: &WorkloadIdentity,
    requested: WorkloadIdentity,
) -> Result<(), ApiError> {
    if *authenticated == requested {
        Ok(())
    } else {
        Err(ApiError::WrongWorkload {
            authenticated: authenticated.clone(),
            requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TokenKey;

    #[tokio::test]
    async fn certify_prefers_the_certificate_and_needs_one_or_a_token() {
        let td = TrustDomain::default();
        let key = TokenKey::generate().expect("key");
        let payments = WorkloadIdentity::new("default", "payments").expect("identity");
        let token = key.issue(
            &payments,
            std::time::Duration::from_secs(60),
            std::time::SystemTime::now(),
        );
        let credential = certify_credential(None, &td, &token).expect("a token");
        assert_eq!(credential, Credential::BootstrapToken(&token));
        assert_eq!(
            authenticate(&credential, &key).await.ok(),
            Some(payments.clone())
        );
        assert!(matches!(
            certify_credential(None, &td, ""),
            Err(ApiError::Unauthenticated(AuthError::Missing))
        ));
        assert!(matches!(
            authenticate(&Credential::BootstrapToken("x.y"), &key).await,
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            caller(None, &td),
            Err(ApiError::NoClientCertificate)
        ));
    }
}
