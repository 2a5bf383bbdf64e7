//! Custom resources as policy sources: each object becomes one synthetic policy file that the
//! policy loader reads exactly as it reads a file from a directory, so validation and
//! diagnostics are the same, and so is the snapshot version for the same resources.
//!
//! What Kubernetes adds to an object and Sluice does not interpret is left out of the
//! document: `status`, and everything in `metadata` but the name and namespace (labels and
//! annotations carry kubectl's and Helm's bookkeeping, which would otherwise change the
//! version). The `default` namespace is written as no namespace, the way a file that names
//! none reads.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice_policy::PolicySet;
use sluice_policy::diagnostic::Diagnostic;
use sluice_policy::load::SourceFile;
use sluice_policy::resources::{DEFAULT_NAMESPACE, Kind};
use sluice_policy::validate::LoadError;

use super::crd::KindNames;

/// A custom resource, by kind, namespace (`""` for the cluster-wide Mesh) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a custom resource's JSON.
    pub fn of(kind: Kind, object: &Value) -> Option<ObjectKey> {
        let meta = object.get("metadata")?;
        Some(ObjectKey {
            kind,
            namespace: meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            name: meta.get("name")?.as_str()?.to_owned(),
        })
    }

    /// The synthetic file name diagnostics point at: `accesspolicies/shop/payments-callers`,
    /// which is also how `kubectl get` names the object.
    pub fn file(&self) -> String {
        let plural = KindNames::of(self.kind).plural;
        if self.namespace.is_empty() {
            format!("{plural}/{}", self.name)
        } else {
            format!("{plural}/{}/{}", self.namespace, self.name)
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The policy document of a custom resource (see the module docs for what is left out).
pub fn document(key: &ObjectKey, object: &Value) -> Value {
    let mut metadata = json!({ "name": key.name });
    if !key.namespace.is_empty() && key.namespace != DEFAULT_NAMESPACE {
        metadata["namespace"] = json!(key.namespace);
    }
    json!({
        "apiVersion": object.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": object.get("kind").cloned().unwrap_or(Value::Null),
        "metadata": metadata,
        "spec": object.get("spec").cloned().unwrap_or(Value::Null),
    })
}

/// The synthetic file of one resource: its document as indented JSON (which is YAML).
pub fn source(key: &ObjectKey, document: &Value) -> SourceFile {
    SourceFile {
        path: Arc::from(Path::new(&key.file())),
        text: serde_json::to_string_pretty(document).unwrap_or_default(),
    }
}

/// Reference errors depend on the order objects are created in (`kubectl apply -f dir/`
/// creates an AccessPolicy before the MeshService it names), so admission lets them through;
/// the controller reports them as a condition if they are still there once it sees the set.
pub const ORDER_DEPENDENT: &[&str] = &["unknown-service", "unknown-team", "unknown-version"];

/// One diagnostic as a line for a condition, an Event or an admission refusal: the field
/// path, what is wrong, and the fix.
pub fn line(d: &Diagnostic) -> String {
    let mut out = String::new();
    if let Some(field) = d.field.as_deref().filter(|f| !f.is_empty()) {
        out.push_str(field);
        out.push_str(": ");
    }
    out.push_str(&d.message);
    if let Some(help) = &d.help {
        out.push_str("; ");
        out.push_str(help);
    }
    out
}

/// What the policy loader made of a set of resources.
pub struct Evaluation {
    /// The valid set, if it was valid.
    pub set: Option<PolicySet>,
    /// The diagnostics of each resource (errors and warnings), by key.
    pub diagnostics: BTreeMap<ObjectKey, Vec<Diagnostic>>,
    /// Diagnostics that point at no resource.
    pub unattributed: Vec<Diagnostic>,
    /// Every diagnostic rendered like `sluice policy check` (for the log and `sluice status`).
    pub rendered: String,
    /// How many errors.
    pub errors: usize,
}

/// Loads `documents` (by key) as one policy set.
pub fn evaluate(documents: &BTreeMap<ObjectKey, Value>) -> Evaluation {
    let files: Vec<SourceFile> = documents.iter().map(|(k, d)| source(k, d)).collect();
    let by_file: HashMap<String, &ObjectKey> = documents.keys().map(|k| (k.file(), k)).collect();
    let (set, diagnostics, sources) = match PolicySet::from_sources(&files) {
        Ok(set) => {
            let warnings = set.warnings.clone();
            let sources = set.sources.clone();
            (Some(set), warnings, sources)
        }
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => (None, diagnostics, sources),
        // Synthetic files are never read from disk.
        Err(LoadError::Read(e)) => (
            None,
            vec![Diagnostic::error("read", e.to_string())],
            HashMap::new(),
        ),
    };
    let mut by_key: BTreeMap<ObjectKey, Vec<Diagnostic>> = BTreeMap::new();
    let mut unattributed = Vec::new();
    for d in &diagnostics {
        let key = d
            .location
            .as_ref()
            .and_then(|l| by_file.get(&l.file.display().to_string()));
        match key {
            Some(k) => by_key.entry((*k).clone()).or_default().push(d.clone()),
            None => unattributed.push(d.clone()),
        }
    }
    let rendered = diagnostics
        .iter()
        .map(|d| {
            sluice_policy::diagnostic::render(
                d,
                &sources,
                sluice_policy::diagnostic::Style::plain(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Evaluation {
        errors: diagnostics.iter().filter(|d| d.is_error()).count(),
        set,
        diagnostics: by_key,
        unattributed,
        rendered,
    }
}

/// The largest valid set that keeps every accepted change: starting from `current`, a
/// resource with errors is replaced by its last accepted version (`last_good`) or, if it has
/// none, left out, until the set is valid. One team's broken resource thus never holds up
/// another team's change, and never takes away what was in force. Returns the set and the
/// documents it was built from.
pub fn best_valid(
    current: &BTreeMap<ObjectKey, Value>,
    last_good: &BTreeMap<ObjectKey, Value>,
) -> Option<(PolicySet, BTreeMap<ObjectKey, Value>)> {
    let mut docs = current.clone();
    let mut replaced: std::collections::BTreeSet<ObjectKey> = Default::default();
    // Each round replaces or drops at least one resource, so this ends.
    for _ in 0..=current.len() + 1 {
        let evaluation = evaluate(&docs);
        if let Some(set) = evaluation.set {
            return Some((set, docs));
        }
        let broken: Vec<ObjectKey> = evaluation
            .diagnostics
            .iter()
            .filter(|(_, ds)| ds.iter().any(Diagnostic::is_error))
            .map(|(k, _)| k.clone())
            .collect();
        if broken.is_empty() {
            return None;
        }
        for key in broken {
            match last_good.get(&key) {
                Some(good) if replaced.insert(key.clone()) => {
                    docs.insert(key, good.clone());
                }
                _ => {
                    docs.remove(&key);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, ns: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": kind,
            "metadata": {
                "name": name, "namespace": ns, "uid": "1234", "resourceVersion": "7",
                "generation": 2, "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [],
            },
            "spec": spec,
            "status": {"conditions": []},
        })
    }

    fn docs(objects: &[(Kind, Value)]) -> BTreeMap<ObjectKey, Value> {
        objects
            .iter()
            .map(|(kind, o)| {
                let key = ObjectKey::of(*kind, o).expect("key");
                let doc = document(&key, o);
                (key, doc)
            })
            .collect()
    }

    #[test]
    fn kubernetes_bookkeeping_does_not_reach_the_policy() {
        let team = object("Team", "default", "payments", json!({}));
        let evaluation = evaluate(&docs(&[(Kind::Team, team)]));
        let set = evaluation.set.expect("valid");
        let file = PolicySet::from_str(
            "t.yaml",
            "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: payments }\nspec: {}\n",
        )
        .expect("valid");
        assert_eq!(set.version(), file.version());
    }

    #[test]
    fn diagnostics_belong_to_their_object_and_name_the_field_and_fix() {
        let good = object("Team", "shop", "payments", json!({}));
        let bad = object(
            "AccessPolicy",
            "shop",
            "callers",
            json!({"service": "payments", "rules": [{"from": ["x"], "alow": ["GET /"], "reason": "r"}]}),
        );
        let evaluation = evaluate(&docs(&[(Kind::Team, good), (Kind::AccessPolicy, bad)]));
        assert!(evaluation.set.is_none());
        let key = ObjectKey {
            kind: Kind::AccessPolicy,
            namespace: "shop".into(),
            name: "callers".into(),
        };
        let lines: Vec<String> = evaluation.diagnostics[&key].iter().map(line).collect();
        assert_eq!(
            lines[0], "spec.rules[0].alow: unknown field `alow`; did you mean `allow`?",
            "{lines:?}"
        );
        assert_eq!(evaluation.diagnostics.len(), 1, "the team is fine");
    }

    #[test]
    fn a_broken_resource_keeps_its_last_good_version_and_a_new_one_is_left_out() {
        let team = |review: &str| object("Team", "default", "payments", json!({"review": review}));
        let last_good = docs(&[(Kind::Team, team("optional"))]);
        let extra = object("Team", "default", "other", json!({"bogus": 1}));
        let current = docs(&[(Kind::Team, team("sometimes")), (Kind::Team, extra)]);
        let (set, used) = best_valid(&current, &last_good).expect("a valid subset");
        assert_eq!(set.teams.len(), 1);
        assert_eq!(used, last_good);
    }
}
