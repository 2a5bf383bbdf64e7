//! The mutating admission webhook: the same [`inject::inject`] as `sluice inject`, on every
//! Pod created in a namespace or by a pod that opted in.
//!
//! Two webhooks in one MutatingWebhookConfiguration point here, so that the webhook never has
//! to look a namespace up (no API call, no cache, no RBAC on namespaces in the admission path):
//!
//! - `/mutate/namespace`: selected by `namespaceSelector: sluice.dev/inject=enabled`. Every pod
//!   is injected unless it opts out (`sluice.dev/inject: disabled`). `failurePolicy: Fail` by
//!   default: a meshed namespace never gets a pod without its sidecar.
//! - `/mutate/pod`: every other namespace; only pods annotated `sluice.dev/inject: enabled`.
//!   `failurePolicy: Ignore` by default: the controller being down must not stop pod creation
//!   in the whole cluster.
//!
//! Neither ever touches kube-system or the controller's own namespace (the configuration's
//! `namespaceSelector` excludes them where the server labels namespaces by name, ≥ 1.21, and
//! this code checks again). Host-network and already-injected pods are left alone, which makes
//! the webhook idempotent under `reinvocationPolicy: IfNeeded`: the second call finds the
//! sidecar and answers with no patch.
//!
//! Problems in a pod's annotations or probes are returned as admission warnings (`kubectl`
//! prints them) and recorded as Events on the pod's owner (a ReplicaSet's pods have no name
//! yet when they are admitted), never on dry runs.
//!
//! An injected proxy trusts the controller by the mesh CA certificate in the ConfigMap
//! [`CA_CONFIGMAP`] of its own namespace. The first time this process admits a pod with a
//! sidecar (injected now, or by `sluice inject` before: the pod webhook sees every namespace's
//! pods) in a namespace, it server-side applies
//! that ConfigMap there, in the background: the kubelet retries the pod's volume until it
//! exists, so admission never waits on it. The certificate is public; the key stays in the
//! controller's Secret.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::Value;

use super::inject::{self, CA_CONFIGMAP, CA_KEY, Config, INJECT, Outcome};

/// The path of the webhook for opted-in namespaces.
pub const NAMESPACE_PATH: &str = "/mutate/namespace";
/// The path of the webhook for pods that opt in by annotation.
pub const POD_PATH: &str = "/mutate/pod";

/// What the webhook needs besides the pod.
pub struct Injector {
    /// The injection settings (mode from the server's version).
    pub config: Config,
    /// Namespaces never injected: kube-system and the controller's own.
    pub excluded: Vec<String>,
    /// Where Events go (none in tests).
    pub recorder: Option<Recorder>,
    /// The API, for the CA ConfigMaps (none in tests).
    client: Option<kube::Client>,
    /// The mesh CA certificate (PEM) published as [`CA_CONFIGMAP`].
    ca_pem: Option<String>,
    /// Namespaces this process has published (or is publishing) the ConfigMap to.
    published: Arc<Mutex<HashSet<String>>>,
}

impl Injector {
    /// An injector that records Events with `client`.
    pub fn new(
        config: Config,
        own_namespace: Option<String>,
        client: Option<kube::Client>,
    ) -> Self {
        let mut excluded = vec!["kube-system".to_owned()];
        excluded.extend(own_namespace);
        Injector {
            config,
            excluded,
            recorder: client.clone().map(|c| {
                Recorder::new(
                    c,
                    Reporter {
                        controller: "sluice-injector".into(),
                        instance: std::env::var("HOSTNAME").ok(),
                    },
                )
            }),
            client,
            ca_pem: None,
            published: Arc::default(),
        }
    }

    /// Publishes `ca_pem` (the mesh CA certificate) as [`CA_CONFIGMAP`] in each namespace
    /// with injected pods.
    pub fn with_ca(mut self, ca_pem: &str) -> Self {
        self.ca_pem = Some(ca_pem.to_owned());
        self
    }

    /// Server-side applies the CA ConfigMap in `namespace`, once per namespace and process, in
    /// the background; a failure is logged and retried at the namespace's next pod.
    fn publish_ca(&self, namespace: &str) {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Patch, PatchParams};
        let (Some(client), Some(pem)) = (self.client.clone(), self.ca_pem.clone()) else {
            return;
        };
        {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            if !published.insert(namespace.to_owned()) {
                return;
            }
        }
        let config_map = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(CA_CONFIGMAP.into()),
                labels: Some(
                    [("app.kubernetes.io/managed-by".to_owned(), "sluice".to_owned())].into(),
                ),
                annotations: Some(
                    [(
                        "sluice.dev/description".to_owned(),
                        "The mesh CA certificate (public) by which injected proxies trust the Sluice controller; kept by the controller.".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(CA_KEY.to_owned(), pem)].into()),
            ..Default::default()
        };
        let namespace = namespace.to_owned();
        let published = Arc::clone(&self.published);
        tokio::spawn(async move {
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
            let params = PatchParams::apply("sluice-injector").force();
            match api
                .patch(CA_CONFIGMAP, &params, &Patch::Apply(&config_map))
                .await
            {
                Ok(_) => tracing::info!(namespace, "published the mesh CA for injected proxies"),
                Err(e) => {
                    tracing::warn!(namespace, error = %e, "could not publish the mesh CA ConfigMap; retried at the next pod");
                    published
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&namespace);
                }
            }
        });
    }

    /// The decision on one admission request; `namespace_opted_in` says which webhook called.
    pub fn review(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        namespace_opted_in: bool,
    ) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        if request.operation != Operation::Create
            || request.kind.kind != "Pod"
            || !request.kind.group.is_empty()
        {
            return response;
        }
        let namespace = request.namespace.clone().unwrap_or_default();
        if self.excluded.contains(&namespace) {
            return response;
        }
        let Some(original) = request
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
        else {
            return response;
        };
        // Injected before (`sluice inject`, or an earlier call): its proxy needs the CA too.
        if inject::is_injected(&original) && !request.dry_run {
            self.publish_ca(&namespace);
        }
        let wanted = original["metadata"]["annotations"][INJECT] == "enabled";
        if !namespace_opted_in && !wanted {
            return response;
        }
        let mut pod = original.clone();
        let workload = workload_name(&pod);
        let report = inject::inject(&mut pod, &workload, &self.config);
        let warnings: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("sluice: {p}"))
            .collect();
        if !report.problems.is_empty() && !request.dry_run {
            self.record(&namespace, &pod, &workload, &report.problems);
        }
        let mut response = response;
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        if matches!(report.outcome, Outcome::Injected { .. }) && !request.dry_run {
            self.publish_ca(&namespace);
        }
        if !matches!(report.outcome, Outcome::Injected { .. }) {
            tracing::debug!(namespace, workload, outcome = %report.outcome, "not injected");
            return response;
        }
        tracing::info!(namespace, workload, outcome = %report.outcome, "injected");
        let patch = json_patch::diff(&original, &pod);
        match response.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => response.deny(format!("sluice could not build the patch: {e}")),
        }
    }

    /// Records one Event with every problem, on the pod's owner (or the pod when it has a
    /// name and no owner), in the background.
    fn record(&self, namespace: &str, pod: &Value, workload: &str, problems: &[inject::Problem]) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let owner = pod["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.first())
            .cloned();
        let reference = match owner {
            Some(o) => ObjectReference {
                api_version: o["apiVersion"].as_str().map(str::to_owned),
                kind: o["kind"].as_str().map(str::to_owned),
                name: o["name"].as_str().map(str::to_owned),
                uid: o["uid"].as_str().map(str::to_owned),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            None => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(
                    pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or(workload)
                        .to_owned(),
                ),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
        };
        let note: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let mut note = note.join("\n");
        if note.len() > 1000 {
            let cut = (0..=1000)
                .rev()
                .find(|i| note.is_char_boundary(*i))
                .unwrap_or(0);
            note.truncate(cut);
        }
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "SidecarInjection".into(),
            note: Some(note),
            action: "Inject".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not record the injection Event");
            }
        });
    }
}

/// The name to use when no label names the service: a Deployment's pods are named
/// `<deployment>-<pod-template-hash>-<random>`, so that name less the hash; else the owner's,
/// the pod's, or its `generateName`.
pub fn workload_name(pod: &Value) -> String {
    let meta = &pod["metadata"];
    let owner = meta["ownerReferences"]
        .as_array()
        .and_then(|o| o.first())
        .and_then(|o| o["name"].as_str());
    if let (Some(owner), Some(hash)) = (owner, meta["labels"]["pod-template-hash"].as_str())
        && let Some(deployment) = owner.strip_suffix(&format!("-{hash}"))
    {
        return deployment.to_owned();
    }
    owner
        .or_else(|| meta["name"].as_str())
        .map(str::to_owned)
        .or_else(|| {
            meta["generateName"]
                .as_str()
                .map(|g| g.trim_end_matches('-').to_owned())
        })
        .unwrap_or_else(|| "workload".into())
}

/// Keeps the `caBundle` of every webhook in the MutatingWebhookConfiguration `name` equal to
/// the mesh CA.
pub async fn set_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
    let mut config = api.get(name).await?;
    let clients = config.webhooks.iter_mut().flatten();
    if super::set_bundles(clients.map(|w| &mut w.client_config), ca_pem) {
        api.replace(name, &Default::default(), &config).await?;
        tracing::info!(
            configuration = name,
            "set the injector's caBundle to the mesh CA"
        );
    }
    Ok(())
}

/// The server's version as (major, minor): `"1"`, `"20+"` and the like.
pub async fn server_version(client: &kube::Client) -> Result<(u32, u32), kube::Error> {
    let info = client.apiserver_version().await?;
    let number = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .unwrap_or(0)
    };
    Ok((number(&info.major), number(&info.minor)))
}

/// Shared with the webhook server.
pub type SharedInjector = Option<Arc<Injector>>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn review(namespace: &str, pod: Value, dry_run: bool) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace, "operation": "CREATE", "userInfo": {},
                "object": pod, "dryRun": dry_run,
            },
        }))
        .expect("review");
        review.try_into().expect("request")
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-5d8f7c-", "annotations": annotations,
                "labels": {"app": "web", "pod-template-hash": "5d8f7c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c", "uid": "u"}]},
            "spec": {"containers": [{"name": "app", "image": "web"}]},
        })
    }

    fn patched(r: &AdmissionResponse) -> bool {
        r.patch.is_some()
    }

    #[test]
    fn who_is_injected() {
        let injector = Injector::new(Config::default(), Some("sluice".into()), None);
        let enabled = json!({"sluice.dev/inject": "enabled"});
        let disabled = json!({"sluice.dev/inject": "disabled"});
        for (what, namespace, ns_opted_in, annotations, injected) in [
            ("labelled namespace", "shop", true, json!({}), true),
            (
                "labelled namespace, pod opted out",
                "shop",
                true,
                disabled.clone(),
                false,
            ),
            ("unlabelled namespace", "shop", false, json!({}), false),
            (
                "unlabelled namespace, pod opted in",
                "shop",
                false,
                enabled.clone(),
                true,
            ),
            (
                "kube-system, even opted in",
                "kube-system",
                true,
                enabled.clone(),
                false,
            ),
            (
                "the controller's namespace",
                "sluice",
                true,
                enabled.clone(),
                false,
            ),
        ] {
            let r = injector.review(&review(namespace, pod(annotations), false), ns_opted_in);
            assert!(r.allowed, "{what}");
            assert_eq!(patched(&r), injected, "{what}");
        }
    }

    #[test]
    fn reinvocation_adds_nothing_and_problems_are_warnings() {
        let injector = Injector::new(Config::default(), None, None);
        let first = injector.review(
            &review("shop", pod(json!({"sluice.dev/opaque-ports": "x"})), false),
            true,
        );
        let patch: json_patch::Patch =
            serde_json::from_slice(first.patch.as_deref().expect("a patch")).expect("patch json");
        assert!(
            first
                .warnings
                .iter()
                .flatten()
                .any(|w| w.contains("`x` is not a port")),
            "{:?}",
            first.warnings
        );
        let mut after = pod(json!({"sluice.dev/opaque-ports": "x"}));
        json_patch::patch(&mut after, &patch).expect("applies");
        assert!(inject::is_injected(&after));
        let second = injector.review(&review("shop", after, false), true);
        assert!(
            second.allowed && !patched(&second),
            "the second call must not patch"
        );
    }

    #[test]
    fn the_workload_name_of_a_deployments_pod() {
        assert_eq!(workload_name(&pod(json!({}))), "web");
        assert_eq!(
            workload_name(&json!({"metadata": {"name": "solo"}})),
            "solo"
        );
    }
}
