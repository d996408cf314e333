//! The gateway's REST API end to end: real HTTP into the gateway, real gRPC to the user
//! and query services, real PostgreSQL behind them.

mod config;
mod errors;
mod hostile;
mod isolation;
mod limits;
mod metrics;
mod moves;
mod placement;
mod reads;
mod resilience;
mod shutdown;
mod support;
mod walkthrough;
mod zero_trust;
