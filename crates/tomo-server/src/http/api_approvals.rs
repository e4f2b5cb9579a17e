//! Pending actions in the API (see [`crate::approvals`]): the asker polls its own, an admin
//! token that does not itself require approval lists, approves and denies.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::approvals;
use crate::http::api::{ApiError, ErrorBody, Principal};
use crate::store::ActionStatus;

/// Most actions listed at once.
const MAX_LIST: u32 = 500;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(approve))
        .routes(routes!(deny))
}

/// `GET /approvals` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `open` (the default: `pending` and `interrupted`, what needs a human), `pending`,
    /// `approved`, `denied`, `expired`, `done`, `failed`, `interrupted` or `all`.
    #[param(schema_with = status_filter)]
    status: Option<String>,
    /// At most this many, newest first (default 100, 1 to 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// The document's schema of [`ListQuery::status`]: the values it takes, an empty one (the
/// default, as its absence) among them.
fn status_filter() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "`open` (the default: `pending` and `interrupted`, what needs a human), `pending`, \
             `approved`, `denied`, `expired`, `done`, `failed`, `interrupted` or `all`.",
        ))
        .enum_values(Some([
            "",
            "open",
            "pending",
            "approved",
            "denied",
            "expired",
            "done",
            "failed",
            "interrupted",
            "all",
        ]))
        .build()
}

/// The action's id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ActionPath {
    /// `act_…`
    id: String,
}

/// `POST /approvals/{id}/deny` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    /// Told to the asker.
    reason: Option<String>,
}

/// List pending actions.
///
/// An admin token that does not itself require approval sees every action in its scope; any
/// other token sees its own (to poll them). By default those that need a human: `pending`, and
/// `interrupted` (approved, but the answer was lost: the control plane stopped while it ran, or
/// the host's connection or the call's time ran out; outcome unknown until the host's audit
/// record of the call arrives).
#[utoipa::path(
    get,
    path = "/approvals",
    tag = "approvals",
    operation_id = "list_approvals",
    params(ListQuery),
    responses(
        (status = 200, description = "Actions, newest first: every action in scope for an admin \
            token that does not require approval, the token's own otherwise.", body = Vec<approvals::ActionView>),
        (status = 400, description = "`bad_request`: unknown status, or a malformed query.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<approvals::ActionView>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let one;
    // An empty `status=` is the default, as its absence (schemathesis sends it).
    let statuses: &[ActionStatus] = match q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("open")
    {
        "all" => &[],
        "open" => approvals::OPEN,
        s => {
            one = [ActionStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown status {s:?}: open, pending, approved, denied, expired, done, \
                     failed, interrupted or all"
                ))
            })?];
            &one
        }
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1–{MAX_LIST}")));
    }
    let actions = approvals::list(&state, &who, statuses, limit).await?;
    Ok(Json(
        actions.iter().map(|a| approvals::view(&state, a)).collect(),
    ))
}

/// Show a pending action.
///
/// Its status, summary, and its result once it ran; the asker polls it here.
#[utoipa::path(
    get,
    path = "/approvals/{id}",
    tag = "approvals",
    operation_id = "show_approval",
    params(ActionPath),
    responses(
        (status = 200, description = "The action: status, summary, and the result once it ran.", body = approvals::ActionView),
        (status = 404, description = "`not_found`: no such action, or not the caller's to see.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn show(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(ActionPath { id }): Path<ActionPath>,
) -> Result<Json<approvals::ActionView>, ApiError> {
    Ok(Json(approvals::view(
        &state,
        &approvals::get(&state, &who, &id).await?,
    )))
}

/// Approve a pending action.
///
/// Runs it and answers once it has run (done or failed). An admin token that does not itself
/// require approval, and not the asking token.
#[utoipa::path(
    post,
    path = "/approvals/{id}/approve",
    tag = "approvals",
    operation_id = "approve",
    params(ActionPath),
    responses(
        (status = 200, description = "Approved and run: `status` is `done` (result in `result`) or `failed` (error in `result`).", body = approvals::ActionView),
        (status = 403, description = "`forbidden`: not an admin token, a token that requires approval, or the asking token itself.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such action in the token's scope.", body = ErrorBody),
        (status = 409, description = "`not_pending`: already decided, expired, or interrupted (never run again).", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn approve(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(ActionPath { id }): Path<ActionPath>,
) -> Result<Json<approvals::ActionView>, ApiError> {
    Ok(Json(approvals::view(
        &state,
        &approvals::approve(&state, &who, &id).await?,
    )))
}

/// Deny a pending action.
///
/// Nothing runs; the optional reason is kept for the asker to read.
#[utoipa::path(
    post,
    path = "/approvals/{id}/deny",
    tag = "approvals",
    operation_id = "deny",
    params(ActionPath),
    request_body(content = Option<DenyBody>, description = "Optional reason for the asker."),
    responses(
        (status = 200, description = "Denied; nothing ran.", body = approvals::ActionView),
        (status = 400, description = "`bad_request`: a malformed body.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin token, a token that requires approval, or the asking token itself.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such action in the token's scope.", body = ErrorBody),
        (status = 409, description = "`not_pending`: already decided or expired.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn deny(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(ActionPath { id }): Path<ActionPath>,
    body: Result<Option<Json<DenyBody>>, JsonRejection>,
) -> Result<Json<approvals::ActionView>, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let reason = body.and_then(|Json(b)| b.reason);
    Ok(Json(approvals::view(
        &state,
        &approvals::deny(&state, &who, &id, reason.as_deref()).await?,
    )))
}
