//! `sluice`: the command-line interface to a Sluice mesh (and, in later releases, its control
//! plane).
//!
//! Product engineers meet Sluice through this tool before they meet the proxy. It answers
//! three questions about a directory of policy files:
//!
//! - **Is it right?** `sluice policy check DIR` loads every `*.yaml` file, reports every
//!   problem the way a compiler does (file:line:col, the field, and a fix) and summarises what
//!   it found. Exit status 0 means valid, 1 invalid, 2 unreadable, so CI can gate on it.
//! - **Would this call go through?** `sluice policy explain DIR --from checkout --to payments
//!   --rpc 'POST /v1/charges'` compiles the set exactly as the proxy will and says which rule
//!   allows the call, or why it is denied and where to ask for access.
//! - **What may I write?** `sluice policy schema` prints the JSON Schema editors use to
//!   complete and check policy files as you type.
//!
//! The CLI lives in this library, with `main.rs` a thin shell around [`run`], so tests can
//! drive the same code in-process with their own output buffers and a pretend terminal.
//! Every command returns a [`Result<Outcome, CliError>`]; [`exit_code`] is the single place
//! that turns it into the process's exit status.

mod check;
pub mod env;
mod explain;
pub mod identity;
pub mod instance;
pub mod kubernetes;
pub mod notify;
pub mod portal;
pub mod rollout;
mod schema;
pub mod server;
pub mod status;
pub mod store;
pub mod up;
pub mod web;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use check::summary_line;
pub use identity::cli::{IdentityCommand, TokenArgs};
pub use server::ControllerArgs;

/// The exit status of a successful run (a valid policy, an allowed call).
pub const EXIT_OK: u8 = 0;
/// The exit status when the answer is "no": the policy is invalid, or the call is denied.
pub const EXIT_NO: u8 = 1;
/// The exit status when the question could not be answered: unreadable files, bad arguments.
pub const EXIT_ERROR: u8 = 2;

/// Sluice: a service mesh that explains itself.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, explain and describe policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the control plane: the mesh CA and the gRPC API proxies talk to.
    ///
    /// Serves until SIGTERM or ctrl-c; exits 0 after a clean shutdown, 2 if it cannot start.
    Controller(ControllerArgs),
    /// Mesh identity: bootstrap tokens for proxies.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Show the controller: policy version, connected proxies (and which are behind),
    /// registrations, the last refused policy change, denials.
    ///
    /// Exits 0 when the controller answered, 1 when it is not running (what its store knows is
    /// shown), 2 when there is nothing to show.
    Status(status::StatusArgs),
    /// Run a local mesh from a mesh file: a network namespace, sidecar and process per
    /// workload, and the controller (needs root; see docs/local-mesh.md).
    ///
    /// Runs until SIGINT or SIGTERM, then removes everything it created.
    Up(up::UpArgs),
    /// Remove what a killed `sluice up` left behind (namespaces, veths, bridge, processes).
    Down(up::DownArgs),
    /// Kubernetes: print or write the CustomResourceDefinitions of the six kinds.
    #[command(subcommand)]
    Kubernetes(KubernetesCommand),
    /// Add the Sluice sidecar to the workloads in Kubernetes manifests (offline), like the
    /// admission webhook does; everything else is passed through unchanged.
    ///
    /// Writes the manifests to stdout and one line per object to stderr. Exits 0 when done
    /// (problems in annotations or probes are warnings), 2 when the input cannot be read.
    ///
    ///   sluice inject deploy/ | kubectl apply -f -
    ///   kubectl get deploy web -o yaml | sluice inject --mode classic - | kubectl apply -f -
    Inject(kubernetes::manifests::InjectArgs),
    /// Remove exactly what `sluice inject` (or the webhook) added.
    Uninject(kubernetes::manifests::UninjectArgs),
    /// Progressive delivery: start, watch, pause, resume, promote and abort rollouts.
    ///
    /// Exits 0 when done (`watch`: promoted), 1 when the controller refused or a watched
    /// rollout was not promoted, 2 when the controller cannot be reached.
    Rollout(rollout::cli::RolloutCommand),
    /// Ephemeral environments: a copy of a service with its dependencies, reached by W3C
    /// baggage, removed when idle (see docs/environments.md).
    ///
    /// Exits 0 when done, 1 when the controller refused or a copy failed (the reason and the
    /// fix are printed), 2 when the controller cannot be reached.
    Env(env::cli::EnvCommand),
}

/// `sluice policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check every policy file under DIR and report all problems.
    ///
    /// Exits 0 when the set is valid (warnings allowed), 1 when it is invalid, 2 when it could
    /// not be read.
    Check(CheckArgs),
    /// Explain whether one service may make one call to another, and why.
    ///
    /// Exits 0 when the call is allowed (also in audit mode, where it would be denied), 1 when
    /// it is denied, 2 when the question is malformed or the policy invalid.
    Explain(ExplainArgs),
    /// Print the JSON Schema of policy files, for editors, or write one file per kind.
    Schema(SchemaArgs),
}

/// `sluice kubernetes …`.
#[derive(Debug, Subcommand)]
pub enum KubernetesCommand {
    /// Print the CustomResourceDefinitions (YAML, `---` between them), or write one file per
    /// kind into `--out` (what `deploy/crds/` and the Helm chart's `crds/` hold).
    Crds {
        /// Write `<kind>.yaml` per kind into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Arguments of `sluice policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A directory of policy files (searched recursively), or one file.
    pub dir: PathBuf,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// When to colour the output. `auto` colours a terminal unless NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// Arguments of `sluice policy explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A directory of policy files (searched recursively), or one file.
    pub dir: PathBuf,
    /// The calling service (`checkout`, or `namespace/checkout`), or `unauthenticated` for a
    /// caller without a mesh identity.
    #[arg(long, value_name = "SERVICE")]
    pub from: String,
    /// The called service (`payments`, or `namespace/payments`).
    #[arg(long, value_name = "SERVICE")]
    pub to: String,
    /// The call: `METHOD /path` (`POST /v1/charges`) or a gRPC method
    /// (`payments.v1.Payments/Refund`).
    #[arg(long)]
    pub rpc: String,
    /// The caller's environment, e.g. `stable` or an ephemeral `pr-42`. Only changes the
    /// access-request link.
    #[arg(long, default_value = "stable")]
    pub env: String,
    /// A Kubernetes manifest with the callee's workload: its kubelet probes are allowed
    /// without identity, as the injected sidecar allows them ("kubelet probe (from the pod
    /// spec)").
    #[arg(long, value_name = "FILE")]
    pub pod: Option<PathBuf>,
    /// With `--pod`: the port the call goes to (default: any probe's port).
    #[arg(long, requires = "pod")]
    pub port: Option<u16>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// When to colour the output. `auto` colours a terminal unless NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// Arguments of `sluice policy schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Write `<kind>.json` for each kind and `all.json` into this directory instead of printing
    /// the combined schema.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: compiler-style diagnostics and a summary.
    Human,
    /// For programs: one JSON object on stdout.
    Json,
}

/// When to use colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    /// Always, even when piped (an explicit request beats `NO_COLOR`).
    Always,
    /// Never.
    Never,
}

/// What the CLI needs to know about where its output goes. [`Terminal::detect`] reads the real
/// process; tests construct one to pretend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Terminal {
    /// Whether stdout is a terminal.
    pub stdout_is_tty: bool,
    /// Whether `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
    pub no_color: bool,
}

impl Terminal {
    /// The current process's terminal.
    pub fn detect() -> Self {
        Terminal {
            stdout_is_tty: std::io::stdout().is_terminal(),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        }
    }

    /// Whether to colour stdout given the user's choice.
    pub fn use_color(self, choice: ColorChoice) -> bool {
        match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => self.stdout_is_tty && !self.no_color,
        }
    }
}

/// How a command that ran to completion came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The policy is valid, the call allowed, the schema written.
    Success,
    /// The policy set has errors.
    PolicyInvalid,
    /// The explained call is denied.
    Denied,
}

/// Why a command could not answer its question.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad command-line arguments (or `--help`/`--version`, which clap reports this way).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The policy files could not be read.
    #[error(transparent)]
    Read(#[from] sluice_policy::load::ReadError),
    /// `explain` needs a valid set; the problems were already printed.
    #[error("the policy set is invalid; run `sluice policy check` for details")]
    PolicyInvalid,
    /// `--from` or `--to` names a service that is not declared.
    #[error("no MeshService `{name}` is declared{}", .hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    UnknownService {
        /// What was asked for.
        name: String,
        /// A suggestion, if there is one.
        hint: Option<String>,
    },
    /// `--rpc` is not a concrete call.
    #[error("{0}; help: {help}", help = .0.help)]
    BadRpc(#[from] sluice_policy::rpc::RpcSyntaxError),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or token key could not be loaded or created, or an identity argument is wrong.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The controller could not serve.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// `sluice status` found nothing to show.
    #[error(transparent)]
    Status(#[from] status::StatusError),
    /// `sluice rollout` could not ask the controller, or could not read its answer.
    #[error(transparent)]
    Rollout(#[from] rollout::cli::RolloutError),
    /// The local mesh could not run or be cleaned up.
    #[error(transparent)]
    Up(#[from] up::UpError),
    /// `sluice env` could not ask the controller.
    #[error(transparent)]
    Env(#[from] env::cli::EnvCliError),
    /// `--pod` names no workload of the service.
    #[error("{0}")]
    Pod(String),
    /// `sluice inject` could not read its input.
    #[error(transparent)]
    Manifests(#[from] kubernetes::manifests::ManifestError),
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// The one mapping from results to exit statuses.
pub fn exit_code(result: &Result<Outcome, CliError>) -> u8 {
    match result {
        Ok(Outcome::Success) => EXIT_OK,
        Ok(Outcome::PolicyInvalid | Outcome::Denied) => EXIT_NO,
        // `--help` and `--version` arrive as clap "errors" but are successes.
        Err(CliError::Usage(e)) if !e.use_stderr() => EXIT_OK,
        Err(_) => EXIT_ERROR,
    }
}

/// Runs the CLI on `args` (including the program name) and returns the exit status.
pub fn run<I, T>(args: I, terminal: Terminal, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let result = Cli::try_parse_from(args)
        .map_err(CliError::from)
        .and_then(|cli| execute(cli, terminal, out, err));
    // Reporting the error is best effort: if stderr itself is gone there is no one to tell.
    match &result {
        Err(CliError::Usage(e)) if !e.use_stderr() => {
            let _ = write!(out, "{e}");
        }
        Err(CliError::Usage(e)) => {
            // Plain text: stderr may be piped, and usage errors are short enough without colour.
            let _ = write!(err, "{e}");
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
        }
        Ok(_) => {}
    }
    exit_code(&result)
}

fn execute(
    cli: Cli,
    terminal: Terminal,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    match cli.command {
        Command::Policy(PolicyCommand::Check(args)) => check::run(&args, terminal, out),
        Command::Policy(PolicyCommand::Explain(args)) => explain::run(&args, terminal, out, err),
        Command::Policy(PolicyCommand::Schema(args)) => schema::run(&args, out),
        Command::Controller(args) => server::run(&args, out, err),
        Command::Identity(command) => identity::cli::run(&command, out),
        Command::Status(args) => status::run(&args, out),
        Command::Up(args) => up::up(&args, terminal, out)
            .map(|()| Outcome::Success)
            .map_err(Into::into),
        Command::Down(args) => up::down(&args, out)
            .map(|()| Outcome::Success)
            .map_err(Into::into),
        Command::Rollout(command) => rollout::cli::run(&command, terminal, out, err),
        Command::Env(command) => env::cli::run(&command, terminal, out, err),
        Command::Kubernetes(KubernetesCommand::Crds { out: dir }) => crds(dir.as_deref(), out),
        Command::Inject(args) => kubernetes::manifests::run_inject(&args, out, err)
            .map(|_| Outcome::Success)
            .map_err(Into::into),
        Command::Uninject(args) => kubernetes::manifests::run_uninject(&args, out, err)
            .map(|_| Outcome::Success)
            .map_err(Into::into),
    }
}

/// `sluice kubernetes crds`.
fn crds(dir: Option<&std::path::Path>, out: &mut dyn Write) -> Result<Outcome, CliError> {
    use kubernetes::crd::{KindNames, crd, to_yaml};
    let kinds = sluice_policy::resources::Kind::ALL;
    match dir {
        None => {
            for (i, kind) in kinds.into_iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{}", to_yaml(&crd(kind)))?;
            }
        }
        Some(dir) => {
            let write = |path: PathBuf, text: String| {
                std::fs::write(&path, text).map_err(|source| CliError::Write { path, source })
            };
            std::fs::create_dir_all(dir).map_err(|source| CliError::Write {
                path: dir.to_owned(),
                source,
            })?;
            for kind in kinds {
                write(
                    dir.join(KindNames::of(kind).file_name()),
                    to_yaml(&crd(kind)),
                )?;
            }
            writeln!(out, "wrote {} CRDs to {}", kinds.len(), dir.display())?;
        }
    }
    Ok(Outcome::Success)
}

/// Minimal ANSI painting for the CLI's own lines; diagnostics use
/// [`sluice_policy::diagnostic::Style`].
#[derive(Clone, Copy, Debug)]
struct Paint {
    enabled: bool,
}

impl Paint {
    const GREEN: &'static str = "\x1b[1;32m";
    const RED: &'static str = "\x1b[1;31m";
    const YELLOW: &'static str = "\x1b[1;33m";

    fn paint(self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("{code}{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn diagnostic_style(self) -> sluice_policy::diagnostic::Style {
        if self.enabled {
            sluice_policy::diagnostic::Style::ansi()
        } else {
            sluice_policy::diagnostic::Style::plain()
        }
    }
}

/// "1 route", "3 access policies".
fn plural(n: usize, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("{n} {singular}")
    } else {
        format!("{n} {plural}")
    }
}

/// An error's message followed by its sources' (`a: b: c`): a hyper client error's own
/// message ("client error (Connect)") does not say what went wrong.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
