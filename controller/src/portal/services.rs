//! `/services` and `/services/<name>`: a page per service (being written).
//!
//! PLACEHOLDER so the portal server compiles until the services pages are merged; replace the
//! whole file.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{Answer, Portal, User};

/// Placeholder: the services pages are being written.
pub async fn handle(_portal: &Portal, _req: Request<Incoming>, user: &User) -> Answer {
    super::html::page(
        StatusCode::OK,
        "Services",
        Some(user),
        "<h1>Services</h1><p class=\"muted\">The service pages are coming. \
         <a href=\"/access\">Access requests</a></p>",
    )
}
