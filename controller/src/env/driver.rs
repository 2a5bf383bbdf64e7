//! A backend that lives in the controller's own process (Kubernetes), kept in step with the
//! environments the way `sluice up`'s runner (`up::env`) keeps its namespaces in step over
//! `POST /instances/sync`, without the HTTP: every [`EVERY`] it reports the backend's
//! instances to [`Environments::sync`] and carries out the answer with
//! [`instance::reconcile`]. The controller decides; the backend only makes it so.
//!
//! The backend is any [`Backend`]; this module never learns what runs the instances (the core
//! does not name the cluster).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Environments, SyncRequest};
use crate::instance::{self, Backend, InstanceSpec, InstanceStatus};

/// How often the backend is synced.
pub const EVERY: Duration = Duration::from_secs(2);
/// A start that failed is not tried again for this long (or until its spec changes), as in
/// `sluice up`.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The backend and what the rounds remember between them.
pub struct Driver {
    backend: Box<dyn Backend + Send>,
    name: String,
    /// Starts that failed: (generation, error, when). Reported as the instance's status, so
    /// the environment shows why its copy does not run.
    failed: HashMap<String, (u64, String, Instant)>,
}

impl Driver {
    /// Drives `backend`, reported to the environments as `name` (`kubernetes`).
    pub fn new(backend: Box<dyn Backend + Send>, name: &str) -> Self {
        Driver {
            backend,
            name: name.to_owned(),
            failed: HashMap::new(),
        }
    }

    /// One round: report, learn what should run, make it so. Blocking: the backend's calls
    /// may wait on the network.
    pub fn round(&mut self, envs: &Environments) {
        let running = self.backend.instances();
        let mut statuses: Vec<InstanceStatus> = running.iter().map(|(_, s)| s.clone()).collect();
        for (name, (generation, error, _)) in &self.failed {
            if !statuses.iter().any(|s| s.name == *name) {
                statuses.push(InstanceStatus {
                    name: name.clone(),
                    generation: *generation,
                    error: Some(error.clone()),
                    ..InstanceStatus::default()
                });
            }
        }
        let desired = envs
            .sync(SyncRequest {
                backend: self.name.clone(),
                ingress: None,
                instances: statuses,
            })
            .instances;
        let now = Instant::now();
        self.failed.retain(|name, (generation, _, at)| {
            now.duration_since(*at) < RETRY_AFTER
                && desired
                    .iter()
                    .any(|d| d.name == *name && d.generation == *generation)
        });
        // Instances whose start failed and are still wanted are neither started again before
        // their time nor stopped.
        let mut keep: Vec<InstanceSpec> = desired
            .iter()
            .filter(|d| !self.failed.contains_key(&d.name))
            .cloned()
            .collect();
        keep.extend(
            running
                .into_iter()
                .map(|(s, _)| s)
                .filter(|s| self.failed.contains_key(&s.name)),
        );
        for (name, error) in instance::reconcile(&mut *self.backend, &keep) {
            let generation = desired
                .iter()
                .find(|d| d.name == name)
                .map_or(0, |d| d.generation);
            let again = self
                .failed
                .get(&name)
                .is_some_and(|(_, previous, _)| *previous == error);
            if !again {
                tracing::warn!(
                    backend = self.name,
                    instance = name,
                    error = %error,
                    "environments: an instance did not start or stop; trying again in {}s",
                    RETRY_AFTER.as_secs()
                );
            }
            self.failed
                .insert(name, (generation, error, Instant::now()));
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
}
