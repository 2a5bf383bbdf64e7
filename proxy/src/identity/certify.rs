//! Certificates from the controller: generate a key here, send only a CSR over `Certify`, and
//! renew at about 70% of the lifetime.
//!
//! The first certificate is asked for with the bootstrap token; renewals connect with the
//! current certificate, which is then the credential, and send no token at all. So the token
//! only has to be valid when the proxy starts (or after its certificate lapsed), and can be
//! short-lived. While the controller is away the proxy keeps serving with the certificate it
//! has and retries with exponential backoff and jitter (so a mesh of proxies does not stampede
//! a controller that comes back). Each renewal uses a fresh key pair.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::{CertifyRequest, Workload};

use super::controller::ControllerConn;
use super::{Credentials, CredentialsError, IdentityStore, SpiffeId};

/// Renew when this fraction of the lifetime has passed (before jitter).
pub const RENEW_AT: f64 = 0.7;
/// First retry delay after a failed `Certify`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Deadline for one `Certify` call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt at the first certificate may take before it is tried again.
const FIRST_ATTEMPT: Duration = Duration::from_secs(3);

/// Where the bootstrap token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// Given directly (`SLUICE_PROXY_IDENTITY_TOKEN`).
    Value(String),
    /// Read from a file at every attempt, because projected tokens are rotated in place
    /// (`SLUICE_PROXY_IDENTITY_TOKEN_FILE`).
    File(PathBuf),
}

impl Token {
    /// The token as it is now: a file is read again on every call, so a token rotated in place
    /// is picked up by the next call without a restart.
    pub async fn read(&self) -> Result<String, TokenError> {
        match self {
            Token::Value(t) => Ok(t.clone()),
            Token::File(path) => Ok(tokio::fs::read_to_string(path)
                .await
                .map_err(|source| TokenError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned()),
        }
    }
}

/// Why the bootstrap token could not be attached to a call.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file is unreadable.
    #[error("bootstrap token {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token cannot be sent as gRPC metadata (it is not printable ASCII).
    #[error("the bootstrap token contains characters that cannot be sent as gRPC metadata")]
    NotAscii,
}

/// How to reach the controller and who we are.
#[derive(Clone, Debug)]
pub struct CertifyConfig {
    /// The controller, and how to trust it.
    pub controller: ControllerConn,
    /// The bootstrap token.
    pub token: Token,
    /// The workload this proxy fronts.
    pub workload: Workload,
}

/// Why one `Certify` attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The token file is unreadable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Key or CSR generation failed.
    #[error("generating the key or CSR: {0}")]
    Csr(String),
    /// The controller address is not a URI.
    #[error("controller address `{0}` is not a URI like https://127.0.0.1:7071")]
    Address(String),
    /// The mesh CA file, which the controller's certificate is checked against, is unusable.
    #[error("the controller's CA ({}): {reason}", path.display())]
    ControllerCa {
        /// The file (`SLUICE_PROXY_CONTROLLER_CA`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A call that needs this workload's certificate, before it has one.
    #[error("no mesh certificate yet: the controller needs one for this call")]
    NoCertificate,
    /// The controller could not be reached.
    #[error("controller {addr} unreachable: {reason}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The controller refused.
    #[error("controller refused: {0}")]
    Refused(tonic::Status),
    /// What came back is not usable.
    #[error("the issued certificate is unusable: {0}")]
    Credentials(#[from] CredentialsError),
    /// It is for someone else.
    #[error(
        "the controller issued `{got}` but this proxy fronts namespace `{namespace}` service `{service}`"
    )]
    WrongIdentity {
        /// What the certificate says.
        got: SpiffeId,
        /// Ours.
        namespace: String,
        /// Ours.
        service: String,
    },
}

impl CertifyError {
    /// Errors that retrying cannot fix (the token or the workload is wrong) are still retried,
    /// since an operator may fix them underneath us, but they are logged louder.
    pub fn is_permanent(&self) -> bool {
        matches!(self, CertifyError::Refused(s)
            if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument))
    }
}

/// Asks for one certificate: with the current one as the credential while it is valid, else
/// with the bootstrap token.
pub async fn certify(
    config: &CertifyConfig,
    store: &Arc<IdentityStore>,
) -> Result<Credentials, CertifyError> {
    let renewing = store
        .current()
        .is_some_and(|c| c.not_after > SystemTime::now());
    // Renewing, the token is neither needed nor sent: it may well have expired by now.
    let token = if renewing {
        String::new()
    } else {
        config.token.read().await?
    };
    // The key pair is created and kept here; only its public half leaves, inside the CSR.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertifyError::Csr(e.to_string()))?;
    let csr = CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .map_err(|e| CertifyError::Csr(e.to_string()))?;
    let unreachable = |reason: String| CertifyError::Unreachable {
        addr: config.controller.addr.clone(),
        reason,
    };
    let endpoint = config
        .controller
        .endpoint()?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = config.controller.connect(endpoint, store).await?;
    let rsp = MeshClient::new(channel)
        .certify(CertifyRequest {
            workload: Some(config.workload.clone()),
            csr_der: csr.der().to_vec(),
            token,
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                unreachable(status.message().to_owned())
            }
            _ => CertifyError::Refused(status),
        })?
        .into_inner();
    let mut chain = vec![CertificateDer::from(rsp.certificate_der)];
    chain.extend(rsp.chain_der.into_iter().map(CertificateDer::from));
    let roots = rsp
        .trust_roots_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let creds = Credentials::new(chain, key, roots)?;
    let w = &config.workload;
    if creds.id.namespace != w.namespace || creds.id.service != w.service {
        return Err(CertifyError::WrongIdentity {
            got: creds.id,
            namespace: w.namespace.clone(),
            service: w.service.clone(),
        });
    }
    Ok(creds)
}

/// The whole error chain (tonic's top-level message alone is just "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// When to renew `creds`: 70% of the way through its lifetime, ±5% jitter so that proxies
/// started together do not renew together. The lifetime counts from when we received it if
/// that is later than `not_before` (backdating would otherwise make a short-lived certificate
/// look due at once, and the proxy would renew in a loop).
pub fn renew_delay(creds: &Credentials, now: SystemTime, rng: &mut impl Rng) -> Duration {
    let start = creds.not_before.max(creds.received);
    let lifetime = creds.not_after.duration_since(start).unwrap_or_default();
    let at = start + lifetime.mul_f64(RENEW_AT + rng.random_range(-0.05..=0.05));
    at.duration_since(now).unwrap_or_default()
}

/// The next backoff: doubled, capped, with full jitter in the upper half.
pub fn next_backoff(current: Duration, rng: &mut impl Rng) -> (Duration, Duration) {
    next_backoff_capped(current, BACKOFF_MAX, rng)
}

/// [`next_backoff`] with another cap (the `Watch` stream retries within seconds, since a proxy
/// without its stream misses every policy change).
pub fn next_backoff_capped(
    current: Duration,
    cap: Duration,
    rng: &mut impl Rng,
) -> (Duration, Duration) {
    let next = (current * 2).min(cap);
    let sleep = current.mul_f64(rng.random_range(0.5..=1.0));
    (sleep, next)
}

/// Tries to get the first certificate within `wait`; the proxy then starts either way (it
/// serves plaintext and keeps trying in [`renew`]).
pub async fn first(config: &CertifyConfig, store: &Arc<IdentityStore>, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut backoff = BACKOFF_MIN;
    loop {
        // One attempt may not use up the whole wait: in rollout_bench a copy's first attempt
        // hung for all of it, and the copy started without a certificate.
        let attempt = deadline.min(tokio::time::Instant::now() + FIRST_ATTEMPT);
        match tokio::time::timeout_at(attempt, certify(config, store)).await {
            Ok(Ok(creds)) => return store.set(creds),
            // A refused token will not become valid within the wait: start now, keep trying.
            Ok(Err(error)) if error.is_permanent() => {
                tracing::error!(%error, "the controller refused to certify this proxy");
                break;
            }
            Ok(Err(error)) => tracing::warn!(%error, "no mesh certificate yet; retrying"),
            Err(_) if tokio::time::Instant::now() >= deadline => break,
            Err(_) => tracing::warn!(
                controller = %config.controller.addr,
                "no answer to Certify within {}s; retrying",
                FIRST_ATTEMPT.as_secs()
            ),
        }
        let (sleep, next) = next_backoff(backoff, &mut rand::rng());
        backoff = next;
        if tokio::time::timeout_at(deadline, tokio::time::sleep(sleep))
            .await
            .is_err()
        {
            break;
        }
    }
    tracing::warn!(controller = %config.controller.addr, "starting without a mesh certificate; inbound mTLS is refused until one arrives");
}

/// Keeps the certificate fresh forever.
pub async fn renew(config: CertifyConfig, store: Arc<IdentityStore>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let delay = match store.current() {
            Some(creds) => renew_delay(&creds, SystemTime::now(), &mut rand::rng()),
            None => Duration::ZERO,
        };
        tokio::time::sleep(delay).await;
        loop {
            match certify(&config, &store).await {
                Ok(creds) => {
                    store.set(creds);
                    backoff = BACKOFF_MIN;
                    break;
                }
                Err(error) => {
                    let expires = store.current().map(|c| c.not_after);
                    if error.is_permanent() {
                        tracing::error!(%error, ?expires, "certificate renewal refused; still serving with the current certificate");
                    } else {
                        tracing::warn!(%error, ?expires, "certificate renewal failed; still serving with the current certificate");
                    }
                    let (sleep, next) = next_backoff(backoff, &mut rand::rng());
                    backoff = next;
                    tokio::time::sleep(sleep).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials for a self-signed SPIFFE certificate valid from `before` ago for `after`.
    fn creds(before: Duration, after: Duration) -> Credentials {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://td/ns/default/svc/a".try_into().expect("ia5"),
        )];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - before;
        p.not_after = now + after;
        let cert = p.self_signed(&key).expect("cert");
        Credentials::new(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            vec![cert.der().clone()],
        )
        .expect("credentials")
    }

    #[test]
    fn renews_at_70_percent_counted_from_receipt_when_backdated() {
        let mut rng = rand::rng();
        // 24 h certificate: about 16.8 h from now.
        let day = creds(Duration::ZERO, Duration::from_secs(24 * 3600));
        let d = renew_delay(&day, SystemTime::now(), &mut rng).as_secs_f64() / 3600.0;
        assert!((15.5..=18.1).contains(&d), "{d} h");
        // Backdated by a minute, valid 10 s more: renew in about 7 s, not at once.
        let short = creds(Duration::from_secs(60), Duration::from_secs(10));
        let d = renew_delay(&short, SystemTime::now(), &mut rng).as_secs_f64();
        assert!((5.5..=8.0).contains(&d), "{d} s");
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut rng = rand::rng();
        let mut b = BACKOFF_MIN;
        for _ in 0..20 {
            let (sleep, next) = next_backoff(b, &mut rng);
            assert!(sleep <= b && sleep >= b / 2);
            assert!(next <= BACKOFF_MAX);
            b = next;
        }
        assert_eq!(b, BACKOFF_MAX);
    }
}
