//! Inbound authorization: may this caller make this call to the local service, under the
//! policy in force *now*?
//!
//! Every request (and every opaque TCP connection) reads the current [`ProxyState`] from the
//! shared `ArcSwap`, so a policy change reaches connections that are already open on their
//! next request. The decision itself is the policy crate's ([`Snapshot::decide`]); this module
//! turns it into what the proxy does: forward, forward and count "would deny", or build a
//! [`Denial`] that the one error-mapping place renders for the client.
//!
//! [`ProxyState`]: crate::state::ProxyState
//! [`Snapshot::decide`]: sluice_policy::Snapshot::decide

pub mod report;

use std::sync::Arc;

use sluice_policy::Snapshot;
use sluice_policy::authz::{Caller, Decision, Reason, Verdict};
use sluice_policy::resources::DenialDetail;
use sluice_policy::rpc::Rpc;

use crate::identity::SpiffeId;
use crate::metrics::{AuthzLabels, Metrics};
use crate::state::SharedState;
pub use report::Reporter;

/// The call an opaque TCP connection to `port` stands for: `tcp:PORT`, granted only by
/// `tcp:PORT` or `tcp`, never by an HTTP or gRPC pattern (not even `* /*`).
pub fn tcp_rpc(port: u16) -> Rpc {
    Rpc::tcp(port)
}

/// Label for calls that match no endpoint the callee declares (keeps metrics bounded).
pub const UNDECLARED: &str = "undeclared";

/// Everything a client is told about a denied call, and what is reported to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The caller as policy names it (`checkout`, `shop/checkout`) or `unauthenticated`.
    pub caller: String,
    /// The caller's verified SPIFFE ID, if it has one.
    pub caller_id: Option<String>,
    /// The callee's namespace.
    pub namespace: String,
    /// The callee (this proxy's service).
    pub service: String,
    /// The call, as the policy language writes it (`POST /v1/charges`).
    pub rpc: String,
    /// The callee's declared endpoint that the call matched, if any.
    pub endpoint: Option<String>,
    /// The policies that governed the decision; empty when none exists (mesh default).
    pub policies: Vec<String>,
    /// Why, as one line (`Decision::explain`).
    pub explain: String,
    /// Stable short reason (`no-rule-allows`, `default-deny`, `unauthenticated`...).
    pub reason: &'static str,
    /// The environment the call was made in: the callee's own, or for a stable (shared)
    /// callee the one the request names, so a developer in `pr-1` sees `pr-1`.
    pub environment: String,
    /// The pre-filled access-request form.
    pub request_access: String,
    /// Correlates the client's error with logs and the portal.
    pub request_id: String,
    /// `<proxy-id>/<service>`: which sidecar said no.
    pub denied_by: String,
    /// Whether policy names may be shown (meshed callers always; unauthenticated callers only
    /// when the mesh says `unauthenticatedDenials: full`).
    pub full: bool,
    /// `deny`, or `audit-deny` for reports of calls that were let through.
    pub verdict: Verdict,
}

impl Denial {
    /// The one sentence every format carries.
    pub fn sentence(&self) -> String {
        let who = if self.caller_id.is_some() || self.caller != "unauthenticated" {
            self.caller.clone()
        } else {
            "A caller without a mesh identity".to_owned()
        };
        format!(
            "{who} is not allowed to call {} on {}. Request access: {}",
            self.rpc, self.service, self.request_access
        )
    }

    /// The policy field: names, or "no policy allows this".
    pub fn policy_text(&self) -> String {
        if self.policies.is_empty() {
            "no policy allows this".to_owned()
        } else {
            self.policies.join(", ")
        }
    }
}

/// Decides inbound calls for the local workload.
#[derive(Debug)]
pub struct Authorizer {
    state: Arc<SharedState>,
    denied_by: String,
    metrics: Metrics,
    reporter: Reporter,
    probes: sluice_policy::probes::ProbeSet,
}

impl Authorizer {
    /// An authorizer for the workload `state` fronts.
    pub fn new(
        state: Arc<SharedState>,
        proxy_id: &str,
        metrics: Metrics,
        reporter: Reporter,
    ) -> Authorizer {
        let denied_by = format!("{proxy_id}/{}", state.local().service);
        Authorizer {
            state,
            denied_by,
            metrics,
            reporter,
            probes: Default::default(),
        }
    }

    /// Also allows the pod's kubelet probes (`SLUICE_PROXY_PROBES`): exactly those calls on
    /// exactly those ports, for any caller, when no policy allows them already.
    pub fn with_probes(mut self, probes: sluice_policy::probes::ProbeSet) -> Authorizer {
        self.probes = probes;
        self
    }

    /// Decides `rpc` to `port` (the connection's original destination port) from `peer`
    /// (None: no mesh identity) against the policy in force and the pod's kubelet probes,
    /// counts and logs it, reports denials, and returns the denial if the call must not go
    /// through. `asked` is called only when the call is not allowed (denials and audit logs
    /// carry what it returns), so an allowed call never makes up a request id.
    pub fn check(
        &self,
        peer: Option<&SpiffeId>,
        rpc: &Rpc,
        port: u16,
        asked: impl FnOnce() -> Asked,
    ) -> Result<(), Box<Denial>> {
        let state = self.state.load();
        let local = self.state.local();
        let caller = match peer {
            Some(id) => Caller::service(&id.namespace, &id.service),
            None => Caller::Unauthenticated,
        };
        let mut decision = state.decide_inbound(local, &caller, rpc);
        if decision.verdict != Verdict::Allow
            && let Some(probe) = self.probes.decide(Some(port), rpc)
        {
            decision = probe;
        }
        let policy = &state.policy;
        // The callee's declared endpoint this call matched: the metric's `rpc` label when no
        // rule pattern decided, and part of a denial. An allowed call with a pattern (the
        // common case) needs neither, and the search costs a third of the check.
        let endpoint = (decision.pattern.is_none() || decision.verdict != Verdict::Allow)
            .then(|| {
                policy
                    .service(&local.namespace, &local.service)
                    .and_then(|s| s.endpoints.iter().find(|p| p.matches(rpc)))
                    .map(ToString::to_string)
            })
            .flatten();
        let caller_label = caller.to_string();
        let labels = AuthzLabels {
            service: &local.service,
            caller: &caller_label,
            rpc: decision
                .pattern
                .as_deref()
                .or(endpoint.as_deref())
                .unwrap_or(UNDECLARED),
            policy: &policy_label(&decision),
        };
        self.metrics.authz(decision.verdict, &labels);
        if decision.verdict == Verdict::Allow {
            tracing::debug!(caller = %caller, %rpc, decision = %decision, "allowed");
            return Ok(());
        }
        let asked = asked();
        let request_id = asked.request_id.as_str();
        let environment = self.environment(asked.environment);
        let denial = self.denial(
            policy,
            &caller,
            peer,
            rpc,
            endpoint,
            &decision,
            request_id,
            environment,
        );
        self.reporter.report(&denial);
        if decision.verdict == Verdict::AuditDeny {
            tracing::info!(
                caller = %caller, %rpc, service = %local.service, policy = %denial.policy_text(),
                reason = denial.reason, request_id,
                "would deny (audit mode): {}", decision.explain()
            );
            return Ok(());
        }
        tracing::info!(
            caller = %caller, %rpc, service = %local.service, policy = %denial.policy_text(),
            reason = denial.reason, request_id,
            "denied: {}", decision.explain()
        );
        Err(Box::new(denial))
    }

    #[allow(clippy::too_many_arguments)]
    fn denial(
        &self,
        policy: &Snapshot,
        caller: &Caller,
        peer: Option<&SpiffeId>,
        rpc: &Rpc,
        endpoint: Option<String>,
        decision: &Decision,
        request_id: &str,
        environment: String,
    ) -> Denial {
        let local = self.state.local();
        let full = peer.is_some() || policy.mesh().unauthenticated_denials == DenialDetail::Full;
        let offered = sluice_policy::link::offered_rpc(endpoint.as_deref(), &rpc.to_string());
        Denial {
            caller: caller.to_string(),
            caller_id: peer.map(ToString::to_string),
            namespace: local.namespace.clone(),
            service: local.service.clone(),
            rpc: rpc.to_string(),
            endpoint,
            policies: decision
                .reason
                .governing()
                .iter()
                .map(|p| p.to_string())
                .collect(),
            explain: decision.explain(),
            reason: decision.reason.as_str(),
            request_access: policy.access_request_link(
                caller,
                &local.service,
                &offered,
                &environment,
            ),
            environment,
            request_id: request_id.to_owned(),
            denied_by: self.denied_by.clone(),
            full,
            verdict: decision.verdict,
        }
    }
}

/// What a denial needs from the request, asked for only when a call is not allowed.
#[derive(Clone, Debug, Default)]
pub struct Asked {
    /// Correlates the client's error with logs and the portal ([`request_id`]).
    pub request_id: String,
    /// The environment the request names (`sluice-env` baggage or header), if any.
    pub environment: Option<String>,
}

impl Authorizer {
    /// The environment a denial names. A copy's proxy names its own environment: only
    /// requests of that environment reach it. A stable proxy is shared by every environment,
    /// so it names the one the request came from, if the request names a valid one (the
    /// value is the client's: anything but a DNS label is ignored, never echoed).
    fn environment(&self, requested: Option<String>) -> String {
        let local = &self.state.local().environment;
        let shared = local.is_empty() || local == crate::state::endpoints::STABLE;
        match requested {
            Some(env) if shared && sluice_policy::validate::is_dns_label(&env) => env,
            _ => local.clone(),
        }
    }

    /// The environment `headers` name, by the local service's Route (its header, then its
    /// baggage member), or by the default `sluice-env` keys when no Route says otherwise.
    pub fn requested_environment(&self, headers: &http::HeaderMap) -> Option<String> {
        let state = self.state.load();
        let local = self.state.local();
        let qualified = format!("{}/{}", local.namespace, local.service);
        if let Some(svc) = state
            .routing
            .services
            .iter()
            .find(|s| *s.name == *local.service || *s.name == *qualified)
        {
            return svc.requested_environment(headers);
        }
        let key = sluice_policy::baggage::ENVIRONMENT_MEMBER;
        crate::routing::table::requested_environment(
            headers,
            Some(&http::HeaderName::from_static(key)),
            key,
        )
    }
}

/// The `policy` metric label: the granting policy, the governing ones, or the mesh default.
fn policy_label(d: &Decision) -> String {
    if let Some(p) = &d.policy {
        return p.to_string();
    }
    match &d.reason {
        Reason::KubeletProbe => "kubelet-probe".into(),
        Reason::DefaultAllow | Reason::DefaultAudit | Reason::DefaultDeny => "mesh-default".into(),
        r => r
            .governing()
            .iter()
            .map(|p| p.as_ref())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// A request id: the client's `x-request-id` if it sent a sane one, otherwise a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| format!("{:032x}", rand::random::<u128>()), str::to_owned)
}
