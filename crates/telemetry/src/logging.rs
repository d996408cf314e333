//! Structured logs: JSON outside a terminal, human-readable in one, `RUST_LOG` honoured.
//!
//! `BOROUGH_LOG_FORMAT=json|pretty` overrides the terminal check. Request spans carry
//! `request_id` and `trace_id`, and the JSON format prints the current span's fields on
//! every line, so each line of a request can be found by either id.
//!
//! Lines go to standard output through [`crate::log_writer::Output`]: formatted on the
//! thread that logs, written by a thread of their own in batches, never waited for; at
//! most `BOROUGH_LOG_BUFFER_BYTES` (default 4 MiB) wait to be written, and a line that
//! finds the buffer full is dropped and counted (`borough_log_lines_dropped_total`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

use crate::settings;

/// The filter of the installed subscriber, for [`set_filter`].
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Where the installed subscriber's lines go.
static OUTPUT: OnceLock<crate::log_writer::Output> = OnceLock::new();

/// `BOROUGH_LOG_BUFFER_BYTES`: log bytes that may wait to be written.
/// [`settings::LOG_BUFFER_BYTES`]' default, for when its value is refused.
const DEFAULT_BUFFER_BYTES: usize = 4 << 20;

/// Log lines dropped so far because output could not keep up.
pub fn dropped_lines() -> u64 {
    OUTPUT.get().map_or(0, crate::log_writer::Output::dropped)
}

/// Waits (up to 2 s) until every line logged so far is written: at exit.
pub fn flush_logs() {
    if let Some(output) = OUTPUT.get() {
        output.flush(std::time::Duration::from_secs(2));
    }
}

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = settings::RUST_LOG.default;

/// Whether `directives` is a valid filter.
pub fn check_filter(directives: &str) -> Result<(), String> {
    EnvFilter::try_new(directives)
        .map(|_| ())
        .map_err(|e| format!("{directives:?} is not a valid log filter: {e}"))
}

/// Replaces the log filter at run time (`RUST_LOG` syntax, e.g. `debug,sqlx=warn`).
pub fn set_filter(directives: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("{directives:?}: {e}"))?;
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging is not initialised".to_owned())?;
    handle.reload(filter).map_err(|e| e.to_string())
}

/// Installs the global subscriber: logs (filtered by `RUST_LOG`, changeable at run time
/// with [`set_filter`]) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, trace export
/// ([`crate::otel`]), each layer with its own filter. Calling it again (as tests do) is
/// harmless.
pub fn init_logging(service: &'static str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let env = borough_config_client::Env::process();
    let json = match env.optional(&settings::LOG_FORMAT).as_deref() {
        Some("json") => true,
        Some("pretty") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    // Logging is not up yet to say a bad value is ignored: standard error says it.
    let limit = env
        .bytes_in(
            &settings::LOG_BUFFER_BYTES,
            1..=borough_config_client::MAX_BYTES,
        )
        .unwrap_or_else(|e| {
            eprintln!("{e}; using {DEFAULT_BUFFER_BYTES} bytes");
            DEFAULT_BUFFER_BYTES
        });
    let output = match OUTPUT.get() {
        Some(output) => Some(output.clone()),
        None => crate::log_writer::Output::spawn(Box::new(std::io::stdout()), limit)
            .ok()
            .map(|output| OUTPUT.get_or_init(|| output).clone()),
    };
    // No thread for the writer (it could not be spawned): write as we go.
    let writer = match output {
        Some(output) => fmt::writer::BoxMakeWriter::new(output),
        None => fmt::writer::BoxMakeWriter::new(std::io::stdout),
    };
    let logs = if json {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer().with_writer(writer).with_filter(filter).boxed()
    };
    let result = tracing_subscriber::registry()
        .with(logs)
        .with(crate::otel::layers(service))
        .try_init();
    if result.is_ok() {
        let _ = FILTER.set(handle);
        tracing::debug!(
            service,
            json,
            traces = crate::otel::enabled(),
            "logging initialised"
        );
    }
}

/// Logs for tests, when `TEST_LOG` is set (filter from `RUST_LOG`, default `debug`).
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug")))
            .with(fmt::layer().with_test_writer())
            .try_init();
    }
}
