//! The configuration store on PostgreSQL (`config.*`, see `migrations/control/0003`).
//!
//! Every write runs under one advisory lock and takes `max(revision) + 1`, so revisions are
//! gap-free and commit in revision order: a watcher that has seen revision N has seen
//! every change before it.

use borough_error::{ErrorKind, ServiceError};
use borough_proto::config::v1::{Change, Entry};
use borough_proto::time::to_timestamp;
use borough_tenancy::db;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// The largest value, as JSON text.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

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
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

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
            ConfigError::Database(e) => db::classify(e),
        }
    }
}

impl From<ConfigError> for tonic::Status {
    fn from(err: ConfigError) -> Self {
        borough_error::to_status(&err)
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
            "namespace {namespace:?} is not platform/<service> or tenant/<tenant id>/<name> \
             (names: letters, digits, '_', '.', '-', up to 64)"
        )))
    }
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
            "key {key:?} must be 1 to 128 letters, digits, '_', '.' or '-'"
        )))
    }
}

pub fn parse_value(json: &str) -> Result<Value, ConfigError> {
    if json.len() > MAX_VALUE_BYTES {
        return Err(ConfigError::Invalid(format!(
            "the value is larger than {MAX_VALUE_BYTES} bytes"
        )));
    }
    serde_json::from_str(json)
        .map_err(|e| ConfigError::Invalid(format!("the value is not valid JSON: {e}")))
}

type EntryRow = (String, String, Value, i64, DateTime<Utc>, String);
type ChangeRow = (
    i64,
    String,
    String,
    String,
    Option<Value>,
    Option<Value>,
    String,
    DateTime<Utc>,
);

fn entry((namespace, key, value, revision, updated_at, updated_by): EntryRow) -> Entry {
    Entry {
        namespace,
        key,
        value_json: value.to_string(),
        revision,
        updated_at: Some(to_timestamp(updated_at)),
        updated_by,
    }
}

fn change((revision, namespace, key, op, old, new, actor, at): ChangeRow) -> Change {
    Change {
        revision,
        namespace,
        key,
        op,
        old_value_json: old.map(|v| v.to_string()),
        new_value_json: new.map(|v| v.to_string()),
        actor,
        at: Some(to_timestamp(at)),
    }
}

const ENTRY_COLUMNS: &str = "namespace, key, value, revision, updated_at, updated_by";
const CHANGE_COLUMNS: &str = "revision, namespace, key, op, old_value, new_value, actor, at";

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Store { pool }
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
        row.map(entry).ok_or_else(|| ConfigError::NotFound {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
        })
    }

    /// A namespace's entries (keys starting with `prefix`) and the revision they are at.
    pub async fn list(
        &self,
        namespace: &str,
        prefix: &str,
    ) -> Result<(Vec<Entry>, i64), ConfigError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM config.entries
              WHERE namespace = $1 AND starts_with(key, $2) ORDER BY key"
        )))
        .bind(namespace)
        .bind(prefix)
        .fetch_all(&mut *tx)
        .await?;
        let revision = current_revision(&mut tx).await?;
        tx.commit().await?;
        Ok((rows.into_iter().map(entry).collect(), revision))
    }

    pub async fn history(
        &self,
        namespace: &str,
        key: &str,
        limit: i64,
    ) -> Result<Vec<Change>, ConfigError> {
        let rows: Vec<ChangeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM config.history
              WHERE namespace = $1 AND key = $2 ORDER BY revision DESC LIMIT $3"
        )))
        .bind(namespace)
        .bind(key)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(change).collect())
    }

    /// Changes to `namespaces` after `after`, in revision order, at most `limit`.
    pub async fn changes_since(
        &self,
        namespaces: &[String],
        after: i64,
        limit: i64,
    ) -> Result<Vec<Change>, ConfigError> {
        let rows: Vec<ChangeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(change).collect())
    }

    pub async fn revision(&self) -> Result<i64, ConfigError> {
        let mut conn = self.pool.acquire().await?;
        current_revision(&mut conn).await
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
        lock_writes(&mut tx).await?;
        validate_against_schema(&mut tx, namespace, &value).await?;
        let current: Option<(i64, Value)> = sqlx::query_as(
            "SELECT revision, value FROM config.entries WHERE namespace = $1 AND key = $2",
        )
        .bind(namespace)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        check_expected(namespace, key, expected, current.as_ref().map(|c| c.0))?;
        let revision = current_revision(&mut tx).await? + 1;
        sqlx::query(
            "INSERT INTO config.history (revision, namespace, key, op, old_value, new_value, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(revision)
        .bind(namespace)
        .bind(key)
        .bind(op)
        .bind(current.map(|c| c.1))
        .bind(&value)
        .bind(actor)
        .execute(&mut *tx)
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
        tx.commit().await?;
        Ok(entry(row))
    }

    pub async fn delete(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<i64>,
        actor: &str,
    ) -> Result<i64, ConfigError> {
        let mut tx = self.pool.begin().await?;
        lock_writes(&mut tx).await?;
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
        let revision = current_revision(&mut tx).await? + 1;
        sqlx::query(
            "INSERT INTO config.history (revision, namespace, key, op, old_value, new_value, actor)
             VALUES ($1, $2, $3, 'delete', $4, NULL, $5)",
        )
        .bind(revision)
        .bind(namespace)
        .bind(key)
        .bind(old)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM config.entries WHERE namespace = $1 AND key = $2")
            .bind(namespace)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(revision)
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

    /// Sets (`Some`) or removes (`None`) the namespace's schema.
    pub async fn set_schema(
        &self,
        namespace: &str,
        schema: Option<Value>,
    ) -> Result<(), ConfigError> {
        if let Some(schema) = &schema {
            jsonschema::validator_for(schema).map_err(|e| {
                ConfigError::Invalid(format!("the schema is not a valid JSON Schema: {e}"))
            })?;
        }
        let mut tx = self.pool.begin().await?;
        lock_writes(&mut tx).await?;
        match schema {
            Some(schema) => {
                sqlx::query(
                    "INSERT INTO config.schemas (namespace, schema) VALUES ($1, $2)
                     ON CONFLICT (namespace) DO UPDATE SET schema = EXCLUDED.schema, updated_at = now()",
                )
                .bind(namespace)
                .bind(schema)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM config.schemas WHERE namespace = $1")
                    .bind(namespace)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
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

    /// Instances seen in the last 10 minutes: (instance, service, applied revision, last
    /// seen, the latest revision of their `platform/<service>` namespace).
    pub async fn instances(
        &self,
    ) -> Result<Vec<(String, String, i64, DateTime<Utc>, i64)>, ConfigError> {
        Ok(sqlx::query_as(
            "SELECT i.instance, i.service, i.revision, i.last_seen,
                    COALESCE((SELECT max(h.revision) FROM config.history h
                               WHERE h.namespace = 'platform/' || i.service), 0)
               FROM config.instances i
              WHERE i.last_seen > now() - interval '10 minutes'
              ORDER BY i.service, i.instance",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn lock_writes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('borough-config-write'))")
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

async fn validate_against_schema(
    conn: &mut PgConnection,
    namespace: &str,
    value: &Value,
) -> Result<(), ConfigError> {
    let schema: Option<Value> =
        sqlx::query_scalar("SELECT schema FROM config.schemas WHERE namespace = $1")
            .bind(namespace)
            .fetch_optional(conn)
            .await?;
    let Some(schema) = schema else { return Ok(()) };
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| ConfigError::Invalid(format!("the namespace's schema is unusable: {e}")))?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "/" } else { &path })
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
    fn values_must_be_json_within_the_size_limit() {
        assert!(parse_value("{\"a\": 1}").is_ok());
        assert!(parse_value("{").is_err());
        assert!(parse_value(&format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES))).is_err());
    }
}
