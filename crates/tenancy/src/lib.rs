//! Tenancy: who a request acts for, and where that tenant's data lives.
//!
//! - [`TenantId`] and [`TenantContext`]: the tenant of a request, carried from the gateway
//!   to the services in gRPC metadata ([`context::TENANT_METADATA_KEY`]).
//! - [`apikey`]: API keys (`bk_<prefix>_<secret>`), stored as a lookup prefix and a hash.
//! - [`directory`]: the control-plane lookups (API key -> tenant) and a small TTL cache.
//! - [`placement`]: where a tenant lives (shared tables, own schema, own database).
//! - [`router`]: the per-tenant pool router. Callers ask for a transaction *for a tenant*
//!   and never branch on where the tenant is placed.
//! - [`provision`]: creating, migrating and purging a tenant's schema or database.
//! - [`migrate`]: the embedded migrations of `migrations/control` and `migrations/tenant`.
//! - [`db`]: how database errors map to Borough error kinds, and the readiness probe.
//! - [`rows`]: rows of the tenant tables, as the services read them.
//! - [`settings`]: a service's database settings, and the router they build.

pub mod apikey;
pub mod context;
pub mod db;
pub mod directory;
pub mod migrate;
pub mod placement;
pub mod provision;
pub mod router;
pub mod rows;
pub mod secrets;
pub mod settings;

pub use context::{TenantContext, TenantId};
pub use placement::Placement;
pub use router::{PoolRouter, RouteError, RouterSettings, TenantTx};
