//! The validating admission webhook: `kubectl apply` of an invalid Sluice resource is refused
//! with the same diagnostics `sluice policy check` gives for a file, did-you-mean included.
//!
//! The object is validated together with the cluster's other resources as the controller last
//! saw them (so a duplicate Route or an AccessPolicy naming a version the service lacks are
//! caught too), and only the diagnostics that point into this object count. Reference errors
//! ([`super::source::ORDER_DEPENDENT`]) depend on creation order (`kubectl apply -f dir/`
//! creates an AccessPolicy before the MeshService it names), so they are admitted with a
//! warning; if they are still there once the controller sees the set, the resource's `Valid`
//! condition says so.
//!
//! Served over HTTPS with a certificate from the mesh CA; the webhook configuration's
//! `caBundle` is the CA certificate (the chart sets it, and the controller keeps it set). The
//! same server answers the sidecar injector's paths ([`super::injector`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::Value;
use sluice_policy::resources::Kind;
use tokio::net::TcpListener;

use super::cluster::SharedDocuments;
use super::crd::GROUP;
use super::injector::{NAMESPACE_PATH, POD_PATH, SharedInjector};
use super::source::{self, ORDER_DEPENDENT, ObjectKey, evaluate, line};
use crate::identity::MeshCa;

/// The path the webhook configuration points at.
pub const PATH: &str = "/validate";
/// AdmissionReviews larger than this are refused (Kubernetes objects are at most ~1.5 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// How long the serving certificate lasts; reissued at every start.
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The serving certificate could not be made.
    #[error("cannot issue the webhook's serving certificate: {0}")]
    Certificate(String),
    /// TLS set-up.
    #[error("cannot set up the webhook's TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The listener.
    #[error("cannot listen on {addr} for the webhook: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A serving certificate for `hosts` (DNS names or IP addresses) signed by the mesh CA, as
/// (certificate chain DER, private key DER).
pub fn serving_certificate(
    ca: &MeshCa,
    hosts: &[String],
    now: SystemTime,
) -> Result<(Vec<u8>, Vec<u8>), WebhookError> {
    let fail = |e: &dyn std::fmt::Display| WebhookError::Certificate(e.to_string());
    let key = KeyPair::generate().map_err(|e| fail(&e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "sluice-controller".into()),
    );
    let mut sans = Vec::new();
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(
                host.clone().try_into().map_err(|e| fail(&e))?,
            )),
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time::OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = time::OffsetDateTime::from((now + SERVING_LIFETIME).min(ca.not_after()));
    let cert = params.signed_by(&key, ca.issuer()).map_err(|e| fail(&e))?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// Binds and serves the webhook on a task; returns the bound address. With an `injector` the
/// same server also answers the mutating webhook's paths ([`super::injector`]).
pub async fn serve(
    addr: SocketAddr,
    ca: &MeshCa,
    hosts: &[String],
    documents: SharedDocuments,
    injector: SharedInjector,
) -> Result<SocketAddr, WebhookError> {
    let (cert, key) = serving_certificate(ca, hosts, SystemTime::now())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.into()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebhookError::Bind { addr, source })?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            // Every admission waits on this answer: without it, Nagle's algorithm holds the
            // response's last segment for the API server's delayed ACK (~40 ms per admission,
            // measured by benches' inject_latency).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let documents = Arc::clone(&documents);
            let injector = injector.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    tracing::debug!(%peer, "webhook TLS handshake failed");
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let documents = Arc::clone(&documents);
                    let injector = injector.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(req, &documents, &injector).await)
                    }
                });
                // A client that never finishes its headers must not hold a task forever.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    documents: &SharedDocuments,
    injector: &SharedInjector,
) -> Response<Full<Bytes>> {
    let mutate = match req.uri().path() {
        PATH => None,
        NAMESPACE_PATH if injector.is_some() => Some(true),
        POD_PATH if injector.is_some() => Some(false),
        _ => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    if req.method() != hyper::Method::POST {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "admission review too large"),
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("not an AdmissionReview: {e}"),
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("no request: {e}")),
    };
    let response = match (mutate, injector) {
        (Some(namespace_opted_in), Some(injector)) => injector.review(&request, namespace_opted_in),
        _ => review_object(&request, &documents.load()),
    };
    let body = serde_json::to_vec(&response.into_review()).unwrap_or_default();
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}

/// The decision on one admission request.
pub fn review_object(
    request: &AdmissionRequest<DynamicObject>,
    documents: &BTreeMap<ObjectKey, Value>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.kind.group != GROUP
    {
        return response;
    }
    let Some(kind) = Kind::parse(&request.kind.kind) else {
        return response;
    };
    let Some(object) = request
        .object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
    else {
        return response;
    };
    let mut object = object;
    // Objects in a namespaced request may come without `metadata.namespace` filled in.
    if let (Some(ns), Some(meta)) = (&request.namespace, object.get_mut("metadata"))
        && meta.get("namespace").is_none()
    {
        meta["namespace"] = Value::String(ns.clone());
    }
    let Some(key) = ObjectKey::of(kind, &object) else {
        return response;
    };
    let (refused, warnings) = check(&key, &object, documents);
    if refused.is_empty() {
        let mut response = response;
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        return response;
    }
    let message = format!(
        "{key} is invalid ({} problem{}):\n{}",
        refused.len(),
        if refused.len() == 1 { "" } else { "s" },
        refused.join("\n")
    );
    response.deny(message)
}

/// The problems that refuse `object`, and those that only warn.
pub fn check(
    key: &ObjectKey,
    object: &Value,
    documents: &BTreeMap<ObjectKey, Value>,
) -> (Vec<String>, Vec<String>) {
    let mut set = documents.clone();
    set.insert(key.clone(), source::document(key, object));
    let evaluation = evaluate(&set);
    let mut refused = Vec::new();
    let mut warnings = Vec::new();
    for d in evaluation.diagnostics.get(key).into_iter().flatten() {
        if d.is_error() && !ORDER_DEPENDENT.contains(&d.code) {
            refused.push(line(d));
        } else {
            warnings.push(line(d));
        }
    }
    (refused, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kind: Kind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_misspelt_field_is_refused_with_the_fix_and_a_dangling_reference_only_warns() {
        let policy = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "callers", "namespace": "default"},
            "spec": {"service": "payments", "rules": [{"from": ["checkout"], "alow": ["GET /"], "reason": "r"}]},
        });
        let k = key(Kind::AccessPolicy, "callers");
        let (refused, _) = check(&k, &policy, &BTreeMap::new());
        assert_eq!(
            refused,
            ["spec.rules[0].alow: unknown field `alow`; did you mean `allow`?"]
        );
        let fixed = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "callers", "namespace": "default"},
            "spec": {"service": "payments", "rules": [{"from": ["checkout"], "allow": ["GET /"], "reason": "r"}]},
        });
        let (refused, warnings) = check(&k, &fixed, &BTreeMap::new());
        assert!(refused.is_empty(), "{refused:?}");
        assert!(
            warnings.iter().any(|w| w.contains("payments")),
            "{warnings:?}"
        );
    }
}
