//! Runs the mesh's processes: each in a thread that spawns it, streams its stdout and stderr
//! line by line with a coloured `[workload/proxy]` prefix, and restarts it with exponential
//! backoff when it exits (200 ms doubling to 10 s; reset after 10 s of healthy running).
//! [`Supervisor::stop`] sends SIGTERM to every process and SIGKILL to what is left after the
//! deadline; [`Supervisor::stop_some`] does the same for a few (a canary retired during a run).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::net::signal;

const COLORS: [&str; 6] = [
    "\x1b[1;36m",
    "\x1b[1;35m",
    "\x1b[1;33m",
    "\x1b[1;32m",
    "\x1b[1;34m",
    "\x1b[1;31m",
];
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The log prefix, e.g. `payments/proxy`.
    pub label: String,
    /// Index into the colour table.
    pub color: usize,
    /// The argv.
    pub argv: Vec<String>,
    /// Added environment variables.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub dir: Option<PathBuf>,
    /// Also append the output to this file (rotated to `<file>.1` past [`LOG_FILE_MAX`]), so
    /// the controller can quote a canary's last lines in a rollback message.
    pub log_file: Option<PathBuf>,
}

/// Size at which a workload's log file is rotated.
pub const LOG_FILE_MAX: u64 = 1024 * 1024;

/// Appends lines to a log file, rotating it once it is large.
struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl LogFile {
    fn open(path: &std::path::Path) -> Option<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    }

    fn write(&mut self, line: &str) {
        if self.file.is_none() {
            self.file = Self::open(&self.path);
        }
        let Some(f) = &mut self.file else { return };
        let _ = writeln!(f, "{line}");
        if f.metadata().is_ok_and(|m| m.len() > LOG_FILE_MAX) {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, rotated);
            self.file = Self::open(&self.path);
        }
    }
}

struct Proc {
    spec: Spec,
    pid: Mutex<Option<u32>>,
    starts: AtomicU32,
    /// When the running process started, and how the last one ended.
    life: Mutex<Life>,
    /// Set when this process alone is being stopped: no restart.
    retired: AtomicBool,
}

/// When a process started, and how the one before it ended.
#[derive(Clone, Debug, Default)]
pub struct Life {
    /// When the current process started (`None` while none runs).
    pub since: Option<Instant>,
    /// How the last process ended (`exit status: 1`), if one did.
    pub last_exit: Option<String>,
}

impl Proc {
    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running processes.
pub struct Supervisor {
    /// Each process with the thread that keeps it running.
    procs: Vec<(Arc<Proc>, JoinHandle<()>)>,
    stopping: Arc<AtomicBool>,
    color: bool,
}

/// A handle to one supervised process.
#[derive(Clone)]
pub struct Handle(Arc<Proc>);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("label", &self.0.spec.label)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Handle {
    /// Its current pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// How many times it was started (1 until it is restarted).
    pub fn starts(&self) -> u32 {
        self.0.starts.load(Ordering::SeqCst)
    }

    /// When the running process started, and how the last one ended.
    pub fn life(&self) -> Life {
        self.0.life().clone()
    }

    /// Its log prefix (`payments/proxy`).
    pub fn label(&self) -> &str {
        &self.0.spec.label
    }
}

impl Supervisor {
    /// An empty supervisor; `color` paints the prefixes.
    pub fn new(color: bool) -> Self {
        Supervisor {
            procs: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            color,
        }
    }

    /// Whether prefixes are coloured.
    pub fn color(&self) -> bool {
        self.color
    }

    /// Starts `spec` and keeps it running until [`Supervisor::stop`].
    pub fn start(&mut self, spec: Spec) -> Handle {
        let proc = Arc::new(Proc {
            spec,
            pid: Mutex::new(None),
            starts: AtomicU32::new(0),
            life: Mutex::new(Life::default()),
            retired: AtomicBool::new(false),
        });
        let (p, stopping, color) = (Arc::clone(&proc), Arc::clone(&self.stopping), self.color);
        let thread = std::thread::spawn(move || keep_running(&p, &stopping, color));
        self.procs.push((Arc::clone(&proc), thread));
        Handle(proc)
    }

    /// Stops everything: SIGTERM, then SIGKILL after `deadline`. Idempotent.
    pub fn stop(&mut self, deadline: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let all = std::mem::take(&mut self.procs);
        terminate(all, deadline);
    }

    /// Stops these processes only (SIGTERM, SIGKILL after `deadline`) and forgets them; the
    /// others keep running. Handles of processes already stopped are ignored.
    pub fn stop_some(&mut self, handles: &[Handle], deadline: Duration) {
        let (chosen, kept) = std::mem::take(&mut self.procs)
            .into_iter()
            .partition(|(p, _)| handles.iter().any(|h| Arc::ptr_eq(&h.0, p)));
        self.procs = kept;
        for (p, _) in &chosen {
            p.retired.store(true, Ordering::SeqCst);
        }
        terminate(chosen, deadline);
    }

    /// How many processes are supervised.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether no process is supervised.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

/// SIGTERM to each process, SIGKILL to what is left after `deadline`, then joins the threads.
/// The caller has already told their threads not to restart them.
fn terminate(procs: Vec<(Arc<Proc>, JoinHandle<()>)>, deadline: Duration) {
    for (p, _) in &procs {
        if let Some(pid) = p.pid() {
            signal(pid, Signal::SIGTERM);
        }
    }
    let until = Instant::now() + deadline;
    while Instant::now() < until && procs.iter().any(|(_, t)| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (p, _) in &procs {
        if let Some(pid) = p.pid() {
            signal(pid, Signal::SIGKILL);
        }
    }
    for (_, t) in procs {
        let _ = t.join();
    }
}

fn prefix(spec: &Spec, color: bool) -> String {
    if color {
        let c = COLORS[spec.color % COLORS.len()];
        format!("{c}[{}]\x1b[0m ", spec.label)
    } else {
        format!("[{}] ", spec.label)
    }
}

fn say(prefix: &str, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix}{line}");
    let _ = out.flush();
}

fn keep_running(p: &Proc, stopping: &AtomicBool, color: bool) {
    let prefix = prefix(&p.spec, color);
    let log = p.spec.log_file.as_ref().map(|path| {
        Arc::new(Mutex::new(LogFile {
            path: path.clone(),
            file: None,
        }))
    });
    let stopping = || stopping.load(Ordering::SeqCst) || p.retired.load(Ordering::SeqCst);
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let child = {
            // Checked under the pid lock, so `stop` never misses a process started late.
            let mut pid = p.pid.lock().unwrap_or_else(|e| e.into_inner());
            if stopping() {
                return;
            }
            let mut cmd = Command::new(&p.spec.argv[0]);
            cmd.args(&p.spec.argv[1..])
                .envs(p.spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(dir) = &p.spec.dir {
                cmd.current_dir(dir);
            }
            // Its own process group: Ctrl-C reaches `sluice up` only, which then stops
            // everything in order instead of racing the restarts.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            match cmd.spawn() {
                Ok(child) => {
                    *pid = Some(child.id());
                    p.starts.fetch_add(1, Ordering::SeqCst);
                    p.life().since = Some(Instant::now());
                    Some(child)
                }
                Err(e) => {
                    say(&prefix, &format!("cannot start {}: {e}", p.spec.argv[0]));
                    None
                }
            }
        };
        if let Some(mut child) = child {
            let readers: Vec<_> = [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ]
            .into_iter()
            .flatten()
            .map(|r| {
                let prefix = prefix.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(r).lines() {
                        match line {
                            Ok(l) => {
                                if let Some(log) = &log {
                                    log.lock().unwrap_or_else(|e| e.into_inner()).write(&l);
                                }
                                say(&prefix, &l);
                            }
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
            let status = child.wait();
            *p.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
            {
                let mut life = p.life();
                life.since = None;
                life.last_exit = Some(
                    status
                        .as_ref()
                        .map_or_else(|e| e.to_string(), |s| s.to_string()),
                );
            }
            // The readers end when the pipes close; not joined, because a grandchild that
            // kept the pipe open must not hold up a restart or teardown.
            drop(readers);
            if stopping() {
                return;
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = BACKOFF_START;
            }
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            say(
                &prefix,
                &format!(
                    "exited ({status}); restarting in {}",
                    humantime::format_duration(backoff)
                ),
            );
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stopping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(label: &str) -> Spec {
        Spec {
            log_file: None,
            label: label.into(),
            color: 0,
            argv: vec!["sleep".into(), "60".into()],
            env: Vec::new(),
            dir: None,
        }
    }

    fn wait_for_pid(h: &Handle) -> u32 {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = h.pid() {
                return pid;
            }
            assert!(Instant::now() < until, "the process did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(pid: u32) -> bool {
        // A zombie is dead too: reaped by the supervisor thread, or about to be.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
    }

    #[test]
    fn stop_some_stops_those_only_and_does_not_restart_them() {
        let mut sup = Supervisor::new(false);
        let a = sup.start(sleeper("a"));
        let b = sup.start(sleeper("b"));
        let (pa, pb) = (wait_for_pid(&a), wait_for_pid(&b));
        sup.stop_some(std::slice::from_ref(&a), Duration::from_secs(5));
        assert!(!alive(pa), "a was stopped");
        assert_eq!(a.pid(), None);
        assert_eq!(a.starts(), 1, "and not restarted");
        assert!(alive(pb), "b keeps running");
        assert_eq!(sup.len(), 1);
        // Stopping it again is a no-op.
        sup.stop_some(&[a], Duration::from_secs(1));
        assert_eq!(sup.len(), 1);
        sup.stop(Duration::from_secs(5));
        assert!(!alive(pb));
        assert!(sup.is_empty());
    }
}
