//! `rollout_bench`: the canary judge in the real local mesh. Runs the shop in `sluice up` with
//! the **shipped** payments CanaryPolicy (`examples/shop/policy/payments/rollout.yaml`; only
//! the step durations are shortened), charges cards from checkout's namespace at `--rate`
//! requests per second, and rolls payments out again and again:
//!
//! - `--healthy N` healthy rollouts (v1 → v2 → v1 …, the same code), each confirmed at its
//!   confirmation step: how many were rolled back (false rollbacks), and the time to promote;
//! - `--bad N` rollouts of each bad version: v3 (5% errors, as the shop ships it) and v4
//!   (+50 ms on every request, `SHOP_LATENCY`): whether each was rolled back, for which
//!   metric, how fast after its first traffic, and how many requests failed meanwhile;
//!
//! each quiet and/or with a **noisy neighbour** (`--noise on|off|both`): a process keeping
//! one core busy half of the time (100 ms busy, 100 ms idle).
//!
//! ```sh
//! cargo build -p sluice-controller -p sluice-proxy -p sluice-shop   # what the shop runs
//! sudo target/release/rollout_bench --healthy 20 --bad 5 --noise both --out target/bench/rollouts.md
//! ```
//!
//! Needs root (network namespaces), `ip`, `iptables`, `setpriv`. Uses `target/debug/sluice`
//! (and the `sluice-proxy` and `shop` beside it) unless `--bin-dir` says otherwise. A speed
//! benchmark, not a test: nothing here asserts; the report says what happened.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

/// Roll the shop's payments out in the local mesh, healthy and bad versions, with and
/// without a noisy neighbour.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    inner: Option<Inner>,
    /// Healthy rollouts per noise setting.
    #[arg(long, default_value_t = 20)]
    healthy: usize,
    /// Rollouts of each bad version (v3: 5% errors; v4: +50 ms) per noise setting.
    #[arg(long, default_value_t = 5)]
    bad: usize,
    /// Charges per second from checkout's namespace.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// With the noisy neighbour, without, or both (quiet first).
    #[arg(long, value_enum, default_value_t = Noise::Both)]
    noise: Noise,
    /// Where `sluice`, `sluice-proxy` and `shop` are.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A rollout that has not ended after this long is counted as stuck.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Inner {
    /// (internal) Charges cards at a fixed rate and prints `ok failed` counts every 200 ms.
    Load {
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        url: String,
    },
    /// (internal) Keeps one core busy half of the time.
    Noise,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Noise {
    On,
    Off,
    Both,
}

/// The shop's step durations and the shortened ones this benchmark uses (the rest of the
/// CanaryPolicy is as shipped).
const SHORTER_STEPS: [(&str, &str); 3] = [
    (
        "{ weight: 5, duration: 30s }",
        "{ weight: 5, duration: 10s }",
    ),
    (
        "{ weight: 25, duration: 1m }",
        "{ weight: 25, duration: 8s }",
    ),
    (
        "{ weight: 50, duration: 2m, confirm: true }",
        "{ weight: 50, duration: 4s, confirm: true }",
    ),
];

fn main() {
    let args = Args::parse();
    match &args.inner {
        Some(Inner::Load { rate, url }) => return load(*rate, url),
        Some(Inner::Noise) => noise(),
        None => {}
    }
    if let Err(e) = run(&args) {
        eprintln!("rollout_bench: {e}");
        std::process::exit(1);
    }
}

/// How one rollout ended.
#[derive(Clone, Debug)]
struct Outcome {
    version: String,
    phase: String,
    /// The failed checks' metrics, most decisive first.
    metrics: Vec<String>,
    /// From the canary's first traffic to the end (promotion: the confirmation included).
    seconds: Option<f64>,
    /// Failed charges (5xx, timeouts) while it ran.
    failed_requests: u64,
    baseline: String,
}

fn run(args: &Args) -> Result<(), String> {
    let bins = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let sluice = bins.join("sluice");
    for b in ["sluice", "sluice-proxy", "shop"] {
        if !bins.join(b).exists() {
            return Err(format!(
                "no {} (build with `cargo build -p sluice-controller -p sluice-proxy -p sluice-shop`, or give --bin-dir)",
                bins.join(b).display()
            ));
        }
    }
    let settings: Vec<bool> = match args.noise {
        Noise::On => vec![true],
        Noise::Off => vec![false],
        Noise::Both => vec![false, true],
    };
    let mut report = String::new();
    report.push_str(&format!(
        "## Rollouts in the local mesh (`rollout_bench`)\n\nThe shop in `sluice up`, payments' shipped CanaryPolicy with the steps shortened to 5% 10s → 25% 8s → 50% 4s (confirmed at once); {} charges/s from checkout's namespace; binaries from {}. Load average before: {}.\n\n",
        args.rate,
        bins.display(),
        loadavg()
    ));
    for noisy in settings {
        let mut neighbour = noisy
            .then(|| {
                Command::new(std::env::current_exe().ok()?)
                    .arg("noise")
                    .spawn()
                    .ok()
            })
            .flatten();
        let result = one_mesh(args, &bins, &sluice);
        if let Some(n) = &mut neighbour {
            let _ = n.kill();
            let _ = n.wait();
        }
        let outcomes = result?;
        report.push_str(&section(noisy, &outcomes));
    }
    report.push_str(&format!("Load average after: {}.\n", loadavg()));
    println!("{report}");
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(out, &report).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

/// One `sluice up` of the shop and every rollout in it.
fn one_mesh(args: &Args, bins: &Path, sluice: &Path) -> Result<Vec<Outcome>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    copy_dir(&shop.join("policy"), &dir.path().join("policy"))?;
    let rollout_yaml = dir.path().join("policy/payments/rollout.yaml");
    let mut text = std::fs::read_to_string(&rollout_yaml).map_err(|e| e.to_string())?;
    for (shipped, shorter) in SHORTER_STEPS {
        if !text.contains(shipped) {
            return Err(format!(
                "the shop's rollout.yaml no longer has `{shipped}`; update SHORTER_STEPS"
            ));
        }
        text = text.replace(shipped, shorter);
    }
    std::fs::write(&rollout_yaml, text).map_err(|e| e.to_string())?;
    let mesh = std::fs::read_to_string(shop.join("mesh.yaml")).map_err(|e| e.to_string())?;
    let mesh = mesh.replace(
        "../../target/debug/shop",
        &bins.join("shop").display().to_string(),
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh).map_err(|e| e.to_string())?;
    let state = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("up.log")).map_err(|e| e.to_string())?;
    let mut up = Command::new(sluice)
        .arg("up")
        .arg(dir.path().join("mesh.yaml"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--ingress", "off", "--team-inbox", "off", "--portal", "off"])
        .args(["--color", "never"])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("sluice up: {e}"))?;
    let result = rollouts(args, sluice, &state, &mut up);
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let _ = up.wait();
    if result.is_err() {
        let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "sluice up's last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    result
}

fn rollouts(
    args: &Args,
    sluice: &Path,
    state: &Path,
    up: &mut Child,
) -> Result<Vec<Outcome>, String> {
    let controller = state.join("controller");
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let status = json(sluice, &["status", "--format", "json"], &controller);
        if status["registrations"]
            .as_array()
            .is_some_and(|r| r.len() >= 4)
        {
            break;
        }
        if Instant::now() > until || up.try_wait().ok().flatten().is_some() {
            return Err("the shop did not register within 2 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let record = std::fs::read_to_string(state.join("up.json")).map_err(|e| e.to_string())?;
    let run_id = serde_json::from_str::<Value>(&record).map_err(|e| e.to_string())?["run_id"]
        .as_str()
        .ok_or("no run_id in up.json")?
        .to_owned();
    let load = Load::start(&format!("sluice-{run_id}-checkout"), args.rate)?;
    std::thread::sleep(Duration::from_secs(5));
    let mut outcomes = Vec::new();
    let mut stable = "v1".to_owned();
    let mut plan: Vec<String> = Vec::new();
    for _ in 0..args.bad {
        plan.push("v3".into());
        plan.push("v4".into());
    }
    // Bad versions interleaved with healthy ones, so a bad one meets a fresh stable too.
    let mut healthy_left = args.healthy;
    let mut order = Vec::new();
    for bad in plan {
        if healthy_left > 0 {
            order.push(None);
            healthy_left -= 1;
        }
        order.push(Some(bad));
    }
    order.extend((0..healthy_left).map(|_| None));
    for bad in order {
        let version = bad.unwrap_or_else(|| if stable == "v1" { "v2" } else { "v1" }.to_owned());
        let out = one_rollout(args, sluice, &controller, &load, &version)?;
        eprintln!(
            "rollout_bench: {} → {version}: {} {} ({}s, {} failed requests, baseline: {})",
            stable,
            out.phase,
            out.metrics.join(", "),
            out.seconds.map_or("?".into(), |s| format!("{s:.1}")),
            out.failed_requests,
            out.baseline
        );
        if out.phase == "promoted" {
            stable = version;
        }
        outcomes.push(out);
        // Let the runner retire or remove what the rollout left.
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(outcomes)
}

fn one_rollout(
    args: &Args,
    sluice: &Path,
    controller: &Path,
    load: &Load,
    version: &str,
) -> Result<Outcome, String> {
    let started = json(
        sluice,
        &[
            "rollout",
            "start",
            "payments",
            "--version",
            version,
            "--output",
            "json",
        ],
        controller,
    );
    let id = started["id"]
        .as_str()
        .ok_or_else(|| format!("rollout start {version}: {started}"))?
        .to_owned();
    let failed_before = load.failed.load(Ordering::Relaxed);
    let until = Instant::now() + args.timeout;
    let detail = loop {
        let r = json(
            sluice,
            &["rollout", "status", &id, "--output", "json"],
            controller,
        );
        match r["phase"].as_str().unwrap_or_default() {
            "waiting-confirmation" => {
                json(
                    sluice,
                    &["rollout", "resume", &id, "--output", "json"],
                    controller,
                );
            }
            "promoted" | "rolled-back" | "failed" | "aborted" | "superseded" => break r,
            _ => {}
        }
        if Instant::now() > until {
            json(
                sluice,
                &["rollout", "abort", &id, "--output", "json"],
                controller,
            );
            break serde_json::json!({"phase": "stuck"});
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let seconds = match (
        detail["first_traffic_unix_ms"].as_i64(),
        detail["finished_unix_ms"].as_i64(),
    ) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1000.0),
        _ => None,
    };
    let metrics = detail["failed_checks"]
        .as_array()
        .map(|a| {
            let mut m: Vec<String> = a
                .iter()
                .filter_map(|c| c["metric"].as_str().map(str::to_owned))
                .collect();
            m.dedup();
            m
        })
        .unwrap_or_default();
    Ok(Outcome {
        version: version.to_owned(),
        phase: detail["phase"].as_str().unwrap_or("?").to_owned(),
        metrics,
        seconds,
        failed_requests: load
            .failed
            .load(Ordering::Relaxed)
            .saturating_sub(failed_before),
        baseline: detail["baseline"]["kind"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
    })
}

/// The report's section for one noise setting.
fn section(noisy: bool, outcomes: &[Outcome]) -> String {
    let mut s = format!(
        "### {}\n\n| canary | rollouts | promoted | rolled back (by check) | other | time, s (p50 / max) | failed requests (p50 / max) | baseline |\n|---|---:|---:|---|---:|---|---|---|\n",
        if noisy {
            "With a noisy neighbour (one core busy half of the time)"
        } else {
            "Quiet"
        }
    );
    let kinds = [
        ("healthy (v1 ↔ v2, same code)", vec!["v1", "v2"]),
        ("v3: 5% errors", vec!["v3"]),
        ("v4: +50 ms latency", vec!["v4"]),
    ];
    for (label, versions) in kinds {
        let of: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| versions.contains(&o.version.as_str()))
            .collect();
        if of.is_empty() {
            continue;
        }
        let promoted = of.iter().filter(|o| o.phase == "promoted").count();
        let rolled: Vec<&&Outcome> = of.iter().filter(|o| o.phase == "rolled-back").collect();
        let mut by = BTreeMap::<String, usize>::new();
        for o in &rolled {
            *by.entry(o.metrics.join(" + ")).or_default() += 1;
        }
        let other = of.len() - promoted - rolled.len();
        let mut times: Vec<f64> = of.iter().filter_map(|o| o.seconds).collect();
        let mut failed: Vec<f64> = of.iter().map(|o| o.failed_requests as f64).collect();
        let mut baselines = BTreeMap::<&str, usize>::new();
        for o in &of {
            *baselines.entry(o.baseline.as_str()).or_default() += 1;
        }
        s.push_str(&format!(
            "| {label} | {} | {promoted} | {} ({}) | {other} | {} | {} | {} |\n",
            of.len(),
            rolled.len(),
            by.iter()
                .map(|(m, n)| format!("{m}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            spread(&mut times),
            spread(&mut failed),
            baselines
                .iter()
                .map(|(b, n)| format!("{b}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push('\n');
    s
}

fn spread(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(f64::total_cmp);
    format!("{:.1} / {:.1}", v[(v.len() - 1) / 2], v[v.len() - 1])
}

/// `sluice ARGS --state-dir CONTROLLER`, its stdout as JSON (`null` if it is not).
fn json(sluice: &Path, args: &[&str], controller: &Path) -> Value {
    Command::new(sluice)
        .args(args)
        .arg("--state-dir")
        .arg(controller)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Value::Null)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The load generator, running in checkout's namespace (this binary's `load` subcommand),
/// and the counts it reports.
struct Load {
    child: Child,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(ns: &str, rate: f64) -> Result<Load, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(["load", "--rate", &rate.to_string()])
            .args(["--url", "http://payments:8080/v1/charges"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("load generator: {e}"))?;
        let failed = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let f = failed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    f.store(n, Ordering::Relaxed);
                }
            }
        });
        Ok(Load { child, failed })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open-loop charges at `rate` per second, each with a 5 s timeout; prints cumulative `ok
/// failed` every 200 ms until killed.
fn load(rate: f64, url: &str) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: {e}");
            return;
        }
    };
    let url: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("load: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (o, f) = (ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "{} {}",
                    o.load(Ordering::Relaxed),
                    f.load(Ordering::Relaxed)
                );
                let _ = out.flush();
            }
        });
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            let req = hyper::Request::post(url.clone())
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from_static(
                    br#"{"amount": 1800, "currency": "EUR"}"#,
                )));
            let Ok(req) = req else { continue };
            let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let answer = tokio::time::timeout(Duration::from_secs(5), async {
                    let rsp = client.request(req).await.ok()?;
                    let status = rsp.status();
                    let _ = rsp.into_body().collect().await;
                    Some(status)
                })
                .await;
                match answer {
                    Ok(Some(s)) if s.is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
    });
}

/// Busy 100 ms, idle 100 ms, forever: one core half of the time.
fn noise() -> ! {
    loop {
        let start = Instant::now();
        let mut x: u64 = 1;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
