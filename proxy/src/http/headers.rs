//! Header rules the proxy enforces on every request it forwards.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Every request header with this prefix belongs to the mesh. Applications may not set them:
/// the proxy strips them so that later mesh features (caller identity, routing decisions)
/// can trust what they read.
pub const MESH_PREFIX: &str = "sluice-";

/// The proxy's own loop-detection header: `<proxy-id>;<direction>` of the proxy that last
/// forwarded the request. Only ever set by a proxy, after stripping what the client sent.
pub const HOP_HEADER: HeaderName = HeaderName::from_static("sluice-proxy-hop");

/// Hop-by-hop headers from RFC 9110 §7.6.1 (plus the obsolete `proxy-connection` that some
/// clients still send); they describe one connection and must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether this HTTP/1 message asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including any named in `Connection`. `TE: trailers` survives
/// because gRPC over HTTP/2 requires it end to end. With `keep_upgrade`, `Upgrade` and
/// `Connection: upgrade` survive so a protocol switch can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        if keep_upgrade && *name == "upgrade" {
            continue;
        }
        headers.remove(*name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes every `sluice-*` header.
pub fn strip_mesh_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(MESH_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Whether `marker` (this proxy and direction) is already in the hop header.
pub fn has_hop(headers: &HeaderMap, marker: &HeaderValue) -> bool {
    headers
        .get_all(HOP_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.trim().as_bytes() == marker.as_bytes())
}

/// Whether the request is gRPC (decides how errors are reported).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_removed_including_connection_listed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_and_upgrade_survive_when_needed() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn mesh_headers_stripped() {
        let mut h = map(&[
            ("sluice-identity", "spoofed"),
            ("Sluice-Proxy-Hop", "x;outbound"),
            ("sluicey", "kept"),
            ("x-sluice-thing", "kept"),
        ]);
        strip_mesh_headers(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(!h.contains_key("sluice-identity"));
    }

    #[test]
    fn hop_marker() {
        let marker = HeaderValue::from_static("abc;outbound");
        assert!(has_hop(
            &map(&[("sluice-proxy-hop", "x;inbound, abc;outbound")]),
            &marker
        ));
        assert!(!has_hop(
            &map(&[("sluice-proxy-hop", "abc;inbound")]),
            &marker
        ));
        assert!(!has_hop(&HeaderMap::new(), &marker));
    }
}
