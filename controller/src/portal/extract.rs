//! What a portal handler takes as arguments: the [`User`] (from the auth layer), the user's
//! [`CsrfToken`] for the forms a page renders, and a typed [`Query`] or [`Form`].
//!
//! Queries and forms are decoded like browsers encode them (`+` is a space, `%XX` a byte,
//! invalid UTF-8 becomes U+FFFD), and a field may repeat when the type says it is a list
//! (`rpc=…&rpc=…`). The form's body has been bounded and its CSRF token checked by the
//! portal's layers before any handler runs.

use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::User;
use super::error::PortalError;
use super::server::Shared;

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<User, PortalError> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .ok_or(PortalError::NotSignedIn(
                super::auth::AuthError::NoUserHeader,
            ))
    }
}

/// The CSRF token of the request's user, for the hidden field of every form a page renders.
#[derive(Clone, Debug)]
pub struct CsrfToken(pub String);

impl FromRequestParts<Shared> for CsrfToken {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, PortalError> {
        let user = User::from_request_parts(parts, state).await?;
        Ok(CsrfToken(state.access.csrf.token(&user)))
    }
}

/// A typed query string.
#[derive(Clone, Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, PortalError> {
        serde_html_form::from_str(parts.uri.query().unwrap_or_default())
            .map(Query)
            .map_err(|e| PortalError::BadInput(e.to_string()))
    }
}

/// A typed `application/x-www-form-urlencoded` body (whatever the `Content-Type` says: the
/// CSRF token already proved it is our form).
#[derive(Clone, Debug)]
pub struct Form<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Form<T> {
    type Rejection = PortalError;

    async fn from_request(req: Request, _: &S) -> Result<Self, PortalError> {
        let bytes = axum::body::to_bytes(req.into_body(), super::server::MAX_BODY)
            .await
            .map_err(|_| PortalError::TooLarge)?;
        serde_html_form::from_bytes(&bytes)
            .map(Form)
            .map_err(|e| PortalError::BadInput(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Fields {
        rpc: Vec<String>,
        reason: String,
        x: String,
        bad: String,
    }

    #[test]
    fn forms_decode_like_browsers_send_them() -> Result<(), serde_html_form::de::Error> {
        let f: Fields = serde_html_form::from_str(
            "rpc=GET+%2Fv1%2Fproducts%2F%7Bid%7D&reason=a%26b&x&bad=%zz%4&rpc=b",
        )?;
        assert_eq!(f.rpc, ["GET /v1/products/{id}", "b"]);
        assert_eq!(f.reason, "a&b");
        assert_eq!(f.x, "");
        assert_eq!(f.bad, "%zz%4");
        Ok(())
    }
}
