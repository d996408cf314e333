//! The Prometheus registry a service fills at start-up and exposes on `/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// A shared registry. Metrics are registered at start-up; encoding takes the lock briefly.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A registry whose metric names start with `borough_` and carry the service's name.
    pub fn new(service: &'static str) -> Self {
        let registry = Registry::with_prefix_and_labels(
            "borough",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Borrowed(service),
            )]
            .into_iter(),
        );
        let metrics = Metrics {
            registry: Arc::new(Mutex::new(registry)),
        };
        metrics.register(
            "log_lines_dropped",
            "Log lines dropped because output could not keep up (the log buffer was full)",
            DroppedLogLines,
        );
        metrics
    }

    /// Registers one metric.
    pub fn register<M>(&self, name: &str, help: &str, metric: M)
    where
        M: prometheus_client::registry::Metric,
    {
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.register(name, help, metric);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// [`crate::logging::dropped_lines`] as a counter, read when scraped.
#[derive(Debug)]
struct DroppedLogLines;

impl prometheus_client::encoding::EncodeMetric for DroppedLogLines {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &crate::logging::dropped_lines(),
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// Labels of one HTTP route's traffic. `route` is the matched template
/// (`/api/v1/users/{id}`), never the raw path, so cardinality stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct HttpLabels {
    /// A known method, or `_OTHER`: never the raw method of the request.
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

/// Rate, errors and duration of one kind of traffic: a counter and a latency histogram
/// over the same labels (the errors are in the labels' status). Cheap to clone.
#[derive(Clone)]
pub struct Red<L> {
    pub count:
        prometheus_client::metrics::family::Family<L, prometheus_client::metrics::counter::Counter>,
    pub duration: prometheus_client::metrics::family::Family<
        L,
        prometheus_client::metrics::histogram::Histogram,
        fn() -> prometheus_client::metrics::histogram::Histogram,
    >,
}

impl<L> Red<L>
where
    L: Clone
        + std::fmt::Debug
        + std::hash::Hash
        + Eq
        + prometheus_client::encoding::EncodeLabelSet
        + Send
        + Sync
        + 'static,
{
    /// Creates both and registers them in `metrics` as `(name, help)` each.
    pub fn register(metrics: &Metrics, count: (&str, &str), duration: (&str, &str)) -> Self {
        let red = Red {
            count: Default::default(),
            duration: prometheus_client::metrics::family::Family::new_with_constructor(
                latency_histogram,
            ),
        };
        metrics.register(count.0, count.1, red.count.clone());
        metrics.register(duration.0, duration.1, red.duration.clone());
        red
    }

    pub fn observe(&self, labels: &L, seconds: f64) {
        self.count.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(seconds);
    }
}

/// Requests and their latency per route, method and status.
#[derive(Clone)]
pub struct HttpMetrics(Red<HttpLabels>);

/// The latency histogram of every request and call metric: 100 µs to ~13 s.
pub fn latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 100 µs to ~13 s.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18),
    )
}

impl HttpMetrics {
    /// Creates the metrics and registers them in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        HttpMetrics(Red::register(
            metrics,
            ("http_requests", "HTTP requests by route, method and status"),
            (
                "http_request_duration_seconds",
                "HTTP request latency by route, method and status",
            ),
        ))
    }

    pub fn observe(&self, labels: HttpLabels, seconds: f64) {
        self.0.observe(&labels, seconds);
    }

    /// These two metrics alone in the text exposition (`http_requests_total`,
    /// `http_request_duration_seconds_bucket`, without the registry's prefix and labels),
    /// for a reader inside the process (the admin status).
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        registry.register("http_requests", "", self.0.count.clone());
        registry.register("http_request_duration_seconds", "", self.0.duration.clone());
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Keeps a label's cardinality bounded: the first `max` distinct values are used as they
/// are, any later one becomes `other` (so a client sending junk, or a platform with
/// millions of tenants, cannot grow the series without bound).
///
/// A value already seen costs a read lock and a reference count, no allocation: labels
/// are shared `Arc<str>`s.
#[derive(Debug)]
pub struct LabelCap {
    seen: std::sync::RwLock<std::collections::HashSet<std::sync::Arc<str>>>,
    other: std::sync::Arc<str>,
    max: usize,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        LabelCap {
            seen: std::sync::RwLock::new(std::collections::HashSet::new()),
            other: std::sync::Arc::from("other"),
            max,
        }
    }

    /// `value`, or `other` once `max` other values have been seen.
    pub fn label(&self, value: &str) -> std::sync::Arc<str> {
        {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            if let Some(label) = seen.get(value) {
                return label.clone();
            }
            if seen.len() >= self.max {
                return self.other.clone();
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        if let Some(label) = seen.get(value) {
            return label.clone();
        }
        if seen.len() >= self.max {
            return self.other.clone();
        }
        let label: std::sync::Arc<str> = std::sync::Arc::from(value);
        seen.insert(label.clone());
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_cap_keeps_the_first_values_and_folds_the_rest_into_other() {
        let cap = LabelCap::new(2);
        assert_eq!(&*cap.label("a"), "a");
        assert_eq!(&*cap.label("b"), "b");
        assert_eq!(&*cap.label("c"), "other");
        assert_eq!(&*cap.label("a"), "a");
    }
}
