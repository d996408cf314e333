//! Health: each endpoint's `grpc.health.v1` check every `health_interval`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;

impl Shared {
    pub(super) async fn check_health(&self) {
        let endpoints = self.snapshot();
        let checks = endpoints.iter().map(|endpoint| async move {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(endpoint.channel.clone());
            let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(self.settings.health_interval.max(Duration::from_millis(200)));
            let serving = matches!(
                client.check(request).await,
                Ok(reply) if reply.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
            let was = endpoint.healthy.swap(serving, Ordering::AcqRel);
            if was != serving {
                tracing::info!(backend = self.name, endpoint = %endpoint.addr, serving, "endpoint health changed");
            }
            self.metrics
                .healthy
                .get_or_create(&endpoint.labels)
                .set(i64::from(serving));
        });
        futures_util::future::join_all(checks).await;
    }
}
