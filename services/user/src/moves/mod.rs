//! Live tenant moves between placements (docs/tenancy.md, "Moving a tenant").
//!
//! A move is a row of `control.tenant_moves`; [`Moves`] starts, reads and cancels them
//! (the admin API), and [`Moves::run`] drives every unfinished one, on whichever user
//! replica takes it first, phase by phase:
//!
//! 1. `preparing`: the target's storage is cleared of anything a failed attempt left
//!    and prepared (schema or database created and migrated, as at creation);
//! 2. `copying`: the tenant's rows as of one snapshot of the source (REPEATABLE READ),
//!    in batches;
//! 3. `catching_up`: the changes committed since, from the outbox, snapshot to snapshot,
//!    until few are left;
//! 4. `fenced`: the source takes no more writes of the tenant (a fence row, under an
//!    advisory lock every write holds shared; writes after it wait and are retried at
//!    the new place by the user service); the last changes are applied, both copies
//!    compared (row counts and a checksum per table), and the route switched in the same
//!    transaction as the phase: every service hears it (`borough_tenant_changed`);
//! 5. `switched`: the old copy is kept for `BOROUGH_MOVE_GRACE` (routes cached anywhere
//!    expire meanwhile; writes that still reach it are refused by its fence), then
//!    `cleaning` removes it, and the move is `done`.
//!
//! Crash safety: the phase is in the control database, and a driver holds a session
//! advisory lock on its move for as long as it runs it, so a move whose driver died is
//! taken up by the next look (here or on another replica). Before `fenced` it starts
//! again from `preparing`; in `fenced` the source is frozen, so a copy that matches is
//! switched and one that does not is unfenced and started again; after the switch only
//! the cleanup is left. Any failure before the switch (a target that cannot be reached,
//! copies that differ) rolls back: the target copy is removed, the source unfenced, the
//! tenant stays where it was and the move ends `failed` with the reason.

mod data;
mod driver;
mod settings;

use std::sync::Arc;

use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::time::to_timestamp;
use borough_proto::user::v1::{Placement, TenantMove};
use borough_telemetry::Metrics;
use borough_tenancy::placement::{self, Route, Storage};
use borough_tenancy::provision::Provisioner;
use borough_tenancy::secrets::Keyring;
use borough_tenancy::{PoolRouter, db};
use borough_tenant::TenantId;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tonic::Status;
use uuid::Uuid;

pub use settings::MoveSettings;

/// A move's phase, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Preparing,
    Copying,
    CatchingUp,
    Fenced,
    Switched,
    Cleaning,
    Done,
    Failed,
    Cancelled,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Preparing,
        Phase::Copying,
        Phase::CatchingUp,
        Phase::Fenced,
        Phase::Switched,
        Phase::Cleaning,
        Phase::Done,
        Phase::Failed,
        Phase::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Copying => "copying",
            Phase::CatchingUp => "catching_up",
            Phase::Fenced => "fenced",
            Phase::Switched => "switched",
            Phase::Cleaning => "cleaning",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Finished: nothing left to drive.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed | Phase::Cancelled)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Invalid(String),
    #[error("no tenant with id {0}")]
    TenantNotFound(Uuid),
    #[error("no move {0} of this tenant")]
    NotFound(Uuid),
    #[error("the tenant is {0}: only an active tenant can be moved")]
    NotActive(&'static str),
    #[error("the tenant is already there ({0})")]
    AlreadyThere(String),
    #[error("move {0} of this tenant is under way; follow or cancel it")]
    InProgress(Uuid),
    #[error("another move of this tenant was started at the same moment")]
    Raced,
    #[error(
        "move {id} of this tenant switched at {switched}; its old copy is kept until {until} \
         (BOROUGH_MOVE_GRACE), and the tenant can move again after that"
    )]
    OldCopyKept {
        id: Uuid,
        switched: String,
        until: String,
    },
    #[error("{0} moves are under way, the most BOROUGH_MOVE_MAX_ACTIVE allows; retry later")]
    TooMany(i64),
    #[error("move {id} is {phase}: only a move that has not switched can be cancelled")]
    TooLateToCancel { id: Uuid, phase: &'static str },
    #[error("{0}")]
    NotConfigured(String),
    #[error("{0}")]
    Unusable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<placement::RouteLoadError> for MoveError {
    fn from(e: placement::RouteLoadError) -> Self {
        match e {
            placement::RouteLoadError::Database(e) => MoveError::Database(e),
            other => MoveError::Unusable(other.to_string()),
        }
    }
}

impl From<borough_tenancy::secrets::SecretError> for MoveError {
    fn from(e: borough_tenancy::secrets::SecretError) -> Self {
        MoveError::Unusable(e.to_string())
    }
}

impl From<crate::stored::SealError> for MoveError {
    fn from(e: crate::stored::SealError) -> Self {
        match e {
            crate::stored::SealError::NoKeys => MoveError::NotConfigured(e.to_string()),
            crate::stored::SealError::Secret(e) => e.into(),
        }
    }
}

impl ServiceError for MoveError {
    fn kind(&self) -> ErrorKind {
        match self {
            MoveError::Invalid(_) => ErrorKind::InvalidArgument,
            MoveError::TenantNotFound(_) | MoveError::NotFound(_) => ErrorKind::NotFound,
            MoveError::AlreadyThere(_) => ErrorKind::AlreadyExists,
            MoveError::NotActive(_)
            | MoveError::InProgress(_)
            | MoveError::Raced
            | MoveError::OldCopyKept { .. }
            | MoveError::TooLateToCancel { .. } => ErrorKind::Conflict,
            MoveError::TooMany(_) => ErrorKind::QuotaExceeded,
            MoveError::NotConfigured(_) => ErrorKind::PreconditionFailed,
            MoveError::Unusable(_) => ErrorKind::Internal,
            MoveError::Database(e) => db::classify(e),
        }
    }

    fn public_detail(&self) -> String {
        match self {
            MoveError::Database(e) => db::public_detail(e),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }
}

impl From<MoveError> for Status {
    fn from(err: MoveError) -> Status {
        // `to_status` logs server faults (with the full error) already.
        to_status(&err)
    }
}

/// A row of `control.tenant_moves`, with the routes it names opened.
#[derive(Debug, Clone)]
pub struct MoveRow {
    pub id: Uuid,
    pub tenant: TenantId,
    pub phase: Phase,
    pub from: Route,
    pub to: Route,
    pub rows_total: i64,
    pub rows_copied: i64,
    pub changes_applied: i64,
    pub lag_changes: i64,
    pub catch_up_rounds: i32,
    pub fence_ms: Option<f64>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub switched_at: Option<DateTime<Utc>>,
    pub cleanup_after: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The columns [`MoveRow`] is read from.
const MOVE_COLUMNS: &str = "id, tenant_id, phase, from_placement, from_schema, \
     from_database_name, from_database_url, from_read_url, from_location, from_read_location, \
     to_placement, to_schema, to_database_name, to_database_url, to_read_url, to_location, \
     to_read_location, rows_total, rows_copied, changes_applied, lag_changes, catch_up_rounds, \
     fence_ms, error, cancel_requested, created_at, updated_at, switched_at, cleanup_after, \
     finished_at";

#[derive(sqlx::FromRow)]
struct StoredMove {
    id: Uuid,
    tenant_id: Uuid,
    phase: String,
    from_placement: String,
    from_schema: String,
    from_database_name: Option<String>,
    from_database_url: Option<String>,
    from_read_url: Option<String>,
    from_location: Option<String>,
    from_read_location: Option<String>,
    to_placement: String,
    to_schema: String,
    to_database_name: Option<String>,
    to_database_url: Option<String>,
    to_read_url: Option<String>,
    to_location: Option<String>,
    to_read_location: Option<String>,
    rows_total: i64,
    rows_copied: i64,
    changes_applied: i64,
    lag_changes: i64,
    catch_up_rounds: i32,
    fence_ms: Option<f64>,
    error: Option<String>,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    switched_at: Option<DateTime<Utc>>,
    cleanup_after: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// A stored route (one side of a move), opened with `keys`.
#[allow(clippy::too_many_arguments)]
fn stored_route(
    tenant: Uuid,
    placement: &str,
    schema: String,
    database_name: Option<String>,
    url: Option<String>,
    read_url: Option<String>,
    location: Option<String>,
    read_location: Option<String>,
    keys: Option<&Keyring>,
) -> Result<Route, MoveError> {
    let placement = placement
        .parse()
        .map_err(|_| MoveError::Unusable(format!("move of {tenant}: unknown placement")))?;
    let open = |column: &str, stored: Option<String>| {
        borough_tenancy::secrets::open_column(keys, tenant, column, stored)
    };
    let storage = match (database_name, location) {
        (None, None) => Storage::Default,
        (Some(name), None) => Storage::OwnDatabase { name },
        (None, Some(location)) => Storage::External(placement::External {
            location,
            read_location,
            url: open("database_url", url)?,
            read_url: open("read_url", read_url)?,
        }),
        (Some(_), Some(_)) => {
            return Err(MoveError::Unusable(format!(
                "move of {tenant}: both a database name and a location"
            )));
        }
    };
    Ok(Route {
        tenant_id: TenantId(tenant),
        placement,
        status: placement::Status::Active,
        schema,
        storage,
    })
}

impl StoredMove {
    fn open(self, keys: Option<&Keyring>) -> Result<MoveRow, MoveError> {
        let phase = Phase::parse(&self.phase)
            .ok_or_else(|| MoveError::Unusable(format!("move {}: unknown phase", self.id)))?;
        let from = stored_route(
            self.tenant_id,
            &self.from_placement,
            self.from_schema,
            self.from_database_name,
            self.from_database_url,
            self.from_read_url,
            self.from_location,
            self.from_read_location,
            keys,
        )?;
        let to = stored_route(
            self.tenant_id,
            &self.to_placement,
            self.to_schema,
            self.to_database_name,
            self.to_database_url,
            self.to_read_url,
            self.to_location,
            self.to_read_location,
            keys,
        )?;
        Ok(MoveRow {
            id: self.id,
            tenant: TenantId(self.tenant_id),
            phase,
            from,
            to,
            rows_total: self.rows_total,
            rows_copied: self.rows_copied,
            changes_applied: self.changes_applied,
            lag_changes: self.lag_changes,
            catch_up_rounds: self.catch_up_rounds,
            fence_ms: self.fence_ms,
            error: self.error,
            cancel_requested: self.cancel_requested,
            created_at: self.created_at,
            updated_at: self.updated_at,
            switched_at: self.switched_at,
            cleanup_after: self.cleanup_after,
            finished_at: self.finished_at,
        })
    }
}

fn placement_to_proto(placement: borough_tenant::Placement) -> Placement {
    match placement {
        borough_tenant::Placement::Shared => Placement::Shared,
        borough_tenant::Placement::Schema => Placement::Schema,
        borough_tenant::Placement::Database => Placement::Database,
    }
}

impl MoveRow {
    pub fn to_proto(&self) -> TenantMove {
        TenantMove {
            id: self.id.to_string(),
            tenant_id: self.tenant.to_string(),
            phase: self.phase.as_str().to_owned(),
            from_placement: placement_to_proto(self.from.placement) as i32,
            to_placement: placement_to_proto(self.to.placement) as i32,
            to_schema: self.to.schema.clone(),
            to_database: match &self.to.storage {
                Storage::OwnDatabase { name } => Some(name.clone()),
                _ => None,
            },
            to_external_database: matches!(self.to.storage, Storage::External(_)),
            rows_total: self.rows_total,
            rows_copied: self.rows_copied,
            changes_applied: self.changes_applied,
            lag_changes: self.lag_changes,
            catch_up_rounds: self.catch_up_rounds,
            fence_ms: self.fence_ms,
            error: self.error.clone(),
            cancel_requested: self.cancel_requested,
            created_at: Some(to_timestamp(self.created_at)),
            updated_at: Some(to_timestamp(self.updated_at)),
            switched_at: self.switched_at.map(to_timestamp),
            cleanup_after: self.cleanup_after.map(to_timestamp),
            finished_at: self.finished_at.map(to_timestamp),
        }
    }
}

/// The moves' metrics.
#[derive(Clone)]
pub(crate) struct MoveMetrics {
    /// Moves this replica drives, by phase.
    pub(crate) active: Family<PhaseLabels, Gauge>,
    /// Phases entered, by phase.
    pub(crate) phases: Family<PhaseLabels, Counter>,
    pub(crate) rows_copied: Counter,
    pub(crate) changes_applied: Counter,
    /// Changes committed on a source and not applied yet (the last look of each move
    /// driven here, summed).
    pub(crate) lag: Gauge,
    /// The last switch's fence, in milliseconds.
    pub(crate) last_fence_ms: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct PhaseLabels {
    pub(crate) phase: &'static str,
}

impl MoveMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = MoveMetrics {
            active: Family::default(),
            phases: Family::default(),
            rows_copied: Counter::default(),
            changes_applied: Counter::default(),
            lag: Gauge::default(),
            last_fence_ms: Gauge::default(),
        };
        metrics.register(
            "tenant_moves",
            "Tenant moves this replica drives, by phase",
            m.active.clone(),
        );
        metrics.register(
            "tenant_move_phases",
            "Phases tenant moves entered here, by phase",
            m.phases.clone(),
        );
        metrics.register(
            "tenant_move_rows_copied",
            "Rows tenant moves copied from their snapshots",
            m.rows_copied.clone(),
        );
        metrics.register(
            "tenant_move_changes_applied",
            "Changes tenant moves applied while catching up",
            m.changes_applied.clone(),
        );
        metrics.register(
            "tenant_move_lag_changes",
            "Changes committed on the sources of moves driven here and not applied yet",
            m.lag.clone(),
        );
        metrics.register(
            "tenant_move_last_fence_milliseconds",
            "How long the last switched move fenced its tenant's writes",
            m.last_fence_ms.clone(),
        );
        m
    }
}

/// Starts, reads, cancels and drives moves. Cheap to clone.
#[derive(Clone)]
pub struct Moves {
    inner: Arc<Inner>,
}

struct Inner {
    control: PgPool,
    router: PoolRouter,
    provisioner: Provisioner,
    keys: Option<Arc<Keyring>>,
    settings: MoveSettings,
    metrics: MoveMetrics,
    /// Woken when a move is started here (drivers look at once instead of at the next
    /// poll).
    wake: tokio::sync::Notify,
}

impl Moves {
    pub fn new(
        router: PoolRouter,
        provisioner: Provisioner,
        keys: Option<Arc<Keyring>>,
        settings: MoveSettings,
        metrics: &Metrics,
    ) -> Self {
        Moves {
            inner: Arc::new(Inner {
                control: router.shared_pool().clone(),
                router,
                provisioner,
                keys,
                settings,
                metrics: MoveMetrics::register(metrics),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    fn keys(&self) -> Option<&Keyring> {
        self.inner.keys.as_deref()
    }

    async fn load(&self, id: Uuid) -> Result<Option<MoveRow>, MoveError> {
        let stored: Option<StoredMove> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MOVE_COLUMNS} FROM control.tenant_moves WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.inner.control)
        .await?;
        stored.map(|s| s.open(self.keys())).transpose()
    }

    /// Starts moving `tenant` to `placement` (at `database_url` for a database given by
    /// URL). The move runs in the background.
    pub async fn start(
        &self,
        tenant: &str,
        placement: Placement,
        database_url: Option<String>,
        read_url: Option<String>,
    ) -> Result<MoveRow, MoveError> {
        let tenant = parse_uuid("tenant id", tenant)?;
        let placement = match placement {
            Placement::Shared => borough_tenant::Placement::Shared,
            Placement::Schema => borough_tenant::Placement::Schema,
            Placement::Database => borough_tenant::Placement::Database,
            Placement::Unspecified => {
                return Err(MoveError::Invalid(
                    "placement must be shared, schema or database".to_owned(),
                ));
            }
        };
        if placement != borough_tenant::Placement::Database
            && (database_url.is_some() || read_url.is_some())
        {
            return Err(MoveError::Invalid(
                "database_url and read_url are for the database placement only".to_owned(),
            ));
        }
        if read_url.is_some() && database_url.is_none() {
            return Err(MoveError::Invalid(
                "read_url needs database_url (a database Borough creates has no replica)"
                    .to_owned(),
            ));
        }
        for (field, value) in [("database_url", &database_url), ("read_url", &read_url)] {
            if let Some(value) = value {
                placement::validate_database_url(field, value).map_err(MoveError::Invalid)?;
            }
        }
        // Every move removes a copy somewhere (the target's leftovers, the source after
        // the grace period): the owner role is needed whatever the placements.
        self.inner
            .provisioner
            .check(borough_tenant::Placement::Schema, false)
            .map_err(|e| MoveError::NotConfigured(e.to_string()))?;

        let id = TenantId(tenant);
        let credentials = placement::Credentials::TenantUrls(self.inner.keys.clone());
        let from = placement::load_route(&self.inner.control, id, &credentials)
            .await?
            .ok_or(MoveError::TenantNotFound(tenant))?;
        if from.status != placement::Status::Active {
            return Err(MoveError::NotActive(from.status.as_str()));
        }
        let to = placement::new_route(id, placement, database_url, read_url);
        if to.schema == from.schema && same_database(&to.storage, &from.storage) {
            return Err(MoveError::AlreadyThere(describe(&from)));
        }
        let src = crate::stored::storage_columns(&from, self.keys())?;
        let dst = crate::stored::storage_columns(&to, self.keys())?;

        let mut tx = self.inner.control.begin().await?;
        // One start at a time per tenant, and against the switch of an earlier move.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM control.tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        if status.as_deref() != Some("active") {
            return Err(MoveError::NotActive("no longer active"));
        }
        type Unfinished = (Uuid, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let current: Option<Unfinished> = sqlx::query_as(
            "SELECT id, phase, switched_at, cleanup_after FROM control.tenant_moves
                  WHERE tenant_id = $1 AND phase NOT IN ('done', 'failed', 'cancelled')",
        )
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, phase, switched, until)) = current {
            return Err(match Phase::parse(&phase) {
                Some(Phase::Switched | Phase::Cleaning) => MoveError::OldCopyKept {
                    id,
                    switched: switched.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    until: until.map(|t| t.to_rfc3339()).unwrap_or_default(),
                },
                _ => MoveError::InProgress(id),
            });
        }
        // The bound on moves at once, platform-wide (serialized by an advisory lock so two
        // starts cannot both see room for one).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('borough.move-starts', 0))")
            .execute(&mut *tx)
            .await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM control.tenant_moves
              WHERE phase IN ('preparing', 'copying', 'catching_up', 'fenced')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if active >= self.inner.settings.max_active as i64 {
            return Err(MoveError::TooMany(active));
        }
        let move_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO control.tenant_moves
                 (id, tenant_id, phase,
                  from_placement, from_schema, from_database_name, from_database_url,
                  from_read_url, from_location, from_read_location,
                  to_placement, to_schema, to_database_name, to_database_url, to_read_url,
                  to_location, to_read_location)
             VALUES ($1, $2, 'preparing', $3, $4, $5, $6, $7, $8, $9,
                     $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(move_id)
        .bind(tenant)
        .bind(src.placement)
        .bind(&src.schema)
        .bind(&src.database_name)
        .bind(&src.url)
        .bind(&src.read_url)
        .bind(&src.location)
        .bind(&src.read_location)
        .bind(dst.placement)
        .bind(&dst.schema)
        .bind(&dst.database_name)
        .bind(&dst.url)
        .bind(&dst.read_url)
        .bind(&dst.location)
        .bind(&dst.read_location)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db::constraint(&e) {
            // A backstop: the tenant row's lock above orders two starts already.
            Some("tenant_moves_one_active") => MoveError::Raced,
            _ => MoveError::Database(e),
        })?;
        tx.commit().await?;
        tracing::info!(
            tenant = %tenant,
            r#move = %move_id,
            from = %describe(&from),
            to = %describe(&to),
            "tenant move started"
        );
        self.inner.wake.notify_waiters();
        self.load(move_id)
            .await?
            .ok_or(MoveError::NotFound(move_id))
    }

    /// The move `move_id` of `tenant`.
    pub async fn get(&self, tenant: &str, move_id: &str) -> Result<MoveRow, MoveError> {
        let tenant = parse_uuid("tenant id", tenant)?;
        let id = parse_uuid("move id", move_id)?;
        match self.load(id).await? {
            Some(row) if *row.tenant.as_uuid() == tenant => Ok(row),
            _ => Err(MoveError::NotFound(id)),
        }
    }

    /// Asks a move that has not switched to stop and roll back.
    pub async fn cancel(&self, tenant: &str, move_id: &str) -> Result<MoveRow, MoveError> {
        let row = self.get(tenant, move_id).await?;
        let asked = sqlx::query(
            "UPDATE control.tenant_moves SET cancel_requested = true, updated_at = now()
              WHERE id = $1 AND phase IN ('preparing', 'copying', 'catching_up', 'fenced')",
        )
        .bind(row.id)
        .execute(&self.inner.control)
        .await?
        .rows_affected();
        let row = self
            .load(row.id)
            .await?
            .ok_or(MoveError::NotFound(row.id))?;
        // Asked again after it was cancelled: the same answer.
        if asked == 0 && row.phase != Phase::Cancelled {
            return Err(MoveError::TooLateToCancel {
                id: row.id,
                phase: row.phase.as_str(),
            });
        }
        tracing::info!(tenant = %row.tenant, r#move = %row.id, "tenant move cancellation asked");
        self.inner.wake.notify_waiters();
        Ok(row)
    }
}

fn parse_uuid(what: &str, raw: &str) -> Result<Uuid, MoveError> {
    Uuid::parse_str(raw).map_err(|_| MoveError::Invalid(format!("{raw:?} is not a valid {what}")))
}

/// Whether two storages are the same database (URLs compared by location: the same
/// database under two logins is still one).
fn same_database(a: &Storage, b: &Storage) -> bool {
    match (a, b) {
        (Storage::Default, Storage::Default) => true,
        (Storage::OwnDatabase { name: x }, Storage::OwnDatabase { name: y }) => x == y,
        (Storage::External(x), Storage::External(y)) => x.location == y.location,
        _ => false,
    }
}

/// Where a route points, for logs and messages: never a URL.
fn describe(route: &Route) -> String {
    match &route.storage {
        Storage::Default => format!("{} ({})", route.placement, route.schema),
        Storage::OwnDatabase { name } => format!("{} (database {name})", route.placement),
        Storage::External(external) => {
            format!("{} (database at {})", route.placement, external.location)
        }
    }
}
