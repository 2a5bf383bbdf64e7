//! This proxy's mesh identity: a private key generated here, a short-lived certificate for it
//! with our SPIFFE ID, and the mesh's trust roots.
//!
//! The current [`Credentials`] live in an [`IdentityStore`] (an `ArcSwap`): TLS handshakes
//! read it through rustls's certificate resolvers (see [`crate::tls`]), so a renewed
//! certificate is used by the next handshake while connections already open keep theirs and
//! lose nothing. Credentials come from one of two sources:
//!
//! * [`certify`]: the controller's `Certify` call with a bootstrap token, renewed at about 70%
//!   of the lifetime with backoff and jitter on the strength of the current certificate; the
//!   key never leaves the process. [`controller`] is how every call reaches the controller.
//! * [`files`]: `cert.pem`, `key.pem` and `roots.pem` in a directory, reloaded when they change
//!   (standalone use and tests).

pub mod certify;
pub mod controller;
pub mod files;
pub mod spiffe;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

pub use spiffe::{SpiffeError, SpiffeId};

/// Why a set of credentials is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// No leaf certificate.
    #[error("no certificate")]
    NoCertificate,
    /// No trust root.
    #[error("no trust roots")]
    NoRoots,
    /// A root could not be added.
    #[error("trust root rejected: {0}")]
    Root(String),
    /// The key is of a type rustls (ring) cannot sign with, or malformed.
    #[error("private key unusable: {0}")]
    Key(String),
    /// The certificate and key do not belong together.
    #[error("certificate does not match the private key: {0}")]
    Mismatch(String),
    /// The leaf has no valid SPIFFE ID.
    #[error(transparent)]
    Spiffe(#[from] SpiffeError),
    /// The leaf could not be parsed.
    #[error("certificate unreadable: {0}")]
    Certificate(String),
}

/// A certificate chain with its key and the roots to verify peers with. Immutable; renewal
/// builds a new one.
#[derive(Debug)]
pub struct Credentials {
    /// Our identity, from the leaf's URI SAN.
    pub id: SpiffeId,
    /// Chain and signing key, ready for rustls.
    pub certified: Arc<CertifiedKey>,
    /// The mesh's trust anchors.
    pub roots: Arc<RootCertStore>,
    /// The same anchors, DER, to tell whether a renewal changed them.
    pub roots_der: Vec<CertificateDer<'static>>,
    /// When the leaf becomes valid.
    pub not_before: SystemTime,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// When this proxy got it. Issuers backdate `not_before` for clock skew (the controller
    /// by a minute), so with short lifetimes the renewal point is measured from here.
    pub received: SystemTime,
}

impl Credentials {
    /// Checks and assembles credentials. The chain is leaf first.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots_der: Vec<CertificateDer<'static>>,
    ) -> Result<Credentials, CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let id = spiffe::spiffe_san(leaf)?;
        let (not_before, not_after) = validity(leaf)?;
        if roots_der.is_empty() {
            return Err(CredentialsError::NoRoots);
        }
        let mut roots = RootCertStore::empty();
        for r in &roots_der {
            roots
                .add(r.clone())
                .map_err(|e| CredentialsError::Root(e.to_string()))?;
        }
        let provider = crate::tls::provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| CredentialsError::Mismatch(e.to_string()))?;
        Ok(Credentials {
            id,
            certified: Arc::new(certified),
            roots: Arc::new(roots),
            roots_der,
            not_before,
            not_after,
            received: SystemTime::now(),
        })
    }
}

/// A certificate's validity period, `(not_before, not_after)`.
pub(crate) fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), CredentialsError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CredentialsError::Certificate(e.to_string()))?;
    let v = cert.validity();
    let at = |secs: i64| {
        let secs = u64::try_from(secs).unwrap_or(0);
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    };
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

/// The credentials in force, swapped whole on renewal. Empty until the first certificate
/// arrives: until then inbound TLS is refused and outbound traffic stays plaintext.
#[derive(Debug, Default)]
pub struct IdentityStore {
    current: ArcSwapOption<Credentials>,
}

impl IdentityStore {
    /// An empty store.
    pub fn new() -> IdentityStore {
        IdentityStore::default()
    }

    /// The credentials in force, if any.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Whether credentials are in force; per request, so without taking a reference.
    pub fn has_credentials(&self) -> bool {
        self.current.load().is_some()
    }

    /// Puts new credentials in force; the next handshake uses them.
    pub fn set(&self, creds: Credentials) {
        tracing::info!(
            id = %creds.id,
            not_after = %humantime::format_rfc3339_seconds(creds.not_after),
            "mesh identity in force"
        );
        self.current.store(Some(Arc::new(creds)));
    }
}
