//! `sluice env …`: ephemeral environments from the terminal. Every command is a client of the
//! controller's environment API ([`super::api`]); `logs` and `run` also read the workloads'
//! log files, which `sluice up` writes under its state directory.
//!
//! | command | what |
//! |---|---|
//! | `create NAME --service SVC [--version V \| -- COMMAND…]` | makes the environment, waits until every copy runs, prints what started, what is shared and the URL |
//! | `run NAME --service SVC [--watch PATH]… -- COMMAND…` | the developer's command as SVC's copy, in the foreground: its logs here, restarted when the binary or a watched path changes, removed on Ctrl-C |
//! | `logs NAME [--service SVC] [-f]` | the copies' logs |
//! | `list [--output json]` | every environment: copies, shared, who, when, last request, requests in the last hour, URL |
//! | `delete NAME` | removes it and everything it started |
//!
//! Exit status: 0 done, 1 refused or failed (the reason and the fix are printed), 2 the
//! controller could not be asked.

mod logs;
mod session;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Subcommand};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::{Address, AdminClient, ClientError, error_text};
use super::{Command as RunCommand, CreateRequest, EnvironmentList, EnvironmentView, Removed};
use crate::{CliError, ColorChoice, Format, Outcome, Paint, Terminal};
use logs::logs;
use session::run_session;

/// How long `create` waits for the copies by default.
const WAIT: &str = "60s";
/// How often `create` and `run` look.
const POLL: Duration = Duration::from_millis(250);
/// `sluice env …`.
#[derive(Debug, Args)]
pub struct EnvCommand {
    /// What to do.
    #[command(subcommand)]
    pub command: EnvSubcommand,
    /// Where the controller is.
    #[command(flatten)]
    pub target: EnvTarget,
}

/// The options every `sluice env` command shares (global: they may follow the subcommand).
#[derive(Debug, Args)]
pub struct EnvTarget {
    /// `sluice up`'s state directory (the controller's is `DIR/controller`), or a
    /// controller's own `--state-dir`.
    #[arg(
        long,
        value_name = "DIR",
        env = "SLUICE_UP_STATE_DIR",
        default_value = ".sluice",
        global = true
    )]
    pub state_dir: PathBuf,
    /// How to print: for people, or the API's JSON.
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub output: Format,
    /// When to colour the output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
}

/// The environment commands.
#[derive(Debug, Subcommand)]
pub enum EnvSubcommand {
    /// Make an environment: SERVICE's copy, a copy of every service it calls through an
    /// `ephemeral: copy` grant (transitively), everything else shared with stable.
    Create(CreateArgs),
    /// Run your command as SERVICE's copy in the environment, in the foreground (made for the
    /// session if it does not exist). Restarts it when the binary or a watched path changes;
    /// Ctrl-C removes it.
    Run(RunArgs),
    /// Show the logs of an environment's copies.
    Logs(LogsArgs),
    /// List the environments.
    List,
    /// Delete an environment and everything it started.
    Delete(NameArg),
}

/// `sluice env create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The environment's name: a DNS label such as `pr-1`.
    pub name: String,
    /// The service to copy.
    #[arg(long)]
    pub service: String,
    /// The version of SERVICE to run. Default: the stable one.
    #[arg(long, conflicts_with = "command")]
    pub version: Option<String>,
    /// Delete it after this long without requests (`10m`). Default: the Mesh's, or 30m.
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Return at once instead of waiting for the copies to run.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the copies.
    #[arg(long, value_name = "DURATION", default_value = WAIT)]
    pub wait: String,
    /// Your command instead of a version (a fresh debug build): after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `sluice env run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The environment (made if it does not exist, and removed at the end then).
    pub name: String,
    /// The service your command is a copy of.
    #[arg(long)]
    pub service: String,
    /// Also restart when something under this path changes (repeatable). The binary itself
    /// is always watched.
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,
    /// For an environment this session makes: its idle timeout.
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// The command, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `sluice env logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The environment.
    pub name: String,
    /// Only this service's copy.
    #[arg(long)]
    pub service: Option<String>,
    /// Keep printing new lines (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Lines to show from each copy's log first.
    #[arg(long, default_value_t = 50)]
    pub lines: usize,
}

/// An environment's name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The environment.
    pub name: String,
}

/// Why a `sluice env` command could not ask.
#[derive(Debug, thiserror::Error)]
pub enum EnvCliError {
    /// The controller cannot be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The local setup is wrong (no state directory, unreadable token).
    #[error("{0}")]
    Setup(String),
}

/// Paths of the local mesh.
struct Local {
    controller_dir: PathBuf,
    logs_dir: PathBuf,
}

impl Local {
    fn find(dir: &Path) -> Local {
        // `sluice up`'s layout, else a controller's own state directory.
        let nested = dir.join("controller");
        let controller_dir = if nested.join(crate::status::ADMIN_ADDR_FILE).exists()
            || !dir.join(crate::status::ADMIN_ADDR_FILE).exists()
        {
            nested
        } else {
            dir.to_owned()
        };
        Local {
            controller_dir,
            logs_dir: dir.join("logs"),
        }
    }
}

struct Cli<'a> {
    rt: tokio::runtime::Runtime,
    client: AdminClient,
    local: Local,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    paint: Paint,
    json: bool,
}

impl Cli<'_> {
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), EnvCliError> {
        Ok(self.rt.block_on(self.client.call(method, path, body))?)
    }

    fn refused(&mut self, v: &Value) -> Result<Outcome, CliError> {
        writeln!(
            self.err,
            "{}: {}",
            self.paint.paint(Paint::RED, "error"),
            error_text(v)
        )?;
        Ok(Outcome::Denied)
    }
}

/// `sluice env …`.
pub(crate) fn run(
    cmd: &EnvCommand,
    terminal: Terminal,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let local = Local::find(&cmd.target.state_dir);
    let token = match std::fs::read_to_string(super::api::token_path(&local.controller_dir)) {
        Ok(t) => Some(t.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(EnvCliError::Setup(format!(
                "cannot read {}: {e}; run sluice env with sudo, like sluice up",
                super::api::token_path(&local.controller_dir).display()
            ))
            .into());
        }
        Err(_) => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EnvCliError::Setup(format!("cannot start: {e}")))?;
    let client = AdminClient::new(
        Address::File(local.controller_dir.join(crate::status::ADMIN_ADDR_FILE)),
        token,
    );
    let mut cli = Cli {
        rt,
        client,
        local,
        out,
        err,
        paint: Paint {
            enabled: terminal.use_color(cmd.target.color),
        },
        json: cmd.target.output == Format::Json,
    };
    match &cmd.command {
        EnvSubcommand::Create(a) => create(&mut cli, a),
        EnvSubcommand::Run(a) => run_session(&mut cli, a),
        EnvSubcommand::Logs(a) => logs(&mut cli, a),
        EnvSubcommand::List => list(&mut cli),
        EnvSubcommand::Delete(a) => delete(&mut cli, &a.name),
    }
}

/// The user asking: `sudo`'s caller, else the login name.
fn user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// `argv` with its program made absolute (`./target/debug/shop`, or `shop` found on `PATH`),
/// and the directory to run in.
fn resolve_command(argv: &[String]) -> Result<RunCommand, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let Some(program) = argv.first() else {
        return Err("give the command after `--`, e.g. `-- ./target/debug/shop checkout`".into());
    };
    let path = if program.contains('/') {
        cwd.join(program)
    } else {
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(program))
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| {
                format!("`{program}` is not on PATH; give its path, e.g. `./{program}`")
            })?
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        format!(
            "cannot run `{program}`: {} ({e}); build it first, or check the path",
            path.display()
        )
    })?;
    if !meta.is_file() || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0
    {
        return Err(format!("`{}` is not an executable file", path.display()));
    }
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let mut argv = argv.to_vec();
    argv[0] = path.display().to_string();
    Ok(RunCommand {
        argv,
        dir: cwd.display().to_string(),
        env: BTreeMap::new(),
    })
}

fn ago(ms: i64) -> String {
    let now = crate::store::unix_ms(SystemTime::now());
    let secs = u64::try_from((now - ms).max(0) / 1000).unwrap_or(0);
    let d = Duration::from_secs(secs);
    if secs < 1 {
        "just now".into()
    } else {
        // The largest unit only: `5m`, not `5m 12s`.
        let text = humantime::format_duration(d).to_string();
        format!("{} ago", text.split(' ').next().unwrap_or(&text))
    }
}

fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.0} MiB", b as f64 / MIB)
}

fn origin_text(v: &EnvironmentView, c: &super::CopyView) -> String {
    match c.origin {
        super::Origin::Service => format!("{} {}, the service", c.service, c.version),
        super::Origin::Run => format!(
            "{} {}, your command (`sluice env run`)",
            c.service, c.version
        ),
        super::Origin::Dependency => format!(
            "{} {}, copied: {} calls it with `ephemeral: copy`",
            c.service, c.version, v.service
        ),
    }
}

fn print_ready(
    cli: &mut Cli<'_>,
    v: &EnvironmentView,
    took: Option<Duration>,
) -> Result<(), CliError> {
    let p = cli.paint;
    let head = match took {
        Some(t) => format!("environment {} is ready ({:.1}s)", v.name, t.as_secs_f64()),
        None => format!("environment {} created", v.name),
    };
    writeln!(cli.out, "{}", p.paint(Paint::GREEN, &head))?;
    for c in &v.copies {
        writeln!(
            cli.out,
            "  started  {:<22} {}{}",
            c.instance,
            origin_text(v, c),
            c.address
                .as_deref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default()
        )?;
    }
    for s in &v.shared {
        writeln!(cli.out, "  shared   {s:<22} stable's (not copied)")?;
    }
    if let Some(url) = &v.url {
        writeln!(cli.out, "  open     {url}")?;
    }
    writeln!(
        cli.out,
        "  idle     deleted after {} without requests ({})",
        humantime::format_duration(Duration::from_millis(v.idle_timeout_ms)),
        if v.idle_timeout_from == "mesh" {
            "the Mesh's setting"
        } else {
            "--idle-timeout"
        }
    )?;
    Ok(())
}

fn create(cli: &mut Cli<'_>, a: &CreateArgs) -> Result<Outcome, CliError> {
    let command = if a.command.is_empty() {
        None
    } else {
        match resolve_command(&a.command) {
            Ok(c) => Some(c),
            Err(e) => return cli.refused(&json!({ "error": e })),
        }
    };
    let wait = humantime::parse_duration(&a.wait)
        .map_err(|e| EnvCliError::Setup(format!("--wait `{}`: {e}", a.wait)))?;
    let req = CreateRequest {
        name: a.name.clone(),
        service: a.service.clone(),
        namespace: None,
        version: a.version.clone(),
        command,
        idle_timeout: a.idle_timeout.clone(),
        created_by: user(),
    };
    let body = serde_json::to_value(&req).unwrap_or_default();
    let (status, v) = cli.call(Method::POST, "/environments", Some(&body))?;
    if !status.is_success() {
        return cli.refused(&v);
    }
    let started = Instant::now();
    if a.no_wait {
        if cli.json {
            return print_json(cli, &v);
        }
        let view: EnvironmentView = decode(v)?;
        print_ready(cli, &view, None)?;
        return Ok(Outcome::Success);
    }
    let path = format!("/environments/{}", a.name);
    loop {
        std::thread::sleep(POLL);
        let (status, v) = cli.call(Method::GET, &path, None)?;
        if !status.is_success() {
            return cli.refused(&v);
        }
        let view: EnvironmentView = decode(v.clone())?;
        match view.state.as_str() {
            "ready" => {
                if cli.json {
                    return print_json(cli, &v);
                }
                print_ready(cli, &view, Some(started.elapsed()))?;
                return Ok(Outcome::Success);
            }
            "degraded" => return failed_start(cli, &view),
            "pending" if started.elapsed() > Duration::from_secs(5) => {
                let _ = cli.call(Method::DELETE, &path, None);
                return cli.refused(&json!({ "error": format!(
                    "no backend runs environments (is `sluice up` running with this state \
                     directory?); removed `{}` again. Start the mesh with `sudo sluice up \
                     MESH_FILE`, then create it again", view.name) }));
            }
            _ if started.elapsed() > wait => {
                let states: Vec<String> = view
                    .copies
                    .iter()
                    .map(|c| format!("{}: {} ({})", c.instance, c.state, c.detail))
                    .collect();
                writeln!(
                    cli.err,
                    "{}: environment {} is not ready after {}: {}; it stays (see `sluice env \
                     logs {}`, or `sluice env delete {}`)",
                    cli.paint.paint(Paint::RED, "error"),
                    view.name,
                    a.wait,
                    states.join("; "),
                    view.name,
                    view.name
                )?;
                return Ok(Outcome::Denied);
            }
            _ => {}
        }
    }
}

/// A copy crashed or could not start: say which, show its last lines, remove what was made.
fn failed_start(cli: &mut Cli<'_>, view: &EnvironmentView) -> Result<Outcome, CliError> {
    let p = cli.paint;
    for c in view
        .copies
        .iter()
        .filter(|c| c.state == "crashing" || c.state == "failed")
    {
        writeln!(
            cli.err,
            "{}: {} ({}) {}: {}",
            p.paint(Paint::RED, "error"),
            c.instance,
            origin_text(view, c),
            if c.state == "failed" {
                "could not start"
            } else {
                "exits at once"
            },
            c.detail
        )?;
        if !c.log_tail.is_empty() {
            writeln!(cli.err, "its last lines:")?;
            for l in c
                .log_tail
                .iter()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                writeln!(cli.err, "  | {l}")?;
            }
        }
    }
    let path = format!("/environments/{}", view.name);
    let _ = cli.call(Method::DELETE, &path, None)?;
    writeln!(
        cli.err,
        "removed environment {} again; fix the command (run it by hand to see it start), then \
         `sluice env create` again",
        view.name
    )?;
    Ok(Outcome::Denied)
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| {
        EnvCliError::Setup(format!(
            "the controller's answer does not match this sluice: {e}"
        ))
        .into()
    })
}

fn print_json(cli: &mut Cli<'_>, v: &Value) -> Result<Outcome, CliError> {
    serde_json::to_writer_pretty(&mut *cli.out, v).map_err(std::io::Error::from)?;
    writeln!(cli.out)?;
    Ok(Outcome::Success)
}

fn list(cli: &mut Cli<'_>) -> Result<Outcome, CliError> {
    let (status, v) = cli.call(Method::GET, "/environments", None)?;
    if !status.is_success() {
        return cli.refused(&v);
    }
    if cli.json {
        return print_json(cli, &v);
    }
    let list: EnvironmentList = decode(v)?;
    if list.environments.is_empty() {
        writeln!(
            cli.out,
            "no environments; make one with `sluice env create NAME --service SERVICE`"
        )?;
        return Ok(Outcome::Success);
    }
    let rows: Vec<[String; 9]> = list
        .environments
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.copies
                    .iter()
                    .map(|c| {
                        if c.origin == super::Origin::Run {
                            format!("{}*", c.service)
                        } else {
                            c.service.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                if e.shared.is_empty() {
                    "-".into()
                } else {
                    e.shared.join(",")
                },
                e.created_by.clone(),
                ago(e.created_unix_ms),
                e.last_request_unix_ms.map_or_else(|| "never".into(), ago),
                e.requests_last_hour.to_string(),
                e.state.clone(),
                e.url.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "COPIES",
        "SHARED",
        "CREATED BY",
        "CREATED",
        "LAST REQUEST",
        "REQ/1H",
        "STATE",
        "URL",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(cli.out, "{}", line(&head.map(str::to_owned)))?;
    for r in &rows {
        writeln!(cli.out, "{}", line(r))?;
    }
    for e in &list.environments {
        if let Some(cost) = e.usage.cost_per_day {
            writeln!(
                cli.out,
                "{}: {:.1} CPU-seconds, {} peak, about {cost:.2} {}/day",
                e.name,
                e.usage.cpu_seconds,
                human_bytes(e.usage.peak_rss_bytes),
                e.usage.currency.as_deref().unwrap_or("")
            )?;
        }
    }
    if list.backend.is_none() {
        writeln!(cli.out, "(no backend is running them: start `sluice up`)")?;
    }
    Ok(Outcome::Success)
}

fn delete(cli: &mut Cli<'_>, name: &str) -> Result<Outcome, CliError> {
    let (status, v) = cli.call(Method::DELETE, &format!("/environments/{name}"), None)?;
    if !status.is_success() {
        return cli.refused(&v);
    }
    if cli.json {
        return print_json(cli, &v);
    }
    let r: Removed = decode(v)?;
    writeln!(
        cli.out,
        "deleted environment {name}: stopping {}{}",
        r.stopped.join(", "),
        if r.environment.shared.is_empty() {
            String::new()
        } else {
            format!(
                " ({} untouched: shared with stable)",
                r.environment.shared.join(", ")
            )
        }
    )?;
    Ok(Outcome::Success)
}
/// Signals as a flag (SIGINT, SIGTERM): the loops check it between steps.
fn interrupted() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, CliError> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let f = std::sync::Arc::clone(&flag);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EnvCliError::Setup(e.to_string()))?;
        std::thread::spawn(move || {
            rt.block_on(async move {
                let kind = tokio::signal::unix::SignalKind::from_raw(sig as i32);
                if let Ok(mut s) = tokio::signal::unix::signal(kind) {
                    s.recv().await;
                    f.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
        });
    }
    // The handlers must be in place before the caller goes on.
    std::thread::sleep(Duration::from_millis(50));
    Ok(flag)
}
