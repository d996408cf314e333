//! Outgoing gRPC calls: every request carries the tenant and the remaining deadline (the
//! trace context is added by the backend client, `borough_net::client`, for every call).

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use borough_error::{ErrorKind, Problem};
use borough_tenant::TenantContext;
use http::request::Parts;

/// When the request being served must be answered by. Set by the deadline middleware from
/// `BOROUGH_REQUEST_TIMEOUT`; every backend call gets what is left as its `grpc-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Deadline {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Deadline>()
            .copied()
            .ok_or_else(|| Problem::new(ErrorKind::Internal, "no deadline on the request"))
    }
}

/// A gRPC request for `tenant` (or for the platform, with `None`).
pub fn request<T>(
    message: T,
    tenant: Option<&TenantContext>,
    deadline: Deadline,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(tenant) = tenant {
        tenant.write_metadata(request.metadata_mut());
    }
    request.set_timeout(deadline.remaining());
    request
}
