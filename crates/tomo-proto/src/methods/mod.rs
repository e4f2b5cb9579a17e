//! One type per agent method, tied to its params, result and permission level by [`Method`],
//! and the notifications the agent pushes.
//!
//! The agent's dispatcher is a closed table built from these types: a method that is not declared
//! here, with a level, cannot be registered.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rpc::RpcError;

mod docker;
mod stream;
mod system;

pub use docker::*;
pub use stream::*;
pub use system::*;

/// Permission level of a method, ordered: `Read < Execute < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Read,
    Execute,
    Admin,
}

/// How long the agent lets one call of a method run before it cancels it and frees its slot
/// (issue 13.5): a hung Docker engine cannot hold the agent's command slots for long. The table
/// is in docs/protocol.md ("Deadlines").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// At most this many seconds, and no longer than the control plane waits for the answer
    /// (`meta.wait_ms`): a call nobody waits for any more is cancelled.
    Cut(u64),
    /// At most this many seconds, even after the control plane stopped waiting: a call that
    /// must not be cut in the middle (an update that rolls back what it began), or whose work
    /// goes on when it is cut (an exec's process: its slot stays taken while it may run).
    Whole(u64),
}

impl Deadline {
    /// How long a call may run, given how long the control plane waits for it (`None`: it did
    /// not say).
    pub fn limit(self, wait_ms: Option<u64>) -> std::time::Duration {
        use std::time::Duration;
        match self {
            Self::Cut(s) => {
                let own = Duration::from_secs(s);
                wait_ms.map_or(own, |w| own.min(Duration::from_millis(w)))
            }
            Self::Whole(s) => Duration::from_secs(s),
        }
    }
}

/// A JSON-RPC method the agent serves.
pub trait Method {
    /// Wire name, e.g. `system.info`.
    const NAME: &'static str;
    /// Lowest role allowed to call it.
    const LEVEL: Level;
    /// How long a call may run on the agent.
    const DEADLINE: Deadline;
    type Params: DeserializeOwned + Serialize + Send + 'static;
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

/// Params of a method that takes none: absent, `{}` or `[]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

macro_rules! method {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $level:ident, $deadline:expr, $params:ty, $result:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl Method for $ty {
            const NAME: &'static str = $name;
            const LEVEL: Level = Level::$level;
            const DEADLINE: Deadline = $deadline;
            type Params = $params;
            type Result = $result;
        }
    };
}

method!(
    /// Liveness check.
    AgentPing, "agent.ping", Read, Deadline::Cut(10), NoParams, Pong
);
method!(
    /// OS, kernel, architecture, hostname, uptime, CPUs, memory, Docker version and engine id.
    SystemInfo, "system.info", Read, Deadline::Cut(30), NoParams, SystemInfoResult
);
method!(
    /// The latest background metrics sample; never samples on the request path.
    SystemGetMetrics, "system.get_metrics", Read, Deadline::Cut(10), NoParams, Metrics
);
method!(
    /// Change the agent's runtime settings (log level, push intervals); never the host policy.
    AgentUpdate, "agent.update", Admin, Deadline::Cut(10), AgentSettingsPatch, AgentSettings
);
method!(
    /// Restart the agent process gracefully (answers first, then reconnects as a new process).
    AgentRestart, "agent.restart", Admin, Deadline::Cut(10), NoParams, Restarting
);
method!(
    /// Rotate the agent's key: the agent makes a new key, keeps it sealed, and offers it (vouched
    /// for by the current key) at its next authentication, which follows at once. No new
    /// registration code is needed; the agent id stays.
    AgentRotateKey, "agent.rotate_key", Admin, Deadline::Cut(30), NoParams, RotatingKey
);
method!(
    /// Run an allowlisted command line, split into an argument vector by the agent (no shell).
    SystemExec, "system.exec", Admin, Deadline::Cut(600), SystemExecParams, ExecOutput
);
method!(
    /// Can this host take a deployment: Docker, disk, architecture, ports, data directory.
    SystemPreflightCheck, "system.preflight_check", Read, Deadline::Cut(60), PreflightParams, PreflightResult
);
method!(
    /// Create directories with owner and mode, only under the agent's volume base directory.
    SystemPrepareVolumes, "system.prepare_volumes", Execute, Deadline::Cut(60), PrepareVolumesParams, PreparedVolumes
);
method!(
    /// Containers on the host.
    DockerContainersList, "docker.containers.list", Read, Deadline::Cut(30), ContainersListParams, Vec<ContainerSummary>
);
method!(
    /// One container's configuration and state, secret-looking environment values redacted.
    DockerContainersGet, "docker.containers.get", Read, Deadline::Cut(30), ContainerParams, ContainerDetails
);
method!(
    /// Create and start a container, pulling its image when missing.
    DockerContainersRun, "docker.containers.run", Admin, Deadline::Cut(600), RunParams, RunResult
);
method!(
    /// Start a stopped container.
    DockerContainersStart, "docker.containers.start", Execute, Deadline::Cut(60), ContainerParams, ContainerAction
);
method!(
    /// Stop a container (SIGTERM, then SIGKILL after `timeout`, 10 s by default).
    DockerContainersStop, "docker.containers.stop", Execute, Deadline::Cut(120), StopParams, ContainerAction
);
method!(
    /// Restart a container.
    DockerContainersRestart, "docker.containers.restart", Execute, Deadline::Cut(120), StopParams, ContainerAction
);
method!(
    /// Remove a container.
    DockerContainersRemove, "docker.containers.remove", Execute, Deadline::Cut(60), RemoveParams, ContainerAction
);
method!(
    /// A container's logs, or a stream of them with `follow`.
    DockerContainersLogs, "docker.containers.logs", Read, Deadline::Cut(60), LogsParams, Streamed<LogsResult>
);
method!(
    /// A container's resource usage: one sample, or a stream with `stream`.
    DockerContainersStats, "docker.containers.stats", Read, Deadline::Cut(30), StatsParams, Streamed<ContainerStats>
);
method!(
    /// Run a command in a container: one-shot with output and exit code, or an interactive stream.
    DockerContainersExec, "docker.containers.exec", Admin, Deadline::Whole(600), ExecParams, Streamed<ExecOutput>
);
method!(
    /// Pull the container's image again and recreate it with the same configuration; roll back
    /// to the old container when the new one is not running (and healthy) in time.
    DockerContainersUpdate, "docker.containers.update", Execute, Deadline::Whole(900), UpdateParams, UpdateResult
);
method!(
    /// Images on the host.
    DockerImagesList, "docker.images.list", Read, Deadline::Cut(30), ImagesListParams, Vec<ImageSummary>
);
method!(
    /// Pull an image; with `progress`, a stream of progress messages.
    DockerImagesPull, "docker.images.pull", Execute, Deadline::Cut(900), PullParams, Streamed<PullResult>
);
method!(
    /// Remove an image.
    DockerImagesRemove, "docker.images.remove", Execute, Deadline::Cut(60), ImageRemoveParams, ImageRemoved
);
method!(
    /// Networks on the host.
    DockerNetworksList, "docker.networks.list", Read, Deadline::Cut(30), NoParams, Vec<NetworkSummary>
);
method!(
    /// Create a network.
    DockerNetworksCreate, "docker.networks.create", Execute, Deadline::Cut(60), NetworkCreateParams, ObjectRef
);
method!(
    /// Remove a network.
    DockerNetworksRemove, "docker.networks.remove", Execute, Deadline::Cut(60), NetworkRemoveParams, ObjectRef
);
method!(
    /// Volumes on the host.
    DockerVolumesList, "docker.volumes.list", Read, Deadline::Cut(30), NoParams, Vec<VolumeSummary>
);
method!(
    /// Create a volume.
    DockerVolumesCreate, "docker.volumes.create", Execute, Deadline::Cut(60), VolumeCreateParams, ObjectRef
);
method!(
    /// Remove a volume.
    DockerVolumesRemove, "docker.volumes.remove", Execute, Deadline::Cut(120), VolumeRemoveParams, ObjectRef
);
method!(
    /// The consumer has taken a stream's data up to `seq`: the agent may send more.
    StreamAcknowledge, "stream.ack", Read, Deadline::Cut(10), StreamRef, StreamState
);
method!(
    /// Close a stream; the agent answers, then sends its `stream.end`.
    StreamClose, "stream.close", Read, Deadline::Cut(10), StreamRef, StreamState
);
method!(
    /// Input for an interactive exec.
    StreamWrite, "stream.write", Admin, Deadline::Cut(10), StreamWriteParams, StreamState
);
method!(
    /// A new terminal size for an interactive exec.
    StreamResize, "stream.resize", Admin, Deadline::Cut(10), StreamResizeParams, StreamState
);

/// One method of the protocol: its name, its level, and how its params are read.
#[derive(Clone, Copy)]
pub struct Spec {
    /// Wire name, e.g. `system.info`.
    pub name: &'static str,
    /// Lowest role allowed to call it.
    pub level: Level,
    canonical: fn(Value) -> Result<Value, RpcError>,
}

impl Spec {
    /// The params as the agent will read them: parsed as the method's own params type (a
    /// failure is the agent's own -32602, naming the parameter at fault) and written back from
    /// that type, so that what is sent on is exactly what was checked. Absent params are `{}`,
    /// as for the agent.
    pub fn canonical_params(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let mut params = match params {
            None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
            Some(p) => p,
        };
        integral_numbers(&mut params);
        (self.canonical)(params)
    }
}

/// JSON Schema's `integer` is any number without a fraction, `5.0` too, which serde reads as a
/// float only: such numbers become integers (a float field reads an integer all the same).
fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            // Only where a float is exact: past 2^53 it may already be rounded, and is left a
            // float for the type to refuse.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT {
                *v = if f >= 0.0 {
                    Value::from(f as u64)
                } else {
                    Value::from(f as i64)
                };
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_numbers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

const fn entry<M: Method>() -> Spec {
    Spec {
        name: M::NAME,
        level: M::LEVEL,
        canonical: canonical::<M>,
    }
}

fn canonical<M: Method>(params: Value) -> Result<Value, RpcError> {
    let typed: M::Params = read_params(params)?;
    serde_json::to_value(typed).map_err(RpcError::internal)
}

/// Reads params as `P`, naming the parameter at fault (-32602 with `data.param`): the agent's
/// dispatcher and the control plane's pipeline read them the same way, with the same errors.
pub fn read_params<'de, P, D>(params: D) -> Result<P, RpcError>
where
    P: Deserialize<'de>,
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let data = serde_json::json!({ "param": path });
        if path == "." {
            RpcError::invalid_params(inner).with_data(data)
        } else {
            RpcError::invalid_params(format!("{path}: {inner}")).with_data(data)
        }
    })
}

/// Every method of the protocol with its level and params type. The agent's dispatcher serves
/// exactly these (a test checks it); the control plane refuses a caller below the level, and
/// params its type does not read, before forwarding.
pub const ALL: &[Spec] = &[
    entry::<AgentPing>(),
    entry::<SystemInfo>(),
    entry::<SystemGetMetrics>(),
    entry::<AgentUpdate>(),
    entry::<AgentRestart>(),
    entry::<AgentRotateKey>(),
    entry::<SystemExec>(),
    entry::<SystemPreflightCheck>(),
    entry::<SystemPrepareVolumes>(),
    entry::<DockerContainersList>(),
    entry::<DockerContainersGet>(),
    entry::<DockerContainersRun>(),
    entry::<DockerContainersStart>(),
    entry::<DockerContainersStop>(),
    entry::<DockerContainersRestart>(),
    entry::<DockerContainersRemove>(),
    entry::<DockerContainersLogs>(),
    entry::<DockerContainersStats>(),
    entry::<DockerContainersExec>(),
    entry::<DockerContainersUpdate>(),
    entry::<DockerImagesList>(),
    entry::<DockerImagesPull>(),
    entry::<DockerImagesRemove>(),
    entry::<DockerNetworksList>(),
    entry::<DockerNetworksCreate>(),
    entry::<DockerNetworksRemove>(),
    entry::<DockerVolumesList>(),
    entry::<DockerVolumesCreate>(),
    entry::<DockerVolumesRemove>(),
    entry::<StreamAcknowledge>(),
    entry::<StreamClose>(),
    entry::<StreamWrite>(),
    entry::<StreamResize>(),
];

/// The protocol's entry for a method, `None` for a method the protocol does not have.
pub fn spec(method: &str) -> Option<&'static Spec> {
    ALL.iter().find(|s| s.name == method)
}

/// The method a mistyped name most likely meant: the one whose last segments it is
/// (`ping` → `agent.ping`, `containers.list` → `docker.containers.list`), else the nearest by
/// edit distance, if near enough (at most a third of the name's length, and 3).
pub fn nearest(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return None;
    }
    let dotted = format!(".{name}");
    if let Some(s) = ALL.iter().find(|s| s.name.ends_with(&dotted)) {
        return Some(s.name);
    }
    let limit = (name.chars().count() / 3).clamp(1, 3);
    ALL.iter()
        .map(|s| (edit_distance(name, s.name), s.name))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The level of a method, `None` for a method the protocol does not have.
pub fn level_of(method: &str) -> Option<Level> {
    spec(method).map(|s| s.level)
}

/// Result of `agent.ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Pong {
    pub pong: bool,
    pub agent_version: String,
    /// Agent's clock, Unix milliseconds.
    pub time_ms: i64,
}

/// Result of `system.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct SystemInfoResult {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub uptime_secs: u64,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub docker: DockerStatus,
}

/// What the agent knows of the local Docker engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DockerStatus {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    /// Why the engine is unavailable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Params of `docker.containers.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainersListParams {
    /// Include stopped containers.
    #[serde(default)]
    pub all: bool,
}

/// One container in `docker.containers.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub status: String,
    pub created: i64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A metrics sample: the result of `system.get_metrics` and the params of `metrics.update`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Metrics {
    /// When the sample was taken, Unix milliseconds.
    pub sampled_at_ms: i64,
    /// CPU busy percentage over the last sampling interval, all cores (0–100).
    pub cpu_percent: f64,
    pub memory: Usage,
    pub swap: Usage,
    /// Mounted filesystems backed by a device, each device once.
    pub disks: Vec<DiskUsage>,
    pub network: NetworkRates,
    pub load: [f64; 3],
    pub uptime_secs: u64,
    /// Container counts; `None` when Docker is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerCounts>,
}

/// Used and total bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Usage {
    pub used: u64,
    pub total: u64,
    pub percent: f64,
}

/// One filesystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DiskUsage {
    pub device: String,
    pub mount: String,
    pub used: u64,
    pub total: u64,
    pub percent: f64,
}

/// Network throughput over the last sampling interval, all non-loopback interfaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct NetworkRates {
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
}

/// Running and stopped containers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ContainerCounts {
    pub running: u64,
    pub stopped: u64,
}

/// Notification `health.status`, pushed every 60 s.
pub const HEALTH_STATUS: &str = "health.status";
/// Notification `metrics.update`, pushed every 30 s; params are a [`Metrics`].
pub const METRICS_UPDATE: &str = "metrics.update";

/// Params of `health.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct HealthStatus {
    /// `healthy`, or `degraded` when a dependency (Docker) is unavailable.
    pub status: String,
    pub uptime_secs: u64,
    pub agent_version: String,
    pub docker: DockerStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: the control plane reads params as the agent does, before it sends them.
    #[test]
    fn params_are_read_as_the_methods_type_and_written_back() {
        let list = spec(DockerContainersList::NAME).expect("a method");
        // Absent, null, positional and named params are one canonical object.
        let all = serde_json::json!({"all": true});
        assert_eq!(
            list.canonical_params(None).expect("absent"),
            serde_json::json!({"all": false})
        );
        assert_eq!(
            list.canonical_params(Some(Value::Null)).expect("null"),
            serde_json::json!({"all": false})
        );
        assert_eq!(
            list.canonical_params(Some(serde_json::json!([true])))
                .expect("positional"),
            all
        );
        assert_eq!(
            list.canonical_params(Some(all.clone())).expect("named"),
            all
        );
        // `5.0` is a JSON Schema integer (schemathesis sent `{"timeout": 5524446.0}`).
        let stop = spec(DockerContainersStop::NAME).expect("a method");
        assert_eq!(
            stop.canonical_params(Some(
                serde_json::json!({"container": "web", "timeout": 5.0})
            ))
            .expect("an integral float"),
            serde_json::json!({"container": "web", "timeout": 5})
        );
        let e = stop
            .canonical_params(Some(
                serde_json::json!({"container": "web", "timeout": 5.5}),
            ))
            .expect_err("a fraction");
        assert_eq!(e.data, Some(serde_json::json!({"param": "timeout"})));
        // Past 2^53 a float may be rounded already: it stays a float, and an integer field
        // refuses it rather than take a neighbour.
        let update = spec(DockerContainersUpdate::NAME).expect("a method");
        let e = update
            .canonical_params(Some(
                serde_json::json!({"container": "web", "health_timeout": 9_007_199_254_740_994.0_f64}),
            ))
            .expect_err("past 2^53");
        assert_eq!(e.data, Some(serde_json::json!({"param": "health_timeout"})));
        // A field added later is not written at its default (older agents refuse unknown
        // fields).
        assert_eq!(
            update
                .canonical_params(Some(serde_json::json!({"container": "web"})))
                .expect("defaults"),
            serde_json::json!({"container": "web"})
        );
        let run = spec(DockerContainersRun::NAME).expect("a method");
        let p = run
            .canonical_params(Some(serde_json::json!({"image": "busybox", "cpus": 2.0})))
            .expect("a float field reads an integer");
        assert_eq!(p["cpus"], serde_json::json!(2.0));
        // A wrong type or an unknown field is the agent's -32602, naming the parameter.
        for (bad, param) in [
            (serde_json::json!({"all": "yes"}), "all"),
            (serde_json::json!({"al": true}), "al"),
            (serde_json::json!("all"), "."),
        ] {
            let e = list.canonical_params(Some(bad.clone())).expect_err("bad");
            assert_eq!(e.code, crate::rpc::code::INVALID_PARAMS, "{bad}");
            assert_eq!(e.data, Some(serde_json::json!({ "param": param })), "{bad}");
        }
        // A reference with a path in it never leaves as one (issue 12.2).
        let get = spec(DockerContainersGet::NAME).expect("a method");
        let e = get
            .canonical_params(Some(serde_json::json!({"container": "../x/export"})))
            .expect_err("a path");
        assert_eq!(e.data, Some(serde_json::json!({"param": "container"})));
        assert!(spec("docker.nothing").is_none());
        // Issue 17: an unknown method suggests the nearest.
        assert_eq!(nearest("agent.pong"), Some("agent.ping"));
        assert_eq!(nearest("ping"), Some("agent.ping"));
        assert_eq!(nearest("containers.list"), Some("docker.containers.list"));
        assert_eq!(
            nearest("docker.container.list"),
            Some("docker.containers.list")
        );
        assert_eq!(nearest("frobnicate"), None);
        assert_eq!(nearest(""), None);
        assert_eq!(level_of(DockerContainersRun::NAME), Some(Level::Admin));
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Level::Read < Level::Execute && Level::Execute < Level::Admin);
        assert_eq!(
            serde_json::to_string(&Level::Execute).ok().as_deref(),
            Some("\"execute\"")
        );
    }

    #[test]
    fn no_params_rejects_unknown_fields() {
        assert!(serde_json::from_str::<NoParams>("{}").is_ok());
        assert!(serde_json::from_str::<NoParams>(r#"{"x":1}"#).is_err());
        assert!(serde_json::from_str::<ContainersListParams>(r#"{"all":"yes"}"#).is_err());
    }
}
