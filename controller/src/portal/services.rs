//! `/services/…`: what a service is, who may call it and why, whom it calls, how it is doing,
//! its rollout, who was refused, and where it runs.
//!
//! | route | handler |
//! |---|---|
//! | `GET /services` | [`index`] |
//! | `GET /services/{name}`, `/services/{namespace}/{name}` | [`page`], [`page_in`] |
//! | `GET /services/{name}/traffic`, `/services/{namespace}/{name}/traffic` | [`traffic`], [`traffic_in`]: the live traffic fragment the page frames |
//!
//! Each request is answered in two steps so that the HTML can be tested without a server:
//! [`gather_service`] / [`gather_index`] read the plane's in-memory state (policy, published
//! registrations, traffic) plus what the handler fetched from the store (rollouts, one denial
//! summary), and [`service_page`] / [`index_page`] (in `render`) turn that view into HTML with
//! maud, which escapes every value: a service description or a denied call can contain
//! anything.
//!
//! Requests per second are a rate between two readings of the same counter (see
//! [`RateSampler`]); the traffic fragment reloads itself (`<meta http-equiv=refresh>`, no
//! JavaScript), so the page shows a rate a second after it opens.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::Markup;
use sluice_api::v1::ProxyConfig;
use sluice_policy::link::{DeniedCall, access_request_link, offered_rpc};
use sluice_policy::probes::Probe;
use sluice_policy::resources::{EphemeralMode, PolicyMode, SecurityLevel};
use sluice_policy::validate::{CallerSelector, ObjectRef};

use super::error::PortalError;
use super::extract::CsrfToken;
use super::page::page as layout;
use super::server::Shared;
use super::{Portal, User};
use crate::rollout::model::{Phase, Rollout};
use crate::rollout::traffic::{VersionKey, VersionTotals};
use crate::server::register::DEFAULT_ENVIRONMENT;
use crate::server::state::PolicySnapshot;
use crate::store::{DenialRow, unix_ms};

mod render;
pub use render::*;

/// How many of the most recent denials (mesh-wide) are read for a service page: one query,
/// filtered here, rather than a query per service.
const DENIALS_SCANNED: i64 = 500;
/// How many denials a service page lists.
const DENIALS_SHOWN: usize = 25;
/// How many earlier rollouts a service page links to.
const EARLIER_ROLLOUTS: usize = 5;

const DEFAULT_NAMESPACE: &str = sluice_policy::resources::DEFAULT_NAMESPACE;

/// The shareable address of a service's page.
pub fn service_href(key: &ObjectRef) -> String {
    if key.namespace == DEFAULT_NAMESPACE {
        format!("/services/{}", key.name)
    } else {
        format!("/services/{}/{}", key.namespace, key.name)
    }
}

/// `GET /services`.
pub async fn index(State(s): State<Shared>, user: User) -> Markup {
    let rollouts = list_rollouts(&s.portal, None).await;
    let policy = s.portal.plane.policy();
    let published = s.portal.plane.current();
    let traffic = s.portal.plane.traffic().all();
    let rows = gather_index(
        &policy,
        &published.config,
        &traffic,
        rollouts.as_listed(),
        rate_sampler(),
        Instant::now(),
    );
    layout("Services", Some(&user), index_markup(&rows))
}

/// `GET /services/{name}` (namespace `default`).
pub async fn page(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Path(name): Path<String>,
) -> Response {
    service(&s, &user, &token.0, ObjectRef::new(DEFAULT_NAMESPACE, name)).await
}

/// `GET /services/{namespace}/{name}`.
pub async fn page_in(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    service(&s, &user, &token.0, ObjectRef::new(namespace, name)).await
}

async fn service(s: &Shared, user: &User, token: &str, key: ObjectRef) -> Response {
    let portal = &s.portal;
    if !portal.plane.policy().set.services.contains_key(&key) {
        return PortalError::NoService(service_href(&key)).into_response();
    }
    let rollouts = list_rollouts(portal, Some((key.namespace.clone(), key.name.clone()))).await;
    let denials = match portal
        .plane
        .store()
        .run(|s| s.denial_summary(DENIALS_SCANNED))
        .await
    {
        Ok(summary) => Ok(summary.recent),
        Err(e) => {
            tracing::warn!(error = %e, "service page: reading denials");
            Err(e.to_string())
        }
    };
    let policy = portal.plane.policy();
    let published = portal.plane.current();
    let traffic = portal.plane.traffic().all();
    let probes = portal.plane.kubelet_probes();
    let sources = Sources {
        policy: &policy,
        config: &published.config,
        traffic: &traffic,
        rollouts: &rollouts,
        denials: denials.as_deref().map_err(String::as_str),
        kubelet_probes: probes.get(&(key.namespace.clone(), key.name.clone())),
    };
    match gather_service(
        &key,
        &sources,
        rate_sampler(),
        Instant::now(),
        unix_ms(SystemTime::now()),
    ) {
        Some(view) => {
            let envs = super::environments::service_section(s, &key.namespace, &key.name, token);
            layout(
                &key.to_string(),
                Some(user),
                maud::html! { (service_markup(&view)) (envs) },
            )
            .into_response()
        }
        None => PortalError::NoService(service_href(&key)).into_response(),
    }
}

/// `GET /services/{name}/traffic`.
pub async fn traffic(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    live_traffic(&s.portal, &ObjectRef::new(DEFAULT_NAMESPACE, name))
}

/// `GET /services/{namespace}/{name}/traffic`.
pub async fn traffic_in(
    State(s): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    live_traffic(&s.portal, &ObjectRef::new(namespace, name))
}

/// The live traffic fragment: a document of its own that the service page frames and that
/// reloads itself, so the page's numbers stay current without JavaScript or a reload.
fn live_traffic(portal: &Portal, key: &ObjectRef) -> Response {
    if !portal.plane.policy().set.services.contains_key(key) {
        return PortalError::NoService(format!("{}/traffic", service_href(key))).into_response();
    }
    let rows = gather_traffic(
        key,
        &portal.plane.traffic().all(),
        rate_sampler(),
        Instant::now(),
    );
    let csp = crate::web::CSP.replace("frame-ancestors 'none'", "frame-ancestors 'self'");
    (
        [
            (http::header::CONTENT_SECURITY_POLICY, csp),
            (http::header::X_FRAME_OPTIONS, "SAMEORIGIN".to_owned()),
        ],
        traffic_fragment(key, &rows),
    )
        .into_response()
}

/// Rollouts as the pages need them: the engine may not run, or the store may fail; neither
/// should take the page down.
#[derive(Clone, Debug)]
pub enum Rollouts {
    /// No rollout engine on this controller.
    NotRunning,
    /// The store could not be read.
    Unavailable(String),
    /// Newest first.
    Listed(Vec<Rollout>),
}

impl Rollouts {
    fn as_listed(&self) -> &[Rollout] {
        match self {
            Rollouts::Listed(l) => l,
            _ => &[],
        }
    }
}

async fn list_rollouts(portal: &Portal, service: Option<(String, String)>) -> Rollouts {
    let Some(engine) = portal.engine.clone() else {
        return Rollouts::NotRunning;
    };
    // The engine reads SQLite: off the async workers, like every other store read.
    let listed = tokio::task::spawn_blocking(move || {
        engine
            .list(service.as_ref().map(|(ns, s)| (ns.as_str(), s.as_str())))
            .map_err(|e| e.to_string())
    })
    .await;
    match listed {
        Ok(Ok(l)) => Rollouts::Listed(l),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "service pages: listing rollouts");
            Rollouts::Unavailable(e)
        }
        Err(e) => Rollouts::Unavailable(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests per second.

/// Turns cumulative request counters into rates: each key remembers the counter and when it
/// was read, and a rate is the difference to the previous reading over the time between them.
/// Readings closer than [`RateSampler::MIN_INTERVAL`] return the previous rate unchanged, so
/// that two quick reloads do not show a rate computed over a few milliseconds.
#[derive(Debug, Default)]
pub struct RateSampler {
    samples: Mutex<HashMap<VersionKey, Sample>>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    requests: u64,
    rate: Option<f64>,
}

impl RateSampler {
    /// The shortest interval a rate is computed over.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// Requests per second of `key` since the previous reading, or `None` on the first one
    /// (or after the counter went backwards: a forgotten version that came back).
    pub fn rate(&self, key: &VersionKey, requests: u64, now: Instant) -> Option<f64> {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = Sample {
            at: now,
            requests,
            rate: None,
        };
        let Some(prev) = samples.get(key).copied() else {
            samples.insert(key.clone(), fresh);
            return None;
        };
        let dt = now.saturating_duration_since(prev.at);
        if dt < Self::MIN_INTERVAL {
            return prev.rate;
        }
        let rate = requests
            .checked_sub(prev.requests)
            .map(|d| d as f64 / dt.as_secs_f64());
        samples.insert(key.clone(), Sample { rate, ..fresh });
        rate
    }
}

/// The process-wide sampler the pages share (every viewer sees the same rates).
fn rate_sampler() -> &'static RateSampler {
    static SAMPLER: OnceLock<RateSampler> = OnceLock::new();
    SAMPLER.get_or_init(RateSampler::default)
}

// ---------------------------------------------------------------------------------------------
// Views: what the pages show, gathered in one place.

/// A row of `/services`.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexRow {
    /// The service.
    pub key: ObjectRef,
    /// Owning team.
    pub team: String,
    /// `open` or `restricted`.
    pub security: &'static str,
    /// One line from the service's description.
    pub description: Option<String>,
    /// Declared versions.
    pub versions: Vec<String>,
    /// Registered instances, all versions and environments.
    pub instances: usize,
    /// Requests per second over all versions (`None` until a second view).
    pub rate: Option<f64>,
    /// Success rate over all versions' requests.
    pub success: Option<f64>,
    /// The active rollout: (id, phase, canary version, canary weight).
    pub rollout: Option<(String, Phase, String, u32)>,
}

/// One grant to this service.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantView {
    /// Callers: `*` or service names (with whether the service exists, for a link).
    pub callers: Vec<(String, Option<String>)>,
    /// Allowed endpoints.
    pub allow: Vec<String>,
    /// Why.
    pub reason: String,
    /// `shared` or `copy`.
    pub ephemeral: &'static str,
    /// The rule's name.
    pub rule: String,
    /// The AccessPolicy's name.
    pub policy: String,
    /// Its file.
    pub file: String,
    /// `enforce` or `audit`.
    pub mode: &'static str,
}

/// An endpoint callable without a mesh identity.
#[derive(Clone, Debug, PartialEq)]
pub struct ExemptionView {
    /// The endpoint.
    pub rpc: String,
    /// Why.
    pub reason: String,
    /// The AccessPolicy's name.
    pub policy: String,
    /// Its file.
    pub file: String,
}

/// A service this one may call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallView {
    /// The callee's page.
    pub href: String,
    /// The callee.
    pub service: String,
    /// Granted through `*` rather than by name.
    pub via_any: bool,
    /// Allowed endpoints.
    pub allow: Vec<String>,
    /// Why.
    pub reason: String,
    /// The rule's name.
    pub rule: String,
    /// The AccessPolicy's name.
    pub policy: String,
}

/// One version's (and environment's) traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficView {
    /// Version.
    pub version: String,
    /// Environment (`stable`, `pr-42`).
    pub environment: String,
    /// Requests per second, `None` on the first view.
    pub rate: Option<f64>,
    /// Total requests reported.
    pub requests: u64,
    /// Success rate.
    pub success: Option<f64>,
    /// p99 latency in milliseconds.
    pub p99_ms: Option<f64>,
    /// Instances currently reporting.
    pub reporting: usize,
}

/// A denied call to this service.
#[derive(Clone, Debug, PartialEq)]
pub struct DenialView {
    /// The caller (`checkout`, `shop/checkout`, `unauthenticated`).
    pub caller: String,
    /// The caller's page, when it is a declared service.
    pub caller_href: Option<String>,
    /// The call.
    pub rpc: String,
    /// The caller's environment.
    pub environment: String,
    /// `deny` or `audit-deny`.
    pub verdict: String,
    /// How many times.
    pub count: i64,
    /// Last seen, Unix ms.
    pub last_seen_unix_ms: i64,
    /// The access-request form, pre-filled; `None` for unauthenticated callers (an exemption
    /// is a policy edit, not a grant), when the mesh's template is not an http(s) URL, or when
    /// the call is allowed now.
    pub request_link: Option<String>,
    /// The policy in force allows this call now (granted since it was denied).
    pub allowed_now: bool,
}

/// Where the service runs.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentView {
    /// `stable`, `canary`, `ephemeral` or `idle` (a registered version taking no traffic).
    pub role: &'static str,
    /// Version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// (instance, address).
    pub instances: Vec<(String, String)>,
}

/// Everything `/services/<name>` shows.
#[derive(Clone, Debug)]
pub struct ServiceView {
    /// The service.
    pub key: ObjectRef,
    /// Owning team.
    pub team: String,
    /// `open` or `restricted`.
    pub security: &'static str,
    /// What it does.
    pub description: Option<String>,
    /// Ports, as `http 8080 (http)`.
    pub ports: Vec<String>,
    /// Declared versions.
    pub versions: Vec<String>,
    /// Declared endpoints and their descriptions.
    pub endpoints: Vec<(String, Option<String>)>,
    /// Who may call it.
    pub grants: Vec<GrantView>,
    /// What anyone may call.
    pub exemptions: Vec<ExemptionView>,
    /// Whether any AccessPolicy names the service (without one, the mesh default decides).
    pub has_policy: bool,
    /// Whom it may call.
    pub calls: Vec<CallView>,
    /// Live traffic per version.
    pub traffic: Vec<TrafficView>,
    /// Its rollouts, newest first.
    pub rollouts: Rollouts,
    /// Recent denials, newest first, or why they could not be read.
    pub denials: Result<Vec<DenialView>, String>,
    /// Where it runs.
    pub environments: Vec<EnvironmentView>,
    /// The stable addresses clients dial.
    pub addresses: Vec<String>,
    /// The version taking stable traffic.
    pub stable_version: Option<String>,
    /// Now, Unix ms (for "12 s ago").
    pub now_unix_ms: i64,
}

/// What a service page is gathered from.
pub struct Sources<'a> {
    /// The policy in force.
    pub policy: &'a PolicySnapshot,
    /// The published configuration (registrations).
    pub config: &'a ProxyConfig,
    /// `TrafficBook::all()`.
    pub traffic: &'a [(VersionKey, VersionTotals)],
    /// The service's rollouts, newest first.
    pub rollouts: &'a Rollouts,
    /// Recent denials, mesh-wide, newest first.
    pub denials: Result<&'a [DenialRow], &'a str>,
    /// The kubelet probes its pods' sidecars let through, each with a pod declaring it
    /// (Kubernetes; empty elsewhere).
    pub kubelet_probes: Option<&'a BTreeMap<Probe, String>>,
}

fn security_str(s: SecurityLevel) -> &'static str {
    match s {
        SecurityLevel::Open => "open",
        SecurityLevel::Restricted => "restricted",
    }
}

fn ephemeral_str(e: EphemeralMode) -> &'static str {
    match e {
        EphemeralMode::Shared => "shared",
        EphemeralMode::Copy => "copy",
    }
}

fn mode_str(m: PolicyMode) -> &'static str {
    match m {
        PolicyMode::Enforce => "enforce",
        PolicyMode::Audit => "audit",
    }
}

/// The `/services` rows, from the policy (every declared service), registrations, traffic and
/// the rollouts of all services (newest first).
pub fn gather_index(
    policy: &PolicySnapshot,
    config: &ProxyConfig,
    traffic: &[(VersionKey, VersionTotals)],
    rollouts: &[Rollout],
    rates: &RateSampler,
    now: Instant,
) -> Vec<IndexRow> {
    let mut instances: HashMap<(&str, &str), usize> = HashMap::new();
    for s in &config.services {
        let n: usize = s.versions.iter().map(|v| v.endpoints.len()).sum();
        *instances
            .entry((s.namespace.as_str(), s.service.as_str()))
            .or_default() += n;
    }
    // (rate, any rate known, requests, failures) per service.
    let mut live: HashMap<(&str, &str), (f64, bool, u64, u64)> = HashMap::new();
    for (k, t) in traffic {
        let e = live
            .entry((k.namespace.as_str(), k.service.as_str()))
            .or_insert((0.0, false, 0, 0));
        if let Some(r) = rates.rate(k, t.requests, now) {
            e.0 += r;
            e.1 = true;
        }
        e.2 = e.2.saturating_add(t.requests);
        e.3 = e.3.saturating_add(t.failures);
    }
    policy
        .set
        .services
        .iter()
        .map(|(key, s)| {
            let spec = &s.source.doc.spec;
            let id = (key.namespace.as_str(), key.name.as_str());
            let l = live.get(&id).copied();
            IndexRow {
                key: key.clone(),
                team: spec.team.clone(),
                security: security_str(spec.security),
                description: spec.description.clone(),
                versions: spec.versions.clone(),
                instances: instances.get(&id).copied().unwrap_or(0),
                rate: l.and_then(|(r, known, _, _)| known.then_some(r)),
                success: l.and_then(|(_, _, req, fail)| {
                    (req > 0).then(|| req.saturating_sub(fail) as f64 / req as f64)
                }),
                rollout: rollouts
                    .iter()
                    .find(|r| {
                        r.phase.is_active() && r.namespace == key.namespace && r.service == key.name
                    })
                    .map(|r| (r.id.clone(), r.phase, r.canary_version.clone(), r.weight)),
            }
        })
        .collect()
}

/// A service's traffic per version and environment, from `TrafficBook::all()`.
pub fn gather_traffic(
    key: &ObjectRef,
    traffic: &[(VersionKey, VersionTotals)],
    rates: &RateSampler,
    now: Instant,
) -> Vec<TrafficView> {
    traffic
        .iter()
        .filter(|(k, _)| k.namespace == key.namespace && k.service == key.name)
        .map(|(k, t)| TrafficView {
            version: k.version.clone(),
            environment: k.environment.clone(),
            rate: rates.rate(k, t.requests, now),
            requests: t.requests,
            success: t.success_rate(),
            p99_ms: t.quantile(0.99).map(|s| s * 1000.0),
            reporting: t.instances,
        })
        .collect()
}

fn caller_view(sel: &CallerSelector, policy: &PolicySnapshot) -> (String, Option<String>) {
    match sel {
        CallerSelector::AnyService => ("*".to_owned(), None),
        CallerSelector::Service(r) => (
            r.to_string(),
            policy.set.services.contains_key(r).then(|| service_href(r)),
        ),
    }
}

/// The version taking stable traffic: the baseline of an active rollout, the canary of a
/// promoted last one, else the Route's heaviest backend, else the first declared version —
/// the order the rollout engine itself uses.
fn stable_version(
    key: &ObjectRef,
    policy: &PolicySnapshot,
    rollouts: &[Rollout],
) -> Option<String> {
    if let Some(r) = rollouts.iter().find(|r| r.phase != Phase::Superseded) {
        if r.phase.is_active() {
            return Some(r.baseline_version.clone());
        }
        if r.phase == Phase::Promoted {
            return Some(r.canary_version.clone());
        }
    }
    crate::rollout::engine::policy_stable_version(&policy.set, key)
}

/// A link is only put in an `href` when it cannot run script: the template comes from policy
/// files, and a `javascript:` URL there must not become a click away from every engineer.
fn safe_link(url: String) -> Option<String> {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with('/'))
        .then_some(url)
}

/// The directory the policy files were read from (their deepest common ancestor), so that
/// files are shown as written in the repository (`payments/access.yaml`) rather than as
/// absolute paths on the controller's disk.
fn policy_root(set: &sluice_policy::PolicySet) -> Option<std::path::PathBuf> {
    let mut files = set.sources.keys();
    let mut root = files.next()?.parent()?.to_path_buf();
    for f in files {
        while !f.starts_with(&root) {
            if !root.pop() {
                return None;
            }
        }
    }
    Some(root)
}

fn relative(file: &std::path::Path, root: Option<&std::path::Path>) -> String {
    root.and_then(|r| file.strip_prefix(r).ok())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The `/services/<name>` view; `None` if the policy does not declare the service.
pub fn gather_service(
    key: &ObjectRef,
    src: &Sources<'_>,
    rates: &RateSampler,
    now: Instant,
    now_unix_ms: i64,
) -> Option<ServiceView> {
    let policy = src.policy;
    let set = &policy.set;
    let svc = set.services.get(key)?;
    let spec = &svc.source.doc.spec;

    let mut grants = Vec::new();
    let mut exemptions = Vec::new();
    let mut calls = Vec::new();
    let mut has_policy = false;
    let root = policy_root(set);
    for p in &set.access_policies {
        let file = relative(&p.source.origin.file, root.as_deref());
        if &p.service == key {
            has_policy = true;
            grants.extend(p.rules.iter().map(|r| GrantView {
                callers: r.from.iter().map(|c| caller_view(c, policy)).collect(),
                allow: r.allow.iter().map(ToString::to_string).collect(),
                reason: r.reason.clone(),
                ephemeral: ephemeral_str(r.ephemeral),
                rule: r.name.to_string(),
                policy: p.name.to_string(),
                file: file.clone(),
                mode: mode_str(p.mode),
            }));
            exemptions.extend(p.unauthenticated.iter().map(|(rpc, reason)| ExemptionView {
                rpc: rpc.to_string(),
                reason: reason.clone(),
                policy: p.name.to_string(),
                file: file.clone(),
            }));
            continue;
        }
        for r in &p.rules {
            let named = r
                .from
                .iter()
                .any(|c| matches!(c, CallerSelector::Service(s) if s == key));
            let any = r.from.contains(&CallerSelector::AnyService);
            if named || any {
                calls.push(CallView {
                    href: service_href(&p.service),
                    service: p.service.to_string(),
                    via_any: !named,
                    allow: r.allow.iter().map(ToString::to_string).collect(),
                    reason: r.reason.clone(),
                    rule: r.name.to_string(),
                    policy: p.name.to_string(),
                });
            }
        }
    }

    // By callee, so a caller's dependencies read the same whatever the files' order.
    calls.sort_by(|a, b| a.service.cmp(&b.service));
    // What the injected sidecars let through without identity, though no policy says so.
    exemptions.extend(
        src.kubelet_probes
            .into_iter()
            .flatten()
            .map(|(probe, pod)| ExemptionView {
                rpc: probe.to_string(),
                reason: sluice_policy::probes::ORIGIN.to_owned(),
                policy: "the pod spec".to_owned(),
                file: format!("pod {pod}"),
            }),
    );

    let traffic = gather_traffic(key, src.traffic, rates, now);

    let callee = key.to_string();
    let template = &set.mesh.access_request_url;
    let denials = src.denials.map_err(str::to_owned).map(|rows| {
        rows.iter()
            .filter(|d| d.namespace == key.namespace && d.service == key.name)
            .take(DENIALS_SHOWN)
            .map(|d| {
                let unauthenticated =
                    d.caller == "unauthenticated" && d.caller_namespace.is_empty();
                let caller_ref = ObjectRef::new(
                    if d.caller_namespace.is_empty() {
                        DEFAULT_NAMESPACE
                    } else {
                        &d.caller_namespace
                    },
                    d.caller.clone(),
                );
                let caller = if unauthenticated {
                    d.caller.clone()
                } else {
                    caller_ref.to_string()
                };
                let endpoint = (!d.endpoint.is_empty()).then_some(d.endpoint.as_str());
                let rpc = offered_rpc(endpoint, &d.rpc);
                // A denial that a grant has since covered offers nothing more to request.
                let allowed_now = !unauthenticated
                    && sluice_policy::rpc::Rpc::parse(&d.rpc).is_ok_and(|call| {
                        policy
                            .compiled
                            .decide(
                                &sluice_policy::authz::Caller::service(
                                    &caller_ref.namespace,
                                    &caller_ref.name,
                                ),
                                &key.namespace,
                                &key.name,
                                &call,
                            )
                            .verdict
                            == sluice_policy::authz::Verdict::Allow
                    });
                let request_link = (!unauthenticated && !allowed_now)
                    .then(|| {
                        access_request_link(
                            template,
                            &DeniedCall {
                                caller: &caller,
                                service: &callee,
                                rpc: &rpc,
                                environment: &d.environment,
                            },
                        )
                    })
                    .and_then(safe_link);
                DenialView {
                    caller_href: (!unauthenticated && set.services.contains_key(&caller_ref))
                        .then(|| service_href(&caller_ref)),
                    caller,
                    rpc: d.rpc.clone(),
                    environment: d.environment.clone(),
                    verdict: d.verdict.clone(),
                    count: d.count,
                    last_seen_unix_ms: d.last_seen_unix_ms,
                    request_link,
                    allowed_now,
                }
            })
            .collect()
    });

    let listed = src.rollouts.as_listed();
    let stable = stable_version(key, policy, listed);
    let canary = listed
        .iter()
        .find(|r| r.phase.is_active())
        .map(|r| r.canary_version.as_str());
    let published = src
        .config
        .services
        .iter()
        .find(|s| s.namespace == key.namespace && s.service == key.name);
    let mut environments: Vec<EnvironmentView> = published
        .map(|s| {
            s.versions
                .iter()
                .map(|v| EnvironmentView {
                    role: if v.environment != DEFAULT_ENVIRONMENT {
                        "ephemeral"
                    } else if Some(&v.version) == stable.as_ref() {
                        "stable"
                    } else if Some(v.version.as_str()) == canary {
                        "canary"
                    } else {
                        "idle"
                    },
                    version: v.version.clone(),
                    environment: v.environment.clone(),
                    instances: v
                        .endpoints
                        .iter()
                        .map(|e| (e.instance.clone(), e.address.clone()))
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    let order = |role: &str| match role {
        "stable" => 0,
        "canary" => 1,
        "idle" => 2,
        _ => 3,
    };
    environments.sort_by(|a, b| {
        (order(a.role), &a.environment, &a.version).cmp(&(
            order(b.role),
            &b.environment,
            &b.version,
        ))
    });

    Some(ServiceView {
        key: key.clone(),
        team: spec.team.clone(),
        security: security_str(spec.security),
        description: spec.description.clone(),
        ports: spec
            .ports
            .iter()
            .map(|p| {
                let proto = format!("{:?}", p.protocol).to_ascii_lowercase();
                match &p.name {
                    Some(n) => format!("{n} {} ({proto})", p.port),
                    None => format!("{} ({proto})", p.port),
                }
            })
            .collect(),
        versions: spec.versions.clone(),
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| (e.rpc.clone(), e.description.clone()))
            .collect(),
        grants,
        exemptions,
        has_policy,
        calls,
        traffic,
        rollouts: src.rollouts.clone(),
        denials,
        environments,
        addresses: published.map(|s| s.addresses.clone()).unwrap_or_default(),
        stable_version: stable,
        now_unix_ms,
    })
}

#[cfg(test)]
mod tests;
