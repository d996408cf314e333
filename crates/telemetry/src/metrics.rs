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
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
        }
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
