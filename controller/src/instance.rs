//! The one small interface between the controller's core and whatever runs workloads:
//! **start an instance of service S, version V (or a command), in environment E, with role
//! R; stop it; say how the instances it started are doing.**
//!
//! Rollout canaries (environment `stable`), a rollout's baseline copy (role `baseline`) and
//! ephemeral environments' copies (environment `pr-1`) are all such instances. The core
//! decides which ones should exist ([`InstanceSpec`]s); a [`Backend`] makes them exist:
//!
//! | backend | start | stop | status |
//! |---|---|---|---|
//! | `sluice up` (`up::env`) | a network namespace, `sluice-proxy init`, the proxy and the command under the supervisor | stop the processes, delete the namespace | the supervisor's process state, `/proc` for CPU and memory, the log file's tail |
//! | Kubernetes (`kubernetes::instances`) | a Deployment of one pod copied from the service's Deployment of that version, labelled with version, environment, role and instance, the spec in an annotation | delete it | the pod's readiness, IP, restarts, last exit and waiting reason (no logs, CPU or memory yet) |
//!
//! [`plan`] is the reconciliation both share: a pure function from what should run and what
//! runs to the changes, so a backend only carries them out. Instance names are the backend's
//! namespace or pod names: unique, stable for the same spec, and derived by the core
//! ([`crate::env::instance_name`] for environments).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an instance runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Run {
    /// The service's own definition of the version: the mesh file's workload and its
    /// `versions` entry, or the service's Deployment of that version.
    Version,
    /// A developer's command (a debug build), run where the backend runs workloads. Only
    /// backends on the developer's machine can run one (`sluice up`).
    Command {
        /// The argv; the program is an absolute path.
        argv: Vec<String>,
        /// The directory it runs in.
        dir: String,
        /// Environment variables over the service's own.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
}

/// One instance that should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceSpec {
    /// Unique among the backend's instances: `checkout.pr-1`, `payments-v2`.
    pub name: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service it is an instance of (its identity and policy).
    pub service: String,
    /// The version it registers as.
    pub version: String,
    /// `stable`, or an ephemeral environment.
    pub environment: String,
    /// Empty, or `baseline` for a rollout's fresh copy of the stable version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// What it runs.
    pub run: Run,
    /// Bumped to restart the instance with the same spec (`sluice env run` after a rebuild).
    #[serde(default)]
    pub generation: u64,
}

/// How a started instance is doing, as its backend sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStatus {
    /// The instance.
    pub name: String,
    /// The generation it runs.
    #[serde(default)]
    pub generation: u64,
    /// `ip:port` where it serves, once it has one.
    #[serde(default)]
    pub address: Option<String>,
    /// Whether its workload process runs now.
    #[serde(default)]
    pub running: bool,
    /// How often its workload process was started (1 until it is restarted).
    #[serde(default)]
    pub starts: u32,
    /// How its workload process last ended (`exit status: 1`), if it did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// How long ago its workload process (re)started, in ms.
    #[serde(default)]
    pub up_ms: u64,
    /// The last lines of its workload's output.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// CPU time used by its processes (workload and sidecar) since it was created.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// The largest resident memory of its processes, summed over processes.
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// What went wrong starting or stopping it, if anything.
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a backend could not carry out a change.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The spec asks for something this backend cannot run (a command on Kubernetes, a
    /// version the mesh file does not define).
    #[error("{0}")]
    Unsupported(String),
    /// The host or the cluster refused.
    #[error("{0}")]
    Failed(String),
}

/// Where instances run. Implemented by `sluice up`'s namespaces and by the Kubernetes
/// backend's Deployments.
pub trait Backend {
    /// Creates and starts `spec`. Returns once it was created; it may still be starting.
    fn start(&mut self, spec: &InstanceSpec) -> Result<(), BackendError>;
    /// Stops the instance `name` and removes exactly what [`Backend::start`] created for it.
    /// Stopping an instance that is gone is not an error.
    fn stop(&mut self, name: &str) -> Result<(), BackendError>;
    /// The instances this backend started through this interface, with their status.
    fn instances(&mut self) -> Vec<(InstanceSpec, InstanceStatus)>;
}

/// One change [`plan`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Start this instance.
    Start(InstanceSpec),
    /// Stop and remove this instance.
    Stop(String),
    /// Stop the running instance of this name and start this spec in its place (a new
    /// generation, or the spec changed).
    Replace(InstanceSpec),
}

/// The changes that make `running` (the backend's instances) match `desired`: stops first,
/// then replacements, then starts, each in name order. Pure; planning again after applying
/// gives nothing.
pub fn plan(desired: &[InstanceSpec], running: &[InstanceSpec]) -> Vec<Change> {
    let want: BTreeMap<&str, &InstanceSpec> =
        desired.iter().map(|s| (s.name.as_str(), s)).collect();
    let have: BTreeMap<&str, &InstanceSpec> =
        running.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut changes: Vec<Change> = have
        .keys()
        .filter(|n| !want.contains_key(*n))
        .map(|n| Change::Stop((*n).to_owned()))
        .collect();
    for (name, spec) in &want {
        match have.get(name) {
            Some(now) if now == spec => {}
            Some(_) => changes.push(Change::Replace((*spec).clone())),
            None => {}
        }
    }
    changes.extend(
        want.iter()
            .filter(|(n, _)| !have.contains_key(*n))
            .map(|(_, s)| Change::Start((*s).clone())),
    );
    changes
}

/// Carries out [`plan`] on `backend`; each failure is returned with the instance's name and
/// the rest go on.
pub fn reconcile(backend: &mut dyn Backend, desired: &[InstanceSpec]) -> Vec<(String, String)> {
    let running: Vec<InstanceSpec> = backend.instances().into_iter().map(|(s, _)| s).collect();
    let mut failed = Vec::new();
    for change in plan(desired, &running) {
        let (name, result) = match &change {
            Change::Start(s) => (s.name.clone(), backend.start(s)),
            Change::Stop(n) => (n.clone(), backend.stop(n)),
            Change::Replace(s) => (
                s.name.clone(),
                backend.stop(&s.name).and_then(|()| backend.start(s)),
            ),
        };
        if let Err(e) = result {
            failed.push((name, e.to_string()));
        }
    }
    failed
}

/// A start that failed is not tried again for this long (or until its spec changes).
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// One failure [`Retries::reconcile`] met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The instance.
    pub name: String,
    /// What went wrong.
    pub error: String,
    /// Whether this instance failed with this error already (a runner logs it once).
    pub again: bool,
}

/// The retry rule every runner shares: an instance whose start failed is reported with its
/// error, neither started again for [`RETRY_AFTER`] (sooner when its spec's generation
/// changes) nor stopped, and everything else is reconciled as [`plan`] says.
#[derive(Debug, Default)]
pub struct Retries {
    /// Starts that failed: (generation, error, when).
    failed: BTreeMap<String, (u64, String, std::time::Instant)>,
}

impl Retries {
    /// Adds, for the controller, the failed instances the backend does not list (a start
    /// that failed left nothing running), with their errors.
    pub fn report(&self, statuses: &mut Vec<InstanceStatus>) {
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
    }

    /// Makes `backend` match `desired`, but for failed starts still waiting to be retried;
    /// `running` is what the backend listed this round. Returns this round's failures.
    pub fn reconcile(
        &mut self,
        backend: &mut dyn Backend,
        desired: &[InstanceSpec],
        running: &[InstanceSpec],
        now: std::time::Instant,
    ) -> Vec<Failure> {
        // Kept for `again`: a retry that fails the same way is not news.
        let previous: BTreeMap<String, String> = self
            .failed
            .iter()
            .map(|(name, (_, error, _))| (name.clone(), error.clone()))
            .collect();
        self.failed.retain(|name, (generation, _, at)| {
            now.duration_since(*at) < RETRY_AFTER
                && desired
                    .iter()
                    .any(|d| d.name == *name && d.generation == *generation)
        });
        let mut keep: Vec<InstanceSpec> = desired
            .iter()
            .filter(|d| !self.failed.contains_key(&d.name))
            .cloned()
            .collect();
        keep.extend(
            running
                .iter()
                .filter(|s| self.failed.contains_key(&s.name))
                .cloned(),
        );
        let mut failures = Vec::new();
        for (name, error) in reconcile(backend, &keep) {
            let generation = desired
                .iter()
                .find(|d| d.name == name)
                .map_or(0, |d| d.generation);
            let again = previous.get(&name) == Some(&error);
            self.failed
                .insert(name.clone(), (generation, error.clone(), now));
            failures.push(Failure { name, error, again });
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, generation: u64) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            namespace: "default".into(),
            service: name.split('.').next().unwrap_or(name).into(),
            version: "v1".into(),
            environment: "pr-1".into(),
            role: String::new(),
            run: Run::Version,
            generation,
        }
    }

    /// A backend that only remembers, for checking `reconcile` without a host.
    #[derive(Default)]
    struct Memory {
        running: Vec<InstanceSpec>,
        log: Vec<String>,
    }

    impl Backend for Memory {
        fn start(&mut self, spec: &InstanceSpec) -> Result<(), BackendError> {
            if spec.service == "broken" {
                return Err(BackendError::Unsupported("no such version".into()));
            }
            self.log.push(format!("start {}", spec.name));
            self.running.push(spec.clone());
            Ok(())
        }

        fn stop(&mut self, name: &str) -> Result<(), BackendError> {
            self.log.push(format!("stop {name}"));
            self.running.retain(|s| s.name != name);
            Ok(())
        }

        fn instances(&mut self) -> Vec<(InstanceSpec, InstanceStatus)> {
            self.running
                .iter()
                .map(|s| (s.clone(), InstanceStatus::default()))
                .collect()
        }
    }

    #[test]
    fn plan_starts_stops_and_replaces() {
        let running = [spec("catalog.pr-1", 0), spec("checkout.pr-1", 0)];
        let desired = [spec("checkout.pr-1", 1), spec("frontend.pr-1", 0)];
        assert_eq!(
            plan(&desired, &running),
            [
                Change::Stop("catalog.pr-1".into()),
                Change::Replace(spec("checkout.pr-1", 1)),
                Change::Start(spec("frontend.pr-1", 0)),
            ]
        );
        assert_eq!(plan(&desired, &desired), []);
        assert_eq!(plan(&[], &[]), []);
    }

    #[test]
    fn reconcile_goes_on_after_a_failure_and_converges() {
        let mut b = Memory::default();
        let desired = [spec("broken.pr-1", 0), spec("catalog.pr-1", 0)];
        let failed = reconcile(&mut b, &desired);
        assert_eq!(
            failed,
            [("broken.pr-1".to_owned(), "no such version".to_owned())]
        );
        assert_eq!(b.log, ["start catalog.pr-1"]);
        reconcile(&mut b, &[spec("catalog.pr-1", 3)]);
        assert_eq!(
            b.log,
            [
                "start catalog.pr-1",
                "stop catalog.pr-1",
                "start catalog.pr-1"
            ]
        );
        reconcile(&mut b, &[]);
        assert!(b.running.is_empty());
    }

    #[test]
    fn a_failed_start_is_reported_waits_to_be_retried_and_is_retried_at_once_when_its_spec_changes()
    {
        let mut backend = Memory::default();
        let mut retries = Retries::default();
        let t0 = std::time::Instant::now();
        let desired = [spec("broken.pr-1", 1), spec("checkout.pr-1", 1)];
        let failures = retries.reconcile(&mut backend, &desired, &[], t0);
        assert_eq!(
            failures,
            [Failure {
                name: "broken.pr-1".into(),
                error: "no such version".into(),
                again: false,
            }]
        );
        assert_eq!(backend.log, ["start checkout.pr-1"]);
        // The controller hears about it: the backend lists nothing for it.
        let mut statuses = Vec::new();
        retries.report(&mut statuses);
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].error.as_deref(), Some("no such version"));
        // Within RETRY_AFTER: not tried again, nothing else touched.
        let running = backend.running.clone();
        let soon = t0 + RETRY_AFTER / 2;
        assert!(
            retries
                .reconcile(&mut backend, &desired, &running, soon)
                .is_empty()
        );
        assert_eq!(backend.log, ["start checkout.pr-1"]);
        // After it: tried again, and the same error is flagged as a repeat (logged once).
        let later = t0 + RETRY_AFTER;
        let failures = retries.reconcile(&mut backend, &desired, &running, later);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].again);
        // A new generation is tried at once.
        let bumped = [spec("broken.pr-1", 2), spec("checkout.pr-1", 1)];
        let failures = retries.reconcile(&mut backend, &bumped, &running, later);
        assert_eq!(failures.len(), 1, "retried at once");
        // No longer wanted: forgotten, and not reported any more.
        assert!(
            retries
                .reconcile(&mut backend, &[spec("checkout.pr-1", 1)], &running, later)
                .is_empty()
        );
        let mut statuses = Vec::new();
        retries.report(&mut statuses);
        assert!(statuses.is_empty());
    }
}
