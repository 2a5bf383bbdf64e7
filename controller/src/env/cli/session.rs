//! `sluice env run`: the developer's command as a copy, in the foreground. The longest of the
//! commands, and the only one with a loop of its own (heartbeats, restarts when a watched path
//! settles, the copy's state as it changes), so it has a module apart from the one-shot ones.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::logs::Follow;
use super::{Cli, POLL, RunArgs, decode, interrupted, resolve_command, user};
use crate::env::client::error_text;
use crate::env::{EnvironmentView, Removed, RunRequest};
use crate::{CliError, Outcome, Paint};

/// `run`'s heartbeat (the controller ends a session silent for `env::LEASE`).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A changed file must stay unchanged this long before `run` restarts (a build still writing).
const SETTLE: Duration = Duration::from_millis(400);
/// What the watched paths look like: the newest modification and the total size under each.
fn signature(paths: &[PathBuf]) -> Vec<(u128, u64)> {
    fn walk(p: &Path, depth: usize, acc: &mut (u128, u64)) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if let Ok(m) = meta.modified()
            && let Ok(d) = m.duration_since(SystemTime::UNIX_EPOCH)
        {
            acc.0 = acc.0.max(d.as_nanos());
        }
        if meta.is_dir() && depth < 8 {
            for e in std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .take(10_000)
            {
                let name = e.file_name();
                // Build output and VCS state are not the developer's edits.
                if name == "target" || name == ".git" {
                    continue;
                }
                walk(&e.path(), depth + 1, acc);
            }
        } else {
            acc.1 = acc.1.wrapping_add(meta.len());
        }
    }
    paths
        .iter()
        .map(|p| {
            let mut acc = (0, 0);
            walk(p, 0, &mut acc);
            acc
        })
        .collect()
}

pub(super) fn run_session(cli: &mut Cli<'_>, a: &RunArgs) -> Result<Outcome, CliError> {
    let command = match resolve_command(&a.command) {
        Ok(c) => c,
        Err(e) => return cli.refused(&json!({ "error": e })),
    };
    let binary = PathBuf::from(&command.argv[0]);
    let instance = crate::env::instance_name(&a.service, &a.name);
    let log_path = cli.local.logs_dir.join(format!("{instance}.log"));
    let mut log = Follow::from_end(log_path);
    let stop = interrupted()?;
    let req = RunRequest {
        service: a.service.clone(),
        command,
        created_by: user(),
        idle_timeout: a.idle_timeout.clone(),
    };
    let body = serde_json::to_value(&req).unwrap_or_default();
    let (status, v) = cli.call(
        Method::POST,
        &format!("/environments/{}/run", a.name),
        Some(&body),
    )?;
    if !status.is_success() {
        return cli.refused(&v);
    }
    let created = v.get("created").and_then(Value::as_bool).unwrap_or(false);
    let p = cli.paint;
    let say = |out: &mut dyn Write, text: &str| -> std::io::Result<()> {
        writeln!(
            out,
            "{}",
            p.paint(Paint::YELLOW, &format!("[sluice env] {text}"))
        )?;
        out.flush()
    };
    say(
        cli.out,
        &format!(
            "running `{}` as {} in {}{}; Ctrl-C stops",
            a.command.join(" "),
            a.service,
            a.name,
            if created {
                " (made for this session)"
            } else {
                ""
            }
        ),
    )?;
    let mut watched = vec![binary];
    watched.extend(a.watch.iter().cloned());
    let mut seen = signature(&watched);
    let mut changed_at: Option<Instant> = None;
    let mut last_beat = Instant::now();
    let mut last_state = String::new();
    let heartbeat = format!("/environments/{}/run/{}/heartbeat", a.name, a.service);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for line in log.read() {
            writeln!(cli.out, "{line}")?;
        }
        cli.out.flush()?;
        let now = signature(&watched);
        if now != seen {
            seen = now;
            changed_at = Some(Instant::now());
        }
        let restart = changed_at.is_some_and(|t| t.elapsed() >= SETTLE);
        if restart || last_beat.elapsed() >= HEARTBEAT {
            if restart {
                changed_at = None;
                say(
                    cli.out,
                    &format!("{} changed; restarting {instance}", watched_name(&watched)),
                )?;
            }
            last_beat = Instant::now();
            match cli.call(
                Method::POST,
                &heartbeat,
                Some(&json!({ "restart": restart })),
            ) {
                Ok((s, v)) if s.is_success() => {
                    if let Ok(view) = serde_json::from_value::<EnvironmentView>(v) {
                        report_state(cli, &view, &instance, &mut last_state)?;
                    }
                }
                Ok((StatusCode::NOT_FOUND, v)) => {
                    say(cli.out, &format!("the session ended: {}", error_text(&v)))?;
                    return Ok(Outcome::Denied);
                }
                Ok((_, v)) => say(cli.out, &format!("heartbeat refused: {}", error_text(&v)))?,
                // A controller restarting: the session outlives short outages.
                Err(e) => say(cli.out, &format!("{e}; retrying"))?,
            }
        } else if last_state != "running"
            && let Ok((s, v)) = cli.call(Method::GET, &format!("/environments/{}", a.name), None)
            && s.is_success()
            && let Ok(view) = serde_json::from_value::<EnvironmentView>(v)
        {
            report_state(cli, &view, &instance, &mut last_state)?;
        }
        std::thread::sleep(POLL);
    }
    let (status, v) = cli.call(
        Method::DELETE,
        &format!("/environments/{}/run/{}", a.name, a.service),
        None,
    )?;
    if !status.is_success() {
        return cli.refused(&v);
    }
    let r: Removed = decode(v)?;
    let what = if r.deleted {
        format!(
            "removed {} and environment {}",
            r.stopped.join(", "),
            a.name
        )
    } else {
        match &r.restored {
            Some(i) => {
                format!("removed your {instance}; {i} runs the environment's own version again")
            }
            None => format!("removed {}", r.stopped.join(", ")),
        }
    };
    say(cli.out, &what)?;
    Ok(Outcome::Success)
}

fn watched_name(paths: &[PathBuf]) -> String {
    paths.first().and_then(|p| p.file_name()).map_or_else(
        || "a watched path".into(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Says when the copy's state changes (running, crashing, failed), once each time.
fn report_state(
    cli: &mut Cli<'_>,
    view: &EnvironmentView,
    instance: &str,
    last: &mut String,
) -> Result<(), CliError> {
    let Some(c) = view.copies.iter().find(|c| c.instance == instance) else {
        return Ok(());
    };
    if c.state == *last {
        return Ok(());
    }
    last.clone_from(&c.state);
    let p = cli.paint;
    let text = match c.state.as_str() {
        "running" => format!(
            "{instance} runs{}{}",
            c.address
                .as_deref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default(),
            view.url
                .as_deref()
                .map(|u| format!("; open {u}"))
                .unwrap_or_default()
        ),
        "crashing" => format!("{instance} {}", c.detail),
        "failed" => format!("{instance} cannot start: {}", c.detail),
        _ => return Ok(()),
    };
    writeln!(
        cli.out,
        "{}",
        p.paint(Paint::YELLOW, &format!("[sluice env] {text}"))
    )?;
    Ok(())
}
