//! `--callgrind`: how many instructions each sluice proxy executes per request, counted by
//! valgrind's callgrind. Unlike seconds, an instruction count does not depend on what else the
//! machine is doing, so it compares builds and runtime shapes on a shared, loaded machine.
//!
//! For each pair: start A and B under `valgrind --tool=callgrind`, warm up (connection pools,
//! lazy statics, the first TLS handshakes), zero both proxies' counters
//! (`callgrind_control --zero`), send exactly `--profile-requests` requests closed-loop, dump
//! the counters (`callgrind_control --dump`) and divide each proxy's instruction total by the
//! number of requests. The dump files stay in `--profile-dir` for `callgrind_annotate`.
//!
//! The nginx and HAProxy pairs (`--paths nginx,haproxy`) are counted the same way, each
//! process under callgrind (nginx without its master, so the one process serves), which puts
//! a noise-free figure beside the wall-clock ratios the targets are written in. Their
//! configuration is the latency run's, speaking HTTP/2 on both hops for the gRPC row.
//!
//! Two kinds of call, each through its own pair: HTTP/1.1 requests (closed loop over
//! `--connections` keep-alive connections) and gRPC unary calls over HTTP/2 (h2load, exactly
//! `--profile-requests` calls on 4 connections × 100 concurrent streams, to the gRPC
//! upstream the `grpc` scenario uses).
//!
//! Counted: user-space instructions of every thread of the proxy, including work that is not
//! per request (timers, the config and identity pollers, which run every 60 s here instead of
//! every second, so they fall outside a measurement of a few seconds). Not counted: time in
//! the kernel (system calls), which valgrind cannot see.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;
use crate::load;
use crate::mtls::{self, MeshFiles};
use crate::procs::{HaproxyPair, Hop, NginxPair, SluiceOptions, SluicePair};

/// What the counted requests are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// HTTP/1.1 GETs, closed loop.
    Http1,
    /// gRPC unary calls over HTTP/2 (h2load).
    GrpcUnary,
    /// gRPC server streams over HTTP/2 (h2load), each of the upstream's
    /// [`crate::upstream::STREAM_MESSAGES`] messages.
    GrpcStream,
}

impl Call {
    fn label(self) -> &'static str {
        match self {
            Call::Http1 => "HTTP/1.1",
            Call::GrpcUnary => "gRPC unary",
            Call::GrpcStream => "gRPC server stream",
        }
    }

    /// The gRPC method called, for the h2load rows.
    fn grpc_path(self) -> Option<&'static str> {
        match self {
            Call::Http1 => None,
            Call::GrpcUnary => Some(crate::upstream::GRPC_UNARY),
            Call::GrpcStream => Some(crate::upstream::GRPC_STREAM),
        }
    }
}

/// h2load's shape for the gRPC row: as the `grpc` scenario's default.
const GRPC_CONNECTIONS: usize = 4;
const GRPC_STREAMS: usize = 100;

/// One pair's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileRow {
    /// `sluice pair`, `sluice mTLS pair`, `nginx pair` or `HAProxy pair`.
    pub path: String,
    /// `HTTP/1.1` or `gRPC unary`.
    pub call: String,
    /// The proxies' runtime shape (`SLUICE_PROXY_RUNTIME`, `TOKIO_WORKER_THREADS`), or
    /// the reference's (one process, one thread).
    pub runtime: String,
    /// Requests counted (all answered 200).
    pub requests: u64,
    /// Instructions per request in A (outbound).
    pub a_ir: f64,
    /// Instructions per request in B (inbound).
    pub b_ir: f64,
    /// Where the dumps are.
    pub dumps: Vec<PathBuf>,
}

/// What to profile.
#[derive(Clone, Debug)]
pub struct ProfileParams {
    /// Requests counted per pair.
    pub requests: u64,
    /// Requests sent before counting.
    pub warmup: u64,
    /// Keep-alive connections the requests share.
    pub connections: usize,
    /// Where the callgrind output goes.
    pub dir: PathBuf,
}

/// Which pair is counted.
#[derive(Clone, Debug)]
pub enum Subject {
    /// The sluice pair, plaintext or with mTLS and authorization.
    Sluice {
        /// The mTLS pair.
        mtls: bool,
    },
    /// The nginx pair, this binary.
    Nginx(PathBuf),
    /// The HAProxy pair, this binary.
    Haproxy(PathBuf),
}

/// A running pair under callgrind.
enum Pair {
    Sluice(SluicePair),
    Nginx(NginxPair),
    Haproxy(HaproxyPair),
}

impl Pair {
    fn entry(&self) -> SocketAddr {
        match self {
            Pair::Sluice(p) => p.entry(),
            Pair::Nginx(p) => p.entry(),
            Pair::Haproxy(p) => p.entry(),
        }
    }

    /// The processes counted, A then B.
    fn pids(&self) -> Vec<u32> {
        let watched = match self {
            Pair::Sluice(p) => p.watched(),
            Pair::Nginx(p) => p.watched(),
            Pair::Haproxy(p) => p.watched(),
        };
        watched.iter().map(|w| w.pid).collect()
    }

    /// `error` with the proxies' logs, where they have any worth reading.
    fn with_logs(&self, error: BenchError) -> BenchError {
        match self {
            Pair::Sluice(p) => p.with_logs(error),
            Pair::Nginx(_) | Pair::Haproxy(_) => error,
        }
    }
}

/// Profiles `call` through `subject`'s pair, in front of `upstream` (an HTTP/1.1 server, or
/// the gRPC one for the gRPC calls).
pub async fn profile(
    opts: &SluiceOptions,
    params: &ProfileParams,
    upstream: SocketAddr,
    scratch: &Path,
    subject: &Subject,
    call: Call,
) -> Result<ProfileRow, BenchError> {
    let (name, runtime, kind) = match subject {
        Subject::Sluice { mtls } => (
            if *mtls {
                crate::report::SLUICE_MTLS
            } else {
                crate::report::SLUICE
            },
            format!(
                "{}{}",
                opts.runtime.as_deref().unwrap_or("default"),
                opts.worker_threads
                    .map(|n| format!(", {n} workers"))
                    .unwrap_or_default()
            ),
            if *mtls { "mtls" } else { "plain" },
        ),
        Subject::Nginx(_) => (crate::report::NGINX, "one process".into(), "nginx"),
        Subject::Haproxy(_) => (crate::report::HAPROXY, "one thread".into(), "haproxy"),
    };
    let slug = format!(
        "{kind}-{}{}",
        runtime.replace([',', ' '], ""),
        match call {
            Call::Http1 => "",
            Call::GrpcUnary => "-grpc",
            Call::GrpcStream => "-stream",
        }
    );
    let out = params.dir.join(&slug);
    std::fs::create_dir_all(&out).map_err(BenchError::file("create", &out))?;
    let wrapper = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--quiet".into(),
        format!("--callgrind-out-file={}/callgrind.out.%p", out.display()),
    ];
    let mut opts = opts.clone();
    opts.wrapper = wrapper.clone();
    opts.env.extend([
        ("SLUICE_PROXY_SNAPSHOT_POLL".into(), "60s".into()),
        ("SLUICE_PROXY_IDENTITY_POLL".into(), "60s".into()),
    ]);
    let hop = match call {
        Call::Http1 => Hop::Http1,
        Call::GrpcUnary | Call::GrpcStream => Hop::H2,
    };
    let dir = scratch.join(&slug);
    let pair = match subject {
        Subject::Sluice { mtls: true } => {
            let mesh = MeshFiles::write(&scratch.join(format!("mesh-{slug}")))?;
            let pair = SluicePair::start_mtls(&opts, upstream, &mesh, &dir)?;
            // The check asks the HTTP/1.1 upstream who called; the gRPC row is checked by B's
            // authorization counters instead, after counting.
            if call == Call::Http1 {
                mtls::verify(pair.entry(), pair.b_admin(), mtls::VERIFY_TIMEOUT_PROFILED)
                    .await
                    .map_err(|e| pair.with_logs(e))?;
            }
            Pair::Sluice(pair)
        }
        Subject::Sluice { mtls: false } => Pair::Sluice(SluicePair::start(&opts, upstream, &dir)?),
        Subject::Nginx(bin) => Pair::Nginx(NginxPair::start_wrapped(
            bin, upstream, &dir, hop, &wrapper,
        )?),
        Subject::Haproxy(bin) => Pair::Haproxy(HaproxyPair::start_wrapped(
            bin, upstream, &dir, hop, &wrapper,
        )?),
    };
    let mtls = matches!(subject, Subject::Sluice { mtls: true });
    let timeout = Duration::from_secs(30);
    eprintln!(
        "{name} ({runtime}, {}) under callgrind: {} warm-up requests",
        call.label(),
        params.warmup
    );
    let h2load_dir = scratch.join(format!("h2load-{slug}"));
    let send = |n: u64| {
        let entry = pair.entry();
        let dir = h2load_dir.clone();
        async move {
            match call.grpc_path() {
                None => load::exact(entry, n, params.connections, timeout)
                    .await
                    .map(|r| (r.ok, r.errors, r.first_error())),
                Some(path) => h2load_exact(entry, n, &dir, path)
                    .map(|(ok, failed)| (ok, failed, format!("{failed} calls failed (h2load)"))),
            }
        }
    };
    let (warm_ok, _, warm_error) = send(params.warmup).await?;
    if warm_ok == 0 {
        return Err(pair.with_logs(BenchError::NoSuccess {
            path: name.into(),
            phase: "callgrind warm-up",
            first_error: warm_error,
        }));
    }
    let authz_before = match (mtls, call) {
        (true, Call::GrpcUnary | Call::GrpcStream) => match &pair {
            Pair::Sluice(p) => Some(
                mtls::authz_counts(p.b_admin())
                    .await
                    .map_err(|e| p.with_logs(e))?,
            ),
            _ => None,
        },
        _ => None,
    };
    let pids = pair.pids();
    if pids.len() != 2 {
        return Err(pair.with_logs(BenchError::Setup(format!(
            "{name} under callgrind: expected two processes to count, found {pids:?}"
        ))));
    }
    for &pid in &pids {
        callgrind_control(&["--zero"], pid)?;
    }
    eprintln!("{name} ({runtime}): {} counted requests", params.requests);
    let (counted_ok, counted_errors, counted_error) = send(params.requests).await?;
    let mut per_request = Vec::new();
    let mut dumps = Vec::new();
    for &pid in &pids {
        callgrind_control(&["--dump"], pid)?;
        let (path, total) = newest_dump(&out, pid)?;
        per_request.push(total as f64 / params.requests as f64);
        dumps.push(path);
    }
    if counted_errors > 0 {
        return Err(pair.with_logs(BenchError::Setup(format!(
            "{name} under callgrind: {counted_errors} of {} requests failed ({counted_error})",
            params.requests,
        ))));
    }
    if let (Some(before), Pair::Sluice(p)) = (authz_before, &pair) {
        // Every counted call crossed to B over mTLS and was authorized as the client there:
        // a plaintext one would have been denied (unauthenticated).
        let after = mtls::authz_counts(p.b_admin())
            .await
            .map_err(|e| p.with_logs(e))?;
        let (allowed, denied) = (after.allowed - before.allowed, after.denied - before.denied);
        if allowed < counted_ok as f64 || denied > 0.0 {
            return Err(pair.with_logs(BenchError::Setup(format!(
                "{name}, gRPC: {counted_ok} calls succeeded but B authorized {allowed} and \
                 denied {denied}; not the mTLS path"
            ))));
        }
    }
    drop(pair);
    Ok(ProfileRow {
        path: name.into(),
        call: call.label().into(),
        runtime,
        requests: counted_ok,
        a_ir: per_request.first().copied().unwrap_or(0.0),
        b_ir: per_request.get(1).copied().unwrap_or(0.0),
        dumps,
    })
}

/// Calls gRPC method `path` exactly `n` times with h2load; (succeeded, failed).
fn h2load_exact(
    entry: SocketAddr,
    n: u64,
    dir: &Path,
    path: &str,
) -> Result<(u64, u64), BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))?;
    let body = dir.join("request.bin");
    std::fs::write(&body, crate::upstream::GRPC_MESSAGE)
        .map_err(BenchError::file("write", &body))?;
    let out = Command::new("h2load")
        .arg(format!("--requests={n}"))
        .arg(format!("--clients={GRPC_CONNECTIONS}"))
        .arg(format!("--max-concurrent-streams={GRPC_STREAMS}"))
        .arg("--threads=1")
        .args(["--header", "content-type: application/grpc"])
        .args(["--header", "te: trailers"])
        .arg(format!("--data={}", body.display()))
        .arg(format!("http://{entry}{path}"))
        .output()
        .map_err(BenchError::io("run h2load (Debian: nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match (
        out.status.success(),
        crate::grpc::request_count(&text, " succeeded"),
    ) {
        (true, Some(ok)) => Ok((ok, n.saturating_sub(ok))),
        _ => Err(BenchError::Setup(format!(
            "h2load against {entry} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

fn callgrind_control(args: &[&str], pid: u32) -> Result<(), BenchError> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .map_err(BenchError::io("run callgrind_control (Debian: valgrind)"))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "callgrind_control {args:?} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The newest dump of `pid` in `dir` and its instruction total (`totals:` or `summary:`).
fn newest_dump(dir: &Path, pid: u32) -> Result<(PathBuf, u64), BenchError> {
    let prefix = format!("callgrind.out.{pid}");
    let newest = std::fs::read_dir(dir)
        .map_err(BenchError::file("read", dir))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            BenchError::Setup(format!("no callgrind dump of {pid} in {}", dir.display()))
        })?;
    let text = std::fs::read_to_string(&newest).map_err(BenchError::file("read", &newest))?;
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Setup(format!("no totals in {}", newest.display())))?;
    Ok((newest, total))
}

/// The Markdown table of a profile run.
pub fn markdown(rows: &[ProfileRow], params: &ProfileParams) -> String {
    let mut s = format!(
        "### Instructions per request (callgrind)\n\n{} requests per row after {} warm-up \
         requests, closed loop over {} keep-alive connections; user-space instructions of \
         every proxy thread, divided by the requests (a gRPC server stream, {} messages, is one \
         request). gRPC: h2load, {} connections × {} concurrent streams.\n\n\
         | path | call | runtime | A (outbound) | B (inbound) | pair |\n\
         |---|---|---|---:|---:|---:|\n",
        params.requests,
        params.warmup,
        params.connections,
        crate::upstream::STREAM_MESSAGES,
        GRPC_CONNECTIONS,
        GRPC_STREAMS
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} |\n",
            r.path,
            r.call,
            r.runtime,
            r.a_ir,
            r.b_ir,
            r.a_ir + r.b_ir
        ));
    }
    let ratios = ratios(rows);
    if !ratios.is_empty() {
        s.push_str("\nEach sluice pair over each reference pair, same call:\n\n");
        for line in ratios {
            s.push_str(&format!("- {line}\n"));
        }
    }
    s
}

/// `sluice pair (default) / nginx pair, HTTP/1.1: 3.10×` for every sluice row and reference
/// row (nginx, HAProxy) counting the same call.
fn ratios(rows: &[ProfileRow]) -> Vec<String> {
    let is_reference =
        |r: &&ProfileRow| r.path == crate::report::NGINX || r.path == crate::report::HAPROXY;
    let references: Vec<&ProfileRow> = rows.iter().filter(is_reference).collect();
    rows.iter()
        .filter(|r| !is_reference(r))
        .flat_map(|r| {
            references
                .iter()
                .filter(move |reference| reference.call == r.call)
                .map(move |reference| {
                    format!(
                        "{} ({}) / {}, {}: {:.2}×",
                        r.path,
                        r.runtime,
                        reference.path,
                        r.call,
                        (r.a_ir + r.b_ir) / (reference.a_ir + reference.b_ir)
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, call: Call, a_ir: f64, b_ir: f64) -> ProfileRow {
        ProfileRow {
            path: path.into(),
            call: call.label().into(),
            runtime: "default".into(),
            requests: 1000,
            a_ir,
            b_ir,
            dumps: Vec::new(),
        }
    }

    #[test]
    fn compares_each_sluice_pair_with_each_reference_on_the_same_call_only() {
        use crate::report::{HAPROXY, NGINX, SLUICE, SLUICE_MTLS};
        let rows = [
            row(SLUICE, Call::Http1, 30_000.0, 34_000.0),
            row(SLUICE_MTLS, Call::Http1, 40_000.0, 44_000.0),
            row(SLUICE, Call::GrpcUnary, 80_000.0, 90_000.0),
            row(NGINX, Call::Http1, 16_000.0, 16_000.0),
            row(HAPROXY, Call::GrpcUnary, 40_000.0, 45_000.0),
        ];
        assert_eq!(
            ratios(&rows),
            [
                "sluice pair (default) / nginx pair, HTTP/1.1: 2.00×",
                "sluice mTLS pair (default) / nginx pair, HTTP/1.1: 2.62×",
                "sluice pair (default) / HAProxy pair, gRPC unary: 2.00×",
            ]
        );
        let table = markdown(
            &rows,
            &ProfileParams {
                requests: 1000,
                warmup: 100,
                connections: 8,
                dir: PathBuf::new(),
            },
        );
        assert!(table.contains("| nginx pair | HTTP/1.1 | default | 16000 | 16000 | 32000 |"));
        assert!(table.contains("- sluice pair (default) / HAProxy pair, gRPC unary: 2.00×"));
    }

    #[test]
    fn without_a_reference_there_is_no_ratio() {
        let rows = [row(crate::report::SLUICE, Call::Http1, 1.0, 1.0)];
        assert!(ratios(&rows).is_empty());
    }
}
