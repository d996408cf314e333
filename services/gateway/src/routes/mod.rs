//! REST routes: `/hello`, the tenant API (`/api/v1`) and the platform admin API
//! (`/admin/v1`).

pub mod admin;
pub mod bulk;
pub mod config;
pub mod moves;
pub mod users;

use axum::Json;
use axum::response::{IntoResponse, Response};
use borough_error::Problem;
use http::{HeaderMap, HeaderValue, header};
use serde::Serialize;

/// The greeting of `GET /hello`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HelloDto {
    pub message: &'static str,
}

/// `GET /hello`: answers with no backend running.
#[utoipa::path(get, path = "/hello", operation_id = "hello", tag = "public",
    summary = "A greeting, answered with no backend running",
    responses((status = 200, description = "The greeting", body = HelloDto)))]
pub async fn hello() -> Json<HelloDto> {
    Json(HelloDto {
        message: "Hello from Borough!",
    })
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "public",
    summary = "This API's OpenAPI 3.1 document",
    responses((status = 200, description = "The OpenAPI document",
        body = Object, content_type = "application/json")))]
pub async fn openapi_json(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
) -> Response {
    let mut response = state.openapi.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A page of items with the cursor of the next page (`null` on the last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageDto<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `limit` and `cursor` query parameters.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page: at least 1, default 20; more than 100 is taken as 100.
    #[param(minimum = 1)]
    pub limit: Option<i32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page size to ask for; `limit` must be positive (it is capped at 100).
    pub fn page_size(&self) -> Result<i32, Problem> {
        match self.limit {
            None => Ok(0),
            Some(n) if n >= 1 => Ok(n),
            Some(_) => Err(Problem::new(
                borough_error::ErrorKind::InvalidArgument,
                "limit must be between 1 and 100",
            )),
        }
    }
}

/// A JSON response with extra headers.
pub fn with_headers(
    status: http::StatusCode,
    headers: HeaderMap,
    body: impl Serialize,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().extend(headers);
    response
}

/// A header value from text we produced (ids, numbers); never fails for those.
pub fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Location` of a created resource.
pub fn location(path: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, header_value(path));
    headers
}
