//! `Watch`: one stream per proxy, the current configuration at once, then every change.
//!
//! Only the workload's own certificate opens its stream, and the stream carries only the policy
//! that workload needs (`view`).
//!
//! The stream follows the control plane's `tokio::sync::watch` channel, which keeps only the
//! latest configuration: a proxy that reads slowly (or not at all) is sent the newest one when
//! it reads again and holds up no one else. Whatever the stream hands to gRPC is recorded as
//! the proxy's acknowledged version (for `sluice status`); gRPC stops taking messages once the
//! proxy's HTTP/2 flow-control window is full, so a proxy that stops reading shows as behind.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_api::v1::{ProxyConfig, WatchRequest};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::Status;

use super::ApiError;
use super::state::ControlPlane;
use crate::identity::WorkloadIdentity;

/// The longest `proxy_id` accepted.
pub const MAX_PROXY_ID: usize = 256;

/// Checks the request and opens the proxy's stream, if `caller` (what the client certificate
/// proves) is the workload it names. The stream carries only that workload's share of the
/// policy (see `view`).
pub(super) fn watch(
    plane: &Arc<ControlPlane>,
    caller: &WorkloadIdentity,
    request: WatchRequest,
    peer: Option<SocketAddr>,
) -> Result<
    impl tokio_stream::Stream<Item = Result<ProxyConfig, Status>> + Send + 'static + use<>,
    ApiError,
> {
    let workload = request.workload.ok_or(ApiError::MissingField("workload"))?;
    super::auth::require_same(
        caller,
        WorkloadIdentity::new(&workload.namespace, &workload.service)?,
    )?;
    if request.proxy_id.is_empty() {
        return Err(ApiError::MissingField("proxy_id"));
    }
    if request.proxy_id.len() > MAX_PROXY_ID {
        return Err(ApiError::InvalidField {
            field: "proxy_id",
            reason: format!("at most {MAX_PROXY_ID} bytes"),
        });
    }
    tracing::info!(
        proxy_id = request.proxy_id,
        namespace = workload.namespace,
        service = workload.service,
        instance = workload.instance,
        have_version = request.have_version,
        peer = ?peer,
        "proxy connected"
    );
    let proxy_id = request.proxy_id.clone();
    let (namespace, service) = (workload.namespace.clone(), workload.service.clone());
    let (receiver, guard) = plane.subscribe(request.proxy_id, workload, peer);
    let closed = ClosedLog(proxy_id);
    Ok(WatchStream::new(receiver).map(move |published| {
        let _ = &closed;
        guard.sent(&published);
        Ok(published.config_for(&namespace, &service))
    }))
}

/// Logs when the stream is dropped (the proxy went away).
struct ClosedLog(String);

impl Drop for ClosedLog {
    fn drop(&mut self) {
        tracing::info!(proxy_id = self.0, "proxy disconnected");
    }
}
