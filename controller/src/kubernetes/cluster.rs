//! Watching the cluster: the six kinds, Services and Pods, turned into what the core consumes
//! (a policy snapshot, service addresses, instances) and reported back on each resource's
//! `status` and as Events.
//!
//! One task owns the picture of the cluster. Watchers (one per kind, re-listing on their own
//! after a disconnect) send it their events; after each burst it rebuilds:
//!
//! 1. **Policy.** Every custom resource becomes a synthetic policy file and the whole set is
//!    loaded as a directory would be ([`super::source`]). Valid: published. Invalid: every
//!    diagnostic goes to its resource's `Valid` condition and an Event (field path and fix),
//!    the change is recorded as the last config error, and what is published is the largest
//!    valid set that keeps every accepted change ([`super::source::best_valid`]): a broken
//!    resource keeps its last good version, a new broken one is left out.
//! 2. **Registry.** A MeshService maps to the Service of the same namespace and name: its
//!    cluster IP and ports are the service's addresses (what outbound interception resolves),
//!    the ready pods its selector picks are the instances, dialled at pod IP and target port,
//!    with version and environment from the pod labels ([`VERSION_LABEL`],
//!    [`ENVIRONMENT_LABEL`]).
//! 3. **Status.** Written only when it changed, so the writes' own watch events settle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use sluice_policy::diagnostic::Diagnostic;
use sluice_policy::resources::Kind;
use tokio::sync::mpsc;

use super::crd::{GROUP, KINDS, KindNames, VERSION};
use super::source::{self, ObjectKey, best_valid, evaluate, line};
use super::status::{Condition, ResourceStatus, VALID};
use crate::server::state::{ControlPlane, PolicySnapshot, ServiceAddresses};
use crate::store::{ConfigErrorRow, RegistrationRow, unix_ms};

/// The pod label that names an instance's version (falling back to
/// `app.kubernetes.io/version`, then to the MeshService's first declared version).
pub const VERSION_LABEL: &str = "sluice.dev/version";
/// The pod label that names an instance's environment (default `stable`; an ephemeral
/// environment's copies carry its name).
pub const ENVIRONMENT_LABEL: &str = "sluice.dev/environment";
/// How often statuses are refreshed without a cluster change.
pub const STATUS_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// The standard label consulted when [`VERSION_LABEL`] is absent.
pub const APP_VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The documents the admission webhook validates against: the cluster's resources as the
/// controller last saw them.
pub type SharedDocuments = Arc<ArcSwap<BTreeMap<ObjectKey, Value>>>;

/// Why talking to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A list or a write failed.
    #[error("the Kubernetes API refused or failed: {0}")]
    Api(#[from] kube::Error),
}

/// The `ApiResource` of one of the six kinds.
pub fn api_resource(kind: Kind) -> ApiResource {
    let gvk = GroupVersionKind::gvk(GROUP, VERSION, kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, KindNames::of(kind).plural)
}

/// The cluster as the controller sees it.
#[derive(Default)]
pub struct Picture {
    /// Custom resources, whole (metadata and status included).
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Services by (namespace, name).
    pub services: BTreeMap<(String, String), Service>,
    /// Pods by (namespace, name).
    pub pods: BTreeMap<(String, String), Pod>,
}

impl Picture {
    /// Lists everything once (at start, before the controller serves).
    pub async fn list(client: &Client) -> Result<Picture, ClusterError> {
        let mut picture = Picture::default();
        for names in KINDS {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(names.kind));
            for object in api.list(&ListParams::default()).await? {
                picture.put_object(names.kind, &object);
            }
        }
        for service in Api::<Service>::all(client.clone())
            .list(&ListParams::default())
            .await?
        {
            picture.put_service(service);
        }
        for pod in Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await?
        {
            picture.put_pod(pod);
        }
        Ok(picture)
    }

    fn put_object(&mut self, kind: Kind, object: &DynamicObject) {
        let Ok(value) = serde_json::to_value(object) else {
            return;
        };
        if let Some(key) = ObjectKey::of(kind, &value) {
            self.objects.insert(key, value);
        }
    }

    fn put_service(&mut self, s: Service) {
        if let Some(k) = namespaced(&s.metadata) {
            self.services.insert(k, s);
        }
    }

    fn put_pod(&mut self, p: Pod) {
        if let Some(k) = namespaced(&p.metadata) {
            self.pods.insert(k, p);
        }
    }

    /// The policy documents of every custom resource.
    pub fn documents(&self) -> BTreeMap<ObjectKey, Value> {
        self.objects
            .iter()
            .map(|(k, o)| (k.clone(), source::document(k, o)))
            .collect()
    }
}

fn namespaced(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The first policy, from a fresh list: the largest valid set (nothing is "last good" yet).
pub fn initial_policy(picture: &Picture) -> (PolicySnapshot, BTreeMap<ObjectKey, Value>) {
    let documents = picture.documents();
    match best_valid(&documents, &BTreeMap::new()) {
        Some((set, used)) => (PolicySnapshot::new(set), used),
        None => (PolicySnapshot::new(Default::default()), BTreeMap::new()),
    }
}

/// The rollout phase of a service (namespace, service), from the rollout engine's store.
pub type RolloutPhase = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// What one watcher saw.
enum Change {
    Object(Kind, Box<Event<DynamicObject>>),
    Service(Box<Event<Service>>),
    Pod(Box<Event<Pod>>),
}

/// Runs the watch loop until the process ends.
pub struct ClusterController {
    /// The API client.
    pub client: Client,
    /// The core.
    pub plane: Arc<ControlPlane>,
    /// What the webhook validates against.
    pub documents: SharedDocuments,
    /// The documents of the policy in force (each resource's last good version).
    pub last_good: BTreeMap<ObjectKey, Value>,
    /// The picture at start.
    pub picture: Picture,
    /// The rollout phase of a service, for CanaryPolicy status (namespace, service).
    pub rollout_phase: RolloutPhase,
    /// The rendered diagnostics last reported, so a standing problem is logged once.
    pub reported_error: Option<String>,
}

impl ClusterController {
    /// Watches and reconciles forever.
    pub async fn run(mut self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
        for names in KINDS {
            let api: Api<DynamicObject> =
                Api::all_with(self.client.clone(), &api_resource(names.kind));
            let tx = tx.clone();
            let kind = names.kind;
            tokio::spawn(forward(watcher(api), tx, move |e| {
                Change::Object(kind, Box::new(e))
            }));
        }
        tokio::spawn(forward(
            watcher(Api::<Service>::all(self.client.clone())),
            tx.clone(),
            |e| Change::Service(Box::new(e)),
        ));
        tokio::spawn(forward(
            watcher(Api::<Pod>::all(self.client.clone())),
            tx,
            |e| Change::Pod(Box::new(e)),
        ));
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "sluice-controller".into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        );
        let mut relisting: HashMap<&'static str, Picture> = HashMap::new();
        let mut reported: BTreeMap<ObjectKey, String> = BTreeMap::new();
        self.reconcile(&recorder, &mut reported).await;
        // Statuses that follow the rollout engine (a CanaryPolicy's phase) are refreshed on
        // this tick as well as on every cluster change.
        let mut tick = tokio::time::interval(STATUS_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = rx.recv() => {
                    let Some(change) = change else { return };
                    self.apply(change, &mut relisting);
                    // Take the whole burst before rebuilding once.
                    while let Ok(change) = rx.try_recv() {
                        self.apply(change, &mut relisting);
                    }
                }
                _ = tick.tick() => {}
            }
            self.reconcile(&recorder, &mut reported).await;
        }
    }

    fn apply(&mut self, change: Change, relisting: &mut HashMap<&'static str, Picture>) {
        let p = &mut self.picture;
        match change {
            Change::Object(kind, event) => match *event {
                Event::Apply(o) => p.put_object(kind, &o),
                Event::Delete(o) => {
                    if let Some(k) = serde_json::to_value(&o)
                        .ok()
                        .and_then(|v| ObjectKey::of(kind, &v))
                    {
                        p.objects.remove(&k);
                    }
                }
                Event::Init => {
                    relisting.insert(kind.as_str(), Picture::default());
                }
                Event::InitApply(o) => {
                    relisting
                        .entry(kind.as_str())
                        .or_default()
                        .put_object(kind, &o);
                }
                Event::InitDone => {
                    let fresh = relisting.remove(kind.as_str()).unwrap_or_default();
                    p.objects.retain(|k, _| k.kind != kind);
                    p.objects.extend(fresh.objects);
                }
            },
            Change::Service(event) => match *event {
                Event::Apply(s) => p.put_service(s),
                Event::Delete(s) => {
                    if let Some(k) = namespaced(&s.metadata) {
                        p.services.remove(&k);
                    }
                }
                Event::Init => {
                    relisting.insert("Service", Picture::default());
                }
                Event::InitApply(s) => relisting.entry("Service").or_default().put_service(s),
                Event::InitDone => {
                    p.services = relisting.remove("Service").unwrap_or_default().services;
                }
            },
            Change::Pod(event) => match *event {
                Event::Apply(s) => p.put_pod(s),
                Event::Delete(s) => {
                    if let Some(k) = namespaced(&s.metadata) {
                        p.pods.remove(&k);
                    }
                }
                Event::Init => {
                    relisting.insert("Pod", Picture::default());
                }
                Event::InitApply(s) => relisting.entry("Pod").or_default().put_pod(s),
                Event::InitDone => {
                    p.pods = relisting.remove("Pod").unwrap_or_default().pods;
                }
            },
        }
    }

    async fn reconcile(&mut self, recorder: &Recorder, reported: &mut BTreeMap<ObjectKey, String>) {
        let documents = self.picture.documents();
        self.documents.store(Arc::new(documents.clone()));
        let evaluation = evaluate(&documents);
        match evaluation.set {
            Some(set) => {
                self.last_good = documents;
                self.publish(set, "published a new policy version from the cluster");
                if self.reported_error.take().is_some() {
                    tracing::info!("the cluster's policy resources are valid again");
                    self.plane.policy_unchanged();
                }
            }
            None => {
                if let Some((set, used)) = best_valid(&documents, &self.last_good) {
                    self.publish(set, "published the valid part of the cluster's policy");
                    self.last_good = used;
                }
                if self.reported_error.as_deref() != Some(evaluation.rendered.as_str()) {
                    self.reported_error = Some(evaluation.rendered.clone());
                    let summary = format!(
                        "{} error{} in the cluster's policy resources; the invalid resources were not applied",
                        evaluation.errors,
                        if evaluation.errors == 1 { "" } else { "s" }
                    );
                    tracing::error!("{summary}");
                    for d in evaluation.rendered.split("\n\n") {
                        tracing::error!("{}", d.trim_end());
                    }
                    let row = ConfigErrorRow {
                        at_unix_ms: unix_ms(SystemTime::now()),
                        summary,
                        rendered: evaluation.rendered.clone(),
                    };
                    if let Err(e) = self.plane.store().add_config_error(&row) {
                        tracing::error!(error = %e, "could not store the config error");
                    }
                    self.plane.record_config_error(row);
                }
            }
        }
        self.publish_registry();
        self.write_statuses(&evaluation.diagnostics, recorder, reported)
            .await;
    }

    /// Puts `set` in force unless it is the version in force (publishing the same version
    /// would also mark a recorded config error as fixed).
    fn publish(&self, set: sluice_policy::PolicySet, what: &str) {
        let snapshot = PolicySnapshot::new(set);
        if snapshot.version == self.plane.policy().version {
            return;
        }
        let version = snapshot.version.clone();
        if self.plane.publish_policy(snapshot) {
            tracing::info!(version, "{what}");
        }
    }

    fn publish_registry(&self) {
        let policy = self.plane.policy();
        let mut addresses = ServiceAddresses::new();
        let mut instances = Vec::new();
        let mut probes = crate::server::state::KubeletProbes::new();
        for (name, service) in &policy.set.services {
            let Some(svc) = self
                .picture
                .services
                .get(&(name.namespace.clone(), name.name.clone()))
            else {
                continue;
            };
            let declared = &service.source.doc.spec.versions;
            let (addrs, found) = registry_of(svc, &self.picture.pods, declared);
            let key = (name.namespace.clone(), name.name.clone());
            if !addrs.is_empty() {
                addresses.insert(key.clone(), addrs);
            }
            instances.extend(found);
            let found = kubelet_probes_of(svc, &self.picture.pods);
            if !found.is_empty() {
                probes.insert(key, found);
            }
        }
        self.plane.set_service_addresses(addresses);
        self.plane.set_discovered_instances(instances);
        self.plane.set_kubelet_probes(probes);
    }

    async fn write_statuses(
        &self,
        diagnostics: &BTreeMap<ObjectKey, Vec<Diagnostic>>,
        recorder: &Recorder,
        reported: &mut BTreeMap<ObjectKey, String>,
    ) {
        let version = self.plane.policy().version.clone();
        let now = timestamp(SystemTime::now());
        reported.retain(|k, _| self.picture.objects.contains_key(k));
        for (key, object) in &self.picture.objects {
            let errors: Vec<&Diagnostic> = diagnostics
                .get(key)
                .map(|ds| ds.iter().filter(|d| d.is_error()).collect())
                .unwrap_or_default();
            let generation = object
                .pointer("/metadata/generation")
                .and_then(Value::as_i64);
            let old: ResourceStatus = object
                .get("status")
                .cloned()
                .and_then(|s| serde_json::from_value(s).ok())
                .unwrap_or_default();
            let (status, reason, message) = if errors.is_empty() {
                (
                    "True",
                    "Accepted",
                    format!("Part of policy version {version}."),
                )
            } else {
                let lines: Vec<String> = errors.iter().map(|d| line(d)).collect();
                ("False", "Invalid", lines.join("\n"))
            };
            let previous = old.conditions.iter().find(|c| c.type_ == VALID);
            let transition = match previous {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => now.clone(),
            };
            let mut new = ResourceStatus {
                observed_generation: generation,
                conditions: vec![Condition {
                    type_: VALID.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message: message.clone(),
                    last_transition_time: transition,
                    observed_generation: generation,
                }],
                policy_version: errors.is_empty().then(|| version.clone()),
                ..ResourceStatus::default()
            };
            self.kind_status(key, object, &mut new);
            if new != old
                && let Err(e) = self.patch_status(key, &new).await
            {
                tracing::warn!(resource = %key, error = %e, "could not write the status");
            }
            if errors.is_empty() {
                reported.remove(key);
            } else if reported.get(key) != Some(&message) {
                reported.insert(key.clone(), message.clone());
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: "InvalidPolicy".into(),
                    note: Some(truncate(&message, 1000)),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &reference(key, object)).await {
                    tracing::warn!(resource = %key, error = %e, "could not record an Event");
                }
            }
        }
    }

    fn kind_status(&self, key: &ObjectKey, object: &Value, status: &mut ResourceStatus) {
        match key.kind {
            Kind::MeshService => {
                let count = self
                    .plane
                    .current()
                    .config
                    .services
                    .iter()
                    .filter(|s| s.namespace == key.namespace && s.service == key.name)
                    .flat_map(|s| s.versions.iter())
                    .map(|v| v.endpoints.len())
                    .sum::<usize>();
                status.instances = Some(u32::try_from(count).unwrap_or(u32::MAX));
            }
            Kind::CanaryPolicy => {
                let weights: Vec<String> = object
                    .pointer("/spec/steps")
                    .and_then(Value::as_array)
                    .map(|steps| {
                        steps
                            .iter()
                            .filter_map(|s| s.get("weight").map(Value::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                status.steps = if weights.is_empty() {
                    let step = object.pointer("/spec/stepWeight").and_then(Value::as_u64);
                    let max = object.pointer("/spec/maxWeight").and_then(Value::as_u64);
                    match (step, max) {
                        (Some(s), Some(m)) if s > 0 => Some(
                            (1..=m / s)
                                .map(|i| (i * s).to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                        _ => None,
                    }
                } else {
                    Some(weights.join(","))
                };
                let service = object
                    .pointer("/spec/service")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let namespace = if key.namespace.is_empty() {
                    "default"
                } else {
                    &key.namespace
                };
                status.phase =
                    Some((self.rollout_phase)(namespace, service).unwrap_or_else(|| "Idle".into()));
            }
            _ => {}
        }
    }

    async fn patch_status(
        &self,
        key: &ObjectKey,
        status: &ResourceStatus,
    ) -> Result<(), kube::Error> {
        let ar = api_resource(key.kind);
        let api: Api<DynamicObject> = if key.namespace.is_empty() {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &key.namespace, &ar)
        };
        api.patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(drop)
    }
}

async fn forward<K, S>(
    stream: S,
    tx: mpsc::UnboundedSender<Change>,
    wrap: impl Fn(Event<K>) -> Change,
) where
    S: futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let stream = stream.default_backoff();
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => {
                if tx.send(wrap(e)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "a Kubernetes watch failed; retrying"),
        }
    }
}

fn watcher<K>(
    api: Api<K>,
) -> impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
}

/// The addresses and ready instances of a Service.
pub fn registry_of(
    svc: &Service,
    pods: &BTreeMap<(String, String), Pod>,
    declared_versions: &[String],
) -> (Vec<String>, Vec<RegistrationRow>) {
    let Some(spec) = &svc.spec else {
        return (Vec::new(), Vec::new());
    };
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let service = svc.metadata.name.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let mut addresses = Vec::new();
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        for p in &ports {
            addresses.push(socket(ip, p.port));
        }
    }
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return (addresses, Vec::new());
    };
    let mut instances = Vec::new();
    for ((ns, name), pod) in pods.range((namespace.clone(), String::new())..) {
        if *ns != namespace {
            break;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if !ready {
            continue;
        }
        let Some(port) = ports.first().and_then(|p| target_port(p, pod)) else {
            continue;
        };
        let version = labels
            .get(VERSION_LABEL)
            .or_else(|| labels.get(APP_VERSION_LABEL))
            .cloned()
            .or_else(|| declared_versions.first().cloned())
            .unwrap_or_else(|| "v1".into());
        let environment = labels
            .get(ENVIRONMENT_LABEL)
            .cloned()
            .unwrap_or_else(|| crate::server::register::DEFAULT_ENVIRONMENT.into());
        instances.push(RegistrationRow {
            namespace: namespace.clone(),
            service: service.clone(),
            instance: name.clone(),
            version,
            environment,
            // A pod the instance backend started for a role (`baseline`) says so; every
            // other pod is an ordinary instance. (The rollout engine runs without
            // --baseline-copies in Kubernetes yet, so none asks for a role today.)
            role: labels
                .get(super::instances::ROLE_LABEL)
                .cloned()
                .unwrap_or_default(),
            address: socket(ip, port),
            registered_unix_ms: 0,
        });
    }
    (addresses, instances)
}

/// The kubelet probes the sidecars of a Service's pods let through (each proxy's
/// `SLUICE_PROXY_PROBES`, as the injector wrote it), with one pod that declares each. Every
/// pod counts, ready or not: a probe matters most before the pod is ready.
pub fn kubelet_probes_of(
    svc: &Service,
    pods: &BTreeMap<(String, String), Pod>,
) -> BTreeMap<sluice_policy::probes::Probe, String> {
    let mut found = BTreeMap::new();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return found;
    };
    for ((ns, name), pod) in pods.range((namespace.clone(), String::new())..) {
        if *ns != namespace {
            break;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let Some(spec) = &pod.spec else { continue };
        let proxy = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == super::inject::PROXY);
        let value = proxy
            .and_then(|c| c.env.as_ref())
            .and_then(|env| env.iter().find(|e| e.name == "SLUICE_PROXY_PROBES"))
            .and_then(|e| e.value.as_deref());
        let Some(Ok(set)) = value.map(sluice_policy::probes::ProbeSet::parse) else {
            continue;
        };
        for probe in set.probes() {
            found.entry(probe.clone()).or_insert_with(|| name.clone());
        }
    }
    found
}

fn socket(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The pod port a Service port sends to: its `targetPort` (a number, or a container port's
/// name), else the port itself.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod.spec.as_ref().and_then(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }),
    }
}

fn reference(key: &ObjectKey, object: &Value) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{GROUP}/{VERSION}")),
        kind: Some(key.kind.as_str().into()),
        name: Some(key.name.clone()),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        uid: object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resource_version: object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..ObjectReference::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// RFC 3339 in seconds, as Kubernetes writes times.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::inject;

    /// A pod of `app` with an HTTP readiness probe on `path`, injected by the injector.
    fn injected_pod(name: &str, app: &str, path: &str) -> Pod {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"containers": [{
                "name": app, "image": "shop:0.1.0",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": path, "port": "http"}},
            }]},
        });
        let report = inject::inject(&mut pod, app, &inject::Config::default());
        assert!(matches!(report.outcome, inject::Outcome::Injected { .. }));
        serde_json::from_value(pod).expect("a Pod")
    }

    #[test]
    fn a_services_kubelet_probes_come_from_its_injected_pods() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80}]},
        }))
        .expect("a Service");
        let mut pods = BTreeMap::new();
        for pod in [
            injected_pod("payments-a", "payments", "/healthz"),
            injected_pod("payments-b", "payments", "/healthz"),
            injected_pod("catalog-a", "catalog", "/ready"),
        ] {
            let key = (
                "shop".to_owned(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            pods.insert(key, pod);
        }
        let found = kubelet_probes_of(&svc, &pods);
        let shown: Vec<String> = found
            .iter()
            .map(|(p, pod)| format!("{p} ({pod})"))
            .collect();
        assert_eq!(shown, ["GET /healthz on port 8080 (payments-a)"]);
    }
}
