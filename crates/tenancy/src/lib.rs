//! Tenancy: where a tenant's data lives, and a transaction scoped to it. Who a request
//! acts for (tenant ids, API keys, placement names) is `borough-tenant`'s, which links no
//! database.
//!
//! - [`directory`]: the control-plane lookup of an API key's tenant.
//! - [`placement`]: where a tenant lives (shared tables, own schema, own database).
//! - [`router`]: the per-tenant pool router. Callers ask for a transaction *for a tenant*
//!   and never branch on where the tenant is placed.
//! - [`listen`]: following `LISTEN` channels on a connection of their own.
//! - [`provision`]: creating, migrating and purging a tenant's schema or database.
//! - [`migrate`]: the embedded migrations of `migrations/control` and `migrations/tenant`.
//! - [`db`]: how database errors map to Borough error kinds, pools, and the database as a
//!   service's readiness dependency.
//! - [`rows`]: rows of the tenant tables, as the services read them.
//! - [`secrets`]: tenant database URLs sealed at rest.
//! - [`settings`]: a service's database settings, and the router they build.

pub mod db;
pub mod directory;
pub mod listen;
pub mod migrate;
pub mod placement;
pub mod provision;
pub mod router;
pub mod rows;
pub mod secrets;
pub mod settings;

pub use router::{PoolRouter, RouteError, RouterSettings, TenantTx};
