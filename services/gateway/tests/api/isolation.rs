//! Tenant isolation: B cannot see or touch A's users through any route, and the database
//! refuses A's rows to a session scoped to B.

use serde_json::{Value, json};

use crate::support::{Stack, assert_problem};

#[tokio::test]
async fn tenant_b_cannot_get_list_update_or_delete_tenant_a_users() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key_a) = stack.create_tenant("tenant-a").await?;
    let (_, key_b) = stack.create_tenant("tenant-b").await?;
    let user = stack.create_user(&key_a, "Ada", "ada@example.com").await?;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());

    // Get, update, delete (conditional and not): 404, as if it did not exist.
    let response = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(&key_b)
        .send()
        .await?;
    assert_problem(response, 404).await?;
    for request in [
        stack
            .http
            .patch(stack.url(&path))
            .json(&json!({ "name": "pwned" })),
        stack
            .http
            .patch(stack.url(&path))
            .header("if-match", "\"1\"")
            .json(&json!({ "email": "b@evil.test" })),
        stack.http.delete(stack.url(&path)),
        stack
            .http
            .delete(stack.url(&path))
            .header("if-match", "\"1\""),
    ] {
        assert_problem(request.bearer_auth(&key_b).send().await?, 404).await?;
    }

    // B's list is empty; B may even reuse A's email in its own tenant.
    let list: Value = stack
        .http
        .get(stack.url("/api/v1/users"))
        .bearer_auth(&key_b)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["items"], json!([]));
    stack.create_user(&key_b, "Bea", "ada@example.com").await?;

    // A's row is unchanged.
    let response = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(&key_a)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let current: Value = response.json().await?;
    assert_eq!(current, user);
    Ok(())
}

#[tokio::test]
async fn a_sql_session_as_the_service_role_scoped_to_b_sees_none_of_a_rows() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key_a) = stack.create_tenant("sql-a").await?;
    let (tenant_b, _) = stack.create_tenant("sql-b").await?;
    stack.create_user(&key_a, "Ada", "ada@example.com").await?;
    stack
        .create_user(&key_a, "Alan", "alan@example.com")
        .await?;

    let pool = stack
        .db
        .login_pool(borough_testkit::pg::Login::User)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('borough.tenant_id', $1, true)")
        .bind(&tenant_b)
        .execute(&mut *tx)
        .await?;
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(visible, 0);
    tx.rollback().await?;

    let admin = stack.db.admin_pool().await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&admin)
        .await?;
    assert_eq!(
        total, 2,
        "the rows exist; only B's session must not see them"
    );
    Ok(())
}
