//! Golden-signal metrics (traffic, errors, latency) in Prometheus format.
//!
//! Label values come only from the proxy's configuration and the routing table, or from small
//! closed sets (status codes, gRPC codes), never from request paths or header values, so the
//! number of series stays bounded whatever clients send.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::Direction;

/// Labels shared by every request and connection metric.
const TRAFFIC_LABELS: &[&str] = &[
    "direction",
    "src_service",
    "dst_service",
    "dst_version",
    "route",
    "environment",
];

/// Where a request or connection went, as far as metrics and logs care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficLabels {
    /// The calling service ("" when unknown, e.g. inbound before mTLS identities exist).
    pub src_service: String,
    /// The destination service ("" for unknown destinations).
    pub dst_service: String,
    /// The chosen version ("" when none applies).
    pub dst_version: String,
    /// The route rule that decided (`default` for the service's default split).
    pub route: String,
    /// The ephemeral environment the request was sent to, if it had a copy.
    pub environment: String,
}

/// All proxy metrics and the registry that exports them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    latency: HistogramVec,
    tcp_open: IntCounterVec,
    tcp_close: IntCounterVec,
    tcp_read_bytes: IntCounterVec,
    tcp_write_bytes: IntCounterVec,
    tcp_active: IntGaugeVec,
    snapshot_reloads: IntCounterVec,
    authz_allow: IntCounterVec,
    authz_deny: IntCounterVec,
    authz_would_deny: IntCounterVec,
    denial_reports: IntCounterVec,
    tls_failures: IntCounterVec,
}

/// Labels of the authorization counters. `rpc` is the granting or declared *pattern*
/// (`GET /v1/charges/{id}`), never the raw path, and `caller` is a service name, so the
/// label space is bounded by the policy, not by traffic.
#[derive(Clone, Copy, Debug)]
pub struct AuthzLabels<'a> {
    /// The callee.
    pub service: &'a str,
    /// The caller's service, or `unauthenticated`.
    pub caller: &'a str,
    /// The matched pattern, or `undeclared`.
    pub rpc: &'a str,
    /// The deciding policy, the governing ones, or `mesh-default`.
    pub policy: &'a str,
}

/// How a response counts for error-rate purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// Not a failure.
    Success,
    /// 5xx, a gRPC status other than OK, or a stream that broke.
    Failure,
}

impl Classification {
    /// 5xx and non-OK gRPC statuses are failures; a gRPC response without any status
    /// (stream cut short) is a failure too.
    pub fn of(status: u16, grpc: Option<Option<u32>>) -> Classification {
        let failed = status >= 500
            || match grpc {
                Some(Some(code)) => code != 0,
                Some(None) => true,
                None => false,
            };
        if failed {
            Classification::Failure
        } else {
            Classification::Success
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        }
    }
}

/// Bucket bounds in seconds, at round millisecond values (0.5 ms … 10 s) so that millisecond
/// thresholds (canary analysis speaks milliseconds) fall exactly on a bucket edge. The unit is
/// seconds because `promtool check metrics` rejects `_ms` and `_milliseconds` names.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            TRAFFIC_LABELS.iter().chain(extra).copied().collect()
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let requests = counter(
            "sluice_proxy_requests_total",
            "HTTP requests received by the proxy.",
            TRAFFIC_LABELS,
        )?;
        let responses = counter(
            "sluice_proxy_responses_total",
            "HTTP responses sent, counted when the response stream ends.",
            &with(&["status_code", "grpc_status", "classification"]),
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_proxy_response_latency_seconds",
                "Time from receiving request headers to sending response headers.",
            )
            .buckets(LATENCY_BUCKETS_S.to_vec()),
            &with(&["classification"]),
        )?;
        registry.register(Box::new(latency.clone()))?;
        let tcp_labels = &TRAFFIC_LABELS[..4];
        let tcp_open = counter(
            "sluice_proxy_tcp_open_total",
            "TCP connections opened (accepted from clients).",
            tcp_labels,
        )?;
        let tcp_close = counter(
            "sluice_proxy_tcp_close_total",
            "TCP connections closed.",
            &[tcp_labels, &["result"]].concat(),
        )?;
        let tcp_read_bytes = counter(
            "sluice_proxy_tcp_read_bytes_total",
            "Bytes read from clients on opaque TCP connections.",
            tcp_labels,
        )?;
        let tcp_write_bytes = counter(
            "sluice_proxy_tcp_write_bytes_total",
            "Bytes written to clients on opaque TCP connections.",
            tcp_labels,
        )?;
        let tcp_active = IntGaugeVec::new(
            Opts::new(
                "sluice_proxy_tcp_active",
                "Accepted connections currently open.",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(tcp_active.clone()))?;
        let snapshot_reloads = counter(
            "sluice_proxy_snapshot_reloads_total",
            "Config loads (policy, endpoints, snapshot file), by result (ok or error).",
            &["result"],
        )?;
        let authz = ["service", "caller", "rpc", "policy"];
        let authz_allow = counter(
            "sluice_proxy_authz_allow_total",
            "Inbound calls (requests, or TCP connections) that policy allowed.",
            &authz,
        )?;
        let authz_deny = counter(
            "sluice_proxy_authz_deny_total",
            "Inbound calls that policy denied.",
            &authz,
        )?;
        let authz_would_deny = counter(
            "sluice_proxy_authz_would_deny_total",
            "Inbound calls that an audit-mode policy let through but would deny.",
            &authz,
        )?;
        let denial_reports = counter(
            "sluice_proxy_denial_reports_total",
            "Denials sent to the controller (result=sent) or dropped (result=dropped).",
            &["result"],
        )?;
        let tls_failures = counter(
            "sluice_proxy_tls_handshake_failures_total",
            "Mesh TLS handshakes that failed or presented an unacceptable identity.",
            &["direction"],
        )?;
        Ok(Metrics {
            authz_allow,
            authz_deny,
            authz_would_deny,
            denial_reports,
            tls_failures,
            registry,
            requests,
            responses,
            latency,
            tcp_open,
            tcp_close,
            tcp_read_bytes,
            tcp_write_bytes,
            tcp_active,
            snapshot_reloads,
        })
    }

    /// Counts a request.
    pub fn request(&self, direction: Direction, l: &TrafficLabels) {
        self.requests
            .with_label_values(&traffic(direction, l))
            .inc();
    }

    /// Counts a finished response and records its latency.
    pub fn response(
        &self,
        direction: Direction,
        l: &TrafficLabels,
        status: u16,
        grpc: Option<Option<u32>>,
        latency: std::time::Duration,
    ) {
        let class = Classification::of(status, grpc);
        let base = traffic(direction, l);
        let status = status.to_string();
        let grpc = match grpc {
            None => String::new(),
            Some(Some(code)) if code <= 16 => code.to_string(),
            Some(_) => "unknown".to_owned(),
        };
        let mut labels = base.to_vec();
        labels.extend([status.as_str(), grpc.as_str(), class.as_str()]);
        self.responses.with_label_values(&labels).inc();
        let mut labels = base.to_vec();
        labels.push(class.as_str());
        self.latency
            .with_label_values(&labels)
            .observe(latency.as_secs_f64());
    }

    /// Handles for one opaque TCP connection's counters, resolved once per connection so the
    /// byte counters are plain atomics on the data path.
    pub fn tcp(&self, direction: Direction, l: &TrafficLabels) -> TcpMetrics {
        let labels = &traffic(direction, l)[..4];
        self.tcp_open.with_label_values(labels).inc();
        TcpMetrics {
            read: self.tcp_read_bytes.with_label_values(labels),
            write: self.tcp_write_bytes.with_label_values(labels),
            close: labels.iter().map(|s| (*s).to_owned()).collect(),
            closes: self.tcp_close.clone(),
        }
    }

    /// Tracks an accepted connection until the guard is dropped.
    pub fn active(&self, direction: Direction) -> ActiveGuard {
        let g = self.tcp_active.with_label_values(&[direction.as_str()]);
        g.inc();
        ActiveGuard(g)
    }

    /// Counts a snapshot load.
    pub fn snapshot_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.snapshot_reloads.with_label_values(&[result]).inc();
    }

    /// Counts an authorization decision.
    pub fn authz(&self, verdict: sluice_policy::authz::Verdict, l: &AuthzLabels<'_>) {
        use sluice_policy::authz::Verdict;
        let c = match verdict {
            Verdict::Allow => &self.authz_allow,
            Verdict::AuditDeny => &self.authz_would_deny,
            Verdict::Deny => &self.authz_deny,
        };
        c.with_label_values(&[l.service, l.caller, l.rpc, l.policy])
            .inc();
    }

    /// Counts denials the reporter sent.
    pub fn denial_reports_sent(&self, n: usize) {
        self.denial_reports
            .with_label_values(&["sent"])
            .inc_by(n as u64);
    }

    /// Counts denials the reporter dropped (queue full, batch full, controller away).
    pub fn denial_reports_dropped(&self, n: usize) {
        self.denial_reports
            .with_label_values(&["dropped"])
            .inc_by(n as u64);
    }

    /// Counts a failed mesh TLS handshake.
    pub fn tls_failure(&self, direction: Direction) {
        self.tls_failures
            .with_label_values(&[direction.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn traffic(direction: Direction, l: &TrafficLabels) -> [&str; 6] {
    [
        direction.as_str(),
        &l.src_service,
        &l.dst_service,
        &l.dst_version,
        &l.route,
        &l.environment,
    ]
}

/// Counters for one opaque TCP connection.
#[derive(Debug)]
pub struct TcpMetrics {
    /// Bytes read from the client.
    pub read: prometheus::IntCounter,
    /// Bytes written to the client.
    pub write: prometheus::IntCounter,
    close: Vec<String>,
    closes: IntCounterVec,
}

impl TcpMetrics {
    /// Counts the close, with `result` `ok` or `error`.
    pub fn closed(self, ok: bool) {
        let mut labels: Vec<&str> = self.close.iter().map(String::as_str).collect();
        labels.push(if ok { "ok" } else { "error" });
        self.closes.with_label_values(&labels).inc();
    }
}

/// Decrements the active-connections gauge on drop.
#[derive(Debug)]
pub struct ActiveGuard(prometheus::IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(Classification::of(200, None), Classification::Success);
        assert_eq!(Classification::of(404, None), Classification::Success);
        assert_eq!(Classification::of(503, None), Classification::Failure);
        assert_eq!(
            Classification::of(200, Some(Some(0))),
            Classification::Success
        );
        assert_eq!(
            Classification::of(200, Some(Some(14))),
            Classification::Failure
        );
        assert_eq!(Classification::of(200, Some(None)), Classification::Failure);
    }

    #[test]
    fn encodes() {
        let m = Metrics::new().expect("metrics");
        let l = TrafficLabels {
            dst_service: "payments".into(),
            route: "default".into(),
            ..TrafficLabels::default()
        };
        m.request(Direction::Outbound, &l);
        m.response(
            Direction::Outbound,
            &l,
            200,
            Some(Some(0)),
            std::time::Duration::from_millis(3),
        );
        let text = m.encode().expect("encode");
        assert!(text.contains("sluice_proxy_requests_total{"), "{text}");
        assert!(text.contains(r#"grpc_status="0""#), "{text}");
    }
}
