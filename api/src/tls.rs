//! The API's transport: TLS 1.3 (rustls on `ring`) with the mesh CA on both sides.
//!
//! - **The controller** proves itself with a certificate from the mesh CA whose only URI SAN is
//!   `spiffe://<trust-domain>/sluice/controller` ([`controller_spiffe_id`]). Workload identities
//!   are always `/ns/<namespace>/svc/<service>`, so no workload certificate can pass for the
//!   controller, and the controller's certificate is no workload's. Clients check it with
//!   [`ControllerVerifier`]: the chain leads to the roots they were given, and the SAN is the
//!   controller's. No DNS name is checked: the controller is reached at whatever address an
//!   operator or a Service gives it.
//! - **Clients** may present a workload certificate. [`server_config`] asks for one and lets a
//!   connection without one through (`Certify` with a bootstrap token is how a proxy gets its
//!   first certificate); a certificate that is presented must chain to the mesh roots, or the
//!   handshake fails. Which calls need one is the server's business: [`TlsConn`] hands the
//!   verified chain to every request as [`PeerCertificates`].
//! - A client that does not speak TLS fails the handshake and is disconnected.
//!
//! Both halves live here so that the proxy, the controller, the test stand-ins and the
//! benchmarks build the same thing.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The path of the controller's SPIFFE ID.
pub const CONTROLLER_SPIFFE_PATH: &str = "/sluice/controller";
/// How long a peer may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2, the only protocol the API speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The controller's identity in `trust_domain`.
pub fn controller_spiffe_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}{CONTROLLER_SPIFFE_PATH}")
}

/// The crypto provider: `ring`, as everywhere in Sluice.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS for the API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The roots are unusable.
    #[error("the mesh CA certificates: {0}")]
    Roots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Trust anchors from PEM text (one or more `CERTIFICATE` blocks).
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::Roots(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Roots("no CERTIFICATE block in the file".into()));
    }
    Ok(roots)
}

/// Trust anchors from DER certificates.
pub fn roots_from_der(ders: &[Vec<u8>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in ders {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    Ok(roots)
}

/// The `spiffe://` URI SANs of a DER certificate.
pub fn spiffe_uris(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

/// Checks that the server is the mesh's controller: the chain leads to `roots`, and the only
/// SPIFFE ID is `spiffe://<trust-domain>/sluice/controller` (any trust domain the roots vouch
/// for, since a proxy learns its trust domain from its first certificate).
#[derive(Debug)]
pub struct ControllerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ControllerVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: RootCertStore) -> Self {
        ControllerVerifier {
            roots: Arc::new(roots),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for ControllerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let uris = spiffe_uris(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(io::Error::other(e)),
            )))
        })?;
        match uris.as_slice() {
            [uri] if is_controller_id(uri) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never negotiated (TLS 1.3 only), but the trait requires an answer.
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `uri` is `spiffe://<trust-domain>/sluice/controller` with a well-formed trust domain.
pub fn is_controller_id(uri: &str) -> bool {
    uri.strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_suffix(CONTROLLER_SPIFFE_PATH))
        .is_some_and(|td| {
            !td.is_empty()
                && td.len() <= 255
                && td.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                })
        })
}

/// A client config for the controller: `roots` to verify it, and the workload certificate
/// `client` offers (none before the first `Certify`).
pub fn client_config(
    roots: RootCertStore,
    client: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ControllerVerifier::new(roots)));
    let mut config = match client {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A client that always presents the same certificate (`chain`, leaf first, and its PKCS#8
/// `key`): for tools, tests and benchmarks; proxies present whatever certificate is in force.
pub fn fixed_client_cert(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<dyn ResolvesClientCert>, TlsError> {
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(Fixed(Arc::new(certified))))
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Connects tonic over TLS with `config`: `endpoint`'s URI names the host and port (its
/// scheme is `https`, and is otherwise not looked at).
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    /// A connector using `config` for every connection.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Connector { config }
    }
}

type ConnectFuture = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other(format!("`{uri}` names no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // Only for SNI: the verifier checks the SPIFFE ID, not this name.
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::other(e.to_string()))?
                .to_owned();
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A server that always presents the same certificate: for stand-ins and tests; the controller
/// renews its own.
pub fn fixed_server_cert(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<dyn ResolvesServerCert>, TlsError> {
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(Fixed(Arc::new(certified))))
}

impl ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server config for the controller's API: its certificate from `cert`, client
/// certificates optional but verified against `roots` when presented.
pub fn server_config(
    roots: RootCertStore,
    cert: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Who is at the other end of a server connection: available to every request through
/// `request.extensions().get::<PeerCertificates>()`.
#[derive(Clone, Debug)]
pub struct PeerCertificates {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, leaf first, verified against the mesh roots; `None`
    /// when it presented none.
    pub chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A server connection after the handshake.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerCertificates,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerCertificates;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections `listener` accepts, after their TLS handshake. Each handshake runs on its
/// own task (bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client holds up no one;
/// failed handshakes (plaintext clients, certificates from another CA) are logged at debug
/// and dropped. For tonic's `serve_with_incoming*`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // The server dropped the stream (it shut down): stop accepting and free the port.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote, "TLS handshake timed out");
                        return;
                    }
                };
                let chain =
                    tls.get_ref().1.peer_certificates().map(|certs| {
                        Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect())
                    });
                let peer = PeerCertificates {
                    remote_addr: Some(remote),
                    chain,
                };
                let _ = conn_tx.send(Ok(TlsConn { inner: tls, peer })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
