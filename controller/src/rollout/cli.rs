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
    one_rollout(admin, "POST", "/rollouts", Some(&body), p)
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
pub fn page_link(raw: &Value) -> Option<String> {
    ["url", "page_url", "portal_url", "link"]
        .iter()
        .find_map(|key| raw.get(*key).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Rendering: pure functions of the rollout and the time.

/// `payments` for the default namespace, `shop/payments` otherwise.
fn service_name(r: &Rollout) -> String {
    if r.namespace.is_empty() || r.namespace == "default" {
        r.service.clone()
    } else {
        format!("{}/{}", r.namespace, r.service)
    }
}

/// `payments  v1 → v2  progressing  step 2/3  25%`.
fn header(r: &Rollout, paint: Paint) -> String {
    let code = match r.phase {
        Phase::Progressing | Phase::Promoted => Paint::GREEN,
        Phase::Pending | Phase::Paused | Phase::WaitingConfirmation => Paint::YELLOW,
        Phase::RolledBack | Phase::Aborted | Phase::Failed | Phase::Superseded => Paint::RED,
    };
    format!(
        "{}  {} → {}  {}  step {}/{}  {}%",
        service_name(r),
        r.baseline_version,
        r.canary_version,
        paint.paint(code, r.phase.as_str()),
        (r.step + 1).min(r.steps.len().max(1)),
        r.steps.len(),
        r.weight
    )
}

/// One line: `r-20250312-a1b2  payments  v1 → v2  progressing  step 1/3  5%`, and the decision
/// once it is over.
pub fn summary_line(r: &Rollout) -> String {
    let mut line = format!("{}  {}", r.id, header(r, Paint { enabled: false }));
    if !r.phase.is_active() && !r.decision.is_empty() {
        let _ = write!(line, "  · {}", r.decision);
    }
    line
}

/// The status view: header, progress bar, steps, one line per check, the decision.
pub fn render_status(r: &Rollout, link: Option<&str>, now: SystemTime, color: bool) -> String {
    let paint = Paint { enabled: color };
    let now_ms = unix_ms(now);
    let mut s = String::new();
    let _ = writeln!(s, "{}", header(r, paint));
    let _ = writeln!(s, "{}", progress_line(r, now_ms, paint));
    if !r.steps.is_empty() {
        let _ = writeln!(s, "steps  {}", steps_line(r));
    }
    let evidence: Vec<EvidenceView> = r.evidence.iter().map(EvidenceView::from_json).collect();
    for e in &evidence {
        s.push_str(&e.render(paint));
    }
    // The check that failed the canary, when the latest evidence no longer lists it.
    if let Some(failed) = r.failed_check.as_ref().map(EvidenceView::from_json)
        && !evidence
            .iter()
            .any(|e| e.metric == failed.metric && e.comparison == failed.comparison)
    {
        s.push_str(&failed.render(paint));
    }
    let started_by = if r.requested_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", r.requested_by)
    };
    let _ = writeln!(
        s,
        "canary {} requests, baseline {} · {} · started {}{started_by}",
        group(r.canary_requests),
        group(r.baseline_requests),
        r.id,
        ago(now_ms, r.created_unix_ms)
    );
    if !r.decision.is_empty() {
        let _ = writeln!(s, "{}", r.decision);
    }
    let name = service_name(r);
    match r.phase {
        Phase::WaitingConfirmation => {
            let _ = writeln!(
                s,
                "next: `sluice rollout resume {name}` continues · `promote` skips the rest · \
                 `abort` rolls back"
            );
        }
        Phase::Paused => {
            let _ = writeln!(
                s,
                "next: `sluice rollout resume {name}` continues · `abort` rolls back"
            );
        }
        _ => {}
    }
    if let Some(link) = link {
        let _ = writeln!(s, "{link}");
    }
    s
}

/// `[■■■■■■■■□□□□□□□□□□] 25% of traffic · step 2 of 3 (1m, 38s left)`.
fn progress_line(r: &Rollout, now_ms: i64, paint: Paint) -> String {
    let n = r.steps.len();
    let step_no = (r.step + 1).min(n.max(1));
    let step_ms = r.current_step().map_or(0, |s| s.duration_ms);
    // How far into the current step: until now, or until the end for a finished rollout.
    let until = r.finished_unix_ms.unwrap_or(now_ms);
    let elapsed_ms = u64::try_from(until - r.step_started_unix_ms).unwrap_or(0);
    let step_fraction = match r.phase {
        Phase::Pending => 0.0,
        Phase::WaitingConfirmation => 1.0,
        _ if step_ms == 0 => 1.0,
        _ => (elapsed_ms as f64 / step_ms as f64).min(1.0),
    };
    let fraction = match r.phase {
        Phase::Promoted => 1.0,
        _ if n == 0 => 0.0,
        _ => ((r.step.min(n - 1) as f64 + step_fraction) / n as f64).clamp(0.0, 1.0),
    };
    let filled = ((fraction * BAR_CELLS as f64).round() as usize).min(BAR_CELLS);
    let code = if r.phase.is_active() || r.phase == Phase::Promoted {
        Paint::GREEN
    } else {
        Paint::RED
    };
    let bar = format!(
        "[{}{}]",
        paint.paint(code, &"■".repeat(filled)),
        "□".repeat(BAR_CELLS - filled)
    );
    let step_ms_text = duration(Duration::from_millis(step_ms));
    let detail = match r.phase {
        Phase::Pending => {
            format!("step {step_no} of {n} (waiting for the canary's first instance)")
        }
        Phase::Progressing => {
            let left = step_ms.saturating_sub(elapsed_ms);
            if left == 0 {
                format!("step {step_no} of {n} ({step_ms_text}, due)")
            } else {
                format!(
                    "step {step_no} of {n} ({step_ms_text}, {} left)",
                    duration(Duration::from_millis(left))
                )
            }
        }
        Phase::Paused => format!("step {step_no} of {n} (paused)"),
        Phase::WaitingConfirmation => {
            format!("step {step_no} of {n} (passed; waiting for confirmation)")
        }
        Phase::Promoted => format!("promoted after {}", total_duration(r, now_ms)),
        Phase::RolledBack | Phase::Aborted | Phase::Failed | Phase::Superseded => format!(
            "stopped at step {step_no} of {n} after {}",
            total_duration(r, now_ms)
        ),
    };
    format!("{bar} {}% of traffic · {detail}", r.weight)
}

/// `5% 1m → [25% 1m] → 50% 5m confirm`: the plan, the current step in brackets.
fn steps_line(r: &Rollout) -> String {
    r.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut text = format!(
                "{}% {}",
                s.weight,
                duration(Duration::from_millis(s.duration_ms))
            );
            if s.confirm {
                text.push_str(" confirm");
            }
            if i == r.step && r.phase.is_active() {
                format!("[{text}]")
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// From start to the end (or to now, while it runs).
fn total_duration(r: &Rollout, now_ms: i64) -> String {
    let end = r.finished_unix_ms.unwrap_or(now_ms);
    duration(Duration::from_millis(
        u64::try_from(end - r.created_unix_ms).unwrap_or(0),
    ))
}

/// One check's evidence, read leniently: the engine serializes
/// [`Evidence`](crate::rollout::judge::Evidence) in camelCase, and a snake_case spelling is
/// accepted too; whatever does not fit shows as the explanation alone rather than an error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EvidenceView {
    metric: String,
    signal: String,
    comparison: String,
    failed: bool,
    #[serde(alias = "canaryValue")]
    canary_value: Option<f64>,
    #[serde(alias = "baselineValue")]
    baseline_value: Option<f64>,
    margin: Option<f64>,
    threshold: Option<ThresholdView>,
    #[serde(alias = "eValue")]
    e_value: Option<f64>,
    #[serde(alias = "logEValue")]
    log_e_value: Option<f64>,
    bound: Option<f64>,
    #[serde(alias = "canaryRequests")]
    canary_requests: Option<u64>,
    explanation: String,
    /// Not a field of the API: set when the entry could not be read as evidence.
    #[serde(skip)]
    unreadable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ThresholdView {
    min: Option<f64>,
    max: Option<f64>,
}

/// Which unit a check's values are in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Percent,
    Millis,
    PerSecond,
}

impl EvidenceView {
    fn from_json(v: &Value) -> EvidenceView {
        EvidenceView::deserialize(v).unwrap_or_else(|_| EvidenceView {
            metric: v
                .get("metric")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            explanation: v
                .get("explanation")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_owned),
            failed: v.get("failed").and_then(Value::as_bool).unwrap_or(false),
            unreadable: true,
            ..EvidenceView::default()
        })
    }

    fn unit(&self) -> Unit {
        let signal: String = self
            .signal
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match signal.as_str() {
            "latency" => Unit::Millis,
            "requestrate" => Unit::PerSecond,
            _ => Unit::Percent,
        }
    }

    /// No data behind it yet: neither values nor an e-value, or no canary requests.
    fn inconclusive(&self) -> bool {
        !self.failed
            && (self.canary_requests == Some(0)
                || (self.canary_value.is_none()
                    && self.e_value.is_none()
                    && self.log_e_value.is_none()))
    }

    fn value(&self, v: f64) -> String {
        match self.unit() {
            Unit::Percent => percent(v),
            Unit::Millis => millis(v),
            // Relative request-rate checks compare rates per weight point.
            Unit::PerSecond if self.comparison == "relative" => {
                format!("{} req/s per point", trim_float(round_to(v, 100.0)))
            }
            Unit::PerSecond => format!("{} req/s", trim_float(round_to(v, 100.0))),
        }
    }

    /// `✓ errors  canary 99.8%  baseline 99.9%  margin 0.5 pts  evidence 0.4 / 300`, and the
    /// explanation in full under a failed one.
    fn render(&self, paint: Paint) -> String {
        let mark = if self.failed {
            paint.paint(Paint::RED, "✗")
        } else if self.unreadable || self.inconclusive() {
            paint.paint("\x1b[2m", "·")
        } else {
            paint.paint(Paint::GREEN, "✓")
        };
        if self.unreadable {
            return format!("{mark} {}  {}\n", self.metric, self.explanation);
        }
        let mut line = format!("{mark} {}", self.metric);
        match self.canary_value {
            Some(c) => {
                let _ = write!(line, "  canary {}", self.value(c));
            }
            None => line.push_str("  canary n/a"),
        }
        if let Some(b) = self.baseline_value {
            let _ = write!(line, "  baseline {}", self.value(b));
        }
        if let Some(m) = self.margin {
            let unit = if self.unit() == Unit::Percent {
                " pts"
            } else {
                "%"
            };
            let _ = write!(line, "  margin {}{unit}", trim_float(m));
        }
        if let Some(t) = &self.threshold {
            if let Some(min) = t.min {
                let _ = write!(line, "  min {}", self.value(min));
            }
            if let Some(max) = t.max {
                let _ = write!(line, "  max {}", self.value(max));
            }
        }
        let log_e = self
            .log_e_value
            .or_else(|| self.e_value.filter(|e| *e > 0.0).map(f64::ln));
        if let (Some(log_e), Some(bound)) = (log_e, self.bound) {
            let _ = write!(
                line,
                "  evidence {} / {}",
                evidence_value(log_e),
                group(bound.round().max(0.0) as u64)
            );
        }
        line.push('\n');
        if self.failed && !self.explanation.is_empty() {
            let _ = writeln!(line, "    {}", self.explanation);
        }
        line
    }
}

/// The history table: one row per rollout, newest first.
pub fn render_history(rollouts: &[Rollout], now: SystemTime) -> String {
    if rollouts.is_empty() {
        return "no rollouts yet; start one with `sluice rollout start SERVICE --version V`\n"
            .to_owned();
    }
    let now_ms = unix_ms(now);
    let header = [
        "ID", "SERVICE", "VERSIONS", "PHASE", "STARTED", "DURATION", "DECISION",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 7]> = rollouts
        .iter()
        .map(|r| {
            let mut took = total_duration(r, now_ms);
            if r.phase.is_active() {
                took.push_str(" so far");
            }
            [
                r.id.clone(),
                service_name(r),
                format!("{} → {}", r.baseline_version, r.canary_version),
                r.phase.as_str().to_owned(),
                ago(now_ms, r.created_unix_ms),
                took,
                truncate(&r.decision, HISTORY_DECISION_CHARS),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The events of one rollout, oldest first, each at its offset from the start.
pub fn render_timeline(d: &RolloutDetail, now: SystemTime) -> String {
    let r = &d.rollout;
    let mut s = format!(
        "{}  {}  {} → {}  {}, started {}\n",
        r.id,
        service_name(r),
        r.baseline_version,
        r.canary_version,
        r.phase,
        ago(unix_ms(now), r.created_unix_ms)
    );
    if d.events.is_empty() {
        s.push_str("  (no events yet)\n");
        return s;
    }
    let offsets: Vec<String> = d
        .events
        .iter()
        .map(|e| {
            let ms = u64::try_from(e.at_unix_ms - r.created_unix_ms).unwrap_or(0);
            format!("+{}", duration(Duration::from_millis(ms)))
        })
        .collect();
    let time_width = offsets.iter().map(|o| o.chars().count()).max().unwrap_or(0);
    let kind_width = d
        .events
        .iter()
        .map(|e| e.kind.chars().count())
        .max()
        .unwrap_or(0);
    for (offset, e) in offsets.iter().zip(&d.events) {
        let _ = writeln!(
            s,
            "  {offset:<time_width$}  {:<kind_width$}  {}",
            e.kind, e.message
        );
    }
    s
}

/// Columns padded to their widest cell (in characters: `→` is one column), two spaces apart.
fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers and times for people (the judge's own helpers are private to it).

/// `1m 30s`, `45s`, `1h 5m`, `2d 3h`: the two largest non-zero units.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let parts: Vec<String> = units
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `45s ago`, `2m ago`, `3h ago`, `2d ago`: one unit is enough for "when".
fn ago(now_ms: i64, then_ms: i64) -> String {
    let secs = u64::try_from(now_ms - then_ms).unwrap_or(0) / 1000;
    match secs {
        0 => "just now".to_owned(),
        1..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `0.01`, `0.5`, `20` (no trailing zeros).
fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn round_to(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

/// As the judge writes them: enough digits to tell 99.9% from 100%.
fn percent(v: f64) -> String {
    if (99.0..100.0).contains(&v) {
        format!("{}%", trim_float((v * 100.0).floor() / 100.0))
    } else {
        format!("{}%", trim_float(round_to(v, 10.0)))
    }
}

/// Milliseconds: `4.20 ms`, `42.1 ms`, `212 ms`.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{} ms", group(ms.round().max(0.0) as u64))
    }
}

/// An e-value: `0.4`, `12`, `1,240`, `3.1e9` (from its logarithm, exact when huge).
fn evidence_value(log_e: f64) -> String {
    let e = log_e.exp();
    if e < 10.0 {
        format!("{e:.1}")
    } else if e < 1e6 {
        group(e.round() as u64)
    } else {
        let exponent = (log_e / 10f64.ln()).floor();
        let mantissa = (log_e - exponent * 10f64.ln()).exp();
        format!("{mantissa:.1}e{exponent}")
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    use sluice_policy::resources::Signal;

    use super::*;
    use crate::rollout::judge::{Comparison, Evidence};
    use crate::rollout::model::{Event, StepPlan};

    /// 2023-11-14T22:13:20Z, in Unix ms.
    const NOW_MS: i64 = 1_700_000_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS as u64)
    }

    /// The real judge type, serialized as the engine serializes it.
    fn evidence(metric: &str, signal: Signal, values: (f64, f64), margin: f64, e: f64) -> Value {
        serde_json::to_value(Evidence {
            metric: metric.to_owned(),
            signal,
            comparison: Comparison::Relative,
            failed: e >= 300.0,
            canary_value: Some(values.0),
            baseline_value: Some(values.1),
            margin: Some(margin),
            threshold: None,
            e_value: Some(e),
            log_e_value: Some(e.ln()),
            bound: Some(300.0),
            canary_requests: 121,
            baseline_requests: 2_290,
            explanation: format!(
                "{metric}: canary success rate {}% vs baseline {}% (margin {margin} points); \
                 evidence {e} ≥ 300 (α = 0.01 over 3 checks) after 121 canary requests",
                values.0, values.1
            ),
        })
        .expect("evidence serializes")
    }

    fn steps() -> Vec<StepPlan> {
        vec![
            StepPlan {
                weight: 5,
                duration_ms: 60_000,
                confirm: false,
            },
            StepPlan {
                weight: 25,
                duration_ms: 60_000,
                confirm: false,
            },
            StepPlan {
                weight: 50,
                duration_ms: 300_000,
                confirm: true,
            },
        ]
    }

    fn progressing() -> Rollout {
        Rollout {
            id: "r-20231114-a1b2".to_owned(),
            namespace: "default".to_owned(),
            service: "payments".to_owned(),
            baseline_version: "v1".to_owned(),
            canary_version: "v2".to_owned(),
            phase: Phase::Progressing,
            step: 1,
            weight: 25,
            steps: steps(),
            interval_ms: 5_000,
            progress_deadline_ms: 600_000,
            policy: "payments".to_owned(),
            analysis: Default::default(),
            on_failure: Default::default(),
            requested_by: "alice".to_owned(),
            created_unix_ms: NOW_MS - 180_000,
            updated_unix_ms: NOW_MS - 2_000,
            step_started_unix_ms: NOW_MS - 22_000,
            first_traffic_unix_ms: Some(NOW_MS - 170_000),
            finished_unix_ms: None,
            decision: "step 1 passed: every check passed at 5%".to_owned(),
            evidence: vec![
                evidence("errors", Signal::SuccessRate, (99.8, 99.9), 0.5, 0.4),
                evidence("p99", Signal::Latency, (212.0, 180.0), 20.0, 0.2),
            ],
            failed_check: None,
            canary_requests: 1_204,
            baseline_requests: 22_871,
        }
    }

    fn rolled_back() -> Rollout {
        let failed = evidence("errors", Signal::SuccessRate, (94.2, 99.89), 0.5, 626.0);
        Rollout {
            phase: Phase::RolledBack,
            step: 0,
            weight: 0,
            created_unix_ms: NOW_MS - 600_000,
            step_started_unix_ms: NOW_MS - 600_000,
            finished_unix_ms: Some(NOW_MS - 570_000),
            decision: "rolled back: errors: canary success rate 94.2% vs baseline 99.89%"
                .to_owned(),
            evidence: vec![failed.clone()],
            failed_check: Some(failed),
            canary_requests: 121,
            baseline_requests: 2_290,
            ..progressing()
        }
    }

    fn waiting() -> Rollout {
        Rollout {
            phase: Phase::WaitingConfirmation,
            step: 2,
            weight: 50,
            step_started_unix_ms: NOW_MS - 400_000,
            decision: "step 3 passed at 50%: waiting for confirmation".to_owned(),
            ..progressing()
        }
    }

    #[test]
    fn progressing_rollout_with_passing_evidence() {
        assert_eq!(
            render_status(&progressing(), None, now(), false),
            "payments  v1 → v2  progressing  step 2/3  25%\n\
             [■■■■■■■■□□□□□□□□□□] 25% of traffic · step 2 of 3 (1m, 38s left)\n\
             steps  5% 1m → [25% 1m] → 50% 5m confirm\n\
             ✓ errors  canary 99.8%  baseline 99.9%  margin 0.5 pts  evidence 0.4 / 300\n\
             ✓ p99  canary 212 ms  baseline 180 ms  margin 20%  evidence 0.2 / 300\n\
             canary 1,204 requests, baseline 22,871 · r-20231114-a1b2 · started 3m ago by alice\n\
             step 1 passed: every check passed at 5%\n"
        );
    }

    #[test]
    fn rolled_back_rollout_shows_the_failed_check_in_full() {
        let view = render_status(&rolled_back(), None, now(), false);
        let lines: Vec<&str> = view.lines().collect();
        assert_eq!(lines[0], "payments  v1 → v2  rolled-back  step 1/3  0%");
        assert_eq!(
            lines[1],
            "[■■■□□□□□□□□□□□□□□□] 0% of traffic · stopped at step 1 of 3 after 30s"
        );
        // Not in brackets: no step is current once it is over.
        assert_eq!(lines[2], "steps  5% 1m → 25% 1m → 50% 5m confirm");
        assert_eq!(
            lines[3],
            "✗ errors  canary 94.2%  baseline 99.89%  margin 0.5 pts  evidence 626 / 300"
        );
        assert_eq!(
            lines[4],
            "    errors: canary success rate 94.2% vs baseline 99.89% (margin 0.5 points); \
             evidence 626 ≥ 300 (α = 0.01 over 3 checks) after 121 canary requests"
        );
        // The failed check is also `failed_check`: shown once.
        assert_eq!(view.matches("✗").count(), 1);
        assert_eq!(
            lines[6],
            "rolled back: errors: canary success rate 94.2% vs baseline 99.89%"
        );
        assert_eq!(
            summary_line(&rolled_back()),
            "r-20231114-a1b2  payments  v1 → v2  rolled-back  step 1/3  0%  · rolled back: \
             errors: canary success rate 94.2% vs baseline 99.89%"
        );
    }

    #[test]
    fn failed_check_missing_from_the_evidence_is_still_shown() {
        let r = Rollout {
            evidence: Vec::new(),
            ..rolled_back()
        };
        let view = render_status(&r, None, now(), false);
        assert!(view.contains("\n✗ errors  canary 94.2%"), "{view}");
        assert!(view.contains("\n    errors: canary success rate"), "{view}");
    }

    #[test]
    fn waiting_confirmation_says_what_to_do_next() {
        let view = render_status(&waiting(), Some("http://127.0.0.1:9/r/x"), now(), false);
        let lines: Vec<&str> = view.lines().collect();
        assert_eq!(
            lines[0],
            "payments  v1 → v2  waiting-confirmation  step 3/3  50%"
        );
        assert_eq!(
            lines[1],
            "[■■■■■■■■■■■■■■■■■■] 50% of traffic · step 3 of 3 (passed; waiting for confirmation)"
        );
        assert_eq!(lines[2], "steps  5% 1m → 25% 1m → [50% 5m confirm]");
        assert_eq!(
            lines[lines.len() - 2],
            "next: `sluice rollout resume payments` continues · `promote` skips the rest · \
             `abort` rolls back"
        );
        assert_eq!(lines[lines.len() - 1], "http://127.0.0.1:9/r/x");
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(!render_status(&progressing(), None, now(), false).contains('\x1b'));
        let coloured = render_status(&progressing(), None, now(), true);
        assert!(
            coloured.contains("\x1b[1;32mprogressing\x1b[0m"),
            "{coloured}"
        );
        assert!(coloured.contains("\x1b[1;32m✓\x1b[0m errors"), "{coloured}");
    }

    #[test]
    fn evidence_in_either_spelling_and_unreadable_entries() {
        let snake = serde_json::json!({
            "metric": "p99", "signal": "latency", "comparison": "threshold", "failed": false,
            "canary_value": 212.0, "baseline_value": 180.0, "threshold": {"max": 500.0},
            "e_value": 0.1, "bound": 300.0, "canary_requests": 500, "baseline_requests": 9000,
            "explanation": "p99: fine"
        });
        assert_eq!(
            EvidenceView::from_json(&snake).render(Paint { enabled: false }),
            "✓ p99  canary 212 ms  baseline 180 ms  max 500 ms  evidence 0.1 / 300\n"
        );
        let pending = serde_json::json!({"metric": "errors", "failed": false,
            "canaryRequests": 0, "explanation": "no canary traffic yet"});
        assert_eq!(
            EvidenceView::from_json(&pending).render(Paint { enabled: false }),
            "· errors  canary n/a\n"
        );
        // Wrong types are not a panic, nor an error: the entry shows as what it says.
        let odd = serde_json::json!({"metric": "errors", "canaryValue": "lots",
            "explanation": "errors: something new"});
        assert_eq!(
            EvidenceView::from_json(&odd).render(Paint { enabled: false }),
            "· errors  errors: something new\n"
        );
        let not_an_object = serde_json::json!(42);
        assert_eq!(
            EvidenceView::from_json(&not_an_object).render(Paint { enabled: false }),
            "· ?  42\n"
        );
    }

    #[test]
    fn history_table_and_timeline() {
        let promoted = Rollout {
            id: "r-20231113-ffee".to_owned(),
            canary_version: "v1".to_owned(),
            baseline_version: "v0".to_owned(),
            phase: Phase::Promoted,
            step: 2,
            weight: 100,
            created_unix_ms: NOW_MS - 2 * 86_400_000,
            finished_unix_ms: Some(NOW_MS - 2 * 86_400_000 + 450_000),
            decision: "promoted: every check passed at 50%".to_owned(),
            ..progressing()
        };
        assert_eq!(
            render_history(&[progressing(), promoted], now()),
            "ID               SERVICE   VERSIONS  PHASE        STARTED  DURATION   DECISION\n\
             r-20231114-a1b2  payments  v1 → v2   progressing  3m ago   3m so far  step 1 passed: every check passed at 5%\n\
             r-20231113-ffee  payments  v0 → v1   promoted     2d ago   7m 30s     promoted: every check passed at 50%\n"
        );
        let detail = RolloutDetail {
            rollout: progressing(),
            events: vec![
                Event {
                    at_unix_ms: NOW_MS - 180_000,
                    kind: "started".to_owned(),
                    message: "alice started rolling out payments v2".to_owned(),
                },
                Event {
                    at_unix_ms: NOW_MS - 22_000,
                    kind: "step".to_owned(),
                    message: "step 2: 25% of traffic to v2".to_owned(),
                },
            ],
            points: Vec::new(),
        };
        assert_eq!(
            render_timeline(&detail, now()),
            "r-20231114-a1b2  payments  v1 → v2  progressing, started 3m ago\n\
             \x20 +0s      started  alice started rolling out payments v2\n\
             \x20 +2m 38s  step     step 2: 25% of traffic to v2\n"
        );
    }

    #[test]
    fn durations_and_times_read_like_people_write_them() {
        let d = |s| duration(Duration::from_secs(s));
        assert_eq!(
            [
                d(0),
                d(45),
                d(60),
                d(90),
                d(3_600),
                d(3_725),
                d(2 * 86_400 + 3 * 3_600 + 5)
            ],
            ["0s", "45s", "1m", "1m 30s", "1h", "1h 2m", "2d 3h"]
        );
        assert_eq!(ago(NOW_MS, NOW_MS + 5_000), "just now");
        assert_eq!(ago(NOW_MS, NOW_MS - 150_000), "2m ago");
        assert_eq!(ago(NOW_MS, NOW_MS - 7_200_000), "2h ago");
    }

    #[test]
    fn status_without_argument_shows_active_and_last_finished_per_service() {
        let raw = Value::Null;
        let older = Rollout {
            id: "r-old".to_owned(),
            ..rolled_back()
        };
        let orders = Rollout {
            service: "orders".to_owned(),
            id: "r-orders".to_owned(),
            ..rolled_back()
        };
        let list = vec![
            (progressing(), raw.clone()),
            (rolled_back(), raw.clone()),
            (orders, raw.clone()),
            (older, raw),
        ];
        let ids: Vec<&str> = select_for_status(&list)
            .iter()
            .map(|(r, _)| r.id.as_str())
            .collect();
        assert_eq!(ids, ["r-20231114-a1b2", "r-20231114-a1b2", "r-orders"]);
    }

    /// A request the stand-in server received.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path: String,
        body: String,
    }

    type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

    /// A stand-in admin endpoint on 127.0.0.1:0 answering with the documented JSON. It checks
    /// the client's side of the contract only; the real engine's endpoint is tested end to end
    /// with the engine.
    fn stand_in(handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                reader.read_line(&mut request_line).expect("request line");
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("header");
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().expect("length");
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                let mut parts = request_line.split_whitespace();
                let request = Seen {
                    method: parts.next().unwrap_or_default().to_owned(),
                    path: parts.next().unwrap_or_default().to_owned(),
                    body: String::from_utf8(body).expect("utf-8"),
                };
                let (status, answer) = handler(&request);
                log.lock().expect("lock").push(request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (addr, seen)
    }

    fn json(r: &Rollout) -> String {
        serde_json::to_string(r).expect("rollout serializes")
    }

    fn sluice(args: &[&str]) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = crate::run(
            std::iter::once("sluice").chain(args.iter().copied()),
            Terminal::default(),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    #[test]
    fn commands_speak_the_admin_api() {
        let (addr, seen) = stand_in(Box::new(|req: &Seen| {
            let pending = Rollout {
                phase: Phase::Pending,
                step: 0,
                weight: 0,
                decision: String::new(),
                ..progressing()
            };
            match (req.method.as_str(), req.path.as_str()) {
                ("POST", "/rollouts") => (201, json(&pending)),
                ("POST", "/rollouts/payments/abort") => (
                    200,
                    json(&Rollout {
                        phase: Phase::Aborted,
                        weight: 0,
                        decision: "aborted by alice".to_owned(),
                        ..progressing()
                    }),
                ),
                ("POST", "/rollouts/orders/pause") => (
                    409,
                    r#"{"error": "orders has no active rollout: its newest (r-20231101-0001) was promoted"}"#
                        .to_owned(),
                ),
                ("GET", "/rollouts/payments") => {
                    // The detail, plus a field this CLI does not know and a page link.
                    let mut v = serde_json::to_value(progressing()).expect("value");
                    v["events"] = serde_json::json!([]);
                    v["points"] = serde_json::json!([]);
                    v["url"] = serde_json::json!("http://127.0.0.1:8080/rollouts/r-20231114-a1b2");
                    v["added_later"] = serde_json::json!({"x": 1});
                    (200, v.to_string())
                }
                ("GET", "/rollouts/garbled") => (200, "{\"id\": ".to_owned()),
                _ => (404, r#"{"error": "no rollout `nope`"}"#.to_owned()),
            }
        }));

        let (code, out, err) = sluice(&[
            "rollout",
            "start",
            "payments",
            "--version",
            "v2",
            "--controller",
            &addr,
        ]);
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(
            out,
            "r-20231114-a1b2  payments  v1 → v2  pending  step 1/3  0%\n"
        );
        let start = seen.lock().expect("lock")[0].clone();
        assert_eq!(
            (start.method.as_str(), start.path.as_str()),
            ("POST", "/rollouts")
        );
        let body: StartRequest = serde_json::from_str(&start.body).expect("a StartRequest");
        assert_eq!(
            (
                body.namespace.as_str(),
                body.service.as_str(),
                body.version.as_str()
            ),
            ("default", "payments", "v2")
        );
        assert!(body.requested_by.is_some_and(|who| !who.is_empty()));

        let (code, out, _) = sluice(&["rollout", "abort", "payments", "--controller", &addr]);
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "r-20231114-a1b2  payments  v1 → v2  aborted  step 2/3  0%  · aborted by alice\n"
        );
        let abort = seen.lock().expect("lock")[1].clone();
        assert_eq!(
            (
                abort.method.as_str(),
                abort.path.as_str(),
                abort.body.as_str()
            ),
            ("POST", "/rollouts/payments/abort", "")
        );

        let (code, out, err) = sluice(&["rollout", "pause", "orders", "--controller", &addr]);
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "error: orders has no active rollout: its newest (r-20231101-0001) was promoted\n"
        );

        let (code, out, _) = sluice(&["rollout", "status", "payments", "--controller", &addr]);
        assert_eq!(code, 0);
        assert!(
            out.starts_with("payments  v1 → v2  progressing  step 2/3  25%\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\nhttp://127.0.0.1:8080/rollouts/r-20231114-a1b2\n"),
            "{out}"
        );

        // JSON is the API's, unknown fields included.
        let (code, out, _) = sluice(&[
            "rollout",
            "status",
            "payments",
            "--output",
            "json",
            "--controller",
            &addr,
        ]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["added_later"]["x"], 1);

        let (code, _, err) = sluice(&["rollout", "status", "garbled", "--controller", &addr]);
        assert_eq!(code, 2);
        assert!(
            err.starts_with(&format!(
                "error: the controller at {addr} gave an unexpected answer to GET /rollouts/garbled"
            )),
            "{err}"
        );

        let (code, _, err) = sluice(&["rollout", "status", "nope", "--controller", &addr]);
        assert_eq!((code, err.as_str()), (1, "error: no rollout `nope`\n"));

        let (code, _, err) = sluice(&["rollout", "abort", "../x", "--controller", &addr]);
        assert_eq!(code, 2);
        assert!(
            err.contains("`../x` is not a rollout id or service name"),
            "{err}"
        );
    }

    #[test]
    fn an_unreachable_controller_is_named_with_the_fix() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .to_string();
        // The listener is dropped: nothing answers there now.
        let (code, _, err) = sluice(&["rollout", "status", "--controller", &addr]);
        assert_eq!(code, 2);
        assert!(
            err.starts_with(&format!(
                "error: cannot reach the controller's admin endpoint at {addr}: "
            )),
            "{err}"
        );
        assert!(err.contains("--controller ADDR"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let (code, _, err) = sluice(&[
            "rollout",
            "history",
            "--state-dir",
            &dir.path().display().to_string(),
        ]);
        assert_eq!(code, 2);
        assert!(err.contains("no controller is running for"), "{err}");
        assert!(err.contains("sluice controller --state-dir"), "{err}");
    }

    #[test]
    fn watch_prints_each_change_and_exits_by_the_outcome() {
        let polls = Arc::new(Mutex::new(0_u32));
        let counter = Arc::clone(&polls);
        let (addr, _) = stand_in(Box::new(move |req: &Seen| {
            assert_eq!(req.path, "/rollouts/r-20231114-a1b2");
            let mut n = counter.lock().expect("lock");
            *n += 1;
            let r = match *n {
                1..=3 => progressing(),
                _ => Rollout {
                    phase: Phase::Promoted,
                    step: 2,
                    weight: 100,
                    finished_unix_ms: Some(NOW_MS),
                    decision: "promoted: every check passed at 50%".to_owned(),
                    ..progressing()
                },
            };
            let mut v = serde_json::to_value(r).expect("value");
            v["events"] = serde_json::json!([]);
            v["points"] = serde_json::json!([]);
            (200, v.to_string())
        }));
        let admin = Admin { addr };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut p = Printer {
            out: &mut out,
            err: &mut err,
            output: Format::Human,
            paint: Paint { enabled: false },
            tty: false,
        };
        let outcome = watch(
            &admin,
            Some("r-20231114-a1b2"),
            &mut p,
            Duration::from_millis(5),
        )
        .expect("watch");
        assert_eq!(outcome, Outcome::Success);
        let out = String::from_utf8(out).expect("utf-8");
        // Three identical polls print one block; the promotion prints the second.
        assert_eq!(out.matches("payments  v1 → v2").count(), 2, "{out}");
        assert!(
            out.contains("\npayments  v1 → v2  promoted  step 3/3  100%\n"),
            "{out}"
        );
        assert!(!out.contains('\x1b'), "{out}");
    }
}
