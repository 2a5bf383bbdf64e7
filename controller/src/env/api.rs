//! The admin token that changes to environments need (the routes are
//! `crate::server::env_api`).
//!
//! **Every change needs the admin token** (`authorization: Bearer <token>`, the contents of
//! `STATE_DIR/admin.token`, mode 0600): a command given to `env create` or `env run` is run
//! by the backend (as root under `sluice up`), so being able to reach the loopback port must
//! not be enough. `sluice env` reads the file (it runs with the same rights as `sluice up`).
//! Reads stay open, like the rest of the admin endpoint.

use std::path::{Path, PathBuf};

/// The admin token's file in the controller's state directory.
pub const TOKEN_FILE: &str = "admin.token";
/// Reads the admin token of the controller whose state directory is `dir`, making one (32
/// random bytes, hex, mode 0600) if there is none.
pub fn load_or_create_token(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{TOKEN_FILE}.tmp-{}", std::process::id()));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// Where the token is, for messages.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// Whether `authorization` carries `token` (compared through SHA-256 digests, so the time
/// taken says nothing about the token).
pub fn authorized(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return false;
    };
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.trim().as_bytes());
    !token.is_empty() && digest(given).as_ref() == digest(token).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_private_and_checked() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let token = load_or_create_token(dir.path())?;
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(dir.path())?, token, "made once");
        let mode = std::fs::metadata(token_path(dir.path()))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(authorized(Some(&format!("Bearer {token}")), &token));
        for wrong in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Bearer x"),
            Some(token.as_str()),
        ] {
            assert!(!authorized(wrong, &token), "{wrong:?}");
        }
        assert!(!authorized(Some("Bearer "), ""));
        Ok(())
    }
}
