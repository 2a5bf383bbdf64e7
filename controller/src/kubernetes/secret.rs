//! The mesh CA kept in a Secret (`kubernetes.io/tls`: `tls.crt`, `tls.key`): generated and
//! stored on first start, or brought by the operator. The checks are the ones a CA from files
//! gets ([`MeshCa::from_pem`]); only where the PEM comes from differs.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::identity::ca::CaOrigin;
use crate::identity::{CaError, CaPem, MeshCa};

/// Why the CA Secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `--ca-secret` is not `NAMESPACE/NAME`.
    #[error("--ca-secret `{0}` must be NAMESPACE/NAME, e.g. `sluice/sluice-ca`")]
    Name(String),
    /// The API refused or failed.
    #[error("cannot read or create the CA Secret {name}: {source}")]
    Api {
        /// `namespace/name`.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// The Secret lacks a key.
    #[error(
        "the CA Secret {name} has no `{key}`; it needs `tls.crt` (the CA certificate, PEM) and `tls.key` (its PKCS#8 private key, PEM)"
    )]
    Missing {
        /// `namespace/name`.
        name: String,
        /// The missing key.
        key: &'static str,
    },
    /// The CA in it is invalid, or a new one could not be made.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Loads the CA from `namespace/name`, creating the Secret with a new CA if there is none.
pub async fn load_or_create(
    client: &kube::Client,
    secret: &str,
    now: SystemTime,
) -> Result<(MeshCa, CaOrigin), SecretError> {
    let (namespace, name) = secret
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .ok_or_else(|| SecretError::Name(secret.to_owned()))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error = |source| SecretError::Api {
        name: secret.to_owned(),
        source,
    };
    if let Some(existing) = api.get_opt(name).await.map_err(api_error)? {
        return Ok((from_secret(secret, &existing, now)?, CaOrigin::Loaded));
    }
    let pem = MeshCa::generate(now)?;
    let new = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "sluice".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(pem.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(pem.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &new).await {
        Ok(_) => Ok((
            MeshCa::from_pem(&pem, &format!("Secret {secret}"), now)?,
            CaOrigin::Generated,
        )),
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(name).await.map_err(api_error)?;
            Ok((from_secret(secret, &existing, now)?, CaOrigin::Loaded))
        }
        Err(e) => Err(api_error(e)),
    }
}

fn from_secret(name: &str, secret: &Secret, now: SystemTime) -> Result<MeshCa, SecretError> {
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| SecretError::Missing {
                name: name.to_owned(),
                key,
            })
    };
    let pem = CaPem {
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    };
    Ok(MeshCa::from_pem(&pem, &format!("Secret {name}"), now)?)
}
