//! [`uninject`], the exact inverse of [`inject`](super::inject): it removes only what the
//! `sluice.dev/injected` marker says was added. Kept apart because it must change whenever
//! injection adds something, and reads best as that one list.

use serde_json::{Map, Value};

use super::{
    BIN_DIR, BIN_VOLUME, DEFAULT_CONTAINER, IDENTITY_VOLUME, INIT, INJECTED, PROXY, XTABLES_VOLUME,
    is_injected, name_of, shape,
};

/// Removes exactly what [`inject`](super::inject) added; false when `template` was not injected.
pub fn uninject(template: &mut Value) -> bool {
    if shape(template).is_err() {
        return false;
    }
    let marker = template["metadata"]["annotations"][INJECTED]
        .as_str()
        .map(str::to_owned);
    if !is_injected(template) && marker.is_none() {
        return false;
    }
    let added: Vec<String> = marker
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    let Some(spec) = template.get_mut("spec") else {
        return false;
    };
    let ours = [PROXY, INIT];
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            cs.retain(|c| !ours.contains(&name_of(c)));
        }
    }
    let created = |token: &str| added.iter().any(|a| a == token);
    if created("init-containers")
        && spec["initContainers"].as_array().is_some_and(Vec::is_empty)
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("initContainers");
    }
    if let Some(vs) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vs.retain(|v| ![IDENTITY_VOLUME, XTABLES_VOLUME, BIN_VOLUME].contains(&name_of(v)));
    }
    if created("volumes")
        && spec["volumes"].as_array().is_some_and(Vec::is_empty)
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("volumes");
    }
    if created("service-account")
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("serviceAccountName");
    }
    if added.iter().any(|a| a == "await") {
        for c in spec
            .get_mut("containers")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            unwrap_command(c);
        }
    }
    if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
    {
        annotations.remove(INJECTED);
        if added.iter().any(|a| a == "default-container") {
            annotations.remove(DEFAULT_CONTAINER);
        }
        if annotations.is_empty() && added.iter().any(|a| a == "annotations") {
            metadata.remove("annotations");
        }
    }
    if added.iter().any(|a| a == "metadata")
        && template["metadata"].as_object().is_some_and(Map::is_empty)
        && let Some(t) = template.as_object_mut()
    {
        t.remove("metadata");
    }
    true
}

fn unwrap_command(c: &mut Value) {
    let exe = format!("{BIN_DIR}/sluice-proxy");
    if let Some(cmd) = c["command"].as_array().cloned()
        && cmd.first().and_then(Value::as_str) == Some(exe.as_str())
        && let Some(dash) = cmd.iter().position(|a| a == "--")
    {
        c["command"] = Value::Array(cmd[dash + 1..].to_vec());
    }
    if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| name_of(m) != BIN_VOLUME);
        if mounts.is_empty()
            && let Some(m) = c.as_object_mut()
        {
            m.remove("volumeMounts");
        }
    }
}
