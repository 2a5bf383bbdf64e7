//! Credentials from files: `cert.pem` (leaf first, then any intermediates), `key.pem` and
//! `roots.pem` in one directory. For running the proxy without a controller, and for tests
//! that make their own CA. The directory is polled, so replacing the files rotates the
//! certificate the same way a renewal from the controller does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{Credentials, CredentialsError, IdentityStore};

/// The leaf and its chain.
pub const CERT_FILE: &str = "cert.pem";
/// The private key (PKCS#8, SEC1 or PKCS#1).
pub const KEY_FILE: &str = "key.pem";
/// The mesh's trust anchors.
pub const ROOTS_FILE: &str = "roots.pem";

/// Why the directory does not hold usable credentials.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file is missing, unreadable or not PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The files are readable but do not make credentials.
    #[error("{dir}: {source}")]
    Credentials {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        source: CredentialsError,
    },
}

/// Reads the three files.
pub fn load(dir: &Path) -> Result<Credentials, FilesError> {
    let file_err = |name: &str, reason: String| FilesError::File {
        path: dir.join(name),
        reason,
    };
    let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, FilesError> {
        CertificateDer::pem_file_iter(dir.join(name))
            .map_err(|e| file_err(name, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(name, e.to_string()))
    };
    let chain = certs(CERT_FILE)?;
    let roots = certs(ROOTS_FILE)?;
    let key = PrivateKeyDer::from_pem_file(dir.join(KEY_FILE))
        .map_err(|e| file_err(KEY_FILE, e.to_string()))?;
    Credentials::new(chain, key, roots).map_err(|source| FilesError::Credentials {
        dir: dir.to_owned(),
        source,
    })
}

/// What the three files hold, to notice a change without re-parsing.
fn fingerprint(dir: &Path) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    for name in [CERT_FILE, KEY_FILE, ROOTS_FILE] {
        all.extend(std::fs::read(dir.join(name)).ok()?);
        all.push(0);
    }
    Some(all)
}

/// Loads the directory into `store` now; fails if it is unusable, because a proxy told to use
/// files that are not there is misconfigured.
pub fn load_into(dir: &Path, store: &IdentityStore) -> Result<(), FilesError> {
    store.set(load(dir)?);
    Ok(())
}

/// Polls `dir` every `interval` and puts changed, valid credentials in force. A half-written
/// or invalid set is logged and the current credentials stay.
pub async fn watch(dir: PathBuf, store: Arc<IdentityStore>, interval: Duration) {
    let mut last = fingerprint(&dir);
    loop {
        tokio::time::sleep(interval).await;
        let now = fingerprint(&dir);
        if now.is_none() || now == last {
            continue;
        }
        match load(&dir) {
            Ok(creds) => store.set(creds),
            Err(error) => {
                tracing::warn!(%error, "identity files changed but are not usable; keeping the current certificate");
            }
        }
        // Logged once per change: a writer that finishes later changes the fingerprint again.
        last = now;
    }
}
