//! Rollouts in a messy mesh: the nuisances that made healthy canaries fail in the local mesh,
//! and four judges over the same traffic (baseline: the long-running stable instances or a
//! fresh copy; the latency floor `atLeast`: off or the policy's).
//!
//! What is modelled, per instance (the long-running stable one, the canary, the copy):
//!
//! - **its own latency offset**: every request of the instance takes `offset` longer, drawn
//!   once per instance uniformly within ±15% of the service's p99 (two builds of the same code
//!   on two processes are not identical);
//! - **warm-up**: a fresh process (canary, copy) adds `Exp(mean = 20 ms) · e^(-age / 4 s)` to
//!   its requests (in the local mesh a fresh canary's first requests took 10–50 ms);
//! - **its share of traffic**: a request that finds the instance idle (no request in the last
//!   50 ms, probability `e^(-rate · 50 ms)`) waits for a parked thread to be scheduled,
//!   `Exp(mean = 1.5 ms)`. This is what made a healthy canary at 5% of 100 req/s twice as slow
//!   at p99 as the busy stable instance (measured: 32% vs 72% of requests under 2 ms);
//! - **shared-CPU noise**: a noisy neighbour busy in bursts (a Poisson process, one burst per
//!   20 s on average, lasting 1–4 s); each instance shares its core with probability ½ per
//!   burst, and its requests then take `Exp(mean = 4 ms)` longer.
//!
//! Traffic: `--rate` req/s, Poisson, split by the policy's steps (5% → 25% → 50%): canary
//! `w`, and with a copy, copy `min(w, 100 - w)` and the stable instances the rest.

use rand::Rng;
use sluice_controller::rollout::judge::{Counts, Judge, Verdict};
use sluice_policy::resources::{Analysis, Duration as PolicyDuration};

use super::{Sim, Version};

/// Nuisance settings (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct Nuisance {
    /// Per-instance offset, as a share of the service's p99 (uniform ±).
    pub offset: f64,
    /// Warm-up: mean extra latency at age 0, and its decay time, seconds.
    pub warmup_s: f64,
    pub warmup_tau_s: f64,
    /// Idle wake-up: the idle window and the mean extra latency, seconds.
    pub idle_window_s: f64,
    pub wakeup_s: f64,
    /// Noise bursts: mean gap, duration range, mean extra latency, seconds.
    pub burst_gap_s: f64,
    pub burst_len_s: (f64, f64),
    pub burst_extra_s: f64,
}

pub const NUISANCE: Nuisance = Nuisance {
    offset: 0.15,
    warmup_s: 0.020,
    warmup_tau_s: 4.0,
    idle_window_s: 0.050,
    wakeup_s: 0.0015,
    burst_gap_s: 20.0,
    burst_len_s: (1.0, 4.0),
    burst_extra_s: 0.004,
};

/// Which judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Judge against a fresh copy of the stable version (else the stable instances).
    pub copy: bool,
    /// The policy's latency floor (else `atLeast: 0ms`).
    pub floor: bool,
}

impl Setup {
    pub fn label(self) -> String {
        format!(
            "{}, {}",
            if self.copy {
                "fresh copy"
            } else {
                "stable instances"
            },
            if self.floor { "floor 5 ms" } else { "no floor" }
        )
    }
}

/// An instance's state during one rollout.
struct Instance {
    version: Version,
    /// Started with the rollout (else long-running and warm).
    fresh: bool,
    offset_s: f64,
    last_request: f64,
    /// Whether it shares the noisy core, per burst index.
    noisy: Vec<bool>,
}

/// How one rollout ended.
pub struct Outcome {
    pub rolled_back: bool,
    pub metric: Option<String>,
    pub seconds: f64,
}

/// The analysis with the floor on (as the policy says) or off.
pub fn analysis(policy: &Analysis, floor: bool) -> Analysis {
    let mut a = policy.clone();
    if !floor {
        for m in &mut a.metrics {
            if let Some(r) = &mut m.relative {
                r.at_least = Some(PolicyDuration::from_millis(0));
            }
        }
    }
    a
}

impl Sim {
    fn exp(&mut self, mean: f64) -> f64 {
        let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        -u.ln() * mean
    }

    fn latency(&mut self, inst: &mut Instance, t: f64, bursts: &[(f64, f64)], n: Nuisance) -> f64 {
        let v = inst.version;
        let mut l = v.median_ms / 1000.0 * (v.sigma * self.normal()).exp() + inst.offset_s;
        if inst.fresh {
            l += self.exp(n.warmup_s) * (-t / n.warmup_tau_s).exp();
        }
        if t - inst.last_request > n.idle_window_s {
            l += self.exp(n.wakeup_s);
        }
        inst.last_request = t;
        for (i, &(start, end)) in bursts.iter().enumerate() {
            if t >= start && t < end && inst.noisy.get(i).copied().unwrap_or(false) {
                l += self.exp(n.burst_extra_s);
            }
        }
        l.max(1e-5)
    }

    /// One rollout with the nuisances, judged by `setup`.
    pub fn real_rollout(
        &mut self,
        canary: Version,
        stable: Version,
        setup: Setup,
        analysis: &Analysis,
        n: Nuisance,
    ) -> Outcome {
        let steps: Vec<(u32, f64)> = self
            .policy
            .steps
            .iter()
            .map(|s| (s.weight, s.duration.map_or(60.0, |d| d.0.as_secs_f64())))
            .collect();
        let total: f64 = steps.iter().map(|s| s.1).sum::<f64>() * 3.0 + 60.0;
        // Noise bursts over the rollout.
        let mut bursts = Vec::new();
        let mut t = 0.0;
        loop {
            t += self.exp(n.burst_gap_s);
            if t > total {
                break;
            }
            let len =
                n.burst_len_s.0 + (n.burst_len_s.1 - n.burst_len_s.0) * self.rng.random::<f64>();
            bursts.push((t, t + len));
        }
        // The service's p99, for the offsets (log-normal: median · e^(2.326 σ)).
        let p99 = stable.median_ms / 1000.0 * (2.326 * stable.sigma).exp();
        let make = |sim: &mut Sim, version: Version, fresh: bool| Instance {
            version,
            fresh,
            offset_s: (sim.rng.random::<f64>() * 2.0 - 1.0) * n.offset * p99,
            last_request: -1.0,
            noisy: (0..bursts.len())
                .map(|_| sim.rng.random::<bool>())
                .collect(),
        };
        let mut old = make(self, stable, false);
        let mut copy = make(self, stable, true);
        let mut can = make(self, canary, true);
        let mut judge = Judge::new(analysis);
        let dt = self.interval.as_secs_f64();
        let mut now = 0.0;
        let mut clock = 0.0;
        for (weight, duration) in steps {
            judge.begin_step();
            let mut in_step = 0.0;
            let w = f64::from(weight) / 100.0;
            let wc = if setup.copy { w.min(1.0 - w) } else { 0.0 };
            loop {
                let (mut c, mut b, mut r) = (Counts::empty(), Counts::empty(), Counts::empty());
                let end = now + dt;
                loop {
                    clock += self.exp(1.0 / self.rate);
                    if clock > end {
                        break;
                    }
                    let u: f64 = self.rng.random();
                    let (inst, counts) = if u < w {
                        (&mut can, &mut c)
                    } else if u < w + wc {
                        (&mut copy, &mut b)
                    } else if setup.copy {
                        (&mut old, &mut r)
                    } else {
                        (&mut old, &mut b)
                    };
                    let latency = self.latency(inst, clock, &bursts, n);
                    let failed = self.rng.random::<f64>() < inst.version.failure_rate;
                    counts.record(latency, failed);
                }
                now = end;
                in_step += dt;
                if setup.copy {
                    let judged = (w * 100.0 / (w + wc)).round() as u32;
                    judge.observe_with_reference(&c, &b, Some(&r), self.interval, judged);
                } else {
                    judge.observe(&c, &b, self.interval, weight);
                }
                match judge.verdict() {
                    Verdict::Fail(e) => {
                        return Outcome {
                            rolled_back: true,
                            metric: Some(e.metric.clone()),
                            seconds: now,
                        };
                    }
                    Verdict::Pass if in_step >= duration - 1e-9 => break,
                    _ if in_step >= 600.0 => {
                        return Outcome {
                            rolled_back: false,
                            metric: None,
                            seconds: now,
                        };
                    }
                    _ => {}
                }
            }
        }
        Outcome {
            rolled_back: false,
            metric: None,
            seconds: now,
        }
    }
}
