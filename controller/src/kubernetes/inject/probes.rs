//! Which kubelet probes the proxy must let through (`SLUICE_PROXY_PROBES`), read from the app's
//! containers, and why a probe cannot be: the only part of injection that looks inside the
//! app's own containers, shared with [`problems`](super::problems).

use serde_json::Value;
use sluice_policy::probes::{Probe, ProbeSet, plain_path};

use super::{INIT, PROXY, Problem, name_of};

/// The kubelet probes of the app's containers (and of its own native sidecars), with the
/// problems that keep a probe from being exempted.
pub fn probes(spec: &Value, problems: &mut Vec<Problem>) -> ProbeSet {
    let mut found = Vec::new();
    let groups = [("containers", false), ("initContainers", true)];
    for (group, sidecars_only) in groups {
        for (i, c) in spec[group].as_array().into_iter().flatten().enumerate() {
            if name_of(c) == PROXY || name_of(c) == INIT {
                continue;
            }
            if sidecars_only && c["restartPolicy"] != "Always" {
                continue;
            }
            for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let probe = &c[kind];
                let field = format!("spec.{group}[{i}].{kind}");
                if let Some(get) = probe.get("httpGet") {
                    if get
                        .get("host")
                        .and_then(Value::as_str)
                        .is_some_and(|h| !h.is_empty())
                    {
                        // The kubelet calls that host, not this pod: nothing to let through.
                        continue;
                    }
                    let Some(port) = resolve_port(c, &get["port"]) else {
                        problems.push(Problem {
                            field: format!("{field}.httpGet.port"),
                            message: format!(
                                "`{}` names no port of the container; the proxy cannot let this probe through. Use the container port's number or name.",
                                get["port"]
                            ),
                        });
                        continue;
                    };
                    if get["scheme"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
                    {
                        problems.push(Problem {
                            field: format!("{field}.httpGet.scheme"),
                            message: format!(
                                "an HTTPS probe is TLS the proxy cannot read, so it is refused under default-deny; probe over HTTP, or add {port} to sluice.dev/skip-inbound-ports"
                            ),
                        });
                        continue;
                    }
                    let raw = get["path"].as_str().unwrap_or("/");
                    let path = raw.split('?').next().unwrap_or("/");
                    let path = if path.is_empty() { "/" } else { path };
                    if !plain_path(path) {
                        problems.push(Problem {
                            field: format!("{field}.httpGet.path"),
                            message: format!(
                                "`{raw}` is not a plain path (no `..`, empty segments, `%`, `,` or spaces); the proxy will not exempt it"
                            ),
                        });
                        continue;
                    }
                    found.push(Probe::Http {
                        port,
                        path: path.to_owned(),
                    });
                } else if let Some(grpc) = probe.get("grpc") {
                    match resolve_port(c, &grpc["port"]) {
                        Some(port) => found.push(Probe::Grpc { port }),
                        None => problems.push(Problem {
                            field: format!("{field}.grpc.port"),
                            message: "not a port number".into(),
                        }),
                    }
                }
            }
        }
    }
    ProbeSet::new(found)
}

fn resolve_port(container: &Value, port: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok().filter(|n| *n > 0);
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse::<u16>() {
        return Some(n).filter(|n| *n > 0);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}
