//! Issuing workload certificates for CSRs.
//!
//! The controller decides identity, never the requester: of the CSR only the public key is
//! used (after its self-signature is verified, which proves the requester holds the private
//! key). Its subject, SANs and requested extensions are ignored. The certificate has an empty
//! subject and exactly one SAN, the workload's SPIFFE ID (marked critical, as RFC 5280 asks
//! when the subject is empty), `digitalSignature`, and both `serverAuth` and `clientAuth`
//! because every sidecar is a TLS server (inbound) and client (outbound).

use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SubjectPublicKeyInfo,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::ca::{asn1_time, random_serial, unix_to_system};
use super::{MeshCa, TrustDomain, WorkloadIdentity};

/// How long a workload certificate is valid by default. Proxies renew at about 70%.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest lifetime the controller can be configured with.
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);
/// The longest lifetime the controller can be configured with.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// How far in the past a certificate's validity starts, so that a peer whose clock is a little
/// behind the controller's accepts it at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// The largest CSR accepted. A P-256 CSR is about 250 bytes, an RSA-4096 one under 2 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Signs workload certificates with the mesh CA.
#[derive(Debug)]
pub struct Certifier {
    ca: MeshCa,
    trust_domain: TrustDomain,
    lifetime: Duration,
}

/// A certificate issued for one workload.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The leaf, DER.
    pub der: Vec<u8>,
    /// Its only SAN.
    pub spiffe_id: String,
    /// Start of validity (a little in the past).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Why a CSR is refused. These are the requester's mistakes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// No bytes.
    #[error("the CSR is empty; send a DER PKCS#10 certificate signing request in `csr_der`")]
    Empty,
    /// Too many bytes.
    #[error("the CSR is {len} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not DER PKCS#10.
    #[error("the CSR is not a DER PKCS#10 certificate signing request: {0}")]
    Malformed(String),
    /// The self-signature does not verify, so the requester has not shown it holds the key.
    #[error("the CSR's signature does not verify against its own public key")]
    BadSignature,
    /// A key type the mesh does not use.
    #[error("the CSR's key type is not supported; use ECDSA P-256 (recommended), P-384 or Ed25519")]
    UnsupportedKey,
}

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The CA expired while the controller was running.
    #[error("the mesh CA expired at {}; rotate the CA", humantime::format_rfc3339_seconds(*.0))]
    CaExpired(SystemTime),
    /// Signing failed: a bug or a broken system, never the requester's fault.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl Certifier {
    /// A certifier issuing `spiffe://<trust_domain>/…` certificates valid for `lifetime`
    /// (clamped to the CA's own expiry).
    pub fn new(ca: MeshCa, trust_domain: TrustDomain, lifetime: Duration) -> Self {
        Certifier {
            ca,
            trust_domain,
            lifetime,
        }
    }

    /// The CA.
    pub fn ca(&self) -> &MeshCa {
        &self.ca
    }

    /// The trust domain in every SPIFFE ID.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The configured certificate lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The trust anchors proxies verify peers against, DER.
    pub fn trust_roots_der(&self) -> Vec<Vec<u8>> {
        vec![self.ca.cert_der().to_vec()]
    }

    /// Issues a certificate for `workload` (already authenticated by the caller) binding the
    /// public key of `csr_der`.
    pub fn issue(
        &self,
        csr_der: &[u8],
        workload: &WorkloadIdentity,
        now: SystemTime,
    ) -> Result<IssuedCertificate, IssueError> {
        let public_key = check_csr(csr_der)?;
        self.sign(
            &public_key,
            workload.spiffe_id(&self.trust_domain),
            self.lifetime,
            now,
        )
    }

    /// The controller's own serving certificate for `key`: the same shape as a workload's, but
    /// named `spiffe://<trust-domain>/sluice/controller`, which no workload can be.
    pub fn issue_controller(
        &self,
        key: &impl PublicKeyData,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, IssueError> {
        self.sign(
            key,
            sluice_api::tls::controller_spiffe_id(self.trust_domain.as_str()),
            lifetime,
            now,
        )
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: String,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, IssueError> {
        if self.ca.not_after() <= now {
            return Err(IssueError::CaExpired(self.ca.not_after()));
        }
        let signing = |e: &dyn std::fmt::Display| IssueError::Signing(e.to_string());

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(spiffe_id.as_str()).map_err(|e| signing(&e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(|e| signing(&e))?);
        let not_before = asn1_time(now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now))
            .map_err(|e| signing(&e))?;
        let not_after =
            asn1_time((now + lifetime).min(self.ca.not_after())).map_err(|e| signing(&e))?;
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params
            .signed_by(public_key, self.ca.issuer())
            .map_err(|e| signing(&e))?;
        Ok(IssuedCertificate {
            der: cert.der().to_vec(),
            spiffe_id,
            not_before: unix_to_system(not_before.unix_timestamp()),
            not_after: unix_to_system(not_after.unix_timestamp()),
        })
    }
}

/// Parses a CSR, verifies its self-signature and returns its public key, if it is a key type
/// the mesh uses. Nothing else of the CSR is looked at.
pub fn check_csr(der: &[u8]) -> Result<SubjectPublicKeyInfo, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge {
            len: der.len(),
            max: MAX_CSR_BYTES,
        });
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let key = SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|_| CsrError::UnsupportedKey)?;
    let supported = [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ];
    if !supported.contains(&key.algorithm()) {
        return Err(CsrError::UnsupportedKey);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use rcgen::KeyPair;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::X509Certificate;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn certifier(lifetime: Duration) -> Result<Certifier, Box<dyn std::error::Error>> {
        let now = SystemTime::now();
        let ca = MeshCa::from_pem(&MeshCa::generate(now)?, "test", now)?;
        Ok(Certifier::new(
            ca,
            TrustDomain::new("shop.local")?,
            lifetime,
        ))
    }

    /// A CSR that asks for a lot more than it will get.
    fn greedy_csr(key: &KeyPair) -> Result<Vec<u8>, rcgen::Error> {
        let mut params = CertificateParams::new(vec![
            "payments.shop.svc".to_owned(),
            "spiffe://shop.local/ns/shop/svc/admin".to_owned(),
        ])?;
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(
                "spiffe://shop.local/ns/shop/svc/admin",
            )?));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Ok(params.serialize_request(key)?.der().to_vec())
    }

    #[test]
    fn only_the_spiffe_id_and_nothing_the_csr_asked_for() -> TestResult {
        let certifier = certifier(DEFAULT_LIFETIME)?;
        let key = KeyPair::generate()?;
        let who = WorkloadIdentity::new("shop", "checkout")?;
        let now = SystemTime::now();
        let issued = certifier.issue(&greedy_csr(&key)?, &who, now)?;
        assert_eq!(issued.spiffe_id, "spiffe://shop.local/ns/shop/svc/checkout");

        let (_, cert) = X509Certificate::from_der(&issued.der)?;
        assert_eq!(cert.public_key().raw, key.subject_public_key_info());
        assert_eq!(cert.subject().iter().count(), 0, "empty subject");
        let mut sans = Vec::new();
        let mut san_critical = false;
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                san_critical = ext.critical;
                sans.extend(san.general_names.iter().cloned());
            }
        }
        assert_eq!(
            sans,
            vec![GeneralName::URI("spiffe://shop.local/ns/shop/svc/checkout")]
        );
        assert!(san_critical);
        let bc = cert.basic_constraints()?.ok_or("no basicConstraints")?;
        assert!(!bc.value.ca);
        let ku = cert.key_usage()?.ok_or("no key usage")?.value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_encipherment());
        let eku = cert.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(eku.server_auth && eku.client_auth && !eku.any && !eku.code_signing);
        assert_eq!(
            cert.issuer(),
            X509Certificate::from_der(certifier.ca().cert_der())?
                .1
                .subject()
        );
        Ok(())
    }

    #[test]
    fn lifetime_skew_and_serials() -> TestResult {
        let lifetime = Duration::from_secs(3600);
        let certifier = certifier(lifetime)?;
        let key = KeyPair::generate()?;
        let csr = greedy_csr(&key)?;
        let who = WorkloadIdentity::new("shop", "checkout")?;
        let now = SystemTime::now();
        let a = certifier.issue(&csr, &who, now)?;
        let b = certifier.issue(&csr, &who, now)?;
        assert_eq!(
            a.not_after.duration_since(a.not_before)?,
            lifetime + CLOCK_SKEW_ALLOWANCE
        );
        let (_, ca) = X509Certificate::from_der(&a.der)?;
        assert!(
            ca.validity()
                .is_valid_at(x509_parser::time::ASN1Time::now())
        );
        let ahead = now.duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
        assert!(ca.validity().not_before.timestamp() <= i64::try_from(ahead)? - 59);
        let serial = |der: &[u8]| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            Ok(X509Certificate::from_der(der)?.1.raw_serial().to_vec())
        };
        assert_ne!(serial(&a.der)?, serial(&b.der)?);
        assert_eq!(serial(&a.der)?.len(), 16);
        Ok(())
    }

    #[test]
    fn never_outlives_the_ca() -> TestResult {
        let certifier = certifier(DEFAULT_LIFETIME)?;
        let key = KeyPair::generate()?;
        let who = WorkloadIdentity::new("shop", "checkout")?;
        let almost_expired = certifier.ca().not_after() - Duration::from_secs(3600);
        let issued = certifier.issue(&greedy_csr(&key)?, &who, almost_expired)?;
        assert_eq!(issued.not_after, certifier.ca().not_after());
        let after = certifier.ca().not_after() + Duration::from_secs(1);
        assert!(matches!(
            certifier.issue(&greedy_csr(&key)?, &who, after),
            Err(IssueError::CaExpired(_))
        ));
        Ok(())
    }

    #[test]
    fn refuses_bad_csrs() -> TestResult {
        assert_eq!(check_csr(&[]).err(), Some(CsrError::Empty));
        assert!(matches!(check_csr(b"hello"), Err(CsrError::Malformed(_))));
        assert!(matches!(
            check_csr(&vec![0u8; MAX_CSR_BYTES + 1]),
            Err(CsrError::TooLarge { .. })
        ));
        // Flip a bit of the signature (the last byte of the DER).
        let key = KeyPair::generate()?;
        let mut csr = greedy_csr(&key)?;
        let last = csr.len() - 1;
        csr[last] ^= 1;
        assert_eq!(check_csr(&csr).err(), Some(CsrError::BadSignature));
        let mut trailing = greedy_csr(&key)?;
        trailing.push(0);
        assert!(matches!(check_csr(&trailing), Err(CsrError::Malformed(_))));
        // Ed25519 and P-384 are fine too.
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = KeyPair::generate_for(alg)?;
            check_csr(&greedy_csr(&key)?)?;
        }
        Ok(())
    }
}
