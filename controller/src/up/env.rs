//! Ephemeral environments in the local mesh: `sluice up`'s implementation of the
//! [instance backend](crate::instance::Backend), and the runner that keeps it in step with the
//! controller.
//!
//! Every 500 ms the runner reports the environment instances it runs (process state, address,
//! CPU and memory, the log's last lines) to the controller (`POST /instances/sync`, with the
//! admin token) and gets back the instances every environment needs; [`instance::reconcile`]
//! starts, stops and restarts them through [`NetnsBackend`]. The controller decides; the
//! runner only makes it so. A controller that does not answer leaves everything as it is.
//!
//! An instance is a workload like a rollout's canary ([`super::live`]): its own namespace
//! `sluice-<run>-checkout.pr-1`, veth, address, hosts file, `sluice-proxy init`, a proxy with
//! `SLUICE_PROXY_ENVIRONMENT=pr-1` (so it registers in the environment and adds the
//! environment's baggage to what the app sends), and the command: the mesh file's workload of
//! that service at that version, or the developer's own. All recorded in `up.json` first, so
//! teardown and `sluice down` remove them too. It never carries the service address.
//!
//! The ingress routes `frontend.pr-1.localhost` through [`IngressRoutes`], which the runner
//! keeps current: to the environment's frontend copy when it has one, else to stable's, with
//! `sluice-env=pr-1` added to the request's baggage either way.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use super::Shared;
use super::meshfile::{MeshFile, VersionConfig};
use super::rollouts::say;
use crate::env::client::{Address, AdminClient, error_text};
use crate::env::{SyncAnswer, SyncRequest};
use crate::instance::{
    Backend, BackendError, InstanceSpec, InstanceStatus, RETRY_AFTER, Retries, Run,
};

/// How often the runner syncs with the controller.
pub const POLL: Duration = Duration::from_millis(500);
/// How often CPU and memory are measured.
const MEASURE_EVERY: Duration = Duration::from_secs(2);
/// Log lines reported per instance.
const TAIL_LINES: usize = 20;

/// Whether `name` is an environment's instance (`checkout.pr-1`): mesh-file workloads and
/// canaries are DNS labels, without dots.
pub fn is_env_instance(name: &str) -> bool {
    name.contains('.')
}

/// What the ingress needs to route `SERVICE.ENV.localhost`: per environment, the address of
/// each service's copy.
#[derive(Debug, Default)]
pub struct IngressRoutes {
    envs: RwLock<BTreeMap<String, BTreeMap<String, SocketAddr>>>,
}

impl IngressRoutes {
    /// Whether `env` exists, and its copy of `service` if it has a running one.
    pub fn lookup(&self, env: &str, service: &str) -> Option<Option<SocketAddr>> {
        let envs = self.envs.read().unwrap_or_else(|e| e.into_inner());
        envs.get(env).map(|copies| copies.get(service).copied())
    }

    /// The environments' names.
    pub fn names(&self) -> Vec<String> {
        let envs = self.envs.read().unwrap_or_else(|e| e.into_inner());
        envs.keys().cloned().collect()
    }

    fn set(&self, routes: BTreeMap<String, BTreeMap<String, SocketAddr>>) {
        *self.envs.write().unwrap_or_else(|e| e.into_inner()) = routes;
    }
}

/// CPU time and peak memory of one instance's processes, across process restarts.
#[derive(Debug, Default)]
struct Meter {
    /// pid → (start time in ticks, CPU ticks last seen, peak RSS in bytes).
    live: HashMap<u32, (u64, u64, u64)>,
    /// CPU ticks and peak RSS of processes that are gone.
    done_ticks: u64,
    done_peak: u64,
}

impl Meter {
    fn update(&mut self, now: &[(u32, u64, u64, u64)]) {
        let gone: Vec<u32> = self
            .live
            .keys()
            .filter(|pid| {
                !now.iter()
                    .any(|(p, start, ..)| p == *pid && self.live[*pid].0 == *start)
            })
            .copied()
            .collect();
        for pid in gone {
            if let Some((_, ticks, peak)) = self.live.remove(&pid) {
                self.done_ticks += ticks;
                self.done_peak = self.done_peak.max(peak);
            }
        }
        for &(pid, start, ticks, peak) in now {
            self.live.insert(pid, (start, ticks, peak));
        }
    }

    fn cpu_seconds(&self, ticks_per_second: f64) -> f64 {
        let ticks: u64 = self.done_ticks + self.live.values().map(|(_, t, _)| t).sum::<u64>();
        ticks as f64 / ticks_per_second
    }

    /// The sum of the running processes' peaks, or the largest a finished one had.
    fn peak_rss(&self) -> u64 {
        self.live
            .values()
            .map(|(_, _, p)| p)
            .sum::<u64>()
            .max(self.done_peak)
    }
}

/// The processes in network namespace `ns`, each as (pid, start ticks, CPU ticks, peak RSS
/// bytes), from `/proc` (what `ip netns pids` reads).
fn processes_in(ns: &str) -> Vec<(u32, u64, u64, u64)> {
    let Ok(meta) = std::fs::metadata(Path::new("/run/netns").join(ns)) else {
        return Vec::new();
    };
    let want = format!("net:[{}]", std::os::unix::fs::MetadataExt::ino(&meta));
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let same = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.as_os_str() == want.as_str());
        if !same {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start at `) `.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // utime, stime and starttime are fields 14, 15 and 22 of stat; `rest` starts at 3.
        let ticks = field(11) + field(12);
        let start = field(19);
        let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        out.push((pid, start, ticks, peak));
    }
    out
}

/// The last `n` lines of `path` (and of its rotated `.1` when it is short).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let read_tail = |p: &Path| -> Option<String> {
        let mut f = std::fs::File::open(p).ok()?;
        let len = f.metadata().ok()?.len();
        let from = len.saturating_sub(16 * 1024);
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        // A cut first line is dropped.
        Some(if from > 0 {
            text.split_once('\n')
                .map_or(String::new(), |(_, r)| r.to_owned())
        } else {
            text
        })
    };
    let mut lines: Vec<String> = read_tail(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    if lines.len() < n {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let older: Vec<String> = read_tail(Path::new(&rotated))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines = older.into_iter().chain(lines).collect();
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// `sluice up`'s backend: instances as namespaces with a sidecar and a command.
pub struct NetnsBackend {
    shared: Arc<Mutex<Shared>>,
    mesh: MeshFile,
    logs_dir: PathBuf,
    started: BTreeMap<String, InstanceSpec>,
    meters: HashMap<String, Meter>,
    measured: Option<Instant>,
    ticks_per_second: f64,
}

impl NetnsBackend {
    /// The backend of the running mesh in `shared`, whose workloads come from `mesh`.
    pub fn new(shared: Arc<Mutex<Shared>>, mesh: MeshFile, logs_dir: PathBuf) -> Self {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .map_or(100.0, |t| t as f64);
        NetnsBackend {
            shared,
            mesh,
            logs_dir,
            started: BTreeMap::new(),
            meters: HashMap::new(),
            measured: None,
            ticks_per_second: ticks,
        }
    }

    /// What to run for `spec`: its service's workload in the mesh file, in the environment,
    /// with the version's command and env, or the developer's command (in its directory, with
    /// the workload's env and its own over it).
    fn resolve(
        &self,
        spec: &InstanceSpec,
    ) -> Result<(super::meshfile::Workload, VersionConfig), BackendError> {
        let file = self.mesh.source.file_name().map_or_else(
            || "the mesh file".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let Some(base) = self
            .mesh
            .workloads
            .iter()
            .find(|w| w.service == spec.service)
        else {
            return Err(BackendError::Unsupported(format!(
                "{file} runs no workload of service {}; add one to run its copies",
                spec.service
            )));
        };
        let mut base = base.clone();
        base.environment.clone_from(&spec.environment);
        let config = match &spec.run {
            Run::Version => base.config_for(&spec.version).ok_or_else(|| {
                BackendError::Unsupported(format!(
                    "{} has no `versions.{}` in {file}; add one, or copy the version it runs",
                    base.name, spec.version
                ))
            })?,
            Run::Command { argv, dir, env } => {
                // `env -C` runs it in the developer's directory (commands run in the mesh
                // file's otherwise).
                let mut command = vec![
                    "env".to_owned(),
                    "-C".to_owned(),
                    dir.clone(),
                    "--".to_owned(),
                ];
                command.extend(argv.iter().cloned());
                let mut merged = base.env.clone();
                merged.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
                VersionConfig {
                    command,
                    env: merged,
                }
            }
        };
        Ok((base, config))
    }

    fn measure(&mut self) {
        if self.measured.is_some_and(|at| at.elapsed() < MEASURE_EVERY) {
            return;
        }
        self.measured = Some(Instant::now());
        let namespaces: Vec<(String, String)> = {
            let shared = super::lock(&self.shared);
            self.started
                .keys()
                .filter_map(|name| {
                    let w = shared.workloads.as_ref()?.get(name)?;
                    Some((name.clone(), w.ns.clone()))
                })
                .collect()
        };
        for (name, ns) in namespaces {
            let now = processes_in(&ns);
            self.meters.entry(name).or_default().update(&now);
        }
    }
}

impl Backend for NetnsBackend {
    fn start(&mut self, spec: &InstanceSpec) -> Result<(), BackendError> {
        let (base, config) = self.resolve(spec)?;
        let mut guard = super::lock(&self.shared);
        let shared = &mut *guard;
        let Some(workloads) = shared.workloads.as_mut() else {
            return Err(BackendError::Failed("the mesh is not running".into()));
        };
        let live = workloads
            .add(
                &mut shared.rec,
                &mut shared.sup,
                super::live::NewInstance {
                    name: &spec.name,
                    base: &base,
                    version: &spec.version,
                    role: &spec.role,
                    config: &config,
                },
            )
            .map_err(BackendError::Failed)?;
        let addr = live.addr;
        drop(guard);
        self.started.insert(spec.name.clone(), spec.clone());
        self.meters.insert(spec.name.clone(), Meter::default());
        say(&format!(
            "environment {}: started {} ({} {}{}) at {addr}",
            spec.environment,
            spec.name,
            spec.service,
            spec.version,
            match &spec.run {
                Run::Version => String::new(),
                Run::Command { argv, .. } => format!(", `{}`", argv.join(" ")),
            }
        ));
        Ok(())
    }

    fn stop(&mut self, name: &str) -> Result<(), BackendError> {
        let mut guard = super::lock(&self.shared);
        let shared = &mut *guard;
        if let Some(workloads) = shared.workloads.as_mut() {
            workloads
                .remove(&mut shared.rec, &mut shared.sup, name)
                .map_err(BackendError::Failed)?;
        }
        drop(guard);
        if let Some(spec) = self.started.remove(name) {
            say(&format!("environment {}: removed {name}", spec.environment));
        }
        self.meters.remove(name);
        Ok(())
    }

    fn instances(&mut self) -> Vec<(InstanceSpec, InstanceStatus)> {
        self.measure();
        let shared = super::lock(&self.shared);
        self.started
            .iter()
            .map(|(name, spec)| {
                let live = shared.workloads.as_ref().and_then(|w| w.get(name));
                let app = live.and_then(|l| l.procs().get(1));
                let life = app.map(|h| h.life()).unwrap_or_default();
                let port = self
                    .mesh
                    .workloads
                    .iter()
                    .find(|w| w.service == spec.service)
                    .map_or(0, |w| w.port);
                let meter = self.meters.get(name);
                let status = InstanceStatus {
                    name: name.clone(),
                    generation: spec.generation,
                    address: live.map(|l| format!("{}:{port}", l.addr)),
                    running: app.and_then(|h| h.pid()).is_some(),
                    starts: app.map_or(0, |h| h.starts()),
                    last_exit: life.last_exit,
                    up_ms: life.since.map_or(0, |t| {
                        u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
                    }),
                    log_tail: tail(&self.logs_dir.join(format!("{name}.log")), TAIL_LINES),
                    cpu_seconds: meter.map_or(0.0, |m| m.cpu_seconds(self.ticks_per_second)),
                    peak_rss_bytes: meter.map_or(0, Meter::peak_rss),
                    error: None,
                };
                (spec.clone(), status)
            })
            .collect()
    }
}

/// Keeps the environments' instances in step with the controller, until told to stop.
pub struct Runner {
    backend: NetnsBackend,
    client: AdminClient,
    token_file: PathBuf,
    name: String,
    ingress: Option<String>,
    routes: Arc<IngressRoutes>,
    /// Starts that failed, and when to try them again.
    retries: Retries,
    /// The last problem talking to the controller (logged once).
    down: Option<String>,
}

impl Runner {
    /// A runner for the mesh in `shared`, syncing with the controller whose state directory is
    /// `controller_dir`. `ingress` is the ingress's URL template, if one runs.
    pub fn new(
        backend: NetnsBackend,
        controller_dir: &Path,
        run_id: &str,
        ingress: Option<String>,
        routes: Arc<IngressRoutes>,
    ) -> Self {
        Runner {
            backend,
            client: AdminClient::new(
                Address::File(controller_dir.join(crate::status::ADMIN_ADDR_FILE)),
                None,
            ),
            token_file: crate::env::api::token_path(controller_dir),
            name: format!("sluice up run {run_id}"),
            ingress,
            routes,
            retries: Retries::default(),
            down: None,
        }
    }

    /// Syncs every [`POLL`] until `stop` is set, then stops every instance it started (the
    /// final teardown would remove them anyway; this says so).
    pub fn run(mut self, stop: &AtomicBool) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                say(&format!("environments will not run locally: {e}"));
                return;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let tick = Instant::now();
            rt.block_on(self.round());
            while tick.elapsed() < POLL && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// One round: report, learn what should run, make it so.
    pub async fn round(&mut self) {
        if let Ok(t) = std::fs::read_to_string(&self.token_file) {
            self.client.set_token(Some(t.trim().to_owned()));
        }
        let (running, mut statuses): (Vec<InstanceSpec>, Vec<InstanceStatus>) =
            self.backend.instances().into_iter().unzip();
        self.retries.report(&mut statuses);
        let request = SyncRequest {
            backend: self.name.clone(),
            ingress: self.ingress.clone(),
            instances: statuses,
        };
        let body = serde_json::to_value(&request).unwrap_or_default();
        let desired = match self
            .client
            .call(Method::POST, "/instances/sync", Some(&body))
            .await
        {
            Ok((StatusCode::OK, v)) => match serde_json::from_value::<SyncAnswer>(v) {
                Ok(a) => a.instances,
                Err(e) => return self.problem(format!("an answer that is not the sync JSON: {e}")),
            },
            // A controller from before environments: nothing to run.
            Ok((StatusCode::NOT_FOUND, _)) => {
                return self.problem("this controller has no environments API".into());
            }
            Ok((status, v)) => return self.problem(format!("{status}: {}", error_text(&v))),
            Err(e) => return self.problem(e.to_string()),
        };
        if self.down.take().is_some() {
            say("environments: the controller answers again");
        }
        for f in self
            .retries
            .reconcile(&mut self.backend, &desired, &running, Instant::now())
        {
            say(&format!(
                "environments: {}: {} (trying again in {}s)",
                f.name,
                f.error,
                RETRY_AFTER.as_secs()
            ));
        }
        self.update_routes(&desired);
    }

    fn update_routes(&mut self, desired: &[InstanceSpec]) {
        let mut routes: BTreeMap<String, BTreeMap<String, SocketAddr>> = BTreeMap::new();
        for d in desired {
            routes.entry(d.environment.clone()).or_default();
        }
        for (spec, status) in self.backend.instances() {
            if let Some(addr) = status.address.and_then(|a| a.parse().ok()) {
                routes
                    .entry(spec.environment.clone())
                    .or_default()
                    .insert(spec.service.clone(), addr);
            }
        }
        self.routes.set(routes);
    }

    fn problem(&mut self, message: String) {
        if self.down.as_deref() != Some(&message) {
            say(&format!(
                "environments: {message}; their instances stay as they are until it answers"
            ));
            self.down = Some(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_keeps_what_finished_processes_used() {
        let mut m = Meter::default();
        m.update(&[(10, 1, 50, 4096), (11, 1, 10, 1024)]);
        assert_eq!(m.cpu_seconds(100.0), 0.6);
        assert_eq!(m.peak_rss(), 5120);
        // 11 exited; 10 restarted as a new process with the same pid.
        m.update(&[(10, 9, 5, 2048)]);
        assert_eq!(m.cpu_seconds(100.0), 0.65);
        assert_eq!(m.peak_rss(), 4096, "the largest finished process");
    }

    #[test]
    fn tail_reads_the_last_lines_across_a_rotation() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("x.log");
        std::fs::write(dir.path().join("x.log.1"), "a\nb\nc\n")?;
        std::fs::write(&log, "d\ne\n")?;
        assert_eq!(tail(&log, 3), ["c", "d", "e"]);
        assert_eq!(tail(&log, 1), ["e"]);
        assert!(tail(&dir.path().join("missing.log"), 3).is_empty());
        Ok(())
    }

    #[test]
    fn environment_instances_are_told_apart() {
        assert!(is_env_instance("checkout.pr-1"));
        assert!(!is_env_instance("payments-v2"));
    }
}
