//! The statement that scopes a transaction to its tenant, and the SQL quoting it needs.

use borough_tenant::TenantContext;

use crate::placement::Route;

/// `"name"`, with embedded quotes doubled.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `SELECT set_config(…)` that scopes a transaction to `ctx`'s tenant: its id (for
/// row-level security), its schema as `search_path`, what is left of the caller's deadline
/// as `statement_timeout` (0: none), and read-only when `read`. Literals, not parameters
/// (it travels in simple-protocol messages): a UUID, a quoted identifier and a duration,
/// each quoted as a string literal.
pub(super) fn scope_statement(ctx: &TenantContext, route: &Route, read: bool) -> String {
    let statement_timeout = ctx.remaining().map_or_else(
        || "0".to_owned(),
        |left| format!("{}ms", left.as_millis().max(1)),
    );
    format!(
        "SELECT set_config('borough.tenant_id', {}, true), set_config('search_path', {}, true), \
         set_config('statement_timeout', {}, true){}",
        quote_literal(&ctx.tenant_id.to_string()),
        quote_literal(&quote_ident(&route.schema)),
        quote_literal(&statement_timeout),
        if read {
            ", set_config('transaction_read_only', 'on', true)"
        } else {
            ""
        },
    )
}

/// A string literal for `text`, as PostgreSQL's `quote_literal` writes it (`E''` with
/// doubled backslashes when it has any, so that it means the same whatever
/// `standard_conforming_strings` says). NUL, which no PostgreSQL text can hold and which
/// would end a simple-protocol message early, is dropped.
fn quote_literal(text: &str) -> String {
    let text = text.replace('\0', "").replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\"))
    } else {
        format!("'{text}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_mean_exactly_their_text_to_postgresql() -> anyhow::Result<()> {
        let db = borough_testkit::TestDatabase::create().await?;
        let pool = db.admin_pool().await?;
        for text in [
            "plain",
            "it's",
            "back\\slash",
            "\\'; DROP TABLE x; --",
            "\"t_a\"\"b\"",
            "",
        ] {
            let literal = quote_literal(text);
            let (back,): (String,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {literal}::text")))
                    .fetch_one(&pool)
                    .await?;
            assert_eq!(back, text, "{literal}");
            // Off as well as on: the E'' form does not depend on the setting.
            let mut conn = pool.acquire().await?;
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET standard_conforming_strings = off; SELECT {literal}::text"
            )))
            .fetch_all(&mut *conn)
            .await?;
            let back: String = sqlx::Row::try_get(&rows[0], 0)?;
            assert_eq!(back, text, "{literal} with standard_conforming_strings off");
            conn.close().await?;
        }
        Ok(())
    }

    #[test]
    fn identifiers_are_quoted_for_search_path() {
        assert_eq!(quote_ident("t_abc"), "\"t_abc\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
