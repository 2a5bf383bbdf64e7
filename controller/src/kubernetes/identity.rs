//! Workload identity from Kubernetes: a proxy proves its workload with its pod's projected
//! service-account token (audience `sluice`), which the API server checks (TokenReview).
//!
//! A token proves a service account, and, when the kubelet projected it, the pod it was made
//! for (`authentication.kubernetes.io/pod-name`). That maps to exactly one mesh identity, or
//! to none:
//! - **bound to a pod**: the pod (which must still run under the token's service account) is
//!   the workload, and its service is the one MeshService whose Kubernetes Service selects it,
//!   the same rule that makes the pod an instance of that service in the registry. A pod
//!   selected by no mesh service, or by two, gets nothing, and the refusal says which.
//! - **not bound** (e.g. `kubectl create token`): the service account is the workload, and its
//!   name must be a MeshService's in its namespace (the Linkerd convention).
//!
//! So a workload never obtains another's certificate: it would need a token for a pod the
//! other service's selector matches, or for the other service's account, and either is
//! already the right to run as that service in that namespace (Kubernetes' own boundary).
//!
//! The controller's own HMAC bootstrap tokens (`sluice controller token`) keep working beside
//! it, for workloads outside the cluster: they are told apart by shape (one `.` instead of a
//! JWT's two), never by trying one authenticator after the other.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use sluice_policy::validate::ObjectRef;

use crate::identity::{AuthError, AuthFuture, TokenKey, WorkloadAuthenticator, WorkloadIdentity};
use crate::server::state::ControlPlane;

/// The audience a proxy's projected token must be minted for: a token meant for the API
/// server (or anything else) is not accepted as a proof for Sluice, and the reverse.
pub const TOKEN_AUDIENCE: &str = "sluice";

/// The extra field in which the API server names the pod a bound token was made for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// And its UID: a pod deleted and re-created under the same name is another pod.
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Service-account tokens checked with TokenReview; the mesh's bootstrap tokens by their key.
pub struct ServiceAccountAuthenticator {
    client: Client,
    bootstrap: TokenKey,
    plane: Arc<ControlPlane>,
}

impl ServiceAccountAuthenticator {
    /// Checks tokens with `client`'s API server, and mesh services against `plane`'s policy.
    pub fn new(client: Client, bootstrap: TokenKey, plane: Arc<ControlPlane>) -> Self {
        ServiceAccountAuthenticator {
            client,
            bootstrap,
            plane,
        }
    }

    async fn review(&self, token: &str) -> Result<WorkloadIdentity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "no reason given".into());
            return Err(AuthError::Rejected(format!(
                "the Kubernetes API server did not accept the service-account token for \
                 audience `{TOKEN_AUDIENCE}`: {why}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, account) = service_account(&username).ok_or_else(|| {
            AuthError::Rejected(format!(
                "the token is `{username}`'s, not a service account's; give the workload its \
                 pod's projected token (audience `{TOKEN_AUDIENCE}`)"
            ))
        })?;
        let extra = user.extra.unwrap_or_default();
        match one(&extra, POD_NAME_EXTRA) {
            Some(pod) => {
                self.pod_identity(namespace, account, pod, one(&extra, POD_UID_EXTRA))
                    .await
            }
            None => self.account_identity(namespace, account),
        }
    }

    /// The service of the pod a bound token was made for.
    async fn pod_identity(
        &self,
        namespace: &str,
        account: &str,
        pod_name: &str,
        pod_uid: Option<&str>,
    ) -> Result<WorkloadIdentity, AuthError> {
        let unavailable = |e: kube::Error| AuthError::Unavailable(e.to_string());
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(pod_name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                AuthError::Rejected(format!("the token's pod {namespace}/{pod_name} is gone"))
            })?;
        if pod_uid.is_some_and(|uid| pod.metadata.uid.as_deref() != Some(uid)) {
            return Err(AuthError::Rejected(format!(
                "the token was made for an earlier pod named {namespace}/{pod_name}"
            )));
        }
        let runs_as = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if runs_as != account {
            return Err(AuthError::Rejected(format!(
                "pod {namespace}/{pod_name} runs as service account `{runs_as}`, the token is \
                 `{account}`'s"
            )));
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let services = Api::<Service>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map_err(unavailable)?;
        let policy = self.plane.policy();
        let mut meshed: Vec<String> = services
            .items
            .iter()
            .filter(|s| selects(s, &labels))
            .filter_map(|s| s.metadata.name.clone())
            .filter(|name| {
                policy
                    .set
                    .services
                    .contains_key(&ObjectRef::new(namespace, name))
            })
            .collect();
        meshed.sort();
        match meshed.as_slice() {
            [service] => identity(namespace, service),
            [] => Err(AuthError::Rejected(format!(
                "pod {namespace}/{pod_name} is selected by no Service that a MeshService \
                 declares; label it so that its service's selector matches"
            ))),
            several => Err(AuthError::Rejected(format!(
                "pod {namespace}/{pod_name} is selected by the Services of several mesh \
                 services ({}), so its identity would be ambiguous; give each workload its own \
                 labels",
                several.join(", ")
            ))),
        }
    }

    /// The service named like an unbound token's service account.
    fn account_identity(
        &self,
        namespace: &str,
        account: &str,
    ) -> Result<WorkloadIdentity, AuthError> {
        let declared = self
            .plane
            .policy()
            .set
            .services
            .contains_key(&ObjectRef::new(namespace, account));
        if declared {
            identity(namespace, account)
        } else {
            Err(AuthError::Rejected(format!(
                "the token is not bound to a pod, and no MeshService {namespace}/{account} is \
                 named like its service account; use the pod's projected token (sluice inject \
                 mounts one), or run the workload as a service account named like its service"
            )))
        }
    }
}

impl WorkloadAuthenticator for ServiceAccountAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            if token.len() > crate::identity::token::MAX_TOKEN_BYTES {
                return Err(AuthError::Malformed(format!(
                    "it is longer than {} bytes",
                    crate::identity::token::MAX_TOKEN_BYTES
                )));
            }
            match token.matches('.').count() {
                1 => self.bootstrap.authenticate(token).await,
                2 => self.review(token).await,
                _ => Err(AuthError::Malformed(
                    "neither a service-account token (a JWT) nor a Sluice bootstrap token".into(),
                )),
            }
        })
    }
}

/// `system:serviceaccount:NAMESPACE:NAME` → (namespace, name).
fn service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name))
}

/// The single value of `key` among a TokenReview's extra fields.
fn one<'a>(extra: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    match extra.get(key).map(Vec::as_slice) {
        Some([value]) => Some(value.as_str()),
        _ => None,
    }
}

/// Whether `service`'s selector picks a pod with `labels` (an empty selector picks nothing:
/// such a Service's endpoints are managed by hand).
fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty());
    selector.is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn identity(namespace: &str, service: &str) -> Result<WorkloadIdentity, AuthError> {
    WorkloadIdentity::new(namespace, service).map_err(|e| AuthError::Rejected(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_accounts_are_workloads() {
        assert_eq!(
            service_account("system:serviceaccount:shop:payments"),
            Some(("shop", "payments"))
        );
        assert_eq!(service_account("system:serviceaccount:shop:"), None);
        assert_eq!(service_account("system:serviceaccount::x"), None);
        assert_eq!(service_account("alice"), None);
        assert_eq!(service_account("system:node:worker-1"), None);
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "payments".to_owned())].into();
        assert!(!selects(&Service::default(), &labels));
        let with_selector = |selector: BTreeMap<String, String>| Service {
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!selects(&with_selector(BTreeMap::new()), &labels));
        let service = with_selector(labels.clone());
        assert!(selects(&service, &labels));
        let other: BTreeMap<String, String> = [("app".to_owned(), "frontend".to_owned())].into();
        assert!(!selects(&service, &other));
    }

    #[test]
    fn extras_count_only_when_single() {
        let mut extra = BTreeMap::new();
        extra.insert(POD_NAME_EXTRA.to_owned(), vec!["a".to_owned()]);
        assert_eq!(one(&extra, POD_NAME_EXTRA), Some("a"));
        extra.insert(
            POD_NAME_EXTRA.to_owned(),
            vec!["a".to_owned(), "b".to_owned()],
        );
        assert_eq!(one(&extra, POD_NAME_EXTRA), None);
        assert_eq!(one(&extra, POD_UID_EXTRA), None);
    }
}
