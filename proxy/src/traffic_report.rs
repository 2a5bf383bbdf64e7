//! Reporting this proxy's inbound golden signals to the controller (`ReportTraffic`), which
//! compares a canary version's with the stable one's.
//!
//! Nothing here touches the request path: a background task reads the totals from the
//! proxy's own [`Metrics`] (see [`Metrics::inbound_totals`]) once per interval and sends them
//! cumulative, so a lost report loses nothing (the next one carries the same and more), and a
//! repeated one doubles nothing. It sends only when the numbers changed since the last
//! successful send, and at least every [`KEEP_ALIVE`] so the controller knows the instance is
//! still there. A controller that is away costs a debug line and a retry next interval.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::{LatencyBucket, TrafficReport, Workload};

use crate::identity::IdentityStore;
use crate::identity::controller::ControllerConn;
use crate::metrics::{InboundTotals, Metrics};

/// The longest the proxy stays silent, even when nothing changed: the controller counts an
/// instance as reporting for a while after each report.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// What the reporter needs to know.
#[derive(Clone, Debug)]
pub struct TrafficReportConfig {
    /// The controller, and how to trust it.
    pub controller: ControllerConn,
    /// The workload this proxy fronts (whose inbound traffic is reported).
    pub workload: Workload,
    /// This proxy process.
    pub proxy_id: String,
    /// How often the totals are checked (and sent if they changed).
    pub interval: Duration,
    /// This workload's certificate, which every report presents (the controller only accepts
    /// reports for the workload it names).
    pub identity: Arc<IdentityStore>,
}

impl TrafficReportConfig {
    /// The reporter's configuration, when there is something to report to: the controller is
    /// the config source and the workload has a version (what canary analysis compares).
    pub fn from_config(
        config: &crate::config::Config,
        identity: Arc<IdentityStore>,
    ) -> Option<TrafficReportConfig> {
        let watch = crate::state::controller::WatchConfig::from_config(config, identity)?;
        if watch.workload.version.is_empty() {
            tracing::info!(
                "no {} set, so no traffic reports to the controller (canary analysis compares versions)",
                crate::config::ENV_SERVICE_VERSION
            );
            return None;
        }
        Some(TrafficReportConfig {
            controller: watch.controller,
            workload: watch.workload,
            proxy_id: watch.proxy_id,
            interval: config.traffic_report_interval,
            identity: watch.identity,
        })
    }
}

/// Starts the reporting task.
pub fn spawn(config: TrafficReportConfig, metrics: Metrics) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(config, metrics))
}

/// A client for the controller on a lazy channel: it connects on first use and reconnects
/// after failures by itself, so one channel serves until the controller refuses it.
async fn controller_client(
    config: &TrafficReportConfig,
) -> Result<MeshClient<tonic::transport::Channel>, crate::identity::certify::CertifyError> {
    let endpoint = config
        .controller
        .endpoint()?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    let channel = config
        .controller
        .connect_lazy(endpoint, &config.identity)
        .await?;
    Ok(MeshClient::new(channel))
}

async fn run(config: TrafficReportConfig, metrics: Metrics) {
    let started_unix_ms = unix_ms(SystemTime::now());
    let mut client = match controller_client(&config).await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(controller = %config.controller.addr, error = %e, "no traffic reports to the controller");
            return;
        }
    };
    let mut sender = Sender::new(KEEP_ALIVE);
    let mut unimplemented_logged = false;
    let mut refused_logged = false;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let totals = metrics.inbound_totals();
        let now = Instant::now();
        if !sender.due(&totals, now) {
            continue;
        }
        let report = report(&config, started_unix_ms, &totals);
        match client.report_traffic(report).await.map(drop) {
            Ok(()) => {
                refused_logged = false;
                tracing::trace!(requests = totals.requests, "traffic reported");
                sender.sent(totals, now);
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                if !unimplemented_logged {
                    tracing::info!(
                        "the controller does not accept traffic reports yet; this proxy's metrics still have them"
                    );
                    unimplemented_logged = true;
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                // Once per refusal streak: a missing or wrong certificate does not fix itself
                // between intervals (a renewal may), so keep trying quietly.
                if !refused_logged {
                    tracing::warn!(%status, "the controller refused this proxy's traffic reports; canary analysis will not see them");
                    refused_logged = true;
                }
                // The controller checks the certificate of the connection, which a channel
                // keeps: one made before this proxy had its certificate (or with one since
                // renewed) is refused for good. A new one shows the certificate in force.
                if let Ok(fresh) = controller_client(&config).await {
                    client = fresh;
                }
            }
            // Retried next interval with fresher numbers: they are cumulative, nothing is lost.
            Err(status) => tracing::debug!(%status, "could not report traffic; retrying"),
        }
    }
}

fn report(config: &TrafficReportConfig, started_unix_ms: i64, t: &InboundTotals) -> TrafficReport {
    TrafficReport {
        proxy_id: config.proxy_id.clone(),
        workload: Some(config.workload.clone()),
        proxy_started_unix_ms: started_unix_ms,
        requests: t.requests,
        failures: t.failures,
        latency: t
            .latency
            .iter()
            .map(|&(le_seconds, count)| LatencyBucket { le_seconds, count })
            .collect(),
        sent_unix_ms: unix_ms(SystemTime::now()),
    }
}

/// Decides when a report is worth sending: when the totals differ from the last ones the
/// controller accepted, or when the keep-alive is due.
#[derive(Debug)]
struct Sender {
    keep_alive: Duration,
    last: Option<(InboundTotals, Instant)>,
}

impl Sender {
    fn new(keep_alive: Duration) -> Sender {
        Sender {
            keep_alive,
            last: None,
        }
    }

    fn due(&self, totals: &InboundTotals, now: Instant) -> bool {
        match &self.last {
            None => true,
            Some((last, at)) => last != totals || now.duration_since(*at) >= self.keep_alive,
        }
    }

    fn sent(&mut self, totals: InboundTotals, now: Instant) {
        self.last = Some((totals, now));
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;
    use crate::metrics::TrafficLabels;

    #[test]
    fn sends_on_change_and_as_a_keep_alive_only() {
        let metrics = Metrics::new().expect("metrics");
        let mut sender = Sender::new(KEEP_ALIVE);
        let t0 = Instant::now();
        let idle = metrics.inbound_totals();
        assert!(
            sender.due(&idle, t0),
            "the first report goes out even with no traffic"
        );
        sender.sent(idle.clone(), t0);
        assert!(
            !sender.due(&idle, t0 + Duration::from_secs(1)),
            "nothing changed"
        );

        let labels = TrafficLabels::default();
        metrics.response(
            Direction::Inbound,
            &labels,
            200,
            None,
            Duration::from_millis(2),
        );
        let busy = metrics.inbound_totals();
        assert!(sender.due(&busy, t0 + Duration::from_secs(2)), "a response");
        // A failed send does not call `sent`, so the change is still due next time.
        assert!(sender.due(&busy, t0 + Duration::from_secs(3)));
        sender.sent(busy.clone(), t0 + Duration::from_secs(3));
        assert!(!sender.due(&busy, t0 + Duration::from_secs(4)));
        assert!(
            sender.due(&busy, t0 + Duration::from_secs(3) + KEEP_ALIVE),
            "keep-alive"
        );
    }

    #[test]
    fn the_report_carries_the_workload_and_cumulative_buckets() {
        let metrics = Metrics::new().expect("metrics");
        metrics.response(
            Direction::Inbound,
            &TrafficLabels::default(),
            502,
            None,
            Duration::from_millis(4),
        );
        let config = TrafficReportConfig {
            controller: ControllerConn {
                addr: "https://127.0.0.1:1".into(),
                ca: "/nonexistent/ca.pem".into(),
            },
            workload: Workload {
                namespace: "default".into(),
                service: "payments".into(),
                version: "v2".into(),
                environment: "stable".into(),
                instance: "payments-1".into(),
                role: String::new(),
            },
            proxy_id: "p1".into(),
            interval: Duration::from_secs(1),
            identity: Arc::new(IdentityStore::new()),
        };
        let r = report(&config, 1_000, &metrics.inbound_totals());
        assert_eq!((r.requests, r.failures), (1, 1));
        assert_eq!(r.proxy_started_unix_ms, 1_000);
        assert!(r.sent_unix_ms > 0);
        assert_eq!(r.workload.as_ref().map(|w| w.version.as_str()), Some("v2"));
        assert!(
            r.latency.iter().all(|b| b.le_seconds.is_finite()),
            "no +Inf"
        );
        assert!(
            r.latency
                .windows(2)
                .all(|w| w[0].le_seconds < w[1].le_seconds)
        );
        assert_eq!(r.latency.last().map(|b| b.count), Some(1));
    }
}
