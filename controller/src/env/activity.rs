//! Which environments served requests, from the proxies' traffic reports: the input of the
//! idle clocks.
//!
//! Reports are cumulative per proxy process. What an environment's copies served since the
//! last report of the same process is new; so is everything a process reports that started
//! after this controller did. A process that was already running when the controller started
//! is taken as a baseline on its first report and counts only what it adds from then on: its
//! total includes requests from before the restart whose time is unknown, and counting them
//! would reset an idle clock that the store kept. (Requests a copy served while the controller
//! was down are therefore not seen; its clock runs on from the last request seen before.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::rollout::traffic::InstanceReport;

/// Proxies remembered at most: more (a leak, or an attack through reports) start over.
const MAX_PROXIES: usize = 10_000;

/// New requests per environment since the last [`Activity::drain`].
#[derive(Debug)]
pub struct Activity {
    /// When this controller started (Unix ms).
    started_unix_ms: i64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// proxy id → (process start, last requests).
    proxies: HashMap<String, (i64, u64)>,
    /// environment → (new requests, when the last were reported).
    pending: BTreeMap<String, (u64, i64)>,
}

impl Activity {
    /// A tracker for a controller that started at `started_unix_ms`.
    pub fn new(started_unix_ms: i64) -> Self {
        Activity {
            started_unix_ms,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Notes a traffic report received at `now_ms`. Stable traffic is ignored.
    pub fn observe(&self, report: &InstanceReport, now_ms: i64) {
        if report.key.environment == crate::server::register::DEFAULT_ENVIRONMENT {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.proxies.len() >= MAX_PROXIES && !inner.proxies.contains_key(&report.proxy_id) {
            inner.proxies.clear();
        }
        let previous = inner.proxies.insert(
            report.proxy_id.clone(),
            (report.proxy_started_unix_ms, report.requests),
        );
        let new = match previous {
            Some((started, requests)) if started == report.proxy_started_unix_ms => {
                report.requests.saturating_sub(requests)
            }
            // A process this controller saw start (or a replacement of one it knew).
            Some(_) => report.requests,
            None if report.proxy_started_unix_ms >= self.started_unix_ms => report.requests,
            None => 0,
        };
        if new > 0 {
            let e = inner
                .pending
                .entry(report.key.environment.clone())
                .or_default();
            e.0 = e.0.saturating_add(new);
            e.1 = e.1.max(now_ms);
        }
    }

    /// The new requests per environment since the last call, and when they were reported.
    pub fn drain(&self) -> BTreeMap<String, (u64, i64)> {
        std::mem::take(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()).pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::traffic::VersionKey;

    fn report(env: &str, proxy: &str, started: i64, requests: u64) -> InstanceReport {
        InstanceReport {
            key: VersionKey {
                namespace: "default".into(),
                service: "checkout".into(),
                version: "v1".into(),
                environment: env.into(),
                role: String::new(),
            },
            proxy_id: proxy.into(),
            proxy_started_unix_ms: started,
            sent_unix_ms: 0,
            requests,
            failures: 0,
            latency: Vec::new(),
        }
    }

    #[test]
    fn only_requests_served_since_the_last_report_count() {
        let a = Activity::new(1_000);
        // A proxy older than the controller: its first report is the baseline.
        a.observe(&report("pr-1", "old", 500, 40), 2_000);
        assert!(a.drain().is_empty());
        a.observe(&report("pr-1", "old", 500, 43), 3_000);
        // A proxy that started after the controller: all of it is new.
        a.observe(&report("pr-1", "new", 1_500, 2), 3_500);
        a.observe(&report("pr-2", "other", 1_600, 0), 3_600);
        // Stable traffic is not an environment's.
        a.observe(&report("stable", "s", 1_500, 9), 3_700);
        assert_eq!(a.drain(), BTreeMap::from([("pr-1".into(), (5, 3_500))]));
        // Nothing new; then a restarted process counts from zero.
        a.observe(&report("pr-1", "new", 1_500, 2), 4_000);
        assert!(a.drain().is_empty());
        a.observe(&report("pr-1", "new", 4_100, 1), 4_200);
        assert_eq!(a.drain(), BTreeMap::from([("pr-1".into(), (1, 4_200))]));
    }
}
