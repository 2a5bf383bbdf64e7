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
use crate::procs::{SluiceOptions, SluicePair};

/// One pair's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileRow {
    /// `sluice pair` or `sluice mTLS pair`.
    pub path: String,
    /// The proxies' runtime shape (`SLUICE_PROXY_RUNTIME`, `TOKIO_WORKER_THREADS`).
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

/// Profiles the plaintext pair (`mtls == false`) or the mTLS pair.
pub async fn profile(
    opts: &SluiceOptions,
    params: &ProfileParams,
    upstream: SocketAddr,
    scratch: &Path,
    mtls: bool,
) -> Result<ProfileRow, BenchError> {
    let name = if mtls {
        crate::report::SLUICE_MTLS
    } else {
        crate::report::SLUICE
    };
    let runtime = format!(
        "{}{}",
        opts.runtime.as_deref().unwrap_or("default"),
        opts.worker_threads
            .map(|n| format!(", {n} workers"))
            .unwrap_or_default()
    );
    let slug = format!(
        "{}-{}",
        if mtls { "mtls" } else { "plain" },
        runtime.replace([',', ' '], "")
    );
    let out = params.dir.join(&slug);
    std::fs::create_dir_all(&out).map_err(BenchError::file("create", &out))?;
    let mut opts = opts.clone();
    opts.wrapper = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--quiet".into(),
        format!("--callgrind-out-file={}/callgrind.out.%p", out.display()),
    ];
    opts.env.extend([
        ("SLUICE_PROXY_SNAPSHOT_POLL".into(), "60s".into()),
        ("SLUICE_PROXY_IDENTITY_POLL".into(), "60s".into()),
    ]);
    let pair = if mtls {
        let mesh = MeshFiles::write(&scratch.join(format!("mesh-{slug}")))?;
        let pair = SluicePair::start_mtls(&opts, upstream, &mesh, &scratch.join(&slug))?;
        mtls::verify(pair.entry(), pair.b_admin(), mtls::VERIFY_TIMEOUT_PROFILED)
            .await
            .map_err(|e| pair.with_logs(e))?;
        pair
    } else {
        SluicePair::start(&opts, upstream, &scratch.join(&slug))?
    };
    let timeout = Duration::from_secs(30);
    eprintln!(
        "{name} ({runtime}) under callgrind: {} warm-up requests",
        params.warmup
    );
    let warm = load::exact(pair.entry(), params.warmup, params.connections, timeout).await?;
    if warm.ok == 0 {
        return Err(pair.with_logs(BenchError::NoSuccess {
            path: name.into(),
            phase: "callgrind warm-up",
            first_error: warm.first_error(),
        }));
    }
    let pids: Vec<u32> = pair.watched().iter().map(|w| w.pid).collect();
    for &pid in &pids {
        callgrind_control(&["--zero"], pid)?;
    }
    eprintln!("{name} ({runtime}): {} counted requests", params.requests);
    let counted = load::exact(pair.entry(), params.requests, params.connections, timeout).await?;
    let mut per_request = Vec::new();
    let mut dumps = Vec::new();
    for &pid in &pids {
        callgrind_control(&["--dump"], pid)?;
        let (path, total) = newest_dump(&out, pid)?;
        per_request.push(total as f64 / params.requests as f64);
        dumps.push(path);
    }
    if counted.errors > 0 {
        return Err(pair.with_logs(BenchError::Setup(format!(
            "{name} under callgrind: {} of {} requests failed ({})",
            counted.errors,
            params.requests,
            counted.first_error()
        ))));
    }
    drop(pair);
    Ok(ProfileRow {
        path: name.into(),
        runtime,
        requests: counted.ok,
        a_ir: per_request.first().copied().unwrap_or(0.0),
        b_ir: per_request.get(1).copied().unwrap_or(0.0),
        dumps,
    })
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
         every proxy thread, divided by the requests.\n\n\
         | path | runtime | A (outbound) | B (inbound) | pair |\n|---|---|---:|---:|---:|\n",
        params.requests, params.warmup, params.connections
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |\n",
            r.path,
            r.runtime,
            r.a_ir,
            r.b_ir,
            r.a_ir + r.b_ir
        ));
    }
    s
}
