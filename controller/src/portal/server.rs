//! Serving the portal: HTTP/1.1 on `--portal ADDR`, every request tied to a user
//! ([`super::auth`]) before it is routed.
//!
//! | path | handler |
//! |---|---|
//! | `/` | redirect to `/services` |
//! | `/services…` | [`super::services::handle`] |
//! | `/access…` | [`super::access::handle`] |
//! | `/rollouts…` | the rollout pages of the admin endpoint, read-only (GET) |
//! | `/healthz` | `ok`, without a user (for the proxy's health checks) |
//!
//! Bodies are limited by [`super::access::MAX_BODY`]; header and URL sizes by hyper's
//! defaults.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::access::{self, AccessState};
use super::auth::{self, AuthConfig};
use super::html::{escape, page};
use super::{Answer, Portal};

/// Everything a portal request needs.
pub struct PortalServer {
    /// What the pages read.
    pub portal: Portal,
    /// The access pages' state (policy directory, notifier, CSRF key).
    pub access: AccessState,
    /// How users are identified.
    pub auth: AuthConfig,
}

/// Why the portal cannot be started with these settings.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortalConfigError {
    /// Dev mode on a non-loopback address would give anyone on the network that user.
    #[error(
        "--portal-dev-user makes every request that user, so the portal must listen on loopback \
         (e.g. --portal 127.0.0.1:7070), not {0}; behind an authenticating proxy use \
         --portal-trusted-proxy instead"
    )]
    DevUserNotLoopback(SocketAddr),
    /// No way to identify users.
    #[error(
        "the portal needs to know who is asking: run it behind an authenticating proxy \
         (--portal-trusted-proxy IP, which sends X-Forwarded-User), or locally with \
         --portal-dev-user NAME on a loopback address"
    )]
    NoAuthentication,
}

/// Checks the flags before anything starts.
pub fn check_config(addr: SocketAddr, auth: &AuthConfig) -> Result<(), PortalConfigError> {
    if auth.dev_user.is_some() && !addr.ip().is_loopback() {
        return Err(PortalConfigError::DevUserNotLoopback(addr));
    }
    if auth.dev_user.is_none() && auth.trusted_proxies.is_empty() {
        return Err(PortalConfigError::NoAuthentication);
    }
    Ok(())
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, server: Arc<PortalServer>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "portal: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(route(&server, peer, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "portal connection ended");
            }
        });
    }
}

async fn route(server: &PortalServer, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let user = match auth::user(&server.auth, peer.ip(), req.headers()) {
        Ok(user) => user,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "portal: request refused");
            return page(
                StatusCode::FORBIDDEN,
                "Not signed in",
                None,
                &format!(
                    "<h1>Not signed in</h1><p class=\"error\">{}</p>",
                    escape(&e.to_string())
                ),
            );
        }
    };
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if path == "/" {
        return redirect("/services");
    }
    if under("/access") {
        return access::handle(&server.portal, &server.access, req, &user).await;
    }
    if path == "/dev/act-as" && server.auth.dev_user.is_some() {
        return act_as(server, req, &user).await;
    }
    if under("/services") {
        return super::services::handle(&server.portal, req, &user).await;
    }
    if under("/rollouts") {
        // Rollout actions stay on the admin endpoint (loopback); the portal only shows them.
        if req.method() != Method::GET {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Read-only",
                Some(&user),
                "<h1>Read-only</h1><p>Rollouts are changed with <code>sluice rollout</code>.</p>",
            );
        }
        return match &server.portal.engine {
            Some(engine) => crate::server::rollout_api::handle(engine, req).await,
            None => page(
                StatusCode::NOT_FOUND,
                "No rollouts",
                Some(&user),
                "<h1>No rollouts</h1><p>The rollout engine is not running.</p>",
            ),
        };
    }
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        Some(&user),
        "<h1>Not found</h1><p><a href=\"/services\">Services</a> · <a href=\"/access\">Access requests</a></p>",
    )
}

/// Dev mode only: `GET` lists the teams' members to act as; `POST` (CSRF-checked) sets the
/// act-as cookie (an empty name goes back to the dev user).
async fn act_as(server: &PortalServer, req: Request<Incoming>, user: &super::User) -> Answer {
    if req.method() == Method::POST {
        let fields = match access::checked_form(&server.access, req, user).await {
            Ok(fields) => fields,
            Err(answer) => return answer,
        };
        let name = fields
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let encoded: String =
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let cookie = if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            format!(
                "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
                auth::ACT_AS_COOKIE
            )
        } else {
            format!(
                "{}={encoded}; Path=/; HttpOnly; SameSite=Strict",
                auth::ACT_AS_COOKIE
            )
        };
        let mut response = redirect("/access");
        if let Ok(value) = hyper::header::HeaderValue::from_str(&cookie) {
            response
                .headers_mut()
                .insert(hyper::header::SET_COOKIE, value);
        }
        return response;
    }
    let policy = server.portal.plane.policy();
    let token = escape(&server.access.csrf.token(user));
    let mut body = format!(
        "<h1>Act as someone else</h1><p class=\"muted\">Dev mode: the portal runs on this \
machine for you alone, so you can play every part of the story — ask for access as yourself, \
then approve it as a member of the callee's team. You are <strong>{}</strong>.</p>",
        escape(&user.name)
    );
    for (team, spec) in &policy.set.teams {
        body.push_str(&format!(
            "<div class=\"card\"><h2>Team {}</h2>",
            escape(&team.name)
        ));
        for member in &spec.doc.spec.members {
            body.push_str(&format!(
                "<form method=\"post\" action=\"/dev/act-as\" style=\"display:inline\">\
<input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
<input type=\"hidden\" name=\"user\" value=\"{n}\">\
<button type=\"submit\" class=\"secondary\">Act as {n}</button></form> ",
                n = escape(&member.name)
            ));
        }
        body.push_str("</div>");
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/dev/act-as\"><input type=\"hidden\" name=\"csrf\" \
value=\"{token}\"><input type=\"hidden\" name=\"user\" value=\"\"><button type=\"submit\">\
Back to {}</button></form>",
        escape(server.auth.dev_user.as_deref().unwrap_or("the dev user"))
    ));
    page(StatusCode::OK, "Act as", Some(user), &body)
}

fn redirect(location: &'static str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(
        hyper::header::LOCATION,
        hyper::header::HeaderValue::from_static(location),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_mode_only_on_loopback_and_some_authentication_required() {
        let dev = AuthConfig {
            trusted_proxies: Vec::new(),
            dev_user: Some("ernie".into()),
        };
        let public: SocketAddr = "0.0.0.0:7070".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:7070".parse().expect("addr");
        assert_eq!(
            check_config(public, &dev),
            Err(PortalConfigError::DevUserNotLoopback(public))
        );
        assert_eq!(check_config(local, &dev), Ok(()));
        assert_eq!(
            check_config(local, &AuthConfig::default()),
            Err(PortalConfigError::NoAuthentication)
        );
    }
}
