//! `sluice identity …`: identity chores from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::{DEFAULT_NAMESPACE, IdentityError, TokenKey, WorkloadIdentity};
use crate::{CliError, Outcome};

/// `sluice identity …`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print a bootstrap token that lets one workload's proxy get its certificate.
    ///
    /// The token is signed with `<state>/token.key` (created if missing), so it is accepted by
    /// a controller using the same state directory. Treat it as a secret.
    Token(TokenArgs),
}

/// Arguments of `sluice identity token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The controller's state directory.
    #[arg(long, value_name = "DIR", env = "SLUICE_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The workload's service.
    #[arg(long)]
    pub service: String,
    /// The workload's namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// How long the token is valid, e.g. `24h`, `30m`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// Parses `24h`, `90s`, `1h 30m`; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write e.g. `24h`, `30m`, `90s`)")),
    }
}

pub(crate) fn run(command: &IdentityCommand, out: &mut dyn Write) -> Result<Outcome, CliError> {
    match command {
        IdentityCommand::Token(args) => {
            let workload = WorkloadIdentity::new(&args.namespace, &args.service)
                .map_err(IdentityError::from)?;
            let key = TokenKey::load_or_create(&args.state_dir).map_err(IdentityError::from)?;
            writeln!(out, "{}", key.issue(&workload, args.ttl, SystemTime::now()))?;
            Ok(Outcome::Success)
        }
    }
}
