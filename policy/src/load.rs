//! Reading policy files: YAML text to typed [`Resource`]s, remembering where every field was
//! written so that later checks can point at it.
//!
//! YAML is parsed by `saphyr` into a tree that carries positions; the tree is turned into JSON
//! values (recording each field's position by its path, e.g. `spec.rules[0].from[1]`) and then
//! deserialised into the typed documents with serde. Type errors thus come back with the same
//! path, which is looked up to give file:line:col.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, Location, did_you_mean};
use crate::resources::{API_VERSION, Document, Kind, Resource};

pub mod bounded;
pub mod dir;

pub use bounded::{Budget, MAX_DEPTH, MAX_EXPANDED_BYTES};
pub use dir::{MAX_FILE_BYTES, MAX_TOTAL_BYTES, PolicySources, read_policy_dir};

/// Where each field of one document was written.
#[derive(Clone, Debug, Default)]
pub struct SpanIndex {
    file: Option<Arc<Path>>,
    /// Position of each value, by field path.
    values: HashMap<String, (usize, usize)>,
    /// Position of each mapping key, by the path of the field it names.
    keys: HashMap<String, (usize, usize)>,
}

impl SpanIndex {
    /// Where the value at `path` starts, falling back to the closest enclosing field that has a
    /// position (a missing field points at its parent).
    pub fn value(&self, path: &str) -> Option<Location> {
        self.lookup(&self.values, path)
    }

    /// Where the key naming the field at `path` starts (for "unknown field" and friends),
    /// falling back like [`SpanIndex::value`].
    pub fn key(&self, path: &str) -> Option<Location> {
        self.keys
            .get(path)
            .map(|&(l, c)| self.location(l, c))
            .or_else(|| self.value(path))
    }

    fn lookup(&self, map: &HashMap<String, (usize, usize)>, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(&(l, c)) = map.get(p) {
                return Some(self.location(l, c));
            }
            if p.is_empty() {
                return None;
            }
            p = parent_path(p);
        }
    }

    fn location(&self, line: usize, column: usize) -> Location {
        Location {
            file: self
                .file
                .clone()
                .unwrap_or_else(|| Arc::from(Path::new("<input>"))),
            line,
            column,
        }
    }
}

/// The path of the field that contains `path`: `a.b[2]` → `a.b`, `a.b` → `a`, `a` → ``.
fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// A resource as loaded, with where it came from.
#[derive(Clone, Debug)]
pub struct LoadedDocument {
    /// The typed resource.
    pub resource: Resource,
    /// The file it was read from.
    pub file: Arc<Path>,
    /// Its position in the file (0 for the first document).
    pub index: usize,
    /// Where its fields were written.
    pub spans: SpanIndex,
}

impl LoadedDocument {
    /// Where the value of field `path` was written.
    pub fn at(&self, path: &str) -> Option<Location> {
        self.spans.value(path)
    }
}

/// A policy file read from disk.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path, as it was found (relative to the current directory if the directory was).
    pub path: Arc<Path>,
    /// Its text.
    pub text: String,
}

/// Why a policy directory could not be read at all (as opposed to being invalid).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The directory could not be listed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path holds no `*.yaml` or `*.yml` file: almost always a wrong path, and an empty
    /// policy set would deny every call.
    #[error("{path} holds no policy files (*.yaml, *.yml)")]
    NoPolicyFiles {
        /// The path given.
        path: PathBuf,
    },
    /// Files were refused ([`read_sources`] only; [`read_policy_dir`] returns them as
    /// diagnostics).
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused {
        /// What was wrong, one per file.
        problems: Vec<Diagnostic>,
    },
}

/// Reads every policy file under `path` (see [`read_policy_dir`] for the rules), failing if any
/// file is refused. Skipped files (FIFOs, sockets) are left out silently: use
/// [`read_policy_dir`] to report them.
pub fn read_sources(path: &Path) -> Result<Vec<SourceFile>, ReadError> {
    let read = read_policy_dir(path)?;
    if read.has_errors() {
        return Err(ReadError::Refused {
            problems: read
                .diagnostics
                .into_iter()
                .filter(Diagnostic::is_error)
                .collect(),
        });
    }
    Ok(read.files)
}

/// Whether a path names a policy file.
pub fn is_policy_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// A document that names its kind and name but could not be read in full. Its name still
/// counts as declared, so that references to it do not cascade into more errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenDocument {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (`default` when unset).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What one file yielded.
#[derive(Clone, Debug, Default)]
pub struct ParsedFile {
    /// The documents that were read in full.
    pub documents: Vec<LoadedDocument>,
    /// Documents that were recognisable but broken.
    pub broken: Vec<BrokenDocument>,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses the documents of one file. Problems are collected, never fatal: a document with an
/// error is skipped and the others are still returned.
pub fn parse_file(file: &Arc<Path>, text: &str) -> ParsedFile {
    parse_file_within(file, text, &mut Budget::default())
}

/// [`parse_file`], charging the alias expansion to `budget` (shared by the files of a set).
pub fn parse_file_within(file: &Arc<Path>, text: &str, budget: &mut Budget) -> ParsedFile {
    let mut out = ParsedFile::default();
    let (docs, diags) = parse_documents(file, text, &mut out.broken, budget);
    out.documents = docs;
    out.diagnostics = diags;
    out
}

/// One YAML document as a JSON value, with where each of its fields was written.
#[derive(Clone, Debug)]
pub struct YamlDocument {
    /// The document's content.
    pub value: Value,
    /// Positions by field path (`workloads[0].port`).
    pub spans: SpanIndex,
}

/// Parses YAML text into one JSON value per document (empty documents are `null`), recording
/// every field's position. The policy loader builds on this, and so do the other YAML files
/// Sluice reads (the mesh file), so that all of them point at errors the same way. Alias
/// expansion and nesting are bounded ([`bounded`]).
pub fn parse_yaml(file: &Arc<Path>, text: &str) -> (Vec<YamlDocument>, Vec<Diagnostic>) {
    parse_yaml_within(file, text, &mut Budget::default())
}

fn parse_yaml_within(
    file: &Arc<Path>,
    text: &str,
    budget: &mut Budget,
) -> (Vec<YamlDocument>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let nodes = match bounded::load(text, budget) {
        Ok(nodes) => nodes,
        Err(failure) => {
            diags.push(load_failure(file, failure));
            return (Vec::new(), diags);
        }
    };
    let docs = nodes
        .iter()
        .map(|node| {
            let mut spans = SpanIndex {
                file: Some(file.clone()),
                ..SpanIndex::default()
            };
            let value = to_json(node, String::new(), &mut spans, &mut diags);
            YamlDocument { value, spans }
        })
        .collect();
    (docs, diags)
}

fn load_failure(file: &Arc<Path>, failure: bounded::LoadFailure) -> Diagnostic {
    use bounded::LoadFailure;
    let at = |m: saphyr::Marker| {
        Some(Location {
            file: file.clone(),
            line: m.line(),
            column: m.col() + 1,
        })
    };
    let mib = MAX_EXPANDED_BYTES / (1024 * 1024);
    match failure {
        LoadFailure::Syntax(e) => {
            Diagnostic::error("yaml-syntax", format!("invalid YAML: {}", e.info()))
                .at(at(*e.marker()))
                .help("check the indentation and quoting around this point")
        }
        LoadFailure::TooLarge { at: m, alias: true } => Diagnostic::error(
            "yaml-too-large",
            format!(
                "this alias expands the policy files beyond {mib} MiB; nothing was loaded from this file"
            ),
        )
        .at(at(m))
        .help(format!(
            "write the value out where it is needed instead of repeating a large anchor: \
             with every alias expanded, the policy files may hold at most {mib} MiB"
        )),
        LoadFailure::TooLarge { at: m, alias: false } => Diagnostic::error(
            "yaml-too-large",
            format!(
                "the policy files are larger than {mib} MiB once loaded (counting each value with its field path); nothing was loaded from this file"
            ),
        )
        .at(at(m))
        .help("policy files are normally a few KiB: look for very long keys or values, or split the set"),
        LoadFailure::TooDeep { at: m } => Diagnostic::error(
            "yaml-too-deep",
            format!("values nest deeper than {MAX_DEPTH} levels here"),
        )
        .at(at(m))
        .help("policy documents need only a few levels of nesting; flatten this value"),
    }
}

fn parse_documents(
    file: &Arc<Path>,
    text: &str,
    broken: &mut Vec<BrokenDocument>,
    budget: &mut Budget,
) -> (Vec<LoadedDocument>, Vec<Diagnostic>) {
    let (yaml, mut diags) = parse_yaml_within(file, text, budget);
    let mut docs = Vec::new();
    for (index, YamlDocument { value, spans }) in yaml.into_iter().enumerate() {
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let identity = broken_identity(&value);
        let before = diags.len();
        let resource = to_resource(value, &spans, &mut diags);
        if resource.is_none() && diags.len() > before {
            broken.extend(identity);
        }
        if let Some(resource) = resource {
            docs.push(LoadedDocument {
                resource,
                file: file.clone(),
                index,
                spans,
            });
        }
    }
    (docs, diags)
}

fn to_json(
    node: &MarkedYamlOwned,
    path: String,
    spans: &mut SpanIndex,
    diags: &mut Vec<Diagnostic>,
) -> Value {
    let start = node.span.start;
    spans
        .values
        .insert(path.clone(), (start.line(), start.col() + 1));
    match &node.data {
        YamlDataOwned::Value(scalar) => scalar_to_json(scalar),
        YamlDataOwned::Representation(s, _, _) => Value::String(s.clone()),
        YamlDataOwned::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, format!("{path}[{i}]"), spans, diags))
                .collect(),
        ),
        YamlDataOwned::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match &k.data {
                    YamlDataOwned::Value(ScalarOwned::String(s)) => s.clone(),
                    YamlDataOwned::Value(other) => match scalar_to_json(other) {
                        Value::String(s) => s,
                        v => v.to_string(),
                    },
                    _ => {
                        diags.push(
                            Diagnostic::error("yaml-key", "mapping keys must be plain text")
                                .at(spans.value(&path).map(|l| Location {
                                    line: k.span.start.line(),
                                    column: k.span.start.col() + 1,
                                    ..l
                                }))
                                .field(path.clone()),
                        );
                        continue;
                    }
                };
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                spans
                    .keys
                    .insert(child.clone(), (k.span.start.line(), k.span.start.col() + 1));
                let value = to_json(v, child, spans, diags);
                out.insert(key, value);
            }
            Value::Object(out)
        }
        YamlDataOwned::Tagged(_, inner) => to_json(inner, path, spans, diags),
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => Value::Null,
    }
}

fn broken_identity(value: &Value) -> Option<BrokenDocument> {
    let kind = Kind::parse(value.get("kind")?.as_str()?)?;
    let meta = value.get("metadata")?;
    Some(BrokenDocument {
        kind,
        namespace: meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(crate::resources::DEFAULT_NAMESPACE)
            .to_owned(),
        name: meta.get("name")?.as_str()?.to_owned(),
    })
}

fn scalar_to_json(s: &ScalarOwned) -> Value {
    match s {
        ScalarOwned::Null => Value::Null,
        ScalarOwned::Boolean(b) => Value::Bool(*b),
        ScalarOwned::Integer(i) => Value::from(*i),
        ScalarOwned::FloatingPoint(f) => {
            serde_json::Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        ScalarOwned::String(s) => Value::String(s.clone()),
    }
}

fn to_resource(value: Value, spans: &SpanIndex, diags: &mut Vec<Diagnostic>) -> Option<Resource> {
    let Value::Object(obj) = &value else {
        diags.push(
            Diagnostic::error("not-a-resource", "a document must be a mapping with `kind`")
                .at(spans.value(""))
                .help("start the document with `apiVersion: sluice.dev/v1alpha1` and `kind:`"),
        );
        return None;
    };
    let mut ok = true;
    match obj.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => {
            ok = false;
            diags.push(
                Diagnostic::error("api-version", format!("unsupported apiVersion {v}"))
                    .at(spans.value("apiVersion"))
                    .field("apiVersion")
                    .help(format!("use `apiVersion: {API_VERSION}`")),
            );
        }
        None => {
            ok = false;
            diags.push(
                Diagnostic::error("api-version", "missing `apiVersion`")
                    .at(spans.value(""))
                    .help(format!("add `apiVersion: {API_VERSION}`")),
            );
        }
    }
    let kind = match obj.get("kind") {
        Some(Value::String(k)) => match Kind::parse(k) {
            Some(kind) => Some(kind),
            None => {
                let names = Kind::ALL.map(Kind::as_str);
                let help = match did_you_mean(k, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("use one of {}", names.join(", ")),
                };
                diags.push(
                    Diagnostic::error("unknown-kind", format!("unknown kind `{k}`"))
                        .at(spans.value("kind"))
                        .field("kind")
                        .help(help),
                );
                None
            }
        },
        _ => {
            diags.push(
                Diagnostic::error("unknown-kind", "missing or non-text `kind`")
                    .at(spans.value("kind"))
                    .help(format!(
                        "add `kind:` with one of {}",
                        Kind::ALL.map(Kind::as_str).join(", ")
                    )),
            );
            None
        }
    };
    let kind = kind.filter(|_| ok)?;
    match kind {
        Kind::Mesh => typed(value, spans, diags).map(Resource::Mesh),
        Kind::Team => typed(value, spans, diags).map(Resource::Team),
        Kind::MeshService => typed(value, spans, diags).map(Resource::MeshService),
        Kind::AccessPolicy => typed(value, spans, diags).map(Resource::AccessPolicy),
        Kind::Route => typed(value, spans, diags).map(Resource::Route),
        Kind::CanaryPolicy => typed(value, spans, diags).map(Resource::CanaryPolicy),
    }
}

/// Deserialises one document, reporting every field error rather than only the first: after an
/// error the offending field is removed and the document is tried again. A "missing field" for
/// a field removed that way is not reported (it was already, as what was wrong with it).
fn typed<S: DeserializeOwned>(
    mut value: Value,
    spans: &SpanIndex,
    diags: &mut Vec<Diagnostic>,
) -> Option<Document<S>> {
    /// Enough for any real document; bounds the work on hostile input.
    const MAX_ERRORS_PER_DOCUMENT: usize = 32;
    let mut removed: Vec<String> = Vec::new();
    let mut reported = 0;
    while reported < MAX_ERRORS_PER_DOCUMENT {
        let err = match serde_path_to_error::deserialize::<_, Document<S>>(&value) {
            Ok(doc) if reported == 0 => return Some(doc),
            Ok(_) => return None,
            Err(e) => e,
        };
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = err.inner().to_string();
        let diagnostic = serde_diagnostic(&path, &message, spans);
        let already_reported = diagnostic.code == "missing-field"
            && diagnostic
                .field
                .as_ref()
                .is_some_and(|f| removed.contains(f));
        if already_reported {
            return None;
        }
        // "unknown field `alow`, did you mean `allow`?" already explains why `allow` is missing.
        if diagnostic.code == "unknown-field" {
            let suggested = diagnostic
                .help
                .as_deref()
                .and_then(|h| h.strip_prefix("did you mean `"))
                .and_then(|h| h.strip_suffix("`?"));
            if let Some(name) = suggested {
                let parent = parent_path(&path);
                removed.push(if parent.is_empty() {
                    name.to_owned()
                } else {
                    format!("{parent}.{name}")
                });
            }
        }
        diags.push(diagnostic);
        reported += 1;
        let segments: Vec<&serde_path_to_error::Segment> = err.path().iter().collect();
        if message.starts_with("missing field") || !remove_field(&mut value, &segments) {
            return None;
        }
        removed.push(path);
    }
    None
}

/// Removes the mapping entry at `path`; false if the path does not end in a mapping key.
fn remove_field(value: &mut Value, path: &[&serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        let next = match (seg, node) {
            (Segment::Map { key }, Value::Object(m)) => m.get_mut(key),
            (Segment::Seq { index }, Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Segment::Map { key }, Value::Object(m)) => m.remove(key).is_some(),
        _ => false,
    }
}

/// Turns a serde message into a diagnostic with a fix. serde's messages have a stable shape
/// (`unknown field `x`, expected one of `a`, `b``), which is what is parsed here.
fn serde_diagnostic(path: &str, msg: &str, spans: &SpanIndex) -> Diagnostic {
    let backticked = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let field_of = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let names = backticked(rest);
        let (unknown, expected) = names.split_first().map_or(("", &[][..]), |(u, e)| (u, e));
        let help = match did_you_mean(unknown, expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None if expected.is_empty() => "remove it: this mapping takes no fields".to_owned(),
            None => format!(
                "remove it, or use one of {}",
                expected
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        // serde_path_to_error's path already ends with the unknown key.
        let field = path.to_owned();
        return Diagnostic::error("unknown-field", format!("unknown field `{unknown}`"))
            .at(spans.key(&field))
            .field(field)
            .help(help);
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        let (unknown, expected) = names.split_first().map_or(("", &[][..]), |(u, e)| (u, e));
        let help = match did_you_mean(unknown, expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "use one of {}",
                expected
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Diagnostic::error("invalid-value", format!("`{unknown}` is not a valid value"))
            .at(spans.value(path))
            .field(path)
            .help(help);
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let name = backticked(rest).into_iter().next().unwrap_or_default();
        return Diagnostic::error("missing-field", format!("missing field `{name}`"))
            .at(spans.value(path))
            .field(field_of(&name))
            .help(format!("add `{name}:` here"));
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        return Diagnostic::error("invalid-type", format!("wrong type: {rest}"))
            .at(spans.value(path))
            .field(path);
    }
    let (message, help) = match msg.split_once(" (") {
        Some((m, h)) => (m.to_owned(), Some(h.trim_end_matches(')').to_owned())),
        None => (msg.to_owned(), None),
    };
    Diagnostic::error("invalid-value", message)
        .at(spans.value(path))
        .field(path)
        .maybe_help(help)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<LoadedDocument>, Vec<Diagnostic>) {
        let f = parse_file(&Arc::from(Path::new("t.yaml")), text);
        (f.documents, f.diagnostics)
    }

    #[test]
    fn parses_several_documents_and_records_positions() {
        let (docs, diags) = parse(
            "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {name: a}\nspec: {}\n---\n\
             apiVersion: sluice.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: p\nspec:\n  service: s\n  rules:\n    - from: [x, y]\n      allow: [\"GET /\"]\n      reason: r\n---\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(docs.len(), 2);
        let loc = docs[1].at("spec.rules[0].from[1]").expect("position");
        assert_eq!((loc.line, loc.column), (13, 17));
        let missing = docs[1]
            .at("spec.rules[0].nothing")
            .expect("falls back to parent");
        assert_eq!((missing.line, missing.column), (13, 7));
    }

    #[test]
    fn unknown_field_points_at_key_and_suggests() {
        let (_, diags) = parse(
            "apiVersion: sluice.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p}\nspec:\n  service: s\n  rules:\n    - from: [x]\n      alow: [\"GET /\"]\n      reason: r\n",
        );
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(d.message, "unknown field `alow`");
        assert_eq!(d.field.as_deref(), Some("spec.rules[0].alow"));
        assert_eq!(d.help.as_deref(), Some("did you mean `allow`?"));
        let loc = d.location.as_ref().expect("location");
        assert_eq!((loc.line, loc.column), (8, 7));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let (_, diags) = parse("kind: Team\nspec: [a, b\n");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].code, "yaml-syntax");
        assert!(diags[0].location.is_some());
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let (_, diags) = parse("kind: Team\nkind: Route\n");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0].message.contains("duplicated key"),
            "{}",
            diags[0].message
        );
        assert_eq!(diags[0].location.as_ref().map(|l| l.line), Some(2));
    }
}
