//! Whole-tenant and many-user routes, each over a gRPC stream:
//!
//! - `GET /api/v1/users:export`: server streaming -> NDJSON (or CSV with `Accept: text/csv`),
//!   written as rows arrive, so memory stays constant; the stream stops when the client
//!   goes away. A failure midway cuts the response off without its final chunk, so the
//!   client sees an incomplete transfer, never a silently short file.
//! - `POST /api/v1/users:import`: NDJSON body -> client streaming, line by line as the body
//!   arrives; the reply counts what was created and lists every rejected line.
//! - `POST /api/v1/users:batchGet`: `{"ids": [...]}` -> bidirectional stream; results in
//!   request order.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use borough_error::{ErrorKind, Problem};
use borough_proto::query::v1::batch_get_error::Reason;
use borough_proto::query::v1::batch_get_users_response::Result as BatchResult;
use borough_proto::query::v1::{BatchGetUsersRequest, ExportUsersRequest};
use borough_proto::time::to_rfc3339;
use borough_proto::user::v1::{ImportFailedChunk, ImportRejection, ImportUsersRequest, User};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::users::UserDto;
use super::with_headers;
use crate::auth::Tenant;
use crate::extract::ApiJson;
use crate::grpc::{self, Deadline};
use crate::state::AppState;
use borough_error::ProblemBody;

/// The most ids one batchGet takes.
pub const MAX_BATCH_IDS: usize = 1000;
/// The longest import line.
pub const MAX_IMPORT_LINE: usize = 64 * 1024;

/// The media types an import body may have.
const NDJSON_TYPES: [&str; 3] = [
    "application/x-ndjson",
    "application/jsonl",
    "application/json-lines",
];

fn stream_deadline(state: &AppState) -> Deadline {
    Deadline(Instant::now() + state.stream_timeout)
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|t| t.split(';').next().is_some_and(|t| t.trim() == "text/csv"))
        })
}

/// One CSV field: quoted when it holds a comma, a quote or a line break. A field a
/// spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return: OWASP's CSV injection rule) gets a leading `'`, so it is shown as
/// text; the JSON export keeps the value as it is.
fn csv_field(out: &mut String, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || value.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    if quote {
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

pub const CSV_HEADER: &str = "id,name,email,version,created_at,updated_at\r\n";

fn csv_row(info: &User) -> String {
    let mut line = String::with_capacity(128);
    csv_field(&mut line, &info.id);
    line.push(',');
    csv_field(&mut line, &info.name);
    line.push(',');
    csv_field(&mut line, &info.email);
    line.push(',');
    line.push_str(&info.version.to_string());
    line.push(',');
    line.push_str(&to_rfc3339(info.created_at.as_ref()));
    line.push(',');
    line.push_str(&to_rfc3339(info.updated_at.as_ref()));
    line.push_str("\r\n");
    line
}

fn ndjson_row(info: User) -> Result<Bytes, std::io::Error> {
    let mut line = serde_json::to_vec(&UserDto::from(info)).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// `GET /api/v1/users:export` -> every user of the tenant, NDJSON or CSV.
#[utoipa::path(get, path = "/api/v1/users:export", operation_id = "exportUsers", tag = "bulk",
    summary = "Export every user of the tenant, streamed",
    description = "NDJSON (one user per line), or CSV with `Accept: text/csv` (cells a \
                   spreadsheet would run as formulas start with `'`). A failure midway cuts the \
                   response off without its final chunk: a client never sees a short file as \
                   complete.",
    security(("apiKey" = [])),
    params(("Accept" = Option<String>, Header, description = "`text/csv` for CSV")),
    responses(
        (status = 200, description = "Every user", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"))),
    ))]
pub async fn export(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let csv = wants_csv(&headers);
    let request = grpc::request(
        ExportUsersRequest {},
        Some(&tenant),
        stream_deadline(&state),
    );
    let rows = state
        .query
        .clone()
        .export_users(request)
        .await?
        .into_inner();
    let tenant_id = tenant.tenant_id;
    let body = rows.map(move |row| match row {
        Ok(info) if csv => Ok(Bytes::from(csv_row(&info))),
        Ok(info) => ndjson_row(info),
        Err(status) => {
            tracing::warn!(tenant = %tenant_id, code = ?status.code(), message = status.message(), "export failed midway");
            Err(std::io::Error::other(status.message().to_owned()))
        }
    });
    let (content_type, body) = if csv {
        let header =
            futures_util::stream::once(async { Ok(Bytes::from_static(CSV_HEADER.as_bytes())) });
        (
            "text/csv; charset=utf-8",
            Body::from_stream(header.chain(body)),
        )
    } else {
        ("application/x-ndjson", Body::from_stream(body))
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// One NDJSON import line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    name: String,
    email: String,
}

/// A line that was not imported, and why (at most 200 characters).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedLine {
    pub line: u64,
    pub reason: String,
}

/// Lines imported in one transaction that failed: none of its rows were created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedChunk {
    pub first_line: u64,
    pub last_line: u64,
    pub rows: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Non-empty lines read.
    pub received: u64,
    pub created: u64,
    /// The first rejected lines (`BOROUGH_IMPORT_REPORT_LIMIT`, 1000), in line order.
    pub rejected: Vec<RejectedLine>,
    /// Every rejected line, listed or not.
    pub rejected_count: u64,
    /// The first chunks whose transaction failed (none of their rows were created).
    pub failed_chunks: Vec<FailedChunk>,
    /// Every failed chunk, listed or not.
    pub failed_chunk_count: u64,
}

/// The lines rejected here (not JSON, too long, not UTF-8): the first `limit` in full
/// (they arrive in line order), and a count of all.
struct LocalRejections {
    limit: usize,
    listed: Vec<RejectedLine>,
    count: u64,
}

impl LocalRejections {
    fn push(&mut self, line: u64, reason: String) {
        self.count += 1;
        if self.listed.len() < self.limit {
            self.listed.push(RejectedLine {
                line,
                reason: borough_proto::user::bounded_reason(reason),
            });
        }
    }
}

/// Splits a byte stream into lines as it arrives; `MAX_IMPORT_LINE` bounds each.
struct Lines {
    pending: Vec<u8>,
    /// The current line is too long: skip to its end.
    overlong: bool,
    number: u64,
}

enum Line {
    Text(u64, String),
    Bad(u64, String),
}

impl Lines {
    fn new() -> Self {
        Lines {
            pending: Vec::new(),
            overlong: false,
            number: 0,
        }
    }

    fn push(&mut self, chunk: &[u8], out: &mut Vec<Line>) {
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(at);
            self.pending.extend_from_slice(head);
            self.end_line(out);
            rest = &tail[1..];
        }
        if !self.overlong {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_IMPORT_LINE {
                self.overlong = true;
                self.pending.clear();
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<Line>) {
        self.number += 1;
        let bytes = std::mem::take(&mut self.pending);
        if std::mem::take(&mut self.overlong) || bytes.len() > MAX_IMPORT_LINE {
            out.push(Line::Bad(
                self.number,
                format!("the line is longer than {MAX_IMPORT_LINE} bytes"),
            ));
            return;
        }
        match String::from_utf8(bytes) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => out.push(Line::Text(self.number, text)),
            Err(_) => out.push(Line::Bad(self.number, "the line is not UTF-8".to_owned())),
        }
    }

    fn finish(mut self, out: &mut Vec<Line>) {
        if !self.pending.is_empty() || self.overlong {
            self.end_line(out);
        }
    }
}

/// `POST /api/v1/users:import` (NDJSON: `{"name": ..., "email": ...}` per line).
#[utoipa::path(post, path = "/api/v1/users:import", operation_id = "importUsers", tag = "bulk",
    summary = "Import users from NDJSON, streamed",
    description = "One `{\"name\", \"email\"}` per line (at most 64 KiB each), committed 500 \
                   rows per transaction. The report lists the first rejected lines in full \
                   (`BOROUGH_IMPORT_REPORT_LIMIT`) and counts them all.",
    security(("apiKey" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Each chunk is recorded under `<key>#<n>`: importing the same file again \
                       with the same key replays committed chunks")),
    request_body(content = String, content_type = "application/x-ndjson",
        description = "NDJSON lines; also accepted as application/jsonl"),
    responses(
        (status = 200, description = "The report", body = ImportReport, headers(
            ("Idempotent-Replayed" = Option<String>, description = "`true` when a chunk was replayed"))),
        (status = 400, description = "The body could not be read", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The key is in use", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Over BOROUGH_IMPORT_BODY_LIMIT", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not NDJSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The key was used with other rows", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn import(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    request: Request,
) -> Result<Response, Problem> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !NDJSON_TYPES.contains(&content_type.as_str()) {
        return Err(Problem::new(
            ErrorKind::UnsupportedMediaType,
            "an import body is NDJSON, sent with Content-Type: application/x-ndjson",
        ));
    }
    let idempotency_key = request
        .headers()
        .get(borough_proto::IDEMPOTENCY_KEY)
        .cloned();
    let (rows, rows_in) = tokio::sync::mpsc::channel::<ImportUsersRequest>(256);
    let call = {
        let mut users = state.users.clone();
        let mut request = grpc::request(
            tokio_stream::wrappers::ReceiverStream::new(rows_in),
            Some(&tenant),
            stream_deadline(&state),
        );
        super::users::pass_idempotency_key(idempotency_key.as_ref(), request.metadata_mut())?;
        tokio::spawn(async move { users.import_users(request).await })
    };

    // Read the body line by line as it arrives, passing good rows on at once.
    let mut local = LocalRejections {
        limit: state.import_report_limit,
        listed: Vec::new(),
        count: 0,
    };
    let mut received = 0_u64;
    let mut lines = Lines::new();
    let mut ready = Vec::new();
    let mut body = request.into_body().into_data_stream();
    let mut upload_error = None;
    loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                upload_error = Some(e);
                break;
            }
            None => break,
        };
        lines.push(&chunk, &mut ready);
        if !forward(&mut ready, &rows, &mut local, &mut received).await {
            break; // The service ended the call early: its answer says why.
        }
    }
    if let Some(e) = upload_error {
        // Abandon the call: the service sees the stream fail and commits no more.
        call.abort();
        // tower-http's limit is http-body-util's `Limited`: its error, somewhere in the
        // chain axum wraps it in.
        let too_large =
            std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        let (kind, detail) = if too_large {
            (
                ErrorKind::PayloadTooLarge,
                "the import body is over BOROUGH_IMPORT_BODY_LIMIT".to_owned(),
            )
        } else {
            (
                ErrorKind::InvalidArgument,
                format!("reading the import body failed: {e}"),
            )
        };
        return Err(Problem::new(
            kind,
            format!(
                "{detail}; chunks committed before the failure are kept (importing the file \
                 again rejects their lines as duplicates)"
            ),
        ));
    }
    lines.finish(&mut ready);
    forward(&mut ready, &rows, &mut local, &mut received).await;
    drop(rows);

    let reply = match call.await {
        Ok(reply) => reply?,
        Err(_) => return Err(Problem::new(ErrorKind::Internal, "the import call failed")),
    };
    let replayed = super::users::was_replayed(reply.metadata());
    let reply = reply.into_inner();
    let mut rejected: Vec<RejectedLine> = reply
        .rejected
        .into_iter()
        .map(|ImportRejection { line, reason }| RejectedLine {
            line,
            reason: borough_proto::user::bounded_reason(reason),
        })
        .chain(local.listed)
        .collect();
    rejected.sort_by_key(|r| r.line);
    rejected.truncate(state.import_report_limit);
    let report = ImportReport {
        received,
        created: reply.created,
        rejected,
        rejected_count: reply.rejected_count + local.count,
        failed_chunk_count: reply.failed_chunk_count,
        failed_chunks: reply
            .failed_chunks
            .into_iter()
            .map(
                |ImportFailedChunk {
                     first_line,
                     last_line,
                     rows,
                     reason,
                 }| FailedChunk {
                    first_line,
                    last_line,
                    rows,
                    reason,
                },
            )
            .collect(),
    };
    let mut headers = HeaderMap::new();
    if replayed {
        headers.insert(
            super::users::IDEMPOTENT_REPLAYED_HEADER,
            http::HeaderValue::from_static("true"),
        );
    }
    Ok(with_headers(StatusCode::OK, headers, report))
}

/// Parses ready lines; sends the good ones to the service, keeps the bad ones. False when
/// the service stopped listening.
async fn forward(
    ready: &mut Vec<Line>,
    rows: &tokio::sync::mpsc::Sender<ImportUsersRequest>,
    rejected: &mut LocalRejections,
    received: &mut u64,
) -> bool {
    for line in ready.drain(..) {
        *received += 1;
        match line {
            Line::Bad(line, reason) => rejected.push(line, reason),
            Line::Text(line, text) => match serde_json::from_str::<ImportLine>(&text) {
                Ok(ImportLine { name, email }) => {
                    let row = ImportUsersRequest { line, name, email };
                    if rows.send(row).await.is_err() {
                        return false;
                    }
                }
                Err(e) => rejected.push(
                    line,
                    format!("not a JSON object with \"name\" and \"email\": {e}"),
                ),
            },
        }
    }
    true
}

/// The users to read.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGetBody {
    /// 1 to 1000 user ids.
    pub ids: Vec<String>,
}

/// Why one id of a batch has no user: the status a single GET would have had.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchError {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
}

/// One id's result: `user`, or `error`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchItem {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BatchError>,
}

/// One result per id, in request order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchGetReply {
    pub results: Vec<BatchItem>,
}

/// `POST /api/v1/users:batchGet` with `{"ids": [...]}` (1 to 1000) -> one result per id, in
/// request order: `user`, or `error` with the status a single GET would have had.
#[utoipa::path(post, path = "/api/v1/users:batchGet", operation_id = "batchGetUsers", tag = "bulk",
    summary = "Read many users by id",
    security(("apiKey" = [])),
    request_body = BatchGetBody,
    responses(
        (status = 200, description = "One result per id, in order", body = BatchGetReply),
        (status = 400, description = "0 or more than 1000 ids", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn batch_get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    ApiJson(body): ApiJson<BatchGetBody>,
) -> Result<Response, Problem> {
    if body.ids.is_empty() || body.ids.len() > MAX_BATCH_IDS {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            format!("ids must hold 1 to {MAX_BATCH_IDS} user ids"),
        ));
    }
    let count = body.ids.len();
    let requests = tokio_stream::iter(
        body.ids
            .iter()
            .map(|id| BatchGetUsersRequest {
                user_id: id.clone(),
            })
            .collect::<Vec<_>>(),
    );
    let request = grpc::request(requests, Some(&tenant), deadline);
    let mut replies = state
        .query
        .clone()
        .batch_get_users(request)
        .await?
        .into_inner();
    let mut results: Vec<Option<BatchItem>> = (0..count).map(|_| None).collect();
    while let Some(reply) = replies.message().await? {
        let index = reply.index as usize;
        let item = match reply.result {
            Some(BatchResult::User(info)) => BatchItem {
                id: reply.user_id,
                user: Some(info.into()),
                error: None,
            },
            Some(BatchResult::Error(error)) => {
                let kind = match Reason::try_from(error.reason) {
                    Ok(Reason::NotFound) => ErrorKind::NotFound,
                    Ok(Reason::InvalidId) => ErrorKind::InvalidArgument,
                    Ok(Reason::Unavailable) => ErrorKind::Unavailable,
                    _ => ErrorKind::Internal,
                };
                BatchItem {
                    id: reply.user_id,
                    user: None,
                    error: Some(BatchError {
                        status: kind.http_status().as_u16(),
                        title: kind.title(),
                        detail: error.message,
                    }),
                }
            }
            None => continue,
        };
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(item);
        }
    }
    let results: Option<Vec<BatchItem>> = results.into_iter().collect();
    let results = results.ok_or_else(|| {
        Problem::new(ErrorKind::Internal, "the query service left ids unanswered")
    })?;
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        BatchGetReply { results },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(u64, Result<String, String>)> {
        let mut lines = Lines::new();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, &mut out);
        }
        lines.finish(&mut out);
        out.into_iter()
            .map(|l| match l {
                Line::Text(n, t) => (n, Ok(t)),
                Line::Bad(n, r) => (n, Err(r)),
            })
            .collect()
    }

    #[test]
    fn lines_split_across_chunks_keep_their_numbers_and_skip_blank_lines() {
        let out = split(&[b"{\"a\":1}\n{\"b\"", b":2}\n\n  \n{\"c\":3}"]);
        assert_eq!(
            out,
            vec![
                (1, Ok("{\"a\":1}".to_owned())),
                (2, Ok("{\"b\":2}".to_owned())),
                (5, Ok("{\"c\":3}".to_owned())),
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_rejected_without_buffering_it_and_the_next_line_survives() {
        let long = vec![b'x'; MAX_IMPORT_LINE + 10];
        let out = split(&[
            &long[..MAX_IMPORT_LINE / 2],
            &long[MAX_IMPORT_LINE / 2..],
            b"\nok",
        ]);
        assert!(matches!(&out[0], (1, Err(reason)) if reason.contains("longer")));
        assert_eq!(out[1], (2, Ok("ok".to_owned())));
    }

    #[test]
    fn csv_fields_with_commas_quotes_or_newlines_are_quoted() {
        let info = User {
            id: "id".into(),
            name: "Lovelace, \"Ada\"".into(),
            email: "ada@example.com".into(),
            version: 2,
            created_at: None,
            updated_at: None,
        };
        let row = csv_row(&info);
        assert!(
            row.starts_with("id,\"Lovelace, \"\"Ada\"\"\",ada@example.com,2,"),
            "{row}"
        );
        assert!(row.ends_with("\r\n"));
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_as_formulas_are_neutralised() {
        for (value, cell) in [
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("+1+1", "\"'+1+1\""),
            ("-2", "\"'-2\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\tcmd", "\"'\tcmd\""),
            ("\rcmd", "\"'\rcmd\""),
            ("Ada", "Ada"),
            ("Ada-Lovelace", "Ada-Lovelace"),
        ] {
            let mut out = String::new();
            csv_field(&mut out, value);
            assert_eq!(out, cell, "{value:?}");
        }
    }

    #[test]
    fn csv_is_chosen_only_when_accepted() {
        let mut headers = HeaderMap::new();
        assert!(!wants_csv(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/csv;q=0.9"),
        );
        assert!(wants_csv(&headers));
    }
}
