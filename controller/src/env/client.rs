//! A client of the environment routes of the admin API, for `sluice env` and for `sluice up`'s
//! runner: JSON over HTTP/1 with the admin token, the address read from the controller's
//! `admin.addr` on every call (a restarted controller listens on a new port).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one call may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Larger answers are refused.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// Why the controller could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No address, or nothing answers there.
    #[error("cannot reach the controller{at}: {reason}", at = .at.as_deref().map(|a| format!(" at {a}")).unwrap_or_default())]
    Unreachable {
        /// Where it was looked for.
        at: Option<String>,
        /// Why.
        reason: String,
    },
    /// It answered something that is not JSON.
    #[error("the controller answered {status} without JSON: {body}")]
    NotJson {
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
}

/// Where the controller's admin endpoint is.
#[derive(Clone, Debug)]
pub enum Address {
    /// `127.0.0.1:PORT`.
    Fixed(String),
    /// The controller's `admin.addr` file.
    File(PathBuf),
}

/// The client.
pub struct AdminClient {
    address: Address,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client of `address`, sending `token` with every change.
    pub fn new(address: Address, token: Option<String>) -> Self {
        AdminClient {
            address,
            token,
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build_http(),
        }
    }

    /// Replaces the token (read again after a controller made a new one).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    fn addr(&self) -> Result<String, ClientError> {
        match &self.address {
            Address::Fixed(a) => Ok(a.clone()),
            Address::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ClientError::Unreachable {
                    at: None,
                    reason: format!(
                        "{} is missing (is the controller running? `sluice up` starts one)",
                        path.display()
                    ),
                }),
        }
    }

    /// One call: the status and the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let addr = self.addr()?;
        let unreachable = |reason: String| ClientError::Unreachable {
            at: Some(addr.clone()),
            reason,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("accept", "application/json")
            .header("user-agent", "sluice-env");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = async {
            let rsp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(crate::error_chain(&e)))?;
            let status = rsp.status();
            let bytes = Limited::new(rsp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, answer)
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))??;
        let value = serde_json::from_slice(&bytes).map_err(|_| ClientError::NotJson {
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        })?;
        Ok((status, value))
    }
}

/// The `error` of an error answer.
pub fn error_text(v: &Value) -> String {
    v.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_owned)
}
