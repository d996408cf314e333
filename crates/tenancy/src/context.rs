//! The tenant of a request.

use std::fmt;
use std::str::FromStr;

use tonic::metadata::{MetadataMap, MetadataValue};
use uuid::Uuid;

/// gRPC metadata key carrying the tenant id from the gateway to the services.
///
/// Only the gateway sets it, after authenticating the caller's API key; services trust it
/// because only the gateway can reach them (network policy; mTLS in a later issue).
pub const TENANT_METADATA_KEY: &str = "x-borough-tenant-id";

/// A tenant's id (UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Uuid);

impl TenantId {
    pub fn new_v7() -> Self {
        TenantId(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TenantId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TenantId)
    }
}

/// What a service knows of the tenant it is acting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantContext {
    pub tenant_id: TenantId,
}

impl TenantContext {
    pub fn new(tenant_id: TenantId) -> Self {
        TenantContext { tenant_id }
    }

    /// Reads the tenant from incoming gRPC metadata.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, tonic::Status> {
        let value = metadata
            .get(TENANT_METADATA_KEY)
            .ok_or_else(|| tonic::Status::unauthenticated("no tenant in the call's metadata"))?;
        let text = value
            .to_str()
            .map_err(|_| tonic::Status::unauthenticated("the tenant metadata is not text"))?;
        let tenant_id = text
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("the tenant metadata is not a UUID"))?;
        Ok(TenantContext { tenant_id })
    }

    /// Writes the tenant into outgoing gRPC metadata.
    pub fn write_metadata(&self, metadata: &mut MetadataMap) {
        // A hyphenated UUID is always valid ASCII metadata.
        if let Ok(value) = MetadataValue::try_from(self.tenant_id.to_string()) {
            metadata.insert(TENANT_METADATA_KEY, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_context_round_trips_through_metadata() {
        let ctx = TenantContext::new(TenantId::new_v7());
        let mut metadata = MetadataMap::new();
        ctx.write_metadata(&mut metadata);
        assert_eq!(TenantContext::from_metadata(&metadata).ok(), Some(ctx));
    }

    #[test]
    fn missing_or_malformed_tenant_metadata_is_unauthenticated() {
        let empty = MetadataMap::new();
        let err = TenantContext::from_metadata(&empty).expect_err("no tenant");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut bad = MetadataMap::new();
        bad.insert(TENANT_METADATA_KEY, MetadataValue::from_static("tenant-a"));
        let err = TenantContext::from_metadata(&bad).expect_err("not a uuid");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
