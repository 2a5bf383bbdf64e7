//! The mesh's certificate authority.
//!
//! Where the CA comes from and what it is are kept apart: every source (the standalone state
//! directory, operator-supplied files, later a Kubernetes Secret) only produces a [`CaPem`],
//! and [`MeshCa::from_pem`] is the one place that checks it and turns it into a signer. A new
//! source is a new function that reads two PEM strings.
//!
//! Standalone, the CA is an ECDSA P-256 key and a self-signed certificate valid for ten years,
//! generated on first start into `<state>/ca/` (`ca.key` mode 0600, `ca.crt`). The directory
//! is built under a temporary name and renamed into place, so a crash never leaves half a CA.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files;

/// The CA's directory inside the state directory.
pub const CA_DIR: &str = "ca";
/// The CA's private key (PKCS#8 PEM), inside [`CA_DIR`].
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA's certificate (PEM), inside [`CA_DIR`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// How long a generated CA is valid.
pub const GENERATED_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How far in the past a generated CA's validity starts, for clocks that lag ours.
const CA_BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A CA as PEM text, wherever it came from. The key is redacted from `Debug`.
#[derive(Clone)]
pub struct CaPem {
    /// One `CERTIFICATE` block.
    pub cert_pem: String,
    /// One PKCS#8 `PRIVATE KEY` block.
    pub key_pem: String,
}

impl fmt::Debug for CaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// How [`MeshCa::load_or_create`] got its CA, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaOrigin {
    /// Created just now, on first start.
    Generated,
    /// Loaded from an earlier start.
    Loaded,
}

/// A loaded, checked CA that can sign workload certificates.
pub struct MeshCa {
    cert_der: Vec<u8>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
    fingerprint: String,
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa")
            .field("fingerprint", &self.fingerprint)
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .finish_non_exhaustive()
    }
}

/// Why a CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read`, `write`, …
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The state directory holds one half of a CA.
    #[error(
        "incomplete mesh CA in {}: {present} exists but {missing} does not; restore {missing}, \
         or remove the directory to create a new CA (every proxy then needs a new certificate)",
        dir.display()
    )]
    Incomplete {
        /// The CA directory.
        dir: PathBuf,
        /// The file that is there.
        present: &'static str,
        /// The file that is not.
        missing: &'static str,
    },
    /// The certificate or key is not a usable CA.
    #[error("invalid mesh CA ({origin}): {problem}")]
    Invalid {
        /// Where it came from, e.g. a path.
        origin: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// Generating a CA failed (this is a bug or a broken system RNG).
    #[error("cannot create the mesh CA: {0}")]
    Generate(String),
}

impl MeshCa {
    /// Checks a CA and makes it a signer. `origin` names the source in error messages.
    ///
    /// The certificate must be a single X.509 v3 CA certificate (basicConstraints `CA:TRUE`,
    /// and `keyCertSign` if it has a key usage) that has not expired; the key must be PKCS#8
    /// (ECDSA P-256/P-384, Ed25519 or RSA) and belong to the certificate.
    pub fn from_pem(pem: &CaPem, origin: &str, now: SystemTime) -> Result<Self, CaError> {
        let invalid = |problem: String| CaError::Invalid {
            origin: origin.to_owned(),
            problem,
        };
        let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(pem.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("the certificate is not valid PEM: {e}")))?;
        let cert_der = match blocks.as_slice() {
            [one] if one.label == "CERTIFICATE" => one.contents.clone(),
            [one] => {
                return Err(invalid(format!(
                    "expected a CERTIFICATE PEM block, found {}",
                    one.label
                )));
            }
            [] => return Err(invalid("the certificate file has no PEM block".to_owned())),
            more => {
                return Err(invalid(format!(
                    "the certificate file holds {} PEM blocks; give exactly one root CA \
                     certificate (intermediate CAs are not supported yet)",
                    more.len()
                )));
            }
        };
        let (rest, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| invalid(format!("the certificate does not parse: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid("trailing bytes after the certificate".to_owned()));
        }
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| invalid(format!("bad basicConstraints extension: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(
                "the certificate is not a CA certificate (basicConstraints CA:TRUE is missing)"
                    .to_owned(),
            ));
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(invalid(
                "the certificate's key usage does not allow signing certificates (keyCertSign)"
                    .to_owned(),
            ));
        }
        let not_after = unix_to_system(cert.validity().not_after.timestamp());
        if not_after <= now {
            return Err(invalid(format!(
                "the certificate expired at {}; rotate the CA",
                humantime::format_rfc3339_seconds(not_after)
            )));
        }
        let key = KeyPair::from_pem(&pem.key_pem).map_err(|e| {
            invalid(format!(
                "the key is not a PKCS#8 PEM private key ({e}); convert one with \
                 `openssl pkcs8 -topk8 -nocrypt -in KEY`"
            ))
        })?;
        if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(invalid(
                "the key does not belong to the certificate (their public keys differ)".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| invalid(format!("cannot sign with this certificate: {e}")))?;
        let fingerprint = fingerprint(&cert_der);
        Ok(MeshCa {
            cert_pem: pem.cert_pem.clone(),
            cert_der,
            issuer,
            not_after,
            fingerprint,
        })
    }

    /// Generates a new CA: an ECDSA P-256 key and a self-signed certificate valid for
    /// [`GENERATED_CA_LIFETIME`], allowed to sign only end-entity certificates (path length 0).
    pub fn generate(now: SystemTime) -> Result<CaPem, CaError> {
        let fail = |e: &dyn fmt::Display| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(&e))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Sluice");
        // A random suffix tells meshes apart, for operators and for path building (a leaf from
        // another mesh is then an unknown issuer, not a bad signature).
        let mut id = [0u8; 4];
        SystemRandom::new().fill(&mut id).map_err(|e| fail(&e))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        name.push(DnType::CommonName, format!("Sluice mesh CA {id}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = asn1_time(now.checked_sub(CA_BACKDATE).unwrap_or(now))?;
        params.not_after = asn1_time(now + GENERATED_CA_LIFETIME)?;
        params.serial_number = Some(random_serial().map_err(|e| fail(&e))?);
        let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
        Ok(CaPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Standalone mode: loads `<state>/ca/`, or creates it on first start.
    pub fn load_or_create(state_dir: &Path, now: SystemTime) -> Result<(Self, CaOrigin), CaError> {
        let dir = state_dir.join(CA_DIR);
        if let Some(ca) = Self::load_dir(&dir, now)? {
            return Ok((ca, CaOrigin::Loaded));
        }
        let pem = Self::generate(now)?;
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io {
                action,
                path,
                source,
            }
        };
        files::ensure_private_dir(state_dir).map_err(io_err("create", state_dir))?;
        // Build the directory under a temporary name, then rename it into place: readers see no
        // CA or a whole one, and a CA created meanwhile by another process is never replaced.
        let temp = files::temp_sibling(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&temp)
            .map_err(io_err("create", &temp))?;
        let written = files::write_new_file(
            &temp.join(CA_KEY_FILE),
            pem.key_pem.as_bytes(),
            files::PRIVATE_FILE,
        )
        .and_then(|()| {
            files::write_new_file(
                &temp.join(CA_CERT_FILE),
                pem.cert_pem.as_bytes(),
                files::PUBLIC_FILE,
            )
        })
        .and_then(|()| fs::File::open(&temp)?.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&temp);
            return Err(io_err("write", &temp)(e));
        }
        match fs::rename(&temp, &dir) {
            Ok(()) => {
                files::sync_parent(&dir).map_err(io_err("sync", &dir))?;
                let ca = Self::from_pem(&pem, &dir.display().to_string(), now)?;
                Ok((ca, CaOrigin::Generated))
            }
            Err(rename_error) => {
                let _ = fs::remove_dir_all(&temp);
                // Lost a race with another process, or the directory holds something else.
                match Self::load_dir(&dir, now)? {
                    Some(ca) => Ok((ca, CaOrigin::Loaded)),
                    None => Err(io_err("create", &dir)(rename_error)),
                }
            }
        }
    }

    /// Loads a CA from two PEM files (`--ca-cert`, `--ca-key`).
    pub fn load_files(cert: &Path, key: &Path, now: SystemTime) -> Result<Self, CaError> {
        let pem = CaPem {
            cert_pem: read_to_string(cert)?,
            key_pem: read_to_string(key)?,
        };
        warn_if_exposed(key);
        Self::from_pem(&pem, &cert.display().to_string(), now)
    }

    /// `Ok(None)` when neither file exists.
    fn load_dir(dir: &Path, now: SystemTime) -> Result<Option<Self>, CaError> {
        let key = dir.join(CA_KEY_FILE);
        let cert = dir.join(CA_CERT_FILE);
        let exists = |p: &Path| {
            p.try_exists().map_err(|source| CaError::Io {
                action: "read",
                path: p.to_owned(),
                source,
            })
        };
        match (exists(&key)?, exists(&cert)?) {
            (true, true) => Self::load_files(&cert, &key, now).map(Some),
            (false, false) => Ok(None),
            (true, false) => Err(CaError::Incomplete {
                dir: dir.to_owned(),
                present: CA_KEY_FILE,
                missing: CA_CERT_FILE,
            }),
            (false, true) => Err(CaError::Incomplete {
                dir: dir.to_owned(),
                present: CA_CERT_FILE,
                missing: CA_KEY_FILE,
            }),
        }
    }

    /// The CA certificate, DER: the mesh's trust anchor.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM, for distributing to proxies.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA certificate expires; no workload certificate outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// SHA-256 of the certificate, hex with colons, for logs and comparing by eye.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

fn read_to_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn warn_if_exposed(key: &Path) {
    if files::readable_by_others(key) {
        tracing::warn!(
            path = %key.display(),
            "the mesh CA key is readable by group or others; run `chmod 600` on it"
        );
    }
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random, positive 128-bit serial number.
pub(crate) fn random_serial() -> Result<SerialNumber, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes)?;
    // Positive, and exactly 16 bytes long when encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `t` at whole seconds, as X.509 encodes it.
pub(crate) fn asn1_time(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CaError::Generate(format!("the clock is before 1970: {e}")))?
        .as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| CaError::Generate("the time is out of range".to_owned()))
}

pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn created_on_first_start_and_the_same_after_a_restart() -> TestResult {
        let state = tempfile::tempdir()?;
        let now = SystemTime::now();
        let (first, origin) = MeshCa::load_or_create(state.path(), now)?;
        assert_eq!(origin, CaOrigin::Generated);
        let key = state.path().join(CA_DIR).join(CA_KEY_FILE);
        assert_eq!(fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        let pem = fs::read_to_string(state.path().join(CA_DIR).join(CA_CERT_FILE))?;
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let (again, origin) = MeshCa::load_or_create(state.path(), now)?;
        assert_eq!(origin, CaOrigin::Loaded);
        assert_eq!(first.cert_der(), again.cert_der());
        assert_eq!(first.fingerprint(), again.fingerprint());
        // Nothing temporary is left behind.
        let names: Vec<_> = fs::read_dir(state.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from(CA_DIR)]);
        Ok(())
    }

    #[test]
    fn generated_ca_is_a_ca_for_ten_years() -> TestResult {
        let now = SystemTime::now();
        let pem = MeshCa::generate(now)?;
        let ca = MeshCa::from_pem(&pem, "test", now)?;
        let (_, cert) = X509Certificate::from_der(ca.cert_der())?;
        let bc = cert.basic_constraints()?.ok_or("no basicConstraints")?;
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let years = ca.not_after().duration_since(now)?.as_secs() / (365 * 24 * 3600);
        assert_eq!(years, 9, "just under ten years from now");
        assert_eq!(cert.subject(), cert.issuer());
        Ok(())
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() -> TestResult {
        let state = tempfile::tempdir()?;
        MeshCa::load_or_create(state.path(), SystemTime::now())?;
        fs::remove_file(state.path().join(CA_DIR).join(CA_CERT_FILE))?;
        let err = MeshCa::load_or_create(state.path(), SystemTime::now())
            .err()
            .ok_or("loaded half a CA")?;
        assert!(
            matches!(
                err,
                CaError::Incomplete {
                    missing: CA_CERT_FILE,
                    ..
                }
            ),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn rejects_mismatched_key_non_ca_and_expired() -> TestResult {
        let now = SystemTime::now();
        let a = MeshCa::generate(now)?;
        let b = MeshCa::generate(now)?;
        let mixed = CaPem {
            cert_pem: a.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
        };
        let err = MeshCa::from_pem(&mixed, "test", now)
            .err()
            .ok_or("accepted")?;
        assert!(err.to_string().contains("does not belong"), "{err}");

        let later = now + GENERATED_CA_LIFETIME + Duration::from_secs(1);
        let err = MeshCa::from_pem(&a, "test", later)
            .err()
            .ok_or("accepted")?;
        assert!(err.to_string().contains("expired"), "{err}");

        let key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["x.example".to_owned()])?.self_signed(&key)?;
        let not_ca = CaPem {
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        };
        let err = MeshCa::from_pem(&not_ca, "test", now)
            .err()
            .ok_or("accepted")?;
        assert!(err.to_string().contains("not a CA"), "{err}");
        Ok(())
    }

    #[test]
    fn loads_operator_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let pem = MeshCa::generate(SystemTime::now())?;
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fs::write(&cert, &pem.cert_pem)?;
        fs::write(&key, &pem.key_pem)?;
        let ca = MeshCa::load_files(&cert, &key, SystemTime::now())?;
        assert_eq!(ca.cert_pem(), pem.cert_pem);
        let err = MeshCa::load_files(&dir.path().join("missing"), &key, SystemTime::now())
            .err()
            .ok_or("loaded a missing file")?;
        assert!(err.to_string().contains("cannot read"), "{err}");
        Ok(())
    }
}
