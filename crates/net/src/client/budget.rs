//! The retry budget.

use tokio::time::Instant;

use super::settings::RetrySettings;

/// The retry budget: each call deposits `ratio` of a retry, each retry withdraws one;
/// plus `min_per_sec` retries a second for quiet periods. Capped at ten seconds' worth.
pub(super) struct Budget {
    settings: RetrySettings,
    balance: f64,
    at: Instant,
}

impl Budget {
    pub(super) fn new(settings: RetrySettings) -> Self {
        Budget {
            settings,
            balance: settings.budget_min_per_sec,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let cap =
            (self.settings.budget_min_per_sec * 10.0).max(1.0) + 100.0 * self.settings.budget_ratio;
        self.balance = (self.balance + elapsed * self.settings.budget_min_per_sec).min(cap);
    }

    pub(super) fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.balance += self.settings.budget_ratio;
    }

    pub(super) fn withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.balance >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_allows_a_fraction_of_calls_plus_a_floor() {
        let settings = RetrySettings {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
            budget_ratio: 0.1,
            budget_min_per_sec: 0.0,
        };
        let mut budget = Budget::new(settings);
        let now = Instant::now();
        for _ in 0..100 {
            budget.deposit(now);
        }
        let allowed = (0..100).filter(|_| budget.withdraw(now)).count();
        assert!(
            (9..=10).contains(&allowed),
            "{allowed} retries for 100 calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_client_earns_the_floor_each_second_up_to_ten_seconds_worth() {
        let settings = RetrySettings {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
            budget_ratio: 0.0,
            budget_min_per_sec: 2.0,
        };
        let mut budget = Budget::new(settings);
        let spend = |budget: &mut Budget| {
            let now = Instant::now();
            (0..100).filter(|_| budget.withdraw(now)).count()
        };
        assert_eq!(spend(&mut budget), 2, "the first second's floor");
        assert_eq!(spend(&mut budget), 0);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(spend(&mut budget), 1, "half a second: one retry");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(spend(&mut budget), 20, "capped at ten seconds' worth");
    }
}
