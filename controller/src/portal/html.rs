//! The portal's page layout and HTML escaping. Every value that reaches a page goes through
//! [`escape`]; pages are built from [`page`].

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::{Answer, User};

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    crate::server::rollout_api::escape(s)
}

/// A whole page: the layout around `body` (already-escaped HTML), with the user's name in the
/// header.
pub fn page(status: StatusCode, title: &str, user: Option<&User>, body: &str) -> Answer {
    let who = user.map_or_else(String::new, |u| {
        format!("<span class=\"user\">{}</span>", escape(&u.name))
    });
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Sluice</title><style>{STYLE}</style></head><body>\
<header><a href=\"/services\" class=\"brand\">Sluice</a> <nav><a href=\"/services\">Services</a> \
<a href=\"/access\">Access requests</a> <a href=\"/rollouts\">Rollouts</a></nav>{who}</header>\
<main>{body}</main></body></html>",
        title = escape(title),
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    // No script of ours needs more than this; framing is refused (clickjacking on forms).
    headers.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    response
}

const STYLE: &str = "body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;background:#f6f8fa}\
header{display:flex;gap:1.5rem;align-items:baseline;padding:.8rem 2rem;background:#fff;border-bottom:1px solid #d0d7de}\
header .brand{font-weight:700;color:#1f2328;text-decoration:none}header nav a{margin-right:1rem}\
header .user{margin-left:auto;color:#57606a}main{max-width:64rem;margin:0 auto;padding:1.5rem 2rem}\
a{color:#0969da}table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
.card{background:#fff;border:1px solid #d0d7de;border-radius:.5rem;padding:1rem 1.25rem;margin:1rem 0}\
.error{background:#ffebe9;border:1px solid #ff8182;border-radius:.5rem;padding:.75rem 1rem}\
.ok{background:#dafbe1;border:1px solid #4ac26b;border-radius:.5rem;padding:.75rem 1rem}\
.muted{color:#57606a}.pill{display:inline-block;padding:0 .5rem;border-radius:1rem;background:#eaeef2;font-size:.85rem}\
button,.button{background:#1f883d;color:#fff;border:0;border-radius:.4rem;padding:.45rem 1rem;font:inherit;cursor:pointer;text-decoration:none;display:inline-block}\
button.secondary{background:#f6f8fa;color:#1f2328;border:1px solid #d0d7de}\
.default-submit{position:absolute;left:-9999px;width:1px;height:1px;overflow:hidden}\
label{display:block;margin:.25rem 0}textarea,input[type=text]{width:100%;font:inherit}";
