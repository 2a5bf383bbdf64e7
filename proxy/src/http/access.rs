//! The access-log line, written without tracing-subscriber's formatter.
//!
//! At the default level (`info`) every request writes one line. Through tracing-subscriber's
//! `fmt` layer a line cost more than proxying the request (~25,000 instructions per proxy,
//! field by field through `core::fmt`, the timestamp and the filter each time). The line's
//! fields are fixed, so it is built here into a per-thread buffer and written to stderr with
//! one `write`, in exactly the format the `fmt` layer produced: the same plain line (string
//! fields quoted, addresses bare) and the same JSON object, so collectors see no change.
//! Whether a line is written at all is still tracing's filter (`SLUICE_PROXY_LOG`, target
//! `sluice_proxy::access`); JSON strings are escaped by serde_json.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::LogFormat;

/// The format of every line, set once when logging starts ([`set_format`]).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Chooses the access log's format: the same as the rest of the log's.
pub fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

/// One request's line; everything is borrowed from the request, its connection and route.
#[derive(Debug, Serialize)]
pub(super) struct Line<'a> {
    pub direction: &'a str,
    pub client: &'a str,
    pub orig_dst: &'a str,
    #[serde(serialize_with = "addr_or_empty")]
    pub target: Option<SocketAddr>,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub authz_path: &'a str,
    #[serde(serialize_with = "version")]
    pub version: http::Version,
    pub status: u16,
    pub latency_ms: f64,
    pub dst_service: &'a str,
    pub dst_version: &'a str,
    pub route: &'a str,
    pub environment: &'a str,
    pub error: &'a str,
}

/// The JSON object as tracing-subscriber's `json().flatten_event(true)` wrote it.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(serialize_with = "display")]
    timestamp: humantime::Rfc3339Timestamp,
    level: &'static str,
    message: &'static str,
    #[serde(flatten)]
    line: &'a Line<'a>,
    #[serde(rename = "target")]
    log_target: &'static str,
}

/// The tracing target whose filter turns the access log on and off (`SLUICE_PROXY_LOG`).
pub(super) const TARGET: &str = "sluice_proxy::access";

thread_local! {
    /// Reused by every line of this thread: a line allocates nothing once it has grown.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Line<'_> {
    /// Writes the line to stderr, in the configured format.
    pub(super) fn write(&self) {
        let now = humantime::format_rfc3339_micros(SystemTime::now());
        let json = FORMAT.get() == Some(&LogFormat::Json);
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            let written = if json {
                self.json(buf, now).map_err(io::Error::from)
            } else {
                self.plain(buf, now)
            };
            if written.is_err() {
                return;
            }
            // One write per line, as the `fmt` layer did: lines from several threads do not
            // interleave.
            let _ = std::io::stderr().lock().write_all(buf);
        });
    }

    /// The JSON line: the object `fmt`'s `json().flatten_event(true)` wrote.
    fn json(&self, out: &mut Vec<u8>, now: humantime::Rfc3339Timestamp) -> serde_json::Result<()> {
        let line = JsonLine {
            timestamp: now,
            level: "INFO",
            message: "request",
            line: self,
            log_target: TARGET,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.push(b'\n');
        Ok(())
    }

    /// The plain line: `fmt`'s full format without colours.
    fn plain(&self, out: &mut Vec<u8>, now: humantime::Rfc3339Timestamp) -> io::Result<()> {
        write!(out, "{now}  INFO {TARGET}: request")?;
        write!(out, " direction={:?}", self.direction)?;
        write!(out, " client={} orig_dst={}", self.client, self.orig_dst)?;
        match self.target {
            Some(t) => write!(out, " target={t}")?,
            None => out.extend_from_slice(b" target="),
        }
        write!(
            out,
            " method={} authority={} path={} authz_path={} version={:?} status={} latency_ms={:?}",
            self.method,
            self.authority,
            self.path,
            self.authz_path,
            self.version,
            self.status,
            self.latency_ms
        )?;
        writeln!(
            out,
            " dst_service={:?} dst_version={:?} route={:?} environment={:?} error={:?}",
            self.dst_service, self.dst_version, self.route, self.environment, self.error
        )
    }
}

fn addr_or_empty<S: serde::Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str(""),
    }
}

fn version<S: serde::Serializer>(v: &http::Version, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:?}"))
}

fn display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(authority: &'a str, error: &'a str) -> Line<'a> {
        Line {
            direction: "inbound",
            client: "10.0.0.1:5000",
            orig_dst: "10.0.0.2:8080",
            target: Some("10.0.0.2:8080".parse().expect("addr")),
            method: "GET",
            authority,
            path: "/a/b",
            authz_path: "/a/b",
            version: http::Version::HTTP_11,
            status: 403,
            latency_ms: 0.25,
            dst_service: "api",
            dst_version: "v1",
            route: "",
            environment: "stable",
            error,
        }
    }

    fn at_epoch() -> humantime::Rfc3339Timestamp {
        humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH)
    }

    /// The plain line, byte for byte as tracing-subscriber's `fmt` layer wrote it before.
    #[test]
    fn the_plain_line_is_the_fmt_layers_line() {
        let mut out = Vec::new();
        line("api:8080", "denied")
            .plain(&mut out, at_epoch())
            .expect("written");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "1970-01-01T00:00:00.000000Z  INFO sluice_proxy::access: request \
             direction=\"inbound\" client=10.0.0.1:5000 orig_dst=10.0.0.2:8080 \
             target=10.0.0.2:8080 method=GET authority=api:8080 path=/a/b authz_path=/a/b \
             version=HTTP/1.1 status=403 latency_ms=0.25 dst_service=\"api\" \
             dst_version=\"v1\" route=\"\" environment=\"stable\" error=\"denied\"\n"
        );
    }

    /// A hostile Host header (quotes, a tab, a backslash) stays inside its JSON string, and
    /// the object keeps `json().flatten_event(true)`'s fields.
    #[test]
    fn json_escapes_request_values_and_keeps_the_fields() {
        let mut out = Vec::new();
        line("a\"b\t\\c", "")
            .json(&mut out, at_epoch())
            .expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        let text = text.strip_suffix('\n').expect("one line");
        assert!(!text.contains('\n') && !text.contains('\t'), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(v["authority"], "a\"b\t\\c");
        assert_eq!(v["status"], 403);
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["message"], "request");
        // Both keys named `target`, as before: the route's endpoint, then the log target
        // (a JSON reader keeps the last, which is what `proxy_ops` filters on).
        assert_eq!(v["target"], TARGET);
        assert!(text.contains("\"target\":\"10.0.0.2:8080\""), "{text}");
    }
}
