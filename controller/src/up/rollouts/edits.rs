//! Edits of the mesh file while `sluice up` runs: noticing that the file changed on disk, and
//! telling a version-only edit (a rollout to ask the controller for) from any other (which
//! needs a restart). Kept apart because it is about the file, not about the rollouts the
//! controller reports.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::SystemTime;

use crate::up::meshfile::{MeshFile, VersionOverride};

/// How an edited mesh file differs from the one in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Nothing that matters (comments, formatting).
    None,
    /// Only versions changed: per service, the new version.
    Versions(BTreeMap<String, VersionChange>),
    /// Anything else (also: workloads of one service moved to different versions).
    Other,
}

/// A service's new version in an edited mesh file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionChange {
    /// The version the file said before.
    pub from: String,
    /// The version it says now.
    pub to: String,
}

/// Compares an edited mesh file with the one in force.
pub fn classify(old: &MeshFile, new: &MeshFile) -> Edit {
    if old.workloads.len() != new.workloads.len() {
        return Edit::Other;
    }
    // Everything but the versions must be equal.
    let mut same = new.clone();
    for (n, o) in same.workloads.iter_mut().zip(&old.workloads) {
        n.version.clone_from(&o.version);
    }
    if same != *old {
        return Edit::Other;
    }
    let mut changes: BTreeMap<String, VersionChange> = BTreeMap::new();
    for (n, o) in new.workloads.iter().zip(&old.workloads) {
        if n.version == o.version {
            continue;
        }
        let change = VersionChange {
            from: o.version.clone(),
            to: n.version.clone(),
        };
        match changes.get(&n.service) {
            Some(c) if c.to != change.to => return Edit::Other,
            Some(_) => {}
            None => {
                changes.insert(n.service.clone(), change);
            }
        }
    }
    // A service half moved (one workload edited, another of the same service not) is asked
    // for as a rollout of the whole service: the controller routes by version, not workload.
    if changes.is_empty() {
        Edit::None
    } else {
        Edit::Versions(changes)
    }
}

/// The mesh file in force after a version-only edit whose rollouts the controller started for
/// `services`: `old` with those services' workloads at their new version. Each keeps its old
/// version runnable (an empty `versions` entry: its own command and env), so that a rollout
/// back to it can start a canary.
pub fn accept_versions(old: &MeshFile, new: &MeshFile, services: &[&str]) -> MeshFile {
    let mut out = old.clone();
    for (o, n) in out.workloads.iter_mut().zip(&new.workloads) {
        if o.version != n.version && services.contains(&o.service.as_str()) {
            let previous = std::mem::replace(&mut o.version, n.version.clone());
            o.versions
                .entry(previous)
                .or_insert_with(VersionOverride::default);
        }
    }
    out
}
/// The mesh file as last seen on disk.
pub(super) struct Seen {
    pub(super) modified: Option<SystemTime>,
    pub(super) hash: u64,
}

pub(super) fn look(path: &Path) -> Option<(Seen, String)> {
    let modified = std::fs::metadata(path).ok()?.modified().ok();
    let text = std::fs::read_to_string(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    Some((
        Seen {
            modified,
            hash: h.finish(),
        },
        text,
    ))
}
