//! The workloads of a running local mesh: the ones the mesh file declares, created at start,
//! and the ones a rollout adds or retires while `sluice up` runs (canaries, and the old
//! stable workloads after a promotion).
//!
//! Each workload is a namespace with its veth, its `/etc/netns/NS/hosts`, `sluice-proxy init`,
//! then its proxy and its command under the [supervisor](super::supervise). Everything is
//! recorded in `up.json` before it is created ([`net::create_namespace`], [`net::write_hosts`])
//! and dropped from it only once it is gone ([`net::remove_namespace`]), so the final teardown
//! and `sluice down` remove whatever a rollout left.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::SystemTime;

use super::meshfile::{VersionConfig, Workload};
use super::net::{self, Record, Subnet};
use super::supervise::{Handle, Spec, Supervisor};
use super::{INBOUND_PORT, PROXY_UID, STOP_DEADLINE, TOKEN_TTL};
use crate::identity::WorkloadIdentity;
use crate::identity::token::TokenKey;

/// Workload addresses are `10.213.N.(10 + slot)`; service addresses start at `.200`.
pub const SLOTS: usize = 180;
/// Host veth names are `sl<id>v<index>` (9 characters plus the index) and their peers add a
/// `p`; Linux allows 15, so the index has at most 5 digits.
const MAX_VETH_INDEX: usize = 99_999;

/// What every workload of one run shares.
#[derive(Debug)]
pub struct Context {
    /// The run id.
    pub run_id: String,
    /// The run's /24.
    pub subnet: Subnet,
    /// The bridge every veth joins.
    pub bridge: String,
    /// The `/etc/hosts` of every namespace.
    pub hosts: String,
    /// The controller's gRPC address (`ip:port`) on the bridge.
    pub controller_addr: String,
    /// The mesh CA certificate, readable by the proxies, which they trust the controller with.
    pub controller_ca: PathBuf,
    /// Signs the proxies' bootstrap tokens.
    pub tokens: TokenKey,
    /// `sluice-proxy`.
    pub proxy_bin: PathBuf,
    /// Where workload commands run (the mesh file's directory).
    pub mesh_dir: PathBuf,
    /// Whether log prefixes are coloured (proxies then log in colour too).
    pub color: bool,
    /// Where each workload's output is also written, as `<instance>.log` (the controller's
    /// `--workload-logs`).
    pub logs_dir: PathBuf,
}

/// One running workload.
#[derive(Debug)]
pub struct Live {
    /// Its instance name: the mesh file's name for the declared ones, `<name>-<version>` for
    /// those a rollout started.
    pub name: String,
    /// The mesh file's workload it derives from (its ports, service, environment).
    pub base: String,
    /// Its service.
    pub service: String,
    /// The version it runs.
    pub version: String,
    /// Whether a rollout started it: a canary (not yet promoted), or a baseline copy.
    pub canary: bool,
    /// Empty, or `baseline` for a rollout's fresh copy of the stable version (its proxy
    /// registers and reports with that role, see `SLUICE_PROXY_ROLE`).
    pub role: String,
    /// Its namespace.
    pub ns: String,
    /// The host end of its veth.
    pub veth: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Service addresses on its `eth0` (the first stable workload of each service has them).
    pub service_addrs: Vec<Ipv4Addr>,
    slot: usize,
    procs: Vec<Handle>,
}

/// The running workloads and how to make more.
#[derive(Debug)]
pub struct Workloads {
    ctx: Context,
    /// In creation order.
    pub live: Vec<Live>,
    /// The next veth index: never reused, because a deleted veth can linger for a moment.
    next_index: usize,
    /// Where the search for a free address starts: addresses rotate, so a retired workload's
    /// address is not handed to the next canary while the controller may still list it.
    next_slot: usize,
}

impl Live {
    /// Its supervised processes: the proxy, then the workload's command.
    pub fn procs(&self) -> &[Handle] {
        &self.procs
    }
}

impl Workloads {
    /// No workloads yet.
    pub fn new(ctx: Context) -> Self {
        Workloads {
            ctx,
            live: Vec::new(),
            next_index: 0,
            next_slot: 0,
        }
    }

    /// The shared context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The workload named `name`.
    pub fn get(&self, name: &str) -> Option<&Live> {
        self.live.iter().find(|l| l.name == name)
    }

    /// Creates the namespace of a new workload (veth, addresses, hosts, `sluice-proxy init`)
    /// without starting anything in it. Recorded in `rec` before each step; a failure leaves
    /// what was made to [`Workloads::remove`] or the final teardown.
    pub fn create(
        &mut self,
        rec: &mut Record,
        name: &str,
        base: &Workload,
        version: &str,
        canary: bool,
        service_addrs: Vec<Ipv4Addr>,
    ) -> Result<&Live, String> {
        if self.get(name).is_some() {
            return Err(format!("a workload named `{name}` is already running"));
        }
        let index = self.next_index;
        if index > MAX_VETH_INDEX {
            return Err("too many workloads created in this run; restart sluice up".into());
        }
        let used: Vec<usize> = self.live.iter().map(|l| l.slot).collect();
        let slot = (0..SLOTS)
            .map(|k| (self.next_slot + k) % SLOTS)
            .find(|s| !used.contains(s))
            .ok_or_else(|| format!("no free address: at most {SLOTS} workloads run at once"))?;
        self.next_index += 1;
        self.next_slot = slot + 1;
        let id = &self.ctx.run_id;
        let ns = format!("sluice-{id}-{name}");
        let veth = format!("sl{id}v{index}");
        let addr = self.ctx.subnet.workload(slot);
        self.live.push(Live {
            name: name.to_owned(),
            base: base.name.clone(),
            service: base.service.clone(),
            version: version.to_owned(),
            canary,
            role: String::new(),
            ns: ns.clone(),
            veth: veth.clone(),
            addr,
            service_addrs: service_addrs.clone(),
            slot,
            procs: Vec::new(),
        });
        net::create_namespace(rec, &ns, &veth, &self.ctx.bridge, addr, &service_addrs)?;
        net::write_hosts(rec, &ns, &self.ctx.hosts)?;
        net::run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            &self.ctx.proxy_bin.display().to_string(),
            "init",
            "--proxy-uid",
            &PROXY_UID.to_string(),
        ])
        .map_err(|e| format!("sluice-proxy init in {ns}: {e}"))?;
        self.get(name)
            .ok_or_else(|| format!("`{name}` vanished while it was created"))
    }

    /// Starts `name`'s proxy and command (`config`, from its base workload's `versions`).
    pub fn start(
        &mut self,
        sup: &mut Supervisor,
        name: &str,
        base: &Workload,
        config: &VersionConfig,
    ) -> Result<(), String> {
        let ctx = &self.ctx;
        let Some(live) = self.live.iter_mut().find(|l| l.name == name) else {
            return Err(format!("no workload named `{name}`"));
        };
        let identity =
            WorkloadIdentity::new("default", &live.service).map_err(|e| e.to_string())?;
        let token = ctx.tokens.issue(&identity, TOKEN_TTL, SystemTime::now());
        let uid = PROXY_UID.to_string();
        let color = live.slot + 1;
        let proxy = sup.start(Spec {
            label: format!("{name}/proxy"),
            color,
            argv: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                live.ns.clone(),
                "setpriv".into(),
                "--reuid".into(),
                uid.clone(),
                "--regid".into(),
                uid,
                "--clear-groups".into(),
                ctx.proxy_bin.display().to_string(),
            ],
            env: [
                (
                    "SLUICE_PROXY_INBOUND_ADDR",
                    format!("0.0.0.0:{INBOUND_PORT}"),
                ),
                (
                    "SLUICE_PROXY_CONTROLLER_ADDR",
                    format!("https://{}", ctx.controller_addr),
                ),
                (
                    "SLUICE_PROXY_CONTROLLER_CA",
                    ctx.controller_ca.display().to_string(),
                ),
                ("SLUICE_PROXY_IDENTITY_TOKEN", token),
                ("SLUICE_PROXY_SERVICE", live.service.clone()),
                ("SLUICE_PROXY_SERVICE_VERSION", live.version.clone()),
                ("SLUICE_PROXY_ENVIRONMENT", base.environment.clone()),
                ("SLUICE_PROXY_INSTANCE", name.to_owned()),
                ("SLUICE_PROXY_ROLE", live.role.clone()),
                ("SLUICE_PROXY_ID", format!("{name}-{}", ctx.run_id)),
                // Policy and endpoints come from the controller's Watch stream; the proxy
                // registers this workload at its own address, as a pod's sidecar would. So a
                // canary becomes an endpoint of its version as soon as its proxy is up.
                ("SLUICE_PROXY_CONFIG_SOURCE", "controller".to_owned()),
                (
                    "SLUICE_PROXY_REGISTER_ADDR",
                    format!("{}:{}", live.addr, base.port),
                ),
            ]
            .into_iter()
            // Plain logs when `sluice up`'s own output is plain (tracing honours NO_COLOR).
            .chain((!ctx.color).then(|| ("NO_COLOR", "1".to_owned())))
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            dir: None,
            log_file: None,
        });
        let mut argv = vec!["ip".into(), "netns".into(), "exec".into(), live.ns.clone()];
        argv.extend(config.command.iter().cloned());
        let command = sup.start(Spec {
            label: name.to_owned(),
            color,
            argv,
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            dir: Some(ctx.mesh_dir.clone()),
            log_file: Some(ctx.logs_dir.join(format!("{name}.log"))),
        });
        live.procs = vec![proxy, command];
        Ok(())
    }

    /// Creates and starts `new` while the mesh runs; on failure, removes what was made.
    pub fn add(
        &mut self,
        rec: &mut Record,
        sup: &mut Supervisor,
        new: NewInstance<'_>,
    ) -> Result<&Live, String> {
        let NewInstance {
            name,
            base,
            version,
            role,
            config,
        } = new;
        if self.get(name).is_some() {
            return Err(format!("a workload named `{name}` is already running"));
        }
        let created = self
            .create(rec, name, base, version, true, Vec::new())
            .map(|live| live.name.clone())
            .and_then(|name| {
                if let Some(l) = self.live.iter_mut().find(|l| l.name == name) {
                    l.role = role.to_owned();
                }
                self.start(sup, &name, base, config)
            });
        if let Err(e) = created {
            if let Err(cleanup) = self.remove(rec, sup, name) {
                return Err(format!("{e}; and removing it again: {cleanup}"));
            }
            return Err(e);
        }
        self.get(name)
            .ok_or_else(|| format!("`{name}` vanished while it was started"))
    }

    /// Stops `name`'s processes and removes its namespace. The service addresses it carried
    /// go with it: move them first ([`Workloads::move_service_addrs`]).
    pub fn remove(
        &mut self,
        rec: &mut Record,
        sup: &mut Supervisor,
        name: &str,
    ) -> Result<(), String> {
        let Some(i) = self.live.iter().position(|l| l.name == name) else {
            return Ok(());
        };
        sup.stop_some(&self.live[i].procs, STOP_DEADLINE);
        self.live[i].procs.clear();
        net::remove_namespace(rec, &self.live[i].ns, &self.live[i].veth)?;
        self.live.remove(i);
        Ok(())
    }

    /// Moves the service addresses of `from` to `to` (a promotion retiring `from`), so that the
    /// service's address stays on a live namespace.
    pub fn move_service_addrs(&mut self, from: &str, to: &str) -> Result<(), String> {
        let (Some(f), Some(t)) = (
            self.live.iter().position(|l| l.name == from),
            self.live.iter().position(|l| l.name == to),
        ) else {
            return Err(format!("cannot move addresses from `{from}` to `{to}`"));
        };
        let addrs = self.live[f].service_addrs.clone();
        for a in &addrs {
            net::move_address(&self.live[f].ns, &self.live[t].ns, *a)?;
            self.live[f].service_addrs.retain(|x| x != a);
            self.live[t].service_addrs.push(*a);
        }
        Ok(())
    }

    /// Marks a canary as stable (its rollout was promoted).
    pub fn make_stable(&mut self, name: &str) {
        if let Some(l) = self.live.iter_mut().find(|l| l.name == name) {
            l.canary = false;
        }
    }
}

/// An instance to start beside the running mesh: `version` of `base`'s service, with `role`
/// (empty for a canary; `baseline` for a rollout's fresh copy of the stable version).
#[derive(Clone, Copy, Debug)]
pub struct NewInstance<'a> {
    /// The workload's (and namespace's) name.
    pub name: &'a str,
    /// The mesh file's workload it is a version of.
    pub base: &'a Workload,
    /// The version it runs.
    pub version: &'a str,
    /// Its role in the rollout.
    pub role: &'a str,
    /// How that version runs.
    pub config: &'a VersionConfig,
}
