//! The sluice mTLS pair's mesh, made fresh for each run: a throwaway CA (rcgen) issuing two
//! SPIFFE workload certificates, a policy directory and an endpoints file — the same shapes
//! the controller issues and `sluice policy check` reads, as the integration tests use them.
//!
//! * `bench-client` (proxy A) routes the `bench-upstream` service's address to B's inbound
//!   listener (from policy + endpoints), so it originates mTLS and requires B to prove it is
//!   `bench-upstream`.
//! * `bench-upstream` (proxy B) terminates mTLS, requires a client certificate from the CA and
//!   authorizes every request against an AccessPolicy granting `bench-client` `* /*`.
//!
//! [`verify`] proves that before anything is measured, and [`check_after`] that every measured
//! request went the same way, so the figure can never silently be plaintext.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::error::BenchError;
use crate::load;
use crate::upstream::WHOAMI_PATH;

/// The mesh's SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "bench.local";
/// Both services' namespace.
pub const NAMESPACE: &str = "default";
/// The caller's service (proxy A's identity).
pub const CLIENT_SERVICE: &str = "bench-client";
/// The callee's service (proxy B's identity).
pub const UPSTREAM_SERVICE: &str = "bench-upstream";

/// How long the certificates are valid: longer than any run.
const CERT_LIFETIME: time::Duration = time::Duration::days(2);
/// How long [`verify`] retries before failing the run, with the proxies at full speed.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The same under valgrind (`--callgrind`), where a proxy is some 50 times slower: the
/// first mTLS handshake alone took longer than 5 s here.
pub const VERIFY_TIMEOUT_PROFILED: Duration = Duration::from_secs(120);

/// `spiffe://bench.local/ns/default/svc/<service>`.
pub fn spiffe(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/svc/{service}")
}

/// Where the mesh's files are, for the proxies' environment.
#[derive(Debug)]
pub struct MeshFiles {
    /// `SLUICE_PROXY_POLICY_DIR` for both proxies.
    pub policy_dir: PathBuf,
    /// `SLUICE_PROXY_ENDPOINTS` for A; written by [`MeshFiles::write_endpoints`] once B's
    /// inbound port is known.
    pub endpoints: PathBuf,
    /// `SLUICE_PROXY_IDENTITY_DIR` for A (`bench-client`).
    pub client_identity: PathBuf,
    /// `SLUICE_PROXY_IDENTITY_DIR` for B (`bench-upstream`).
    pub upstream_identity: PathBuf,
    /// The address the client "dials" for `bench-upstream` (A's explicit target). Nothing
    /// listens there: A's routing replaces it with B's inbound listener, and A refuses
    /// destinations that are not mesh services, so a routing mistake fails instead of going
    /// around the mesh.
    pub service_addr: SocketAddr,
    /// Issues the identities, and new ones when [`MeshFiles::rotate`] is called.
    ca: Ca,
}

impl MeshFiles {
    /// Makes the CA and both identities and writes them and the policy under `dir`.
    pub fn write(dir: &Path) -> Result<MeshFiles, BenchError> {
        let files = MeshFiles {
            policy_dir: dir.join("policy"),
            endpoints: dir.join("endpoints.json"),
            client_identity: dir.join("identity-client"),
            upstream_identity: dir.join("identity-upstream"),
            service_addr: unused_port()?,
            ca: Ca::new()?,
        };
        files.rotate(0)?;
        create_dir(&files.policy_dir)?;
        write(&files.policy_dir.join("mesh.yaml"), &policy(0))?;
        Ok(files)
    }

    /// Issues both proxies new certificates (new keys, same CA) and puts them in place the
    /// way a Kubernetes secret volume does: each identity directory is a symlink, and the
    /// three files change together when it is flipped to a new generation's directory.
    pub fn rotate(&self, generation: u64) -> Result<(), BenchError> {
        for (link, service) in [
            (&self.client_identity, CLIENT_SERVICE),
            (&self.upstream_identity, UPSTREAM_SERVICE),
        ] {
            let real = link.with_extension(format!("g{generation}"));
            self.ca.write_identity(&real, service)?;
            let tmp = link.with_extension("next");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&real, &tmp).map_err(BenchError::file("link", &tmp))?;
            std::fs::rename(&tmp, link).map_err(BenchError::file("flip", link))?;
        }
        Ok(())
    }

    /// Rewrites the policy (edit number `n` changes a rule's reason, so its content hash
    /// changes and every proxy reloads it), atomically: written beside it, then renamed.
    pub fn edit_policy(&self, n: u64) -> Result<(), BenchError> {
        let tmp = self.policy_dir.join(".mesh.yaml.next");
        write(&tmp, &policy(n))?;
        let path = self.policy_dir.join("mesh.yaml");
        std::fs::rename(&tmp, &path).map_err(BenchError::file("rename", &path))
    }

    /// Says that `bench-upstream`'s one instance is B's inbound listener.
    pub fn write_endpoints(&self, b_inbound: SocketAddr) -> Result<(), BenchError> {
        let json = serde_json::json!({
            "services": [{
                "namespace": NAMESPACE,
                "service": UPSTREAM_SERVICE,
                "addresses": [self.service_addr.to_string()],
                "versions": [{ "version": "v1", "endpoints": [{ "address": b_inbound.to_string() }] }],
            }],
        });
        write(&self.endpoints, &json.to_string())
    }
}

/// The policy both proxies load: the mesh, one team, both services, and B's callers (HTTP,
/// the gRPC benchmark's `bench.Echo` service — an HTTP pattern never grants a gRPC call — and
/// opaque TCP, for the churn benchmark's new mTLS connections). `edit` only changes a
/// reason.
fn policy(edit: u64) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec:
  trustDomain: {TRUST_DOMAIN}
  unknownDestinations: refuse
---
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: {{ name: bench }}
spec: {{}}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: {{ name: {UPSTREAM_SERVICE} }}
spec:
  team: bench
  endpoints:
    - {{ rpc: "* /*" }}
    - {{ rpc: "bench.Echo/*" }}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: {{ name: {CLIENT_SERVICE} }}
spec: {{ team: bench }}
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: {{ name: {UPSTREAM_SERVICE}-callers }}
spec:
  service: {UPSTREAM_SERVICE}
  mode: enforce
  rules:
    - {{ name: bench, from: [{CLIENT_SERVICE}], allow: ["* /*", "bench.Echo/*", tcp], reason: "the benchmark's load (edit {edit})" }}
"#
    )
}

/// A mesh CA made for one run and dropped with it.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(throwaway)")
    }
}

impl Ca {
    fn new() -> Result<Ca, BenchError> {
        let key = KeyPair::generate().map_err(rcgen_error("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mesh_bench throwaway CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CERT_LIFETIME;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("sign the CA certificate"))?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes `cert.pem` (empty subject, one SPIFFE URI SAN, serverAuth + clientAuth, as the
    /// controller issues), `key.pem` and `roots.pem` (this CA) into `dir`.
    fn write_identity(&self, dir: &Path, service: &str) -> Result<(), BenchError> {
        let key = KeyPair::generate().map_err(rcgen_error("generate a workload key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = spiffe(service)
            .try_into()
            .map_err(rcgen_error("make the SPIFFE SAN"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + CERT_LIFETIME;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error("sign a workload certificate"))?;
        create_dir(dir)?;
        write(&dir.join("roots.pem"), &self.pem)?;
        write(&dir.join("cert.pem"), &cert.pem())?;
        write(&dir.join("key.pem"), &key.serialize_pem())
    }
}

fn rcgen_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> BenchError {
    move |e| BenchError::Setup(format!("mTLS pair: {what}: {e}"))
}

fn create_dir(dir: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(BenchError::file("write", path))
}

/// A loopback address nothing listens on (bound, read back and released).
fn unused_port() -> Result<SocketAddr, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BenchError::io(
            "pick an address for the bench-upstream service",
        ))
}

/// What B's `/metrics` says about authorization.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AuthzCounts {
    /// `sluice_proxy_authz_allow_total` for `bench-client` calling `bench-upstream`.
    pub allowed: f64,
    /// `sluice_proxy_authz_deny_total` and `..._would_deny_total`, any caller.
    pub denied: f64,
}

/// Reads B's authorization counters from its admin listener.
pub async fn authz_counts(b_admin: SocketAddr) -> Result<AuthzCounts, BenchError> {
    let (status, text) = load::get_once(b_admin, "/metrics", Duration::from_secs(30))
        .await
        .map_err(|e| BenchError::Setup(format!("mTLS pair: B's /metrics ({b_admin}): {e}")))?;
    if status != 200 {
        return Err(BenchError::Setup(format!(
            "mTLS pair: B's /metrics ({b_admin}) answered {status}"
        )));
    }
    Ok(parse_authz(&text))
}

fn parse_authz(metrics: &str) -> AuthzCounts {
    let sum = |prefix: &str, labels: &[String]| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && labels.iter().all(|f| l.contains(f.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let ours = [
        format!("service=\"{UPSTREAM_SERVICE}\""),
        format!("caller=\"{CLIENT_SERVICE}\""),
    ];
    AuthzCounts {
        allowed: sum("sluice_proxy_authz_allow_total{", &ours),
        denied: sum("sluice_proxy_authz_deny_total{", &[])
            + sum("sluice_proxy_authz_would_deny_total{", &[]),
    }
}

/// Proves, before measuring, that a request sent to A's `entry` crosses to B over mTLS and is
/// authorized there: the upstream sees `sluice-client-id` = the client's SPIFFE ID (B sets it
/// only from a verified client certificate, after removing any the caller sent), and B
/// counted an allowed call from `bench-client`. Retries for up to `patience` while the proxies
/// settle (each request may take half of it), then fails the run. Returns B's counters after
/// the check.
pub async fn verify(
    entry: SocketAddr,
    b_admin: SocketAddr,
    patience: Duration,
) -> Result<AuthzCounts, BenchError> {
    let want = spiffe(CLIENT_SERVICE);
    let deadline = Instant::now() + patience;
    let per_request = (patience / 2).max(Duration::from_secs(5));
    let last = loop {
        let got = load::get_once(entry, WHOAMI_PATH, per_request).await;
        match &got {
            Ok((200, id)) if *id == want => break None,
            _ if Instant::now() > deadline => break Some(got),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if let Some(got) = last {
        let saw = match got {
            Ok((200, id)) if id.is_empty() => {
                "no sluice-client-id (plaintext, or B did not authenticate and authorize the caller)".to_owned()
            }
            Ok((200, id)) => format!("sluice-client-id {id:?}"),
            Ok((status, body)) => format!("status {status}: {:?}", body.trim()),
            Err(e) => e,
        };
        return Err(BenchError::Setup(format!(
            "the mTLS pair is not doing mTLS + authorization, so it will not be measured: \
             the upstream should see sluice-client-id {want:?} but got {saw}"
        )));
    }
    let counts = authz_counts(b_admin).await?;
    if counts.allowed < 1.0 || counts.denied > 0.0 {
        return Err(BenchError::Setup(format!(
            "mTLS pair: B's /metrics shows {} allowed calls from {CLIENT_SERVICE} and {} denied \
             after a successful check; expected at least 1 and 0",
            counts.allowed, counts.denied
        )));
    }
    Ok(counts)
}

/// After the measured phases: since `before` (read by [`verify`], before the warm-up), B must
/// have authorized at least as many calls from `bench-client` as the client counted successes
/// in the measured phases (every one went through B's authorization), and denied none.
/// Returns a line for the report.
pub async fn check_after(
    b_admin: SocketAddr,
    before: AuthzCounts,
    ok_requests: u64,
) -> Result<String, BenchError> {
    let after = authz_counts(b_admin).await?;
    let allowed = after.allowed - before.allowed;
    if allowed < ok_requests as f64 || after.denied > 0.0 {
        return Err(BenchError::Setup(format!(
            "mTLS pair: the client counted {ok_requests} successful requests but B authorized \
             {allowed} calls from {CLIENT_SERVICE} and denied {}; the figures may not be of \
             the mTLS path",
            after.denied
        )));
    }
    Ok(format!(
        "verified mTLS + authorization: before the warm-up, the upstream saw sluice-client-id \
         `{}` through the pair; from then to the end, B's `sluice_proxy_authz_allow_total` for \
         `{CLIENT_SERVICE}` rose by {allowed} (warm-up included; the client counted {ok_requests} \
         successes in the measured phases), and B denied none",
        spiffe(CLIENT_SERVICE)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_mesh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = MeshFiles::write(dir.path()).expect("mesh");
        files
            .write_endpoints("127.0.0.1:1234".parse().expect("addr"))
            .expect("endpoints");
        for d in [&files.client_identity, &files.upstream_identity] {
            for f in ["cert.pem", "key.pem", "roots.pem"] {
                let text = std::fs::read_to_string(d.join(f)).expect("pem");
                assert!(text.starts_with("-----BEGIN"), "{f}: {text}");
            }
        }
        let policy = std::fs::read_to_string(files.policy_dir.join("mesh.yaml")).expect("yaml");
        assert!(
            policy.contains("from: [bench-client], allow: [\"* /*\", \"bench.Echo/*\", tcp]"),
            "{policy}"
        );
        let endpoints = std::fs::read_to_string(&files.endpoints).expect("json");
        assert!(endpoints.contains("127.0.0.1:1234"));
    }

    #[test]
    fn parses_authz_counters() {
        let text = "# HELP x\n\
            sluice_proxy_authz_allow_total{caller=\"bench-client\",policy=\"p\",rpc=\"* /*\",service=\"bench-upstream\"} 41\n\
            sluice_proxy_authz_allow_total{caller=\"other\",policy=\"p\",rpc=\"* /*\",service=\"bench-upstream\"} 5\n\
            sluice_proxy_authz_deny_total{caller=\"other\",policy=\"p\",rpc=\"* /*\",service=\"bench-upstream\"} 2\n";
        assert_eq!(
            parse_authz(text),
            AuthzCounts {
                allowed: 41.0,
                denied: 2.0
            }
        );
    }
}
