//! Bench-only: a bare axum server answering `GET /hello` with the gateway's body, the
//! baseline `make bench` compares the gateway's whole stack against.
//! `BOROUGH_HTTP_ADDR` (127.0.0.1:8090). Built like the services (same allocator, same
//! release profile), so the comparison is of the stacks alone.

use axum::Json;
use axum::routing::get;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("BOROUGH_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".to_owned());
    let app = axum::Router::new().route(
        "/hello",
        get(|| async { Json(serde_json::json!({ "message": "Hello from Borough!" })) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
