//! OpenTelemetry traces over OTLP/gRPC.
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and not empty); off otherwise, at no cost.
//! An `https://` endpoint is reached over TLS ([`crate::otlp_tls`]: the collector verified
//! against `OTEL_EXPORTER_OTLP_CERTIFICATE` or public roots, a client certificate from
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_KEY`).
//! The standard variables are honoured by the SDK: `OTEL_SERVICE_NAME` (default
//! `borough-<service>`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on), `OTEL_BSP_*` (batching),
//! `OTEL_EXPORTER_OTLP_TIMEOUT`. Spans come from `tracing` spans (through
//! tracing-opentelemetry), plus one span per SQL statement built from sqlx's statement
//! events ([`SqlSpans`]). [`flush`] sends what is buffered at the end.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The exporting layers for the subscriber, or `None` when no endpoint is configured (or
/// the exporter cannot be built: said on stderr, the service runs on without traces).
pub(crate) fn layers<S>(service: &'static str) -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let env = borough_config_client::Env::process();
    let endpoint = env.optional(&crate::settings::OTLP_ENDPOINT)?;
    // An https collector: over TLS of our own (tonic's TLS features stay off).
    let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let builder = if endpoint.trim().starts_with("https://") {
        use opentelemetry_otlp::WithTonicConfig;
        match crate::otlp_tls::channel(endpoint.trim()) {
            Ok(channel) => builder.with_channel(channel),
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("OpenTelemetry: no trace export to {endpoint}: {e}");
                }
                return None;
            }
        }
    } else {
        builder
    };
    let exporter = match builder.build() {
        Ok(exporter) => exporter,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("OpenTelemetry: no trace export to {endpoint}: {e}");
            }
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env.optional(&crate::settings::SERVICE_NAME).is_none() {
        resource = resource.with_service_name(format!("borough-{service}"));
    }
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(
            service,
            env.optional(&crate::settings::TRACES_SAMPLER).as_deref(),
            env.optional(&crate::settings::TRACES_SAMPLER_ARG)
                .as_deref(),
            env.optional(&crate::settings::TRACE_CLIENT_SAMPLING)
                .as_deref(),
        ))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("borough");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = PROVIDER.set(provider);
    let _ = TRACER.set(tracer.clone());

    // Our spans (info and up), not the libraries' internals.
    let spans = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("sqlx", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(spans);
    let sql = SqlSpans.with_filter(Targets::new().with_target("sqlx::query", LevelFilter::DEBUG));
    Some(Box::new(otel.and_then(sql)))
}

/// The sampler of `service`: `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`,
/// `traceidratio`, and their `parentbased_` forms; default `parentbased_always_on`) with
/// `OTEL_TRACES_SAMPLER_ARG` (the ratio).
///
/// The gateway is the edge: the `traceparent` it receives comes from anyone, and its
/// sampled flag must not let a client force every request to be traced (at the
/// operator's cost). So at the gateway a remote parent's flag is ignored and the root
/// sampler decides (`BOROUGH_TRACE_CLIENT_SAMPLING=honour` restores the W3C default of
/// following it); the trace id is still continued. Inside, services follow the gateway's
/// decision.
pub fn sampler(
    service: &str,
    name: Option<&str>,
    arg: Option<&str>,
    client_sampling: Option<&str>,
) -> ServiceSampler {
    use opentelemetry_sdk::trace::Sampler;
    let ratio = arg
        .and_then(|a| a.trim().parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r))
        .unwrap_or(1.0);
    let name = name.map(str::trim).unwrap_or("parentbased_always_on");
    let root = match name.trim_start_matches("parentbased_") {
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        _ => Sampler::AlwaysOn,
    };
    if !name.starts_with("parentbased_") {
        return ServiceSampler::Plain(root);
    }
    let honour = client_sampling.is_some_and(|v| v.trim() == "honour");
    if service == "gateway" && !honour {
        ServiceSampler::Edge(
            Sampler::parent_based(root.clone())
                .with_remote_parent_sampled(root.clone())
                .with_remote_parent_not_sampled(root),
        )
    } else {
        ServiceSampler::Plain(Sampler::ParentBased(Box::new(root)))
    }
}

/// A service's sampler ([`sampler`]).
#[derive(Debug, Clone)]
pub enum ServiceSampler {
    Plain(opentelemetry_sdk::trace::Sampler),
    /// Remote parents' flags ignored: the root sampler decides.
    Edge(opentelemetry_sdk::trace::ParentBasedSampler),
}

impl opentelemetry_sdk::trace::ShouldSample for ServiceSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        match self {
            ServiceSampler::Plain(s) => {
                s.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
            }
            ServiceSampler::Edge(s) => {
                s.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
            }
        }
    }
}

/// Exports what is buffered and stops the exporter (at the end of `main`; waits at most
/// 5 s for the collector).
pub async fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Continues the caller's W3C trace (`traceparent`, `tracestate`) on `span`, when
/// exporting. Returns the span's trace and span ids (`None`: not exporting).
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    ids(span)
}

/// Renames `span`'s OpenTelemetry span (already started: `otel.name` no longer applies),
/// e.g. to `GET /api/v1/users/{id}` once routing knows the template.
pub fn rename(span: &tracing::Span, name: impl FnOnce() -> String) {
    if enabled() {
        span.context().span().update_name(name());
    }
}

/// The trace and span ids of `span` (`None`: not exporting).
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// Writes the trace context of an outgoing call into its headers (gRPC metadata): when
/// exporting, `span`'s (`traceparent`/`tracestate`); otherwise the `traceparent` of the
/// request being served on this task, if any ([`crate::trace::current`]).
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if enabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
    } else if let Some(ctx) = crate::trace::current()
        && let Ok(value) = http::HeaderValue::from_str(&ctx.traceparent())
    {
        headers.insert(crate::trace::TRACEPARENT, value);
    }
}

/// One OpenTelemetry span per SQL statement, from sqlx's `sqlx::query` events (sent when a
/// statement finishes, with its text and duration): the span starts `elapsed` before the
/// event, is a child of the current span, and follows the database conventions —
/// `db.system.name`, `db.operation.name`, `db.query.text` (the statement as prepared:
/// placeholders, never parameter values), `db.response.returned_rows`.
struct SqlSpans;

#[derive(Default)]
struct StatementFields {
    statement: Option<String>,
    summary: Option<String>,
    elapsed_secs: Option<f64>,
    rows_returned: Option<i64>,
    rows_affected: Option<i64>,
}

impl tracing::field::Visit for StatementFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "db.statement" if !value.is_empty() => self.statement = Some(value.to_owned()),
            "summary" => self.summary = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = Some(value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        match field.name() {
            "rows_returned" => self.rows_returned = Some(value),
            "rows_affected" => self.rows_affected = Some(value),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S> Layer<S> for SqlSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let Some(tracer) = TRACER.get() else {
            return;
        };
        let mut fields = StatementFields::default();
        event.record(&mut fields);
        let Some(text) = fields.statement.or(fields.summary) else {
            return;
        };
        let parent: Context = tracing::Span::current().context();
        if !parent.span().span_context().is_valid() {
            return; // Not part of a request: background work (listeners, probes).
        }
        let end = SystemTime::now();
        let start = end
            .checked_sub(Duration::from_secs_f64(
                fields.elapsed_secs.unwrap_or(0.0).max(0.0),
            ))
            .unwrap_or(end);
        let operation = text
            .split_whitespace()
            .next()
            .unwrap_or("SQL")
            .to_ascii_uppercase();
        let mut attributes = vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", operation.clone()),
            KeyValue::new("db.query.text", text),
        ];
        if let Some(rows) = fields.rows_returned {
            attributes.push(KeyValue::new("db.response.returned_rows", rows));
        }
        if let Some(rows) = fields.rows_affected {
            attributes.push(KeyValue::new("db.response.affected_rows", rows));
        }
        let span = tracer
            .span_builder(operation)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let mut span = span;
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(sampler: &ServiceSampler, sampled_remote_parent: bool) -> bool {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let flags = if sampled_remote_parent {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
            flags,
            true,
            TraceState::default(),
        ));
        let result = sampler.should_sample(
            Some(&parent),
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            "GET /hello",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    #[test]
    fn a_client_traceparent_cannot_force_sampling_at_the_gateway_unless_told_to_honour_it() {
        let off = Some("parentbased_traceidratio");
        let edge = sampler("gateway", off, Some("0"), None);
        assert!(
            !decide(&edge, true),
            "a sampled client parent forced a trace"
        );
        let honouring = sampler("gateway", off, Some("0"), Some("honour"));
        assert!(decide(&honouring, true));
        // Inside, services follow the gateway's decision.
        let service = sampler("user", off, Some("0"), None);
        assert!(decide(&service, true));
        assert!(!decide(&service, false));
        // And the default samples everything, as before.
        assert!(decide(&sampler("gateway", None, None, None), false));
    }

    #[tokio::test]
    async fn without_export_the_served_requests_traceparent_is_passed_on() {
        let ctx = crate::trace::TraceContext::new_root();
        let mut headers = http::HeaderMap::new();
        inject(&tracing::Span::none(), &mut headers);
        assert!(
            headers.is_empty(),
            "no request being served: nothing to pass on"
        );
        let headers = ctx
            .clone()
            .scope(async {
                let mut headers = http::HeaderMap::new();
                inject(&tracing::Span::none(), &mut headers);
                headers
            })
            .await;
        assert_eq!(headers["traceparent"], ctx.traceparent().as_str());
    }
}
