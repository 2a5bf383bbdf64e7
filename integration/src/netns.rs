//! Network namespaces for interception tests. Everything is created inside namespaces the
//! test owns (addresses in a private range that exists only there) and removed on drop, also
//! when the test fails.

use std::process::{Command, Output};

/// A network namespace; its processes are killed and it is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// Creates `name` with loopback up.
    pub fn create(name: &str) -> Result<Netns, String> {
        // A leftover from a crashed earlier run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside the namespace; an error if it fails.
    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        run(&mut self.command(args))
    }

    /// The `ip netns exec NAME` prefix, for [`crate::ProxyOptions::wrapper`].
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes this test started live in the namespace; end them by pid.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command; an error with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Netns {
    /// A TCP listener bound to `addr` inside the namespace, for a server the test runs in its
    /// own process (e.g. [`crate::upstream::http_on`]): a thread enters the namespace, binds,
    /// and ends; the socket stays in the namespace it was made in. Non-blocking, ready for
    /// tokio.
    pub fn bind_tcp(&self, addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path}: {e}"))?;
            let listener =
                std::net::TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("nonblocking: {e}"))?;
            Ok(listener)
        })
        .join()
        .map_err(|_| "the thread binding in the namespace panicked".to_owned())?
    }
}

/// A bridge on the host joining a test's namespaces, as `sluice up` joins its workloads'
/// (`controller/src/up/net.rs`): the host's address on it in a private /24 that exists only
/// there (no default route into the namespaces, no NAT), so the controller on the host is
/// reachable from every namespace and nothing the namespaces send goes anywhere else. Deleted
/// on drop (the namespaces' veths go with their namespaces).
#[derive(Debug)]
pub struct Bridge {
    /// The link's name.
    pub name: String,
    net: [u8; 3],
}

impl Bridge {
    /// Creates bridge `name` on the first /24 of `10.{second}.0.0/16` that no interface here
    /// uses, starting at one derived from the process id (parallel test binaries rarely probe
    /// the same one), with the host at `.1`.
    pub fn create(name: &str, second: u8) -> Result<Bridge, String> {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        let addrs = run(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
        let used = String::from_utf8_lossy(&addrs.stdout).into_owned();
        let start = std::process::id() % 250;
        let third = (0..250)
            .map(|i| ((start + i) % 250 + 1) as u8)
            .find(|n| !used.contains(&format!(" 10.{second}.{n}.")))
            .ok_or_else(|| format!("no free /24 in 10.{second}.0.0/16"))?;
        run(Command::new("ip").args(["link", "add", name, "type", "bridge"]))?;
        let bridge = Bridge {
            name: name.to_owned(),
            net: [10, second, third],
        };
        // Bridged frames must not go through the host's iptables (br_netfilter), as in
        // `sluice up`; older kernels lack the knob.
        let _ = Command::new("ip")
            .args([
                "link",
                "set",
                name,
                "type",
                "bridge",
                "nf_call_iptables",
                "0",
            ])
            .output();
        let host = format!("{}/24", bridge.host());
        run(Command::new("ip").args(["addr", "add", &host, "dev", name]))?;
        run(Command::new("ip").args(["link", "set", name, "up"]))?;
        Ok(bridge)
    }

    /// The host's address on the bridge.
    pub fn host(&self) -> std::net::Ipv4Addr {
        self.addr(1)
    }

    /// Address `.i` of the bridge's /24.
    pub fn addr(&self, i: u8) -> std::net::Ipv4Addr {
        let [a, b, c] = self.net;
        std::net::Ipv4Addr::new(a, b, c, i)
    }

    /// Joins `ns` to the bridge: a veth pair with `host_end` on the bridge and `eth0` in the
    /// namespace, at `ip` in the bridge's /24.
    pub fn attach(&self, ns: &Netns, host_end: &str, ip: std::net::Ipv4Addr) -> Result<(), String> {
        let inner = format!("{host_end}p");
        run(Command::new("ip").args([
            "link", "add", host_end, "type", "veth", "peer", "name", &inner, "netns", &ns.name,
        ]))?;
        run(Command::new("ip").args(["link", "set", host_end, "master", &self.name]))?;
        run(Command::new("ip").args(["link", "set", host_end, "up"]))?;
        ns.run(&["ip", "link", "set", &inner, "name", "eth0"])?;
        ns.run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.run(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}
