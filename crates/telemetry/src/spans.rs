//! The span of each incoming gRPC call (the gateway's HTTP request span lives with its
//! middleware): built on [`crate::trace`] (the ids) and [`crate::otel`] (export).

/// The span of one incoming gRPC call: continues the caller's trace (`traceparent` and
/// `tracestate` metadata) as an OpenTelemetry server span when exporting, and carries the
/// trace id so the service's log lines join the gateway's.
pub fn grpc_request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = rpc_names(path);
    // Each field once; the exported span's own (`otel.*`, `rpc.system`) only when
    // exporting: log lines do not need them, and every field costs formatting per call.
    if !crate::otel::enabled() {
        // Every field at creation, formatted once (each later `record` re-formats them).
        let trace_id = crate::trace::TraceContext::from_headers(request.headers()).trace_id;
        return tracing::info_span!(
            "grpc",
            trace_id = trace_id.as_str(),
            rpc.service = service,
            rpc.method = method,
        );
    }
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        trace_id = tracing::field::Empty,
        rpc.service = service,
        rpc.method = method,
    );
    let trace_id = match crate::otel::continue_trace(&span, request.headers()) {
        Some((trace_id, _)) => trace_id,
        None => crate::trace::TraceContext::from_headers(request.headers()).trace_id,
    };
    span.record("trace_id", trace_id.as_str());
    span
}

/// `/package.Service/Method` as (`package.Service`, `Method`), the `rpc.service` and
/// `rpc.method` of OpenTelemetry's RPC conventions.
pub fn rpc_names(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path))
}
