//! `ReportTraffic`: a proxy's inbound golden signals, cumulative since it started, checked and
//! handed to the [`TrafficBook`](crate::rollout::traffic::TrafficBook) that canary analysis
//! reads.
//!
//! Nothing is stored: the numbers are cumulative in every proxy, so a restarted controller is
//! whole again after one report interval. Validation is strict because a wrong histogram would
//! silently skew a rollout's verdict; a proxy gets `INVALID_ARGUMENT` naming the field instead.

use sluice_api::v1::{TrafficReport, TrafficReportAck};

use super::ApiError;
use super::register::DEFAULT_ENVIRONMENT;
use super::state::ControlPlane;
use crate::identity::WorkloadIdentity;
use crate::rollout::traffic::{InstanceReport, VersionKey};

/// The most latency buckets one report may carry (the proxy sends 14).
pub const MAX_BUCKETS: usize = 64;
/// The longest `proxy_id` accepted (as for `Watch`).
pub const MAX_PROXY_ID: usize = 256;

/// Records `request` if `caller` (what the client certificate proved) is the workload it reports for: a
/// proxy speaks only for its own traffic, so one workload cannot skew another's rollout.
pub(super) fn report_traffic(
    plane: &ControlPlane,
    caller: &WorkloadIdentity,
    request: TrafficReport,
) -> Result<TrafficReportAck, ApiError> {
    let report = validate(request)?;
    super::auth::require_same(
        caller,
        WorkloadIdentity::new(&report.key.namespace, &report.key.service)?,
    )?;
    plane
        .env_activity()
        .observe(&report, crate::store::unix_ms(std::time::SystemTime::now()));
    plane.traffic().record(report);
    Ok(TrafficReportAck {})
}

fn validate(request: TrafficReport) -> Result<InstanceReport, ApiError> {
    if request.proxy_id.is_empty() {
        return Err(ApiError::MissingField("proxy_id"));
    }
    if request.proxy_id.len() > MAX_PROXY_ID {
        return Err(ApiError::InvalidField {
            field: "proxy_id",
            reason: format!("at most {MAX_PROXY_ID} bytes"),
        });
    }
    let w = request.workload.ok_or(ApiError::MissingField("workload"))?;
    WorkloadIdentity::new(&w.namespace, &w.service)?;
    // The same rules as `Register`, so a report names exactly what a registration can.
    super::register::check_label("workload.version", &w.version, 63)?;
    let environment = if w.environment.is_empty() {
        DEFAULT_ENVIRONMENT.to_owned()
    } else {
        super::register::check_label("workload.environment", &w.environment, 63)?;
        w.environment
    };
    let role = super::register::check_role(&w.role)?;
    if request.failures > request.requests {
        return Err(ApiError::InvalidField {
            field: "failures",
            reason: format!(
                "{} failures out of {} requests",
                request.failures, request.requests
            ),
        });
    }
    let latency = histogram(&request.latency, request.requests)?;
    Ok(InstanceReport {
        key: VersionKey {
            namespace: w.namespace,
            service: w.service,
            version: w.version,
            environment,
            role,
        },
        proxy_id: request.proxy_id,
        proxy_started_unix_ms: request.proxy_started_unix_ms,
        sent_unix_ms: request.sent_unix_ms,
        requests: request.requests,
        failures: request.failures,
        latency,
    })
}

/// Checks the buckets and drops a trailing +Inf one (its count is `requests`).
fn histogram(
    buckets: &[sluice_api::v1::LatencyBucket],
    requests: u64,
) -> Result<Vec<(f64, u64)>, ApiError> {
    let invalid = |reason: String| ApiError::InvalidField {
        field: "latency",
        reason,
    };
    if buckets.len() > MAX_BUCKETS {
        return Err(invalid(format!(
            "{} buckets; at most {MAX_BUCKETS}",
            buckets.len()
        )));
    }
    let finite = match buckets.split_last() {
        Some((last, rest)) if last.le_seconds == f64::INFINITY => {
            if last.count != requests {
                return Err(invalid(format!(
                    "the +Inf bucket counts {}, but there were {requests} requests",
                    last.count
                )));
            }
            rest
        }
        _ => buckets,
    };
    let mut out: Vec<(f64, u64)> = Vec::with_capacity(finite.len());
    for (i, b) in finite.iter().enumerate() {
        if !(b.le_seconds.is_finite() && b.le_seconds >= 0.0) {
            return Err(invalid(format!(
                "latency[{i}]: bound {} is not a finite number of seconds ≥ 0 (only the last may be +Inf)",
                b.le_seconds
            )));
        }
        if let Some(&(le, count)) = out.last() {
            if b.le_seconds <= le {
                return Err(invalid(format!(
                    "latency[{i}]: bounds must be strictly ascending ({le} then {})",
                    b.le_seconds
                )));
            }
            if b.count < count {
                return Err(invalid(format!(
                    "latency[{i}]: counts are cumulative and cannot go down ({count} then {})",
                    b.count
                )));
            }
        }
        if b.count > requests {
            return Err(invalid(format!(
                "latency[{i}]: {} responses at most {} s, but only {requests} requests",
                b.count, b.le_seconds
            )));
        }
        out.push((b.le_seconds, b.count));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sluice_api::v1::{LatencyBucket, Workload};

    use super::*;

    fn request() -> TrafficReport {
        TrafficReport {
            proxy_id: "payments-0-proxy".into(),
            workload: Some(Workload {
                namespace: "default".into(),
                service: "payments".into(),
                version: "v2".into(),
                environment: String::new(),
                instance: String::new(),
                role: String::new(),
            }),
            proxy_started_unix_ms: 1,
            requests: 10,
            failures: 2,
            latency: vec![bucket(0.01, 5), bucket(0.1, 9), bucket(1.0, 10)],
            sent_unix_ms: 2,
        }
    }

    fn bucket(le_seconds: f64, count: u64) -> LatencyBucket {
        LatencyBucket { le_seconds, count }
    }

    fn field(r: TrafficReport) -> Option<&'static str> {
        match validate(r) {
            Err(ApiError::InvalidField { field, .. } | ApiError::MissingField(field)) => {
                Some(field)
            }
            Err(ApiError::InvalidWorkload(_)) => Some("workload"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn a_valid_report_becomes_an_instance_report() {
        let r = validate(request()).expect("valid");
        assert_eq!(r.key.environment, "stable", "the default environment");
        assert_eq!((r.requests, r.failures), (10, 2));
        assert_eq!(r.latency, vec![(0.01, 5), (0.1, 9), (1.0, 10)]);
        let mut with_inf = request();
        with_inf.latency.push(bucket(f64::INFINITY, 10));
        assert_eq!(
            validate(with_inf).expect("valid").latency.len(),
            3,
            "+Inf dropped"
        );
        let mut none = request();
        none.latency.clear();
        assert!(validate(none).is_ok(), "no histogram is allowed");
    }

    #[test]
    fn invalid_reports_name_the_field() {
        let mut r = request();
        r.proxy_id.clear();
        assert_eq!(field(r), Some("proxy_id"));
        let mut r = request();
        r.workload = None;
        assert_eq!(field(r), Some("workload"));
        let mut r = request();
        if let Some(w) = r.workload.as_mut() {
            w.service = "Payments!".into();
        }
        assert_eq!(field(r), Some("workload"));
        let mut r = request();
        if let Some(w) = r.workload.as_mut() {
            w.version.clear();
        }
        assert_eq!(field(r), Some("workload.version"));
        let mut r = request();
        if let Some(w) = r.workload.as_mut() {
            w.environment = "pr 1".into();
        }
        assert_eq!(field(r), Some("workload.environment"));
        let mut r = request();
        r.failures = 11;
        assert_eq!(field(r), Some("failures"));

        for latency in [
            vec![bucket(0.1, 1), bucket(0.01, 2)], // descending bounds
            vec![bucket(0.1, 1), bucket(0.1, 2)],  // repeated bound
            vec![bucket(0.01, 5), bucket(0.1, 4)], // counts going down
            vec![bucket(f64::NAN, 1)],             // not a number
            vec![bucket(-1.0, 0)],                 // negative
            vec![bucket(f64::INFINITY, 10), bucket(1.0, 10)], // +Inf not last
            vec![bucket(1.0, 11)],                 // more than requests
            vec![bucket(1.0, 9), bucket(f64::INFINITY, 9)], // +Inf is not requests
            (0..65).map(|i| bucket(f64::from(i), 0)).collect(), // too many
        ] {
            let mut r = request();
            r.latency = latency.clone();
            assert_eq!(field(r), Some("latency"), "{latency:?}");
        }
    }
}
