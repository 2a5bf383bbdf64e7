//! The environment document (what the store keeps) and the views the API answers with.

use serde::{Deserialize, Serialize};

use crate::instance::Run;

/// The longest environment name: a DNS label.
pub const MAX_NAME: usize = 63;
/// Environments at once: each copy is a namespace (`sluice up`) or a pod.
pub const MAX_ENVIRONMENTS: usize = 50;
/// The most arguments a command may have, and bytes in all of them.
pub const MAX_ARGV: usize = 64;
/// See [`MAX_ARGV`].
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// The longest idle timeout one may ask for.
pub const MAX_IDLE_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
/// Minutes of request counts kept per environment (for "requests in the last hour").
pub const RECENT_MINUTES: usize = 60;

/// Why a copy runs in the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The service the environment was made for (`sluice env create --service`).
    Service,
    /// A dependency the service reaches through an `ephemeral: copy` grant.
    Dependency,
    /// `sluice env run`: the developer's command, for as long as `run` runs.
    Run,
}

/// One service's copy in an environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Copy {
    /// The service.
    pub service: String,
    /// The version it registers as.
    pub version: String,
    /// What it runs.
    pub run: Run,
    /// Why it is there.
    pub origin: Origin,
    /// Bumped by `sluice env run` when the binary or a watched path changes.
    #[serde(default)]
    pub generation: u64,
    /// `sluice env run`: until when the developer's session is known to be alive (Unix ms).
    /// Renewed by its heartbeats; once it passes, the session is over as if Ctrl-C was
    /// pressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_unix_ms: Option<i64>,
    /// `sluice env run` over an existing copy: the copy it replaced, restored when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Box<Copy>>,
}

/// An ephemeral environment, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Its name, a DNS label: `pr-1`.
    pub name: String,
    /// The namespace of its services.
    pub namespace: String,
    /// The service it was made for.
    pub service: String,
    /// Who made it.
    pub created_by: String,
    /// When (Unix ms).
    pub created_unix_ms: i64,
    /// Its own idle timeout; `None` follows the Mesh's `environments.idleTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Whether `sluice env run` made it (and removes it when it ends).
    #[serde(default)]
    pub created_by_run: bool,
    /// Its copies, in the order they were planned.
    pub copies: Vec<Copy>,
    /// When a copy last served a request (Unix ms): the idle clock.
    #[serde(default)]
    pub last_request_unix_ms: Option<i64>,
    /// Requests its copies served, in total.
    #[serde(default)]
    pub requests_total: u64,
    /// Requests per minute, `(minute start Unix ms, count)`, the last [`RECENT_MINUTES`].
    #[serde(default)]
    pub recent: Vec<(i64, u64)>,
}

impl Environment {
    /// When the idle clock started: the last request, or the creation.
    pub fn last_activity_unix_ms(&self) -> i64 {
        self.last_request_unix_ms
            .unwrap_or(self.created_unix_ms)
            .max(self.created_unix_ms)
    }

    /// Requests in the hour before `now_ms`.
    pub fn requests_last_hour(&self, now_ms: i64) -> u64 {
        self.recent
            .iter()
            .filter(|(minute, _)| now_ms - minute < 3_600_000)
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds `n` requests seen at `at_ms`.
    pub fn count(&mut self, n: u64, at_ms: i64) {
        self.requests_total = self.requests_total.saturating_add(n);
        self.last_request_unix_ms = Some(self.last_request_unix_ms.unwrap_or(0).max(at_ms));
        let minute = at_ms - at_ms.rem_euclid(60_000);
        match self.recent.last_mut() {
            Some((m, c)) if *m == minute => *c = c.saturating_add(n),
            _ => self.recent.push((minute, n)),
        }
        let excess = self.recent.len().saturating_sub(RECENT_MINUTES);
        self.recent.drain(..excess);
    }

    /// A copy of `service`, if it has one.
    pub fn copy(&self, service: &str) -> Option<&Copy> {
        self.copies.iter().find(|c| c.service == service)
    }
}

/// `sluice-<env>` instance names: `checkout.pr-1`. The dot cannot appear in a mesh file's
/// workload or a canary name (DNS labels), so an environment's instances never clash with
/// them, and the name reads like the host the ingress serves it on (`checkout.pr-1.localhost`).
pub fn instance_name(service: &str, environment: &str) -> String {
    format!("{service}.{environment}")
}

/// Whether `name` is an RFC 1123 DNS label of at most `max` characters.
pub fn is_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `POST /environments`: `sluice env create`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The environment's name.
    pub name: String,
    /// The service to copy (with its `copy` dependencies).
    pub service: String,
    /// The namespace; default `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The service's version to run; default the stable one.
    #[serde(default)]
    pub version: Option<String>,
    /// Or the developer's command instead of a version.
    #[serde(default)]
    pub command: Option<Command>,
    /// The idle timeout (`10m`); default the Mesh's.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Who asks.
    #[serde(default)]
    pub created_by: String,
}

/// A developer's command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The argv; the program an absolute path.
    pub argv: Vec<String>,
    /// The directory it runs in (absolute).
    pub dir: String,
    /// Extra environment variables.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// `POST /environments/{name}/run`: `sluice env run` starts a session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The service the command is a copy of.
    pub service: String,
    /// The command.
    pub command: Command,
    /// Who asks.
    #[serde(default)]
    pub created_by: String,
    /// For an environment the session makes: its idle timeout.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// `POST /environments/{name}/run/{service}/heartbeat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Restart the copy (the binary or a watched path changed).
    #[serde(default)]
    pub restart: bool,
}

/// One copy, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CopyView {
    /// The service.
    pub service: String,
    /// Its instance (namespace or pod name).
    pub instance: String,
    /// The version it registers as.
    pub version: String,
    /// Why it is there.
    pub origin: Origin,
    /// The command, for a developer's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `pending` (no backend runs it yet), `starting`, `running`, `crashing` or `failed`.
    pub state: String,
    /// One line on what `state` means for it (`exited (exit status: 1) 3 times`).
    pub detail: String,
    /// Its address, once it serves.
    #[serde(default)]
    pub address: Option<String>,
    /// Whether its sidecar has registered with the controller.
    pub registered: bool,
    /// The generation running.
    pub generation: u64,
    /// How often its process started.
    pub starts: u32,
    /// The last lines of its output.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// CPU-seconds of its processes.
    pub cpu_seconds: f64,
    /// Peak resident memory of its processes, summed.
    pub peak_rss_bytes: u64,
}

/// What an environment uses, and what that would cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// CPU-seconds of every process of every copy since they started.
    pub cpu_seconds: f64,
    /// Each process's peak resident memory, added up.
    pub peak_rss_bytes: u64,
    /// The estimated cost per day at the Mesh's prices, if it has any: the average cores
    /// used since creation and the peak memory, each for 24 hours.
    #[serde(default)]
    pub cost_per_day: Option<f64>,
    /// The prices' currency.
    #[serde(default)]
    pub currency: Option<String>,
}

/// An environment, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentView {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The service it was made for.
    pub service: String,
    /// Its copies.
    pub copies: Vec<CopyView>,
    /// What its copies call and it shares with stable.
    pub shared: Vec<String>,
    /// Who made it, and when (Unix ms).
    pub created_by: String,
    /// See `created_by`.
    pub created_unix_ms: i64,
    /// Whether `sluice env run` made it.
    pub created_by_run: bool,
    /// When a copy last served a request.
    pub last_request_unix_ms: Option<i64>,
    /// Requests in the last hour.
    pub requests_last_hour: u64,
    /// Requests in total.
    pub requests_total: u64,
    /// The idle timeout in force (ms), and where it comes from (`environment` or `mesh`).
    pub idle_timeout_ms: u64,
    /// See `idle_timeout_ms`.
    pub idle_timeout_from: String,
    /// When it will be deleted if no request comes (Unix ms); `None` while `sluice env run`
    /// holds it.
    pub idle_deadline_unix_ms: Option<i64>,
    /// The URL to open: the ingress's entry service in this environment, once a backend
    /// serving an ingress has reported in.
    pub url: Option<String>,
    /// `ready` (every copy running), `starting`, `degraded` (a copy crashing or failed), or
    /// `pending` (no backend has picked it up).
    pub state: String,
    /// Resource use.
    pub usage: Usage,
}

/// `GET /environments`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentList {
    /// By name.
    pub environments: Vec<EnvironmentView>,
    /// The backend that runs them, when one has reported in the last few seconds.
    pub backend: Option<String>,
}

/// `POST /instances/sync`: a backend reports what it runs and learns what it should run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Who is reporting (`sluice up run 3fa2c1`).
    pub backend: String,
    /// The ingress URL template, `http://{service}.{environment}.localhost:8000/`, if the
    /// backend serves one.
    #[serde(default)]
    pub ingress: Option<String>,
    /// The environment instances it runs.
    #[serde(default)]
    pub instances: Vec<crate::instance::InstanceStatus>,
}

/// The answer to [`SyncRequest`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncAnswer {
    /// Every environment instance that should run.
    pub instances: Vec<crate::instance::InstanceSpec>,
}

/// `POST /environments/{name}/run`: the session started.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunStarted {
    /// The environment.
    pub environment: EnvironmentView,
    /// Whether the session made it (and removes it when it ends).
    pub created: bool,
}

/// `DELETE /environments/{name}` and the end of a run session: what went.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    /// The environment as it was.
    pub environment: EnvironmentView,
    /// Whether the whole environment went (else one copy).
    pub deleted: bool,
    /// The instances that stop.
    pub stopped: Vec<String>,
    /// An instance started again in their place (the copy a run session replaced).
    #[serde(default)]
    pub restored: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["pr-1", "a", "x9", &"a".repeat(63)] {
            assert!(is_label(ok, MAX_NAME), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Pr-1",
            "pr_1",
            "pr.1",
            "pr 1",
            &"a".repeat(64),
            "ü",
        ] {
            assert!(!is_label(bad, MAX_NAME), "{bad}");
        }
    }

    #[test]
    fn the_hour_and_the_idle_clock() {
        let mut e = Environment {
            name: "pr-1".into(),
            namespace: "default".into(),
            service: "checkout".into(),
            created_by: "ernie".into(),
            created_unix_ms: 1_000_000,
            idle_timeout_ms: None,
            created_by_run: false,
            copies: Vec::new(),
            last_request_unix_ms: None,
            requests_total: 0,
            recent: Vec::new(),
        };
        assert_eq!(e.last_activity_unix_ms(), 1_000_000);
        e.count(3, 1_030_000);
        e.count(2, 1_050_000);
        e.count(4, 1_130_000);
        // Counted per minute: 1_030_000 and 1_050_000 fall in the minute from 1_020_000.
        assert_eq!(e.recent, [(1_020_000, 5), (1_080_000, 4)]);
        assert_eq!(e.requests_total, 9);
        assert_eq!(e.last_activity_unix_ms(), 1_130_000);
        assert_eq!(e.requests_last_hour(1_140_000), 9);
        assert_eq!(e.requests_last_hour(1_020_000 + 3_600_000), 4);
        for m in 0..100 {
            e.count(1, 2_000_000 + m * 60_000);
        }
        assert_eq!(e.recent.len(), RECENT_MINUTES);
    }
}
