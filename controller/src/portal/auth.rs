//! Who is asking, and whether a form submission really comes from our own form.
//!
//! **Users.** The portal does no login of its own. Behind an authenticating reverse proxy
//! (oauth2-proxy, an ingress with SSO) the proxy names the user in `X-Forwarded-User` (and
//! `X-Forwarded-Email`); those headers are believed only on connections from the configured
//! proxy addresses (`--portal-trusted-proxy`), since anyone else could send them. Locally, dev
//! mode (`--portal-dev-user`) makes every request that user; the server refuses to start it on
//! anything but loopback. On one machine a single dev user cannot show the review path (the
//! requester and the callee's team are different people), so dev mode also lets the person at
//! the keyboard *act as* someone else (`/dev/act-as`, a cookie): on loopback anyone can already
//! do anything the controller can, so this adds no privilege that was not there.
//!
//! **CSRF.** Every form carries a token, HMAC-SHA256 of the user's identity under a key made
//! at process start, checked in constant time on every POST, plus a same-host check of
//! `Origin` (or `Referer`) when the browser sends one. The portal sets no cookies (identity
//! comes from the proxy's headers or dev mode), so `SameSite` cookie protection does not apply
//! here; the token is what stops another site from submitting forms in the user's name. A
//! restart makes old tokens invalid: the form is shown again with a fresh one.

use std::net::IpAddr;

use hyper::HeaderMap;
use ring::hmac;

use super::User;

/// The header an authenticating proxy names the user in.
pub const USER_HEADER: &str = "x-forwarded-user";
/// The header an authenticating proxy gives the user's email in.
pub const EMAIL_HEADER: &str = "x-forwarded-email";
/// The cookie holding the dev-mode identity chosen at `/dev/act-as`.
pub const ACT_AS_COOKIE: &str = "sluice_dev_act_as";
/// The form field holding the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The longest user name or email accepted from a header.
const MAX_IDENTITY: usize = 256;

tokio::task_local! {
    /// The user of the request this task is answering (set by the portal's auth layer), so
    /// that an error page rendered anywhere below it can show who is signed in.
    pub static CURRENT_USER: User;
}

/// How users are identified.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Peers whose `X-Forwarded-User` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Dev mode: every other request is this user.
    pub dev_user: Option<String>,
}

/// Why a request has no user.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A trusted proxy sent no user.
    #[error("the authenticating proxy did not name a user (no X-Forwarded-User header)")]
    NoUserHeader,
    /// The header is not a plausible user name.
    #[error("the X-Forwarded-User or X-Forwarded-Email header is malformed")]
    BadHeader,
    /// The peer is not a trusted proxy and dev mode is off.
    #[error(
        "requests must come through the authenticating proxy; {0} is not a trusted proxy address"
    )]
    Untrusted(IpAddr),
}

/// The user making a request from `peer` with these headers.
pub fn user(config: &AuthConfig, peer: IpAddr, headers: &HeaderMap) -> Result<User, AuthError> {
    let peer = canonical(peer);
    if config.trusted_proxies.iter().any(|p| canonical(*p) == peer) {
        let name = header(headers, USER_HEADER)?.ok_or(AuthError::NoUserHeader)?;
        let email = header(headers, EMAIL_HEADER)?;
        return Ok(User { name, email });
    }
    match &config.dev_user {
        Some(name) => {
            let name = acting_as(headers).unwrap_or_else(|| name.clone());
            Ok(User {
                // `--portal-dev-user pat@shop.example` is matched against team emails too.
                email: name.contains('@').then(|| name.clone()),
                name,
            })
        }
        None => Err(AuthError::Untrusted(peer)),
    }
}

/// The dev-mode identity from the act-as cookie, if it holds a plausible name.
fn acting_as(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == ACT_AS_COOKIE)
        .and_then(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|n| !n.is_empty() && n.len() <= MAX_IDENTITY && !n.chars().any(char::is_control))
}

/// IPv4-mapped IPv6 peers (`::ffff:127.0.0.1`) compare as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn header(headers: &HeaderMap, name: &str) -> Result<Option<String>, AuthError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| AuthError::BadHeader)?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_IDENTITY || text.chars().any(char::is_control) {
        return Err(AuthError::BadHeader);
    }
    Ok(Some(text.to_owned()))
}

/// The per-process CSRF key.
pub struct CsrfKey(hmac::Key);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    /// A fresh random key.
    pub fn generate() -> Result<CsrfKey, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).map(CsrfKey)
    }

    /// The token for `user`'s forms, hex.
    pub fn token(&self, user: &User) -> String {
        let tag = hmac::sign(&self.0, &identity(user));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is `user`'s (constant-time in the tag comparison).
    pub fn verify(&self, user: &User, token: &str) -> bool {
        let Some(tag) = from_hex(token) else {
            return false;
        };
        hmac::verify(&self.0, &identity(user), &tag).is_ok()
    }
}

/// Name and email, separated so that no two users share the message.
fn identity(user: &User) -> Vec<u8> {
    format!(
        "{}\n{}",
        user.name,
        user.email.as_deref().unwrap_or_default()
    )
    .into_bytes()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Whether `Origin` (or, without it, `Referer`) names this host, when the browser sent one.
/// Requests with neither (curl, old browsers) rely on the token alone.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let source = headers
        .get(hyper::header::ORIGIN)
        .or_else(|| headers.get(hyper::header::REFERER));
    let Some(source) = source else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    let Ok(source) = source.to_str() else {
        return false;
    };
    // `null` (sandboxed frames, some redirects) and anything unparsable are refused.
    let authority = source
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default());
    authority.is_some_and(|a| a.to_ascii_lowercase() == host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ernie() -> User {
        User {
            name: "ernie".into(),
            email: Some("ernie@shop.example".into()),
        }
    }

    #[test]
    fn tokens_verify_only_for_their_user() -> Result<(), ring::error::Unspecified> {
        let key = CsrfKey::generate()?;
        let token = key.token(&ernie());
        assert!(key.verify(&ernie(), &token));
        let other = User {
            name: "pat".into(),
            email: None,
        };
        assert!(!key.verify(&other, &token));
        assert!(!key.verify(&ernie(), ""));
        assert!(!key.verify(&ernie(), "zz"));
        assert!(!CsrfKey::generate()?.verify(&ernie(), &token));
        Ok(())
    }

    #[test]
    fn headers_are_believed_only_from_trusted_proxies() {
        let config = AuthConfig {
            trusted_proxies: vec!["10.0.0.1".parse().expect("ip")],
            dev_user: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(USER_HEADER, HeaderValue::from_static("ernie"));
        let trusted: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(
            user(&config, trusted, &headers).map(|u| u.name),
            Ok("ernie".to_owned())
        );
        assert_eq!(
            user(&config, other, &headers),
            Err(AuthError::Untrusted(other))
        );
        assert_eq!(
            user(&config, trusted, &HeaderMap::new()),
            Err(AuthError::NoUserHeader)
        );
    }

    #[test]
    fn origin_must_match_the_host() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("localhost:7070"));
        assert!(same_origin(&headers));
        headers.insert("origin", HeaderValue::from_static("http://localhost:7070"));
        assert!(same_origin(&headers));
        headers.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert("origin", HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
        headers.remove("origin");
        headers.insert(
            "referer",
            HeaderValue::from_static("http://localhost:7070/access/new"),
        );
        assert!(same_origin(&headers));
    }
}
