//! The gateway's contract: an OpenAPI 3.1 document generated from the handlers' own types
//! (`utoipa`), served at `GET /openapi.json`.
//!
//! Each handler declares its own parameters, bodies and specific responses; what every
//! operation of a scope shares is added here once ([`Shared`]): problem+json for any
//! error (`default`), 503 with `Retry-After` (load shedding, a backend down), 504 (the
//! deadline), 413 on bodies, 401 and 429 (with `Retry-After`, and for tenants `RateLimit`
//! and `RateLimit-Policy` on every answer), and `x-request-id` on every response.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Borough",
        description = "A multi-tenant platform's REST API: a tenant's users and configuration \
                       (API key), and the platform admin API (admin token). Errors are RFC 9457 \
                       problem+json with a `trace_id` to quote.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::hello,
        routes::openapi_json,
        routes::users::create,
        routes::users::list,
        routes::users::get,
        routes::users::update,
        routes::users::delete,
        routes::bulk::batch_get,
        routes::bulk::export,
        routes::bulk::import,
        routes::config::tenant_namespace,
        routes::config::tenant_watch,
        routes::config::tenant_schema,
        routes::config::tenant_get_schema,
        routes::config::tenant_get_key,
        routes::config::tenant_put_key,
        routes::config::tenant_delete_key,
        routes::config::tenant_history,
        routes::config::tenant_rollback,
        routes::config::status,
        routes::config::platform_namespace,
        routes::config::platform_watch,
        routes::config::platform_schema,
        routes::config::platform_get_schema,
        routes::config::platform_get_key,
        routes::config::platform_put_key,
        routes::config::platform_delete_key,
        routes::config::platform_history,
        routes::config::platform_rollback,
        routes::config::admin_tenant_namespace,
        routes::config::admin_tenant_namespaces,
        routes::config::tenant_namespaces,
        routes::config::admin_tenant_get_schema,
        routes::config::admin_tenant_schema,
        routes::config::admin_tenant_get_key,
        routes::config::admin_tenant_put_key,
        routes::config::admin_tenant_delete_key,
        routes::config::admin_tenant_history,
        routes::config::admin_tenant_rollback,
        routes::admin::create_tenant,
        routes::admin::list_tenants,
        routes::admin::get_tenant,
        routes::admin::delete_tenant,
        routes::admin::issue_key,
        routes::admin::revoke_key,
        routes::admin::get_limits,
        routes::admin::put_limits,
        routes::moves::move_tenant,
        routes::moves::get_move,
        routes::moves::cancel_move,
        crate::console::status::status,
        crate::console::status::watch,
    ),
    modifiers(&Shared),
    tags(
        (name = "public", description = "No credential needed"),
        (name = "users", description = "A tenant's users (API key)"),
        (name = "bulk", description = "Many users at once, streamed (API key)"),
        (name = "config", description = "A tenant's own configuration (API key)"),
        (name = "admin-tenants", description = "Tenants and their keys (admin token)"),
        (name = "admin-config", description = "Borough's own settings (admin token)"),
        (name = "admin-status", description = "Live status: config clients, backends, route traffic (admin token)"),
    )
)]
pub struct ApiDoc;

/// The document as served: JSON, built once.
pub fn document() -> bytes::Bytes {
    let doc = ApiDoc::openapi();
    bytes::Bytes::from(doc.to_json().unwrap_or_else(|_| "{}".to_owned()))
}

/// What every operation of a scope shares (see the module docs).
struct Shared;

const PROBLEM: &str = "application/problem+json";

fn problem(description: &str, headers: &[(&str, &str)]) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM,
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    for (name, description) in headers {
        if let RefOr::T(header) = header(Type::String, description) {
            response = response.header(*name, header);
        }
    }
    RefOr::T(response.build())
}

fn header(kind: Type, description: &str) -> RefOr<utoipa::openapi::header::Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(
                utoipa::openapi::schema::ObjectBuilder::new().schema_type(kind),
            ))
            .description(Some(description))
            .build(),
    )
}

fn add(operation: &mut Operation, status: &str, response: RefOr<Response>) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert(response);
}

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                "apiKey",
                "A tenant's API key, `bk_<prefix>_<secret>`: it alone decides the tenant",
            ),
            (
                "adminToken",
                "The platform admin token (BOROUGH_ADMIN_TOKEN)",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(description))
                        .build(),
                ),
            );
        }
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let scheme = operation
                    .security
                    .as_ref()
                    .and_then(|s| s.first())
                    .and_then(|s| serde_json::to_value(s).ok())
                    .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()));
                let retry = [("Retry-After", "Seconds to wait")];
                add(
                    operation,
                    "503",
                    problem(
                        "Shedding load, or a backend (service or database) is down",
                        &retry,
                    ),
                );
                add(
                    operation,
                    "504",
                    problem("The request outlived its deadline", &[]),
                );
                if operation.request_body.is_some() {
                    add(
                        operation,
                        "413",
                        problem("The body is larger than allowed", &[]),
                    );
                    add(
                        operation,
                        "415",
                        problem("The body's media type is not accepted", &[]),
                    );
                }
                match scheme.as_deref() {
                    Some("apiKey") => {
                        add(
                            operation,
                            "401",
                            problem("No API key, or one that is not valid", &[]),
                        );
                        add(
                            operation,
                            "429",
                            problem(
                                "The tenant is over its rate limit, or its source over its failed \
                             authentications",
                                &[
                                    ("Retry-After", "Seconds to wait"),
                                    ("RateLimit", "\"tenant\";r=<left>;t=<seconds to reset>"),
                                    (
                                        "RateLimit-Policy",
                                        "\"tenant\";q=<per second>;w=1;burst=<burst>",
                                    ),
                                ],
                            ),
                        );
                        for (status, response) in operation.responses.responses.iter_mut() {
                            if status.starts_with('2')
                                && let RefOr::T(response) = response
                            {
                                response.headers.insert(
                                    "RateLimit".to_owned(),
                                    header(
                                        Type::String,
                                        "\"tenant\";r=<left>;t=<seconds to reset>",
                                    ),
                                );
                                response.headers.insert(
                                    "RateLimit-Policy".to_owned(),
                                    header(
                                        Type::String,
                                        "\"tenant\";q=<per second>;w=1;burst=<burst>",
                                    ),
                                );
                            }
                        }
                    }
                    Some("adminToken") => {
                        add(
                            operation,
                            "401",
                            problem("No admin token, or a wrong one", &[]),
                        );
                        add(
                            operation,
                            "429",
                            problem(
                                "This source is over its failed authentications",
                                &[("Retry-After", "Seconds to wait")],
                            ),
                        );
                    }
                    _ => {}
                }
                add(
                    operation,
                    "default",
                    problem("Any other failure, as problem+json", &[]),
                );
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response.headers.insert(
                            "x-request-id".to_owned(),
                            header(Type::String, "The request's id: the caller's when short and plain, else a new one"),
                        );
                    }
                }
            }
        }
    }
}
