//! A call's way: pick, attempt, and retries — only calls the policy allows, only after a
//! connection failure or a shed reply, with full-jitter backoff, never past the deadline,
//! and only while the retry budget allows.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use tonic::body::Body;
use tower::ServiceExt;

use super::classify::{grpc_status, is_connection_failure, is_timeout};
use super::metrics::BackendLabels;
use super::settings::RetrySettings;
use super::{BoxError, Endpoint, Shared, lock};

/// Full jitter: uniformly random in [0, min(cap, base × 2^attempt)).
pub(super) fn backoff(retry: RetrySettings, attempt: u32) -> Duration {
    let ceiling = retry
        .base
        .saturating_mul(1_u32 << attempt.min(16))
        .min(retry.cap);
    ceiling.mul_f64(fastrand::f64())
}

/// tonic says CANCELLED "Timeout expired" for a spent `grpc-timeout`, on either side: the
/// server answers it (outside any layer of ours), the client makes it of its own timer's
/// error. Both are told to the caller as what they are, DEADLINE_EXCEEDED: the client's
/// by the error's type ([`is_timeout`]), the server's by the time — a CANCELLED reply that
/// arrives after the deadline this call sent. (This client never cancels a call it still
/// waits for, so nothing else is turned.)
fn deadline_reply(
    mut response: http::Response<Body>,
    deadline: Option<Instant>,
) -> http::Response<Body> {
    if deadline.is_some_and(|d| Instant::now() >= d)
        && grpc_status(&response) == Some(tonic::Code::Cancelled)
    {
        let headers = response.headers_mut();
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::DeadlineExceeded as i32),
        );
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("the call's deadline passed"),
        );
    }
    response
}

impl Shared {
    pub(super) async fn call(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(borough_tenant::context::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        match self.call_until(request, deadline).await {
            Ok(response) => Ok(deadline_reply(response, deadline)),
            // This side's timer (tonic's client enforces the `grpc-timeout` it sends) won
            // the race against the server's.
            Err(e) if is_timeout(e.as_ref()) => Err(Box::new(tonic::Status::deadline_exceeded(
                "the call's deadline passed",
            ))),
            Err(e) => Err(e),
        }
    }

    async fn call_until(
        self: Arc<Self>,
        request: http::Request<Body>,
        deadline: Option<Instant>,
    ) -> Result<http::Response<Body>, BoxError> {
        let retryable = self.policy.allows(
            request.uri().path(),
            request
                .headers()
                .contains_key(borough_proto::IDEMPOTENCY_KEY),
        ) && self.settings.retry.max_attempts > 1;
        lock(&self.budget).deposit(Instant::now());
        self.wait_for_discovery(deadline).await;

        if !retryable {
            let (endpoint, probe) = self.pick(None)?;
            return self.attempt(&endpoint, probe, request).await;
        }

        // Safe to repeat: keep the (small, unary) request to send it again.
        let (parts, body) = request.into_parts();
        let body: Bytes = body.collect().await?.to_bytes();
        let mut avoid = None;
        let mut attempt = 1;
        loop {
            let (endpoint, probe) = self.pick(avoid)?;
            let mut request =
                http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            *request.extensions_mut() = parts.extensions.clone();
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Box::new(tonic::Status::deadline_exceeded(
                        "the call's deadline passed before it could be sent",
                    )));
                }
                if let Ok(value) =
                    http::HeaderValue::from_str(&format!("{}m", left.as_millis().max(1)))
                {
                    request.headers_mut().insert("grpc-timeout", value);
                }
            }
            let outcome = self.attempt(&endpoint, probe, request).await;
            let again = match &outcome {
                // Refused unprocessed by load shedding: another replica may take it. Other
                // UNAVAILABLE replies say a dependency (the database) is down: every
                // replica shares it, and the service has already failed fast.
                Ok(response) => {
                    grpc_status(response) == Some(tonic::Code::Unavailable)
                        && response.headers().contains_key(crate::shed::SHED_METADATA)
                }
                Err(e) => is_connection_failure(e.as_ref()),
            };
            if !again || attempt >= self.settings.retry.max_attempts {
                return outcome;
            }
            let delay = backoff(self.settings.retry, attempt);
            if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) <= delay) {
                return outcome; // No time left to try again: never retry past the deadline.
            }
            if !lock(&self.budget).withdraw(Instant::now()) {
                self.metrics
                    .retries_refused
                    .get_or_create(&BackendLabels { backend: self.name })
                    .inc();
                return outcome;
            }
            self.metrics
                .retries
                .get_or_create(&BackendLabels { backend: self.name })
                .inc();
            tracing::debug!(backend = self.name, endpoint = %endpoint.addr, attempt, ?delay, "retrying");
            tokio::time::sleep(delay).await;
            avoid = Some(endpoint.addr);
            attempt += 1;
        }
    }

    async fn wait_for_discovery(&self, deadline: Option<Instant>) {
        if *self.discovered.borrow() {
            return; // Every call after the first resolution: no subscription.
        }
        let mut discovered = self.discovered.subscribe();
        let limit = deadline.map_or(Duration::from_secs(5), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let _ = tokio::time::timeout(limit, discovered.wait_for(|done| *done)).await;
    }

    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        probe: bool,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut guard = InFlight::new(self, endpoint, probe);
        let started = Instant::now();
        let result = endpoint.channel.clone().oneshot(request).await;
        let latency = started.elapsed();
        match result {
            Ok(response) => {
                guard.done(true, latency);
                Ok(response)
            }
            Err(e) => {
                let e: BoxError = e.into();
                tracing::debug!(backend = self.name, endpoint = %endpoint.addr, error = ?e, "attempt failed");
                if is_timeout(e.as_ref()) {
                    guard.done(false, latency);
                    return Err(e);
                }
                guard.done(false, latency);
                // Transport failures become UNAVAILABLE (503 at the edge); for a call that
                // is not retried, whether it took effect is unknown, and the message says so.
                Err(Box::new(tonic::Status::unavailable(format!(
                    "the connection to the {} service failed ({e}); the call may or may not \
                     have taken effect",
                    self.name
                ))))
            }
        }
    }
}

/// Counts an attempt in flight on its endpoint; an attempt dropped unfinished (the caller
/// gave up) releases its probe slot without counting as an outcome.
struct InFlight<'a> {
    shared: &'a Shared,
    endpoint: &'a Endpoint,
    probe: bool,
    finished: bool,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, endpoint: &'a Endpoint, probe: bool) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared,
            endpoint,
            probe,
            finished: false,
        }
    }

    fn done(&mut self, ok: bool, latency: Duration) {
        self.finished = true;
        self.shared.record(self.endpoint, self.probe, ok, latency);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.finished && self.probe {
            lock(&self.endpoint.state).breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientSettings;

    fn reply(code: tonic::Code) -> http::Response<Body> {
        let mut response = http::Response::new(Body::empty());
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from(code as i32));
        response
    }

    #[test]
    fn a_cancelled_reply_past_the_deadline_is_a_deadline_and_nothing_else_is_turned() {
        let past = Some(Instant::now() - Duration::from_millis(1));
        let future = Some(Instant::now() + Duration::from_secs(60));
        let turned = deadline_reply(reply(tonic::Code::Cancelled), past);
        assert_eq!(grpc_status(&turned), Some(tonic::Code::DeadlineExceeded));
        for (code, deadline) in [
            (tonic::Code::Cancelled, future),
            (tonic::Code::Cancelled, None),
            (tonic::Code::Unavailable, past),
            (tonic::Code::Ok, past),
        ] {
            let kept = deadline_reply(reply(code), deadline);
            assert_eq!(grpc_status(&kept), Some(code), "{code:?} {deadline:?}");
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_the_cap() {
        let retry = ClientSettings::default().retry;
        for attempt in 1..10 {
            let delay = backoff(retry, attempt);
            assert!(delay < retry.cap.min(retry.base * (1 << attempt)));
        }
    }
}
