//! Params and results of the `system.*` and `agent.*` methods.

use serde::{Deserialize, Serialize};

/// Params of `system.exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SystemExecParams {
    /// A command line. The agent splits it into an argument vector itself (no shell) and runs it
    /// only when it matches the allowlist.
    pub command: String,
    /// Seconds before the command is killed; 30 by default, 300 at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// Params of `system.preflight_check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PreflightParams {
    /// TCP ports the deployment will bind; each must be free on the host.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Free bytes needed on the filesystem of the volume base directory; 1 GiB by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_disk: Option<u64>,
    /// Lowest acceptable Docker engine version, e.g. `20.10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_docker_version: Option<String>,
    /// Architectures the deployment's images exist for (`amd64`, `arm64`, …); any when empty.
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// Result of `system.preflight_check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PreflightResult {
    /// Every check passed.
    pub ok: bool,
    pub checks: Vec<PreflightCheck>,
}

/// One check of a preflight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PreflightCheck {
    /// `docker`, `docker_version`, `disk`, `architecture`, `port:<n>`, `data_dir`.
    pub name: String,
    pub ok: bool,
    /// What was found, and why it fails when it does.
    pub detail: String,
}

/// Params of `system.prepare_volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PrepareVolumesParams {
    pub volumes: Vec<VolumeDir>,
}

/// A directory to create under the agent's volume base directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeDir {
    /// Relative to the base directory, or absolute inside it.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Octal string, e.g. `"0750"`; `0755` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Result of `system.prepare_volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PreparedVolumes {
    pub base: String,
    pub volumes: Vec<PreparedVolume>,
}

/// One prepared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PreparedVolume {
    /// Absolute path on the host.
    pub path: String,
    /// It did not exist before.
    pub created: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: String,
}

/// Params of `agent.update`: runtime settings to change; absent fields stay as they are.
/// The host's own policy is not among them, by design.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentSettingsPatch {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Seconds between metrics pushes (5–3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_interval: Option<u64>,
    /// Seconds between health pushes (5–3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval: Option<u64>,
}

/// The agent's runtime settings, the result of `agent.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AgentSettings {
    pub log_level: String,
    pub metrics_interval: u64,
    pub health_interval: u64,
}

/// Result of `agent.restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Restarting {
    pub restarting: bool,
}

/// Result of `agent.rotate_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RotatingKey {
    pub rotating: bool,
    /// The next public key (base64), for the operator to compare with what the control plane
    /// stores afterwards.
    pub new_public_key: String,
}
