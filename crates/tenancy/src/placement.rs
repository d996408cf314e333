//! Where a tenant's data lives, and how that is read from the control database.
//!
//! | placement  | tables                          | pool                              |
//! |------------|---------------------------------|-----------------------------------|
//! | `shared`   | `public.*`, FORCEd RLS          | the default server's pool         |
//! | `schema`   | `t_<id>.*` on the default server| the default server's pool         |
//! | `database` | `borough.*` in its own database | a pool of its own (+ read replica)|
//!
//! Every placement also keeps the `tenant_id` column and its RLS policy: the router sets
//! `borough.tenant_id` on every transaction whatever the placement, so the policy is a
//! second wall behind the schema or database boundary.

use std::fmt;

use sqlx::PgPool;
use uuid::Uuid;

use borough_tenant::{Placement, TenantId};

/// The schema of the tenant tables inside a dedicated database.
pub const DEDICATED_SCHEMA: &str = "borough";

/// The schema of the shared tables.
pub const SHARED_SCHEMA: &str = "public";

/// The tenant's lifecycle state in the control database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Provisioning,
    ProvisioningFailed,
    Active,
    Suspended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisioning => "provisioning",
            Status::ProvisioningFailed => "provisioning_failed",
            Status::Active => "active",
            Status::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Provisioning,
            Status::ProvisioningFailed,
            Status::Active,
            Status::Suspended,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// Which server and database hold a tenant's tables.
#[derive(Clone, PartialEq, Eq)]
pub enum Storage {
    /// The default server's database (shared and schema placements).
    Default,
    /// A database of its own on the default server, created by Borough.
    OwnDatabase { name: String },
    /// A database of its own elsewhere, given by the operator.
    External(External),
}

/// A tenant database given by the operator: where it is (no secrets: every service may
/// know), and the operator's URLs with their credentials (only for a reader holding
/// `BOROUGH_SECRET_KEYS`, the user service; `None` for the others, which connect with their
/// own login at the location).
#[derive(Clone, PartialEq, Eq)]
pub struct External {
    /// `postgres://host:port/database` of the primary.
    pub location: String,
    /// The same of its read replica, if it has one.
    pub read_location: Option<String>,
    /// The operator's URL (credentials included), opened.
    pub url: Option<String>,
    /// The replica's URL (credentials included), opened.
    pub read_url: Option<String>,
}

impl External {
    /// From the operator's URLs (a new tenant).
    pub fn from_urls(url: String, read_url: Option<String>) -> External {
        External {
            location: crate::secrets::location_of(&url).unwrap_or_default(),
            read_location: read_url.as_deref().and_then(crate::secrets::location_of),
            url: Some(url),
            read_url,
        }
    }
}

impl fmt::Debug for Storage {
    // URLs carry passwords: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Default => f.write_str("Default"),
            Storage::OwnDatabase { name } => write!(f, "OwnDatabase({name})"),
            Storage::External(external) => write!(
                f,
                "External(location: {}, read_location: {:?}, url: {}, read_url: {})",
                external.location,
                external.read_location,
                if external.url.is_some() {
                    "<redacted>"
                } else {
                    "none"
                },
                if external.read_url.is_some() {
                    "<redacted>"
                } else {
                    "none"
                }
            ),
        }
    }
}

/// How a service reads tenant routes: which columns it may select, and what it does with
/// the sealed ones.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The operator's URLs, opened with these keys (the user service; `None` when
    /// `BOROUGH_SECRET_KEYS` is unset: tenants in databases elsewhere are then unavailable).
    TenantUrls(Option<std::sync::Arc<crate::secrets::Keyring>>),
    /// This service's own login everywhere (the query service): it never selects the
    /// sealed columns, which its database login may not read anyway.
    OwnLogin,
}

/// Everything the router needs to reach one tenant's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub tenant_id: TenantId,
    pub placement: Placement,
    pub status: Status,
    /// The schema of the tenant's tables (the transaction's `search_path`).
    pub schema: String,
    pub storage: Storage,
}

/// `t_<32 hex>`: the schema (or database) name of a tenant, from its id alone; never
/// from anything a caller typed.
pub fn storage_name(tenant: TenantId) -> String {
    format!("t_{}", tenant.as_uuid().simple())
}

/// The route of a new tenant. `database_url` (and `read_url`) only with `Database`.
pub fn new_route(
    tenant_id: TenantId,
    placement: Placement,
    database_url: Option<String>,
    read_url: Option<String>,
) -> Route {
    let (schema, storage) = match (placement, database_url) {
        (Placement::Shared, _) => (SHARED_SCHEMA.to_owned(), Storage::Default),
        (Placement::Schema, _) => (storage_name(tenant_id), Storage::Default),
        (Placement::Database, None) => (
            DEDICATED_SCHEMA.to_owned(),
            Storage::OwnDatabase {
                name: storage_name(tenant_id),
            },
        ),
        (Placement::Database, Some(url)) => (
            DEDICATED_SCHEMA.to_owned(),
            Storage::External(External::from_urls(url, read_url)),
        ),
    };
    Route {
        tenant_id,
        placement,
        status: Status::Provisioning,
        schema,
        storage,
    }
}

/// A row of `control.tenants` as a route is read from it ([`route_columns`]).
#[derive(sqlx::FromRow)]
struct RouteRow {
    id: Uuid,
    placement: String,
    status: String,
    schema_name: String,
    database_name: Option<String>,
    database_location: Option<String>,
    read_location: Option<String>,
    /// `NULL` unless this reader may read it.
    database_url: Option<String>,
    read_url: Option<String>,
}

/// The columns of a route. `database_url` and `read_url` are selected only by readers that
/// may (their login has the column privilege): the others get NULLs in their place.
fn route_columns(credentials: &Credentials) -> &'static str {
    match credentials {
        Credentials::TenantUrls(_) => {
            "id, placement, status, schema_name, database_name, database_location, read_location, \
             database_url, read_url"
        }
        Credentials::OwnLogin => {
            "id, placement, status, schema_name, database_name, database_location, read_location, \
             NULL::text AS database_url, NULL::text AS read_url"
        }
    }
}

/// Why a route could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteLoadError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The row is inconsistent (a hand edit).
    #[error("control.tenants row {tenant}: {what}")]
    Corrupt { tenant: Uuid, what: String },
    /// A sealed URL could not be opened.
    #[error("tenant {tenant}: {source}")]
    Secret {
        tenant: Uuid,
        source: crate::secrets::SecretError,
    },
}

fn route_from_row(row: RouteRow, credentials: &Credentials) -> Result<Route, RouteLoadError> {
    let RouteRow {
        id,
        placement,
        status,
        schema_name: schema,
        database_name,
        database_location: location,
        read_location,
        database_url: url,
        read_url,
    } = row;
    let corrupt = |what: &str| RouteLoadError::Corrupt {
        tenant: id,
        what: what.to_owned(),
    };
    let placement = placement
        .parse()
        .map_err(|_| corrupt("unknown placement"))?;
    let status = Status::parse(&status).ok_or_else(|| corrupt("unknown status"))?;
    let open = |column: &str, stored: Option<String>| match credentials {
        Credentials::TenantUrls(keys) => {
            crate::secrets::open_column(keys.as_deref(), id, column, stored)
                .map_err(|source| RouteLoadError::Secret { tenant: id, source })
        }
        Credentials::OwnLogin => Ok(None),
    };
    let storage = match (database_name, location) {
        (None, None) => Storage::Default,
        (Some(name), None) => Storage::OwnDatabase { name },
        (None, Some(location)) => Storage::External(External {
            location,
            read_location,
            url: open("database_url", url)?,
            read_url: open("read_url", read_url)?,
        }),
        (Some(_), Some(_)) => return Err(corrupt("both a database name and a location")),
    };
    Ok(Route {
        tenant_id: TenantId(id),
        placement,
        status,
        schema,
        storage,
    })
}

/// Reads a tenant's route from the control database.
pub async fn load_route(
    control: &PgPool,
    tenant: TenantId,
    credentials: &Credentials,
) -> Result<Option<Route>, RouteLoadError> {
    let row: Option<RouteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM control.tenants WHERE id = $1",
        route_columns(credentials)
    )))
    .bind(tenant.as_uuid())
    .fetch_optional(control)
    .await?;
    row.map(|row| route_from_row(row, credentials)).transpose()
}

/// Every tenant's route (for `migrate`).
pub async fn load_all_routes(
    control: &mut sqlx::PgConnection,
    credentials: &Credentials,
) -> Result<Vec<Result<Route, RouteLoadError>>, sqlx::Error> {
    let rows: Vec<RouteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM control.tenants ORDER BY id",
        route_columns(credentials)
    )))
    .fetch_all(control)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| route_from_row(row, credentials))
        .collect())
}

/// Checks an operator-given database URL: `postgres://` or `postgresql://`, a host and a
/// database name. The error never repeats the URL (it may hold a password).
pub fn validate_database_url(field: &str, raw: &str) -> Result<(), String> {
    if raw.len() > 2048 || raw.chars().any(char::is_control) {
        return Err(format!(
            "{field} must be at most 2048 characters, with no control characters"
        ));
    }
    let options: Result<sqlx::postgres::PgConnectOptions, _> = raw.parse();
    let scheme_ok = raw.starts_with("postgres://") || raw.starts_with("postgresql://");
    match options {
        Ok(options) if scheme_ok && options.get_database().is_some_and(|d| !d.is_empty()) => Ok(()),
        Ok(_) if scheme_ok => Err(format!(
            "{field} must name a database (postgres://user:password@host:port/database)"
        )),
        _ => Err(format!(
            "{field} is not a valid PostgreSQL URL (postgres://user:password@host:port/database)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_names_are_safe_identifiers_built_from_the_id() {
        let name = storage_name(TenantId::new_v7());
        assert!(crate::migrate::is_safe_identifier(&name), "{name}");
        assert_eq!(name.len(), 34);
    }

    #[test]
    fn new_routes_put_each_placement_where_the_table_says() {
        let id = TenantId::new_v7();
        let shared = new_route(id, Placement::Shared, None, None);
        assert_eq!(
            (shared.schema.as_str(), &shared.storage),
            ("public", &Storage::Default)
        );
        let schema = new_route(id, Placement::Schema, None, None);
        assert_eq!(schema.schema, storage_name(id));
        assert_eq!(schema.storage, Storage::Default);
        let own = new_route(id, Placement::Database, None, None);
        assert_eq!(own.schema, DEDICATED_SCHEMA);
        assert_eq!(
            own.storage,
            Storage::OwnDatabase {
                name: storage_name(id)
            }
        );
    }

    #[test]
    fn debug_output_of_external_storage_hides_the_urls() {
        let storage = Storage::External(External::from_urls(
            "postgres://u:secret@db/x".into(),
            Some("postgres://u:secret@replica/x".into()),
        ));
        let shown = format!("{storage:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("postgres://db:5432/x"), "{shown}");
    }

    #[test]
    fn database_urls_are_validated_without_echoing_them() {
        assert!(validate_database_url("database_url", "postgres://u:p@localhost:5432/db").is_ok());
        for bad in [
            "localhost:5432",
            "mysql://u:secret@h/db",
            "postgres://u:secret@h:notaport/db",
            "postgres://u:secret@h:5432",
        ] {
            let err = validate_database_url("database_url", bad).expect_err(bad);
            assert!(
                err.contains("database_url") && !err.contains("secret"),
                "{err}"
            );
        }
    }
}
