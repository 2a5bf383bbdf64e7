//! The environment routes of the admin API, independent of the HTTP server that carries them:
//! each takes the parsed request and answers a status and a JSON body.
//!
//! | route | answer |
//! |---|---|
//! | `GET /environments` | [`EnvironmentList`] |
//! | `POST /environments` | create ([`CreateRequest`]) → `201` + [`EnvironmentView`] |
//! | `GET /environments/{name}` | [`EnvironmentView`] |
//! | `DELETE /environments/{name}` | [`Removed`] |
//! | `POST /environments/{name}/run` | start an `env run` session ([`RunRequest`]) → `{"environment", "created"}` |
//! | `POST /environments/{name}/run/{service}/heartbeat` | renew it, restart the copy ([`Heartbeat`]) → [`EnvironmentView`] |
//! | `DELETE /environments/{name}/run/{service}` | end it → [`Removed`] |
//! | `POST /instances/sync` | a backend's report ([`SyncRequest`]) → [`SyncAnswer`] |
//!
//! Errors are `{"error": "…"}` with 400, 401, 404, 409 or 503.
//!
//! **Every change needs the admin token** (`authorization: Bearer <token>`, the contents of
//! `STATE_DIR/admin.token`, mode 0600): a command given to `env create` or `env run` is run
//! by the backend (as root under `sluice up`), so being able to reach the loopback port must
//! not be enough. `sluice env` reads the file (it runs with the same rights as `sluice up`).
//! Reads stay open, like the rest of the admin endpoint.

use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    CreateRequest, EnvError, EnvironmentList, Environments, Heartbeat, Removed, RunRequest,
    SyncAnswer, SyncRequest, Why,
};

/// The admin token's file in the controller's state directory.
pub const TOKEN_FILE: &str = "admin.token";
/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Whether `path` is one of these routes.
pub fn handles(path: &str) -> bool {
    path == "/environments" || path.starts_with("/environments/") || path == "/instances/sync"
}

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

/// An answer: status and JSON.
pub type Answer = (StatusCode, Value);

fn ok<T: Serialize>(status: StatusCode, body: &T) -> Answer {
    match serde_json::to_value(body) {
        Ok(v) => (status, v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Answer {
    (status, json!({ "error": message }))
}

fn refused(e: &EnvError) -> Answer {
    let status = match e {
        EnvError::Invalid(_) => StatusCode::BAD_REQUEST,
        EnvError::NotFound(_) => StatusCode::NOT_FOUND,
        EnvError::Conflict(_) => StatusCode::CONFLICT,
        EnvError::Store(_) => {
            tracing::error!(error = %e, "environments: the store failed");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error(status, &e.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not the expected JSON: {e}"),
        )
    })
}

/// Answers one request. `authorization` is the request's `Authorization` header; `token` the
/// controller's admin token.
pub async fn handle(
    envs: &Environments,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    token: &str,
    body: &[u8],
) -> Answer {
    let segments: Vec<&str> = path
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if *method != Method::GET && !authorized(authorization, token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "changing environments needs the controller's admin token (`authorization: Bearer \
             …` with the contents of STATE_DIR/admin.token); `sluice env` sends it when it \
             can read the state directory (run it with sudo, like `sluice up`)",
        );
    }
    match (method, segments.as_slice()) {
        (&Method::GET, ["environments"]) => ok(StatusCode::OK, &envs.list()),
        (&Method::POST, ["environments"]) => match parse::<CreateRequest>(body) {
            Ok(req) => match envs.create(req).await {
                Ok(v) => ok(StatusCode::CREATED, &v),
                Err(e) => refused(&e),
            },
            Err(a) => a,
        },
        (&Method::GET, ["environments", name]) => match envs.get(name) {
            Ok(v) => ok(StatusCode::OK, &v),
            Err(e) => refused(&e),
        },
        (&Method::DELETE, ["environments", name]) => removed(envs.delete(name, Why::Asked).await),
        (&Method::POST, ["environments", name, "run"]) => match parse::<RunRequest>(body) {
            Ok(req) => match envs.start_run(name, req).await {
                Ok((environment, created)) => ok(
                    StatusCode::OK,
                    &json!({ "environment": environment, "created": created }),
                ),
                Err(e) => refused(&e),
            },
            Err(a) => a,
        },
        (&Method::POST, ["environments", name, "run", service, "heartbeat"]) => {
            match parse::<Heartbeat>(if body.is_empty() { b"{}" } else { body }) {
                Ok(beat) => match envs.heartbeat(name, service, beat).await {
                    Ok(v) => ok(StatusCode::OK, &v),
                    Err(e) => refused(&e),
                },
                Err(a) => a,
            }
        }
        (&Method::DELETE, ["environments", name, "run", service]) => {
            removed(envs.end_run(name, service).await)
        }
        (&Method::POST, ["instances", "sync"]) => match parse::<SyncRequest>(body) {
            Ok(req) => ok::<SyncAnswer>(StatusCode::OK, &envs.sync(req)),
            Err(a) => a,
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "not found: see GET|POST /environments, GET|DELETE /environments/{name}, \
             POST|DELETE /environments/{name}/run…, POST /instances/sync",
        ),
    }
}

fn removed(result: Result<Removed, EnvError>) -> Answer {
    match result {
        Ok(r) => ok(StatusCode::OK, &r),
        Err(e) => refused(&e),
    }
}

/// `GET /environments` decoded (for clients in this crate).
pub fn decode_list(v: Value) -> Result<EnvironmentList, serde_json::Error> {
    serde_json::from_value(v)
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
