//! HTTP/2 and gRPC through each pair, driven by h2load (Debian's nghttp2-client): unary calls
//! with many concurrent streams on a few connections, and a server stream of
//! [`STREAM_MESSAGES`] messages per call, against an upstream that answers like a gRPC server
//! ([`crate::upstream::GrpcUpstream`]).
//!
//! h2load sends `POST /bench.Echo/Unary` (or `/Stream`) with `content-type: application/grpc`,
//! `te: trailers` and a one-message body, as a gRPC client does, for a fixed time after a
//! warm-up, and logs every request's status and duration; the percentiles come from that log.
//!
//! [`STREAM_MESSAGES`]: crate::upstream::STREAM_MESSAGES

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::BenchError;
use crate::report::{HAPROXY, SLUICE, SLUICE_MTLS};
use crate::spread::Spread;

/// One h2load run through one path.
#[derive(Clone, Debug, Serialize)]
pub struct GrpcRow {
    /// The path (`direct`, `sluice pair`, ...).
    pub path: String,
    /// `unary` or `server stream`.
    pub call: String,
    /// Calls completed per second (h2load's figure).
    pub rps: f64,
    /// Calls answered `200` with every message.
    pub ok: u64,
    /// Calls that failed (h2load's failed + errored).
    pub failed: u64,
    /// Median call time, ms (from h2load's per-request log).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// CPU time both proxies used during the run, per 1,000 calls, ms.
    pub cpu_ms_per_1k: Option<f64>,
    /// Response DATA bytes the client received per successful call: h2load counts any `200`
    /// as a success, so this is what shows whether every message arrived (13 bytes per
    /// message here).
    pub data_bytes_per_call: f64,
}

/// What one h2load run counted.
#[derive(Debug)]
pub struct H2loadRun {
    /// Calls per second.
    pub rps: f64,
    /// Calls answered `200`.
    pub ok: u64,
    /// Failed or errored calls.
    pub failed: u64,
    /// Response DATA bytes received in the measured phase.
    pub data_bytes: u64,
    /// Call times of the `200`s, µs.
    pub hist: Histogram<u64>,
}

/// How h2load loads each path.
#[derive(Clone, Debug)]
pub struct GrpcParams {
    /// HTTP/2 connections.
    pub connections: usize,
    /// Concurrent streams per connection.
    pub streams: usize,
    /// Measured time.
    pub duration: Duration,
    /// Discarded warm-up.
    pub warmup: Duration,
    /// Rounds, each running every path once per call (the table shows the first).
    pub rounds: u32,
}

impl GrpcParams {
    /// The measured and warm-up seconds as h2load takes them: whole, at least one each. The
    /// report prints these, so it says what ran.
    fn h2load_secs(&self) -> (u64, u64) {
        (self.duration.as_secs().max(1), self.warmup.as_secs().max(1))
    }
}

/// Runs h2load for `call_path` (a gRPC method path) against `entry`.
pub fn h2load(
    entry: SocketAddr,
    call_path: &str,
    params: &GrpcParams,
    dir: &Path,
) -> Result<H2loadRun, BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))?;
    let body = dir.join("request.bin");
    // One gRPC message: uncompressed, 5 bytes.
    std::fs::write(&body, b"\x00\x00\x00\x00\x05hello")
        .map_err(BenchError::file("write", &body))?;
    let log = dir.join(format!("h2load-{}.log", entry.port()));
    let _ = std::fs::remove_file(&log);
    let (duration, warmup) = params.h2load_secs();
    let out = Command::new("h2load")
        .arg(format!("--clients={}", params.connections))
        .arg(format!("--max-concurrent-streams={}", params.streams))
        .arg("--threads=1")
        .arg(format!("--duration={duration}"))
        .arg(format!("--warm-up-time={warmup}"))
        .args(["--header", "content-type: application/grpc"])
        .args(["--header", "te: trailers"])
        .arg(format!("--data={}", body.display()))
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{entry}{call_path}"))
        .output()
        .map_err(BenchError::io("run h2load (Debian: nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "h2load against {entry} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| BenchError::Setup(format!("h2load printed no req/s: {text}")))?;
    let count = |word| request_count(&text, word).unwrap_or(0);
    let (succeeded, failed, errored) = (count(" succeeded"), count(" failed"), count(" errored"));
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Setup(format!("histogram: {e}")))?;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    for line in logged.lines() {
        let mut fields = line.split('\t');
        let (Some(_start), Some(status), Some(us)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if status.trim() == "200"
            && let Ok(us) = us.trim().parse::<u64>()
        {
            hist.saturating_record(us.max(1));
        }
    }
    Ok(H2loadRun {
        rps,
        ok: succeeded,
        failed: failed + errored,
        data_bytes: data_bytes(&text),
        hist,
    })
}

/// One figure of h2load's `requests:` line (`word` is e.g. `" succeeded"`).
pub fn request_count(text: &str, word: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| {
            l.split(", ")
                .find_map(|part| part.strip_suffix(word)?.trim().parse::<u64>().ok())
        })
}

/// The DATA bytes of h2load's `traffic:` line
/// (`traffic: 1.2MB (1290000) total, 12KB (12000) headers (...), 1.2MB (1270000) data`).
fn data_bytes(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("traffic: "))
        .and_then(|l| l.split(", ").find(|part| part.ends_with(" data")))
        .and_then(|part| {
            let open = part.find('(')?;
            let close = part.find(')')?;
            part.get(open + 1..close)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The sluice pairs against the HAProxy h2 pair, call by call: calls per second and proxy
/// CPU per call, each a ratio within a round (the two runs seconds apart), then the median of
/// the rounds with their range. The target (≥ 1.0× HAProxy's calls per second) is the
/// plaintext pair's; the mTLS pair's line is there to be read beside it.
pub fn against_haproxy(rounds: &[Vec<GrpcRow>]) -> String {
    let ratio = |round: &[GrpcRow], name: &str, call: &str, f: fn(&GrpcRow) -> Option<f64>| {
        let of = |n: &str| round.iter().find(|r| r.path == n && r.call == call);
        let (a, b) = (f(of(name)?)?, f(of(HAPROXY)?)?);
        (b > 0.0).then(|| a / b)
    };
    let mut rows = String::new();
    for call in ["unary", "server stream"] {
        for name in [SLUICE, SLUICE_MTLS] {
            let rps = Spread::of(rounds.iter().map(|r| ratio(r, name, call, |r| Some(r.rps))));
            let cpu = Spread::of(
                rounds
                    .iter()
                    .map(|r| ratio(r, name, call, |r| r.cpu_ms_per_1k)),
            );
            let Some(rps) = rps else { continue };
            let target = if name == SLUICE {
                format!(" {} (≥ 1.0)", if rps.median >= 1.0 { "✓" } else { "✗" })
            } else {
                String::new()
            };
            rows.push_str(&format!(
                "| {name} | {call} | {rps}{target} | {} |\n",
                cpu.map_or("—".to_owned(), |c| c.to_string())
            ));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let how = match rounds.len() {
        1 => "one round".to_owned(),
        n => format!(
            "median of {n} rounds, each against the HAProxy run beside it, range in brackets"
        ),
    };
    format!(
        "Against the HAProxy h2 pair ({how}):\n\n| path | call | calls/s | proxy CPU per call |\n\
         |---|---|---:|---:|\n{rows}"
    )
}

/// The Markdown table.
pub fn markdown(rows: &[GrpcRow], params: &GrpcParams, target_note: &str) -> String {
    let (duration, warmup) = params.h2load_secs();
    let rounds = match params.rounds {
        0 | 1 => String::new(),
        n => format!(
            "; {n} rounds, every pair started once and the paths run in turn, backwards every other round; the table is the first round's"
        ),
    };
    let mut s = format!(
        "### HTTP/2 and gRPC (h2load: {} connections × {} concurrent streams, {}s after a {}s \
         warm-up{rounds})\n\n| path | call | calls/s | ok | failed | p50 ms | p99 ms | proxy CPU ms per 1,000 calls | DATA bytes per call |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        params.connections, params.streams, duration, warmup
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.3} | {:.3} | {} | {:.0} |\n",
            r.path,
            r.call,
            r.rps,
            r.ok,
            r.failed,
            r.p50_ms,
            r.p99_ms,
            r.cpu_ms_per_1k.map_or("—".into(), |c| format!("{c:.1}")),
            r.data_bytes_per_call
        ));
    }
    s.push_str(target_note);
    s
}

/// ms from ns-free microsecond histograms.
pub fn us_quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, call: &str, rps: f64, cpu: f64) -> GrpcRow {
        GrpcRow {
            path: path.into(),
            call: call.into(),
            rps,
            ok: 1,
            failed: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            cpu_ms_per_1k: Some(cpu),
            data_bytes_per_call: 0.0,
        }
    }

    #[test]
    fn the_ratio_to_haproxy_is_the_median_of_the_rounds_not_one_slow_run() {
        let round = |sluice: f64, haproxy: f64| {
            vec![
                row(SLUICE, "server stream", sluice, 60.0),
                row(HAPROXY, "server stream", haproxy, 40.0),
            ]
        };
        // The second round's HAProxy run fell in a quiet moment: 0.5× on its own.
        let text = against_haproxy(&[round(110.0, 100.0), round(60.0, 120.0), round(105.0, 100.0)]);
        assert!(text.contains("median of 3 rounds"), "{text}");
        assert!(
            text.contains("| sluice pair | server stream | 1.05× (0.50–1.10×) ✓ (≥ 1.0) | 1.50× (1.50–1.50×) |"),
            "{text}"
        );
        // No unary rows and no mTLS rows were measured: no lines for them.
        assert!(!text.contains("unary"), "{text}");
        assert!(!text.contains(SLUICE_MTLS), "{text}");
    }

    #[test]
    fn without_haproxy_there_is_no_comparison() {
        assert_eq!(against_haproxy(&[vec![row(SLUICE, "unary", 1.0, 1.0)]]), "");
    }
}
