//! Rows of the tenant tables (`migrations/tenant`) as the services read them.

use borough_proto::time::to_timestamp;
use borough_proto::user::v1::User;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A row of a tenant's `users` table, without its tenant (the caller's scope) — what the
/// user service returns from its writes and the query service from its reads, and what
/// `user_by_id` and `create_user` return.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserRow {
    /// The columns of a [`UserRow`], for `SELECT` and `RETURNING`.
    pub const COLUMNS: &str = "id, name, email, version, created_at, updated_at";
}

/// The one wire form of a user, for both APIs.
impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        User {
            id: row.id.to_string(),
            name: row.name,
            email: row.email,
            version: row.version,
            created_at: Some(to_timestamp(row.created_at)),
            updated_at: Some(to_timestamp(row.updated_at)),
        }
    }
}
