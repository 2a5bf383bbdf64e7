//! The reference pairs sluice is measured against: nginx and HAProxy, each as two processes
//! with the same shape as the sluice pair, their configuration written for the run and their
//! ports picked beforehand (neither reports what it bound).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Supervised, Watched, children_of, start_timeout, wrapped};
use crate::error::BenchError;

/// What a reference pair (nginx, HAProxy) speaks on every hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// HTTP/1.1 with keep-alive pools.
    Http1,
    /// HTTP/2 prior knowledge (h2c) end to end: gRPC.
    H2,
}

/// Two nginx masters, one worker each: A `proxy_pass`es (or `grpc_pass`es) to B, B to the
/// upstream, both with a keep-alive upstream pool.
#[derive(Debug)]
pub struct NginxPair {
    a: Supervised,
    b: Supervised,
    entry: SocketAddr,
    b_addr: SocketAddr,
}

impl NginxPair {
    /// Starts B, then A pointed at it.
    pub fn start(
        nginx: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
    ) -> Result<NginxPair, BenchError> {
        NginxPair::start_wrapped(nginx, upstream, dir, hop, &[])
    }

    /// As [`NginxPair::start`], each nginx run by `wrapper` (e.g. valgrind) when it is not
    /// empty, and then as one process (`master_process off`: the master serves, so the
    /// process the wrapper watches is the one doing the work).
    pub fn start_wrapped(
        nginx: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
        wrapper: &[String],
    ) -> Result<NginxPair, BenchError> {
        let (b, b_addr) = start_nginx(
            nginx,
            "nginx B",
            upstream,
            &dir.join("nginx-b"),
            hop,
            wrapper,
        )?;
        let (a, entry) = start_nginx(nginx, "nginx A", b_addr, &dir.join("nginx-a"), hop, wrapper)?;
        Ok(NginxPair {
            a,
            b,
            entry,
            b_addr,
        })
    }

    /// Where the client connects (A's listener).
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    /// B's listener.
    pub fn b_entry(&self) -> SocketAddr {
        self.b_addr
    }

    /// A's and B's workers (the masters only supervise, so they are left out), or A and B
    /// themselves when they run without a master.
    pub fn watched(&self) -> Vec<Watched> {
        [&self.a, &self.b]
            .into_iter()
            .flat_map(|p| {
                let workers = children_of(p.pid());
                let (pids, label) = if workers.is_empty() {
                    (vec![p.pid()], p.name.clone())
                } else {
                    (workers, format!("{} worker", p.name))
                };
                pids.into_iter().map(move |pid| Watched {
                    label: label.clone(),
                    pid,
                })
            })
            .collect()
    }
}

/// Two HAProxy processes, one thread each (`nbthread 1`), A → B → upstream, keep-alive
/// connection reuse to the next hop (`http-reuse always`), no logging.
#[derive(Debug)]
pub struct HaproxyPair {
    a: Supervised,
    b: Supervised,
    entry: SocketAddr,
    b_addr: SocketAddr,
}

impl HaproxyPair {
    /// Starts B, then A pointed at it.
    pub fn start(
        haproxy: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
    ) -> Result<HaproxyPair, BenchError> {
        HaproxyPair::start_wrapped(haproxy, upstream, dir, hop, &[])
    }

    /// As [`HaproxyPair::start`], each HAProxy run by `wrapper` (e.g. valgrind) when it is
    /// not empty.
    pub fn start_wrapped(
        haproxy: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
        wrapper: &[String],
    ) -> Result<HaproxyPair, BenchError> {
        let (b, b_addr) = start_haproxy(
            haproxy,
            "haproxy B",
            upstream,
            &dir.join("haproxy-b"),
            hop,
            wrapper,
        )?;
        let (a, entry) = start_haproxy(
            haproxy,
            "haproxy A",
            b_addr,
            &dir.join("haproxy-a"),
            hop,
            wrapper,
        )?;
        Ok(HaproxyPair {
            a,
            b,
            entry,
            b_addr,
        })
    }

    /// Where the client connects (A's listener).
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    /// B's listener.
    pub fn b_entry(&self) -> SocketAddr {
        self.b_addr
    }

    /// A and B (each one process with one thread).
    pub fn watched(&self) -> Vec<Watched> {
        [&self.a, &self.b]
            .into_iter()
            .map(|p| Watched {
                label: p.name.clone(),
                pid: p.pid(),
            })
            .collect()
    }
}

/// `nginx -v`'s answer, e.g. `nginx/1.22.1`, or `None` when nginx cannot be run.
pub fn nginx_version(nginx: &Path) -> Option<String> {
    let out = Command::new(nginx).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.trim()
        .strip_prefix("nginx version: ")
        .map(str::to_owned)
        .filter(|_| out.status.success())
}

/// `haproxy -v`'s first line, shortened to `HAProxy 2.6.12-1+deb12u4`, or `None`.
pub fn haproxy_version(haproxy: &Path) -> Option<String> {
    let out = Command::new(haproxy).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    let version = first
        .strip_prefix("HAProxy version ")?
        .split_whitespace()
        .next()?;
    out.status.success().then(|| format!("HAProxy {version}"))
}

/// nginx and HAProxy are not told to listen on port 0 (nginx refuses it), so the port is
/// picked the next best way: bind port 0, read the port back, release it and hand it over. If
/// something else takes it in between, the start fails to bind and is retried with a new port.
fn start_on_picked_port(
    name: &str,
    dir: &Path,
    timeout: Duration,
    command: impl Fn(SocketAddr) -> Result<Command, BenchError>,
) -> Result<(Supervised, SocketAddr), BenchError> {
    const ATTEMPTS: usize = 3;
    std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))?;
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BenchError::io(format!("pick a port for {name}")))?;
        let mut proc = Supervised::spawn(name, command(listen)?, dir.join("stderr.log"))?;
        match wait_listening(&mut proc, listen, timeout) {
            Ok(()) => return Ok((proc, listen)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| BenchError::Setup(format!("{name} did not start"))))
}

fn start_nginx(
    nginx: &Path,
    name: &str,
    upstream: SocketAddr,
    dir: &Path,
    hop: Hop,
    wrapper: &[String],
) -> Result<(Supervised, SocketAddr), BenchError> {
    start_on_picked_port(name, dir, start_timeout(wrapper), |listen| {
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir, listen, upstream, hop))
            .map_err(BenchError::file("write", &conf))?;
        let mut cmd = wrapped(nginx, wrapper);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args([
                "-g",
                if wrapper.is_empty() {
                    "daemon off;"
                } else {
                    "daemon off; master_process off;"
                },
            ]);
        Ok(cmd)
    })
}
fn start_haproxy(
    haproxy: &Path,
    name: &str,
    upstream: SocketAddr,
    dir: &Path,
    hop: Hop,
    wrapper: &[String],
) -> Result<(Supervised, SocketAddr), BenchError> {
    start_on_picked_port(name, dir, start_timeout(wrapper), |listen| {
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, haproxy_conf(listen, upstream, hop))
            .map_err(BenchError::file("write", &conf))?;
        let mut cmd = wrapped(haproxy, wrapper);
        // -db: foreground, one process (no master-worker), which is the pid watched.
        cmd.arg("-db").arg("-f").arg(&conf);
        Ok(cmd)
    })
}

fn wait_listening(
    proc: &mut Supervised,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{} is not listening on {addr} after {timeout:?}",
                proc.name
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One worker, no access log, a keep-alive pool to the next hop: the usual way to run nginx as
/// a reverse proxy, and the closest match to one sidecar. HTTP/1.1 with `proxy_pass`, or
/// HTTP/2 prior knowledge on the listener and `grpc_pass` (HTTP/2) to the next hop.
fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr, hop: Hop) -> String {
    let d = dir.display();
    let (listen_opts, location) = match hop {
        Hop::Http1 => (
            "",
            "proxy_pass http://next_hop;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";",
        ),
        Hop::H2 => (" http2", "grpc_pass grpc://next_hop;"),
    };
    format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 10240; }}
http {{
    access_log off;
    # No per-connection request cap (nginx's default is 1,000), as in sluice, so neither pair
    # pays for reconnects the other does not.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    http2_max_requests 1000000;
    http2_max_concurrent_streams 1000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream next_hop {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen}{listen_opts};
        location / {{
            {location}
        }}
    }}
}}
"
    )
}

/// One thread, no logging, keep-alive to clients and connection reuse to the next hop, the
/// same timeouts as nginx's pair. HTTP/1.1, or HTTP/2 prior knowledge on both sides (`proto
/// h2`), which is how HAProxy carries gRPC.
fn haproxy_conf(listen: SocketAddr, upstream: SocketAddr, hop: Hop) -> String {
    let proto = match hop {
        Hop::Http1 => "",
        Hop::H2 => " proto h2",
    };
    format!(
        "global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
frontend in
    bind {listen}{proto}
    default_backend next_hop
backend next_hop
    server next {upstream}{proto}
"
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_points_at_the_next_hop() {
        let conf = nginx_conf(
            Path::new("/tmp/x"),
            "127.0.0.1:1000".parse().expect("addr"),
            "127.0.0.1:2000".parse().expect("addr"),
            Hop::Http1,
        );
        assert!(conf.contains("listen 127.0.0.1:1000;"));
        assert!(conf.contains("server 127.0.0.1:2000;"));
        assert!(conf.contains("keepalive 64;"));
    }

    #[test]
    fn haproxy_conf_is_one_thread_with_reuse() {
        let conf = haproxy_conf(
            "127.0.0.1:1000".parse().expect("addr"),
            "127.0.0.1:2000".parse().expect("addr"),
            Hop::H2,
        );
        assert!(conf.contains("nbthread 1"));
        assert!(conf.contains("bind 127.0.0.1:1000 proto h2"));
        assert!(conf.contains("server next 127.0.0.1:2000 proto h2"));
        assert!(conf.contains("http-reuse always"));
    }
}
