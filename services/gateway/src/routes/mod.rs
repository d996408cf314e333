//! REST routes: `/hello`, the tenant API (`/api/v1`) and the platform admin API
//! (`/admin/v1`).

pub mod admin;
pub mod bulk;
pub mod config;
pub mod users;

use axum::Json;
use axum::response::{IntoResponse, Response};
use borough_error::Problem;
use http::{HeaderMap, HeaderValue, header};
use serde::Serialize;

/// `GET /hello`: answers with no backend running.
pub async fn hello() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "message": "Hello from Borough!" }))
}

/// A page of items with the cursor of the next page (`null` on the last).
#[derive(Debug, Serialize)]
pub struct PageDto<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `limit` and `cursor` query parameters.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i32>,
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
