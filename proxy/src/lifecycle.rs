//! The sidecar's place in a pod's life where Kubernetes cannot order containers itself
//! (servers older than 1.29, which have no native sidecars):
//!
//! - `sluice-proxy wait-ready`: the proxy container's `postStart` hook. The kubelet starts a
//!   pod's containers in order and does not start the next one until the previous one's
//!   `postStart` returns, so with the proxy first and this hook, the app starts only once the
//!   proxy has its config and certificate (what Istio's `holdApplicationUntilProxyStarts`
//!   does).
//! - `sluice-proxy await [--shutdown always|on-success] -- CMD ARGS…`: wraps the app's command
//!   in pods that are meant to finish (Jobs, CronJobs, pods with `restartPolicy: Never` or
//!   `OnFailure`). It runs the app, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to it, and when the
//!   app exits asks the proxy to drain and exit (`POST /shutdown` on the admin port, which only
//!   loopback may call, and the pod's containers share loopback), then exits with the app's
//!   status. Without it a classic sidecar would keep the pod, and so the Job, running forever.
//!   (Linkerd's `linkerd-await --shutdown` does the same; native sidecars need neither: the
//!   kubelet stops them after the app.) With `restartPolicy: OnFailure` a failed app is
//!   restarted by the kubelet in the same pod, so the proxy is only stopped after a success
//!   (`--shutdown on-success`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where the injected proxy's admin listener is, seen from inside the pod.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4191";

/// When `await` stops the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShutdownWhen {
    /// Whatever the app's exit status (`restartPolicy: Never`).
    Always,
    /// Only when the app exited 0 (`restartPolicy: OnFailure`: the kubelet restarts a failed
    /// app in the same pod, which still needs its proxy).
    OnSuccess,
    /// Never (only wait for the proxy before starting the app).
    Never,
}

/// `sluice-proxy wait-ready`.
#[derive(Clone, Debug, clap::Args)]
pub struct WaitArgs {
    /// The proxy's admin address.
    #[arg(long, env = "SLUICE_PROXY_ADMIN_ADDR", default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Give up (exit 1) after this long; the kubelet then restarts the container.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `sluice-proxy await`.
#[derive(Clone, Debug, clap::Args)]
pub struct AwaitArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// How long to wait for the proxy before starting the app anyway (0: don't wait).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// When to stop the proxy after the app exits.
    #[arg(long, value_enum, default_value = "always")]
    pub shutdown: ShutdownWhen,
    /// The app's command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// Why `wait-ready` or `await` failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The admin address is not `ip:port` (pods reach the proxy on loopback).
    #[error("`{0}` is not an ip:port address (e.g. 127.0.0.1:4191)")]
    Admin(String),
    /// The proxy did not become ready in time.
    #[error("the proxy at {admin} was not ready after {waited:?}: {last}")]
    NotReady {
        /// Where it was asked.
        admin: SocketAddr,
        /// How long.
        waited: Duration,
        /// The last answer or error.
        last: String,
    },
    /// The app could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// Its name.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// No runtime.
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

fn admin_addr(s: &str) -> Result<SocketAddr, LifecycleError> {
    s.parse().map_err(|_| LifecycleError::Admin(s.to_owned()))
}

fn runtime() -> Result<tokio::runtime::Runtime, LifecycleError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LifecycleError::Runtime)
}

/// Polls `GET /ready` until it answers 200 or `timeout` passes.
pub async fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<(), LifecycleError> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{admin}/ready")
        .parse()
        .map_err(|_| LifecycleError::Admin(admin.to_string()))?;
    let started = Instant::now();
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), client.get(uri.clone())).await
        {
            Ok(Ok(rsp)) if rsp.status() == http::StatusCode::OK => return Ok(()),
            Ok(Ok(rsp)) => {
                let status = rsp.status();
                let body = rsp.into_body().collect().await.map(|b| b.to_bytes());
                format!(
                    "{status} {}",
                    body.map(|b| String::from_utf8_lossy(&b).trim().to_owned())
                        .unwrap_or_default()
                )
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".into(),
        };
        if started.elapsed() >= timeout {
            return Err(LifecycleError::NotReady {
                admin,
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `sluice-proxy wait-ready`: 0 once ready, 1 otherwise.
pub fn run_wait(args: &WaitArgs) -> Result<(), LifecycleError> {
    let admin = admin_addr(&args.admin)?;
    runtime()?.block_on(wait_ready(admin, args.timeout))
}

/// `POST /shutdown`; failures are reported, not fatal (the proxy may be gone already).
pub async fn shutdown_proxy(admin: SocketAddr) -> Result<(), String> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{admin}/shutdown"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(rsp)) if rsp.status().is_success() => Ok(()),
        Ok(Ok(rsp)) => Err(format!("the proxy answered {}", rsp.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// `sluice-proxy await`: runs the app and returns its exit code (128+N for signal N).
pub fn run_await(args: &AwaitArgs) -> Result<u8, LifecycleError> {
    let admin = admin_addr(&args.admin)?;
    runtime()?.block_on(async {
        if !args.timeout.is_zero()
            && let Err(e) = wait_ready(admin, args.timeout).await
        {
            // Starting the app beats a pod that never starts; its calls fail until the proxy
            // is up, which its own retries handle as they would any outage.
            eprintln!("sluice-proxy await: {e}; starting the app anyway");
        }
        let (program, rest) = args
            .command
            .split_first()
            .ok_or_else(|| LifecycleError::Spawn {
                command: String::new(),
                source: std::io::Error::other("no command"),
            })?;
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .spawn()
            .map_err(|source| LifecycleError::Spawn {
                command: program.to_string_lossy().into_owned(),
                source,
            })?;
        let code = forward_signals_until_exit(&mut child).await;
        let stop = match args.shutdown {
            ShutdownWhen::Always => true,
            ShutdownWhen::OnSuccess => code == 0,
            ShutdownWhen::Never => false,
        };
        if stop && let Err(e) = shutdown_proxy(admin).await {
            eprintln!("sluice-proxy await: could not stop the proxy at {admin}: {e}");
        }
        Ok(code)
    })
}

/// Waits for `child`, passing on the signals a container runtime sends to PID 1.
async fn forward_signals_until_exit(child: &mut tokio::process::Child) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let kinds = [
        (SignalKind::terminate(), nix::sys::signal::Signal::SIGTERM),
        (SignalKind::interrupt(), nix::sys::signal::Signal::SIGINT),
        (SignalKind::hangup(), nix::sys::signal::Signal::SIGHUP),
        (SignalKind::quit(), nix::sys::signal::Signal::SIGQUIT),
    ];
    let mut streams = Vec::new();
    for (kind, sig) in kinds {
        if let Ok(s) = signal(kind) {
            streams.push((s, sig));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (mut stream, sig) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            status = child.wait() => {
                use std::os::unix::process::ExitStatusExt;
                return match status {
                    Ok(s) => s
                        .code()
                        .map(|c| u8::try_from(c & 0xff).unwrap_or(1))
                        .or_else(|| s.signal().map(|n| u8::try_from(128 + n).unwrap_or(255)))
                        .unwrap_or(1),
                    Err(_) => 1,
                };
            }
            Some(sig) = rx.recv() => {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
        }
    }
}
