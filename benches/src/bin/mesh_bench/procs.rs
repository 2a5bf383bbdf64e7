//! The proxies under test, run as child processes: a pair of `sluice-proxy` release binaries
//! in explicit mode, or a pair of nginx masters with one worker each. Also `/proc` readings of
//! their memory, threads and CPU time.
//!
//! The sluice pair runs plaintext, or (the mTLS pair) with identities, policy and endpoints
//! from [`crate::mtls`].
//!
//! All pairs have the same shape: client → A → B → upstream, where A plays the caller's
//! sidecar (outbound) and B the callee's (inbound). Everything binds 127.0.0.1.
mod reference;
mod sluice;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::BenchError;
pub use reference::{HaproxyPair, Hop, NginxPair, haproxy_version, nginx_version};
pub use sluice::{SluiceOptions, SluicePair, sluice_proxy_bin};

/// How long a child may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Supervised, BenchError> {
        let stderr = File::create(&log).map_err(BenchError::file("create", &log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(BenchError::io(format!("start {name} ({cmd:?})")))?;
        Ok(Supervised {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has exited.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Setup(format!(
                "{} exited during start-up ({status}); its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            ))),
            Err(e) => Err(BenchError::io(format!("wait for {}", self.name))(e)),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(raw) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A process whose memory the report shows.
#[derive(Clone, Debug)]
pub struct Watched {
    /// What it is, e.g. `sluice A (outbound)`.
    pub label: String,
    /// Its pid.
    pub pid: u32,
}

/// Figures from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
    /// CPU time so far, in nanoseconds: the scheduler's own count, summed over the threads
    /// (`/proc/PID/task/*/schedstat`), where `/proc/PID/stat`'s clock ticks would be 10 ms
    /// coarse — too coarse for a few seconds at 1,000 req/s.
    pub cpu_ns: u64,
}

impl ProcSample {
    /// Reads the process's current figures.
    pub fn read(pid: u32) -> Result<ProcSample, BenchError> {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let status = std::fs::read_to_string(&path).map_err(BenchError::file("read", &path))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let stat = std::fs::read_to_string(&path).map_err(BenchError::file("read", &path))?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th
        // fields of the whole line, so the 12th and 13th after it.
        let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: Vec<u64> = after_comm
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        let from_ticks = ticks.iter().sum::<u64>() * 1_000_000_000 / ticks_per_second();
        Ok(ProcSample {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
            cpu_ns: schedstat_ns(pid).unwrap_or(from_ticks),
        })
    }
}

/// The CPU time of `pid`'s live threads, from the first field of each thread's `schedstat`.
/// The proxies' threads live as long as the process, so none is lost by exiting.
fn schedstat_ns(pid: u32) -> Option<u64> {
    let mut sum = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read: it is skipped, not an error.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        sum += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// Clock ticks per second for `/proc/PID/stat` CPU times.
fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}
/// `program` run by `wrapper`'s program and arguments, or on its own.
fn wrapped(program: &Path, wrapper: &[String]) -> Command {
    match wrapper.split_first() {
        None => Command::new(program),
        Some((first, args)) => {
            let mut cmd = Command::new(first);
            cmd.args(args).arg(program);
            cmd
        }
    }
}

/// Under valgrind a start takes many times longer.
fn start_timeout(wrapper: &[String]) -> Duration {
    if wrapper.is_empty() {
        START_TIMEOUT
    } else {
        START_TIMEOUT * 6
    }
}
/// Direct children of `pid`, from `/proc/*/stat`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_owned();
                    // After the command: state, then ppid.
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_figures() {
        let s = ProcSample::read(std::process::id()).expect("proc");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib && s.threads >= 1);
    }

    /// The CPU time is the scheduler's, in nanoseconds: spinning for 50 ms shows as about
    /// that, where clock ticks would move in steps of 10 ms.
    #[test]
    fn cpu_time_is_counted_in_nanoseconds() {
        let pid = std::process::id();
        let before = ProcSample::read(pid).expect("proc").cpu_ns;
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spent = ProcSample::read(pid).expect("proc").cpu_ns - before;
        assert!(
            spent >= 20_000_000,
            "50 ms of spinning counted as {spent} ns"
        );
        assert!(
            !spent.is_multiple_of(1_000_000),
            "{spent} ns looks like whole ticks"
        );
    }
}
