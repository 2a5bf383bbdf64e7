//! Ephemeral environments: a copy of a service with its dependencies, reached by W3C baggage,
//! removed when idle. The user guide is `docs/environments.md`.
//!
//! This is the core, which does not know where workloads run. It owns:
//!
//! - **What an environment contains** ([`graph`]): the service's copy and, transitively, a
//!   copy of every service it calls through an `ephemeral: copy` grant; the rest is shared
//!   with stable.
//! - **The lifecycle** ([`Environments`]): create (name, service, version or command
//!   checked, with the fix in every refusal), `sluice env run` sessions (a developer's
//!   command as one copy, kept alive by heartbeats), delete, and the **idle clock**: requests
//!   to any copy ([`activity`], from the proxies' traffic reports) reset it; an environment
//!   idle for its timeout is deleted and its service's team told. Everything is in the store
//!   ([`store`]), so a restarted controller keeps environments and their clocks.
//! - **What should run**: every copy is an [`InstanceSpec`] (service, version or command,
//!   environment). A backend asks for them and reports how they are doing
//!   ([`Environments::sync`], `POST /instances/sync`); `sluice up`'s runner is one
//!   (`up::env`), and the controller's own [`driver`] drives a backend in its process (the
//!   Kubernetes one), through the same [`crate::instance::Backend`] interface.
//!
//! The admin API ([`api`]) and `sluice env` ([`cli`]) are thin layers over [`Environments`].

pub mod activity;
pub mod api;
mod checks;
pub mod cli;
pub mod client;
pub mod driver;
pub mod graph;
pub mod model;
mod session;
pub mod store;
mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sluice_policy::resources::Severity;
use sluice_policy::validate::ObjectRef;

use crate::instance::{InstanceSpec, InstanceStatus, Run};
use crate::notify::{Notification, Notifier};
use crate::server::state::ControlPlane;
use crate::store::{StoreError, unix_ms};
use checks::{bounded_user, check_command, check_new_name, not_found, parse_idle_timeout};
pub use model::{
    Command, Copy, CopyView, CreateRequest, Environment, EnvironmentList, EnvironmentView,
    Heartbeat, Origin, Removed, RunRequest, RunStarted, SyncAnswer, SyncRequest, Usage,
    instance_name,
};

/// How often the idle clocks and `env run` leases are checked.
pub const TICK: Duration = Duration::from_secs(1);
/// How long an `env run` session lives without a heartbeat (its process was killed).
pub const LEASE: Duration = Duration::from_secs(20);
/// A backend that has not synced for this long is taken as gone (for `state: pending`).
pub const BACKEND_SILENT: Duration = Duration::from_secs(10);
/// A copy whose process has run this long without exiting counts as started.
pub const STARTED_AFTER_MS: u64 = 1_000;

/// Why an environment request was refused. Every message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The request is malformed or names something that does not exist in policy.
    #[error("{0}")]
    Invalid(String),
    /// No such environment (or copy).
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or the limit is reached.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an environment is deleted, for the log and the team's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `sluice env delete`.
    Asked,
    /// No request reached it for its idle timeout.
    Idle,
    /// The `sluice env run` session that made it ended.
    RunEnded,
}

struct State {
    envs: BTreeMap<String, Environment>,
    /// The backend's last report: each instance's status, by name.
    observed: BTreeMap<String, InstanceStatus>,
    /// Which backend reported, and when (Unix ms).
    backend: Option<(String, i64)>,
    /// The ingress URL template the backend serves.
    ingress: Option<String>,
}

/// The environments of one controller. Shared as `Arc<Environments>` by the admin API and its
/// own [`Environments::run`] task.
pub struct Environments {
    plane: Arc<ControlPlane>,
    state: Mutex<State>,
    /// Serializes changes, so the store is written in the order they happen.
    writes: tokio::sync::Mutex<()>,
    notifier: Option<Notifier>,
}

impl std::fmt::Debug for Environments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environments").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Environments {
    /// The environments `plane`'s store holds. `notifier` tells teams about idle deletions.
    /// `env run` sessions get a fresh lease, so a developer's session survives the restart.
    pub fn load(
        plane: Arc<ControlPlane>,
        notifier: Option<Notifier>,
    ) -> Result<Arc<Environments>, StoreError> {
        let now = now_ms();
        let mut envs = BTreeMap::new();
        for mut env in store::load(plane.store())? {
            for c in &mut env.copies {
                if c.lease_until_unix_ms.is_some() {
                    c.lease_until_unix_ms = Some(now + ms(LEASE) as i64);
                }
            }
            envs.insert(env.name.clone(), env);
        }
        if !envs.is_empty() {
            tracing::info!(count = envs.len(), "environments restored from the store");
        }
        Ok(Arc::new(Environments {
            plane,
            state: Mutex::new(State {
                envs,
                observed: BTreeMap::new(),
                backend: None,
                ingress: None,
            }),
            writes: tokio::sync::Mutex::new(()),
            notifier,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn save(&self, env: Environment) -> Result<(), StoreError> {
        self.plane.store().run(move |s| store::save(s, &env)).await
    }

    async fn forget(&self, name: String) -> Result<(), StoreError> {
        self.plane
            .store()
            .run(move |s| store::delete(s, &name))
            .await
    }

    /// `sluice env create`.
    pub async fn create(&self, req: CreateRequest) -> Result<EnvironmentView, EnvError> {
        let _w = self.writes.lock().await;
        let namespace = req.namespace.clone().unwrap_or_else(|| "default".into());
        let idle_timeout_ms = req
            .idle_timeout
            .as_deref()
            .map(parse_idle_timeout)
            .transpose()?;
        let (service, version) =
            self.check_service(&namespace, &req.service, req.version.as_deref())?;
        if let (Some(_), Some(_)) = (&req.version, &req.command) {
            return Err(EnvError::Invalid(
                "give either --version or a command after `--`, not both".into(),
            ));
        }
        let run = match &req.command {
            Some(c) => check_command(c)?,
            None => Run::Version,
        };
        let env = {
            let state = self.lock();
            check_new_name(&state, &req.name)?;
            let policy = self.plane.policy();
            let edges = graph::edges(&policy.set, &namespace);
            let copies = graph::copied(&edges, &service)
                .into_iter()
                .map(|s| {
                    if s == service {
                        Copy {
                            service: s,
                            version: version.clone(),
                            run: run.clone(),
                            origin: Origin::Service,
                            generation: 0,
                            lease_until_unix_ms: None,
                            replaced: None,
                        }
                    } else {
                        let version = self.stable_version(&namespace, &s);
                        Copy {
                            service: s,
                            version,
                            run: Run::Version,
                            origin: Origin::Dependency,
                            generation: 0,
                            lease_until_unix_ms: None,
                            replaced: None,
                        }
                    }
                })
                .collect();
            Environment {
                name: req.name.clone(),
                namespace,
                service,
                created_by: bounded_user(&req.created_by),
                created_unix_ms: now_ms(),
                idle_timeout_ms,
                created_by_run: false,
                copies,
                last_request_unix_ms: None,
                requests_total: 0,
                recent: Vec::new(),
            }
        };
        self.save(env.clone()).await?;
        tracing::info!(
            environment = env.name,
            service = env.service,
            copies = ?env.copies.iter().map(|c| c.service.as_str()).collect::<Vec<_>>(),
            created_by = env.created_by,
            "environment created"
        );
        let mut state = self.lock();
        state.envs.insert(env.name.clone(), env.clone());
        Ok(self.view(&state, &env, now_ms()))
    }

    /// `sluice env delete`: the environment and every copy it started.
    pub async fn delete(&self, name: &str, why: Why) -> Result<Removed, EnvError> {
        let _w = self.writes.lock().await;
        self.delete_locked(name, why).await
    }

    async fn delete_locked(&self, name: &str, why: Why) -> Result<Removed, EnvError> {
        let env = {
            let state = self.lock();
            match state.envs.get(name) {
                Some(e) => e.clone(),
                None => return Err(not_found(&state, name)),
            }
        };
        self.forget(name.to_owned()).await?;
        let now = now_ms();
        let view = {
            let mut state = self.lock();
            let view = self.view(&state, &env, now);
            state.envs.remove(name);
            view
        };
        let stopped: Vec<String> = env
            .copies
            .iter()
            .map(|c| instance_name(&c.service, &env.name))
            .collect();
        tracing::info!(environment = name, why = ?why, stopped = ?stopped, "environment deleted");
        if why == Why::Idle {
            self.tell_idle(&env, &view, now);
        }
        Ok(Removed {
            environment: view,
            deleted: true,
            stopped,
            restored: None,
        })
    }

    /// Every environment.
    pub fn list(&self) -> EnvironmentList {
        let now = now_ms();
        let state = self.lock();
        EnvironmentList {
            environments: state
                .envs
                .values()
                .map(|e| self.view(&state, e, now))
                .collect(),
            backend: state
                .backend
                .as_ref()
                .filter(|(_, at)| now - at < ms(BACKEND_SILENT) as i64)
                .map(|(b, _)| b.clone()),
        }
    }

    /// One environment.
    pub fn get(&self, name: &str) -> Result<EnvironmentView, EnvError> {
        let state = self.lock();
        match state.envs.get(name) {
            Some(e) => Ok(self.view(&state, e, now_ms())),
            None => Err(not_found(&state, name)),
        }
    }

    /// The environments of one service (for its portal page): those with a copy of it.
    pub fn of_service(&self, namespace: &str, service: &str) -> Vec<EnvironmentView> {
        let now = now_ms();
        let state = self.lock();
        state
            .envs
            .values()
            .filter(|e| e.namespace == namespace && e.copy(service).is_some())
            .map(|e| self.view(&state, e, now))
            .collect()
    }

    /// A backend's report: remembers how its instances are doing and answers with every
    /// instance that should run.
    pub fn sync(&self, req: SyncRequest) -> SyncAnswer {
        let mut state = self.lock();
        state.backend = Some((bounded_user(&req.backend), now_ms()));
        state.ingress = req.ingress.filter(|t| t.len() <= 256);
        state.observed = req
            .instances
            .into_iter()
            .take(1_000)
            .map(|s| (s.name.clone(), s))
            .collect();
        SyncAnswer {
            instances: desired(&state.envs),
        }
    }

    /// The instances every environment needs.
    pub fn desired(&self) -> Vec<InstanceSpec> {
        desired(&self.lock().envs)
    }

    /// Counts requests, ends `env run` sessions whose process is gone, and deletes idle
    /// environments, every [`TICK`], until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.tick(now_ms()).await {
                tracing::error!(error = %e, "environments: the store failed; trying again");
            }
        }
    }

    /// One round of [`Environments::run`] at `now`.
    pub async fn tick(&self, now: i64) -> Result<(), StoreError> {
        let counted = self.plane.env_activity().drain();
        let _w = self.writes.lock().await;
        let mut changed = Vec::new();
        let mut expired = Vec::new();
        let mut idle = Vec::new();
        {
            let mut state = self.lock();
            let mesh_timeout = self.plane.policy().set.mesh.environments.idle_timeout().0;
            for env in state.envs.values_mut() {
                if let Some((n, at)) = counted.get(&env.name) {
                    env.count(*n, *at);
                    changed.push(env.clone());
                }
                let leased = env.copies.iter().any(|c| c.lease_until_unix_ms.is_some());
                for c in &env.copies {
                    if c.lease_until_unix_ms.is_some_and(|until| until < now) {
                        expired.push((env.name.clone(), c.service.clone()));
                    }
                }
                let timeout = env.idle_timeout_ms.unwrap_or(ms(mesh_timeout));
                if !leased && now - env.last_activity_unix_ms() >= timeout as i64 {
                    idle.push(env.name.clone());
                }
            }
        }
        for env in changed {
            self.save(env).await?;
        }
        for (name, service) in expired {
            tracing::warn!(
                environment = name,
                service,
                "the `sluice env run` session sent no heartbeat for {}s; ending it",
                LEASE.as_secs()
            );
            if let Err(EnvError::Store(e)) = self.end_run_locked(&name, &service).await {
                return Err(e);
            }
        }
        for name in idle {
            match self.delete_locked(&name, Why::Idle).await {
                Ok(_) | Err(EnvError::NotFound(_)) => {}
                Err(EnvError::Store(e)) => return Err(e),
                Err(e) => tracing::warn!(environment = name, error = %e, "cannot delete"),
            }
        }
        Ok(())
    }

    /// The service `name` in `namespace` as policy declares it, and the version to run: the
    /// one asked for (declared in the MeshService), else the stable one.
    fn check_service(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<(String, String), EnvError> {
        let policy = self.plane.policy();
        let Some(svc) = policy.set.services.get(&ObjectRef::new(namespace, name)) else {
            let names: Vec<&str> = policy
                .set
                .services
                .keys()
                .filter(|k| k.namespace == namespace)
                .map(|k| k.name.as_str())
                .collect();
            let hint = match sluice_policy::diagnostic::did_you_mean(name, &names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the services are: {}", names.join(", ")),
            };
            return Err(EnvError::Invalid(format!(
                "no MeshService `{name}` in namespace `{namespace}`; {hint}"
            )));
        };
        let declared = &svc.source.doc.spec.versions;
        let version = match version {
            Some(v) if !declared.is_empty() && !declared.iter().any(|d| d == v) => {
                return Err(EnvError::Invalid(format!(
                    "{name} declares no version `{v}` (it has {}); add it to the MeshService's \
                     `spec.versions`, or leave --version out to copy the stable one",
                    declared.join(", ")
                )));
            }
            Some(v) if !model::is_label(v, 40) => {
                return Err(EnvError::Invalid(format!(
                    "version `{v}` is not a DNS label (a-z, 0-9, `-`, at most 40)"
                )));
            }
            Some(v) => v.to_owned(),
            None => self.stable_version(namespace, name),
        };
        Ok((name.to_owned(), version))
    }

    /// The version stable traffic goes to: the last promoted one, else what its stable
    /// instances run, else the first it declares, else `v1`.
    fn stable_version(&self, namespace: &str, service: &str) -> String {
        if let Ok(promoted) = crate::rollout::store::stable_versions(self.plane.store())
            && let Some(v) = promoted
                .into_iter()
                .find(|((ns, s), _)| ns == namespace && s == service)
                .map(|(_, v)| v)
        {
            return v;
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.plane.registered() {
            if r.namespace == namespace
                && r.service == service
                && r.environment == crate::server::register::DEFAULT_ENVIRONMENT
            {
                *counts.entry(r.version).or_default() += 1;
            }
        }
        if let Some((v, _)) = counts.into_iter().max_by_key(|(_, n)| *n) {
            return v;
        }
        self.plane
            .policy()
            .set
            .services
            .get(&ObjectRef::new(namespace, service))
            .and_then(|s| s.source.doc.spec.versions.first().cloned())
            .unwrap_or_else(|| "v1".into())
    }
    /// Tells the service's team that `env` was deleted for being idle.
    fn tell_idle(&self, env: &Environment, view: &EnvironmentView, now: i64) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let policy = self.plane.policy();
        let key = ObjectRef::new(env.namespace.clone(), env.service.clone());
        let Some(team) = policy
            .set
            .services
            .get(&key)
            .map(|s| s.source.doc.spec.team.clone())
        else {
            return;
        };
        let teams: Vec<_> = policy
            .set
            .teams
            .get(&ObjectRef::new(env.namespace.clone(), team.clone()))
            .or_else(|| policy.set.teams.get(&ObjectRef::new("default", team)))
            .map(|t| t.doc.spec.clone())
            .into_iter()
            .collect();
        let idle = humantime::format_duration(Duration::from_secs(
            u64::try_from((now - env.last_activity_unix_ms()) / 1000).unwrap_or(0),
        ));
        let last = env.last_request_unix_ms.map_or_else(
            || "never".to_owned(),
            |t| {
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(t).unwrap_or(0)),
                )
                .to_string()
            },
        );
        let copies: Vec<String> = view.copies.iter().map(|c| c.instance.clone()).collect();
        let message = Notification::new(
            format!(
                "environment/{}/{}/idle-deleted",
                env.name, env.created_unix_ms
            ),
            "environment.idleDeleted",
            Severity::Info,
            format!(
                "environment {} deleted after {idle} without requests",
                env.name
            ),
        )
        .with_text(format!(
            "No request reached the copies of environment {} for its idle timeout of {}, so \
             Sluice removed them. Create it again with `sluice env create {} --service {}`.",
            env.name,
            humantime::format_duration(Duration::from_millis(view.idle_timeout_ms)),
            env.name,
            env.service
        ))
        .with_field("environment", env.name.clone())
        .with_field("service", env.service.clone())
        .with_field("created by", env.created_by.clone())
        .with_field("last request", last)
        .with_field("requests served", env.requests_total.to_string())
        .with_field("copies removed", copies.join(", "))
        .with_field(
            "shared",
            if view.shared.is_empty() {
                "nothing".to_owned()
            } else {
                view.shared.join(", ")
            },
        );
        if let Err(e) = notifier.notify_teams(message, teams.iter()) {
            tracing::warn!(environment = env.name, error = %e, "notification not queued");
        }
    }
}

/// Every environment's copies as instances.
fn desired(envs: &BTreeMap<String, Environment>) -> Vec<InstanceSpec> {
    envs.values()
        .flat_map(|e| {
            e.copies.iter().map(|c| InstanceSpec {
                name: instance_name(&c.service, &e.name),
                namespace: e.namespace.clone(),
                service: c.service.clone(),
                version: c.version.clone(),
                environment: e.name.clone(),
                role: String::new(),
                run: c.run.clone(),
                generation: c.generation,
            })
        })
        .collect()
}
