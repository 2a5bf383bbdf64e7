//! The runs after the HTTP/1.1 latency run, each with its own proxies and its own section of
//! the report: HTTP/2 and gRPC ([`crate::grpc`]), connection churn, memory after an attack
//! ([`crate::attack`]) and the soak ([`crate::soak`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::attack;
use crate::error::BenchError;
use crate::grpc::{self, GrpcParams, GrpcRow};
use crate::load::{self, ChurnKind};
use crate::mtls::MeshFiles;
use crate::procs::{HaproxyPair, Hop, NginxPair, ProcSample, SluiceOptions, SluicePair, Watched};
use crate::report;
use crate::soak;
use crate::spread;
use crate::upstream::{
    GRPC_MESSAGE, GRPC_STREAM, GRPC_UNARY, GrpcUpstream, STREAM_MESSAGES, TcpUpstream, Upstream,
};

/// One section of the report.
#[derive(Debug, Serialize)]
pub struct Section {
    /// Its Markdown.
    pub markdown: String,
    /// Its figures.
    pub data: serde_json::Value,
}

/// What every scenario may use.
pub struct Ctx<'a> {
    /// How to run sluice-proxy.
    pub sluice: &'a SluiceOptions,
    /// nginx, if it can run.
    pub nginx: Option<&'a Path>,
    /// HAProxy, if it can run.
    pub haproxy: Option<&'a Path>,
    /// Scratch space.
    pub scratch: &'a Path,
    /// Where the report goes (plots and CSVs go beside it).
    pub out_dir: &'a Path,
}

/// A pair under test, stopped when dropped.
enum Pair {
    Direct,
    Sluice(SluicePair),
    Nginx(NginxPair),
    Haproxy(HaproxyPair),
}

impl Pair {
    fn watched(&self) -> Vec<Watched> {
        match self {
            Pair::Direct => Vec::new(),
            Pair::Sluice(p) => p.watched(),
            Pair::Nginx(p) => p.watched(),
            Pair::Haproxy(p) => p.watched(),
        }
    }
}

fn cpu_ns(watched: &[Watched]) -> u64 {
    watched
        .iter()
        .filter_map(|w| ProcSample::read(w.pid).ok())
        .map(|s| s.cpu_ns)
        .sum()
}

/// Every path a scenario compares, started against `upstream` speaking `hop`.
fn start_pairs(
    ctx: &Ctx<'_>,
    upstream: std::net::SocketAddr,
    hop: Hop,
    tag: &str,
) -> Result<Vec<(&'static str, std::net::SocketAddr, Pair)>, BenchError> {
    let dir = ctx.scratch.join(tag);
    let mut pairs = vec![(report::DIRECT, upstream, Pair::Direct)];
    let plain = SluicePair::start(ctx.sluice, upstream, &dir.join("plain"))?;
    pairs.push((report::SLUICE, plain.entry(), Pair::Sluice(plain)));
    let mesh = MeshFiles::write(&dir.join("mesh"))?;
    let mtls = SluicePair::start_mtls(ctx.sluice, upstream, &mesh, &dir.join("mtls"))?;
    pairs.push((report::SLUICE_MTLS, mtls.entry(), Pair::Sluice(mtls)));
    if let Some(nginx) = ctx.nginx {
        let p = NginxPair::start(nginx, upstream, &dir.join("nginx"), hop)?;
        pairs.push((report::NGINX, p.entry(), Pair::Nginx(p)));
    }
    if let Some(haproxy) = ctx.haproxy {
        let p = HaproxyPair::start(haproxy, upstream, &dir.join("haproxy"), hop)?;
        pairs.push((report::HAPROXY, p.entry(), Pair::Haproxy(p)));
    }
    // nginx forks its worker after binding.
    std::thread::sleep(Duration::from_millis(300));
    Ok(pairs)
}

/// HTTP/2 and gRPC: unary calls and a server stream through every pair, with h2load, in
/// `params.rounds` rounds. The pairs are started once; each round runs every path in turn
/// (backwards every other round), so the ratio to HAProxy is taken between runs seconds apart
/// and reported as the median of the rounds: one h2load run on a host with steal was seen
/// anywhere from 0.61× to 1.05× of HAProxy's server streams from one run to the next.
pub async fn grpc(ctx: &Ctx<'_>, params: &GrpcParams) -> Result<Section, BenchError> {
    let upstream = GrpcUpstream::start()?;
    let pairs = start_pairs(ctx, upstream.addr, Hop::H2, "grpc")?;
    let total = params.rounds.max(1);
    let mut rounds: Vec<Vec<GrpcRow>> = Vec::new();
    for round in 1..=total {
        let order = spread::turn_order(pairs.len(), round);
        let mut rows = Vec::new();
        for (call, path) in [("unary", GRPC_UNARY), ("server stream", GRPC_STREAM)] {
            for &i in &order {
                let (name, entry, pair) = &pairs[i];
                if total > 1 {
                    eprintln!("gRPC {call}, round {round} of {total}: {name}");
                } else {
                    eprintln!("gRPC {call}: {name}");
                }
                rows.push(grpc_row(ctx, params, name, *entry, pair, call, path)?);
            }
        }
        // Each round's table in the paths' own order, whichever order they ran in.
        rows.sort_by_key(|r| {
            let call = usize::from(r.call != "unary");
            let path = pairs.iter().position(|(n, _, _)| *n == r.path);
            (call, path)
        });
        rounds.push(rows);
    }
    let mut note = grpc::against_haproxy(&rounds);
    let rows = rounds.first().cloned().unwrap_or_default();
    // h2load counts any `200` as a success, and a proxy answers a refused or failed gRPC call
    // with `200` and a `grpc-status` (as gRPC requires): a row without its messages measured
    // something else. Every round's rows are checked, not only the table's.
    let several = rounds.len() > 1;
    for (n, r) in rounds
        .iter()
        .enumerate()
        .flat_map(|(i, rows)| rows.iter().map(move |r| (i + 1, r)))
    {
        let round = if several {
            format!(" (round {n})")
        } else {
            String::new()
        };
        let messages = if r.call == "unary" {
            1
        } else {
            STREAM_MESSAGES
        };
        if r.data_bytes_per_call < f64::from(messages) * GRPC_MESSAGE.len() as f64 * 0.9 {
            note.push_str(&format!(
                "- ✗ {} {}{round}: {:.0} DATA bytes per call where {messages} message(s) are at least \
                 {:.0}: the calls were answered without their messages (a refusal or an error \
                 in `grpc-status`), so this row does not measure the path\n",
                r.path,
                r.call,
                r.data_bytes_per_call,
                f64::from(messages) * GRPC_MESSAGE.len() as f64
            ));
        }
    }
    let more_rounds: Vec<Vec<GrpcRow>> = rounds.into_iter().skip(1).collect();
    Ok(Section {
        markdown: grpc::markdown(&rows, params, &format!("\n{note}")),
        data: serde_json::json!({ "rows": rows, "more_rounds": more_rounds }),
    })
}

/// One h2load run of `call` through one path, with the CPU both of its proxies used.
fn grpc_row(
    ctx: &Ctx<'_>,
    params: &GrpcParams,
    name: &str,
    entry: std::net::SocketAddr,
    pair: &Pair,
    call: &str,
    path: &str,
) -> Result<GrpcRow, BenchError> {
    let watched = pair.watched();
    let before = cpu_ns(&watched);
    let run = grpc::h2load(entry, path, params, &ctx.scratch.join("h2load"))?;
    let cpu_s = cpu_ns(&watched).saturating_sub(before) as f64 / 1e9;
    // h2load's CPU window includes its warm-up; count those calls too.
    let calls = run.rps * (params.duration + params.warmup).as_secs_f64();
    Ok(GrpcRow {
        path: name.into(),
        call: call.into(),
        rps: run.rps,
        ok: run.ok,
        failed: run.failed,
        p50_ms: grpc::us_quantile_ms(&run.hist, 0.5),
        p99_ms: grpc::us_quantile_ms(&run.hist, 0.99),
        cpu_ms_per_1k: (!watched.is_empty() && calls > 0.0)
            .then(|| cpu_s * 1000.0 / calls * 1000.0),
        data_bytes_per_call: run.data_bytes as f64 / run.ok.max(1) as f64,
    })
}

/// One churn figure.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnRow {
    /// The path.
    pub path: String,
    /// What each connection carried.
    pub kind: String,
    /// New connections per second (each one exchange).
    pub per_second: f64,
    /// Successful exchanges.
    pub ok: u64,
    /// Failed ones.
    pub errors: u64,
    /// Median connect-to-answer time, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// An error, if any.
    pub first_error: Option<String>,
}

/// Connection churn: new HTTP/1.1 client connections per second through every pair (one
/// request each, `connection: close`; the pairs keep their pooled connections to the next
/// hop), and new opaque TCP connections through the sluice pairs, each of which is a new mTLS
/// connection (a full TLS 1.3 handshake with both certificates verified, and an authorization
/// of the `tcp` grant) between the mTLS pair's proxies.
pub async fn churn(
    ctx: &Ctx<'_>,
    http_upstream: std::net::SocketAddr,
    duration: Duration,
    connections: usize,
) -> Result<Section, BenchError> {
    let timeout = Duration::from_secs(10);
    let mut rows = Vec::new();
    let mut push = |path: &str, kind: &str, o: load::Outcome| {
        let q = |q: f64| o.latency.value_at_quantile(q) as f64 / 1e6;
        rows.push(ChurnRow {
            path: path.into(),
            kind: kind.into(),
            per_second: o.throughput(),
            ok: o.ok,
            errors: o.errors,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            first_error: (o.errors > 0).then(|| o.first_error()),
        });
    };
    {
        let pairs = start_pairs(ctx, http_upstream, Hop::Http1, "churn-http")?;
        for (name, entry, _) in &pairs {
            eprintln!("churn, HTTP/1.1: {name}");
            let o = load::churn(*entry, ChurnKind::Http, duration, connections, timeout).await?;
            push(name, "HTTP/1.1 request", o);
        }
    }
    let tcp = TcpUpstream::start()?;
    let dir = ctx.scratch.join("churn-tcp");
    let plain = SluicePair::start(ctx.sluice, tcp.addr, &dir.join("plain"))?;
    let mesh = MeshFiles::write(&dir.join("mesh"))?;
    let mtls = SluicePair::start_mtls(ctx.sluice, tcp.addr, &mesh, &dir.join("mtls"))?;
    for (name, entry, kind) in [
        (report::DIRECT, tcp.addr, "opaque TCP"),
        (report::SLUICE, plain.entry(), "opaque TCP"),
        (
            report::SLUICE_MTLS,
            mtls.entry(),
            "opaque TCP = a new mTLS connection A → B",
        ),
    ] {
        eprintln!("churn, opaque TCP: {name}");
        let o = load::churn(entry, ChurnKind::Tcp, duration, connections, timeout).await?;
        push(name, kind, o);
    }
    let mut md = format!(
        "### Connection churn ({connections} clients, {}s each, a new connection per exchange)\n\n\
         | path | each connection carries | new connections/s | ok | errors | p50 ms | p99 ms |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        duration.as_secs()
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.3} | {:.3} |\n",
            r.path, r.kind, r.per_second, r.ok, r.errors, r.p50_ms, r.p99_ms
        ));
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        if let Some(e) = &r.first_error {
            md.push_str(&format!("- {} ({}) error: {e}\n", r.path, r.kind));
        }
    }
    Ok(Section {
        markdown: md,
        data: serde_json::to_value(&rows).unwrap_or_default(),
    })
}

/// Memory after a slowloris-style attack, on the inbound proxy of the mTLS pair (and, for
/// reference, nginx's and HAProxy's B).
pub async fn attack(
    ctx: &Ctx<'_>,
    http_upstream: std::net::SocketAddr,
    connections: usize,
    hold: Duration,
    references: bool,
) -> Result<Section, BenchError> {
    attack::raise_fd_limit();
    let dir = ctx.scratch.join("attack");
    let mut rows = Vec::new();
    {
        let mesh = MeshFiles::write(&dir.join("mesh"))?;
        let pair = SluicePair::start_mtls(ctx.sluice, http_upstream, &mesh, &dir.join("mtls"))?;
        // Idle means warmed up: the pools and lazily built state exist, as in production.
        load::exact(pair.entry(), 2000, 8, Duration::from_secs(10)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = pair.watched()[1].clone();
        eprintln!("attack: {connections} slow connections on {}", b.label);
        rows.push(attack::slowloris(&b.label, pair.b_inbound(), b.pid, connections, hold).await?);
    }
    if references {
        for (name, hop_start) in [("nginx", ctx.nginx), ("haproxy", ctx.haproxy)] {
            let Some(bin) = hop_start else { continue };
            let (entry, target) = match name {
                "nginx" => {
                    let p = NginxPair::start(bin, http_upstream, &dir.join(name), Hop::Http1)?;
                    std::thread::sleep(Duration::from_millis(300));
                    (p.b_entry(), Pair::Nginx(p))
                }
                _ => {
                    let p = HaproxyPair::start(bin, http_upstream, &dir.join(name), Hop::Http1)?;
                    (p.b_entry(), Pair::Haproxy(p))
                }
            };
            let Some(b) = target.watched().get(1).cloned() else {
                continue;
            };
            eprintln!("attack: {connections} slow connections on {}", b.label);
            rows.push(attack::slowloris(&b.label, entry, b.pid, connections, hold).await?);
        }
    }
    Ok(Section {
        markdown: attack::markdown(&rows, hold),
        data: serde_json::to_value(&rows).unwrap_or_default(),
    })
}

/// The soak on the mTLS pair.
pub async fn soak(
    ctx: &Ctx<'_>,
    http_upstream: &Upstream,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Result<Section, BenchError> {
    let dir = ctx.scratch.join("soak");
    let mesh = Arc::new(MeshFiles::write(&dir.join("mesh"))?);
    let pair = SluicePair::start_mtls(ctx.sluice, http_upstream.addr, &mesh, &dir.join("mtls"))?;
    crate::mtls::verify(pair.entry(), pair.b_admin(), crate::mtls::VERIFY_TIMEOUT)
        .await
        .map_err(|e| pair.with_logs(e))?;
    eprintln!("soak: {duration:?} at {rate} req/s through the mTLS pair");
    let r = soak::soak(
        pair.entry(),
        mesh.clone(),
        &pair.watched(),
        rate,
        duration,
        connections,
        ctx.out_dir,
    )
    .await
    .map_err(|e| pair.with_logs(e))?;
    let reloads = pair.reloads().await;
    let mut md = soak::markdown(&r);
    md.push_str(&format!(
        "- config reloads applied (`sluice_proxy_snapshot_reloads_total{{result=\"ok\"}}`, A / B): {}\n",
        reloads
    ));
    Ok(Section {
        markdown: md,
        data: serde_json::to_value(&r).unwrap_or_default(),
    })
}
