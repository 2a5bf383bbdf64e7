//! The results: a serialisable record of one run, and its Markdown rendering with the targets
//! next to the figures.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::Outcome;
use crate::spread::Spread;

/// Target: latency a sluice pair (plaintext or mTLS) adds at p50, at the fixed rate.
pub const TARGET_ADDED_P50_MS: f64 = 0.2;
/// Target: latency a sluice pair (plaintext or mTLS) adds at p99, at the fixed rate.
pub const TARGET_ADDED_P99_MS: f64 = 1.0;
/// Target: each sluice proxy's peak RSS under load, in MB (10^6 bytes).
pub const TARGET_RSS_MB: f64 = 15.0;

/// One whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// How the run was configured.
    pub params: Params,
    /// Where it ran.
    pub machine: Machine,
    /// One entry per path, `direct` first (the first round's, with `--rounds`).
    pub paths: Vec<PathReport>,
    /// The rounds after the first, each as `paths`.
    pub more_rounds: Vec<Vec<PathReport>>,
    /// The scenarios after the latency run (gRPC, churn, attack, soak).
    pub sections: Vec<crate::scenarios::Section>,
}

/// The command-line parameters that shape the figures.
#[derive(Debug, Serialize)]
pub struct Params {
    /// Fixed request rate, requests per second.
    pub rate: u32,
    /// Measured time at the fixed rate, seconds.
    pub duration_s: f64,
    /// Discarded warm-up at the fixed rate before it, seconds.
    pub warmup_s: f64,
    /// Keep-alive connections for the fixed-rate phase.
    pub connections: usize,
    /// Closed-loop time per path, seconds.
    pub max_duration_s: f64,
    /// Connections for the closed-loop phase.
    pub max_connections: usize,
    /// Latency rounds (`--rounds`).
    pub rounds: u32,
    /// The rounds interleaved (`--interleave`): every path started once, the paths run in
    /// turn, backwards every other round.
    pub interleave: bool,
    /// `SLUICE_PROXY_LOG` for both proxies.
    pub sluice_log: String,
    /// `TOKIO_WORKER_THREADS` for each proxy, if set.
    pub sluice_worker_threads: Option<usize>,
}

/// The machine, and how busy it was (the figures are only as good as this is quiet).
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// 1-minute load average when the run started.
    pub load_before: f64,
    /// 1-minute load average when it ended.
    pub load_after: f64,
    /// The share of the machine's CPU time over the run that its hypervisor gave to other
    /// guests (`steal` in `/proc/stat`), in percent.
    pub steal_percent: Option<f64>,
    /// `nginx -v`, if nginx ran.
    pub nginx: Option<String>,
    /// `haproxy -v`, if HAProxy ran.
    pub haproxy: Option<String>,
    /// The sluice-proxy binary.
    pub sluice_proxy: Option<String>,
}

/// Host steal above which a run's wall-clock figures are flagged: on the 2-core machines
/// these benchmarks run on, a loaded run has been seen at 0-8% in quiet phases and 40% or
/// more in busy ones, which moved the pairs' ratios by a third.
pub const STEAL_FLAG_PERCENT: f64 = 5.0;

/// The machine-wide CPU counters of `/proc/stat`'s `cpu` line that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// `steal`: time the hypervisor ran other guests while this one wanted to run.
    pub steal: u64,
    /// user + nice + system + idle + iowait + irq + softirq + steal.
    pub total: u64,
}

impl CpuTicks {
    /// From the text of `/proc/stat`; `None` when its first line is not the `cpu` totals
    /// with the steal column (Linux 2.6.11 and later).
    pub fn parse(stat: &str) -> Option<CpuTicks> {
        let mut fields = stat.lines().next()?.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        (ticks.len() == 8).then(|| CpuTicks {
            steal: ticks[7],
            total: ticks.iter().sum(),
        })
    }
}

/// Steal between two readings, in percent of the CPU time that passed.
pub fn steal_percent(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total).filter(|&t| t > 0)?;
    let steal = after.steal.checked_sub(before.steal)?;
    Some(100.0 * steal as f64 / total as f64)
}

/// The direct path's name (the baseline for added latency).
pub const DIRECT: &str = "direct";
/// The plaintext sluice pair.
pub const SLUICE: &str = "sluice pair";
/// The sluice pair with mTLS and authorization.
pub const SLUICE_MTLS: &str = "sluice mTLS pair";
/// The nginx pair (the reference the targets are ratios of).
pub const NGINX: &str = "nginx pair";
/// The HAProxy pair.
pub const HAPROXY: &str = "HAProxy pair";

/// Whether the targets apply to this path (both sluice pairs).
fn is_sluice(name: &str) -> bool {
    name == SLUICE || name == SLUICE_MTLS
}

/// One path: `direct`, `sluice pair`, `sluice mTLS pair` or `nginx pair`.
#[derive(Debug, Serialize)]
pub struct PathReport {
    /// Its name.
    pub name: String,
    /// Why it was not measured, if it was not.
    pub skipped: Option<String>,
    /// The fixed-rate phase.
    pub fixed: Option<Latency>,
    /// Latency over `direct` at each percentile (for the pairs).
    pub added: Option<Added>,
    /// The closed-loop phase.
    pub max: Option<Throughput>,
    /// The proxies' processes.
    pub processes: Vec<ProcReport>,
    /// For the mTLS pair: how the run proved the figures are of mTLS + authorization.
    pub verified: Option<String>,
}

impl PathReport {
    /// A path that was not measured.
    pub fn skipped(name: &str, why: String) -> PathReport {
        PathReport {
            name: name.to_owned(),
            skipped: Some(why),
            fixed: None,
            added: None,
            max: None,
            processes: Vec::new(),
            verified: None,
        }
    }
}

/// Fixed-rate latency, in milliseconds from each request's intended send time.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Requests answered 200 per second, over the phase.
    pub achieved_rps: f64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub errors: u64,
    /// Percentiles of successful requests.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// A few error messages.
    pub error_samples: Vec<String>,
}

impl Latency {
    /// Summarises a fixed-rate outcome.
    pub fn of(o: &Outcome) -> Latency {
        Latency {
            achieved_rps: o.throughput(),
            ok: o.ok,
            errors: o.errors,
            p50_ms: quantile_ms(&o.latency, 0.50),
            p90_ms: quantile_ms(&o.latency, 0.90),
            p99_ms: quantile_ms(&o.latency, 0.99),
            p999_ms: quantile_ms(&o.latency, 0.999),
            max_ms: ns_to_ms(o.latency.max()),
            error_samples: o.error_samples.clone(),
        }
    }
}

/// A pair's latency minus the direct path's, per percentile, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Added {
    /// p50.
    pub p50_ms: f64,
    /// p90.
    pub p90_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// max.
    pub max_ms: f64,
}

impl Added {
    /// `pair - direct` at each percentile.
    pub fn between(pair: &Latency, direct: &Latency) -> Added {
        Added {
            p50_ms: pair.p50_ms - direct.p50_ms,
            p90_ms: pair.p90_ms - direct.p90_ms,
            p99_ms: pair.p99_ms - direct.p99_ms,
            p999_ms: pair.p999_ms - direct.p999_ms,
            max_ms: pair.max_ms - direct.max_ms,
        }
    }
}

/// Closed-loop throughput.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// Requests answered 200 per second.
    pub rps: f64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub errors: u64,
    /// Median latency from the actual send time (not corrected: the loop is closed).
    pub p50_ms: f64,
    /// 99th percentile, same.
    pub p99_ms: f64,
    /// A few error messages.
    pub error_samples: Vec<String>,
}

impl Throughput {
    /// Summarises a closed-loop outcome.
    pub fn of(o: &Outcome) -> Throughput {
        Throughput {
            rps: o.throughput(),
            ok: o.ok,
            errors: o.errors,
            p50_ms: quantile_ms(&o.latency, 0.50),
            p99_ms: quantile_ms(&o.latency, 0.99),
            error_samples: o.error_samples.clone(),
        }
    }
}

/// One proxy process's memory and CPU.
#[derive(Clone, Debug, Serialize)]
pub struct ProcReport {
    /// What it is.
    pub label: String,
    /// Its threads (tokio workers plus blocking and signal threads, for sluice).
    pub threads: u64,
    /// `VmRSS` right after start, KiB.
    pub idle_rss_kib: u64,
    /// `VmHWM` after the fixed-rate phase, KiB.
    pub peak_rss_at_rate_kib: u64,
    /// `VmHWM` after the closed-loop phase, KiB.
    pub peak_rss_kib: u64,
    /// CPU used during the fixed-rate phase, percent of one core.
    pub cpu_at_rate_pct: f64,
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    ns_to_ms(h.value_at_quantile(q))
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

impl Report {
    /// Fills in each pair's latency over the direct path.
    pub fn compute_added(&mut self) {
        for round in std::iter::once(&mut self.paths).chain(self.more_rounds.iter_mut()) {
            let direct = round
                .iter()
                .find(|p| p.name == DIRECT)
                .and_then(|p| p.fixed.clone());
            let Some(direct) = direct else { continue };
            for p in round.iter_mut() {
                if p.name != DIRECT {
                    p.added = p.fixed.as_ref().map(|f| Added::between(f, &direct));
                }
            }
        }
    }

    /// The run as Markdown: a summary line, then latency, added latency, throughput and
    /// memory tables. Targets are shown next to the sluice figures they apply to.
    pub fn markdown(&self) -> String {
        let (p, m) = (&self.params, &self.machine);
        let mut out = String::new();
        let _ = writeln!(out, "## Mesh benchmark\n");
        let _ = writeln!(
            out,
            "Machine: {} CPUs, Linux {}, 1-min load average {:.2} before / {:.2} after the run, \
             host CPU steal {} over it. nginx: {}; HAProxy: {}. sluice-proxy tokio worker \
             threads: {}; log level `{}`.\n",
            m.cpus,
            m.kernel,
            m.load_before,
            m.load_after,
            m.steal_percent
                .map_or_else(|| "unknown".to_owned(), |s| format!("{s:.1}%")),
            m.nginx.as_deref().unwrap_or("not run"),
            m.haproxy.as_deref().unwrap_or("not run"),
            p.sluice_worker_threads
                .map_or_else(|| "default (one per CPU)".to_owned(), |n| n.to_string()),
            p.sluice_log,
        );
        if let Some(steal) = m.steal_percent.filter(|&s| s >= STEAL_FLAG_PERCENT) {
            let _ = writeln!(
                out,
                "**Disturbed host:** the hypervisor gave {steal:.1}% of this machine's CPU time \
                 during the run to other guests (steal), so every wall-clock figure below, and \
                 each ratio between pairs measured at different moments, is only as good as \
                 that share was even. Instruction counts (`--callgrind`) do not depend on it.\n"
            );
        }
        if !self.paths.is_empty() {
            let _ = writeln!(
                out,
                "Fixed rate: {} req/s for {}s after a {}s warm-up, {} keep-alive connections, \
                 open loop, latency from each request's intended send time (corrected for \
                 coordinated omission). Max throughput: closed loop, {} connections, {}s.{}\n",
                p.rate,
                p.duration_s,
                p.warmup_s,
                p.connections,
                p.max_connections,
                p.max_duration_s,
                if p.rounds > 1 && p.interleave {
                    format!(
                        " {} interleaved rounds: every pair started once and kept running, the \
                         paths measured in turn (backwards every other round), so each ratio \
                         compares runs seconds apart; the tables are the first round's, the \
                         ratios to nginx the medians of all.",
                        p.rounds
                    )
                } else if p.rounds > 1 {
                    format!(
                        " {} rounds of every path, one path after the other; the tables are the \
                         first round's, the ratios to nginx the medians of all.",
                        p.rounds
                    )
                } else {
                    String::new()
                }
            );
            self.latency_table(&mut out);
            self.added_table(&mut out);
            self.throughput_table(&mut out);
            self.memory_table(&mut out);
            self.ratios(&mut out);
        }
        for path in &self.paths {
            if let Some(line) = &path.verified {
                let _ = writeln!(out, "- **{}** {line}", path.name);
            }
            if let Some(why) = &path.skipped {
                let _ = writeln!(out, "- **{}** skipped: {why}", path.name);
            }
            let samples = path
                .fixed
                .iter()
                .flat_map(|f| &f.error_samples)
                .chain(path.max.iter().flat_map(|t| &t.error_samples));
            for e in samples {
                let _ = writeln!(out, "- {} error: {e}", path.name);
            }
        }
        for section in &self.sections {
            let _ = writeln!(out, "\n{}", section.markdown);
        }
        out
    }

    fn latency_table(&self, out: &mut String) {
        let _ = writeln!(out, "### Latency at {} req/s (ms)\n", self.params.rate);
        let _ = writeln!(
            out,
            "| path | achieved req/s | ok | errors | p50 | p90 | p99 | p99.9 | max |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for path in &self.paths {
            if let Some(f) = &path.fixed {
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                    path.name,
                    f.achieved_rps,
                    f.ok,
                    f.errors,
                    f.p50_ms,
                    f.p90_ms,
                    f.p99_ms,
                    f.p999_ms,
                    f.max_ms
                );
            }
        }
        out.push('\n');
    }

    fn added_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Added latency over direct (ms; targets for the sluice pairs: p50 < {TARGET_ADDED_P50_MS}, \
             p99 < {TARGET_ADDED_P99_MS})\n"
        );
        let _ = writeln!(
            out,
            "| path | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|"
        );
        for path in &self.paths {
            let Some(a) = &path.added else { continue };
            let (t50, t99) = if is_sluice(&path.name) {
                (
                    format!(" {}", mark(a.p50_ms < TARGET_ADDED_P50_MS)),
                    format!(" {}", mark(a.p99_ms < TARGET_ADDED_P99_MS)),
                )
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                out,
                "| {} | {:+.3}{t50} | {:+.3} | {:+.3}{t99} | {:+.3} | {:+.3} |",
                path.name, a.p50_ms, a.p90_ms, a.p99_ms, a.p999_ms, a.max_ms
            );
        }
        let fixed_of = |name: &str| {
            self.paths
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.fixed.as_ref())
        };
        if let (Some(mtls), Some(plain)) = (fixed_of(SLUICE_MTLS), fixed_of(SLUICE)) {
            let _ = writeln!(
                out,
                "\nmTLS and authorization over the plaintext sluice pair: p50 {:+.3} ms, \
                 p99 {:+.3} ms.",
                mtls.p50_ms - plain.p50_ms,
                mtls.p99_ms - plain.p99_ms
            );
        }
        if self.paths.iter().filter_map(|p| p.added).any(|a| {
            [a.p50_ms, a.p90_ms, a.p99_ms, a.p999_ms]
                .iter()
                .any(|&v| v < 0.0)
        }) {
            let _ = writeln!(
                out,
                "\n**Noisy run:** a pair came out faster than the direct path at some percentile, \
                 so the machine's own jitter is larger than what the proxies add there. Those \
                 figures (and their ✓) mean nothing; re-run on an idle machine."
            );
        }
        out.push('\n');
    }

    fn throughput_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Max throughput (closed loop, {} connections)\n",
            self.params.max_connections
        );
        let _ = writeln!(
            out,
            "| path | req/s | ok | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|"
        );
        for path in &self.paths {
            if let Some(t) = &path.max {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {} | {} | {:.3} | {:.3} |",
                    path.name, t.rps, t.ok, t.errors, t.p50_ms, t.p99_ms
                );
            }
        }
        out.push('\n');
    }

    /// The targets, as ratios to the nginx pair in the same run: with several
    /// rounds, the median of each round's ratio, and the range.
    fn ratios(&self, out: &mut String) {
        if !self
            .paths
            .iter()
            .any(|p| p.name == NGINX && p.skipped.is_none())
        {
            return;
        }
        let rounds: Vec<&[PathReport]> = std::iter::once(self.paths.as_slice())
            .chain(self.more_rounds.iter().map(Vec::as_slice))
            .collect();
        let rps = |p: &PathReport| p.max.as_ref().map(|t| t.rps);
        // CPU per request at the fixed rate: both proxies' CPU over the achieved rate.
        let cpu = |p: &PathReport| {
            let rate = p.fixed.as_ref()?.achieved_rps;
            let pct: f64 = p.processes.iter().map(|c| c.cpu_at_rate_pct).sum();
            (rate > 0.0).then(|| pct / rate)
        };
        let _ = writeln!(
            out,
            "### Against the nginx pair (same run{})\n\n| path | max throughput | CPU per request at {} req/s (A + B) |\n|---|---:|---:|",
            if rounds.len() > 1 && self.params.interleave {
                format!(
                    "; median of {} interleaved rounds, each against the nginx run beside it, \
                     range in brackets",
                    rounds.len()
                )
            } else if rounds.len() > 1 {
                format!(
                    "; median of {} rounds, each against its own nginx run, range in brackets",
                    rounds.len()
                )
            } else {
                String::new()
            },
            self.params.rate
        );
        for path in &self.paths {
            if path.name == DIRECT || path.name == NGINX || path.skipped.is_some() {
                continue;
            }
            let t = Spread::of(rounds.iter().map(|r| ratio_to_nginx(r, &path.name, rps)));
            let c = Spread::of(rounds.iter().map(|r| ratio_to_nginx(r, &path.name, cpu)));
            let target = match path.name.as_str() {
                SLUICE => t
                    .as_ref()
                    .map(|t| format!(" {} (≥ 1.0)", mark(t.median >= 1.0))),
                SLUICE_MTLS => t
                    .as_ref()
                    .map(|t| format!(" {} (≥ 0.85)", mark(t.median >= 0.85))),
                _ => None,
            }
            .unwrap_or_default();
            let ctarget = if path.name == SLUICE {
                c.as_ref()
                    .map(|c| format!(" {} (≤ 1.0)", mark(c.median <= 1.0)))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let f = |v: Option<Spread>| v.map_or("—".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "| {} | {}{target} | {}{ctarget} |",
                path.name,
                f(t),
                f(c)
            );
        }
        out.push('\n');
        if rounds.len() > 1 {
            self.added_over_rounds(&rounds, out);
        }
    }

    /// The added latency of each sluice pair as the median of the rounds, each against the
    /// direct run of its own round: one round's p99 can fall in a burst of steal that the
    /// direct path's run missed.
    fn added_over_rounds(&self, rounds: &[&[PathReport]], out: &mut String) {
        let added = |round: &[PathReport], name: &str, f: fn(&Added) -> f64| {
            let p = round
                .iter()
                .find(|p| p.name == name && p.skipped.is_none())?;
            p.added.as_ref().map(f)
        };
        let mut rows = String::new();
        for path in self.paths.iter().filter(|p| is_sluice(&p.name)) {
            let p50 = Spread::of(rounds.iter().map(|r| added(r, &path.name, |a| a.p50_ms)));
            let p99 = Spread::of(rounds.iter().map(|r| added(r, &path.name, |a| a.p99_ms)));
            let (Some(p50), Some(p99)) = (p50, p99) else {
                continue;
            };
            let _ = writeln!(
                rows,
                "| {} | {} {} | {} {} |",
                path.name,
                p50.ms(),
                mark(p50.median < TARGET_ADDED_P50_MS),
                p99.ms(),
                mark(p99.median < TARGET_ADDED_P99_MS)
            );
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### Added latency over direct, median of {} rounds (ms, range in brackets; targets \
             p50 < {TARGET_ADDED_P50_MS}, p99 < {TARGET_ADDED_P99_MS})\n\n| path | p50 | p99 |\n|---|---:|---:|\n{rows}",
            rounds.len()
        );
    }

    fn memory_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Proxy memory and CPU (MB = 10^6 bytes; target for each sluice proxy, plaintext or mTLS: < {TARGET_RSS_MB} MB under load)\n"
        );
        let _ = writeln!(
            out,
            "| process | threads | RSS idle | peak RSS at {} req/s | peak RSS after max throughput | CPU at {} req/s |\n\
             |---|---:|---:|---:|---:|---:|",
            self.params.rate, self.params.rate
        );
        for path in &self.paths {
            let sluice = is_sluice(&path.name);
            for proc in &path.processes {
                let target = |kib| {
                    if sluice {
                        format!(" {}", mark(mb(kib) < TARGET_RSS_MB))
                    } else {
                        String::new()
                    }
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} MB | {:.1} MB{} | {:.1} MB{} | {:.0}% of a core |",
                    proc.label,
                    proc.threads,
                    mb(proc.idle_rss_kib),
                    mb(proc.peak_rss_at_rate_kib),
                    target(proc.peak_rss_at_rate_kib),
                    mb(proc.peak_rss_kib),
                    target(proc.peak_rss_kib),
                    proc.cpu_at_rate_pct
                );
            }
        }
        out.push('\n');
    }
}

/// `name`'s figure over the nginx pair's in one round, if both were measured.
fn ratio_to_nginx(
    round: &[PathReport],
    name: &str,
    figure: impl Fn(&PathReport) -> Option<f64>,
) -> Option<f64> {
    let find = |n: &str| round.iter().find(|p| p.name == n && p.skipped.is_none());
    let (a, b) = (figure(find(name)?)?, figure(find(NGINX)?)?);
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str, rps: f64, cpu_pct: f64) -> PathReport {
        let mut p = PathReport::skipped(name, String::new());
        p.skipped = None;
        p.max = Some(Throughput {
            rps,
            ok: 1,
            errors: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            error_samples: Vec::new(),
        });
        p.fixed = Some(Latency {
            achieved_rps: 1000.0,
            ok: 1,
            errors: 0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            error_samples: Vec::new(),
        });
        p.processes = vec![ProcReport {
            label: name.into(),
            threads: 1,
            idle_rss_kib: 0,
            peak_rss_at_rate_kib: 0,
            peak_rss_kib: 0,
            cpu_at_rate_pct: cpu_pct,
        }];
        p
    }

    fn report(rounds: Vec<Vec<PathReport>>) -> Report {
        let mut rounds = rounds.into_iter();
        Report {
            params: Params {
                rate: 1000,
                duration_s: 1.0,
                warmup_s: 1.0,
                connections: 8,
                max_duration_s: 1.0,
                max_connections: 8,
                rounds: 3,
                interleave: false,
                sluice_log: "warn".into(),
                sluice_worker_threads: None,
            },
            machine: Machine {
                cpus: 2,
                kernel: String::new(),
                load_before: 0.0,
                load_after: 0.0,
                steal_percent: None,
                nginx: None,
                haproxy: None,
                sluice_proxy: None,
            },
            paths: rounds.next().unwrap_or_default(),
            more_rounds: rounds.collect(),
            sections: Vec::new(),
        }
    }

    #[test]
    fn host_steal_is_read_from_proc_stat_and_a_disturbed_run_is_flagged() {
        let before =
            CpuTicks::parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
                .expect("cpu line");
        assert_eq!(
            before,
            CpuTicks {
                steal: 35,
                total: 1000
            }
        );
        let after = CpuTicks {
            steal: 435,
            total: 2000,
        };
        assert_eq!(steal_percent(before, after), Some(40.0));
        assert_eq!(steal_percent(after, after), None, "no time passed");
        assert_eq!(CpuTicks::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 3 4\n"), None, "no steal column");

        let mut r = report(vec![vec![path(SLUICE, 800.0, 12.0)]]);
        r.machine.steal_percent = Some(40.0);
        let md = r.markdown();
        assert!(md.contains("host CPU steal 40.0% over it"), "{md}");
        assert!(
            md.contains("**Disturbed host:** the hypervisor gave 40.0%"),
            "{md}"
        );
        r.machine.steal_percent = Some(1.2);
        assert!(!r.markdown().contains("Disturbed host"));
    }

    #[test]
    fn ratios_are_the_median_of_the_rounds_each_against_its_own_nginx_run() {
        // Round 2's nginx came out slow: alone it would put sluice at 1.5×.
        let r = report(vec![
            vec![path(SLUICE, 800.0, 12.0), path(NGINX, 1000.0, 10.0)],
            vec![path(SLUICE, 750.0, 11.0), path(NGINX, 500.0, 10.0)],
            vec![path(SLUICE, 900.0, 9.0), path(NGINX, 1000.0, 10.0)],
        ]);
        let mut out = String::new();
        r.ratios(&mut out);
        assert!(out.contains("median of 3 rounds"), "{out}");
        assert!(
            out.contains(
                "| sluice pair | 0.90× (0.80–1.50×) ✗ (≥ 1.0) | 1.10× (0.90–1.20×) ✗ (≤ 1.0) |"
            ),
            "{out}"
        );
    }

    /// A round whose direct run was lucky and whose sluice run met a burst of steal must not
    /// decide the added latency: the median of the rounds, each against its own direct run.
    #[test]
    fn added_latency_over_rounds_is_the_median_against_each_rounds_direct_run() {
        let timed = |name: &str, p50: f64, p99: f64| {
            let mut p = path(name, 1000.0, 10.0);
            if let Some(f) = p.fixed.as_mut() {
                f.p50_ms = p50;
                f.p99_ms = p99;
            }
            p
        };
        let mut r = report(vec![
            vec![
                timed(DIRECT, 0.10, 0.30),
                timed(SLUICE, 0.20, 0.50),
                path(NGINX, 1.0, 1.0),
            ],
            vec![
                timed(DIRECT, 0.10, 0.30),
                timed(SLUICE, 0.25, 9.30),
                path(NGINX, 1.0, 1.0),
            ],
            vec![
                timed(DIRECT, 0.20, 0.40),
                timed(SLUICE, 0.30, 0.80),
                path(NGINX, 1.0, 1.0),
            ],
        ]);
        r.compute_added();
        let mut out = String::new();
        r.ratios(&mut out);
        assert!(out.contains("median of 3 rounds (ms"), "{out}");
        assert!(
            out.contains(
                "| sluice pair | +0.100 (+0.100 to +0.150) ✓ | +0.400 (+0.200 to +9.000) ✓ |"
            ),
            "{out}"
        );
    }

    #[test]
    fn one_round_shows_one_ratio() {
        let r = report(vec![vec![
            path(SLUICE, 1100.0, 9.0),
            path(NGINX, 1000.0, 10.0),
        ]]);
        let mut out = String::new();
        r.ratios(&mut out);
        assert!(
            out.contains("### Against the nginx pair (same run)\n"),
            "{out}"
        );
        assert!(
            out.contains("| sluice pair | 1.10× ✓ (≥ 1.0) | 0.90× ✓ (≤ 1.0) |"),
            "{out}"
        );
    }
}
