//! Bootstrap tokens: how a proxy proves which workload it fronts before it has a certificate.
//!
//! Standalone, the local runner hands each proxy a token
//! `base64url(payload).base64url(HMAC-SHA256(key, payload))` where the payload is the JSON
//! `{"ns":…,"svc":…,"exp":…}` (`exp` in Unix seconds) and the key is 32 random bytes in
//! `<state>/token.key` (mode 0600), created on first use. Tokens are bearer credentials: whoever
//! holds one can get certificates for its workload until it expires, so keep them as secret as
//! keys and their lifetime short.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{WorkloadIdentity, files};

/// The token key's file in the state directory.
pub const TOKEN_KEY_FILE: &str = "token.key";
/// The token key's length.
pub const TOKEN_KEY_BYTES: usize = 32;
/// The longest token accepted (a Kubernetes ServiceAccount token is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What [`WorkloadAuthenticator::authenticate`] returns.
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadIdentity, AuthError>> + Send + 'a>>;

/// Proves which workload is asking for a certificate, from the token it presents.
///
/// The `Certify` handler is written against this trait, never against a token format, and
/// then checks that the workload named in the request is the one the token proves: a token for
/// X only ever yields certificates for X.
///
/// Standalone mode uses [`TokenKey`] (HMAC tokens minted by the local runner). In Kubernetes,
/// `kubernetes::identity::ServiceAccountAuthenticator` takes the pod's projected
/// ServiceAccount token, checks it with the API server's TokenReview (audience `sluice`), and
/// maps the pod to its mesh service; that is why this returns a future (a network call) and
/// why [`AuthError::Unavailable`] exists.
pub trait WorkloadAuthenticator: Send + Sync + 'static {
    /// The workload `token` proves, or why it proves nothing.
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// Why a token proves nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error("no bootstrap token was sent; set `token` to the token the runner gave this proxy")]
    Missing,
    /// Not a token.
    #[error("the bootstrap token is malformed: {0}")]
    Malformed(String),
    /// Not signed with this mesh's key: forged, altered, or from another mesh.
    #[error(
        "the bootstrap token was not issued by this mesh (its signature does not verify); \
         it may be altered or from another state directory"
    )]
    BadSignature,
    /// Past its expiry.
    #[error("the bootstrap token expired at {}; ask the runner for a new one", humantime::format_rfc3339_seconds(*.at))]
    Expired {
        /// When.
        at: SystemTime,
    },
    /// A credential the authenticator checked and refuses, with why (e.g. a service-account
    /// token the API server does not accept, or one that maps to no mesh service).
    #[error("the token proves no workload: {0}")]
    Rejected(String),
    /// The authenticator could not decide (e.g. the Kubernetes API is unreachable).
    #[error("cannot check the bootstrap token right now: {0}")]
    Unavailable(String),
}

/// Why the token key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A file error.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read`, `write`, …
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a key.
    #[error(
        "{} is {len} bytes, but a token key is exactly {TOKEN_KEY_BYTES} random bytes; remove it \
         to create a new key (every token issued so far then stops working)",
        path.display()
    )]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The system RNG failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The token claims. Short names keep tokens short.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    ns: String,
    svc: String,
    exp: u64,
}

/// The HMAC key that signs and verifies bootstrap tokens.
pub struct TokenKey {
    key: hmac::Key,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

impl TokenKey {
    /// A key from its bytes (exactly [`TOKEN_KEY_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == TOKEN_KEY_BYTES).then(|| TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// A new random key.
    pub fn generate() -> Result<Self, KeyFileError> {
        let bytes = random_key()?;
        Ok(TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// Loads `<state>/token.key`, creating it (mode 0600) if it does not exist. Safe to call
    /// from several processes at once: exactly one key is ever created.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, KeyFileError> {
        let path = state_dir.join(TOKEN_KEY_FILE);
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| KeyFileError::Io {
                action,
                path,
                source,
            }
        };
        if !path.try_exists().map_err(io("read", &path))? {
            files::ensure_private_dir(state_dir).map_err(io("create", state_dir))?;
            let bytes = random_key()?;
            // If another process created it first, theirs wins and is read below.
            files::create_file_atomically(&path, &bytes, files::PRIVATE_FILE)
                .map_err(io("write", &path))?;
        }
        if files::readable_by_others(&path) {
            tracing::warn!(
                path = %path.display(),
                "the token key is readable by group or others; run `chmod 600` on it"
            );
        }
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        Self::from_bytes(&bytes).ok_or(KeyFileError::WrongLength {
            len: bytes.len(),
            path,
        })
    }

    /// A token for `workload`, valid for `ttl` from `now`.
    pub fn issue(&self, workload: &WorkloadIdentity, ttl: Duration, now: SystemTime) -> String {
        let exp = (now + ttl)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            ns: workload.namespace().to_owned(),
            svc: workload.service().to_owned(),
            exp,
        };
        // Serializing two strings and a number cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let tag = hmac::sign(&self.key, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The workload `token` names, if this key signed it and it has not expired at `now`.
    /// The signature is checked (in constant time) before anything in the payload is believed.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<WorkloadIdentity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!(
                "it is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let malformed =
            || AuthError::Malformed("expected `<payload>.<signature>`, both base64url".into());
        let (payload, tag) = token.split_once('.').ok_or_else(malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| malformed())?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| AuthError::Malformed(format!("bad claims: {e}")))?;
        let workload = WorkloadIdentity::new(&claims.ns, &claims.svc)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let expires = UNIX_EPOCH + Duration::from_secs(claims.exp);
        if expires <= now {
            return Err(AuthError::Expired { at: expires });
        }
        Ok(workload)
    }
}

impl WorkloadAuthenticator for TokenKey {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(std::future::ready(self.verify(token, SystemTime::now())))
    }
}

fn random_key() -> Result<[u8; TOKEN_KEY_BYTES], KeyFileError> {
    let mut bytes = [0u8; TOKEN_KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyFileError::Random)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn round_trip() -> TestResult {
        let key = TokenKey::generate()?;
        let who = WorkloadIdentity::new("shop", "checkout")?;
        let now = SystemTime::now();
        let token = key.issue(&who, DAY, now);
        assert_eq!(key.verify(&token, now)?, who);
        assert_eq!(key.verify(&token, now + DAY - Duration::from_secs(1))?, who);
        // The payload is readable JSON, as documented.
        let (payload, _) = token.split_once('.').ok_or("no dot")?;
        let json: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
        assert_eq!(json["ns"], "shop");
        assert_eq!(json["svc"], "checkout");
        assert!(json["exp"].is_u64());
        Ok(())
    }

    #[test]
    fn tampered_tokens_are_refused() -> TestResult {
        let key = TokenKey::generate()?;
        let now = SystemTime::now();
        let token = key.issue(&WorkloadIdentity::new("shop", "checkout")?, DAY, now);
        let (_, tag) = token.split_once('.').ok_or("no dot")?;

        // Same signature, a payload naming another service.
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"ns": "shop", "svc": "payments", "exp": 4_000_000_000u64})
                .to_string(),
        );
        let forged = format!("{forged_payload}.{tag}");
        assert_eq!(key.verify(&forged, now), Err(AuthError::BadSignature));

        // One flipped signature character. Not the last one: it also carries base64's padding
        // bits, and a flip there can make the text non-canonical (Malformed, not BadSignature).
        let (payload, tag) = token.split_once('.').ok_or("no dot")?;
        let mut tag_chars: Vec<char> = tag.chars().collect();
        tag_chars[0] = if tag_chars[0] == 'A' { 'B' } else { 'A' };
        let flipped = format!("{payload}.{}", tag_chars.into_iter().collect::<String>());
        assert_eq!(key.verify(&flipped, now), Err(AuthError::BadSignature));

        for bad in [
            "",
            "abc",
            "a.b.c",
            "!!!.???",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(
                matches!(
                    key.verify(bad, now),
                    Err(AuthError::Malformed(_) | AuthError::Missing | AuthError::BadSignature)
                ),
                "{bad:.20}"
            );
        }
        Ok(())
    }

    #[test]
    fn expired_tokens_are_refused() -> TestResult {
        let key = TokenKey::generate()?;
        let now = SystemTime::now();
        let token = key.issue(&WorkloadIdentity::new("shop", "checkout")?, DAY, now);
        let err = key.verify(&token, now + DAY + Duration::from_secs(1));
        assert!(matches!(err, Err(AuthError::Expired { .. })), "{err:?}");
        assert!(
            err.err()
                .ok_or("accepted")?
                .to_string()
                .contains("expired at")
        );
        Ok(())
    }

    #[test]
    fn another_key_refuses() -> TestResult {
        let now = SystemTime::now();
        let token = TokenKey::generate()?.issue(&WorkloadIdentity::new("a", "b")?, DAY, now);
        assert_eq!(
            TokenKey::generate()?.verify(&token, now),
            Err(AuthError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn key_file_is_private_and_stable() -> TestResult {
        let state = tempfile::tempdir()?;
        let dir = state.path().join("fresh");
        let a = TokenKey::load_or_create(&dir)?;
        let path = dir.join(TOKEN_KEY_FILE);
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read(&path)?.len(), TOKEN_KEY_BYTES);
        let b = TokenKey::load_or_create(&dir)?;
        let now = SystemTime::now();
        let token = a.issue(&WorkloadIdentity::new("a", "b")?, DAY, now);
        assert!(
            b.verify(&token, now).is_ok(),
            "the same key after a restart"
        );

        std::fs::write(&path, b"short")?;
        let err = TokenKey::load_or_create(&dir).err().ok_or("accepted")?;
        assert!(
            matches!(err, KeyFileError::WrongLength { len: 5, .. }),
            "{err}"
        );
        Ok(())
    }
}
