//! The trace context of the request being served.
//!
//! Each request carries a W3C trace id: continued from an incoming `traceparent`, or new.
//! It is held in a task-local for the request's lifetime, put on every log line through
//! the request span, sent to services in gRPC metadata and quoted in problem bodies.
//! When traces are exported (`crate::otel`), the ids are those of the OpenTelemetry
//! spans, so logs, problem bodies and exported traces agree. This file imports nothing of
//! the crate: `otel` and `spans` build on it.

use std::future::Future;

/// W3C Trace Context header (HTTP) and metadata key (gRPC).
pub const TRACEPARENT: &str = "traceparent";
/// Request id header, echoed in responses and forwarded to services.
pub const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The ids of the current request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: this hop's span.
    pub span_id: String,
}

/// A new random id of 32 hex digits (a request id, a trace id).
pub fn new_id() -> String {
    random_hex::<16>()
}

impl TraceContext {
    /// A new root context with random ids.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: random_hex::<16>(),
            span_id: random_hex::<8>(),
        }
    }

    /// Continues the trace of a valid `traceparent` (version 00), with a new span id;
    /// starts a new trace when the header is absent or malformed.
    pub fn from_traceparent(header: Option<&str>) -> Self {
        header
            .and_then(parse_traceparent)
            .map(|trace_id| TraceContext {
                trace_id,
                span_id: random_hex::<8>(),
            })
            .unwrap_or_else(Self::new_root)
    }

    /// [`TraceContext::from_traceparent`] of a request's `traceparent` header.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        Self::from_traceparent(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()))
    }

    /// The `traceparent` value to send to the next hop.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// Runs `fut` with this context as the current one.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }
}

/// The trace id of the request being served on this task, if any.
pub fn current_trace_id() -> Option<String> {
    CURRENT.try_with(|ctx| ctx.trace_id.clone()).ok()
}

/// The full context of the request being served on this task, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

fn parse_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_owned())
}

/// Random ids from a per-thread generator seeded once from the OS: a trace, span and
/// request id per request must not cost a `getrandom` system call each (they did: 2 % of
/// the gateway's CPU). Ids need to be unique and unguessable enough to find in logs, not
/// secret.
fn random_hex<const N: usize>() -> String {
    thread_local! {
        static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new(seeded_rng());
    }
    let mut bytes = [0u8; N];
    RNG.with(|rng| rng.borrow_mut().fill(&mut bytes));
    if bytes.iter().all(|b| *b == 0) {
        bytes[N - 1] = 1; // All-zero ids are invalid in W3C trace context.
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(2 * N);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

fn seeded_rng() -> fastrand::Rng {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        // The OS RNG failing is near impossible; ids must still differ between processes.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        seed = ((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    fastrand::Rng::with_seed(u64::from_le_bytes(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_distinct_within_and_across_threads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let ctx = TraceContext::new_root();
            assert_eq!((ctx.trace_id.len(), ctx.span_id.len()), (32, 16));
            assert!(seen.insert(ctx.trace_id));
        }
        let others: Vec<String> = (0..4)
            .map(|_| std::thread::spawn(|| TraceContext::new_root().trace_id))
            .filter_map(|t| t.join().ok())
            .collect();
        assert_eq!(others.len(), 4);
        for id in others {
            assert!(seen.insert(id), "a thread repeated another's id");
        }
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_traceparent(Some(header));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id, "00f067aa0ba902b7");
        assert_eq!(ctx.span_id.len(), 16);
    }

    #[test]
    fn malformed_or_zero_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let ctx = TraceContext::from_traceparent(Some(bad));
            assert_ne!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(ctx.trace_id.len(), 32);
        }
    }

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::new_root();
        let again = TraceContext::from_traceparent(Some(&ctx.traceparent()));
        assert_eq!(again.trace_id, ctx.trace_id);
    }

    #[tokio::test]
    async fn current_trace_id_is_visible_inside_the_scope_only() {
        assert_eq!(current_trace_id(), None);
        let ctx = TraceContext::new_root();
        let id = ctx.trace_id.clone();
        let seen = ctx.scope(async { current_trace_id() }).await;
        assert_eq!(seen, Some(id));
    }
}
