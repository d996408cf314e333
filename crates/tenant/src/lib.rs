//! Who a request acts for: the tenant's id and context (carried from the gateway to the
//! services in gRPC metadata), API keys and the cache of what they resolve to, and the
//! names of the placements. No database here: the gateway links this crate, and where a
//! tenant's data lives (pools, routes, provisioning) is `borough-tenancy`'s.
//!
//! - [`TenantId`] and [`TenantContext`]: the tenant of a request, carried in gRPC
//!   metadata ([`context::TENANT_METADATA_KEY`]) with the caller's deadline.
//! - [`apikey`]: API keys (`bk_<prefix>_<secret>`), stored as a lookup prefix and a hash.
//! - [`keys`]: who a key acts for ([`keys::Principal`]) and the gateway's TTL cache.
//! - [`Placement`]: shared tables, a schema of its own, or a database of its own.

pub mod apikey;
pub mod context;
pub mod keys;
pub mod placement;

pub use context::{TenantContext, TenantId};
pub use placement::Placement;
