//! The access-request link put in every denial.
//!
//! The mesh's `accessRequestUrl` template names the portal's form; the placeholders are
//! replaced with the facts of the denied call, each percent-encoded as a URL component so that
//! `POST /v1/charges` or `payments.v1.Payments/Refund` survive the trip into a query string.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["caller", "service", "rpc", "environment"];

/// Characters left as they are: RFC 3986 unreserved (`A-Z a-z 0-9 - . _ ~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The facts of a denied call.
#[derive(Clone, Copy, Debug)]
pub struct DeniedCall<'a> {
    /// The caller's service name (`checkout`), or `unauthenticated`.
    pub caller: &'a str,
    /// The callee's service name.
    pub service: &'a str,
    /// The call, as written by [`crate::rpc::Rpc`]'s `Display` (`POST /v1/charges`).
    pub rpc: &'a str,
    /// The caller's environment (`stable`, `pr-42`).
    pub environment: &'a str,
}

/// What an access-request link offers to grant for a denied `call`: the callee's declared
/// `endpoint` it matched, when that names one endpoint (`GET /v1/charges/{id}`: a grant of the
/// concrete `GET /v1/charges/ch_1` would only ever allow that one charge); the call itself
/// when the endpoint has a wildcard (`payments.v1.Payments/*` would grant far more than
/// what was asked for) or nothing declared matches.
pub fn offered_rpc(endpoint: Option<&str>, call: &str) -> String {
    match endpoint {
        Some(e) if !e.contains('*') => e.to_owned(),
        _ => call.to_owned(),
    }
}

/// Fills in `template`. Unknown placeholders are left as written (validation rejects them
/// before a template gets here).
pub fn access_request_link(template: &str, call: &DeniedCall<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let value = match &after[..end] {
            "caller" => Some(call.caller),
            "service" => Some(call.service),
            "rpc" => Some(call.rpc),
            "environment" => Some(call.environment),
            _ => None,
        };
        match value {
            Some(v) => out.extend(utf8_percent_encode(v, COMPONENT)),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_a_declared_endpoint_unless_it_is_a_wildcard() {
        let call = "GET /v1/charges/ch_1";
        assert_eq!(
            offered_rpc(Some("GET /v1/charges/{id}"), call),
            "GET /v1/charges/{id}"
        );
        assert_eq!(offered_rpc(Some("GET /v1/*"), call), call);
        assert_eq!(offered_rpc(Some("* /v1/charges/{id}"), call), call);
        assert_eq!(offered_rpc(None, call), call);
    }

    #[test]
    fn fills_and_encodes_every_placeholder() {
        let link = access_request_link(
            "http://portal.local:7070/access/new?from={caller}&to={service}&rpc={rpc}&env={environment}",
            &DeniedCall {
                caller: "checkout",
                service: "payments",
                rpc: "POST /v1/charges/{id}?x=1&y",
                environment: "pr 42/ä",
            },
        );
        assert_eq!(
            link,
            "http://portal.local:7070/access/new?from=checkout&to=payments\
             &rpc=POST%20%2Fv1%2Fcharges%2F%7Bid%7D%3Fx%3D1%26y&env=pr%2042%2F%C3%A4"
        );
    }

    #[test]
    fn leaves_unknown_and_unclosed_placeholders() {
        let call = DeniedCall {
            caller: "a",
            service: "b",
            rpc: "c.D/E",
            environment: "stable",
        };
        assert_eq!(
            access_request_link("x/{who}/{rpc}/{", &call),
            "x/{who}/c.D%2FE/{"
        );
    }
}
