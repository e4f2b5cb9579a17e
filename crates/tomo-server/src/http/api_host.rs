//! The host operations of the REST API: one route per agent method family, each a thin mapping
//! of path, query and body onto the method's params, through the same path as `POST /rpc`
//! (role check, then [`crate::agents::hub::Hub`]). Streams (logs follow, stats stream, pull progress)
//! and followed events are newline-delimited JSON; the consumer's reading pace is the stream's
//! pace, so a slow client slows the agent down instead of filling memory.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::{Extension, Json};
use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tomo_proto::methods::{self, Method};
use tomo_proto::rpc::Outcome;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::agents::hub::{StreamEvent, StreamHandle};
use crate::core::call::{Admission, Admitted, CallRequest, Hosts, Mode};
use crate::http::api::{ApiError, Principal, resolve};
use crate::http::openapi::{AgentErrors, ContainerPath, HostErrors, HostPath, NamePath, Pending};

/// The host operations, each registered with its documentation (see [`crate::http::openapi`]).
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(stream_call))
        .routes(routes!(info))
        .routes(routes!(containers_list, containers_run))
        .routes(routes!(containers_get, containers_remove))
        .routes(routes!(logs))
        .routes(routes!(stats))
        .routes(routes!(start_container))
        .routes(routes!(stop_container))
        .routes(routes!(restart_container))
        .routes(routes!(update_container))
        .routes(routes!(exec_in_container))
        .routes(routes!(images_list, images_remove))
        .routes(routes!(images_pull))
        .routes(routes!(networks_list, networks_create))
        .routes(routes!(networks_remove))
        .routes(routes!(volumes_list, volumes_create))
        .routes(routes!(volumes_remove))
        .routes(routes!(system_op))
        .routes(routes!(agent_op))
        .routes(routes!(events))
}

type Who = Extension<Principal>;
type St = State<Arc<AppState>>;
type QueryMap = Query<HashMap<String, String>>;
/// A JSON body that may be absent; a malformed one is a 400 in the API's error shape.
type JsonBody = Result<Option<Json<Value>>, JsonRejection>;

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

fn body_params(body: JsonBody) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match body.map(|Json(v)| v) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

/// Admits the call through the one pipeline ([`crate::core::call`]); a pending action is the
/// API's 202.
async fn admit(
    state: &AppState,
    who: &Principal,
    host: &str,
    method: &str,
    params: Value,
    mode: Mode,
) -> Result<Admitted, ApiError> {
    let request = CallRequest {
        hosts: Hosts::Key(host),
        method,
        params: Some(params),
        timeout: None,
        mode,
    };
    match crate::core::call::admit(state, who, request).await? {
        Admission::Run(a) => Ok(*a),
        Admission::Pending(action) => Err(ApiError::pending(action)),
    }
}

/// Calls method `M` on the host and answers with its result, read as `M`'s result type, or its
/// error as an HTTP error.
pub async fn forward<M: Method>(
    state: &AppState,
    who: &Principal,
    host: &str,
    params: Map<String, Value>,
) -> Result<Json<M::Result>, ApiError> {
    let admitted = admit(
        state,
        who,
        host,
        M::NAME,
        Value::Object(params),
        Mode::Unary,
    )
    .await?;
    admitted
        .call_as::<M>(state)
        .await
        .map_err(|e| ApiError::from_rpc(e.to_rpc()))?
        .map(Json)
        .map_err(ApiError::from_rpc)
}

/// Like [`forward`] for a call that may open a stream: a stream is answered as NDJSON lines
/// `{"seq":n,"data":…}` ending with `{"end":{…}}`; anything else as plain JSON, read as `M`'s
/// result type.
pub async fn forward_stream<M: Method>(
    state: &AppState,
    who: &Principal,
    host: &str,
    params: Map<String, Value>,
) -> Result<HttpResponse, ApiError> {
    let admitted = admit(
        state,
        who,
        host,
        M::NAME,
        Value::Object(params),
        Mode::Stream,
    )
    .await?;
    answer_stream(state, admitted, |v| {
        let typed = crate::core::call::read_result::<M>(v)?;
        serde_json::to_value(typed).map_err(tomo_proto::rpc::RpcError::internal)
    })
    .await
}

/// The answer of an admitted call that may open a stream; `check` reads a result that is not
/// a stream.
async fn answer_stream(
    state: &AppState,
    admitted: Admitted,
    check: impl FnOnce(Value) -> Result<Value, tomo_proto::rpc::RpcError>,
) -> Result<HttpResponse, ApiError> {
    let (resp, handle) = admitted
        .call_stream(state)
        .await
        .map_err(|e| ApiError::from_rpc(e.to_rpc()))?;
    match (resp.outcome, handle) {
        (Outcome::Error(e), _) => Err(ApiError::from_rpc(e)),
        (Outcome::Result(_), Some(handle)) => Ok(ndjson(handle, state.shutdown.clone())),
        (Outcome::Result(v), None) => {
            Ok(Json(check(v).map_err(ApiError::from_rpc)?).into_response())
        }
    }
}

/// The last line of a stream (or follow) the control plane's shutdown ends.
pub(crate) fn shutdown_end() -> Value {
    stream_cut(
        "control_plane_shutdown",
        "the control plane is shutting down (a restart?), so the stream ended here; run the command again once it is back",
    )
}

/// The last line of a stream that did not end on the host.
fn stream_cut(reason: &str, message: &str) -> Value {
    json!({"end": {"reason": reason, "sent": 0,
        "error": {"code": tomo_proto::rpc::code::CONNECTION_LOST, "message": message}}})
}

pub(crate) fn line(v: &impl serde::Serialize) -> Result<Bytes, Infallible> {
    // The API's own types and JSON values always serialize; said, were one not to.
    let mut text = serde_json::to_string(v)
        .unwrap_or_else(|e| json!({"error": {"message": e.to_string()}}).to_string());
    text.push('\n');
    Ok(Bytes::from(text))
}

/// The stream's NDJSON answer. When the control plane shuts down, the stream ends with a line
/// that says so (issue 13.8: it used to blame the host's connection, or just break off).
fn ndjson(handle: StreamHandle, shutdown: CancellationToken) -> HttpResponse {
    let opening = futures_util::stream::once(std::future::ready(line(
        &json!({"stream": handle.id(), "window": methods::STREAM_WINDOW}),
    )));
    let lines = futures_util::stream::unfold(Some(handle), move |state| {
        let shutdown = shutdown.clone();
        async move {
            let mut handle = state?;
            // The shutdown first: stopping also ends the hosts' sessions, and so this stream.
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Some((line(&shutdown_end()), None)),
                n = handle.next() => n,
            };
            match next {
                Some(StreamEvent::Data { seq, data }) => {
                    Some((line(&json!({"seq": seq, "data": data})), Some(handle)))
                }
                Some(StreamEvent::End(end)) => Some((line(&json!({ "end": end })), None)),
                None => Some((
                    line(&stream_cut(
                        "connection_lost",
                        "the connection to the host was lost",
                    )),
                    None,
                )),
            }
        }
    });
    (
        [(http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(futures_util::StreamExt::chain(opening, lines)),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StreamBody {
    /// The agent method, e.g. `docker.containers.logs`.
    method: String,
    /// The method's params, an object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
}

/// Call an agent method, streamed.
///
/// Any method by name, with its params; when it opens a stream, the stream is answered as
/// newline-delimited JSON at the pace the client reads it.
#[utoipa::path(
    post,
    path = "/hosts/{host}/stream",
    tag = "rpc",
    params(HostPath),
    request_body = StreamBody,
    responses(
        (status = 200, description = "A method that opens a stream (logs with `follow`, stats with `stream`, a pull with `progress`, an exec) answers NDJSON: `{\"stream\", \"window\"}`, then `{\"seq\", \"data\"}` lines, then `{\"end\": {…}}`. Any other method answers its result as JSON.", content((Object = "application/json"), (Object = "application/x-ndjson"))),
        AgentErrors,
        Pending,
    )
)]
async fn stream_call(
    State(state): St,
    Extension(who): Who,
    Path(host): Path<String>,
    body: Result<Json<StreamBody>, axum::extract::rejection::JsonRejection>,
) -> Result<HttpResponse, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let params = match body.params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        // Anything else is the pipeline's to check (an object, for a stream).
        Some(p) => p,
    };
    let admitted = admit(&state, &who, &host, &body.method, params, Mode::Stream).await?;
    // Any method by name: its result goes as the agent sent it (the JSON-RPC envelope's).
    answer_stream(&state, admitted, Ok).await
}

/// Host information.
///
/// OS, kernel, architecture, hostname, uptime, CPUs, memory, Docker version and engine id (`system.info`).
#[utoipa::path(
    get,
    path = "/hosts/{host}/info",
    tag = "system",
    params(HostPath),
    responses(
        (status = 200, description = "The `system.info` result.", body = methods::SystemInfoResult),
        AgentErrors,
    )
)]
async fn info(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
) -> Result<Json<methods::SystemInfoResult>, ApiError> {
    forward::<methods::SystemInfo>(&s, &w, &h, Map::new()).await
}

/// List containers.
///
/// `docker.containers.list`.
#[utoipa::path(
    get,
    path = "/hosts/{host}/containers",
    tag = "containers",
    params(HostPath, ("all" = Option<bool>, Query, description = "Include stopped containers.")),
    responses(
        (status = 200, description = "The containers.", body = Vec<methods::ContainerSummary>),
        AgentErrors,
    )
)]
async fn containers_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    Query(q): QueryMap,
) -> Result<Json<Vec<methods::ContainerSummary>>, ApiError> {
    forward::<methods::DockerContainersList>(&s, &w, &h, query_params(q)).await
}

/// Run a container.
///
/// Create and start a container, pulling its image when missing (`docker.containers.run`). The
/// host policy decides which options are allowed. Admin.
#[utoipa::path(
    post,
    path = "/hosts/{host}/containers",
    tag = "containers",
    params(HostPath),
    request_body(content = Option<Object>, description = "The params of `docker.containers.run`: `image` and the container options (docs/protocol.md)."),
    responses(
        (status = 200, description = "`{id, name, state, pulled, warnings}`.", body = methods::RunResult),
        AgentErrors,
        Pending,
    )
)]
async fn containers_run(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: JsonBody,
) -> Result<Json<methods::RunResult>, ApiError> {
    forward::<methods::DockerContainersRun>(&s, &w, &h, body_params(body)?).await
}

/// Show a container.
///
/// Its configuration and state, secret-looking environment values redacted
/// (`docker.containers.get`).
#[utoipa::path(
    get,
    path = "/hosts/{host}/containers/{container}",
    tag = "containers",
    params(ContainerPath),
    responses(
        (status = 200, description = "The container.", body = methods::ContainerDetails),
        AgentErrors,
    )
)]
async fn containers_get(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
) -> Result<Json<methods::ContainerDetails>, ApiError> {
    let mut p = Map::new();
    p.insert("container".into(), Value::String(c));
    forward::<methods::DockerContainersGet>(&s, &w, &h, p).await
}

/// Remove a container.
///
/// `docker.containers.remove`. Execute.
#[utoipa::path(
    delete,
    path = "/hosts/{host}/containers/{container}",
    tag = "containers",
    params(ContainerPath, ("force" = Option<bool>, Query, description = "Kill a running container first."), ("volumes" = Option<bool>, Query, description = "Also remove its anonymous volumes.")),
    responses(
        (status = 200, description = "`{id, name, state}`.", body = methods::ContainerAction),
        AgentErrors,
        Pending,
    )
)]
async fn containers_remove(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<Json<methods::ContainerAction>, ApiError> {
    let mut p = query_params(q);
    p.insert("container".into(), Value::String(c));
    forward::<methods::DockerContainersRemove>(&s, &w, &h, p).await
}

/// The body of `POST …/containers/{container}/start`: none (or `{}`).
// The document's view of the method's params (the agent checks them).
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {}

/// The body of `POST …/containers/{container}/stop` and `…/restart`.
// The document's view of the method's params (the agent checks them).
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// Seconds to wait for the container to exit before it is killed; 10 by default.
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    timeout: Option<u32>,
}

/// The body of `POST …/containers/{container}/update`.
// The document's view of the method's params (the agent checks them).
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Seconds to wait for the new container to be running (and healthy); 30 by default.
    #[schema(minimum = 0)]
    health_timeout: Option<u64>,
    /// Recreate the container even when the pull brought the image it already runs (by
    /// default such an update changes nothing and says so).
    #[serde(default)]
    force: bool,
}

/// The body of `POST …/containers/{container}/exec`.
// The document's view of the method's params (the agent checks them).
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The argument vector; no shell is involved unless the vector starts one.
    cmd: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    /// Open an interactive session: an NDJSON stream of output taking input through
    /// `stream.write` and `stream.resize`.
    #[serde(default)]
    interactive: bool,
    /// Allocate a terminal (interactive sessions only).
    #[serde(default)]
    tty: bool,
    /// One-shot only: seconds before the command is abandoned; 60 by default, 600 at most.
    #[schema(minimum = 0)]
    timeout: Option<u64>,
}

/// The container method `M` with the body's options and the container from the path.
async fn container_method<M: Method>(
    s: &Arc<AppState>,
    w: &Principal,
    h: &str,
    c: String,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let mut p = body_params(body)?;
    p.insert("container".into(), Value::String(c));
    forward_stream::<M>(s, w, h, p).await
}

/// One container action: its route, document entry and handler, which calls `$method` with the
/// body's options and the container from the path.
macro_rules! container_action {
    ($handler:ident, $action:literal, $method:ty, $body:ty, $ok:literal, $content:tt,
     $(#[$doc:meta])*) => {
        $(#[$doc])*
        #[utoipa::path(
            post,
            path = concat!("/hosts/{host}/containers/{container}/", $action),
            tag = "containers",
            operation_id = stringify!($handler),
            params(ContainerPath),
            request_body(content = $body),
            responses(
                (status = 200, description = $ok, content $content),
                AgentErrors,
                Pending,
            )
        )]
        async fn $handler(
            State(s): St,
            Extension(w): Who,
            Path((h, c)): Path<(String, String)>,
            body: JsonBody,
        ) -> Result<HttpResponse, ApiError> {
            container_method::<$method>(&s, &w, &h, c, body).await
        }
    };
}

container_action!(start_container, "start", methods::DockerContainersStart, Option<StartBody>,
    "What the start did: `{id, name, state}`.",
    ((methods::ContainerAction = "application/json")),
    /// Start a container.
    ///
    /// `docker.containers.start`. Execute.
);
container_action!(stop_container, "stop", methods::DockerContainersStop, Option<StopBody>,
    "What the stop did: `{id, name, state}`.",
    ((methods::ContainerAction = "application/json")),
    /// Stop a container.
    ///
    /// `docker.containers.stop`. Execute.
);
container_action!(restart_container, "restart", methods::DockerContainersRestart, Option<StopBody>,
    "What the restart did: `{id, name, state}`.",
    ((methods::ContainerAction = "application/json")),
    /// Restart a container.
    ///
    /// `docker.containers.restart`. Execute.
);
container_action!(update_container, "update", methods::DockerContainersUpdate, Option<UpdateBody>,
    "`{name, old_id, new_id, old_image_id, new_image_id, image_changed, state}`.",
    ((methods::UpdateResult = "application/json")),
    /// Update a container.
    ///
    /// `docker.containers.update`: pull its image again and recreate it, rolling back when the
    /// new container is not running (and healthy) in time. Execute.
);
container_action!(exec_in_container, "exec", methods::DockerContainersExec, ExecBody,
    "`{exit_code, stdout, stderr, truncated, timed_out}`; an interactive exec answers NDJSON.",
    ((methods::ExecOutput = "application/json"), (Object = "application/x-ndjson")),
    /// Run a command in a container.
    ///
    /// `docker.containers.exec`: one-shot (its output), or an interactive session (a stream).
    /// Admin.
);

/// A container's logs.
///
/// `docker.containers.logs`; with `follow`, a stream.
#[utoipa::path(
    get,
    path = "/hosts/{host}/containers/{container}/logs",
    tag = "containers",
    params(ContainerPath, ("tail" = Option<u64>, Query, description = "The last N lines only."), ("since" = Option<i64>, Query, minimum = 0, maximum = 2147483647, description = "Only lines since this Unix time (seconds)."), ("until" = Option<i64>, Query, minimum = 0, maximum = 2147483647, description = "Only lines before this Unix time (seconds)."), ("timestamps" = Option<bool>, Query, description = "Prefix lines with timestamps."), ("follow" = Option<bool>, Query, description = "Stream new lines as NDJSON.")),
    responses(
        (status = 200, description = "The logs; with `follow`, NDJSON.", content((methods::LogsResult = "application/json"), (Object = "application/x-ndjson"))),
        AgentErrors,
    )
)]
async fn logs(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<HttpResponse, ApiError> {
    let mut p = query_params(q);
    p.insert("container".into(), Value::String(c));
    forward_stream::<methods::DockerContainersLogs>(&s, &w, &h, p).await
}

/// A container's resource usage.
///
/// `docker.containers.stats`: one sample, or a stream with `stream`.
#[utoipa::path(
    get,
    path = "/hosts/{host}/containers/{container}/stats",
    tag = "containers",
    params(ContainerPath, ("stream" = Option<bool>, Query, description = "Stream samples as NDJSON.")),
    responses(
        (status = 200, description = "One sample; with `stream`, NDJSON.", content((methods::ContainerStats = "application/json"), (Object = "application/x-ndjson"))),
        AgentErrors,
    )
)]
async fn stats(
    State(s): St,
    Extension(w): Who,
    Path((h, c)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<HttpResponse, ApiError> {
    let mut p = query_params(q);
    p.insert("container".into(), Value::String(c));
    forward_stream::<methods::DockerContainersStats>(&s, &w, &h, p).await
}

/// List images.
///
/// `docker.images.list`.
#[utoipa::path(
    get,
    path = "/hosts/{host}/images",
    tag = "images",
    params(HostPath, ("all" = Option<bool>, Query, description = "Include intermediate images.")),
    responses(
        (status = 200, description = "The images.", body = Vec<methods::ImageSummary>),
        AgentErrors,
    )
)]
async fn images_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    Query(q): QueryMap,
) -> Result<Json<Vec<methods::ImageSummary>>, ApiError> {
    forward::<methods::DockerImagesList>(&s, &w, &h, query_params(q)).await
}

/// Remove an image.
///
/// `docker.images.remove`; the reference is a query parameter because it contains `/` and `:`.
/// Execute.
#[utoipa::path(
    delete,
    path = "/hosts/{host}/images",
    tag = "images",
    params(HostPath, ("image" = String, Query, description = "Image reference or id."), ("force" = Option<bool>, Query, description = "Docker's force removal.")),
    responses(
        (status = 200, description = "`{untagged, deleted}`.", body = methods::ImageRemoved),
        AgentErrors,
        Pending,
    )
)]
async fn images_remove(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    Query(q): QueryMap,
) -> Result<Json<methods::ImageRemoved>, ApiError> {
    let mut p = query_params(q);
    if let Some(v) = p.get_mut("image")
        && !v.is_string()
    {
        *v = Value::String(v.to_string());
    }
    forward::<methods::DockerImagesRemove>(&s, &w, &h, p).await
}

/// Pull an image.
///
/// `docker.images.pull`; with `progress`, a stream of progress messages. Execute.
#[utoipa::path(
    post,
    path = "/hosts/{host}/images/pull",
    tag = "images",
    params(HostPath),
    request_body(content = Option<Object>, description = "`{\"image\": \"name[:tag]\", \"auth\"?: {username, password, server?}, \"progress\"?: bool}`."),
    responses(
        (status = 200, description = "`{image, id}`; with `progress`, NDJSON ending with it.", content((methods::PullResult = "application/json"), (Object = "application/x-ndjson"))),
        AgentErrors,
        Pending,
    )
)]
async fn images_pull(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    forward_stream::<methods::DockerImagesPull>(&s, &w, &h, body_params(body)?).await
}

/// List networks.
///
/// `docker.networks.list`.
#[utoipa::path(
    get,
    path = "/hosts/{host}/networks",
    tag = "networks",
    params(HostPath),
    responses(
        (status = 200, description = "The networks.", body = Vec<methods::NetworkSummary>),
        AgentErrors,
    )
)]
async fn networks_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
) -> Result<Json<Vec<methods::NetworkSummary>>, ApiError> {
    forward::<methods::DockerNetworksList>(&s, &w, &h, Map::new()).await
}

/// Create a network.
///
/// `docker.networks.create`. Execute.
#[utoipa::path(
    post,
    path = "/hosts/{host}/networks",
    tag = "networks",
    params(HostPath),
    request_body(content = Option<Object>, description = "`{\"name\", \"driver\"?, \"internal\"?, \"labels\"?}`."),
    responses(
        (status = 200, description = "`{id, name}`.", body = methods::ObjectRef),
        AgentErrors,
        Pending,
    )
)]
async fn networks_create(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: JsonBody,
) -> Result<Json<methods::ObjectRef>, ApiError> {
    forward::<methods::DockerNetworksCreate>(&s, &w, &h, body_params(body)?).await
}

/// Remove a network.
///
/// `docker.networks.remove`. Execute.
#[utoipa::path(
    delete,
    path = "/hosts/{host}/networks/{name}",
    tag = "networks",
    params(NamePath),
    responses(
        (status = 200, description = "`{id, name}`.", body = methods::ObjectRef),
        AgentErrors,
        Pending,
    )
)]
async fn networks_remove(
    State(s): St,
    Extension(w): Who,
    Path((h, name)): Path<(String, String)>,
) -> Result<Json<methods::ObjectRef>, ApiError> {
    let mut p = Map::new();
    p.insert("name".into(), Value::String(name));
    forward::<methods::DockerNetworksRemove>(&s, &w, &h, p).await
}

/// List volumes.
///
/// `docker.volumes.list`.
#[utoipa::path(
    get,
    path = "/hosts/{host}/volumes",
    tag = "volumes",
    params(HostPath),
    responses(
        (status = 200, description = "The volumes.", body = Vec<methods::VolumeSummary>),
        AgentErrors,
    )
)]
async fn volumes_list(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
) -> Result<Json<Vec<methods::VolumeSummary>>, ApiError> {
    forward::<methods::DockerVolumesList>(&s, &w, &h, Map::new()).await
}

/// Create a volume.
///
/// `docker.volumes.create`; the host policy decides which driver options are allowed. Execute.
#[utoipa::path(
    post,
    path = "/hosts/{host}/volumes",
    tag = "volumes",
    params(HostPath),
    request_body(content = Option<Object>, description = "`{\"name\", \"driver\"?, \"driver_opts\"?, \"labels\"?}`."),
    responses(
        (status = 200, description = "`{id, name}`.", body = methods::ObjectRef),
        AgentErrors,
        Pending,
    )
)]
async fn volumes_create(
    State(s): St,
    Extension(w): Who,
    Path(h): Path<String>,
    body: JsonBody,
) -> Result<Json<methods::ObjectRef>, ApiError> {
    forward::<methods::DockerVolumesCreate>(&s, &w, &h, body_params(body)?).await
}

/// Remove a volume.
///
/// `docker.volumes.remove`. Execute.
#[utoipa::path(
    delete,
    path = "/hosts/{host}/volumes/{name}",
    tag = "volumes",
    params(NamePath, ("force" = Option<bool>, Query, description = "Remove even when in use (Docker still refuses while a container uses it).")),
    responses(
        (status = 200, description = "`{id, name}`.", body = methods::ObjectRef),
        AgentErrors,
        Pending,
    )
)]
async fn volumes_remove(
    State(s): St,
    Extension(w): Who,
    Path((h, name)): Path<(String, String)>,
    Query(q): QueryMap,
) -> Result<Json<methods::ObjectRef>, ApiError> {
    let mut p = query_params(q);
    p.insert("name".into(), Value::String(name));
    forward::<methods::DockerVolumesRemove>(&s, &w, &h, p).await
}

/// What `POST /hosts/{host}/system/{op}` answers: one of the three methods' results (the
/// agent's own types; which one follows from `op`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum SystemOpResult {
    Exec(methods::ExecOutput),
    Preflight(methods::PreflightResult),
    Volumes(methods::PreparedVolumes),
}

/// What `POST /hosts/{host}/agent/{op}` answers: its method's result.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum AgentOpResult {
    Update(methods::AgentSettings),
    Restart(methods::Restarting),
}

/// Run a host-level operation.
///
/// `exec` (`system.exec`: an allowlisted command line, no shell; admin), `preflight_check`
/// (read) or `prepare_volumes` (directories under the agent's volume base; execute).
#[utoipa::path(
    post,
    path = "/hosts/{host}/system/{op}",
    tag = "system",
    params(HostPath, ("op" = inline(crate::http::openapi::SystemOpName), Path, description = "The operation.")),
    request_body(content = Option<Object>, description = "The method's params (docs/protocol.md): `{\"command\", \"timeout\"?}` (exec), `{\"ports\"?, \"min_free_disk\"?, \"min_docker_version\"?, \"architectures\"?}` (preflight_check), `{\"volumes\": [{\"path\", \"uid\"?, \"gid\"?, \"mode\"?}]}` (prepare_volumes)."),
    responses(
        (status = 200, description = "The method's result: `ExecOutput` (exec), `PreflightResult` (preflight_check) or `PreparedVolumes` (prepare_volumes).", body = SystemOpResult),
        AgentErrors,
        Pending,
    )
)]
async fn system_op(
    State(s): St,
    Extension(w): Who,
    Path((h, op)): Path<(String, String)>,
    body: JsonBody,
) -> Result<Json<SystemOpResult>, ApiError> {
    let p = body_params(body)?;
    Ok(Json(match op.as_str() {
        "exec" => SystemOpResult::Exec(forward::<methods::SystemExec>(&s, &w, &h, p).await?.0),
        "preflight_check" => SystemOpResult::Preflight(
            forward::<methods::SystemPreflightCheck>(&s, &w, &h, p)
                .await?
                .0,
        ),
        "prepare_volumes" => SystemOpResult::Volumes(
            forward::<methods::SystemPrepareVolumes>(&s, &w, &h, p)
                .await?
                .0,
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no system operation {op:?}"),
            ));
        }
    }))
}

/// Change the agent's settings or restart it.
///
/// `update` (`agent.update`: runtime settings, never the host policy) or `restart`
/// (`agent.restart`: answers, then reconnects as a new process). Admin.
#[utoipa::path(
    post,
    path = "/hosts/{host}/agent/{op}",
    tag = "agent",
    params(HostPath, ("op" = inline(crate::http::openapi::AgentOpName), Path, description = "The operation.")),
    request_body(content = Option<Object>, description = "`update`: the settings to change: `log_level`, `metrics_interval`, `health_interval`."),
    responses(
        (status = 200, description = "The method's result: `AgentSettings` (update) or `Restarting` (restart).", body = AgentOpResult),
        AgentErrors,
        Pending,
    )
)]
async fn agent_op(
    State(s): St,
    Extension(w): Who,
    Path((h, op)): Path<(String, String)>,
    body: JsonBody,
) -> Result<Json<AgentOpResult>, ApiError> {
    let p = body_params(body)?;
    Ok(Json(match op.as_str() {
        "update" => AgentOpResult::Update(forward::<methods::AgentUpdate>(&s, &w, &h, p).await?.0),
        "restart" => {
            AgentOpResult::Restart(forward::<methods::AgentRestart>(&s, &w, &h, p).await?.0)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no agent operation {op:?}"),
            ));
        }
    }))
}

/// A host's Docker engine events.
///
/// Stored events, oldest first; with `follow`, newline-delimited JSON that goes on with live
/// events. Read.
#[utoipa::path(
    get,
    path = "/hosts/{host}/events",
    tag = "events",
    params(
        HostPath,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1–10000; 100 by default."),
        ("after" = Option<i64>, Query, description = "Only events after this one (its `seq`)."),
        ("follow" = Option<bool>, Query, description = "Go on with live events, as NDJSON."),
    ),
    responses(
        (status = 200, description = "The events, oldest first; with `follow`, NDJSON (a slow reader is told `{\"lagged\": n}`).", content(([crate::core::events::EventView] = "application/json"), (Object = "application/x-ndjson"))),
        (status = 400, description = "`bad_request`: `limit`, `after` or `follow` (`true` or `false`) is not valid.", body = crate::http::api::ErrorBody),
        HostErrors,
    )
)]
async fn events(
    State(state): St,
    Extension(who): Who,
    Path(host): Path<String>,
    Query(q): QueryMap,
) -> Result<HttpResponse, ApiError> {
    who.require(methods::Level::Read)?;
    let h = resolve(&state, &who, &host).await?;
    let (limit, after) = crate::http::api::query_page(&q, "an event's seq")?;
    let follow = crate::http::api::query_bool(&q, "follow")?;
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut live = state.events.subscribe();
    let backlog = state.store.docker_events(&h.id, after, limit).await?;
    let views: Vec<crate::core::events::EventView> = backlog
        .iter()
        .filter_map(crate::core::events::view)
        .collect();
    if !follow {
        return Ok(Json(views).into_response());
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
                _ = shutdown.cancelled() => {
                    let _ = tx.send(line(&shutdown_end())).await;
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    /// A schema as JSON without its prose (descriptions are written for each side).
    fn shape(schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) -> Value {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    m.remove("description");
                    m.values_mut().for_each(strip);
                }
                Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(schema).expect("a schema is JSON");
        strip(&mut v);
        v
    }

    /// The method's params schema without `container`, which the route takes from its path.
    fn params_without_container<P: PartialSchema>() -> Value {
        let mut v = shape(P::schema());
        let props = v["properties"]
            .as_object_mut()
            .expect("params are an object");
        assert!(props.remove("container").is_some(), "{v}");
        if props.is_empty() {
            v.as_object_mut().expect("object").remove("properties");
        }
        if let Some(required) = v.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| r != "container");
            if required.is_empty() {
                v.as_object_mut().expect("object").remove("required");
            }
        }
        v
    }

    /// Issue 14: the document's body of each container action is exactly its method's params
    /// (the path's container aside): a body the document allows is one the pipeline reads.
    /// It found `ExecBody`'s `env`, `interactive` and `tty` documented as nullable, which the
    /// params type refuses.
    #[test]
    fn container_action_bodies_are_their_methods_params() {
        let cases = [
            (
                "start",
                shape(StartBody::schema()),
                params_without_container::<methods::ContainerParams>(),
            ),
            (
                "stop",
                shape(StopBody::schema()),
                params_without_container::<methods::StopParams>(),
            ),
            (
                "update",
                shape(UpdateBody::schema()),
                params_without_container::<methods::UpdateParams>(),
            ),
            (
                "exec",
                shape(ExecBody::schema()),
                params_without_container::<methods::ExecParams>(),
            ),
        ];
        for (action, body, params) in cases {
            assert_eq!(body, params, "{action}");
        }
    }
}
