//! `sluice env logs`: the copies' log files, which `sluice up` writes under its state
//! directory, printed and followed across rotations. [`Follow`] lives here, and `sluice env
//! run` borrows it to show its copy's output.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::json;

use super::{Cli, LogsArgs, POLL, decode, interrupted};
use crate::env::EnvironmentView;
use crate::{CliError, Outcome};

/// Follows one log file from an offset, across rotations.
pub(super) struct Follow {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Follow {
    pub(super) fn from_end(path: PathBuf) -> Follow {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        Follow {
            path,
            offset,
            partial: String::new(),
        }
    }

    /// New complete lines.
    pub(super) fn read(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            // Rotated (or truncated): the new file from its start.
            self.offset = 0;
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let _ = Read::by_ref(&mut f)
            .take(4 * 1024 * 1024)
            .read_to_end(&mut buf);
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_owned).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}
pub(super) fn logs(cli: &mut Cli<'_>, a: &LogsArgs) -> Result<Outcome, CliError> {
    let (status, v) = cli.call(Method::GET, &format!("/environments/{}", a.name), None)?;
    if !status.is_success() {
        return cli.refused(&v);
    }
    let view: EnvironmentView = decode(v)?;
    let copies: Vec<&crate::env::CopyView> = view
        .copies
        .iter()
        .filter(|c| a.service.as_ref().is_none_or(|s| *s == c.service))
        .collect();
    if copies.is_empty() {
        let names: Vec<&str> = view.copies.iter().map(|c| c.service.as_str()).collect();
        return cli.refused(&json!({ "error": format!(
            "environment {} has no copy of {}; its copies are {}",
            a.name, a.service.as_deref().unwrap_or("?"), names.join(", ")) }));
    }
    let prefix = copies.len() > 1;
    let mut follows = Vec::new();
    for c in &copies {
        let path = cli.local.logs_dir.join(format!("{}.log", c.instance));
        for line in crate::up::env::tail(&path, a.lines) {
            if prefix {
                writeln!(cli.out, "[{}] {line}", c.instance)?;
            } else {
                writeln!(cli.out, "{line}")?;
            }
        }
        follows.push((c.instance.clone(), Follow::from_end(path)));
    }
    cli.out.flush()?;
    if !a.follow {
        return Ok(Outcome::Success);
    }
    let stop = interrupted()?;
    let mut checked = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (instance, f) in &mut follows {
            for line in f.read() {
                if prefix {
                    writeln!(cli.out, "[{instance}] {line}")?;
                } else {
                    writeln!(cli.out, "{line}")?;
                }
            }
        }
        cli.out.flush()?;
        if checked.elapsed() > Duration::from_secs(2) {
            checked = Instant::now();
            if let Ok((StatusCode::NOT_FOUND, _)) =
                cli.call(Method::GET, &format!("/environments/{}", a.name), None)
            {
                writeln!(cli.out, "environment {} was deleted", a.name)?;
                return Ok(Outcome::Success);
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(Outcome::Success)
}
