//! The mesh file (`examples/shop/mesh.yaml`): which workloads `sluice up` runs.
//!
//! YAML is read with the policy crate's `load::parse_yaml`, which remembers where every field
//! was written, then deserialized with serde (`deny_unknown_fields`), so a mistake is reported as
//! `mesh.yaml:12:5: workloads[1].port: invalid type …`, like `sluice policy check` does.
//!
//! A workload may declare `versions`: what to run when a rollout asks for another version of
//! it (a canary). Each entry may replace the command and add environment over the base env;
//! [`Workload::config_for`] resolves a version to the argv and environment to run.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::identity::WorkloadIdentity;

/// The whole mesh file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The policy directory, relative to the mesh file.
    pub policy: PathBuf,
    /// The workloads, each in its own network namespace.
    pub workloads: Vec<Workload>,
    /// The mesh file's directory (absolute after [`MeshFile::load`]): workloads run there.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The file it was read from, as given (for messages).
    #[serde(skip)]
    pub source: PathBuf,
}

/// One workload: a process, its sidecar and its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Unique in the file; names the namespace and the log prefix.
    pub name: String,
    /// The MeshService it is an instance of.
    pub service: String,
    /// The version it runs.
    #[serde(default = "default_version")]
    pub version: String,
    /// `stable` or an ephemeral environment.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The command, as an argv list (run in the mesh file's directory).
    pub command: Vec<String>,
    /// The port the workload serves on (also its service address's port).
    pub port: u16,
    /// Further ports it serves on (e.g. gRPC on 9090). The service address gets each of them
    /// too, and a call to `service:PORT` reaches an instance on the same `PORT`.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Extra environment variables.
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    /// What runs as another version of this workload (a canary during a rollout), by version.
    #[serde(default)]
    pub versions: BTreeMap<String, VersionOverride>,
}

/// How another version of a workload differs from the base: the rest (ports, service,
/// environment) is the workload's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionOverride {
    /// Replaces the workload's command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Merged over the workload's `env`.
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
}

/// What to run for one version of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionConfig {
    /// The argv.
    pub command: Vec<String>,
    /// The environment: the workload's, with the version's entries over it.
    pub env: BTreeMap<String, String>,
}

impl Workload {
    /// The argv and environment for `version`: the workload's own for its `version`, its
    /// `versions` entry merged over it for another one, `None` when the file has neither.
    pub fn config_for(&self, version: &str) -> Option<VersionConfig> {
        // An override wins even for the base version: after a version-only edit of the file
        // the runner keeps the old version runnable by recording an empty override for it.
        if let Some(o) = self.versions.get(version) {
            let mut env = self.env.clone();
            env.extend(o.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            return Some(VersionConfig {
                command: o.command.clone().unwrap_or_else(|| self.command.clone()),
                env,
            });
        }
        (version == self.version).then(|| VersionConfig {
            command: self.command.clone(),
            env: self.env.clone(),
        })
    }

    /// The name of this workload's instances of `version` when they run beside it (canaries):
    /// `payments-v2`. Also names their namespace (`sluice-<id>-payments-v2`).
    pub fn canary_name(&self, version: &str) -> String {
        format!("{}-{version}", self.name)
    }
}

fn default_version() -> String {
    "v1".to_owned()
}

fn default_environment() -> String {
    "stable".to_owned()
}

/// Accepts `PORT: 8080` and `DEBUG: true` as well as strings.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "env `{k}` must be a string, number or boolean, not {other}"
            ))),
        })
        .collect()
}

/// A mesh file that could not be used; the message names file:line:col.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MeshFileError(pub String);

impl MeshFile {
    /// Reads and checks `path`; `policy` is made absolute (relative to the file).
    pub fn load(path: &Path) -> Result<MeshFile, MeshFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MeshFileError(format!("cannot read {}: {e}", path.display())))?;
        let mut mesh = Self::parse(&path.display().to_string(), &text)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(base)
            .map_err(|e| MeshFileError(format!("cannot resolve {}: {e}", base.display())))?;
        mesh.policy = base.join(&mesh.policy);
        mesh.dir = base;
        Ok(mesh)
    }

    /// Parses mesh-file text; `name` is used in messages.
    pub fn parse(name: &str, text: &str) -> Result<MeshFile, MeshFileError> {
        let file: std::sync::Arc<Path> = std::sync::Arc::from(Path::new(name));
        let (docs, diagnostics) = sluice_policy::load::parse_yaml(&file, text);
        if let Some(d) = diagnostics.first() {
            let at = d
                .location
                .as_ref()
                .map_or_else(|| name.to_owned(), ToString::to_string);
            return Err(MeshFileError(format!("{at}: {}", d.message)));
        }
        let [doc] = docs.as_slice() else {
            return Err(MeshFileError(format!(
                "{name}: expected exactly one YAML document, found {}",
                docs.len()
            )));
        };
        // Unknown fields point at their key; everything else at the value.
        let at = |path: &str, key: bool| {
            let location = if key {
                doc.spans.key(path)
            } else {
                doc.spans.value(path)
            };
            location.map_or_else(|| name.to_owned(), |l| l.to_string())
        };
        let value = doc.value.clone();
        let mut mesh: MeshFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let unknown = e.inner().to_string().starts_with("unknown field");
            MeshFileError(format!("{}: {path}: {}", at(&path, unknown), e.inner()))
        })?;
        mesh.check()
            .map_err(|(path, msg)| MeshFileError(format!("{}: {path}: {msg}", at(&path, false))))?;
        mesh.source = PathBuf::from(name);
        Ok(mesh)
    }

    fn check(&self) -> Result<(), (String, String)> {
        if self.workloads.is_empty() {
            return Err(("workloads".into(), "declare at least one workload".into()));
        }
        let mut names = HashSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let field = |f: &str| format!("workloads[{i}].{f}");
            if !is_label(&w.name) {
                return Err((
                    field("name"),
                    format!(
                        "`{}` must be a DNS label (a-z, 0-9, `-`, at most 40)",
                        w.name
                    ),
                ));
            }
            if !names.insert(&w.name) {
                return Err((field("name"), format!("`{}` is declared twice", w.name)));
            }
            WorkloadIdentity::new("default", &w.service)
                .map_err(|e| (field("service"), e.to_string()))?;
            if w.command.is_empty() {
                return Err((field("command"), "the argv list is empty".into()));
            }
            if w.port == 0 {
                return Err((field("port"), "0 is not a port".into()));
            }
            for (version, o) in &w.versions {
                let at = format!("workloads[{i}].versions.{version}");
                if !is_label(version) {
                    return Err((
                        at,
                        format!(
                            "version `{version}` must be a DNS label (a-z, 0-9, `-`, at most 40)"
                        ),
                    ));
                }
                // The canary's name is a label too: it names an instance and a namespace.
                let canary = w.canary_name(version);
                if canary.len() > MAX_CANARY_NAME {
                    return Err((
                        at,
                        format!(
                            "`{canary}` (the name of this version's instances) is longer than \
                             {MAX_CANARY_NAME}; shorten the workload's name or the version"
                        ),
                    ));
                }
                if o.command.as_ref().is_some_and(Vec::is_empty) {
                    return Err((format!("{at}.command"), "the argv list is empty".into()));
                }
            }
        }
        // A canary must not take the name (and so the namespace) of a declared workload.
        for (i, w) in self.workloads.iter().enumerate() {
            for version in w.versions.keys() {
                let canary = w.canary_name(version);
                if names.contains(&canary) {
                    return Err((
                        format!("workloads[{i}].versions.{version}"),
                        format!(
                            "version `{version}` of `{}` would run as `{canary}`, which is \
                             already a workload's name",
                            w.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The services in order of first appearance, with their workloads.
    pub fn services(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, w) in self.workloads.iter().enumerate() {
            match out.iter_mut().find(|(s, _)| *s == w.service) {
                Some((_, v)) => v.push(i),
                None => out.push((w.service.clone(), vec![i])),
            }
        }
        out
    }
}

/// The longest name of a canary (`<workload>-<version>`): a DNS label.
pub const MAX_CANARY_NAME: usize = 63;

/// Whether `s` is a DNS label of at most 40 characters (workload names, versions).
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let m = MeshFile::parse(
            "m.yaml",
            "policy: policy/\nworkloads:\n  - name: pay-1\n    service: payments\n    command: [shop, payments]\n    port: 8080\n    env: {A: 1, B: x}\n",
        )
        .expect("valid");
        assert_eq!(m.workloads[0].environment, "stable");
        assert_eq!(m.workloads[0].version, "v1");
        assert_eq!(m.workloads[0].env["A"], "1");
    }

    #[test]
    fn errors_name_the_position() {
        let e = MeshFile::parse(
            "m.yaml",
            "policy: p\nworkloads:\n  - name: a\n    service: s\n    command: [x]\n    port: 1\n    colour: red\n",
        )
        .expect_err("unknown field");
        assert!(
            e.0.starts_with("m.yaml:7:5: workloads[0].colour"),
            "{}",
            e.0
        );
        let e = MeshFile::parse(
            "m.yaml",
            "policy: p\nworkloads:\n  - name: a\n    service: s\n    command: [x]\n    port: big\n",
        )
        .expect_err("bad port");
        assert!(e.0.starts_with("m.yaml:6:11: workloads[0].port"), "{}", e.0);
        let e = MeshFile::parse(
            "m.yaml",
            "policy: p\nworkloads:\n  - {name: a, service: s, command: [x], port: 1}\n  - {name: a, service: s, command: [x], port: 1}\n",
        )
        .expect_err("duplicate");
        assert!(e.0.contains("declared twice"), "{}", e.0);
    }

    const WITH_VERSIONS: &str = "policy: p
workloads:
  - name: payments
    service: payments
    command: [shop, payments]
    port: 8080
    env: { SHOP_VERSION: v1, KEEP: yes }
    versions:
      v2: { env: { SHOP_VERSION: v2 } }
      v3:
        command: [shop-next, payments]
        env: { SHOP_VERSION: v3, SHOP_ERROR_RATE: 0.05 }
";

    #[test]
    fn version_overrides_merge_over_the_base() {
        let m = MeshFile::parse("m.yaml", WITH_VERSIONS).expect("valid");
        let w = &m.workloads[0];
        let base = w.config_for("v1").expect("the base version");
        assert_eq!(base.command, ["shop", "payments"]);
        assert_eq!(base.env["SHOP_VERSION"], "v1");
        let v2 = w.config_for("v2").expect("v2");
        assert_eq!(v2.command, ["shop", "payments"], "the base command");
        assert_eq!(v2.env["SHOP_VERSION"], "v2");
        assert_eq!(v2.env["KEEP"], "yes", "the base env stays");
        let v3 = w.config_for("v3").expect("v3");
        assert_eq!(v3.command, ["shop-next", "payments"]);
        assert_eq!(v3.env["SHOP_ERROR_RATE"], "0.05");
        assert_eq!(w.config_for("v9"), None);
        assert_eq!(w.canary_name("v2"), "payments-v2");
        // Without `versions`, nothing but the base.
        let plain = MeshFile::parse(
            "m.yaml",
            "policy: p\nworkloads:\n  - {name: a, service: s, command: [x], port: 1}\n",
        )
        .expect("valid");
        assert!(plain.workloads[0].versions.is_empty());
    }

    #[test]
    fn version_override_errors_name_the_position() {
        let bad = |text: &str| MeshFile::parse("m.yaml", text).expect_err("invalid").0;
        let head = "policy: p\nworkloads:\n  - name: pay\n    service: s\n    command: [x]\n    port: 1\n    versions:\n";
        let e = bad(&format!("{head}      v2: {{ port: 9 }}\n"));
        assert!(
            e.starts_with("m.yaml:8:13: workloads[0].versions.v2.port: unknown field `port`"),
            "{e}"
        );
        let e = bad(&format!(
            "{head}      v2:\n        env: {{ A: 1 }}\n        args: [y]\n"
        ));
        assert!(
            e.starts_with("m.yaml:10:9: workloads[0].versions.v2.args: unknown field"),
            "{e}"
        );
        let e = bad(&format!("{head}      V2: {{}}\n"));
        assert!(
            e.starts_with(
                "m.yaml:8:11: workloads[0].versions.V2: version `V2` must be a DNS label"
            ),
            "{e}"
        );
        let e = bad(&format!("{head}      v2: {{ command: [] }}\n"));
        assert!(
            e.starts_with("m.yaml:8:22: workloads[0].versions.v2.command: the argv list is empty"),
            "{e}"
        );
        let e = bad(&format!("{head}      v2: {{ env: {{ A: [1] }} }}\n"));
        assert!(e.contains("workloads[0].versions.v2.env"), "{e}");
        let e = bad(&format!(
            "{head}      v2: {{}}\n  - {{name: pay-v2, service: s, command: [x], port: 1}}\n"
        ));
        assert!(
            e.starts_with(
                "m.yaml:8:11: workloads[0].versions.v2: version `v2` of `pay` would run as `pay-v2`"
            ),
            "{e}"
        );
        let long = "v".repeat(40);
        let e = bad(&format!(
            "policy: p\nworkloads:\n  - name: {}\n    service: s\n    command: [x]\n    port: 1\n    versions: {{ {long}: {{}} }}\n",
            "w".repeat(40)
        ));
        assert!(e.contains("is longer than 63"), "{e}");
    }

    #[test]
    fn the_shop_mesh_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/mesh.yaml");
        let mesh = MeshFile::load(&path).expect("examples/shop/mesh.yaml");
        assert_eq!(mesh.services().len(), 4);
        assert!(mesh.policy.join("mesh.yaml").is_file());
        let payments = mesh
            .workloads
            .iter()
            .find(|w| w.name == "payments")
            .expect("payments");
        let v3 = payments.config_for("v3").expect("the bad canary");
        assert_eq!(v3.env["SHOP_ERROR_RATE"], "0.05");
        assert_eq!(
            payments.config_for("v2").expect("v2").env["SHOP_VERSION"],
            "v2"
        );
    }
}
