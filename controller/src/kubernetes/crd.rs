//! The six kinds as CustomResourceDefinitions, generated from the same Rust types that parse
//! policy files.
//!
//! Why not kube's `CustomResource` derive on the spec structs: the derive lives on the structs,
//! so `sluice-policy` (the pure model the proxy also links) would need kube behind a feature,
//! and cargo unifies features across a workspace build, so the proxy would be compiled against
//! it too. And the controller never wants the derive's typed objects: it reads every custom
//! resource as JSON through the policy loader, because that is what gives the same
//! diagnostics as a file (field paths, did-you-mean) for an object that is wrong. So the CRD is
//! built here from the schemars schema of the same spec structs; a test fails when the
//! committed YAML (`deploy/crds/`, the chart's `crds/`) drifts from the types.
//!
//! The schemas are made structural (what `apiextensions.k8s.io/v1` requires) by rewriting the
//! schemars output: everything inlined (no `$ref`), `const`/`oneOf` enums become `enum`,
//! `Option` becomes `nullable`, formats Kubernetes does not know are dropped, and defaults are
//! left out so a stored object is exactly what was applied. `additionalProperties: false`
//! (serde's `deny_unknown_fields`) cannot be said in a structural schema; those objects get
//! `x-kubernetes-preserve-unknown-fields: true` instead, so the API server does not silently
//! prune a misspelt field: it reaches the admission webhook, which refuses it with the same
//! "unknown field `alow`; did you mean `allow`?" as `sluice policy check`.
//!
//! For the same reason the schema keeps the structure and the types but not the value checks
//! (`required`, `enum`, bounds, patterns): the API server runs those before any webhook, and
//! would refuse `alow` as "spec.rules.allow: Required value" and `mode: enforc` without a
//! suggestion. The allowed values are in the descriptions (`kubectl explain`); the webhook and
//! the controller check them with the policy loader, field path and fix included.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use sluice_policy::resources::{
    AccessPolicySpec, CanaryPolicySpec, Kind, MeshServiceSpec, MeshSpec, RouteSpec, TeamSpec,
};

use super::status::ResourceStatus;

/// The API group of every Sluice kind.
pub const GROUP: &str = "sluice.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// What Kubernetes calls a kind: its names and scope.
#[derive(Clone, Copy, Debug)]
pub struct KindNames {
    /// The policy kind.
    pub kind: Kind,
    /// The resource (URL) name, e.g. `accesspolicies`.
    pub plural: &'static str,
    /// `kubectl get` short names.
    pub short_names: &'static [&'static str],
    /// Namespaced, or cluster-wide (the Mesh: one per cluster).
    pub namespaced: bool,
}

/// The six kinds, in documentation order.
pub const KINDS: [KindNames; 6] = [
    KindNames {
        kind: Kind::Mesh,
        plural: "meshes",
        short_names: &[],
        namespaced: false,
    },
    KindNames {
        kind: Kind::Team,
        plural: "teams",
        short_names: &[],
        namespaced: true,
    },
    KindNames {
        kind: Kind::MeshService,
        plural: "meshservices",
        short_names: &["msvc"],
        namespaced: true,
    },
    KindNames {
        kind: Kind::AccessPolicy,
        plural: "accesspolicies",
        short_names: &["ap"],
        namespaced: true,
    },
    KindNames {
        kind: Kind::Route,
        plural: "routes",
        short_names: &["sroute"],
        namespaced: true,
    },
    KindNames {
        kind: Kind::CanaryPolicy,
        plural: "canarypolicies",
        short_names: &["canary"],
        namespaced: true,
    },
];

impl KindNames {
    /// The names of `kind`.
    pub fn of(kind: Kind) -> KindNames {
        KINDS[Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
    }

    /// `accesspolicies.sluice.dev`.
    pub fn crd_name(&self) -> String {
        format!("{}.{GROUP}", self.plural)
    }

    /// `accesspolicy`.
    pub fn singular(&self) -> String {
        self.kind.as_str().to_ascii_lowercase()
    }

    /// `accesspolicy.yaml`, the file `sluice kubernetes crds --out` writes.
    pub fn file_name(&self) -> String {
        format!("{}.yaml", self.singular())
    }
}

/// The CustomResourceDefinition of `kind`, as JSON.
pub fn crd(kind: Kind) -> Value {
    let names = KindNames::of(kind);
    let spec = structural(spec_schema(kind));
    let status = structural(schema_of::<ResourceStatus>());
    let description = sluice_policy::schema::schema_for(kind)
        .get("description")
        .cloned()
        .unwrap_or(Value::Null);
    let mut columns = Vec::new();
    let mut column = |name: &str, ty: &str, path: &str, description: &str, priority: u32| {
        let mut c =
            json!({ "name": name, "type": ty, "jsonPath": path, "description": description });
        if priority > 0 {
            c["priority"] = json!(priority);
        }
        columns.push(c);
    };
    match kind {
        Kind::Mesh => {
            column(
                "Trust Domain",
                "string",
                ".spec.trustDomain",
                "The SPIFFE trust domain.",
                0,
            );
            column(
                "Default",
                "string",
                ".spec.defaultPolicy",
                "What calls to services without an AccessPolicy get.",
                0,
            );
        }
        Kind::Team => {
            column(
                "Review",
                "string",
                ".spec.review",
                "Whether access grants need review.",
                0,
            );
        }
        Kind::MeshService => {
            column("Team", "string", ".spec.team", "The owning team.", 0);
            column(
                "Security",
                "string",
                ".spec.security",
                "open or restricted.",
                0,
            );
            column(
                "Instances",
                "integer",
                ".status.instances",
                "Ready pods behind the Service of the same name.",
                0,
            );
        }
        Kind::AccessPolicy => {
            column("Service", "string", ".spec.service", "The callee.", 0);
            column("Mode", "string", ".spec.mode", "enforce or audit.", 0);
        }
        Kind::Route => {
            column(
                "Service",
                "string",
                ".spec.service",
                "The service whose traffic this routes.",
                0,
            );
        }
        Kind::CanaryPolicy => {
            column(
                "Service",
                "string",
                ".spec.service",
                "The service this policy rolls out.",
                0,
            );
            column(
                "Steps",
                "string",
                ".status.steps",
                "The canary weights, in order.",
                0,
            );
            column(
                "Phase",
                "string",
                ".status.phase",
                "The service's current rollout phase.",
                0,
            );
        }
    }
    column(
        "Valid",
        "string",
        ".status.conditions[?(@.type==\"Valid\")].status",
        "Whether the controller accepted the resource (see the condition's message).",
        0,
    );
    column("Age", "date", ".metadata.creationTimestamp", "", 0);
    column(
        "Message",
        "string",
        ".status.conditions[?(@.type==\"Valid\")].message",
        "What is wrong, with the field path and the fix.",
        1,
    );
    for c in &mut columns {
        if c["description"] == "" {
            c.as_object_mut().map(|m| m.remove("description"));
        }
    }
    let mut names_json = json!({
        "kind": kind.as_str(),
        "listKind": format!("{}List", kind.as_str()),
        "plural": names.plural,
        "singular": names.singular(),
        "categories": ["sluice"],
    });
    if !names.short_names.is_empty() {
        names_json["shortNames"] = json!(names.short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.crd_name(),
            "labels": { "app.kubernetes.io/part-of": "sluice" },
        },
        "spec": {
            "group": GROUP,
            "names": names_json,
            "scope": if names.namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "additionalPrinterColumns": columns,
                "schema": {
                    "openAPIV3Schema": {
                        "description": description,
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": { "type": "string" },
                            "kind": { "type": "string" },
                            "metadata": { "type": "object" },
                            "spec": spec,
                            "status": status,
                        },
                    }
                },
            }],
        },
    })
}

/// Every CRD, in documentation order.
pub fn crds() -> Vec<Value> {
    Kind::ALL.into_iter().map(crd).collect()
}

/// A CRD as the YAML committed under `deploy/`, with a header saying where it comes from.
pub fn to_yaml(crd: &Value) -> String {
    let mut out = String::from(
        "# Generated by `sluice kubernetes crds --out deploy/crds` from the Rust types in\n\
         # policy/src/resources/. Do not edit: change the types and regenerate.\n",
    );
    let yaml = json_to_yaml(crd);
    let mut text = String::new();
    let mut emitter = saphyr::YamlEmitter::new(&mut text);
    emitter.multiline(true);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&yaml);
    // Blank lines inside block scalars come indented; YAML reads them the same without.
    for line in text.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn json_to_yaml(value: &Value) -> saphyr::Yaml<'static> {
    use saphyr::{Scalar, Yaml};
    match value {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or(0.0).into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(s.clone().into())),
        Value::Array(items) => Yaml::Sequence(items.iter().map(json_to_yaml).collect()),
        Value::Object(map) => {
            let mut m = saphyr::Mapping::new();
            for (k, v) in map {
                m.insert(
                    Yaml::Value(Scalar::String(k.clone().into())),
                    json_to_yaml(v),
                );
            }
            Yaml::Mapping(m)
        }
    }
}

fn spec_schema(kind: Kind) -> Value {
    match kind {
        Kind::Mesh => schema_of::<MeshSpec>(),
        Kind::Team => schema_of::<TeamSpec>(),
        Kind::MeshService => schema_of::<MeshServiceSpec>(),
        Kind::AccessPolicy => schema_of::<AccessPolicySpec>(),
        Kind::Route => schema_of::<RouteSpec>(),
        Kind::CanaryPolicy => schema_of::<CanaryPolicySpec>(),
    }
}

/// OpenAPI 3 flavoured, with every subschema inlined (structural schemas have no `$ref`).
fn schema_of<T: JsonSchema>() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The formats the API server validates; others are dropped rather than sent.
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "uri",
    "email",
];

/// Rewrites a schemars schema into a structural one (see the module docs).
pub fn structural(schema: Value) -> Value {
    let Value::Object(mut map) = schema else {
        return schema;
    };
    for key in [
        "$schema",
        "title",
        "default",
        "examples",
        "example",
        "definitions",
        "$defs",
        "components",
        // Value checks: the loader's, see the module docs.
        "required",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "pattern",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "uniqueItems",
    ] {
        map.remove(key);
    }
    // `type: [string, null]` (draft-07 style) → `type: string, nullable: true`.
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let non_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if non_null.len() < types.len() {
            map.insert("nullable".into(), Value::Bool(true));
        }
        if let [one] = non_null.as_slice() {
            map.insert("type".into(), one.clone());
        }
    }
    // An enum whose variants carry docs comes as `oneOf` single-value schemas.
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = map.get(key).cloned()
            && let Some(docs) = enum_variants(&variants)
        {
            {
                map.remove(key);
                map.insert("type".into(), json!("string"));
                let mut description = map
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                for (value, doc) in docs {
                    if !description.is_empty() {
                        description.push('\n');
                    }
                    description.push_str(format!("`{value}`: {doc}").trim_end_matches(": "));
                }
                if !description.is_empty() {
                    map.insert("description".into(), Value::String(description));
                }
            }
        }
    }
    if let Some(Value::Array(values)) = map.remove("enum") {
        let listed: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect();
        let mut description = map
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !description.is_empty() {
            description.push('\n');
        }
        description.push_str(&format!("One of {}.", listed.join(", ")));
        map.insert("description".into(), Value::String(description));
    }
    if let Some(Value::String(format)) = map.get("format")
        && !KNOWN_FORMATS.contains(&format.as_str())
    {
        map.remove("format");
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
        map.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            Value::Bool(true),
        );
    }
    if map.get("properties").is_some() && !map.contains_key("type") {
        map.insert("type".into(), json!("object"));
    }
    // Recurse into every subschema position.
    let mut out = Map::new();
    for (key, value) in map {
        let value = match key.as_str() {
            "properties" => match value {
                Value::Object(props) => {
                    Value::Object(props.into_iter().map(|(k, v)| (k, structural(v))).collect())
                }
                other => other,
            },
            "items" | "additionalProperties" if value.is_object() => structural(value),
            _ => value,
        };
        out.insert(key, value);
    }
    Value::Object(out)
}

/// `[{enum: [a], description}, …]` or `[{const: a, …}, …]` → each value and its doc.
fn enum_variants(variants: &[Value]) -> Option<Vec<(String, String)>> {
    let mut docs = Vec::new();
    for v in variants {
        let value = match (v.get("const"), v.get("enum")) {
            (Some(c), _) => c.clone(),
            (None, Some(Value::Array(one))) if one.len() == 1 => one[0].clone(),
            _ => return None,
        };
        let text = value.as_str()?.to_owned();
        docs.push((
            text,
            v.get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    Some(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node anywhere in `schema` with the JSON pointer to it.
    fn nodes<'a>(schema: &'a Value, path: String, out: &mut Vec<(String, &'a Map<String, Value>)>) {
        if let Value::Object(map) = schema {
            out.push((path.clone(), map));
            if let Some(Value::Object(props)) = map.get("properties") {
                for (k, v) in props {
                    nodes(v, format!("{path}.{k}"), out);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(v) = map.get(key) {
                    nodes(v, format!("{path}/{key}"), out);
                }
            }
        }
    }

    #[test]
    fn schemas_follow_the_structural_rules() {
        for kind in Kind::ALL {
            let crd = crd(kind);
            let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut all = Vec::new();
            nodes(root, String::new(), &mut all);
            assert!(all.len() > 5, "{kind}");
            for (path, node) in all {
                for banned in [
                    "$ref",
                    "const",
                    "oneOf",
                    "anyOf",
                    "allOf",
                    "definitions",
                    "default",
                    "required",
                    "enum",
                    "minimum",
                    "maximum",
                    "pattern",
                ] {
                    // The root requires `spec`; value checks below it are the loader's.
                    if !(path.is_empty() && banned == "required") {
                        assert!(!node.contains_key(banned), "{kind}{path} has {banned}");
                    }
                }
                let preserves =
                    node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
                assert!(
                    node.get("type").is_some_and(Value::is_string) || preserves,
                    "{kind}{path} needs a single type: {node:?}"
                );
                assert!(
                    !(node.contains_key("properties")
                        && node.get("additionalProperties").is_some()),
                    "{kind}{path}: properties and additionalProperties are exclusive"
                );
            }
        }
    }

    /// The committed CRDs (`deploy/crds/`, and the chart's copy) are what the types generate.
    #[test]
    fn committed_crds_match_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["deploy/crds", "deploy/helm/sluice/crds"] {
            for kind in Kind::ALL {
                let file = root.join(dir).join(KindNames::of(kind).file_name());
                let committed = std::fs::read_to_string(&file).unwrap_or_default();
                assert!(
                    committed == to_yaml(&crd(kind)),
                    "{} is out of date: run `cargo run -p sluice-controller -- kubernetes crds \
                     --out deploy/crds && cp deploy/crds/*.yaml deploy/helm/sluice/crds/`",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn enums_are_documented_and_checked_by_the_loader_not_the_schema() {
        let crd = crd(Kind::AccessPolicy);
        let mode = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["mode"];
        assert_eq!(mode["type"], "string", "{mode}");
        let description = mode["description"].as_str().unwrap_or_default();
        assert!(
            description.contains("`enforce`: Deny what no rule allows."),
            "{mode}"
        );
        assert!(description.contains("`audit`: "), "{mode}");
    }
}
