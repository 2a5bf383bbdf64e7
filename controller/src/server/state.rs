//! The control plane's live state: the policy snapshot in force, registrations, connected
//! proxies, and the one published [`ProxyConfig`] every watcher follows.
//!
//! Publishing: every change (a new policy version, an endpoint added or removed) builds one new
//! immutable [`Published`] value and puts it in a `tokio::sync::watch` channel. Each `Watch`
//! stream holds its own receiver, which only ever keeps the latest value: a proxy that reads
//! slowly skips intermediate versions instead of queueing them, and never slows anyone else.
//!
//! The state sits behind one `std::sync::Mutex` held only for in-memory bookkeeping (never
//! across an `.await` or a disk write); store writes happen before taking it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sluice_api::v1::{Endpoint, ProxyConfig, ServiceEndpoints, VersionEndpoints, Workload};
use sluice_policy::{PolicySet, Snapshot};
use tokio::sync::watch;

use super::view::Views;
use crate::rollout::traffic::TrafficBook;
use crate::status::{
    ConfigErrorInfo, ControllerInfo, DenialInfo, DenialsInfo, ProxyInfo, RECENT_DENIALS,
    RegistrationInfo, SnapshotInfo, StatusReport,
};
use crate::store::{ConfigErrorRow, RegistrationRow, Store, StoreError, unix_ms};

/// One valid policy version: the set, its compiled form, the bundle shipped to proxies.
pub struct PolicySnapshot {
    /// The validated set.
    pub set: PolicySet,
    /// Compiled (what proxies will enforce).
    pub compiled: Snapshot,
    /// What is shipped (`PolicySet::to_bundle`).
    pub bundle: String,
    /// Its content hash.
    pub version: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl PolicySnapshot {
    /// Compiles and bundles a valid set.
    pub fn new(set: PolicySet) -> Self {
        let compiled = set.compile();
        let bundle = set.to_bundle();
        PolicySnapshot {
            version: compiled.version().to_owned(),
            set,
            compiled,
            bundle,
            loaded_at: SystemTime::now(),
        }
    }
}

/// What every watcher is sent: the current configuration and its generation.
pub struct Published {
    /// Counts every change since the controller started (policy or endpoints).
    pub generation: u64,
    /// The whole configuration (the whole policy bundle), as `sluice status` and the rollout
    /// engine see it.
    pub config: ProxyConfig,
    /// Each workload's share of the policy (see [`super::view`]).
    pub views: Arc<Views>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("generation", &self.generation)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Published {
    /// What a proxy of `namespace`/`service` is sent: the same version and endpoints as
    /// everyone, and only the policy its workload needs.
    pub fn config_for(&self, namespace: &str, service: &str) -> ProxyConfig {
        ProxyConfig {
            version: self.config.version.clone(),
            policy_bundle: self.views.bundle(namespace, service).to_string(),
            services: self.config.services.clone(),
        }
    }
}

/// An instance, as registrations and watchers name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Instance.
    pub instance: String,
}

impl InstanceKey {
    fn of(w: &Workload) -> Self {
        InstanceKey {
            namespace: w.namespace.clone(),
            service: w.service.clone(),
            instance: w.instance.clone(),
        }
    }
}

struct Registered {
    row: RegistrationRow,
    /// When its last watcher left (or the controller started, or it registered without
    /// watching); `None` while a proxy of the instance watches.
    orphaned_since: Option<Instant>,
}

struct ConnectedProxy {
    proxy_id: String,
    workload: Workload,
    peer: Option<SocketAddr>,
    connected_at: SystemTime,
    sent_version: String,
    sent_generation: u64,
}

struct LastError {
    row: ConfigErrorRow,
    current: bool,
}

struct Inner {
    registrations: BTreeMap<InstanceKey, Registered>,
    watching: HashMap<InstanceKey, usize>,
    proxies: HashMap<u64, ConnectedProxy>,
    next_connection: u64,
    generation: u64,
    last_error: Option<LastError>,
    /// Where each service is dialled (`--service-addresses`): (namespace, service) → ip:port.
    service_addresses: ServiceAddresses,
    /// Rollout weights that replace the Routes' default splits (see [`RouteOverrides`]).
    route_overrides: RouteOverrides,
    /// Instances a backend discovered itself (Kubernetes: ready pods), by instance. Published
    /// like registrations, but never stored: the backend is their source of truth.
    discovered: BTreeMap<InstanceKey, Registered>,
}

/// (namespace, service) → the default split to enforce instead of the Route file's, as
/// backends (version, weight, and the role of a rollout's baseline copy): the rollout
/// engine's weights, or a promoted stable version. The policy files stay as written; what
/// proxies receive is the policy with these applied.
pub type RouteOverrides = BTreeMap<(String, String), Vec<sluice_policy::resources::Backend>>;

/// (namespace, service) → the kubelet probes its sidecars let through without a mesh identity
/// (read by a backend from the pod specs: `SLUICE_PROXY_PROBES` of each injected proxy), each
/// with one pod that declares it. Shown on the service page; proxies learn their own from
/// their pod, not from here.
pub type KubeletProbes = BTreeMap<(String, String), BTreeMap<sluice_policy::probes::Probe, String>>;

/// (namespace, service) → the stable `ip:port`s clients dial (ClusterIPs, or the local
/// runner's service addresses).
pub type ServiceAddresses = BTreeMap<(String, String), Vec<String>>;

/// The control plane. Shared as `Arc<ControlPlane>` by the gRPC service, the admin endpoint,
/// the policy watcher and the registration reaper.
pub struct ControlPlane {
    inner: Mutex<Inner>,
    policy: ArcSwap<PolicySnapshot>,
    published: watch::Sender<Arc<Published>>,
    store: Store,
    grace: Duration,
    started: SystemTime,
    info: OnceLock<ControllerInfo>,
    traffic: TrafficBook,
    /// Requests served in ephemeral environments, for their idle clocks.
    env_activity: crate::env::activity::Activity,
    kubelet_probes: ArcSwap<KubeletProbes>,
}

impl ControlPlane {
    /// The control plane serving `policy`, with the registrations the store has kept. Each
    /// kept registration gets a fresh grace period in which its proxy can reconnect.
    pub fn new(
        store: Store,
        policy: PolicySnapshot,
        grace: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let now = Instant::now();
        let registrations = store
            .registrations()?
            .into_iter()
            .map(|row| {
                let key = InstanceKey {
                    namespace: row.namespace.clone(),
                    service: row.service.clone(),
                    instance: row.instance.clone(),
                };
                (
                    key,
                    Registered {
                        row,
                        orphaned_since: Some(now),
                    },
                )
            })
            .collect();
        let last_error = store.last_config_error()?.map(|row| LastError {
            row,
            current: false,
        });
        let policy = Arc::new(policy);
        let inner = Inner {
            registrations,
            watching: HashMap::new(),
            proxies: HashMap::new(),
            next_connection: 0,
            generation: 1,
            last_error,
            service_addresses: ServiceAddresses::new(),
            route_overrides: RouteOverrides::new(),
            discovered: BTreeMap::new(),
        };
        let (config, overridden) = build_config(
            &policy,
            &inner.route_overrides,
            &inner.registrations,
            &inner.discovered,
            &inner.service_addresses,
        );
        let first = Arc::new(Published {
            generation: 1,
            views: Arc::new(Views::new(
                config.version.clone(),
                Arc::clone(&policy),
                overridden,
            )),
            config,
        });
        let (published, _) = watch::channel(first);
        Ok(Arc::new(ControlPlane {
            inner: Mutex::new(inner),
            policy: ArcSwap::new(policy),
            published,
            store,
            grace,
            started: SystemTime::now(),
            info: OnceLock::new(),
            traffic: TrafficBook::new(),
            env_activity: crate::env::activity::Activity::new(crate::store::unix_ms(
                SystemTime::now(),
            )),
            kubelet_probes: ArcSwap::default(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Bookkeeping only; a panic mid-update cannot leave it worse than stale.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Replaces the kubelet probes a backend read from its pods.
    pub fn set_kubelet_probes(&self, probes: KubeletProbes) {
        self.kubelet_probes.store(Arc::new(probes));
    }

    /// The kubelet probes of every service's pods, as last set by the backend.
    pub fn kubelet_probes(&self) -> Arc<KubeletProbes> {
        self.kubelet_probes.load_full()
    }

    /// Every version's traffic, as the proxies report it (`ReportTraffic`).
    pub fn traffic(&self) -> &TrafficBook {
        &self.traffic
    }

    /// Requests served in ephemeral environments (from the same reports as [`Self::traffic`]).
    pub fn env_activity(&self) -> &crate::env::activity::Activity {
        &self.env_activity
    }

    /// The policy version in force.
    pub fn policy(&self) -> Arc<PolicySnapshot> {
        self.policy.load_full()
    }

    /// The configuration every watcher is converging to.
    pub fn current(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// Records where the controller listens, for status. Set once, after binding.
    pub fn set_info(&self, info: ControllerInfo) {
        let _ = self.info.set(info);
    }

    /// Rebuilds and publishes the configuration. Called with the lock held so generations and
    /// contents are published in order.
    fn republish(&self, inner: &mut Inner) {
        inner.generation += 1;
        let policy = self.policy.load_full();
        let (config, overridden) = build_config(
            &policy,
            &inner.route_overrides,
            &inner.registrations,
            &inner.discovered,
            &inner.service_addresses,
        );
        // The same effective policy (only endpoints changed): keep the views already made.
        let previous = self.published.borrow().views.clone();
        let views = if previous.version == config.version {
            previous
        } else {
            Arc::new(Views::new(config.version.clone(), policy, overridden))
        };
        self.published.send_replace(Arc::new(Published {
            generation: inner.generation,
            config,
            views,
        }));
    }

    /// Replaces where services are dialled, and publishes the change if there is one.
    pub fn set_service_addresses(&self, addresses: ServiceAddresses) {
        let mut inner = self.lock();
        if inner.service_addresses != addresses {
            inner.service_addresses = addresses;
            self.republish(&mut inner);
        }
    }

    /// Replaces the instances a backend discovered (Kubernetes: the ready pods behind each
    /// MeshService's Service), and publishes the change if there is one.
    pub fn set_discovered_instances(&self, rows: Vec<RegistrationRow>) {
        let discovered: BTreeMap<InstanceKey, Registered> = rows
            .into_iter()
            .map(|row| {
                let key = InstanceKey {
                    namespace: row.namespace.clone(),
                    service: row.service.clone(),
                    instance: row.instance.clone(),
                };
                (
                    key,
                    Registered {
                        row,
                        orphaned_since: None,
                    },
                )
            })
            .collect();
        let mut inner = self.lock();
        let same = inner.discovered.len() == discovered.len()
            && inner
                .discovered
                .iter()
                .zip(&discovered)
                .all(|((ka, a), (kb, b))| ka == kb && same_endpoint(&a.row, &b.row));
        if !same {
            inner.discovered = discovered;
            self.republish(&mut inner);
        }
    }

    /// The live ordinary instances of `version` of a service (stable environment), by name:
    /// see [`ControlPlane::role_instances`].
    pub fn instances(&self, namespace: &str, service: &str, version: &str) -> Vec<String> {
        self.role_instances(namespace, service, version, "")
    }

    /// The live instances of `version` with `role` (empty: the ordinary ones), stable
    /// environment, by name: discovered ones, and registered ones whose proxy is watching. A
    /// registration whose proxy stopped watching stays routable for the grace period (its
    /// proxy may be reconnecting), but it does not make a version ready: in rollout_bench a
    /// canary named like one stopped 20 s earlier was taken as started, traffic moved to the
    /// old address, and 3 requests timed out connecting.
    pub fn role_instances(
        &self,
        namespace: &str,
        service: &str,
        version: &str,
        role: &str,
    ) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner
            .registrations
            .values()
            .chain(inner.discovered.values())
            .filter(|r| {
                r.row.namespace == namespace
                    && r.row.service == service
                    && r.row.version == version
                    && r.row.environment == crate::server::register::DEFAULT_ENVIRONMENT
                    && r.row.role == role
                    && r.orphaned_since.is_none()
            })
            .map(|r| r.row.instance.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every instance known, registered or discovered, by namespace, service and instance.
    pub fn registered(&self) -> Vec<RegistrationRow> {
        let inner = self.lock();
        let mut rows: Vec<RegistrationRow> = inner
            .registrations
            .values()
            .chain(inner.discovered.values())
            .map(|r| r.row.clone())
            .collect();
        rows.sort_by(|a, b| {
            (&a.namespace, &a.service, &a.instance).cmp(&(&b.namespace, &b.service, &b.instance))
        });
        rows
    }

    /// Replaces the rollout weights, and publishes the change if there is one.
    pub fn set_route_overrides(&self, overrides: RouteOverrides) {
        let mut inner = self.lock();
        if inner.route_overrides != overrides {
            inner.route_overrides = overrides;
            self.republish(&mut inner);
        }
    }

    /// Puts a new valid policy in force (a no-op if its version is the one in force). Any
    /// recorded config error stops being current either way: the directory is valid again.
    pub fn publish_policy(&self, policy: PolicySnapshot) -> bool {
        let mut inner = self.lock();
        if let Some(e) = &mut inner.last_error {
            e.current = false;
        }
        if policy.version == self.policy.load().version {
            return false;
        }
        self.policy.store(Arc::new(policy));
        self.republish(&mut inner);
        true
    }

    /// The policy directory is back to the version in force (e.g. a bad edit was undone).
    pub fn policy_unchanged(&self) {
        if let Some(e) = &mut self.lock().last_error {
            e.current = false;
        }
    }

    /// Records a refused policy change (already stored).
    pub fn record_config_error(&self, row: ConfigErrorRow) {
        self.lock().last_error = Some(LastError { row, current: true });
    }

    /// Registers (or re-registers) an instance: stored first, then published.
    pub async fn register(&self, row: RegistrationRow) -> Result<(), StoreError> {
        let stored = row.clone();
        self.store.run(move |s| s.put_registration(&stored)).await?;
        let key = InstanceKey {
            namespace: row.namespace.clone(),
            service: row.service.clone(),
            instance: row.instance.clone(),
        };
        let mut inner = self.lock();
        let watched = inner.watching.get(&key).copied().unwrap_or(0) > 0;
        let changed = inner
            .registrations
            .get(&key)
            .is_none_or(|r| !same_endpoint(&r.row, &row));
        inner.registrations.insert(
            key,
            Registered {
                row,
                orphaned_since: (!watched).then(Instant::now),
            },
        );
        if changed {
            self.republish(&mut inner);
        }
        Ok(())
    }

    /// A proxy starts watching: returns its receiver and a guard that, when dropped (the
    /// stream ends), forgets it.
    pub fn subscribe(
        self: &Arc<Self>,
        proxy_id: String,
        workload: Workload,
        peer: Option<SocketAddr>,
    ) -> (watch::Receiver<Arc<Published>>, WatcherGuard) {
        let key = InstanceKey::of(&workload);
        let mut inner = self.lock();
        let id = inner.next_connection;
        inner.next_connection += 1;
        *inner.watching.entry(key.clone()).or_insert(0) += 1;
        if let Some(r) = inner.registrations.get_mut(&key) {
            r.orphaned_since = None;
        }
        inner.proxies.insert(
            id,
            ConnectedProxy {
                proxy_id,
                workload,
                peer,
                connected_at: SystemTime::now(),
                sent_version: String::new(),
                sent_generation: 0,
            },
        );
        let receiver = self.published.subscribe();
        (
            receiver,
            WatcherGuard {
                plane: Arc::clone(self),
                id,
                key,
            },
        )
    }

    fn sent(&self, id: u64, published: &Published) {
        if let Some(p) = self.lock().proxies.get_mut(&id) {
            p.sent_version.clone_from(&published.config.version);
            p.sent_generation = published.generation;
        }
    }

    fn unsubscribe(&self, id: u64, key: &InstanceKey) {
        let mut inner = self.lock();
        inner.proxies.remove(&id);
        let left = match inner.watching.get_mut(key) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            inner.watching.remove(key);
            if let Some(r) = inner.registrations.get_mut(key) {
                r.orphaned_since = Some(Instant::now());
            }
        }
    }

    /// Removes registrations whose instance has not watched for the grace period: from the
    /// store first, then from the published endpoints. Returns how many.
    pub async fn reap(&self, now: Instant) -> Result<usize, StoreError> {
        let expired: Vec<InstanceKey> = self
            .lock()
            .registrations
            .iter()
            .filter(|(_, r)| {
                r.orphaned_since
                    .is_some_and(|t| now.duration_since(t) >= self.grace)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let keys = expired.clone();
        self.store
            .run(move |s| {
                for k in &keys {
                    s.delete_registration(&k.namespace, &k.service, &k.instance)?;
                }
                Ok(())
            })
            .await?;
        let mut inner = self.lock();
        let mut removed = 0;
        for k in &expired {
            // It may have come back while the store was written.
            if inner.registrations.get(k).is_some_and(|r| {
                r.orphaned_since
                    .is_some_and(|t| now.duration_since(t) >= self.grace)
            }) {
                inner.registrations.remove(k);
                tracing::info!(
                    namespace = k.namespace,
                    service = k.service,
                    instance = k.instance,
                    grace = %humantime::format_duration(self.grace),
                    "deregistered an instance whose proxy stopped watching"
                );
                removed += 1;
            }
        }
        if removed > 0 {
            self.republish(&mut inner);
        }
        Ok(removed)
    }

    /// Everything `sluice status` shows. The denial summary comes from the store (off the
    /// async workers).
    pub async fn status(&self) -> Result<StatusReport, StoreError> {
        let denials = self.store.run(|s| s.denial_summary(RECENT_DENIALS)).await?;
        let rollouts = self.store.run(crate::status::rollout_lines).await?;
        let now = SystemTime::now();
        let now_instant = Instant::now();
        let policy = self.policy();
        let inner = self.lock();
        let generation = inner.generation;
        let mut controller = self.info.get().cloned().unwrap_or_default();
        controller.started_unix_ms = unix_ms(self.started);
        controller.uptime_secs = now
            .duration_since(self.started)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut proxies: Vec<ProxyInfo> = inner
            .proxies
            .values()
            .map(|p| ProxyInfo {
                proxy_id: p.proxy_id.clone(),
                workload: format!("{}/{}", p.workload.namespace, p.workload.service),
                version: p.workload.version.clone(),
                environment: p.workload.environment.clone(),
                instance: p.workload.instance.clone(),
                peer: p.peer.map(|a| a.to_string()),
                connected_unix_ms: unix_ms(p.connected_at),
                acknowledged_version: p.sent_version.clone(),
                acknowledged_generation: p.sent_generation,
                behind: p.sent_generation != generation,
            })
            .collect();
        proxies.sort_by(|a, b| {
            (&a.workload, &a.proxy_id, a.connected_unix_ms).cmp(&(
                &b.workload,
                &b.proxy_id,
                b.connected_unix_ms,
            ))
        });
        let registrations = inner
            .registrations
            .values()
            .map(|r| RegistrationInfo {
                row: r.row.clone(),
                watching: r.orphaned_since.is_none(),
                expires_unix_ms: r.orphaned_since.map(|t| {
                    let left = (t + self.grace).saturating_duration_since(now_instant);
                    unix_ms(now + left)
                }),
            })
            .collect();
        Ok(StatusReport {
            controller: Some(controller),
            snapshot: Some(SnapshotInfo {
                // What proxies enforce: the policy with any rollout weights applied.
                version: self.current().config.version.clone(),
                generation,
                loaded_unix_ms: unix_ms(policy.loaded_at),
                services: policy.set.services.len(),
                access_policies: policy.set.access_policies.len(),
            }),
            proxies,
            registrations,
            last_config_error: inner
                .last_error
                .as_ref()
                .map(|e| ConfigErrorInfo::new(e.row.clone(), e.current)),
            denials: DenialsInfo {
                distinct: denials.distinct,
                total: denials.total,
                dropped: denials.dropped,
                recent: denials.recent.into_iter().map(DenialInfo::from).collect(),
            },
            rollouts,
        })
    }

    /// Where the state directory is (for logs).
    pub fn store_path(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }
}

/// Held by a `Watch` stream; forgets the proxy when the stream is dropped.
pub struct WatcherGuard {
    plane: Arc<ControlPlane>,
    id: u64,
    key: InstanceKey,
}

impl WatcherGuard {
    /// Records that `published` was handed to the proxy's stream.
    pub fn sent(&self, published: &Published) {
        self.plane.sent(self.id, published);
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.plane.unsubscribe(self.id, &self.key);
    }
}

fn same_endpoint(a: &RegistrationRow, b: &RegistrationRow) -> bool {
    (&a.version, &a.environment, &a.role, &a.address)
        == (&b.version, &b.environment, &b.role, &b.address)
}

/// The message for the current policy and registrations: services by namespace and name,
/// versions by (version, environment), endpoints by instance.
/// The policy bundle and version proxies get: the files' own, or with the rollout weights
/// applied to the Routes (a service without a Route gets one holding just the split).
fn effective_policy(
    policy: &PolicySnapshot,
    overrides: &RouteOverrides,
) -> (String, String, Option<PolicySet>) {
    use sluice_policy::resources::{Backend, Document, Metadata, RouteSpec};
    use sluice_policy::validate::{Checked, ObjectRef, Origin};
    if overrides.is_empty() {
        return (policy.bundle.clone(), policy.version.clone(), None);
    }
    let mut set = policy.set.clone();
    for ((namespace, service), split) in overrides {
        let key = ObjectRef::new(namespace.clone(), service.clone());
        if !set.services.contains_key(&key) {
            continue;
        }
        let backends: Vec<Backend> = split.clone();
        match set.routes.get_mut(&key) {
            Some(route) => route.doc.spec.backends = backends,
            None => {
                let doc = Document {
                    api_version: sluice_policy::resources::API_VERSION.to_owned(),
                    kind: "Route".to_owned(),
                    metadata: Metadata {
                        name: service.clone(),
                        namespace: (namespace != "default").then(|| namespace.clone()),
                        ..Metadata::default()
                    },
                    spec: RouteSpec {
                        service: service.clone(),
                        backends,
                        rules: Vec::new(),
                        environments: Default::default(),
                        timeout: None,
                    },
                };
                let origin = Origin {
                    file: std::sync::Arc::from(std::path::Path::new("<rollout>")),
                    location: None,
                };
                set.routes.insert(key, Checked { doc, origin });
            }
        }
    }
    let bundle = set.to_bundle();
    let version = set.version();
    (bundle, version, Some(set))
}

fn build_config(
    policy: &PolicySnapshot,
    route_overrides: &RouteOverrides,
    registrations: &BTreeMap<InstanceKey, Registered>,
    discovered: &BTreeMap<InstanceKey, Registered>,
    service_addresses: &ServiceAddresses,
) -> (ProxyConfig, Option<PolicySet>) {
    /// (version, environment, role) → endpoints.
    type Versions<'a> = BTreeMap<(&'a str, &'a str, &'a str), Vec<Endpoint>>;
    let mut services: BTreeMap<(&str, &str), Versions<'_>> = BTreeMap::new();
    // A service with addresses but no instance yet is still published, so that clients get
    // `no-endpoints` from their proxy instead of an unrouted connection.
    for (namespace, service) in service_addresses.keys() {
        services.entry((namespace, service)).or_default();
    }
    // A discovered instance that also registers itself is listed once, as discovered.
    let registered = registrations
        .iter()
        .filter(|(k, _)| !discovered.contains_key(k))
        .map(|(_, r)| r);
    for r in discovered.values().chain(registered) {
        services
            .entry((&r.row.namespace, &r.row.service))
            .or_default()
            .entry((&r.row.version, &r.row.environment, &r.row.role))
            .or_default()
            .push(Endpoint {
                address: r.row.address.clone(),
                instance: r.row.instance.clone(),
            });
    }
    let (policy_bundle, version, overridden) = effective_policy(policy, route_overrides);
    let config = ProxyConfig {
        version,
        policy_bundle,
        services: services
            .into_iter()
            .map(|((namespace, service), versions)| ServiceEndpoints {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
                addresses: service_addresses
                    .get(&(namespace.to_owned(), service.to_owned()))
                    .cloned()
                    .unwrap_or_default(),
                versions: versions
                    .into_iter()
                    .map(
                        |((version, environment, role), endpoints)| VersionEndpoints {
                            version: version.to_owned(),
                            environment: environment.to_owned(),
                            endpoints,
                            role: role.to_owned(),
                        },
                    )
                    .collect(),
            })
            .collect(),
    };
    (config, overridden)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str =
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: shop }\nspec: {}\n";

    fn plane(dir: &std::path::Path, grace: Duration) -> Arc<ControlPlane> {
        let store = Store::open(dir).expect("open the store");
        let set = PolicySet::from_str("p.yaml", POLICY).expect("valid");
        ControlPlane::new(store, PolicySnapshot::new(set), grace).expect("plane")
    }

    fn row(instance: &str, address: &str) -> RegistrationRow {
        RegistrationRow {
            namespace: "shop".into(),
            service: "payments".into(),
            instance: instance.into(),
            version: "v1".into(),
            environment: "stable".into(),
            role: String::new(),
            address: address.into(),
            registered_unix_ms: 0,
        }
    }

    fn workload(instance: &str) -> Workload {
        Workload {
            namespace: "shop".into(),
            service: "payments".into(),
            version: "v1".into(),
            environment: "stable".into(),
            instance: instance.into(),
            role: String::new(),
        }
    }

    #[tokio::test]
    async fn registrations_publish_endpoints_and_expire_without_a_watcher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plane = plane(dir.path(), Duration::from_secs(30));
        let (mut rx, guard) = plane.subscribe("p-0".into(), workload("payments-0"), None);
        let first = rx.borrow_and_update().generation;
        plane
            .register(row("payments-0", "127.0.0.1:1"))
            .await
            .expect("register");
        plane
            .register(row("payments-1", "127.0.0.1:2"))
            .await
            .expect("register");
        assert!(rx.has_changed().expect("open"));
        let now = rx.borrow_and_update().clone();
        assert!(now.generation > first);
        let eps: Vec<_> = now.config.services[0].versions[0]
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(eps, ["127.0.0.1:1", "127.0.0.1:2"]);

        // Re-registering the same endpoint publishes nothing.
        plane
            .register(row("payments-0", "127.0.0.1:1"))
            .await
            .expect("register");
        assert!(!rx.has_changed().expect("open"));

        // payments-1 has no watcher: it goes once the grace period has passed; payments-0's
        // proxy is watching, so it stays until that stream ends.
        let later = Instant::now() + Duration::from_secs(31);
        assert_eq!(plane.reap(later).await.expect("reap"), 1);
        drop(guard);
        assert_eq!(plane.reap(Instant::now()).await.expect("reap"), 0);
        assert_eq!(
            plane
                .reap(Instant::now() + Duration::from_secs(31))
                .await
                .expect("reap"),
            1
        );
        assert!(plane.current().config.services.is_empty());
        assert!(plane.store().registrations().expect("read").is_empty());
    }

    #[tokio::test]
    async fn service_addresses_are_published_with_or_without_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plane = plane(dir.path(), Duration::from_secs(30));
        let addresses = ServiceAddresses::from([
            (
                ("shop".into(), "payments".into()),
                vec!["10.0.0.2:8080".into()],
            ),
            (
                ("shop".into(), "catalog".into()),
                vec!["10.0.0.3:8080".into()],
            ),
        ]);
        let before = plane.current().generation;
        plane.set_service_addresses(addresses.clone());
        assert!(plane.current().generation > before);
        let same = plane.current().generation;
        plane.set_service_addresses(addresses);
        assert_eq!(
            plane.current().generation,
            same,
            "no change, nothing published"
        );

        plane
            .register(row("payments-0", "10.0.0.9:8080"))
            .await
            .expect("register");
        let config = &plane.current().config;
        let by_name: BTreeMap<_, _> = config
            .services
            .iter()
            .map(|s| (s.service.as_str(), s))
            .collect();
        assert_eq!(by_name["catalog"].addresses, ["10.0.0.3:8080"]);
        assert!(by_name["catalog"].versions.is_empty());
        assert_eq!(by_name["payments"].addresses, ["10.0.0.2:8080"]);
        assert_eq!(
            by_name["payments"].versions[0].endpoints[0].address,
            "10.0.0.9:8080"
        );
    }

    #[tokio::test]
    async fn status_marks_proxies_behind_until_sent_the_current_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plane = plane(dir.path(), Duration::from_secs(30));
        let (rx, guard) = plane.subscribe("p-0".into(), workload("payments-0"), None);
        guard.sent(&rx.borrow());
        let status = plane.status().await.expect("status");
        assert!(!status.proxies[0].behind);
        let set = PolicySet::from_str("p.yaml", &POLICY.replace("shop", "shop2")).expect("valid");
        assert!(plane.publish_policy(PolicySnapshot::new(set)));
        let status = plane.status().await.expect("status");
        assert!(status.proxies[0].behind);
        drop(guard);
        assert!(plane.status().await.expect("status").proxies.is_empty());
    }

    #[tokio::test]
    async fn registrations_are_reloaded_with_a_fresh_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let plane = plane(dir.path(), Duration::from_secs(30));
            plane
                .register(row("payments-0", "127.0.0.1:1"))
                .await
                .expect("register");
        }
        let plane = plane(dir.path(), Duration::from_secs(30));
        assert_eq!(plane.current().config.services.len(), 1);
        assert_eq!(plane.reap(Instant::now()).await.expect("reap"), 0);
    }
}
