//! Wires configuration, listeners, routing, admin and shutdown into a running proxy.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::util::BoxCloneSyncService;

use crate::authz::{Authorizer, Reporter};
use crate::config::{Config, LogFormat, RuntimeShape};
use crate::http::ServerConfig;
use crate::http::forward::Forward;
use crate::http::forward::MeshOut;
use crate::http::layers::Routes;
use crate::http::stack::{Stack, StackConfig};
use crate::identity::certify::CertifyConfig;
use crate::identity::{self, IdentityStore};
use crate::listen::{self, Dispatch, Listener, Mode};
use crate::metrics::{Metrics, TrafficLabels};
use crate::routing::Router;
use crate::state::controller::{self, WatchConfig};
use crate::state::{ConfigSource, SharedState, SourceError, SourceStatus};
use crate::tls::MeshTls;
use crate::{Direction, admin, drain};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured source (policy directory, endpoints or snapshot file) is unreadable or
    /// invalid at startup. A bad configuration (exit 64), unlike a bad reload, which keeps
    /// the state in force.
    #[error("{source_name}: {error}")]
    Config {
        /// Which source.
        source_name: String,
        /// What is wrong.
        error: SourceError,
    },
    /// A listener could not bind.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configured identity files are unusable.
    #[error("mesh identity: {0}")]
    Identity(String),
    /// Anything else at startup.
    #[error("{0}")]
    Other(String),
}

/// Installs the global tracing subscriber according to `config`.
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log collector (`kubectl logs`, a file) would
    // store the escape codes, and writing them was a third of an access-log line's cost.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    crate::http::access::set_format(config.log_format);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /shutdown`, then drains.
pub async fn run(config: Config) -> Result<(), StartError> {
    let metrics = Metrics::new().map_err(|e| StartError::Other(e.to_string()))?;
    let nofile = raise_fd_limit();
    let shared = Arc::new(SharedState::new(config.workload()));
    let source = ConfigSource::from_config(&config);
    let loaded = source.load_initial(&shared).map_err(|error| {
        if let SourceError::Policy { diagnostics } = &error {
            for d in diagnostics {
                tracing::error!("{d}");
            }
        }
        StartError::Config {
            source_name: source.describe(),
            error,
        }
    })?;
    if matches!(
        source,
        ConfigSource::PolicyDir { .. } | ConfigSource::SnapshotFile { .. }
    ) {
        metrics.snapshot_reload(true);
    }
    // The workload certificate first: every call to the controller but `Certify` presents it.
    let identity = Arc::new(IdentityStore::new());
    let (tls, identity_tasks) = start_identity(&config, &identity).await?;
    // The controller's stream starts before the listeners, so the first config usually
    // arrives while they bind; `/ready` says when it has.
    let (serving, serving_rx) = tokio::sync::watch::channel(false);
    let watch_config = WatchConfig::from_config(&config, identity.clone()).map(|mut w| {
        w.serving = Some(serving_rx);
        w
    });
    let stream_status = watch_config
        .as_ref()
        .map(|_| Arc::new(controller::Status::default()));
    let stream = watch_config.zip(stream_status.clone()).map(|(w, status)| {
        tokio::spawn(controller::run(w, shared.clone(), metrics.clone(), status))
    });
    let source_status = Arc::new(SourceStatus::new(source.clone(), stream_status));
    let traffic_reports =
        crate::traffic_report::TrafficReportConfig::from_config(&config, identity.clone())
            .map(|c| crate::traffic_report::spawn(c, metrics.clone()));
    let router = Arc::new(Router::new(shared.clone(), config.unknown_destinations));

    let proxy_id: Arc<str> = config.proxy_id.as_str().into();
    let reporter = match config.controller() {
        Some(controller) => Reporter::spawn(
            controller,
            identity.clone(),
            config.proxy_id.clone(),
            config.denial_report_interval,
            metrics.clone(),
        ),
        None => Reporter::disabled(metrics.clone()),
    };
    let authorizer = config.authz.then(|| {
        Arc::new(
            Authorizer::new(shared.clone(), &config.proxy_id, metrics.clone(), reporter)
                .with_probes(config.probes.clone()),
        )
    });
    let forward = Forward::new(
        config.connect_timeout,
        tls.clone().map(|tls| MeshOut { tls }),
    );
    let inbound_labels = Arc::new(TrafficLabels {
        dst_service: config.service.as_str().into(),
        dst_version: config.service_version.as_str().into(),
        route: "default".into(),
        ..TrafficLabels::default()
    });
    let env_member = crate::http::layers::EnvMember::new(&config.environment).map(Arc::new);
    let stack = |routes, authorizer, env_member| {
        BoxCloneSyncService::new(Stack::build(StackConfig {
            proxy_id: proxy_id.clone(),
            routes,
            metrics: metrics.clone(),
            forward: forward.clone(),
            authorizer,
            env_member,
        }))
    };
    let dispatch = Arc::new(Dispatch {
        inbound_http: stack(
            Routes::Inbound(inbound_labels.clone()),
            authorizer.clone(),
            None,
        ),
        outbound_http: stack(Routes::Outbound(router.clone()), None, env_member),
        router: router.clone(),
        inbound_labels,
        metrics: metrics.clone(),
        detect_timeout: config.detect_timeout,
        connect_timeout: config.connect_timeout,
        opaque_ports: config.opaque_ports.clone(),
        server: ServerConfig {
            header_read_timeout: config.header_read_timeout,
            h2_keepalive: H2_KEEPALIVE,
            rapid_reset: config.rapid_reset,
        },
        tls,
        authorizer,
        state: shared.clone(),
        max_connections: config.max_connections.unwrap_or_else(|| {
            let listeners = usize::from(config.inbound_addr.is_some())
                + usize::from(config.outbound_addr.is_some())
                + config.explicit.len();
            crate::config::default_max_connections(nofile, listeners)
        }),
    });
    tracing::info!(
        max_connections = dispatch.max_connections,
        nofile,
        header_read_timeout = ?config.header_read_timeout,
        "limits: connections per listener, open files, time to send request headers"
    );

    let mut listeners = Vec::new();
    let mut bound = BTreeMap::new();
    let bind = |direction, mode, addr| async move {
        Listener::bind(direction, mode, addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    if let Some(addr) = config.inbound_addr {
        let l = bind(Direction::Inbound, Mode::Transparent, addr).await?;
        bound.insert("inbound".to_owned(), serde_json::json!(l.local));
        listeners.push(l);
    }
    if let Some(addr) = config.outbound_addr {
        let l = bind(Direction::Outbound, Mode::Transparent, addr).await?;
        bound.insert("outbound".to_owned(), serde_json::json!(l.local));
        listeners.push(l);
    }
    let mut explicit = Vec::new();
    for e in &config.explicit {
        let l = bind(e.direction, Mode::Explicit(e.target), e.listen).await?;
        explicit.push(serde_json::json!({
            "direction": e.direction.as_str(), "listen": l.local, "target": e.target,
        }));
        listeners.push(l);
    }
    bound.insert("explicit".to_owned(), serde_json::json!(explicit));
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin_addr,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    bound.insert("admin".to_owned(), serde_json::json!(admin_addr));

    let (signal, watch) = drain::channel();
    let shutdown = Arc::new(Notify::new());
    let admin = Arc::new(admin::Admin {
        metrics: metrics.clone(),
        state: shared.clone(),
        drain: watch.observer(),
        shutdown: shutdown.clone(),
        proxy_id: config.proxy_id.clone(),
        source: source_status,
        probes: config.probes.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin));
    // Per-core: every other worker gets a descriptor of each listener and the same slots.
    let workers = match config.runtime {
        RuntimeShape::PerCore => per_core_workers(),
        _ => 1,
    };
    let (balance, inboxes) = if workers > 1 {
        let (set, inboxes) = listen::Workers::new(workers, &metrics);
        (Some(set), inboxes)
    } else {
        (None, Vec::new())
    };
    let balance_of = |index| {
        balance.as_ref().map(|w| listen::Balance {
            index,
            workers: w.clone(),
        })
    };
    let mut others: Vec<Vec<(listen::SharedListener, Arc<tokio::sync::Semaphore>)>> =
        (1..workers).map(|_| Vec::new()).collect();
    for l in listeners {
        tracing::info!(direction = %l.direction, mode = ?l.mode, addr = %l.local, "listening");
        let slots = listen::connection_slots(&dispatch);
        for worker in &mut others {
            let copy = l
                .share()
                .map_err(|e| StartError::Other(format!("share listener {}: {e}", l.local)))?;
            worker.push((copy, slots.clone()));
        }
        tokio::spawn(listen::accept_loop(
            l,
            slots,
            balance_of(0),
            dispatch.clone(),
            watch.clone(),
        ));
    }
    let mut inboxes = inboxes.into_iter();
    if let Some(first) = inboxes.next() {
        tokio::spawn(listen::serve_handoffs(first, dispatch.clone()));
    }
    for (i, (listeners, inbox)) in others.into_iter().zip(inboxes).enumerate() {
        let index = i + 1;
        let worker = Worker {
            index,
            listeners,
            inbox,
            balance: balance_of(index),
        };
        spawn_worker(worker, dispatch.clone(), watch.clone())?;
    }
    if workers > 1 {
        tracing::info!(workers, "runtime: one current-thread runtime per worker");
    }
    // Only now may the controller hand this instance to its peers.
    serving.send_replace(true);
    drop(watch);
    let watcher = tokio::spawn(source.watch(
        shared.clone(),
        config.snapshot_poll,
        metrics.clone(),
        loaded,
    ));
    tracing::info!(admin = %admin_addr, proxy_id = %config.proxy_id, "sluice-proxy started");
    if let Some(path) = &config.listen_addrs_file {
        write_atomically(path, &serde_json::json!(bound).to_string())
            .map_err(|e| StartError::Other(format!("{}: {e}", path.display())))?;
    }

    wait_for_shutdown(&shutdown).await;
    tracing::info!(deadline = ?config.drain_deadline, "draining");
    let outcome = signal.drain(config.drain_deadline).await;
    tracing::info!(?outcome, "drained; exiting");
    admin_task.abort();
    for t in identity_tasks {
        t.abort();
    }
    watcher.abort();
    if let Some(stream) = stream {
        stream.abort();
    }
    if let Some(reports) = traffic_reports {
        reports.abort();
    }
    Ok(())
}

/// Workers of the `per-core` runtime: `TOKIO_WORKER_THREADS`, else one per CPU.
fn per_core_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .clamp(1, 256)
}

/// What one `per-core` worker besides the first serves.
struct Worker {
    index: usize,
    /// Its descriptors of every listener, each with the listener's connection slots.
    listeners: Vec<(listen::SharedListener, Arc<tokio::sync::Semaphore>)>,
    /// Connections other workers hand to it.
    inbox: tokio::sync::mpsc::UnboundedReceiver<listen::Handoff>,
    balance: Option<listen::Balance>,
}

/// Starts a `per-core` worker: a thread with its own current-thread runtime accepting from its
/// listeners and serving what others hand to it. It runs until the process exits: its
/// connections hold drain watches, so shutdown on the first worker waits for them as for its
/// own.
fn spawn_worker(
    worker: Worker,
    dispatch: Arc<listen::Dispatch>,
    watch: drain::Watch,
) -> Result<(), StartError> {
    let index = worker.index;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Other(format!("start worker {index}'s runtime: {e}")))?;
    std::thread::Builder::new()
        .name(format!("sluice-worker-{index}"))
        .spawn(move || {
            crate::http::forward::set_worker(index);
            runtime.block_on(async move {
                tokio::spawn(listen::serve_handoffs(worker.inbox, dispatch.clone()));
                for (l, slots) in worker.listeners {
                    match l.into_listener() {
                        Ok(l) => {
                            tokio::spawn(listen::accept_loop(
                                l,
                                slots,
                                worker.balance.clone(),
                                dispatch.clone(),
                                watch.clone(),
                            ));
                        }
                        Err(error) => {
                            tracing::error!(worker = index, %error, "cannot accept on a listener");
                        }
                    }
                }
                drop(watch);
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| StartError::Other(format!("start worker {index}: {e}")))?;
    Ok(())
}

async fn wait_for_shutdown(admin: &Notify) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; only /shutdown will stop the proxy");
            admin.notified().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = admin.notified() => tracing::info!("shutdown requested via admin"),
    }
}

/// Loads or requests the first certificate, and starts what keeps it fresh. Files that are
/// configured but unusable stop the start (a misconfiguration); an unreachable controller does
/// not (the proxy serves plaintext and keeps trying).
async fn start_identity(
    config: &Config,
    store: &Arc<IdentityStore>,
) -> Result<(Option<Arc<MeshTls>>, Vec<tokio::task::JoinHandle<()>>), StartError> {
    let mut tasks = Vec::new();
    if let Some(dir) = &config.identity_dir {
        identity::files::load_into(dir, store).map_err(|e| StartError::Identity(e.to_string()))?;
        tasks.push(tokio::spawn(identity::files::watch(
            dir.clone(),
            store.clone(),
            config.identity_poll,
        )));
    } else if let (Some(token), Some(controller)) = (&config.identity_token, config.controller()) {
        let certify = CertifyConfig {
            controller,
            token: token.clone(),
            workload: sluice_api::v1::Workload {
                namespace: config.namespace.clone(),
                service: config.service.clone(),
                version: config.service_version.clone(),
                environment: config.environment.clone(),
                instance: config.instance.clone(),
                role: config.role.clone(),
            },
        };
        identity::certify::first(&certify, store, FIRST_CERTIFICATE_WAIT).await;
        tasks.push(tokio::spawn(identity::certify::renew(
            certify,
            store.clone(),
        )));
    } else {
        return Ok((None, tasks));
    }
    Ok((Some(Arc::new(MeshTls::new(store.clone()))), tasks))
}

/// HTTP/2 connections: ping after this long idle, close if the ping is not answered within as
/// long again.
const H2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// Raises the soft open-files limit to the hard limit, so the proxy gets every descriptor it
/// is allowed (a default soft limit of 1024 is easily exhausted by slow clients), and returns
/// the soft limit now in force. Failing to raise it is logged, not fatal.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read RLIMIT_NOFILE; assuming 1024");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "raised the open-files limit (RLIMIT_NOFILE)"
            );
            hard
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise RLIMIT_NOFILE");
            soft
        }
    }
}

/// How long startup waits for the first certificate before serving without one.
const FIRST_CERTIFICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Readers polling for the file never see it half-written.
fn write_atomically(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(tmp, path)
}
