//! Who is calling: the bootstrap token in `authorization: Bearer <token>` metadata.
//!
//! `Register`, `ReportTraffic` and `ReportDenials` change what every proxy routes to and what
//! canary analysis concludes, so they need the same proof as `Certify`: the workload's
//! bootstrap token, checked by the same [`WorkloadAuthenticator`]. It travels as metadata
//! rather than a message field so the messages stay as they are and a proxy can attach it to
//! every call in one place. `Watch` does not need it (see docs/controller.md).

use tonic::metadata::MetadataMap;

use super::ApiError;
use crate::identity::{AuthError, WorkloadAuthenticator, WorkloadIdentity};

/// The metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";
/// The scheme in front of the token, as in HTTP.
const BEARER: &str = "Bearer ";

/// The workload the call's bearer token proves. Runs before the request is looked at, so an
/// anonymous caller learns nothing about what the controller would accept.
pub(super) async fn caller(
    authenticator: &dyn WorkloadAuthenticator,
    metadata: &MetadataMap,
) -> Result<WorkloadIdentity, ApiError> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Err(ApiError::MissingBearer);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the authorization metadata is not ASCII".into()))?;
    // The scheme is case-insensitive in HTTP; accept `bearer` as well.
    let token = match value.get(..BEARER.len()) {
        Some(scheme) if scheme.eq_ignore_ascii_case(BEARER) => value[BEARER.len()..].trim(),
        _ => {
            return Err(AuthError::Malformed(
                "the authorization metadata must be `Bearer <token>`".into(),
            )
            .into());
        }
    };
    if token.is_empty() {
        return Err(ApiError::MissingBearer);
    }
    Ok(authenticator.authenticate(token).await?)
}

/// Refuses a request for another workload than the token proves.
pub(super) fn require_same(
    authenticated: &WorkloadIdentity,
    requested: WorkloadIdentity,
) -> Result<(), ApiError> {
    if *authenticated == requested {
        Ok(())
    } else {
        Err(ApiError::WrongWorkload {
            authenticated: authenticated.clone(),
            requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;
    use crate::identity::TokenKey;

    async fn run(key: &TokenKey, value: Option<&str>) -> Result<WorkloadIdentity, ApiError> {
        let mut metadata = MetadataMap::new();
        if let Some(v) = value {
            metadata.insert(
                AUTHORIZATION,
                MetadataValue::try_from(v).expect("ascii metadata"),
            );
        }
        caller(key, &metadata).await
    }

    #[tokio::test]
    async fn bearer_tokens_are_parsed_and_checked() {
        let key = TokenKey::generate().expect("key");
        let payments = WorkloadIdentity::new("default", "payments").expect("identity");
        let token = key.issue(
            &payments,
            std::time::Duration::from_secs(60),
            std::time::SystemTime::now(),
        );
        assert_eq!(
            run(&key, Some(&format!("Bearer {token}"))).await.ok(),
            Some(payments.clone())
        );
        assert_eq!(
            run(&key, Some(&format!("bearer {token}"))).await.ok(),
            Some(payments)
        );
        assert!(matches!(
            run(&key, None).await,
            Err(ApiError::MissingBearer)
        ));
        assert!(matches!(
            run(&key, Some("Bearer ")).await,
            Err(ApiError::MissingBearer)
        ));
        assert!(matches!(
            run(&key, Some(&token)).await,
            Err(ApiError::Unauthenticated(AuthError::Malformed(_)))
        ));
        assert!(matches!(
            run(&key, Some("Bearer x.y")).await,
            Err(ApiError::Unauthenticated(_))
        ));
    }
}
