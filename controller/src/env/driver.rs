//! A backend that lives in the controller's own process (Kubernetes), kept in step with the
//! environments the way `sluice up`'s runner (`up::env`) keeps its namespaces in step over
//! `POST /instances/sync`, without the HTTP: every [`EVERY`] it reports the backend's
//! instances to [`Environments::sync`] and carries out the answer with
//! [`instance::reconcile`]. The controller decides; the backend only makes it so.
//!
//! The backend is any [`Backend`]; this module never learns what runs the instances (the core
//! does not name the cluster).
//!
//! Rollouts share the backend: with [`Driver::with_rollouts`], each round also asks for the
//! baseline copy every active rollout wants ([`Rollout::baseline_instance`]), so a canary in
//! the cluster is judged against a fresh copy of the stable version, as under `sluice up`.
//!
//! [`Rollout::baseline_instance`]: crate::rollout::model::Rollout::baseline_instance

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Environments, SyncRequest};
use crate::instance::{Backend, InstanceSpec, InstanceStatus, RETRY_AFTER, Retries};
use crate::store::Store;

/// How often the backend is synced.
pub const EVERY: Duration = Duration::from_secs(2);

/// The backend and what the rounds remember between them.
pub struct Driver {
    backend: Box<dyn Backend + Send>,
    name: String,
    /// Starts that failed, reported as the instance's status so the environment shows why
    /// its copy does not run, and retried by `sluice up`'s rule.
    retries: Retries,
    /// Where the rollouts are, when this backend also starts their baseline copies.
    rollouts: Option<Store>,
}

impl Driver {
    /// Drives `backend`, reported to the environments as `name` (`kubernetes`).
    pub fn new(backend: Box<dyn Backend + Send>, name: &str) -> Self {
        Driver {
            backend,
            name: name.to_owned(),
            retries: Retries::default(),
            rollouts: None,
        }
    }

    /// Also starts and stops the baseline copies of the rollouts in `store`.
    pub fn with_rollouts(mut self, store: Store) -> Self {
        self.rollouts = Some(store);
        self
    }

    /// The baseline copies the active rollouts want. When the rollouts cannot be read, the
    /// copies running now are kept: a store hiccup must not stop a rollout's baseline.
    fn rollout_instances(&self, running: &[(InstanceSpec, InstanceStatus)]) -> Vec<InstanceSpec> {
        let Some(store) = &self.rollouts else {
            return Vec::new();
        };
        match crate::rollout::store::active(store) {
            Ok(rollouts) => rollouts
                .iter()
                .filter_map(|r| r.baseline_instance())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "rollouts: cannot read them; keeping the baseline copies as they are");
                running
                    .iter()
                    .filter(|(s, _)| s.role == sluice_policy::resources::BASELINE_ROLE)
                    .map(|(s, _)| s.clone())
                    .collect()
            }
        }
    }

    /// One round: report, learn what should run, make it so. Blocking: the backend's calls
    /// may wait on the network.
    pub fn round(&mut self, envs: &Environments) {
        let running = self.backend.instances();
        let mut statuses: Vec<InstanceStatus> = running.iter().map(|(_, s)| s.clone()).collect();
        self.retries.report(&mut statuses);
        let mut desired = envs
            .sync(SyncRequest {
                backend: self.name.clone(),
                ingress: None,
                instances: statuses,
            })
            .instances;
        desired.extend(self.rollout_instances(&running));
        let running: Vec<InstanceSpec> = running.into_iter().map(|(s, _)| s).collect();
        let failures =
            self.retries
                .reconcile(&mut *self.backend, &desired, &running, Instant::now());
        for f in failures.into_iter().filter(|f| !f.again) {
            tracing::warn!(
                backend = self.name,
                instance = f.name,
                error = %f.error,
                "environments: an instance did not start or stop; trying again in {}s",
                RETRY_AFTER.as_secs()
            );
        }
    }
}

/// Runs [`Driver::round`] every [`EVERY`] until the task is dropped. Each round runs on the
/// blocking pool ([`tokio::task::spawn_blocking`]): a backend may block on its own async
/// client from there, which it may not do on a runtime worker.
pub async fn run(envs: Arc<Environments>, mut driver: Driver) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let envs = Arc::clone(&envs);
        driver = match tokio::task::spawn_blocking(move || {
            driver.round(&envs);
            driver
        })
        .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "environments: the backend's round failed; no more rounds");
                return;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::env::{Command, CreateRequest, Why};
    use crate::instance::{BackendError, Run};
    use crate::server::state::{ControlPlane, PolicySnapshot};
    use crate::store::Store;

    /// A backend that runs versions only, as the Kubernetes one does, and remembers.
    #[derive(Default)]
    struct VersionsOnly {
        running: Arc<std::sync::Mutex<Vec<InstanceSpec>>>,
    }

    impl Backend for VersionsOnly {
        fn start(&mut self, spec: &InstanceSpec) -> Result<(), BackendError> {
            if matches!(spec.run, Run::Command { .. }) {
                return Err(BackendError::Unsupported("give a version".into()));
            }
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(spec.clone());
            Ok(())
        }

        fn stop(&mut self, name: &str) -> Result<(), BackendError> {
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|s| s.name != name);
            Ok(())
        }

        fn instances(&mut self) -> Vec<(InstanceSpec, InstanceStatus)> {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running
                .iter()
                .map(|s| {
                    let status = InstanceStatus {
                        name: s.name.clone(),
                        generation: s.generation,
                        ..InstanceStatus::default()
                    };
                    (s.clone(), status)
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn rounds_start_what_environments_need_report_refusals_and_stop_the_rest()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
        let set = sluice_policy::PolicySet::load(&shop)?;
        let plane = ControlPlane::new(
            Store::open(dir.path())?,
            PolicySnapshot::new(set),
            Duration::from_secs(30),
        )?;
        let envs = Environments::load(plane, None)?;
        let backend = VersionsOnly::default();
        let running = Arc::clone(&backend.running);
        let names = || -> Vec<String> {
            let r = running.lock().unwrap_or_else(|e| e.into_inner());
            r.iter().map(|s| s.name.clone()).collect()
        };
        let mut driver = Driver::new(Box::new(backend), "kubernetes");
        envs.create(CreateRequest {
            name: "pr-1".into(),
            service: "checkout".into(),
            namespace: None,
            version: None,
            command: Some(Command {
                argv: vec!["/bin/true".into()],
                dir: "/".into(),
                env: Default::default(),
            }),
            idle_timeout: None,
            created_by: "dev".into(),
        })
        .await?;
        driver.round(&envs);
        assert_eq!(names(), ["catalog.pr-1"]);
        // catalog's copy (a version) runs; checkout's (a command) is refused, and from the
        // next round's report on the environment says why. The refusal is not retried before
        // its time, and nothing is started twice.
        driver.round(&envs);
        assert_eq!(names(), ["catalog.pr-1"]);
        let view = envs.get("pr-1")?;
        let checkout = view
            .copies
            .iter()
            .find(|c| c.service == "checkout")
            .ok_or("no checkout copy")?;
        assert_eq!(
            (checkout.state.as_str(), checkout.detail.as_str()),
            ("failed", "give a version")
        );
        assert_eq!(envs.list().backend.as_deref(), Some("kubernetes"));
        envs.delete("pr-1", Why::Asked).await?;
        driver.round(&envs);
        assert!(names().is_empty(), "{:?}", names());
        Ok(())
    }

    /// A rollout as the engine saves it: payments v1 → v2, progressing, a copy asked for.
    fn rollout_wanting_a_copy() -> crate::rollout::model::Rollout {
        use crate::rollout::model::{Baseline, BaselineKind, Phase, Rollout};
        Rollout {
            id: "r-20261202-0001".into(),
            namespace: "default".into(),
            service: "payments".into(),
            baseline_version: "v1".into(),
            canary_version: "v2".into(),
            phase: Phase::Pending,
            step: 0,
            weight: 0,
            steps: Vec::new(),
            interval_ms: 5_000,
            progress_deadline_ms: 600_000,
            policy: "payments".into(),
            analysis: Default::default(),
            on_failure: Default::default(),
            requested_by: "dev".into(),
            created_unix_ms: 0,
            updated_unix_ms: 0,
            step_started_unix_ms: 0,
            first_traffic_unix_ms: None,
            finished_unix_ms: None,
            decision: String::new(),
            evidence: Vec::new(),
            failed_check: None,
            baseline: Baseline {
                kind: BaselineKind::Waiting,
                copy_requested: true,
                instances: Vec::new(),
                description: String::new(),
            },
            failed_checks: Vec::new(),
            canary_requests: 0,
            baseline_requests: 0,
        }
    }

    #[tokio::test]
    async fn a_rollout_gets_its_baseline_copy_from_the_backend_until_it_ends()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::rollout::model::{BaselineKind, Phase};
        let dir = tempfile::tempdir()?;
        let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
        let plane = ControlPlane::new(
            Store::open(dir.path())?,
            PolicySnapshot::new(sluice_policy::PolicySet::load(&shop)?),
            Duration::from_secs(30),
        )?;
        let store = plane.store().clone();
        let envs = Environments::load(plane, None)?;
        let backend = VersionsOnly::default();
        let running = Arc::clone(&backend.running);
        let specs = || running.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut driver = Driver::new(Box::new(backend), "kubernetes").with_rollouts(store.clone());

        let mut r = rollout_wanting_a_copy();
        crate::rollout::store::save(&store, &r, None)?;
        driver.round(&envs);
        let copy = specs();
        assert_eq!(copy.len(), 1, "{copy:?}");
        assert_eq!(
            (
                copy[0].name.as_str(),
                copy[0].service.as_str(),
                copy[0].version.as_str(),
                copy[0].environment.as_str(),
                copy[0].role.as_str(),
                &copy[0].run,
            ),
            (
                "payments-v1-baseline",
                "payments",
                "v1",
                "stable",
                "baseline",
                &Run::Version
            )
        );
        // The copy registered: the rollout judges against it; nothing is started twice.
        r.phase = Phase::Progressing;
        r.baseline.kind = BaselineKind::Copy;
        crate::rollout::store::save(&store, &r, None)?;
        driver.round(&envs);
        assert_eq!(specs().len(), 1);
        // Rolled back: the copy goes.
        r.phase = Phase::RolledBack;
        crate::rollout::store::save(&store, &r, None)?;
        driver.round(&envs);
        assert!(specs().is_empty(), "{:?}", specs());

        // A rollout that fell back to the stable instances (no copy registered in time) does
        // not keep one, and one that never asked (baseline: stable in its policy) gets none.
        let mut fell_back = rollout_wanting_a_copy();
        fell_back.id = "r-20261202-0002".into();
        fell_back.baseline.kind = BaselineKind::Stable;
        crate::rollout::store::save(&store, &fell_back, None)?;
        let mut never = rollout_wanting_a_copy();
        never.id = "r-20261202-0003".into();
        never.service = "catalog".into();
        never.baseline.copy_requested = false;
        crate::rollout::store::save(&store, &never, None)?;
        driver.round(&envs);
        assert!(specs().is_empty(), "{:?}", specs());
        Ok(())
    }
}
