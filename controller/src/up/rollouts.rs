//! Rollouts in the local mesh: the runner's side of progressive delivery.
//!
//! The controller's rollout engine decides (weights, analysis, promotion, rollback); the
//! runner only makes the workloads match. Every 500 ms it reads `GET /rollouts` from the
//! controller's admin endpoint, and [`plan`] — a pure function of the mesh file, the running
//! workloads and that list — says what to change:
//!
//! | newest rollout of a service is | the runner |
//! |---|---|
//! | `pending`, `progressing`, `paused`, `waiting-confirmation` | first carries out a promotion to the rollout's baseline version it has not carried out yet (a rollout started within one poll of the previous one's promotion); runs a canary `<workload>-<version>` beside each stable workload of the service (from the workload's `versions` entry) and removes canaries of any other version; when the rollout asks for a baseline copy, also a fresh copy of the stable version, `<workload>-<stable version>-baseline`, with the role `baseline` ([`baseline_copies`]) |
//! | `promoted` | retires the stable workloads its canaries replace (their service address moves to the canary first) and keeps the canaries as the new stable ones |
//! | `rolled-back`, `aborted`, `superseded`, `failed` | removes the service's canaries and baseline copies |
//!
//! A workload that loses its traffic (a retired stable one, a removed canary or copy) keeps
//! running for [`DRAIN`] before it is stopped: the controller moved its weight away first, but
//! the proxies must receive that split before nothing more is sent to it.
//!
//! [`Reconciler`] carries the plan out. It also polls the mesh file every second: an edit
//! that only changes workloads' `version` asks the controller for a rollout
//! (`POST /rollouts`); any other edit is reported and ignored until `sluice up` restarts.
//!
//! The controller being down, answering garbage or not knowing `/rollouts` yet never stops
//! the mesh: the workloads stay as they are and the problem is logged once.
//!
//! The planner (pure, tested here) lives in this module; the [`Reconciler`] that carries it
//! out, its HTTP client for the [rollout API](Api) and the [mesh file's edits](classify) each
//! have a module of their own.

mod api;
mod edits;
mod reconcile;

use std::collections::HashSet;

use serde::Deserialize;

use super::meshfile::{MAX_CANARY_NAME, MeshFile, is_label};

pub use api::{Api, ApiAddress, ApiError, admin_file, parse_list};
pub use edits::{Edit, VersionChange, accept_versions, classify};
pub use reconcile::{DRAIN, MESH_FILE_POLL, POLL, Reconciler, say};

/// Where a rollout is, as the controller says (`phase`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Phase {
    /// Waiting for the canary's instances to be ready.
    Pending,
    /// Shifting traffic step by step.
    Progressing,
    /// Paused by someone.
    Paused,
    /// Waiting for a person to confirm the next step.
    WaitingConfirmation,
    /// The canary is the new stable version.
    Promoted,
    /// The analysis failed; traffic went back to the baseline.
    RolledBack,
    /// Stopped by someone.
    Aborted,
    /// A newer rollout of the service replaced it.
    Superseded,
    /// The engine could not go on.
    Failed,
    /// A phase this runner does not know (a newer controller): nothing is changed for it.
    Other(String),
}

impl From<String> for Phase {
    fn from(s: String) -> Self {
        match s.as_str() {
            "pending" => Phase::Pending,
            "progressing" => Phase::Progressing,
            "paused" => Phase::Paused,
            "waiting-confirmation" => Phase::WaitingConfirmation,
            "promoted" => Phase::Promoted,
            "rolled-back" => Phase::RolledBack,
            "aborted" => Phase::Aborted,
            "superseded" => Phase::Superseded,
            "failed" => Phase::Failed,
            _ => Phase::Other(s),
        }
    }
}

impl Phase {
    /// Whether the rollout still needs its canary running.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Phase::Pending | Phase::Progressing | Phase::Paused | Phase::WaitingConfirmation
        )
    }

    /// How the log names the end of a rollout.
    fn ended(&self) -> &str {
        match self {
            Phase::RolledBack => "rolled back",
            Phase::Aborted => "aborted",
            Phase::Superseded => "superseded",
            Phase::Failed => "failed",
            Phase::Promoted => "promoted",
            _ => "ended",
        }
    }
}

fn phase_name(p: &Phase) -> String {
    match p {
        Phase::Pending => "pending".into(),
        Phase::Progressing => "progressing".into(),
        Phase::Paused => "paused".into(),
        Phase::WaitingConfirmation => "waiting-confirmation".into(),
        Phase::Promoted => "promoted".into(),
        Phase::RolledBack => "rolled-back".into(),
        Phase::Aborted => "aborted".into(),
        Phase::Superseded => "superseded".into(),
        Phase::Failed => "failed".into(),
        Phase::Other(s) => s.clone(),
    }
}

/// One rollout of `GET /rollouts` (the fields the runner uses; the rest is ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Rollout {
    /// E.g. `r-20261124-2a9f`.
    pub id: String,
    /// The service's namespace (`sluice up` runs `default` only).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service.
    pub service: String,
    /// The version traffic comes from.
    #[serde(default)]
    pub baseline_version: String,
    /// The version being rolled out.
    pub canary_version: String,
    /// Where it is.
    pub phase: Phase,
    /// What the canary is judged against (absent from controllers without baseline copies).
    #[serde(default)]
    pub baseline: RolloutBaseline,
}

/// The part of a rollout's `baseline` the runner acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RolloutBaseline {
    /// `waiting`, `copy` or `stable`.
    #[serde(default)]
    pub kind: String,
    /// Whether the controller asked for a fresh copy of the stable version.
    #[serde(default)]
    pub copy_requested: bool,
}

impl Rollout {
    /// Whether the runner should run a baseline copy for this rollout: asked for, and not
    /// given up on (the controller fell back to the stable instances).
    pub fn wants_copy(&self) -> bool {
        self.phase.is_active() && self.baseline.copy_requested && self.baseline.kind != "stable"
    }
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl Rollout {
    /// `rollout r-… payments v1→v2`, the start of every log line about it.
    pub fn label(&self) -> String {
        format!(
            "rollout {} {} {}→{}",
            self.id, self.service, self.baseline_version, self.canary_version
        )
    }
}

/// A running workload, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// Its instance name (`payments`, `payments-v2`).
    pub name: String,
    /// The mesh file's workload it derives from.
    pub base: String,
    /// Its service.
    pub service: String,
    /// Its version.
    pub version: String,
    /// Whether a rollout started it: a canary not yet promoted, or a baseline copy.
    pub canary: bool,
    /// Empty, or `baseline` for a rollout's fresh copy of the stable version.
    pub role: String,
}

/// One change to the running workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start `name`: an instance of `version` of mesh-file workload `base`'s service with
    /// `role` (empty for a canary; `baseline` for a fresh copy of the stable version).
    Start {
        /// The rollout that wants it.
        rollout: Rollout,
        /// The mesh file's workload.
        base: String,
        /// The instance's name.
        name: String,
        /// Its version.
        version: String,
        /// Its role.
        role: String,
    },
    /// Stop and remove canary `name`.
    Remove {
        /// The rollout that ended (or the newer one that replaced it).
        rollout: Rollout,
        /// The canary.
        name: String,
    },
    /// The rollout was promoted: the canaries become stable; each `(old, canary)` pair moves
    /// the old workload's service addresses to the canary, then retires the old one.
    Promote {
        /// The promoted rollout.
        rollout: Rollout,
        /// The canaries now stable.
        canaries: Vec<String>,
        /// `(old stable, its canary)`.
        retire: Vec<(String, String)>,
    },
    /// Something the runner cannot do; logged once per `key`.
    Warn {
        /// Deduplicates the message.
        key: String,
        /// The line to log.
        message: String,
    },
}

/// The newest rollout of each service of namespace `default`: the first one listed (the list
/// is newest first).
pub fn newest_per_service(rollouts: &[Rollout]) -> Vec<&Rollout> {
    let mut seen = HashSet::new();
    rollouts
        .iter()
        .filter(|r| r.namespace == "default" && seen.insert(r.service.as_str()))
        .collect()
}

/// What to change so the workloads match the rollouts. Pure: the same inputs give the same
/// actions, and applying them then planning again gives nothing (bar warnings).
pub fn plan(mesh: &MeshFile, running: &[Running], rollouts: &[Rollout]) -> Vec<Action> {
    let mut actions = Vec::new();
    for r in newest_per_service(rollouts) {
        let of_service = |canary: bool| {
            running
                .iter()
                .filter(move |w| w.service == r.service && w.canary == canary && w.role.is_empty())
        };
        // A newer rollout can start within one poll of a promotion, so the runner may see the
        // promoted rollout only behind it. Its canaries are the stable version the new rollout
        // starts from: they are promoted first, never removed as a superseded rollout's.
        let missed = r
            .phase
            .is_active()
            .then(|| missed_promotion(r, rollouts))
            .flatten();
        if let Some(promoted) = missed {
            actions.extend(promotion(promoted, running));
        }
        actions.extend(baseline_copies(mesh, running, r));
        let version = &r.canary_version;
        match &r.phase {
            phase if phase.is_active() => {
                // Canaries of another version belong to a rollout this one superseded.
                for c in of_service(true).filter(|c| {
                    c.version != *version && missed.is_none_or(|p| c.version != p.canary_version)
                }) {
                    actions.push(Action::Remove {
                        rollout: r.clone(),
                        name: c.name.clone(),
                    });
                }
                for stable in of_service(false).filter(|s| s.version != *version) {
                    let Some(base) = mesh.workloads.iter().find(|w| w.name == stable.base) else {
                        continue;
                    };
                    let name = base.canary_name(version);
                    if let Some(other) = running.iter().find(|w| w.name == name) {
                        if !(other.canary && other.version == *version) {
                            actions.push(Action::Warn {
                                key: format!("clash {} {name}", r.id),
                                message: format!(
                                    "{}: cannot start canary {name}: a workload of that name \
                                     is already running",
                                    r.label()
                                ),
                            });
                        }
                        continue;
                    }
                    if !is_label(version) || name.len() > MAX_CANARY_NAME {
                        actions.push(Action::Warn {
                            key: format!("name {} {name}", r.id),
                            message: format!(
                                "{}: cannot run version `{version}` locally: `{name}` is not a \
                                 DNS label of at most {MAX_CANARY_NAME} characters",
                                r.label()
                            ),
                        });
                        continue;
                    }
                    if base.config_for(version).is_none() {
                        actions.push(Action::Warn {
                            key: format!("missing {} {}", r.id, base.name),
                            message: format!(
                                "{}: {} has no `versions.{version}` in {}; add one to run the \
                                 canary locally",
                                r.label(),
                                base.name,
                                mesh_file_name(mesh)
                            ),
                        });
                        continue;
                    }
                    actions.push(Action::Start {
                        rollout: r.clone(),
                        base: base.name.clone(),
                        name,
                        version: version.clone(),
                        role: String::new(),
                    });
                }
            }
            Phase::Promoted => {
                for c in of_service(true).filter(|c| c.version != *version) {
                    actions.push(Action::Remove {
                        rollout: r.clone(),
                        name: c.name.clone(),
                    });
                }
                actions.extend(promotion(r, running));
            }
            Phase::RolledBack | Phase::Aborted | Phase::Superseded | Phase::Failed => {
                for c in of_service(true) {
                    actions.push(Action::Remove {
                        rollout: r.clone(),
                        name: c.name.clone(),
                    });
                }
            }
            other => actions.push(Action::Warn {
                key: format!("phase {} {other:?}", r.id),
                message: format!(
                    "{}: unknown phase {other:?}; leaving its workloads as they are",
                    r.label()
                ),
            }),
        }
    }
    actions
}

/// The promoted rollout whose canaries `r` (active) starts from, when the runner has not
/// made them stable yet: the newest promoted rollout of the service to `r`'s baseline version.
fn missed_promotion<'a>(r: &Rollout, rollouts: &'a [Rollout]) -> Option<&'a Rollout> {
    rollouts
        .iter()
        .filter(|p| p.namespace == r.namespace && p.service == r.service && p.id != r.id)
        .find(|p| p.phase == Phase::Promoted)
        .filter(|p| p.canary_version == r.baseline_version && p.canary_version != r.canary_version)
}

/// Carries out promoted rollout `r`: its canaries become stable, each replacing the stable
/// workload of the same mesh-file workload. Nothing when no canary of its version runs here
/// (promoted before this run, or done already): the workloads then stay as they are.
fn promotion(r: &Rollout, running: &[Running]) -> Vec<Action> {
    let of_service = |canary: bool| {
        running
            .iter()
            .filter(move |w| w.service == r.service && w.canary == canary && w.role.is_empty())
    };
    let version = &r.canary_version;
    let canaries: Vec<&Running> = of_service(true).filter(|c| c.version == *version).collect();
    if canaries.is_empty() {
        return Vec::new();
    }
    let mut actions = Vec::new();
    let mut retire = Vec::new();
    for stable in of_service(false).filter(|s| s.version != *version) {
        match canaries.iter().find(|c| c.base == stable.base) {
            Some(c) => retire.push((stable.name.clone(), c.name.clone())),
            // Retiring it would lose capacity nothing replaces.
            None => actions.push(Action::Warn {
                key: format!("unreplaced {} {}", r.id, stable.name),
                message: format!(
                    "{}: promoted, but {} keeps running {}: no canary replaced it",
                    r.label(),
                    stable.name,
                    stable.version
                ),
            }),
        }
    }
    actions.push(Action::Promote {
        rollout: r.clone(),
        canaries: canaries.iter().map(|c| c.name.clone()).collect(),
        retire,
    });
    actions
}

/// The baseline copies `r` needs, as starts and removals: while [`Rollout::wants_copy`], one
/// fresh instance of the stable version with the role `baseline` beside each stable workload
/// (`<workload>-<stable version>-baseline`, the workload's own command and env); otherwise
/// none. Kept apart from the canaries' planning so that it reads as what a backend does:
/// "start an instance of service S, version V, role `baseline`", and "stop it".
pub fn baseline_copies(mesh: &MeshFile, running: &[Running], r: &Rollout) -> Vec<Action> {
    let role = sluice_policy::resources::BASELINE_ROLE;
    let mut actions = Vec::new();
    let copies = || {
        running
            .iter()
            .filter(move |w| w.service == r.service && w.role == role)
    };
    let wanted: Vec<(String, String)> = if r.wants_copy() {
        running
            .iter()
            .filter(|w| {
                w.service == r.service
                    && w.role.is_empty()
                    && !w.canary
                    && w.version == r.baseline_version
            })
            .map(|w| (w.base.clone(), copy_name(&w.base, &r.baseline_version)))
            .collect()
    } else {
        Vec::new()
    };
    for c in copies() {
        if !wanted.iter().any(|(_, name)| *name == c.name) || c.version != r.baseline_version {
            actions.push(Action::Remove {
                rollout: r.clone(),
                name: c.name.clone(),
            });
        }
    }
    for (base, name) in wanted {
        if running.iter().any(|w| w.name == name) {
            continue;
        }
        if name.len() > MAX_CANARY_NAME {
            actions.push(Action::Warn {
                key: format!("copy-name {} {name}", r.id),
                message: format!(
                    "{}: no baseline copy: `{name}` is longer than {MAX_CANARY_NAME} characters; \
                     the canary is judged against the running {} instances",
                    r.label(),
                    r.baseline_version
                ),
            });
            continue;
        }
        if mesh
            .workloads
            .iter()
            .find(|w| w.name == base)
            .and_then(|w| w.config_for(&r.baseline_version))
            .is_none()
        {
            continue;
        }
        actions.push(Action::Start {
            rollout: r.clone(),
            base,
            name,
            version: r.baseline_version.clone(),
            role: role.to_owned(),
        });
    }
    actions
}

/// `payments-v1-baseline`: the name of a stable workload's baseline copy.
pub fn copy_name(base: &str, version: &str) -> String {
    format!(
        "{base}-{version}-{}",
        sluice_policy::resources::BASELINE_ROLE
    )
}
fn mesh_file_name(mesh: &MeshFile) -> String {
    mesh.source.file_name().map_or_else(
        || "the mesh file".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::api::refused;
    use super::*;
    use hyper::StatusCode;

    const MESH: &str = "policy: p
workloads:
  - name: payments
    service: payments
    command: [shop, payments]
    port: 8080
    env: { SHOP_VERSION: v1 }
    versions:
      v2: { env: { SHOP_VERSION: v2 } }
      v3: { env: { SHOP_VERSION: v3, SHOP_ERROR_RATE: '0.05' } }
  - name: payments-b
    service: payments
    command: [shop, payments]
    port: 8080
    versions:
      v2: {}
      v3: {}
  - name: catalog
    service: catalog
    command: [shop, catalog]
    port: 8080
";

    fn mesh() -> MeshFile {
        MeshFile::parse("mesh.yaml", MESH).expect("valid mesh file")
    }

    /// The mesh file's workloads, as `sluice up` starts them.
    fn initial(mesh: &MeshFile) -> Vec<Running> {
        mesh.workloads
            .iter()
            .map(|w| Running {
                name: w.name.clone(),
                base: w.name.clone(),
                service: w.service.clone(),
                version: w.version.clone(),
                canary: false,
                role: String::new(),
            })
            .collect()
    }

    fn rollout(id: &str, service: &str, from: &str, to: &str, phase: &str) -> Rollout {
        Rollout {
            id: id.into(),
            namespace: "default".into(),
            service: service.into(),
            baseline_version: from.into(),
            canary_version: to.into(),
            phase: Phase::from(phase.to_owned()),
            baseline: RolloutBaseline::default(),
        }
    }

    /// What the executor does with the actions, on the planner's model.
    fn apply(running: &mut Vec<Running>, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Start {
                    base,
                    name,
                    version,
                    rollout,
                    role,
                } => running.push(Running {
                    name: name.clone(),
                    base: base.clone(),
                    service: rollout.service.clone(),
                    version: version.clone(),
                    canary: true,
                    role: role.clone(),
                }),
                Action::Remove { name, .. } => running.retain(|w| w.name != *name),
                Action::Promote {
                    canaries, retire, ..
                } => {
                    running.retain(|w| !retire.iter().any(|(old, _)| *old == w.name));
                    for w in running.iter_mut() {
                        if canaries.contains(&w.name) {
                            w.canary = false;
                        }
                    }
                }
                Action::Warn { .. } => {}
            }
        }
    }

    fn names(running: &[Running]) -> Vec<String> {
        let mut v: Vec<String> = running
            .iter()
            .map(|w| format!("{}{}", w.name, if w.canary { "*" } else { "" }))
            .collect();
        v.sort();
        v
    }

    fn starts(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn removes(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn warnings(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Warn { message, .. } => Some(message.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Plans, applies, and checks that planning again changes nothing.
    fn step(mesh: &MeshFile, running: &mut Vec<Running>, rollouts: &[Rollout]) -> Vec<Action> {
        let actions = plan(mesh, running, rollouts);
        apply(running, &actions);
        let again = plan(mesh, running, rollouts);
        assert!(
            again.iter().all(|a| matches!(a, Action::Warn { .. })),
            "not idempotent: {again:?}"
        );
        actions
    }

    #[test]
    fn every_active_phase_runs_a_canary_beside_each_stable_workload() {
        let mesh = mesh();
        for phase in ["pending", "progressing", "paused", "waiting-confirmation"] {
            let mut running = initial(&mesh);
            let r = [rollout("r-1", "payments", "v1", "v2", phase)];
            let actions = step(&mesh, &mut running, &r);
            assert_eq!(
                starts(&actions),
                ["payments-v2", "payments-b-v2"],
                "{phase}"
            );
            assert_eq!(
                names(&running),
                [
                    "catalog",
                    "payments",
                    "payments-b",
                    "payments-b-v2*",
                    "payments-v2*"
                ]
            );
            let Action::Start { base, version, .. } = &actions[0] else {
                panic!("a start: {actions:?}");
            };
            assert_eq!((base.as_str(), version.as_str()), ("payments", "v2"));
        }
    }

    #[test]
    fn a_rollout_that_asks_for_a_baseline_copy_gets_one_until_it_ends() {
        let mesh = mesh();
        let mut running = initial(&mesh);
        let at = |phase: &str, kind: &str| {
            let mut r = rollout("r-1", "payments", "v1", "v2", phase);
            r.baseline = RolloutBaseline {
                kind: kind.into(),
                copy_requested: true,
            };
            [r]
        };
        let actions = step(&mesh, &mut running, &at("pending", "waiting"));
        assert_eq!(
            starts(&actions),
            [
                "payments-v1-baseline",
                "payments-b-v1-baseline",
                "payments-v2",
                "payments-b-v2"
            ]
        );
        let copy = actions
            .iter()
            .find_map(|a| match a {
                Action::Start {
                    name,
                    version,
                    role,
                    ..
                } if name == "payments-v1-baseline" => Some((version.clone(), role.clone())),
                _ => None,
            })
            .expect("the copy's start");
        assert_eq!(copy, ("v1".to_owned(), "baseline".to_owned()));
        // The copies are not stable workloads: no copy of a copy, no canary beside one.
        assert_eq!(plan(&mesh, &running, &at("progressing", "copy")), []);
        // The controller gave up on the copy: it goes, the canaries stay.
        let actions = step(&mesh, &mut running, &at("progressing", "stable"));
        assert_eq!(
            removes(&actions),
            ["payments-v1-baseline", "payments-b-v1-baseline"]
        );
        assert!(starts(&actions).is_empty());
        // Promoted: the copies go with the old stable workloads.
        let mut running = initial(&mesh);
        step(&mesh, &mut running, &at("progressing", "copy"));
        let actions = step(&mesh, &mut running, &at("promoted", "copy"));
        assert_eq!(
            removes(&actions),
            ["payments-v1-baseline", "payments-b-v1-baseline"]
        );
        assert_eq!(names(&running), ["catalog", "payments-b-v2", "payments-v2"]);
        // Rolled back: canaries and copies go.
        let mut running = initial(&mesh);
        step(&mesh, &mut running, &at("progressing", "copy"));
        step(&mesh, &mut running, &at("rolled-back", "copy"));
        assert_eq!(running, initial(&mesh));
    }

    #[test]
    fn the_phases_of_one_rollout_in_sequence() {
        let mesh = mesh();
        let mut running = initial(&mesh);
        let at = |phase: &str| [rollout("r-1", "payments", "v1", "v2", phase)];
        assert_eq!(starts(&step(&mesh, &mut running, &at("pending"))).len(), 2);
        for phase in [
            "progressing",
            "paused",
            "progressing",
            "waiting-confirmation",
        ] {
            assert_eq!(plan(&mesh, &running, &at(phase)), [], "{phase}");
        }
        let actions = step(&mesh, &mut running, &at("promoted"));
        let [
            Action::Promote {
                canaries, retire, ..
            },
        ] = actions.as_slice()
        else {
            panic!("one promotion: {actions:?}");
        };
        assert_eq!(canaries, &["payments-v2", "payments-b-v2"]);
        assert_eq!(
            retire,
            &[
                ("payments".to_owned(), "payments-v2".to_owned()),
                ("payments-b".to_owned(), "payments-b-v2".to_owned())
            ]
        );
        assert_eq!(
            names(&running),
            ["catalog", "payments-b-v2", "payments-v2"],
            "the canaries are the stable workloads now"
        );
    }

    #[test]
    fn every_unsuccessful_end_removes_the_canaries() {
        let mesh = mesh();
        for phase in ["rolled-back", "aborted", "superseded", "failed"] {
            let mut running = initial(&mesh);
            step(
                &mesh,
                &mut running,
                &[rollout("r-1", "payments", "v1", "v3", "progressing")],
            );
            assert_eq!(running.len(), 5);
            let actions = step(
                &mesh,
                &mut running,
                &[rollout("r-1", "payments", "v1", "v3", phase)],
            );
            assert_eq!(
                removes(&actions),
                ["payments-v3", "payments-b-v3"],
                "{phase}"
            );
            assert_eq!(running, initial(&mesh), "{phase}: back to the start");
            // And with no canaries, nothing to do.
            assert_eq!(
                plan(
                    &mesh,
                    &initial(&mesh),
                    &[rollout("r-1", "payments", "v1", "v3", phase)]
                ),
                []
            );
        }
    }

    #[test]
    fn a_newer_rollout_supersedes_the_canaries_of_the_older_one() {
        let mesh = mesh();
        let mut running = initial(&mesh);
        step(
            &mesh,
            &mut running,
            &[rollout("r-1", "payments", "v1", "v2", "progressing")],
        );
        // Newest first: r-2 wants v3; r-1 is listed as superseded after it.
        let both = [
            rollout("r-2", "payments", "v1", "v3", "pending"),
            rollout("r-1", "payments", "v1", "v2", "superseded"),
        ];
        let actions = step(&mesh, &mut running, &both);
        assert_eq!(removes(&actions), ["payments-v2", "payments-b-v2"]);
        assert_eq!(starts(&actions), ["payments-v3", "payments-b-v3"]);
        // Only the newest counts: r-1 listed first would be the newest.
        assert_eq!(newest_per_service(&both)[0].id, "r-2");
        // The newer one promoted while an older canary version still runs (missed a poll):
        // the older canaries go, the newer ones stay.
        let mut mixed = initial(&mesh);
        step(
            &mesh,
            &mut mixed,
            &[rollout("r-1", "payments", "v1", "v2", "progressing")],
        );
        let actions = plan(
            &mesh,
            &mixed,
            &[rollout("r-2", "payments", "v1", "v3", "promoted")],
        );
        assert_eq!(removes(&actions), ["payments-v2", "payments-b-v2"]);
        assert!(!actions.iter().any(|a| matches!(a, Action::Promote { .. })));
    }

    #[test]
    fn after_a_promotion_the_next_rollout_starts_from_the_new_stable_workloads() {
        let mesh = mesh();
        let mut running = initial(&mesh);
        let r1 = |phase: &str| rollout("r-1", "payments", "v1", "v2", phase);
        step(&mesh, &mut running, &[r1("progressing")]);
        step(&mesh, &mut running, &[r1("promoted")]);
        // r-2 (v2 → v3) is the newest; the promoted r-1 is still listed.
        let r2 = |phase: &str| {
            [
                rollout("r-2", "payments", "v2", "v3", phase),
                r1("promoted"),
            ]
        };
        let actions = step(&mesh, &mut running, &r2("progressing"));
        assert_eq!(starts(&actions), ["payments-v3", "payments-b-v3"]);
        assert!(
            removes(&actions).is_empty(),
            "the v2 workloads are stable now"
        );
        let actions = step(&mesh, &mut running, &r2("rolled-back"));
        assert_eq!(removes(&actions), ["payments-v3", "payments-b-v3"]);
        assert_eq!(names(&running), ["catalog", "payments-b-v2", "payments-v2"]);
        // A third rollout, back to v1: the base version needs no `versions` entry.
        let r3 = [rollout("r-3", "payments", "v2", "v1", "progressing")];
        let actions = step(&mesh, &mut running, &r3);
        assert_eq!(starts(&actions), ["payments-v1", "payments-b-v1"]);
        let r3 = [rollout("r-3", "payments", "v2", "v1", "promoted")];
        step(&mesh, &mut running, &r3);
        assert_eq!(names(&running), ["catalog", "payments-b-v1", "payments-v1"]);
    }

    /// Seen in the shop: `sluice rollout start v3` within one poll of v2's promotion. The
    /// runner first saw v2's rollout promoted only behind the newer one, removed the promoted
    /// canaries as a superseded rollout's, and kept v1 running as stable; the controller
    /// then split traffic between v2 (no instances left) and v3, so v3 got all of it.
    #[test]
    fn a_promotion_missed_behind_a_newer_rollout_is_carried_out_first() {
        let mesh = mesh();
        let mut running = initial(&mesh);
        let r1 = |phase: &str| rollout("r-1", "payments", "v1", "v2", phase);
        step(&mesh, &mut running, &[r1("progressing")]);
        // The runner never sees r-1 as the newest promoted rollout.
        let both = [
            rollout("r-2", "payments", "v2", "v3", "progressing"),
            r1("promoted"),
        ];
        let actions = step(&mesh, &mut running, &both);
        assert!(removes(&actions).is_empty(), "{actions:#?}");
        let promoted: Vec<&Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::Promote { .. }))
            .collect();
        assert!(
            matches!(
                promoted[..],
                [Action::Promote { rollout, canaries, retire }]
                    if rollout.id == "r-1"
                        && *canaries == ["payments-v2", "payments-b-v2"]
                        && *retire == [
                            ("payments".to_owned(), "payments-v2".to_owned()),
                            ("payments-b".to_owned(), "payments-b-v2".to_owned()),
                        ]
            ),
            "{actions:#?}"
        );
        assert_eq!(starts(&actions), ["payments-v3", "payments-b-v3"]);
        assert_eq!(
            names(&running),
            [
                "catalog",
                "payments-b-v2",
                "payments-b-v3*",
                "payments-v2",
                "payments-v3*"
            ]
        );
    }

    #[test]
    fn a_version_without_an_override_is_reported_not_run() {
        let mesh = mesh();
        let running = initial(&mesh);
        let actions = plan(
            &mesh,
            &running,
            &[rollout("r-9", "payments", "v1", "v9", "progressing")],
        );
        assert_eq!(starts(&actions), Vec::<&str>::new());
        assert_eq!(
            warnings(&actions),
            [
                "rollout r-9 payments v1→v9: payments has no `versions.v9` in mesh.yaml; add one to run the canary locally",
                "rollout r-9 payments v1→v9: payments-b has no `versions.v9` in mesh.yaml; add one to run the canary locally",
            ]
        );
        // A service with no `versions` at all.
        let actions = plan(
            &mesh,
            &running,
            &[rollout("r-5", "catalog", "v1", "v2", "pending")],
        );
        assert_eq!(
            warnings(&actions),
            [
                "rollout r-5 catalog v1→v2: catalog has no `versions.v2` in mesh.yaml; add one to run the canary locally"
            ]
        );
        // Keys are stable across rounds, so the executor logs each once.
        assert_eq!(
            actions,
            plan(
                &mesh,
                &running,
                &[rollout("r-5", "catalog", "v1", "v2", "pending")]
            )
        );
    }

    #[test]
    fn a_promotion_keeps_a_stable_workload_no_canary_replaces() {
        let text = MESH.replace("    versions:\n      v2: {}\n      v3: {}\n", "");
        let mesh = MeshFile::parse("mesh.yaml", &text).expect("valid");
        let mut running = initial(&mesh);
        let at = |phase: &str| [rollout("r-1", "payments", "v1", "v2", phase)];
        let actions = step(&mesh, &mut running, &at("progressing"));
        assert_eq!(starts(&actions), ["payments-v2"]);
        assert_eq!(warnings(&actions).len(), 1);
        let actions = step(&mesh, &mut running, &at("promoted"));
        assert!(
            warnings(&actions)
                .iter()
                .any(|w| w.contains("payments-b keeps running v1")),
            "{actions:?}"
        );
        assert_eq!(names(&running), ["catalog", "payments-b", "payments-v2"]);
    }

    #[test]
    fn what_the_planner_leaves_alone() {
        let mesh = mesh();
        let running = initial(&mesh);
        // Promoted before this run (nothing of v2 runs here): the mesh file's workloads stay.
        assert_eq!(
            plan(
                &mesh,
                &running,
                &[rollout("r-1", "payments", "v1", "v2", "promoted")]
            ),
            []
        );
        // Another namespace: `sluice up` runs `default` only.
        let mut other = rollout("r-1", "payments", "v1", "v2", "progressing");
        other.namespace = "team-b".into();
        assert_eq!(plan(&mesh, &running, &[other]), []);
        // A rollout to the version already running.
        assert_eq!(
            plan(
                &mesh,
                &running,
                &[rollout("r-1", "payments", "v0", "v1", "progressing")]
            ),
            []
        );
        // A phase from a newer controller: reported, nothing changed.
        let actions = plan(
            &mesh,
            &running,
            &[rollout("r-1", "payments", "v1", "v2", "baking")],
        );
        assert_eq!(warnings(&actions).len(), 1, "{actions:?}");
        assert!(warnings(&actions)[0].contains("unknown phase"));
        // A service this mesh file does not run.
        assert_eq!(
            plan(
                &mesh,
                &running,
                &[rollout("r-1", "ledger", "v1", "v2", "progressing")]
            ),
            []
        );
        // No rollouts at all.
        assert_eq!(plan(&mesh, &running, &[]), []);
    }

    #[test]
    fn a_canary_name_taken_by_another_workload_is_reported() {
        let mesh = mesh();
        let mut running = initial(&mesh);
        // Someone's stable workload happens to be called like the canary.
        running.push(Running {
            name: "catalog-v2".into(),
            base: "catalog".into(),
            service: "ledger".into(),
            version: "v1".into(),
            canary: false,
            role: String::new(),
        });
        let mut text = MESH.to_owned();
        text.push_str("    versions: { v2: {} }\n");
        let mesh = MeshFile::parse("mesh.yaml", &text).expect("valid");
        let actions = plan(
            &mesh,
            &running,
            &[rollout("r-1", "catalog", "v1", "v2", "pending")],
        );
        assert!(starts(&actions).is_empty());
        assert!(
            warnings(&actions)[0].contains("already running"),
            "{actions:?}"
        );
    }

    #[test]
    fn the_rollouts_json_is_read_leniently() {
        let body = br#"{"rollouts":[
            {"id":"r-20261124-2a9f","namespace":"default","service":"payments",
             "baseline_version":"v1","canary_version":"v2","phase":"progressing","weight":5,
             "steps":[5,25,50],"analysis":{"error_rate":0.001}},
            {"id":"r-broken","service":"payments"},
            {"id":"r-old","namespace":"default","service":"payments",
             "baseline_version":"v0","canary_version":"v1","phase":"promoted"}
        ]}"#;
        let list = parse_list(body).expect("the documented JSON");
        assert_eq!(list.len(), 2, "the entry without its fields is skipped");
        assert_eq!(list[0].phase, Phase::Progressing);
        assert_eq!(list[0].label(), "rollout r-20261124-2a9f payments v1→v2");
        assert_eq!(list[1].phase, Phase::Promoted);
        assert!(parse_list(b"not found: try /status\n").is_err());
        assert!(parse_list(br#"{"rollouts":[]}"#).expect("empty").is_empty());
        for (text, phase) in [
            ("pending", Phase::Pending),
            ("waiting-confirmation", Phase::WaitingConfirmation),
            ("rolled-back", Phase::RolledBack),
            ("aborted", Phase::Aborted),
            ("superseded", Phase::Superseded),
            ("failed", Phase::Failed),
            ("paused", Phase::Paused),
        ] {
            assert_eq!(Phase::from(text.to_owned()), phase);
            assert_eq!(phase_name(&phase), text);
        }
    }

    #[test]
    fn refusals_carry_the_controllers_error_text() {
        let e = refused(
            "http://x/rollouts".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"payments has no CanaryPolicy"}"#,
        );
        assert_eq!(
            e.to_string(),
            "http://x/rollouts answered 422 Unprocessable Entity: payments has no CanaryPolicy"
        );
        let e = refused(
            "u".into(),
            StatusCode::NOT_FOUND,
            b"not found: try /status\n",
        );
        assert!(e.to_string().ends_with("not found: try /status"), "{e}");
    }

    #[test]
    fn mesh_file_edits_are_classified() {
        let old = mesh();
        let edit = |from: &str, to: &str| {
            MeshFile::parse("mesh.yaml", &MESH.replacen(from, to, 1)).expect("valid edit")
        };
        assert_eq!(classify(&old, &mesh()), Edit::None);
        assert_eq!(
            classify(&old, &edit("policy: p\n", "# a comment\npolicy: p\n")),
            Edit::None
        );
        // Both payments workloads to v2: one rollout of the service.
        let both = MeshFile::parse(
            "mesh.yaml",
            &MESH.replacen(
                "command: [shop, payments]\n    port",
                "command: [shop, payments]\n    version: v2\n    port",
                2,
            ),
        )
        .expect("valid");
        let Edit::Versions(changes) = classify(&old, &both) else {
            panic!("a version-only edit");
        };
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes["payments"],
            VersionChange {
                from: "v1".into(),
                to: "v2".into()
            }
        );
        // One of two workloads: still a rollout of the service.
        let one = edit(
            "    port: 8080\n    env",
            "    version: v3\n    port: 8080\n    env",
        );
        assert!(matches!(classify(&old, &one), Edit::Versions(c) if c["payments"].to == "v3"));
        // The two to different versions: not something one rollout can do.
        let split = MeshFile::parse(
            "mesh.yaml",
            &MESH
                .replacen(
                    "command: [shop, payments]\n    port",
                    "command: [shop, payments]\n    version: v2\n    port",
                    1,
                )
                .replacen(
                    "port: 8080\n    versions:\n      v2: {}",
                    "version: v3\n    port: 8080\n    versions:\n      v2: {}",
                    1,
                ),
        )
        .expect("valid");
        assert_eq!(classify(&old, &split), Edit::Other);
        // Anything else.
        assert_eq!(
            classify(&old, &edit("SHOP_VERSION: v1", "SHOP_VERSION: v1b")),
            Edit::Other
        );
        assert_eq!(
            classify(&old, &edit("version: v1", "version: v1")),
            Edit::None
        );
        let version_and_env = edit(
            "    port: 8080\n    env: { SHOP_VERSION: v1 }",
            "    version: v2\n    port: 8080\n    env: { SHOP_VERSION: v2 }",
        );
        assert_eq!(classify(&old, &version_and_env), Edit::Other);
        let fewer = MeshFile::parse(
            "mesh.yaml",
            &MESH[..MESH.find("  - name: catalog").expect("catalog")],
        )
        .expect("valid");
        assert_eq!(classify(&old, &fewer), Edit::Other);
    }

    #[test]
    fn an_accepted_version_edit_keeps_the_old_version_runnable() {
        let old = mesh();
        let text = MESH.replacen(
            "command: [shop, catalog]\n",
            "command: [shop, catalog]\n    version: v2\n",
            1,
        );
        let new = MeshFile::parse("mesh.yaml", &text).expect("valid");
        // Refused by the controller: nothing changes.
        assert_eq!(accept_versions(&old, &new, &[]), old);
        let now = accept_versions(&old, &new, &["catalog"]);
        let catalog = &now.workloads[2];
        assert_eq!(catalog.version, "v2");
        assert_eq!(
            catalog.config_for("v2").expect("the same command").command,
            ["shop", "catalog"]
        );
        assert_eq!(
            catalog.config_for("v1").expect("still runnable").command,
            ["shop", "catalog"]
        );
        // So a rollout to v2 runs the same command as canary, with the file's new version.
        let running = initial(&old);
        let actions = plan(
            &now,
            &running,
            &[rollout("r-1", "catalog", "v1", "v2", "pending")],
        );
        assert_eq!(starts(&actions), ["catalog-v2"]);
    }
}
