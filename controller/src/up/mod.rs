//! `sluice up MESH_FILE` and `sluice down`: the local mesh. See `docs/local-mesh.md`.
//!
//! `up` reads the [mesh file](meshfile), builds the [network](net) (a bridge, a namespace
//! per workload, service addresses, per-namespace `/etc/hosts`), starts the controller on the
//! bridge's host address, and in each namespace runs `sluice-proxy init`, the proxy (as UID
//! 2102 via `setpriv`) and the workload under the [supervisor](supervise). On SIGINT/SIGTERM
//! — or when setup fails — it stops every process and removes everything it created. Every
//! resource is recorded in `STATE_DIR/up.json` before it is created, so `sluice down` can
//! finish the job after a killed run.
//!
//! While it runs, the [rollout reconciler](rollouts) starts canaries beside the stable
//! [workloads](live) and retires one or the other as the controller's rollouts progress, and
//! the [environments' runner](env) runs the copies of the controller's ephemeral
//! environments.

pub mod env;
pub mod inbox;
pub mod ingress;
pub mod live;
pub mod meshfile;
pub mod net;
pub mod rollouts;
pub mod supervise;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use crate::identity::token::TokenKey;
use live::{Context, Workloads};
use meshfile::MeshFile;
use net::{Record, Subnet};
use rollouts::{ApiAddress, Reconciler, Running};
use supervise::{Spec, Supervisor};

/// The UID the proxies run as; `sluice-proxy init` exempts its traffic (its default).
pub const PROXY_UID: u32 = 2102;
/// The controller's port on the bridge's host address.
pub const CONTROLLER_PORT: u16 = 7071;
/// Where `sluice up` serves the portal: the address the shop's denial links name.
pub const PORTAL_ADDR: &str = "127.0.0.1:7070";
/// How long processes get between SIGTERM and SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);
const INBOUND_PORT: u16 = 4143;
const TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long teardown waits for the rollout reconciler to finish what it is doing (a canary
/// being stopped takes up to [`STOP_DEADLINE`]).
const RECONCILER_JOIN: Duration = Duration::from_secs(15);

/// Arguments of `sluice up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The mesh file (e.g. `examples/shop/mesh.yaml`).
    pub mesh_file: PathBuf,
    /// Where the run's state lives: the controller's CA, token key and store, and `up.json`.
    #[arg(
        long,
        value_name = "DIR",
        env = "SLUICE_UP_STATE_DIR",
        default_value = ".sluice"
    )]
    pub state_dir: PathBuf,
    /// The `sluice-proxy` binary. Default: next to `sluice`, else from `PATH`.
    #[arg(long, value_name = "FILE", env = "SLUICE_PROXY_BIN")]
    pub proxy_bin: Option<PathBuf>,
    /// The ingress: a host address whose `Host` header picks the service
    /// (`http://frontend.localhost:PORT`); port 0 picks one; `off` disables it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub ingress: String,
    /// The team inbox: a webhook receiver that prints the messages teams are sent (the shop's
    /// channels point at `localhost:7072`); `off` disables it. A taken port is reported and
    /// skipped.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7072")]
    pub team_inbox: String,
    /// Where the controller serves the portal (in dev mode, as `$SUDO_USER`): the address the
    /// shop's denial links name; `off` disables it. A taken port is reported and skipped.
    #[arg(long, value_name = "ADDR", default_value = PORTAL_ADDR)]
    pub portal: String,
    /// When to colour the log prefixes.
    #[arg(long, value_enum, default_value_t = crate::ColorChoice::Auto)]
    pub color: crate::ColorChoice,
    /// The rollout API's base URL (`http://HOST:PORT`, serving `GET`/`POST /rollouts`).
    /// Default: the admin endpoint of the controller `sluice up` runs. For tests (a stand-in)
    /// and for pointing the runner at a controller elsewhere.
    #[arg(long, hide = true, value_name = "URL", env = "SLUICE_UP_ROLLOUT_API")]
    pub rollout_api: Option<String>,
}

/// Arguments of `sluice down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The state directory `sluice up` used.
    #[arg(
        long,
        value_name = "DIR",
        env = "SLUICE_UP_STATE_DIR",
        default_value = ".sluice"
    )]
    pub state_dir: PathBuf,
}

/// Why the local mesh could not run (or be cleaned up).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The mesh file is wrong.
    #[error(transparent)]
    MeshFile(#[from] meshfile::MeshFileError),
    /// Something on the host failed.
    #[error("{0}")]
    Host(String),
    /// Teardown left something behind.
    #[error("teardown incomplete:\n  {}", .0.join("\n  "))]
    Teardown(Vec<String>),
    /// A flag is wrong.
    #[error("{0}")]
    Usage(String),
}

/// What the main thread and the rollout reconciler share: the record of what was created, the
/// processes, and the workloads (once started).
pub struct Shared {
    /// `up.json`.
    pub rec: Record,
    /// Every process.
    pub sup: Supervisor,
    /// The workloads, after a successful start.
    pub workloads: Option<Workloads>,
}

impl Shared {
    /// The running workloads, as the rollout planner sees them: not the ephemeral
    /// environments' copies, which are [`env`]'s.
    pub fn running(&self) -> Vec<Running> {
        self.workloads
            .iter()
            .flat_map(|w| &w.live)
            .filter(|l| !env::is_env_instance(&l.name))
            .map(|l| Running {
                name: l.name.clone(),
                base: l.base.clone(),
                service: l.service.clone(),
                version: l.version.clone(),
                canary: l.canary,
                role: l.role.clone(),
            })
            .collect()
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic on the reconciler's thread must not keep teardown from the record.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn host<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> UpError + '_ {
    move |e| UpError::Host(format!("{what}: {e}"))
}

/// `sluice up`.
pub fn up(args: &UpArgs, terminal: crate::Terminal, out: &mut dyn Write) -> Result<(), UpError> {
    let mesh = MeshFile::load(&args.mesh_file)?;
    if let Some(url) = &args.rollout_api
        && (!url.starts_with("http://") || url.parse::<hyper::Uri>().is_err())
    {
        return Err(UpError::Usage(format!(
            "SLUICE_UP_ROLLOUT_API / --rollout-api `{url}`: expected http://HOST:PORT"
        )));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(UpError::Host(
            "sluice up needs root (network namespaces, veths, iptables)".into(),
        ));
    }
    std::fs::create_dir_all(&args.state_dir).map_err(host("cannot create the state directory"))?;
    let state_dir = std::fs::canonicalize(&args.state_dir).map_err(host("state directory"))?;
    if let Some(old) = Record::open(&state_dir).map_err(UpError::Host)? {
        if net::process_matches(old.created.pid, &["sluice", "up"]) {
            return Err(UpError::Host(format!(
                "sluice up (pid {}) is already running with state dir {}",
                old.created.pid,
                state_dir.display()
            )));
        }
        writeln!(out, "cleaning up after an earlier run that did not finish")
            .map_err(host("output"))?;
        let errors = net::teardown(&old, &state_dir);
        if !errors.is_empty() {
            return Err(UpError::Teardown(errors));
        }
        old.remove();
    }
    let proxy_bin = find_proxy(args.proxy_bin.as_deref())?;
    let sluice_bin = std::env::current_exe().map_err(host("cannot find the sluice binary"))?;

    // Signals are caught from here on; one that arrives during setup is handled after it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(host("runtime"))?;
    let (mut sigint, mut sigterm) = rt
        .block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(host("cannot catch signals"))?;

    let run_id = format!("{:06x}", rand_u32() & 0xff_ffff);
    let rec = Record::new(&state_dir, &run_id).map_err(host("cannot write the state file"))?;
    let ingress = match args.ingress.as_str() {
        "off" => None,
        addr => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(host(&format!("cannot listen on --ingress {addr}")))?;
            listener.set_nonblocking(true).map_err(host("ingress"))?;
            Some(listener)
        }
    };
    let inbox = match args.team_inbox.as_str() {
        "off" => None,
        addr => match std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = writeln!(
                    out,
                    "sluice up: no team inbox ({addr}: {e}); team messages go nowhere visible"
                );
                None
            }
        },
    };
    let color = terminal.use_color(args.color);
    let sup = Supervisor::new(color);
    // From here on everything created is removed however this function ends: normally, on an
    // error, or by unwinding from a panic (the guard's `Drop`).
    let mut cleanup = Cleanup {
        shared: Arc::new(Mutex::new(Shared {
            rec,
            sup,
            workloads: None,
        })),
        reconciler: None,
        envs: None,
        state_dir: state_dir.clone(),
        done: false,
    };
    let portal = (args.portal != "off").then_some(args.portal.as_str());
    let env_routes = Arc::new(env::IngressRoutes::default());
    let result = start(
        &mesh,
        &state_dir,
        &proxy_bin,
        &sluice_bin,
        portal,
        &mut lock(&cleanup.shared),
        out,
    );
    match &result {
        Ok(routes) => {
            let address = match &args.rollout_api {
                Some(url) => ApiAddress::Fixed(url.clone()),
                None => ApiAddress::AdminFile(rollouts::admin_file(&state_dir.join("controller"))),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let reconciler = Reconciler::new(
                Arc::clone(&cleanup.shared),
                mesh.clone(),
                args.mesh_file.clone(),
                address,
            );
            let flag = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name("rollouts".into())
                .spawn(move || reconciler.run(&flag));
            match thread {
                Ok(t) => cleanup.reconciler = Some((stop, t)),
                Err(e) => {
                    let _ = writeln!(out, "sluice up: rollouts will not run locally: {e}");
                }
            }
            // Ephemeral environments: their instances, and the ingress's routes to them.
            let template = ingress
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| format!("http://{{service}}.{{environment}}.localhost:{}/", a.port()));
            let runner = env::Runner::new(
                env::NetnsBackend::new(
                    Arc::clone(&cleanup.shared),
                    mesh.clone(),
                    state_dir.join("logs"),
                ),
                &state_dir.join("controller"),
                &lock(&cleanup.shared).rec.created.run_id.clone(),
                template,
                Arc::clone(&env_routes),
            );
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            match std::thread::Builder::new()
                .name("environments".into())
                .spawn(move || runner.run(&flag))
            {
                Ok(t) => cleanup.envs = Some((stop, t)),
                Err(e) => {
                    let _ = writeln!(out, "sluice up: environments will not run locally: {e}");
                }
            }
            if let Some(l) = &ingress
                && let Ok(addr) = l.local_addr()
            {
                for svc in routes.keys() {
                    let _ = writeln!(
                        out,
                        "sluice up: ingress http://{svc}.localhost:{}/ ({addr})",
                        addr.port()
                    );
                }
            }
            let _ = writeln!(
                out,
                "sluice up: running; Ctrl-C or SIGTERM stops and cleans up"
            );
            let _ = out.flush();
            if let Some(l) = &inbox
                && let Ok(addr) = l.local_addr()
            {
                let _ = writeln!(
                    out,
                    "sluice up: team inbox http://{addr}/ (messages to the teams' channels are printed here)"
                );
            }
            let routes = ingress::Routes {
                services: routes.clone(),
                envs: Arc::clone(&env_routes),
            };
            rt.block_on(async move {
                let ingress = ingress.map(|l| tokio::spawn(ingress::serve(l, routes)));
                let inbox = inbox.map(|l| tokio::spawn(inbox::serve(l, color)));
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
                for task in [ingress, inbox].into_iter().flatten() {
                    task.abort();
                }
            });
            let _ = writeln!(out, "sluice up: stopping");
        }
        Err(e) => {
            let _ = writeln!(out, "sluice up: {e}; cleaning up");
        }
    }
    let errors = cleanup.run();
    if errors.is_empty() {
        let _ = writeln!(out, "sluice up: everything removed");
    }
    result?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(UpError::Teardown(errors))
    }
}

/// Stops the processes and removes what the run created, once: when [`Cleanup::run`] is
/// called, or when dropped (an early return or a panic unwinding through `up`).
struct Cleanup {
    shared: Arc<Mutex<Shared>>,
    /// The rollout reconciler's stop flag and thread, once running.
    reconciler: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// The environments' runner, likewise.
    envs: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    state_dir: PathBuf,
    done: bool,
}

impl Cleanup {
    /// Stops everything and tears the network down; what could not be removed.
    fn run(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.done, true) {
            return Vec::new();
        }
        // The reconciler first, so that it does not create a canary behind teardown's back.
        // It finishes the change in hand (bounded); if it hangs anyway, teardown goes on from
        // the record, which lists what it was creating.
        let threads = [
            (self.reconciler.take(), "the rollout reconciler"),
            (self.envs.take(), "the environments' runner"),
        ];
        for (stop, _) in threads.iter().filter_map(|(t, _)| t.as_ref()) {
            stop.store(true, Ordering::SeqCst);
        }
        let until = Instant::now() + RECONCILER_JOIN;
        for (thread, what) in threads
            .into_iter()
            .filter_map(|(t, what)| t.map(|(_, thread)| (thread, what)))
        {
            while !thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() && thread.join().is_err() {
                eprintln!("sluice up: {what} had panicked");
            }
        }
        let mut shared = lock(&self.shared);
        shared.sup.stop(STOP_DEADLINE);
        let errors = net::teardown(&shared.rec, &self.state_dir);
        if errors.is_empty() {
            shared.rec.remove();
        }
        errors
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for e in self.run() {
            eprintln!("sluice up: teardown: {e}");
        }
    }
}

/// `sluice down`.
pub fn down(args: &DownArgs, out: &mut dyn Write) -> Result<(), UpError> {
    let Ok(state_dir) = std::fs::canonicalize(&args.state_dir) else {
        writeln!(out, "nothing to clean up").map_err(host("output"))?;
        return Ok(());
    };
    let Some(rec) = Record::open(&state_dir).map_err(UpError::Host)? else {
        writeln!(out, "nothing to clean up").map_err(host("output"))?;
        return Ok(());
    };
    // A `sluice up` still running cleans up after itself when told to.
    let pid = rec.created.pid;
    if pid != std::process::id() && net::process_matches(pid, &["sluice", "up"]) {
        net::signal(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + STOP_DEADLINE * 2;
        while Instant::now() < until && net::process_matches(pid, &["sluice", "up"]) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if Record::open(&state_dir).map_err(UpError::Host)?.is_none() {
            writeln!(out, "stopped sluice up (pid {pid})").map_err(host("output"))?;
            return Ok(());
        }
    }
    let errors = net::teardown(&rec, &state_dir);
    if !errors.is_empty() {
        return Err(UpError::Teardown(errors));
    }
    let c = &rec.created;
    writeln!(
        out,
        "removed run {}: {} namespaces, {} veths, {}",
        c.run_id,
        c.namespaces.len(),
        c.veths.len(),
        c.bridge.as_deref().unwrap_or("no bridge")
    )
    .map_err(host("output"))?;
    rec.remove();
    Ok(())
}

fn find_proxy(given: Option<&Path>) -> Result<PathBuf, UpError> {
    if let Some(p) = given {
        return std::fs::canonicalize(p).map_err(host("--proxy-bin"));
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("sluice-proxy")))
        .filter(|p| p.is_file());
    sibling
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("sluice-proxy"))
                    .find(|p| p.is_file())
            })
        })
        .ok_or_else(|| {
            UpError::Host(
                "cannot find sluice-proxy (next to sluice or on PATH); pass --proxy-bin".into(),
            )
        })
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return std::process::id();
    }
    u32::from_le_bytes(b)
}

/// Builds the network and starts every process.
fn start(
    mesh: &MeshFile,
    state_dir: &Path,
    proxy_bin: &Path,
    sluice_bin: &Path,
    portal: Option<&str>,
    shared: &mut Shared,
    out: &mut dyn Write,
) -> Result<BTreeMap<String, SocketAddr>, UpError> {
    let Shared {
        rec,
        sup,
        workloads: slot,
    } = shared;
    let id = rec.created.run_id.clone();
    let subnet = Subnet(net::pick_subnet(&id).map_err(UpError::Host)?);
    let services = mesh.services();
    if mesh.workloads.len() > 180 || services.len() > 50 {
        return Err(UpError::Host(
            "at most 180 workloads and 50 services".into(),
        ));
    }

    // Run files (the service addresses the controller publishes), removed at teardown.
    let run_dir = PathBuf::from(format!("/run/sluice-up-{id}"));
    rec.update(|c| c.run_dir = Some(run_dir.clone()))
        .map_err(host("state file"))?;
    std::fs::create_dir_all(&run_dir).map_err(host("run directory"))?;
    let addresses_file = run_dir.join("service-addresses.json");
    std::fs::write(
        &addresses_file,
        service_addresses_json(mesh, &services, subnet).to_string(),
    )
    .map_err(host("service addresses file"))?;

    let bridge = format!("slbr{id}");
    net::create_bridge(rec, &bridge, subnet).map_err(UpError::Host)?;
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    for (j, (svc, _)) in services.iter().enumerate() {
        hosts.push_str(&format!("{}\t{svc} {svc}.default\n", subnet.service(j)));
    }
    // Workloads by name too (for debugging), unless the name is a service's.
    for (i, w) in mesh.workloads.iter().enumerate() {
        if !services.iter().any(|(s, _)| *s == w.name) {
            hosts.push_str(&format!("{}\t{}\n", subnet.workload(i), w.name));
        }
    }
    // The token key signs the proxies' bootstrap tokens; the controller loads the same key.
    let controller_dir = state_dir.join("controller");
    std::fs::create_dir_all(&controller_dir).map_err(host("controller state dir"))?;
    let tokens = TokenKey::load_or_create(&controller_dir).map_err(host("token key"))?;
    // The mesh CA, made now (the controller loads the same one), so that every proxy is given
    // its certificate to trust the controller with: the state directory is private, so a copy
    // goes into the run directory, readable by the proxies' UID.
    let (ca, _) = crate::identity::MeshCa::load_or_create(&controller_dir, SystemTime::now())
        .map_err(|e| UpError::Host(format!("mesh CA: {e}")))?;
    let controller_ca = run_dir.join("controller-ca.pem");
    std::fs::write(&controller_ca, ca.cert_pem()).map_err(host("controller CA file"))?;
    let controller_addr = format!("{}:{CONTROLLER_PORT}", subnet.host());
    let logs_dir = state_dir.join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(host("logs directory"))?;
    let mut workloads = Workloads::new(Context {
        run_id: id.clone(),
        subnet,
        bridge: bridge.clone(),
        hosts,
        controller_addr: controller_addr.clone(),
        controller_ca,
        tokens,
        proxy_bin: proxy_bin.to_owned(),
        mesh_dir: mesh.dir.clone(),
        color: sup.color(),
        logs_dir: logs_dir.clone(),
    });
    for (i, w) in mesh.workloads.iter().enumerate() {
        // The service's first workload carries the service address.
        let extra: Vec<_> = services
            .iter()
            .enumerate()
            .filter(|(_, (_, ws))| ws.first() == Some(&i))
            .map(|(j, _)| subnet.service(j))
            .collect();
        workloads
            .create(rec, &w.name, w, &w.version, false, extra)
            .map_err(UpError::Host)?;
    }
    writeln!(
        out,
        "sluice up: run {id}, bridge {bridge} ({}/24), {} workloads",
        subnet.host(),
        mesh.workloads.len()
    )
    .map_err(host("output"))?;

    // The controller, on the bridge so that every namespace reaches it.
    let ready = controller_dir.join("up-ready");
    let _ = std::fs::remove_file(&ready);
    // The portal (7070 by default, where the shop's denial links point). A busy port (another
    // mesh, a portal already running) costs the portal, not the mesh.
    let mut portal_args: Vec<String> = Vec::new();
    match portal.map(|addr| (addr, std::net::TcpListener::bind(addr))) {
        None => {}
        Some((addr, Ok(probe))) => {
            drop(probe);
            let user = std::env::var("SUDO_USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "developer".to_owned());
            portal_args = vec![
                "--portal".into(),
                addr.into(),
                "--portal-dev-user".into(),
                user,
                // Rollout pages and charts in team messages: the portal's stable address
                // rather than the admin endpoint's random port.
                "--public-url".into(),
                format!("http://{addr}"),
            ];
        }
        Some((addr, Err(e))) => {
            writeln!(
                out,
                "sluice up: {addr} is not free ({e}); running without the portal"
            )
            .map_err(host("output"))?;
        }
    }
    let controller = sup.start(Spec {
        label: "controller".into(),
        color: 0,
        argv: [
            sluice_bin.display().to_string(),
            "controller".into(),
            "--state-dir".into(),
            controller_dir.display().to_string(),
            "--listen".into(),
            controller_addr.clone(),
            "--policy".into(),
            mesh.policy.display().to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
            "--service-addresses".into(),
            addresses_file.display().to_string(),
            "--workload-logs".into(),
            logs_dir.display().to_string(),
            // The runner starts a fresh copy of the stable version beside each canary.
            "--baseline-copies".into(),
        ]
        .into_iter()
        .chain(portal_args)
        .collect(),
        env: Vec::new(),
        dir: None,
        log_file: None,
    });
    let until = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        if let Some(pid) = controller.pid() {
            rec.update(|c| c.controller_pid = Some(pid))
                .map_err(host("state file"))?;
        }
        if Instant::now() > until {
            return Err(UpError::Host(
                "the controller did not start within 20s (see its log above)".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(pid) = controller.pid() {
        rec.update(|c| c.controller_pid = Some(pid))
            .map_err(host("state file"))?;
    }

    for w in &mesh.workloads {
        let config = w
            .config_for(&w.version)
            .ok_or_else(|| UpError::Host(format!("{}: no configuration", w.name)))?;
        workloads
            .start(sup, &w.name, w, &config)
            .map_err(UpError::Host)?;
    }
    *slot = Some(workloads);
    // The ingress's routes: every service's address.
    Ok(services
        .iter()
        .enumerate()
        .map(|(j, (svc, members))| {
            let port = mesh.workloads[members[0]].port;
            (svc.clone(), SocketAddr::from((subnet.service(j), port)))
        })
        .collect())
}

/// The controller's `--service-addresses`: each service's address on its first workload's
/// port, then on its further `ports`. Instances are not listed: each proxy registers its own
/// workload (on its `port`; the proxy maps the further ports one to one).
fn service_addresses_json(
    mesh: &MeshFile,
    services: &[(String, Vec<usize>)],
    subnet: Subnet,
) -> serde_json::Value {
    let list: Vec<_> = services
        .iter()
        .enumerate()
        .map(|(j, (svc, members))| {
            let first = &mesh.workloads[members[0]];
            let addresses: Vec<String> = std::iter::once(first.port)
                .chain(first.ports.iter().copied().filter(|p| *p != first.port))
                .map(|port| format!("{}:{port}", subnet.service(j)))
                .collect();
            serde_json::json!({
                "namespace": "default",
                "service": svc,
                "addresses": addresses,
            })
        })
        .collect();
    serde_json::json!({ "services": list })
}
