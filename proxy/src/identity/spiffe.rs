//! SPIFFE IDs as the mesh writes them: `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
//!
//! The caller's identity is read from the URI SAN of a certificate that rustls has already
//! verified against the mesh roots. Parsing is strict on purpose: anything that is not exactly
//! the mesh's shape (another scheme, a port, a query, extra path segments, upper case, two
//! SPIFFE SANs) is refused rather than guessed at, because the result names who is calling.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate or string is not a mesh identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// The certificate could not be parsed.
    #[error("certificate is not valid X.509: {0}")]
    Certificate(String),
    /// No `spiffe://` URI SAN.
    #[error("certificate has no spiffe:// URI SAN")]
    Missing,
    /// More than one `spiffe://` URI SAN: which one would be the caller?
    #[error("certificate has more than one spiffe:// URI SAN")]
    Ambiguous,
    /// A SPIFFE URI that is not `spiffe://<td>/ns/<ns>/svc/<svc>`.
    #[error("`{uri}` is not a mesh identity: {reason}")]
    Malformed {
        /// The URI.
        uri: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A well-formed identity from a trust domain this mesh does not trust.
    #[error("identity `{id}` is from trust domain `{got}`, not this mesh's `{want}`")]
    ForeignTrustDomain {
        /// The identity.
        id: String,
        /// Its trust domain.
        got: String,
        /// Ours.
        want: String,
    },
}

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The mesh's trust domain, e.g. `shop.local`.
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service.
    pub service: String,
}

impl SpiffeId {
    /// The identity of `service` in `namespace` under `trust_domain`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
    ) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service: service.into(),
        }
    }

    /// The identity of a service as policy and routing name it: `name` (namespace `default`,
    /// as `ObjectRef`'s display writes it) or `namespace/name`.
    pub fn of_service(trust_domain: impl Into<String>, service: &str) -> SpiffeId {
        let (ns, name) = service.split_once('/').unwrap_or(("default", service));
        SpiffeId::new(trust_domain, ns, name)
    }

    /// Parses `spiffe://<td>/ns/<ns>/svc/<svc>`.
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        let bad = |reason| SpiffeError::Malformed {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("the scheme must be `spiffe://`"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("a query or fragment is not allowed"));
        }
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("the path is missing"))?;
        if td.is_empty()
            || td.len() > 255
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(bad(
                "the trust domain must be lower-case letters, digits, `-`, `.` or `_` (no port or user)",
            ));
        }
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_kw, ns, svc_kw, svc] = parts.as_slice() else {
            return Err(bad(
                "the path must be exactly /ns/<namespace>/svc/<service>",
            ));
        };
        if *ns_kw != "ns" || *svc_kw != "svc" {
            return Err(bad(
                "the path must be exactly /ns/<namespace>/svc/<service>",
            ));
        }
        if !is_name(ns) || !is_name(svc) {
            return Err(bad(
                "namespace and service must be 1-63 lower-case letters, digits or `-`",
            ));
        }
        Ok(SpiffeId::new(td, *ns, *svc))
    }

    /// The identity in the URI SAN of a DER certificate, which must be from `trust_domain`.
    /// Chain verification is rustls's job and happens before this is called.
    pub fn from_cert_der(der: &[u8], trust_domain: &str) -> Result<SpiffeId, SpiffeError> {
        let id = spiffe_san(der)?;
        if id.trust_domain != trust_domain {
            return Err(SpiffeError::ForeignTrustDomain {
                id: id.to_string(),
                got: id.trust_domain,
                want: trust_domain.to_owned(),
            });
        }
        Ok(id)
    }
}

/// The single `spiffe://` URI SAN of a certificate, parsed.
pub fn spiffe_san(der: &[u8]) -> Result<SpiffeId, SpiffeError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SpiffeError::Certificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
    let mut found = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name
            && uri.to_ascii_lowercase().starts_with("spiffe:")
        {
            if found.is_some() {
                return Err(SpiffeError::Ambiguous);
            }
            found = Some(*uri);
        }
    }
    SpiffeId::parse(found.ok_or(SpiffeError::Missing)?)
}

/// A Kubernetes-style name: what MeshService and namespace names are.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/svc/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mesh_shape_and_round_trips() {
        let id = SpiffeId::parse("spiffe://shop.local/ns/default/svc/checkout").expect("valid");
        assert_eq!(id, SpiffeId::new("shop.local", "default", "checkout"));
        assert_eq!(
            id.to_string(),
            "spiffe://shop.local/ns/default/svc/checkout"
        );
    }

    #[test]
    fn service_names_as_routing_writes_them() {
        assert_eq!(
            SpiffeId::of_service("td", "pay").to_string(),
            "spiffe://td/ns/default/svc/pay"
        );
        assert_eq!(
            SpiffeId::of_service("td", "shop/pay").to_string(),
            "spiffe://td/ns/shop/svc/pay"
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "https://shop.local/ns/default/svc/checkout",
            "spiffe://shop.local/ns/default/svc/checkout/",
            "spiffe://shop.local/ns/default/svc/checkout/x",
            "spiffe://shop.local/ns/default/sa/checkout",
            "spiffe://shop.local:443/ns/default/svc/checkout",
            "spiffe://user@shop.local/ns/default/svc/checkout",
            "spiffe://Shop.local/ns/default/svc/checkout",
            "spiffe://shop.local/ns/default/svc/Checkout",
            "spiffe://shop.local/ns//svc/checkout",
            "spiffe://shop.local/ns/default/svc/checkout?x=1",
            "spiffe://shop.local/ns/default/svc/checkout#f",
            "spiffe://shop.local/ns/../svc/checkout",
            "spiffe:///ns/default/svc/checkout",
            "spiffe://shop.local",
            "spiffe://shop.local/ns/-a/svc/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("ia5")))
            .collect();
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn reads_the_uri_san_of_a_certificate() {
        let der = cert_with(&["spiffe://shop.local/ns/default/svc/checkout"]);
        let id = SpiffeId::from_cert_der(&der, "shop.local").expect("id");
        assert_eq!(id.service, "checkout");
        assert!(matches!(
            SpiffeId::from_cert_der(&der, "other.local"),
            Err(SpiffeError::ForeignTrustDomain { .. })
        ));
        assert_eq!(
            spiffe_san(&cert_with(&["https://example.com"])),
            Err(SpiffeError::Missing)
        );
        assert_eq!(
            spiffe_san(&cert_with(&[
                "spiffe://shop.local/ns/default/svc/a",
                "spiffe://shop.local/ns/default/svc/b"
            ])),
            Err(SpiffeError::Ambiguous)
        );
        assert!(matches!(
            spiffe_san(&cert_with(&["spiffe://shop.local/ns/default/svc/a/b"])),
            Err(SpiffeError::Malformed { .. })
        ));
    }
}
