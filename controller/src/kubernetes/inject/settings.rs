//! The pod's `sluice.dev/` annotations, read and checked: the one place a misspelt key or a
//! malformed value becomes a [`Problem`] instead of a broken sidecar. Both [`inject`](super::inject)
//! and [`problems`](super::problems) read annotations through here, so they report the same.

use serde_json::{Map, Value};

use super::{ANNOTATIONS, INJECT, INJECTED, PREFIX, Problem};

/// The pod's annotations, read and checked.
#[derive(Debug, Default)]
pub(super) struct Settings {
    pub(super) service: Option<String>,
    pub(super) skip_inbound: Option<String>,
    pub(super) skip_outbound: Option<String>,
    pub(super) skip_subnets: Option<String>,
    pub(super) opaque: Option<String>,
    pub(super) log_level: Option<String>,
    pub(super) cpu_request: Option<String>,
    pub(super) cpu_limit: Option<String>,
    pub(super) memory_request: Option<String>,
    pub(super) memory_limit: Option<String>,
    pub(super) disabled: bool,
}

fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[\"{key}\"]")
}

/// Reads every `sluice.dev/` annotation; unknown keys and malformed values become problems.
pub(super) fn settings(annotations: &Map<String, Value>, problems: &mut Vec<Problem>) -> Settings {
    let mut s = Settings::default();
    let known: Vec<&str> = ANNOTATIONS.iter().map(|(k, _)| *k).collect();
    for (key, value) in annotations {
        if !key.starts_with(PREFIX) {
            continue;
        }
        let text = value.as_str().unwrap_or_default().trim().to_owned();
        let mut bad = |expected: &str, detail: String| {
            problems.push(Problem {
                field: annotation_field(key),
                message: format!(
                    "{detail}; expected {expected}. The value is ignored until fixed."
                ),
            });
        };
        let Some((_, expected)) = ANNOTATIONS.iter().find(|(k, _)| k == key) else {
            let hint = sluice_policy::diagnostic::did_you_mean(key, &known)
                .map(|k| format!("did you mean `{k}`?"))
                .unwrap_or_else(|| format!("known annotations: {}", known.join(", ")));
            problems.push(Problem {
                field: annotation_field(key),
                message: format!("unknown Sluice annotation; {hint}"),
            });
            continue;
        };
        let checked = match key.as_str() {
            INJECT => match text.as_str() {
                "enabled" => Ok(()),
                "disabled" => {
                    s.disabled = true;
                    Ok(())
                }
                _ => Err(format!("`{text}` is neither `enabled` nor `disabled`")),
            },
            INJECTED => Ok(()),
            "sluice.dev/service" => check_name(&text).map(|()| s.service = Some(text.clone())),
            "sluice.dev/skip-inbound-ports" => {
                check_ports(&text, true).map(|v| s.skip_inbound = Some(v))
            }
            "sluice.dev/skip-outbound-ports" => {
                check_ports(&text, true).map(|v| s.skip_outbound = Some(v))
            }
            "sluice.dev/skip-outbound-subnets" => {
                check_subnets(&text).map(|v| s.skip_subnets = Some(v))
            }
            "sluice.dev/opaque-ports" => check_ports(&text, false).map(|v| s.opaque = Some(v)),
            "sluice.dev/proxy-log-level" => {
                check_log_level(&text).map(|()| s.log_level = Some(text.clone()))
            }
            "sluice.dev/proxy-cpu-request" => {
                check_quantity(&text).map(|()| s.cpu_request = Some(text.clone()))
            }
            "sluice.dev/proxy-cpu-limit" => {
                check_quantity(&text).map(|()| s.cpu_limit = Some(text.clone()))
            }
            "sluice.dev/proxy-memory-request" => {
                check_quantity(&text).map(|()| s.memory_request = Some(text.clone()))
            }
            "sluice.dev/proxy-memory-limit" => {
                check_quantity(&text).map(|()| s.memory_limit = Some(text.clone()))
            }
            _ => Ok(()),
        };
        if let Err(detail) = checked {
            bad(expected, detail);
        }
    }
    s
}

fn check_name(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("`{text}` is not a DNS label"))
    }
}

/// `22,8000-8100` → `22,8000:8100` (what `sluice-proxy init` reads), or without ranges.
fn check_ports(text: &str, ranges: bool) -> Result<String, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{}` is not a port (1-65535)", p.trim()))
    };
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('-') {
            Some((lo, hi)) if ranges => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("`{item}`: the range runs backwards"));
                }
                out.push(format!("{lo}:{hi}"));
            }
            Some(_) => return Err(format!("`{item}`: ranges are not allowed here")),
            None => out.push(port(item)?.to_string()),
        }
    }
    if out.is_empty() {
        return Err("no ports".into());
    }
    Ok(out.join(","))
}

fn check_subnets(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("`{item}` is not a CIDR subnet");
        let (ip, len) = item.split_once('/').ok_or_else(bad)?;
        let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > if ip.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        out.push(format!("{ip}/{len}"));
    }
    if out.is_empty() {
        return Err("no subnets".into());
    }
    Ok(out.join(","))
}

fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directive_ok = |d: &str| {
        let level = d.rsplit_once('=').map_or(d, |(target, level)| {
            if target.is_empty()
                || !target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                ""
            } else {
                level
            }
        });
        LEVELS.contains(&level)
    };
    if !text.is_empty() && text.split(',').all(|d| directive_ok(d.trim())) {
        Ok(())
    } else {
        Err(format!("`{text}` is not a log filter"))
    }
}

/// A Kubernetes quantity: a decimal number and an optional suffix.
fn check_quantity(text: &str) -> Result<(), String> {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number != "."
        && number.parse::<f64>().is_ok_and(|n| n > 0.0);
    if number_ok && SUFFIXES.contains(&suffix) {
        Ok(())
    } else {
        Err(format!("`{text}` is not a positive quantity"))
    }
}
