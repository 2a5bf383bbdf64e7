//! Memory before, during and after a slowloris-style attack (issue 11's "check that memory
//! comes back", issue 16's "memory after an attack").
//!
//! Against a proxy's listener: open `connections` TCP connections, each sending the start of
//! an HTTP/1.1 request (request line and about 2 KiB of headers, never the blank line that ends
//! them), hold them for a few seconds (well inside the proxy's 10 s header timeout, so the proxy
//! holds every one), then close them all and watch the proxy's RSS come back. The proxy's RSS
//! is read from `/proc/PID/status` while idle (after a warm-up of ordinary requests), at its
//! highest while the connections are held, and 5 s and 15 s after they were closed. The target
//! (issue 16): 15 s after, within 20 % of idle.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::procs::ProcSample;

/// RSS after the attack may be at most this much above idle.
pub const TARGET_RECOVERY: f64 = 1.2;

/// One attack on one proxy.
#[derive(Clone, Debug, Serialize)]
pub struct AttackRow {
    /// The proxy attacked.
    pub target: String,
    /// Connections opened.
    pub opened: usize,
    /// Of those, still open when the hold ended (the proxy had not closed them).
    pub held: usize,
    /// RSS before, KiB.
    pub idle_kib: u64,
    /// Highest RSS seen while the connections were held, KiB.
    pub during_kib: u64,
    /// RSS 5 s after they were closed, KiB.
    pub after_5s_kib: u64,
    /// RSS 15 s after, KiB.
    pub after_15s_kib: u64,
}

impl AttackRow {
    /// `after_15s / idle`.
    pub fn ratio(&self) -> f64 {
        self.after_15s_kib as f64 / self.idle_kib.max(1) as f64
    }
}

/// The start of a request that never ends: the request line and ~2 KiB of headers.
fn partial_head() -> Vec<u8> {
    let mut head = b"GET /slow HTTP/1.1\r\nHost: bench\r\n".to_vec();
    for i in 0..32 {
        head.extend_from_slice(format!("X-Pad-{i:02}: {}\r\n", "a".repeat(52)).as_bytes());
    }
    head
}

/// Attacks `entry` (served by process `pid`) and measures its RSS.
pub async fn slowloris(
    target: &str,
    entry: SocketAddr,
    pid: u32,
    connections: usize,
    hold: Duration,
) -> Result<AttackRow, BenchError> {
    let idle = ProcSample::read(pid)?.rss_kib;
    let head = partial_head();
    let mut open = Vec::with_capacity(connections);
    // Opened in batches so the listen backlog is not the bottleneck being measured.
    for batch in (0..connections).collect::<Vec<_>>().chunks(250) {
        let mut set = tokio::task::JoinSet::new();
        for _ in batch {
            let head = head.clone();
            set.spawn(async move {
                let mut s = TcpStream::connect(entry).await.ok()?;
                s.write_all(&head).await.ok()?;
                Some(s)
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok(Some(s)) = joined {
                open.push(s);
            }
        }
    }
    let opened = open.len();
    let mut during = 0;
    let until = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < until {
        during = during.max(ProcSample::read(pid)?.rss_kib);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still open: a read would return EOF (0) or an error if the proxy had closed it.
    let held = open
        .iter()
        .filter(|s| {
            let mut buf = [0u8; 1];
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(open);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_5s = ProcSample::read(pid)?.rss_kib;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_15s = ProcSample::read(pid)?.rss_kib;
    Ok(AttackRow {
        target: target.into(),
        opened,
        held,
        idle_kib: idle,
        during_kib: during,
        after_5s_kib: after_5s,
        after_15s_kib: after_15s,
    })
}

/// The Markdown table.
pub fn markdown(rows: &[AttackRow], hold: Duration) -> String {
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    let mut s = format!(
        "### Memory after a slowloris-style attack\n\nEach connection sends a request line and \
         ~2 KiB of headers and never finishes them; all are held {}s (inside the 10 s header \
         timeout), then closed. RSS in MB (10^6 bytes). Target: 15 s after, within 20% of \
         idle.\n\n| proxy | opened | held by the proxy | RSS idle | RSS during (peak) | 5 s after | 15 s after | after / idle |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        hold.as_secs()
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} {} |\n",
            r.target,
            r.opened,
            r.held,
            mb(r.idle_kib),
            mb(r.during_kib),
            mb(r.after_5s_kib),
            mb(r.after_15s_kib),
            r.ratio(),
            if r.ratio() <= TARGET_RECOVERY {
                "✓"
            } else {
                "✗"
            }
        ));
    }
    s
}

/// Lets this process hold the attack's sockets: the soft open-files limit raised to the hard one.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
