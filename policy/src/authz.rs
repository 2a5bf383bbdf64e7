//! Access decisions: "may this caller make this call to this service?", answered by tables
//! compiled from a service's AccessPolicies.
//!
//! # Semantics
//!
//! For a call from `caller` to the callee `service`:
//!
//! 1. **Grants.** The call is allowed ([`Verdict::Allow`], [`Reason::Granted`]) if a rule of one
//!    of the callee's AccessPolicies lists the caller in `from` (by name, or `*` for any caller
//!    with a mesh identity) and one of the rule's `allow` patterns matches the call, with
//!    [`RpcPattern::matches`] as the reference semantics. When several rules match, the
//!    **first** wins: policies in [`PolicySet::access_policies`](crate::PolicySet) order, then
//!    rules in the order written, then patterns in `allow` order. That rule is the one the
//!    decision names, with the pattern that matched.
//! 2. **Exemptions.** Otherwise, if an `unauthenticated` exemption of one of the callee's
//!    policies matches the call, it is allowed for anyone, meshed or not ([`Reason::Exempt`]);
//!    again the first exemption in policy order is named. A meshed caller that a rule also
//!    grants is reported as [`Reason::Granted`]: a rule is the more precise explanation.
//! 3. **Nothing allows it.** An unauthenticated caller can only be allowed by an exemption; it
//!    gets [`Reason::Unauthenticated`] ("identity required"). A meshed caller gets
//!    [`Reason::NoRuleAllows`] when at least one of the callee's policies is `mode: enforce`,
//!    and [`Reason::AuditOnly`] when all of them are `mode: audit`. Both carry the names of the
//!    callee's policies. The verdict is [`Verdict::Deny`] if any policy enforces and
//!    [`Verdict::AuditDeny`] (allowed, but counted and logged as "would deny") if all audit;
//!    this holds for unauthenticated callers too.
//! 4. **No policy.** A callee with no AccessPolicy at all, or one the snapshot does not know,
//!    gets the mesh's `defaultPolicy` for every caller, meshed or not: `deny` gives
//!    [`Reason::DefaultDeny`], `audit` gives [`Verdict::AuditDeny`] with
//!    [`Reason::DefaultAudit`], `allow` gives [`Verdict::Allow`] with [`Reason::DefaultAllow`].
//!    This part lives in [`crate::snapshot::Snapshot::decide`].
//!
//! # Matching cost
//!
//! [`ServiceAuthz`] does not iterate rules. Every `(policy, rule, pattern)` triple gets an
//! *ordinal*, its position in the order above (exemptions after all rules), and the triples are
//! indexed by what they match:
//!
//! - gRPC: service name → method name (or the `*` method) → grants;
//! - opaque TCP: port (or `tcp` for any port) → grants, apart from HTTP so that no HTTP pattern
//!   can ever grant a TCP connection;
//! - HTTP: a trie of path segments. A node has literal children, one `{param}` child, `rest`
//!   grants (patterns whose trailing `*` starts at this depth: they match here and everything
//!   below) and `end` grants (patterns that end exactly here);
//! - each set of grants is indexed by HTTP method (exact, or `*`), then by caller: a sorted table
//!   of caller ids, the lowest ordinal for "any meshed service", and the lowest for "anyone"
//!   (exemptions).
//!
//! A lookup walks the trie along the request's normalised segments, following both the literal
//! and the `{param}` branch where both exist, and keeps the lowest ordinal it finds. Each trie
//! node is visited at most once per lookup and a subtree is skipped when it holds no ordinal
//! lower than the best found so far, so the cost depends on the path's length and on how many
//! patterns could match it, not on how many rules the service has. The lookup path does not
//! allocate for paths of up to 32 segments.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::resources::PolicyMode;
use crate::rpc::{Rpc, RpcPattern, Segment};
use crate::validate::{CallerSelector, CheckedAccessPolicy, ObjectRef};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    /// No mesh identity: a plain-text or non-mesh client (kubelet probes, scrapers, ingress).
    Unauthenticated,
    /// A service with a mesh identity.
    Service(ObjectRef),
}

impl Caller {
    /// The service `name` in `namespace`.
    pub fn service(namespace: impl Into<String>, name: impl Into<String>) -> Caller {
        Caller::Service(ObjectRef::new(namespace, name))
    }

    /// The caller's service, if it has a mesh identity.
    pub fn identity(&self) -> Option<&ObjectRef> {
        match self {
            Caller::Unauthenticated => None,
            Caller::Service(r) => Some(r),
        }
    }
}

impl fmt::Display for Caller {
    /// The service name (`checkout`, or `shop/checkout` outside `default`), or `unauthenticated`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unauthenticated => f.write_str("unauthenticated"),
            Caller::Service(r) => r.fmt(f),
        }
    }
}

/// The outcome of an access decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The call is allowed.
    Allow,
    /// The call is allowed, but an enforcing policy would deny it: count and log it as
    /// "would deny".
    AuditDeny,
    /// The call is denied.
    Deny,
}

impl Verdict {
    /// Whether the call goes through ([`Verdict::Allow`] or [`Verdict::AuditDeny`]).
    pub fn is_allowed(self) -> bool {
        !matches!(self, Verdict::Deny)
    }

    /// A short, stable name for metric labels and logs: `allow`, `audit-deny` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::AuditDeny => "audit-deny",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision came out the way it did.
///
/// The `governing` lists are the names of the callee's AccessPolicies, in order. They are
/// shared with the compiled table, so a denial costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A rule grants the call; [`Decision::policy`], [`Decision::rule`] and
    /// [`Decision::pattern`] name it.
    Granted,
    /// An `unauthenticated` exemption allows the call for anyone; [`Decision::policy`] names
    /// the policy, [`Decision::rule`] the exemption (`unauthenticated[N]`).
    Exempt,
    /// The callee has no AccessPolicy and the mesh default is `allow`.
    DefaultAllow,
    /// The callee has no AccessPolicy and the mesh default is `audit`.
    DefaultAudit,
    /// The callee has no AccessPolicy and the mesh default is `deny`.
    DefaultDeny,
    /// No rule allows the call, and at least one of the callee's policies enforces.
    NoRuleAllows {
        /// The callee's policies.
        governing: Arc<[Arc<str>]>,
    },
    /// No rule allows the call, but every policy of the callee is in audit mode.
    AuditOnly {
        /// The callee's policies.
        governing: Arc<[Arc<str>]>,
    },
    /// Not allowed by policy, but one of the pod's kubelet probes (see [`crate::probes`]):
    /// [`Decision::pattern`] names the probe.
    KubeletProbe,
    /// The caller has no mesh identity and no exemption covers the call: identity required.
    Unauthenticated {
        /// The callee's policies.
        governing: Arc<[Arc<str>]>,
    },
}

impl Reason {
    /// A short, stable name for metric labels and logs, e.g. `granted` or `no-rule-allows`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Granted => "granted",
            Reason::Exempt => "exempt",
            Reason::DefaultAllow => "default-allow",
            Reason::DefaultAudit => "default-audit",
            Reason::DefaultDeny => "default-deny",
            Reason::NoRuleAllows { .. } => "no-rule-allows",
            Reason::AuditOnly { .. } => "audit-only",
            Reason::Unauthenticated { .. } => "unauthenticated",
            Reason::KubeletProbe => "kubelet-probe",
        }
    }

    /// The callee's policies, for the reasons that list them (empty otherwise).
    pub fn governing(&self) -> &[Arc<str>] {
        match self {
            Reason::NoRuleAllows { governing }
            | Reason::AuditOnly { governing }
            | Reason::Unauthenticated { governing } => governing,
            _ => &[],
        }
    }
}

/// An access decision: the verdict, why, and what matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Allow, audit-deny or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The AccessPolicy whose rule or exemption allowed the call.
    pub policy: Option<Arc<str>>,
    /// The rule (`rules[N]` when unnamed) or exemption (`unauthenticated[N]`) that allowed it.
    pub rule: Option<Arc<str>>,
    /// The pattern that matched, in canonical notation (`GET /v1/charges/{id}`): bounded, so
    /// fit for metric labels, unlike the request path.
    pub pattern: Option<Arc<str>>,
}

impl Decision {
    /// A decision that names no policy.
    pub fn new(verdict: Verdict, reason: Reason) -> Decision {
        Decision {
            verdict,
            reason,
            policy: None,
            rule: None,
            pattern: None,
        }
    }

    /// Whether the call goes through ([`Verdict::Allow`] or [`Verdict::AuditDeny`]).
    pub fn is_allowed(&self) -> bool {
        self.verdict.is_allowed()
    }

    /// One line saying what was decided and why, e.g. ``allowed by rule `charges` of
    /// AccessPolicy `payments-callers` (`POST /v1/charges`)``.
    pub fn explain(&self) -> String {
        self.to_string()
    }
}

struct Names<'a>(&'a [Arc<str>]);

impl fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.0.len() == 1 { "y" } else { "ies" };
        write!(f, "AccessPolic{plural} ")?;
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{n}`")?;
        }
        Ok(())
    }
}

impl fmt::Display for Decision {
    /// See [`Decision::explain`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.policy.as_deref().unwrap_or("?");
        let rule = self.rule.as_deref().unwrap_or("?");
        let pattern = self.pattern.as_deref().unwrap_or("?");
        match &self.reason {
            Reason::Granted => write!(
                f,
                "allowed by rule `{rule}` of AccessPolicy `{policy}` (`{pattern}`)"
            ),
            Reason::Exempt => write!(
                f,
                "allowed without identity: `{pattern}` is exempt in AccessPolicy `{policy}` ({rule})"
            ),
            Reason::KubeletProbe => write!(
                f,
                "allowed without identity: {}: `{pattern}`",
                crate::probes::ORIGIN
            ),
            Reason::DefaultAllow => f.write_str(
                "allowed: no AccessPolicy covers the service and the mesh default is `allow`",
            ),
            Reason::DefaultAudit => f.write_str(
                "allowed for audit: no AccessPolicy covers the service and the mesh default is \
                 `audit`; `deny` would refuse it",
            ),
            Reason::DefaultDeny => f.write_str(
                "denied: no AccessPolicy covers the service and the mesh default is `deny`",
            ),
            Reason::NoRuleAllows { governing } => write!(
                f,
                "denied: no rule of {} allows this caller to make this call",
                Names(governing)
            ),
            Reason::AuditOnly { governing } => write!(
                f,
                "allowed for audit: no rule of {} allows this call; enforce mode would deny it",
                Names(governing)
            ),
            Reason::Unauthenticated { governing } => write!(
                f,
                "{}: the caller has no mesh identity and no exemption of {} covers this call",
                if self.verdict.is_allowed() {
                    "allowed for audit"
                } else {
                    "denied"
                },
                Names(governing)
            ),
        }
    }
}

/// "No grant": larger than every ordinal.
const NONE: u32 = u32::MAX;

/// What a grant names: one `(policy, rule, pattern)` triple or one exemption.
#[derive(Clone, Debug)]
struct GrantInfo {
    policy: Arc<str>,
    rule: Arc<str>,
    pattern: Arc<str>,
    exempt: bool,
}

/// The caller as the tables see it.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// No identity: only exemptions apply.
    Anonymous,
    /// A meshed caller, with its id if some rule names it.
    Meshed(Option<u32>),
}

/// Grants of one pattern shape, by caller. Values are the lowest ordinal.
#[derive(Clone, Debug)]
struct Grants {
    /// `(caller id, ordinal)`, sorted by caller id.
    callers: Vec<(u32, u32)>,
    /// Rules with `from: ["*"]`.
    any_service: u32,
    /// Exemptions.
    anyone: u32,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            callers: Vec::new(),
            any_service: NONE,
            anyone: NONE,
        }
    }
}

impl Grants {
    fn add(&mut self, who: Grantee, ordinal: u32) {
        match who {
            Grantee::Caller(id) => match self.callers.binary_search_by_key(&id, |&(c, _)| c) {
                Ok(i) => self.callers[i].1 = self.callers[i].1.min(ordinal),
                Err(i) => self.callers.insert(i, (id, ordinal)),
            },
            Grantee::AnyService => self.any_service = self.any_service.min(ordinal),
            Grantee::Anyone => self.anyone = self.anyone.min(ordinal),
        }
    }

    fn min(&self) -> u32 {
        self.callers
            .iter()
            .map(|&(_, o)| o)
            .fold(self.any_service.min(self.anyone), u32::min)
    }

    #[inline]
    fn best(&self, who: Who) -> u32 {
        match who {
            Who::Anonymous => self.anyone,
            Who::Meshed(None) => self.anyone.min(self.any_service),
            Who::Meshed(Some(id)) => {
                let named = match self.callers.binary_search_by_key(&id, |&(c, _)| c) {
                    Ok(i) => self.callers[i].1,
                    Err(_) => NONE,
                };
                self.anyone.min(self.any_service).min(named)
            }
        }
    }
}

/// Who one grant is for, at build time.
#[derive(Clone, Copy, Debug)]
enum Grantee {
    Caller(u32),
    AnyService,
    Anyone,
}

/// Grants by HTTP method.
#[derive(Clone, Debug, Default)]
struct MethodGrants {
    /// Per method; at most the handful of HTTP methods, so a scan beats a hash.
    exact: Vec<(Box<str>, Grants)>,
    /// `*` patterns.
    any: Grants,
}

impl MethodGrants {
    fn entry(&mut self, method: Option<&str>) -> &mut Grants {
        let Some(method) = method else {
            return &mut self.any;
        };
        let i = match self.exact.iter().position(|(m, _)| &**m == method) {
            Some(i) => i,
            None => {
                self.exact.push((method.into(), Grants::default()));
                self.exact.len() - 1
            }
        };
        &mut self.exact[i].1
    }

    fn min(&self) -> u32 {
        self.exact
            .iter()
            .map(|(_, g)| g.min())
            .fold(self.any.min(), u32::min)
    }

    #[inline]
    fn best(&self, method: &str, who: Who) -> u32 {
        let any = self.any.best(who);
        match self.exact.iter().find(|(m, _)| &**m == method) {
            Some((_, g)) => any.min(g.best(who)),
            None => any,
        }
    }
}

/// A node of the HTTP path trie, at the depth of the segments that lead to it.
#[derive(Clone, Debug)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Patterns with a trailing `*` here: they match this path and everything below it.
    rest: MethodGrants,
    /// Patterns that end exactly here.
    end: MethodGrants,
    /// The lowest ordinal anywhere in this subtree, to skip subtrees that cannot win.
    min: u32,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            param: None,
            rest: MethodGrants::default(),
            end: MethodGrants::default(),
            min: NONE,
        }
    }
}

impl Node {
    fn insert(&mut self, segments: &[Segment], rest: bool) -> &mut MethodGrants {
        match segments.split_first() {
            None if rest => &mut self.rest,
            None => &mut self.end,
            Some((Segment::Literal(l), tail)) => self
                .literal
                .entry(l.as_str().into())
                .or_default()
                .insert(tail, rest),
            Some((Segment::Param(_), tail)) => self
                .param
                .get_or_insert_with(Box::default)
                .insert(tail, rest),
        }
    }

    /// Computes `min` for this subtree and returns it.
    fn finish(&mut self) -> u32 {
        let mut min = self.rest.min().min(self.end.min());
        for child in self.literal.values_mut() {
            min = min.min(child.finish());
        }
        if let Some(child) = &mut self.param {
            min = min.min(child.finish());
        }
        self.literal.shrink_to_fit();
        self.min = min;
        min
    }

    /// Lowers `best` to the lowest ordinal among grants matching the rest of the path.
    fn lookup(&self, segments: &[&str], method: &str, who: Who, best: &mut u32) {
        if self.min >= *best {
            return;
        }
        *best = (*best).min(self.rest.best(method, who));
        match segments.split_first() {
            None => *best = (*best).min(self.end.best(method, who)),
            Some((segment, tail)) => {
                if let Some(child) = self.literal.get(*segment) {
                    child.lookup(tail, method, who, best);
                }
                // Normalised segments are never empty, so `{param}` matches any of them.
                if let Some(child) = &self.param {
                    child.lookup(tail, method, who, best);
                }
            }
        }
    }
}

/// Grants for one gRPC service.
#[derive(Clone, Debug, Default)]
struct GrpcService {
    methods: HashMap<Box<str>, Grants>,
    any: Grants,
}

/// The compiled access table of one callee: everything its AccessPolicies grant, indexed so that
/// a decision does not depend on the number of rules (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ServiceAuthz {
    service: ObjectRef,
    governing: Arc<[Arc<str>]>,
    enforce: bool,
    /// Caller ids by namespace, then name: looked up with borrowed strings.
    callers: HashMap<Box<str>, HashMap<Box<str>, u32>>,
    /// What each ordinal names.
    grants: Vec<GrantInfo>,
    http: Node,
    grpc: HashMap<Box<str>, GrpcService>,
    tcp: TcpGrants,
}

/// Grants of opaque TCP: per port, and `tcp` for any port. Methods do not apply.
#[derive(Clone, Debug, Default)]
struct TcpGrants {
    ports: HashMap<u16, Grants>,
    any: Grants,
}

impl ServiceAuthz {
    /// Compiles the AccessPolicies of `service`, in order. Policies for other services are
    /// ignored. With no policies at all the table allows nothing and names no governing policy;
    /// [`crate::snapshot::Snapshot`] applies the mesh default instead of building one.
    pub fn new<'a>(
        service: ObjectRef,
        policies: impl IntoIterator<Item = &'a CheckedAccessPolicy>,
    ) -> ServiceAuthz {
        let policies: Vec<&CheckedAccessPolicy> = policies
            .into_iter()
            .filter(|p| p.service == service)
            .collect();
        let mut table = ServiceAuthz {
            governing: policies.iter().map(|p| p.name.clone()).collect(),
            enforce: policies.iter().any(|p| p.mode == PolicyMode::Enforce),
            service,
            callers: HashMap::new(),
            grants: Vec::new(),
            http: Node::default(),
            grpc: HashMap::new(),
            tcp: TcpGrants::default(),
        };
        let mut pattern_names: HashMap<&RpcPattern, Arc<str>> = HashMap::new();
        let mut name_of = |p: &'a RpcPattern| -> Arc<str> {
            pattern_names
                .entry(p)
                .or_insert_with(|| Arc::from(p.to_string()))
                .clone()
        };
        let mut grantees = Vec::new();
        for &policy in &policies {
            for rule in &policy.rules {
                grantees.clear();
                for selector in &rule.from {
                    grantees.push(match selector {
                        CallerSelector::AnyService => Grantee::AnyService,
                        CallerSelector::Service(r) => Grantee::Caller(table.caller_id(r)),
                    });
                }
                for pattern in &rule.allow {
                    let info = GrantInfo {
                        policy: policy.name.clone(),
                        rule: rule.name.clone(),
                        pattern: name_of(pattern),
                        exempt: false,
                    };
                    table.add(pattern, info, &grantees);
                }
            }
        }
        for &policy in &policies {
            for (i, (pattern, _reason)) in policy.unauthenticated.iter().enumerate() {
                let info = GrantInfo {
                    policy: policy.name.clone(),
                    rule: Arc::from(format!("unauthenticated[{i}]")),
                    pattern: name_of(pattern),
                    exempt: true,
                };
                table.add(pattern, info, &[Grantee::Anyone]);
            }
        }
        table.http.finish();
        table.grants.shrink_to_fit();
        table
    }

    fn caller_id(&mut self, r: &ObjectRef) -> u32 {
        let next = self.callers.values().map(HashMap::len).sum::<usize>();
        let by_name = self.callers.entry(r.namespace.as_str().into()).or_default();
        *by_name
            .entry(r.name.as_str().into())
            .or_insert(u32::try_from(next).unwrap_or(NONE - 1))
    }

    fn add(&mut self, pattern: &RpcPattern, info: GrantInfo, grantees: &[Grantee]) {
        let ordinal = u32::try_from(self.grants.len()).unwrap_or(NONE - 1);
        self.grants.push(info);
        let grants = match pattern {
            RpcPattern::Http {
                method,
                segments,
                rest,
            } => self.http.insert(segments, *rest).entry(method.as_deref()),
            RpcPattern::Grpc { service, method } => {
                let svc = self.grpc.entry(service.as_str().into()).or_default();
                match method {
                    Some(m) => svc.methods.entry(m.as_str().into()).or_default(),
                    None => &mut svc.any,
                }
            }
            RpcPattern::Tcp { port: Some(p) } => self.tcp.ports.entry(*p).or_default(),
            RpcPattern::Tcp { port: None } => &mut self.tcp.any,
        };
        for &who in grantees {
            grants.add(who, ordinal);
        }
    }

    /// The callee.
    pub fn service(&self) -> &ObjectRef {
        &self.service
    }

    /// The names of the callee's AccessPolicies, in order.
    pub fn governing(&self) -> &[Arc<str>] {
        &self.governing
    }

    /// `Enforce` if any of the callee's policies enforces, `Audit` if all audit.
    pub fn mode(&self) -> PolicyMode {
        if self.enforce {
            PolicyMode::Enforce
        } else {
            PolicyMode::Audit
        }
    }

    /// How many `(rule, pattern)` grants and exemptions the table holds.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether the table grants nothing at all.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Decides a call to this service (see the [module docs](self) for the rules).
    pub fn decide(&self, caller: &Caller, rpc: &Rpc) -> Decision {
        let who = match caller {
            Caller::Unauthenticated => Who::Anonymous,
            Caller::Service(r) => Who::Meshed(
                self.callers
                    .get(r.namespace.as_str())
                    .and_then(|names| names.get(r.name.as_str()))
                    .copied(),
            ),
        };
        let best = match rpc {
            Rpc::Http { method, path } => {
                let mut best = NONE;
                with_segments(path, |segments| {
                    self.http.lookup(segments, method, who, &mut best);
                });
                best
            }
            Rpc::Grpc { service, method } => match self.grpc.get(service.as_str()) {
                None => NONE,
                Some(svc) => {
                    let exact = svc
                        .methods
                        .get(method.as_str())
                        .map_or(NONE, |g| g.best(who));
                    exact.min(svc.any.best(who))
                }
            },
            Rpc::Tcp { port } => {
                let exact = self.tcp.ports.get(port).map_or(NONE, |g| g.best(who));
                exact.min(self.tcp.any.best(who))
            }
        };
        match usize::try_from(best).ok().and_then(|i| self.grants.get(i)) {
            Some(info) => Decision {
                verdict: Verdict::Allow,
                reason: if info.exempt {
                    Reason::Exempt
                } else {
                    Reason::Granted
                },
                policy: Some(info.policy.clone()),
                rule: Some(info.rule.clone()),
                pattern: Some(info.pattern.clone()),
            },
            None => self.denial(caller),
        }
    }

    fn denial(&self, caller: &Caller) -> Decision {
        let governing = self.governing.clone();
        let verdict = if self.enforce {
            Verdict::Deny
        } else {
            Verdict::AuditDeny
        };
        let reason = match (caller, self.enforce) {
            (Caller::Unauthenticated, _) => Reason::Unauthenticated { governing },
            (Caller::Service(_), true) => Reason::NoRuleAllows { governing },
            (Caller::Service(_), false) => Reason::AuditOnly { governing },
        };
        Decision::new(verdict, reason)
    }
}

/// Segments kept on the stack; longer paths fall back to a `Vec`.
const INLINE_SEGMENTS: usize = 32;

/// Calls `f` with the segments of `path` normalised exactly like [`crate::rpc::normalize_path`]
/// followed by [`crate::rpc::path_segments`]: query and fragment dropped, empty and `.` segments
/// skipped, `..` popping a segment (never above the root).
fn with_segments<R>(path: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut buf: [&str; INLINE_SEGMENTS] = [""; INLINE_SEGMENTS];
    let mut len: usize = 0;
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => len = len.saturating_sub(1),
            s if len < INLINE_SEGMENTS => {
                buf[len] = s;
                len += 1;
            }
            _ => {
                let mut out: Vec<&str> = Vec::new();
                for segment in path.split('/') {
                    match segment {
                        "" | "." => {}
                        ".." => {
                            out.pop();
                        }
                        s => out.push(s),
                    }
                }
                return f(&out);
            }
        }
    }
    f(&buf[..len])
}

#[cfg(test)]
mod tests;
