//! mTLS test helpers: a certificate authority made in the test (rcgen), identity directories
//! for proxies, and a pair of real proxies — a client-side one (outbound, "checkout") and a
//! server-side one (inbound, "payments") in front of an upstream that echoes headers.
//!
//! The certificates have the same shape the controller issues (empty subject, one SPIFFE URI
//! SAN, serverAuth + clientAuth), so the proxy cannot tell them apart; when a test needs the
//! real controller it uses its Certify path instead (see `proxy_mtls_controller.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::upstream::{self, Upstream};
use crate::{Proxy, ProxyOptions, write_atomically};

/// The trust domain the tests use.
pub const TRUST_DOMAIN: &str = "test.local";

/// A mesh CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// What a leaf certificate should look like.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// URI SANs (normally exactly one SPIFFE ID).
    pub uris: Vec<String>,
    /// Validity start, relative to now (negative: in the past).
    pub not_before: time::Duration,
    /// Validity end, relative to now.
    pub not_after: time::Duration,
}

impl Leaf {
    /// A valid-for-an-hour certificate for `service` in `default`.
    pub fn service(service: &str) -> Leaf {
        Leaf {
            uris: vec![spiffe(service)],
            not_before: time::Duration::minutes(-1),
            not_after: time::Duration::hours(1),
        }
    }
}

/// `spiffe://test.local/ns/default/svc/<service>`.
pub fn spiffe(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/svc/{service}")
}

impl TestCa {
    /// A new CA.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(1);
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a leaf; returns (cert PEM, key PEM).
    pub fn issue(&self, leaf: &Leaf) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = leaf
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().expect("ia5")))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + leaf.not_before;
        params.not_after = now + leaf.not_after;
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    /// Signs a CSR (DER) for `spiffe_id`, valid from one second ago for `lifetime`: what the
    /// controller's `Certify` does, for tests that run without the real controller.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        lifetime: Duration,
    ) -> Result<Vec<u8>, String> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_der(&der).map_err(|e| e.to_string())?;
        let p = &mut csr.params;
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(
            spiffe_id.try_into().map_err(|e| format!("{e}"))?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::seconds(1);
        p.not_after = now + lifetime;
        let cert = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(cert.der().to_vec())
    }

    /// Writes `cert.pem`, `key.pem` and `roots.pem` (this CA) into `dir`, each atomically;
    /// the key last, so a polling proxy sees a consistent set at the latest one poll later.
    pub fn write_identity(&self, dir: &Path, leaf: &Leaf) {
        self.write_identity_trusting(dir, leaf, &self.pem);
    }

    /// Like [`TestCa::write_identity`] with other trust roots.
    pub fn write_identity_trusting(&self, dir: &Path, leaf: &Leaf, roots_pem: &str) {
        std::fs::create_dir_all(dir).expect("identity dir");
        let (cert, key) = self.issue(leaf);
        write_atomically(&dir.join("roots.pem"), roots_pem);
        write_atomically(&dir.join("cert.pem"), &cert);
        write_atomically(&dir.join("key.pem"), &key);
    }
}

/// The policy the pair tests use: checkout may read charges; health checks are exempt.
pub fn policy(mode: &str, unauthenticated_denials: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec:
  trustDomain: {TRUST_DOMAIN}
  accessRequestUrl: "http://portal.test/access/new?from={{caller}}&to={{service}}&rpc={{rpc}}&env={{environment}}"
  unauthenticatedDenials: {unauthenticated_denials}
---
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: {{ name: shop }}
spec: {{}}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: {{ name: payments }}
spec:
  team: shop
  endpoints:
    - {{ rpc: "GET /v1/charges/{{id}}" }}
    - {{ rpc: "POST /v1/charges" }}
    - {{ rpc: "GET /healthz" }}
    - {{ rpc: "* /tcp" }}
    - {{ rpc: "payments.v1.Payments/*" }}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: {{ name: checkout }}
spec: {{ team: shop }}
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: {{ name: payments-callers }}
spec:
  service: payments
  mode: {mode}
  rules:
    - {{ name: read-charges, from: [checkout], allow: ["GET /v1/charges/{{id}}"], reason: checkout shows receipts }}
  unauthenticated:
    - {{ rpc: GET /healthz, reason: kubelet probes }}
"#
    )
}

/// A client proxy → server proxy → echo upstream chain with mTLS between the proxies.
#[derive(Debug)]
pub struct Pair {
    /// The echo app behind the server proxy.
    pub app: Upstream,
    /// The server-side proxy ("payments").
    pub server: Proxy,
    /// The client-side proxy ("checkout").
    pub client: Proxy,
    /// The CA both were issued from.
    pub ca: TestCa,
    /// Scratch space: identity dirs and the policy dir.
    pub dir: tempfile::TempDir,
}

/// Options for [`Pair::start`].
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// The server's policy file.
    pub policy: String,
    /// The client proxy's certificate.
    pub client_leaf: Leaf,
    /// The server proxy's certificate.
    pub server_leaf: Leaf,
    /// Extra variables for both proxies.
    pub env: Vec<(String, String)>,
    /// Declare the service's port opaque (`SLUICE_PROXY_OPAQUE_PORTS`) on both proxies.
    pub opaque: bool,
    /// Get certificates from this controller instead of files.
    pub controller: Option<crate::controller::ControllerAccess>,
    /// Put the server proxy in front of this application instead of the built-in echo
    /// upstream (e.g. a Python server a test started). The echo upstream still runs, unused.
    pub app_addr: Option<SocketAddr>,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            policy: policy("enforce", "short"),
            client_leaf: Leaf::service("checkout"),
            server_leaf: Leaf::service("payments"),
            env: Vec::new(),
            controller: None,
            opaque: false,
            app_addr: None,
        }
    }
}

impl Pair {
    /// Starts the app and both proxies. `APP_PORT` in the policy text becomes the port the
    /// application listens on (for `ports:` declarations).
    pub async fn start(opts: PairOptions) -> Pair {
        let app = upstream::http("payments-app").await;
        let app_addr = opts.app_addr.unwrap_or(app.addr);
        let policy = opts
            .policy
            .replace("APP_PORT", &app_addr.port().to_string());
        let ca = TestCa::new("sluice test mesh CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir_all(&policy_dir).expect("policy dir");
        write_atomically(&policy_dir.join("mesh.yaml"), &policy);
        // The client's own copy, so that tests changing the server's policy change only it.
        let client_policy = dir.path().join("client-policy");
        std::fs::create_dir_all(&client_policy).expect("policy dir");
        write_atomically(&client_policy.join("mesh.yaml"), &policy);
        let identity = |o: ProxyOptions, name: &str, leaf: &Leaf| match &opts.controller {
            Some(c) => o
                .env("SLUICE_PROXY_CONTROLLER_ADDR", c.url.clone())
                .env("SLUICE_PROXY_CONTROLLER_CA", path(&c.ca))
                .env(
                    "SLUICE_PROXY_IDENTITY_TOKEN",
                    if name == "server-id" {
                        &c.server_token
                    } else {
                        &c.client_token
                    }
                    .clone(),
                ),
            None => {
                ca.write_identity(&dir.path().join(name), leaf);
                o.env("SLUICE_PROXY_IDENTITY_DIR", path(&dir.path().join(name)))
            }
        };
        let common = |o: ProxyOptions| {
            opts.env
                .iter()
                .fold(o.env("SLUICE_PROXY_IDENTITY_POLL", "50ms"), |o, (k, v)| {
                    o.env(k, v.clone())
                })
        };
        let server = Proxy::start(common(identity(
            ProxyOptions::default()
                .env("SLUICE_PROXY_SERVICE", "payments")
                .env("SLUICE_PROXY_ID", "payments-0")
                .env("SLUICE_PROXY_POLICY_DIR", path(&policy_dir))
                .env("SLUICE_PROXY_EXPLICIT_INBOUND", format!("0={app_addr}"))
                .env(
                    "SLUICE_PROXY_OPAQUE_PORTS",
                    if opts.opaque {
                        app_addr.port().to_string()
                    } else {
                        String::new()
                    },
                ),
            "server-id",
            &opts.server_leaf,
        )));
        let service_addr: SocketAddr = format!("127.0.0.1:{}", crate::free_port())
            .parse()
            .expect("addr");
        // The client proxy routes from the same policy plus where payments runs: its only
        // instance is the server proxy's inbound port.
        let endpoints = dir.path().join("endpoints.json");
        write_atomically(
            &endpoints,
            &serde_json::json!({
                "services": [{
                    "namespace": "default",
                    "service": "payments",
                    "addresses": [service_addr],
                    "versions": [{"version": "v1", "endpoints": [{"address": server.explicit(0).to_string()}]}],
                }],
            })
            .to_string(),
        );
        let client = Proxy::start(common(identity(
            ProxyOptions::default()
                .env("SLUICE_PROXY_SERVICE", "checkout")
                .env("SLUICE_PROXY_ID", "checkout-0")
                .env("SLUICE_PROXY_POLICY_DIR", path(&client_policy))
                .env("SLUICE_PROXY_ENDPOINTS", path(&endpoints))
                .env(
                    "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                    format!("0={service_addr}"),
                ),
            "client-id",
            &opts.client_leaf,
        )));
        Pair {
            app,
            server,
            client,
            ca,
            dir,
        }
    }

    /// Where the checkout app sends its calls to payments.
    pub fn outbound(&self) -> SocketAddr {
        self.client.explicit(0)
    }

    /// The payments proxy's inbound port (mTLS from peers, plaintext from outside the mesh).
    pub fn inbound(&self) -> SocketAddr {
        self.server.explicit(0)
    }

    /// The server's identity directory.
    pub fn server_identity(&self) -> PathBuf {
        self.dir.path().join("server-id")
    }

    /// The client's identity directory.
    pub fn client_identity(&self) -> PathBuf {
        self.dir.path().join("client-id")
    }

    /// Replaces the server's policy.
    pub fn set_policy(&self, text: &str) {
        write_atomically(&self.dir.path().join("policy/mesh.yaml"), text);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Reads one counter's value from a proxy's `/metrics`, summed over series whose labels
/// contain every `label="value"` in `filter`.
pub async fn counter(proxy: &Proxy, name: &str, filter: &[&str]) -> f64 {
    let client = crate::client::hyper_client(false);
    let text = crate::client::get(&client, proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    text.lines()
        .filter(|l| l.starts_with(name) && filter.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
