//! Drives moves phase by phase (see the module above for the phases).

use std::collections::HashSet;
use std::time::Instant;

use borough_tenancy::placement::{self, Route};
use borough_tenancy::provision::describe;
use sqlx::{ConnectOptions, PgConnection};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::data::{self, SnapshotCopy};
use super::{MoveRow, Moves, Phase, PhaseLabels};

/// Catch-up rounds before a move fences whatever is left (writes outpacing the copy).
const MAX_ROUNDS: i32 = 50;

/// Fence attempts (each after another catch-up) before a move gives up and rolls back.
const MAX_FENCE_TRIES: u32 = 20;

/// Why a step stopped.
#[derive(Debug)]
enum Stop {
    /// Roll back, and end the move so (`Failed` with the reason, or `Cancelled`).
    RollBack(Phase, Option<String>),
    /// Something to retry later: the move stays in its phase.
    Retry(String),
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        Stop::Retry(describe(&e))
    }
}

/// A failure on a side of the move (before the switch): the move fails.
fn side(what: &str) -> impl Fn(sqlx::Error) -> Stop + '_ {
    move |e| {
        tracing::warn!(error = %e, "tenant move: {what} failed");
        Stop::RollBack(Phase::Failed, Some(format!("{what}: {}", describe(&e))))
    }
}

impl Moves {
    /// Drives every unfinished move no other driver holds: at start, every
    /// `poll`, and when a move is started or cancelled here. Runs for the life of the
    /// service; its moves stop with it (and are taken up again by the next driver).
    pub async fn run(self) {
        let mut driving: JoinSet<Uuid> = JoinSet::new();
        let mut mine: HashSet<Uuid> = HashSet::new();
        loop {
            match self.unfinished().await {
                Ok(ids) => {
                    for id in ids {
                        if mine.insert(id) {
                            let moves = self.clone();
                            driving.spawn(async move {
                                moves.drive(id).await;
                                id
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for tenant moves failed"),
            }
            let wake = self.inner.wake.notified();
            tokio::select! {
                _ = tokio::time::sleep(self.inner.settings.poll) => {}
                _ = wake => {}
                Some(done) = driving.join_next() => {
                    if let Ok(id) = done {
                        mine.remove(&id);
                    }
                }
            }
            while let Some(done) = driving.try_join_next() {
                if let Ok(id) = done {
                    mine.remove(&id);
                }
            }
        }
    }

    async fn unfinished(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM control.tenant_moves
              WHERE phase NOT IN ('done', 'failed', 'cancelled')
                AND (phase <> 'switched' OR cleanup_after <= now())
              ORDER BY created_at",
        )
        .fetch_all(&self.inner.control)
        .await
    }

    /// Drives one move while this replica holds its lock (another replica may hold it:
    /// then nothing).
    async fn drive(&self, id: Uuid) {
        let mut lock = match self.hold(id).await {
            Ok(Some(conn)) => conn,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(r#move = %id, error = %e, "could not take up a tenant move");
                return;
            }
        };
        let mut shown: Option<Phase> = None;
        loop {
            let row = match self.load(id).await {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(r#move = %id, error = %e, "reading a tenant move failed");
                    tokio::time::sleep(self.inner.settings.poll).await;
                    continue;
                }
            };
            self.show(&mut shown, Some(row.phase));
            if row.phase.is_final() {
                break;
            }
            if row.phase == Phase::Switched {
                self.drill(Phase::Switched).await;
                // Nothing to do until the grace period ends: no driver (nor its
                // connection) is held meanwhile; the look after it takes the move up.
                if row.cleanup_after.is_some_and(|at| at > chrono::Utc::now()) {
                    break;
                }
            }
            match self.step(&row).await {
                Ok(()) => {}
                Err(Stop::RollBack(end, reason)) => {
                    if let Err(e) = self.roll_back(&row, end, reason.as_deref()).await {
                        tracing::warn!(r#move = %id, error = %e, "rolling a tenant move back failed; retrying");
                        tokio::time::sleep(self.inner.settings.poll).await;
                    }
                }
                Err(Stop::Retry(reason)) => {
                    tracing::warn!(r#move = %id, phase = row.phase.as_str(), reason, "tenant move step failed; retrying");
                    let _ = self.note_error(id, &reason).await;
                    tokio::time::sleep(self.inner.settings.poll * 2).await;
                }
            }
        }
        self.show(&mut shown, None);
        let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut lock)
            .await;
    }

    /// Crash drills (`BOROUGH_MOVE_DRILL_STALL`): in the phase named, the move stops here
    /// for good (until the process is killed): mid-copy, after a catch-up round, with the
    /// source fenced, or switched.
    async fn drill(&self, phase: Phase) {
        if self.inner.settings.drill_stall == Some(phase) {
            tracing::warn!(phase = phase.as_str(), "crash drill: the move stalls here");
            std::future::pending::<()>().await;
        }
    }

    /// Keeps `borough_tenant_moves{phase}` counting this replica's moves.
    fn show(&self, shown: &mut Option<Phase>, now: Option<Phase>) {
        if *shown == now {
            return;
        }
        let gauge = |p: Phase| {
            self.inner
                .metrics
                .active
                .get_or_create(&PhaseLabels { phase: p.as_str() })
                .clone()
        };
        if let Some(old) = shown.take() {
            gauge(old).dec();
        }
        if let Some(new) = now.filter(|p| !p.is_final()) {
            gauge(new).inc();
            *shown = Some(new);
        }
    }

    /// A connection holding the move's driver lock, or `None` if another holds it.
    async fn hold(&self, id: Uuid) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn = self.inner.router.default_options().connect().await?;
        let held: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('borough.move-driver:' || $1::uuid, 0))",
        )
        .bind(id)
        .fetch_one(&mut conn)
        .await?;
        Ok(held.then_some(conn))
    }

    async fn step(&self, row: &MoveRow) -> Result<(), Stop> {
        match row.phase {
            Phase::Preparing => self.prepare(row).await,
            // A copy or catch-up cut short (its snapshot was in the driver that died)
            // starts again.
            Phase::Copying | Phase::CatchingUp => {
                tracing::info!(tenant = %row.tenant, r#move = %row.id, phase = row.phase.as_str(), "tenant move resumed: copying again");
                self.enter(row, Phase::Preparing, "").await?;
                Ok(())
            }
            Phase::Fenced => self.resume_fenced(row).await,
            Phase::Switched => self.end_grace(row).await,
            Phase::Cleaning => self.clean(row).await,
            Phase::Done | Phase::Failed | Phase::Cancelled => Ok(()),
        }
    }

    /// Records a phase (and resets the progress the phase starts over), logs it, counts it.
    async fn enter(&self, row: &MoveRow, phase: Phase, extra: &str) -> Result<(), sqlx::Error> {
        let reset = match phase {
            Phase::Preparing | Phase::Copying => {
                ", rows_total = 0, rows_copied = 0, changes_applied = 0, lag_changes = 0, \
                 catch_up_rounds = 0"
            }
            _ => "",
        };
        let finished = if phase.is_final() {
            ", finished_at = now()"
        } else {
            ""
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE control.tenant_moves SET phase = $2, updated_at = now(){reset}{finished}{extra}
              WHERE id = $1"
        )))
        .bind(row.id)
        .bind(phase.as_str())
        .execute(&self.inner.control)
        .await?;
        self.entered(row, phase, None);
        Ok(())
    }

    /// Counts and logs a phase entered (with the fence's figures for `switched`).
    fn entered(&self, row: &MoveRow, phase: Phase, fence: Option<(f64, f64)>) {
        self.inner
            .metrics
            .phases
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
            .inc();
        tracing::info!(
            tenant = %row.tenant,
            r#move = %row.id,
            phase = phase.as_str(),
            fence_ms = fence.map(|(fence, _)| fence),
            compare_ms = fence.map(|(_, compare)| compare),
            from = %super::describe(&row.from),
            to = %super::describe(&row.to),
            "tenant move phase"
        );
    }

    async fn note_error(&self, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE control.tenant_moves SET error = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&self.inner.control)
            .await?;
        Ok(())
    }

    async fn cancel_requested(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT cancel_requested FROM control.tenant_moves WHERE id = $1")
            .bind(id)
            .fetch_one(&self.inner.control)
            .await
    }

    /// The tenant's route as it stands (what is live must never be removed).
    async fn live_route(&self, row: &MoveRow) -> Result<Option<Route>, sqlx::Error> {
        let credentials = placement::Credentials::TenantUrls(self.inner.keys.clone());
        placement::load_route(&self.inner.control, row.tenant, &credentials)
            .await
            .map_err(|e| match e {
                placement::RouteLoadError::Database(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })
    }

    /// Whether `route` is where the tenant is served from now.
    async fn is_live(&self, row: &MoveRow, route: &Route) -> Result<bool, sqlx::Error> {
        Ok(self.live_route(row).await?.is_some_and(|live| {
            live.schema == route.schema && super::same_database(&live.storage, &route.storage)
        }))
    }

    /// Clears the target of anything an earlier attempt left, prepares it, and copies.
    async fn prepare(&self, row: &MoveRow) -> Result<(), Stop> {
        if self.cancel_requested(row.id).await? {
            return Err(Stop::RollBack(Phase::Cancelled, None));
        }
        if self.is_live(row, &row.to).await? {
            return Err(Stop::RollBack(
                Phase::Failed,
                Some("the tenant is already served from the target".to_owned()),
            ));
        }
        let provisioner = &self.inner.provisioner;
        let fail = |what: &str, e: borough_tenancy::provision::ProvisionError| {
            tracing::warn!(tenant = %row.tenant, r#move = %row.id, error = %e, "tenant move: {what} failed");
            Stop::RollBack(Phase::Failed, Some(format!("{what}: {}", e.public())))
        };
        provisioner
            .purge(&row.to)
            .await
            .map_err(|e| fail("clearing the target", e))?;
        provisioner
            .prepare(&row.to)
            .await
            .map_err(|e| fail("preparing the target", e))?;
        self.enter(row, Phase::Copying, "").await?;
        self.transfer(row).await
    }

    /// Copies the snapshot, catches up, fences, checks and switches.
    async fn transfer(&self, row: &MoveRow) -> Result<(), Stop> {
        let settings = &self.inner.settings;
        let tenant = row.tenant;
        let mut src = data::connect(&self.inner.router, &row.from, false)
            .await
            .map_err(side("connecting to the source"))?;
        let mut dst = data::connect(&self.inner.router, &row.to, true)
            .await
            .map_err(side("connecting to the target"))?;

        // 1. The snapshot.
        let started = Instant::now();
        let mut copy = SnapshotCopy::begin(&mut src, &mut dst, tenant, settings.batch_rows)
            .await
            .map_err(side("reading the source"))?;
        sqlx::query(
            "UPDATE control.tenant_moves SET rows_total = $2, updated_at = now() WHERE id = $1",
        )
        .bind(row.id)
        .bind(copy.total)
        .execute(&self.inner.control)
        .await?;
        let mut copied = 0i64;
        while let Some(n) = copy.next().await.map_err(side("copying"))? {
            copied += n as i64;
            self.inner.metrics.rows_copied.inc_by(n);
            let cancel: bool = sqlx::query_scalar(
                "UPDATE control.tenant_moves SET rows_copied = $2, updated_at = now()
                  WHERE id = $1 RETURNING cancel_requested",
            )
            .bind(row.id)
            .bind(copied)
            .fetch_one(&self.inner.control)
            .await?;
            if cancel {
                return Err(Stop::RollBack(Phase::Cancelled, None));
            }
            self.drill(Phase::Copying).await;
            if !settings.batch_pause.is_zero() {
                tokio::time::sleep(settings.batch_pause).await;
            }
        }
        let mut snapshot = std::mem::take(&mut copy.snapshot);
        drop(copy);
        // Statistics for the copy before it serves, and for both sides before the
        // comparisons look rows up by id (a bulk load leaves the planner guessing).
        for (side, route) in [("target", &row.to), ("source", &row.from)] {
            if let Err(e) = self.inner.provisioner.analyze(route).await {
                tracing::warn!(tenant = %tenant, r#move = %row.id, side, error = %e, "tenant move: analyzing failed (statistics stay as autovacuum left them)");
            }
        }
        tracing::info!(tenant = %tenant, r#move = %row.id, rows = copied, seconds = started.elapsed().as_secs_f64(), "tenant move: snapshot copied");

        // 2. Catch up until little is left.
        self.enter(row, Phase::CatchingUp, "").await?;
        let mut rounds = 0;
        let mut applied = 0i64;
        let mut fence_tries = 0;
        // What changed since both copies were last compared in full.
        let mut since_compared: data::Changed;
        let fenced_since = loop {
            let caught = data::catch_up(&mut src, &mut dst, tenant, &snapshot, None)
                .await
                .map_err(side("catching up"))?;
            snapshot = caught.snapshot;
            applied += caught.changes;
            rounds += 1;
            self.inner
                .metrics
                .changes_applied
                .inc_by(caught.changes as u64);
            let lag = data::lag(&mut src, tenant, &snapshot)
                .await
                .map_err(side("reading the source"))?;
            self.inner.metrics.lag.set(lag);
            let cancel: bool = sqlx::query_scalar(
                "UPDATE control.tenant_moves
                    SET changes_applied = $2, lag_changes = $3, catch_up_rounds = $4,
                        updated_at = now()
                  WHERE id = $1 RETURNING cancel_requested",
            )
            .bind(row.id)
            .bind(applied)
            .bind(lag)
            .bind(rounds)
            .fetch_one(&self.inner.control)
            .await?;
            if cancel {
                return Err(Stop::RollBack(Phase::Cancelled, None));
            }
            self.drill(Phase::CatchingUp).await;
            if lag > settings.fence_at && rounds < MAX_ROUNDS {
                continue;
            }
            // Both copies compared in full before the fence, at one snapshot of the
            // source (the target has it all once this round is applied): in the fence,
            // only the rows changed since are compared again.
            let cutoff = chrono::Utc::now() + chrono::Duration::minutes(1);
            let caught = data::catch_up(&mut src, &mut dst, tenant, &snapshot, Some(cutoff))
                .await
                .map_err(side("catching up"))?;
            snapshot = caught.snapshot;
            applied += caught.changes;
            self.inner
                .metrics
                .changes_applied
                .inc_by(caught.changes as u64);
            let target = data::sums(&mut dst, tenant, cutoff, None)
                .await
                .map_err(side("comparing the target"))?;
            compare(
                row,
                caught.source_sums.as_deref().unwrap_or_default(),
                &target,
            )?;
            // The comparison took a while: catch up on what it let pile up, so that the
            // fence has only the last moment's changes to apply.
            let quick = data::catch_up(&mut src, &mut dst, tenant, &snapshot, None)
                .await
                .map_err(side("catching up"))?;
            snapshot = quick.snapshot;
            applied += quick.changes;
            since_compared = quick.changed;
            // The target's pool here, ready for the first writes after the switch.
            if let Err(e) = self.inner.router.warm(&row.from, &row.to, 4).await {
                tracing::info!(tenant = %tenant, r#move = %row.id, error = %e, "tenant move: warming the target's pool failed");
            }
            // 3. Fence: the phase first, so that a fence left by a driver that dies is
            // known to the next one.
            self.enter(row, Phase::Fenced, "").await?;
            let asked = Instant::now();
            if data::fence(&mut src, tenant, row.id, settings.fence_wait)
                .await
                .map_err(side("fencing the source"))?
            {
                break asked;
            }
            fence_tries += 1;
            tracing::info!(tenant = %tenant, r#move = %row.id, tries = fence_tries, "tenant move: writes in flight outlasted the fence wait; catching up again");
            if fence_tries >= MAX_FENCE_TRIES {
                return Err(Stop::RollBack(
                    Phase::Failed,
                    Some(format!(
                        "the tenant's writes in flight never ended within BOROUGH_MOVE_FENCE_WAIT \
                         ({} tries)",
                        MAX_FENCE_TRIES
                    )),
                ));
            }
            self.enter(row, Phase::CatchingUp, "").await?;
        };
        self.inner.metrics.lag.set(0);
        self.drill(Phase::Fenced).await;

        // 4. Fenced: the last changes, the comparison, the switch (which records the
        // progress too: nothing else is written in the fence).
        let fence_taken = fenced_since.elapsed();
        let last = data::catch_up(&mut src, &mut dst, tenant, &snapshot, None)
            .await
            .map_err(side("catching up"))?;
        applied += last.changes;
        self.inner
            .metrics
            .changes_applied
            .inc_by(last.changes as u64);
        since_compared.add(last.changed);
        tracing::info!(
            tenant = %tenant,
            r#move = %row.id,
            fence_taken_ms = fence_taken.as_secs_f64() * 1000.0,
            tail_changes = last.changes,
            tail_ms = (fenced_since.elapsed() - fence_taken).as_secs_f64() * 1000.0,
            "tenant move: fenced, last changes applied"
        );
        self.compare_and_switch(
            row,
            &mut src,
            &mut dst,
            fenced_since,
            Some((&since_compared, applied, rounds + 2)),
        )
        .await
    }

    /// Compares both copies of a fenced tenant (row counts, and the checksum of the rows
    /// in `only`, or of all) and switches its route when they match.
    async fn compare_and_switch(
        &self,
        row: &MoveRow,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        fenced_since: Instant,
        tail: Option<(&data::Changed, i64, i32)>,
    ) -> Result<(), Stop> {
        let compared_at = Instant::now();
        let cutoff = chrono::Utc::now() + chrono::Duration::minutes(1);
        let only = tail.map(|(changed, _, _)| changed);
        let (source, target) = tokio::join!(
            data::sums(src, row.tenant, cutoff, only),
            data::sums(dst, row.tenant, cutoff, only)
        );
        let source = source.map_err(side("comparing the source"))?;
        let target = target.map_err(side("comparing the target"))?;
        compare(row, &source, &target)?;
        let compare_ms = compared_at.elapsed().as_secs_f64() * 1000.0;

        // The switch: the route and the phase in one transaction, unless cancelled first.
        let mut tx = self.inner.control.begin().await?;
        let cancel: bool = sqlx::query_scalar(
            "SELECT cancel_requested FROM control.tenant_moves WHERE id = $1 FOR UPDATE",
        )
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await?;
        if cancel {
            tx.rollback().await?;
            return Err(Stop::RollBack(Phase::Cancelled, None));
        }
        let switched = sqlx::query(
            "UPDATE control.tenants t
                SET placement = m.to_placement, schema_name = m.to_schema,
                    database_name = m.to_database_name, database_url = m.to_database_url,
                    read_url = m.to_read_url, database_location = m.to_location,
                    read_location = m.to_read_location
               FROM control.tenant_moves m
              WHERE m.id = $1 AND t.id = m.tenant_id
                AND t.placement = m.from_placement AND t.schema_name = m.from_schema
                AND t.database_name IS NOT DISTINCT FROM m.from_database_name
                AND t.database_location IS NOT DISTINCT FROM m.from_location",
        )
        .bind(row.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if switched != 1 {
            tx.rollback().await?;
            return Err(Stop::RollBack(
                Phase::Failed,
                Some("the tenant's route changed during the move; nothing was switched".to_owned()),
            ));
        }
        let fence_ms = fenced_since.elapsed().as_secs_f64() * 1000.0;
        sqlx::query(
            "UPDATE control.tenant_moves
                SET phase = 'switched', switched_at = now(), error = NULL,
                    cleanup_after = now() + make_interval(secs => $2), fence_ms = $3,
                    changes_applied = coalesce($4, changes_applied), lag_changes = 0,
                    catch_up_rounds = coalesce($5, catch_up_rounds), updated_at = now()
              WHERE id = $1",
        )
        .bind(row.id)
        .bind(self.inner.settings.grace.as_secs_f64())
        .bind(fence_ms)
        .bind(tail.map(|(_, applied, _)| applied))
        .bind(tail.map(|(_, _, rounds)| rounds))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.inner.router.invalidate(row.tenant);
        self.inner.metrics.last_fence_ms.set(fence_ms);
        self.entered(row, Phase::Switched, Some((fence_ms, compare_ms)));
        Ok(())
    }

    /// A driver died in `fenced`: the source takes no writes if its fence is in place, so
    /// copies that match are switched; otherwise the copy starts again (unfenced).
    async fn resume_fenced(&self, row: &MoveRow) -> Result<(), Stop> {
        let mut src = data::connect(&self.inner.router, &row.from, false)
            .await
            .map_err(|e| Stop::Retry(format!("connecting to the source: {}", describe(&e))))?;
        if self.cancel_requested(row.id).await? {
            return Err(Stop::RollBack(Phase::Cancelled, None));
        }
        let Some(fenced_at) = data::fenced_at(&mut src, row.tenant).await? else {
            tracing::info!(tenant = %row.tenant, r#move = %row.id, "tenant move resumed: not fenced yet, copying again");
            self.enter(row, Phase::Preparing, "").await?;
            return Ok(());
        };
        let mut dst = data::connect(&self.inner.router, &row.to, true)
            .await
            .map_err(side("connecting to the target"))?;
        tracing::info!(tenant = %row.tenant, r#move = %row.id, %fenced_at, "tenant move resumed while fenced: comparing the copies");
        // Measured from the fence, as far as this process can tell.
        let since = chrono::Utc::now()
            .signed_duration_since(fenced_at)
            .to_std()
            .unwrap_or_default();
        let fenced_since = Instant::now()
            .checked_sub(since)
            .unwrap_or_else(Instant::now);
        match self
            .compare_and_switch(row, &mut src, &mut dst, fenced_since, None)
            .await
        {
            Err(Stop::RollBack(Phase::Failed, reason)) => {
                if self.is_live(row, &row.to).await? {
                    return Ok(());
                }
                // Copies that differ here were cut short by the crash: unfence and copy
                // again rather than fail.
                tracing::info!(tenant = %row.tenant, r#move = %row.id, reason = reason.as_deref().unwrap_or(""), "tenant move resumed: copying again");
                data::unfence(&mut src, row.tenant).await?;
                self.enter(row, Phase::Preparing, "").await?;
                Ok(())
            }
            other => other,
        }
    }

    /// The old copy has been kept until `cleanup_after` (a move is driven in `switched`
    /// only once it has passed): remove it.
    async fn end_grace(&self, row: &MoveRow) -> Result<(), Stop> {
        self.enter(row, Phase::Cleaning, "").await?;
        Ok(())
    }

    /// Removes the old copy (never the live one) and ends the move.
    async fn clean(&self, row: &MoveRow) -> Result<(), Stop> {
        if self.is_live(row, &row.from).await? {
            return Err(Stop::Retry(
                "the old copy is live again (the route was changed by hand?): not removed"
                    .to_owned(),
            ));
        }
        self.inner
            .provisioner
            .purge(&row.from)
            .await
            .map_err(|e| Stop::Retry(format!("removing the old copy: {}", e.public())))?;
        self.enter(row, Phase::Done, ", error = NULL").await?;
        Ok(())
    }

    /// Undoes a move that has not switched: the source unfenced (this must succeed: the
    /// tenant takes no writes until it does), the target's copy removed (best effort: a
    /// later move clears it first), and the move ended as `end`.
    async fn roll_back(
        &self,
        row: &MoveRow,
        end: Phase,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        if self.is_live(row, &row.to).await? {
            // Switched after all (a cancel raced the switch): nothing to undo.
            return Ok(());
        }
        // Only a move that reached `fenced` may have fenced the source (the phase is
        // recorded before the fence is taken).
        let phase: String =
            sqlx::query_scalar("SELECT phase FROM control.tenant_moves WHERE id = $1")
                .bind(row.id)
                .fetch_one(&self.inner.control)
                .await?;
        if Phase::parse(&phase) == Some(Phase::Fenced) {
            let mut src = data::connect(&self.inner.router, &row.from, false).await?;
            data::unfence(&mut src, row.tenant).await?;
        }
        if let Err(e) = self.inner.provisioner.purge(&row.to).await {
            tracing::warn!(tenant = %row.tenant, r#move = %row.id, error = %e, "tenant move: the target's copy could not be removed (the next move clears it)");
        }
        sqlx::query("UPDATE control.tenant_moves SET error = $2 WHERE id = $1")
            .bind(row.id)
            .bind(reason)
            .execute(&self.inner.control)
            .await?;
        self.enter(row, end, "").await?;
        tracing::info!(tenant = %row.tenant, r#move = %row.id, outcome = end.as_str(), reason = reason.unwrap_or(""), "tenant move rolled back; the tenant stays where it was");
        Ok(())
    }
}

/// Both copies' sums: equal, or the move fails (nothing switched).
fn compare(
    row: &MoveRow,
    source: &[data::TableSum],
    target: &[data::TableSum],
) -> Result<(), Stop> {
    if source.is_empty() || source != target {
        let differs: Vec<String> = source
            .iter()
            .zip(target)
            .filter(|(s, t)| s != t)
            .map(|(s, t)| format!("{}: {} rows here, {} there", s.table, s.rows, t.rows))
            .collect();
        tracing::error!(tenant = %row.tenant, r#move = %row.id, ?source, ?target, "tenant move: the copies differ");
        return Err(Stop::RollBack(
            Phase::Failed,
            Some(format!(
                "the copies differ after catching up ({}); nothing was switched",
                differs.join("; ")
            )),
        ));
    }
    let checked = source
        .iter()
        .map(|s| format!("{} {}", s.table, s.rows))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(tenant = %row.tenant, r#move = %row.id, checked, "tenant move: copies match");
    Ok(())
}
