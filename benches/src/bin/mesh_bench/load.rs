//! The load generator: keep-alive HTTP/1.1 connections (hyper's client) driven either
//! open-loop at a fixed rate or closed-loop as fast as they go.
//!
//! **Fixed rate, corrected for coordinated omission.** A scheduler thread computes when each
//! request *should* be sent (`start + i / rate`) and hands that intended time to whichever
//! connection is free. Latency is measured from the intended time, not from when the request
//! actually left. So when the path under test stalls, the requests that should have been sent
//! during the stall are charged for the time they waited — a closed-loop client would instead
//! quietly send fewer requests and report only the fast ones (wrk2's argument). The scheduler
//! runs on its own OS thread with `std::thread::sleep` and a 1 ns timer slack, because tokio's
//! timer has a 1 ms granularity that would add up to 1 ms to every sample.
//!
//! **Max throughput.** Each connection sends its next request as soon as the previous answer
//! arrives, for a fixed time; the result is requests per second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::error::BenchError;

/// Histograms record nanoseconds from 1 ns to this, with 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;
/// How many distinct error messages a run keeps as examples.
const ERROR_SAMPLES: usize = 5;

/// What one phase measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latency of successful requests in nanoseconds (from the intended send time for fixed
    /// rate, from the actual send time for max throughput).
    pub latency: Histogram<u64>,
    /// Requests answered `200 OK` with their whole body.
    pub ok: u64,
    /// Requests that failed: connect or protocol error, other status, timeout, or never sent
    /// before the phase's deadline.
    pub errors: u64,
    /// From the first intended send to the last completion.
    pub elapsed: Duration,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
}

impl Outcome {
    fn new() -> Result<Outcome, BenchError> {
        Ok(Outcome {
            latency: Histogram::new_with_bounds(1, HIST_MAX_NS, 3)
                .map_err(|e| BenchError::Setup(format!("histogram: {e}")))?,
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            error_samples: Vec::new(),
        })
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The first error message, for reports and failures.
    pub fn first_error(&self) -> String {
        self.error_samples
            .first()
            .cloned()
            .unwrap_or_else(|| "none".into())
    }

    fn success(&mut self, latency: Duration) {
        self.ok += 1;
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(ns.max(1));
    }

    fn failure(&mut self, error: &RequestError) {
        self.errors += 1;
        let text = error.to_string();
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&text) {
            self.error_samples.push(text);
        }
    }

    fn merge(&mut self, other: Outcome) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Build(#[from] http::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("not sent before the phase's deadline")]
    Late,
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("unexpected answer {0:?}")]
    Answer(String),
}

/// One keep-alive connection; reconnects after an error.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, BenchError> {
        let sender = handshake(addr)
            .await
            .map_err(|e| BenchError::Setup(format!("cannot connect to {addr}: {e}")))?;
        Ok(Conn {
            addr,
            sender: Some(sender),
        })
    }

    /// `GET /`, expecting 200 and reading the whole body.
    async fn get(&mut self, timeout: Duration) -> Result<(), RequestError> {
        tokio::time::timeout(timeout, self.try_get())
            .await
            .unwrap_or(Err(RequestError::Timeout(timeout)))
    }

    async fn try_get(&mut self) -> Result<(), RequestError> {
        // The sender is put back only after a complete exchange, so a transport error (or a
        // timeout dropping this future) closes the connection and the next request reconnects.
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => handshake(self.addr).await?,
        };
        if sender.ready().await.is_err() {
            // The server closed the idle connection before this request went out (nginx does
            // after `keepalive_requests`): that is not a failed request, so reconnect.
            sender = handshake(self.addr).await?;
            sender.ready().await?;
        }
        let req = http::Request::get("/")
            .header(http::header::HOST, self.addr.to_string())
            .body(Empty::new())?;
        let rsp = sender.send_request(req).await?;
        let status = rsp.status();
        rsp.into_body().collect().await?;
        self.sender = Some(sender);
        if status == http::StatusCode::OK {
            Ok(())
        } else {
            Err(RequestError::Status(status.as_u16()))
        }
    }
}

async fn handshake(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, RequestError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(RequestError::Connect)?;
    stream.set_nodelay(true).map_err(RequestError::Connect)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One `GET path` on a new connection, for checks outside the measured phases: the status
/// and the body as text, or why there is none.
pub async fn get_once(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut sender = handshake(addr).await?;
        sender.ready().await?;
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::new())?;
        let rsp = sender.send_request(req).await?;
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok::<_, RequestError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(RequestError::Timeout(timeout).to_string()),
    }
}

async fn open_all(addr: SocketAddr, connections: usize) -> Result<Vec<Conn>, BenchError> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// Open-loop load at `rate` requests per second for `duration` over `connections` keep-alive
/// connections, latency measured from each request's intended send time. Requests still
/// queued `timeout` after the schedule ends are counted as errors without being sent.
pub async fn fixed_rate(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    connections: usize,
    timeout: Duration,
) -> Result<Outcome, BenchError> {
    let conns = open_all(addr, connections).await?;
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    // A little slack so every worker is waiting before the first intended time.
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + duration + timeout;
    let (tx, rx) = mpsc::unbounded_channel();
    let scheduler = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || schedule(start, rate, total, &tx))
        .map_err(BenchError::io("scheduler thread"))?;
    let queue = Arc::new(Mutex::new(rx));
    let mut workers = JoinSet::new();
    for conn in conns {
        let queue = queue.clone();
        let mut outcome = Outcome::new()?;
        workers.spawn(async move {
            let mut conn = conn;
            let mut last_done = start;
            loop {
                // Whichever connection is free takes the next intended time.
                let Some(intended) = queue.lock().await.recv().await else {
                    break;
                };
                if Instant::now() > deadline {
                    outcome.failure(&RequestError::Late);
                    continue;
                }
                let result = conn.get(timeout).await;
                last_done = Instant::now();
                match result {
                    Ok(()) => outcome.success(last_done.saturating_duration_since(intended)),
                    Err(e) => outcome.failure(&e),
                }
            }
            (outcome, last_done)
        });
    }
    let outcome = collect(workers, start).await?;
    // The queue closed, so the scheduler has returned.
    let _ = scheduler.join();
    Ok(outcome)
}

/// Sends `total` intended times, each at its time. Runs on its own thread.
fn schedule(start: Instant, rate: u32, total: u64, tx: &mpsc::UnboundedSender<Instant>) {
    // The default 50 µs timer slack would delay every wake-up; ask for the finest.
    let _ = nix::sys::prctl::set_timerslack(1);
    let rate = u64::from(rate.max(1));
    for i in 0..total {
        let at = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if tx.send(at).is_err() {
            return;
        }
    }
}

/// Closed-loop load: every connection sends back to back for `duration`.
pub async fn max_throughput(
    addr: SocketAddr,
    duration: Duration,
    connections: usize,
    timeout: Duration,
) -> Result<Outcome, BenchError> {
    let conns = open_all(addr, connections).await?;
    let start = Instant::now();
    let end = start + duration;
    let mut workers = JoinSet::new();
    for conn in conns {
        let mut outcome = Outcome::new()?;
        workers.spawn(async move {
            let mut conn = conn;
            let mut last_done = start;
            while last_done < end {
                let sent = Instant::now();
                let result = conn.get(timeout).await;
                last_done = Instant::now();
                match result {
                    Ok(()) => outcome.success(last_done - sent),
                    Err(e) => outcome.failure(&e),
                }
            }
            (outcome, last_done)
        });
    }
    collect(workers, start).await
}

/// Closed-loop load that stops after exactly `total` requests (successful or not), shared by
/// `connections` connections: a fixed amount of work, for counting instructions per request.
pub async fn exact(
    addr: SocketAddr,
    total: u64,
    connections: usize,
    timeout: Duration,
) -> Result<Outcome, BenchError> {
    let conns = open_all(addr, connections).await?;
    let start = Instant::now();
    let left = Arc::new(std::sync::atomic::AtomicU64::new(total));
    let mut workers = JoinSet::new();
    for conn in conns {
        let mut outcome = Outcome::new()?;
        let left = left.clone();
        workers.spawn(async move {
            let mut conn = conn;
            let mut last_done = start;
            let take = |n: u64| n.checked_sub(1);
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    take,
                )
                .is_ok()
            {
                let sent = Instant::now();
                let result = conn.get(timeout).await;
                last_done = Instant::now();
                match result {
                    Ok(()) => outcome.success(last_done - sent),
                    Err(e) => outcome.failure(&e),
                }
            }
            (outcome, last_done)
        });
    }
    collect(workers, start).await
}

/// What one new connection carries in [`churn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnKind {
    /// One `GET /` with `connection: close`, answered 200.
    Http,
    /// Opaque TCP: `PING\r\n`, answered `PONG\r\n` and closed (by [`crate::upstream::TcpUpstream`]).
    Tcp,
}

/// Connection churn: `connections` workers, each opening a new connection for every exchange
/// for `duration`. The result's throughput is new connections per second; latency is from
/// connect to the end of the answer.
pub async fn churn(
    addr: SocketAddr,
    kind: ChurnKind,
    duration: Duration,
    connections: usize,
    timeout: Duration,
) -> Result<Outcome, BenchError> {
    let start = Instant::now();
    let end = start + duration;
    let mut workers = JoinSet::new();
    for _ in 0..connections.max(1) {
        let mut outcome = Outcome::new()?;
        workers.spawn(async move {
            let mut last_done = start;
            while last_done < end {
                let sent = Instant::now();
                let once = async {
                    match kind {
                        ChurnKind::Http => http_once(addr).await,
                        ChurnKind::Tcp => tcp_once(addr).await,
                    }
                };
                let result = tokio::time::timeout(timeout, once)
                    .await
                    .unwrap_or(Err(RequestError::Timeout(timeout)));
                last_done = Instant::now();
                match result {
                    Ok(()) => outcome.success(last_done - sent),
                    Err(e) => outcome.failure(&e),
                }
            }
            (outcome, last_done)
        });
    }
    collect(workers, start).await
}

async fn http_once(addr: SocketAddr) -> Result<(), RequestError> {
    let mut sender = handshake(addr).await?;
    sender.ready().await?;
    let req = http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    if status == http::StatusCode::OK {
        Ok(())
    } else {
        Err(RequestError::Status(status.as_u16()))
    }
}

async fn tcp_once(addr: SocketAddr) -> Result<(), RequestError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(RequestError::Connect)?;
    stream.set_nodelay(true).map_err(RequestError::Connect)?;
    stream
        .write_all(b"PING\r\n")
        .await
        .map_err(RequestError::Io)?;
    let mut answer = Vec::with_capacity(8);
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(RequestError::Io)?;
    if answer == b"PONG\r\n" {
        Ok(())
    } else {
        Err(RequestError::Answer(
            String::from_utf8_lossy(&answer).into_owned(),
        ))
    }
}

async fn collect(
    mut workers: JoinSet<(Outcome, Instant)>,
    start: Instant,
) -> Result<Outcome, BenchError> {
    let mut total = Outcome::new()?;
    let mut last_done = start;
    while let Some(joined) = workers.join_next().await {
        let (outcome, done) =
            joined.map_err(|e| BenchError::Setup(format!("load worker failed: {e}")))?;
        total.merge(outcome);
        last_done = last_done.max(done);
    }
    total.elapsed = last_done.saturating_duration_since(start);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    #[tokio::test]
    async fn fixed_rate_sends_the_scheduled_count() {
        let up = Upstream::start().expect("upstream");
        let out = fixed_rate(
            up.addr,
            500,
            Duration::from_millis(400),
            2,
            Duration::from_secs(5),
        )
        .await
        .expect("run");
        assert_eq!(out.ok + out.errors, 200);
        assert_eq!(out.errors, 0, "{:?}", out.error_samples);
        assert_eq!(out.latency.len(), 200);
    }

    #[tokio::test]
    async fn refused_connections_are_errors_not_latency() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        // Nothing listens on `port` any more, so the first connect fails.
        assert!(
            fixed_rate(
                port,
                100,
                Duration::from_millis(100),
                1,
                Duration::from_secs(1)
            )
            .await
            .is_err()
        );
    }
}
