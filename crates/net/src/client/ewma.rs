//! The latency estimate balancing compares: peak-EWMA.

use std::time::Duration;

use tokio::time::Instant;

/// Latency estimate that jumps up to any slower observation at once and decays back
/// (time constant 10 s), so a slowing endpoint loses traffic immediately.
pub(super) struct PeakEwma {
    nanos: f64,
    at: Instant,
}

const EWMA_DECAY_NANOS: f64 = 10e9;

impl PeakEwma {
    pub(super) fn new() -> Self {
        // A new endpoint looks fast (1 ms) so that it is tried.
        PeakEwma {
            nanos: 1e6,
            at: Instant::now(),
        }
    }

    pub(super) fn estimate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        // Decays toward zero between observations: an idle endpoint is tried again.
        self.nanos * (-elapsed / EWMA_DECAY_NANOS).exp()
    }

    pub(super) fn observe(&mut self, latency: Duration, now: Instant) {
        let rtt = latency.as_nanos() as f64;
        if rtt > self.nanos {
            self.nanos = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let w = (-elapsed / EWMA_DECAY_NANOS).exp();
            self.nanos = self.nanos * w + rtt * (1.0 - w);
        }
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_to_a_slow_call_and_decays_back() {
        let mut ewma = PeakEwma::new();
        let now = Instant::now();
        ewma.observe(Duration::from_millis(50), now);
        assert!(ewma.estimate(now) >= 50e6 * 0.99);
        let later = now + Duration::from_secs(20);
        assert!(ewma.estimate(later) < 10e6);
    }
}
