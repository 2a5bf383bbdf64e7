//! The JSON Schema in `deploy/schema/` is what editors load, so it must (1) be exactly what the
//! types generate today and (2) accept the policies Sluice accepts.

use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, ScalarOwned, YamlOwned};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller crate sits in the workspace root")
        .to_path_buf()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_schema_is_up_to_date() {
    let fresh = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["policy", "schema", "--out"])
        .arg(fresh.path())
        .status()
        .expect("run sluice");
    assert!(status.success());
    let committed_dir = repo_root().join("deploy/schema");
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let fix = "regenerate it with `cargo run -p sluice-controller -- policy schema --out deploy/schema` \
               and commit the result";
    assert_eq!(
        names(&committed_dir),
        names(fresh.path()),
        "deploy/schema/ has other files than the generator writes; {fix}"
    );
    for name in names(fresh.path()) {
        let generated = std::fs::read_to_string(fresh.path().join(&name)).expect("generated");
        let committed = std::fs::read_to_string(committed_dir.join(&name)).expect("committed");
        assert!(
            generated == committed,
            "deploy/schema/{name} is out of date with the Rust types; {fix}"
        );
    }
}

/// YAML to JSON the plain way, as an editor's YAML language server sees a document.
fn to_json(node: &YamlOwned) -> Value {
    match node {
        YamlOwned::Value(ScalarOwned::Null) => Value::Null,
        YamlOwned::Value(ScalarOwned::Boolean(b)) => Value::Bool(*b),
        YamlOwned::Value(ScalarOwned::Integer(i)) => Value::from(*i),
        YamlOwned::Value(ScalarOwned::FloatingPoint(f)) => {
            serde_json::Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        YamlOwned::Value(ScalarOwned::String(s)) => Value::String(s.clone()),
        YamlOwned::Representation(s, _, _) => Value::String(s.clone()),
        YamlOwned::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        YamlOwned::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        YamlOwned::Tagged(_, inner) => to_json(inner),
        YamlOwned::Alias(_) | YamlOwned::BadValue => Value::Null,
    }
}

/// Every document of every policy file under `dir`, with where it came from.
fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("read");
                let docs = YamlOwned::load_from_str(&text).expect("YAML syntax");
                for (i, doc) in docs.iter().enumerate() {
                    out.push((format!("{}#{i}", path.display()), to_json(doc)));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn schema_accepts_every_example_document() {
    let schema = read_json(&repo_root().join("deploy/schema/all.json"));
    let validator = jsonschema::validator_for(&schema).expect("the schema is itself valid");
    let docs = documents(&repo_root().join("examples/shop/policy"));
    assert!(
        docs.len() >= 10,
        "expected the whole shop, found {}",
        docs.len()
    );
    for (name, doc) in &docs {
        let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name} fails the schema: {errors:#?}");
    }
}

#[test]
fn per_kind_schemas_accept_their_kind_only() {
    let docs = documents(&repo_root().join("examples/shop/policy"));
    for kind in sluice_policy::resources::Kind::ALL {
        let schema = read_json(
            &repo_root()
                .join("deploy/schema")
                .join(sluice_policy::schema::file_name(kind)),
        );
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        for (name, doc) in &docs {
            let same_kind = doc["kind"] == kind.as_str();
            assert_eq!(
                validator.is_valid(doc),
                same_kind,
                "{name} against the {kind} schema"
            );
        }
    }
}

#[test]
fn schema_catches_the_typos_an_editor_should_underline() {
    let schema = read_json(&repo_root().join("deploy/schema/all.json"));
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let docs = documents(&repo_root().join("examples/invalid"));
    let rejected: Vec<&str> = docs
        .iter()
        .filter(|(_, doc)| !validator.is_valid(doc))
        .map(|(name, _)| name.as_str())
        .collect();
    // `alow:` (unknown field) and `security: restriced` (unknown value) are per-document
    // mistakes a schema can see; dangling references and weights need `sluice policy check`.
    assert!(
        rejected.iter().any(|n| n.contains("payments/access.yaml")),
        "{rejected:?}"
    );
    assert!(
        rejected.iter().any(|n| n.contains("payments/service.yaml")),
        "{rejected:?}"
    );
}
