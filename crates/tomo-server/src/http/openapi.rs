//! The OpenAPI 3 document of `/api/v1`, generated from the code and served, without a token, at
//! `GET /api/v1/openapi.json`.
//!
//! Every operation is registered through `utoipa_axum::routes!` from a handler annotated with
//! `#[utoipa::path]`, so a route cannot exist without its documented path, method and
//! parameters (see [`crate::http::api::router`]). This module holds what the operations share: the
//! document's header and bearer security scheme, the path parameters, the error response sets
//! in the one error shape ([`crate::http::api::ErrorBody`]), and [`serve`], which splits the router
//! into routes and document and serves the document, generated once at start.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder, response::Response};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// Where the API is mounted (the document's paths include it).
pub const PREFIX: &str = "/api/v1";

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// The document's header: title, description, default security, shared schemas and tags. The
/// paths come from the router (see [`serve`]).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "tomo API",
        description = "The operator API of tomo's control plane: hosts, registration codes, \
            agent methods (containers, images, networks, volumes, system, agent), streams, Docker \
            events, metrics history and the audit trail. Every operation but this document needs \
            a bearer token (`Authorization: Bearer tomo_…`); a token's role (read, execute, admin) \
            decides what it may do. Every error answer has one shape: \
            `{\"error\": {\"code\", \"message\", \"rpc\"?}}`. Streams are newline-delimited JSON \
            (`application/x-ndjson`)."
    ),
    security(("bearer" = [])),
    modifiers(&BearerScheme),
    components(schemas(crate::http::api::ErrorBody)),
    tags(
        (name = "meta", description = "The API's own description."),
        (name = "codes", description = "Single-use registration codes for new agents."),
        (name = "hosts", description = "Registered hosts, their status and metrics history."),
        (name = "rpc", description = "Any agent method by name (JSON-RPC passthrough, or streamed)."),
        (name = "containers", description = "Docker containers on a host."),
        (name = "images", description = "Docker images on a host."),
        (name = "networks", description = "Docker networks on a host."),
        (name = "volumes", description = "Docker volumes on a host."),
        (name = "system", description = "Host-level operations: info, allowlisted commands, preflight, directories."),
        (name = "agent", description = "The agent process: settings and restart."),
        (name = "events", description = "Docker engine events, stored and live."),
        (name = "audit", description = "The audit trail of agents' decisions and API requests."),
        (name = "tokens", description = "API tokens: role, host scope, expiry; and host labels, which scopes name."),
        (name = "approvals", description = "Pending actions of tokens that require approval: poll, approve, deny."),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme `tomo_…` tokens use.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tomo_…")
                    .description(Some(
                        "An API token (`tomo_…`), shown once when created; the control plane \
                         keeps only its SHA-256.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Splits the documented routes into the router and the document, and adds the document's own
/// route, `GET /openapi.json`, outside `protected`'s layers (no token: it holds no secret and
/// clients read it before they have one). The JSON is generated once, here.
pub fn serve(protected: OpenApiRouter<Arc<AppState>>) -> Router<Arc<AppState>> {
    let (router, paths) = OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .merge(protected)
        .split_for_parts();
    let doc = document(paths);
    let json = match doc.to_json() {
        Ok(j) => j,
        // Only a schema that cannot be serialized gets here: a bug, not a run-time condition.
        Err(e) => panic!("the OpenAPI document does not serialize: {e}"),
    };
    router.layer(Extension(Document(Bytes::from(json))))
}

/// The full document: [`ApiDoc`] with the router's paths under [`PREFIX`].
fn document(paths: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi().nest(PREFIX, paths);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The serialized document, handed to [`openapi_json`].
#[derive(Debug, Clone)]
struct Document(Bytes);

/// This document.
///
/// The OpenAPI 3 description of every operation under `/api/v1`, generated from the code. No
/// token needed.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI document.", body = Object))
)]
async fn openapi_json(Extension(Document(json)): Extension<Document>) -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], json)
}

/// `{host}`: a host by id, hostname or unique id prefix.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct HostPath {
    /// Host id, hostname, or a unique prefix of the id.
    pub host: String,
}

/// `{host}` and `{container}`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ContainerPath {
    /// Host id, hostname, or a unique prefix of the id.
    pub host: String,
    /// Container id, id prefix or name.
    #[param(
        pattern = "^([0-9a-f]{1,64}|[a-zA-Z0-9][a-zA-Z0-9_.-]+)$",
        max_length = 255
    )]
    pub container: String,
}

/// `{host}` and `{name}` of a network or volume.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NamePath {
    /// Host id, hostname, or a unique prefix of the id.
    pub host: String,
    /// Network or volume name (or id).
    pub name: String,
}

/// `POST /hosts/{host}/system/{op}`.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SystemOpName {
    Exec,
    PreflightCheck,
    PrepareVolumes,
}

/// `POST /hosts/{host}/agent/{op}`.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum AgentOpName {
    Update,
    Restart,
}

/// A token's role (`tomo_proto::methods::Level` on the wire).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Role {
    Read,
    Execute,
    Admin,
}

/// Errors any authenticated operation can answer: the token check and store failures.
#[derive(Debug)]
pub struct AuthErrors;

/// [`AuthErrors`] plus the role check and host lookup of operations on one host.
#[derive(Debug)]
pub struct HostErrors;

/// [`HostErrors`] plus what a call to the agent can answer: bad params, the agent's checks and
/// policy, Docker, an offline host, a timeout.
#[derive(Debug)]
pub struct AgentErrors;

const UNAUTHORIZED: (&str, &str) = (
    "401",
    "`unauthorized`: the bearer token is missing, invalid, expired or revoked.",
);
const INTERNAL: (&str, &str) = ("500", "`internal`: the control plane failed (see its log).");
const THROTTLED: (&str, &str) = (
    "429",
    "`throttled`: too many failed token attempts from this address (`Retry-After` says when to \
     try again).",
);
const FORBIDDEN: (&str, &str) = (
    "403",
    "`forbidden`: the token's role is below what the operation needs; `out_of_scope`: the \
     operation needs a token without a host scope.",
);
const NOT_FOUND: (&str, &str) = (
    "404",
    "`not_found`: no such host, or it was removed, or it is outside the token's host scope.",
);
const AMBIGUOUS: (&str, &str) = (
    "409",
    "`ambiguous`: the host key matches several hosts; use the id.",
);

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[UNAUTHORIZED, THROTTLED, INTERNAL])
    }
}

impl IntoResponses for HostErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            AMBIGUOUS,
            THROTTLED,
            INTERNAL,
        ])
    }
}

impl IntoResponses for AgentErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (
                "400",
                "`bad_request`: the body, query or params are not what the method takes \
                 (`error.rpc` holds the agent's JSON-RPC error when it refused them).",
            ),
            UNAUTHORIZED,
            (
                "403",
                "`forbidden`: the token's role is below the method's level, or the agent's \
                 security checks refused the call; `stale_request`: the host judged the call \
                 out of date (a clock skew, or held back past its expiry), not run; `blocked`: \
                 the host policy refused the container options or the command.",
            ),
            (
                "404",
                "`not_found`: no such host, container, image, network or volume, or no such \
                 operation; `unknown_method`.",
            ),
            (
                "409",
                "`ambiguous`: the host key matches several hosts; use the id. `conflict`: the \
                 Docker engine refused the change as conflicting (a name in use, a running \
                 container).",
            ),
            (
                "429",
                "`throttled`: too many failed token attempts from this address; \
                 `rate_limited`: the agent's rate limit.",
            ),
            INTERNAL,
            (
                "501",
                "`unknown_method`: the agent does not serve that method.",
            ),
            (
                "502",
                "`docker`: the Docker engine failed; `connection_lost`: the session ended \
                 during the call; `agent_error`: any other error of the agent.",
            ),
            (
                "503",
                "`host_offline`: the host has no session; `agent_shutting_down`; \
                 `agent_disk`: the agent cannot record the request (its disk).",
            ),
            ("504", "`timeout`: the agent did not answer in time."),
        ])
    }
}

/// The answer of a call that waits for a human: a token that requires approval asked for an
/// execute or admin method (see [`crate::approvals::gate`]). Nothing reached the host.
#[derive(Debug)]
pub struct Pending;

impl IntoResponses for Pending {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let schema = ObjectBuilder::new()
            .property(
                "pending_action",
                ObjectBuilder::new().description(Some(
                    "The action as `GET /api/v1/approvals/{id}` shows it: `id`, `status`, \
                     `summary`, `host_id`, `method`, `params`, `requested_by`, times.",
                )),
            )
            .required("pending_action")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .build();
        let response = ResponseBuilder::new()
            .description(
                "`approval_required`: this token requires approval, so the call became a \
                 pending action; it runs once an admin approves it (`tomo approve ID`), and \
                 `GET /api/v1/approvals/{id}` tells its status and result.",
            )
            .content("application/json", Content::new(Some(schema)))
            .build();
        BTreeMap::from([("202".to_owned(), RefOr::T(response))])
    }
}

/// Error responses in the one error shape.
fn errors(list: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build();
            ((*status).to_owned(), RefOr::T(response))
        })
        .collect()
}

/// The schema of the agent's JSON-RPC error inside an error answer (`error.rpc`).
pub(crate) fn rpc_error_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .description(Some(
            "The agent's JSON-RPC error, when the failure is the agent's answer.",
        ))
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some("JSON-RPC error code (docs/protocol.md).")),
        )
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .description(Some("Details, when the agent gives any.")),
        )
        .build()
}
