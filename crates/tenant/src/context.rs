//! The tenant of a request.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

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

/// What a service knows of the tenant it is acting for, and by when the call must be
/// answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantContext {
    pub tenant_id: TenantId,
    /// The caller's deadline (from `grpc-timeout`): the tenancy router gives each
    /// transaction a `statement_timeout` of what is left, and refuses to start one past it.
    pub deadline: Option<Instant>,
}

impl TenantContext {
    pub fn new(tenant_id: TenantId) -> Self {
        TenantContext {
            tenant_id,
            deadline: None,
        }
    }

    /// The same tenant, answering by `deadline`.
    pub fn with_deadline(self, deadline: Option<Instant>) -> Self {
        TenantContext { deadline, ..self }
    }

    /// What is left of the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
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
        Ok(TenantContext {
            tenant_id,
            deadline: deadline_from_metadata(metadata),
        })
    }

    /// Writes the tenant into outgoing gRPC metadata.
    pub fn write_metadata(&self, metadata: &mut MetadataMap) {
        // A hyphenated UUID is always valid ASCII metadata.
        if let Ok(value) = MetadataValue::try_from(self.tenant_id.to_string()) {
            metadata.insert(TENANT_METADATA_KEY, value);
        }
    }
}

/// The deadline a `grpc-timeout` header sets, counted from now: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). Absent or malformed: no deadline.
pub fn deadline_from_metadata(metadata: &MetadataMap) -> Option<Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(text).map(|timeout| Instant::now() + timeout)
}

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if !text.is_ascii() || text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_malformed_ones_are_ignored() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "m", "5", "123456789S", "5x", "-5S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", MetadataValue::from_static("500m"));
        let deadline = deadline_from_metadata(&metadata).expect("a deadline");
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_millis(500) && left > Duration::from_millis(400));
    }

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
