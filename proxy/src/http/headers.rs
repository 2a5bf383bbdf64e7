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
/// clients still send); they describe one connection and must not be forwarded. Made
/// `HeaderName`s once, because removing by `&str` parses and validates the name again on
/// every request.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
/// Indexes into [`HOP_BY_HOP`] of the names with rules of their own.
const CONNECTION: usize = 0;
const TE: usize = 3;
const UPGRADE: usize = 5;

/// Applies the request rules in order — an `h2c` offer removed ([`strip_h2c_upgrade`]),
/// hop-by-hop headers removed except for a protocol switch ([`strip_hop_by_hop`]), every
/// `sluice-*` header removed ([`strip_mesh_headers`]). Whether the request still asks to
/// switch protocols is for the forwarder to read off what is left ([`is_upgrade`]).
///
/// One pass over the names first tells which rules have anything to remove: most requests
/// carry none of these headers, and looking each one up hashes its name (callgrind: about
/// 400 instructions per request and proxy for the lookups this pass makes unnecessary).
pub fn sanitize_request(headers: &mut HeaderMap) {
    let (mut present, mut h2c_settings, mut mesh) = (0u8, false, false);
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if *name == HTTP2_SETTINGS {
            h2c_settings = true;
        } else if name.as_str().starts_with(MESH_PREFIX) {
            mesh = true;
        }
    }
    // An h2c offer needs `Upgrade` or `HTTP2-Settings`; a protocol switch needs `Upgrade`
    // and `Connection`. A gRPC request has only `TE` of all these, which then stays as it is
    // when it is `trailers` (see `strip_hop_by_hop`): no rule needs another lookup.
    if present & (1 << UPGRADE) != 0 || h2c_settings {
        strip_h2c_upgrade(headers);
    }
    if present != 0 {
        let switch = present & (1 << UPGRADE) != 0
            && present & (1 << CONNECTION) != 0
            && is_upgrade(headers);
        // What the h2c rule removed may still be in `present`: removing it again finds
        // nothing.
        strip_present_hop_by_hop(headers, switch, present);
    }
    if mesh {
        strip_mesh_headers(headers);
    }
}

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

/// Removes an `h2c` upgrade offer: the `h2c` tokens of `Upgrade` (the whole header when none
/// is left) and `HTTP2-Settings`. An application that accepted it would answer `101` and then
/// serve HTTP/2 streams on the same connection, for any path, without the proxy seeing them.
/// Other protocols in the same `Upgrade` (a WebSocket) stay. Returns whether it removed one.
pub fn strip_h2c_upgrade(headers: &mut HeaderMap) -> bool {
    let offered = headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.to_str().map_or(true, |v| v.split(',').any(is_h2c)));
    if !offered && !headers.contains_key(&HTTP2_SETTINGS) {
        return false;
    }
    let kept: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !is_h2c(t))
        .map(str::to_owned)
        .collect();
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(header::UPGRADE, v);
    }
    true
}

/// `HTTP2-Settings`, sent with an h2c upgrade offer (RFC 7540 §3.2.1).
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// `h2c`, and any other spelling of HTTP/2 as an upgrade token.
fn is_h2c(token: &str) -> bool {
    let t = token.trim().to_ascii_lowercase();
    t.starts_with("h2") || t.starts_with("http/2")
}

/// Whether a `101` answer switches to HTTP/2 (whatever was asked).
pub fn switches_to_h2c(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.to_str().map_or(true, |v| v.split(',').any(is_h2c)))
}

/// Removes hop-by-hop headers, including any named in `Connection`. `TE: trailers` survives
/// because gRPC over HTTP/2 requires it end to end. With `keep_upgrade`, `Upgrade` and
/// `Connection: upgrade` survive so a protocol switch can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these headers and only a handful of others: one pass over
    // the names (comparing well-known names is comparing small integers) tells which are
    // there, and only those are removed, each removal hashing its name. A gRPC request
    // carries just `TE: trailers`, which stays where it is.
    let present = hop_by_hop_present(headers);
    strip_present_hop_by_hop(headers, keep_upgrade, present);
}

/// [`strip_hop_by_hop`] once the names that are there are known (`present`, as
/// [`hop_by_hop_present`] gives them; bits of names no longer there are harmless).
fn strip_present_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, present: u8) {
    if !keep_upgrade && present == 0 {
        return;
    }
    if present & (1 << CONNECTION) != 0 {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        // What this removes may be in `present`: removing it again below finds nothing.
        for name in named {
            headers.remove(name);
        }
    }
    if present & (1 << TE) != 0 {
        let mut values = headers.get_all(header::TE).iter();
        let only_trailers =
            values.next().is_some_and(|v| v.as_bytes() == b"trailers") && values.next().is_none();
        if !only_trailers {
            let te_trailers = headers
                .get_all(header::TE)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            headers.remove(header::TE);
            if te_trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = i == TE || (keep_upgrade && (i == UPGRADE || i == CONNECTION));
        if present & (1 << i) != 0 && !kept {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Which of [`HOP_BY_HOP`] `headers` has, as bits by index.
fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    present
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
    fn h2c_offers_are_removed_and_other_upgrades_kept() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        assert!(strip_h2c_upgrade(&mut h));
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket, H2C")]);
        assert!(strip_h2c_upgrade(&mut h));
        assert_eq!(h["upgrade"], "websocket");
        let mut ws = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(!strip_h2c_upgrade(&mut ws));
        assert!(switches_to_h2c(&map(&[("upgrade", "h2c")])));
        assert!(!switches_to_h2c(&ws));
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

    /// The rule as first written (a lookup per name), kept as the oracle for the one-pass
    /// version: removes hop-by-hop headers, including any named in `Connection`. `TE: trailers` survives
    /// because gRPC over HTTP/2 requires it end to end. With `keep_upgrade`, `Upgrade` and
    /// `Connection: upgrade` survive so a protocol switch can be relayed.
    fn strip_hop_by_hop_oracle(headers: &mut HeaderMap, keep_upgrade: bool) {
        // Most messages carry none of these headers and only a handful of others: one pass over
        // the names (comparing well-known names is comparing small integers) costs less than
        // hashing each of the six for a lookup (callgrind: ~1,200 instructions per request).
        if !keep_upgrade && !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
            return;
        }
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
        for name in &HOP_BY_HOP {
            if keep_upgrade && *name == header::UPGRADE {
                continue;
            }
            headers.remove(name);
        }
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }

    /// Generated mixes of the headers the hygiene rules look at, in any case and order.
    fn mixes() -> impl Iterator<Item = Vec<(&'static str, &'static str)>> {
        let names = [
            "connection",
            "upgrade",
            "http2-settings",
            "te",
            "keep-alive",
            "transfer-encoding",
            "proxy-connection",
            "sluice-proxy-hop",
            "sluice-identity",
            "x-secret",
            "host",
        ];
        let values = [
            "upgrade",
            "Upgrade, HTTP2-Settings",
            "h2c",
            "websocket, h2c",
            "websocket",
            "trailers",
            "Trailers",
            "trailers, gzip",
            "keep-alive, x-secret",
            "x",
            "close",
            "te",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        (0..5_000).map(move |_| {
            let count = next(7);
            (0..count)
                .map(|_| (names[next(names.len())], values[next(values.len())]))
                .collect()
        })
    }

    /// The one-pass version does exactly what the rules applied one after another do, on
    /// every mix of the headers they look at (and others, in any case and order).
    #[test]
    fn sanitize_request_is_the_rules_in_order() {
        for pairs in mixes() {
            let mut one_pass = map(&pairs);
            let mut in_order = map(&pairs);
            sanitize_request(&mut one_pass);
            strip_h2c_upgrade(&mut in_order);
            let expected = is_upgrade(&in_order);
            strip_hop_by_hop(&mut in_order, expected);
            strip_mesh_headers(&mut in_order);
            assert_eq!(is_upgrade(&one_pass), expected, "{pairs:?}");
            assert_eq!(one_pass, in_order, "{pairs:?}");
        }
    }

    #[test]
    fn strip_hop_by_hop_does_what_the_rule_as_first_written_did() {
        for pairs in mixes() {
            for keep_upgrade in [false, true] {
                let mut h = map(&pairs);
                let mut oracle = map(&pairs);
                strip_hop_by_hop(&mut h, keep_upgrade);
                strip_hop_by_hop_oracle(&mut oracle, keep_upgrade);
                assert_eq!(h, oracle, "{pairs:?} keep_upgrade={keep_upgrade}");
            }
        }
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
