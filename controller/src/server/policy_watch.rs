//! Watching the policy directory: poll, validate, publish or refuse.
//!
//! A dedicated thread reads every policy file every [`POLL_INTERVAL`] and hashes the contents
//! (paths and text). Polling the contents, rather than file-system events, sees every way a
//! file can change (editors that write in place or rename over, `git checkout`, network and
//! container file systems without inotify) at the cost of reading a few small files ten
//! times a second.
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
use std::time::{Duration, SystemTime};

use sluice_policy::PolicySet;
use sluice_policy::diagnostic::{Style, render};
use sluice_policy::load::{SourceFile, read_sources};
use sluice_policy::validate::LoadError;

use super::state::{ControlPlane, PolicySnapshot};
use crate::store::{ConfigErrorRow, unix_ms};

/// How often the directory is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What one read of the directory found.
pub enum Loaded {
    /// A valid set.
    Valid(Box<PolicySnapshot>),
    /// Problems, rendered.
    Invalid(ConfigErrorRow),
}

/// Reads the directory once: the contents' hash and what they amount to.
pub fn load(dir: &Path) -> (u64, Loaded) {
    match read_sources(dir) {
        Err(e) => {
            let text = e.to_string();
            let mut h = DefaultHasher::new();
            "read-error".hash(&mut h);
            text.hash(&mut h);
            (
                h.finish(),
                Loaded::Invalid(ConfigErrorRow {
                    at_unix_ms: unix_ms(SystemTime::now()),
                    summary: format!("the policy directory cannot be read: {text}"),
                    rendered: format!("error: {text}\n"),
                }),
            )
        }
        Ok(files) => (hash_sources(&files), compile(&files)),
    }
}

pub fn hash_sources(files: &[SourceFile]) -> u64 {
    let mut h = DefaultHasher::new();
    for f in files {
        f.path.hash(&mut h);
        f.text.hash(&mut h);
    }
    h.finish()
}

fn compile(files: &[SourceFile]) -> Loaded {
    match PolicySet::from_sources(files) {
        Ok(set) => Loaded::Valid(Box::new(PolicySnapshot::new(set))),
        Err(LoadError::Read(e)) => Loaded::Invalid(ConfigErrorRow {
            at_unix_ms: unix_ms(SystemTime::now()),
            summary: format!("the policy directory cannot be read: {e}"),
            rendered: format!("error: {e}\n"),
        }),
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => {
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
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
    /// Invalid contents seen once, waiting for a second look.
    pending: Option<u64>,
    /// Invalid contents already reported.
    reported: Option<u64>,
}

impl Watcher {
    fn new(dir: PathBuf, applied: u64, plane: Arc<ControlPlane>) -> Self {
        Watcher {
            dir,
            plane,
            applied,
            pending: None,
            reported: None,
        }
    }

    fn run(mut self) {
        loop {
            std::thread::sleep(POLL_INTERVAL);
            self.poll();
        }
    }

    fn poll(&mut self) {
        let (hash, loaded) = load(&self.dir);
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
        match loaded {
            Loaded::Valid(snapshot) => {
                self.applied = hash;
                self.pending = None;
                self.reported = None;
                let version = snapshot.version.clone();
                let old_domain = self.plane.policy().set.mesh.trust_domain.clone();
                let new_domain = snapshot.set.mesh.trust_domain.clone();
                let warnings = snapshot.set.warnings.len();
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
                if self.pending != Some(hash) {
                    // Maybe half-written: look again on the next poll.
                    self.pending = Some(hash);
                    return;
                }
                self.pending = None;
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
}
