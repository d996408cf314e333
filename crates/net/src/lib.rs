//! gRPC plumbing shared by Borough's services.
//!
//! The server side: binding a service's listeners and running a database-backed gRPC
//! service with health, readiness, the admin port and graceful drain ([`server`]),
//! per-method authorisation by the caller's identity ([`authz`]), load shedding
//! ([`shed`]), per-method metrics ([`metrics`]) and the platform's hot settings
//! ([`config`]). The client side ([`client`]): discovery, health checks, balancing,
//! deadline-aware retries with a budget, and a circuit breaker per endpoint.

pub mod authz;
pub mod client;
pub mod config;
pub mod metrics;
pub mod server;
pub mod shed;

pub use server::{Listeners, ServeError, serve_grpc, tls_materials};
