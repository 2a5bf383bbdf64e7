//! Sidecar injection: the one function behind both `sluice inject` and the mutating admission
//! webhook ([`inject`]), and its exact inverse ([`uninject()`]).
//!
//! Both work on a pod template as JSON (`{"metadata": …, "spec": …}`: a Pod, or the `template`
//! of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob), touching only the
//! paths they own, so fields this crate's Kubernetes types do not know (a newer server's) pass
//! through untouched. Nothing here talks to a cluster: the CLI runs offline, and the webhook
//! calls the same code on the AdmissionReview's pod.
//!
//! # What is added
//!
//! | what | why |
//! |---|---|
//! | init container `sluice-init` (`sluice-proxy init`) | installs the iptables redirect; capabilities `NET_ADMIN` and `NET_RAW` only, and the proxy's UID is exempt so its own traffic is not looped back |
//! | container `sluice-proxy` | the sidecar: a native sidecar (an init container with `restartPolicy: Always`, servers ≥ 1.29) or a classic one (the first container, with a `postStart` hook that waits until it is ready) |
//! | volume `sluice-identity` | the pod's service-account token projected for audience `sluice`, which the proxy presents to the controller, and the mesh CA certificate (public) from the ConfigMap `sluice-ca` the controller keeps in the pod's namespace, by which the proxy trusts the controller; no secret is copied into the pod |
//! | volume `sluice-xtables` | an `emptyDir` at `/run` for iptables' lock file, so the init container keeps a read-only root |
//! | volume `sluice-bin` (classic Jobs only) | the init container copies `sluice-proxy` here, and each app container runs under `sluice-proxy await`, which stops the proxy when the app exits |
//! | annotation `sluice.dev/injected` | the mode, and what else was added (so `uninject` removes exactly that) |
//!
//! The proxy learns the pod's facts from the downward API (namespace, pod name, the version and
//! environment labels) and the kubelet probes it must let through from `SLUICE_PROXY_PROBES`.
//!
//! Injection is idempotent: a pod that already has the sidecar is left alone, which is what
//! makes the webhook safe under `reinvocationPolicy: IfNeeded`.

mod containers;
mod probes;
mod settings;
mod uninject;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};
use sluice_policy::probes::ProbeSet;

use containers::{init_container, proxy_container, wrap_apps};
pub use probes::probes;
use settings::{Settings, settings};
pub use uninject::uninject;

/// The annotation and label prefix Sluice owns.
pub const PREFIX: &str = "sluice.dev/";
/// Opt in (`enabled`) or out (`disabled`): a pod annotation, or a namespace label for opt-in.
pub const INJECT: &str = "sluice.dev/inject";
/// Set by the injector: the mode and what it added.
pub const INJECTED: &str = "sluice.dev/injected";
/// The proxy container's name.
pub const PROXY: &str = "sluice-proxy";
/// The init container's name.
pub const INIT: &str = "sluice-init";
/// The identity volume.
pub const IDENTITY_VOLUME: &str = "sluice-identity";
/// Where the identity volume is mounted in the proxy.
pub const IDENTITY_DIR: &str = "/var/run/sluice/identity";
/// The volume for iptables' lock (`/run`) in the init container.
pub const XTABLES_VOLUME: &str = "sluice-xtables";
/// The volume the init container copies `sluice-proxy` into for classic Jobs.
pub const BIN_VOLUME: &str = "sluice-bin";
/// Where that volume is mounted.
pub const BIN_DIR: &str = "/var/run/sluice/bin";
/// The audience of the projected token.
pub const TOKEN_AUDIENCE: &str = "sluice";
/// The ConfigMap, in every namespace with injected pods, holding the mesh CA certificate
/// (public, not a secret) under [`CA_KEY`]: how an injected proxy trusts the controller's
/// TLS before it has an identity. The controller publishes it (Istio's
/// `istio-ca-root-cert` works the same way), and the kubelet keeps the projected copy
/// current, so a CA brought later reaches running pods.
pub const CA_CONFIGMAP: &str = "sluice-ca";
/// The key of the CA certificate in [`CA_CONFIGMAP`], and its file name in the identity volume.
pub const CA_KEY: &str = "ca.crt";
/// The proxy's executable inside its image.
pub const PROXY_EXE: &str = "/usr/local/bin/sluice-proxy";
/// `kubectl logs` and `exec` pick this container when the proxy comes first (classic).
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Ports of the proxy (as `sluice-proxy init` and the proxy default them).
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;

/// The per-pod annotations, each documented in docs/kubernetes.md.
pub const ANNOTATIONS: [(&str, &str); 12] = [
    (INJECT, "`enabled` or `disabled`"),
    (INJECTED, "set by the injector; do not edit"),
    (
        "sluice.dev/service",
        "the mesh service name, e.g. `payments`",
    ),
    (
        "sluice.dev/skip-inbound-ports",
        "ports or ranges, e.g. `22,8000-8100`",
    ),
    (
        "sluice.dev/skip-outbound-ports",
        "ports or ranges, e.g. `5432,6379`",
    ),
    (
        "sluice.dev/skip-outbound-subnets",
        "CIDRs, e.g. `10.0.0.0/8,fd00::/8`",
    ),
    ("sluice.dev/opaque-ports", "ports, e.g. `3306,5432`"),
    (
        "sluice.dev/proxy-log-level",
        "`error`, `warn`, `info`, `debug`, `trace` or a filter like `info,sluice_proxy=debug`",
    ),
    (
        "sluice.dev/proxy-cpu-request",
        "a CPU quantity, e.g. `100m`",
    ),
    ("sluice.dev/proxy-cpu-limit", "a CPU quantity, e.g. `1`"),
    (
        "sluice.dev/proxy-memory-request",
        "a memory quantity, e.g. `64Mi`",
    ),
    (
        "sluice.dev/proxy-memory-limit",
        "a memory quantity, e.g. `256Mi`",
    ),
];

/// Native sidecars or classic ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29).
    Native,
    /// A regular container first in the list, with a `postStart` readiness wait.
    Classic,
}

impl Mode {
    /// The mode a server of this version supports best: native from 1.29 on (where the
    /// `SidecarContainers` feature is on by default).
    pub fn for_server(major: u32, minor: u32) -> Mode {
        if (major, minor) >= (1, 29) {
            Mode::Native
        } else {
            Mode::Classic
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Classic => "classic",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where injected proxies reach the controller by default: the chart's Service, over TLS
/// (the controller serves its API over TLS only).
pub const DEFAULT_CONTROLLER_ADDR: &str = "https://sluice-controller.sluice.svc:7071";

/// Checks a controller address for injected proxies (`--controller-addr`,
/// `--inject-controller-addr`): the proxy would refuse anything but `https://HOST:PORT` at
/// start, in every pod, so it is refused here first.
pub fn parse_controller_addr(text: &str) -> Result<String, String> {
    let rest = text.strip_prefix("https://").unwrap_or_default();
    let host_port = rest.trim_end_matches('/');
    match host_port.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "`{text}`: the controller serves its API over TLS only; use https://HOST:PORT, e.g. {DEFAULT_CONTROLLER_ADDR}"
        )),
    }
}

/// Mesh-wide injection settings (chart values, controller flags, `sluice inject` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The proxy's image.
    pub proxy_image: String,
    /// The init container's image (the proxy's, plus iptables).
    pub init_image: String,
    /// `imagePullPolicy` of both, if set.
    pub pull_policy: Option<String>,
    /// Where proxies reach the controller's gRPC API.
    pub controller_addr: String,
    /// Native or classic.
    pub mode: Mode,
    /// The UID the proxy runs as (exempt from interception).
    pub proxy_uid: u32,
    /// The proxy's default log filter.
    pub log_level: String,
    /// The proxy's default resources: cpu request, memory request, memory limit; the CPU
    /// limit is unset unless annotated.
    pub cpu_request: String,
    /// See above.
    pub memory_request: String,
    /// See above.
    pub memory_limit: String,
}

impl Default for Config {
    fn default() -> Config {
        let version = env!("CARGO_PKG_VERSION");
        Config {
            proxy_image: format!("sluice-proxy:{version}"),
            init_image: format!("sluice-proxy-init:{version}"),
            pull_policy: None,
            controller_addr: DEFAULT_CONTROLLER_ADDR.into(),
            mode: Mode::Native,
            proxy_uid: 2102,
            log_level: "info".into(),
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "256Mi".into(),
        }
    }
}

/// Something wrong in a pod's annotations or probes: where, what, and the fix. The webhook
/// turns each into an Event (and a warning); `sluice inject` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field path, e.g. `metadata.annotations["sluice.dev/opaque-ports"]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a pod template was not injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `hostNetwork: true`: iptables rules would capture the node's traffic.
    HostNetwork,
    /// `sluice.dev/inject: disabled`.
    OptedOut,
    /// The sidecar is already there.
    AlreadyInjected,
    /// The template is not shaped like a pod template (see the problem).
    Malformed,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::HostNetwork => {
                "skipped: host network (the proxy would intercept the node's traffic)"
            }
            Skip::OptedOut => "skipped: opted out (sluice.dev/inject: disabled)",
            Skip::AlreadyInjected => "already injected",
            Skip::Malformed => "skipped: not a valid pod template",
        })
    }
}

/// What [`inject`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected {
        /// Native or classic.
        mode: Mode,
        /// The mesh service the proxy fronts.
        service: String,
        /// The kubelet probes the proxy lets through.
        probes: ProbeSet,
        /// Whether the app containers run under `sluice-proxy await` (classic Jobs).
        awaited: bool,
    },
    /// Nothing was changed.
    Skipped(Skip),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Injected {
                mode,
                service,
                probes,
                awaited,
            } => {
                write!(f, "injected ({mode} sidecar, service {service}")?;
                if !probes.is_empty() {
                    write!(f, ", kubelet probes {probes}")?;
                }
                if *awaited {
                    f.write_str(", the proxy exits with the app")?;
                }
                f.write_str(")")
            }
            Outcome::Skipped(s) => s.fmt(f),
        }
    }
}

/// [`inject`]'s answer: what happened, and the problems found on the way (which never stop
/// injection: a bad value is left out, and said so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What happened.
    pub outcome: Outcome,
    /// Annotation and probe problems.
    pub problems: Vec<Problem>,
}
/// `v[key]` as an array, created if missing (`None` if `v` is not an object or `v[key]` is
/// something else, which [`shape`] rules out first).
fn array<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    v.as_object_mut()?
        .entry(key)
        .or_insert_with(|| json!([]))
        .as_array_mut()
}

/// `v[key]` as an object, created if missing.
fn object<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.as_object_mut()?
        .entry(key)
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

/// Whether the template has the shape injection writes into; a manifest may be anything, and
/// a wrong shape is reported, never "fixed" by overwriting it.
fn shape(template: &Value) -> Result<(), Problem> {
    let wrong = |field: &str, expected: &str| Problem {
        field: field.to_owned(),
        message: format!("expected {expected}; the pod template is left as it is"),
    };
    let absent_or = |v: &Value, f: fn(&Value) -> bool| v.is_null() || f(v);
    if !template.is_object() {
        return Err(wrong("(template)", "an object"));
    }
    let meta = &template["metadata"];
    for (v, field) in [
        (meta, "metadata"),
        (&meta["annotations"], "metadata.annotations"),
        (&meta["labels"], "metadata.labels"),
    ] {
        if !absent_or(v, Value::is_object) {
            return Err(wrong(field, "an object"));
        }
    }
    let spec = &template["spec"];
    if !spec.is_object() {
        return Err(wrong("spec", "an object"));
    }
    if !spec["containers"]
        .as_array()
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(Value::is_object))
    {
        return Err(wrong("spec.containers", "a list of containers"));
    }
    for key in ["initContainers", "volumes"] {
        if !absent_or(&spec[key], |v| {
            v.as_array().is_some_and(|a| a.iter().all(Value::is_object))
        }) {
            return Err(wrong(&format!("spec.{key}"), "a list of objects"));
        }
    }
    for group in ["containers", "initContainers"] {
        for (i, c) in spec[group].as_array().into_iter().flatten().enumerate() {
            for key in ["volumeMounts", "command"] {
                if !absent_or(&c[key], Value::is_array) {
                    return Err(wrong(&format!("spec.{group}[{i}].{key}"), "a list"));
                }
            }
        }
    }
    Ok(())
}

fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// Whether `template` already has the sidecar (in either mode).
pub fn is_injected(template: &Value) -> bool {
    let spec = &template["spec"];
    ["containers", "initContainers"].iter().any(|k| {
        spec[*k]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| name_of(c) == PROXY))
    })
}
/// The mesh service: `sluice.dev/service`, else label `app.kubernetes.io/name`, else `app`,
/// else `fallback` (the workload's name).
fn service_name(settings: &Settings, labels: &Map<String, Value>, fallback: &str) -> String {
    settings
        .service
        .clone()
        .or_else(|| {
            ["app.kubernetes.io/name", "app"]
                .iter()
                .find_map(|k| labels.get(*k).and_then(Value::as_str).map(str::to_owned))
        })
        .unwrap_or_else(|| fallback.to_owned())
}

/// Injects the sidecar into `template` (`{"metadata", "spec"}`) in place. `workload` is the
/// name used when no label names the service (the Deployment's name, or the pod's).
pub fn inject(template: &mut Value, workload: &str, config: &Config) -> Report {
    let mut problems = Vec::new();
    if let Err(p) = shape(template) {
        return Report {
            outcome: Outcome::Skipped(Skip::Malformed),
            problems: vec![p],
        };
    }
    let annotations = template["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let s = settings(&annotations, &mut problems);
    let skipped = |skip, problems| Report {
        outcome: Outcome::Skipped(skip),
        problems,
    };
    if is_injected(template) {
        return skipped(Skip::AlreadyInjected, problems);
    }
    if s.disabled {
        return skipped(Skip::OptedOut, problems);
    }
    if template["spec"]["hostNetwork"] == true {
        return skipped(Skip::HostNetwork, problems);
    }
    let probes = probes(&template["spec"], &mut problems);
    let labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let service = service_name(&s, &labels, workload);
    let mode = config.mode;
    // Pods meant to finish: only classic sidecars need help to let them.
    let restart = template["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_owned();
    let finite = restart != "Always";
    let mut added = vec![mode.as_str().to_owned()];

    // Containers the pod did not have before, so `uninject` removes them again (and only them).
    for (key, token) in [
        ("initContainers", "init-containers"),
        ("volumes", "volumes"),
    ] {
        if template["spec"].get(key).is_none() {
            added.push(token.into());
        }
    }
    if template["metadata"].is_null() {
        added.push("metadata".into());
    }
    // A projected token needs a named service account. The API server's ServiceAccount
    // admission sets `default` before any webhook runs; `sluice inject` output must stand on
    // its own (and `kubernetes-validate` and a server without that plugin agree).
    let spec = &template["spec"];
    if spec["serviceAccountName"].is_null() && spec["serviceAccount"].is_null() {
        added.push("service-account".into());
    }
    if template["metadata"]["annotations"].is_null() {
        added.push("annotations".into());
    }
    let spec = &mut template["spec"];
    let awaited = mode == Mode::Classic && finite && {
        let wrapped = wrap_apps(spec, &restart, &mut problems);
        if wrapped {
            added.push("await".into());
        }
        wrapped
    };
    let init = init_container(config, &s, awaited);
    let proxy = proxy_container(config, &s, &service, &labels, &probes, mode);
    match mode {
        Mode::Native => {
            if let Some(inits) = array(spec, "initContainers") {
                inits.insert(0, proxy);
                inits.insert(0, init);
            }
        }
        Mode::Classic => {
            // Last, so the app's own init containers run before interception starts (they
            // would otherwise be redirected to a proxy that does not run yet).
            if let Some(inits) = array(spec, "initContainers") {
                inits.push(init);
            }
            if let Some(containers) = array(spec, "containers") {
                containers.insert(0, proxy);
            }
        }
    }
    if added.iter().any(|a| a == "service-account") {
        spec["serviceAccountName"] = json!("default");
    }
    if let Some(volumes) = array(spec, "volumes") {
        volumes.push(json!({
            "name": IDENTITY_VOLUME,
            "projected": {"sources": [
                {"serviceAccountToken": {
                    "audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token",
                }},
                {"configMap": {
                    "name": CA_CONFIGMAP, "items": [{"key": CA_KEY, "path": CA_KEY}],
                }},
            ]},
        }));
        volumes.push(json!({"name": XTABLES_VOLUME, "emptyDir": {}}));
        if awaited {
            volumes.push(json!({"name": BIN_VOLUME, "emptyDir": {}}));
        }
    }
    let first_app = template["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().map(name_of).find(|n| *n != PROXY))
        .map(str::to_owned);
    let metadata = object(template, "metadata").map(|m| {
        m.entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
    });
    if let Some(Some(annotations)) = metadata {
        if mode == Mode::Classic
            && let Some(app) = first_app
            && !annotations.contains_key(DEFAULT_CONTAINER)
        {
            annotations.insert(DEFAULT_CONTAINER.into(), Value::String(app));
            added.push("default-container".into());
        }
        annotations.insert(INJECTED.into(), Value::String(added.join(",")));
    }
    Report {
        outcome: Outcome::Injected {
            mode,
            service,
            probes,
            awaited,
        },
        problems,
    }
}
/// The kinds `sluice inject` looks into, and where each keeps its pod template.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The pod template inside a workload object, if it is one.
pub fn template_mut(object: &mut Value) -> Option<&mut Value> {
    let kind = object["kind"].as_str()?.to_owned();
    let path = template_path(&kind)?;
    let mut at = object;
    for key in path {
        at = at.get_mut(*key)?;
    }
    at.is_object().then_some(at)
}

/// Every probe problem and annotation problem of a pod template, without injecting (for
/// reporting on pods that are not injected).
pub fn problems(template: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        settings(a, &mut problems);
    }
    probes(&template["spec"], &mut problems);
    problems
}

/// For a summary: `Deployment/shop/web`.
pub fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("object");
    let name = object["metadata"]["name"].as_str().unwrap_or("(unnamed)");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{}/{ns}/{name}", kind.to_ascii_lowercase()),
        None => format!("{}/{name}", kind.to_ascii_lowercase()),
    }
}

/// Counts, for the benchmark and docs: bytes of the pod template's JSON before and after.
pub fn size_delta(before: &Value, after: &Value) -> (usize, usize) {
    let len = |v: &Value| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0);
    (len(before), len(after))
}

/// The annotation table (key, expected value), for docs and the unknown-key hint.
pub fn annotation_docs() -> BTreeMap<&'static str, &'static str> {
    ANNOTATIONS.iter().copied().collect()
}

#[cfg(test)]
mod tests;
