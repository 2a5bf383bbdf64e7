//! `judge_sim`: the canary judge on simulated rollouts, with a fixed seed.
//!
//! Drives the real [`Judge`] through the shop's payments CanaryPolicy
//! (`examples/shop/policy/payments/rollout.yaml`: steps 5% for 30 s, 25% for 1 m, 50% for 2 m;
//! interval 5 s, `minRequests` 100, α 0.01, errors within 0.5 points, p99 within 20% and under
//! 500 ms) the way the rollout engine will: one interval's counts at a time, a step advancing
//! when its time is up and the verdict is `Pass`, a rollback the moment it is `Fail`.
//!
//! Traffic is Poisson at `--rate` requests per second; each request goes to the canary with
//! the step's weight, fails with its version's error rate, and takes a log-normal latency that
//! lands in the proxy's histogram buckets. Three experiments:
//!
//! - healthy canaries (the same as their baseline, error rates 0.1%–2%, three latency
//!   profiles), and canaries worse than baseline by less than the margin: the false rollback
//!   rate, with a 95% (Wilson) interval;
//! - bad canaries (5%, 2%, 1% errors against 0.1%; twice the latency): how often, how fast
//!   (from the canary's first traffic) and at what cost (canary failures beyond what the
//!   baseline's rate would have produced) they are rolled back;
//! - the headline: 100 req/s, 5% weight, canary 5% errors against 0.1%: is it rolled back
//!   within 30 s with at most 10 failed requests, and in what share of runs; next to a
//!   Flagger-style check (1 m interval, success rate ≥ 99%, rollback after 5 failed checks).
//!
//! - healthy and bad canaries **in a messy mesh** ([`real`]): per-instance latency offsets,
//!   warm-up, idle wake-ups at a small share of traffic, shared-CPU noise bursts; judged four
//!   ways (against the long-running stable instances or a fresh copy of them; with the
//!   policy's latency floor or without), so the table shows what each change buys.
//!
//! ```sh
//! cargo run --release -p sluice-benches --bin judge_sim -- [--seed 1] [--healthy 2400] [--bad 1000] [--real 600]
//! ```

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_controller::rollout::judge::{Counts, Judge, Verdict};
use sluice_policy::PolicySet;
use sluice_policy::resources::CanaryPolicySpec;

mod real;

/// Simulate canary rollouts through the judge.
#[derive(Debug, Parser)]
struct Args {
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Healthy rollouts (spread over 12 error-rate/latency profiles).
    #[arg(long, default_value_t = 2400)]
    healthy: usize,
    /// Rollouts per bad-canary scenario.
    #[arg(long, default_value_t = 1000)]
    bad: usize,
    /// Runs of the headline case.
    #[arg(long, default_value_t = 5000)]
    headline: usize,
    /// Analysis interval instead of the policy's (e.g. `1s`: the judge is anytime-valid, so
    /// looking more often costs no false alarms).
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Total request rate of the service.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Rollouts per judge and canary in the messy-mesh experiment (0 skips it).
    #[arg(long, default_value_t = 600)]
    real: usize,
    /// Only the messy-mesh experiment.
    #[arg(long)]
    real_only: bool,
}

/// How a version behaves.
#[derive(Clone, Copy, Debug)]
struct Version {
    failure_rate: f64,
    median_ms: f64,
    sigma: f64,
}

/// How a simulated rollout ended.
#[derive(Clone, Debug)]
struct Outcome {
    rolled_back: bool,
    /// Seconds from the canary's first traffic to the verdict that ended the rollout.
    seconds: f64,
    /// Canary failures beyond the baseline's rate, until the end.
    excess_failures: f64,
    /// Canary requests served.
    canary_requests: u64,
    /// The failing check, if rolled back.
    metric: Option<String>,
}

struct Sim {
    rng: SmallRng,
    rate: f64,
    policy: CanaryPolicySpec,
    interval: Duration,
}

impl Sim {
    fn normal(&mut self) -> f64 {
        let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// One interval of Poisson traffic split by `weight`.
    fn interval(&mut self, weight: u32, canary: Version, baseline: Version) -> (Counts, Counts) {
        let (mut c, mut b) = (Counts::empty(), Counts::empty());
        let seconds = self.interval.as_secs_f64();
        let mut t = 0.0;
        loop {
            let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
            t += -u.ln() / self.rate;
            if t > seconds {
                break;
            }
            let to_canary = self.rng.random::<f64>() < f64::from(weight) / 100.0;
            let v = if to_canary { canary } else { baseline };
            let latency = v.median_ms / 1000.0 * (v.sigma * self.normal()).exp();
            let failed = self.rng.random::<f64>() < v.failure_rate;
            if to_canary {
                c.record(latency, failed);
            } else {
                b.record(latency, failed);
            }
        }
        (c, b)
    }

    /// One rollout through the policy's steps, as the rollout engine runs it.
    fn rollout(&mut self, canary: Version, baseline: Version) -> Outcome {
        let mut judge = Judge::new(&self.policy.analysis);
        let deadline = self
            .policy
            .progress_deadline
            .map_or(Duration::from_secs(600), |d| d.0);
        let steps: Vec<(u32, Duration)> = self
            .policy
            .steps
            .iter()
            .map(|s| {
                (
                    s.weight,
                    s.duration.map_or(Duration::from_secs(60), |d| d.0),
                )
            })
            .collect();
        let mut out = Outcome {
            rolled_back: false,
            seconds: 0.0,
            excess_failures: 0.0,
            canary_requests: 0,
            metric: None,
        };
        let dt = self.interval.as_secs_f64();
        for (weight, duration) in steps {
            judge.begin_step();
            let mut in_step = 0.0;
            loop {
                let (c, b) = self.interval(weight, canary, baseline);
                out.canary_requests += c.requests;
                out.excess_failures +=
                    c.failures as f64 - baseline.failure_rate * c.requests as f64;
                judge.observe(&c, &b, self.interval, weight);
                out.seconds += dt;
                in_step += dt;
                match judge.verdict() {
                    Verdict::Fail(e) => {
                        out.rolled_back = true;
                        out.metric = Some(e.metric.clone());
                        return out;
                    }
                    // A confirmation step is taken as confirmed at once.
                    Verdict::Pass if in_step >= duration.as_secs_f64() - 1e-9 => break,
                    _ if in_step >= deadline.as_secs_f64() => return out,
                    _ => {}
                }
            }
        }
        out
    }
}

/// A Flagger-style judge on the same traffic: every `check` seconds the canary's success rate
/// over that minute must be ≥ 99%; rollback after `threshold` failed checks.
fn flagger(
    sim: &mut Sim,
    canary: Version,
    baseline: Version,
    check: u32,
    threshold: u32,
) -> Outcome {
    let mut out = Outcome {
        rolled_back: false,
        seconds: 0.0,
        excess_failures: 0.0,
        canary_requests: 0,
        metric: None,
    };
    let per_check = (f64::from(check) / sim.interval.as_secs_f64()).round() as usize;
    let mut failed_checks = 0;
    for _ in 0..30 {
        let mut window = Counts::default();
        for _ in 0..per_check {
            let (c, _) = sim.interval(5, canary, baseline);
            out.canary_requests += c.requests;
            out.excess_failures += c.failures as f64 - baseline.failure_rate * c.requests as f64;
            out.seconds += sim.interval.as_secs_f64();
            window.add(&c);
        }
        if window.failure_rate().is_some_and(|p| p > 0.01) {
            failed_checks += 1;
        }
        if failed_checks >= threshold {
            out.rolled_back = true;
            return out;
        }
    }
    out
}

/// The `q` quantile of `values` (nearest rank); NaN when empty.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Wilson 95% interval for `k` of `n`.
fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96_f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// `p50 / p95 / max` of a column.
fn spread(values: &[f64], digits: usize) -> String {
    let mut v = values.to_vec();
    if v.is_empty() {
        return "—".to_owned();
    }
    let (p50, p95, max) = (
        quantile(&mut v, 0.5),
        quantile(&mut v, 0.95),
        quantile(&mut v, 1.0),
    );
    format!("{p50:.digits$} / {p95:.digits$} / {max:.digits$}")
}

fn load_policy() -> CanaryPolicySpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    let set = match PolicySet::load(&dir) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("judge_sim: cannot load {}: {e}", dir.display());
            std::process::exit(2);
        }
    };
    let snapshot = set.compile();
    match snapshot
        .canaries()
        .values()
        .find(|c| c.doc.spec.service == "payments")
    {
        Some(c) => c.doc.spec.clone(),
        None => {
            eprintln!(
                "judge_sim: no CanaryPolicy for payments in {}",
                dir.display()
            );
            std::process::exit(2);
        }
    }
}

/// The messy-mesh experiment: healthy canaries (false rollbacks) and bad ones (caught, and
/// for the right metric), each judged four ways on the same kind of traffic.
fn messy_mesh(sim: &mut Sim, n: usize) {
    use real::{NUISANCE, Setup, analysis};
    let setups = [
        Setup {
            copy: false,
            floor: false,
        },
        Setup {
            copy: false,
            floor: true,
        },
        Setup {
            copy: true,
            floor: false,
        },
        Setup {
            copy: true,
            floor: true,
        },
    ];
    let fast = |e: f64| Version {
        failure_rate: e,
        median_ms: 1.5,
        sigma: 0.5,
    };
    let slow = |e: f64| Version {
        failure_rate: e,
        median_ms: 50.0,
        sigma: 0.6,
    };
    println!("### In a messy mesh: baseline copy and latency floor\n");
    println!(
        "Nuisances (see `src/bin/judge_sim/real.rs`): per-instance offset ±{:.0}% of p99; warm-up Exp({} ms)·e^(−age/{} s) on fresh instances; idle wake-up Exp({} ms) after {} ms without a request; noise bursts every {} s on average, {}–{} s long, Exp({} ms) on instances sharing the noisy core (½). {} rollouts per cell; healthy canaries have the baseline's error rate (0.1% or 1%, alternating).\n",
        NUISANCE.offset * 100.0,
        NUISANCE.warmup_s * 1000.0,
        NUISANCE.warmup_tau_s,
        NUISANCE.wakeup_s * 1000.0,
        NUISANCE.idle_window_s * 1000.0,
        NUISANCE.burst_gap_s,
        NUISANCE.burst_len_s.0,
        NUISANCE.burst_len_s.1,
        NUISANCE.burst_extra_s * 1000.0,
        n
    );
    println!(
        "| judge | healthy, 1.5 ms median (p99 ≈ 5 ms): false rollbacks | healthy, 50 ms median: false rollbacks | 5% errors: rolled back, s (p50 / p95), check | +50 ms latency: rolled back, s (p50 / p95), check |"
    );
    println!("|---|---|---|---|---|");
    for setup in setups {
        let a = analysis(&sim.policy.analysis, setup.floor);
        let mut cells = Vec::new();
        for profile in [fast, slow] {
            let mut rolled = 0;
            let mut by = std::collections::BTreeMap::<String, usize>::new();
            for i in 0..n {
                let v = profile(if i % 2 == 0 { 0.001 } else { 0.01 });
                let out = sim.real_rollout(v, v, setup, &a, NUISANCE);
                if out.rolled_back {
                    rolled += 1;
                    *by.entry(out.metric.unwrap_or_default()).or_default() += 1;
                }
            }
            let (lo, hi) = wilson(rolled, n);
            let by: Vec<String> = by.iter().map(|(m, k)| format!("{m}: {k}")).collect();
            cells.push(format!(
                "{rolled} of {n} = {} (95% CI {}–{}){}",
                pct(rolled as f64 / n as f64),
                pct(lo),
                pct(hi),
                if by.is_empty() {
                    String::new()
                } else {
                    format!("; {}", by.join(", "))
                }
            ));
        }
        let base = fast(0.001);
        let bad = [
            Version {
                failure_rate: 0.05,
                ..base
            },
            Version {
                median_ms: base.median_ms + 50.0,
                ..base
            },
        ];
        for canary in bad {
            let outs: Vec<real::Outcome> = (0..n)
                .map(|_| sim.real_rollout(canary, base, setup, &a, NUISANCE))
                .collect();
            let rolled: Vec<&real::Outcome> = outs.iter().filter(|o| o.rolled_back).collect();
            let times: Vec<f64> = rolled.iter().map(|o| o.seconds).collect();
            let mut by = std::collections::BTreeMap::<String, usize>::new();
            for o in &rolled {
                *by.entry(o.metric.clone().unwrap_or_default()).or_default() += 1;
            }
            let mut t = times.clone();
            cells.push(format!(
                "{} ({:.0} / {:.0}); {}",
                pct(rolled.len() as f64 / n as f64),
                quantile(&mut t, 0.5),
                quantile(&mut t, 0.95),
                by.iter()
                    .map(|(m, k)| format!("{m}: {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        println!("| {} | {} |", setup.label(), cells.join(" | "));
    }
    println!(
        "\nBefore this change the judge compared with the stable instances and had no floor (first row); now it compares with a fresh copy where the runtime starts one, with the shop's 5 ms floor (last row). Times count from the rollout's start.\n"
    );
}

fn main() {
    let args = Args::parse();
    let policy = load_policy();
    let interval = args.interval.unwrap_or_else(|| {
        policy
            .analysis
            .interval
            .map_or(Duration::from_secs(5), |d| d.0)
    });
    let mut sim = Sim {
        rng: SmallRng::seed_from_u64(args.seed),
        rate: args.rate,
        policy,
        interval,
    };
    let steps: Vec<String> = sim
        .policy
        .steps
        .iter()
        .map(|s| {
            let d = s
                .duration
                .map_or_else(|| "1m".to_owned(), |d| d.to_string());
            format!("{}% for {d}", s.weight)
        })
        .collect();
    println!("## Canary judge simulation\n");
    println!(
        "Seed {}, {} req/s, the shop's payments CanaryPolicy: steps {}; interval {}, minRequests {}, α {}; checks: {}.\n",
        args.seed,
        args.rate,
        steps.join(", "),
        humantime::format_duration(interval),
        sim.policy.analysis.min_requests,
        sim.policy.analysis.alpha,
        sim.policy
            .analysis
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    if args.real > 0 {
        messy_mesh(&mut sim, args.real);
    }
    if args.real_only {
        return;
    }

    // (a) Healthy canaries.
    let latencies = [(20.0, 0.5), (50.0, 0.6), (100.0, 0.5)];
    let error_rates = [0.001, 0.005, 0.01, 0.02];
    println!("### Healthy canaries: false rollbacks\n");
    println!("| canary | rollouts | rolled back | rate (95% CI) | by check |");
    println!("|---|---:|---:|---|---|");
    let mut profiles = Vec::new();
    for &e in &error_rates {
        for &(median_ms, sigma) in &latencies {
            profiles.push(Version {
                failure_rate: e,
                median_ms,
                sigma,
            });
        }
    }
    // (label, extra canary error rate in points of probability)
    let healthy_rows = [
        ("same as baseline (errors 0.1–2%, median 20–100 ms)", 0.0),
        ("0.3 points more errors than baseline (margin 0.5)", 0.003),
    ];
    for (label, extra) in healthy_rows {
        let mut rolled = 0;
        let mut by_metric = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..args.healthy {
            let base = profiles[i % profiles.len()];
            let canary = Version {
                failure_rate: base.failure_rate + extra,
                ..base
            };
            let out = sim.rollout(canary, base);
            if out.rolled_back {
                rolled += 1;
                *by_metric.entry(out.metric.unwrap_or_default()).or_default() += 1;
            }
        }
        let (lo, hi) = wilson(rolled, args.healthy);
        let by: Vec<String> = by_metric.iter().map(|(m, n)| format!("{m}: {n}")).collect();
        println!(
            "| {label} | {} | {rolled} | {} ({} – {}) | {} |",
            args.healthy,
            pct(rolled as f64 / args.healthy as f64),
            pct(lo),
            pct(hi),
            if by.is_empty() {
                "—".to_owned()
            } else {
                by.join(", ")
            }
        );
    }

    // (b) Bad canaries.
    let baseline = Version {
        failure_rate: 0.001,
        median_ms: 50.0,
        sigma: 0.6,
    };
    println!("\n### Bad canaries (baseline 0.1% errors, median 50 ms)\n");
    println!(
        "| canary | rollouts | rolled back | time to rollback, s (p50 / p95 / max) | failed requests caused (p50 / p95 / max) | failing check |"
    );
    println!("|---|---:|---:|---|---|---|");
    let bad = [
        (
            "5% errors",
            Version {
                failure_rate: 0.05,
                ..baseline
            },
        ),
        (
            "2% errors",
            Version {
                failure_rate: 0.02,
                ..baseline
            },
        ),
        (
            "1% errors",
            Version {
                failure_rate: 0.01,
                ..baseline
            },
        ),
        (
            "2× latency (p99 ≈ 400 ms)",
            Version {
                median_ms: 100.0,
                ..baseline
            },
        ),
    ];
    for (label, canary) in bad {
        let outs: Vec<Outcome> = (0..args.bad)
            .map(|_| sim.rollout(canary, baseline))
            .collect();
        let rolled: Vec<&Outcome> = outs.iter().filter(|o| o.rolled_back).collect();
        let times: Vec<f64> = rolled.iter().map(|o| o.seconds).collect();
        let failed: Vec<f64> = rolled.iter().map(|o| o.excess_failures.max(0.0)).collect();
        let mut metrics = std::collections::BTreeMap::<String, usize>::new();
        for o in &rolled {
            *metrics
                .entry(o.metric.clone().unwrap_or_default())
                .or_default() += 1;
        }
        let metrics: Vec<String> = metrics.iter().map(|(m, n)| format!("{m}: {n}")).collect();
        println!(
            "| {label} | {} | {} ({}) | {} | {} | {} |",
            args.bad,
            rolled.len(),
            pct(rolled.len() as f64 / args.bad as f64),
            spread(&times, 0),
            if label.contains("latency") {
                "—".to_owned()
            } else {
                spread(&failed, 1)
            },
            metrics.join(", ")
        );
    }

    // (c) The headline.
    let canary = Version {
        failure_rate: 0.05,
        ..baseline
    };
    println!(
        "\n### Headline: {} req/s, 5% weight, canary 5% errors vs baseline 0.1%\n",
        args.rate
    );
    println!(
        "| judge | runs | rolled back | time to rollback, s (p50 / p95 / max) | failed requests (p50 / p95 / max) | ≤ 30 s | ≤ 10 failed | both |"
    );
    println!("|---|---:|---:|---|---|---:|---:|---:|");
    let judges: [(&str, bool); 2] = [
        ("Sluice judge (shop policy)", true),
        (
            "Flagger-style: 1 m checks, success ≥ 99%, 5 failed checks",
            false,
        ),
    ];
    for (label, ours) in judges {
        let outs: Vec<Outcome> = (0..args.headline)
            .map(|_| {
                if ours {
                    sim.rollout(canary, baseline)
                } else {
                    flagger(&mut sim, canary, baseline, 60, 5)
                }
            })
            .collect();
        let rolled: Vec<&Outcome> = outs.iter().filter(|o| o.rolled_back).collect();
        let times: Vec<f64> = rolled.iter().map(|o| o.seconds).collect();
        let failed: Vec<f64> = rolled.iter().map(|o| o.excess_failures.max(0.0)).collect();
        let n = args.headline as f64;
        let fast = rolled.iter().filter(|o| o.seconds <= 30.0 + 1e-9).count() as f64 / n;
        let cheap = rolled.iter().filter(|o| o.excess_failures <= 10.0).count() as f64 / n;
        let both = rolled
            .iter()
            .filter(|o| o.seconds <= 30.0 + 1e-9 && o.excess_failures <= 10.0)
            .count() as f64
            / n;
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            args.headline,
            pct(rolled.len() as f64 / n),
            spread(&times, 0),
            spread(&failed, 1),
            pct(fast),
            pct(cheap),
            pct(both)
        );
    }
    println!(
        "\nFailed requests caused: canary failures beyond what the baseline's error rate would have produced on the same requests, until the rollback. Times count from the canary's first traffic and are multiples of the 5 s interval."
    );
}
