//! Observability shared by every Borough service: structured logs, the trace context of
//! the current request, Prometheus metrics, and the admin HTTP port (`/healthz`,
//! `/readyz`, `/metrics`).

pub mod admin;
pub mod dependency;
pub mod lifecycle;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod otlp_tls;
pub mod settings;
pub mod spans;
pub mod trace;

pub use admin::{AdminState, Readiness};
pub use dependency::Dependency;
pub use logging::init_logging;
pub use metrics::Metrics;
pub use settings::vars;
