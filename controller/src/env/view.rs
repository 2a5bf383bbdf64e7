//! What an environment looks like from outside ([`EnvironmentView`]): each copy's state as
//! the backend reports it (pending, starting, running, crashing, failed), the environment's
//! overall state, what is shared, its URL and what it costs. Every answer of the API is built
//! here, and none of it changes the environments.

use std::collections::BTreeSet;

use sluice_policy::resources::Prices;

use super::{
    BACKEND_SILENT, Copy, CopyView, Environment, EnvironmentView, Environments, STARTED_AFTER_MS,
    State, Usage, graph, instance_name, ms,
};
use crate::instance::{InstanceStatus, Run};

impl Environments {
    pub(super) fn view(&self, state: &State, env: &Environment, now: i64) -> EnvironmentView {
        let policy = self.plane.policy();
        // A copy's sidecar registers under the copy's instance name where the backend names
        // the workload (`sluice up`); in Kubernetes the pod is the instance, named by its
        // ReplicaSet, so a copy also counts as registered when its service has an instance in
        // the environment (one copy per service and environment).
        let registered: BTreeSet<String> = self
            .plane
            .registered()
            .into_iter()
            .filter(|r| r.environment == env.name)
            .flat_map(|r| {
                let by_service =
                    (r.namespace == env.namespace).then(|| instance_name(&r.service, &env.name));
                std::iter::once(r.instance).chain(by_service)
            })
            .collect();
        let backend_alive = state
            .backend
            .as_ref()
            .is_some_and(|(_, at)| now - at < ms(BACKEND_SILENT) as i64);
        let copies: Vec<CopyView> = env
            .copies
            .iter()
            .map(|c| {
                let instance = instance_name(&c.service, &env.name);
                let status = state.observed.get(&instance);
                copy_view(
                    c,
                    &instance,
                    status,
                    registered.contains(&instance),
                    backend_alive,
                )
            })
            .collect();
        let edges = graph::edges(&policy.set, &env.namespace);
        let names: Vec<String> = env.copies.iter().map(|c| c.service.clone()).collect();
        let shared = graph::shared(&edges, &names);
        let settings = &policy.set.mesh.environments;
        let (idle_timeout_ms, idle_timeout_from) = match env.idle_timeout_ms {
            Some(t) => (t, "environment"),
            None => (ms(settings.idle_timeout().0), "mesh"),
        };
        let leased = env.copies.iter().any(|c| c.lease_until_unix_ms.is_some());
        let url = state.ingress.as_ref().map(|t| {
            let entry = graph::entry_points(&policy.compiled, &env.namespace, &env.service)
                .into_iter()
                .next()
                .unwrap_or_else(|| env.service.clone());
            t.replace("{service}", &entry)
                .replace("{environment}", &env.name)
        });
        let state_name = if !backend_alive {
            "pending"
        } else if copies
            .iter()
            .any(|c| c.state == "crashing" || c.state == "failed")
        {
            "degraded"
        } else if copies.iter().all(|c| c.state == "running") {
            "ready"
        } else {
            "starting"
        };
        EnvironmentView {
            name: env.name.clone(),
            namespace: env.namespace.clone(),
            service: env.service.clone(),
            usage: usage(&copies, env, now, settings.prices.as_ref()),
            copies,
            shared,
            created_by: env.created_by.clone(),
            created_unix_ms: env.created_unix_ms,
            created_by_run: env.created_by_run,
            last_request_unix_ms: env.last_request_unix_ms,
            requests_last_hour: env.requests_last_hour(now),
            requests_total: env.requests_total,
            idle_timeout_ms,
            idle_timeout_from: idle_timeout_from.to_owned(),
            idle_deadline_unix_ms: (!leased)
                .then(|| env.last_activity_unix_ms() + idle_timeout_ms as i64),
            url,
            state: state_name.to_owned(),
        }
    }
}

fn copy_view(
    c: &Copy,
    instance: &str,
    status: Option<&InstanceStatus>,
    registered: bool,
    backend_alive: bool,
) -> CopyView {
    let command = match &c.run {
        Run::Command { argv, .. } => Some(argv.clone()),
        Run::Version => None,
    };
    let current = status.filter(|s| s.generation == c.generation);
    let (state, detail) = match current {
        None if !backend_alive => (
            "pending",
            "no backend runs environments (is `sluice up` running?)".to_owned(),
        ),
        None => ("pending", "the backend has not started it yet".to_owned()),
        Some(s) if s.error.is_some() => ("failed", s.error.clone().unwrap_or_default()),
        Some(s) if s.last_exit.is_some() && !(s.running && s.up_ms >= 10_000) => (
            "crashing",
            format!(
                "exited ({}); started {} time{}",
                s.last_exit.as_deref().unwrap_or("?"),
                s.starts,
                if s.starts == 1 { "" } else { "s" }
            ),
        ),
        Some(s) if s.running && registered && s.up_ms >= STARTED_AFTER_MS => {
            ("running", format!("up {}s", s.up_ms / 1000))
        }
        Some(s) if !registered => (
            "starting",
            if s.running {
                "waiting for its sidecar to register".to_owned()
            } else {
                "starting".to_owned()
            },
        ),
        Some(_) => ("starting", "starting".to_owned()),
    };
    CopyView {
        service: c.service.clone(),
        instance: instance.to_owned(),
        version: c.version.clone(),
        origin: c.origin,
        command,
        state: state.to_owned(),
        detail,
        address: current.and_then(|s| s.address.clone()),
        registered,
        generation: c.generation,
        starts: current.map_or(0, |s| s.starts),
        log_tail: current.map(|s| s.log_tail.clone()).unwrap_or_default(),
        cpu_seconds: status.map_or(0.0, |s| s.cpu_seconds),
        peak_rss_bytes: status.map_or(0, |s| s.peak_rss_bytes),
    }
}

/// What the copies use, and what that costs per day at `prices`: the cores used on average
/// since the environment was created and its peak memory, each for 24 hours.
fn usage(copies: &[CopyView], env: &Environment, now: i64, prices: Option<&Prices>) -> Usage {
    let cpu_seconds: f64 = copies.iter().map(|c| c.cpu_seconds).sum();
    let peak_rss_bytes: u64 = copies.iter().map(|c| c.peak_rss_bytes).sum();
    let age_s = ((now - env.created_unix_ms).max(1_000) as f64) / 1000.0;
    let cost_per_day = prices.map(|p| {
        let cores = cpu_seconds / age_s;
        let gib = peak_rss_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
        24.0 * (cores * p.core_hour + gib * p.gb_hour)
    });
    Usage {
        cpu_seconds,
        peak_rss_bytes,
        cost_per_day,
        currency: prices.map(|p| p.currency.clone()),
    }
}
