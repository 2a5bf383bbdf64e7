//! The controller side of mesh identity: the certificate authority, issuing workload
//! certificates for CSRs, and proving which workload is asking.
//!
//! Every meshed workload is named by a SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`,
//! carried as the only URI SAN of a short-lived certificate. A proxy generates its key, sends a
//! CSR with a bootstrap token over `Certify`, and gets the certificate back; the key never
//! leaves the proxy, and the controller decides the identity from the token alone.
//!
//! | module | what |
//! |---|---|
//! | [`ca`] | the mesh CA: generated into the state directory, or loaded from files (later a Secret) |
//! | [`issue`] | CSR checks and leaf certificates with exactly one SPIFFE URI SAN |
//! | [`token`] | HMAC bootstrap tokens and the [`WorkloadAuthenticator`] trait they implement |
//! | [`cli`] | `sluice identity token` |
//!
//! `docs/identity.md` describes the whole flow for operators.

pub mod ca;
pub mod cli;
mod files;
pub mod issue;
pub mod token;

use std::fmt;

pub use ca::{CaError, CaPem, MeshCa};
pub use issue::{Certifier, CsrError, IssueError, IssuedCertificate};
pub use token::{AuthError, AuthFuture, KeyFileError, TokenKey, WorkloadAuthenticator};

/// The namespace a workload is in when none is given (as in policy files).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Which workload a certificate is for: the part of [`sluice_api::v1::Workload`] that identity
/// is made of. Both fields are DNS labels, checked on construction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    namespace: String,
    service: String,
}

impl WorkloadIdentity {
    /// A workload identity, if both names are DNS labels (RFC 1123: lowercase letters, digits
    /// and `-`, starting and ending with a letter or digit, at most 63 characters).
    pub fn new(namespace: &str, service: &str) -> Result<Self, InvalidName> {
        check_dns_label("namespace", namespace)?;
        check_dns_label("service", service)?;
        Ok(WorkloadIdentity {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/svc/<service>` from `trust_domain`, the
    /// only shape the mesh CA issues to workloads. Anything else (another trust domain, the
    /// controller's own `/sluice/controller`, extra segments) is not a workload.
    pub fn from_spiffe_id(uri: &str, trust_domain: &TrustDomain) -> Result<Self, String> {
        let not = |why: &str| format!("`{uri}` is not a workload identity of this mesh: {why}");
        let rest = uri
            .strip_prefix("spiffe://")
            .and_then(|r| r.strip_prefix(trust_domain.as_str()))
            .ok_or_else(|| not(&format!("it is not from trust domain `{trust_domain}`")))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["", "ns", namespace, "svc", service] => {
                WorkloadIdentity::new(namespace, service).map_err(|e| not(&e.to_string()))
            }
            _ => Err(not("the path is not /ns/<namespace>/svc/<service>")),
        }
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> String {
        format!(
            "spiffe://{}/ns/{}/svc/{}",
            trust_domain.0, self.namespace, self.service
        )
    }
}

impl fmt::Display for WorkloadIdentity {
    /// `namespace/service`, the way policy files and the CLI write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)
    }
}

/// A SPIFFE trust domain (`shop.local`): the mesh's `spec.trustDomain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// A trust domain, if it is one by the SPIFFE ID spec: 1–255 characters of lowercase
    /// letters, digits, `.`, `-` and `_`.
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(TrustDomain(name.to_owned()))
        } else {
            Err(InvalidName {
                field: "trust domain",
                value: name.to_owned(),
                why: "a SPIFFE trust domain is 1-255 lowercase letters, digits, `.`, `-` or `_`",
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    /// `cluster.local`, the default of the Mesh resource.
    fn default() -> Self {
        TrustDomain("cluster.local".to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name that cannot be part of an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} `{value}` is not valid: {why}")]
pub struct InvalidName {
    /// Which name (`service`, `namespace`, `trust domain`).
    pub field: &'static str,
    /// What was given.
    pub value: String,
    /// The rule it breaks.
    pub why: &'static str,
}

/// Checks that `value` is an RFC 1123 DNS label, the rule for Kubernetes namespaces and
/// service names, so identities are the same standalone and in a cluster.
pub fn check_dns_label(field: &'static str, value: &str) -> Result<(), InvalidName> {
    let fail = |why| {
        Err(InvalidName {
            field,
            value: value.to_owned(),
            why,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > 63 {
        return fail("a DNS label has at most 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("a DNS label has only lowercase letters, digits and `-`");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail("a DNS label starts and ends with a letter or digit");
    }
    Ok(())
}

/// Why identity state (the CA, the token key) could not be loaded or created, or an identity
/// argument is wrong.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The CA.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The token key.
    #[error(transparent)]
    TokenKey(#[from] KeyFileError),
    /// A name.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// A bad duration or other argument.
    #[error("{0}")]
    Argument(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "payments", "shop-2", "0a", &"x".repeat(63)] {
            assert!(check_dns_label("service", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Payments",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "ä",
            &"x".repeat(64),
        ] {
            assert!(check_dns_label("service", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workload_identities_parse_from_spiffe_ids_of_this_mesh_only() -> Result<(), InvalidName> {
        let td = TrustDomain::new("shop.local")?;
        let id = WorkloadIdentity::new("shop", "payments")?;
        assert_eq!(
            WorkloadIdentity::from_spiffe_id(&id.spiffe_id(&td), &td),
            Ok(id)
        );
        for bad in [
            "spiffe://other.local/ns/shop/svc/payments",
            "spiffe://shop.local/sluice/controller",
            "spiffe://shop.local/ns/shop/svc/payments/x",
            "spiffe://shop.localx/ns/shop/svc/payments",
            "spiffe://shop.local/ns/Shop/svc/payments",
        ] {
            assert!(WorkloadIdentity::from_spiffe_id(bad, &td).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn spiffe_id() -> Result<(), InvalidName> {
        let id = WorkloadIdentity::new("shop", "payments")?;
        let td = TrustDomain::new("shop.local")?;
        assert_eq!(
            id.spiffe_id(&td),
            "spiffe://shop.local/ns/shop/svc/payments"
        );
        assert!(TrustDomain::new("Shop.local").is_err());
        assert!(TrustDomain::new("shop/local").is_err());
        Ok(())
    }
}
