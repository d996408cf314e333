//! Structured logs: JSON outside a terminal, human-readable in one, `RUST_LOG` honoured.
//!
//! `BOROUGH_LOG_FORMAT=json|pretty` overrides the terminal check. Request spans carry
//! `request_id` and `trace_id`, and the JSON format prints the current span's fields on
//! every line, so each line of a request can be found by either id.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// Installs the global subscriber. Calling it again (as tests do) is harmless.
pub fn init_logging(service: &'static str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,hyper=warn,tower=warn"));
    let json = match std::env::var("BOROUGH_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    // OpenTelemetry: the tracing-opentelemetry layer joins this registry here.
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(fmt::layer()).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, json, "logging initialised");
    }
}

/// For tests: logs to the test harness when `TEST_LOG` is set, nothing otherwise.
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug")))
            .with(fmt::layer().with_test_writer())
            .try_init();
    }
}
