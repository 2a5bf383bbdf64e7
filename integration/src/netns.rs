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
