//! Borough's one error model.
//!
//! Every error a caller can see has an [`ErrorKind`]. One table ([`TABLE`]) maps each kind
//! to a gRPC [`tonic::Code`] and an HTTP [`StatusCode`], both ways. Inside, services return
//! `tonic::Status` built by [`to_status`]; at the edge the gateway turns a `Status` (or its
//! own failures) into a [`Problem`], which renders as RFC 9457 `application/problem+json`.
//!
//! Internal causes (SQL text, driver messages) are logged with the trace id and never sent:
//! for server-side kinds the caller gets the kind's generic detail.

use std::fmt;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use tonic::Code;

/// The media type of every error body at the edge.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or a field is invalid.
    InvalidArgument,
    /// No credential, or one that is unknown or revoked.
    Unauthenticated,
    /// A valid credential that may not do this.
    PermissionDenied,
    /// No such resource (or one the caller may not know exists).
    NotFound,
    /// A resource with the same unique key exists.
    AlreadyExists,
    /// A concurrent change got there first; retrying the whole operation may succeed.
    Conflict,
    /// A precondition (`If-Match`, expected version) does not hold.
    PreconditionFailed,
    /// The request body is larger than allowed (HTTP only).
    PayloadTooLarge,
    /// The request body has a media type we do not accept (HTTP only).
    UnsupportedMediaType,
    /// Well-formed, but its content breaks a rule (e.g. a JSON Schema).
    Unprocessable,
    /// The caller is over a rate limit; retrying later may succeed.
    RateLimited,
    /// The caller has used all of a quota (keys, bytes, namespaces): retrying will not
    /// help until something is removed or the quota raised.
    QuotaExceeded,
    /// The caller went away.
    Cancelled,
    /// The deadline passed before the work finished.
    DeadlineExceeded,
    /// A dependency is down or overloaded; retry later.
    Unavailable,
    /// The operation is not implemented.
    Unimplemented,
    /// A bug or an unexpected failure on our side.
    Internal,
}

/// One row of the mapping table.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub kind: ErrorKind,
    pub code: Code,
    pub status: StatusCode,
    /// Stable, machine-readable name; the problem `type` is `urn:borough:problem:<slug>`.
    pub slug: &'static str,
    pub title: &'static str,
    /// This row is the one chosen when mapping from its `code` to a kind.
    pub canonical_for_code: bool,
    /// This row is the one chosen when mapping from its `status` to a kind.
    pub canonical_for_status: bool,
}

const fn row(
    kind: ErrorKind,
    code: Code,
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    canonical_for_code: bool,
    canonical_for_status: bool,
) -> KindInfo {
    KindInfo {
        kind,
        code,
        status,
        slug,
        title,
        canonical_for_code,
        canonical_for_status,
    }
}

/// The mapping table: kind <-> gRPC code <-> HTTP status.
///
/// Where several kinds share a code or a status, the `canonical_*` flag says which kind a
/// reverse lookup yields. Codes and statuses absent here map to `Internal` (codes) or to
/// the closest class (statuses): see [`ErrorKind::from_grpc_code`] and
/// [`ErrorKind::from_http_status`].
#[rustfmt::skip]
pub const TABLE: &[KindInfo] = &[
    row(ErrorKind::InvalidArgument,      Code::InvalidArgument,    StatusCode::BAD_REQUEST,            "invalid-argument",       "Invalid request",          true,  true),
    row(ErrorKind::Unauthenticated,      Code::Unauthenticated,    StatusCode::UNAUTHORIZED,           "unauthenticated",        "Unauthenticated",          true,  true),
    row(ErrorKind::PermissionDenied,     Code::PermissionDenied,   StatusCode::FORBIDDEN,              "permission-denied",      "Permission denied",        true,  true),
    row(ErrorKind::NotFound,             Code::NotFound,           StatusCode::NOT_FOUND,              "not-found",              "Not found",                true,  true),
    row(ErrorKind::AlreadyExists,        Code::AlreadyExists,      StatusCode::CONFLICT,               "already-exists",         "Already exists",           true,  true),
    row(ErrorKind::Conflict,             Code::Aborted,            StatusCode::CONFLICT,               "conflict",               "Conflict",                 true,  false),
    row(ErrorKind::PreconditionFailed,   Code::FailedPrecondition, StatusCode::PRECONDITION_FAILED,    "precondition-failed",    "Precondition failed",      true,  true),
    row(ErrorKind::PayloadTooLarge,      Code::OutOfRange,         StatusCode::PAYLOAD_TOO_LARGE,      "payload-too-large",      "Payload too large",        false, true),
    row(ErrorKind::UnsupportedMediaType, Code::InvalidArgument,    StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type",   false, true),
    row(ErrorKind::Unprocessable,        Code::InvalidArgument,    StatusCode::UNPROCESSABLE_ENTITY,   "unprocessable",          "Unprocessable content",    false, true),
    row(ErrorKind::RateLimited,          Code::ResourceExhausted,  StatusCode::TOO_MANY_REQUESTS,      "rate-limited",           "Too many requests",        true,  true),
    row(ErrorKind::QuotaExceeded,        Code::ResourceExhausted,  StatusCode::CONFLICT,               "quota-exceeded",         "Quota exceeded",           false, false),
    row(ErrorKind::Cancelled,            Code::Cancelled,          CLIENT_CLOSED_REQUEST,              "cancelled",              "Request cancelled",        true,  true),
    row(ErrorKind::DeadlineExceeded,     Code::DeadlineExceeded,   StatusCode::GATEWAY_TIMEOUT,        "deadline-exceeded",      "Deadline exceeded",        true,  true),
    row(ErrorKind::Unavailable,          Code::Unavailable,        StatusCode::SERVICE_UNAVAILABLE,    "unavailable",            "Service unavailable",      true,  true),
    row(ErrorKind::Unimplemented,        Code::Unimplemented,      StatusCode::NOT_IMPLEMENTED,        "unimplemented",          "Not implemented",          true,  true),
    row(ErrorKind::Internal,             Code::Internal,           StatusCode::INTERNAL_SERVER_ERROR,  "internal",               "Internal error",           true,  true),
];

/// nginx's 499: the client closed the request before the answer.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

impl ErrorKind {
    /// Every kind, in table order.
    pub fn all() -> impl Iterator<Item = ErrorKind> {
        TABLE.iter().map(|row| row.kind)
    }

    pub fn info(self) -> &'static KindInfo {
        // Every kind has exactly one row; the unit tests prove it.
        TABLE
            .iter()
            .find(|row| row.kind == self)
            .unwrap_or(&TABLE[TABLE.len() - 1])
    }

    pub fn grpc_code(self) -> Code {
        self.info().code
    }

    pub fn http_status(self) -> StatusCode {
        self.info().status
    }

    pub fn slug(self) -> &'static str {
        self.info().slug
    }

    pub fn title(self) -> &'static str {
        self.info().title
    }

    /// The problem `type` URI.
    pub fn type_uri(self) -> String {
        format!("urn:borough:problem:{}", self.slug())
    }

    /// Server-side failures: their causes are logged, never shown to the caller.
    pub fn is_server_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::Internal | ErrorKind::Unavailable | ErrorKind::Unimplemented
        )
    }

    /// Worth retrying after a pause (with a `Retry-After` at the edge).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::RateLimited)
    }

    pub fn from_grpc_code(code: Code) -> ErrorKind {
        TABLE
            .iter()
            .find(|row| row.canonical_for_code && row.code == code)
            .map(|row| row.kind)
            .unwrap_or(match code {
                Code::OutOfRange => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal, // Ok, Unknown, DataLoss: nothing a caller can fix.
            })
    }

    pub fn from_http_status(status: StatusCode) -> ErrorKind {
        TABLE
            .iter()
            .find(|row| row.canonical_for_status && row.status == status)
            .map(|row| row.kind)
            .unwrap_or(match status.as_u16() {
                400..=499 => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// A domain or layer error that knows its kind. Each layer's error enum implements it.
pub trait ServiceError: std::error::Error {
    fn kind(&self) -> ErrorKind;

    /// What the caller may read. Server-side faults say only their title.
    fn public_detail(&self) -> String {
        if self.kind().is_server_fault() {
            self.kind().title().to_owned()
        } else {
            self.to_string()
        }
    }

    /// When the caller may usefully retry (sent as `retry-after` metadata, then as the
    /// `Retry-After` header at the edge).
    fn retry_after(&self) -> Option<std::time::Duration> {
        None
    }
}

/// gRPC metadata naming the error kind when its code maps back to another kind (e.g.
/// `unprocessable`, sent as INVALID_ARGUMENT).
pub const KIND_METADATA: &str = "x-borough-kind";

/// gRPC metadata: seconds before a retry may succeed.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// A wait in whole seconds, rounded up (`Retry-After` and its kin count whole seconds; a
/// caller told 0 for 0.4 s would come back too early).
pub fn whole_seconds_up(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// gRPC metadata marking a server-side fault's message as written for the caller (it
/// names no internals), so the edge passes it on instead of the generic title.
pub const PUBLIC_DETAIL_METADATA: &str = "x-borough-public-detail";

/// Turns a service error into the `Status` a gRPC caller receives, logging the internal
/// cause of server-side faults.
pub fn to_status<E: ServiceError + ?Sized>(err: &E) -> tonic::Status {
    let kind = err.kind();
    if kind.is_server_fault() {
        tracing::error!(error = %err, kind = %kind, "request failed");
    } else {
        tracing::debug!(error = %err, kind = %kind, "request rejected");
    }
    let detail = err.public_detail();
    let public = kind.is_server_fault() && detail != kind.title();
    let mut status = tonic::Status::new(kind.grpc_code(), detail);
    if public {
        status.metadata_mut().insert(
            PUBLIC_DETAIL_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    if !kind.info().canonical_for_code
        && let Ok(slug) = tonic::metadata::MetadataValue::try_from(kind.slug())
    {
        // The code alone would map back to another kind: name this one.
        status.metadata_mut().insert(KIND_METADATA, slug);
    }
    if let Some(after) = err.retry_after() {
        let seconds = whole_seconds_up(after);
        status.metadata_mut().insert(
            RETRY_AFTER_METADATA,
            tonic::metadata::MetadataValue::from(seconds.max(1)),
        );
    }
    status
}

/// An RFC 9457 problem, as the edge sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ErrorKind,
    /// The kind's status, unless the edge keeps a more precise one (405, 408, ...).
    pub status: StatusCode,
    pub detail: String,
    pub instance: Option<String>,
    /// Seconds, sent as `Retry-After` (set by default for retryable kinds).
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            status: kind.http_status(),
            detail: detail.into(),
            instance: None,
            retry_after: kind.is_retryable().then_some(1),
        }
    }

    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// The problem for a bare HTTP error status (from a framework layer), keeping it.
    pub fn from_http_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let mut problem = Problem::new(ErrorKind::from_http_status(status), detail);
        problem.status = status;
        problem
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The problem for a `Status` received from a Borough service (or from the transport).
    ///
    /// Messages of server-side codes may carry transport or driver text: they are logged
    /// and replaced by the kind's title.
    pub fn from_status(status: &tonic::Status) -> Self {
        let metadata = status.metadata();
        let named = metadata
            .get(KIND_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|slug| {
                TABLE
                    .iter()
                    .find(|row| row.slug == slug && row.code == status.code())
            })
            .map(|row| row.kind);
        // A deadline spent on the server arrives as DEADLINE_EXCEEDED: the backend client
        // turns tonic's CANCELLED reply past the call's deadline into it
        // (`borough_net::client`), by the time, not the message.
        let kind = named.unwrap_or_else(|| ErrorKind::from_grpc_code(status.code()));
        let public = metadata.contains_key(PUBLIC_DETAIL_METADATA);
        let mut problem = if (kind.is_server_fault() && !public) || status.code() == Code::Unknown {
            tracing::warn!(code = ?status.code(), message = status.message(), "backend call failed");
            Problem::new(kind, kind.title())
        } else {
            Problem::new(kind, status.message())
        };
        if let Some(seconds) = metadata
            .get(RETRY_AFTER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        {
            problem.retry_after = Some(seconds);
        }
        problem
    }

    /// The JSON body, with the trace id of the current request.
    pub fn body(&self) -> ProblemBody<'_> {
        ProblemBody {
            type_: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.status.as_u16(),
            detail: &self.detail,
            instance: self.instance.as_deref(),
            trace_id: borough_telemetry::trace::current_trace_id(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for Problem {}

impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Self {
        Problem::from_status(&status)
    }
}

/// The serialised form of a [`Problem`]: an RFC 9457 problem, `application/problem+json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody<'a> {
    /// `urn:borough:problem:<kind>`: stable, for programs.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for people; never internal detail.
    pub detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<&'a str>,
    /// The request's trace id, to quote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = match serde_json::to_vec(&self.body()) {
            Ok(body) => body,
            Err(_) => {
                br#"{"type":"urn:borough:problem:internal","title":"Internal error","status":500}"#
                    .to_vec()
            }
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn waits_round_up_to_whole_seconds() {
        use std::time::Duration;
        assert_eq!(whole_seconds_up(Duration::ZERO), 0);
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds_up(Duration::from_millis(2_001)), 3);
    }

    #[test]
    fn every_kind_has_exactly_one_row() {
        let kinds: Vec<_> = ErrorKind::all().collect();
        let unique: HashSet<_> = kinds.iter().collect();
        assert_eq!(kinds.len(), unique.len(), "a kind appears twice in TABLE");
        assert_eq!(kinds.len(), 17, "a new kind needs a row in TABLE");
    }

    #[test]
    fn every_grpc_code_has_at_most_one_canonical_kind() {
        for row in TABLE {
            let canonical = TABLE
                .iter()
                .filter(|other| other.code == row.code && other.canonical_for_code)
                .count();
            assert!(
                canonical <= 1,
                "{:?} has {canonical} canonical kinds",
                row.code
            );
        }
    }

    #[test]
    fn every_http_status_has_exactly_one_canonical_kind() {
        for row in TABLE {
            let canonical = TABLE
                .iter()
                .filter(|other| other.status == row.status && other.canonical_for_status)
                .count();
            assert_eq!(
                canonical, 1,
                "{} has {canonical} canonical kinds",
                row.status
            );
        }
    }

    #[test]
    fn kind_to_grpc_code_and_back_is_identity_for_canonical_rows() {
        for row in TABLE.iter().filter(|row| row.canonical_for_code) {
            assert_eq!(ErrorKind::from_grpc_code(row.kind.grpc_code()), row.kind);
        }
    }

    #[test]
    fn kind_to_http_status_and_back_is_identity_for_canonical_rows() {
        for row in TABLE.iter().filter(|row| row.canonical_for_status) {
            assert_eq!(
                ErrorKind::from_http_status(row.kind.http_status()),
                row.kind
            );
        }
    }

    #[test]
    fn non_canonical_rows_map_back_to_the_kind_sharing_their_status_or_code() {
        assert_eq!(ErrorKind::Conflict.http_status(), StatusCode::CONFLICT);
        assert_eq!(
            ErrorKind::from_http_status(StatusCode::CONFLICT),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            ErrorKind::from_grpc_code(ErrorKind::UnsupportedMediaType.grpc_code()),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            ErrorKind::from_grpc_code(ErrorKind::PayloadTooLarge.grpc_code()),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn every_grpc_code_maps_to_a_kind_whose_status_is_an_error() {
        let codes = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for code in codes {
            let status = ErrorKind::from_grpc_code(code).http_status();
            assert!(status.as_u16() >= 400, "{code:?} -> {status}");
        }
        assert_eq!(
            ErrorKind::from_grpc_code(Code::Unknown),
            ErrorKind::Internal
        );
        assert_eq!(
            ErrorKind::from_grpc_code(Code::DataLoss),
            ErrorKind::Internal
        );
    }

    #[test]
    fn unlisted_http_statuses_map_to_their_class() {
        assert_eq!(
            ErrorKind::from_http_status(StatusCode::METHOD_NOT_ALLOWED),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            ErrorKind::from_http_status(StatusCode::BAD_GATEWAY),
            ErrorKind::Internal
        );
    }

    #[test]
    fn the_table_matches_the_documented_mapping() {
        let expected = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument, 400),
            (ErrorKind::Unauthenticated, Code::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, Code::PermissionDenied, 403),
            (ErrorKind::NotFound, Code::NotFound, 404),
            (ErrorKind::AlreadyExists, Code::AlreadyExists, 409),
            (ErrorKind::Conflict, Code::Aborted, 409),
            (ErrorKind::PreconditionFailed, Code::FailedPrecondition, 412),
            (ErrorKind::PayloadTooLarge, Code::OutOfRange, 413),
            (ErrorKind::UnsupportedMediaType, Code::InvalidArgument, 415),
            (ErrorKind::RateLimited, Code::ResourceExhausted, 429),
            (ErrorKind::QuotaExceeded, Code::ResourceExhausted, 409),
            (ErrorKind::Cancelled, Code::Cancelled, 499),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded, 504),
            (ErrorKind::Unavailable, Code::Unavailable, 503),
            (ErrorKind::Unimplemented, Code::Unimplemented, 501),
            (ErrorKind::Internal, Code::Internal, 500),
        ];
        for (kind, code, status) in expected {
            assert_eq!(kind.grpc_code(), code, "{kind}");
            assert_eq!(kind.http_status().as_u16(), status, "{kind}");
        }
    }

    #[test]
    fn a_bare_http_status_keeps_its_code_in_the_problem() {
        let problem = Problem::from_http_status(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        assert_eq!(problem.kind, ErrorKind::InvalidArgument);
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn server_side_status_messages_are_not_shown_to_callers() {
        let status = tonic::Status::unavailable("tcp connect error: 10.0.0.7:5432 refused");
        let problem = Problem::from_status(&status);
        assert_eq!(problem.kind, ErrorKind::Unavailable);
        assert_eq!(problem.detail, "Service unavailable");
        assert_eq!(problem.retry_after, Some(1));
    }

    #[test]
    fn client_side_status_messages_become_the_detail() {
        let status = tonic::Status::already_exists("a user with this email exists");
        let problem = Problem::from_status(&status);
        assert_eq!(problem.kind, ErrorKind::AlreadyExists);
        assert_eq!(problem.detail, "a user with this email exists");
        assert_eq!(problem.retry_after, None);
    }

    #[derive(Debug)]
    pub struct Fault(&'static str, ErrorKind);
    impl fmt::Display for Fault {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Fault {}
    impl ServiceError for Fault {
        fn kind(&self) -> ErrorKind {
            self.1
        }
    }

    #[test]
    fn to_status_hides_internal_causes_and_keeps_client_details() {
        let internal = to_status(&Fault("syntax error at or near SELEC", ErrorKind::Internal));
        assert_eq!(internal.code(), Code::Internal);
        assert_eq!(internal.message(), "Internal error");
        let invalid = to_status(&Fault("email is not valid", ErrorKind::InvalidArgument));
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert_eq!(invalid.message(), "email is not valid");
    }

    #[derive(Debug)]
    pub struct Overloaded;
    impl fmt::Display for Overloaded {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("tenant t is using all of its connections")
        }
    }
    impl std::error::Error for Overloaded {}
    impl ServiceError for Overloaded {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Unavailable
        }
        fn public_detail(&self) -> String {
            self.to_string()
        }
        fn retry_after(&self) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_millis(2500))
        }
    }

    #[test]
    fn public_server_fault_details_and_retry_hints_cross_grpc_to_the_problem() {
        let status = to_status(&Overloaded);
        assert_eq!(status.code(), Code::Unavailable);
        let problem = Problem::from_status(&status);
        assert_eq!(problem.detail, "tenant t is using all of its connections");
        assert_eq!(problem.retry_after, Some(3), "rounded up to whole seconds");
        // Without the marker, a server fault's message stays hidden.
        let plain = tonic::Status::unavailable("tenant t is using all of its connections");
        assert_eq!(Problem::from_status(&plain).detail, "Service unavailable");
    }

    #[test]
    fn problem_renders_rfc9457_json_with_content_type_and_retry_after() {
        let response = Problem::new(ErrorKind::Unavailable, "the user service is down")
            .with_instance("/api/v1/users")
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let problem = Problem::new(ErrorKind::NotFound, "no user 42").with_instance("/x");
        let json = serde_json::to_value(problem.body()).expect("serialises");
        assert_eq!(json["type"], "urn:borough:problem:not-found");
        assert_eq!(json["title"], "Not found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["detail"], "no user 42");
        assert_eq!(json["instance"], "/x");
    }
}
