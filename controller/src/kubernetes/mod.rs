//! Sluice on Kubernetes: the six kinds as custom resources, the controller in the cluster, the
//! service registry from Services and Pods, the CA in a Secret, and the admission webhook.
//!
//! This module is the Kubernetes backend of the controller. The core (policy distribution,
//! identity, rollouts, the portal) never names kube or k8s-openapi, and a test checks that no
//! other module does. What flows from here into the core is what a policy directory and
//! `sluice up` give it too: a policy snapshot (each custom resource loaded as a synthetic file
//! by the same loader, so the diagnostics are the same), service addresses and instances.
//!
//! - [`crd`]: the CustomResourceDefinitions, from the policy crate's schemars schemas.
//! - [`source`]: custom resources → policy documents, diagnostics → resources.
//! - [`cluster`]: the watch loop, the registry, `status` and Events.
//! - [`webhook`]: the validating admission webhook, and the server of the mutating one.
//! - [`inject`]: the one sidecar-injection function; [`injector`] calls it from the mutating
//!   webhook, [`manifests`] from `sluice inject`.
//! - [`secret`]: the mesh CA kept in a Secret.
//! - [`identity`]: workloads proven by their pods' service-account tokens (TokenReview).
//! - [`instances`]: the instances the controller starts (environments' copies) as
//!   Deployments copied from each service's own, through [`crate::instance::Backend`].

pub mod cluster;
pub mod crd;
pub mod identity;
pub mod inject;
pub mod injector;
pub mod instances;
pub mod manifests;
pub mod secret;
pub mod source;
pub mod status;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// The Kubernetes flags of `sluice controller`.
#[derive(Clone, Debug, Default, Args)]
pub struct KubernetesArgs {
    /// Take policy from the cluster's Sluice custom resources and instances from its Services
    /// and Pods, instead of `--policy` and registrations. Uses the in-cluster configuration,
    /// or `--kubeconfig` / `KUBECONFIG` / `~/.kube/config`.
    #[arg(long, conflicts_with = "policy")]
    pub kubernetes: bool,
    /// The kubeconfig to use (development; in a pod the service account is used).
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// Keep the mesh CA in this Secret (`NAMESPACE/NAME`, keys `tls.crt` and `tls.key`):
    /// created with a new CA on first start, or brought by the operator.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kubernetes")]
    pub ca_secret: Option<String>,
    /// Serve the validating admission webhook (HTTPS, `POST /validate`) on this address.
    #[arg(long, value_name = "ADDR", requires = "kubernetes")]
    pub webhook: Option<SocketAddr>,
    /// A DNS name or IP address for the webhook's serving certificate (repeatable), e.g.
    /// `sluice-controller.sluice.svc`.
    #[arg(long, value_name = "HOST", requires = "webhook")]
    pub webhook_host: Vec<String>,
    /// Keep the `caBundle` of this ValidatingWebhookConfiguration set to the mesh CA.
    #[arg(long, value_name = "NAME", requires = "webhook")]
    pub webhook_configuration: Option<String>,
    /// Also serve the sidecar injector (`POST /mutate/namespace`, `/mutate/pod`) on the
    /// webhook's address.
    #[arg(long, requires = "webhook")]
    pub inject: bool,
    /// Keep the `caBundle` of this MutatingWebhookConfiguration set to the mesh CA.
    #[arg(long, value_name = "NAME", requires = "inject")]
    pub inject_configuration: Option<String>,
    /// `auto` (native sidecars from Kubernetes 1.29 on, detected at start), `native` or
    /// `classic`.
    #[arg(long, value_name = "MODE", default_value = "auto", requires = "inject")]
    pub inject_mode: String,
    /// The proxy's image.
    #[arg(long, value_name = "IMAGE", requires = "inject")]
    pub inject_image: Option<String>,
    /// The init container's image (default: the proxy's with `-init`).
    #[arg(long, value_name = "IMAGE", requires = "inject")]
    pub inject_init_image: Option<String>,
    /// `imagePullPolicy` of the injected containers.
    #[arg(long, value_name = "POLICY", requires = "inject")]
    pub inject_pull_policy: Option<String>,
    /// Where injected proxies reach this controller, e.g.
    /// `https://sluice-controller.sluice.svc:7071` (TLS only).
    #[arg(
        long,
        value_name = "URL",
        requires = "inject",
        value_parser = inject::parse_controller_addr
    )]
    pub inject_controller_addr: Option<String>,
    /// The controller's own namespace, never injected (in a pod: from the service account).
    #[arg(long, value_name = "NAMESPACE", requires = "inject")]
    pub namespace: Option<String>,
}

/// Why the Kubernetes backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No usable configuration.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The API server refused or failed.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The CA Secret.
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
    /// The webhook.
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    /// A bad `--inject-*` flag.
    #[error("{0}")]
    Inject(String),
}

/// A client from `--kubeconfig`, or inferred (in-cluster, `KUBECONFIG`, `~/.kube/config`).
pub async fn client(args: &KubernetesArgs) -> Result<kube::Client, KubernetesError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubernetesError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| KubernetesError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubernetesError::Config(e.to_string()))
}

/// What the controller learns from the cluster before it serves.
pub struct Started {
    /// The client.
    pub client: kube::Client,
    /// Everything listed at start.
    pub picture: cluster::Picture,
    /// The policy to start with (the largest valid set of the cluster's resources).
    pub policy: crate::server::state::PolicySnapshot,
    /// The documents it was built from.
    pub last_good: std::collections::BTreeMap<source::ObjectKey, serde_json::Value>,
}

/// Connects and lists the cluster once: the state is rebuilt from the API server at every
/// start, nothing about the cluster is kept on disk.
pub async fn start(args: &KubernetesArgs) -> Result<Started, KubernetesError> {
    let client = client(args).await?;
    let picture = cluster::Picture::list(&client).await?;
    let (policy, last_good) = cluster::initial_policy(&picture);
    tracing::info!(
        resources = picture.objects.len(),
        services = picture.services.len(),
        pods = picture.pods.len(),
        version = policy.version,
        "listed the cluster"
    );
    Ok(Started {
        client,
        picture,
        policy,
        last_good,
    })
}

/// Starts the watch loop and, if asked, the webhook. Returns the webhook's bound address.
pub async fn spawn(
    args: &KubernetesArgs,
    started: Started,
    plane: std::sync::Arc<crate::server::state::ControlPlane>,
    ca: &crate::identity::MeshCa,
) -> Result<Option<SocketAddr>, KubernetesError> {
    let documents: cluster::SharedDocuments =
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(started.picture.documents()));
    let mut bound = None;
    if let Some(addr) = args.webhook {
        let mut hosts = args.webhook_host.clone();
        if hosts.is_empty() {
            hosts.push(addr.ip().to_string());
        }
        let injector = if args.inject {
            Some(std::sync::Arc::new(
                injector(args, &started.client)
                    .await?
                    .with_ca(ca.cert_pem()),
            ))
        } else {
            None
        };
        let a = webhook::serve(
            addr,
            ca,
            &hosts,
            std::sync::Arc::clone(&documents),
            injector,
        )
        .await?;
        tracing::info!(addr = %a, hosts = ?hosts, "serving the admission webhook");
        bound = Some(a);
        if let Some(name) = &args.webhook_configuration
            && let Err(e) = set_ca_bundle(&started.client, name, ca.cert_pem()).await
        {
            tracing::warn!(configuration = name, error = %e, "could not set the webhook's caBundle");
        }
        if let Some(name) = &args.inject_configuration
            && let Err(e) = injector::set_ca_bundle(&started.client, name, ca.cert_pem()).await
        {
            tracing::warn!(configuration = name, error = %e, "could not set the injector's caBundle");
        }
    }
    let store_plane = std::sync::Arc::clone(&plane);
    let controller = cluster::ClusterController {
        client: started.client,
        plane,
        documents,
        last_good: started.last_good,
        picture: started.picture,
        reported_error: None,
        rollout_phase: std::sync::Arc::new(move |namespace: &str, service: &str| {
            let lines = crate::status::rollout_lines(store_plane.store()).ok()?;
            let name = format!("{namespace}/{service}");
            let line = lines.into_iter().find(|l| l.service == name)?;
            Some(
                if line.phase.contains("progress")
                    || line.phase.contains("paus")
                    || line.phase.contains("wait")
                {
                    format!("{} {}%", line.phase, line.weight)
                } else {
                    line.phase
                },
            )
        }),
    };
    tokio::spawn(controller.run());
    Ok(bound)
}

/// The injector the flags describe; `auto` asks the server for its version.
async fn injector(
    args: &KubernetesArgs,
    client: &kube::Client,
) -> Result<injector::Injector, KubernetesError> {
    let mode = match args.inject_mode.as_str() {
        "native" => inject::Mode::Native,
        "classic" => inject::Mode::Classic,
        "auto" => {
            let (major, minor) = injector::server_version(client).await.map_err(|e| {
                KubernetesError::Inject(format!("cannot read the server's version: {e}"))
            })?;
            let mode = inject::Mode::for_server(major, minor);
            tracing::info!(server = %format!("{major}.{minor}"), %mode, "sidecar mode from the server's version");
            mode
        }
        other => {
            return Err(KubernetesError::Inject(format!(
                "--inject-mode `{other}`: expected `auto`, `native` or `classic`"
            )));
        }
    };
    let mut config = inject::Config {
        mode,
        pull_policy: args.inject_pull_policy.clone(),
        ..inject::Config::default()
    };
    if let Some(image) = &args.inject_image {
        config.proxy_image = image.clone();
        config.init_image = manifests::init_image_for(image);
    }
    if let Some(image) = &args.inject_init_image {
        config.init_image = image.clone();
    }
    if let Some(addr) = &args.inject_controller_addr {
        config.controller_addr = addr.clone();
    }
    let namespace = args.namespace.clone().or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_owned())
    });
    Ok(injector::Injector::new(
        config,
        namespace,
        Some(client.clone()),
    ))
}

/// Sets every webhook's `caBundle` in the ValidatingWebhookConfiguration `name`.
async fn set_ca_bundle(client: &kube::Client, name: &str, ca_pem: &str) -> Result<(), kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let api: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(client.clone());
    let mut config = api.get(name).await?;
    let clients = config.webhooks.iter_mut().flatten();
    if set_bundles(clients.map(|w| &mut w.client_config), ca_pem) {
        api.replace(name, &Default::default(), &config).await?;
        tracing::info!(
            configuration = name,
            "set the webhook's caBundle to the mesh CA"
        );
    }
    Ok(())
}

/// Points each webhook client config at `ca_pem`; whether any changed (so the configuration
/// is written only when it must be). Shared by the validating and the mutating webhook, whose
/// configurations differ in type only.
pub(crate) fn set_bundles<'a>(
    clients: impl Iterator<
        Item = &'a mut k8s_openapi::api::admissionregistration::v1::WebhookClientConfig,
    >,
    ca_pem: &str,
) -> bool {
    let bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    let mut changed = false;
    for client in clients {
        if client.ca_bundle.as_ref() != Some(&bundle) {
            client.ca_bundle = Some(bundle.clone());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    #[test]
    fn ca_bundles_are_written_only_when_they_differ() {
        use super::set_bundles;
        use k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
        let mut clients = [
            WebhookClientConfig::default(),
            WebhookClientConfig::default(),
        ];
        assert!(set_bundles(clients.iter_mut(), "PEM"));
        let pem: &[u8] = b"PEM";
        assert!(
            clients
                .iter()
                .all(|c| c.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(pem))
        );
        assert!(!set_bundles(clients.iter_mut(), "PEM"), "nothing to change");
        assert!(set_bundles(clients.iter_mut(), "NEW"), "a rotated CA");
    }

    /// The core never names kube or k8s-openapi: only this module does. (`server.rs` starts
    /// this module for `--kubernetes`, through the functions above.)
    #[test]
    fn only_this_module_uses_kube() {
        fn scan(dir: &std::path::Path, offenders: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("read src").flatten() {
                let path = entry.path();
                if path.ends_with("kubernetes") {
                    continue;
                }
                if path.is_dir() {
                    scan(&path, offenders);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if text.contains("kube::") || text.contains("k8s_openapi") {
                        offenders.push(path.display().to_string());
                    }
                }
            }
        }
        let mut offenders = Vec::new();
        scan(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut offenders,
        );
        assert!(
            offenders.is_empty(),
            "kube is used outside src/kubernetes/: {offenders:?}"
        );
    }
}
