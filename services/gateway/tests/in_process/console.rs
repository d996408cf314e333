//! The console's page, assets and sign-in, and the admin API with its session cookie:
//! headers, cookie attributes, CSRF. (The browser test drives the pages:
//! `make console-test`.)

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, App};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn text(response: axum::response::Response) -> anyhow::Result<String> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec())?)
}

fn header_of<'a>(response: &'a axum::response::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn assert_secured(response: &axum::response::Response) {
    assert_eq!(header_of(response, "content-security-policy"), CSP);
    assert_eq!(header_of(response, "x-frame-options"), "DENY");
    assert_eq!(header_of(response, "x-content-type-options"), "nosniff");
    assert_eq!(header_of(response, "referrer-policy"), "no-referrer");
    assert_eq!(header_of(response, "cache-control"), "no-store");
}

/// Signs in; the cookie (`name=value`) and the CSRF token.
async fn sign_in(app: &App) -> anyhow::Result<(String, String)> {
    let response = app
        .send(
            Request::post("/console/session")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"token": ADMIN_TOKEN}).to_string()))?,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let cookie = header_of(&response, "set-cookie")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_str(&text(response).await?)?;
    let csrf = body["csrf_token"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(cookie.starts_with("borough_console=") && csrf.len() == 64);
    Ok((cookie, csrf))
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_embedded_with_a_strict_policy_and_no_inline_script()
-> anyhow::Result<()> {
    let app = App::new()?;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/assets/console.js", "text/javascript"),
        ("/console/assets/console.css", "text/css"),
    ] {
        let response = app.send(Request::get(path).body(Body::empty())?).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            header_of(&response, "content-type").starts_with(kind),
            "{path}"
        );
        assert_secured(&response);
    }
    let missing = app
        .send(Request::get("/console/assets/other.js").body(Body::empty())?)
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_secured(&missing);

    // Nothing the policy would have to allow: no inline script or style, no handler
    // attributes, no script-built HTML.
    let page = text(
        app.send(Request::get("/console").body(Body::empty())?)
            .await,
    )
    .await?;
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains(r#"<script src="/console/assets/console.js" defer></script>"#));
    for forbidden in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
        assert!(!page.contains(forbidden), "{forbidden}");
    }
    let script = text(
        app.send(Request::get("/console/assets/console.js").body(Body::empty())?)
            .await,
    )
    .await?;
    for forbidden in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(forbidden), "{forbidden}");
    }
    Ok(())
}

#[tokio::test]
async fn sign_in_sets_an_http_only_strict_cookie_secure_behind_tls_and_a_wrong_token_is_refused()
-> anyhow::Result<()> {
    let app = App::new()?;
    let wrong = app
        .send(Request::post("/console/session").body(Body::from(
            json!({"token": "not-the-admin-token"}).to_string(),
        ))?)
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert_secured(&wrong);
    let garbage = app
        .send(Request::post("/console/session").body(Body::from("token=x"))?)
        .await;
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);

    let response = app
        .send(
            Request::post("/console/session")
                .body(Body::from(json!({"token": ADMIN_TOKEN}).to_string()))?,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let cookie = header_of(&response, "set-cookie").to_owned();
    for attribute in ["; Path=/", "; HttpOnly", "; SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(!cookie.contains("Max-Age"), "a session cookie: {cookie}");
    let body = text(response).await?;
    assert!(!body.contains(ADMIN_TOKEN));

    // Behind a TLS-terminating proxy that says so: Secure.
    let response = app
        .send(
            Request::post("/console/session")
                .header("x-forwarded-proto", "https")
                .body(Body::from(json!({"token": ADMIN_TOKEN}).to_string()))?,
        )
        .await;
    assert!(header_of(&response, "set-cookie").contains("; Secure"));
    Ok(())
}

#[tokio::test]
async fn the_session_cookie_reads_the_admin_api_but_a_change_needs_the_csrf_token()
-> anyhow::Result<()> {
    let app = App::new()?;
    let (cookie, csrf) = sign_in(&app).await?;

    // No cookie, no token: 401. The cookie: the status (which needs no backend) answers.
    let anonymous = app
        .send(Request::get("/admin/v1/status").body(Body::empty())?)
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let status = app
        .send(
            Request::get("/admin/v1/status")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?,
        )
        .await;
    assert_eq!(status.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&text(status).await?)?;
    assert!(body["backends"].is_array() && body["routes"].is_array());

    // A change with the cookie alone, or a wrong token: 403 before anything is called.
    let put = |token: Option<&str>| {
        let mut request = Request::put("/admin/v1/config/platform/gateway/log.level")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.body(Body::from("\"debug\""))
    };
    for token in [None, Some("0".repeat(64).as_str())] {
        let refused = app.send(put(token)?).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{token:?}");
        assert!(text(refused).await?.contains("CSRF"));
    }
    // With the token it gets past the guard (to the config service, absent here: 503).
    let passed = app.send(put(Some(&csrf))?).await;
    assert_ne!(passed.status(), StatusCode::FORBIDDEN);
    assert_ne!(passed.status(), StatusCode::UNAUTHORIZED);

    // A reloaded page gets its token back.
    let session = app
        .send(
            Request::get("/console/session")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?,
        )
        .await;
    let body: Value = serde_json::from_str(&text(session).await?)?;
    assert_eq!(body["csrf_token"], csrf.as_str());
    Ok(())
}

#[tokio::test]
async fn sign_out_needs_the_csrf_token_clears_the_cookie_and_ends_the_session() -> anyhow::Result<()>
{
    let app = App::new()?;
    let (cookie, csrf) = sign_in(&app).await?;
    let sign_out = |token: Option<&str>| {
        let mut request = Request::delete("/console/session").header(header::COOKIE, &cookie);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.body(Body::empty())
    };
    assert_eq!(
        app.send(sign_out(None)?).await.status(),
        StatusCode::FORBIDDEN
    );
    let out = app.send(sign_out(Some(&csrf))?).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert!(header_of(&out, "set-cookie").contains("Max-Age=0"));
    let after = app
        .send(
            Request::get("/admin/v1/status")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?,
        )
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert!(text(after).await?.contains("sign in again"));
    Ok(())
}

#[tokio::test]
async fn status_watches_hold_a_watch_slot_each_and_one_beyond_the_bound_is_503()
-> anyhow::Result<()> {
    let app = App::with(&[("BOROUGH_WATCH_MAX", "1")])?;
    let watch = || {
        Request::get("/admin/v1/status:watch")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
    };
    let first = app.send(watch()?).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = app.send(watch()?).await;
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key("retry-after"));
    // The first stream gone, its slot is free again.
    drop(first);
    let third = app.send(watch()?).await;
    assert_eq!(third.status(), StatusCode::OK);
    Ok(())
}
