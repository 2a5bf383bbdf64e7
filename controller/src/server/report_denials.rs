//! `ReportDenials`: proxies' batched denials, aggregated in the store for the portal.
//!
//! A call that matched an endpoint the callee declares is recorded as that endpoint
//! (`GET /v1/charges/{id}`, not `GET /v1/charges/ch_1`): that is what a grant names, and it
//! keeps one row per endpoint instead of one per charge. Identical denials (same caller,
//! callee, call, endpoint, policies, environment and verdict) add up into one row with a count, first and last seen; the table keeps the
//! [`MAX_DENIALS`](crate::store::MAX_DENIALS) most recently seen. What proxies dropped under
//! their rate limit is counted as a number.
//!
//! A proxy reports the denials it made as the callee, so every denial in a report must name
//! the workload the caller's certificate proves; otherwise one workload could fill the
//! portal with denials (and pre-filled access requests) in another's name.

use std::time::SystemTime;

use sluice_api::v1::{DenialReport, DenialReportAck};

use super::ApiError;
use super::state::ControlPlane;
use crate::identity::WorkloadIdentity;
use crate::store::{DenialIn, unix_ms};

/// The most denials one report may carry.
pub const MAX_DENIALS_PER_REPORT: usize = 1_000;

pub(super) async fn report_denials(
    plane: &ControlPlane,
    caller: &WorkloadIdentity,
    request: DenialReport,
) -> Result<DenialReportAck, ApiError> {
    if request.proxy_id.is_empty() {
        return Err(ApiError::MissingField("proxy_id"));
    }
    if request.denials.len() > MAX_DENIALS_PER_REPORT {
        return Err(ApiError::InvalidField {
            field: "denials",
            reason: format!("at most {MAX_DENIALS_PER_REPORT} per report"),
        });
    }
    let mut denials = Vec::with_capacity(request.denials.len());
    for (i, d) in request.denials.into_iter().enumerate() {
        if d.service.is_empty() {
            return Err(ApiError::MissingField("denials[].service"));
        }
        if d.rpc.is_empty() {
            return Err(ApiError::MissingField("denials[].rpc"));
        }
        let namespace = if d.namespace.is_empty() {
            "default".to_owned()
        } else {
            d.namespace
        };
        if namespace != caller.namespace() || d.service != caller.service() {
            return Err(ApiError::NotYourDenial {
                authenticated: caller.clone(),
                index: i,
                reported: format!("{namespace}/{}", d.service),
            });
        }
        let verdict = match d.verdict.as_str() {
            "" | "deny" => "deny",
            "audit-deny" => "audit-deny",
            other => {
                return Err(ApiError::InvalidField {
                    field: "denials[].verdict",
                    reason: format!("denials[{i}]: `{other}` is not `deny` or `audit-deny`"),
                });
            }
        };
        denials.push(DenialIn {
            caller_namespace: d.caller_namespace,
            caller: if d.caller.is_empty() {
                "unauthenticated".to_owned()
            } else {
                d.caller
            },
            namespace,
            service: d.service,
            rpc: if d.endpoint.is_empty() {
                d.rpc
            } else {
                d.endpoint.clone()
            },
            endpoint: d.endpoint,
            policies: d.policies.join(","),
            environment: d.environment,
            verdict: verdict.to_owned(),
            count: d.count,
            first_seen_unix_ms: d.first_seen_unix_ms,
            request_id: d.request_id,
        });
    }
    let proxy_id = request.proxy_id;
    let dropped = request.dropped;
    let n = denials.len();
    plane
        .store()
        .run(move |s| s.add_denials(&proxy_id, &denials, dropped, unix_ms(SystemTime::now())))
        .await?;
    tracing::debug!(denials = n, dropped, "stored a denial report");
    Ok(DenialReportAck {})
}
