//! Instances the controller starts in the cluster: the Kubernetes implementation of
//! [`crate::instance::Backend`], so ephemeral environments' copies run in Kubernetes as they do
//! under `sluice up`.
//!
//! An instance of service S at version V is a **Deployment of one pod copied from S's own
//! Deployment**: the Deployment in the same namespace whose pod template the Service `S`
//! selects and whose template says version V (label [`VERSION_LABEL`], else
//! [`APP_VERSION_LABEL`], the registry's rule). The copy keeps the template, so the Service
//! still selects its pod and the registry makes it an instance of the mesh service, and adds:
//!
//! | where | what |
//! |---|---|
//! | pod template labels | [`VERSION_LABEL`], [`ENVIRONMENT_LABEL`] (the environment), [`ROLE_LABEL`] (only when the spec has a role), [`INSTANCE_LABEL`] (the Deployment's name) |
//! | Deployment selector | `{sluice.dev/instance: NAME}` only: the source Deployment's own selector also picks the copy's pod, and a selector of its own keeps each Deployment to its pods |
//! | Deployment labels | `app.kubernetes.io/managed-by: sluice`, [`INSTANCE_LABEL`], [`ENVIRONMENT_LABEL`] |
//! | Deployment annotation | [`SPEC_ANNOTATION`]: the [`InstanceSpec`] as JSON |
//!
//! Nothing is kept in memory: [`Backend::instances`] lists the Deployments labelled
//! managed-by sluice and reads each spec back from its annotation, so a restarted controller
//! finds what it started and neither starts it twice nor loses it.
//!
//! The trait is synchronous and the kube client async: each call runs the client on the
//! controller's runtime through a [`tokio::runtime::Handle`] (see [`KubeBackend`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};

use super::cluster::{APP_VERSION_LABEL, ENVIRONMENT_LABEL, VERSION_LABEL};
use crate::instance::{Backend, BackendError, InstanceSpec, InstanceStatus, Run};

/// The standard label that says who manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value on what this backend creates.
pub const MANAGED_BY: &str = "sluice";
/// The label that ties a Deployment and its pods to one instance (the Deployment's name).
pub const INSTANCE_LABEL: &str = "sluice.dev/instance";
/// The pod label of an instance's role (`baseline` for a rollout's fresh copy); absent for
/// ordinary instances.
pub const ROLE_LABEL: &str = "sluice.dev/role";
/// The Deployment annotation holding the instance's spec as JSON.
pub const SPEC_ANNOTATION: &str = "sluice.dev/instance-spec";
/// Where an instance whose spec names no namespace runs (the policy loader's rule too).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The field manager of what this backend writes.
const FIELD_MANAGER: &str = "sluice-controller";
/// A label value's, and a DNS label's, longest length.
const MAX_NAME: usize = 63;

/// Why a developer's command cannot be an instance here.
pub const COMMAND_REFUSED: &str = "a developer's command runs only where `sluice up` runs \
     workloads; on Kubernetes, give a version (`sluice env create NAME --service SVC \
     --version V`) and Sluice copies that version's Deployment";

/// The Deployment name of instance `instance` (`checkout.pr-1` → `checkout-pr-1`): a DNS-1123
/// label, since the kubelet makes the pod's host name from the name and a dot there is
/// trouble, and the name is also the [`INSTANCE_LABEL`] value (at most 63 characters). A
/// name that does not fit ends in a digest of the whole name, so it stays unique. Two
/// instance names that map to the same label are told apart by the spec annotation when the
/// second is started ([`KubeBackend`] refuses it).
pub fn object_name(instance: &str) -> String {
    let mapped: String = instance
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if !trimmed.is_empty() && trimmed.len() <= MAX_NAME {
        return trimmed.to_owned();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, instance.as_bytes());
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // `mapped` is ASCII, so byte and character positions agree.
    let prefix = trimmed
        .get(..MAX_NAME - hex.len() - 1)
        .unwrap_or(trimmed)
        .trim_end_matches('-');
    if prefix.is_empty() {
        format!("instance-{hex}")
    } else {
        format!("{prefix}-{hex}")
    }
}

/// Whether this backend can run `spec` at all: a version, not a developer's command.
pub fn runnable(spec: &InstanceSpec) -> Result<(), BackendError> {
    match spec.run {
        Run::Version => Ok(()),
        Run::Command { .. } => Err(BackendError::Unsupported(COMMAND_REFUSED.into())),
    }
}

/// The namespace an instance runs in.
pub fn namespace_of(spec: &InstanceSpec) -> &str {
    if spec.namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        &spec.namespace
    }
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Whether this backend made `d` (its label; what it lists and the only thing it deletes).
fn is_managed(d: &Deployment) -> bool {
    d.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// The version a pod template says, by the registry's rule (without its last fallback, the
/// MeshService's first declared version: the backend must find the Deployment that really
/// runs a version, not guess).
fn version_of(labels: &BTreeMap<String, String>) -> Option<&String> {
    labels
        .get(VERSION_LABEL)
        .or_else(|| labels.get(APP_VERSION_LABEL))
}

/// The Deployment that runs `spec.service` at `spec.version`, among `deployments` (the
/// namespace's): the one whose pod template `service` selects and whose template's version is
/// the spec's (the first by name if several are). Refused, naming what exists and the label to
/// set, when there is none. Copies this backend made are never a source, and neither are
/// templates of another environment.
pub fn source_for<'a>(
    service: &Service,
    deployments: &'a [Deployment],
    spec: &InstanceSpec,
) -> Result<&'a Deployment, BackendError> {
    let namespace = namespace_of(spec);
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Err(BackendError::Unsupported(format!(
            "the Service `{}` in namespace `{namespace}` has no selector, so there is no \
             Deployment of {} to copy; give it a selector that picks the service's pods",
            spec.service, spec.service
        )));
    };
    let mut candidates: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| !is_managed(d))
        .filter(|d| {
            let labels = template_labels(d);
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                && labels
                    .get(ENVIRONMENT_LABEL)
                    .is_none_or(|e| e == crate::server::register::DEFAULT_ENVIRONMENT)
        })
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if let Some(found) = candidates
        .iter()
        .find(|d| version_of(&template_labels(d)) == Some(&spec.version))
    {
        return Ok(found);
    }
    let selector_text: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if candidates.is_empty() {
        return Err(BackendError::Unsupported(format!(
            "no Deployment in namespace `{namespace}` has pods the Service `{}` selects ({}); \
             an instance on Kubernetes is a copy of the service's own Deployment, so deploy \
             {} {} first",
            spec.service,
            selector_text.join(","),
            spec.service,
            spec.version
        )));
    }
    let found: Vec<String> = candidates
        .iter()
        .map(|d| {
            let name = d.metadata.name.clone().unwrap_or_default();
            match version_of(&template_labels(d)) {
                Some(v) => format!("{name} (version {v})"),
                None => format!("{name} (no version label)"),
            }
        })
        .collect();
    Err(BackendError::Unsupported(format!(
        "no Deployment in namespace `{namespace}` runs {} {}: the Service `{}` selects the pods \
         of {}; set the pod template label `{VERSION_LABEL}: {}` on the Deployment that runs \
         {} {} (or deploy it)",
        spec.service,
        spec.version,
        spec.service,
        found.join(", "),
        spec.version,
        spec.service,
        spec.version
    )))
}

/// The copy of `source` that runs `spec`: the source's Deployment spec and pod template,
/// one replica, the instance's labels and selector, and the spec in [`SPEC_ANNOTATION`].
pub fn copy_of(source: &Deployment, spec: &InstanceSpec) -> Result<Deployment, BackendError> {
    let name = object_name(&spec.name);
    let source_name = source.metadata.name.clone().unwrap_or_default();
    let annotation = serde_json::to_string(spec)
        .map_err(|e| BackendError::Failed(format!("cannot write the instance's spec: {e}")))?;
    let mut d = source.spec.clone().ok_or_else(|| {
        BackendError::Unsupported(format!(
            "the Deployment `{source_name}` has no spec to copy"
        ))
    })?;
    let mut template_meta = d.template.metadata.take().unwrap_or_default();
    let mut labels = template_meta.labels.take().unwrap_or_default();
    labels.insert(VERSION_LABEL.into(), spec.version.clone());
    labels.insert(ENVIRONMENT_LABEL.into(), spec.environment.clone());
    if spec.role.is_empty() {
        labels.remove(ROLE_LABEL);
    } else {
        labels.insert(ROLE_LABEL.into(), spec.role.clone());
    }
    labels.insert(INSTANCE_LABEL.into(), name.clone());
    template_meta.labels = Some(labels);
    d.template.metadata = Some(template_meta);
    d.replicas = Some(1);
    d.selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(INSTANCE_LABEL.to_owned(), name.clone())])),
        match_expressions: None,
    };
    // A paused source (mid-edit) must not leave its copy unable to start.
    d.paused = None;
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace_of(spec).to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (INSTANCE_LABEL.to_owned(), name),
                (ENVIRONMENT_LABEL.to_owned(), spec.environment.clone()),
            ])),
            annotations: Some(BTreeMap::from([(SPEC_ANNOTATION.to_owned(), annotation)])),
            ..ObjectMeta::default()
        },
        spec: Some(d),
        status: None,
    })
}

/// The spec a Deployment this backend created was made for (from [`SPEC_ANNOTATION`]); `None`
/// for any other Deployment, and for one whose annotation names another instance (edited by
/// hand: this backend then leaves it alone rather than stop what it did not start).
pub fn spec_of(deployment: &Deployment) -> Option<InstanceSpec> {
    if !is_managed(deployment) {
        return None;
    }
    let text = deployment
        .metadata
        .annotations
        .as_ref()?
        .get(SPEC_ANNOTATION)?;
    let spec: InstanceSpec = serde_json::from_str(text).ok()?;
    (deployment.metadata.name.as_deref() == Some(object_name(&spec.name).as_str())).then_some(spec)
}

fn unix_ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_millisecond()
}

/// Container waiting reasons that mean the instance will not start without a change (an
/// image, a config, a crashing program), rather than that it is still on its way.
const STUCK: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// How the instance `spec` (its Deployment `deployment`) is doing, from the pods labelled with
/// its name, at `now`. The pod looked at is a ready one if any, else the newest; the
/// container is the service's (the first that is not the injected sidecar).
pub fn status_of(
    spec: &InstanceSpec,
    deployment: &Deployment,
    pods: &[&Pod],
    now: SystemTime,
) -> InstanceStatus {
    let now_ms = crate::store::unix_ms(now);
    let ready = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let pod = pods.iter().copied().max_by_key(|p| {
        (
            ready(p),
            p.metadata.deletion_timestamp.is_none(),
            p.metadata.creation_timestamp.as_ref().map(unix_ms),
        )
    });
    let mut status = InstanceStatus {
        name: spec.name.clone(),
        generation: spec.generation,
        running: pod.is_some_and(ready),
        // No kubelet is asked for logs: that would be a `pods/log` call per copy per round
        // (and the RBAC for it); `kubectl logs` reads them. The metrics API is not read
        // either, so CPU and memory stay 0.
        log_tail: Vec::new(),
        ..InstanceStatus::default()
    };
    // A Deployment that cannot make its pod at all (a quota, an admission webhook that
    // refuses it) says so in a condition, with no pod to look at.
    let replica_failure = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        })
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("ReplicaFailure"),
                c.message.as_deref().unwrap_or_default()
            )
        });
    let Some(pod) = pod else {
        status.error = replica_failure;
        return status;
    };
    let app = pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .find(|c| c.name != super::inject::PROXY)
            .or_else(|| s.containers.first())
    });
    if let (Some(ip), Some(port)) = (
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| !ip.is_empty()),
        app.and_then(|c| c.ports.as_ref())
            .and_then(|ps| ps.first())
            .map(|p| p.container_port),
    ) {
        status.address = Some(if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        });
    }
    let container = app.and_then(|a| {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == a.name))
    });
    let Some(c) = container else {
        status.error = replica_failure;
        return status;
    };
    status.starts = u32::try_from(c.restart_count.max(0))
        .unwrap_or(0)
        .saturating_add(1);
    let terminated = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.state.as_ref().and_then(|s| s.terminated.as_ref()));
    status.last_exit = terminated.map(|t| match (&t.reason, t.signal) {
        (_, Some(sig)) if sig > 0 => format!("signal: {sig}"),
        (Some(r), _) => format!("exit status: {} ({r})", t.exit_code),
        (None, _) => format!("exit status: {}", t.exit_code),
    });
    let started = c
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .map(unix_ms);
    status.up_ms = started.map_or(0, |t| u64::try_from(now_ms - t).unwrap_or(0));
    status.error = c
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| {
            let reason = w.reason.as_deref()?;
            STUCK.contains(&reason).then(|| match w.message.as_deref() {
                Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                _ => reason.to_owned(),
            })
        })
        .or(replica_failure);
    status
}

/// Why a call to the API server failed, as the backend reports it: a missing permission says
/// which, the rest as the server said it.
fn api_error(what: &str, e: kube::Error) -> BackendError {
    match &e {
        kube::Error::Api(s) if s.is_forbidden() => BackendError::Failed(format!(
            "the controller may not {what}: {}; the Helm chart grants it (ClusterRole \
             `…-controller-instances`)",
            s.message
        )),
        _ => BackendError::Failed(format!("cannot {what}: {e}")),
    }
}

/// The Kubernetes backend of [`crate::instance::Backend`]: Deployments of one pod, copied from
/// each service's own.
///
/// The trait is synchronous, the kube client async. Each call runs its requests to completion
/// with [`Handle::block_on`](tokio::runtime::Handle::block_on) on the controller's runtime.
/// That is only correct on a thread that is not already driving async tasks (`block_on` from a
/// runtime worker panics, and would also stall every task queued on that worker), so the
/// caller runs the backend inside [`tokio::task::spawn_blocking`] (`env::driver`): the
/// blocking thread waits, and the runtime's workers and I/O driver keep the client's requests
/// going. `block_in_place` would also work, but only on a multi-threaded runtime, and it
/// stalls the worker it borrows; `spawn_blocking` needs neither.
pub struct KubeBackend {
    client: kube::Client,
    handle: tokio::runtime::Handle,
    /// The last successful listing, reported again when the API server does not answer: an
    /// empty list would read as "nothing runs" and have every copy started again.
    last: Vec<(InstanceSpec, InstanceStatus)>,
    /// The last listing failure, logged once.
    list_failed: Option<String>,
}

impl KubeBackend {
    /// A backend that talks to the cluster with `client` on the runtime of `handle`.
    pub fn new(client: kube::Client, handle: tokio::runtime::Handle) -> Self {
        KubeBackend {
            client,
            handle,
            last: Vec::new(),
            list_failed: None,
        }
    }

    /// The backend as the core takes it.
    pub fn boxed(client: kube::Client, handle: tokio::runtime::Handle) -> Box<dyn Backend + Send> {
        Box::new(Self::new(client, handle))
    }

    async fn start_version(client: &kube::Client, spec: &InstanceSpec) -> Result<(), BackendError> {
        let namespace = namespace_of(spec);
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let Some(service) = services
            .get_opt(&spec.service)
            .await
            .map_err(|e| api_error("read Services", e))?
        else {
            return Err(BackendError::Unsupported(format!(
                "no Service `{}` in namespace `{namespace}`; an instance on Kubernetes is a copy \
                 of the Deployment whose pods that Service selects",
                spec.service
            )));
        };
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let deployments = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("list Deployments", e))?
            .items;
        let copy = copy_of(source_for(&service, &deployments, spec)?, spec)?;
        let name = object_name(&spec.name);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let exists = match api.create(&params, &copy).await {
            Ok(_) => {
                tracing::info!(
                    instance = spec.name,
                    deployment = %format!("{namespace}/{name}"),
                    environment = spec.environment,
                    "started an instance"
                );
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => api
                .get_opt(&name)
                .await
                .map_err(|e| api_error("read Deployments", e))?,
            Err(e) => return Err(api_error("create Deployments", e)),
        };
        // Started before (by this controller before a restart, or a round that raced): the
        // same spec is a start that already happened.
        let Some(existing) = exists else {
            return Err(BackendError::Failed(format!(
                "the Deployment `{namespace}/{name}` was being removed; starting it again next \
                 round"
            )));
        };
        if existing.metadata.deletion_timestamp.is_some() {
            return Err(BackendError::Failed(format!(
                "the previous Deployment `{namespace}/{name}` is still being deleted; starting \
                 it again next round"
            )));
        }
        match spec_of(&existing) {
            Some(s) if s == *spec => Ok(()),
            Some(s) if s.name == spec.name => {
                // An older spec of the same instance: replace it.
                Self::delete(&api, &existing).await?;
                api.create(&params, &copy)
                    .await
                    .map(drop)
                    .map_err(|e| api_error("create Deployments", e))
            }
            _ if is_managed(&existing) => Err(BackendError::Failed(format!(
                "the Deployment `{namespace}/{name}` belongs to another instance (their names \
                 map to the same Deployment name); delete one of them"
            ))),
            _ => Err(BackendError::Failed(format!(
                "a Deployment `{namespace}/{name}` that Sluice did not make exists; rename or \
                 delete it so the instance {} can start",
                spec.name
            ))),
        }
    }

    /// Deletes `d`, only if it is still the object that was read (its UID). Its ReplicaSet
    /// and pod go with it (background propagation: the name is free at once).
    async fn delete(api: &Api<Deployment>, d: &Deployment) -> Result<(), BackendError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: d.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(api_error("delete Deployments", e)),
        }
    }

    async fn stop_instance(client: &kube::Client, instance: &str) -> Result<(), BackendError> {
        let api: Api<Deployment> = Api::all(client.clone());
        let selector = format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY},{INSTANCE_LABEL}={}",
            object_name(instance)
        );
        let found = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error("list Deployments", e))?;
        for d in found.items {
            if spec_of(&d).is_none_or(|s| s.name != instance) {
                continue;
            }
            let namespace = d.metadata.namespace.clone().unwrap_or_default();
            Self::delete(&Api::namespaced(client.clone(), &namespace), &d).await?;
            tracing::info!(
                instance,
                deployment = %format!("{namespace}/{}", d.metadata.name.as_deref().unwrap_or_default()),
                "stopped an instance"
            );
        }
        Ok(())
    }

    async fn list(
        client: &kube::Client,
    ) -> Result<Vec<(InstanceSpec, InstanceStatus)>, BackendError> {
        let deployments = Api::<Deployment>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await
            .map_err(|e| api_error("list Deployments", e))?;
        let pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().labels(INSTANCE_LABEL))
            .await
            .map_err(|e| api_error("list Pods", e))?;
        let mut by_instance: BTreeMap<(String, String), Vec<&Pod>> = BTreeMap::new();
        for p in &pods.items {
            if let (Some(ns), Some(instance)) = (
                p.metadata.namespace.clone(),
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(INSTANCE_LABEL))
                    .cloned(),
            ) {
                by_instance.entry((ns, instance)).or_default().push(p);
            }
        }
        let now = SystemTime::now();
        Ok(deployments
            .items
            .iter()
            .filter_map(|d| {
                let spec = spec_of(d)?;
                let key = (
                    d.metadata.namespace.clone().unwrap_or_default(),
                    d.metadata.name.clone().unwrap_or_default(),
                );
                let pods = by_instance.get(&key).map(Vec::as_slice).unwrap_or_default();
                let status = status_of(&spec, d, pods, now);
                Some((spec, status))
            })
            .collect())
    }
}

impl Backend for KubeBackend {
    fn start(&mut self, spec: &InstanceSpec) -> Result<(), BackendError> {
        runnable(spec)?;
        let client = self.client.clone();
        self.handle
            .block_on(async move { Self::start_version(&client, spec).await })
    }

    fn stop(&mut self, name: &str) -> Result<(), BackendError> {
        let client = self.client.clone();
        self.handle
            .block_on(async move { Self::stop_instance(&client, name).await })
    }

    fn instances(&mut self) -> Vec<(InstanceSpec, InstanceStatus)> {
        let client = self.client.clone();
        match self
            .handle
            .block_on(async move { Self::list(&client).await })
        {
            Ok(found) => {
                if self.list_failed.take().is_some() {
                    tracing::info!("instances: the API server answers again");
                }
                self.last.clone_from(&found);
                found
            }
            Err(e) => {
                let message = e.to_string();
                if self.list_failed.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "instances: cannot list them; reporting the last known");
                    self.list_failed = Some(message);
                }
                self.last.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests;
