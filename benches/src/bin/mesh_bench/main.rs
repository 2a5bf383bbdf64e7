//! `mesh_bench`: the latency and throughput a pair of sluice proxies adds to a request —
//! plaintext, and with mTLS and authorization between them — measured next to the direct path
//! and an nginx pair in the same run. See `benches/README.md`.
//!
//! ```text
//! cargo run --release -p sluice-benches --bin mesh_bench -- [--rate 1000] [--duration 20s] \
//!     [--connections 8] [--out FILE]
//! ```
//!
//! For each path (`direct`, `sluice pair`, `sluice mTLS pair`, `nginx pair`): start its
//! proxies (for the mTLS pair, check that requests really cross mTLS and B's authorization),
//! read their idle memory, warm up, run the fixed-rate phase, read peak memory, run the closed-loop phase,
//! read peak memory again, stop the proxies. Then print the report (and write it with
//! `--out`).

mod attack;
mod error;
mod grpc;
mod load;
mod mtls;
mod procs;
mod profile;
mod report;
mod scenarios;
mod soak;
mod spread;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::error::BenchError;
use crate::mtls::MeshFiles;
use crate::procs::{HaproxyPair, Hop, NginxPair, ProcSample, SluiceOptions, SluicePair, Watched};
use crate::report::{Latency, Machine, Params, PathReport, ProcReport, Report, Throughput};
use crate::upstream::Upstream;

/// Measures the latency and throughput a pair of sluice proxies adds, next to the direct path
/// and an nginx pair.
#[derive(Debug, Parser)]
#[command(name = "mesh_bench", args_override_self = true)]
struct Args {
    /// Fixed request rate (requests per second) for the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long the measured fixed-rate phase lasts, per path.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fixed-rate warm-up before it, discarded (fills the proxies' connection pools).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Keep-alive connections for the fixed-rate phase.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long the closed-loop (max throughput) phase lasts, per path.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Connections for the closed-loop phase (default: --connections).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Latency runs of every path, one after the other (paths alternate within each round):
    /// the ratios to nginx are given as the median of the rounds with their range, since one
    /// path's run can come out slow on a shared machine. The detailed tables are the first
    /// round's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Start every path once and keep it running through all the rounds, each round running
    /// the paths in turn (backwards every other round). A ratio then compares two runs a few
    /// seconds apart, so a host whose capacity drifts by the minute (steal) moves both sides
    /// alike; use many short rounds, e.g. `--rounds 15 --warmup 1s --duration 4s
    /// --max-duration 2s`. Without it, each round starts its own proxies.
    #[arg(long)]
    interleave: bool,
    /// A request slower than this counts as an error.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Which paths to measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,sluice,mtls,nginx,haproxy"
    )]
    paths: Vec<PathKind>,
    /// Write the Markdown report here, and the JSON next to it (same name, `.json`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The sluice-proxy binary (default: build and use `target/release/sluice-proxy`).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// `SLUICE_PROXY_LOG` for the proxies; `warn` keeps the per-request access log off, as
    /// nginx's is.
    #[arg(long, default_value = "warn")]
    sluice_log: String,
    /// `TOKIO_WORKER_THREADS` for each sluice proxy (default: tokio's, one per CPU).
    #[arg(long)]
    sluice_worker_threads: Option<usize>,
    /// `SLUICE_PROXY_RUNTIME` for each sluice proxy (`current-thread`, `multi-thread` or
    /// `per-core`; default: the proxy's own default).
    #[arg(long)]
    sluice_runtime: Option<String>,
    /// More environment for each sluice proxy, `NAME=VALUE`: e.g.
    /// `GLIBC_TUNABLES=glibc.malloc.arena_max=1` to see what the allocator does.
    #[arg(long = "sluice-env", value_parser = parse_env)]
    sluice_env: Vec<(String, String)>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// The HAProxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
    /// What to run: `latency` (HTTP/1.1 latency and throughput through every path), `grpc`
    /// (HTTP/2 and gRPC with h2load), `churn` (new connections per second), `attack` (memory
    /// after a slowloris-style attack), `soak` (the mTLS pair under config churn).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "latency,grpc,churn,attack,soak"
    )]
    scenarios: Vec<Scenario>,
    /// gRPC: measured time per path and call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grpc_duration: Duration,
    /// gRPC: h2load's warm-up before it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    grpc_warmup: Duration,
    /// gRPC: rounds, each running every path once per call with the pairs kept running, the
    /// paths in turn and backwards every other round; the ratios to HAProxy are the medians of
    /// the rounds. One h2load run is easily off by a third on a host with steal.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    grpc_rounds: u32,
    /// gRPC: HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    grpc_connections: usize,
    /// gRPC: concurrent streams per connection.
    #[arg(long, default_value_t = 100)]
    grpc_streams: usize,
    /// Churn: time per path.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    churn_duration: Duration,
    /// Attack: slow connections opened.
    #[arg(long, default_value_t = 5000)]
    attack_connections: usize,
    /// Attack: how long they are held before being closed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    attack_hold: Duration,
    /// Attack: also attack nginx's and HAProxy's B, for reference.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    attack_references: bool,
    /// Soak: how long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    soak_duration: Duration,
    /// Soak: requests per second.
    #[arg(long, default_value_t = 2000)]
    soak_rate: u32,
    /// Instead of the latency run: instructions per request of each pair in `--paths`, under
    /// valgrind's callgrind, each sluice pair for each runtime shape in `--profile-runtimes`.
    #[arg(long)]
    callgrind: bool,
    /// With `--callgrind`: requests counted per pair.
    #[arg(long, default_value_t = 5000)]
    profile_requests: u64,
    /// With `--callgrind`: requests sent before counting.
    #[arg(long, default_value_t = 500)]
    profile_warmup: u64,
    /// With `--callgrind`: where the callgrind dumps go.
    #[arg(long, default_value = "target/bench/callgrind")]
    profile_dir: PathBuf,
    /// With `--callgrind`: runtime shapes to compare, each `current-thread`, `multi-thread`
    /// or `multi-thread:N` (N workers); default: the proxy's default only.
    #[arg(long, value_delimiter = ',')]
    profile_runtimes: Vec<String>,
    /// With `--callgrind`: the calls to count, `http1` (closed loop), `grpc` (unary calls over
    /// HTTP/2 with h2load) and/or `stream` (gRPC server streams), each through its own pair.
    #[arg(long, value_delimiter = ',', default_value = "http1,grpc")]
    profile_calls: Vec<ProfileCall>,
}

/// A kind of call `--callgrind` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProfileCall {
    /// HTTP/1.1 requests.
    Http1,
    /// gRPC unary calls over HTTP/2.
    Grpc,
    /// gRPC server streams over HTTP/2.
    Stream,
}

/// A part of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// HTTP/1.1 latency and throughput through every path.
    Latency,
    /// HTTP/2 and gRPC (h2load).
    Grpc,
    /// New connections per second.
    Churn,
    /// Memory after a slowloris-style attack.
    Attack,
    /// The mTLS pair under config churn for a long time.
    Soak,
}

/// A path through which the client reaches the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PathKind {
    /// Client → upstream.
    Direct,
    /// Client → sluice-proxy A (outbound) → sluice-proxy B (inbound) → upstream, plaintext.
    Sluice,
    /// The same with mTLS (TLS 1.3, SPIFFE-verified both ways) between A and B and
    /// authorization on B's inbound: the mesh's real configuration.
    Mtls,
    /// Client → nginx A → nginx B → upstream.
    Nginx,
    /// Client → HAProxy A → HAProxy B → upstream.
    Haproxy,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => report::DIRECT,
            PathKind::Sluice => report::SLUICE,
            PathKind::Mtls => report::SLUICE_MTLS,
            PathKind::Nginx => report::NGINX,
            PathKind::Haproxy => report::HAPROXY,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh_bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The proxies of one path, stopped when dropped.
enum Running {
    Direct,
    Sluice(SluicePair),
    Mtls(SluicePair),
    Nginx(NginxPair),
    Haproxy(HaproxyPair),
}

/// A latency path whose proxies are running and answering.
struct Started {
    kind: PathKind,
    running: Running,
    entry: SocketAddr,
    watched: Vec<Watched>,
    /// mTLS: B's authorization counters before the first warm-up, and the successes the
    /// client has counted in measured phases since.
    authz: Option<(mtls::AuthzCounts, u64)>,
}

/// What starting a latency path gave.
enum Start {
    Started(Started),
    /// Its program is missing: the report says so.
    Skipped(PathReport),
    /// Nothing to run (the sluice paths when there is no proxy binary).
    Absent,
}

/// Which reference programs answered `-v`.
#[derive(Clone, Copy)]
struct Versions {
    nginx: bool,
    haproxy: bool,
}

/// A reference pair whose program did not run (`program -v` failed): reported as skipped,
/// with how to get it, rather than failing the whole run.
fn skip(kind: PathKind, program: &str, bin: &Path) -> Start {
    let why = format!(
        "`{} -v` failed; install {program} (scripts/bench does) or pass --{program}",
        bin.display()
    );
    eprintln!("mesh_bench: skipping the {}: {why}", kind.name());
    Start::Skipped(PathReport::skipped(kind.name(), why))
}

/// Starts `kind`'s proxies against `upstream`, in `dir`. The mTLS pair is checked to be doing
/// mTLS and authorization before anything is measured, and again after each round (see
/// `mtls::check_after`): its figures must never be of a plaintext fallback.
async fn start_path(
    args: &Args,
    kind: PathKind,
    sluice: &Option<SluiceOptions>,
    versions: Versions,
    upstream: SocketAddr,
    dir: &Path,
) -> Result<Start, BenchError> {
    let running = match kind {
        PathKind::Direct => Running::Direct,
        PathKind::Sluice => match sluice {
            Some(opts) => Running::Sluice(SluicePair::start(opts, upstream, dir)?),
            None => return Ok(Start::Absent),
        },
        PathKind::Mtls => match sluice {
            Some(opts) => {
                let mesh = MeshFiles::write(&dir.join("mtls-mesh"))?;
                Running::Mtls(SluicePair::start_mtls(opts, upstream, &mesh, dir)?)
            }
            None => return Ok(Start::Absent),
        },
        PathKind::Nginx => {
            if !versions.nginx {
                return Ok(skip(kind, "nginx", &args.nginx));
            }
            Running::Nginx(NginxPair::start(&args.nginx, upstream, dir, Hop::Http1)?)
        }
        PathKind::Haproxy => {
            if !versions.haproxy {
                return Ok(skip(kind, "haproxy", &args.haproxy));
            }
            Running::Haproxy(HaproxyPair::start(
                &args.haproxy,
                upstream,
                dir,
                Hop::Http1,
            )?)
        }
    };
    let (entry, watched) = match &running {
        Running::Direct => (upstream, Vec::new()),
        Running::Sluice(pair) | Running::Mtls(pair) => (pair.entry(), pair.watched()),
        Running::Nginx(pair) => {
            // The master forks its worker after binding; give it a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            (pair.entry(), pair.watched())
        }
        Running::Haproxy(pair) => (pair.entry(), pair.watched()),
    };
    let authz = match &running {
        Running::Mtls(pair) => {
            eprintln!("{}: checking mTLS and authorization", kind.name());
            let counts = mtls::verify(pair.entry(), pair.b_admin(), mtls::VERIFY_TIMEOUT).await;
            Some((counts.map_err(|e| pair.with_logs(e))?, 0))
        }
        _ => None,
    };
    Ok(Start::Started(Started {
        kind,
        running,
        entry,
        watched,
        authz,
    }))
}

async fn run(args: Args) -> Result<(), BenchError> {
    let load_before = load_average();
    let ticks_before = cpu_ticks();
    let scratch = tempfile::Builder::new()
        .prefix("sluice-mesh-bench-")
        .tempdir()
        .map_err(BenchError::io("create a scratch directory"))?;
    let upstream = Upstream::start()?;
    let sluice = if args.paths.contains(&PathKind::Sluice) || args.paths.contains(&PathKind::Mtls) {
        let bin = match &args.proxy_bin {
            Some(bin) => bin.clone(),
            None => procs::sluice_proxy_bin(true)?,
        };
        Some(SluiceOptions {
            bin,
            log: args.sluice_log.clone(),
            worker_threads: args.sluice_worker_threads,
            runtime: args.sluice_runtime.clone(),
            wrapper: Vec::new(),
            env: args.sluice_env.clone(),
        })
    } else {
        None
    };
    if args.callgrind {
        let Some(opts) = &sluice else {
            return Err(BenchError::Setup(
                "--callgrind needs `sluice` or `mtls` in --paths".into(),
            ));
        };
        return run_profile(&args, opts, upstream.addr, scratch.path()).await;
    }
    let nginx_version = args
        .paths
        .contains(&PathKind::Nginx)
        .then(|| procs::nginx_version(&args.nginx))
        .flatten();
    let haproxy_version = args
        .paths
        .contains(&PathKind::Haproxy)
        .then(|| procs::haproxy_version(&args.haproxy))
        .flatten();
    if args.paths.contains(&PathKind::Haproxy) && haproxy_version.is_none() {
        eprintln!(
            "mesh_bench: HAProxy not found; its pairs are skipped (scripts/bench installs it)"
        );
    }

    let mut rounds: Vec<Vec<PathReport>> = Vec::new();
    let latency_paths: &[PathKind] = if args.scenarios.contains(&Scenario::Latency) {
        &args.paths
    } else {
        &[]
    };
    let versions = Versions {
        nginx: nginx_version.is_some(),
        haproxy: haproxy_version.is_some(),
    };
    // With --interleave, the paths started in the first round, kept running for the others.
    let mut kept: Vec<Started> = Vec::new();
    for round in 1..=args.rounds {
        let mut paths = Vec::new();
        if args.rounds > 1 && !latency_paths.is_empty() {
            eprintln!("latency, round {round} of {}", args.rounds);
        }
        let mut started = if args.interleave && round > 1 {
            std::mem::take(&mut kept)
        } else {
            // Each round's proxies in fresh directories: nothing a previous round wrote is
            // read back.
            let dir = scratch.path().join(format!("round-{round}"));
            let mut started = Vec::new();
            for &kind in latency_paths {
                match start_path(&args, kind, &sluice, versions, upstream.addr, &dir).await? {
                    Start::Started(s) => started.push(s),
                    Start::Skipped(report) => paths.push(report),
                    Start::Absent => {}
                }
            }
            started
        };
        // Rounds of separately started pairs keep one order; interleaved ones alternate it.
        let order = spread::turn_order(started.len(), if args.interleave { round } else { 1 });
        let mut measured: Vec<Option<PathReport>> = started.iter().map(|_| None).collect();
        for i in order {
            let path = &mut started[i];
            let mut report = measure(&args, path.kind, path.entry, &path.watched).await?;
            if let (Running::Mtls(pair), Some((before, ok))) = (&path.running, &mut path.authz) {
                *ok += report.fixed.as_ref().map_or(0, |f| f.ok)
                    + report.max.as_ref().map_or(0, |t| t.ok);
                let verified = mtls::check_after(pair.b_admin(), *before, *ok).await;
                report.verified = Some(verified.map_err(|e| pair.with_logs(e))?);
            }
            measured[i] = Some(report);
        }
        paths.extend(measured.into_iter().flatten());
        if args.interleave {
            kept = started;
        }
        rounds.push(paths);
    }
    drop(kept);
    let mut rounds = rounds.into_iter();
    let paths = rounds.next().unwrap_or_default();
    let more_rounds: Vec<Vec<PathReport>> = rounds.collect();

    let sections = match &sluice {
        Some(opts) => {
            run_scenarios(
                &args,
                opts,
                &upstream,
                scratch.path(),
                nginx_version.is_some().then_some(args.nginx.as_path()),
                haproxy_version.is_some().then_some(args.haproxy.as_path()),
            )
            .await?
        }
        None => Vec::new(),
    };
    let mut report = Report {
        params: Params {
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            connections: args.connections,
            max_duration_s: args.max_duration.as_secs_f64(),
            max_connections: max_connections(&args),
            rounds: args.rounds,
            interleave: args.interleave,
            sluice_log: args.sluice_log.clone(),
            sluice_worker_threads: args.sluice_worker_threads,
        },
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            load_before,
            load_after: load_average(),
            steal_percent: ticks_before
                .zip(cpu_ticks())
                .and_then(|(before, after)| report::steal_percent(before, after)),
            nginx: nginx_version,
            haproxy: haproxy_version,
            sluice_proxy: sluice.map(|s| s.bin.display().to_string()),
        },
        paths,
        more_rounds,
        sections,
    };
    report.compute_added();
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(out) = &args.out {
        write_outputs(out, &markdown, &report)?;
    }
    Ok(())
}

/// The scenarios after the latency run, each a section of the report.
async fn run_scenarios(
    args: &Args,
    opts: &SluiceOptions,
    upstream: &Upstream,
    scratch: &Path,
    nginx: Option<&Path>,
    haproxy: Option<&Path>,
) -> Result<Vec<scenarios::Section>, BenchError> {
    let out_dir = args
        .out
        .as_ref()
        .and_then(|o| o.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let ctx = scenarios::Ctx {
        sluice: opts,
        nginx,
        haproxy,
        scratch,
        out_dir: &out_dir,
    };
    let mut sections = Vec::new();
    for &s in &args.scenarios {
        let section = match s {
            Scenario::Latency => continue,
            Scenario::Grpc => {
                let params = grpc::GrpcParams {
                    connections: args.grpc_connections,
                    streams: args.grpc_streams,
                    duration: args.grpc_duration,
                    warmup: args.grpc_warmup,
                    rounds: args.grpc_rounds,
                };
                scenarios::grpc(&ctx, &params).await?
            }
            Scenario::Churn => {
                scenarios::churn(&ctx, upstream.addr, args.churn_duration, args.connections).await?
            }
            Scenario::Attack => {
                scenarios::attack(
                    &ctx,
                    upstream.addr,
                    args.attack_connections,
                    args.attack_hold,
                    args.attack_references,
                )
                .await?
            }
            Scenario::Soak => {
                scenarios::soak(
                    &ctx,
                    upstream,
                    args.soak_rate,
                    args.soak_duration,
                    args.connections,
                )
                .await?
            }
        };
        sections.push(section);
    }
    Ok(sections)
}

/// `--callgrind`: instructions per request for each sluice pair and runtime shape.
async fn run_profile(
    args: &Args,
    opts: &SluiceOptions,
    upstream: SocketAddr,
    scratch: &Path,
) -> Result<(), BenchError> {
    let params = profile::ProfileParams {
        requests: args.profile_requests,
        warmup: args.profile_warmup,
        connections: args.connections,
        dir: args.profile_dir.clone(),
    };
    let shapes = if args.profile_runtimes.is_empty() {
        vec![None]
    } else {
        args.profile_runtimes.iter().map(Some).collect()
    };
    let grpc_upstream = upstream::GrpcUpstream::start()?;
    let mut rows = Vec::new();
    for shape in shapes {
        let mut opts = opts.clone();
        if let Some(shape) = shape {
            let (runtime, workers) = match shape.split_once(':') {
                Some((r, n)) => (
                    r,
                    Some(n.parse().map_err(|_| {
                        BenchError::Setup(format!(
                            "--profile-runtimes: bad worker count in {shape}"
                        ))
                    })?),
                ),
                None => (shape.as_str(), None),
            };
            opts.runtime = Some(runtime.to_owned());
            opts.worker_threads = workers.or(opts.worker_threads);
        }
        for &kind in &args.paths {
            let subject = match kind {
                PathKind::Sluice => profile::Subject::Sluice { mtls: false },
                PathKind::Mtls => profile::Subject::Sluice { mtls: true },
                _ => continue,
            };
            for &call in &args.profile_calls {
                let (call, upstream) = match call {
                    ProfileCall::Http1 => (profile::Call::Http1, upstream),
                    ProfileCall::Grpc => (profile::Call::GrpcUnary, grpc_upstream.addr),
                    ProfileCall::Stream => (profile::Call::GrpcStream, grpc_upstream.addr),
                };
                rows.push(
                    profile::profile(&opts, &params, upstream, scratch, &subject, call).await?,
                );
            }
        }
    }
    // The references have one shape; counted once, after the sluice pairs.
    for &kind in &args.paths {
        let subject = match kind {
            PathKind::Nginx if procs::nginx_version(&args.nginx).is_some() => {
                profile::Subject::Nginx(args.nginx.clone())
            }
            PathKind::Haproxy if procs::haproxy_version(&args.haproxy).is_some() => {
                profile::Subject::Haproxy(args.haproxy.clone())
            }
            PathKind::Nginx | PathKind::Haproxy => {
                eprintln!(
                    "mesh_bench: {} not found; not profiled (scripts/bench installs it)",
                    kind.name()
                );
                continue;
            }
            _ => continue,
        };
        for &call in &args.profile_calls {
            let (call, upstream) = match call {
                ProfileCall::Http1 => (profile::Call::Http1, upstream),
                ProfileCall::Grpc => (profile::Call::GrpcUnary, grpc_upstream.addr),
                ProfileCall::Stream => (profile::Call::GrpcStream, grpc_upstream.addr),
            };
            rows.push(profile::profile(opts, &params, upstream, scratch, &subject, call).await?);
        }
    }
    let markdown = format!(
        "{}\n1-min load average {:.2} (instruction counts do not depend on it)\n",
        profile::markdown(&rows, &params),
        load_average()
    );
    println!("{markdown}");
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown).map_err(BenchError::file("write", out))?;
        let json = out.with_extension("json");
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| BenchError::Setup(format!("serialise the profile: {e}")))?;
        std::fs::write(&json, text).map_err(BenchError::file("write", &json))?;
    }
    Ok(())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn max_connections(args: &Args) -> usize {
    args.max_connections.unwrap_or(args.connections)
}

/// Runs every phase against one path.
async fn measure(
    args: &Args,
    kind: PathKind,
    entry: SocketAddr,
    watched: &[Watched],
) -> Result<PathReport, BenchError> {
    let name = kind.name();
    let idle = sample_all(watched)?;

    eprintln!("{name}: warm-up {:?} at {} req/s", args.warmup, args.rate);
    let warm = load::fixed_rate(
        entry,
        args.rate,
        args.warmup,
        args.connections,
        args.timeout,
    )
    .await?;
    if warm.ok == 0 {
        return Err(BenchError::NoSuccess {
            path: name.into(),
            phase: "warm-up",
            first_error: warm.first_error(),
        });
    }

    eprintln!("{name}: {:?} at {} req/s", args.duration, args.rate);
    let before = sample_all(watched)?;
    let started = Instant::now();
    let fixed = load::fixed_rate(
        entry,
        args.rate,
        args.duration,
        args.connections,
        args.timeout,
    )
    .await?;
    let wall = started.elapsed();
    let after_rate = sample_all(watched)?;
    if fixed.ok == 0 {
        return Err(BenchError::NoSuccess {
            path: name.into(),
            phase: "fixed rate",
            first_error: fixed.first_error(),
        });
    }

    eprintln!(
        "{name}: max throughput, {} connections for {:?}",
        max_connections(args),
        args.max_duration
    );
    let max = load::max_throughput(
        entry,
        args.max_duration,
        max_connections(args),
        args.timeout,
    )
    .await?;
    let after_max = sample_all(watched)?;

    let processes = watched
        .iter()
        .zip(idle.iter().zip(before.iter().zip(&after_rate)))
        .zip(&after_max)
        .map(|((w, (idle, (before, rate))), max)| {
            let cpu_s = rate.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e9;
            ProcReport {
                label: w.label.clone(),
                threads: rate.threads,
                idle_rss_kib: idle.rss_kib,
                peak_rss_at_rate_kib: rate.hwm_kib,
                peak_rss_kib: max.hwm_kib,
                cpu_at_rate_pct: 100.0 * cpu_s / wall.as_secs_f64().max(1e-9),
            }
        })
        .collect();
    Ok(PathReport {
        name: name.into(),
        skipped: None,
        fixed: Some(Latency::of(&fixed)),
        added: None,
        verified: None,
        max: Some(Throughput::of(&max)),
        processes,
    })
}

fn sample_all(watched: &[Watched]) -> Result<Vec<ProcSample>, BenchError> {
    watched.iter().map(|w| ProcSample::read(w.pid)).collect()
}

/// The 1-minute load average, a hint of how noisy the figures are.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The machine's CPU time so far, from `/proc/stat`.
fn cpu_ticks() -> Option<report::CpuTicks> {
    report::CpuTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `out` gets the Markdown; the same name with `.json` gets the JSON.
fn write_outputs(out: &Path, markdown: &str, report: &Report) -> Result<(), BenchError> {
    let json_path = out.with_extension("json");
    let md_path = if json_path == out {
        out.with_extension("md")
    } else {
        out.to_owned()
    };
    if let Some(dir) = md_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))?;
    }
    std::fs::write(&md_path, markdown).map_err(BenchError::file("write", &md_path))?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Setup(format!("serialise the report: {e}")))?;
    std::fs::write(&json_path, json + "\n").map_err(BenchError::file("write", &json_path))?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}
