//! mTLS between sidecars (rustls, TLS 1.3 only, `ring`).
//!
//! * Inbound, a connection detected as TLS is terminated with a server config that *requires*
//!   a client certificate chaining to the mesh roots; the caller's identity is the URI SAN.
//! * Outbound, traffic to a known mesh service is wrapped in TLS with our certificate, and the
//!   server must prove it is that service ([`verify::SpiffeServerVerifier`]).
//!
//! Certificates are picked per handshake by resolvers that read the [`IdentityStore`], so a
//! renewal takes effect on the next handshake without touching open connections.
//!
//! Sessions are resumed (TLS 1.3 tickets, rustls' defaults): a new connection to a peer
//! already met skips the certificate exchange and its signatures, which is most of what a
//! new mTLS connection costs. A resumed handshake proves only that the peer holds the
//! session's secret, so two rules keep it from standing in for a certificate that is gone:
//!
//! * Configs, and with them the session caches on both sides, are rebuilt whenever this
//!   proxy's credentials change (renewal or new roots). A session never outlives the
//!   certificate either side used to make it, for a peer that renews on time.
//! * A resumed session whose peer certificate has expired is refused, as a full handshake
//!   with that certificate would be: a peer that stopped renewing (say, a stolen workload
//!   key) cannot stretch its identity past the certificate's end by resuming.

pub mod verify;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::ServerName;
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
    /// The peer resumed a session made with a certificate that is no longer valid.
    #[error(
        "the peer resumed a TLS session whose certificate is no longer valid ({0}); it must \
         connect again with a current certificate"
    )]
    Stale(String),
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
    /// The server config for one set of credentials (see the module docs).
    server: ArcSwapOption<(Arc<Credentials>, Arc<ServerConfig>)>,
    /// Client configs by destination identity and ALPN, for one set of credentials.
    clients: Mutex<ClientCache>,
}

#[derive(Debug, Default)]
struct ClientCache {
    creds: Option<Arc<Credentials>>,
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

    fn server_config(&self, creds: &Arc<Credentials>) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(cached) = self.server.load().as_ref()
            && Arc::ptr_eq(&cached.0, creds)
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
            .store(Some(Arc::new((creds.clone(), config.clone()))));
        Ok(config)
    }

    fn client_config(
        &self,
        creds: &Arc<Credentials>,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cache = self
            .clients
            .lock()
            .map_err(|_| TlsError::Config("client config cache poisoned".into()))?;
        if !cache.creds.as_ref().is_some_and(|c| Arc::ptr_eq(c, creds)) {
            cache.creds = Some(creds.clone());
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
        let conn = tls.get_ref().1;
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(TlsError::Identity(SpiffeError::Missing))?;
        check_resumed(conn.handshake_kind(), leaf)?;
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
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| TlsError::Timeout)?
            .map_err(TlsError::Handshake)?;
        let conn = tls.get_ref().1;
        if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
            check_resumed(conn.handshake_kind(), leaf)?;
        }
        Ok(tls)
    }
}

/// Refuses a resumed session whose peer certificate (the one the session was made with) is
/// outside its validity period now; a full handshake has had it checked by the verifier.
fn check_resumed(kind: Option<rustls::HandshakeKind>, leaf: &[u8]) -> Result<(), TlsError> {
    if kind != Some(rustls::HandshakeKind::Resumed) {
        return Ok(());
    }
    let (_, not_after) =
        crate::identity::validity(leaf).map_err(|e| TlsError::Stale(e.to_string()))?;
    let now = std::time::SystemTime::now();
    if now > not_after {
        let ago = now.duration_since(not_after).unwrap_or_default();
        return Err(TlsError::Stale(format!(
            "it expired {} ago",
            humantime::format_duration(Duration::from_secs(ago.as_secs()))
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use rustls::HandshakeKind::{Full, Resumed};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// `service`'s certificate as the controller issues them, valid for `life` more.
    fn creds(ca: &Ca, service: &str, life: time::Duration) -> Credentials {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        let uri = format!("spiffe://td/ns/default/svc/{service}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("ia5"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + life;
        let cert = params
            .signed_by(&key, &ca.issuer)
            .expect("leaf certificate");
        Credentials::new(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            vec![ca.der.clone()],
        )
        .expect("credentials")
    }

    fn mesh_tls(creds: Credentials) -> Arc<MeshTls> {
        let store = Arc::new(IdentityStore::new());
        store.set(creds);
        Arc::new(MeshTls::new(store))
    }

    /// What the server saw of one connection: how it was made and the caller's certificate
    /// validity end, or why it was refused.
    type Seen = Result<
        (
            Option<rustls::HandshakeKind>,
            SpiffeId,
            std::time::SystemTime,
        ),
        String,
    >;

    /// Accepts `n` connections, trading a byte on each (the byte from the server carries the
    /// session tickets to the client).
    async fn serve(server: Arc<MeshTls>, n: usize) -> (SocketAddr, JoinHandle<Vec<Seen>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (tcp, _) = listener.accept().await.expect("accept");
                match server.accept(tcp).await {
                    Ok((mut tls, caller)) => {
                        let conn = tls.get_ref().1;
                        let leaf = conn.peer_certificates().expect("certificates")[0].clone();
                        let kind = conn.handshake_kind();
                        tls.write_all(b"s").await.expect("write");
                        let mut byte = [0u8; 1];
                        tls.read_exact(&mut byte).await.expect("read");
                        let (_, not_after) = crate::identity::validity(&leaf).expect("validity");
                        seen.push(Ok((kind, caller, not_after)));
                    }
                    Err(e) => seen.push(Err(e.to_string())),
                }
            }
            seen
        });
        (addr, task)
    }

    /// One connection to `payments`; how the client saw it made, if the server let it be.
    async fn call(client: &MeshTls, addr: SocketAddr) -> Option<rustls::HandshakeKind> {
        let payments = SpiffeId::parse("spiffe://td/ns/default/svc/payments").expect("id");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = client.connect(tcp, &payments, Alpn::Opaque).await.ok()?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        tls.write_all(b"c").await.ok()?;
        tls.get_ref().1.handshake_kind()
    }

    #[tokio::test]
    async fn a_second_connection_to_a_peer_resumes_with_the_same_caller_identity() {
        let ca = ca();
        let server = mesh_tls(creds(&ca, "payments", time::Duration::hours(1)));
        let client = mesh_tls(creds(&ca, "checkout", time::Duration::hours(1)));
        let (addr, serving) = serve(server, 3).await;
        let mut kinds = Vec::new();
        for _ in 0..3 {
            kinds.push(call(&client, addr).await);
        }
        assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
        let seen = serving.await.expect("server");
        for s in &seen {
            let (_, caller, _) = s.as_ref().expect("accepted");
            assert_eq!(caller.to_string(), "spiffe://td/ns/default/svc/checkout");
        }
    }

    #[tokio::test]
    async fn a_renewal_on_either_side_starts_a_new_session_with_the_new_certificate() {
        let ca = ca();
        let server = mesh_tls(creds(&ca, "payments", time::Duration::hours(1)));
        let client = mesh_tls(creds(&ca, "checkout", time::Duration::hours(1)));
        let (addr, serving) = serve(server.clone(), 5).await;
        assert_eq!(call(&client, addr).await, Some(Full));
        assert_eq!(call(&client, addr).await, Some(Resumed));
        // The client renews: its next connection shows the new certificate.
        client
            .store()
            .set(creds(&ca, "checkout", time::Duration::hours(2)));
        assert_eq!(call(&client, addr).await, Some(Full));
        // The server renews: the client's session from before is not taken.
        server
            .store()
            .set(creds(&ca, "payments", time::Duration::hours(2)));
        assert_eq!(call(&client, addr).await, Some(Full));
        assert_eq!(call(&client, addr).await, Some(Resumed));
        let seen: Vec<_> = serving
            .await
            .expect("server")
            .into_iter()
            .map(|s| s.expect("accepted"))
            .collect();
        let hour = seen[0].2;
        assert_eq!(seen[1].2, hour);
        for later in &seen[2..] {
            assert!(later.2 > hour, "the renewed certificate is the one in use");
        }
    }

    #[tokio::test]
    async fn a_session_cannot_outlive_the_callers_certificate() {
        // A caller that stopped renewing (a stolen key, say) and whose certificate has run
        // out tries to get in on the session it made while the certificate was good.
        let ca = ca();
        let server = mesh_tls(creds(&ca, "payments", time::Duration::hours(1)));
        let client = mesh_tls(creds(&ca, "checkout", time::Duration::seconds(2)));
        let (addr, serving) = serve(server, 2).await;
        assert_eq!(call(&client, addr).await, Some(Full));
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert_eq!(call(&client, addr).await, None, "refused");
        let seen = serving.await.expect("server");
        assert!(seen[0].is_ok());
        let refused = seen[1].as_ref().expect_err("refused");
        assert!(
            refused.contains("resumed a TLS session whose certificate is no longer valid")
                && refused.contains("expired"),
            "{refused}"
        );
    }
}
