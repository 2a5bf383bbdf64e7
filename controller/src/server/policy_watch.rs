//! Watching the policy directory: poll, validate, publish or refuse.
//!
//! A dedicated thread looks at the directory every [`POLL_INTERVAL`]. A look is cheap: it lists
//! the policy files and their metadata (size, times, inode, type, link target) without opening
//! anything, and only when that changed — or every [`FULL_READ_EVERY`] regardless, for file
//! systems whose timestamps are too coarse to see a quick edit — are the files read and their
//! contents hashed. Only contents that differ from the ones in force, refused, or pending are
//! parsed and validated. So an unchanged directory costs a few `stat` calls ten times a second,
//! whatever its size. Polling rather than file-system events sees every way a file can change
//! (editors that write in place or rename over, `git checkout`, network and container file
//! systems without inotify).
//!
//! Reading follows `sluice_policy::load::dir`: FIFOs, sockets and devices are skipped with a
//! warning and never opened (so they cannot block this thread), links leading out of the
//! directory are refused unread, and every read is bounded.
//!
//! When the contents change:
//! - **valid**: a new [`PolicySnapshot`] is published at once (no-op if the version, a hash of
//!   the normalised bundle, is the same — e.g. only comments changed);
//! - **invalid** (or unreadable): if the same contents are seen on the next poll too, every
//!   diagnostic is logged, the change is stored as the last config error (time and rendered
//!   diagnostics, for `sluice status` and the portal), and the last good snapshot stays in
//!   force. Waiting one poll keeps a half-written file from being reported as an error.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_policy::PolicySet;
use sluice_policy::diagnostic::{Style, render};
use sluice_policy::load::dir::{self, PolicySources};
use sluice_policy::load::{ReadError, read_policy_dir};
use sluice_policy::validate::LoadError;

use super::state::{ControlPlane, PolicySnapshot};
use crate::store::{ConfigErrorRow, unix_ms};

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the files are read even though their metadata did not change.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(5);

/// What one read of the directory found.
pub enum Loaded {
    /// A valid set.
    Valid(Box<PolicySnapshot>),
    /// Problems, rendered.
    Invalid(ConfigErrorRow),
}

/// Reads the directory once: the contents' hash and what they amount to.
pub fn load(dir: &Path) -> (u64, Loaded) {
    let read = read_policy_dir(dir);
    let hash = hash_read(&read);
    (hash, compile(read))
}

/// The hash of what a read found: every file's path and text, and every problem (a FIFO that
/// appears is a change too, if only of the warnings).
pub fn hash_read(read: &Result<PolicySources, ReadError>) -> u64 {
    let mut h = DefaultHasher::new();
    match read {
        Err(e) => {
            "read-error".hash(&mut h);
            e.to_string().hash(&mut h);
        }
        Ok(read) => {
            for f in &read.files {
                f.path.hash(&mut h);
                f.text.hash(&mut h);
            }
            for d in &read.diagnostics {
                d.to_string().hash(&mut h);
            }
        }
    }
    h.finish()
}

fn read_error_row(e: &dyn std::fmt::Display) -> ConfigErrorRow {
    ConfigErrorRow {
        at_unix_ms: unix_ms(SystemTime::now()),
        summary: format!("the policy directory cannot be read: {e}"),
        rendered: format!("error: {e}\n"),
    }
}

fn compile(read: Result<PolicySources, ReadError>) -> Loaded {
    let read = match read {
        Ok(read) => read,
        Err(e) => return Loaded::Invalid(read_error_row(&e)),
    };
    match PolicySet::from_read(read) {
        Ok(set) => Loaded::Valid(Box::new(PolicySnapshot::new(set))),
        Err(LoadError::Read(e)) => Loaded::Invalid(read_error_row(&e)),
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => {
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            // Rendering quotes at most the offending line of a policy file, and nothing of a
            // file that was not read (links out of the directory, FIFOs).
            let rendered = diagnostics
                .iter()
                .map(|d| render(d, &sources, Style::plain()))
                .collect::<Vec<_>>()
                .join("\n");
            Loaded::Invalid(ConfigErrorRow {
                at_unix_ms: unix_ms(SystemTime::now()),
                summary: format!(
                    "{errors} error{} in the policy set; the change was refused",
                    if errors == 1 { "" } else { "s" }
                ),
                rendered,
            })
        }
    }
}

/// Starts the watcher thread. `applied` is the hash of the contents already in force.
pub fn spawn(dir: PathBuf, applied: u64, plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("policy-watch".to_owned())
        .spawn(move || Watcher::new(dir, applied, plane).run())
        .map(drop)
}

struct Watcher {
    dir: PathBuf,
    plane: Arc<ControlPlane>,
    /// The contents in force.
    applied: u64,
    /// Invalid contents seen once, waiting for a second look, and what was wrong.
    pending: Option<(u64, ConfigErrorRow)>,
    /// Invalid contents already reported.
    reported: Option<u64>,
    /// The metadata fingerprint of the last read, and when it was.
    scanned: Option<(u64, Instant)>,
    /// How many times the contents were compiled (for tests).
    compiled: u64,
}

impl Watcher {
    fn new(dir: PathBuf, applied: u64, plane: Arc<ControlPlane>) -> Self {
        Watcher {
            dir,
            plane,
            applied,
            pending: None,
            reported: None,
            scanned: None,
            compiled: 0,
        }
    }

    fn run(mut self) {
        loop {
            std::thread::sleep(POLL_INTERVAL);
            self.poll();
        }
    }

    /// Reads the directory if its metadata changed (or a pending change awaits its second
    /// look, or it is time for a full read): the contents' hash and what was read.
    fn read(&mut self) -> Option<(u64, Result<PolicySources, ReadError>)> {
        let read = match dir::scan(&self.dir) {
            Err(e) => {
                self.scanned = None;
                Err(e)
            }
            Ok(candidates) => {
                let fingerprint = dir::fingerprint(&candidates);
                let fresh = self
                    .scanned
                    .is_some_and(|(f, at)| f == fingerprint && at.elapsed() < FULL_READ_EVERY);
                if fresh && self.pending.is_none() {
                    return None;
                }
                self.scanned = Some((fingerprint, Instant::now()));
                if candidates.is_empty() {
                    Err(ReadError::NoPolicyFiles {
                        path: self.dir.clone(),
                    })
                } else {
                    Ok(dir::read_candidates(&self.dir, candidates))
                }
            }
        };
        Some((hash_read(&read), read))
    }

    fn poll(&mut self) {
        let Some((hash, read)) = self.read() else {
            return;
        };
        if hash == self.applied {
            if self.reported.take().is_some() {
                tracing::info!(policy = %self.dir.display(), "the policy directory is back to the version in force");
                self.plane.policy_unchanged();
            }
            self.pending = None;
            return;
        }
        if Some(hash) == self.reported {
            return;
        }
        let (loaded, second_look) = match self.pending.take() {
            // The second look at the same invalid contents: no need to compile them again.
            Some((pending, row)) if pending == hash => (Loaded::Invalid(row), true),
            _ => {
                self.compiled += 1;
                (compile(read), false)
            }
        };
        match loaded {
            Loaded::Valid(snapshot) => {
                self.applied = hash;
                self.reported = None;
                let version = snapshot.version.clone();
                let old_domain = self.plane.policy().set.mesh.trust_domain.clone();
                let new_domain = snapshot.set.mesh.trust_domain.clone();
                let warnings = snapshot.set.warnings.len();
                for w in snapshot
                    .set
                    .warnings
                    .iter()
                    .filter(|w| w.code == "not-a-regular-file")
                {
                    tracing::warn!(policy = %self.dir.display(), "{w}");
                }
                if self.plane.publish_policy(*snapshot) {
                    tracing::info!(policy = %self.dir.display(), version, warnings, "published a new policy version");
                } else {
                    tracing::info!(policy = %self.dir.display(), version, "the policy files changed but the policy did not");
                }
                if old_domain != new_domain {
                    tracing::warn!(
                        old = old_domain,
                        new = new_domain,
                        "the Mesh's trustDomain changed; certificates keep the old one until the controller restarts"
                    );
                }
            }
            Loaded::Invalid(row) => {
                if !second_look {
                    // Maybe half-written: look again on the next poll.
                    self.pending = Some((hash, row));
                    return;
                }
                self.reported = Some(hash);
                tracing::error!(
                    policy = %self.dir.display(),
                    in_force = self.plane.policy().version,
                    "{}", row.summary
                );
                for diagnostic in row.rendered.split("\n\n") {
                    tracing::error!("{}", diagnostic.trim_end());
                }
                if let Err(e) = self.plane.store().add_config_error(&row) {
                    tracing::error!(error = %e, "could not store the config error");
                }
                self.plane.record_config_error(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    const TEAM: &str =
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: shop }\nspec: {}\n";

    #[test]
    fn a_valid_change_publishes_and_an_invalid_one_is_refused_after_a_second_look()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("policy");
        std::fs::create_dir(&policy)?;
        std::fs::write(policy.join("team.yaml"), TEAM)?;
        let (hash, Loaded::Valid(first)) = load(&policy) else {
            return Err("the first version is valid".into());
        };
        let v1 = first.version.clone();
        let plane = ControlPlane::new(Store::open(dir.path())?, *first, Duration::from_secs(1))?;
        let mut w = Watcher::new(policy.clone(), hash, Arc::clone(&plane));

        std::fs::write(policy.join("team.yaml"), TEAM.replace("shop", "shop2"))?;
        w.poll();
        let v2 = plane.policy().version.clone();
        assert_ne!(v1, v2);

        std::fs::write(
            policy.join("team.yaml"),
            TEAM.replace("spec: {}", "spec: { bogus: 1 }"),
        )?;
        w.poll();
        assert!(
            plane.store().last_config_error()?.is_none(),
            "one look is not enough"
        );
        w.poll();
        let error = plane.store().last_config_error()?.ok_or("stored")?;
        assert!(
            error.rendered.contains("team.yaml:4:"),
            "{}",
            error.rendered
        );
        assert_eq!(plane.policy().version, v2, "the last good version stays");

        // Undoing the bad edit clears "current" without a new version.
        std::fs::write(policy.join("team.yaml"), TEAM.replace("shop", "shop2"))?;
        w.poll();
        assert_eq!(plane.policy().version, v2);
        Ok(())
    }

    fn watcher(dir: &Path) -> Result<(Watcher, Arc<ControlPlane>), Box<dyn std::error::Error>> {
        let policy = dir.join("policy");
        let (hash, Loaded::Valid(first)) = load(&policy) else {
            return Err("the first version is valid".into());
        };
        let plane = ControlPlane::new(Store::open(dir)?, *first, Duration::from_secs(1))?;
        Ok((Watcher::new(policy, hash, Arc::clone(&plane)), plane))
    }

    #[test]
    fn an_unchanged_directory_is_not_parsed_again() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("policy");
        std::fs::create_dir(&policy)?;
        // A large file (4 MB in the issue): parsing it ten times a second kept a core busy.
        let mut big = TEAM.to_owned();
        big.push_str(&"# a comment line that makes the file large\n".repeat(50_000));
        std::fs::write(policy.join("team.yaml"), &big)?;
        let (mut w, plane) = watcher(dir.path())?;
        for _ in 0..20 {
            w.poll();
        }
        assert_eq!(w.compiled, 0, "nothing changed, nothing to parse");
        std::fs::write(policy.join("team.yaml"), big.replace("shop", "shop2"))?;
        for _ in 0..20 {
            w.poll();
        }
        assert_eq!(w.compiled, 1, "one change, one parse");
        assert!(plane.policy().set.teams.keys().any(|t| t.name == "shop2"));
        Ok(())
    }

    #[test]
    fn a_fifo_neither_blocks_nor_stops_later_edits() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("policy");
        std::fs::create_dir(&policy)?;
        std::fs::write(policy.join("team.yaml"), TEAM)?;
        let (mut w, plane) = watcher(dir.path())?;
        let fifo = policy.join("pipe.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
        assert!(made.success());
        w.poll();
        std::fs::write(policy.join("team.yaml"), TEAM.replace("shop", "shop2"))?;
        w.poll();
        assert!(plane.policy().set.teams.keys().any(|t| t.name == "shop2"));
        assert!(
            plane.store().last_config_error()?.is_none(),
            "skipped, not refused"
        );
        std::fs::remove_file(&fifo)?;
        w.poll();
        std::fs::write(policy.join("team.yaml"), TEAM.replace("shop", "shop3"))?;
        w.poll();
        assert!(plane.policy().set.teams.keys().any(|t| t.name == "shop3"));
        Ok(())
    }
}
