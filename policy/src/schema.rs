//! JSON Schema for policy files, generated from the same Rust types that parse them.
//!
//! Editors use it to complete field names, show each field's documentation on hover and flag
//! mistakes as you type, before `sluice policy check` ever runs. Because it is derived from the
//! spec structs in [`crate::resources`] (their doc comments become the `description`s), it
//! cannot disagree with the parser about which fields exist or what they mean.
//!
//! Two shapes are offered:
//!
//! - [`schema_for`]: one document of one kind, with `apiVersion` and `kind` pinned by `const`.
//! - [`all`]: any document of any kind (`oneOf` the above), for files that mix kinds. Point
//!   [yaml-language-server](https://github.com/redhat-developer/yaml-language-server) at it
//!   with a modeline: `# yaml-language-server: $schema=<path>/all.json`.
//!
//! The schemas use draft-07, the draft that editors support best. The committed copies live in
//! `deploy/schema/` and are regenerated with `sluice policy schema --out deploy/schema`; a test
//! fails if they drift from the types.
//!
//! The schema describes what one document may contain. Checks that need the whole set
//! (dangling references, duplicate names, weights that must add up to 100) are beyond any
//! schema and remain `sluice policy check`'s job.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::resources::{
    API_VERSION, AccessPolicySpec, CanaryPolicySpec, Document, Kind, MeshServiceSpec, MeshSpec,
    RouteSpec, TeamSpec,
};

/// The `$schema` every generated schema declares.
pub const DRAFT: &str = "http://json-schema.org/draft-07/schema#";

/// The file name `sluice policy schema --out` writes a kind's schema to, e.g.
/// `access-policy.json`.
pub fn file_name(kind: Kind) -> String {
    let mut name = String::new();
    for (i, c) in kind.as_str().char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('-');
        }
        name.push(c.to_ascii_lowercase());
    }
    name.push_str(".json");
    name
}

/// The file name of the combined schema, [`all`].
pub const ALL_FILE_NAME: &str = "all.json";

/// The schema of one document of `kind`: the envelope (`apiVersion`, `kind`, `metadata`) around
/// that kind's `spec`, with `apiVersion` and `kind` constrained to their only valid values.
pub fn schema_for(kind: Kind) -> Value {
    let mut generator = generator();
    let reference = document_subschema(&mut generator, kind);
    let definitions = take_definitions(&mut generator);
    let Some(name) = ref_name(&reference) else {
        // schemars always references named structs; anything else is inlined as is.
        return reference;
    };
    let mut definitions = definitions;
    let Some(Value::Object(mut root)) = definitions.remove(&name) else {
        return Value::Null;
    };
    root.insert("$schema".into(), Value::String(DRAFT.into()));
    root.insert(
        "title".into(),
        Value::String(format!("Sluice {kind} ({API_VERSION})")),
    );
    if !definitions.is_empty() {
        root.insert("definitions".into(), Value::Object(definitions));
    }
    Value::Object(root)
}

/// One schema accepting a document of any kind: `oneOf` the per-kind schemas, each selected by
/// its `kind` constant. This is the one to give an editor.
pub fn all() -> Value {
    let mut generator = generator();
    let variants: Vec<Value> = Kind::ALL
        .into_iter()
        .map(|kind| document_subschema(&mut generator, kind))
        .collect();
    let definitions = take_definitions(&mut generator);
    json!({
        "$schema": DRAFT,
        "title": format!("Sluice policy document ({API_VERSION})"),
        "description": "One document of a Sluice policy file. Policy files are YAML with one or \
                        more documents separated by `---`; `kind` says which resource each is.",
        "oneOf": variants,
        "definitions": definitions,
    })
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft07().into_generator()
}

/// Adds `Document<Spec>` for `kind` to the generator's definitions, pins its `kind` and
/// `apiVersion`, and returns the `$ref` to it.
fn document_subschema(generator: &mut SchemaGenerator, kind: Kind) -> Value {
    let reference = match kind {
        Kind::Mesh => generator.subschema_for::<Document<MeshSpec>>(),
        Kind::Team => generator.subschema_for::<Document<TeamSpec>>(),
        Kind::MeshService => generator.subschema_for::<Document<MeshServiceSpec>>(),
        Kind::AccessPolicy => generator.subschema_for::<Document<AccessPolicySpec>>(),
        Kind::Route => generator.subschema_for::<Document<RouteSpec>>(),
        Kind::CanaryPolicy => generator.subschema_for::<Document<CanaryPolicySpec>>(),
    };
    let reference = reference.to_value();
    let Some(generated_name) = ref_name(&reference) else {
        return reference;
    };
    // schemars names the instances of the generic envelope `Document`, `Document2`, …; an
    // editor shows these names, so they are renamed after the kind.
    let definitions = generator.definitions_mut();
    let Some(Value::Object(mut document)) = definitions.remove(&generated_name) else {
        return reference;
    };
    pin_envelope(&mut document, kind);
    definitions.insert(kind.as_str().to_owned(), Value::Object(document));
    json!({ "$ref": format!("#/definitions/{}", kind.as_str()) })
}

/// The Rust type says `kind: String` (one envelope type serves every kind), so the schema would
/// accept any kind with any spec. Pinning `kind` per document is what lets an editor pick the
/// right spec schema, and report `kind: AccesPolicy` as the typo it is.
fn pin_envelope(document: &mut Map<String, Value>, kind: Kind) {
    if let Some(Value::Object(properties)) = document.get_mut("properties") {
        properties.insert(
            "apiVersion".into(),
            json!({
                "description": format!("Always `{API_VERSION}`."),
                "const": API_VERSION,
            }),
        );
        properties.insert(
            "kind".into(),
            json!({
                "description": kind_description(kind),
                "const": kind.as_str(),
            }),
        );
    }
    document.insert("title".into(), Value::String(kind.as_str().to_owned()));
    document.insert(
        "description".into(),
        Value::String(kind_description(kind).to_owned()),
    );
}

fn kind_description(kind: Kind) -> &'static str {
    match kind {
        Kind::Mesh => "Mesh-wide settings: trust domain, the denial link, the default policy.",
        Kind::Team => "A team: its members, notification channels, and how it reviews access.",
        Kind::MeshService => "A service in the mesh: owner, security level, ports and endpoints.",
        Kind::AccessPolicy => "Which callers may call which endpoints of a service.",
        Kind::Route => "Traffic rules for a service: version weights and request matches.",
        Kind::CanaryPolicy => "How new versions of a service roll out, and how they are judged.",
    }
}

fn take_definitions(generator: &mut SchemaGenerator) -> Map<String, Value> {
    std::mem::take(generator.definitions_mut())
}

/// `Foo` from `{"$ref": "#/definitions/Foo"}`.
fn ref_name(schema: &Value) -> Option<String> {
    schema
        .get("$ref")?
        .as_str()?
        .rsplit('/')
        .next()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object property anywhere in `schema`, as (path, property schema).
    fn properties(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        match schema {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    for (name, prop) in props {
                        out.push((format!("{path}.{name}"), prop.clone()));
                    }
                }
                for (key, value) in map {
                    properties(value, &format!("{path}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    properties(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_field_has_a_description() {
        for schema in Kind::ALL.map(schema_for).into_iter().chain([all()]) {
            let mut props = Vec::new();
            properties(&schema, "", &mut props);
            assert!(props.len() > 5, "too few properties found: {props:?}");
            for (path, prop) in props {
                assert!(
                    prop.get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|d| !d.trim().is_empty()),
                    "{path} has no description; document the field in its Rust doc comment"
                );
            }
        }
    }

    #[test]
    fn kind_and_api_version_are_pinned() {
        for kind in Kind::ALL {
            let schema = schema_for(kind);
            assert_eq!(schema["$schema"], DRAFT);
            assert_eq!(schema["properties"]["kind"]["const"], kind.as_str());
            assert_eq!(schema["properties"]["apiVersion"]["const"], API_VERSION);
            assert_eq!(schema["additionalProperties"], false, "{kind}");
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            for field in ["apiVersion", "kind", "metadata", "spec"] {
                assert!(required.contains(&json!(field)), "{kind}: {field}");
            }
        }
    }

    #[test]
    fn combined_schema_offers_one_variant_per_kind() {
        let schema = all();
        let variants = schema["oneOf"].as_array().cloned().unwrap_or_default();
        assert_eq!(variants.len(), Kind::ALL.len());
        let mut kinds = Vec::new();
        for variant in &variants {
            let name = ref_name(variant).expect("variants are references");
            let definition = &schema["definitions"][&name];
            kinds.push(definition["properties"]["kind"]["const"].clone());
        }
        assert_eq!(kinds, Kind::ALL.map(|k| json!(k.as_str())).to_vec());
    }

    #[test]
    fn file_names_are_kebab_case() {
        assert_eq!(file_name(Kind::AccessPolicy), "access-policy.json");
        assert_eq!(file_name(Kind::Mesh), "mesh.json");
        assert_eq!(file_name(Kind::MeshService), "mesh-service.json");
    }
}
