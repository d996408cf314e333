//! The variables telemetry reads, declared once ([`vars`] lists them for
//! `docs/settings.md`). They are read from the process environment when logging starts,
//! before a service's own settings; the OpenTelemetry ones keep their standard names.

use borough_config_client::Var;

pub const LOG_FORMAT: Var = Var::new(
    "BOROUGH_LOG_FORMAT",
    "json when standard output is not a terminal, else pretty",
    "Log lines as JSON (json) or for people (pretty)",
);
pub const LOG_BUFFER_BYTES: Var = Var::new(
    "BOROUGH_LOG_BUFFER_BYTES",
    "4MiB",
    "Log output waiting for a slow standard output; past it, lines are dropped and counted \
     (never a blocked request)",
);
pub const RUST_LOG: Var = Var::new(
    "RUST_LOG",
    "info,sqlx=warn,h2=warn,hyper=warn,tower=warn",
    "The log filter (tracing-subscriber's syntax), e.g. debug,sqlx=warn",
)
.hot("log.level");
pub const OTLP_ENDPOINT: Var = Var::new(
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "",
    "Export traces over OTLP/gRPC to this collector (http:// or https://); unset: no export",
);
pub const OTLP_CERTIFICATE: Var = Var::new(
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "",
    "The CA bundle an https collector's certificate must chain to (default: the web PKI roots)",
);
pub const OTLP_CLIENT_CERTIFICATE: Var = Var::new(
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "",
    "A client certificate for a collector that asks for one",
);
pub const OTLP_CLIENT_KEY: Var = Var::new(
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "",
    "The client certificate's key",
);
pub const SERVICE_NAME: Var = Var::new(
    "OTEL_SERVICE_NAME",
    "borough-<service>",
    "The service name on exported spans",
);
pub const TRACES_SAMPLER: Var = Var::new(
    "OTEL_TRACES_SAMPLER",
    "parentbased_always_on",
    "Which traces are recorded: always_on, always_off, traceidratio, or their parentbased_ \
     forms",
);
pub const TRACES_SAMPLER_ARG: Var = Var::new(
    "OTEL_TRACES_SAMPLER_ARG",
    "1.0",
    "The ratio of traceidratio (0 to 1)",
);
pub const TRACE_CLIENT_SAMPLING: Var = Var::new(
    "BOROUGH_TRACE_CLIENT_SAMPLING",
    "",
    "honour: the gateway follows a caller's sampled flag; unset: the gateway decides by its \
     own sampler (a caller cannot make every request traced)",
);

pub const VARS: &[&Var] = &[
    &LOG_FORMAT,
    &LOG_BUFFER_BYTES,
    &RUST_LOG,
    &OTLP_ENDPOINT,
    &OTLP_CERTIFICATE,
    &OTLP_CLIENT_CERTIFICATE,
    &OTLP_CLIENT_KEY,
    &SERVICE_NAME,
    &TRACES_SAMPLER,
    &TRACES_SAMPLER_ARG,
    &TRACE_CLIENT_SAMPLING,
];

/// Every variable telemetry reads.
pub fn vars() -> impl Iterator<Item = &'static Var> {
    VARS.iter().copied()
}
