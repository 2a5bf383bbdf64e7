//! A rollout as the controller stores it and the admin API, the CLI and the portal show it.
//!
//! The serialized form of [`Rollout`] is the contract of `GET /rollouts` and
//! `GET /rollouts/{id}` (snake_case fields, `phase` in kebab-case); fields are only added.

use serde::{Deserialize, Serialize};

/// Where a rollout is in its life. The first four are *active*: the canary runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the canary's first instance to register.
    Pending,
    /// Walking the steps, judging each interval.
    Progressing,
    /// Held by `sluice rollout pause` (or `onFailure: pause`): weights stay, nothing advances.
    Paused,
    /// A step with `confirm: true` passed and waits for `sluice rollout resume`.
    WaitingConfirmation,
    /// The canary is the new stable version.
    Promoted,
    /// The judge failed the canary: all traffic went back to the baseline.
    RolledBack,
    /// Stopped by a person (`sluice rollout abort`): all traffic back to the baseline.
    Aborted,
    /// A newer rollout of the same service replaced it.
    Superseded,
    /// It could not proceed (the canary never became ready, or never got traffic, within the
    /// progress deadline): all traffic back to the baseline.
    Failed,
}

impl Phase {
    /// Whether the canary is (still) running and the rollout can change.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Pending | Phase::Progressing | Phase::Paused | Phase::WaitingConfirmation
        )
    }

    /// The kebab-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::WaitingConfirmation => "waiting-confirmation",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled-back",
            Phase::Aborted => "aborted",
            Phase::Superseded => "superseded",
            Phase::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a rollout's baseline stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineKind {
    /// A fresh copy of the stable version was asked for and has not registered yet (the
    /// rollout is pending).
    Waiting,
    /// A fresh copy of the stable version, beside the canary with the canary's weight.
    Copy,
    /// The stable version's long-running instances.
    #[default]
    Stable,
}

/// What a rollout's canary is judged against, for the status, the page and the messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Baseline {
    /// Copy, stable, or still waiting for the copy.
    pub kind: BaselineKind,
    /// Whether a copy was asked for (the policy's `analysis.baseline: copy` and a runtime
    /// that starts copies). The local runner starts the copy while this is set, the rollout
    /// is active and `kind` is not `stable`.
    pub copy_requested: bool,
    /// The copy's instances, once it is the baseline.
    #[serde(default)]
    pub instances: Vec<String>,
    /// A sentence: "a fresh copy of v1 (payments-v1-baseline), with the canary's weight", or
    /// "the running v1 instances (no copy of v1 registered within 30s)".
    pub description: String,
}

/// One traffic step, resolved from the CanaryPolicy when the rollout started (later policy
/// edits do not change a running rollout's plan).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepPlan {
    /// Canary weight in percent.
    pub weight: u32,
    /// How long the step is analysed before it can pass, in milliseconds.
    pub duration_ms: u64,
    /// Whether leaving the step needs `sluice rollout resume`.
    pub confirm: bool,
}

/// One rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    /// `r-<yyyymmdd>-<4 hex>`, stable and shareable (`/rollouts/<id>`).
    pub id: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service.
    pub service: String,
    /// The stable version the canary is compared with.
    pub baseline_version: String,
    /// The new version.
    pub canary_version: String,
    /// Where it is.
    pub phase: Phase,
    /// Index into `steps` of the current (or last) step.
    pub step: usize,
    /// The canary's current traffic weight in percent (0 once it is over, unless promoted:
    /// then 100).
    pub weight: u32,
    /// The plan.
    pub steps: Vec<StepPlan>,
    /// How often the judge looks, in milliseconds.
    pub interval_ms: u64,
    /// The progress deadline, in milliseconds.
    pub progress_deadline_ms: u64,
    /// The CanaryPolicy it follows.
    pub policy: String,
    /// The analysis settings, frozen at start like the steps (the CanaryPolicy's `analysis`,
    /// see the policy JSON Schema).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub analysis: sluice_policy::resources::Analysis,
    /// What a failed analysis does (the CanaryPolicy's `onFailure`).
    #[serde(default)]
    #[schema(value_type = String)]
    pub on_failure: sluice_policy::resources::FailureAction,
    /// Who or what started it (`cli`, `mesh-file`, a user name).
    pub requested_by: String,
    /// Unix ms.
    pub created_unix_ms: i64,
    /// Unix ms of the last change.
    pub updated_unix_ms: i64,
    /// When the current step started, Unix ms.
    pub step_started_unix_ms: i64,
    /// When the canary first received traffic, Unix ms.
    pub first_traffic_unix_ms: Option<i64>,
    /// When it ended, Unix ms.
    pub finished_unix_ms: Option<i64>,
    /// The last decision, as a sentence ("promoted: every check passed at 50%",
    /// "rolled back: errors: canary success rate 94.2% vs …").
    pub decision: String,
    /// The judge's latest evidence, one entry per check
    /// ([`crate::rollout::judge::Evidence`], serialized).
    #[schema(value_type = Vec<Object>)]
    pub evidence: Vec<serde_json::Value>,
    /// The check that failed the canary, if one did.
    #[schema(value_type = Option<Object>)]
    pub failed_check: Option<serde_json::Value>,
    /// What the canary is judged against (older rollouts: the stable instances).
    #[serde(default)]
    pub baseline: Baseline,
    /// Every check that failed at the look that failed the canary, most decisive first
    /// (`failed_check` is the first); more than one when several fail at once.
    #[serde(default)]
    pub failed_checks: Vec<serde_json::Value>,
    /// Canary and baseline requests judged so far.
    pub canary_requests: u64,
    /// Baseline requests judged so far.
    pub baseline_requests: u64,
}

impl Rollout {
    /// The step in force.
    pub fn current_step(&self) -> Option<&StepPlan> {
        self.steps.get(self.step)
    }

    /// The fresh copy of the stable version this rollout needs from a backend that starts
    /// instances, as the instance interface says it: service S, the baseline version, the
    /// stable environment, the role `baseline`. Some while the rollout is active, asked for a
    /// copy and has not fallen back to the stable instances; then none, so the copy is
    /// stopped. `sluice up` plans the same copy from its mesh file (`up::rollouts`); a backend
    /// in the controller's process (Kubernetes) is handed this one.
    pub fn baseline_instance(&self) -> Option<crate::instance::InstanceSpec> {
        let wanted = self.phase.is_active()
            && self.baseline.copy_requested
            && self.baseline.kind != BaselineKind::Stable;
        let role = sluice_policy::resources::BASELINE_ROLE;
        wanted.then(|| crate::instance::InstanceSpec {
            name: format!("{}-{}-{role}", self.service, self.baseline_version),
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            version: self.baseline_version.clone(),
            environment: crate::server::register::DEFAULT_ENVIRONMENT.to_owned(),
            role: role.to_owned(),
            run: crate::instance::Run::Version,
            generation: 0,
        })
    }
}

/// One analysis interval of a rollout: what each side did in it (increments), for the
/// chart and for rebuilding the judge after a controller restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Point {
    /// End of the interval, Unix ms.
    pub at_unix_ms: i64,
    /// The step it belonged to.
    pub step: usize,
    /// The canary weight during it.
    pub weight: u32,
    /// The canary's increments.
    pub canary: crate::rollout::judge::Counts,
    /// The baseline's increments.
    pub baseline: crate::rollout::judge::Counts,
    /// With a baseline copy: the copy's weight (the long-running stable instances had the
    /// rest). `None`: the baseline had all the traffic the canary did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_weight: Option<u32>,
    /// With a baseline copy: the long-running stable instances' increments, which the latency
    /// check reads its baseline quantile from (pooled with the copy's) until the copy alone
    /// has enough requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::rollout::judge::Counts>,
}

/// Something that happened to a rollout, for history and notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Unix ms.
    pub at_unix_ms: i64,
    /// `started`, `step`, `waiting-confirmation`, `paused`, `resumed`, `promoted`,
    /// `rolled-back`, `aborted`, `superseded`, `failed`.
    pub kind: String,
    /// A sentence.
    pub message: String,
}

/// `GET /rollouts`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutList {
    /// Newest first.
    pub rollouts: Vec<Rollout>,
}

/// `GET /rollouts/{id}`: the rollout, its events and its points.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutDetail {
    /// The rollout.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Oldest first.
    pub events: Vec<Event>,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// `POST /rollouts`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service.
    #[schema(example = "payments")]
    pub service: String,
    /// The version to roll out.
    #[schema(example = "v2")]
    pub version: String,
    /// Who asks (free text).
    #[serde(default)]
    pub requested_by: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// A manual action: `POST /rollouts/{id}/{action}` (the id may also be a service name: its
/// newest rollout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Hold at the current weights.
    Pause,
    /// Continue (also confirms a step waiting for confirmation).
    Resume,
    /// Skip the remaining steps: promote now.
    Promote,
    /// Roll back now.
    Abort,
}

impl Action {
    /// From the URL segment.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "promote" => Some(Action::Promote),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }

    /// The URL segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// An API error body: `{"error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong and how to fix it.
    pub error: String,
}
