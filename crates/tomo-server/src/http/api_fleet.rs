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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tomo_proto::rpc::{Id, Response};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::core::call::{Admission, CallRequest, Hosts, Mode};
use crate::http::api::{ApiError, ErrorBody, Principal};

/// The routes, each registered with its documentation (see [`crate::http::openapi`]).
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
        (status = 200, description = "Every host's answer (or failure), and the counts.", body = FleetAnswer),
        (status = 400, description = "`bad_request`: no method, a method that is not a read method answering at once, params not an object or array, or `timeout_ms` out of range. An unknown host (or one outside the token's scope) is a 404 `not_found`, an unknown method a 404 `unknown_method`.", body = ErrorBody),
        crate::http::openapi::HostErrors,
    )
)]
async fn fleet_rpc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<FleetCall>, JsonRejection>,
) -> Result<Json<FleetAnswer>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = CallRequest {
        hosts: Hosts::Fleet(body.hosts.as_deref()),
        method: &body.method,
        params: body.params,
        timeout: body.timeout_ms.map(Duration::from_millis),
        mode: Mode::FanOut,
    };
    let admitted = match crate::core::call::admit(&state, &who, request).await? {
        Admission::Run(a) => a,
        // Read methods never wait for approval; said plainly should that ever change.
        Admission::Pending(action) => return Err(ApiError::pending(action)),
    };
    let started = Instant::now();
    let answers = admitted.fan_out(&state).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    let ok = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(|r| !r.is_error()))
        .count();
    let hosts = answers.len();
    let results = (!body.summary_only).then(|| {
        answers
            .into_iter()
            .map(|(host_id, answer)| HostAnswer {
                host_id,
                response: answer.unwrap_or_else(|e| Response::err(Id::Null, e.to_rpc())),
            })
            .collect()
    });
    Ok(Json(FleetAnswer {
        method: body.method,
        hosts,
        ok,
        errors: hosts - ok - failed,
        failed,
        elapsed_ms,
        results,
    }))
}

/// The answer of `POST /fleet/rpc`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetAnswer {
    pub method: String,
    /// Hosts called.
    pub hosts: usize,
    /// Hosts that answered with a result.
    pub ok: usize,
    /// Hosts that answered with a JSON-RPC error.
    pub errors: usize,
    /// Hosts that were offline, timed out or dropped the connection.
    pub failed: usize,
    pub elapsed_ms: f64,
    /// Each host's answer (absent with `summary_only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<HostAnswer>>,
}

/// One host's answer in a [`FleetAnswer`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostAnswer {
    pub host_id: String,
    /// Its JSON-RPC response: `result`, or `error` (a failure of the call itself included).
    #[schema(value_type = Object)]
    pub response: Response,
}
