//! The operator API under `/api/v1`: bearer-token authentication in one middleware in front of
//! every route, and one JSON error shape: `{"error": {"code": "...", "message": "..."}}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::{Extension, Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tomo_common::now_ms;
use tomo_proto::methods::Level;
use tomo_proto::rpc::{Id, Response};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::call::{Admission, CallRequest, Hosts, Mode};
use crate::core::{Refusal, rfc3339};
use crate::store::{HostRecord, StoreError};
use crate::{AppState, auth};

/// The routes, all behind `require_token` but the OpenAPI document's. Each is registered
/// with `routes!` from its documented handler, so the document ([`crate::http::openapi`]) lists every
/// route, and only those.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    // Routes that reach a host: each call passes `approvals::gate`, which turns a change by a
    // token that requires approval into a pending action (the fan-out is read-only).
    let host_calls = OpenApiRouter::new()
        .routes(routes!(call_host))
        .merge(crate::http::api_host::routes())
        .merge(crate::http::api_fleet::routes());
    // Everything else: a change to the control plane cannot wait for a human, so a token that
    // requires approval may only read here (`refuse_unapproved_changes`, issue 12.3). A new route
    // lands here unless it is a host call.
    let control_plane = OpenApiRouter::new()
        .merge(crate::http::api_codes::routes())
        .routes(routes!(list_hosts))
        .routes(routes!(show_host, remove_host))
        .routes(routes!(host_metrics))
        .routes(routes!(crate::http::audit::list))
        .merge(crate::http::api_approvals::routes())
        .merge(crate::http::api_tokens::routes())
        .route_layer(axum::middleware::from_fn(refuse_unapproved_changes));
    let protected = control_plane
        .merge(host_calls)
        // Innermost: hands the token's principal to the audit layer through the response.
        .layer(axum::middleware::from_fn(
            crate::http::audit::capture_principal,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        // Outermost: records every request and answer, 401s from the token check included.
        .layer(axum::middleware::from_fn_with_state(
            crate::http::audit::Recorder::new(state),
            crate::http::audit::record,
        ));
    crate::http::openapi::serve(protected)
}

/// A boolean query parameter, parsed as every route parses one (issue 14): `true` or `false`,
/// absent is `false`, anything else is 400 (`follow=False` and `follow=1` were taken on one
/// route and refused on another).
pub(crate) fn query_bool(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "{name} must be true or false (got {v:?})"
        ))),
    }
}

/// The page of a stored list (events, audit): `limit` (1–10000, 100 by default) and `after`
/// (only entries after this one, named `what` in the error: "an event's seq", "a record id").
pub(crate) fn query_page(
    q: &std::collections::HashMap<String, String>,
    what: &str,
) -> Result<(u32, Option<i64>), ApiError> {
    let limit: u32 = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be 1–10000"))?,
    };
    let after: Option<i64> = match q.get("after") {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("after must be {what} (a number)")))?,
        ),
    };
    Ok((limit, after))
}

/// The answer to a path no route serves: 404 in the error shape (it was an empty body).
pub(crate) async fn no_route(uri: http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such route: {} (the routes are listed in /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

/// The answer to a method a route does not take: 405 in the error shape.
pub(crate) async fn no_method(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not a method of {} (the routes are listed in /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The agent's JSON-RPC error, when the failure is the agent's answer.
    rpc: Option<tomo_proto::rpc::RpcError>,
    /// A whole body instead of the error shape: the pending action of a call that waits for
    /// approval (202). Boxed: it is rare, and keeps `Result<_, ApiError>` small.
    body: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            rpc: None,
            body: None,
        }
    }

    /// Not an error: the call became a pending action waiting for a human (202 Accepted, body
    /// `{"pending_action": …, "message": …}`). Returned through the error path so that every
    /// route that reaches a host stops there.
    pub fn pending(action: Value) -> Self {
        let message = "this token requires approval: the call waits for a human \
                       (`tomo approve ID` / `tomo deny ID`); poll GET /api/v1/approvals/ID";
        Self {
            status: StatusCode::ACCEPTED,
            code: "approval_required",
            message: message.into(),
            rpc: None,
            body: Some(Box::new(
                json!({"pending_action": action, "message": message}),
            )),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// An agent's (or the routing's) JSON-RPC error as an HTTP error.
    pub fn from_rpc(e: tomo_proto::rpc::RpcError) -> Self {
        use tomo_proto::rpc::code as c;
        let reason = e
            .data
            .as_ref()
            .and_then(|d| d.get("reason"))
            .and_then(|r| r.as_str());
        let (status, code) = match (e.code, reason) {
            // Not a permission problem: a clock or the network (issue 13.7), the agent's disk
            // (issue 13.8); each has its own code so that clients say what happened.
            (c::SECURITY, Some("stale" | "expired")) => (StatusCode::FORBIDDEN, "stale_request"),
            (c::SECURITY, Some("replay_log")) => (StatusCode::SERVICE_UNAVAILABLE, "agent_disk"),
            // The engine refused the change as conflicting with the container's state or name.
            (c::DOCKER, _)
                if e.data.as_ref().and_then(|d| d.get("status")) == Some(&json!(409)) =>
            {
                (StatusCode::CONFLICT, "conflict")
            }
            (code, _) => Self::status_of(code),
        };
        Self {
            status,
            code,
            message: e.message.clone(),
            rpc: Some(e),
            body: None,
        }
    }

    /// The HTTP status and error code of a JSON-RPC error code.
    fn status_of(code: i64) -> (StatusCode, &'static str) {
        use tomo_proto::rpc::code as c;
        match code {
            c::INVALID_PARAMS | c::INVALID_REQUEST | c::PARSE_ERROR => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            c::METHOD_NOT_FOUND => (StatusCode::NOT_IMPLEMENTED, "unknown_method"),
            c::NOT_FOUND => (StatusCode::NOT_FOUND, "not_found"),
            c::SECURITY => (StatusCode::FORBIDDEN, "forbidden"),
            c::CONTAINER_BLOCKED | c::COMMAND_BLOCKED => (StatusCode::FORBIDDEN, "blocked"),
            c::RATE_LIMITED => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            c::DOCKER => (StatusCode::BAD_GATEWAY, "docker"),
            c::HOST_OFFLINE => (StatusCode::SERVICE_UNAVAILABLE, "host_offline"),
            c::TIMEOUT => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            c::CONNECTION_LOST => (StatusCode::BAD_GATEWAY, "connection_lost"),
            c::SHUTTING_DOWN => (StatusCode::SERVICE_UNAVAILABLE, "agent_shutting_down"),
            _ => (StatusCode::BAD_GATEWAY, "agent_error"),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        if let Some(body) = self.body {
            return (self.status, Json(body)).into_response();
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                rpc: self.rpc,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// The body of every error answer of the API: `{"error": {"code", "message", "rpc"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `unauthorized`, `forbidden`, `not_found`, `bad_request`,
    /// `host_offline`, `timeout`, … (the responses of each operation list theirs).
    pub code: &'static str,
    /// For a human.
    pub message: String,
    /// The agent's JSON-RPC error, when the failure is the agent's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::http::openapi::rpc_error_schema)]
    pub rpc: Option<tomo_proto::rpc::RpcError>,
}

/// A refusal of the control plane, as the API answers it (the same code on every route).
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match &r {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnknownMethod(_) | Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Forbidden { .. }
            | Refusal::NotStreamOwner(_)
            | Refusal::OutOfScope
            | Refusal::Denied(_) => StatusCode::FORBIDDEN,
            Refusal::NotPending(_) => StatusCode::CONFLICT,
            Refusal::Ambiguous(_) => StatusCode::CONFLICT,
            // As the agent's own answer to such params would have been.
            Refusal::InvalidParams(e) => return Self::from_rpc(e.clone()),
            Refusal::Store(_) => {
                let Refusal::Store(e) = r else { unreachable!() };
                return e.into();
            }
        };
        Self::new(status, r.code(), r.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            StoreError::Full => {
                tracing::error!("store failure: the disk holding tomo.db is full");
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    "the control plane's disk is full: nothing was changed; free space in its \
                     data directory and retry (tomo recovers by itself)",
                )
            }
            StoreError::Unavailable(e) => {
                tracing::error!(error = %e, "store failure: I/O error");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the control plane could not write its database (an I/O error): nothing was \
                     changed; see its log, then retry",
                )
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the control plane's log",
                )
            }
        }
    }
}

pub use crate::core::{IdempotencyKey, Principal, role_name};

/// The request's `Idempotency-Key`: `Ok(None)` without one, an error naming the rule for one
/// that is not 1 to 64 of `A-Z a-z 0-9 - _`.
pub(crate) fn idempotency_key(
    headers: &http::HeaderMap,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if tomo_proto::rpc::valid_idempotency_key(k) => {
            Ok(Some(IdempotencyKey(k.to_owned())))
        }
        _ => Err(ApiError::bad_request(
            "the Idempotency-Key header must be 1 to 64 of A-Z a-z 0-9 - _",
        )),
    }
}

/// A token that requires approval reads the control plane's own routes, and changes nothing
/// there: minting tokens or codes, relabelling or removing hosts and deciding approvals would
/// each let it act without a human (issue 12.3). Sits behind [`require_token`], which puts the
/// principal in the request.
async fn refuse_unapproved_changes(req: Request, next: Next) -> HttpResponse {
    let reads = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let gated = req
        .extensions()
        .get::<Principal>()
        .is_none_or(|p| p.token.requires_approval);
    if gated && !reads {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token requires approval, and a change to the control plane (tokens, codes, \
             labels, hosts, approvals) cannot wait for one: use a token that does not require \
             approval",
        )
        .into_response();
    }
    next.run(req).await
}

pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> HttpResponse {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    // Only a token that was presented counts as a guess: a request without one (a health
    // checker, a browser tab, a schema fuzzer) learns nothing and blocks nobody (issue 12.6).
    let raw = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer_token);
    let Some(raw) = raw else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token (Authorization: Bearer …)",
        )
        .into_response();
    };
    match auth::check_token(&*state.store, raw).await {
        // A valid token is served even from a blocked address: the block is the guesser's,
        // not its neighbours' behind the same NAT.
        Ok(Some(token)) => {
            // The connection is an operator's: it leaves its source's unauthenticated share.
            if let Some(slot) = req.extensions().get::<crate::admission::Unauthenticated>() {
                slot.authenticated();
            }
            state.last_use.note(&token.id, now_ms());
            let trace = req
                .extensions()
                .get::<crate::audit::TraceId>()
                .map(|t| t.0.clone());
            // Only writes run commands; a read ignores the header.
            let key = if req.method() == http::Method::GET {
                None
            } else {
                match idempotency_key(req.headers()) {
                    Ok(k) => k,
                    Err(e) => return e.into_response(),
                }
            };
            req.extensions_mut().insert(Principal {
                token,
                trace_id: trace,
                idempotency_key: key,
            });
            next.run(req).await
        }
        Ok(None) => {
            if let Some(ip) = peer {
                if let Err(wait) = state.throttle.check(ip) {
                    return throttled(wait);
                }
                state.throttle.failed(ip);
            }
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid, expired or revoked token",
            )
            .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// 429 `throttled` with `Retry-After`: a wrong token from an address that guessed too often.
fn throttled(wait: Duration) -> HttpResponse {
    let secs = wait.as_secs().max(1);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("too many failed attempts from this address; try again in {secs} s"),
    )
    .into_response();
    if let Ok(v) = http::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

/// A host as the API shows it (`GET /hosts`, `GET /hosts/{host}`, MCP's `list_hosts`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub id: String,
    /// What the host reports as its name (untrusted: the host controls it).
    pub hostname: String,
    /// From the live sessions.
    pub status: HostStatus,
    /// Docker's engine id, when an engine answered at the handshake.
    pub engine_id: Option<String>,
    /// RFC 3339.
    pub registered_at: String,
    /// RFC 3339; `null` before the first session.
    pub last_seen: Option<String>,
    /// What the agent reported at its last handshake.
    pub facts: tomo_proto::handshake::HostFacts,
    /// The operators' labels (never what the host says about itself).
    pub labels: std::collections::BTreeMap<String, String>,
    /// While online: the host's clock minus the control plane's, measured at its handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockView>,
    /// The latest metrics sample the agent pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsView>,
    /// The latest health report (`GET /hosts/{host}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthView>,
    /// The host's last 20 security events (`GET /hosts/{host}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub security_events: Option<Value>,
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    Online,
    Offline,
}

/// A host's clock offset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClockView {
    pub offset_ms: i64,
    /// Past 10 s: what it breaks and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The latest metrics sample and when it arrived.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricsView {
    /// RFC 3339.
    pub received_at: String,
    #[schema(value_type = tomo_proto::methods::Metrics)]
    pub sample: Value,
}

/// The latest health report and when it arrived.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// RFC 3339.
    pub received_at: String,
    #[schema(value_type = tomo_proto::methods::HealthStatus)]
    pub status: Value,
}

/// The view of host `h`; `detail` adds its health.
pub(crate) fn host_view(state: &AppState, h: &HostRecord, detail: bool) -> HostView {
    let online = state.hub.is_online(&h.id);
    let clock = state.hub.clock_offset(&h.id).map(|offset| ClockView {
        offset_ms: offset,
        warning: (offset.abs() > crate::agents::agent_ws::CLOCK_WARN_MS)
            .then(|| crate::agents::agent_ws::clock_skew_text(&h.hostname, offset)),
    });
    let latest = state.hub.latest(&h.id);
    HostView {
        id: h.id.clone(),
        hostname: h.hostname.clone(),
        status: if online {
            HostStatus::Online
        } else {
            HostStatus::Offline
        },
        engine_id: h.engine_id.clone(),
        registered_at: rfc3339(h.registered_at),
        last_seen: h.last_seen.map(rfc3339),
        facts: h.facts.clone(),
        labels: h.labels.clone(),
        clock,
        metrics: latest.metrics.map(|(at, m)| MetricsView {
            received_at: rfc3339(at),
            sample: m,
        }),
        health: latest.health.filter(|_| detail).map(|(at, hs)| HealthView {
            received_at: rfc3339(at),
            status: hs,
        }),
        security_events: None,
    }
}

/// List hosts.
///
/// The hosts in the caller's scope, each with `id`, `hostname`, `status` (`online` or
/// `offline`, from the live sessions), `engine_id`, `registered_at`, `last_seen`, `facts`,
/// `labels`, the latest `metrics` sample and, while online, `clock`: `offset_ms` (the host's
/// clock minus the control plane's, measured at its handshake) and a `warning` past 10 s.
#[utoipa::path(
    get,
    path = "/hosts",
    tag = "hosts",
    responses(
        (status = 200, description = "The hosts.", body = Vec<HostView>),
        crate::http::openapi::AuthErrors,
    )
)]
async fn list_hosts(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    let hosts = state.store.hosts().await?;
    Ok(Json(
        hosts
            .iter()
            .filter(|h| who.may_see(h))
            .map(|h| host_view(&state, h, false))
            .collect(),
    ))
}

pub(crate) use crate::core::hosts::resolve;

/// Show a host.
///
/// What the list says, plus its latest `health` and its last 20 `security_events`.
#[utoipa::path(
    get,
    path = "/hosts/{host}",
    tag = "hosts",
    params(crate::http::openapi::HostPath),
    responses(
        (status = 200, description = "The host.", body = HostView),
        crate::http::openapi::HostErrors,
    )
)]
async fn show_host(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let h = resolve(&state, &who, &key).await?;
    let mut v = host_view(&state, &h, true);
    v.security_events =
        Some(serde_json::to_value(state.store.events(&h.id, 20).await?).unwrap_or_default());
    Ok(Json(v))
}

/// The answer of `DELETE /hosts/{host}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// The removed host's id.
    pub removed: String,
}

/// A host's metrics history (`GET /hosts/{host}/metrics`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricsHistory {
    pub host_id: String,
    /// Newest first.
    pub samples: Vec<MetricsView>,
}

/// Remove a host.
///
/// Ends its session at once; its key never authenticates again. Admin.
#[utoipa::path(
    delete,
    path = "/hosts/{host}",
    tag = "hosts",
    params(crate::http::openapi::HostPath),
    responses(
        (status = 200, description = "The removed host's id.", body = Removed),
        crate::http::openapi::HostErrors,
    )
)]
async fn remove_host(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    who.require(Level::Admin)?;
    let h = resolve(&state, &who, &key).await?;
    state.store.remove_host(&h.id, now_ms()).await?;
    state.hub.kick(&h.id);
    tracing::info!(host_id = %h.id, by = %who.token.name, "host removed");
    Ok(Json(Removed { removed: h.id }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CallBody {
    /// The agent method, e.g. `docker.containers.list` (docs/protocol.md lists them).
    method: String,
    /// The method's params: an object (or an array); at most about 1 MiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// 1–600000; the control plane's call timeout by default.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Echoed as the response's `id`; 1 by default.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    id: Option<Id>,
}

/// Call an agent method.
///
/// JSON-RPC passthrough: the answer is the agent's JSON-RPC response, its `result` or its
/// `error` (an error of the agent is still HTTP 200). The token's role must reach the method's
/// level.
#[utoipa::path(
    post,
    path = "/hosts/{host}/rpc",
    tag = "rpc",
    params(crate::http::openapi::HostPath),
    request_body = CallBody,
    responses(
        (status = 200, description = "The agent's JSON-RPC response (`result` or `error`).", body = Object),
        (status = 400, description = "`bad_request`: no method, params not an object or array, or `timeout_ms` out of range.", body = ErrorBody),
        (status = 413, description = "`too_large`: the params exceed the agent's request limit.", body = ErrorBody),
        (status = 502, description = "A JSON-RPC response whose error says the connection to the host was lost.", body = Object),
        (status = 503, description = "A JSON-RPC response whose error says the host is offline.", body = Object),
        (status = 504, description = "A JSON-RPC response whose error says the agent did not answer in time.", body = Object),
        crate::http::openapi::HostErrors,
        crate::http::openapi::Pending,
    )
)]
async fn call_host(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
    body: Result<Json<CallBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Response>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = body.id.unwrap_or(Id::Num(1));
    let request = CallRequest {
        hosts: Hosts::Key(&key),
        method: &body.method,
        params: body.params,
        timeout: body.timeout_ms.map(Duration::from_millis),
        mode: Mode::Unary,
    };
    let admitted = match crate::core::call::admit(&state, &who, request).await {
        Ok(Admission::Run(a)) => a,
        Ok(Admission::Pending(action)) => return Err(ApiError::pending(action)),
        // JSON-RPC's own answer to a method it does not have, as an agent gives it.
        Err(r @ Refusal::UnknownMethod(_)) => {
            let e = tomo_proto::rpc::RpcError::new(
                tomo_proto::rpc::code::METHOD_NOT_FOUND,
                r.to_string(),
            )
            .with_data(json!({"code": r.code()}));
            return Ok((StatusCode::OK, Json(Response::err(id, e))));
        }
        // Also as an agent answers it: a JSON-RPC error, naming the parameter.
        Err(Refusal::InvalidParams(e)) => return Ok((StatusCode::OK, Json(Response::err(id, e)))),
        Err(r) => return Err(r.into()),
    };
    let (status, mut resp) = match admitted.call(&state).await {
        Ok(r) => (StatusCode::OK, r),
        Err(e) => {
            let status = match e {
                crate::agents::hub::CallError::Offline(_) => StatusCode::SERVICE_UNAVAILABLE,
                crate::agents::hub::CallError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                crate::agents::hub::CallError::ConnectionLost(_) => StatusCode::BAD_GATEWAY,
            };
            (status, Response::err(Id::Null, e.to_rpc()))
        }
    };
    resp.id = id;
    Ok((status, Json(resp)))
}

/// A host's metrics history.
///
/// The latest 500 metrics samples the agent pushed (`{"host_id", "samples": [{"received_at",
/// "sample"}]}`), kept for the history retention.
#[utoipa::path(
    get,
    path = "/hosts/{host}/metrics",
    tag = "hosts",
    params(crate::http::openapi::HostPath),
    responses(
        (status = 200, description = "The samples, newest first.", body = MetricsHistory),
        crate::http::openapi::HostErrors,
    )
)]
async fn host_metrics(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Json<MetricsHistory>, ApiError> {
    let h = resolve(&state, &who, &key).await?;
    let rows = state
        .store
        .samples(&h.id, crate::store::SampleKind::Metrics, 500)
        .await?;
    let samples = rows
        .into_iter()
        .map(|(at, data)| MetricsView {
            received_at: rfc3339(at),
            sample: serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
        })
        .collect();
    Ok(Json(MetricsHistory {
        host_id: h.id,
        samples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13.1: a failed write is an error to its caller, and says what happened.
    /// Issues 13.7 and 13.8: a request the agent refused as out of date (a clock skew, or held
    /// back past its expiry) or because it cannot record it (its disk) is not reported as a
    /// permission problem.
    #[test]
    fn agent_refusals_that_are_not_permissions_have_their_own_codes() {
        use tomo_proto::rpc::{RpcError, code};
        let refusal = |reason: &str| {
            RpcError::new(code::SECURITY, "refused").with_data(json!({ "reason": reason }))
        };
        for (reason, status, want) in [
            ("stale", StatusCode::FORBIDDEN, "stale_request"),
            ("expired", StatusCode::FORBIDDEN, "stale_request"),
            ("replay_log", StatusCode::SERVICE_UNAVAILABLE, "agent_disk"),
            ("forbidden", StatusCode::FORBIDDEN, "forbidden"),
            ("bad_signature", StatusCode::FORBIDDEN, "forbidden"),
        ] {
            let e = ApiError::from_rpc(refusal(reason));
            assert_eq!((e.status, e.code), (status, want), "{reason}");
        }
        // Issue 17.10: the engine's 409 (name in use, container running) is a conflict, not
        // a failed engine (502).
        let engine = |status: u16| {
            RpcError::new(code::DOCKER, "Docker error").with_data(json!({ "status": status }))
        };
        let e = ApiError::from_rpc(engine(409));
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "conflict"));
        let e = ApiError::from_rpc(engine(500));
        assert_eq!((e.status, e.code), (StatusCode::BAD_GATEWAY, "docker"));
    }

    #[test]
    fn store_failures_answer_507_or_503_with_what_to_do() {
        let full = ApiError::from(StoreError::Full);
        assert_eq!(
            (full.status(), full.code()),
            (StatusCode::INSUFFICIENT_STORAGE, "disk_full")
        );
        assert!(
            full.message().contains("disk is full"),
            "{}",
            full.message()
        );
        let io = ApiError::from(StoreError::Unavailable("disk I/O error".into()));
        assert_eq!(
            (io.status(), io.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        );
    }
}
