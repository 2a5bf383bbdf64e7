//! `Register`: a workload instance announces its service, version, environment and address.
//!
//! A registration is stored (it survives controller restarts) and published to every watcher.
//! It lives as long as a proxy of the same instance (namespace, service, instance) watches;
//! once the last such `Watch` stream has been gone for the grace period
//! (`--registration-grace`, 30 s by default) it is removed. A registration whose proxy never
//! watches, and every registration reloaded after a restart, starts in that grace period, so
//! reconnecting proxies keep their endpoints and dead ones disappear on their own. Registering
//! again replaces the instance's entry (a restarted workload on a new address).
//!
//! Only the workload itself may register: the caller's workload certificate (see `auth`) must prove
//! the registration's namespace and service, or anyone reaching the controller could put their
//! address into every proxy's routes for that service.

use std::net::SocketAddr;
use std::time::SystemTime;

use sluice_api::v1::{Registration, RegistrationAck};

use super::ApiError;
use super::state::ControlPlane;
use crate::identity::WorkloadIdentity;
use crate::store::{RegistrationRow, unix_ms};

/// The longest instance name accepted (a DNS name's length).
pub const MAX_INSTANCE: usize = 253;
/// The environment when none is given.
pub const DEFAULT_ENVIRONMENT: &str = "stable";

/// Stores `request` if `caller` (what the client certificate proved) is the workload it names.
pub(super) async fn register(
    plane: &ControlPlane,
    caller: &WorkloadIdentity,
    request: Registration,
) -> Result<RegistrationAck, ApiError> {
    let row = validate(request)?;
    super::auth::require_same(caller, WorkloadIdentity::new(&row.namespace, &row.service)?)?;
    plane.register(row).await?;
    Ok(RegistrationAck {})
}

/// Checks a workload label (version, environment, instance): present, at most `max` letters,
/// digits, `-`, `.` or `_`. Shared by every RPC that names a workload.
pub(crate) fn check_label(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::MissingField(field));
    }
    let ok = value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidField {
            field,
            reason: format!("`{value}`: at most {max} letters, digits, `-`, `.` or `_`"),
        })
    }
}

/// Checks a workload's role: empty, or `baseline` (a rollout's fresh copy of the stable
/// version). Shared by `Register` and `ReportTraffic`.
pub(crate) fn check_role(role: &str) -> Result<String, ApiError> {
    match role {
        "" | sluice_policy::resources::BASELINE_ROLE => Ok(role.to_owned()),
        _ => Err(ApiError::InvalidField {
            field: "workload.role",
            reason: format!(
                "`{role}`: empty, or `{}`",
                sluice_policy::resources::BASELINE_ROLE
            ),
        }),
    }
}

fn validate(request: Registration) -> Result<RegistrationRow, ApiError> {
    let w = request.workload.ok_or(ApiError::MissingField("workload"))?;
    WorkloadIdentity::new(&w.namespace, &w.service)?;
    check_label("workload.instance", &w.instance, MAX_INSTANCE)?;
    check_label("workload.version", &w.version, 63)?;
    let environment = if w.environment.is_empty() {
        DEFAULT_ENVIRONMENT.to_owned()
    } else {
        check_label("workload.environment", &w.environment, 63)?;
        w.environment
    };
    let role = check_role(&w.role)?;
    if request.address.is_empty() {
        return Err(ApiError::MissingField("address"));
    }
    let address: SocketAddr = request
        .address
        .parse()
        .map_err(|_| ApiError::InvalidField {
            field: "address",
            reason: format!("`{}` is not ip:port", request.address),
        })?;
    Ok(RegistrationRow {
        namespace: w.namespace,
        service: w.service,
        instance: w.instance,
        version: w.version,
        environment,
        role,
        address: address.to_string(),
        registered_unix_ms: unix_ms(SystemTime::now()),
    })
}

#[cfg(test)]
mod tests {
    use sluice_api::v1::Workload;

    use super::*;

    fn request(address: &str, environment: &str) -> Registration {
        Registration {
            workload: Some(Workload {
                namespace: "shop".into(),
                service: "payments".into(),
                version: "v1".into(),
                environment: environment.into(),
                instance: "payments-0".into(),
                role: String::new(),
            }),
            address: address.into(),
        }
    }

    #[test]
    fn validation() {
        let ok = validate(request("127.0.0.1:80", "")).expect("valid");
        assert_eq!(ok.environment, "stable");
        assert!(matches!(
            validate(request("nowhere", "pr-1")),
            Err(ApiError::InvalidField {
                field: "address",
                ..
            })
        ));
        assert!(matches!(
            validate(request("127.0.0.1:80", "pr 1")),
            Err(ApiError::InvalidField {
                field: "workload.environment",
                ..
            })
        ));
        assert!(matches!(
            validate(Registration::default()),
            Err(ApiError::MissingField("workload"))
        ));
    }
}
