//! Registration codes (`/codes`): create one for a new host, list them, revoke one that is no
//! longer needed or leaked. A code's secret is shown once, at creation; the store keeps only the
//! hash of its public key, and a code is named by the first 16 hex digits of that hash. Admin,
//! without a host scope.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tomo_common::now_ms;
use tomo_proto::methods::Level;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::rfc3339;
use crate::http::api::{ApiError, ErrorBody, Principal};
use crate::store::{CodeRecord, StoreError};
use crate::{AppState, auth};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create_code, list_codes))
        .routes(routes!(revoke_code))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCode {
    /// How long the code stays valid, 1–604800 s (7 days); 900 (15 minutes) by default.
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /api/v1/codes` response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodeCreated {
    /// The single-use code (shown once; stored only as a hash).
    pub code: String,
    /// Its id, to list or revoke it (`DELETE /codes/{id}`).
    pub id: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The URL agents dial (`wss://…/agent/ws`).
    pub server_url: String,
    /// The CA agents pin, when the certificate is self-signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `tomo-agent …` with every flag the new host needs.
    pub join_command: String,
    /// The same as a `docker run` of the agent's image.
    pub docker_command: String,
}

/// Create a registration code.
///
/// A single-use code a new agent registers with, and the commands that start the agent with it.
/// Admin, without a host scope.
#[utoipa::path(
    post,
    path = "/codes",
    tag = "codes",
    request_body(content = Option<CreateCode>, description = "Optional; `{}` or no body for the defaults."),
    responses(
        (status = 201, description = "The code (shown once) and the join commands.", body = CodeCreated),
        (status = 400, description = "`bad_request`: a malformed body, or `ttl_secs` out of range.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin token; `out_of_scope`: the token has a host scope.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn create_code(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Result<Option<Json<CreateCode>>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CodeCreated>), ApiError> {
    who.require(Level::Admin)?;
    who.require_unscoped()?;
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let ttl = Duration::from_secs(body.and_then(|b| b.ttl_secs).unwrap_or(15 * 60));
    if ttl.is_zero() || ttl > auth::MAX_CODE_TTL {
        return Err(ApiError::bad_request(
            "ttl_secs must be between 1 and 604800 (7 days)",
        ));
    }
    let (code, expires_at) = auth::mint_code(&state, ttl, &who.token.name).await?;
    let server_url = state.info.agent_url.clone();
    let ca_file = state.info.ca_file.as_ref().map(|p| p.display().to_string());
    let ca_flag = ca_file
        .as_ref()
        .map(|f| format!(" --ca-file {f}"))
        .unwrap_or_default();
    let join_command = format!(
        "tomo-agent --server-url {server_url} --register-code {code}{ca_flag} --data-dir /var/lib/tomo-agent"
    );
    let docker_ca = ca_file
        .as_ref()
        .map(|f| format!(" -v {f}:/etc/tomo/ca.pem:ro -e TOMO_CA_FILE=/etc/tomo/ca.pem"))
        .unwrap_or_default();
    let docker_command = format!(
        "docker run -d --name tomo-agent --restart unless-stopped -v /var/run/docker.sock:/var/run/docker.sock \
         -v tomo-agent-data:/data -v /etc/machine-id:/host/etc/machine-id:ro -v /etc/os-release:/host/etc/os-release:ro \
         -v /etc/hostname:/host/etc/hostname:ro{docker_ca} -e SERVER_URL={server_url} -e REGISTER_CODE={code} tomo-agent:{}",
        env!("CARGO_PKG_VERSION")
    );
    Ok((
        StatusCode::CREATED,
        Json(CodeCreated {
            id: auth::code_id_of(&code).unwrap_or_default(),
            code,
            expires_at: rfc3339(expires_at),
            server_url,
            ca_file,
            join_command,
            docker_command,
        }),
    ))
}
/// Where a code is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeStatus {
    /// Unused and valid: a host can register with it.
    Active,
    /// A host registered with it (`used_by`).
    Used,
    Expired,
    Revoked,
}

/// A registration code as the API lists it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CodeView {
    /// 16 hex digits: what `DELETE /codes/{id}` takes.
    pub id: String,
    pub status: CodeStatus,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    /// The token (by name) that created it.
    pub created_by: String,
    pub used_at: Option<String>,
    /// The host that registered with it.
    pub used_by: Option<String>,
    pub revoked_at: Option<String>,
}

/// A code as the API shows it.
pub fn code_view(c: &CodeRecord, now: i64) -> CodeView {
    let status = if c.used_at.is_some() {
        CodeStatus::Used
    } else if c.revoked_at.is_some() {
        CodeStatus::Revoked
    } else if c.expires_at <= now {
        CodeStatus::Expired
    } else {
        CodeStatus::Active
    };
    CodeView {
        id: c.id.clone(),
        status,
        created_at: rfc3339(c.created_at),
        expires_at: rfc3339(c.expires_at),
        created_by: c.created_by.clone(),
        used_at: c.used_at.map(rfc3339),
        used_by: c.used_by.clone(),
        revoked_at: c.revoked_at.map(rfc3339),
    }
}

/// List registration codes.
///
/// Every code, newest first (at most 1000), with its status: `active` (a host can register with
/// it), `used` (and by which host), `expired` or `revoked`. Never a code's secret. Admin,
/// without a host scope.
#[utoipa::path(
    get,
    path = "/codes",
    tag = "codes",
    responses(
        (status = 200, description = "The codes, newest first.", body = Vec<CodeView>),
        (status = 403, description = "`forbidden`: not an admin token; `out_of_scope`: the token has a host scope.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn list_codes(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<CodeView>>, ApiError> {
    who.require(Level::Admin)?;
    who.require_unscoped()?;
    let now = now_ms();
    let codes = state.store.codes(1000).await?;
    Ok(Json(codes.iter().map(|c| code_view(c, now)).collect()))
}

/// Revoke a registration code.
///
/// From now on a host registering with it is refused (as with an expired code). A code a host
/// already used is left as it is (`409`: remove the host instead). Revoking a revoked code
/// answers it again. Admin, without a host scope.
#[utoipa::path(
    delete,
    path = "/codes/{id}",
    tag = "codes",
    params(("id" = String, Path, description = "The code's id (16 hex digits, from `GET /codes` or the creation's answer).")),
    responses(
        (status = 200, description = "The code, revoked.", body = CodeView),
        (status = 403, description = "`forbidden`: not an admin token; `out_of_scope`: the token has a host scope.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such code.", body = ErrorBody),
        (status = 409, description = "`conflict`: a host already registered with the code.", body = ErrorBody),
        crate::http::openapi::AuthErrors,
    )
)]
async fn revoke_code(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CodeView>, ApiError> {
    who.require(Level::Admin)?;
    who.require_unscoped()?;
    let now = now_ms();
    let code = match state.store.revoke_code(&id.to_ascii_lowercase(), now).await {
        Err(StoreError::NotFound) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no registration code {id:?}"),
            ));
        }
        other => other?,
    };
    if let Some(host) = &code.used_by {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "registration code {id} was already used by host {host}: remove the host instead"
            ),
        ));
    }
    tracing::info!(code = %code.id, by = %who.token.name, "registration code revoked");
    Ok(Json(code_view(&code, now)))
}
