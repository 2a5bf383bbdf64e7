//! The [`Reconciler`]: the runner's loop that reads the rollouts, carries out the
//! [plan] on the running workloads (draining what loses its traffic, retrying
//! what failed) and asks for rollouts when the mesh file's versions are edited. Kept apart
//! from the planner because this is the side with effects: processes, the network, the log.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::api::{Api, ApiAddress, ApiError};
use super::edits::{Edit, Seen, accept_versions, classify, look};
use super::{Action, Running, phase_name, plan};
use crate::up::Shared;
use crate::up::live::NewInstance;
use crate::up::meshfile::MeshFile;

/// How often the rollouts are read.
pub const POLL: Duration = Duration::from_millis(500);
/// How often the mesh file is looked at.
pub const MESH_FILE_POLL: Duration = Duration::from_secs(1);
/// A failed change (a canary that would not start) is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long a workload that lost its traffic keeps running before it is stopped. The
/// controller has already moved its weight away when the runner sees the rollout's new phase,
/// but every proxy must receive that split first: stopping at once failed the requests still
/// on their way to it (4–6 per healthy rollout in `rollout_bench`).
pub const DRAIN: Duration = Duration::from_secs(3);

/// Prints one line of `sluice up`'s own output.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "sluice up: {line}");
    let _ = out.flush();
}
/// Stops draining workload `name` and logs `said` (what its removal means to the rollout).
fn stop_drained_now(
    workloads: &mut crate::up::live::Workloads,
    rec: &mut crate::up::net::Record,
    sup: &mut crate::up::supervise::Supervisor,
    name: &str,
    said: &str,
) {
    match workloads.remove(rec, sup, name) {
        Ok(()) => say(said),
        Err(e) => say(&format!("cannot remove {name}: {e}")),
    }
}
/// Carries out the plan, and watches the mesh file, until told to stop.
pub struct Reconciler {
    shared: Arc<Mutex<Shared>>,
    mesh: MeshFile,
    mesh_path: PathBuf,
    api: Api,
    /// Warnings already logged.
    warned: HashSet<String>,
    /// Changes that failed, and when: retried after [`RETRY_AFTER`].
    failed: HashMap<String, Instant>,
    /// Whether the API was unreachable at the last poll (logged once per outage).
    api_down: Option<String>,
    seen: Option<Seen>,
    /// Workloads that lost their traffic, stopped once [`DRAIN`] has passed: name → (when,
    /// the line to log then). The planner no longer sees them.
    draining: HashMap<String, (Instant, String)>,
}

impl Reconciler {
    /// A reconciler for the running mesh in `shared`, started from `mesh` (read from
    /// `mesh_path`).
    pub fn new(
        shared: Arc<Mutex<Shared>>,
        mesh: MeshFile,
        mesh_path: PathBuf,
        address: ApiAddress,
    ) -> Self {
        let seen = look(&mesh_path).map(|(s, _)| s);
        Reconciler {
            shared,
            mesh,
            mesh_path,
            api: Api::new(address),
            warned: HashSet::new(),
            failed: HashMap::new(),
            api_down: None,
            seen,
            draining: HashMap::new(),
        }
    }

    /// Polls until `stop` is set. Runs on its own thread with its own small runtime.
    pub fn run(mut self, stop: &AtomicBool) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                say(&format!(
                    "rollouts: cannot start: {e}; rollouts will not run locally"
                ));
                return;
            }
        };
        let mut last_file_check = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let tick = Instant::now();
            if last_file_check.elapsed() >= MESH_FILE_POLL {
                last_file_check = Instant::now();
                rt.block_on(self.check_mesh_file());
            }
            rt.block_on(self.reconcile(stop));
            while tick.elapsed() < POLL && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// One round: stop what has drained, read the rollouts, plan, apply.
    async fn reconcile(&mut self, stop: &AtomicBool) {
        self.stop_drained(Instant::now());
        let rollouts = match self.api.list().await {
            Ok(r) => {
                if self.api_down.take().is_some() {
                    say("the rollout API answers again");
                }
                r
            }
            Err(e) => {
                let msg = e.to_string();
                if self.api_down.as_deref() != Some(&msg) {
                    let what = match &e {
                        // A controller from before the rollout engine.
                        ApiError::Refused {
                            status: StatusCode::NOT_FOUND,
                            ..
                        } => "this controller has no rollout API; no canaries will be started",
                        _ => "the workloads stay as they are until it answers",
                    };
                    say(&format!("rollouts: {msg}; {what}"));
                    self.api_down = Some(msg);
                }
                return;
            }
        };
        let running: Vec<Running> = {
            let s = lock(&self.shared);
            s.running()
        }
        .into_iter()
        .filter(|w| !self.draining.contains_key(&w.name))
        .collect();
        for action in plan(&self.mesh, &running, &rollouts) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            self.apply(action);
        }
    }

    /// Stops the draining workloads whose time has come (all of them with `now` far ahead,
    /// as at teardown).
    fn stop_drained(&mut self, now: Instant) {
        let due: Vec<String> = self
            .draining
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        let (rec, sup) = (&mut shared.rec, &mut shared.sup);
        let Some(workloads) = shared.workloads.as_mut() else {
            return;
        };
        for name in due {
            if let Some((_, said)) = self.draining.remove(&name) {
                stop_drained_now(workloads, rec, sup, &name, &said);
            }
        }
    }

    fn apply(&mut self, action: Action) {
        let key = match &action {
            Action::Warn { key, message } => {
                if self.warned.insert(key.clone()) {
                    say(message);
                }
                return;
            }
            Action::Start { name, version, .. } => format!("start {name} {version}"),
            Action::Remove { name, .. } => format!("remove {name}"),
            Action::Promote { canaries, .. } => format!("promote {}", canaries.join(",")),
        };
        if self
            .failed
            .get(&key)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return;
        }
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        let (rec, sup) = (&mut shared.rec, &mut shared.sup);
        let Some(workloads) = shared.workloads.as_mut() else {
            return;
        };
        let result = match action {
            Action::Warn { .. } => Ok(()),
            Action::Start {
                rollout,
                base,
                name,
                version,
                role,
            } => {
                let label = rollout.label();
                let what = if role.is_empty() {
                    "canary".to_owned()
                } else {
                    format!("{role} copy")
                };
                match self
                    .mesh
                    .workloads
                    .iter()
                    .find(|w| w.name == base)
                    .and_then(|w| Some((w, w.config_for(&version)?)))
                {
                    None => Err(format!("{label}: no configuration for {name}")),
                    Some((w, config)) => {
                        // Wanted again while draining (the same version rolled out again
                        // within seconds): it goes now, and a fresh one starts.
                        if let Some((_, said)) = self.draining.remove(&name) {
                            stop_drained_now(workloads, rec, sup, &name, &said);
                        }
                        let new = NewInstance {
                            name: &name,
                            base: w,
                            version: &version,
                            role: &role,
                            config: &config,
                        };
                        match workloads.add(rec, sup, new) {
                            Ok(live) => {
                                say(&format!("{label}: started {what} {name} ({})", live.addr));
                                Ok(())
                            }
                            Err(e) => Err(format!("{label}: cannot start {what} {name}: {e}")),
                        }
                    }
                }
            }
            Action::Remove { rollout, name } => {
                let label = rollout.label();
                // A canary of another version than the newest rollout's was superseded by it.
                let why = match workloads.get(&name) {
                    Some(l) if !l.role.is_empty() => "baseline copy no longer needed",
                    Some(l) if l.version != rollout.canary_version => "superseded",
                    _ => rollout.phase.ended(),
                };
                // Its traffic is already gone from the split; it stops once every proxy
                // has that split (see DRAIN).
                self.draining.insert(
                    name.clone(),
                    (
                        Instant::now() + DRAIN,
                        format!("{label}: {why}: removed {name}"),
                    ),
                );
                Ok(())
            }
            Action::Promote {
                rollout,
                canaries,
                retire,
            } => {
                let label = rollout.label();
                let mut retired = Vec::new();
                let mut errors = Vec::new();
                for (old, canary) in &retire {
                    // The address first, so the service is never without one; the old
                    // workload stops once every proxy has the promoted split (see DRAIN).
                    match workloads.move_service_addrs(old, canary) {
                        Ok(()) => {
                            retired.push(old.as_str());
                            self.draining.insert(
                                old.clone(),
                                (
                                    Instant::now() + DRAIN,
                                    format!("{label}: stopped {old}, replaced by {canary}"),
                                ),
                            );
                        }
                        Err(e) => errors.push((canary, format!("{old}: {e}"))),
                    }
                }
                // A canary whose old workload could not be retired stays a canary, so the
                // next round plans the promotion again and retries the retirement.
                for c in &canaries {
                    if !errors.iter().any(|(canary, _)| *canary == c) {
                        workloads.make_stable(c);
                    }
                }
                if !retired.is_empty() || errors.is_empty() {
                    let what = if retired.is_empty() {
                        "nothing to retire".to_owned()
                    } else {
                        format!("retired {}", retired.join(", "))
                    };
                    say(&format!("{label}: promoted: {what}"));
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    let errors: Vec<_> = errors.into_iter().map(|(_, e)| e).collect();
                    Err(format!("{label}: cannot retire {}", errors.join("; ")))
                }
            }
        };
        drop(guard);
        match result {
            Ok(()) => {
                self.failed.remove(&key);
            }
            Err(e) => {
                say(&format!("{e} (trying again in {}s)", RETRY_AFTER.as_secs()));
                self.failed.insert(key, Instant::now());
            }
        }
    }

    /// Looks at the mesh file; a version-only edit asks the controller for rollouts.
    async fn check_mesh_file(&mut self) {
        let Some((now, _)) = look(&self.mesh_path) else {
            return;
        };
        if self
            .seen
            .as_ref()
            .is_some_and(|s| s.modified == now.modified && s.hash == now.hash)
        {
            return;
        }
        self.seen = Some(now);
        let edited = match MeshFile::load(&self.mesh_path) {
            Ok(m) => m,
            Err(e) => {
                say(&format!("mesh file: {e}; the running mesh stays as it is"));
                return;
            }
        };
        match classify(&self.mesh, &edited) {
            Edit::None => {}
            Edit::Other => say("mesh file changed; restart sluice up to apply"),
            Edit::Versions(changes) => {
                let mut accepted = Vec::new();
                for (service, change) in &changes {
                    let what = format!("{service} {}→{}", change.from, change.to);
                    match self.api.start(service, &change.to).await {
                        Ok(r) => {
                            accepted.push(service.as_str());
                            say(&format!(
                                "mesh file: {what}: the controller started rollout {} ({})",
                                r.id,
                                phase_name(&r.phase)
                            ));
                        }
                        Err(e) => {
                            say(&format!(
                                "mesh file: {what}: no rollout: {e} (save the file again to retry)"
                            ));
                        }
                    }
                }
                // Only what the controller took is in force; a refused change is asked for
                // again when the file is saved again.
                self.mesh = accept_versions(&self.mesh, &edited, &accepted);
            }
        }
    }
}
fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere while holding it leaves consistent enough state for teardown.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
