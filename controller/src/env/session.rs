//! `sluice env run` sessions on [`Environments`]: a developer's command as one copy, which
//! replaces the copy the environment had, lives on heartbeats, and gives the old copy back (or
//! the whole environment up, if the session made it) when it ends. The rest of the lifecycle
//! does not lease or replace copies, so this is kept apart from it.

use super::checks::{check_command, not_found};
use super::{
    Copy, CreateRequest, EnvError, EnvironmentView, Environments, Heartbeat, LEASE, Origin,
    Removed, RunRequest, Why, instance_name, ms, now_ms,
};

impl Environments {
    /// `sluice env run`: the developer's command becomes `service`'s copy in environment
    /// `name`, created for it if missing (with the service's `copy` dependencies). Replaces a
    /// copy the environment had; ending the session ([`Environments::end_run`]) restores it.
    /// Returns the environment and whether the session created it.
    pub async fn start_run(
        &self,
        name: &str,
        req: RunRequest,
    ) -> Result<(EnvironmentView, bool), EnvError> {
        let run = check_command(&req.command)?;
        let exists = self.lock().envs.contains_key(name);
        if !exists {
            let view = self
                .create(CreateRequest {
                    name: name.to_owned(),
                    service: req.service.clone(),
                    namespace: None,
                    version: None,
                    command: Some(req.command.clone()),
                    idle_timeout: req.idle_timeout.clone(),
                    created_by: req.created_by.clone(),
                })
                .await?;
            let _w = self.writes.lock().await;
            let env = {
                let mut state = self.lock();
                let Some(env) = state.envs.get_mut(name) else {
                    return Err(EnvError::NotFound(format!(
                        "environment `{name}` was deleted while it was being made"
                    )));
                };
                env.created_by_run = true;
                if let Some(c) = env.copies.iter_mut().find(|c| c.service == view.service) {
                    c.origin = Origin::Run;
                    c.lease_until_unix_ms = Some(now_ms() + ms(LEASE) as i64);
                }
                env.clone()
            };
            self.save(env.clone()).await?;
            let state = self.lock();
            return Ok((self.view(&state, &env, now_ms()), true));
        }
        let _w = self.writes.lock().await;
        let env = {
            let mut state = self.lock();
            let Some(env) = state.envs.get(name).cloned() else {
                return Err(not_found(&state, name));
            };
            let (service, _) = self.check_service(&env.namespace, &req.service, None)?;
            if env
                .copy(&service)
                .is_some_and(|c| c.origin == Origin::Run && c.lease_until_unix_ms.is_some())
            {
                return Err(EnvError::Conflict(format!(
                    "`sluice env run` already runs {service} in `{name}`; stop it first (Ctrl-C \
                     in its terminal), or run this one in another environment"
                )));
            }
            let version = env
                .copy(&service)
                .map(|c| c.version.clone())
                .unwrap_or_else(|| self.stable_version(&env.namespace, &service));
            let mut env = env;
            let previous = env.copies.iter().position(|c| c.service == service);
            let copy = Copy {
                service: service.clone(),
                version,
                run,
                origin: Origin::Run,
                generation: 0,
                lease_until_unix_ms: Some(now_ms() + ms(LEASE) as i64),
                replaced: None,
            };
            match previous {
                Some(i) => {
                    let old = std::mem::replace(&mut env.copies[i], copy);
                    env.copies[i].generation = old.generation + 1;
                    env.copies[i].replaced = Some(Box::new(old));
                }
                None => env.copies.push(copy),
            }
            state.envs.insert(name.to_owned(), env.clone());
            env
        };
        self.save(env.clone()).await?;
        let state = self.lock();
        Ok((self.view(&state, &env, now_ms()), false))
    }

    /// A heartbeat from `sluice env run`: renews the session's lease, and restarts the copy
    /// when asked (a new generation).
    pub async fn heartbeat(
        &self,
        name: &str,
        service: &str,
        beat: Heartbeat,
    ) -> Result<EnvironmentView, EnvError> {
        let _w = self.writes.lock().await;
        let env = {
            let mut state = self.lock();
            let Some(env) = state.envs.get_mut(name) else {
                return Err(not_found(&state, name));
            };
            let Some(copy) = env
                .copies
                .iter_mut()
                .find(|c| c.service == service && c.origin == Origin::Run)
            else {
                return Err(EnvError::NotFound(format!(
                    "no `sluice env run` session for {service} in `{name}` (it ended, or the \
                     environment was recreated); start it again"
                )));
            };
            copy.lease_until_unix_ms = Some(now_ms() + ms(LEASE) as i64);
            if beat.restart {
                copy.generation += 1;
            }
            env.clone()
        };
        if beat.restart {
            self.save(env.clone()).await?;
        }
        let state = self.lock();
        Ok(self.view(&state, &env, now_ms()))
    }

    /// Ends an `env run` session: its copy goes (the copy it replaced comes back), and the
    /// environment too if the session made it.
    pub async fn end_run(&self, name: &str, service: &str) -> Result<Removed, EnvError> {
        let _w = self.writes.lock().await;
        self.end_run_locked(name, service).await
    }

    pub(super) async fn end_run_locked(
        &self,
        name: &str,
        service: &str,
    ) -> Result<Removed, EnvError> {
        let (before, after) = {
            let state = self.lock();
            let Some(env) = state.envs.get(name) else {
                return Err(not_found(&state, name));
            };
            if !env
                .copies
                .iter()
                .any(|c| c.service == service && c.origin == Origin::Run)
            {
                return Err(EnvError::NotFound(format!(
                    "no `sluice env run` session for {service} in `{name}`"
                )));
            }
            let before = env.clone();
            let mut after = env.clone();
            if after.created_by_run && after.service == service {
                (before, None)
            } else {
                let i = after
                    .copies
                    .iter()
                    .position(|c| c.service == service)
                    .unwrap_or_default();
                let run_copy = after.copies.remove(i);
                if let Some(mut old) = run_copy.replaced {
                    old.generation = run_copy.generation + 1;
                    after.copies.insert(i, *old);
                }
                (before, Some(after))
            }
        };
        let now = now_ms();
        match after {
            None => self.delete_locked(name, Why::RunEnded).await,
            Some(after) => {
                self.save(after.clone()).await?;
                let mut state = self.lock();
                let view = self.view(&state, &before, now);
                state.envs.insert(name.to_owned(), after.clone());
                let restored = after.copy(service).map(|c| instance_name(&c.service, name));
                Ok(Removed {
                    environment: view,
                    deleted: false,
                    stopped: vec![instance_name(service, name)],
                    restored,
                })
            }
        }
    }
}
