//! The configuration store on PostgreSQL (`config.*`, see `migrations/control/0003` and
//! `0005`).
//!
//! A write takes two transaction-scoped advisory locks, in this order:
//!
//! 1. its namespace's: compare-and-set, and validation against the namespace's JSON Schema
//!    (compiled once and cached; patterns run on a linear-time regex engine), happen
//!    under it, so a slow schema holds up only writes to its own namespace;
//! 2. the global revision lock, held only for the short tail of the write: the next
//!    revision (`max + 1`), the history row, the entry, the usage and quota accounting,
//!    and pruning the namespace's history down to its retention bounds. Revisions are
//!    gap-free and commit in revision order, so a watcher that has seen revision N has
//!    seen every change before it (a gap in what the watch hub reads means history was
//!    pruned, and is handled as such).
//!
//! Bounds: values and schemas at most 64 KiB of JSON, with no NUL character anywhere (no
//! PostgreSQL text can hold one); per tenant, at most so many namespaces, keys and bytes
//! ([`Quotas`]); per namespace, at most so many history rows and bytes, the oldest
//! unreferenced ones pruned by the write that goes over (`compacted_through` records how
//! far); pages of lists, histories and watch replays end after [`PAGE_BYTES`].

use borough_config_client::{Env, SettingsError, Var};
use std::sync::Arc;

use borough_error::{ErrorKind, ServiceError};
use borough_proto::config::v1::{Change, Entry, NamespaceInfo};
use borough_proto::time::to_timestamp;
use borough_tenancy::db;
use borough_tenant::TenantId;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// The largest value, as JSON text.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The largest schema, as JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// A list, history or replay page ends once its values pass this many bytes.
pub const PAGE_BYTES: usize = 1024 * 1024;
/// List pages: default and most entries.
pub const LIST_PAGE: (i64, i64) = (100, 1000);
/// History pages: default and most changes.
pub const HISTORY_PAGE: (i64, i64) = (20, 100);

/// Advisory lock classes (the first key of `pg_advisory_xact_lock(int, int)`).
const NAMESPACE_LOCK: i32 = 0x0b0c_0001;
const REVISION_LOCK: i32 = 0x0b0c_0002;

/// Per-tenant quotas and per-namespace history retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// [`Quotas::MAX_NAMESPACES`].
    pub max_namespaces: i64,
    /// [`Quotas::MAX_KEYS`].
    pub max_keys: i64,
    /// [`Quotas::MAX_BYTES`].
    pub max_bytes: i64,
    /// [`Quotas::HISTORY_ROWS`].
    pub history_rows: i64,
    /// [`Quotas::HISTORY_BYTES`].
    pub history_bytes: i64,
}

impl Default for Quotas {
    /// The declared defaults.
    fn default() -> Self {
        Quotas {
            max_namespaces: 16,
            max_keys: 1000,
            max_bytes: 1024 * 1024,
            history_rows: 1000,
            history_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Quotas {
    pub const MAX_NAMESPACES: Var = Var::new(
        "BOROUGH_CONFIG_MAX_NAMESPACES",
        "16",
        "Namespaces with a key or a schema, per tenant (1 to 100,000)",
    );
    pub const MAX_KEYS: Var = Var::new(
        "BOROUGH_CONFIG_MAX_KEYS",
        "1000",
        "Keys per tenant, all namespaces together (1 to 10,000,000)",
    );
    pub const MAX_BYTES: Var = Var::new(
        "BOROUGH_CONFIG_MAX_BYTES",
        "1MiB",
        "Values and schemas per tenant, as JSON text (up to 16GiB)",
    );
    pub const HISTORY_ROWS: Var = Var::new(
        "BOROUGH_CONFIG_HISTORY_ROWS",
        "1000",
        "History rows kept per namespace (1 to 10,000,000)",
    );
    pub const HISTORY_BYTES: Var = Var::new(
        "BOROUGH_CONFIG_HISTORY_BYTES",
        "4MiB",
        "History kept per namespace, old and new values (up to 64GiB); the oldest rows not \
         holding a current value are pruned first",
    );
    pub const VARS: &[&Var] = &[
        &Self::MAX_NAMESPACES,
        &Self::MAX_KEYS,
        &Self::MAX_BYTES,
        &Self::HISTORY_ROWS,
        &Self::HISTORY_BYTES,
    ];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let bytes = |var: &Var, max: usize| {
            env.bytes_in(var, 1..=max)
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
        };
        Ok(Quotas {
            max_namespaces: env.parse_in(&Self::MAX_NAMESPACES, 1..=100_000)?,
            max_keys: env.parse_in(&Self::MAX_KEYS, 1..=10_000_000)?,
            max_bytes: bytes(&Self::MAX_BYTES, 1 << 34)?,
            history_rows: env.parse_in(&Self::HISTORY_ROWS, 1..=10_000_000)?,
            history_bytes: bytes(&Self::HISTORY_BYTES, 1 << 36)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("the value does not match the schema of {namespace}: {}", errors.join("; "))]
    SchemaViolation {
        namespace: String,
        errors: Vec<String>,
    },
    #[error("{0} may not be used by this caller")]
    Forbidden(String),
    #[error("no key {key:?} in {namespace}")]
    NotFound { namespace: String, key: String },
    #[error("no revision {revision} of {namespace}/{key}")]
    NoSuchRevision {
        namespace: String,
        key: String,
        revision: i64,
    },
    #[error("{namespace}/{key} is at revision {actual}, not the expected {expected}")]
    Conflict {
        namespace: String,
        key: String,
        expected: i64,
        actual: i64,
    },
    #[error(
        "this write would pass the tenant's config quota {quota} ({limit} {unit}; {used} in use \
         before it): remove something first, or ask for a larger quota"
    )]
    Quota {
        quota: &'static str,
        limit: i64,
        used: i64,
        unit: &'static str,
    },
    #[error(
        "the history of {namespace} up to revision {through} was pruned: list the namespace \
         again and watch from the list's revision"
    )]
    Compacted { namespace: String, through: i64 },
    #[error("{0}")]
    TooManyWatches(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// gRPC metadata on a `Compacted` failure: the revision history was pruned through.
pub use borough_proto::config::COMPACTED_METADATA;

impl ServiceError for ConfigError {
    fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Invalid(_) => ErrorKind::InvalidArgument,
            ConfigError::SchemaViolation { .. } => ErrorKind::Unprocessable,
            ConfigError::Forbidden(_) => ErrorKind::PermissionDenied,
            ConfigError::NotFound { .. } | ConfigError::NoSuchRevision { .. } => {
                ErrorKind::NotFound
            }
            ConfigError::Conflict { .. } => ErrorKind::Conflict,
            ConfigError::Quota { .. } => ErrorKind::QuotaExceeded,
            ConfigError::Compacted { .. } => ErrorKind::PreconditionFailed,
            ConfigError::TooManyWatches(_) => ErrorKind::RateLimited,
            ConfigError::Database(e) => db::classify(e),
        }
    }

    fn public_detail(&self) -> String {
        match self {
            ConfigError::Database(e) => db::public_detail(e),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }
}

impl From<ConfigError> for tonic::Status {
    fn from(err: ConfigError) -> Self {
        let mut status = borough_error::to_status(&err);
        if let ConfigError::Compacted { through, .. } = err {
            status.metadata_mut().insert(
                COMPACTED_METADATA,
                tonic::metadata::MetadataValue::from(through),
            );
        }
        status
    }
}

/// At most 80 characters of caller input, for an error message (which must not grow
/// with the input).
pub fn shown(input: &str) -> String {
    match input.char_indices().nth(80) {
        None => format!("{input:?}"),
        Some((at, _)) => format!("{:?}…", &input[..at]),
    }
}

/// `platform/<service>` or `tenant/<uuid>/<name>`.
pub fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    let ok = match namespace.split('/').collect::<Vec<_>>().as_slice() {
        ["platform", service] => {
            !service.is_empty()
                && service.len() <= 63
                && service.starts_with(|c: char| c.is_ascii_lowercase())
                && service
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }
        ["tenant", id, name] => {
            uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == *id)
                && is_name(name, 64)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "namespace {} is not platform/<service> or tenant/<tenant id>/<name> \
             (names: letters, digits, '_', '.', '-', up to 64)",
            shown(namespace)
        )))
    }
}

/// The tenant owning `namespace` (`None`: a platform namespace).
pub fn tenant_of(namespace: &str) -> Option<TenantId> {
    namespace
        .strip_prefix("tenant/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| id.parse().ok())
}

fn is_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn check_key(key: &str) -> Result<(), ConfigError> {
    if is_name(key, 128) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "key {} must be 1 to 128 letters, digits, '_', '.' or '-'",
            shown(key)
        )))
    }
}

/// A key prefix for listing: what a key may hold, or nothing.
pub fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() || is_name(prefix, 128) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "prefix {} must be up to 128 letters, digits, '_', '.' or '-'",
            shown(prefix)
        )))
    }
}

/// Whether any string (or object key) in `value` holds a NUL character.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A JSON document of at most `max` bytes with no NUL in any string; `what` names it in
/// errors (`value`, `schema`).
fn parse_json(json: &str, what: &str, max: usize) -> Result<Value, ConfigError> {
    if json.len() > max {
        return Err(ConfigError::Invalid(format!(
            "the {what} is larger than {max} bytes"
        )));
    }
    let value: Value = serde_json::from_str(json)
        .map_err(|e| ConfigError::Invalid(format!("the {what} is not valid JSON: {e}")))?;
    if holds_nul(&value) {
        return Err(ConfigError::Invalid(format!(
            "the {what} holds a NUL character (\\u0000), which cannot be stored"
        )));
    }
    Ok(value)
}

pub fn parse_value(json: &str) -> Result<Value, ConfigError> {
    parse_json(json, "value", MAX_VALUE_BYTES)
}

pub fn parse_schema(json: &str) -> Result<Value, ConfigError> {
    parse_json(json, "schema", MAX_SCHEMA_BYTES)
}

/// Compiles a JSON Schema the way every stored schema is compiled: patterns on the
/// `regex` crate's linear-time engine (no backtracking, so no pattern can take
/// exponential time; look-around and back-references are refused), no remote `$ref`.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, ConfigError> {
    jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| {
            ConfigError::Invalid(format!(
                "the schema is not a valid JSON Schema (patterns use a linear-time engine: \
                 no look-around or back-references): {}",
                borough_proto::user::bounded_reason(e.to_string())
            ))
        })
}

/// Page tokens: `k.<hex key>` after a key (lists), `r.<revision>` before a revision
/// (histories).
fn key_token(key: &str) -> String {
    format!("k.{}", hex::encode(key))
}

fn parse_key_token(token: &str) -> Result<Option<String>, ConfigError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("k.")
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|key| is_name(key, 128))
        .map(Some)
        .ok_or_else(|| ConfigError::Invalid("page_token is not one this service gave".into()))
}

fn parse_revision_token(token: &str) -> Result<Option<i64>, ConfigError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("r.")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| ConfigError::Invalid("page_token is not one this service gave".into()))
}

fn page_size(requested: i32, (default, max): (i64, i64)) -> Result<i64, ConfigError> {
    match i64::from(requested) {
        0 => Ok(default),
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid(format!(
            "the page size must be between 1 and {max}"
        ))),
    }
}

/// A namespace's usage, as listed.
#[derive(sqlx::FromRow)]
struct NamespaceRow {
    namespace: String,
    keys: i64,
    value_bytes: i64,
    has_schema: bool,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    namespace: String,
    key: String,
    value: Value,
    revision: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

impl EntryRow {
    fn into_entry(self) -> (Entry, usize) {
        let value_json = self.value.to_string();
        let size = value_json.len();
        (
            Entry {
                namespace: self.namespace,
                key: self.key,
                value_json,
                revision: self.revision,
                updated_at: Some(to_timestamp(self.updated_at)),
                updated_by: self.updated_by,
            },
            size,
        )
    }
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    revision: i64,
    namespace: String,
    key: String,
    op: String,
    old_value: Option<Value>,
    new_value: Option<Value>,
    actor: String,
    at: DateTime<Utc>,
}

impl ChangeRow {
    /// The change and its size in bytes (values and key).
    fn into_change(self) -> (Change, usize) {
        let old_value_json = self.old_value.map(|v| v.to_string());
        let new_value_json = self.new_value.map(|v| v.to_string());
        let size = old_value_json.as_ref().map_or(0, String::len)
            + new_value_json.as_ref().map_or(0, String::len)
            + self.key.len()
            + self.namespace.len();
        (
            Change {
                revision: self.revision,
                namespace: self.namespace,
                key: self.key,
                op: self.op,
                old_value_json,
                new_value_json,
                actor: self.actor,
                at: Some(to_timestamp(self.at)),
            },
            size,
        )
    }
}

/// A namespace's usage after a write, as `config.namespaces` holds it.
#[derive(sqlx::FromRow)]
struct Usage {
    history_rows: i64,
    history_bytes: i64,
}

/// A tenant's usage, all namespaces together.
#[derive(sqlx::FromRow)]
struct TenantUsage {
    namespaces: i64,
    keys: i64,
    bytes: i64,
}

const ENTRY_COLUMNS: &str = "namespace, key, value, revision, updated_at, updated_by";
const CHANGE_COLUMNS: &str = "revision, namespace, key, op, old_value, new_value, actor, at";

/// A page of entries and the list's revision.
pub struct EntryPage {
    pub entries: Vec<Entry>,
    pub revision: i64,
    pub next_page_token: String,
}

/// What a write changes in its namespace's usage.
struct Delta {
    keys: i64,
    /// The namespace had no key and no schema before and has one now.
    opens_namespace: bool,
    /// Bytes of values (or schema) added; negative when removed.
    bytes: i64,
    /// History rows added (0 or 1) and their bytes.
    history_rows: i64,
    history_bytes: i64,
    /// Schema bytes added (a schema write).
    schema_bytes: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    quotas: Quotas,
    /// Compiled validators by namespace, with the schema's `updated_at` they were compiled
    /// from (bounded: 1024 namespaces).
    validators: moka::future::Cache<String, Arc<(DateTime<Utc>, jsonschema::Validator)>>,
}

impl Store {
    pub fn new(pool: PgPool, quotas: Quotas) -> Self {
        Store {
            pool,
            quotas,
            validators: moka::future::Cache::new(1024),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn get(&self, namespace: &str, key: &str) -> Result<Entry, ConfigError> {
        let row: Option<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM config.entries WHERE namespace = $1 AND key = $2"
        )))
        .bind(namespace)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.into_entry().0)
            .ok_or_else(|| ConfigError::NotFound {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            })
    }

    /// A page of a namespace's entries (keys starting with `prefix`, in key order) and the
    /// revision they are at.
    pub async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<EntryPage, ConfigError> {
        let limit = page_size_checked(page_size, LIST_PAGE)?;
        let after = parse_key_token(page_token)?;
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let revision = current_revision(&mut tx).await?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        {
            let mut rows = sqlx::query_as::<_, EntryRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM config.entries
                  WHERE namespace = $1 AND starts_with(key, $2) AND ($3::text IS NULL OR key > $3)
                  ORDER BY key LIMIT $4"
            )))
            .bind(namespace)
            .bind(prefix)
            .bind(after)
            .bind(limit + 1)
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                if entries.len() as i64 == limit || (bytes >= PAGE_BYTES && !entries.is_empty()) {
                    more = true;
                    break;
                }
                let (entry, size) = row.into_entry();
                bytes += size;
                entries.push(entry);
            }
        }
        tx.commit().await?;
        let next_page_token = match entries.last() {
            Some(last) if more => key_token(&last.key),
            _ => String::new(),
        };
        Ok(EntryPage {
            entries,
            revision,
            next_page_token,
        })
    }

    /// A page of the namespaces of `tenant` (or the platform's, `None`) holding a key or
    /// a schema, by name.
    pub async fn namespaces(
        &self,
        tenant: Option<uuid::Uuid>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<NamespaceInfo>, String), ConfigError> {
        let limit = page_size_checked(page_size, LIST_PAGE)?;
        let after = parse_key_token(page_token)?;
        let rows: Vec<NamespaceRow> = sqlx::query_as(
            "SELECT namespace, keys, value_bytes, schema_bytes > 0 AS has_schema
               FROM config.namespaces
              WHERE (CASE WHEN $1::uuid IS NULL THEN tenant_id IS NULL AND starts_with(namespace, 'platform/')
                          ELSE tenant_id = $1 END)
                AND (keys > 0 OR schema_bytes > 0)
                AND ($2::text IS NULL OR namespace > $2)
              ORDER BY namespace LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > limit;
        let namespaces: Vec<NamespaceInfo> = rows
            .into_iter()
            .take(limit as usize)
            .map(|r| NamespaceInfo {
                namespace: r.namespace,
                keys: r.keys,
                value_bytes: r.value_bytes,
                has_schema: r.has_schema,
            })
            .collect();
        let next_page_token = match namespaces.last() {
            Some(last) if more => key_token(&last.namespace),
            _ => String::new(),
        };
        Ok((namespaces, next_page_token))
    }

    /// A page of one key's changes, newest first.
    pub async fn history(
        &self,
        namespace: &str,
        key: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Change>, String), ConfigError> {
        let limit = page_size_checked(page_size, HISTORY_PAGE)?;
        let before = parse_revision_token(page_token)?;
        let mut changes = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let mut rows = sqlx::query_as::<_, ChangeRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM config.history
              WHERE namespace = $1 AND key = $2 AND ($3::bigint IS NULL OR revision < $3)
              ORDER BY revision DESC LIMIT $4"
        )))
        .bind(namespace)
        .bind(key)
        .bind(before)
        .bind(limit + 1)
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            if changes.len() as i64 == limit || (bytes >= PAGE_BYTES && !changes.is_empty()) {
                more = true;
                break;
            }
            let (change, size) = row.into_change();
            bytes += size;
            changes.push(change);
        }
        let next = match changes.last() {
            Some(last) if more => format!("r.{}", last.revision),
            _ => String::new(),
        };
        Ok((changes, next))
    }

    /// Changes to `namespaces` (all of them when empty) after `after`, in revision order:
    /// at most `limit`, and the page ends after [`PAGE_BYTES`].
    pub async fn changes_since(
        &self,
        namespaces: &[String],
        after: i64,
        limit: i64,
    ) -> Result<Vec<Change>, ConfigError> {
        let mut changes = Vec::new();
        let mut bytes = 0;
        let mut rows = sqlx::query_as::<_, ChangeRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM config.history
              WHERE revision > $1 AND ($2::text[] IS NULL OR namespace = ANY($2))
              ORDER BY revision LIMIT $3"
        )))
        .bind(after)
        .bind(if namespaces.is_empty() {
            None
        } else {
            Some(namespaces)
        })
        .bind(limit)
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let (change, size) = row.into_change();
            bytes += size;
            changes.push(change);
            if bytes >= PAGE_BYTES {
                break;
            }
        }
        Ok(changes)
    }

    /// The namespace of `namespaces` whose history was pruned the furthest, and through
    /// which revision (`None`: none was).
    pub async fn compaction(
        &self,
        namespaces: &[String],
    ) -> Result<Option<(String, i64)>, ConfigError> {
        Ok(sqlx::query_as(
            "SELECT namespace, compacted_through FROM config.namespaces
              WHERE namespace = ANY($1) AND compacted_through > 0
              ORDER BY compacted_through DESC LIMIT 1",
        )
        .bind(namespaces)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn revision(&self) -> Result<i64, ConfigError> {
        let mut conn = self.pool.acquire().await?;
        current_revision(&mut conn).await
    }

    /// The namespace's validator, compiled once per schema version (`None`: no schema).
    async fn validator(
        &self,
        conn: &mut PgConnection,
        namespace: &str,
    ) -> Result<Option<Arc<(DateTime<Utc>, jsonschema::Validator)>>, ConfigError> {
        let current: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT updated_at FROM config.schemas WHERE namespace = $1")
                .bind(namespace)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(version) = current else {
            return Ok(None);
        };
        if let Some(cached) = self.validators.get(namespace).await
            && cached.0 == version
        {
            return Ok(Some(cached));
        }
        let schema: Value =
            sqlx::query_scalar("SELECT schema FROM config.schemas WHERE namespace = $1")
                .bind(namespace)
                .fetch_one(&mut *conn)
                .await?;
        let validator = compile(&schema).map_err(|_| {
            ConfigError::Invalid(
                "the namespace's schema cannot be compiled any more; set it again".to_owned(),
            )
        })?;
        let compiled = Arc::new((version, validator));
        self.validators
            .insert(namespace.to_owned(), compiled.clone())
            .await;
        Ok(Some(compiled))
    }

    /// Creates or replaces `key` (CAS on `expected`: 0 = must not exist).
    pub async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        expected: Option<i64>,
        actor: &str,
        op: &str,
    ) -> Result<Entry, ConfigError> {
        let mut tx = self.pool.begin().await?;
        lock_namespace(&mut tx, namespace).await?;
        if let Some(validator) = self.validator(&mut tx, namespace).await? {
            validate(&validator.1, namespace, &value)?;
        }
        let current: Option<(i64, Value)> = sqlx::query_as(
            "SELECT revision, value FROM config.entries WHERE namespace = $1 AND key = $2",
        )
        .bind(namespace)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        check_expected(namespace, key, expected, current.as_ref().map(|c| c.0))?;
        let had_key = current.is_some();
        lock_revisions(&mut tx).await?;
        let revision = current_revision(&mut tx).await? + 1;
        let (new_bytes, old_bytes): (i64, i64) = sqlx::query_as(
            "INSERT INTO config.history (revision, namespace, key, op, old_value, new_value, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING octet_length(new_value::text)::bigint,
                       COALESCE(octet_length(old_value::text), 0)::bigint",
        )
        .bind(revision)
        .bind(namespace)
        .bind(key)
        .bind(op)
        .bind(current.map(|c| c.1))
        .bind(&value)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        let row: EntryRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO config.entries (namespace, key, value, revision, updated_by)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace, key) DO UPDATE
                SET value = EXCLUDED.value, revision = EXCLUDED.revision,
                    updated_at = now(), updated_by = EXCLUDED.updated_by
             RETURNING {ENTRY_COLUMNS}"
        )))
        .bind(namespace)
        .bind(key)
        .bind(&value)
        .bind(revision)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        self.account(
            &mut tx,
            namespace,
            revision,
            Delta {
                keys: i64::from(!had_key),
                opens_namespace: false,
                bytes: new_bytes - old_bytes,
                history_rows: 1,
                history_bytes: new_bytes + old_bytes,
                schema_bytes: 0,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(row.into_entry().0)
    }

    pub async fn delete(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<i64>,
        actor: &str,
    ) -> Result<i64, ConfigError> {
        let mut tx = self.pool.begin().await?;
        lock_namespace(&mut tx, namespace).await?;
        let current: Option<(i64, Value)> = sqlx::query_as(
            "SELECT revision, value FROM config.entries WHERE namespace = $1 AND key = $2",
        )
        .bind(namespace)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((actual, old)) = current else {
            return Err(ConfigError::NotFound {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            });
        };
        check_expected(namespace, key, expected, Some(actual))?;
        lock_revisions(&mut tx).await?;
        let revision = current_revision(&mut tx).await? + 1;
        let old_bytes: i64 = sqlx::query_scalar(
            "INSERT INTO config.history (revision, namespace, key, op, old_value, new_value, actor)
             VALUES ($1, $2, $3, 'delete', $4, NULL, $5)
             RETURNING octet_length(old_value::text)::bigint",
        )
        .bind(revision)
        .bind(namespace)
        .bind(key)
        .bind(old)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM config.entries WHERE namespace = $1 AND key = $2")
            .bind(namespace)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        self.account(
            &mut tx,
            namespace,
            revision,
            Delta {
                keys: -1,
                opens_namespace: false,
                bytes: -old_bytes,
                history_rows: 1,
                history_bytes: old_bytes,
                schema_bytes: 0,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// Applies a write's delta to its namespace's usage (under the revision lock), checks
    /// the tenant's quotas for what the write adds, and prunes the namespace's history to
    /// its bounds.
    async fn account(
        &self,
        conn: &mut PgConnection,
        namespace: &str,
        revision: i64,
        delta: Delta,
    ) -> Result<(), ConfigError> {
        let tenant = tenant_of(namespace);
        let before: Option<(i64, i64)> = sqlx::query_as(
            "SELECT keys::bigint, schema_bytes::bigint FROM config.namespaces WHERE namespace = $1",
        )
        .bind(namespace)
        .fetch_optional(&mut *conn)
        .await?;
        let was_open = before.is_some_and(|(keys, schema)| keys > 0 || schema > 0);
        let usage: Usage = sqlx::query_as(
            "INSERT INTO config.namespaces AS n
                 (namespace, tenant_id, keys, value_bytes, schema_bytes, history_rows, history_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (namespace) DO UPDATE
                SET keys = n.keys + EXCLUDED.keys,
                    value_bytes = n.value_bytes + EXCLUDED.value_bytes,
                    schema_bytes = n.schema_bytes + EXCLUDED.schema_bytes,
                    history_rows = n.history_rows + EXCLUDED.history_rows,
                    history_bytes = n.history_bytes + EXCLUDED.history_bytes
             RETURNING history_rows::bigint, history_bytes",
        )
        .bind(namespace)
        .bind(tenant.map(|t| *t.as_uuid()))
        .bind(delta.keys)
        .bind(delta.bytes)
        .bind(delta.schema_bytes)
        .bind(delta.history_rows)
        .bind(delta.history_bytes)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(tenant) = tenant {
            let opens =
                !was_open && (delta.keys > 0 || delta.schema_bytes > 0 || delta.opens_namespace);
            self.check_quotas(conn, tenant, &delta, opens).await?;
        }
        self.prune(conn, namespace, revision, usage).await
    }

    async fn check_quotas(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        delta: &Delta,
        opens_namespace: bool,
    ) -> Result<(), ConfigError> {
        let usage: TenantUsage = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE keys > 0 OR schema_bytes > 0)::bigint AS namespaces,
                    COALESCE(sum(keys), 0)::bigint AS keys,
                    COALESCE(sum(value_bytes + schema_bytes), 0)::bigint AS bytes
               FROM config.namespaces WHERE tenant_id = $1",
        )
        .bind(tenant.as_uuid())
        .fetch_one(&mut *conn)
        .await?;
        let q = &self.quotas;
        let added_bytes = delta.bytes + delta.schema_bytes;
        if opens_namespace && usage.namespaces > q.max_namespaces {
            return Err(ConfigError::Quota {
                quota: Quotas::MAX_NAMESPACES.name,
                limit: q.max_namespaces,
                used: usage.namespaces - 1,
                unit: "namespaces",
            });
        }
        if delta.keys > 0 && usage.keys > q.max_keys {
            return Err(ConfigError::Quota {
                quota: Quotas::MAX_KEYS.name,
                limit: q.max_keys,
                used: usage.keys - delta.keys,
                unit: "keys",
            });
        }
        if added_bytes > 0 && usage.bytes > q.max_bytes {
            return Err(ConfigError::Quota {
                quota: Quotas::MAX_BYTES.name,
                limit: q.max_bytes,
                used: usage.bytes - added_bytes,
                unit: "bytes of values and schemas",
            });
        }
        Ok(())
    }

    /// Deletes the namespace's oldest history rows that hold no current value (never the
    /// newest revision) until it is within its row and byte bounds, and records how far.
    async fn prune(
        &self,
        conn: &mut PgConnection,
        namespace: &str,
        revision: i64,
        mut usage: Usage,
    ) -> Result<(), ConfigError> {
        let q = &self.quotas;
        let mut through = 0_i64;
        let (mut rows_gone, mut bytes_gone) = (0_i64, 0_i64);
        while usage.history_rows > q.history_rows || usage.history_bytes > q.history_bytes {
            let batch = (usage.history_rows - q.history_rows).clamp(1, 64);
            let pruned: Vec<(i64, i64)> = sqlx::query_as(
                "WITH doomed AS (
                     SELECT h.revision FROM config.history h
                      WHERE h.namespace = $1 AND h.revision < $2
                        AND NOT EXISTS (SELECT 1 FROM config.entries e
                                         WHERE e.namespace = h.namespace AND e.revision = h.revision)
                      ORDER BY h.revision LIMIT $3)
                 DELETE FROM config.history h USING doomed d WHERE h.revision = d.revision
                 RETURNING h.revision, (COALESCE(octet_length(h.old_value::text), 0)
                                      + COALESCE(octet_length(h.new_value::text), 0))::bigint",
            )
            .bind(namespace)
            .bind(revision)
            .bind(batch)
            .fetch_all(&mut *conn)
            .await?;
            if pruned.is_empty() {
                break; // Every row left holds a current value: the key quota bounds those.
            }
            for (rev, bytes) in pruned {
                through = through.max(rev);
                rows_gone += 1;
                bytes_gone += bytes;
                usage.history_rows -= 1;
                usage.history_bytes -= bytes;
            }
        }
        if rows_gone > 0 {
            sqlx::query(
                "UPDATE config.namespaces
                    SET history_rows = history_rows - $2, history_bytes = history_bytes - $3,
                        compacted_through = greatest(compacted_through, $4)
                  WHERE namespace = $1",
            )
            .bind(namespace)
            .bind(rows_gone)
            .bind(bytes_gone)
            .bind(through)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Puts back the value `key` had at `revision` (its value after that change), as a new
    /// revision; the schema applies as to any put.
    pub async fn rollback(
        &self,
        namespace: &str,
        key: &str,
        revision: i64,
        actor: &str,
    ) -> Result<Entry, ConfigError> {
        let value: Option<Option<Value>> = sqlx::query_scalar(
            "SELECT new_value FROM config.history WHERE namespace = $1 AND key = $2 AND revision = $3",
        )
        .bind(namespace)
        .bind(key)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?;
        match value {
            Some(Some(value)) => {
                self.put(namespace, key, value, None, actor, "rollback")
                    .await
            }
            Some(None) => Err(ConfigError::Invalid(format!(
                "revision {revision} deleted {namespace}/{key}: roll back to a revision that set it"
            ))),
            None => Err(ConfigError::NoSuchRevision {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                revision,
            }),
        }
    }

    /// Sets (`Some`) or removes (`None`) the namespace's schema. It must compile (linear
    /// regex engine) and counts towards the tenant's bytes.
    pub async fn set_schema(
        &self,
        namespace: &str,
        schema: Option<Value>,
    ) -> Result<(), ConfigError> {
        if let Some(schema) = &schema {
            compile(schema)?;
        }
        let mut tx = self.pool.begin().await?;
        lock_namespace(&mut tx, namespace).await?;
        let old: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT octet_length(schema::text) FROM config.schemas
                               WHERE namespace = $1), 0)::bigint",
        )
        .bind(namespace)
        .fetch_one(&mut *tx)
        .await?;
        let new: i64 = match schema {
            Some(schema) => {
                sqlx::query_scalar(
                    "INSERT INTO config.schemas (namespace, schema) VALUES ($1, $2)
                     ON CONFLICT (namespace) DO UPDATE
                        SET schema = EXCLUDED.schema, updated_at = clock_timestamp()
                     RETURNING octet_length(schema::text)::bigint",
                )
                .bind(namespace)
                .bind(schema)
                .fetch_one(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM config.schemas WHERE namespace = $1")
                    .bind(namespace)
                    .execute(&mut *tx)
                    .await?;
                0
            }
        };
        lock_revisions(&mut tx).await?;
        let revision = current_revision(&mut tx).await?;
        self.account(
            &mut tx,
            namespace,
            revision + 1,
            Delta {
                keys: 0,
                opens_namespace: new > 0,
                bytes: 0,
                history_rows: 0,
                history_bytes: 0,
                schema_bytes: new - old,
            },
        )
        .await?;
        tx.commit().await?;
        self.validators.invalidate(namespace).await;
        Ok(())
    }

    pub async fn schema(&self, namespace: &str) -> Result<Option<Value>, ConfigError> {
        Ok(
            sqlx::query_scalar("SELECT schema FROM config.schemas WHERE namespace = $1")
                .bind(namespace)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Removes every namespace of `tenant` (entries, history, schema, usage) and its
    /// rate-limit override in `platform/gateway` (as a deletion, so that gateways following
    /// it apply it). Idempotent. The entries removed.
    pub async fn purge_tenant(&self, tenant: TenantId, actor: &str) -> Result<u64, ConfigError> {
        let override_key = format!("rate_limit.tenant.{tenant}");
        let removed_override = match self
            .delete("platform/gateway", &override_key, None, actor)
            .await
        {
            Ok(_) => 1,
            Err(ConfigError::NotFound { .. }) => 0,
            Err(e) => return Err(e),
        };
        let pattern = format!("tenant/{tenant}/%");
        let mut tx = self.pool.begin().await?;
        lock_revisions(&mut tx).await?;
        let entries = sqlx::query("DELETE FROM config.entries WHERE namespace LIKE $1")
            .bind(&pattern)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // The newest revision stays whatever it is: revisions never go back.
        sqlx::query(
            "DELETE FROM config.history
              WHERE namespace LIKE $1 AND revision < (SELECT max(revision) FROM config.history)",
        )
        .bind(&pattern)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM config.schemas WHERE namespace LIKE $1")
            .bind(&pattern)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM config.namespaces WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(entries + removed_override)
    }

    pub async fn report_applied(
        &self,
        instance: &str,
        service: &str,
        revision: i64,
    ) -> Result<(), ConfigError> {
        sqlx::query(
            "INSERT INTO config.instances (instance, service, revision) VALUES ($1, $2, $3)
             ON CONFLICT (instance, service) DO UPDATE
                SET revision = EXCLUDED.revision, last_seen = now()",
        )
        .bind(instance)
        .bind(service)
        .bind(revision)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Instances seen in the last 10 minutes (at most 1000), with the latest revision of
    /// their `platform/<service>` namespace.
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, ConfigError> {
        Ok(sqlx::query_as(
            "SELECT i.instance, i.service, i.revision AS applied, i.last_seen,
                    COALESCE((SELECT max(h.revision) FROM config.history h
                               WHERE h.namespace = 'platform/' || i.service), 0) AS wanted
               FROM config.instances i
              WHERE i.last_seen > now() - interval '10 minutes'
              ORDER BY i.service, i.instance LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// One config client's report.
#[derive(sqlx::FromRow)]
pub struct InstanceRow {
    pub instance: String,
    pub service: String,
    pub applied: i64,
    pub last_seen: DateTime<Utc>,
    /// The latest revision of its `platform/<service>` namespace.
    pub wanted: i64,
}

fn page_size_checked(requested: i32, sizes: (i64, i64)) -> Result<i64, ConfigError> {
    page_size(requested, sizes)
}

async fn lock_namespace(conn: &mut PgConnection, namespace: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(NAMESPACE_LOCK)
        .bind(namespace)
        .execute(conn)
        .await?;
    Ok(())
}

async fn lock_revisions(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(REVISION_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

async fn current_revision(conn: &mut PgConnection) -> Result<i64, ConfigError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(max(revision), 0) FROM config.history")
            .fetch_one(conn)
            .await?,
    )
}

fn check_expected(
    namespace: &str,
    key: &str,
    expected: Option<i64>,
    actual: Option<i64>,
) -> Result<(), ConfigError> {
    match (expected, actual) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(e), Some(a)) if e == a => Ok(()),
        (Some(expected), actual) => Err(ConfigError::Conflict {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            expected,
            actual: actual.unwrap_or(0),
        }),
    }
}

/// The first 20 errors of `value` against the namespace's validator, if any.
fn validate(
    validator: &jsonschema::Validator,
    namespace: &str,
    value: &Value,
) -> Result<(), ConfigError> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(20)
        .map(|e| {
            let path = e.instance_path().to_string();
            borough_proto::user::bounded_reason(format!(
                "{}: {e}",
                if path.is_empty() { "/" } else { &path }
            ))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::SchemaViolation {
            namespace: namespace.to_owned(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_platform_services_or_tenant_names() {
        for ok in [
            "platform/gateway",
            "tenant/0193a0a0-0000-7000-8000-000000000000/app",
        ] {
            assert!(check_namespace(ok).is_ok(), "{ok}");
        }
        for bad in [
            "platform",
            "platform/Gateway",
            "platform/a/b",
            "tenant/not-a-uuid/app",
            "tenant/0193a0a0-0000-7000-8000-000000000000",
            "tenant/0193a0a0-0000-7000-8000-000000000000/a b",
            "other/x",
        ] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(
            tenant_of("tenant/0193a0a0-0000-7000-8000-000000000000/app").map(|t| t.to_string()),
            Some("0193a0a0-0000-7000-8000-000000000000".to_owned())
        );
        assert_eq!(tenant_of("platform/gateway"), None);
    }

    #[test]
    fn errors_quote_at_most_80_characters_of_input() {
        let long = "k".repeat(100_000);
        let err = check_key(&long).expect_err("too long");
        assert!(err.to_string().len() < 200, "{}", err.to_string().len());
    }

    #[test]
    fn cas_accepts_the_current_revision_or_zero_for_absent_only() {
        assert!(check_expected("n", "k", None, Some(3)).is_ok());
        assert!(check_expected("n", "k", Some(3), Some(3)).is_ok());
        assert!(check_expected("n", "k", Some(0), None).is_ok());
        assert!(check_expected("n", "k", Some(0), Some(1)).is_err());
        assert!(check_expected("n", "k", Some(2), Some(3)).is_err());
        assert!(check_expected("n", "k", Some(2), None).is_err());
    }

    #[test]
    fn values_must_be_json_within_the_size_limit_and_without_nul() {
        assert!(parse_value("{\"a\": 1}").is_ok());
        assert!(parse_value("{").is_err());
        assert!(parse_value(&format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES))).is_err());
        for nul in [
            r#""a\u0000b""#,
            r#"{"k": ["x", "\u0000"]}"#,
            r#"{"a\u0000": 1}"#,
        ] {
            let err = parse_value(nul).expect_err(nul);
            assert!(err.to_string().contains("NUL"), "{err}");
        }
        let err = parse_schema(r#"{"description": "\u0000"}"#).expect_err("nul in a schema");
        assert!(err.to_string().contains("schema"), "{err}");
    }

    #[test]
    fn schemas_compile_with_a_linear_time_pattern_engine() {
        // Catastrophic for a backtracking engine; linear here.
        let validator = compile(&serde_json::json!({"type": "string", "pattern": "^(a|a)*$"}))
            .expect("compiles");
        let started = std::time::Instant::now();
        let value = Value::String(format!("{}b", "a".repeat(50_000)));
        assert!(!validator.is_valid(&value));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Back-references need backtracking: refused, with a reason.
        let err = compile(&serde_json::json!({"type": "string", "pattern": "(a)\\1"}))
            .expect_err("back-reference");
        assert!(err.to_string().contains("linear-time"), "{err}");
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            parse_key_token(&key_token("a.b")).ok(),
            Some(Some("a.b".to_owned()))
        );
        assert_eq!(parse_revision_token("r.42").ok(), Some(Some(42)));
        for bad in ["x", "k.zz", "r.-1", "r.abc", "k.00"] {
            assert!(
                parse_key_token(bad).is_err() || parse_revision_token(bad).is_err(),
                "{bad}"
            );
        }
        assert_eq!(page_size(0, LIST_PAGE).ok(), Some(100));
        assert!(page_size(1001, LIST_PAGE).is_err());
        assert!(page_size(-1, HISTORY_PAGE).is_err());
    }
}
