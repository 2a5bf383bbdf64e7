//! Kubelet probes: the health checks a pod spec declares, which the sidecar lets through
//! without a mesh identity and without an `unauthenticated` exemption in any AccessPolicy.
//!
//! The kubelet calls a container's HTTP probes in plain text from the node, so under
//! default-deny they would be refused and the pod restarted forever (the most reported mesh
//! problem: linkerd2#7143, #10877, istio#4429). The injector reads the pod's `httpGet` and
//! `grpc` liveness, readiness and startup probes into a [`ProbeSet`]; the proxy gets it in
//! `SLUICE_PROXY_PROBES` and allows exactly those calls: `GET` of that path (the query string
//! is not part of the match, as for every HTTP rule) on that port, or the gRPC health check
//! `grpc.health.v1.Health/Check` on a gRPC probe's port. Nothing else, on no other port.
//!
//! The text form (`8080/ready,8080/live,9090=grpc`) is what the injector writes into the pod
//! spec, so it is parsed strictly: a mistake there is a configuration error, not a silently
//! wider exemption.

use std::fmt;

use crate::authz::{Decision, Reason, Verdict};
use crate::rpc::Rpc;

/// What `explain`, the logs and the service page call this exemption.
pub const ORIGIN: &str = "kubelet probe (from the pod spec)";

/// One probe the kubelet makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// `httpGet` on `port` at `path` (without a query string).
    Http {
        /// The container port.
        port: u16,
        /// The path, starting with `/`.
        path: String,
    },
    /// `grpc` on `port`: `grpc.health.v1.Health/Check`.
    Grpc {
        /// The container port.
        port: u16,
    },
}

impl Probe {
    /// The port the kubelet calls.
    pub fn port(&self) -> u16 {
        match self {
            Probe::Http { port, .. } | Probe::Grpc { port } => *port,
        }
    }

    /// The call it makes, as policy writes calls.
    pub fn rpc(&self) -> Rpc {
        match self {
            Probe::Http { path, .. } => Rpc::http("GET", path.clone()),
            Probe::Grpc { .. } => Rpc::grpc("grpc.health.v1.Health", "Check"),
        }
    }

    fn matches(&self, rpc: &Rpc) -> bool {
        match (self, rpc) {
            (Probe::Http { path, .. }, Rpc::Http { method, path: p }) => {
                method == "GET" && p.split('?').next() == Some(path.as_str())
            }
            (Probe::Grpc { .. }, Rpc::Grpc { service, method }) => {
                service == "grpc.health.v1.Health" && method == "Check"
            }
            _ => false,
        }
    }
}

impl fmt::Display for Probe {
    /// `GET /ready on port 8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on port {}", self.rpc(), self.port())
    }
}

/// Why a `SLUICE_PROXY_PROBES` value is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}`: {reason}; write `PORT/PATH` (8080/ready) or `PORT=grpc`, comma-separated")]
pub struct ProbeSyntaxError {
    /// The entry that is wrong.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The probes of one pod, sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeSet(Vec<Probe>);

impl ProbeSet {
    /// A set of `probes`.
    pub fn new(mut probes: Vec<Probe>) -> ProbeSet {
        probes.sort();
        probes.dedup();
        ProbeSet(probes)
    }

    /// The probes.
    pub fn probes(&self) -> &[Probe] {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the text form (see the module docs). Paths must be plain: no query, no `,`,
    /// no whitespace or control characters, no `.`/`..` segments.
    pub fn parse(text: &str) -> Result<ProbeSet, ProbeSyntaxError> {
        let mut probes = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |reason| ProbeSyntaxError {
                entry: entry.to_owned(),
                reason,
            };
            let (port, rest, grpc) = match (entry.split_once('='), entry.find('/')) {
                (Some((port, "grpc")), _) => (port, "", true),
                (Some(_), _) => return Err(bad("only `grpc` may follow `=`")),
                (None, Some(i)) => (&entry[..i], &entry[i..], false),
                (None, None) => return Err(bad("no path")),
            };
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
            if grpc {
                probes.push(Probe::Grpc { port });
                continue;
            }
            if !plain_path(rest) {
                return Err(bad(
                    "the path must be plain (no query, spaces, `..` or empty segments)",
                ));
            }
            probes.push(Probe::Http {
                port,
                path: rest.to_owned(),
            });
        }
        Ok(ProbeSet::new(probes))
    }

    /// The probe that allows `rpc` to `port`, if any; `None` for `port` checks every port
    /// (what `explain` does when no port is given).
    pub fn find(&self, port: Option<u16>, rpc: &Rpc) -> Option<&Probe> {
        self.0
            .iter()
            .find(|p| port.is_none_or(|port| p.port() == port) && p.matches(rpc))
    }

    /// The decision for a call the policy did not allow but a probe does.
    pub fn decide(&self, port: Option<u16>, rpc: &Rpc) -> Option<Decision> {
        self.find(port, rpc).map(|probe| Decision {
            verdict: Verdict::Allow,
            reason: Reason::KubeletProbe,
            policy: None,
            rule: None,
            pattern: Some(probe.to_string().into()),
        })
    }
}

/// Whether `path` is one a probe may exempt: what the proxy forwards byte for byte.
pub fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(|c: char| c == '?' || c == ',' || c == '%' || c == '\\' || c <= ' ')
        && (path == "/"
            || path[1..]
                .split('/')
                .all(|s| !(s.is_empty() || s == "." || s == "..")))
}

impl fmt::Display for ProbeSet {
    /// The text form [`ProbeSet::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match p {
                Probe::Http { port, path } => write!(f, "{port}{path}")?,
                Probe::Grpc { port } => write!(f, "{port}=grpc")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_matches_exactly_the_declared_calls() {
        let set = ProbeSet::parse("8080/ready, 8080/live,9090=grpc,8080/ready").expect("valid");
        assert_eq!(set.to_string(), "8080/live,8080/ready,9090=grpc");
        assert_eq!(ProbeSet::parse(&set.to_string()), Ok(set.clone()));
        let get = |p: &str| Rpc::http("GET", p);
        for (port, rpc, allowed) in [
            (8080, get("/ready"), true),
            (8080, get("/ready?verbose=1"), true),
            (8080, get("/live"), true),
            (8080, get("/admin"), false),
            (8080, get("/ready/x"), false),
            (8080, get("/readyz"), false),
            (8081, get("/ready"), false),
            (8080, Rpc::http("POST", "/ready"), false),
            (8080, Rpc::http("DELETE", "/live"), false),
            (9090, Rpc::grpc("grpc.health.v1.Health", "Check"), true),
            (9090, Rpc::grpc("grpc.health.v1.Health", "Watch"), false),
            (8080, Rpc::grpc("grpc.health.v1.Health", "Check"), false),
            (8080, Rpc::tcp(8080), false),
        ] {
            let d = set.decide(Some(port), &rpc);
            assert_eq!(d.is_some(), allowed, "{rpc} on {port}");
        }
        let d = set.decide(None, &get("/ready")).expect("any port");
        assert_eq!(
            d.explain(),
            "allowed without identity: kubelet probe (from the pod spec): `GET /ready on port 8080`"
        );
    }

    #[test]
    fn refuses_what_would_widen_the_exemption() {
        for bad in [
            "ready",
            "0/ready",
            "70000/ready",
            "8080/a/../admin",
            "8080/ready?x=1",
            "8080//admin",
            "8080/a b",
            "8080/%2e%2e",
            "8080=http",
            "x/ready",
        ] {
            assert!(ProbeSet::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ProbeSet::parse(""), Ok(ProbeSet::default()));
    }
}
