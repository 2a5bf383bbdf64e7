//! `sluice status`: what the controller is doing, from its admin endpoint (`GET /status`).
//!
//! The controller serves a small read-only HTTP/1.1 admin endpoint (`--admin`, loopback, port
//! 0 by default) and writes its address to `STATE_DIR/admin.addr`. `sluice status --state-dir
//! D` reads that file, `--controller ADDR` names the admin address directly. When no controller
//! answers but the state directory is known, status reads the store directly (registrations,
//! the last refused policy change, denials) and says that the controller is down; the exit
//! status is then 1.
//!
//! The JSON document ([`StatusReport`]) is the same for `--format json` and `GET /status`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::store::{ConfigErrorRow, DenialRow, RegistrationRow, Store, unix_ms};
use crate::{CliError, Format, Outcome};

/// The file under the state directory holding the running controller's admin address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";
/// How long `sluice status` waits for the controller.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Everything `sluice status` shows.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// The controller process; absent when it is not running (read from the store).
    pub controller: Option<ControllerInfo>,
    /// The policy snapshot in force; absent when the controller is not running.
    pub snapshot: Option<SnapshotInfo>,
    /// Connected proxies.
    pub proxies: Vec<ProxyInfo>,
    /// Registered workload instances.
    pub registrations: Vec<RegistrationInfo>,
    /// The latest refused policy change.
    pub last_config_error: Option<ConfigErrorInfo>,
    /// Denials reported by proxies.
    pub denials: DenialsInfo,
    /// Active rollouts, and the last one of each other service (newest first).
    #[serde(default)]
    pub rollouts: Vec<RolloutLine>,
}

/// One rollout, as `sluice status` lists it (`sluice rollout status` has the details).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutLine {
    /// Its id.
    pub id: String,
    /// `namespace/service`.
    pub service: String,
    /// The stable version.
    pub baseline_version: String,
    /// The new version.
    pub canary_version: String,
    /// Its phase.
    pub phase: String,
    /// The canary's weight now.
    pub weight: u32,
    /// The last decision.
    pub decision: String,
}

/// The rollouts `sluice status` shows: every active one, then the newest of each service
/// that has none active.
pub fn rollout_lines(
    store: &crate::store::Store,
) -> Result<Vec<RolloutLine>, crate::store::StoreError> {
    let all = crate::rollout::store::list(store, None)?;
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::new();
    for r in all.iter().filter(|r| r.phase.is_active()) {
        seen.insert((r.namespace.clone(), r.service.clone()));
        lines.push(line(r));
    }
    for r in &all {
        if seen.insert((r.namespace.clone(), r.service.clone())) {
            lines.push(line(r));
        }
    }
    Ok(lines)
}

fn line(r: &crate::rollout::model::Rollout) -> RolloutLine {
    RolloutLine {
        id: r.id.clone(),
        service: format!("{}/{}", r.namespace, r.service),
        baseline_version: r.baseline_version.clone(),
        canary_version: r.canary_version.clone(),
        phase: r.phase.to_string(),
        weight: r.weight,
        decision: r.decision.clone(),
    }
}

/// The controller process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ControllerInfo {
    /// The gRPC API address.
    pub grpc: String,
    /// The admin endpoint address.
    pub admin: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, Unix ms.
    pub started_unix_ms: i64,
    /// Seconds since then.
    pub uptime_secs: u64,
    /// Its state directory.
    pub state_dir: String,
    /// The watched policy directory, if any.
    pub policy_dir: Option<String>,
}

/// The published configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    /// The policy version (content hash of the bundle).
    pub version: String,
    /// Counts every published change, policy or endpoints; proxies behind it are stale.
    pub generation: u64,
    /// When this policy version was loaded, Unix ms.
    pub loaded_unix_ms: i64,
    /// Declared services.
    pub services: usize,
    /// Access policies.
    pub access_policies: usize,
}

/// One connected proxy (one open `Watch` stream).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProxyInfo {
    /// As the proxy named itself.
    pub proxy_id: String,
    /// `namespace/service`.
    pub workload: String,
    /// Its version.
    pub version: String,
    /// Its environment.
    pub environment: String,
    /// Its instance name.
    pub instance: String,
    /// Its address as the controller sees it.
    pub peer: Option<String>,
    /// Connected since, Unix ms.
    pub connected_unix_ms: i64,
    /// The policy version last sent to it (it acknowledges by reading the stream).
    pub acknowledged_version: String,
    /// The generation last sent to it.
    pub acknowledged_generation: u64,
    /// Whether it has not yet received the current configuration.
    pub behind: bool,
}

/// One registration.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistrationInfo {
    /// The registration.
    #[serde(flatten)]
    pub row: RegistrationRow,
    /// Whether a proxy of this instance is watching (otherwise it expires after the grace
    /// period).
    pub watching: bool,
    /// When it expires unless its proxy reconnects, Unix ms.
    pub expires_unix_ms: Option<i64>,
}

/// The latest refused policy change.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigErrorInfo {
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// One line.
    pub summary: String,
    /// Every diagnostic, as `sluice policy check` prints them.
    pub rendered: String,
    /// Whether the policy directory is still in that state (no valid change since).
    pub current: bool,
}

impl ConfigErrorInfo {
    /// From the store's row.
    pub fn new(row: ConfigErrorRow, current: bool) -> Self {
        ConfigErrorInfo {
            at_unix_ms: row.at_unix_ms,
            summary: row.summary,
            rendered: row.rendered,
            current,
        }
    }
}

/// Denials.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DenialsInfo {
    /// Distinct denials stored.
    pub distinct: i64,
    /// Their counts added up.
    pub total: i64,
    /// Dropped by the proxies' rate limits.
    pub dropped: i64,
    /// The most recently seen, newest first.
    pub recent: Vec<DenialInfo>,
}

/// One aggregated denial.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DenialInfo {
    /// `namespace/caller` or `unauthenticated`.
    pub caller: String,
    /// `namespace/service`.
    pub service: String,
    /// The call.
    pub rpc: String,
    /// The endpoint pattern, if any.
    pub endpoint: String,
    /// The governing policies.
    pub policies: String,
    /// The caller's environment.
    pub environment: String,
    /// `deny` or `audit-deny`.
    pub verdict: String,
    /// How many.
    pub count: i64,
    /// First seen, Unix ms.
    pub first_seen_unix_ms: i64,
    /// Last seen, Unix ms.
    pub last_seen_unix_ms: i64,
}

impl From<DenialRow> for DenialInfo {
    fn from(d: DenialRow) -> Self {
        let caller = if d.caller_namespace.is_empty() {
            d.caller
        } else {
            format!("{}/{}", d.caller_namespace, d.caller)
        };
        DenialInfo {
            caller,
            service: format!("{}/{}", d.namespace, d.service),
            rpc: d.rpc,
            endpoint: d.endpoint,
            policies: d.policies,
            environment: d.environment,
            verdict: d.verdict,
            count: d.count,
            first_seen_unix_ms: d.first_seen_unix_ms,
            last_seen_unix_ms: d.last_seen_unix_ms,
        }
    }
}

/// How many recent denials the report lists.
pub const RECENT_DENIALS: i64 = 20;

/// Arguments of `sluice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The controller's admin address (`--admin` of `sluice controller`).
    #[arg(long, value_name = "ADDR", conflicts_with = "state_dir")]
    pub controller: Option<String>,
    /// The controller's state directory: its admin address is read from `admin.addr` there,
    /// and its store is read directly when the controller is not running.
    #[arg(long, value_name = "DIR", env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// Why status could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Neither flag.
    #[error("say which controller: --controller ADDR (its admin address) or --state-dir DIR")]
    NoTarget,
    /// The admin endpoint did not answer.
    #[error("cannot reach the controller's admin endpoint at {addr}: {reason}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Not running and no store to read.
    #[error(
        "no controller is running for {dir} (no {ADMIN_ADDR_FILE}, or it does not answer) and \
         its store cannot be read: {reason}"
    )]
    NoState {
        /// The state directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// `sluice status`.
pub(crate) fn run(args: &StatusArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let (report, running) = match (&args.controller, &args.state_dir) {
        (Some(addr), _) => (fetch(addr)?, true),
        (None, Some(dir)) => {
            let live = std::fs::read_to_string(dir.join(ADMIN_ADDR_FILE))
                .ok()
                .and_then(|addr| fetch(addr.trim()).ok());
            match live {
                Some(report) => (report, true),
                None => (offline(dir)?, false),
            }
        }
        (None, None) => return Err(StatusError::NoTarget.into()),
    };
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Format::Human => write!(out, "{}", render(&report, SystemTime::now()))?,
    }
    Ok(if running {
        Outcome::Success
    } else {
        Outcome::Denied
    })
}

/// `GET /status` from the admin endpoint.
pub fn fetch(addr: &str) -> Result<StatusReport, StatusError> {
    let response = request(addr, "GET", crate::server::admin::paths::STATUS, None)?;
    if response.status != 200 {
        return Err(StatusError::Unreachable {
            addr: addr.to_owned(),
            reason: format!("answered `{}`", response.status_line),
        });
    }
    serde_json::from_str(&response.body).map_err(|e| StatusError::Unreachable {
        addr: addr.to_owned(),
        reason: format!("unreadable answer: {e}"),
    })
}

/// An admin endpoint's answer, whatever its status (callers decide what a 4xx means).
pub(crate) struct AdminResponse {
    /// The numeric status, 0 when the status line has none.
    pub status: u16,
    /// The status line, for messages.
    pub status_line: String,
    /// The body, as text.
    pub body: String,
}

/// One request to the admin endpoint over a plain blocking socket (HTTP/1.0: the server closes
/// the connection after answering, so the body is whatever arrives until then). Shared with
/// `sluice rollout`; only a failure to talk HTTP at all is an error here.
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> Result<AdminResponse, StatusError> {
    let unreachable = |reason: String| StatusError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("the address resolves to nothing".to_owned()))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, TIMEOUT).map_err(|e| unreachable(e.to_string()))?;
    let io = |e: std::io::Error| unreachable(e.to_string());
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(body) = json_body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if method != "GET" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    head.push_str(json_body.unwrap_or_default());
    stream.write_all(head.as_bytes()).map_err(io)?;
    let mut response = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut response)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| unreachable("not an HTTP response".to_owned()))?;
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok(AdminResponse {
        status,
        status_line,
        body: body.to_owned(),
    })
}

/// What the store knows while the controller is down.
fn offline(dir: &Path) -> Result<StatusReport, StatusError> {
    let no_state = |reason: String| StatusError::NoState {
        dir: dir.display().to_string(),
        reason,
    };
    if !dir.join(crate::store::DB_FILE).exists() {
        return Err(no_state(format!(
            "{} does not exist",
            crate::store::DB_FILE
        )));
    }
    let store = Store::open_read_only(dir).map_err(|e| no_state(e.to_string()))?;
    let registrations = store
        .registrations()
        .map_err(|e| no_state(e.to_string()))?
        .into_iter()
        .map(|row| RegistrationInfo {
            row,
            watching: false,
            expires_unix_ms: None,
        })
        .collect();
    let last_config_error = store
        .last_config_error()
        .map_err(|e| no_state(e.to_string()))?
        .map(|row| ConfigErrorInfo::new(row, false));
    let denials = store
        .denial_summary(RECENT_DENIALS)
        .map_err(|e| no_state(e.to_string()))?;
    let rollouts = rollout_lines(&store).map_err(|e| no_state(e.to_string()))?;
    Ok(StatusReport {
        controller: None,
        snapshot: None,
        proxies: Vec::new(),
        registrations,
        last_config_error,
        rollouts,
        denials: DenialsInfo {
            distinct: denials.distinct,
            total: denials.total,
            dropped: denials.dropped,
            recent: denials.recent.into_iter().map(DenialInfo::from).collect(),
        },
    })
}

fn ago(now: SystemTime, unix_ms_then: i64) -> String {
    let secs = (unix_ms(now) - unix_ms_then).max(0) / 1000;
    let secs = u64::try_from(secs).unwrap_or(0);
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// The human rendering.
pub fn render(r: &StatusReport, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let current_generation = r.snapshot.as_ref().map(|s| s.generation);
    match &r.controller {
        Some(c) => {
            let _ = writeln!(
                s,
                "controller  running, pid {}, up {}\n  grpc      {}\n  admin     {}\n  state     {}",
                c.pid,
                humantime::format_duration(Duration::from_secs(c.uptime_secs)),
                c.grpc,
                c.admin,
                c.state_dir
            );
            if let Some(p) = &c.policy_dir {
                let _ = writeln!(s, "  policy    {p}");
            }
        }
        None => {
            let _ = writeln!(
                s,
                "controller  not running (read from its store; proxies keep enforcing their last snapshot)"
            );
        }
    }
    if let Some(snap) = &r.snapshot {
        let _ = writeln!(
            s,
            "snapshot    {} (generation {}, loaded {}; {} services, {} access policies)",
            snap.version,
            snap.generation,
            ago(now, snap.loaded_unix_ms),
            snap.services,
            snap.access_policies
        );
    }
    let behind = r.proxies.iter().filter(|p| p.behind).count();
    let _ = writeln!(
        s,
        "\nproxies     {} connected, {} behind",
        r.proxies.len(),
        behind
    );
    for p in &r.proxies {
        let state = if p.behind {
            format!(
                "BEHIND (has {} gen {}, current gen {})",
                p.acknowledged_version,
                p.acknowledged_generation,
                current_generation.unwrap_or_default()
            )
        } else {
            format!("up to date ({})", p.acknowledged_version)
        };
        let _ = writeln!(
            s,
            "  {:<24} {:<24} {} {}  {}  connected {}",
            p.proxy_id,
            p.workload,
            p.version,
            p.environment,
            state,
            ago(now, p.connected_unix_ms)
        );
    }
    let _ = writeln!(s, "\nregistrations  {}", r.registrations.len());
    for reg in &r.registrations {
        let watching = if reg.watching {
            "watching".to_owned()
        } else {
            match reg.expires_unix_ms {
                Some(at) if at > unix_ms(now) => format!(
                    "not watching, expires in {}",
                    humantime::format_duration(Duration::from_secs(
                        u64::try_from((at - unix_ms(now)) / 1000).unwrap_or(0)
                    ))
                ),
                _ => "not watching".to_owned(),
            }
        };
        let _ = writeln!(
            s,
            "  {}/{} {} {} {:<20} {}  ({watching})",
            reg.row.namespace,
            reg.row.service,
            reg.row.version,
            reg.row.environment,
            reg.row.instance,
            reg.row.address
        );
    }
    match &r.last_config_error {
        None => {
            let _ = writeln!(s, "\nlast config error  none");
        }
        Some(e) => {
            let state = if e.current {
                "in force: the policy directory is invalid, the snapshot above is the last good one"
            } else {
                "fixed since"
            };
            let _ = writeln!(
                s,
                "\nlast config error  {} ({}; {state})",
                e.summary,
                ago(now, e.at_unix_ms)
            );
            for line in e.rendered.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    if !r.rollouts.is_empty() {
        let active = r
            .rollouts
            .iter()
            .filter(|x| {
                matches!(
                    x.phase.as_str(),
                    "pending" | "progressing" | "paused" | "waiting-confirmation"
                )
            })
            .count();
        let _ = writeln!(s, "\nrollouts    {active} active");
        for x in &r.rollouts {
            let _ = writeln!(
                s,
                "  {}  {} {} → {}  {} {}%  {}",
                x.id,
                x.service,
                x.baseline_version,
                x.canary_version,
                x.phase,
                x.weight,
                x.decision
            );
        }
    }
    let d = &r.denials;
    let _ = writeln!(
        s,
        "\ndenials     {} distinct, {} in total, {} dropped by proxies",
        d.distinct, d.total, d.dropped
    );
    for x in &d.recent {
        let _ = writeln!(
            s,
            "  {} → {}: {}  ×{}  [{}{}] last {}",
            x.caller,
            x.service,
            x.rpc,
            x.count,
            x.verdict,
            if x.policies.is_empty() {
                String::new()
            } else {
                format!(", {}", x.policies)
            },
            ago(now, x.last_seen_unix_ms)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::model::{Phase, Rollout};

    fn rollout(id: &str, service: &str, created: i64, phase: Phase) -> Rollout {
        Rollout {
            id: id.into(),
            namespace: "default".into(),
            service: service.into(),
            baseline_version: "v1".into(),
            canary_version: "v2".into(),
            phase,
            step: 0,
            weight: if phase.is_active() { 5 } else { 0 },
            steps: Vec::new(),
            interval_ms: 1000,
            progress_deadline_ms: 60_000,
            policy: service.into(),
            analysis: Default::default(),
            on_failure: Default::default(),
            requested_by: "test".into(),
            created_unix_ms: created,
            updated_unix_ms: created,
            step_started_unix_ms: created,
            first_traffic_unix_ms: None,
            finished_unix_ms: None,
            decision: format!("{phase}"),
            evidence: Vec::new(),
            failed_check: None,
            failed_checks: Vec::new(),
            baseline: Default::default(),
            canary_requests: 0,
            baseline_requests: 0,
        }
    }

    #[test]
    fn status_lists_active_rollouts_then_the_last_of_each_other_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("store");
        for r in [
            rollout("r-1", "payments", 1, Phase::RolledBack),
            rollout("r-2", "payments", 2, Phase::Progressing),
            rollout("r-3", "catalog", 3, Phase::Promoted),
            rollout("r-4", "catalog", 4, Phase::Aborted),
        ] {
            crate::rollout::store::save(&store, &r, None).expect("save");
        }
        let lines = rollout_lines(&store).expect("lines");
        let ids: Vec<&str> = lines.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["r-2", "r-4"]);
        let report = StatusReport {
            controller: None,
            snapshot: None,
            proxies: Vec::new(),
            registrations: Vec::new(),
            last_config_error: None,
            denials: DenialsInfo::default(),
            rollouts: lines,
        };
        let text = render(&report, SystemTime::now());
        assert!(text.contains("rollouts    1 active"), "{text}");
        assert!(
            text.contains("r-2  default/payments v1 → v2  progressing 5%  progressing"),
            "{text}"
        );
    }
}
