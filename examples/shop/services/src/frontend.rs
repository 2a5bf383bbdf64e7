//! frontend: the web shop. Lists catalog's products and places orders through checkout.
//!
//! It passes `traceparent`, `tracestate`, `baggage` and `sluice-env` on to every call it
//! makes, so a browser that sends `baggage: sluice-env=payments-v2` reaches the v2 preview
//! two hops away. When the mesh denies a call on the way — its own, or one checkout relays —
//! the page shows the denial's sentence and a "Request access" button.

use std::fmt::Write as _;
use std::sync::Arc;

use http::header::HeaderMap;
use http::{Method, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::client::{self, CallError, Failure, Upstream};
use crate::serve::{self, Identity, Request, Response};

struct Frontend {
    id: Arc<Identity>,
    catalog: Upstream,
    checkout: Upstream,
}

pub async fn run(
    listener: TcpListener,
    id: Arc<Identity>,
    catalog_url: &str,
    checkout_url: &str,
    shutdown: impl Future<Output = ()>,
) {
    let state = Arc::new(Frontend {
        id: id.clone(),
        catalog: Upstream::new("catalog", catalog_url),
        checkout: Upstream::new("checkout", checkout_url),
    });
    serve::serve(
        listener,
        id,
        move |req| {
            let state = state.clone();
            async move { state.route(req).await }
        },
        shutdown,
    )
    .await;
}

impl Frontend {
    async fn route(&self, req: Request) -> Response {
        let path = req.uri().path().to_owned();
        let headers = client::propagated(req.headers());
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => serve::healthz(),
            (Method::GET, "/") => self.home(&headers).await,
            (Method::POST, "/checkout") => self.checkout(req, &headers).await,
            (Method::GET, _) => match serve::path_param(&path, "/products/") {
                Some(product_id) => self.product(product_id, &headers).await,
                None => self.page(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "<p class=\"notice\">There is nothing here. <a href=\"/\">Back to the shop</a>.</p>"
                        .to_owned(),
                ),
            },
            _ => serve::not_found(),
        }
    }

    async fn home(&self, headers: &HeaderMap) -> Response {
        let products = match self
            .catalog
            .call(Method::GET, "/v1/products", headers, None)
            .await
        {
            Ok(reply) => reply.json().unwrap_or(Value::Null),
            Err(e) => return self.failure("The shop is closed for a moment", &e),
        };
        let mut body = String::from(
            "<p class=\"lede\">Good coffee, delivered by a service mesh.</p><div class=\"grid\">",
        );
        for p in products["products"].as_array().into_iter().flatten() {
            body.push_str(&card(p, false));
        }
        body.push_str("</div>");
        self.page(StatusCode::OK, "Sluice Coffee", body)
    }

    async fn product(&self, product_id: &str, headers: &HeaderMap) -> Response {
        let valid = product_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let found = if valid {
            self.catalog
                .call(
                    Method::GET,
                    &format!("/v1/products/{product_id}"),
                    headers,
                    None,
                )
                .await
        } else {
            Err(CallError {
                dependency: "catalog",
                call: String::new(),
                kind: Failure::Status {
                    status: StatusCode::NOT_FOUND,
                    body: Value::Null,
                },
            })
        };
        match found {
            Ok(reply) => {
                let p = reply.json().unwrap_or(Value::Null);
                let title = p["name"].as_str().unwrap_or("A product").to_owned();
                self.page(StatusCode::OK, &title, card(&p, true))
            }
            Err(CallError {
                kind: Failure::Status { status, .. },
                ..
            }) if status == StatusCode::NOT_FOUND => self.page(
                StatusCode::NOT_FOUND,
                "No such product",
                "<p class=\"notice\">We don't sell that. <a href=\"/\">Back to the shop</a>.</p>"
                    .to_owned(),
            ),
            Err(e) => self.failure("We could not show this product", &e),
        }
    }

    async fn checkout(&self, req: Request, headers: &HeaderMap) -> Response {
        let form = match serve::body_bytes(req).await {
            Ok(b) => parse_form(&String::from_utf8_lossy(&b)),
            Err(res) => return res,
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let product_id = field("product_id").unwrap_or_default();
        let quantity: u32 = field("quantity")
            .and_then(|q| q.trim().parse().ok())
            .unwrap_or(1);
        let order = json!({ "product_id": product_id, "quantity": quantity });
        match self
            .checkout
            .call(Method::POST, "/v1/orders", headers, Some(&order))
            .await
        {
            Ok(reply) => {
                let o = reply.json().unwrap_or(Value::Null);
                let body = format!(
                    "<div class=\"done\"><h2>Thank you!</h2>\
                     <p>Order <code>{}</code> is paid: {} × {}, {}.</p>\
                     <p class=\"small\">Charge <code>{}</code>.</p></div>\
                     <p><a href=\"/\">Keep shopping</a></p>",
                    esc(o["id"].as_str().unwrap_or("?")),
                    o["quantity"].as_u64().unwrap_or(0),
                    esc(o["product_id"].as_str().unwrap_or("?")),
                    money(o["amount"].as_i64().unwrap_or(0), o["currency"].as_str()),
                    esc(o["charge_id"].as_str().unwrap_or("?")),
                );
                self.page(StatusCode::OK, "Order placed", body)
            }
            Err(e) => self.failure("We could not place your order", &e),
        }
    }

    /// A page for a failed call. A mesh denial — ours, or one checkout passed on in its
    /// `denial` field — gets its sentence and a "Request access" button.
    fn failure(&self, title: &str, e: &CallError) -> Response {
        let mut body = String::new();
        let relayed = match &e.kind {
            Failure::Denied { problem, .. } => Some(problem),
            Failure::Status { body, .. } => body.get("denial").filter(|d| d.is_object()),
            Failure::Unreachable(_) => None,
        };
        match relayed {
            Some(denial) => body.push_str(&denial_box(denial)),
            None => {
                let reason = match &e.kind {
                    Failure::Status { body, .. } => body
                        .get("error")
                        .and_then(Value::as_str)
                        .map_or_else(|| e.to_string(), str::to_owned),
                    _ => e.to_string(),
                };
                let _ = write!(body, "<p class=\"notice\">{}</p>", esc(&reason));
            }
        }
        body.push_str("<p><a href=\"/\">Back to the shop</a></p>");
        self.page(StatusCode::BAD_GATEWAY, title, body)
    }

    fn page(&self, status: StatusCode, title: &str, body: String) -> Response {
        let html = format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  :root {{ --ink: #2b2118; --muted: #7a6a5c; --paper: #fbf7f2; --card: #fff; --accent: #b5562b; --deny: #9b1c1c; }}
  * {{ box-sizing: border-box; }}
  body {{ margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--paper); }}
  header {{ display: flex; justify-content: space-between; align-items: baseline; padding: 1rem 2rem; border-bottom: 1px solid #eadfd3; background: var(--card); }}
  header a {{ color: var(--ink); text-decoration: none; font-weight: 700; font-size: 1.25rem; }}
  .version {{ color: var(--muted); font-size: .85rem; }}
  main {{ max-width: 60rem; margin: 0 auto; padding: 2rem; }}
  h1 {{ margin-top: 0; }}
  .lede {{ color: var(--muted); }}
  .grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(13rem, 1fr)); gap: 1rem; }}
  .card {{ background: var(--card); border: 1px solid #eadfd3; border-radius: .75rem; padding: 1.25rem; display: flex; flex-direction: column; gap: .5rem; }}
  .card h2 {{ margin: 0; font-size: 1.1rem; }}
  .card h2 a {{ color: inherit; text-decoration: none; }}
  .card p {{ margin: 0; color: var(--muted); flex: 1; }}
  .price {{ font-weight: 700; font-size: 1.2rem; }}
  .stock {{ color: var(--muted); font-size: .85rem; }}
  form {{ display: flex; gap: .5rem; }}
  input[type=number] {{ width: 4rem; padding: .4rem; border: 1px solid #d8c8b8; border-radius: .4rem; }}
  button, .button {{ background: var(--accent); color: #fff; border: 0; border-radius: .4rem; padding: .5rem 1rem; font: inherit; cursor: pointer; text-decoration: none; display: inline-block; }}
  .notice {{ background: var(--card); border-left: 4px solid var(--accent); padding: 1rem; }}
  .done {{ background: var(--card); border-left: 4px solid #2f7d4f; padding: 1rem 1.5rem; }}
  .denial {{ background: #fff5f5; border: 1px solid #f1c0c0; border-left: 4px solid var(--deny); border-radius: .5rem; padding: 1rem 1.5rem; }}
  .denial h2 {{ margin: 0 0 .5rem; color: var(--deny); font-size: 1.1rem; }}
  .denial dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; font-size: .9rem; }}
  .denial dt {{ color: var(--muted); }}
  .denial dd {{ margin: 0; }}
  .denial .button {{ background: var(--deny); }}
  .small {{ font-size: .85rem; color: var(--muted); }}
  code {{ font-size: .9em; }}
  footer {{ text-align: center; color: var(--muted); font-size: .8rem; padding: 2rem; }}
</style>
</head>
<body>
<header><a href="/">☕ Sluice Coffee</a><span class="version">frontend {version}</span></header>
<main>
<h1>{title}</h1>
{body}
</main>
<footer>A demo shop for the Sluice service mesh: frontend → checkout → payments, and catalog.</footer>
</body>
</html>
"#,
            title = esc(title),
            version = esc(&self.id.version),
        );
        serve::html(status, html)
    }
}

/// A product card with its buy form; `full` links nowhere (it is the product's own page).
fn card(p: &Value, full: bool) -> String {
    let id = esc(p["id"].as_str().unwrap_or_default());
    let name = esc(p["name"].as_str().unwrap_or("?"));
    let heading = if full {
        name
    } else {
        format!("<a href=\"/products/{id}\">{name}</a>")
    };
    format!(
        "<div class=\"card\"><h2>{heading}</h2><p>{desc}</p>\
         <div class=\"price\">{price}</div><div class=\"stock\">{stock} in stock</div>\
         <form method=\"post\" action=\"/checkout\">\
         <input type=\"hidden\" name=\"product_id\" value=\"{id}\">\
         <input type=\"number\" name=\"quantity\" value=\"1\" min=\"1\" max=\"100\" aria-label=\"quantity\">\
         <button type=\"submit\">Buy</button></form></div>",
        desc = esc(p["description"].as_str().unwrap_or_default()),
        price = money(p["price"].as_i64().unwrap_or(0), p["currency"].as_str()),
        stock = p["stock"].as_u64().unwrap_or(0),
    )
}

/// The mesh's denial, readable: its sentence, who called what, and the way to ask for access.
fn denial_box(d: &Value) -> String {
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut out = format!(
        "<div class=\"denial\"><h2>Denied by the mesh</h2><p>{}</p><dl>",
        esc(if s("detail").is_empty() {
            s("title")
        } else {
            s("detail")
        })
    );
    for (label, key) in [
        ("caller", "caller"),
        ("service", "service"),
        ("call", "rpc"),
        ("policy", "policy"),
        ("environment", "environment"),
        ("request id", "requestId"),
    ] {
        if !s(key).is_empty() {
            let _ = write!(out, "<dt>{label}</dt><dd><code>{}</code></dd>", esc(s(key)));
        }
    }
    out.push_str("</dl>");
    let link = s("requestAccess");
    if link.starts_with("http://") || link.starts_with("https://") {
        let _ = write!(
            out,
            "<p><a class=\"button\" href=\"{}\">Request access</a></p>",
            esc(link)
        );
    }
    out.push_str("</div>");
    out
}

fn money(cents: i64, currency: Option<&str>) -> String {
    let amount = format!("{}.{:02}", cents / 100, (cents % 100).abs());
    match currency {
        Some("EUR") => format!("€{amount}"),
        Some("USD") => format!("${amount}"),
        Some(c) => format!("{amount} {}", esc(c)),
        None => amount,
    }
}

/// `application/x-www-form-urlencoded` → name/value pairs.
fn parse_form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_decode_str(&s).decode_utf8_lossy().into_owned()
    };
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        assert_eq!(
            parse_form("product_id=ceramic-mug&quantity=2&note=a+b%21"),
            vec![
                ("product_id".into(), "ceramic-mug".into()),
                ("quantity".into(), "2".into()),
                ("note".into(), "a b!".into()),
            ]
        );
    }

    #[test]
    fn denials_render_their_link_and_escape_the_rest() {
        let html = denial_box(&json!({
            "detail": "checkout is not allowed to call GET /v1/charges/{id} on payments. <b>",
            "caller": "checkout",
            "requestAccess": "http://localhost:7070/access/new?from=checkout&to=payments",
        }));
        assert!(html.contains("&lt;b&gt;"));
        assert!(
            html.contains(
                "href=\"http://localhost:7070/access/new?from=checkout&amp;to=payments\""
            )
        );
        let no_link = denial_box(&json!({ "detail": "x", "requestAccess": "javascript:alert(1)" }));
        assert!(!no_link.contains("href"));
    }

    #[test]
    fn money_reads_like_money() {
        assert_eq!(money(2400, Some("EUR")), "€24.00");
        assert_eq!(money(650, Some("SEK")), "6.50 SEK");
    }
}
