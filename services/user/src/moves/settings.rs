//! The settings of tenant moves.

use std::time::Duration;

use borough_config_client::{Env, SettingsError, Var};

use super::Phase;

/// How moves run ([`MoveSettings::VARS`]).
#[derive(Debug, Clone)]
pub struct MoveSettings {
    /// [`MoveSettings::BATCH_ROWS`].
    pub batch_rows: i64,
    /// [`MoveSettings::BATCH_PAUSE`].
    pub batch_pause: Duration,
    /// [`MoveSettings::FENCE_AT`].
    pub fence_at: i64,
    /// [`MoveSettings::FENCE_WAIT`].
    pub fence_wait: Duration,
    /// [`MoveSettings::GRACE`].
    pub grace: Duration,
    /// [`MoveSettings::MAX_ACTIVE`].
    pub max_active: u32,
    /// [`MoveSettings::DRILL_STALL`].
    pub drill_stall: Option<Phase>,
    /// How often a replica looks for moves no driver holds (crashed drivers' moves).
    pub poll: Duration,
}

impl Default for MoveSettings {
    fn default() -> Self {
        MoveSettings {
            batch_rows: 5000,
            batch_pause: Duration::ZERO,
            fence_at: 500,
            fence_wait: Duration::from_millis(100),
            grace: Duration::from_secs(300),
            max_active: 2,
            drill_stall: None,
            poll: Duration::from_secs(1),
        }
    }
}

impl MoveSettings {
    pub const BATCH_ROWS: Var = Var::new(
        "BOROUGH_MOVE_BATCH_ROWS",
        "5000",
        "Rows a tenant move copies per batch (100 to 100000)",
    );
    pub const BATCH_PAUSE: Var = Var::new(
        "BOROUGH_MOVE_BATCH_PAUSE",
        "0s",
        "A pause between a move's copy batches, to spare a busy server (at most 10s)",
    );
    pub const FENCE_AT: Var = Var::new(
        "BOROUGH_MOVE_FENCE_AT",
        "500",
        "A move fences the tenant's writes once a catch-up leaves at most this many changes \
         (0 to 100000): the fewer, the shorter the pause",
    );
    pub const FENCE_WAIT: Var = Var::new(
        "BOROUGH_MOVE_FENCE_WAIT",
        "100ms",
        "How long a move waits for the tenant's writes in flight to end before it fences \
         (writes arriving meanwhile wait too); past it, it catches up again and retries \
         (10ms to 5s)",
    );
    pub const GRACE: Var = Var::new(
        "BOROUGH_MOVE_GRACE",
        "5m",
        "How long a moved tenant's old copy is kept after the switch (keep it longer than \
         every service's BOROUGH_TENANT_ROUTE_TTL)",
    );
    pub const MAX_ACTIVE: Var = Var::new(
        "BOROUGH_MOVE_MAX_ACTIVE",
        "2",
        "Moves preparing, copying, catching up or fenced at once, platform-wide (1 to 64); \
         more are refused",
    );
    pub const DRILL_STALL: Var = Var::new(
        "BOROUGH_MOVE_DRILL_STALL",
        "",
        "Crash drills only: a phase (copying, catching_up, fenced, switched) in which moves \
         driven here stop making progress, so that the process can be killed there",
    );
    pub const VARS: &[&Var] = &[
        &Self::BATCH_ROWS,
        &Self::BATCH_PAUSE,
        &Self::FENCE_AT,
        &Self::FENCE_WAIT,
        &Self::GRACE,
        &Self::MAX_ACTIVE,
        &Self::DRILL_STALL,
    ];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let drill_stall = match env.optional(&Self::DRILL_STALL).filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(
                Phase::parse(&raw)
                    .filter(|p| {
                        matches!(
                            p,
                            Phase::Copying | Phase::CatchingUp | Phase::Fenced | Phase::Switched
                        )
                    })
                    .ok_or_else(|| SettingsError::Invalid {
                        name: Self::DRILL_STALL.name.to_owned(),
                        value: raw.clone(),
                        reason: "expected copying, catching_up, fenced or switched".to_owned(),
                    })?,
            ),
        };
        Ok(MoveSettings {
            batch_rows: env.parse_in(&Self::BATCH_ROWS, 100..=100_000)?,
            batch_pause: env
                .duration_in(&Self::BATCH_PAUSE, Duration::ZERO..=Duration::from_secs(10))?,
            fence_at: env.parse_in(&Self::FENCE_AT, 0..=100_000)?,
            fence_wait: env.duration_in(
                &Self::FENCE_WAIT,
                Duration::from_millis(10)..=Duration::from_secs(5),
            )?,
            grace: env.duration(&Self::GRACE)?,
            max_active: env.parse_in(&Self::MAX_ACTIVE, 1..=64)?,
            drill_stall,
            poll: Duration::from_secs(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_a_drill_phase_must_be_one_a_move_can_stall_in() {
        let defaults = MoveSettings::from_env(&Env::from_pairs([("", "")])).expect("defaults");
        assert_eq!(defaults.batch_rows, 5000);
        assert_eq!(defaults.grace, Duration::from_secs(300));
        assert_eq!(defaults.drill_stall, None);
        let drill =
            MoveSettings::from_env(&Env::from_pairs([("BOROUGH_MOVE_DRILL_STALL", "fenced")]))
                .expect("a drill phase");
        assert_eq!(drill.drill_stall, Some(Phase::Fenced));
        for bad in ["done", "nonsense"] {
            let err = MoveSettings::from_env(&Env::from_pairs([("BOROUGH_MOVE_DRILL_STALL", bad)]))
                .expect_err(bad);
            assert!(
                err.to_string().contains("BOROUGH_MOVE_DRILL_STALL"),
                "{err}"
            );
        }
        let err = MoveSettings::from_env(&Env::from_pairs([("BOROUGH_MOVE_BATCH_ROWS", "5")]))
            .expect_err("too small");
        assert!(err.to_string().contains("BOROUGH_MOVE_BATCH_ROWS"), "{err}");
    }
}
