//! gRPC plumbing shared by Borough's services.
//!
//! Today: binding a server's listeners and running a database-backed gRPC service with
//! health, readiness, the admin port and graceful drain ([`server`]). Client-side
//! discovery, balancing, retries and circuit breaking join here with the resilience work.

pub mod authz;
pub mod client;
pub mod config;
pub mod metrics;
pub mod server;
pub mod shed;

pub use server::{Listeners, ServeError, serve_grpc, tls_materials};
