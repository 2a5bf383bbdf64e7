//! `sluice-proxy init`: installs the iptables `nat` rules that send the workload's TCP traffic
//! through the proxy, in the current network namespace.
//!
//! All rules live in two dedicated chains, `SLUICE_INBOUND` (jumped to from `PREROUTING`) and
//! `SLUICE_OUTBOUND` (from `OUTPUT`), and every rule carries a `sluice:` comment, so the rules
//! are easy to find and `--remove` deletes exactly what was added. Installing flushes and
//! refills the chains and adds each jump only if missing, so running it twice changes nothing.
//! The `iptables`/`ip6tables` binaries do the work, which keeps us compatible with both the
//! nft and legacy backends.

use std::net::IpAddr;
use std::process::Command;

/// Chain for traffic arriving at the workload.
pub const INBOUND_CHAIN: &str = "SLUICE_INBOUND";
/// Chain for traffic the workload sends.
pub const OUTBOUND_CHAIN: &str = "SLUICE_OUTBOUND";

/// Which iptables implementation to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Whichever already holds Sluice chains; otherwise nft, then legacy, then `iptables`.
    Auto,
    /// `iptables-nft` / `ip6tables-nft`.
    Nft,
    /// `iptables-legacy` / `ip6tables-legacy`.
    Legacy,
}

/// Whether to program IPv6 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// If `ip6tables` exists; failures are warnings.
    Auto,
    /// Required; failures are errors.
    On,
    /// IPv4 only.
    Off,
}

/// `sluice-proxy init` flags; each can also come from the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// Remove the rules (and chains) instead of installing them.
    #[arg(long)]
    pub remove: bool,
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// UID the proxy runs as; its own traffic is never redirected (that would loop).
    #[arg(long, env = "SLUICE_INIT_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Port of the proxy's inbound listener.
    #[arg(long, env = "SLUICE_INIT_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener.
    #[arg(long, env = "SLUICE_INIT_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// Port of the proxy's admin listener; never redirected inbound, so probes reach it.
    #[arg(long, env = "SLUICE_INIT_ADMIN_PORT", default_value_t = 4191)]
    pub admin_port: u16,
    /// Inbound destination ports (or `lo:hi` ranges) that bypass the proxy.
    #[arg(long, env = "SLUICE_INIT_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<String>,
    /// Outbound destination ports (or `lo:hi` ranges) that bypass the proxy.
    #[arg(long, env = "SLUICE_INIT_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<String>,
    /// Outbound destination subnets (CIDR, IPv4 or IPv6) that bypass the proxy.
    #[arg(long, env = "SLUICE_INIT_SKIP_SUBNETS", value_delimiter = ',')]
    pub skip_subnets: Vec<String>,
    /// iptables implementation.
    #[arg(long, env = "SLUICE_INIT_IPTABLES", value_enum, default_value = "auto")]
    pub backend: Backend,
    /// IPv6 handling.
    #[arg(long, env = "SLUICE_INIT_IPV6", value_enum, default_value = "auto")]
    pub ipv6: Ipv6,
    /// Also copy this executable into DIR (a volume shared with the app containers), so a
    /// classic-sidecar Job can run its app under `sluice-proxy await`.
    #[arg(long, value_name = "DIR", env = "SLUICE_INIT_COPY_TO")]
    pub copy_to: Option<std::path::PathBuf>,
}

/// Why init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// No usable iptables binary.
    #[error("no iptables binary found ({0}); install the `iptables` package")]
    NoIptables(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
}

impl InitError {
    /// 64 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Usage(_) => 64,
            _ => 1,
        }
    }
}

/// IP family of a rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

/// One rule: the chain to append to and the match/target arguments (without `-A CHAIN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Chain name.
    pub chain: &'static str,
    /// Arguments after `-A chain`.
    pub args: Vec<String>,
}

fn rule(chain: &'static str, matches: &[&str], comment: &str, target: &[&str]) -> Rule {
    let mut args: Vec<String> = matches.iter().map(|s| (*s).to_owned()).collect();
    args.extend(["-m", "comment", "--comment"].map(String::from));
    args.push(format!("sluice: {comment}"));
    args.extend(target.iter().map(|s| (*s).to_owned()));
    Rule { chain, args }
}

/// The rules for one family: `(chain rules, jump rules)`. Pure, so it is unit-tested.
pub fn plan(args: &InitArgs, family: Family) -> Result<(Vec<Rule>, Vec<Rule>), InitError> {
    let mut chain = Vec::new();
    let skip_in = args
        .skip_inbound_ports
        .iter()
        .cloned()
        .chain([args.admin_port.to_string()]);
    for port in skip_in {
        let port = check_port(&port)?;
        chain.push(rule(
            INBOUND_CHAIN,
            &["-p", "tcp", "--dport", &port],
            &format!("skip inbound port {port}"),
            &["-j", "RETURN"],
        ));
    }
    let to_in = args.inbound_port.to_string();
    chain.push(rule(
        INBOUND_CHAIN,
        &["-p", "tcp"],
        "redirect inbound to proxy",
        &["-j", "REDIRECT", "--to-ports", &to_in],
    ));

    let uid = args.proxy_uid.to_string();
    chain.push(rule(
        OUTBOUND_CHAIN,
        &["-m", "owner", "--uid-owner", &uid],
        "proxy's own traffic",
        &["-j", "RETURN"],
    ));
    chain.push(rule(
        OUTBOUND_CHAIN,
        &["-o", "lo"],
        "loopback",
        &["-j", "RETURN"],
    ));
    for port in &args.skip_outbound_ports {
        let port = check_port(port)?;
        chain.push(rule(
            OUTBOUND_CHAIN,
            &["-p", "tcp", "--dport", &port],
            &format!("skip outbound port {port}"),
            &["-j", "RETURN"],
        ));
    }
    for subnet in &args.skip_subnets {
        let (net, fam) = check_subnet(subnet)?;
        if fam == family {
            chain.push(rule(
                OUTBOUND_CHAIN,
                &["-d", &net],
                &format!("skip subnet {net}"),
                &["-j", "RETURN"],
            ));
        }
    }
    let to_out = args.outbound_port.to_string();
    chain.push(rule(
        OUTBOUND_CHAIN,
        &["-p", "tcp"],
        "redirect outbound to proxy",
        &["-j", "REDIRECT", "--to-ports", &to_out],
    ));

    let jumps = vec![
        rule(
            "PREROUTING",
            &["-p", "tcp"],
            "inbound",
            &["-j", INBOUND_CHAIN],
        ),
        rule(
            "OUTPUT",
            &["-p", "tcp"],
            "outbound",
            &["-j", OUTBOUND_CHAIN],
        ),
    ];
    Ok((chain, jumps))
}

fn check_port(p: &str) -> Result<String, InitError> {
    let p = p.trim();
    let ok = |s: &str| s.parse::<u16>().is_ok_and(|n| n > 0);
    let valid = match p.split_once(':') {
        Some((lo, hi)) => ok(lo) && ok(hi),
        None => ok(p),
    };
    if valid {
        Ok(p.to_owned())
    } else {
        Err(InitError::Usage(format!(
            "`{p}` is not a port or lo:hi port range"
        )))
    }
}

fn check_subnet(s: &str) -> Result<(String, Family), InitError> {
    let s = s.trim();
    let bad = || InitError::Usage(format!("`{s}` is not a CIDR subnet (e.g. 10.0.0.0/8)"));
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let (max, fam) = if ip.is_ipv4() {
        (32, Family::V4)
    } else {
        (128, Family::V6)
    };
    if len > max {
        return Err(bad());
    }
    Ok((format!("{ip}/{len}"), fam))
}

/// Runs `init` (or `init --remove`) for every family that applies.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    // Validate everything before touching the firewall.
    plan(args, Family::V4)?;
    if let Some(dir) = &args.copy_to
        && !args.dry_run
    {
        copy_self(dir)?;
    }
    let v4 = binary(args.backend, Family::V4)?;
    apply(args, Family::V4, &v4)?;
    if args.ipv6 == Ipv6::Off {
        return Ok(());
    }
    match binary(args.backend, Family::V6).and_then(|v6| apply(args, Family::V6, &v6)) {
        Ok(()) => Ok(()),
        Err(e) if args.ipv6 == Ipv6::Auto => {
            eprintln!("sluice-proxy init: skipping IPv6: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Copies the running executable to `dir/sluice-proxy`, executable by everyone.
fn copy_self(dir: &std::path::Path) -> Result<(), InitError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str, e: std::io::Error| InitError::Command {
        command: format!("copy sluice-proxy to {}", dir.display()),
        stderr: format!("{what}: {e}"),
    };
    let me = std::env::current_exe().map_err(|e| fail("cannot find this executable", e))?;
    let target = dir.join("sluice-proxy");
    std::fs::copy(&me, &target).map_err(|e| fail("copy", e))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("chmod", e))
}

fn apply(args: &InitArgs, family: Family, bin: &str) -> Result<(), InitError> {
    let (chain_rules, jumps) = plan(args, family)?;
    let ipt = Iptables {
        bin,
        dry_run: args.dry_run,
    };
    if args.remove {
        for jump in &jumps {
            // Bounded: a rule added more than once by hand is removed in full, but never loop.
            for _ in 0..16 {
                if !ipt.ok(&jump_args("-C", jump)) {
                    break;
                }
                ipt.run(&jump_args("-D", jump))?;
                if args.dry_run {
                    break;
                }
            }
        }
        for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
            if ipt.ok(&["-t", "nat", "-L", chain, "-n"]) {
                ipt.run(&["-t", "nat", "-F", chain])?;
                ipt.run(&["-t", "nat", "-X", chain])?;
            }
        }
        return Ok(());
    }
    for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
        if ipt.ok(&["-t", "nat", "-L", chain, "-n"]) {
            ipt.run(&["-t", "nat", "-F", chain])?;
        } else {
            ipt.run(&["-t", "nat", "-N", chain])?;
        }
    }
    for r in &chain_rules {
        ipt.run(&jump_args("-A", r))?;
    }
    for jump in &jumps {
        if !ipt.ok(&jump_args("-C", jump)) {
            ipt.run(&jump_args("-A", jump))?;
        }
    }
    Ok(())
}

fn jump_args<'a>(op: &'a str, r: &'a Rule) -> Vec<&'a str> {
    let mut v = vec!["-t", "nat", op, r.chain];
    v.extend(r.args.iter().map(String::as_str));
    v
}

struct Iptables<'a> {
    bin: &'a str,
    dry_run: bool,
}

impl Iptables<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        // Wait for the xtables lock instead of failing when another tool holds it.
        c.args(["-w", "5"]).args(args);
        c
    }

    /// Runs a check (`-C`, `-L`); in dry-run mode pretends nothing exists yet.
    fn ok(&self, args: &[&str]) -> bool {
        !self.dry_run
            && self
                .command(args)
                .output()
                .is_ok_and(|o| o.status.success())
    }

    fn run(&self, args: &[&str]) -> Result<(), InitError> {
        let line = format!("{} {}", self.bin, shell_words(args));
        if self.dry_run {
            println!("{line}");
            return Ok(());
        }
        let out = self
            .command(args)
            .output()
            .map_err(|e| InitError::Command {
                command: line.clone(),
                stderr: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(InitError::Command {
                command: line,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Picks the binary for `family`.
fn binary(backend: Backend, family: Family) -> Result<String, InitError> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let nft = format!("{base}-nft");
    let legacy = format!("{base}-legacy");
    let candidates = match backend {
        Backend::Nft => vec![nft],
        Backend::Legacy => vec![legacy],
        Backend::Auto => {
            // Rules already installed by one backend must be updated (or removed) there.
            let has_ours = |bin: &str| {
                Command::new(bin)
                    .args(["-w", "5", "-t", "nat", "-L", OUTBOUND_CHAIN, "-n"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            let installed = [&nft, &legacy].into_iter().find(|b| has_ours(b)).cloned();
            match installed {
                Some(b) => vec![b],
                None => vec![nft, legacy, base.to_owned()],
            }
        }
    };
    candidates
        .iter()
        .find(|b| {
            Command::new(b.as_str())
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .cloned()
        .ok_or_else(|| InitError::NoIptables(candidates.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: InitArgs,
    }

    fn args(flags: &[&str]) -> InitArgs {
        Wrapper::try_parse_from([&["init"], flags].concat())
            .expect("flags parse")
            .args
    }

    #[test]
    fn plan_has_skips_uid_loopback_and_comments() {
        let a = args(&[
            "--proxy-uid",
            "999",
            "--skip-inbound-ports",
            "22,8000:8100",
            "--skip-outbound-ports",
            "5432",
            "--skip-subnets",
            "10.0.0.0/8,fd00::/8",
        ]);
        let (chain, jumps) = plan(&a, Family::V4).expect("valid");
        let lines: Vec<String> = chain
            .iter()
            .map(|r| format!("{} {}", r.chain, r.args.join(" ")))
            .collect();
        let text = lines.join("\n");
        assert!(
            text.contains("SLUICE_INBOUND -p tcp --dport 8000:8100"),
            "{text}"
        );
        assert!(text.contains("--dport 4191"), "admin port skipped: {text}");
        assert!(text.contains("--uid-owner 999"), "{text}");
        assert!(text.contains("-o lo"), "{text}");
        assert!(text.contains("-d 10.0.0.0/8"), "{text}");
        assert!(
            !text.contains("fd00::/8"),
            "v6 subnet not in v4 rules: {text}"
        );
        assert!(
            chain
                .iter()
                .chain(&jumps)
                .all(|r| r.args.iter().any(|a| a.starts_with("sluice: ")))
        );
        assert!(
            lines
                .last()
                .is_some_and(|l| l.ends_with("REDIRECT --to-ports 4140"))
        );
        let (v6, _) = plan(&a, Family::V6).expect("valid");
        assert!(v6.iter().any(|r| r.args.contains(&"fd00::/8".to_owned())));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(plan(&args(&["--skip-inbound-ports", "0"]), Family::V4).is_err());
        assert!(plan(&args(&["--skip-subnets", "10.0.0.0/33"]), Family::V4).is_err());
        assert!(plan(&args(&["--skip-subnets", "nope"]), Family::V4).is_err());
    }
}
