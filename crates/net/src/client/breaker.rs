//! One endpoint's circuit breaker: the failure rate over a sliding window of ten
//! buckets opens it; after `open_for`, `probes` calls decide whether it closes.

use std::time::Duration;

use tokio::time::Instant;

use super::settings::BreakerSettings;

/// A circuit's state, as the metric reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: u32, passed: u32 },
}

/// What the circuit says to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Closed: a normal call.
    Call,
    /// Half-open: one of the calls that decide whether it closes.
    Probe,
    /// Open, or half-open with every probe slot taken.
    Refused,
}

/// The window's buckets.
const BUCKETS: usize = 10;

/// Calls and failures of one slice (a tenth) of the window.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which slice since the breaker's origin this counts; `None`: unused.
    slice: Option<u64>,
    calls: u32,
    failures: u32,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        slice: None,
        calls: 0,
        failures: 0,
    };
}

/// One endpoint's circuit breaker over a sliding window of ten buckets.
#[derive(Debug)]
pub(super) struct Breaker {
    settings: BreakerSettings,
    circuit: Circuit,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
}

impl Breaker {
    pub(super) fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            circuit: Circuit::Closed,
            origin: Instant::now(),
            buckets: [Bucket::EMPTY; BUCKETS],
        }
    }

    fn slice_of(&self, now: Instant) -> u64 {
        let width = (self.settings.window.as_nanos() / BUCKETS as u128).max(1);
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos() / width)
            .unwrap_or(u64::MAX)
    }

    pub(super) fn state_at(&self, now: Instant) -> BreakerState {
        match self.circuit {
            Circuit::Closed => BreakerState::Closed,
            Circuit::Open { until } if now < until => BreakerState::Open,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether [`Breaker::admit`] would let a call through now (without taking a slot).
    pub(super) fn could_admit(&self, now: Instant) -> bool {
        match self.circuit {
            Circuit::Closed => true,
            Circuit::Open { until } => now >= until,
            Circuit::HalfOpen { probing, .. } => probing < self.settings.probes,
        }
    }

    /// How long the circuit stays open; zero when it is not.
    pub(super) fn open_remaining(&self, now: Instant) -> Duration {
        match self.circuit {
            Circuit::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Admits a call (taking a probe slot when half-open), or refuses it.
    pub(super) fn admit(&mut self, now: Instant) -> Admission {
        match self.circuit {
            Circuit::Closed => Admission::Call,
            Circuit::Open { until } if now < until => Admission::Refused,
            Circuit::Open { .. } => {
                self.circuit = Circuit::HalfOpen {
                    probing: 1,
                    passed: 0,
                };
                Admission::Probe
            }
            Circuit::HalfOpen { probing, passed } if probing < self.settings.probes => {
                self.circuit = Circuit::HalfOpen {
                    probing: probing + 1,
                    passed,
                };
                Admission::Probe
            }
            Circuit::HalfOpen { .. } => Admission::Refused,
        }
    }

    /// Gives back the slot of a probe that ended without an outcome (its caller left).
    pub(super) fn release_probe(&mut self) {
        if let Circuit::HalfOpen { probing, passed } = self.circuit {
            self.circuit = Circuit::HalfOpen {
                probing: probing.saturating_sub(1),
                passed,
            };
        }
    }

    /// Records an outcome; true when this opened the circuit.
    pub(super) fn record(&mut self, ok: bool, probe: bool, now: Instant) -> bool {
        match self.circuit {
            Circuit::HalfOpen { probing, passed } if probe => {
                if ok {
                    let passed = passed + 1;
                    if passed >= self.settings.probes {
                        self.circuit = Circuit::Closed;
                        self.buckets = [Bucket::EMPTY; BUCKETS];
                    } else {
                        self.circuit = Circuit::HalfOpen {
                            probing: probing.saturating_sub(1),
                            passed,
                        };
                    }
                    false
                } else {
                    self.circuit = Circuit::Open {
                        until: now + self.settings.open_for,
                    };
                    true
                }
            }
            Circuit::Closed => {
                let slice = self.slice_of(now);
                let bucket = &mut self.buckets[(slice % BUCKETS as u64) as usize];
                if bucket.slice != Some(slice) {
                    *bucket = Bucket {
                        slice: Some(slice),
                        ..Bucket::EMPTY
                    };
                }
                bucket.calls += 1;
                bucket.failures += u32::from(!ok);
                let (calls, failures) = self
                    .buckets
                    .iter()
                    .filter(|b| {
                        b.slice
                            .is_some_and(|s| slice.saturating_sub(s) < BUCKETS as u64)
                    })
                    .fold((0_u32, 0_u32), |(c, f), b| (c + b.calls, f + b.failures));
                if calls >= self.settings.min_calls
                    && f64::from(failures) >= self.settings.failure_rate * f64::from(calls)
                {
                    self.circuit = Circuit::Open {
                        until: now + self.settings.open_for,
                    };
                    self.buckets = [Bucket::EMPTY; BUCKETS];
                    true
                } else {
                    false
                }
            }
            // Outcomes of calls admitted before the circuit opened do not count.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            window: Duration::from_secs(1),
            min_calls: 5,
            failure_rate: 0.5,
            open_for: Duration::from_millis(100),
            probes: 2,
        })
    }

    // On tokio's paused clock: time moves only when the test advances it.

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_on_the_failure_rate_and_closes_after_passing_probes() {
        let mut b = breaker();
        let now = Instant::now();
        for _ in 0..4 {
            assert!(!b.record(false, false, now), "fewer than min_calls");
        }
        assert!(b.record(true, false, now) || b.record(false, false, now));
        assert_eq!(b.state_at(now), BreakerState::Open);
        assert_eq!(b.admit(now), Admission::Refused, "fails fast while open");
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(
            b.admit(Instant::now()),
            Admission::Refused,
            "open for all of open_for"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let later = Instant::now();
        assert_eq!(
            b.admit(later),
            Admission::Probe,
            "a probe once open_for passed"
        );
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(
            b.admit(later),
            Admission::Refused,
            "no more than `probes` at once"
        );
        assert!(!b.record(true, true, later));
        assert!(!b.record(true, true, later));
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_circuit_again_for_another_open_for() {
        let mut b = breaker();
        for _ in 0..5 {
            b.record(false, false, Instant::now());
        }
        tokio::time::advance(Duration::from_millis(150)).await;
        let later = Instant::now();
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(b.record(false, true, later));
        assert_eq!(b.state_at(later), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Refused);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_do_not_count() {
        let mut b = breaker();
        for _ in 0..4 {
            b.record(false, false, Instant::now());
        }
        tokio::time::advance(Duration::from_millis(1500)).await;
        let later = Instant::now();
        for _ in 0..4 {
            assert!(!b.record(true, false, later));
        }
        assert!(
            !b.record(false, false, later),
            "1 failure in 5 recent calls"
        );
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }
}
