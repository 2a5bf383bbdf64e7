//! Only configured host names are served: a defence against DNS rebinding.
//!
//! A page on `evil.example` can make its name resolve to `127.0.0.1` a moment after the
//! browser loaded it; the browser then sends the page's requests (with the user's cookies for
//! *that* name, and same-origin rights over the answers) to a service on loopback. What gives
//! it away is the `Host` header: it names `evil.example`. Every request whose `Host` is not one
//! of ours is refused with `421 Misdirected Request` before anything else looks at it.
//!
//! IP literals can never be rebound (the browser did connect to that address), and `localhost`
//! and the other loopback names resolve on the user's machine, not in the attacker's DNS.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::uri::{Authority, Scheme, Uri};

/// The names a surface answers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    /// `(host, port)`: lowercase, IPv6 in brackets, no trailing dot.
    names: Vec<(String, u16)>,
    /// Any loopback name (`localhost`, `127.0.0.0/8`, `[::1]`), on any port.
    loopback: bool,
    /// Any IP literal, on any port.
    ip_literals: bool,
}

/// Why a base URL gives no host name to serve.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an http(s) URL with a host (like https://mesh.example.com or \
     http://127.0.0.1:7070)"
)]
pub struct BadBaseUrl(pub String);

impl AllowedHosts {
    /// The host and port of `url` (`https://mesh.example.com` is port 443).
    pub fn from_base_url(url: &str) -> Result<AllowedHosts, BadBaseUrl> {
        let bad = || BadBaseUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let default_port = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => 443,
            Some(s) if *s == Scheme::HTTP => 80,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        if authority.as_str().contains('@') {
            return Err(bad());
        }
        let host = normal(authority.host());
        if host.is_empty() {
            return Err(bad());
        }
        let port = authority.port_u16().unwrap_or(default_port);
        Ok(AllowedHosts {
            names: vec![(host, port)],
            ..AllowedHosts::default()
        })
    }

    /// Also every loopback name, on any port (dev mode, the admin API).
    pub fn and_loopback(mut self) -> AllowedHosts {
        self.loopback = true;
        self
    }

    /// Also every IP literal, on any port (the admin API, which may listen anywhere).
    pub fn and_ip_literals(mut self) -> AllowedHosts {
        self.ip_literals = true;
        self
    }

    /// Whether a request naming `host` (a `Host` header value) is for us.
    pub fn allows(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let name = normal(authority.host());
        let ip = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if self.ip_literals && ip.is_some() {
            return true;
        }
        if self.loopback && (name == "localhost" || ip.is_some_and(|ip| ip.is_loopback())) {
            return true;
        }
        self.names.iter().any(|(n, port)| {
            *n == name && authority.port_u16().is_none_or(|p| p == *port)
                // No port in `Host` is the scheme's default; we cannot tell which scheme the
                // browser used behind a proxy, so a bare name matches only a default port.
                && (authority.port_u16().is_some() || *port == 80 || *port == 443)
        })
    }

    /// What the error page says the surface answers to.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .names
            .iter()
            .map(|(n, p)| match p {
                80 | 443 => n.clone(),
                p => format!("{n}:{p}"),
            })
            .collect();
        if self.loopback {
            parts.push("loopback names (localhost, 127.0.0.1, [::1])".to_owned());
        }
        if self.ip_literals {
            parts.push("IP addresses".to_owned());
        }
        parts.join(" and ")
    }
}

/// Lowercase, without the trailing dot of a fully qualified name.
fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A request for a name we do not serve.
#[derive(Clone, Debug)]
pub struct WrongHost {
    /// What the request named (`Host`, or nothing).
    pub requested: String,
    /// What we answer to, for the message.
    pub allowed: String,
}

/// The layer's state: the names, and how this surface says no.
#[derive(Clone)]
pub struct HostCheck {
    /// The names.
    pub hosts: Arc<AllowedHosts>,
    /// The surface's refusal (an HTML page for the portal, JSON for the admin API).
    pub refuse: fn(WrongHost) -> Response,
    /// Whether a request without `Host` is served (HTTP/1.0 tools; browsers always send it).
    pub allow_missing: bool,
}

/// The middleware (`from_fn_with_state(HostCheck {..}, host::allow)`).
pub async fn allow(State(check): State<HostCheck>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| h.to_str().unwrap_or("(not text)").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let ok = match &host {
        Some(h) => check.hosts.allows(h),
        None => check.allow_missing,
    };
    // A request in absolute form names its target in the URI too: both must be ours.
    let uri_ok = req
        .uri()
        .authority()
        .is_none_or(|a| check.hosts.allows(a.as_str()));
    if ok && uri_ok {
        return next.run(req).await;
    }
    let requested = host.unwrap_or_default();
    tracing::warn!(host = %requested, "refused a request for a host name we do not serve");
    (check.refuse)(WrongHost {
        requested,
        allowed: check.hosts.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_names_host_and_port() -> Result<(), BadBaseUrl> {
        let hosts = AllowedHosts::from_base_url("https://Mesh.Example.com/portal")?;
        assert!(hosts.allows("mesh.example.com"));
        assert!(hosts.allows("MESH.example.com.:443"));
        assert!(!hosts.allows("mesh.example.com:8443"));
        assert!(!hosts.allows("mesh.example.com.evil.example"));
        assert!(!hosts.allows("evil.example"));
        assert!(!hosts.allows("localhost"));
        assert!(!hosts.allows("user@mesh.example.com"));
        assert!(!hosts.allows(""));
        assert_eq!(hosts.describe(), "mesh.example.com");
        let local = AllowedHosts::from_base_url("http://127.0.0.1:7070")?;
        assert!(local.allows("127.0.0.1:7070"));
        assert!(!local.allows("127.0.0.1:7071"));
        assert!(!local.allows("127.0.0.1"));
        assert_eq!(local.describe(), "127.0.0.1:7070");
        for bad in ["mesh.example.com", "ftp://x", "http://", "http://a@b/"] {
            assert!(AllowedHosts::from_base_url(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn loopback_names_and_ip_literals_when_asked() -> Result<(), BadBaseUrl> {
        let dev = AllowedHosts::from_base_url("http://127.0.0.1:7070")?.and_loopback();
        for ok in [
            "localhost",
            "localhost:1",
            "127.0.0.2:9",
            "[::1]:7070",
            "LOCALHOST.",
        ] {
            assert!(dev.allows(ok), "{ok}");
        }
        for no in [
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:7070",
            "[::2]",
        ] {
            assert!(!dev.allows(no), "{no}");
        }
        let admin = AllowedHosts::default().and_loopback().and_ip_literals();
        assert!(admin.allows("10.0.0.1:7070"));
        assert!(admin.allows("[2001:db8::1]:80"));
        assert!(!admin.allows("evil.example:7070"));
        Ok(())
    }
}
