//! Token management and host labels in the operator API (docs/api.md): `POST/GET /tokens`,
//! `DELETE /tokens/{id}` (revoke), `GET /whoami`, `PUT /hosts/{host}/labels`.
//!
//! Managing tokens and labels needs an admin token without a host scope: a scope is made of host
//! ids and labels, so a scoped token that could mint tokens or relabel hosts could widen its own
//! reach or another token's. The secret of a new token is in the creation answer only: never in
//! a log line or an audit record (the audit layer records no bodies; the records written here
//! name the token by id and name).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tomo_common::now_ms;
use tomo_proto::audit::AuditRecord;
use tomo_proto::methods::Level;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{self, MintError, TokenSpec};
use crate::core::rfc3339;
use crate::http::api::{ApiError, ErrorBody, Principal, resolve, role_name};
use crate::store::{StoreError, TokenRecord};

/// The routes, each registered with its documentation (see [`crate::http::openapi`]).
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
        .routes(routes!(whoami))
        .routes(routes!(set_labels))
}

/// A token as the API shows it: everything but its hash, with a `status` (`active`, `expired`
/// or `revoked`).
pub fn token_view(t: &TokenRecord, now: i64) -> TokenView {
    let status = if t.revoked_at.is_some() {
        TokenStatus::Revoked
    } else if t.expires_at.is_some_and(|e| e <= now) {
        TokenStatus::Expired
    } else {
        TokenStatus::Active
    };
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role,
        status,
        scope: t.scope.clone(),
        requires_approval: t.requires_approval,
        tool_rate_per_min: t.tool_rate_per_min,
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
        secret: None,
    }
}

/// An API token as the API shows it (never its secret, but once at creation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Level,
    pub status: TokenStatus,
    /// Host ids and `key=value` labels; empty: every host.
    pub scope: Vec<String>,
    pub requires_approval: bool,
    /// MCP tool calls a minute; `null`: the control plane's default.
    pub tool_rate_per_min: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    /// The bearer secret: only in the answer of `POST /tokens`, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `active`, `expired` or `revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    Active,
    Expired,
    Revoked,
}

/// Token management needs an unscoped admin.
fn require_manager(who: &Principal) -> Result<(), ApiError> {
    who.require(Level::Admin)?;
    Ok(who.require_unscoped()?)
}

/// Records what a management call changed, beside the audit layer's record of the request (which
/// shares the trace id but not the body).
async fn record(state: &AppState, who: &Principal, method: &str, params: Value) {
    let r = AuditRecord {
        at_ms: now_ms(),
        trace_id: who.trace_id.clone(),
        principal: Some(who.token.name.clone()),
        role: Some(who.token.role),
        method: method.into(),
        params: Some(params),
        decision: "allowed".into(),
        reason: None,
        outcome: "ok".into(),
        error: None,
        duration_ms: 0,
        admission_id: None,
    };
    crate::audit::ingest(state, None, &r).await;
}

/// `POST /tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// 1–64 letters, digits, `.`, `_`, `-`, `@` or `:`.
    name: String,
    #[schema(value_type = crate::http::openapi::Role)]
    role: Level,
    /// Lifetime in seconds; absent: never expires.
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// Host ids and `key=value` labels; absent or empty: every host.
    #[serde(default)]
    scope: Vec<String>,
    /// Destructive MCP tools called with this token wait for a human's approval.
    #[serde(default)]
    requires_approval: bool,
    /// MCP tool calls per minute, 1–10000; the control plane's default when absent.
    #[serde(default)]
    tool_rate_per_min: Option<u32>,
}

/// Create a token.
///
/// 201 with the token's record and its `secret`, shown this once (only its SHA-256 is kept).
/// Admin, without a host scope.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    operation_id = "create_token",
    request_body = CreateToken,
    responses(
        (status = 201, description = "The token's record and `secret`.", body = TokenView),
        (status = 400, description = "`bad_request`: a malformed body, or a name, lifetime, scope or rate out of bounds.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin token; `out_of_scope`: the token has a host scope.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    require_manager(&who)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let spec = TokenSpec {
        name: body.name,
        role: body.role,
        ttl: body.ttl_secs.map(Duration::from_secs),
        scope: body.scope,
        requires_approval: body.requires_approval,
        tool_rate_per_min: body.tool_rate_per_min,
    };
    let (secret, t) = auth::mint(&*state.store, &spec)
        .await
        .map_err(|e| match e {
            MintError::Invalid(m) => ApiError::bad_request(m),
            MintError::Store(e) => e.into(),
        })?;
    tracing::info!(token_id = %t.id, name = %t.name, role = role_name(t.role), by = %who.token.name, "API token created");
    let mut view = token_view(&t, now_ms());
    record(&state, &who, "token.create", json!(view)).await;
    view.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// List tokens.
///
/// Every token, revoked and expired ones too, oldest first: `id`, `name`, `role`, `status`
/// (`active`, `expired`, `revoked`), `scope`, `requires_approval`, `tool_rate_per_min` and times;
/// never a secret. Admin, without a host scope.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    responses(
        (status = 200, description = "The tokens.", body = Vec<TokenView>),
        (status = 403, description = "`forbidden`: not an admin token; `out_of_scope`: the token has a host scope.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    require_manager(&who)?;
    let now = now_ms();
    let tokens = state.store.list_tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| token_view(&state.last_use.fresh(t), now))
            .collect(),
    ))
}

/// Revoke a token.
///
/// At once: the next request with it is 401. The answer is the revoked record; revoking twice
/// keeps the first time. Admin, without a host scope.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    operation_id = "revoke_token",
    params(("id" = String, Path, description = "The token's id (not its secret).")),
    responses(
        (status = 200, description = "The revoked token's record.", body = TokenView),
        (status = 403, description = "`forbidden`: not an admin token; `out_of_scope`: the token has a host scope.", body = ErrorBody),
        (status = 404, description = "`not_found`: no token with that id.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    require_manager(&who)?;
    state
        .store
        .revoke_token(&id, now_ms())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no token with id {id:?} (`tomo tokens ls` lists them)"),
            ),
            other => other.into(),
        })?;
    let t = state.last_use.fresh(state.store.token(&id).await?);
    tracing::info!(token_id = %t.id, name = %t.name, by = %who.token.name, "API token revoked");
    let view = token_view(&t, now_ms());
    record(&state, &who, "token.revoke", json!(view)).await;
    Ok(Json(view))
}

/// The calling token.
///
/// Its record, as the token list shows it (any role, any scope).
#[utoipa::path(
    get,
    path = "/whoami",
    tag = "tokens",
    responses(
        (status = 200, description = "The token's record.", body = TokenView),
        crate::http::openapi::AuthErrors,
    )
)]
async fn whoami(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Json<TokenView> {
    Json(token_view(
        &state.last_use.fresh(who.token.clone()),
        now_ms(),
    ))
}

/// A host's labels, as `PUT /hosts/{host}/labels` answers them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostLabels {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
}

/// Set a host's labels.
///
/// Replaces the host's labels with the body's `{"key": "value", …}`. Admin, without a host
/// scope: labels decide what label-scoped tokens reach.
#[utoipa::path(
    put,
    path = "/hosts/{host}/labels",
    tag = "hosts",
    params(crate::http::openapi::HostPath),
    request_body(content = BTreeMap<String, String>, description = "The labels: at most 32; keys and values of 1–63 letters, digits, `.`, `_`, `-`, `/` (values also `:`)."),
    responses(
        (status = 200, description = "The host's labels now.", body = HostLabels),
        (status = 400, description = "`bad_request`: not an object of strings, or a label out of bounds.", body = ErrorBody),
        crate::http::openapi::HostErrors,
    )
)]
async fn set_labels(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(host): Path<String>,
    body: Result<Json<BTreeMap<String, String>>, JsonRejection>,
) -> Result<Json<HostLabels>, ApiError> {
    require_manager(&who)?;
    let Json(labels) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object of string labels: {}",
            e.body_text()
        ))
    })?;
    auth::check_labels(&labels).map_err(ApiError::bad_request)?;
    let h = resolve(&state, &who, &host).await?;
    state.store.set_host_labels(&h.id, &labels).await?;
    tracing::info!(host_id = %h.id, by = %who.token.name, "host labels set");
    let view = HostLabels {
        host_id: h.id,
        hostname: h.hostname,
        labels,
    };
    record(&state, &who, "host.labels", json!(view)).await;
    Ok(Json(view))
}
