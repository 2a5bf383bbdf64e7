//! The local mesh's network: one bridge, one network namespace per workload with a veth into
//! the bridge, addresses in a /24 of `10.213.0.0/16` that exists only on this bridge (no
//! default route, no NAT, no forwarding to the uplink), a second address per service on the
//! first workload of that service, and `/etc/netns/NS/hosts` so service names resolve.
//!
//! Everything created is recorded in the state file ([`Created`]) *before* it is created, so
//! teardown — at the end of a run, or `sluice down` after a killed one — removes exactly
//! that and tolerates what is already gone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "up.json";

/// What a run created, persisted after every change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Created {
    /// The run id (hex), part of every name.
    pub run_id: String,
    /// The pid of `sluice up`.
    pub pid: u32,
    /// The bridge.
    pub bridge: Option<String>,
    /// Network namespaces.
    pub namespaces: Vec<String>,
    /// Host-side veth ends.
    pub veths: Vec<String>,
    /// `/etc/netns/NS` directories.
    pub etc_dirs: Vec<PathBuf>,
    /// The directory of files proxies read (world-readable, outside the state dir).
    pub run_dir: Option<PathBuf>,
    /// The controller process, if started.
    pub controller_pid: Option<u32>,
}

/// The state file: [`Created`] plus where it lives.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    /// What was created so far.
    pub created: Created,
}

impl Record {
    /// A new record in `state_dir`.
    pub fn new(state_dir: &Path, run_id: &str) -> std::io::Result<Record> {
        let r = Record {
            path: state_dir.join(STATE_FILE),
            created: Created {
                run_id: run_id.to_owned(),
                pid: std::process::id(),
                ..Created::default()
            },
        };
        r.save()?;
        Ok(r)
    }

    /// The record a previous run left in `state_dir`, if any.
    pub fn open(state_dir: &Path) -> Result<Option<Record>, String> {
        let path = state_dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let created = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a sluice up state file: {e}", path.display()))?;
        Ok(Some(Record { path, created }))
    }

    /// Writes the record (atomically: a temporary file renamed over it).
    pub fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&self.created).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Changes the record and saves it.
    pub fn update(&mut self, f: impl FnOnce(&mut Created)) -> std::io::Result<()> {
        f(&mut self.created);
        self.save()
    }

    /// Removes the state file (after a complete teardown).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs a command; an error with its output if it fails.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Picks a free /24 in `10.213.0.0/16` (not on any local interface), starting at one derived
/// from the run id so that parallel runs rarely probe the same one.
pub fn pick_subnet(run_id: &str) -> Result<u8, String> {
    let addrs = run(&["ip", "-o", "-4", "addr", "show"])?;
    let start = u32::from_str_radix(run_id, 16).unwrap_or(0) % 250;
    (0..250)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|n| !addrs.contains(&format!(" 10.213.{n}.")))
        .ok_or_else(|| "no free /24 left in 10.213.0.0/16".to_owned())
}

/// The addresses of one run.
#[derive(Clone, Copy, Debug)]
pub struct Subnet(pub u8);

impl Subnet {
    /// The host's address on the bridge (where the controller listens).
    pub fn host(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.0, 1)
    }

    /// Workload `i`'s address.
    pub fn workload(self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.0, 10 + i as u8)
    }

    /// Service `j`'s address.
    pub fn service(self, j: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.0, 200 + j as u8)
    }
}

/// Creates the bridge with the host's address on it.
pub fn create_bridge(rec: &mut Record, name: &str, subnet: Subnet) -> Result<(), String> {
    rec.update(|c| c.bridge = Some(name.to_owned()))
        .map_err(|e| e.to_string())?;
    run(&["ip", "link", "add", name, "type", "bridge"])?;
    // Bridged frames must not go through the host's iptables (br_netfilter), whose FORWARD
    // policy may drop them. Older kernels lack the knob; then the default applies.
    let _ = run(&[
        "ip",
        "link",
        "set",
        name,
        "type",
        "bridge",
        "nf_call_iptables",
        "0",
    ]);
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", subnet.host()),
        "dev",
        name,
    ])?;
    run(&["ip", "link", "set", name, "up"])?;
    Ok(())
}

/// Creates namespace `ns` with `eth0` (address `ip`, plus `extra` addresses) on the bridge.
pub fn create_namespace(
    rec: &mut Record,
    ns: &str,
    host_veth: &str,
    bridge: &str,
    ip: Ipv4Addr,
    extra: &[Ipv4Addr],
) -> Result<(), String> {
    rec.update(|c| {
        c.namespaces.push(ns.to_owned());
        c.veths.push(host_veth.to_owned());
    })
    .map_err(|e| e.to_string())?;
    run(&["ip", "netns", "add", ns])?;
    let peer = format!("{host_veth}p");
    run(&[
        "ip", "link", "add", host_veth, "type", "veth", "peer", "name", &peer, "netns", ns,
    ])?;
    run(&["ip", "link", "set", host_veth, "master", bridge])?;
    run(&["ip", "link", "set", host_veth, "up"])?;
    let exec = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        run(&v)
    };
    exec(&["ip", "link", "set", "lo", "up"])?;
    exec(&["ip", "link", "set", &peer, "name", "eth0"])?;
    exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    for a in extra {
        exec(&["ip", "addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
    }
    exec(&["ip", "link", "set", "eth0", "up"])?;
    Ok(())
}

/// Writes `/etc/netns/NS/hosts` (bind-mounted over `/etc/hosts` by `ip netns exec`).
pub fn write_hosts(rec: &mut Record, ns: &str, hosts: &str) -> Result<(), String> {
    let dir = Path::new("/etc/netns").join(ns);
    rec.update(|c| c.etc_dirs.push(dir.clone()))
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("hosts"), hosts)
        .map_err(|e| format!("cannot write {}/hosts: {e}", dir.display()))
}

/// Removes one namespace created with [`create_namespace`] and [`write_hosts`] during a run
/// (a retired canary or stable workload): kills what is left inside, deletes the namespace, the
/// host veth and `/etc/netns/NS`, and only then drops them from the record, so that a failure
/// leaves them to the final teardown.
pub fn remove_namespace(rec: &mut Record, ns: &str, host_veth: &str) -> Result<(), String> {
    use nix::sys::signal::Signal;
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
            signal(pid, Signal::SIGKILL);
        }
    }
    if netns_exists(ns)
        && let Err(e) = run(&["ip", "netns", "del", ns])
        && netns_exists(ns)
    {
        return Err(e);
    }
    // The host end usually goes with the namespace (asynchronously); delete it if it lingers.
    if link_exists(host_veth)
        && let Err(e) = run(&["ip", "link", "del", host_veth])
        && link_exists(host_veth)
    {
        return Err(e);
    }
    let dir = Path::new("/etc/netns").join(ns);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    rec.update(|c| {
        c.namespaces.retain(|n| n != ns);
        c.veths.retain(|v| v != host_veth);
        c.etc_dirs.retain(|d| *d != dir);
    })
    .map_err(|e| format!("state file: {e}"))
}

/// Moves the `/32` address `addr` from `eth0` in namespace `from` to `eth0` in `to` (a service
/// address whose workload is retired), then drops the host's neighbour entry for it so the
/// host (the ingress) resolves the new owner at once instead of waiting for the stale entry.
pub fn move_address(from: &str, to: &str, addr: Ipv4Addr) -> Result<(), String> {
    let cidr = format!("{addr}/32");
    // Gone already (a namespace that failed half-way) is fine: the point is that it is not
    // there.
    if netns_exists(from) {
        let _ = run(&[
            "ip", "netns", "exec", from, "ip", "addr", "del", &cidr, "dev", "eth0",
        ]);
    }
    run(&[
        "ip", "netns", "exec", to, "ip", "addr", "add", &cidr, "dev", "eth0",
    ])?;
    let _ = run(&["ip", "neigh", "flush", "to", &addr.to_string()]);
    Ok(())
}

/// Whether `pid` is alive and its command line contains every one of `needles`.
pub fn process_matches(pid: u32, needles: &[&str]) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        needles.iter().all(|n| cmd.contains(n))
    })
}

/// Sends `sig` to `pid` (best effort).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Removes everything `rec` lists: processes left in the namespaces (only this run's
/// processes live there), the namespaces (which takes their iptables rules and veth ends),
/// the host veths, the bridge, the `/etc/netns` entries and the run directory. Errors are
/// collected, not fatal: teardown always goes as far as it can.
pub fn teardown(rec: &Record, state_dir: &Path) -> Vec<String> {
    use nix::sys::signal::Signal;
    let c = &rec.created;
    let mut errors = Vec::new();
    // The controller runs on the host. It may have been restarted since its pid was recorded,
    // so every process that is `sluice controller` on this run's controller directory goes.
    let dir = format!("--state-dir\0{}\0", state_dir.join("controller").display());
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids.chain(c.controller_pid) {
        let is_ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
            let cmd = String::from_utf8_lossy(&raw);
            cmd.contains("\0controller\0") && cmd.contains(&dir)
        });
        if is_ours {
            signal(pid, Signal::SIGKILL);
        }
    }
    for ns in &c.namespaces {
        if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                signal(pid, Signal::SIGKILL);
            }
        }
    }
    for ns in &c.namespaces {
        if netns_exists(ns)
            && let Err(e) = run(&["ip", "netns", "del", ns])
            && netns_exists(ns)
        {
            errors.push(e);
        }
    }
    // A veth goes away on its own once its namespace is gone, asynchronously: a link that
    // vanished between the check and the delete is not an error.
    for link in c.veths.iter().chain(&c.bridge) {
        if link_exists(link)
            && let Err(e) = run(&["ip", "link", "del", link])
            && link_exists(link)
        {
            errors.push(e);
        }
    }
    for dir in &c.etc_dirs {
        // Only the directories this run made: they are named after its namespaces.
        if dir.starts_with("/etc/netns")
            && dir.exists()
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            errors.push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    if let Some(dir) = &c.run_dir
        && dir.exists()
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        errors.push(format!("cannot remove {}: {e}", dir.display()));
    }
    errors
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}
