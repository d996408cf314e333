//! Extractors whose rejections are problem+json.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use borough_error::Problem;
use http::request::Parts;
use serde::de::DeserializeOwned;

/// `Json<T>`, rejecting with problem+json: 415 without a JSON content type, 413 over the
/// body limit, 400 for malformed JSON, a missing field or a wrong type.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    let status = match rejection {
        // axum says 422 for well-formed JSON of the wrong shape; we say 400, like any
        // other invalid request body.
        JsonRejection::JsonDataError(_) => http::StatusCode::BAD_REQUEST,
        _ => rejection.status(),
    };
    let detail = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the request body must be JSON, sent with Content-Type: application/json".to_owned()
        }
        _ => rejection.body_text(),
    };
    Problem::from_http_status(status, detail)
}

/// `Query<T>`, rejecting with a 400 problem naming what is wrong.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_problem(&rejection)),
        }
    }
}

fn query_problem(rejection: &QueryRejection) -> Problem {
    Problem::from_http_status(http::StatusCode::BAD_REQUEST, rejection.body_text())
}
