//! mTLS between sidecars (rustls, TLS 1.3 only, `ring`).
//!
//! * Inbound, a connection detected as TLS is terminated with a server config that *requires*
//!   a client certificate chaining to the mesh roots; the caller's identity is the URI SAN.
//! * Outbound, traffic to a known mesh service is wrapped in TLS with our certificate, and the
//!   server must prove it is that service ([`verify::SpiffeServerVerifier`]).
//!
//! Certificates are picked per handshake by resolvers that read the [`IdentityStore`], so a
//! renewal takes effect on the next handshake without touching open connections. Configs
//! (which hold the roots) are rebuilt only when the roots change.

pub mod verify;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::identity::{Credentials, IdentityStore, SpiffeError, SpiffeId};

/// ALPN for HTTP/2: carried across the hop so HTTP/2 stays HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// How long a peer may take to finish a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider: `ring`, never aws-lc-rs (one crypto stack, no C build).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Why a mesh TLS connection could not be made or accepted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// We have no certificate yet.
    #[error("this proxy has no mesh certificate yet")]
    NoIdentity,
    /// Building a config failed (bad roots).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The handshake failed (wrong CA, expired, wrong SAN, not TLS...).
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The peer's certificate verified but names no acceptable identity.
    #[error("peer identity: {0}")]
    Identity(#[from] SpiffeError),
}

/// What kind of stream an outbound TLS connection carries, which decides the ALPN offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// HTTP/2 requests.
    H2,
    /// HTTP/1.1 requests.
    Http1,
    /// Opaque TCP: no ALPN, the server then detects what flows inside.
    Opaque,
}

/// Both sides of mesh TLS for one proxy.
#[derive(Debug)]
pub struct MeshTls {
    store: Arc<IdentityStore>,
    provider: Arc<CryptoProvider>,
    server: ArcSwapOption<(Vec<CertificateDer<'static>>, Arc<ServerConfig>)>,
    /// Client configs by destination identity and ALPN, valid for one set of roots.
    clients: Mutex<ClientCache>,
}

#[derive(Debug, Default)]
struct ClientCache {
    roots: Vec<CertificateDer<'static>>,
    configs: std::collections::HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>,
}

impl MeshTls {
    /// Mesh TLS backed by `store`.
    pub fn new(store: Arc<IdentityStore>) -> MeshTls {
        MeshTls {
            store,
            provider: Arc::new(provider()),
            server: ArcSwapOption::empty(),
            clients: Mutex::new(ClientCache::default()),
        }
    }

    /// The identity store.
    pub fn store(&self) -> &Arc<IdentityStore> {
        &self.store
    }

    /// Whether this proxy has a certificate yet (else mesh calls go out in plaintext).
    pub fn has_identity(&self) -> bool {
        self.store.has_credentials()
    }

    /// Our trust domain, once we have a certificate.
    pub fn trust_domain(&self) -> Option<String> {
        self.store.current().map(|c| c.id.trust_domain.clone())
    }

    fn server_config(&self, creds: &Credentials) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(cached) = self.server.load().as_ref()
            && cached.0 == creds.roots_der
        {
            return Ok(cached.1.clone());
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(creds.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.store.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        let config = Arc::new(config);
        self.server
            .store(Some(Arc::new((creds.roots_der.clone(), config.clone()))));
        Ok(config)
    }

    fn client_config(
        &self,
        creds: &Credentials,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cache = self
            .clients
            .lock()
            .map_err(|_| TlsError::Config("client config cache poisoned".into()))?;
        if cache.roots != creds.roots_der {
            cache.roots = creds.roots_der.clone();
            cache.configs.clear();
        }
        let key = (expected.clone(), alpn);
        if let Some(c) = cache.configs.get(&key) {
            return Ok(c.clone());
        }
        let verifier = verify::SpiffeServerVerifier::new(
            creds.roots.clone(),
            expected.clone(),
            self.provider.clone(),
        );
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Resolver(self.store.clone())));
        config.alpn_protocols = match alpn {
            Alpn::H2 => vec![ALPN_H2.to_vec()],
            Alpn::Http1 => vec![ALPN_HTTP1.to_vec()],
            Alpn::Opaque => Vec::new(),
        };
        let config = Arc::new(config);
        cache.configs.insert(key, config.clone());
        Ok(config)
    }

    /// Terminates an inbound mTLS connection and returns it with the caller's identity.
    pub async fn accept<I>(
        &self,
        io: I,
    ) -> Result<(tokio_rustls::server::TlsStream<I>, SpiffeId), TlsError>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let creds = self.store.current().ok_or(TlsError::NoIdentity)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config(&creds)?);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
            .await
            .map_err(|_| TlsError::Timeout)?
            .map_err(TlsError::Handshake)?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(TlsError::Identity(SpiffeError::Missing))?;
        let id = SpiffeId::from_cert_der(leaf, &creds.id.trust_domain)?;
        Ok((tls, id))
    }

    /// Originates mTLS to a peer that must prove it is `expected`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let creds = self.store.current().ok_or(TlsError::NoIdentity)?;
        let config = self.client_config(&creds, expected, alpn)?;
        // The name is only for SNI and logs; the verifier checks the SPIFFE ID instead.
        let name = ServerName::try_from(format!(
            "{}.{}.svc.{}",
            expected.service, expected.namespace, expected.trust_domain
        ))
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| TlsError::Timeout)?
            .map_err(TlsError::Handshake)
    }
}

/// Serves the certificate in force at handshake time, for both directions.
#[derive(Debug)]
struct Resolver(Arc<IdentityStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
