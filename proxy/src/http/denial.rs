//! How a denial looks to each kind of client. This is the product: the same facts (who called
//! what, which policy said no, where to ask for access) in the format the client reads.
//!
//! | client | gets |
//! |---|---|
//! | gRPC | trailers-only `grpc-status: 7`, `grpc-message` (the sentence), `grpc-status-details-bin` with `ErrorInfo` + `Help` |
//! | `Accept: text/html` | a short page with a "Request access" button |
//! | `Accept: text/plain` | the sentence |
//! | anything else | RFC 9457 `application/problem+json` |
//!
//! Every response carries `sluice-denied-by` and the problem `type` URI (in the body, or the
//! `ErrorInfo` domain for gRPC), so a mesh denial is never confused with a 403 the application
//! sent itself. Callers without a mesh identity get the short form (no policy names) unless
//! the mesh is configured with `unauthenticatedDenials: full`.

use std::collections::HashMap;

use base64::Engine;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use tonic_types::{ErrorDetail, ErrorInfo, Help, HelpLink, StatusExt};

use super::{Body, Response};
use crate::authz::Denial;

/// The problem type: stable, and what tells a mesh denial from an application's 403.
pub const PROBLEM_TYPE: &str = "https://sluice.dev/problems/rpc-not-authorized";
/// The problem title.
pub const TITLE: &str = "Call not allowed by mesh policy";
/// `ErrorInfo.reason`.
pub const GRPC_REASON: &str = "RPC_NOT_AUTHORIZED";
/// `ErrorInfo.domain`.
pub const GRPC_DOMAIN: &str = "sluice.dev";
/// Set on every denial.
pub const DENIED_BY: &str = "sluice-denied-by";

/// What the client can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// RFC 9457.
    Problem,
    /// A page.
    Html,
    /// One line.
    Text,
}

/// Picks a format from `Accept` (q-values honoured; ties go to the more specific type;
/// anything unknown or absent gets problem+json, the machine-readable default).
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Problem;
    };
    let mut best: Option<(f32, u8, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let (format, specificity) = match media.as_str() {
            "application/problem+json" | "application/json" => (Format::Problem, 2),
            "text/html" | "application/xhtml+xml" => (Format::Html, 2),
            "text/plain" => (Format::Text, 2),
            "text/*" => (Format::Text, 1),
            "*/*" | "application/*" => (Format::Problem, 0),
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        if best.is_none_or(|(bq, bs, _)| q > bq || (q == bq && specificity > bs)) {
            best = Some((q, specificity, format));
        }
    }
    best.map_or(Format::Problem, |(_, _, f)| f)
}

/// The response for a denied request.
pub fn render(d: &Denial, grpc: bool, accept: Option<&str>) -> Response {
    let mut rsp = if grpc {
        grpc_response(d)
    } else {
        let (body, content_type) = match negotiate(accept) {
            Format::Problem => (problem(d).to_string(), "application/problem+json"),
            Format::Html => (html(d), "text/html; charset=utf-8"),
            Format::Text => (format!("{}\n", d.sentence()), "text/plain; charset=utf-8"),
        };
        let mut rsp = http::Response::new(full(body));
        *rsp.status_mut() = StatusCode::FORBIDDEN;
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static(content_type));
        rsp
    };
    let h = rsp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&d.denied_by) {
        h.insert(DENIED_BY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{}>; rel=\"help\"", d.request_access)) {
        h.insert("link", v);
    }
    if let Ok(v) = HeaderValue::from_str(&d.request_id) {
        h.insert("x-request-id", v);
    }
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert("sluice-proxy-error", HeaderValue::from_static("denied"));
    rsp
}

/// The RFC 9457 body.
pub fn problem(d: &Denial) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": PROBLEM_TYPE,
        "title": TITLE,
        "status": 403,
        "detail": d.sentence(),
        "caller": d.caller,
        "service": d.service,
        "rpc": d.rpc,
        "environment": d.environment,
        "requestAccess": d.request_access,
        "requestId": d.request_id,
        "deniedBy": d.denied_by,
    });
    if d.full {
        v["policy"] = d.policy_text().into();
        v["reason"] = d.explain.clone().into();
    }
    v
}

fn metadata(d: &Denial) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("caller".to_owned(), d.caller.clone()),
        ("service".to_owned(), d.service.clone()),
        ("rpc".to_owned(), d.rpc.clone()),
        ("environment".to_owned(), d.environment.clone()),
        ("requestId".to_owned(), d.request_id.clone()),
        ("deniedBy".to_owned(), d.denied_by.clone()),
    ]);
    if d.full {
        m.insert("policy".to_owned(), d.policy_text());
    }
    m
}

/// A trailers-only gRPC response: HTTP 200 with the status in the headers, which is what gRPC
/// libraries expect from a call that fails before any message.
fn grpc_response(d: &Denial) -> Response {
    let sentence = d.sentence();
    let status = tonic::Status::with_error_details_vec(
        tonic::Code::PermissionDenied,
        sentence.clone(),
        [
            ErrorDetail::ErrorInfo(ErrorInfo::new(GRPC_REASON, GRPC_DOMAIN, metadata(d))),
            ErrorDetail::Help(Help::new([HelpLink::new(
                format!("Request access for {} to call {}", d.caller, d.rpc),
                d.request_access.clone(),
            )])),
        ],
    );
    let mut rsp = http::Response::new(full(String::new()));
    let h = rsp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(7u32));
    if let Ok(v) = HeaderValue::from_str(&encode_grpc_message(&sentence)) {
        h.insert("grpc-message", v);
    }
    let details = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.details());
    if let Ok(v) = HeaderValue::from_str(&details) {
        h.insert("grpc-status-details-bin", v);
    }
    rsp
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec says: UTF-8 bytes outside
/// printable ASCII (0x20–0x7E), and `%` itself, become `%XX`.
pub fn encode_grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A short page for people who hit a denied URL in a browser.
pub fn html(d: &Denial) -> String {
    let e = escape_html;
    let policy_row = if d.full {
        format!("<dt>Policy</dt><dd>{}</dd>", e(&d.policy_text()))
    } else {
        String::new()
    };
    // The link is only used as an href when it is http(s): a `javascript:` URL from a
    // misconfigured template must not become clickable.
    let link = &d.request_access;
    let href = if link.starts_with("https://") || link.starts_with("http://") {
        e(link)
    } else {
        "#".to_owned()
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Not allowed: {caller} → {service}</title>
<style>
body{{font:16px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;background:#f6f7f9;color:#1d2330;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}}
main{{background:#fff;max-width:36rem;margin:1rem;padding:2rem 2.25rem;border-radius:12px;box-shadow:0 1px 3px #0002,0 8px 24px #0001}}
h1{{font-size:1.25rem;margin:0 0 .75rem}} p{{margin:0 0 1.25rem}} code{{background:#eef0f4;padding:.1em .35em;border-radius:4px}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0 0 1.5rem;font-size:.9rem}} dt{{color:#5b6475}} dd{{margin:0;word-break:break-word}}
a.button{{display:inline-block;background:#2f5bea;color:#fff;text-decoration:none;padding:.6rem 1.1rem;border-radius:8px;font-weight:600}}
a.button:hover{{background:#2448c4}} footer{{margin-top:1.25rem;font-size:.8rem;color:#5b6475}}
</style></head>
<body><main>
<h1>{caller} is not allowed to call <code>{rpc}</code> on {service}</h1>
<p>The service mesh refused this call before it reached {service}. If this call should be allowed, ask the owners of {service} for access.</p>
<dl><dt>Caller</dt><dd>{caller}</dd><dt>Service</dt><dd>{service}</dd><dt>Call</dt><dd><code>{rpc}</code></dd>{policy_row}<dt>Environment</dt><dd>{environment}</dd><dt>Request id</dt><dd><code>{request_id}</code></dd></dl>
<a class="button" href="{href}">Request access</a>
<footer>Denied by sluice sidecar {denied_by}</footer>
</main></body></html>
"#,
        caller = e(&d.caller),
        service = e(&d.service),
        rpc = e(&d.rpc),
        environment = e(&d.environment),
        request_id = e(&d.request_id),
        denied_by = e(&d.denied_by),
    )
}

fn full(s: String) -> Body {
    Full::from(s).map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy::authz::Verdict;

    fn denial(full: bool) -> Denial {
        Denial {
            caller: "checkout".into(),
            caller_id: Some("spiffe://shop.local/ns/default/svc/checkout".into()),
            namespace: "default".into(),
            service: "payments".into(),
            rpc: "POST /v1/charges".into(),
            endpoint: Some("POST /v1/charges".into()),
            policies: vec!["payments-callers".into()],
            explain: "denied".into(),
            reason: "no-rule-allows",
            environment: "stable".into(),
            request_access: "http://portal/access?from=checkout&rpc=POST%20%2Fv1".into(),
            request_id: "r1".into(),
            denied_by: "p1/payments".into(),
            full,
            verdict: Verdict::Deny,
        }
    }

    #[test]
    fn the_sentence() {
        assert_eq!(
            denial(true).sentence(),
            "checkout is not allowed to call POST /v1/charges on payments. \
             Request access: http://portal/access?from=checkout&rpc=POST%20%2Fv1"
        );
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None), Format::Problem);
        assert_eq!(negotiate(Some("*/*")), Format::Problem);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            negotiate(Some(
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            )),
            Format::Html
        );
        assert_eq!(
            negotiate(Some("text/html;q=0.5, application/json")),
            Format::Problem
        );
        assert_eq!(negotiate(Some("text/plain;q=0, */*")), Format::Problem);
        assert_eq!(negotiate(Some("image/png")), Format::Problem);
    }

    #[test]
    fn problem_json_has_every_field_and_short_form_hides_policy() {
        let p = problem(&denial(true));
        for k in [
            "type",
            "title",
            "status",
            "detail",
            "caller",
            "service",
            "rpc",
            "policy",
            "environment",
            "requestAccess",
            "requestId",
        ] {
            assert!(p.get(k).is_some(), "{k} missing in {p}");
        }
        assert_eq!(p["policy"], "payments-callers");
        let short = problem(&denial(false));
        assert!(short.get("policy").is_none());
        assert!(!short.to_string().contains("payments-callers"));
    }

    #[test]
    fn headers_and_status() {
        let rsp = render(&denial(true), false, Some("text/plain"));
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        assert_eq!(rsp.headers()[DENIED_BY], "p1/payments");
        assert_eq!(
            rsp.headers()["link"],
            "<http://portal/access?from=checkout&rpc=POST%20%2Fv1>; rel=\"help\""
        );
        let g = render(&denial(true), true, None);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "7");
        assert!(g.headers().contains_key("grpc-status-details-bin"));
    }

    #[test]
    fn grpc_details_decode_with_error_info_and_help() {
        let g = render(&denial(true), true, None);
        let b64 = g.headers()["grpc-status-details-bin"]
            .to_str()
            .expect("ascii");
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .expect("base64");
        let status = tonic::Status::with_details(tonic::Code::PermissionDenied, "", bytes.into());
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, GRPC_REASON);
        assert_eq!(info.domain, GRPC_DOMAIN);
        assert_eq!(info.metadata["policy"], "payments-callers");
        let help = details.help().expect("Help");
        assert_eq!(help.links[0].url, denial(true).request_access);
    }

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(encode_grpc_message("a b/c"), "a b/c");
        assert_eq!(encode_grpc_message("100%"), "100%25");
        assert_eq!(encode_grpc_message("é\n"), "%C3%A9%0A");
        assert_eq!(encode_grpc_message("→"), "%E2%86%92");
    }

    #[test]
    fn html_escapes_and_has_the_button() {
        let mut d = denial(true);
        d.caller = "<script>alert(1)</script>".into();
        d.request_access = "http://portal/x?a=1&b=\"2\"".into();
        let page = html(&d);
        assert!(page.contains("Request access</a>"));
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("href=\"http://portal/x?a=1&amp;b=&quot;2&quot;\""));
        d.request_access = "javascript:alert(1)".into();
        assert!(html(&d).contains("href=\"#\""));
    }
}
