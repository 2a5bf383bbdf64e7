//! Reporting denials to the controller, for the portal's "recent denials" and pre-filled
//! forms, without ever slowing a request down.
//!
//! The request path does one `try_send` on a bounded channel; when it is full the denial is
//! dropped and counted. A background task folds identical denials into one entry with a count,
//! and sends at most one `ReportDenials` per interval with at most [`MAX_BATCH`] entries
//! (the rest are counted as dropped and the count travels in the report). A controller that is
//! away or does not implement the call yet costs a log line, not memory.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::{Denial as DenialMsg, DenialReport};
use tokio::sync::mpsc;

use std::sync::Arc;

use super::Denial;
use crate::identity::IdentityStore;
use crate::identity::controller::ControllerConn;
use crate::metrics::Metrics;

/// Denials waiting for the background task.
pub const QUEUE: usize = 1024;
/// Distinct denials per report.
pub const MAX_BATCH: usize = 256;

/// The request path's handle: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: Option<mpsc::Sender<DenialMsg>>,
    metrics: Metrics,
}

impl Reporter {
    /// A reporter that only counts (no controller configured).
    pub fn disabled(metrics: Metrics) -> Reporter {
        Reporter { tx: None, metrics }
    }

    /// A reporter sending to `controller` every `interval` with this workload's certificate
    /// from `identity` (the controller accepts only denials of calls to the workload the
    /// certificate names), and the task doing it.
    pub fn spawn(
        controller: ControllerConn,
        identity: Arc<IdentityStore>,
        proxy_id: String,
        interval: Duration,
        metrics: Metrics,
    ) -> Reporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(
            rx,
            controller,
            identity,
            proxy_id,
            interval,
            metrics.clone(),
        ));
        Reporter {
            tx: Some(tx),
            metrics,
        }
    }

    /// Queues a denial, or drops and counts it when the queue is full.
    pub fn report(&self, d: &Denial) {
        let Some(tx) = &self.tx else { return };
        let caller_namespace = d
            .caller_id
            .as_deref()
            .and_then(|id| crate::identity::SpiffeId::parse(id).ok())
            .map(|id| id.namespace)
            .unwrap_or_default();
        let msg = DenialMsg {
            caller: d.caller.rsplit('/').next().unwrap_or(&d.caller).to_owned(),
            caller_namespace,
            service: d.service.clone(),
            namespace: d.namespace.clone(),
            rpc: d.rpc.clone(),
            endpoint: d.endpoint.clone().unwrap_or_default(),
            policies: d.policies.clone(),
            environment: d.environment.clone(),
            verdict: d.verdict.as_str().to_owned(),
            first_seen_unix_ms: unix_ms(SystemTime::now()),
            count: 1,
            request_id: d.request_id.clone(),
        };
        if tx.try_send(msg).is_err() {
            self.metrics.denial_reports_dropped(1);
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What makes two denials "the same" for folding.
type Key = (String, String, String, String, String, String);

fn key(d: &DenialMsg) -> Key {
    (
        d.caller.clone(),
        d.caller_namespace.clone(),
        d.rpc.clone(),
        d.environment.clone(),
        d.verdict.clone(),
        d.policies.join(","),
    )
}

/// Folds `d` into `batch`; returns false (dropped) when the batch is full of other denials.
fn fold(batch: &mut HashMap<Key, DenialMsg>, d: DenialMsg) -> bool {
    let k = key(&d);
    if let Some(e) = batch.get_mut(&k) {
        e.count = e.count.saturating_add(d.count);
        return true;
    }
    if batch.len() >= MAX_BATCH {
        return false;
    }
    batch.insert(k, d);
    true
}

async fn run(
    mut rx: mpsc::Receiver<DenialMsg>,
    controller: ControllerConn,
    identity: Arc<IdentityStore>,
    proxy_id: String,
    interval: Duration,
    metrics: Metrics,
) {
    let mut batch: HashMap<Key, DenialMsg> = HashMap::new();
    let mut dropped: u64 = 0;
    let mut unimplemented_logged = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(d) => if !fold(&mut batch, d) {
                    dropped += 1;
                    metrics.denial_reports_dropped(1);
                },
                None => return,
            },
            _ = tick.tick() => {
                if batch.is_empty() && dropped == 0 {
                    continue;
                }
                let mut denials: Vec<DenialMsg> = batch.drain().map(|(_, d)| d).collect();
                denials.sort_by_key(|d| d.first_seen_unix_ms);
                let n = denials.len();
                let report = DenialReport { proxy_id: proxy_id.clone(), denials, dropped };
                dropped = 0;
                match send(&controller, &identity, report).await {
                    Ok(()) => {
                        metrics.denial_reports_sent(n);
                        tracing::debug!(denials = n, "denials reported");
                    }
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        if !unimplemented_logged {
                            tracing::info!("the controller does not accept denial reports yet; they stay in this proxy's log and metrics");
                            unimplemented_logged = true;
                        }
                        metrics.denial_reports_dropped(n);
                    }
                    Err(status) => {
                        // Dropped rather than kept: a long outage must not grow memory, and the
                        // log and metrics still have every denial.
                        tracing::warn!(%status, denials = n, "could not report denials");
                        metrics.denial_reports_dropped(n);
                    }
                }
            }
        }
    }
}

async fn send(
    controller: &ControllerConn,
    identity: &Arc<IdentityStore>,
    report: DenialReport,
) -> Result<(), tonic::Status> {
    let endpoint = controller
        .endpoint()
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    let channel = controller
        .connect(endpoint, identity)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    MeshClient::new(channel).report_denials(report).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(caller: &str) -> DenialMsg {
        DenialMsg {
            caller: caller.into(),
            rpc: "GET /x".into(),
            count: 1,
            ..DenialMsg::default()
        }
    }

    #[test]
    fn folds_identical_denials_and_bounds_the_batch() {
        let mut batch = HashMap::new();
        assert!(fold(&mut batch, msg("a")));
        assert!(fold(&mut batch, msg("a")));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.values().next().map(|d| d.count), Some(2));
        for i in 0..MAX_BATCH - 1 {
            assert!(fold(&mut batch, msg(&format!("c{i}"))));
        }
        assert!(!fold(&mut batch, msg("overflow")));
        assert!(fold(&mut batch, msg("a")), "known denials still fold");
    }
}
