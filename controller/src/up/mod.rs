//! `sluice up MESH_FILE` and `sluice down`: the local mesh. See `docs/local-mesh.md`.
//!
//! `up` reads the [mesh file](meshfile), builds the [network](net) (a bridge, a namespace
//! per workload, service addresses, per-namespace `/etc/hosts`), starts the controller on the
//! bridge's host address, and in each namespace runs `sluice-proxy init`, the proxy (as UID
//! 2102 via `setpriv`) and the workload under the [supervisor](supervise). On SIGINT/SIGTERM
//! — or when setup fails — it stops every process and removes everything it created. Every
//! resource is recorded in `STATE_DIR/up.json` before it is created, so `sluice down` can
//! finish the job after a killed run.

pub mod ingress;
pub mod meshfile;
pub mod net;
pub mod supervise;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use crate::identity::WorkloadIdentity;
use crate::identity::token::TokenKey;
use meshfile::MeshFile;
use net::{Record, Subnet};
use supervise::{Spec, Supervisor};

/// The UID the proxies run as; `sluice-proxy init` exempts its traffic (its default).
pub const PROXY_UID: u32 = 2102;
/// The controller's port on the bridge's host address.
pub const CONTROLLER_PORT: u16 = 7071;
/// How long processes get between SIGTERM and SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);
const INBOUND_PORT: u16 = 4143;
const TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// When to colour the log prefixes.
    #[arg(long, value_enum, default_value_t = crate::ColorChoice::Auto)]
    pub color: crate::ColorChoice,
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
}

fn host<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> UpError + '_ {
    move |e| UpError::Host(format!("{what}: {e}"))
}

/// `sluice up`.
pub fn up(args: &UpArgs, terminal: crate::Terminal, out: &mut dyn Write) -> Result<(), UpError> {
    let mesh = MeshFile::load(&args.mesh_file)?;
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
    let sup = Supervisor::new(terminal.use_color(args.color));
    // From here on everything created is removed however this function ends: normally, on an
    // error, or by unwinding from a panic (the guard's `Drop`).
    let mut cleanup = Cleanup {
        rec,
        sup,
        state_dir: state_dir.clone(),
        done: false,
    };
    let result = start(
        &mesh,
        &state_dir,
        &proxy_bin,
        &sluice_bin,
        &mut cleanup.rec,
        &mut cleanup.sup,
        out,
    );
    match &result {
        Ok(routes) => {
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
            let routes = routes.clone();
            rt.block_on(async move {
                let ingress = ingress.map(|l| tokio::spawn(ingress::serve(l, routes)));
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
                if let Some(task) = ingress {
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
    rec: Record,
    sup: Supervisor,
    state_dir: PathBuf,
    done: bool,
}

impl Cleanup {
    /// Stops everything and tears the network down; what could not be removed.
    fn run(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.done, true) {
            return Vec::new();
        }
        self.sup.stop(STOP_DEADLINE);
        let errors = net::teardown(&self.rec, &self.state_dir);
        if errors.is_empty() {
            self.rec.remove();
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
    rec: &mut Record,
    sup: &mut Supervisor,
    out: &mut dyn Write,
) -> Result<BTreeMap<String, SocketAddr>, UpError> {
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
    for (i, w) in mesh.workloads.iter().enumerate() {
        let ns = format!("sluice-{id}-{}", w.name);
        let extra: Vec<_> = services
            .iter()
            .enumerate()
            .filter(|(_, (_, ws))| ws.first() == Some(&i))
            .map(|(j, _)| subnet.service(j))
            .collect();
        net::create_namespace(
            rec,
            &ns,
            &format!("sl{id}v{i}"),
            &bridge,
            subnet.workload(i),
            &extra,
        )
        .map_err(UpError::Host)?;
        net::write_hosts(rec, &ns, &hosts).map_err(UpError::Host)?;
        let init = net::run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            &proxy_bin.display().to_string(),
            "init",
            "--proxy-uid",
            &PROXY_UID.to_string(),
        ]);
        init.map_err(|e| UpError::Host(format!("sluice-proxy init in {ns}: {e}")))?;
    }
    writeln!(
        out,
        "sluice up: run {id}, bridge {bridge} ({}/24), {} workloads",
        subnet.host(),
        mesh.workloads.len()
    )
    .map_err(host("output"))?;

    // The controller, on the bridge so that every namespace reaches it.
    let controller_dir = state_dir.join("controller");
    std::fs::create_dir_all(&controller_dir).map_err(host("controller state dir"))?;
    let tokens = TokenKey::load_or_create(&controller_dir).map_err(host("token key"))?;
    let controller_addr = format!("{}:{CONTROLLER_PORT}", subnet.host());
    let ready = controller_dir.join("up-ready");
    let _ = std::fs::remove_file(&ready);
    let controller = sup.start(Spec {
        label: "controller".into(),
        color: 0,
        argv: vec![
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
        ],
        env: Vec::new(),
        dir: None,
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

    for (i, w) in mesh.workloads.iter().enumerate() {
        let ns = format!("sluice-{id}-{}", w.name);
        let identity = WorkloadIdentity::new("default", &w.service)
            .map_err(|e| UpError::Host(e.to_string()))?;
        let token = tokens.issue(&identity, TOKEN_TTL, SystemTime::now());
        let uid = PROXY_UID.to_string();
        sup.start(Spec {
            label: format!("{}/proxy", w.name),
            color: i + 1,
            argv: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                ns.clone(),
                "setpriv".into(),
                "--reuid".into(),
                uid.clone(),
                "--regid".into(),
                uid,
                "--clear-groups".into(),
                proxy_bin.display().to_string(),
            ],
            env: [
                (
                    "SLUICE_PROXY_INBOUND_ADDR",
                    format!("0.0.0.0:{INBOUND_PORT}"),
                ),
                (
                    "SLUICE_PROXY_CONTROLLER_ADDR",
                    format!("http://{controller_addr}"),
                ),
                ("SLUICE_PROXY_IDENTITY_TOKEN", token),
                ("SLUICE_PROXY_SERVICE", w.service.clone()),
                ("SLUICE_PROXY_SERVICE_VERSION", w.version.clone()),
                ("SLUICE_PROXY_ENVIRONMENT", w.environment.clone()),
                ("SLUICE_PROXY_INSTANCE", w.name.clone()),
                ("SLUICE_PROXY_ID", format!("{}-{id}", w.name)),
                // Policy and endpoints come from the controller's Watch stream; the proxy
                // registers this workload at its own address, as a pod's sidecar would.
                ("SLUICE_PROXY_CONFIG_SOURCE", "controller".to_owned()),
                (
                    "SLUICE_PROXY_REGISTER_ADDR",
                    format!("{}:{}", subnet.workload(i), w.port),
                ),
            ]
            .into_iter()
            // Plain logs when `sluice up`'s own output is plain (tracing honours NO_COLOR).
            .chain((!sup.color()).then(|| ("NO_COLOR", "1".to_owned())))
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            dir: None,
        });
        let mut argv = vec!["ip".into(), "netns".into(), "exec".into(), ns];
        argv.extend(w.command.iter().cloned());
        sup.start(Spec {
            label: w.name.clone(),
            color: i + 1,
            argv,
            env: w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            dir: Some(mesh.dir.clone()),
        });
    }
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
