//! `sluice inject` and `sluice uninject`: the injection function applied to manifests on disk
//! or stdin, offline.
//!
//! Input is files, directories (every `*.yaml`, `*.yml` and `*.json`, sorted, recursively) or
//! `-` for stdin; each may hold several YAML documents, and a document may be a `List`. Every
//! workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
//! CronJob, Pod) gets [`inject::inject`] on its pod template; everything else is written out
//! **byte for byte** as it came in, comments included. A document that changed is written
//! again from its data: its keys keep their original order (new keys follow, `name` first),
//! and the comments above it stay, but comments inside it are lost (YAML libraries, saphyr
//! included, do not keep comments through an edit).
//!
//! One line per object goes to stderr: what was done or why not, then any problems found in
//! its annotations or probes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, Scalar, Yaml};
use serde_json::Value;

use super::inject::{self, Config, Mode, Outcome, Problem};

/// `sluice inject`.
#[derive(Clone, Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifests: files, directories (searched recursively) or `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// `native` sidecars (Kubernetes ≥ 1.29, the default) or `classic` ones for older servers.
    #[arg(long, value_enum, default_value = "native")]
    pub mode: Mode,
    /// The proxy's image.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The init container's image (default: the proxy image's repository with `-init`).
    #[arg(long, value_name = "IMAGE")]
    pub init_image: Option<String>,
    /// `imagePullPolicy` for both.
    #[arg(long, value_name = "POLICY")]
    pub pull_policy: Option<String>,
    /// Where proxies reach the controller's gRPC API (TLS only: `https://`).
    #[arg(
        long,
        value_name = "URL",
        default_value = inject::DEFAULT_CONTROLLER_ADDR,
        value_parser = inject::parse_controller_addr
    )]
    pub controller_addr: String,
    /// The UID the proxy runs as (exempt from interception).
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
}

impl InjectArgs {
    /// The injection settings these flags describe.
    pub fn config(&self) -> Config {
        let mut c = Config {
            mode: self.mode,
            controller_addr: self.controller_addr.clone(),
            proxy_uid: self.proxy_uid,
            pull_policy: self.pull_policy.clone(),
            ..Config::default()
        };
        if let Some(image) = &self.image {
            c.proxy_image = image.clone();
            c.init_image = init_image_for(image);
        }
        if let Some(image) = &self.init_image {
            c.init_image = image.clone();
        }
        c
    }
}

/// `registry/sluice-proxy:1.2` → `registry/sluice-proxy-init:1.2` (the Dockerfile's pair). A
/// digest names one image only, so it is dropped: pin the init image with `--init-image`.
pub fn init_image_for(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    let (name, tag) = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => image.split_at(i),
        _ => (image, ""),
    };
    format!("{name}-init{tag}")
}

/// `sluice uninject`.
#[derive(Clone, Debug, clap::Args)]
pub struct UninjectArgs {
    /// Manifests: files, directories (searched recursively) or `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Why manifests could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or stdin could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML.
    #[error(
        "{path}:{line}:{column}: invalid YAML: {message}; check the indentation and quoting around this point"
    )]
    Yaml {
        /// The file.
        path: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
        /// What.
        message: String,
    },
    /// No input files.
    #[error("{0}: no *.yaml, *.yml or *.json files")]
    Empty(String),
    /// Output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// What to do to each pod template.
#[derive(Clone, Copy)]
enum Action<'a> {
    Inject(&'a Config),
    Uninject,
}

/// Injects (or uninjects) every input; writes the manifests to `out`, summaries to `err`.
/// Returns how many objects were changed.
pub fn run_inject(
    args: &InjectArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<usize, ManifestError> {
    let config = args.config();
    process(&args.paths, Action::Inject(&config), out, err)
}

/// `sluice uninject`.
pub fn run_uninject(
    args: &UninjectArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<usize, ManifestError> {
    process(&args.paths, Action::Uninject, out, err)
}

fn process(
    paths: &[PathBuf],
    action: Action<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<usize, ManifestError> {
    let mut inputs = Vec::new();
    for path in paths {
        inputs.extend(read_inputs(path)?);
    }
    let mut changed = 0;
    let mut wrote_any = false;
    for (name, text) in inputs {
        let (output, n) = transform(&name, &text, action, err)?;
        changed += n;
        if output.trim().is_empty() {
            continue;
        }
        if wrote_any && !starts_with_marker(&output) {
            writeln!(out, "---")?;
        }
        out.write_all(output.as_bytes())?;
        if !output.ends_with('\n') {
            writeln!(out)?;
        }
        wrote_any = true;
    }
    Ok(changed)
}

fn starts_with_marker(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .is_some_and(is_marker_line)
}

fn is_marker_line(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

fn read_inputs(path: &Path) -> Result<Vec<(String, String)>, ManifestError> {
    let read_err = |p: &Path, source| ManifestError::Read {
        path: p.display().to_string(),
        source,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| read_err(path, e))?;
        return Ok(vec![("<stdin>".into(), text)]);
    }
    let meta = std::fs::metadata(path).map_err(|e| read_err(path, e))?;
    if !meta.is_dir() {
        let text = std::fs::read_to_string(path).map_err(|e| read_err(path, e))?;
        return Ok(vec![(path.display().to_string(), text)]);
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| read_err(&dir, e))? {
            let p = entry.map_err(|e| read_err(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        return Err(ManifestError::Empty(path.display().to_string()));
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

/// The kubelet probes of `service`'s workloads in the manifest `file` (what the injected
/// sidecar lets through), for `sluice policy explain --pod`.
pub fn probes_of_service(
    file: &Path,
    service: &str,
) -> Result<sluice_policy::probes::ProbeSet, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let name: std::sync::Arc<Path> = file.into();
    let (docs, diags) = sluice_policy::load::parse_yaml(&name, &text);
    if let Some(d) = diags.iter().find(|d| d.is_error()) {
        return Err(format!("{}: {}", file.display(), d.message));
    }
    let mut objects = Vec::new();
    for doc in docs {
        match doc.value["items"].as_array() {
            Some(items) => objects.extend(items.iter().cloned()),
            None => objects.push(doc.value),
        }
    }
    let mut found = Vec::new();
    let mut names = Vec::new();
    for mut object in objects {
        let workload = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(template) = inject::template_mut(&mut object) else {
            continue;
        };
        let mut probe = template.clone();
        let report = inject::inject(&mut probe, &workload, &Config::default());
        if let Outcome::Injected {
            service: s, probes, ..
        } = report.outcome
        {
            if s == service {
                found.extend(probes.probes().iter().cloned());
            }
            names.push(s);
        }
    }
    if names.iter().all(|n| n != service) {
        return Err(format!(
            "{} has no workload of service `{service}` (found: {}); the service is `sluice.dev/service`, else the label `app.kubernetes.io/name` or `app`, else the workload's name",
            file.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ));
    }
    Ok(sluice_policy::probes::ProbeSet::new(found))
}

/// Where each document of `text` starts (char index): the first at 0, every other at its
/// `---`. Parsed by saphyr's parser, so a `---` inside a block scalar is not a boundary.
fn document_starts(name: &str, text: &str) -> Result<Vec<usize>, ManifestError> {
    let mut starts = Vec::new();
    for event in saphyr_parser::Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| ManifestError::Yaml {
            path: name.to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        if let saphyr_parser::Event::DocumentStart(_) = event {
            starts.push(if starts.is_empty() {
                0
            } else {
                span.start.index()
            });
        }
    }
    Ok(starts)
}

/// Transforms one file; returns its new text and how many objects changed.
fn transform(
    name: &str,
    text: &str,
    action: Action<'_>,
    err: &mut dyn Write,
) -> Result<(String, usize), ManifestError> {
    let file: std::sync::Arc<Path> = Path::new(name).into();
    let (docs, diags) = sluice_policy::load::parse_yaml(&file, text);
    if let Some(d) = diags.iter().find(|d| d.is_error()) {
        let (line, column) = d.location.as_ref().map_or((0, 0), |l| (l.line, l.column));
        return Err(ManifestError::Yaml {
            path: name.to_owned(),
            line,
            column,
            message: d.message.clone(),
        });
    }
    let starts = document_starts(name, text)?;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |ci: usize| chars.get(ci).map_or(text.len(), |(b, _)| *b);
    // Segments of the original text, one per document.
    let segments: Vec<&str> = (0..starts.len())
        .map(|i| {
            let from = byte_at(starts[i]);
            let to = starts.get(i + 1).map_or(text.len(), |s| byte_at(*s));
            &text[from..to]
        })
        .collect();
    if segments.len() != docs.len() {
        // Should not happen; refuse rather than misalign documents and text.
        return Err(ManifestError::Yaml {
            path: name.to_owned(),
            line: 1,
            column: 1,
            message: format!(
                "found {} documents but {} document starts",
                docs.len(),
                segments.len()
            ),
        });
    }
    let mut output = String::new();
    let mut changed = 0;
    for (i, (doc, segment)) in docs.into_iter().zip(&segments).enumerate() {
        let mut value = doc.value;
        let mut n = 0;
        let mut lines = Vec::new();
        if value.get("items").is_some_and(Value::is_array)
            && value["kind"].as_str().is_some_and(|k| k.ends_with("List"))
        {
            let len = value["items"].as_array().map_or(0, Vec::len);
            for j in 0..len {
                n += apply(
                    &mut value["items"][j],
                    action,
                    &format!("items[{j}]."),
                    &mut lines,
                );
            }
        } else if value.is_object() {
            n += apply(&mut value, action, "", &mut lines);
        }
        for (line, field) in lines {
            let at = field
                .as_deref()
                .and_then(|f| {
                    let path = span_path(f);
                    doc.spans.key(&path).or_else(|| doc.spans.value(&path))
                })
                .map(|l| format!("{name}:{}:{}: ", l.line, l.column))
                .unwrap_or_else(|| format!("{name}: "));
            writeln!(err, "{at}{line}")?;
        }
        if n == 0 {
            output.push_str(segment);
            continue;
        }
        changed += n;
        let (prefix, _) = split_header(segment);
        let mut header = prefix.to_owned();
        if i > 0 && !header.lines().any(is_marker_line) {
            header.insert_str(0, "---\n");
        }
        output.push_str(&header);
        output.push_str(&emit(&value, segment));
    }
    Ok((output, changed))
}

/// `metadata.annotations["sluice.dev/x"]` → `metadata.annotations.sluice.dev/x` (how
/// [`sluice_policy::load::SpanIndex`] names paths).
fn span_path(field: &str) -> String {
    field.replace("[\"", ".").replace("\"]", "")
}

/// Injects or uninjects one object; pushes its summary (and problems) to `lines`.
fn apply(
    object: &mut Value,
    action: Action<'_>,
    at: &str,
    lines: &mut Vec<(String, Option<String>)>,
) -> usize {
    let what = inject::describe(object);
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let prefix = inject::template_path(&kind)
        .map(|p| p.iter().map(|s| format!("{s}.")).collect::<String>())
        .unwrap_or_default();
    let Some(template) = inject::template_mut(object) else {
        lines.push((format!("{what}: passed through (not a workload)"), None));
        return 0;
    };
    match action {
        Action::Inject(config) => {
            let report = inject::inject(template, &name, config);
            let changed = matches!(report.outcome, Outcome::Injected { .. });
            lines.push((format!("{what}: {}", report.outcome), None));
            for Problem { field, message } in report.problems {
                let field = format!("{at}{prefix}{field}");
                lines.push((format!("warning: {field}: {message}"), Some(field)));
            }
            usize::from(changed)
        }
        Action::Uninject => {
            let done = inject::uninject(template);
            lines.push((
                format!(
                    "{what}: {}",
                    if done { "uninjected" } else { "not injected" }
                ),
                None,
            ));
            usize::from(done)
        }
    }
}

/// The segment's leading blank, comment and `---` lines, and the rest.
fn split_header(segment: &str) -> (&str, &str) {
    let mut end = 0;
    for line in segment.split_inclusive('\n') {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || is_marker_line(t) && !t.contains(": ") {
            end += line.len();
        } else {
            break;
        }
    }
    segment.split_at(end)
}

/// `value` as block YAML, keys in the order `original` (the document's text) had them.
fn emit(value: &Value, original: &str) -> String {
    let template = Yaml::load_from_str(original)
        .ok()
        .and_then(|mut docs| (!docs.is_empty()).then(|| docs.remove(0)));
    let yaml = ordered(value, template.as_ref());
    let mut text = String::new();
    let mut emitter = saphyr::YamlEmitter::new(&mut text);
    emitter.multiline(true);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&yaml);
    let body = text.strip_prefix("---\n").unwrap_or(&text);
    let mut out = String::with_capacity(body.len() + 1);
    // Blank lines inside block scalars come indented; YAML reads them the same without.
    for line in body.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn key_of<'a>(y: &'a Yaml<'_>) -> Option<&'a str> {
    match y {
        Yaml::Value(Scalar::String(s)) => Some(s),
        _ => None,
    }
}

fn name_in<'a>(y: &'a Yaml<'_>) -> Option<&'a str> {
    match y {
        Yaml::Mapping(m) => m
            .iter()
            .find_map(|(k, v)| (key_of(k) == Some("name")).then(|| key_of(v)).flatten()),
        _ => None,
    }
}

/// Builds the YAML for `value`, ordering each mapping's keys as `template` does.
fn ordered(value: &Value, template: Option<&Yaml<'_>>) -> Yaml<'static> {
    match value {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or(0.0).into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(s.clone().into())),
        Value::Array(items) => {
            let old: &[Yaml<'_>] = match template {
                Some(Yaml::Sequence(s)) => s,
                _ => &[],
            };
            Yaml::Sequence(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        // Containers, volumes, env: matched by name (injection inserts some);
                        // anything else by position.
                        let by_name = item
                            .get("name")
                            .and_then(Value::as_str)
                            .map(|n| old.iter().find(|o| name_in(o) == Some(n)));
                        let t = match by_name {
                            Some(found) => found,
                            None => old.get(i),
                        };
                        ordered(item, t)
                    })
                    .collect(),
            )
        }
        Value::Object(map) => {
            let old = match template {
                Some(Yaml::Mapping(m)) => Some(m),
                _ => None,
            };
            let mut keys: Vec<&String> = Vec::new();
            if let Some(old) = old {
                keys.extend(
                    old.iter()
                        .filter_map(|(k, _)| key_of(k))
                        .filter_map(|k| map.get_key_value(k).map(|(k, _)| k)),
                );
            }
            // New keys: `name` first (as Kubernetes writes objects), then alphabetical.
            let mut new: Vec<&String> = map.keys().filter(|k| !keys.contains(k)).collect();
            new.sort_by_key(|k| (k.as_str() != "name", k.as_str()));
            keys.extend(new);
            let mut m = saphyr::Mapping::new();
            for k in keys {
                let t = old.and_then(|o| {
                    o.iter()
                        .find(|(ok, _)| key_of(ok) == Some(k.as_str()))
                        .map(|(_, v)| v)
                });
                m.insert(
                    Yaml::Value(Scalar::String(k.clone().into())),
                    ordered(&map[k.as_str()], t),
                );
            }
            Yaml::Mapping(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, action: Action<'_>) -> (String, String) {
        let mut err = Vec::new();
        let (out, _) = transform("m.yaml", text, action, &mut err).expect("transform");
        (out, String::from_utf8(err).expect("utf8"))
    }

    const MANIFEST: &str = "\
# The payments service.
apiVersion: v1
kind: Service # inline comment
metadata:
  name: payments
spec:
  selector: {app: payments}
  ports: [{port: 8080}]
---
# The payments workload.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: payments
spec:
  template:
    metadata:
      labels: {app: payments}
      annotations:
        sluice.dev/opaque-port: \"3306\"
    spec:
      containers:
        - name: app
          image: payments:v1
          env:
            - name: FLAG
              value: \"yes\"
---
kind: List
apiVersion: v1
items:
  - {apiVersion: batch/v1, kind: Job, metadata: {name: once}, spec: {template: {spec: {restartPolicy: Never, containers: [{name: j, image: j}]}}}}
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}
";

    #[test]
    fn injects_workloads_passes_the_rest_through_byte_for_byte_and_is_idempotent() {
        let config = Config::default();
        let (once, err) = run(MANIFEST, Action::Inject(&config));
        // The Service is untouched, comments included.
        assert!(
            once.starts_with(&MANIFEST[..MANIFEST.find("---").expect("marker")]),
            "{once}"
        );
        // The Deployment keeps its leading comment and its key order.
        assert!(
            once.contains("---\n# The payments workload.\napiVersion: apps/v1\nkind: Deployment\n"),
            "{once}"
        );
        assert!(once.contains("- name: sluice-proxy"), "{once}");
        // A string that YAML 1.1 would read as a boolean stays a string.
        assert!(once.contains("value: \"yes\""), "{once}");
        for line in [
            "service/payments: passed through (not a workload)",
            "deployment/payments: injected (native sidecar, service payments)",
            "job/once: injected (native sidecar, service once)",
            "configmap/c: passed through (not a workload)",
        ] {
            assert!(err.contains(line), "{line}\n{err}");
        }
        // The problem points at the file, line and column of the annotation, with the fix.
        assert!(
            err.contains("m.yaml:20:9: warning: spec.template.metadata.annotations[\"sluice.dev/opaque-port\"]: unknown Sluice annotation; did you mean `sluice.dev/opaque-ports`?"),
            "{err}"
        );
        let (twice, err) = run(&once, Action::Inject(&config));
        assert_eq!(twice, once, "injecting twice equals injecting once");
        assert!(
            err.contains("deployment/payments: already injected"),
            "{err}"
        );
        // Uninject gives back the same data (the edited documents lose inner comments).
        let (back, _) = run(&once, Action::Uninject);
        let data = |t: &str| {
            sluice_policy::load::parse_yaml(&Path::new("x").into(), t)
                .0
                .into_iter()
                .map(|d| d.value)
                .collect::<Vec<_>>()
        };
        assert_eq!(data(&back), data(MANIFEST));
    }

    #[test]
    fn a_yaml_error_says_where() {
        let mut err = Vec::new();
        let e = transform("bad.yaml", "a: [1,\nb: 2\n", Action::Uninject, &mut err)
            .expect_err("invalid");
        assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
    }

    #[test]
    fn init_image_follows_the_proxy_image() {
        for (proxy, init) in [
            ("sluice-proxy:0.1.0", "sluice-proxy-init:0.1.0"),
            (
                "reg.example:5000/sluice-proxy:1",
                "reg.example:5000/sluice-proxy-init:1",
            ),
            (
                "reg.example:5000/sluice-proxy",
                "reg.example:5000/sluice-proxy-init",
            ),
            ("sluice-proxy@sha256:abc", "sluice-proxy-init"),
        ] {
            assert_eq!(init_image_for(proxy), init);
        }
    }
}
