//! Bench-only baselines `make bench` compares Borough's stack against, built like the
//! services (same allocator, same release profile, same runtime), so that a comparison
//! is of the stacks alone:
//!
//! - always: a bare axum server answering `GET /hello` with the gateway's body, on
//!   `BOROUGH_HTTP_ADDR` (127.0.0.1:8090);
//! - with `BOROUGH_HELLO_GRPC_ADDR`: a bare tonic `QueryService` there (plaintext, no
//!   layers) answering `GetUserInfo` with one fixed user — a query service that does
//!   nothing of its own;
//! - with `BOROUGH_HELLO_QUERY_URL`: `GET /api/v1/users/{id}` calls `GetUserInfo` there
//!   over one tonic channel and answers the gateway's JSON body and `ETag` — a gateway
//!   that does nothing of its own.
//!
//! Together they are the floor of the cached read: what axum, tonic, hyper and the kernel
//! cost per request on this machine before any code of ours runs.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use borough_proto::query::v1::query_service_client::QueryServiceClient;
use borough_proto::query::v1::query_service_server::{QueryService, QueryServiceServer};
use borough_proto::query::v1::{
    BatchGetUsersRequest, BatchGetUsersResponse, ExportUsersRequest, GetUserInfoRequest,
    SearchUsersRequest, SearchUsersResponse,
};
use borough_proto::time::to_rfc3339;
use borough_proto::user::v1::User;
use tonic::codegen::tokio_stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Answers every `GetUserInfo` with the same user (the id echoed); nothing else.
struct BareQuery;

type Empty<T> = tokio_stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl QueryService for BareQuery {
    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<User>, Status> {
        let mut at = User::default().created_at.unwrap_or_default();
        at.seconds = 1_795_000_000;
        at.nanos = 123_456_000;
        Ok(Response::new(User {
            id: request.into_inner().user_id,
            name: "Reader".to_owned(),
            email: "reader@example.com".to_owned(),
            version: 1,
            created_at: Some(at),
            updated_at: Some(at),
        }))
    }

    async fn search_users(
        &self,
        _: Request<SearchUsersRequest>,
    ) -> Result<Response<SearchUsersResponse>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }

    type ExportUsersStream = Empty<User>;

    async fn export_users(
        &self,
        _: Request<ExportUsersRequest>,
    ) -> Result<Response<Self::ExportUsersStream>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }

    type BatchGetUsersStream = Empty<BatchGetUsersResponse>;

    async fn batch_get_users(
        &self,
        _: Request<Streaming<BatchGetUsersRequest>>,
    ) -> Result<Response<Self::BatchGetUsersStream>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }
}

/// The user as the gateway shows it, straight from the reply.
async fn user(
    State(query): State<QueryServiceClient<Channel>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let request = GetUserInfoRequest {
        user_id: id,
        min_version: 0,
    };
    match query.clone().get_user_info(request).await {
        Ok(reply) => {
            let user = reply.into_inner();
            let tag = format!("\"{}\"", user.version);
            (
                [(http::header::ETAG, tag)],
                Json(serde_json::json!({
                    "id": user.id,
                    "name": user.name,
                    "email": user.email,
                    "version": user.version,
                    "created_at": to_rfc3339(user.created_at.as_ref()),
                    "updated_at": to_rfc3339(user.updated_at.as_ref()),
                })),
            )
                .into_response()
        }
        Err(status) => (http::StatusCode::BAD_GATEWAY, status.message().to_owned()).into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("BOROUGH_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".to_owned());
    let mut app = axum::Router::new().route(
        "/hello",
        get(|| async { Json(serde_json::json!({ "message": "Hello from Borough!" })) }),
    );
    if let Ok(url) = std::env::var(borough_tools::HELLO_QUERY_URL.name) {
        let channel = Channel::from_shared(url)?.tcp_nodelay(true).connect_lazy();
        app = app.merge(
            axum::Router::new()
                .route("/api/v1/users/{id}", get(user))
                .with_state(QueryServiceClient::new(channel)),
        );
    }
    if let Ok(grpc) = std::env::var(borough_tools::HELLO_GRPC_ADDR.name) {
        let grpc = grpc.parse()?;
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(QueryServiceServer::new(BareQuery))
                .serve(grpc)
                .await;
            if let Err(e) = served {
                eprintln!("bare gRPC server on {grpc}: {e}");
                std::process::exit(1);
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
