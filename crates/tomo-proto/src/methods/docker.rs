//! Params and results of the `docker.*` methods. Names follow Docker's own concepts, in
//! snake_case; sizes are bytes, durations seconds unless a field name says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::refs::{ContainerRef, ImageRef, NetworkRef, VolumeRef};

/// Params of the methods that take only a container (by id, id prefix or name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerParams {
    pub container: ContainerRef,
}

/// Params of `docker.containers.stop` and `docker.containers.restart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub container: ContainerRef,
    /// Seconds to wait for the container to exit before it is killed; 10 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(maximum = 4294967295_u64))]
    pub timeout: Option<u32>,
}

/// Params of `docker.containers.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    pub container: ContainerRef,
    /// Kill a running container first.
    #[serde(default)]
    pub force: bool,
    /// Also remove its anonymous volumes.
    #[serde(default)]
    pub volumes: bool,
}

/// What a state-changing container method did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ContainerAction {
    pub id: String,
    pub name: String,
    /// The container's state afterwards (`running`, `exited`, `removed`, …).
    pub state: String,
}

/// Params of `docker.containers.logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    pub container: ContainerRef,
    /// Last N lines only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only lines since this Unix time (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Only lines before this Unix time (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Prefix each line with Docker's RFC 3339 timestamp.
    #[serde(default)]
    pub timestamps: bool,
    /// Keep the stream open and send new lines as they come (a stream of [`LogChunk`]).
    #[serde(default)]
    pub follow: bool,
}

/// Logs of a container, or one data message of a logs stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct LogChunk {
    /// `stdout`, `stderr`, or `console` for a TTY container.
    pub source: String,
    /// The text, lossily decoded as UTF-8.
    pub text: String,
}

/// Result of `docker.containers.logs` without `follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct LogsResult {
    pub chunks: Vec<LogChunk>,
    /// The output was cut at the response cap: its oldest part is left out (the newest is kept,
    /// like `docker logs --tail`); ask with `tail`, `since` or `until` for the rest.
    pub truncated: bool,
    /// How many bytes of the oldest output were left out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cut_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Params of `docker.containers.stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    pub container: ContainerRef,
    /// Keep sending a sample every second or so (a stream of [`ContainerStats`]).
    #[serde(default)]
    pub stream: bool,
}

/// Resource usage of one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ContainerStats {
    pub id: String,
    pub name: String,
    pub read_at: String,
    /// Percent of one CPU (200 = two CPUs busy), Docker's formula.
    pub cpu_percent: f64,
    pub memory_used: u64,
    pub memory_limit: u64,
    pub memory_percent: f64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub pids: u64,
}

/// Params of `docker.containers.exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub container: ContainerRef,
    /// The argument vector; no shell is involved unless the vector starts one.
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Open an interactive session: a stream of output (`{"b64": …}`) taking input through
    /// `stream.write` and `stream.resize`; `stream.end` carries `{"exit_code": …}`.
    #[serde(default)]
    pub interactive: bool,
    /// Allocate a terminal (interactive sessions only).
    #[serde(default)]
    pub tty: bool,
    /// One-shot only: seconds before the command is abandoned; 60 by default, 600 at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// Result of a one-shot exec or command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ExecOutput {
    /// `None` when the command did not finish within its timeout.
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// A published port: `host_port` on `host_ip` → `container_port`/`protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PortBinding {
    pub container_port: u16,
    /// `tcp` (default), `udp` or `sctp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Host port; a free one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Host address; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

/// A volume or bind mount in Docker's short form: `source` is a host path (bind) or a volume name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeBinding {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A mount in Docker's long form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Host path (bind) or volume name (volume); absent for tmpfs and anonymous volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs only: size limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<i64>,
    /// volume only: driver options of a volume created by this mount.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_driver_opts: BTreeMap<String, String>,
}

/// Docker's restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    pub name: String,
    /// `on-failure` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
}

/// A container healthcheck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// Docker's form: `["CMD", arg…]`, `["CMD-SHELL", line]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
}

/// When `docker.containers.run` pulls the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when the image is not on the host (default).
    #[default]
    Missing,
    Always,
    Never,
}

/// Params of `docker.containers.run`: create (pulling the image when missing) and start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Replaces the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortBinding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeBinding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Memory limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// CPU limit in CPUs (0.5 = half a CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `bridge` (default), `none`, `host`, `container:<id>` or a network's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub read_only_rootfs: bool,
    #[serde(default)]
    pub pull: PullPolicy,
    // The risky ones: policed by the host policy (docs/security.md).
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroupns_mode: Option<String>,
    /// Host devices, Docker's short form `/dev/x[:/dev/y[:rwm]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
}

/// Result of `docker.containers.run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RunResult {
    pub id: String,
    pub name: String,
    pub state: String,
    /// The image was pulled first.
    pub pulled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Result of `docker.containers.get`: the useful part of `docker inspect`, secrets redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ContainerDetails {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub created: String,
    pub state: ContainerState,
    pub command: Vec<String>,
    pub entrypoint: Vec<String>,
    /// Values of secret-looking names (PASSWORD, TOKEN, KEY, SECRET, …) are `***`.
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortBinding>,
    pub mounts: Vec<MountSpec>,
    pub restart_policy: Option<RestartPolicy>,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub network_mode: Option<String>,
    pub networks: Vec<String>,
    pub healthcheck: Option<Healthcheck>,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub restart_count: i64,
}

/// Runtime state of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ContainerState {
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
    pub status: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `starting`, `healthy` or `unhealthy` when the container has a healthcheck.
    pub health: Option<String>,
    pub error: Option<String>,
}

/// Params of `docker.containers.update`: pull the container's own image reference again and
/// recreate it with the same configuration (moving to another image is `run`'s job, not this one's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateParams {
    pub container: ContainerRef,
    /// Seconds to wait for the new container to be running (and healthy); 30 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<u64>,
    /// Recreate the container even when the pull brought the image it already runs (by
    /// default such an update changes nothing and says so). Not written when false, so that
    /// an agent older than the field still reads the params.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Result of `docker.containers.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct UpdateResult {
    pub name: String,
    pub old_id: String,
    pub new_id: String,
    pub old_image_id: String,
    pub new_image_id: String,
    /// The pull brought a different image.
    pub image_changed: bool,
    /// The container was recreated (`new_id` is a new container): the image changed, or
    /// `force`. An unchanged image without `force` leaves it as it is (`new_id == old_id`).
    #[serde(default)]
    pub recreated: bool,
    pub state: String,
}

/// Params of `docker.images.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImagesListParams {
    /// Include intermediate images.
    #[serde(default)]
    pub all: bool,
}

/// One image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ImageSummary {
    pub id: String,
    pub tags: Vec<String>,
    pub digests: Vec<String>,
    pub size: i64,
    pub created: i64,
    /// Containers using it, when Docker says.
    pub containers: i64,
}

/// Registry credentials for a pull; never logged, never stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"***")
            .field("server", &self.server)
            .finish()
    }
}

/// Params of `docker.images.pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PullParams {
    /// `name[:tag]` or `name@digest`; `latest` when no tag.
    pub image: ImageRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
    /// Send progress as a stream of [`PullProgress`]; `stream.end` carries the [`PullResult`].
    #[serde(default)]
    pub progress: bool,
}

/// One progress message of a pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PullProgress {
    /// Layer id, when the message is about a layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

/// Result of `docker.images.pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PullResult {
    pub image: String,
    pub id: String,
}

/// Params of `docker.images.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImageRemoveParams {
    pub image: ImageRef,
    #[serde(default)]
    pub force: bool,
}

/// Result of `docker.images.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ImageRemoved {
    pub untagged: Vec<String>,
    pub deleted: Vec<String>,
}

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct NetworkSummary {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub scope: String,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub created: String,
}

/// Params of `docker.networks.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateParams {
    pub name: NetworkRef,
    /// `bridge` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// No route outside the network.
    #[serde(default)]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Params of `docker.networks.remove`: a network by name or id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkRemoveParams {
    pub name: NetworkRef,
}

/// Params of `docker.volumes.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeRemoveParams {
    pub name: VolumeRef,
    /// Remove even when in use (Docker refuses it anyway while a container uses it).
    #[serde(default)]
    pub force: bool,
}

/// What a create or remove did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ObjectRef {
    pub id: String,
    pub name: String,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct VolumeSummary {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub labels: BTreeMap<String, String>,
    pub created: Option<String>,
}

/// Params of `docker.volumes.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateParams {
    pub name: VolumeRef,
    /// `local` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Notification agent → control plane: one Docker engine event.
pub const DOCKER_EVENT: &str = "docker.event";

/// An engine event (`docker events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DockerEvent {
    /// Unix nanoseconds, from the engine.
    pub time_nanos: i64,
    /// `container`, `image`, `network`, `volume`, `daemon`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `create`, `start`, `die`, `pull`, …
    pub action: String,
    /// Object id.
    pub id: String,
    /// Object attributes (name, image, labels, exit code…); values of secret-looking keys redacted.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}
