//! `sluice rollout …`: the terminal face of progressive delivery.
//!
//! Every command is a thin client of the controller's admin endpoint (found like `sluice
//! status` finds it: `--controller ADDR`, or `--state-dir DIR` → `DIR/admin.addr`):
//!
//! | command | request |
//! |---|---|
//! | `start SERVICE --version V` | `POST /rollouts` ([`StartRequest`]) |
//! | `status [SERVICE\|ID]` | `GET /rollouts/{x}`, or `GET /rollouts` for all |
//! | `watch [SERVICE\|ID]` | `GET /rollouts/{id}` every second until it is over |
//! | `history [SERVICE]` | `GET /rollouts[?service=]` (and `GET /rollouts/{x}` for the timeline) |
//! | `pause`/`resume`/`promote`/`abort` `SERVICE\|ID` | `POST /rollouts/{x}/{action}` |
//!
//! The engine owns every decision; the CLI only shows them. So the rendering is a set of pure
//! functions from the [`model`](super::model) types to strings ([`render_status`],
//! [`render_history`], [`render_timeline`], [`summary_line`]), which the tests pin down
//! exactly, and `--output json` prints the API's JSON as it came (pretty), so scripts see
//! fields this version of the CLI does not know about.
//!
//! Exit status: 0 when the command did what was asked (and, for `watch`, the rollout was
//! promoted); 1 when the controller refused (its `{"error"}` text is printed) or a watched
//! rollout ended without being promoted; 2 when the controller could not be asked at all.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::{Action, ApiErrorBody, Phase, Rollout, RolloutDetail, StartRequest};
use crate::status::{self, ADMIN_ADDR_FILE, StatusError};
use crate::store::unix_ms;
use crate::{CliError, ColorChoice, Format, Outcome, Paint, Terminal};

mod render;

/// What a rollout's canary is (or was) judged against, as the status, the page and the
/// messages say it: the baseline's description, or for a rollout from before baseline copies
/// existed, its stable version's running instances.
pub fn baseline_sentence(r: &Rollout) -> String {
    if r.baseline.description.is_empty() {
        format!("the running {} instances", r.baseline_version)
    } else {
        r.baseline.description.clone()
    }
}
pub use render::*;

/// How often `watch` polls (the judge looks every few seconds; a second keeps the countdown
/// honest without loading the controller).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How many failed polls in a row `watch` rides out (a controller restart) before giving up.
const WATCH_RETRIES: u32 = 30;
/// Cells in the progress bar.
const BAR_CELLS: usize = 18;
/// The longest decision shown in a history row; the full text is in `status`.
const HISTORY_DECISION_CHARS: usize = 72;

/// `sluice rollout …`.
#[derive(Debug, Args)]
pub struct RolloutCommand {
    /// What to do.
    #[command(subcommand)]
    pub command: RolloutSubcommand,
    /// Where the controller is and how to print.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The options every rollout command shares. Global, so they may follow the subcommand.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The controller's admin address (`--admin` of `sluice controller`); wins over
    /// `--state-dir`.
    #[arg(long, value_name = "ADDR", global = true)]
    pub controller: Option<String>,
    /// The controller's state directory: its admin address is read from `admin.addr` there.
    #[arg(long, value_name = "DIR", env = "SLUICE_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// How to print: for people, or the API's JSON unchanged (pretty) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub output: Format,
    /// When to colour the output. `auto` colours a terminal unless NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
}

/// The rollout commands.
#[derive(Debug, Subcommand)]
pub enum RolloutSubcommand {
    /// Start rolling out a new version of a service, as its CanaryPolicy says.
    ///
    /// Exits 0 when the rollout started, 1 when the controller refused (the reason is printed).
    Start(StartArgs),
    /// Show a rollout: steps, weight, progress, the evidence per check and the decision.
    ///
    /// Without an argument: every active rollout, and the last finished one per service.
    Status(MaybeWhich),
    /// Show a rollout live until it is over (Ctrl-C stops watching; the rollout goes on).
    ///
    /// Exits 0 when it was promoted, 1 when it was rolled back, aborted, failed or superseded.
    Watch(MaybeWhich),
    /// List rollouts, newest first; for one service or id also its timeline of events.
    History(MaybeWhich),
    /// Hold the rollout at its current weights; nothing advances until `resume`.
    Pause(Which),
    /// Continue a paused rollout, or confirm a step waiting for confirmation.
    Resume(Which),
    /// Skip the remaining steps: make the canary the stable version now.
    Promote(Which),
    /// Roll back now: all traffic to the baseline, the canary stops.
    Abort(Which),
}

/// Arguments of `sluice rollout start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The service to roll out.
    pub service: String,
    /// The version to roll out (the canary's `version` label).
    #[arg(long)]
    pub version: String,
    /// The service's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// A rollout named by id (`r-20250312-a1b2`) or by service (its newest rollout).
#[derive(Debug, Args)]
pub struct Which {
    /// A rollout id, or a service name meaning its newest rollout.
    #[arg(value_name = "SERVICE|ID")]
    pub rollout: String,
}

/// An optional [`Which`].
#[derive(Debug, Args)]
pub struct MaybeWhich {
    /// A rollout id, or a service name meaning its newest rollout.
    #[arg(value_name = "SERVICE|ID")]
    pub rollout: Option<String>,
}

/// Why a rollout command could not ask the controller, or could not read its answer.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// Neither `--controller` nor `--state-dir`.
    #[error(
        "say which controller: --controller ADDR (its admin address) or --state-dir DIR \
         (or SLUICE_STATE_DIR)"
    )]
    NoTarget,
    /// The state directory has no readable `admin.addr`.
    #[error(
        "no controller is running for {dir} (cannot read {ADMIN_ADDR_FILE}: {reason}); start \
         it with `sluice controller --state-dir {dir}`, or pass its admin address with \
         --controller ADDR"
    )]
    NotRunning {
        /// The state directory.
        dir: String,
        /// Why the file could not be read.
        reason: String,
    },
    /// Nothing answered HTTP at the admin address.
    #[error(
        "cannot reach the controller's admin endpoint at {addr}: {reason}; is `sluice \
         controller` running? `sluice status` shows its admin address (pass it with \
         --controller ADDR, or use --state-dir DIR)"
    )]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The controller answered, but not with what the rollout API promises.
    #[error("the controller at {addr} gave an unexpected answer to {request}: {reason}")]
    BadAnswer {
        /// Where.
        addr: String,
        /// `GET /rollouts/payments`.
        request: String,
        /// What was wrong with it.
        reason: String,
    },
    /// An argument that cannot be a rollout id or a service name (it goes into a URL).
    #[error("`{0}` is not a rollout id or service name (letters, digits, `-`, `_` and `.` only)")]
    BadName(String),
    /// `watch` without an argument, and not exactly one active rollout to pick.
    #[error("{0}")]
    NothingToWatch(String),
}

/// What the controller said to a request: the JSON it promised, or a refusal with a reason.
enum Answer {
    /// 2xx with a JSON body.
    Json(Value),
    /// 4xx with `{"error": …}`: the request was understood and refused (exit 1).
    Refused(String),
}

/// The admin endpoint of one controller.
struct Admin {
    addr: String,
}

impl Admin {
    /// Where `--controller` or `--state-dir` says.
    fn locate(target: &TargetArgs) -> Result<Admin, RolloutError> {
        match (&target.controller, &target.state_dir) {
            (Some(addr), _) => Ok(Admin { addr: addr.clone() }),
            (None, Some(dir)) => std::fs::read_to_string(dir.join(ADMIN_ADDR_FILE))
                .map(|addr| Admin {
                    addr: addr.trim().to_owned(),
                })
                .map_err(|e| RolloutError::NotRunning {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                }),
            (None, None) => Err(RolloutError::NoTarget),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, RolloutError> {
        let request = format!("{method} {path}");
        let bad = |reason: String| RolloutError::BadAnswer {
            addr: self.addr.clone(),
            request: request.clone(),
            reason,
        };
        let response = status::request(&self.addr, method, path, body).map_err(|e| match e {
            StatusError::Unreachable { addr, reason } => RolloutError::Unreachable { addr, reason },
            other => RolloutError::Unreachable {
                addr: self.addr.clone(),
                reason: other.to_string(),
            },
        })?;
        match response.status {
            200..=299 => serde_json::from_str(&response.body)
                .map(Answer::Json)
                .map_err(|e| bad(format!("not JSON ({e})"))),
            // A 4xx without the promised error body is most likely a controller that predates
            // the rollout API (`not found: try /status`), which is not the user's request's
            // fault: exit 2 with what it said.
            400..=499 => serde_json::from_str::<ApiErrorBody>(&response.body)
                .map(|b| Answer::Refused(b.error))
                .map_err(|_| {
                    bad(format!(
                        "`{}`: {} (is this controller older than the rollout API?)",
                        response.status_line,
                        first_line(&response.body)
                    ))
                }),
            _ => {
                let detail = serde_json::from_str::<ApiErrorBody>(&response.body)
                    .map_or_else(|_| first_line(&response.body).to_owned(), |b| b.error);
                Err(bad(format!("`{}`: {detail}", response.status_line)))
            }
        }
    }

    /// Decodes a successful answer as `T`, keeping the raw JSON for `--output json`.
    fn decode<T: DeserializeOwned>(&self, request: &str, value: &Value) -> Result<T, RolloutError> {
        T::deserialize(value).map_err(|e| RolloutError::BadAnswer {
            addr: self.addr.clone(),
            request: request.to_owned(),
            reason: format!("it does not match the rollout API ({e})"),
        })
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

/// Checks a rollout id or service name before it goes into a URL path.
fn segment(name: &str) -> Result<&str, RolloutError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(RolloutError::BadName(name.to_owned()))
    }
}

/// How `run` prints.
struct Printer<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    output: Format,
    paint: Paint,
    tty: bool,
}

impl Printer<'_> {
    fn json(&mut self, value: &Value) -> Result<(), CliError> {
        serde_json::to_writer_pretty(&mut *self.out, value).map_err(std::io::Error::from)?;
        writeln!(self.out)?;
        Ok(())
    }

    /// The controller's refusal: its words, exit 1.
    fn refused(&mut self, error: &str) -> Result<Outcome, CliError> {
        writeln!(self.err, "error: {error}")?;
        Ok(Outcome::Denied)
    }
}

/// `sluice rollout …`.
pub(crate) fn run(
    cmd: &RolloutCommand,
    terminal: Terminal,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let admin = Admin::locate(&cmd.target)?;
    let mut p = Printer {
        out,
        err,
        output: cmd.target.output,
        paint: Paint {
            enabled: terminal.use_color(cmd.target.color),
        },
        tty: terminal.stdout_is_tty,
    };
    match &cmd.command {
        RolloutSubcommand::Start(args) => start(&admin, args, &mut p),
        RolloutSubcommand::Status(which) => match &which.rollout {
            Some(x) => status_one(&admin, x, &mut p),
            None => status_all(&admin, &mut p),
        },
        RolloutSubcommand::Watch(which) => {
            watch(&admin, which.rollout.as_deref(), &mut p, WATCH_INTERVAL)
        }
        RolloutSubcommand::History(which) => history(&admin, which.rollout.as_deref(), &mut p),
        RolloutSubcommand::Pause(w) => act(&admin, &w.rollout, Action::Pause, &mut p),
        RolloutSubcommand::Resume(w) => act(&admin, &w.rollout, Action::Resume, &mut p),
        RolloutSubcommand::Promote(w) => act(&admin, &w.rollout, Action::Promote, &mut p),
        RolloutSubcommand::Abort(w) => act(&admin, &w.rollout, Action::Abort, &mut p),
    }
}

/// Who started it, for the rollout's `requested_by`: the login name when there is one.
fn requester() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "cli".to_owned())
}

fn start(admin: &Admin, args: &StartArgs, p: &mut Printer<'_>) -> Result<Outcome, CliError> {
    let request = StartRequest {
        namespace: args.namespace.clone(),
        service: segment(&args.service)?.to_owned(),
        version: args.version.clone(),
        requested_by: Some(requester()),
    };
    let body = serde_json::to_string(&request).map_err(std::io::Error::from)?;
    one_rollout(
        admin,
        "POST",
        crate::server::admin::paths::ROLLOUTS,
        Some(&body),
        p,
    )
}

fn act(
    admin: &Admin,
    which: &str,
    action: Action,
    p: &mut Printer<'_>,
) -> Result<Outcome, CliError> {
    let path = format!("/rollouts/{}/{}", segment(which)?, action.as_str());
    one_rollout(admin, "POST", &path, None, p)
}

/// A request answered with one `Rollout`: print its summary line (or the JSON).
fn one_rollout(
    admin: &Admin,
    method: &str,
    path: &str,
    body: Option<&str>,
    p: &mut Printer<'_>,
) -> Result<Outcome, CliError> {
    let value = match admin.call(method, path, body)? {
        Answer::Json(v) => v,
        Answer::Refused(e) => return p.refused(&e),
    };
    let rollout: Rollout = admin.decode(&format!("{method} {path}"), &value)?;
    match p.output {
        Format::Json => p.json(&value)?,
        Format::Human => writeln!(p.out, "{}", summary_line(&rollout))?,
    }
    Ok(Outcome::Success)
}

/// `GET /rollouts/{x}`, decoded, with its raw JSON.
fn fetch_detail(
    admin: &Admin,
    which: &str,
) -> Result<Result<(RolloutDetail, Value), String>, RolloutError> {
    let path = format!("/rollouts/{}", segment(which)?);
    match admin.call("GET", &path, None)? {
        Answer::Json(v) => Ok(Ok((admin.decode(&format!("GET {path}"), &v)?, v))),
        Answer::Refused(e) => Ok(Err(e)),
    }
}

/// `GET /rollouts[?service=]`: the rollouts, each with its raw JSON.
fn fetch_list(
    admin: &Admin,
    service: Option<&str>,
) -> Result<Result<Vec<(Rollout, Value)>, String>, RolloutError> {
    let path = match service {
        Some(s) => format!("/rollouts?service={}", segment(s)?),
        None => "/rollouts".to_owned(),
    };
    let request = format!("GET {path}");
    let value = match admin.call("GET", &path, None)? {
        Answer::Json(v) => v,
        Answer::Refused(e) => return Ok(Err(e)),
    };
    // Decoded item by item (not as a `RolloutList`) so each keeps its own raw JSON: `--output
    // json` and the page link read fields the model does not have.
    let items = match value.get("rollouts") {
        Some(Value::Array(items)) => items.clone(),
        _ => {
            return Err(RolloutError::BadAnswer {
                addr: admin.addr.clone(),
                request,
                reason: "no `rollouts` array".to_owned(),
            });
        }
    };
    let rollouts = items
        .into_iter()
        .map(|v| Ok((admin.decode(&request, &v)?, v)))
        .collect::<Result<Vec<_>, RolloutError>>()?;
    Ok(Ok(rollouts))
}

fn status_one(admin: &Admin, which: &str, p: &mut Printer<'_>) -> Result<Outcome, CliError> {
    let (detail, raw) = match fetch_detail(admin, which)? {
        Ok(found) => found,
        Err(e) => return p.refused(&e),
    };
    match p.output {
        Format::Json => p.json(&raw)?,
        Format::Human => write!(
            p.out,
            "{}",
            render_status(
                &detail.rollout,
                page_link(&raw).as_deref(),
                SystemTime::now(),
                p.paint.enabled
            )
        )?,
    }
    Ok(Outcome::Success)
}

fn status_all(admin: &Admin, p: &mut Printer<'_>) -> Result<Outcome, CliError> {
    let rollouts = match fetch_list(admin, None)? {
        Ok(list) => list,
        Err(e) => return p.refused(&e),
    };
    let shown = select_for_status(&rollouts);
    match p.output {
        Format::Json => {
            let items: Vec<Value> = shown.iter().map(|(_, raw)| (*raw).clone()).collect();
            p.json(&serde_json::json!({ "rollouts": items }))?;
        }
        Format::Human if shown.is_empty() => writeln!(
            p.out,
            "no rollouts yet; start one with `sluice rollout start SERVICE --version V`"
        )?,
        Format::Human => {
            let now = SystemTime::now();
            let views: Vec<String> = shown
                .iter()
                .map(|(r, raw)| render_status(r, page_link(raw).as_deref(), now, p.paint.enabled))
                .collect();
            write!(p.out, "{}", views.join("\n"))?;
        }
    }
    Ok(Outcome::Success)
}

/// Every active rollout, plus each service's newest finished one, in the list's order (newest
/// first).
fn select_for_status(rollouts: &[(Rollout, Value)]) -> Vec<&(Rollout, Value)> {
    let mut finished_seen = std::collections::HashSet::new();
    rollouts
        .iter()
        .filter(|(r, _)| {
            r.phase.is_active() || finished_seen.insert((r.namespace.as_str(), r.service.as_str()))
        })
        .collect()
}

fn history(admin: &Admin, which: Option<&str>, p: &mut Printer<'_>) -> Result<Outcome, CliError> {
    // For one service or id: the rollout it names (for its timeline), then its service's list.
    let detail = match which {
        Some(x) => match fetch_detail(admin, x)? {
            Ok(found) => Some(found),
            Err(e) => return p.refused(&e),
        },
        None => None,
    };
    let service = detail.as_ref().map(|(d, _)| d.rollout.service.clone());
    let rollouts = match fetch_list(admin, service.as_deref())? {
        Ok(list) => list,
        Err(e) => return p.refused(&e),
    };
    match p.output {
        // The list as the API gives it; the events are in `status ID --output json`.
        Format::Json => {
            let items: Vec<Value> = rollouts.iter().map(|(_, raw)| raw.clone()).collect();
            p.json(&serde_json::json!({ "rollouts": items }))?;
        }
        Format::Human => {
            let now = SystemTime::now();
            let list: Vec<Rollout> = rollouts.into_iter().map(|(r, _)| r).collect();
            write!(p.out, "{}", render_history(&list, now))?;
            if let Some((d, _)) = &detail {
                write!(p.out, "\n{}", render_timeline(d, now))?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// ANSI: cursor home, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

fn watch(
    admin: &Admin,
    which: Option<&str>,
    p: &mut Printer<'_>,
    interval: Duration,
) -> Result<Outcome, CliError> {
    // Follow one rollout by id: a service name would jump to a newer rollout that supersedes
    // the watched one, and the exit status must be this one's.
    let id = match which {
        Some(x) => match fetch_detail(admin, x)? {
            Ok((d, _)) => d.rollout.id,
            Err(e) => return p.refused(&e),
        },
        None => {
            let rollouts = match fetch_list(admin, None)? {
                Ok(list) => list,
                Err(e) => return p.refused(&e),
            };
            let active: Vec<&Rollout> = rollouts
                .iter()
                .map(|(r, _)| r)
                .filter(|r| r.phase.is_active())
                .collect();
            match active.as_slice() {
                [one] => one.id.clone(),
                [] => {
                    return Err(RolloutError::NothingToWatch(
                        "no rollout is active; `sluice rollout history` lists the finished ones"
                            .to_owned(),
                    )
                    .into());
                }
                several => {
                    let names: Vec<String> = several
                        .iter()
                        .map(|r| format!("{} ({})", r.service, r.id))
                        .collect();
                    return Err(RolloutError::NothingToWatch(format!(
                        "{} rollouts are active: {}; name one: `sluice rollout watch SERVICE`",
                        several.len(),
                        names.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    let mut last: Option<Rollout> = None;
    let mut failures = 0;
    loop {
        let (detail, raw) = match fetch_detail(admin, &id) {
            Ok(Ok(found)) => {
                failures = 0;
                found
            }
            Ok(Err(e)) => return p.refused(&e),
            // A controller restart should not end a watch; a controller gone for good should.
            Err(e) if failures < WATCH_RETRIES => {
                if failures == 0 {
                    writeln!(p.err, "warning: {e}; retrying")?;
                }
                failures += 1;
                std::thread::sleep(interval);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let changed = last.as_ref() != Some(&detail.rollout);
        match p.output {
            Format::Json if changed => p.json(&raw)?,
            Format::Json => {}
            Format::Human if p.tty => {
                let view = render_status(
                    &detail.rollout,
                    page_link(&raw).as_deref(),
                    SystemTime::now(),
                    p.paint.enabled,
                );
                write!(p.out, "{CLEAR}{view}")?;
            }
            // Piped: a new block per change, not a screenful per second.
            Format::Human if changed => {
                if last.is_some() {
                    writeln!(p.out)?;
                }
                let view = render_status(
                    &detail.rollout,
                    page_link(&raw).as_deref(),
                    SystemTime::now(),
                    p.paint.enabled,
                );
                write!(p.out, "{view}")?;
            }
            Format::Human => {}
        }
        p.out.flush()?;
        if !detail.rollout.phase.is_active() {
            return Ok(if detail.rollout.phase == Phase::Promoted {
                Outcome::Success
            } else {
                Outcome::Denied
            });
        }
        last = Some(detail.rollout);
        std::thread::sleep(interval);
    }
}

/// The rollout's page, when the API's JSON carries a link (the model does not have one yet;
/// the portal may add it under one of these names).
#[cfg(test)]
mod tests;
