//! Where new [`ProxyState`]s come from, and the loop that keeps the shared state current.
//!
//! Sources today, chosen by configuration:
//!
//! * **Policy directory** (`SLUICE_PROXY_POLICY_DIR`, standalone): the same YAML files
//!   `sluice policy check` reads, plus an optional endpoints file (`SLUICE_PROXY_ENDPOINTS`,
//!   JSON `{"services": [...]}`, see [`super::endpoints`]).
//! * **Snapshot file** (`SLUICE_PROXY_SNAPSHOT`): JSON in the shape of the controller API's
//!   `ProxyConfig` message, `{"version", "policyBundle", "services"}`. The bundle is loaded
//!   with `PolicySet::from_str`, exactly as the controller's bundle will be.
//!
//! * **Controller** (`SLUICE_PROXY_CONTROLLER_ADDR` with neither of the above, or
//!   `SLUICE_PROXY_CONFIG_SOURCE=controller`): the `Watch` stream, see [`super::controller`].
//!
//! The files are polled and compared by content rather than watched with inotify: polling sees
//! atomic renames, editors' save dances and Kubernetes ConfigMap symlink flips the same way,
//! and costs one small read per interval.
//!
//! Each `ProxyConfig` from the controller converts to the same parts a snapshot file holds
//! (version, bundle, [`Endpoints`] — the JSON types mirror the proto) and goes through
//! [`ConfigSource::from_bundle`] and [`apply`], so validation, the "keep the old state" rule,
//! logging and metrics are shared; only the waiting differs (a stream message instead of a
//! poll tick). For that source [`ConfigSource::load_initial`] and [`ConfigSource::watch`] do
//! nothing: the state stays empty until [`super::controller::run`] applies the first message.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_policy::load::{ReadError, SourceFile, read_sources};
use sluice_policy::validate::LoadError;
use sluice_policy::{Diagnostic, PolicySet};

use super::{Endpoints, ProxyState, SharedState, StateError};
use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;

/// A configuration source. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Nothing configured: the proxy keeps [`ProxyState::empty`].
    None,
    /// A policy directory and an optional endpoints file.
    PolicyDir {
        /// The directory (or single file) of policy YAML.
        dir: PathBuf,
        /// The endpoints file; without it no service has instances.
        endpoints: Option<PathBuf>,
    },
    /// A `ProxyConfig`-shaped JSON file.
    SnapshotFile {
        /// The file.
        path: PathBuf,
    },
    /// The controller's `Watch` stream (driven by [`super::controller::run`]).
    Controller {
        /// The controller's gRPC address.
        addr: String,
    },
}

/// Why a source's content could not become a state.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy directory could not be read (missing, no policy files, not UTF-8...).
    #[error(transparent)]
    PolicyRead(#[from] ReadError),
    /// The policy is invalid; every diagnostic is kept so each can be logged.
    #[error("invalid policy: {}", summary(.diagnostics))]
    Policy {
        /// All diagnostics, errors first.
        diagnostics: Vec<Diagnostic>,
    },
    /// A JSON file does not have the expected shape.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: serde_json::Error,
    },
    /// Policy and endpoints parse but do not fit together.
    #[error(transparent)]
    State(#[from] StateError),
    /// Endpoints from the controller are malformed.
    #[error("endpoints: {0}")]
    Endpoints(String),
}

fn summary(diagnostics: &[Diagnostic]) -> String {
    let errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.is_error()).collect();
    match errors.first() {
        Some(first) if errors.len() == 1 => first.to_string(),
        Some(first) => format!("{first} (and {} more)", errors.len() - 1),
        None => "invalid".to_owned(),
    }
}

impl From<LoadError> for SourceError {
    fn from(e: LoadError) -> SourceError {
        match e {
            LoadError::Read(r) => SourceError::PolicyRead(r),
            LoadError::Invalid { diagnostics, .. } => SourceError::Policy { diagnostics },
        }
    }
}

/// The JSON snapshot file: the controller API's `ProxyConfig`, with proto field names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SnapshotFile {
    version: String,
    policy_bundle: String,
    #[serde(default)]
    services: Endpoints,
}

/// The endpoints file next to a policy directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    services: Endpoints,
}

/// The raw bytes last read from a source. Reloads compare it first so an unchanged source is
/// not recompiled every poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<u8>);

impl ConfigSource {
    /// The source the configuration chose (`Config` checks that it has what it needs).
    pub fn from_config(config: &Config) -> ConfigSource {
        match (
            config.source,
            &config.policy_dir,
            &config.snapshot,
            &config.controller_addr,
        ) {
            (SourceKind::PolicyDir, Some(dir), _, _) => ConfigSource::PolicyDir {
                dir: dir.clone(),
                endpoints: config.endpoints.clone(),
            },
            (SourceKind::Snapshot, _, Some(path), _) => {
                ConfigSource::SnapshotFile { path: path.clone() }
            }
            (SourceKind::Controller, _, _, Some(addr)) => {
                ConfigSource::Controller { addr: addr.clone() }
            }
            _ => ConfigSource::None,
        }
    }

    /// For log lines.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::None => "none".to_owned(),
            ConfigSource::PolicyDir { dir, .. } => format!("policy directory {}", dir.display()),
            ConfigSource::SnapshotFile { path } => format!("snapshot file {}", path.display()),
            ConfigSource::Controller { addr } => format!("controller {addr}"),
        }
    }

    /// The `/config` entry's `kind`, as `SLUICE_PROXY_CONFIG_SOURCE` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigSource::None => "none",
            ConfigSource::PolicyDir { .. } => "policy-dir",
            ConfigSource::SnapshotFile { .. } => "snapshot",
            ConfigSource::Controller { .. } => "controller",
        }
    }

    /// Whether [`ConfigSource::load_initial`] and [`ConfigSource::watch`] do the work (the
    /// controller's stream has its own task).
    fn is_polled(&self) -> bool {
        matches!(
            self,
            ConfigSource::PolicyDir { .. } | ConfigSource::SnapshotFile { .. }
        )
    }

    /// Reads the source (blocking file IO) and returns what was read.
    fn read(&self) -> Result<(Fingerprint, Input), SourceError> {
        match self {
            ConfigSource::None | ConfigSource::Controller { .. } => {
                Ok((Fingerprint::default(), Input::None))
            }
            ConfigSource::PolicyDir { dir, endpoints } => {
                let files = read_sources(dir)?;
                let endpoints = endpoints.as_deref().map(read).transpose()?;
                let mut fp = Vec::new();
                for f in &files {
                    fp.extend_from_slice(f.path.to_string_lossy().as_bytes());
                    fp.push(0);
                    fp.extend_from_slice(f.text.as_bytes());
                    fp.push(0);
                }
                fp.extend_from_slice(endpoints.as_deref().unwrap_or_default());
                Ok((Fingerprint(fp), Input::Dir { files, endpoints }))
            }
            ConfigSource::SnapshotFile { path } => {
                let bytes = read(path)?;
                Ok((Fingerprint(bytes.clone()), Input::Snapshot(bytes)))
            }
        }
    }

    /// Turns what was read into a state.
    fn build(&self, input: Input, shared: &SharedState) -> Result<ProxyState, SourceError> {
        match (self, input) {
            (
                ConfigSource::PolicyDir { endpoints, .. },
                Input::Dir {
                    files,
                    endpoints: e,
                },
            ) => {
                let set = PolicySet::from_sources(&files)?;
                log_warnings(&set);
                let endpoints: Endpoints = match (endpoints, e) {
                    (Some(path), Some(bytes)) => {
                        serde_json::from_slice::<EndpointsFile>(&bytes)
                            .map_err(|source| SourceError::Json {
                                path: path.clone(),
                                source,
                            })?
                            .services
                    }
                    _ => Endpoints::default(),
                };
                let policy = set.compile();
                let endpoints_hash = serde_json::to_vec(&endpoints)
                    .map(|b| fnv1a32(&b))
                    .unwrap_or_default();
                let version = format!("{}.{endpoints_hash:08x}", policy.version());
                Ok(ProxyState::build(
                    version,
                    policy,
                    endpoints,
                    shared.counters(),
                )?)
            }
            (ConfigSource::SnapshotFile { path }, Input::Snapshot(bytes)) => {
                Self::build_snapshot(path, &bytes, shared)
            }
            _ => Ok(ProxyState::empty()),
        }
    }

    /// Builds a state from `ProxyConfig`-shaped JSON (the snapshot file).
    pub fn build_snapshot(
        path: &Path,
        bytes: &[u8],
        shared: &SharedState,
    ) -> Result<ProxyState, SourceError> {
        let file: SnapshotFile =
            serde_json::from_slice(bytes).map_err(|source| SourceError::Json {
                path: path.to_owned(),
                source,
            })?;
        Self::from_bundle(file.version, &file.policy_bundle, file.services, shared)
    }

    /// Builds a state from the three fields of a `ProxyConfig`: the seam for the controller's
    /// `Watch` stream, whose messages carry exactly these (convert the proto's
    /// `ServiceEndpoints` into [`Endpoints`], then pass the result to [`apply`]).
    pub fn from_bundle(
        version: String,
        policy_bundle: &str,
        services: Endpoints,
        shared: &SharedState,
    ) -> Result<ProxyState, SourceError> {
        let set = PolicySet::from_str("policyBundle", policy_bundle)?;
        log_warnings(&set);
        Ok(ProxyState::build(
            version,
            set.compile(),
            services,
            shared.counters(),
        )?)
    }

    /// Loads the source once at startup and stores the state. An error here is a bad
    /// configuration (the proxy exits 64) rather than a bad reload.
    pub fn load_initial(&self, shared: &SharedState) -> Result<Fingerprint, SourceError> {
        let (fp, input) = self.read()?;
        let state = self.build(input, shared)?;
        if self.is_polled() {
            log_loaded(&self.describe(), &state);
        }
        shared.store(state);
        Ok(fp)
    }

    /// Polls the source every `interval` forever, applying each change with [`apply`].
    /// `last` is what [`ConfigSource::load_initial`] read, so it is not applied twice.
    pub async fn watch(
        self,
        shared: Arc<SharedState>,
        interval: Duration,
        metrics: Metrics,
        last: Fingerprint,
    ) {
        if !self.is_polled() {
            return;
        }
        let source = Arc::new(self);
        let mut last: Result<Fingerprint, String> = Ok(last);
        loop {
            tokio::time::sleep(interval).await;
            let reader = source.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || reader.read()).await else {
                continue;
            };
            match read {
                Ok((fp, _)) if last.as_ref() == Ok(&fp) => {}
                Ok((fp, input)) => {
                    let built = source.build(input, &shared);
                    apply(&shared, &source.describe(), built, &metrics);
                    last = Ok(fp);
                }
                // Unreadable is often transient (a directory mid-rewrite), so it is logged
                // once per distinct error and not counted as a rejected config.
                Err(e) => {
                    let text = e.to_string();
                    if last.as_ref().err() != Some(&text) {
                        tracing::warn!(source = %source.describe(), error = %text,
                            "config source unreadable; keeping the current config");
                    }
                    last = Err(text);
                }
            }
        }
    }
}

/// Which source feeds the proxy and how it is doing, for `/config` and `/ready`.
#[derive(Debug)]
pub struct SourceStatus {
    source: ConfigSource,
    controller: Option<Arc<super::controller::Status>>,
}

impl SourceStatus {
    /// `controller` is the stream's status when `source` is the controller.
    pub fn new(
        source: ConfigSource,
        controller: Option<Arc<super::controller::Status>>,
    ) -> SourceStatus {
        SourceStatus { source, controller }
    }

    /// File sources are loaded before the listeners open; the controller's stream is ready
    /// once its first config is applied.
    pub fn ready(&self) -> bool {
        self.controller.as_ref().is_none_or(|c| c.ready())
    }

    /// For `/config`: `kind`, `describe`, and for the controller the stream's status.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kind": self.source.kind(),
            "describe": self.source.describe(),
        });
        if let (Some(c), serde_json::Value::Object(map)) = (&self.controller, &mut v)
            && let serde_json::Value::Object(status) = c.json()
        {
            map.extend(status);
        }
        v
    }
}

/// What [`ConfigSource::read`] found.
enum Input {
    None,
    Dir {
        files: Vec<SourceFile>,
        endpoints: Option<Vec<u8>>,
    },
    Snapshot(Vec<u8>),
}

/// Stores a successfully built state, or logs why it was refused (every policy diagnostic on
/// its own line) and keeps the current one. Counts both in the reload metric.
pub fn apply(
    shared: &SharedState,
    source: &str,
    built: Result<ProxyState, SourceError>,
    metrics: &Metrics,
) {
    match built {
        Ok(state) => {
            metrics.snapshot_reload(true);
            log_loaded(source, &state);
            shared.store(state);
        }
        Err(error) => {
            metrics.snapshot_reload(false);
            if let SourceError::Policy { diagnostics } = &error {
                for d in diagnostics {
                    tracing::error!(%source, "{d}");
                }
            }
            tracing::error!(%source, %error, "new config rejected; keeping the previous one");
        }
    }
}

fn log_loaded(source: &str, state: &ProxyState) {
    tracing::info!(%source, version = %state.version, policy = %state.policy.version(),
        services = state.routing.services.len(), "config loaded");
    for w in &state.routing.warnings {
        tracing::warn!(%source, "{w}");
    }
}

fn log_warnings(set: &PolicySet) {
    for w in &set.warnings {
        tracing::warn!("{w}");
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// FNV-1a, 32 bits: a short tag for the endpoints part of a state version.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Workload;

    const POLICY: &str = "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: t }\nspec: {}\n---\n\
        apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: { name: pay }\n\
        spec: { team: t, versions: [v1] }\n";

    #[test]
    fn policy_dir_and_snapshot_file_build_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy");
        std::fs::create_dir(&policy).expect("mkdir");
        std::fs::write(policy.join("a.yaml"), POLICY).expect("write");
        let endpoints = dir.path().join("endpoints.json");
        std::fs::write(
            &endpoints,
            r#"{"services":[{"service":"pay","addresses":["10.0.0.1:80"],
                "versions":[{"version":"v1","endpoints":[{"address":"127.0.0.1:1"}]}]}]}"#,
        )
        .expect("write");
        let shared = SharedState::new(Workload::default());
        let source = ConfigSource::PolicyDir {
            dir: policy.clone(),
            endpoints: Some(endpoints),
        };
        source.load_initial(&shared).expect("loads");
        let state = shared.current();
        assert!(state.version.starts_with(state.policy.version()));
        assert_eq!(state.endpoints.instance_count(), 1);
        assert!(state.policy.service("default", "pay").is_some());

        // The same policy shipped as a bundle in a snapshot file.
        let bundle = PolicySet::load(&policy).expect("valid").to_bundle();
        let json = serde_json::json!({ "version": "7", "policyBundle": bundle, "services": [] });
        let state =
            ConfigSource::build_snapshot(Path::new("s.json"), json.to_string().as_bytes(), &shared)
                .expect("valid");
        assert_eq!(state.version, "7");
        assert!(state.policy.service("default", "pay").is_some());
    }

    #[test]
    fn invalid_policy_is_refused_with_its_diagnostics_and_the_old_state_stays() {
        let shared = SharedState::new(Workload::default());
        let metrics = Metrics::new().expect("metrics");
        let good = serde_json::json!({ "version": "1", "policyBundle": POLICY });
        let built =
            ConfigSource::build_snapshot(Path::new("s.json"), good.to_string().as_bytes(), &shared);
        apply(&shared, "test", built, &metrics);
        let bad = serde_json::json!({ "version": "2", "policyBundle": POLICY.replace("team: t", "taem: t") });
        let built =
            ConfigSource::build_snapshot(Path::new("s.json"), bad.to_string().as_bytes(), &shared);
        let Err(SourceError::Policy { diagnostics }) = &built else {
            panic!("expected diagnostics, got {built:?}");
        };
        assert!(
            diagnostics.iter().any(|d| d.message.contains("taem")),
            "{diagnostics:?}"
        );
        apply(&shared, "test", built, &metrics);
        assert_eq!(shared.current().version, "1");
    }
}
