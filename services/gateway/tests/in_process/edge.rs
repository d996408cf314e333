//! What the edge answers alone: unknown routes and methods, body limits and media types,
//! problem bodies, CORS, compression and request ids.

use axum::body::Body;
use http::{Method, Request};
use serde_json::json;

use crate::{App, TENANT_KEY, problem};

/// `POST /api/v1/users` as the cached tenant, JSON.
fn post_user() -> http::request::Builder {
    Request::post("/api/v1/users")
        .header("authorization", format!("Bearer {TENANT_KEY}"))
        .header("content-type", "application/json")
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() -> anyhow::Result<()> {
    let app = App::new()?;
    let response = app
        .send(Request::get("/no/such/route").body(Body::empty())?)
        .await;
    let body = problem(response, 404).await?;
    assert_eq!(body["type"], "urn:borough:problem:not-found");
    Ok(())
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() -> anyhow::Result<()> {
    let app = App::new()?;
    let response = app.send(Request::put("/hello").body(Body::empty())?).await;
    assert!(
        response.headers()["allow"].to_str()?.contains("GET"),
        "{:?}",
        response.headers()
    );
    problem(response, 405).await?;
    Ok(())
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_declared_or_streamed() -> anyhow::Result<()> {
    let app = App::with(&[("BOROUGH_BODY_LIMIT", "1KiB")])?;
    let big = serde_json::to_vec(&json!({ "name": "x".repeat(4096), "email": "a@example.com" }))?;
    let declared = post_user()
        .header("content-length", big.len())
        .body(Body::from(big))?;
    let body = problem(app.send(declared).await, 413).await?;
    assert_eq!(body["type"], "urn:borough:problem:payload-too-large");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("1024")),
        "{body}"
    );

    // No Content-Length: refused while reading, before any backend is called.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 800]), Ok(vec![b' '; 800])];
    let streamed = post_user().body(Body::from_stream(futures_util::stream::iter(chunks)))?;
    problem(app.send(streamed).await, 413).await?;
    Ok(())
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() -> anyhow::Result<()> {
    let app = App::new()?;
    let request = Request::post("/api/v1/users")
        .header("authorization", format!("Bearer {TENANT_KEY}"))
        .header("content-type", "text/plain")
        .body(Body::from("name=Ada"))?;
    let body = problem(app.send(request).await, 415).await?;
    assert_eq!(body["type"], "urn:borough:problem:unsupported-media-type");
    Ok(())
}

#[tokio::test]
async fn a_missing_api_key_is_a_401_problem_asking_for_a_bearer_token() -> anyhow::Result<()> {
    let app = App::new()?;
    let response = app
        .send(Request::get("/api/v1/users").body(Body::empty())?)
        .await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body = problem(response, 401).await?;
    assert!(body["trace_id"].is_string(), "{body}");
    Ok(())
}

#[tokio::test]
async fn cors_answers_configured_origins_only_and_is_off_by_default() -> anyhow::Result<()> {
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/v1/users")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
    };
    let app = App::with(&[(
        "BOROUGH_CORS_ORIGINS",
        "https://app.example.com, https://admin.example.com",
    )])?;
    let allowed = app.send(preflight("https://app.example.com")?).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = app.send(preflight("https://evil.example")?).await;
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        other.headers()
    );
    // A simple request from an allowed origin is answered with the origin named.
    let hello = app
        .send(
            Request::get("/hello")
                .header("origin", "https://admin.example.com")
                .body(Body::empty())?,
        )
        .await;
    assert_eq!(
        hello.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );

    let off = App::new()?;
    let response = off.send(preflight("https://app.example.com")?).await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn bodies_worth_it_are_compressed_for_clients_that_accept_gzip_and_small_ones_are_not()
-> anyhow::Result<()> {
    let app = App::new()?;
    let response = app
        .send(
            Request::get("/openapi.json")
                .header("accept-encoding", "gzip")
                .body(Body::empty())?,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "accept-encoding");
    let compressed = axum::body::to_bytes(response.into_body(), 1 << 22).await?;
    assert!(compressed.len() < app.state.openapi.len() / 2);
    // A small body is not worth compressing, even for a client that asks; a client that
    // does not ask gets identity, and both responses say they vary by the header.
    for accept in [Some("gzip"), None] {
        let mut request = Request::get("/hello");
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        let response = app.send(request.body(Body::empty())?).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("content-encoding").is_none());
        assert_eq!(response.headers()["vary"], "accept-encoding");
    }
    Ok(())
}

#[tokio::test]
async fn a_client_request_id_is_kept_only_when_short_and_plain() -> anyhow::Result<()> {
    let app = App::new()?;
    let id_of = async |given: &str| -> anyhow::Result<String> {
        let response = app
            .send(
                Request::get("/hello")
                    .header("x-request-id", given)
                    .body(Body::empty())?,
            )
            .await;
        Ok(response.headers()["x-request-id"].to_str()?.to_owned())
    };
    assert_eq!(id_of("req-42.a_b:c").await?, "req-42.a_b:c");
    let long = "x".repeat(65);
    for bad in [long.as_str(), "has space", "quote\"", "<script>"] {
        let replaced = id_of(bad).await?;
        assert_ne!(replaced, bad);
        assert_eq!(replaced.len(), 32, "{replaced}");
        assert!(replaced.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // None given: one is made, and every problem body carries the trace it belongs to.
    let response = app
        .send(Request::get("/no/such/route").body(Body::empty())?)
        .await;
    assert_eq!(response.headers()["x-request-id"].len(), 32);
    Ok(())
}
