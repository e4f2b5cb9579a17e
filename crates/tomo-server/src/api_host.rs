//! The host operations of the REST API: one route per agent method family, each a thin mapping
//! of path, query and body onto the method's params, through the same path as `POST /rpc`
//! (role check, then [`crate::hub::Hub`]). Streams (logs follow, stats stream, pull progress)
//! and followed events are newline-delimited JSON; the consumer's reading pace is the stream's
//! pace, so a slow client slows the agent down instead of filling memory.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use http::StatusCode;
use serde_json::{Map, Value, json};
use tomo_proto::methods::level_of;
use tomo_proto::rpc::Outcome;

use crate::AppState;
use crate::api::{ApiError, Principal, resolve};
use crate::hub::{Caller, StreamEvent, StreamHandle};

/// Pulls, runs and updates may take minutes.
const LONG_CALL: Duration = Duration::from_secs(600);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/hosts/{host}/stream", post(stream_call))
        .route("/hosts/{host}/info", get(info))
        .route(
            "/hosts/{host}/containers",
            get(containers_list).post(containers_run),
        )
        .route(
            "/hosts/{host}/containers/{container}",
            get(containers_get).delete(containers_remove),
        )
        .route("/hosts/{host}/containers/{container}/logs", get(logs))
        .route("/hosts/{host}/containers/{container}/stats", get(stats))
        .route(
            "/hosts/{host}/containers/{container}/{action}",
            post(containers_action),
        )
        .route(
            "/hosts/{host}/images",
            get(images_list).delete(images_remove),
        )
        .route("/hosts/{host}/images/pull", post(images_pull))
        .route(
            "/hosts/{host}/networks",
            get(networks_list).post(networks_create),
        )
        .route("/hosts/{host}/networks/{name}", delete(networks_remove))
        .route(
            "/hosts/{host}/volumes",
            get(volumes_list).post(volumes_create),
        )
        .route("/hosts/{host}/volumes/{name}", delete(volumes_remove))
        .route("/hosts/{host}/system/{op}", post(system_op))
        .route("/hosts/{host}/agent/{op}", post(agent_op))
        .route("/hosts/{host}/events", get(events))
}

type Who = Extension<Principal>;
type St = State<Arc<AppState>>;
type QueryMap = Query<HashMap<String, String>>;

/// Query values as JSON where they parse (`10`, `true`), else as strings.
fn query_params(q: HashMap<String, String>) -> Map<String, Value> {
    q.into_iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str::<Value>(&v)
                .ok()
                .filter(|p| p.is_number() || p.is_boolean())
                .unwrap_or(Value::String(v));
            (k, parsed)
        })
        .collect()
}

fn body_params(body: Option<Json<Value>>) -> Result<Map<String, Value>, ApiError> {
    match body.map(|Json(v)| v) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

fn timeout_for(state: &AppState, method: &str) -> Duration {
    match method {
        "docker.images.pull"
        | "docker.containers.run"
        | "docker.containers.update"
        | "docker.containers.exec"
        | "system.exec" => LONG_CALL,
        _ => state.config.call_timeout,
    }
}

/// Checks the caller's role, finds the host, and returns who calls.
async fn prepare(
    state: &AppState,
    who: &Principal,
    host: &str,
    method: &str,
) -> Result<(String, Caller), ApiError> {
    let level = level_of(method).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_method",
            format!("no method {method}"),
        )
    })?;
    who.require(level)?;
    let h = resolve(state, host).await?;
    Ok((h.id, who.caller()))
}

/// [`prepare`] plus the stream-ownership rule of `stream.*` methods.
async fn prepare_call(
    state: &AppState,
    who: &Principal,
    host: &str,
    method: &str,
    params: &Map<String, Value>,
) -> Result<(String, Caller), ApiError> {
    let (host_id, caller) = prepare(state, who, host, method).await?;
    who.check_stream_owner(
        state,
        &host_id,
        method,
        Some(&Value::Object(params.clone())),
    )?;
    Ok((host_id, caller))
}

/// Calls `method` on the host and answers with its result, or its error as an HTTP error.
pub async fn forward(
    state: &AppState,
    who: &Principal,
    host: &str,
    method: &str,
    params: Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let (host_id, caller) = prepare_call(state, who, host, method, &params).await?;
    let params = Value::Object(params);
    let resp = state
        .hub
        .call(
            &host_id,
            method,
            Some(&params),
            &caller,
            timeout_for(state, method),
        )
        .await
        .map_err(|e| ApiError::from_rpc(e.to_rpc()))?;
    match resp.outcome {
        Outcome::Result(v) => Ok(Json(v)),
        Outcome::Error(e) => Err(ApiError::from_rpc(e)),
    }
}

/// Like [`forward`] for a call that may open a stream: a stream is answered as NDJSON lines
/// `{"seq":n,"data":…}` ending with `{"end":{…}}`; anything else as plain JSON.
pub async fn forward_stream(
    state: &AppState,
    who: &Principal,
    host: &str,
    method: &str,
    params: Map<String, Value>,
) -> Result<HttpResponse, ApiError> {
    let (host_id, caller) = prepare_call(state, who, host, method, &params).await?;
    let params = Value::Object(params);
    let (resp, handle) = state
        .hub
        .call_stream(
            &host_id,
            method,
            Some(&params),
            &caller,
            timeout_for(state, method),
        )
        .await
        .map_err(|e| ApiError::from_rpc(e.to_rpc()))?;
    match (resp.outcome, handle) {
        (Outcome::Error(e), _) => Err(ApiError::from_rpc(e)),
        (Outcome::Result(_), Some(handle)) => Ok(ndjson(handle)),
        (Outcome::Result(v), None) => Ok(Json(v).into_response()),
    }
}

pub(crate) fn line(v: &Value) -> Result<Bytes, Infallible> {
    let mut text = v.to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

fn ndjson(handle: StreamHandle) -> HttpResponse {
    let opening = futures_util::stream::once(std::future::ready(line(
        &json!({"stream": handle.id(), "window": tomo_proto::methods::STREAM_WINDOW}),
    )));
    let lines = futures_util::stream::unfold(Some(handle), |state| async move {
        let mut handle = state?;
        match handle.next().await {
            Some(StreamEvent::Data { seq, data }) => {
                Some((line(&json!({"seq": seq, "data": data})), Some(handle)))
            }
            Some(StreamEvent::End(end)) => Some((line(&json!({ "end": end })), None)),
            None => Some((
                line(&json!({"end": {"reason": "connection_lost", "sent": 0,
                    "error": {"code": tomo_proto::rpc::code::CONNECTION_LOST,
                              "message": "the connection to the host was lost"}}})),
                None,
            )),
        }
    });
    (
        [(http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(futures_util::StreamExt::chain(opening, lines)),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamBody {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

/// `POST /hosts/{host}/stream {method, params}`: any method, streamed when it opens a stream.
async fn stream_call(
    State(state): St,
    Extension(who): Who,
    Path(host): Path<String>,
    body: Result<Json<StreamBody>, axum::extract::rejection::JsonRejection>,
) -> Result<HttpResponse, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let params = match body.params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("params must be an object")),
    };
    forward_stream(&state, &who, &host, &body.method, params).await
}

async fn info(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "system.info", Map::new()).await
}

async fn containers_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    Query(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.containers.list", query_params(q)).await
}

async fn containers_run(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.containers.run", body_params(body)?).await
}

async fn containers_get(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut p = Map::new();
    p.insert("container".into(), Value::String(c));
    forward(&s, &w, &h, "docker.containers.get", p).await
}

async fn containers_remove(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let mut p = query_params(q);
    p.insert("container".into(), Value::String(c));
    forward(&s, &w, &h, "docker.containers.remove", p).await
}

/// `POST …/containers/{c}/{start|stop|restart|update|exec}`, options in the body.
async fn containers_action(
    State(s): St,
    Extension(w): Who,
    Path((h, c, action)): Path<(String, String, String)>,
    body: Option<Json<Value>>,
) -> Result<HttpResponse, ApiError> {
    let method = match action.as_str() {
        "start" => "docker.containers.start",
        "stop" => "docker.containers.stop",
        "restart" => "docker.containers.restart",
        "update" => "docker.containers.update",
        "exec" => "docker.containers.exec",
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no container action {other:?} (start, stop, restart, update, exec)"),
            ));
        }
    };
    let mut p = body_params(body)?;
    p.insert("container".into(), Value::String(c));
    forward_stream(&s, &w, &h, method, p).await
}

async fn logs(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<HttpResponse, ApiError> {
    let mut p = query_params(q);
    p.insert("container".into(), Value::String(c));
    forward_stream(&s, &w, &h, "docker.containers.logs", p).await
}

async fn stats(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<HttpResponse, ApiError> {
    let mut p = query_params(q);
    p.insert("container".into(), Value::String(c));
    forward_stream(&s, &w, &h, "docker.containers.stats", p).await
}

async fn images_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    Query(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.images.list", query_params(q)).await
}

/// `DELETE /hosts/{host}/images?image=REF[&force=true]` (references contain `/` and `:`).
async fn images_remove(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    Query(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let mut p = query_params(q);
    if let Some(v) = p.get_mut("image")
        && !v.is_string()
    {
        *v = Value::String(v.to_string());
    }
    forward(&s, &w, &h, "docker.images.remove", p).await
}

async fn images_pull(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: Option<Json<Value>>,
) -> Result<HttpResponse, ApiError> {
    forward_stream(&s, &w, &h, "docker.images.pull", body_params(body)?).await
}

async fn networks_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.networks.list", Map::new()).await
}

async fn networks_create(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.networks.create", body_params(body)?).await
}

async fn networks_remove(
    State(s): St,
    Extension(w): Who,
    Path((h, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut p = Map::new();
    p.insert("name".into(), Value::String(name));
    forward(&s, &w, &h, "docker.networks.remove", p).await
}

async fn volumes_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.volumes.list", Map::new()).await
}

async fn volumes_create(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    forward(&s, &w, &h, "docker.volumes.create", body_params(body)?).await
}

async fn volumes_remove(
    State(s): St,
    Extension(w): Who,
    Path((h, name)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let mut p = query_params(q);
    p.insert("name".into(), Value::String(name));
    forward(&s, &w, &h, "docker.volumes.remove", p).await
}

/// `POST /hosts/{host}/system/{exec|preflight_check|prepare_volumes}`.
async fn system_op(
    State(s): St,
    Extension(w): Who,
    Path((h, op)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let method = match op.as_str() {
        "exec" => "system.exec",
        "preflight_check" => "system.preflight_check",
        "prepare_volumes" => "system.prepare_volumes",
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no system operation {op:?}"),
            ));
        }
    };
    forward(&s, &w, &h, method, body_params(body)?).await
}

/// `POST /hosts/{host}/agent/{update|restart}`.
async fn agent_op(
    State(s): St,
    Extension(w): Who,
    Path((h, op)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let method = match op.as_str() {
        "update" => "agent.update",
        "restart" => "agent.restart",
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no agent operation {op:?}"),
            ));
        }
    };
    forward(&s, &w, &h, method, body_params(body)?).await
}

/// `GET /hosts/{host}/events[?limit=N][&after=ID][&follow=true]`: stored events, oldest first;
/// with `follow`, NDJSON that goes on with live events.
async fn events(
    State(state): St,
    Extension(who): Who,
    Path(host): Path<String>,
    Query(q): QueryMap,
) -> Result<HttpResponse, ApiError> {
    who.require(tomo_proto::methods::Level::Read)?;
    let h = resolve(&state, &host).await?;
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
                .map_err(|_| ApiError::bad_request("after must be an event id"))?,
        ),
    };
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut live = state.events.subscribe();
    let backlog = state.store.docker_events(&h.id, after, limit).await?;
    let views: Vec<Value> = backlog.iter().map(crate::events::view).collect();
    if !follow {
        return Ok(Json(Value::Array(views)).into_response());
    }
    let mut last = backlog.last().map(|e| e.id).or(after).unwrap_or(0);
    let host_id = h.id;
    let shutdown = state.shutdown.clone();
    let lines = async_stream(move |tx| async move {
        for v in views {
            if tx.send(line(&v)).await.is_err() {
                return;
            }
        }
        loop {
            let ev = tokio::select! {
                e = live.recv() => e,
                _ = shutdown.cancelled() => return,
            };
            match ev {
                Ok(e) if e.host_id == host_id && e.id > last => {
                    last = e.id;
                    if tx.send(line(&e.view)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // A slow reader skips events instead of holding memory; it is told so.
                    if tx.send(line(&json!({"lagged": n}))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok((
        [(http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// A stream fed by a task through a small bounded channel (the task waits for the reader).
pub(crate) fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    // The task ends with the response body (a client that went away stops it).
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(f(tx)));
    futures_util::stream::poll_fn(move |cx| {
        let _owned = &task;
        rx.poll_recv(cx)
    })
}
