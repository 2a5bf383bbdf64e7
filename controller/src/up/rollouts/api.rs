//! The runner's HTTP/1 client for the controller's rollout API (`GET /rollouts`, `POST
//! /rollouts`). Kept apart from the planner so that the planner stays a pure function of what
//! this client read, and the transport's failure modes (no address yet, unreachable, refused,
//! malformed) are stated in one place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::Rollout;
use crate::status::ADMIN_ADDR_FILE;

/// How long one request to the rollout API may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Larger answers are refused.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why the rollout API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No address to talk to (the controller has not written `admin.addr` yet).
    #[error("no controller admin address in {0}")]
    NoAddress(String),
    /// Not reachable, or no answer in time.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// An answer other than the one expected.
    #[error("{url} answered {status}: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// The `error` of its JSON body, or the body.
        message: String,
    },
    /// A body that is not the documented JSON.
    #[error("{url} answered something else than the rollouts JSON: {reason}")]
    Malformed {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Where the rollout API is.
#[derive(Clone, Debug)]
pub enum ApiAddress {
    /// A base URL given explicitly (`SLUICE_UP_ROLLOUT_API`): `http://127.0.0.1:40587`.
    Fixed(String),
    /// The controller's `admin.addr` file, read on every request (a restarted controller
    /// picks a new port).
    AdminFile(PathBuf),
}

/// A small HTTP/1 client for `GET /rollouts` and `POST /rollouts`.
pub struct Api {
    address: ApiAddress,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// A client for `address`.
    pub fn new(address: ApiAddress) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        Api { address, client }
    }

    /// The base URL, without a trailing `/`.
    fn base(&self) -> Result<String, ApiError> {
        match &self.address {
            ApiAddress::Fixed(url) => Ok(url.trim_end_matches('/').to_owned()),
            ApiAddress::AdminFile(path) => std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .map(|addr| format!("http://{addr}"))
                .ok_or_else(|| ApiError::NoAddress(path.display().to_string())),
        }
    }

    async fn call(
        &self,
        method: Method,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes, String), ApiError> {
        let url = format!("{}/rollouts", self.base()?);
        let unreachable = |reason: String| ApiError::Unreachable {
            url: url.clone(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| unreachable(format!("{e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("accept", "application/json")
            .header("user-agent", "sluice-up");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(crate::error_chain(&e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ApiError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        Ok((status, bytes, url))
    }

    /// `GET /rollouts`: every rollout, newest first. Entries that do not parse are skipped.
    pub async fn list(&self) -> Result<Vec<Rollout>, ApiError> {
        let (status, body, url) = self.call(Method::GET, None).await?;
        if status != StatusCode::OK {
            return Err(refused(url, status, &body));
        }
        parse_list(&body).map_err(|reason| ApiError::Malformed { url, reason })
    }

    /// `POST /rollouts`: asks for a rollout of `service` to `version`.
    pub async fn start(&self, service: &str, version: &str) -> Result<Rollout, ApiError> {
        let body = serde_json::json!({
            "namespace": "default",
            "service": service,
            "version": version,
        });
        let (status, body, url) = self.call(Method::POST, Some(body)).await?;
        if !status.is_success() {
            return Err(refused(url, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::Malformed {
            url,
            reason: e.to_string(),
        })
    }
}

pub(super) fn refused(url: String, status: StatusCode, body: &[u8]) -> ApiError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            text.trim().chars().take(200).collect()
        });
    ApiError::Refused {
        url,
        status,
        message,
    }
}

/// Parses `{"rollouts": [...]}`; an entry without the fields the runner needs is skipped (a
/// rollout of a kind this runner does not handle must not hide the others).
pub fn parse_list(body: &[u8]) -> Result<Vec<Rollout>, String> {
    #[derive(Deserialize)]
    struct List {
        rollouts: Vec<serde_json::Value>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(list
        .rollouts
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}
/// The default rollout API: the controller's admin endpoint under `STATE_DIR/controller`.
pub fn admin_file(controller_dir: &Path) -> PathBuf {
    controller_dir.join(ADMIN_ADDR_FILE)
}
