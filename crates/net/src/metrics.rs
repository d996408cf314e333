//! RED metrics of a gRPC server: calls, errors by code and latency per method.
//!
//! The status of a gRPC call is known only at its end (in the trailers, or in the headers
//! of a trailers-only reply), so the layer wraps the response body and records when the
//! body ends — or when it is dropped unfinished (the client went away: `Cancelled`).
//! Method labels are the full paths the server was called with, at most
//! [`MAX_METHODS`] distinct ones (then `other`), so a client sending junk paths cannot
//! grow the series without bound.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use borough_telemetry::Metrics;
use borough_telemetry::metrics::{LabelCap, Red};
use bytes::Bytes;
use http_body::Frame;
use prometheus_client::encoding::EncodeLabelSet;

/// The most distinct method labels kept.
pub const MAX_METHODS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: Arc<str>,
    pub code: &'static str,
}

/// The server's per-method metrics. Cheap to clone.
#[derive(Clone)]
pub struct GrpcMetrics {
    red: Red<GrpcLabels>,
    methods: Arc<LabelCap>,
}

impl GrpcMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        GrpcMetrics {
            red: Red::register(
                metrics,
                (
                    "grpc_server_calls",
                    "gRPC calls handled, by method and status code",
                ),
                (
                    "grpc_server_call_duration_seconds",
                    "gRPC call latency (to the end of the response stream), by method and code",
                ),
            ),
            methods: Arc::new(LabelCap::new(MAX_METHODS)),
        }
    }

    fn method_label(&self, path: &str) -> Arc<str> {
        self.methods.label(path)
    }

    fn record(&self, method: Arc<str>, code: tonic::Code, seconds: f64) {
        let labels = GrpcLabels {
            method,
            code: code_name(code),
        };
        self.red.observe(&labels, seconds);
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// The tower layer recording [`GrpcMetrics`].
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: GrpcMetrics) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = self.metrics.method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            let recording = Recording {
                inner: body,
                metrics,
                method: Some(method),
                started,
                code: status_in(&parts.headers),
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(recording),
            ))
        })
    }
}

/// A response body that records the call when it ends.
struct Recording {
    inner: tonic::body::Body,
    metrics: GrpcMetrics,
    /// Taken when recorded.
    method: Option<Arc<str>>,
    started: Instant,
    /// From a trailers-only reply's headers, or the trailers once seen.
    code: Option<tonic::Code>,
}

impl Recording {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(method) = self.method.take() {
            self.metrics
                .record(method, code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Ended without trailers: the client went away (or the stream was cut).
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.finish(code);
    }
}

impl http_body::Body for Recording {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = status_in(trailers)
                {
                    self.code = Some(code);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(tonic::Code::Internal),
            Poll::Ready(None) => {
                let code = self.code.unwrap_or(tonic::Code::Ok);
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
