//! What a request about environments may ask for: the checks behind every refusal of
//! [`super::Environments`], each message naming the problem and its fix (a name that is not a
//! DNS label, one taken or reserved, an idle timeout out of range, a command that is empty,
//! relative, too long or carries NUL bytes), and the bounds on what a client may store.

use super::{Command, EnvError, State, model, ms};
use crate::instance::Run;

pub(super) fn not_found(state: &State, name: &str) -> EnvError {
    let names: Vec<&str> = state.envs.keys().map(String::as_str).collect();
    let hint = match sluice_policy::diagnostic::did_you_mean(name, &names) {
        Some(s) => format!("did you mean `{s}`?"),
        None if names.is_empty() => "there are none; create one with `sluice env create`".into(),
        None => format!("see `sluice env list` ({})", names.join(", ")),
    };
    EnvError::NotFound(format!("no environment `{name}`; {hint}"))
}

pub(super) fn check_new_name(state: &State, name: &str) -> Result<(), EnvError> {
    if !model::is_label(name, model::MAX_NAME) {
        return Err(EnvError::Invalid(format!(
            "`{name}` is not a valid environment name: it must be a DNS label (lowercase \
             letters, digits and `-`, starting and ending with a letter or digit, at most {}), \
             e.g. `{}`",
            model::MAX_NAME,
            suggest_label(name)
        )));
    }
    if name == crate::server::register::DEFAULT_ENVIRONMENT {
        return Err(EnvError::Invalid(
            "`stable` is where the mesh's own instances run; pick another name, e.g. `pr-1`".into(),
        ));
    }
    if let Some(e) = state.envs.get(name) {
        return Err(EnvError::Conflict(format!(
            "environment `{name}` exists already ({} for {}, created by {}); delete it with \
             `sluice env delete {name}`, or pick another name",
            e.copies
                .iter()
                .map(|c| c.service.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            e.service,
            e.created_by
        )));
    }
    if state.envs.len() >= model::MAX_ENVIRONMENTS {
        return Err(EnvError::Conflict(format!(
            "{} environments exist already, the most one mesh runs; delete one with `sluice \
             env delete NAME` (`sluice env list` shows when each was last used)",
            model::MAX_ENVIRONMENTS
        )));
    }
    Ok(())
}

/// A DNS label close to `name`, for the error message.
fn suggest_label(name: &str) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(model::MAX_NAME);
    let s = s.trim_matches('-').to_owned();
    if s.is_empty() { "pr-1".to_owned() } else { s }
}

pub(super) fn parse_idle_timeout(text: &str) -> Result<u64, EnvError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        EnvError::Invalid(format!(
            "--idle-timeout `{text}`: {e}; write e.g. `10m` or `2h`"
        ))
    })?;
    let v = ms(d);
    if !(1_000..=model::MAX_IDLE_TIMEOUT_MS).contains(&v) {
        return Err(EnvError::Invalid(format!(
            "--idle-timeout `{text}` is out of range: between 1s and 30d"
        )));
    }
    Ok(v)
}

pub(super) fn check_command(c: &Command) -> Result<Run, EnvError> {
    let Some(program) = c.argv.first() else {
        return Err(EnvError::Invalid(
            "the command after `--` is empty; give the program and its arguments".into(),
        ));
    };
    let bytes: usize = c.argv.iter().map(String::len).sum::<usize>()
        + c.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + c.dir.len();
    if c.argv.len() > model::MAX_ARGV
        || c.env.len() > model::MAX_ARGV
        || bytes > model::MAX_COMMAND_BYTES
    {
        return Err(EnvError::Invalid(format!(
            "the command is too long: at most {} arguments and {} bytes",
            model::MAX_ARGV,
            model::MAX_COMMAND_BYTES
        )));
    }
    if !program.starts_with('/') || !c.dir.starts_with('/') {
        return Err(EnvError::Invalid(format!(
            "the program `{program}` and the directory `{}` must be absolute paths (sluice env \
             resolves them for you)",
            c.dir
        )));
    }
    if c.argv
        .iter()
        .chain(c.env.values())
        .any(|a| a.contains('\0'))
        || c.env
            .keys()
            .any(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(EnvError::Invalid(
            "the command contains a NUL byte or an environment variable name with `=`".into(),
        ));
    }
    Ok(Run::Command {
        argv: c.argv.clone(),
        dir: c.dir.clone(),
        env: c.env.clone(),
    })
}

pub(super) fn bounded_user(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).take(128).collect();
    if s.is_empty() { "unknown".into() } else { s }
}
