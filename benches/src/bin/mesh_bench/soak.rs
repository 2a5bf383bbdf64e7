//! The soak: the mTLS pair at a fixed rate for a long time while its configuration churns the
//! way a live mesh's does — the policy edited every 10 s (each proxy reloads and swaps its
//! state) and both proxies' certificates rotated every minute (new keys from the same CA,
//! flipped in as a Kubernetes secret volume flips them).
//!
//! The load is the fixed-rate, coordinated-omission-corrected load of the latency phase, run
//! in consecutive 10 s windows so that p99 can be followed over time; each proxy's RSS is read
//! every second. Targets (issue 16): no errors, and RSS flat — the last minute's median within
//! 10 % of the second minute's (for a soak shorter than 3 minutes, the last tenth against the
//! second tenth). A CSV and a PNG (gnuplot) of RSS and p99 over time go next to the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::BenchError;
use crate::load;
use crate::mtls::MeshFiles;
use crate::procs::{ProcSample, Watched};

/// How often the policy is edited.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// How often the certificates are rotated.
pub const ROTATE_EVERY: Duration = Duration::from_secs(60);
/// The load's window: one p99 per window.
const WINDOW: Duration = Duration::from_secs(10);
/// RSS flat: this close (relative) between the two medians.
pub const TARGET_RSS_DRIFT: f64 = 0.10;

/// The soak's results.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Requests per second asked for.
    pub rate: u32,
    /// Length of the run, s.
    pub duration_s: f64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests (any).
    pub errors: u64,
    /// Example errors.
    pub error_samples: Vec<String>,
    /// Policy edits written.
    pub policy_edits: u64,
    /// Certificate rotations written.
    pub rotations: u64,
    /// Per window: (end of window s, achieved req/s, p50 ms, p99 ms, errors).
    pub windows: Vec<(f64, f64, f64, f64, u64)>,
    /// Per second: (s, RSS of each proxy in KiB).
    pub rss: Vec<(f64, Vec<u64>)>,
    /// Per proxy: (label, early median KiB, late median KiB, drift).
    pub flat: Vec<(String, u64, u64, f64)>,
    /// Which spans the medians compare.
    pub compared: String,
    /// The CSV and PNG, if written.
    pub csv: Option<PathBuf>,
    /// The plot, if gnuplot ran.
    pub png: Option<PathBuf>,
}

/// Runs the soak against the mTLS pair at `entry` made from `mesh`.
pub async fn soak(
    entry: SocketAddr,
    mesh: Arc<MeshFiles>,
    watched: &[Watched],
    rate: u32,
    duration: Duration,
    connections: usize,
    out_dir: &Path,
) -> Result<SoakReport, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // RSS every second, on its own thread.
    let rss = Arc::new(Mutex::new(Vec::<(f64, Vec<u64>)>::new()));
    let sampler = {
        let (stop, rss) = (stop.clone(), rss.clone());
        let pids: Vec<u32> = watched.iter().map(|w| w.pid).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let row = pids
                    .iter()
                    .map(|&p| ProcSample::read(p).map_or(0, |s| s.rss_kib))
                    .collect();
                if let Ok(mut v) = rss.lock() {
                    v.push((start.elapsed().as_secs_f64(), row));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // Policy edits and certificate rotations, on their own thread.
    let churner = {
        let (stop, mesh) = (stop.clone(), mesh.clone());
        std::thread::spawn(move || -> Result<(u64, u64), BenchError> {
            let (mut edits, mut rotations) = (0u64, 0u64);
            let (mut next_edit, mut next_rotation) = (RELOAD_EVERY, ROTATE_EVERY);
            while !stop.load(Ordering::Relaxed) {
                let now = start.elapsed();
                if now >= next_edit {
                    edits += 1;
                    mesh.edit_policy(edits)?;
                    next_edit += RELOAD_EVERY;
                }
                if now >= next_rotation {
                    rotations += 1;
                    mesh.rotate(rotations)?;
                    next_rotation += ROTATE_EVERY;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok((edits, rotations))
        })
    };
    let mut windows = Vec::new();
    let (mut ok, mut errors, mut samples) = (0, 0, Vec::new());
    let timeout = Duration::from_secs(10);
    while start.elapsed() + Duration::from_millis(500) < duration {
        let left = duration.saturating_sub(start.elapsed()).min(WINDOW);
        let o = load::fixed_rate(entry, rate, left, connections, timeout).await;
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        ok += o.ok;
        errors += o.errors;
        for e in &o.error_samples {
            if samples.len() < 5 && !samples.contains(e) {
                samples.push(e.clone());
            }
        }
        let q = |q: f64| o.latency.value_at_quantile(q) as f64 / 1e6;
        windows.push((
            start.elapsed().as_secs_f64(),
            o.throughput(),
            q(0.5),
            q(0.99),
            o.errors,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (policy_edits, rotations) = churner
        .join()
        .map_err(|_| BenchError::Setup("the soak's config churner panicked".into()))??;
    let rss = rss.lock().map(|v| v.clone()).unwrap_or_default();
    let total = start.elapsed().as_secs_f64();
    let (early, late, compared) = if total >= 180.0 {
        (
            (60.0, 120.0),
            (total - 60.0, total),
            "the second minute against the last minute".to_owned(),
        )
    } else {
        (
            (total * 0.1, total * 0.2),
            (total * 0.9, total),
            "a short soak: the second tenth against the last tenth".to_owned(),
        )
    };
    let flat = watched
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let median = |(from, to): (f64, f64)| {
                let mut v: Vec<u64> = rss
                    .iter()
                    .filter(|(t, _)| *t >= from && *t < to)
                    .filter_map(|(_, r)| r.get(i).copied())
                    .collect();
                v.sort_unstable();
                v.get(v.len() / 2).copied().unwrap_or(0)
            };
            let (e, l) = (median(early), median(late));
            let drift = (l as f64 - e as f64) / e.max(1) as f64;
            (w.label.clone(), e, l, drift)
        })
        .collect();
    let mut report = SoakReport {
        rate,
        duration_s: total,
        ok,
        errors,
        error_samples: samples,
        policy_edits,
        rotations,
        windows,
        rss,
        flat,
        compared,
        csv: None,
        png: None,
    };
    write_plot(&mut report, watched, out_dir);
    Ok(report)
}

/// Writes `soak.csv` and, with gnuplot, `soak.png` (RSS of each proxy and p99 over time).
fn write_plot(report: &mut SoakReport, watched: &[Watched], dir: &Path) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let rss_csv = dir.join("soak-rss.csv");
    let mut text = String::from("# seconds");
    for w in watched {
        text.push_str(&format!(",{} RSS MB", w.label));
    }
    text.push('\n');
    for (t, row) in &report.rss {
        text.push_str(&format!("{t:.1}"));
        for kib in row {
            text.push_str(&format!(",{:.2}", *kib as f64 * 1024.0 / 1e6));
        }
        text.push('\n');
    }
    let lat_csv = dir.join("soak-latency.csv");
    let mut lat = String::from("# seconds,req/s,p50 ms,p99 ms,errors\n");
    for (t, rps, p50, p99, e) in &report.windows {
        lat.push_str(&format!("{t:.1},{rps:.1},{p50:.3},{p99:.3},{e}\n"));
    }
    if std::fs::write(&rss_csv, text).is_err() || std::fs::write(&lat_csv, lat).is_err() {
        return;
    }
    report.csv = Some(rss_csv.clone());
    let png = dir.join("soak.png");
    let mut plots = Vec::new();
    for (i, w) in watched.iter().enumerate() {
        plots.push(format!(
            "'{}' using 1:{} with lines lw 2 title '{}'",
            rss_csv.display(),
            i + 2,
            w.label
        ));
    }
    let script = format!(
        "set terminal png size 1000,700
set output '{png}'
set datafile separator ','
set multiplot layout 2,1 title 'sluice mTLS pair soak: {rate} req/s, policy edit every 10 s, certificate rotation every 60 s'
set xlabel 'seconds'
set ylabel 'RSS (MB)'
set xrange [0:{end:.0}]
set yrange [0:*]
set key right bottom
set grid
plot {plots}
set ylabel 'p99 per 10 s window (ms)'
plot '{lat}' using 1:4 with linespoints lw 2 title 'p99', '{lat}' using 1:3 with lines title 'p50'
unset multiplot
",
        png = png.display(),
        rate = report.rate,
        plots = plots.join(", "),
        lat = lat_csv.display(),
        end = report.duration_s,
    );
    let script_path = dir.join("soak.gnuplot");
    if std::fs::write(&script_path, script).is_err() {
        return;
    }
    match Command::new("gnuplot").arg(&script_path).output() {
        Ok(out) if out.status.success() => report.png = Some(png),
        Ok(out) => eprintln!(
            "soak: gnuplot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("soak: gnuplot not run ({e}); install gnuplot-nox for the PNG"),
    }
}

/// The Markdown section.
pub fn markdown(r: &SoakReport) -> String {
    let mut s = format!(
        "### Soak: the mTLS pair at {} req/s for {:.0} s, policy edited every {} s, \
         certificates rotated every {} s\n\n",
        r.rate,
        r.duration_s,
        RELOAD_EVERY.as_secs(),
        ROTATE_EVERY.as_secs()
    );
    let p99s: Vec<f64> = r.windows.iter().map(|w| w.3).collect();
    let worst = p99s.iter().copied().fold(0.0, f64::max);
    let mut sorted = p99s.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    s.push_str(&format!(
        "- requests: {} ok, **{} errors** {} (target 0); {} policy edits, {} certificate \
         rotations written\n- p99 per 10 s window: median {:.3} ms, worst {:.3} ms\n- RSS flat \
         ({}; target: within {:.0}%):\n",
        r.ok,
        r.errors,
        if r.errors == 0 { "✓" } else { "✗" },
        r.policy_edits,
        r.rotations,
        median,
        worst,
        r.compared,
        TARGET_RSS_DRIFT * 100.0
    ));
    for (label, e, l, drift) in &r.flat {
        s.push_str(&format!(
            "  - {label}: {:.1} MB → {:.1} MB ({:+.1}%) {}\n",
            *e as f64 * 1024.0 / 1e6,
            *l as f64 * 1024.0 / 1e6,
            drift * 100.0,
            if drift.abs() <= TARGET_RSS_DRIFT {
                "✓"
            } else {
                "✗"
            }
        ));
    }
    for e in &r.error_samples {
        s.push_str(&format!("- error: {e}\n"));
    }
    match &r.png {
        Some(png) => s.push_str(&format!(
            "\nRSS and p99 over time: `{}` (data: `{}`)\n",
            png.display(),
            r.csv
                .as_ref()
                .map_or(String::new(), |c| c.display().to_string())
        )),
        None => s.push_str("\n(no plot: gnuplot did not run)\n"),
    }
    s
}
