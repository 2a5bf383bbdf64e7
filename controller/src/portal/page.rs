//! The portal's layout: every page is [`page`] around a body written with maud's `html!`,
//! which escapes every value it is given. Raw HTML needs `PreEscaped`; the only one is the
//! fixed style sheet below.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::User;

/// A whole page: the layout around `body`, with the user's name in the header. As a response
/// it is `text/html; charset=utf-8` (the security headers come from the portal's layers).
pub fn page(title: &str, user: Option<&User>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Sluice" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href="/services" class="brand" { "Sluice" }
                    " "
                    nav {
                        a href="/services" { "Services" } " "
                        a href="/access" { "Access requests" } " "
                        a href="/rollouts" { "Rollouts" } " "
                        a href="/environments" { "Environments" }
                    }
                    @if let Some(user) = user {
                        span.user { (user.name) }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// `<span class="pill">text</span>`.
pub fn pill(text: &str) -> Markup {
    html! { span.pill { (text) } }
}

/// The portal's look: GitHub-like neutrals, no web fonts, nothing fetched from elsewhere.
pub const STYLE: &str = "body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;background:#f6f8fa}\
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
label{display:block;margin:.25rem 0}textarea,input[type=text]{width:100%;font:inherit}\
iframe.live{width:100%;border:0}";
