//! The rollout engine: walks a CanaryPolicy's steps, sets the weights proxies enforce, feeds
//! the [judge](super::judge) every analysis interval, and promotes, rolls back, pauses or
//! waits for a person — then tells the teams.
//!
//! # State and restarts
//!
//! Every rollout lives in the store ([`super::store`]); the engine keeps only what it can
//! rebuild. Each analysis interval's increments are stored as a [`Point`] together with the
//! rollout, and after a restart the judge is rebuilt by replaying those points, so it reaches
//! exactly the evidence it had. A decision (promote, roll back, next step) is one store
//! transaction with its event, so a controller killed mid-rollout resumes at the same step,
//! never promotes twice and never loses a decision. Notifications carry stable ids
//! (`rollout/<id>/promoted`) and a store-backed delivery log, so re-announcing the last
//! decision after a restart (done for rollouts that ended in the last ten minutes) sends
//! nothing twice and closes the window between "decided" and "notified".
//!
//! # Weights
//!
//! The Route files stay as written. The engine hands the control plane
//! [`RouteOverrides`]: during a rollout the service's default split becomes
//! `baseline 100-w / canary w`; after a promotion, `canary 100` for good (the promoted version
//! is kept in the store as the service's stable version). Route rules (e.g. a preview header)
//! keep working.
//!
//! # Metrics
//!
//! [`MetricSource`] gives cumulative counts per (service, version); the engine diffs them per
//! interval. The default source is what proxies report (`ReportTraffic`); a rollout whose
//! policy names `analysis.provider.prometheus` reads a [`PrometheusSource`] instead. The
//! canary and the baseline are measured over the same interval.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_policy::resources::{CanaryPolicySpec, FailureAction, NotifySettings};
use sluice_policy::validate::ObjectRef;

use super::custom;
use super::judge::{Counts, Judge, Verdict};
use super::model::{
    Action, Baseline, BaselineKind, Event, Phase, Point, Rollout, StartRequest, StepPlan,
};
use super::prometheus::PrometheusSource;
use super::store;
use crate::notify::rollout::{
    RollbackReason, RolloutContext, RolloutEvent, rollout_notification, should_send,
};
use crate::notify::{DeliveryConfig, Notifier};
use crate::server::state::{ControlPlane, RouteOverrides};
use crate::store::{StoreError, unix_ms};

mod announce;
pub use announce::chart;
use announce::*;
mod plan;
pub use plan::policy_stable_version;
use plan::*;

mod baseline;
use baseline::*;
mod source;
pub use source::{MetricSource, ProxyTraffic, TotalsFuture};

/// How often the engine looks at its rollouts.
pub const TICK: Duration = Duration::from_millis(250);
/// Defaults the CanaryPolicy documents.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_STEP: Duration = Duration::from_secs(60);
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// Canary log lines quoted in a rollback message.
const LOG_LINES: usize = 20;

/// Why a rollout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No such rollout or service.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong (unknown service, undeclared version, no CanaryPolicy).
    #[error("{0}")]
    Invalid(String),
    /// The rollout's phase does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Base URL of the rollout pages and charts in messages, e.g. `http://127.0.0.1:7070`.
    pub public_url: String,
    /// A directory holding each workload instance's log as `<instance>.log` (the local
    /// runner writes them), for the canary's last lines in a rollback message.
    pub workload_logs: Option<PathBuf>,
    /// Webhook delivery settings; `None` sends nothing.
    pub delivery: Option<DeliveryConfig>,
    /// Whether the runtime starts a fresh copy of the stable version beside each canary
    /// (`sluice up` does), so `analysis.baseline: copy` can be honoured.
    pub baseline_copies: bool,
}

/// What the engine keeps in memory per active rollout (rebuilt from the store on start).
struct Runtime {
    judge: Judge,
    /// Cumulative totals at the last look (canary, baseline, and with a baseline copy the
    /// long-running stable instances); `None` until the first look, which only takes the
    /// reference.
    last: Option<(Counts, Counts, Option<Counts>)>,
    last_look_ms: i64,
    step_of_last_point: Option<usize>,
    /// Custom-query checks: consecutive violating looks by check name.
    custom_violations: HashMap<String, u32>,
}

/// What a tick fetched for one rollout before taking the lock: cumulative counts of canary
/// and baseline, and the custom-query readings (if the rollout has custom checks).
type Fetched = (
    Result<Counts, String>,
    Result<(Counts, Option<Counts>), String>,
    Option<Result<Vec<custom::Reading>, String>>,
);

/// The engine. Shared by the ticking task and the admin API.
pub struct Engine {
    plane: Arc<ControlPlane>,
    metrics: Arc<dyn MetricSource>,
    notifier: Option<Notifier>,
    config: EngineConfig,
    runtime: Mutex<HashMap<String, Runtime>>,
    /// One Prometheus source per `analysis.provider.prometheus.address`, so rollouts sharing
    /// a Prometheus share its connection pool.
    prometheus: Mutex<HashMap<String, Arc<PrometheusSource>>>,
    /// Serialises changes (the tick and API actions) so two cannot interleave.
    changing: tokio::sync::Mutex<()>,
    /// Per pending rollout waiting for its baseline copy: since when (Unix ms).
    copy_wait_started: Mutex<HashMap<String, i64>>,
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn elapsed_ms(since: i64, now: i64) -> u64 {
    u64::try_from(now.saturating_sub(since)).unwrap_or(0)
}

impl Engine {
    /// An engine over `plane`'s store, rebuilding the judges of active rollouts and applying
    /// their weights. Must run inside a tokio runtime (the notifier spawns its tasks).
    pub fn start(
        plane: Arc<ControlPlane>,
        metrics: Arc<dyn MetricSource>,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, RolloutError> {
        let notifier = match &config.delivery {
            Some(delivery) => {
                let log = Arc::new(store::StoreDeliveryLog(plane.store().clone()));
                match Notifier::start(delivery.clone(), log) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::error!(error = %e, "notifications are off: cannot start the notifier");
                        None
                    }
                }
            }
            None => None,
        };
        let engine = Arc::new(Engine {
            plane,
            metrics,
            notifier,
            config,
            runtime: Mutex::new(HashMap::new()),
            prometheus: Mutex::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
            copy_wait_started: Mutex::new(HashMap::new()),
        });
        let st = engine.plane.store();
        let now = now_ms();
        for r in store::list(st, None)? {
            if r.phase.is_active() {
                let points = store::points(st, &r.id)?;
                engine.rebuild(&r, &points);
                tracing::info!(rollout = r.id, phase = %r.phase, step = r.step + 1, points = points.len(), "resuming rollout");
            } else if r.finished_unix_ms.is_some_and(|t| now - t < 600_000) {
                // The decision is stored; make sure its message went out (deduplicated).
                engine.announce_final(&r);
            }
        }
        engine.apply_weights()?;
        Ok(engine)
    }

    /// Ticks forever (spawn it).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "rollout engine tick failed");
            }
        }
    }

    fn lock_runtime(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runtime>> {
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where `r`'s counts come from: `analysis.provider.prometheus` if set (one cached source
    /// per address), else the engine's default source.
    fn metric_source(&self, r: &Rollout) -> Arc<dyn MetricSource> {
        match self.prometheus_source(r) {
            Some(p) => p,
            None => self.metrics.clone(),
        }
    }

    /// The rollout's Prometheus, if its policy names one (one client per address).
    fn prometheus_source(&self, r: &Rollout) -> Option<Arc<PrometheusSource>> {
        let prometheus = r.analysis.provider.prometheus.as_ref()?;
        let mut sources = self
            .prometheus
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(
            sources
                .entry(prometheus.address.clone())
                .or_insert_with(|| Arc::new(PrometheusSource::new(&prometheus.address)))
                .clone(),
        )
    }

    /// Says, once per rollout and controller run, that custom `query` checks are not evaluated:
    /// the judge's sequential tests need counts, not one number, so such a check is judged on
    /// the default counts, and the operator must know that rather than trust the query.
    fn warn_unevaluated_queries(r: &Rollout) {
        if r.analysis.provider.prometheus.is_some() {
            return; // evaluated by `custom`
        }
        for check in r.analysis.metrics.iter().filter(|m| m.query.is_some()) {
            tracing::warn!(
                rollout = r.id,
                check = check.name,
                "custom `query` needs the Prometheus provider: without it this check is judged \
                 on the proxies' request, failure and latency counts (see docs/rollouts.md)"
            );
        }
    }

    fn rebuild(&self, r: &Rollout, points: &[Point]) {
        // Runs once per rollout per controller run: when it starts, or when it resumes.
        Self::warn_unevaluated_queries(r);
        let mut judge = Judge::new(&custom::judged_analysis(&r.analysis));
        let mut step = None;
        for p in points {
            if step != Some(p.step) {
                if step.is_some() {
                    judge.begin_step();
                }
                step = Some(p.step);
            }
            judge.observe_with_reference(
                &p.canary,
                &p.baseline,
                p.reference.as_ref(),
                Duration::from_millis(r.interval_ms),
                judged_weight(p.weight, p.baseline_weight),
            );
        }
        // A step change after the last point (the engine advanced, then stopped).
        if step.is_some_and(|s| s != r.step) {
            judge.begin_step();
            step = Some(r.step);
        }
        self.lock_runtime().insert(
            r.id.clone(),
            Runtime {
                judge,
                last: None,
                last_look_ms: now_ms(),
                step_of_last_point: step,
                custom_violations: HashMap::new(),
            },
        );
    }

    /// Starts a rollout of `req.version` (superseding an active one of the same service).
    pub async fn start_rollout(&self, req: StartRequest) -> Result<Rollout, RolloutError> {
        let _changing = self.changing.lock().await;
        let policy = self.plane.policy();
        let key = ObjectRef::new(req.namespace.clone(), req.service.clone());
        let Some(service) = policy.set.services.get(&key) else {
            return Err(RolloutError::Invalid(format!(
                "no MeshService `{}` in namespace `{}`",
                req.service, req.namespace
            )));
        };
        let declared = &service.source.doc.spec.versions;
        if !declared.is_empty() && !declared.contains(&req.version) {
            return Err(RolloutError::Invalid(format!(
                "`{}` declares versions [{}]; add `{}` to its spec.versions ({}) first",
                req.service,
                declared.join(", "),
                req.version,
                service.source.origin.file.display()
            )));
        }
        let Some(canary) = policy.set.canaries.get(&key) else {
            return Err(RolloutError::Invalid(format!(
                "`{}` has no CanaryPolicy: add one to say how it rolls out (see docs/rollouts.md)",
                req.service
            )));
        };
        let spec = &canary.doc.spec;
        let st = self.plane.store().clone();
        let stable = self.stable_version(&req.namespace, &req.service)?;
        if stable.as_deref() == Some(req.version.as_str()) {
            return Err(RolloutError::Conflict(format!(
                "{} is already the stable version of {}",
                req.version, req.service
            )));
        }
        let Some(baseline) = stable else {
            return Err(RolloutError::Invalid(format!(
                "`{}` has no stable version to compare with: declare spec.versions or a Route",
                req.service
            )));
        };
        let now = now_ms();
        let existing = store::list(&st, Some((&req.namespace, &req.service)))?;
        if let Some(active) = existing.iter().find(|r| r.phase.is_active()) {
            if active.canary_version == req.version {
                return Err(RolloutError::Conflict(format!(
                    "rollout {} is already rolling out {} of {} ({})",
                    active.id, req.version, req.service, active.phase
                )));
            }
            let mut old = active.clone();
            old.phase = Phase::Superseded;
            old.weight = 0;
            old.finished_unix_ms = Some(now);
            old.updated_unix_ms = now;
            old.decision = format!("superseded by a rollout of {}", req.version);
            let event = event(now, "superseded", &old.decision);
            store::save(&st, &old, Some(&event))?;
            self.lock_runtime().remove(&old.id);
        }
        let rollout = Rollout {
            id: new_id(now),
            namespace: req.namespace.clone(),
            service: req.service.clone(),
            baseline_version: baseline,
            canary_version: req.version.clone(),
            phase: Phase::Pending,
            step: 0,
            weight: 0,
            steps: plan(spec),
            interval_ms: ms(spec.analysis.interval.map_or(DEFAULT_INTERVAL, |d| d.0)),
            progress_deadline_ms: ms(spec.progress_deadline.map_or(DEFAULT_DEADLINE, |d| d.0)),
            policy: canary.doc.metadata.name.clone(),
            analysis: spec.analysis.clone(),
            on_failure: spec.on_failure,
            requested_by: req.requested_by.unwrap_or_else(|| "api".to_owned()),
            created_unix_ms: now,
            updated_unix_ms: now,
            step_started_unix_ms: now,
            first_traffic_unix_ms: None,
            finished_unix_ms: None,
            decision: format!("waiting for {} of {} to start", req.version, req.service),
            evidence: Vec::new(),
            failed_check: None,
            failed_checks: Vec::new(),
            baseline: Baseline::default(),
            canary_requests: 0,
            baseline_requests: 0,
        };
        let mut rollout = rollout;
        rollout.baseline = self.initial_baseline(&rollout);
        let message = format!(
            "rollout of {} {} → {} started ({} steps: {})",
            rollout.service,
            rollout.baseline_version,
            rollout.canary_version,
            rollout.steps.len(),
            rollout
                .steps
                .iter()
                .map(|s| format!("{}%", s.weight))
                .collect::<Vec<_>>()
                .join(", ")
        );
        store::save(&st, &rollout, Some(&event(now, "started", &message)))?;
        self.rebuild(&rollout, &[]);
        tracing::info!(rollout = rollout.id, "{message}");
        self.apply_weights()?;
        self.notify(
            &rollout,
            &RolloutEvent::Started {
                steps: u32::try_from(rollout.steps.len()).unwrap_or(u32::MAX),
            },
        );
        Ok(rollout)
    }

    /// The newest rollout named by `id`, or of the service named `id`.
    pub fn find(&self, namespace: &str, id: &str) -> Result<Rollout, RolloutError> {
        let st = self.plane.store();
        if let Some(r) = store::get(st, id)? {
            return Ok(r);
        }
        store::list(st, Some((namespace, id)))?
            .into_iter()
            .next()
            .ok_or_else(|| {
                RolloutError::NotFound(format!(
                    "no rollout `{id}` and no rollout of a service `{id}`"
                ))
            })
    }

    /// A person's action on a rollout.
    pub async fn act(
        &self,
        namespace: &str,
        id: &str,
        action: Action,
    ) -> Result<Rollout, RolloutError> {
        let _changing = self.changing.lock().await;
        let mut r = self.find(namespace, id)?;
        if !r.phase.is_active() {
            return Err(RolloutError::Conflict(format!(
                "rollout {} is {}; nothing to {}",
                r.id,
                r.phase,
                action.as_str()
            )));
        }
        let now = now_ms();
        match action {
            Action::Pause => {
                if r.phase == Phase::Paused {
                    return Ok(r);
                }
                r.phase = Phase::Paused;
                r.decision = format!("paused at step {} ({}%) by a person", r.step + 1, r.weight);
                self.save(&mut r, now, "paused")?;
            }
            Action::Resume => match r.phase {
                Phase::Paused => {
                    // Analysis continues from fresh totals; the judge keeps its evidence.
                    r.phase = if r.first_traffic_unix_ms.is_none() && r.weight == 0 {
                        Phase::Pending
                    } else {
                        Phase::Progressing
                    };
                    r.step_started_unix_ms = now;
                    r.decision = format!("resumed at step {} ({}%)", r.step + 1, r.weight);
                    if let Some(rt) = self.lock_runtime().get_mut(&r.id) {
                        rt.last = None;
                    }
                    self.save(&mut r, now, "resumed")?;
                }
                Phase::WaitingConfirmation => {
                    if let Some(rt) = self.lock_runtime().get_mut(&r.id) {
                        rt.last = None;
                    }
                    self.advance(&mut r, now, true)?;
                }
                _ => {}
            },
            Action::Promote => {
                let reason = format!(
                    "promoted by a person at step {} ({}%), skipping the remaining steps",
                    r.step + 1,
                    r.weight
                );
                self.promote(&mut r, now, reason)?;
            }
            Action::Abort => {
                r.phase = Phase::Aborted;
                r.weight = 0;
                r.finished_unix_ms = Some(now);
                r.decision = format!(
                    "aborted by a person at step {}: all traffic back to {}",
                    r.step + 1,
                    r.baseline_version
                );
                self.save(&mut r, now, "aborted")?;
                self.lock_runtime().remove(&r.id);
            }
        }
        self.apply_weights()?;
        Ok(r)
    }

    /// One pass over the active rollouts.
    pub async fn tick(&self) -> Result<(), RolloutError> {
        // Metrics first, without the lock: a slow Prometheus must not hold up a person's
        // pause or abort. Each rollout is re-read under the lock, so an action taken in the
        // meantime wins and the fetched totals are dropped.
        let mut fetched = HashMap::new();
        for r in store::active(self.plane.store())? {
            // A canary waiting for confirmation still serves its weight: it is still judged.
            if !matches!(r.phase, Phase::Progressing | Phase::WaitingConfirmation) {
                continue;
            }
            // The policy's Prometheus if it names one, else the proxies' reports.
            let metrics = self.metric_source(&r);
            let (ns, svc) = (r.namespace.as_str(), r.service.as_str());
            let canary = metrics.totals(ns, svc, &r.canary_version).await;
            let baseline = if r.baseline.kind == BaselineKind::Copy {
                // The copy's counts, and the long-running instances' as the latency check's
                // reference until the copy has enough of its own.
                let copy = metrics
                    .role_totals(ns, svc, &r.baseline_version, BASELINE_ROLE)
                    .await;
                let stable = metrics.totals(ns, svc, &r.baseline_version).await;
                copy.and_then(|c| stable.map(|s| (c, Some(s))))
            } else {
                metrics
                    .totals(ns, svc, &r.baseline_version)
                    .await
                    .map(|b| (b, None))
            };
            let checks = custom::custom_checks(&r.analysis);
            let readings = match self.prometheus_source(&r) {
                Some(p) if !checks.is_empty() => {
                    let target = custom::Target {
                        namespace: ns,
                        service: svc,
                        canary: &r.canary_version,
                        baseline: &r.baseline_version,
                        interval: Duration::from_millis(r.interval_ms),
                    };
                    Some(custom::read(&p, target, &checks).await)
                }
                _ => None,
            };
            let entry: Fetched = (canary, baseline, readings);
            fetched.insert(r.id.clone(), entry);
        }
        let _changing = self.changing.lock().await;
        let st = self.plane.store().clone();
        let mut changed = false;
        for mut r in store::active(&st)? {
            let now = now_ms();
            let before = (r.phase, r.step, r.weight);
            match r.phase {
                Phase::Pending => self.pending(&mut r, now)?,
                Phase::Progressing | Phase::WaitingConfirmation => match fetched.remove(&r.id) {
                    Some((Ok(c), Ok(b), readings)) => {
                        self.progressing(&mut r, now, c, b, readings)?;
                    }
                    Some((Err(e), _, _) | (_, Err(e), _)) => {
                        // No data is inconclusive: the deadline still applies.
                        tracing::warn!(rollout = r.id, error = %e, "no metrics this interval");
                    }
                    // It became progressing after the fetch (resumed): next tick.
                    None => {}
                },
                _ => {}
            }
            changed |= before != (r.phase, r.step, r.weight);
        }
        if changed {
            self.apply_weights()?;
        }
        Ok(())
    }

    fn pending(&self, r: &mut Rollout, now: i64) -> Result<(), RolloutError> {
        let ready = self
            .plane
            .instances(&r.namespace, &r.service, &r.canary_version)
            .len();
        // Shifting with no instance of the version traffic comes from would hand its share to
        // the canary as well: a proxy gives a version without instances' weight to the others.
        let stable = self
            .plane
            .instances(&r.namespace, &r.service, &r.baseline_version)
            .len();
        if ready > 0 && stable == 0 {
            let wanted = format!(
                "waiting for an instance of {} (the version traffic comes from) to register",
                r.baseline_version
            );
            if elapsed_ms(r.created_unix_ms, now) > r.progress_deadline_ms {
                self.fail(
                    r,
                    now,
                    format!(
                        "{} of {} had no instance within the progress deadline ({}), so no \
                         traffic was shifted to {}; is the stable version running? (`sluice \
                         status` lists registrations)",
                        r.baseline_version,
                        r.service,
                        humantime::format_duration(Duration::from_millis(r.progress_deadline_ms)),
                        r.canary_version
                    ),
                )?;
            } else if r.decision != wanted {
                r.decision = wanted;
                r.updated_unix_ms = now;
                store::save(self.plane.store(), r, None)?;
            }
        } else if ready > 0 && !self.baseline_settled(r, now) {
            let wanted = format!(
                "waiting for a fresh copy of {} to start beside {}",
                r.baseline_version, r.canary_version
            );
            if r.decision != wanted {
                r.decision = wanted;
                r.updated_unix_ms = now;
                store::save(self.plane.store(), r, None)?;
            }
        } else if ready > 0 {
            r.phase = Phase::Progressing;
            r.step = 0;
            r.weight = r.steps.first().map_or(0, |s| s.weight);
            r.step_started_unix_ms = now;
            r.decision = format!(
                "step 1 of {}: {}% of traffic to {}",
                r.steps.len(),
                r.weight,
                r.canary_version
            );
            if let Some(rt) = self.lock_runtime().get_mut(&r.id) {
                rt.last = None;
                rt.last_look_ms = now;
            }
            self.save(r, now, "step")?;
            self.notify(
                r,
                &RolloutEvent::Step {
                    step: 1,
                    weight: r.weight,
                },
            );
        } else if elapsed_ms(r.created_unix_ms, now) > r.progress_deadline_ms {
            self.fail(
                r,
                now,
                format!(
                    "{} of {} had no instance within the progress deadline ({}); is it starting? \
                     (`sluice status` lists registrations)",
                    r.canary_version,
                    r.service,
                    humantime::format_duration(Duration::from_millis(r.progress_deadline_ms))
                ),
            )?;
        }
        Ok(())
    }

    fn progressing(
        &self,
        r: &mut Rollout,
        now: i64,
        canary: Counts,
        (baseline, reference): (Counts, Option<Counts>),
        readings: Option<Result<Vec<custom::Reading>, String>>,
    ) -> Result<(), RolloutError> {
        let verdict = {
            let mut runtime = self.lock_runtime();
            let rt = runtime.entry(r.id.clone()).or_insert_with(|| Runtime {
                judge: Judge::new(&custom::judged_analysis(&r.analysis)),
                last: None,
                last_look_ms: now,
                step_of_last_point: None,
                custom_violations: HashMap::new(),
            });
            let Some((last_c, last_b, last_ref)) = rt.last.take() else {
                rt.last = Some((canary, baseline, reference));
                rt.last_look_ms = now;
                return Ok(());
            };
            if elapsed_ms(rt.last_look_ms, now) < r.interval_ms {
                rt.last = Some((last_c, last_b, last_ref));
                return Ok(());
            }
            let dc = canary.delta(&last_c);
            let db = baseline.delta(&last_b);
            let dref = match (&reference, &last_ref) {
                (Some(now), Some(then)) => Some(now.delta(then)),
                _ => None,
            };
            rt.last = Some((canary, baseline, reference));
            rt.last_look_ms = now;
            if rt.step_of_last_point.is_some_and(|s| s != r.step) {
                rt.judge.begin_step();
            }
            rt.step_of_last_point = Some(r.step);
            let baseline_weight = baseline_copy_weight(r);
            rt.judge.observe_with_reference(
                &dc,
                &db,
                dref.as_ref(),
                Duration::from_millis(r.interval_ms),
                judged_weight(r.weight, baseline_weight),
            );
            r.canary_requests += dc.requests;
            r.baseline_requests += db.requests;
            if dc.requests > 0 && r.first_traffic_unix_ms.is_none() {
                r.first_traffic_unix_ms = Some(now);
            }
            r.evidence = rt
                .judge
                .evidence()
                .iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect();
            let point = Point {
                at_unix_ms: now,
                step: r.step,
                weight: r.weight,
                canary: dc,
                baseline: db,
                baseline_weight,
                reference: dref,
            };
            // Custom-query checks: one comparison per look, failing after consecutive
            // violations (see `custom`).
            let mut custom_failure = None;
            match readings {
                Some(Ok(readings)) => {
                    for check in custom::custom_checks(&r.analysis) {
                        let Some(reading) = readings.iter().find(|x| x.name == check.name) else {
                            continue;
                        };
                        let before = rt.custom_violations.get(&check.name).copied().unwrap_or(0);
                        if let Some((violated, evidence)) = custom::judge(check, reading, before) {
                            rt.custom_violations
                                .insert(check.name.clone(), if violated { before + 1 } else { 0 });
                            if let Ok(v) = serde_json::to_value(&evidence) {
                                r.evidence.push(v);
                            }
                            if evidence.failed && custom_failure.is_none() {
                                custom_failure = Some(evidence);
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(rollout = r.id, error = %e, "custom checks: no value this look");
                }
                None => {}
            }
            r.updated_unix_ms = now;
            store::save_point(self.plane.store(), r, &point)?;
            let mut failures: Vec<_> = rt.judge.failures().to_vec();
            failures.extend(custom_failure.iter().cloned());
            r.failed_checks = failures
                .iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect();
            match (rt.judge.verdict(), custom_failure) {
                (Verdict::Fail(e), _) => Verdict::Fail(e),
                (_, Some(e)) => Verdict::Fail(Box::new(e)),
                (v, None) => v,
            }
        };
        // Waiting for a person, only a failure changes anything: the canary keeps its weight
        // (and is rolled back if it turns bad) until someone resumes or promotes.
        if r.phase == Phase::WaitingConfirmation && !matches!(verdict, Verdict::Fail(_)) {
            return Ok(());
        }
        let step = r.current_step().cloned();
        let step_done = step
            .as_ref()
            .is_some_and(|s| elapsed_ms(r.step_started_unix_ms, now) >= s.duration_ms);
        match verdict {
            Verdict::Fail(evidence) => {
                let explanation = failed_explanations(r, &evidence);
                r.failed_check = serde_json::to_value(&*evidence).ok();
                match r.on_failure {
                    FailureAction::Rollback => {
                        let logs = self.canary_logs(r);
                        r.phase = Phase::RolledBack;
                        let at_weight = r.weight;
                        r.weight = 0;
                        r.finished_unix_ms = Some(now);
                        r.decision = format!(
                            "rolled back at step {} ({at_weight}%): {explanation}",
                            r.step + 1
                        );
                        self.save(r, now, "rolled-back")?;
                        self.lock_runtime().remove(&r.id);
                        let reason = rollback_reason(r, at_weight, logs);
                        self.notify(r, &RolloutEvent::RolledBack(Box::new(reason)));
                    }
                    FailureAction::Pause => {
                        r.phase = Phase::Paused;
                        r.decision = format!(
                            "paused at step {} ({}%) by the analysis (onFailure: pause): {explanation}",
                            r.step + 1,
                            r.weight
                        );
                        self.save(r, now, "paused")?;
                    }
                }
            }
            Verdict::Pass if step_done => self.advance(r, now, false)?,
            Verdict::Inconclusive(pending) if step_done => {
                if elapsed_ms(r.step_started_unix_ms, now) > r.progress_deadline_ms {
                    self.fail(
                        r,
                        now,
                        format!(
                            "no decision within the progress deadline ({}) at step {}: {pending}",
                            humantime::format_duration(Duration::from_millis(
                                r.progress_deadline_ms
                            )),
                            r.step + 1
                        ),
                    )?;
                } else {
                    r.decision = format!("step {}: waiting: {pending}", r.step + 1);
                }
            }
            Verdict::Pass | Verdict::Inconclusive(_) => {
                let left = step.map_or(0, |s| {
                    s.duration_ms
                        .saturating_sub(elapsed_ms(r.step_started_unix_ms, now))
                });
                r.decision = format!(
                    "step {} of {}: {}% to {}, analysing ({} left)",
                    r.step + 1,
                    r.steps.len(),
                    r.weight,
                    r.canary_version,
                    humantime::format_duration(Duration::from_secs(left / 1000))
                );
            }
        }
        Ok(())
    }

    /// Leaves the current step: waits for confirmation, goes to the next step, or promotes.
    fn advance(&self, r: &mut Rollout, now: i64, confirmed: bool) -> Result<(), RolloutError> {
        let step = r.current_step().cloned();
        if step.as_ref().is_some_and(|s| s.confirm) && !confirmed {
            r.phase = Phase::WaitingConfirmation;
            r.decision = format!(
                "step {} ({}%) passed; waiting for `sluice rollout resume {}` to continue",
                r.step + 1,
                r.weight,
                r.service
            );
            self.save(r, now, "waiting-confirmation")?;
            self.notify(
                r,
                &RolloutEvent::WaitingForConfirmation {
                    step: u32::try_from(r.step + 1).unwrap_or(u32::MAX),
                    weight: r.weight,
                },
            );
            return Ok(());
        }
        if r.step + 1 < r.steps.len() {
            r.step += 1;
            r.weight = r.steps[r.step].weight;
            r.phase = Phase::Progressing;
            r.step_started_unix_ms = now;
            r.decision = format!(
                "step {} of {}: {}% of traffic to {}",
                r.step + 1,
                r.steps.len(),
                r.weight,
                r.canary_version
            );
            self.save(r, now, "step")?;
            self.notify(
                r,
                &RolloutEvent::Step {
                    step: u32::try_from(r.step + 1).unwrap_or(u32::MAX),
                    weight: r.weight,
                },
            );
            return Ok(());
        }
        let reason = format!(
            "promoted: every check passed through {} steps (last {}%)",
            r.steps.len(),
            r.weight
        );
        self.promote(r, now, reason)
    }

    fn promote(&self, r: &mut Rollout, now: i64, reason: String) -> Result<(), RolloutError> {
        r.phase = Phase::Promoted;
        r.weight = 100;
        r.finished_unix_ms = Some(now);
        r.decision = reason;
        self.save(r, now, "promoted")?;
        self.lock_runtime().remove(&r.id);
        self.notify(r, &RolloutEvent::Promoted);
        Ok(())
    }

    fn fail(&self, r: &mut Rollout, now: i64, reason: String) -> Result<(), RolloutError> {
        r.phase = Phase::Failed;
        r.weight = 0;
        r.finished_unix_ms = Some(now);
        r.decision = format!("failed: {reason}");
        self.save(r, now, "failed")?;
        self.lock_runtime().remove(&r.id);
        tracing::warn!(rollout = r.id, "{}", r.decision);
        Ok(())
    }

    fn save(&self, r: &mut Rollout, now: i64, kind: &str) -> Result<(), RolloutError> {
        r.updated_unix_ms = now;
        let e = event(now, kind, &r.decision);
        store::save(self.plane.store(), r, Some(&e))?;
        tracing::info!(rollout = r.id, service = r.service, phase = %r.phase, weight = r.weight, "{}", r.decision);
        Ok(())
    }

    /// The service's stable version: promoted earlier, else the Route's heaviest backend, else
    /// its first declared version.
    fn stable_version(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Option<String>, RolloutError> {
        let promoted = store::stable_versions(self.plane.store())?;
        if let Some((_, v)) = promoted
            .into_iter()
            .find(|((ns, s), _)| ns == namespace && s == service)
        {
            return Ok(Some(v));
        }
        let policy = self.plane.policy();
        Ok(policy_stable_version(
            &policy.set,
            &ObjectRef::new(namespace, service),
        ))
    }

    /// Recomputes the weights proxies enforce from the store and hands them to the plane.
    pub fn apply_weights(&self) -> Result<(), RolloutError> {
        let st = self.plane.store();
        let mut overrides = RouteOverrides::new();
        for ((ns, svc), version) in store::stable_versions(st)? {
            overrides.insert((ns, svc), vec![backend(&version, None, 100)]);
        }
        for r in store::active(st)? {
            overrides.insert((r.namespace.clone(), r.service.clone()), rollout_split(&r));
        }
        self.plane.set_route_overrides(overrides);
        Ok(())
    }

    /// A rollout with its events and points.
    pub fn detail(&self, r: Rollout) -> Result<super::model::RolloutDetail, RolloutError> {
        let st = self.plane.store();
        Ok(super::model::RolloutDetail {
            events: store::events(st, &r.id)?,
            points: store::points(st, &r.id)?,
            rollout: r,
        })
    }

    /// Rollouts, newest first.
    pub fn list(&self, service: Option<(&str, &str)>) -> Result<Vec<Rollout>, RolloutError> {
        Ok(store::list(self.plane.store(), service)?)
    }
}

#[cfg(test)]
mod tests;
