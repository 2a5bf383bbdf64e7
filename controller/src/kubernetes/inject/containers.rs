//! The containers injection adds (`sluice-init` and `sluice-proxy`) and the `sluice-proxy
//! await` wrapping of a classic Job's app containers: what the pod runs, kept apart from
//! [`inject`](super::inject)'s deciding whether and where to put it.

use serde_json::{Map, Value, json};
use sluice_policy::probes::ProbeSet;

use super::settings::Settings;
use super::{
    ADMIN_PORT, BIN_DIR, BIN_VOLUME, CA_KEY, Config, IDENTITY_DIR, IDENTITY_VOLUME, INBOUND_PORT,
    INIT, Mode, OUTBOUND_PORT, PROXY, PROXY_EXE, Problem, XTABLES_VOLUME, array,
};

/// Runs each app container under `sluice-proxy await`; false (with a problem) when one has no
/// `command` (its image's entrypoint is unknown here).
pub(super) fn wrap_apps(spec: &mut Value, restart: &str, problems: &mut Vec<Problem>) -> bool {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let missing: Vec<usize> = containers
        .iter()
        .enumerate()
        .filter(|(_, c)| c["command"].as_array().is_none_or(|a| a.is_empty()))
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        for i in missing {
            problems.push(Problem {
                field: format!("spec.containers[{i}].command"),
                message: "this pod is meant to finish, but without a `command` the injector cannot run the app under `sluice-proxy await`, so on this server (classic sidecars) the proxy will keep the pod running after the app exits. Set `command` (the image's entrypoint), or run on Kubernetes ≥ 1.29 (native sidecars).".into(),
            });
        }
        return false;
    }
    let when = if restart == "OnFailure" {
        "on-success"
    } else {
        "always"
    };
    for c in array(spec, "containers").into_iter().flatten() {
        let original = c["command"].as_array().cloned().unwrap_or_default();
        let mut command = vec![
            json!(format!("{BIN_DIR}/sluice-proxy")),
            json!("await"),
            json!(format!("--shutdown={when}")),
            json!("--"),
        ];
        command.extend(original);
        c["command"] = Value::Array(command);
        if let Some(mounts) = array(c, "volumeMounts") {
            mounts.push(json!({"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true}));
        }
    }
    true
}

pub(super) fn init_container(config: &Config, s: &Settings, copy: bool) -> Value {
    let mut args = vec![
        "init".to_owned(),
        format!("--proxy-uid={}", config.proxy_uid),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--outbound-port={OUTBOUND_PORT}"),
        format!("--admin-port={ADMIN_PORT}"),
    ];
    for (flag, value) in [
        ("--skip-inbound-ports", &s.skip_inbound),
        ("--skip-outbound-ports", &s.skip_outbound),
        ("--skip-subnets", &s.skip_subnets),
    ] {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    }
    let mut mounts = vec![json!({"name": XTABLES_VOLUME, "mountPath": "/run"})];
    if copy {
        args.push(format!("--copy-to={BIN_DIR}"));
        mounts.push(json!({"name": BIN_VOLUME, "mountPath": BIN_DIR}));
    }
    let mut c = json!({
        "name": INIT,
        "image": config.init_image,
        "args": args,
        "securityContext": {
            // iptables needs root in the pod's network namespace, and exactly these two
            // capabilities; nothing else, and no way to gain more.
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "volumeMounts": mounts,
    });
    if let Some(p) = &config.pull_policy {
        c["imagePullPolicy"] = json!(p);
    }
    c
}

pub(super) fn proxy_container(
    config: &Config,
    s: &Settings,
    service: &str,
    labels: &Map<String, Value>,
    probes: &ProbeSet,
    mode: Mode,
) -> Value {
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env: Vec<(&str, Value)> = vec![
        ("SLUICE_PROXY_CONFIG_SOURCE", json!({"value": "controller"})),
        (
            "SLUICE_PROXY_CONTROLLER_ADDR",
            json!({"value": config.controller_addr}),
        ),
        (
            "SLUICE_PROXY_CONTROLLER_CA",
            json!({"value": format!("{IDENTITY_DIR}/{CA_KEY}")}),
        ),
        (
            "SLUICE_PROXY_IDENTITY_TOKEN_FILE",
            json!({"value": format!("{IDENTITY_DIR}/token")}),
        ),
        (
            "SLUICE_PROXY_ADMIN_ADDR",
            // The kubelet probes the proxy at the pod IP; `init` leaves this port alone.
            json!({"value": format!("0.0.0.0:{ADMIN_PORT}")}),
        ),
        ("SLUICE_PROXY_SERVICE", json!({"value": service})),
        ("SLUICE_PROXY_NAMESPACE", field("metadata.namespace")),
        ("SLUICE_PROXY_INSTANCE", field("metadata.name")),
        ("SLUICE_PROXY_ID", field("metadata.name")),
        (
            "SLUICE_PROXY_LOG",
            json!({"value": s.log_level.clone().unwrap_or_else(|| config.log_level.clone())}),
        ),
    ];
    if let Some(path) = label_ref(labels, &["sluice.dev/version", "app.kubernetes.io/version"]) {
        env.push(("SLUICE_PROXY_SERVICE_VERSION", field(&path)));
    }
    if let Some(path) = label_ref(labels, &["sluice.dev/environment"]) {
        env.push(("SLUICE_PROXY_ENVIRONMENT", field(&path)));
    }
    if let Some(ports) = &s.opaque {
        env.push(("SLUICE_PROXY_OPAQUE_PORTS", json!({"value": ports})));
    }
    if !probes.is_empty() {
        env.push(("SLUICE_PROXY_PROBES", json!({"value": probes.to_string()})));
    }
    let env: Vec<Value> = env
        .into_iter()
        .map(|(name, mut v)| {
            v["name"] = json!(name);
            v
        })
        .collect();
    let mut requests = Map::new();
    requests.insert(
        "cpu".into(),
        json!(
            s.cpu_request
                .clone()
                .unwrap_or_else(|| config.cpu_request.clone())
        ),
    );
    requests.insert(
        "memory".into(),
        json!(
            s.memory_request
                .clone()
                .unwrap_or_else(|| config.memory_request.clone())
        ),
    );
    let mut limits = Map::new();
    limits.insert(
        "memory".into(),
        json!(
            s.memory_limit
                .clone()
                .unwrap_or_else(|| config.memory_limit.clone())
        ),
    );
    if let Some(cpu) = &s.cpu_limit {
        limits.insert("cpu".into(), json!(cpu));
    }
    let http = |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT}});
    let mut c = json!({
        "name": PROXY,
        "image": config.proxy_image,
        "env": env,
        "ports": [{"name": "sluice-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true}],
        "readinessProbe": http("/ready"),
        "livenessProbe": http("/live"),
    });
    c["readinessProbe"]["periodSeconds"] = json!(2);
    c["livenessProbe"]["periodSeconds"] = json!(10);
    match mode {
        Mode::Native => {
            c["restartPolicy"] = json!("Always");
            // The app's containers start once this succeeds: the proxy has its config.
            c["startupProbe"] = http("/ready");
            c["startupProbe"]["periodSeconds"] = json!(1);
            c["startupProbe"]["failureThreshold"] = json!(120);
        }
        Mode::Classic => {
            // The kubelet starts the next container only when this hook returns.
            c["lifecycle"] = json!({"postStart": {"exec": {"command": [
                PROXY_EXE, "wait-ready", "--timeout=120s",
            ]}}});
        }
    }
    if let Some(p) = &config.pull_policy {
        c["imagePullPolicy"] = json!(p);
    }
    c
}
/// The label a fact is read from through the downward API, if the template has one.
fn label_ref(labels: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find(|k| labels.contains_key(**k))
        .map(|k| format!("metadata.labels['{k}']"))
}
