//! Fleet-wide calls in the operator API: `POST /api/v1/fleet/rpc` sends one read method to every
//! online host in the token's scope (or to the hosts named) at once, and answers when every host
//! has answered, failed or timed out.
//!
//! Only read methods that answer at once are allowed (no streams, nothing that changes a host):
//! a fan-out is as safe as the same calls made one by one by a read token, and a command to many
//! hosts at once stays a deliberate series of single calls (with their approvals and rate
//! limits). Each request is built and signed by the hub like any other, so every agent checks
//! its signature, audience, freshness and the caller's role, and audits it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tomo_proto::methods::Level;
use tomo_proto::rpc::{Id, Response};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{ApiError, ErrorBody, Principal};
use crate::hub::CallError;

/// Hosts per task of a fan-out.
const CHUNK: usize = 256;
/// Longest per-host timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Read methods that may stream, never fanned out.
const STREAMING: [&str; 2] = ["docker.containers.logs", "docker.containers.stats"];

/// The routes, each registered with its documentation (see [`crate::openapi`]).
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(fleet_rpc))
}

/// `POST /fleet/rpc` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FleetCall {
    /// A read method that answers at once, e.g. `agent.ping`, `system.info`,
    /// `system.get_metrics`, `docker.containers.list`.
    method: String,
    /// The method's params (an object or an array), the same for every host.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// Per host, 1–600000; the control plane's call timeout by default.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Host ids; absent: every online host in the token's scope.
    #[serde(default)]
    hosts: Option<Vec<String>>,
    /// Only the counts, without each host's answer (for large fleets).
    #[serde(default)]
    summary_only: bool,
}

/// Call a read method on many hosts.
///
/// Sends the method to every online host in the token's scope (or to `hosts`) at once and
/// answers when every host has answered, failed or timed out: `{"method", "hosts", "ok",
/// "errors", "failed", "elapsed_ms", "results": [{"host_id", "response"}]}`. `ok` counts
/// results, `errors` the agents' JSON-RPC errors, `failed` hosts that were offline, timed out or
/// dropped the connection (their `response` says which). Only read methods that answer at once:
/// no streams, no commands.
#[utoipa::path(
    post,
    path = "/fleet/rpc",
    tag = "rpc",
    request_body = FleetCall,
    responses(
        (status = 200, description = "Every host's answer (or failure), and the counts.", body = Object),
        (status = 400, description = "`bad_request`: no method, a method that is not a read method answering at once, params not an object or array, `timeout_ms` out of range, or an unknown host.", body = ErrorBody),
        crate::openapi::HostErrors,
    )
)]
async fn fleet_rpc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<FleetCall>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let level = tomo_proto::methods::level_of(&body.method);
    if level != Some(Level::Read)
        || body.method.starts_with("stream.")
        || STREAMING.contains(&body.method.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "{:?} cannot be fanned out: only read methods that answer at once",
            body.method
        )));
    }
    who.require(Level::Read)?;
    if !matches!(body.params, None | Some(Value::Object(_) | Value::Array(_))) {
        return Err(ApiError::bad_request(
            "params must be an object or an array",
        ));
    }
    crate::api::check_call_size(&body.method, body.params.as_ref())?;
    let timeout = body
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(state.config.call_timeout);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(ApiError::bad_request(
            "timeout_ms must be between 1 and 600000",
        ));
    }
    let targets = targets(&state, &who, body.hosts.as_deref()).await?;
    let caller = who.caller();
    let started = Instant::now();
    // Calls are signed as they are made: in tasks of CHUNK hosts, so that every worker thread
    // signs, not only this request's.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in targets.chunks(CHUNK) {
        let (state, caller, chunk) = (Arc::clone(&state), caller.clone(), chunk.to_vec());
        let (method, params) = (body.method.clone(), body.params.clone());
        tasks.spawn(async move {
            let calls = chunk.into_iter().map(|host_id| {
                let (state, caller, method, params) = (&state, &caller, &method, &params);
                async move {
                    let answer = state
                        .hub
                        .call(&host_id, method, params.as_ref(), caller, timeout)
                        .await;
                    (host_id, answer)
                }
            });
            futures_util::future::join_all(calls).await
        });
    }
    let mut answers: Vec<(String, Result<Response, CallError>)> = Vec::with_capacity(targets.len());
    while let Some(done) = tasks.join_next().await {
        answers.extend(done.map_err(|e| {
            tracing::error!(error = %e, "a fan-out task failed");
            ApiError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the control plane's log",
            )
        })?);
    }
    let method = body.method.as_str();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    let ok = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(|r| !r.is_error()))
        .count();
    let mut out = json!({
        "method": method,
        "hosts": answers.len(),
        "ok": ok,
        "errors": answers.len() - ok - failed,
        "failed": failed,
        "elapsed_ms": elapsed_ms,
    });
    if !body.summary_only {
        out["results"] = answers
            .into_iter()
            .map(|(host_id, answer)| {
                let response = answer.unwrap_or_else(|e| Response::err(Id::Null, e.to_rpc()));
                json!({"host_id": host_id, "response": response})
            })
            .collect();
    }
    Ok(Json(out))
}

/// The hosts to call: the named ones (each must exist, not be removed and be in scope), or every
/// online host in scope.
async fn targets(
    state: &AppState,
    who: &Principal,
    named: Option<&[String]>,
) -> Result<Vec<String>, ApiError> {
    let unscoped = who.0.scope.is_empty();
    match named {
        // The common case needs no store read: the hub knows who is online.
        None if unscoped => Ok(state.hub.online_hosts()),
        None => Ok(state
            .store
            .hosts()
            .await?
            .iter()
            .filter(|h| who.may_see(h) && state.hub.is_online(&h.id))
            .map(|h| h.id.clone())
            .collect()),
        Some(ids) => {
            let hosts = state.store.hosts().await?;
            ids.iter()
                .map(|id| match hosts.iter().find(|h| &h.id == id) {
                    Some(h) if who.may_see(h) => Ok(h.id.clone()),
                    // Out of scope answers as unknown: nothing tells which ids exist.
                    _ => Err(ApiError::bad_request(format!("no host with id {id}"))),
                })
                .collect()
        }
    }
}
