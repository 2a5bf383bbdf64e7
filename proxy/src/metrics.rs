//! Golden-signal metrics (traffic, errors, latency) in Prometheus format.
//!
//! Label values come only from the proxy's configuration and the routing table, or from small
//! closed sets (status codes, gRPC codes), never from request paths or header values, so the
//! number of series stays bounded whatever clients send.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
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

/// Where a request or connection went, as far as metrics and logs care. Made for every
/// request from names the routing table holds, so the names are shared, not copied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrafficLabels {
    /// The calling service ("" when unknown, e.g. inbound before mTLS identities exist).
    pub src_service: Arc<str>,
    /// The destination service ("" for unknown destinations).
    pub dst_service: Arc<str>,
    /// The chosen version ("" when none applies).
    pub dst_version: Arc<str>,
    /// The route rule that decided (`default` for the service's default split).
    pub route: Arc<str>,
    /// The ephemeral environment the request was sent to, if it had a copy.
    pub environment: Arc<str>,
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
    worker_connections: IntGaugeVec,
    snapshot_reloads: IntCounterVec,
    authz_allow: IntCounterVec,
    authz_deny: IntCounterVec,
    authz_would_deny: IntCounterVec,
    denial_reports: IntCounterVec,
    tls_failures: IntCounterVec,
    refused_connections: IntCounterVec,
    /// Resolved request metrics per direction and label set (see [`TrafficHandles`]).
    handles: Arc<[HandleCache; 2]>,
}

/// Label set → its handles, copied and swapped whole when a new label set appears (rare:
/// label values come from configuration), so lookups take no lock.
type HandleCache =
    ArcSwap<HashMap<TrafficLabels, Arc<TrafficHandles>, foldhash::fast::RandomState>>;

/// The request metrics of one direction and label set, resolved once. Finding a labelled
/// metric in the registry hashes every label value and takes the registry's read lock, which
/// every core shares; for the common answers (`200`, gRPC `OK`) a request instead adds to
/// counters held here. Other answers take the registry path, as before.
#[derive(Debug)]
pub struct TrafficHandles {
    direction: Direction,
    labels: TrafficLabels,
    requests: IntCounter,
    /// By [`Classification`]: success, failure.
    latency: [Histogram; 2],
    /// Responses `200`, not gRPC (a success).
    ok: IntCounter,
    /// Responses `200` with `grpc-status: 0` (a success).
    grpc_ok: IntCounter,
    responses: IntCounterVec,
}

impl TrafficHandles {
    /// Counts a request.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Counts a finished response and records its latency.
    pub fn response(&self, status: u16, grpc: Option<Option<u32>>, latency: std::time::Duration) {
        let class = Classification::of(status, grpc);
        // Counted before observed: `inbound_totals` relies on the order.
        match (status, grpc) {
            (200, None) => self.ok.inc(),
            (200, Some(Some(0))) => self.grpc_ok.inc(),
            _ => response_counter(
                &self.responses,
                &traffic(self.direction, &self.labels),
                status,
                grpc,
            )
            .inc(),
        }
        self.latency[class as usize].observe(latency.as_secs_f64());
    }
}

/// The `sluice_proxy_responses_total` counter for one answer.
fn response_counter(
    responses: &IntCounterVec,
    base: &[&str; 6],
    status: u16,
    grpc: Option<Option<u32>>,
) -> IntCounter {
    let class = Classification::of(status, grpc);
    let status = status.to_string();
    let grpc = match grpc {
        None => String::new(),
        Some(Some(code)) if code <= 16 => code.to_string(),
        Some(_) => "unknown".to_owned(),
    };
    let mut labels = base.to_vec();
    labels.extend([status.as_str(), grpc.as_str(), class.as_str()]);
    responses.with_label_values(&labels)
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
    Success = 0,
    /// 5xx, a gRPC status other than OK, or a stream that broke.
    Failure = 1,
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
        let worker_connections = IntGaugeVec::new(
            Opts::new(
                "sluice_proxy_worker_connections",
                "Accepted connections each worker of the per-core runtime serves now \
                 (SLUICE_PROXY_RUNTIME=per-core only); new connections go to the least loaded.",
            ),
            &["worker"],
        )?;
        registry.register(Box::new(worker_connections.clone()))?;
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
        let refused_connections = counter(
            "sluice_proxy_refused_connections_total",
            "Client connections the proxy closed to protect itself: over the listener's \
             connection limit (reason=limit), not HTTP on a port declared HTTP \
             (reason=not-http), or an HTTP/2 client resetting most of its streams right after \
             opening them (reason=rapid-reset).",
            &["direction", "reason"],
        )?;
        Ok(Metrics {
            handles: Arc::new([HandleCache::default(), HandleCache::default()]),
            refused_connections,
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
            worker_connections,
            snapshot_reloads,
        })
    }

    /// The request metrics of `direction` and `l`, resolved on first use.
    pub fn traffic(&self, direction: Direction, l: &TrafficLabels) -> Arc<TrafficHandles> {
        let cache = &self.handles[direction as usize];
        if let Some(h) = cache.load().get(l) {
            return h.clone();
        }
        let base = traffic(direction, l);
        let latency = |class: Classification| {
            let mut labels = base.to_vec();
            labels.push(class.as_str());
            self.latency.with_label_values(&labels)
        };
        let handles = Arc::new(TrafficHandles {
            direction,
            labels: l.clone(),
            requests: self.requests.with_label_values(&base),
            latency: [
                latency(Classification::Success),
                latency(Classification::Failure),
            ],
            ok: response_counter(&self.responses, &base, 200, None),
            grpc_ok: response_counter(&self.responses, &base, 200, Some(Some(0))),
            responses: self.responses.clone(),
        });
        cache.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(l.clone()).or_insert_with(|| handles.clone());
            map
        });
        handles
    }

    /// Counts a request.
    pub fn request(&self, direction: Direction, l: &TrafficLabels) {
        self.traffic(direction, l).request();
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
        self.traffic(direction, l).response(status, grpc, latency);
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

    /// The connections `worker` of the per-core runtime serves now: the load it is balanced by.
    pub fn worker_connections(&self, worker: usize) -> prometheus::IntGauge {
        self.worker_connections
            .with_label_values(&[worker.to_string().as_str()])
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

    /// Counts a connection closed for not speaking HTTP on a port declared HTTP.
    pub fn not_http(&self, direction: Direction) {
        self.refused_connections
            .with_label_values(&[direction.as_str(), "not-http"])
            .inc();
    }

    /// Counts an HTTP/2 connection closed for resetting most of its streams at once.
    pub fn rapid_reset(&self, direction: Direction) {
        self.refused_connections
            .with_label_values(&[direction.as_str(), "rapid-reset"])
            .inc();
    }

    /// Counts a connection closed because its listener was at its connection limit.
    pub fn over_limit(&self, direction: Direction) {
        self.refused_connections
            .with_label_values(&[direction.as_str(), "limit"])
            .inc();
    }

    /// Counts a failed mesh TLS handshake.
    pub fn tls_failure(&self, direction: Direction) {
        self.tls_failures
            .with_label_values(&[direction.as_str()])
            .inc();
    }

    /// This proxy's inbound golden signals, summed over every label set (callers, routes,
    /// status codes), for traffic reports to the controller. Each proxy fronts one version of
    /// one service, so its inbound responses are exactly that version's traffic.
    ///
    /// Read from the labelled metrics themselves rather than from extra unlabelled counters, so
    /// that the request path pays nothing for it; the cost (one `collect` of two metric
    /// families) is paid here, off the hot path, once per report interval.
    pub fn inbound_totals(&self) -> InboundTotals {
        use prometheus::core::Collector;
        // The histogram first: `response` counts before it observes, so reading the counters
        // second sees at least the histogram's responses. The `max` below covers what memory
        // ordering alone might not.
        let latency = sum_inbound(&self.latency.collect(), |m, into: &mut InboundTotals| {
            let h = m.get_histogram();
            into.observed = into.observed.saturating_add(h.get_sample_count());
            for (i, b) in h.get_bucket().iter().enumerate() {
                match into.latency.get_mut(i) {
                    Some((_, count)) => *count = count.saturating_add(b.cumulative_count()),
                    None => into.latency.push((b.upper_bound(), b.cumulative_count())),
                }
            }
        });
        let mut totals = sum_inbound(&self.responses.collect(), |m, into| {
            // Counters are integers kept exactly (they are `IntCounter`s) until 2^53.
            let n = m.get_counter().get_value() as u64;
            let failed = m
                .get_label()
                .iter()
                .any(|l| l.name() == "classification" && l.value() == "failure");
            into.requests = into.requests.saturating_add(n);
            if failed {
                into.failures = into.failures.saturating_add(n);
            }
        });
        totals.requests = totals.requests.max(latency.observed);
        totals.latency = latency.latency;
        if totals.latency.is_empty() {
            totals.latency = LATENCY_BUCKETS_S.iter().map(|&le| (le, 0)).collect();
        }
        totals
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Inbound responses since the proxy started, summed over every label set (see
/// [`Metrics::inbound_totals`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundTotals {
    /// Responses sent, every classification.
    pub requests: u64,
    /// Of those, failures (see [`Classification`]).
    pub failures: u64,
    /// Cumulative latency buckets `(le seconds, count)`, ascending, without +Inf (its count is
    /// `requests`).
    pub latency: Vec<(f64, u64)>,
    /// Observations in the histogram (its +Inf bucket), to keep `requests` at least as large.
    observed: u64,
}

/// Folds every `direction="inbound"` metric of `families` with `add`.
fn sum_inbound(
    families: &[prometheus::proto::MetricFamily],
    mut add: impl FnMut(&prometheus::proto::Metric, &mut InboundTotals),
) -> InboundTotals {
    let mut totals = InboundTotals::default();
    let inbound = Direction::Inbound.as_str();
    for m in families.iter().flat_map(|f| f.get_metric()) {
        let is_inbound = m
            .get_label()
            .iter()
            .any(|l| l.name() == "direction" && l.value() == inbound);
        if is_inbound {
            add(m, &mut totals);
        }
    }
    totals
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

    #[test]
    fn inbound_totals_sum_every_inbound_label_set_and_nothing_else() {
        use std::time::Duration;
        let m = Metrics::new().expect("metrics");
        let empty = m.inbound_totals();
        assert_eq!((empty.requests, empty.failures), (0, 0));
        assert_eq!(
            empty.latency.len(),
            LATENCY_BUCKETS_S.len(),
            "bounds even before traffic"
        );
        assert!(empty.latency.iter().all(|&(_, n)| n == 0));

        let from = |caller: &str| TrafficLabels {
            src_service: caller.into(),
            dst_service: "payments".into(),
            dst_version: "v2".into(),
            route: "default".into(),
            ..TrafficLabels::default()
        };
        let ms = Duration::from_millis;
        // Two callers, several status codes and a gRPC failure: all one version's traffic.
        m.response(Direction::Inbound, &from("checkout"), 200, None, ms(3));
        m.response(Direction::Inbound, &from("checkout"), 200, None, ms(30));
        m.response(Direction::Inbound, &from("checkout"), 503, None, ms(300));
        m.response(Direction::Inbound, &from("frontend"), 404, None, ms(1));
        m.response(
            Direction::Inbound,
            &from("frontend"),
            200,
            Some(Some(14)),
            ms(3),
        );
        // Outbound calls this workload makes are someone else's traffic.
        m.response(Direction::Outbound, &from("payments"), 500, None, ms(3));
        m.response(Direction::Outbound, &from("payments"), 200, None, ms(3));

        let t = m.inbound_totals();
        assert_eq!(t.requests, 5);
        assert_eq!(t.failures, 2, "the 503 and the gRPC UNAVAILABLE");
        let bounds: Vec<f64> = t.latency.iter().map(|&(le, _)| le).collect();
        assert_eq!(bounds, LATENCY_BUCKETS_S);
        let at = |le: f64| {
            t.latency
                .iter()
                .find(|&&(b, _)| b == le)
                .map(|&(_, n)| n)
                .expect("bucket")
        };
        assert_eq!(at(0.001), 1, "the 1 ms response");
        assert_eq!(at(0.005), 3, "plus the two 3 ms ones");
        assert_eq!(at(0.05), 4, "plus 30 ms");
        assert_eq!(at(0.5), 5, "plus 300 ms");
        assert_eq!(at(10.0), 5);
        assert!(t.latency.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
    }
}
