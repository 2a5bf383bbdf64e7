//! The API's errors, and the one place they become gRPC statuses.

use tonic::{Code, Status};

use crate::identity::{AuthError, CsrError, InvalidName, IssueError, WorkloadIdentity};
use crate::store::StoreError;

/// Why a call to the `Mesh` service failed. Handlers return these; only
/// [`From<ApiError> for Status`](#impl-From%3CApiError%3E-for-Status) picks codes and messages.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A required field is missing.
    #[error("`{0}` is required")]
    MissingField(&'static str),
    /// A name in the request cannot be part of an identity.
    #[error("invalid workload: {0}")]
    InvalidWorkload(#[from] InvalidName),
    /// The token proves nothing.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// The credential proves a different workload than the request names.
    #[error(
        "the {credential} is for {authenticated}, but the request asks for a certificate for \
         {requested}; a credential only yields certificates for the workload it names"
    )]
    NotYourIdentity {
        /// `bootstrap token` or `client certificate`.
        credential: &'static str,
        /// What the credential proves.
        authenticated: WorkloadIdentity,
        /// What the request asked for.
        requested: WorkloadIdentity,
    },
    /// A call that needs a workload certificate came on a connection without one.
    #[error(
        "this call needs the workload's mesh certificate: connect with the certificate that \
         Certify issued (a proxy does once it has one; until then only Certify with a bootstrap \
         token is open to it)"
    )]
    NoClientCertificate,
    /// The client certificate is from the mesh CA but names no workload.
    #[error("the client certificate is not a workload certificate: {0}")]
    NotAWorkloadCertificate(String),
    /// The certificate proves a different workload than the one a call names.
    #[error(
        "the client certificate proves {authenticated}; this request is for {requested}; a proxy \
         may only watch, register and report for its own workload"
    )]
    WrongWorkload {
        /// What the certificate proves.
        authenticated: WorkloadIdentity,
        /// What the request names.
        requested: WorkloadIdentity,
    },
    /// A reported denial was made by another service than the reporter: proxies report only
    /// the denials they made as the callee.
    #[error(
        "the client certificate proves {authenticated}; denials[{index}] is a denial by \
         {reported}; a proxy only reports denials of calls to its own workload"
    )]
    NotYourDenial {
        /// What the certificate proves.
        authenticated: WorkloadIdentity,
        /// Which denial.
        index: usize,
        /// The callee it names, `namespace/service` as sent.
        reported: String,
    },
    /// Issuing failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// A field has a value the API does not accept.
    #[error("invalid `{field}`: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            ApiError::MissingField(_)
            | ApiError::InvalidWorkload(_)
            | ApiError::InvalidField { .. } => Code::InvalidArgument,
            ApiError::Unauthenticated(AuthError::Unavailable(_)) => Code::Unavailable,
            ApiError::Unauthenticated(_)
            | ApiError::NoClientCertificate
            | ApiError::NotAWorkloadCertificate(_) => Code::Unauthenticated,
            ApiError::NotYourIdentity { .. }
            | ApiError::WrongWorkload { .. }
            | ApiError::NotYourDenial { .. } => Code::PermissionDenied,
            ApiError::Issue(IssueError::Csr(_)) => Code::InvalidArgument,
            ApiError::Issue(IssueError::CaExpired(_)) => Code::FailedPrecondition,
            ApiError::Issue(IssueError::Signing(_)) => Code::Internal,
            // Usually a full or failing disk: retrying later may work.
            ApiError::Store(_) => Code::Unavailable,
        }
    }

    /// Whether this is the controller's fault rather than the caller's (logged as an error).
    pub fn is_internal(&self) -> bool {
        matches!(self.code(), Code::Internal | Code::FailedPrecondition)
            || matches!(self, ApiError::Store(_))
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let message = match &error {
            // Internals stay in the controller's log.
            ApiError::Issue(IssueError::Signing(_)) => {
                "the controller could not sign the certificate; its log has the details".to_owned()
            }
            ApiError::Store(_) => {
                "the controller could not save this; its log has the details".to_owned()
            }
            other => other.to_string(),
        };
        Status::new(error.code(), message)
    }
}

impl From<CsrError> for ApiError {
    fn from(error: CsrError) -> Self {
        ApiError::Issue(IssueError::Csr(error))
    }
}
