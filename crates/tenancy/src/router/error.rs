//! Why a tenant's transaction could not be opened, in Borough's error terms.

use std::time::Duration;

use borough_error::{ErrorKind, ServiceError};
use borough_tenant::TenantId;

use crate::db;
use crate::placement::{self, Status};

/// Why a tenant's transaction could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("tenant {0} does not exist")]
    UnknownTenant(TenantId),
    #[error("tenant {tenant} is {}", status.as_str())]
    Inactive { tenant: TenantId, status: Status },
    #[error("tenant {tenant} is using all of its {cap} database connections; retry shortly")]
    Busy {
        tenant: TenantId,
        cap: u32,
        retry_after: Duration,
    },
    #[error("the tenant's database could not be reached a moment ago; retry shortly")]
    Unreachable { retry_after: Duration },
    #[error("the call's deadline passed before its transaction could start")]
    DeadlineExceeded,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant's route cannot be used by this service (a URL that does not open, an
    /// inconsistent row): an operator's problem, logged with the reason.
    #[error("{0}")]
    Unusable(String),
}

impl From<placement::RouteLoadError> for RouteError {
    fn from(e: placement::RouteLoadError) -> Self {
        match e {
            placement::RouteLoadError::Database(e) => RouteError::Database(e),
            other => {
                tracing::error!(error = %other, "a tenant's route is unusable");
                RouteError::Unusable(other.to_string())
            }
        }
    }
}

impl RouteError {
    /// The database could not be reached (as opposed to a refusal or a failed statement).
    pub fn is_unreachable(&self) -> bool {
        match self {
            RouteError::Unreachable { .. } => true,
            RouteError::Database(e) => db::classify(e) == ErrorKind::Unavailable,
            _ => false,
        }
    }
}

impl ServiceError for RouteError {
    fn kind(&self) -> ErrorKind {
        match self {
            RouteError::UnknownTenant(_) | RouteError::Inactive { .. } => {
                ErrorKind::PermissionDenied
            }
            RouteError::Busy { .. } | RouteError::Unreachable { .. } => ErrorKind::Unavailable,
            RouteError::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            RouteError::Database(e) => db::classify(e),
            RouteError::Unusable(_) => ErrorKind::Internal,
        }
    }

    fn public_detail(&self) -> String {
        match self {
            // The caller's own tenant: safe and useful to say.
            RouteError::Busy { .. } | RouteError::Unreachable { .. } => self.to_string(),
            RouteError::Database(e) => db::public_detail(e),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RouteError::Busy { retry_after, .. } | RouteError::Unreachable { retry_after } => {
                Some(*retry_after)
            }
            RouteError::Database(e) if db::classify(e) == ErrorKind::Unavailable => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_tenant_is_unavailable_with_a_retry_hint_and_a_public_reason() {
        let err = RouteError::Busy {
            tenant: TenantId::new_v7(),
            cap: 3,
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert!(err.public_detail().contains("all of its 3"));
        let db = RouteError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(db.public_detail(), "Service unavailable");
    }
}
