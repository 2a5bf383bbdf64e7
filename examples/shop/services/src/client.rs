//! Calling the other services: a plain HTTP client (the mesh is invisible to it), the
//! headers that must travel with every call, and telling a mesh denial apart from any other
//! failure.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tracing::warn;

use crate::serve::{self, Response};

/// Headers copied from the incoming request onto every outbound call. W3C trace context and
/// baggage (`baggage: sluice-env=payments-v2` is how a request asks for an environment), and
/// Sluice's own environment header.
pub const PROPAGATED: [&str; 4] = ["traceparent", "tracestate", "baggage", "sluice-env"];

/// The header the mesh puts on a denial it produced, so it is never confused with a 403 the
/// application sent itself.
pub const DENIED_BY: &str = "sluice-denied-by";

/// How long one call may take; the shop's routes time out after 10 s too.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The headers of `incoming` that are passed on (see [`PROPAGATED`]).
pub fn propagated(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED {
        for value in incoming.get_all(name) {
            out.append(name, value.clone());
        }
    }
    out
}

/// A dependency, by name and base URL (`http://payments:8080`).
#[derive(Clone)]
pub struct Upstream {
    pub name: &'static str,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A dependency's successful (2xx) answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A call that did not work.
#[derive(Debug)]
pub struct CallError {
    pub dependency: &'static str,
    /// Method and path, e.g. `GET /v1/charges/ch_1`.
    pub call: String,
    pub kind: Failure,
}

#[derive(Debug)]
pub enum Failure {
    /// No answer: connection refused, reset, or timed out.
    Unreachable(String),
    /// The mesh refused the call: a 403 `application/problem+json` with `sluice-denied-by`.
    Denied { denied_by: String, problem: Value },
    /// The dependency answered, but not with a 2xx. `body` is its JSON, or its text.
    Status { status: StatusCode, body: Value },
}

impl Upstream {
    pub fn new(name: &'static str, base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Upstream {
            name,
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Calls `method path` with `headers` (the propagated ones) and an optional JSON body,
    /// asking for JSON back. Anything but a 2xx is an error, a mesh denial recognised as such.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<&Value>,
    ) -> Result<Reply, CallError> {
        let call = format!("{method} {path}");
        let fail = |kind| CallError {
            dependency: self.name,
            call: call.clone(),
            kind,
        };
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(h) = req.headers_mut() {
            h.extend(headers.clone());
            h.insert(ACCEPT, HeaderValue::from_static("application/json"));
            if body.is_some() {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(body))
            .map_err(|e| fail(Failure::Unreachable(format!("bad request URL: {e}"))))?;

        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason = format!("{reason}: {s}");
                    source = s.source();
                }
                reason
            })?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        };
        let (parts, bytes) = match tokio::time::timeout(TIMEOUT, exchange).await {
            Err(_) => {
                return Err(fail(Failure::Unreachable(format!(
                    "no answer in {TIMEOUT:?}"
                ))));
            }
            Ok(Err(reason)) => return Err(fail(Failure::Unreachable(reason))),
            Ok(Ok(answer)) => answer,
        };
        if parts.status.is_success() {
            return Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: bytes,
            });
        }
        if let Some(denial) = as_denial(parts.status, &parts.headers, &bytes) {
            return Err(fail(denial));
        }
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Err(fail(Failure::Status {
            status: parts.status,
            body,
        }))
    }
}

/// A mesh denial: 403, `application/problem+json`, `sluice-denied-by`, and a JSON object.
/// A 403 without the header is the application's own and stays a plain [`Failure::Status`].
fn as_denial(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<Failure> {
    if status != StatusCode::FORBIDDEN {
        return None;
    }
    let denied_by = headers
        .get(DENIED_BY)?
        .to_str()
        .unwrap_or("sluice")
        .to_owned();
    let problem_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/problem+json"));
    if !problem_json {
        return None;
    }
    let problem: Value = serde_json::from_slice(body).ok()?;
    problem
        .is_object()
        .then_some(Failure::Denied { denied_by, problem })
}

impl CallError {
    /// The denial's one-sentence `detail` (it ends with the request-access link).
    pub fn denial_detail(&self) -> Option<&str> {
        match &self.kind {
            Failure::Denied { problem, .. } => problem
                .get("detail")
                .or_else(|| problem.get("title"))
                .and_then(Value::as_str),
            _ => None,
        }
    }

    /// Logs the failure (a denial as one line with its sentence and link) and turns it into
    /// this service's own answer: 502, with a JSON body that keeps the denial intact.
    pub fn into_response(self) -> Response {
        let mut body = json!({
            "error": self.to_string(),
            "dependency": self.dependency,
            "call": self.call,
        });
        match self.kind {
            Failure::Denied { problem, .. } => {
                // One line with the sentence and its request-access link: what an engineer
                // reading this service's log needs to get the call granted.
                warn!("{}", body["error"].as_str().unwrap_or_default());
                body["denial"] = problem;
            }
            Failure::Unreachable(_) => warn!("{self}"),
            Failure::Status {
                status,
                body: answer,
            } => {
                warn!(
                    "{} answered {} to {}",
                    self.dependency,
                    status.as_u16(),
                    self.call
                );
                body["status"] = json!(status.as_u16());
                body["body"] = answer;
            }
        }
        serve::json(StatusCode::BAD_GATEWAY, &body)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (dep, call) = (self.dependency, &self.call);
        match &self.kind {
            Failure::Unreachable(reason) => write!(f, "{dep} is unreachable ({call}): {reason}"),
            Failure::Denied { .. } => write!(
                f,
                "the mesh denied {call} on {dep}: {}",
                self.denial_detail().unwrap_or("no detail given")
            ),
            Failure::Status { status, .. } => {
                write!(f, "{dep} answered {} to {call}", status.as_u16())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_the_mesh_s_403_is_a_denial() {
        let body = br#"{"title":"denied","detail":"checkout is not allowed"}"#;
        let mesh = headers(&[
            ("content-type", "application/problem+json"),
            (DENIED_BY, "payments"),
        ]);
        assert!(matches!(
            as_denial(StatusCode::FORBIDDEN, &mesh, body),
            Some(Failure::Denied { .. })
        ));
        let app = headers(&[("content-type", "application/problem+json")]);
        assert!(as_denial(StatusCode::FORBIDDEN, &app, body).is_none());
        assert!(as_denial(StatusCode::UNAUTHORIZED, &mesh, body).is_none());
        assert!(as_denial(StatusCode::FORBIDDEN, &mesh, b"not json").is_none());
    }

    #[test]
    fn trace_context_and_baggage_travel() {
        let incoming = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("baggage", "sluice-env=payments-v2"),
            ("cookie", "secret"),
        ]);
        let out = propagated(&incoming);
        assert_eq!(out.len(), 2);
        assert!(out.get("cookie").is_none());
    }
}
