//! The validation stage: container options checked against the host policy before anything
//! reaches Docker. A refusal is -32004 (`CONTAINER_BLOCKED`) with `data: {"rule", "param"}` and a
//! message naming the rule.
//!
//! Every rule normalises first and decides on the normalised value, and allows what is known to
//! be safe rather than refusing known-bad strings:
//!
//! | rule | refuses |
//! |---|---|
//! | `privileged` | a privileged container |
//! | `cap_add` | a capability outside the policy's `cap_add_allowed` (case, `CAP_` prefix and `ALL` normalised) |
//! | `namespace` | pid/ipc/uts/userns/cgroupns/network `host` (any case); a mode not known to be safe; joining (`container:<x>`, pid/ipc/network only) a container that is privileged or itself uses the host's namespace, followed through its own joins; a network whose driver is `host` |
//! | `devices` | a host device not matching the policy's `devices` (none by default); device requests (GPUs) |
//! | `device_cgroup_rules` | a rule not listed in the policy (none by default) |
//! | `seccomp`, `apparmor`, `label`, `systempaths`, `security_opt` | any security option but `no-new-privileges[=true]` and the policy's `security_opt` entries |
//! | `sysctls` | a sysctl not matching the policy's `sysctls` (`net.*` by default), or a namespaced one without the container's own namespace |
//! | `bind_relative` | a bind source that is not an absolute path (`relative/x`, `~/x`, `./x`) |
//! | `bind_protected` | a bind source that is, lexically or once symlinks are resolved inside the host root, `/` or inside a protected path (`/etc`, `/var`, `/run`, `/usr`, `/bin`, `/sbin`, `/lib*`, `/root`, `/home`, `/boot`, `/proc`, `/sys`, `/dev`, the agent's data directory, the policy's `protected`), or an ancestor of one (or of what one resolves to, the runtimes' `/var/lib/docker`, `/run/containerd`, … included), or a socket or device node |
//! | `bind_outside_roots` | a bind source outside the policy's `bind_roots` |
//! | `bind_open_dir` | a bind source whose path crosses a directory writable by others (sticky or not, `/tmp`), unless it is under a bind root that the policy file names itself |
//! | `bind_contents` | a directory bind source holding a socket or a device node, or that the bounded walk of [`walk`] could not look through (too deep, too many entries, too slow, unreadable) |
//! | `volume_driver`, `volume_type`, `volume_options` | a volume driver not allowed; a `local` volume mounting a filesystem type not allowed, or an unknown option (a `local` volume with `o=bind` or `type=none` is a bind mount: the bind rules apply to its `device`) |
//! | `mount_type` | a mount type other than bind, volume and tmpfs |
//! | `volumes_from` | volumes from a privileged container, or from one whose mounts break the bind or volume rules |
//! | `image` | an image not matching the policy's `images` patterns; an image id when patterns are set |
//!
//! The same rules apply to `docker.containers.run` ([`check_run`], [`check_run_refs`]), to an
//! existing container about to be recreated by `docker.containers.update` ([`check_container`]),
//! to `docker.volumes.create` ([`check_volume_create`]) and to `docker.images.pull`
//! ([`check_image`]). Docker mounts every bind source again at each start, following the
//! symlinks it finds then, so `docker.containers.start` and `restart` judge the container's
//! mounts again first ([`check_start`]), and `update` and `run` judge them again after their pull;
//! starts the engine makes by itself are judged by the bind guard (`crate::docker::guard`). The checks that need the engine (containers named by `volumes_from` or
//! `container:<x>`, existing named volumes, networks) go through [`Lookup`], so the rules are
//! tested without an engine.

pub mod image;
pub mod paths;
pub mod walk;

use std::future::Future;
use std::path::Path;

use bollard::models::{
    ContainerInspectResponse, HostConfig, MountPointTypeEnum, MountTypeEnum, Volume,
};
use serde_json::json;
use tomo_proto::methods::{RunParams, VolumeCreateParams};
use tomo_proto::refs::{ContainerRef, NetworkRef, RefError, VolumeRef};
use tomo_proto::rpc::{RpcError, code};

use crate::policy::{HostPolicy, glob};

/// How many `container:<x>` joins are followed before giving up.
const MAX_JOIN_DEPTH: usize = 5;

/// Docker 20.10's masked and read-only paths: an existing container without all of them had
/// them taken away (`--security-opt systempaths=unconfined`, or privileged).
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the checks that need the engine ask it. `None`: no such object. It takes parsed
/// references only (a name from the params is parsed first, -32602 naming the param).
pub trait Lookup: Sync {
    /// A container by id or name.
    fn container(
        &self,
        name: &ContainerRef,
    ) -> impl Future<Output = Result<Option<ContainerInspectResponse>, RpcError>> + Send;
    /// A volume by name.
    fn volume(
        &self,
        name: &VolumeRef,
    ) -> impl Future<Output = Result<Option<Volume>, RpcError>> + Send;
    /// The driver of a network, by id or name.
    fn network_driver(
        &self,
        name: &NetworkRef,
    ) -> impl Future<Output = Result<Option<String>, RpcError>> + Send;
}

/// A reference named by `param`, parsed; -32602 naming `param` when it is not one.
fn parsed<T>(param: &str, r: Result<T, RefError>) -> Result<T, RpcError> {
    r.map_err(|e| {
        RpcError::invalid_params(format!("{param}: {e}")).with_data(json!({ "param": param }))
    })
}

/// `docker.containers.run`: everything that can be decided from the params and the host's
/// filesystem. [`check_run_refs`] does the rest.
pub fn check_run(p: &RunParams, policy: &HostPolicy, host_root: &Path) -> Result<(), RpcError> {
    check_image_at("image", &p.image, policy)?;
    Checker { policy, host_root }.check(&View::from_run(p))?;
    Ok(())
}

/// `docker.containers.run`: the checks of what the params name on the engine: `volumes_from`
/// containers, `container:<x>` namespace joins, networks, and existing named volumes.
pub async fn check_run_refs<L: Lookup>(
    p: &RunParams,
    policy: &HostPolicy,
    host_root: &Path,
    lookup: &L,
) -> Result<(), RpcError> {
    Checker { policy, host_root }
        .refs(&View::from_run(p), lookup)
        .await
}

/// The host configuration of an existing container, as `docker.containers.update` would
/// recreate it. The cgroup namespace mode is not checked here: Docker 20.10 records `host` as its
/// own default on cgroup v1 hosts.
pub fn check_host_config(
    hc: &HostConfig,
    policy: &HostPolicy,
    host_root: &Path,
) -> Result<(), RpcError> {
    Checker { policy, host_root }.check(&View::from_host_config(hc))?;
    Ok(())
}

/// An existing container about to be recreated (`docker.containers.update`): its image, its host
/// configuration, what that names on the engine, and its actual bind mounts. A container created
/// outside tomo whose configuration breaks the policy is refused: tomo does not create it again.
pub async fn check_container<L: Lookup>(
    c: &ContainerInspectResponse,
    policy: &HostPolicy,
    host_root: &Path,
    lookup: &L,
) -> Result<(), RpcError> {
    let name = c
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/');
    let in_container = |mut e: RpcError| {
        e.message = format!("container {name}: {}", e.message);
        e
    };
    if let Some(image) = c.config.as_ref().and_then(|c| c.image.as_deref()) {
        check_image_at("Config.Image", image, policy).map_err(in_container)?;
    }
    let hc = c.host_config.clone().unwrap_or_default();
    let view = View::from_host_config(&hc);
    let checker = Checker { policy, host_root };
    checker.check(&view).map_err(|b| in_container(b.into()))?;
    checker.refs(&view, lookup).await.map_err(in_container)?;
    for (i, m) in c.mounts.iter().flatten().enumerate() {
        if m.typ == Some(MountPointTypeEnum::BIND) {
            let source = m.source.as_deref().unwrap_or_default();
            checker
                .bind_source(&format!("Mounts[{i}].Source"), source)
                .map_err(|b| in_container(b.into()))?;
        }
    }
    Ok(())
}

/// `docker.containers.start` and `restart`: the container named `container` (looked up through
/// `lookup`; -32010 when there is none), with its mounts judged again by [`check_binds`].
/// Returns its id, so that what is started is what was judged.
pub async fn check_start<L: Lookup>(
    container: &str,
    policy: &HostPolicy,
    host_root: &Path,
    lookup: &L,
) -> Result<String, RpcError> {
    let r = tomo_proto::refs::ContainerRef::parse(container)
        .map_err(|e| RpcError::invalid_params(format!("container: {e}")))?;
    let c = lookup
        .container(&r)
        .await?
        .ok_or_else(|| not_found("container", "container", container))?;
    check_binds(&c, policy, host_root, lookup).await?;
    Ok(c.id.unwrap_or_default())
}

/// What the engine mounts again at every start of an existing container, judged now: every
/// bind source (`HostConfig.Binds`, bind `HostConfig.Mounts`, and the bind `Mounts`, which hold
/// those of `volumes_from` too) by the bind rules, and every volume it mounts that exists by the
/// volume rules (a `local` volume with `o=bind` is a bind of its `device`). A source swapped for
/// a symlink to `/etc` since `run` is refused here. The container's other options are not judged
/// (a start creates nothing; [`check_container`] judges them for `update`).
pub async fn check_binds<L: Lookup>(
    c: &ContainerInspectResponse,
    policy: &HostPolicy,
    host_root: &Path,
    lookup: &L,
) -> Result<(), RpcError> {
    let name = c
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/');
    let in_container = |mut e: RpcError| {
        e.message = format!("container {name}: {}", e.message);
        e
    };
    let hc = c.host_config.clone().unwrap_or_default();
    let view = View::from_host_config(&hc);
    let checker = Checker { policy, host_root };
    let mut volumes: Vec<(String, &str)> = view
        .volumes
        .iter()
        .filter_map(|u| Some((u.name_param.clone(), u.name?)))
        .collect();
    for (param, source) in &view.binds {
        checker
            .bind_source(param, source)
            .map_err(|b| in_container(b.into()))?;
    }
    for (i, m) in c.mounts.iter().flatten().enumerate() {
        let param = format!("Mounts[{i}].Source");
        match (m.typ, m.source.as_deref(), m.name.as_deref()) {
            (Some(MountPointTypeEnum::BIND), source, _) => checker
                .bind_source(&param, source.unwrap_or_default())
                .map_err(|b| in_container(b.into()))?,
            (Some(MountPointTypeEnum::VOLUME), _, Some(vol)) => volumes.push((param, vol)),
            _ => {}
        }
    }
    for (param, vol) in volumes {
        // A name Docker reported: refused like any other reference when it is not one.
        let vr = tomo_proto::refs::VolumeRef::parse(vol)
            .map_err(|e| RpcError::invalid_params(format!("volume: {e}")))?;
        if let Some(v) = lookup.volume(&vr).await? {
            checker
                .existing_volume(&param, &v)
                .map_err(|b| in_container(b.into()))?;
        }
    }
    Ok(())
}

/// `docker.volumes.create`: the driver and its options (a `local` volume that binds a host path
/// is a bind mount).
pub fn check_volume_create(
    p: &VolumeCreateParams,
    policy: &HostPolicy,
    host_root: &Path,
) -> Result<(), RpcError> {
    let opts: Vec<(&str, &str)> = p
        .driver_opts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let use_ = VolumeUse {
        param: "driver_opts".into(),
        name_param: "name".into(),
        driver_param: "driver".into(),
        name: None,
        driver: p.driver.as_deref(),
        opts,
    };
    Checker { policy, host_root }.volume_use(&use_)?;
    Ok(())
}

/// `docker.images.pull` (and the image of run and update): the policy's `images` patterns.
pub fn check_image(image: &str, policy: &HostPolicy) -> Result<(), RpcError> {
    check_image_at("image", image, policy)
}

fn check_image_at(param: &str, image_ref: &str, policy: &HostPolicy) -> Result<(), RpcError> {
    let Some(patterns) = &policy.images else {
        return Ok(());
    };
    if image::is_id(image_ref.trim()) {
        return Err(Block::new(
            "image",
            param,
            format!(
                "{image_ref:?} is an image id; the host policy allows images by reference only"
            ),
        )
        .into());
    }
    let r = image::normalize(image_ref)
        .map_err(|why| Block::new("image", param, format!("{image_ref:?} {why}")))?;
    if patterns.iter().any(|p| image::matches(p, &r)) {
        Ok(())
    } else {
        Err(Block::new(
            "image",
            param,
            format!(
                "{} is not allowed by the host policy's images ({})",
                r.full(),
                patterns.join(", ")
            ),
        )
        .into())
    }
}

/// A capability name in canonical form: upper case, without `CAP_`. `None` when it is not a
/// name at all.
pub fn capability(s: &str) -> Option<String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| name.to_owned())
}

/// A device cgroup rule in normal form: words separated by one space, lower case.
pub fn device_cgroup_rule(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

/// A security option split as Docker splits it (at the first `=`, else at the first `:`), the
/// key lower-cased and both parts trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityOpt {
    pub key: String,
    pub value: Option<String>,
}

impl std::fmt::Display for SecurityOpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// Normalises one security option (see [`SecurityOpt`]).
pub fn security_opt(s: &str) -> SecurityOpt {
    let s = s.trim();
    let split = s.split_once('=').or_else(|| s.split_once(':'));
    match split {
        Some((k, v)) => SecurityOpt {
            key: k.trim().to_ascii_lowercase(),
            value: Some(v.trim().to_owned()),
        },
        None => SecurityOpt {
            key: s.to_ascii_lowercase(),
            value: None,
        },
    }
}

// ---- internals -----------------------------------------------------------------------------

/// A refusal before it becomes an [`RpcError`].
#[derive(Debug)]
struct Block {
    rule: &'static str,
    param: String,
    why: String,
}

impl Block {
    fn new(rule: &'static str, param: &str, why: impl Into<String>) -> Self {
        Self {
            rule,
            param: param.to_owned(),
            why: why.into(),
        }
    }
}

impl From<Block> for RpcError {
    fn from(b: Block) -> Self {
        RpcError::new(
            code::CONTAINER_BLOCKED,
            format!(
                "blocked by host policy ({}): {}: {}",
                b.rule, b.param, b.why
            ),
        )
        .with_data(json!({"rule": b.rule, "param": b.param}))
    }
}

/// A namespace a container can share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Pid,
    Ipc,
    Uts,
    Userns,
    Cgroupns,
    Network,
}

impl Ns {
    fn name(self) -> &'static str {
        match self {
            Self::Pid => "pid",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::Userns => "user",
            Self::Cgroupns => "cgroup",
            Self::Network => "network",
        }
    }

    /// Modes known to be safe, lower case (`host` and `container:` are judged apart).
    fn safe(self, mode: &str) -> bool {
        match self {
            Self::Pid | Self::Uts | Self::Userns => mode.is_empty(),
            Self::Ipc => matches!(mode, "" | "none" | "private" | "shareable"),
            Self::Cgroupns => matches!(mode, "" | "private"),
            // Any network name; one whose driver is `host` is caught by the lookup.
            Self::Network => true,
        }
    }

    fn joinable(self) -> bool {
        matches!(self, Self::Pid | Self::Ipc | Self::Network)
    }

    fn of(self, hc: &HostConfig) -> String {
        match self {
            Self::Pid => hc.pid_mode.clone(),
            Self::Ipc => hc.ipc_mode.clone(),
            Self::Uts => hc.uts_mode.clone(),
            Self::Userns => hc.userns_mode.clone(),
            Self::Cgroupns => hc.cgroupns_mode.map(|m| m.to_string()),
            Self::Network => hc.network_mode.clone(),
        }
        .unwrap_or_default()
    }
}

/// A use of a volume: by name, with the driver and options it would be created with.
#[derive(Debug)]
struct VolumeUse<'a> {
    /// Where the options were given.
    param: String,
    /// Where the name was given.
    name_param: String,
    driver_param: String,
    name: Option<&'a str>,
    driver: Option<&'a str>,
    opts: Vec<(&'a str, &'a str)>,
}

/// The risky options of a request or an existing container, each with where it was given.
#[derive(Debug, Default)]
struct View<'a> {
    privileged: Option<String>,
    cap_add: Vec<(String, &'a str)>,
    namespaces: Vec<(String, Ns, &'a str)>,
    devices: Vec<(String, &'a str)>,
    device_requests: Option<String>,
    device_cgroup_rules: Vec<(String, &'a str)>,
    security_opt: Vec<(String, &'a str)>,
    sysctls: Vec<(String, &'a str)>,
    system_paths: Option<(String, &'static str)>,
    mount_types: Vec<(String, String)>,
    binds: Vec<(String, &'a str)>,
    volumes: Vec<VolumeUse<'a>>,
    volumes_from: Vec<(String, &'a str)>,
}

fn indexed<'a>(name: &str, items: &'a [String]) -> Vec<(String, &'a str)> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{name}[{i}]"), s.as_str()))
        .collect()
}

/// Docker's volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn is_volume_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.len() >= 2
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl<'a> View<'a> {
    fn from_run(p: &'a RunParams) -> Self {
        let mut v = View {
            privileged: p.privileged.then(|| "privileged".to_owned()),
            cap_add: indexed("cap_add", &p.cap_add),
            device_cgroup_rules: indexed("device_cgroup_rules", &p.device_cgroup_rules),
            security_opt: indexed("security_opt", &p.security_opt),
            volumes_from: indexed("volumes_from", &p.volumes_from),
            ..Default::default()
        };
        let modes = [
            ("pid_mode", Ns::Pid, &p.pid_mode),
            ("ipc_mode", Ns::Ipc, &p.ipc_mode),
            ("uts_mode", Ns::Uts, &p.uts_mode),
            ("userns_mode", Ns::Userns, &p.userns_mode),
            ("cgroupns_mode", Ns::Cgroupns, &p.cgroupns_mode),
            ("network_mode", Ns::Network, &p.network_mode),
        ];
        for (param, ns, mode) in modes {
            if let Some(m) = mode {
                v.namespaces.push((param.to_owned(), ns, m.as_str()));
            }
        }
        for (i, d) in p.devices.iter().enumerate() {
            let host = d.split(':').next().unwrap_or_default();
            v.devices.push((format!("devices[{i}]"), host));
        }
        for k in p.sysctls.keys() {
            v.sysctls.push((format!("sysctls.{k}"), k.as_str()));
        }
        for (i, b) in p.volumes.iter().enumerate() {
            v.source(format!("volumes[{i}].source"), &b.source);
        }
        for (i, m) in p.mounts.iter().enumerate() {
            match m.kind.trim().to_ascii_lowercase().as_str() {
                "bind" => v.binds.push((
                    format!("mounts[{i}].source"),
                    m.source.as_deref().unwrap_or_default(),
                )),
                "volume" => v.volumes.push(VolumeUse {
                    param: format!("mounts[{i}].volume_driver_opts"),
                    name_param: format!("mounts[{i}].source"),
                    driver_param: format!("mounts[{i}]"),
                    name: m.source.as_deref().filter(|s| !s.is_empty()),
                    driver: None,
                    opts: m
                        .volume_driver_opts
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect(),
                }),
                "tmpfs" => {}
                other => v
                    .mount_types
                    .push((format!("mounts[{i}].type"), other.to_owned())),
            }
        }
        v
    }

    fn from_host_config(hc: &'a HostConfig) -> Self {
        let list = |l: &'a Option<Vec<String>>, name: &str| {
            l.as_deref().map(|l| indexed(name, l)).unwrap_or_default()
        };
        let mut v = View {
            privileged: (hc.privileged == Some(true)).then(|| "HostConfig.Privileged".to_owned()),
            cap_add: list(&hc.cap_add, "HostConfig.CapAdd"),
            device_cgroup_rules: list(&hc.device_cgroup_rules, "HostConfig.DeviceCgroupRules"),
            security_opt: list(&hc.security_opt, "HostConfig.SecurityOpt"),
            volumes_from: list(&hc.volumes_from, "HostConfig.VolumesFrom"),
            device_requests: hc
                .device_requests
                .as_ref()
                .filter(|r| !r.is_empty())
                .map(|_| "HostConfig.DeviceRequests".to_owned()),
            ..Default::default()
        };
        let modes = [
            ("HostConfig.PidMode", Ns::Pid, &hc.pid_mode),
            ("HostConfig.IpcMode", Ns::Ipc, &hc.ipc_mode),
            ("HostConfig.UTSMode", Ns::Uts, &hc.uts_mode),
            ("HostConfig.UsernsMode", Ns::Userns, &hc.userns_mode),
            ("HostConfig.NetworkMode", Ns::Network, &hc.network_mode),
        ];
        for (param, ns, mode) in modes {
            if let Some(m) = mode {
                v.namespaces.push((param.to_owned(), ns, m.as_str()));
            }
        }
        for (i, d) in hc.devices.iter().flatten().enumerate() {
            let host = d.path_on_host.as_deref().unwrap_or_default();
            v.devices
                .push((format!("HostConfig.Devices[{i}].PathOnHost"), host));
        }
        let mut keys: Vec<&String> = hc.sysctls.iter().flatten().map(|(k, _)| k).collect();
        keys.sort();
        for k in keys {
            v.sysctls
                .push((format!("HostConfig.Sysctls.{k}"), k.as_str()));
        }
        v.system_paths = missing_system_path(hc);
        for (i, b) in hc.binds.iter().flatten().enumerate() {
            let source = b.split(':').next().unwrap_or_default();
            v.source(format!("HostConfig.Binds[{i}]"), source);
        }
        for (i, m) in hc.mounts.iter().flatten().enumerate() {
            match m.typ {
                Some(MountTypeEnum::BIND) => v.binds.push((
                    format!("HostConfig.Mounts[{i}].Source"),
                    m.source.as_deref().unwrap_or_default(),
                )),
                Some(MountTypeEnum::VOLUME) => {
                    let config = m
                        .volume_options
                        .as_ref()
                        .and_then(|o| o.driver_config.as_ref());
                    let param = format!("HostConfig.Mounts[{i}].VolumeOptions.DriverConfig");
                    v.volumes.push(VolumeUse {
                        param: param.clone(),
                        name_param: format!("HostConfig.Mounts[{i}].Source"),
                        driver_param: param,
                        name: m.source.as_deref().filter(|s| !s.is_empty()),
                        driver: config.and_then(|c| c.name.as_deref()),
                        opts: config
                            .and_then(|c| c.options.as_ref())
                            .map(|o| o.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                            .unwrap_or_default(),
                    });
                }
                Some(MountTypeEnum::TMPFS) => {}
                other => v.mount_types.push((
                    format!("HostConfig.Mounts[{i}].Type"),
                    other.map(|t| t.to_string()).unwrap_or_default(),
                )),
            }
        }
        v
    }

    /// A short-form source: a host path (absolute, or anything that is not a volume name) or a
    /// volume name.
    fn source(&mut self, param: String, source: &'a str) {
        if !source.starts_with('/') && is_volume_name(source) {
            self.volumes.push(VolumeUse {
                param: param.clone(),
                name_param: param.clone(),
                driver_param: param,
                name: Some(source),
                driver: None,
                opts: Vec::new(),
            });
        } else {
            self.binds.push((param, source));
        }
    }

    /// The lower-cased mode of a namespace as given ("" when not given).
    fn mode(&self, ns: Ns) -> String {
        self.namespaces
            .iter()
            .find(|(_, n, _)| *n == ns)
            .map(|(_, _, m)| m.trim().to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// A default masked or read-only path that the configuration drops.
fn missing_system_path(hc: &HostConfig) -> Option<(String, &'static str)> {
    let missing = |list: &Option<Vec<String>>, defaults: &[&'static str]| {
        let list = list.as_ref()?;
        defaults
            .iter()
            .find(|d| !list.iter().any(|p| p == *d))
            .copied()
    };
    missing(&hc.masked_paths, DEFAULT_MASKED_PATHS)
        .map(|p| ("HostConfig.MaskedPaths".to_owned(), p))
        .or_else(|| {
            missing(&hc.readonly_paths, DEFAULT_READONLY_PATHS)
                .map(|p| ("HostConfig.ReadonlyPaths".to_owned(), p))
        })
}

struct Checker<'a> {
    policy: &'a HostPolicy,
    host_root: &'a Path,
}

impl Checker<'_> {
    /// Every rule that needs no engine, in a fixed order.
    fn check(&self, v: &View<'_>) -> Result<(), Block> {
        if let Some(param) = &v.privileged {
            return Err(Block::new(
                "privileged",
                param,
                "a privileged container has every capability and device of the host",
            ));
        }
        for (param, cap) in &v.cap_add {
            self.cap_add(param, cap)?;
        }
        for (param, ns, mode) in &v.namespaces {
            namespace(param, *ns, mode)?;
        }
        for (param, device) in &v.devices {
            self.device(param, device)?;
        }
        if let Some(param) = &v.device_requests {
            return Err(Block::new(
                "devices",
                param,
                "device requests (GPUs) are not allowed by the host policy",
            ));
        }
        for (param, rule) in &v.device_cgroup_rules {
            let normal = device_cgroup_rule(rule);
            if !self.policy.device_cgroup_rules.contains(&normal) {
                return Err(Block::new(
                    "device_cgroup_rules",
                    param,
                    format!("{normal:?} is not among the host policy's device_cgroup_rules"),
                ));
            }
        }
        for (param, opt) in &v.security_opt {
            self.security_opt(param, opt)?;
        }
        for (param, key) in &v.sysctls {
            self.sysctl(param, key, v)?;
        }
        if let Some((param, path)) = &v.system_paths {
            return Err(Block::new(
                "systempaths",
                param,
                format!("{path} is no longer masked or read-only"),
            ));
        }
        if let Some((param, kind)) = v.mount_types.first() {
            return Err(Block::new(
                "mount_type",
                param,
                format!("{kind:?}: only bind, volume and tmpfs mounts are allowed"),
            ));
        }
        for (param, source) in &v.binds {
            self.bind_source(param, source)?;
        }
        for use_ in &v.volumes {
            self.volume_use(use_)?;
        }
        Ok(())
    }

    fn cap_add(&self, param: &str, cap: &str) -> Result<(), Block> {
        let Some(c) = capability(cap) else {
            return Err(Block::new(
                "cap_add",
                param,
                format!("{cap:?} is not a capability name"),
            ));
        };
        if self.policy.cap_add_allowed.contains(&c) {
            return Ok(());
        }
        let why = if c == "ALL" {
            "ALL would give every capability of the host".to_owned()
        } else {
            format!("{c} is not in the host policy's cap_add_allowed")
        };
        Err(Block::new("cap_add", param, why))
    }

    fn device(&self, param: &str, device: &str) -> Result<(), Block> {
        let resolved = paths::normalize(device)
            .and_then(|_| paths::resolve(self.host_root, device).ok())
            .ok_or_else(|| {
                Block::new(
                    "devices",
                    param,
                    format!("{device:?} is not an absolute device path"),
                )
            })?;
        if self.policy.devices.iter().any(|p| glob(p, &resolved.path)) {
            return Ok(());
        }
        Err(Block::new(
            "devices",
            param,
            format!(
                "host device {} is not allowed by the host policy's devices",
                resolved.path
            ),
        ))
    }

    fn security_opt(&self, param: &str, raw: &str) -> Result<(), Block> {
        let opt = security_opt(raw);
        let nnp = opt.key == "no-new-privileges"
            && opt
                .value
                .as_deref()
                .is_none_or(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "t" | "true"));
        if nnp || self.policy.security_opt.contains(&opt.to_string()) {
            return Ok(());
        }
        let (rule, why) = match opt.key.as_str() {
            "seccomp" => (
                "seccomp",
                "containers keep Docker's default seccomp profile (unconfined, or a custom profile, can allow every system call)",
            ),
            "apparmor" => ("apparmor", "containers keep the default AppArmor profile"),
            "label" | "disable" => ("label", "SELinux labels can be neither disabled nor chosen"),
            "systempaths" => (
                "systempaths",
                "the kernel's masked and read-only paths stay masked",
            ),
            _ => (
                "security_opt",
                "only no-new-privileges is allowed, and the host policy's security_opt",
            ),
        };
        Err(Block::new(rule, param, format!("{raw:?}: {why}")))
    }

    fn sysctl(&self, param: &str, key: &str, v: &View<'_>) -> Result<(), Block> {
        let k = key.trim().replace('/', ".");
        let well_formed = !k.is_empty()
            && k.split('.').all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            });
        if !well_formed {
            return Err(Block::new(
                "sysctls",
                param,
                format!("{key:?} is not a sysctl name"),
            ));
        }
        if !self.policy.sysctls.iter().any(|p| glob(p, &k)) {
            return Err(Block::new(
                "sysctls",
                param,
                format!("{k} is not allowed by the host policy's sysctls"),
            ));
        }
        let own = |ns: Ns| {
            let m = v.mode(ns);
            !(m == "host" || m.starts_with("container:"))
        };
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        if (k.starts_with("net.") && !own(Ns::Network)) || (ipc && !own(Ns::Ipc)) {
            return Err(Block::new(
                "sysctls",
                param,
                format!("{k} would change a namespace the container does not own"),
            ));
        }
        Ok(())
    }

    /// The bind rules on one host path: absolute; neither its lexical form nor its resolution
    /// (of the raw and of the lexical form) protected, an ancestor of a protected path, a socket
    /// or a device; all of them under a bind root; no directory writable by others crossed on
    /// the way (unless under a root the policy file names); and, for a directory, no socket or
    /// device inside (within the walk's bounds).
    fn bind_source(&self, param: &str, source: &str) -> Result<(), Block> {
        let Some(lexical) = paths::normalize(source) else {
            return Err(Block::new(
                "bind_relative",
                param,
                format!("{source:?}: a bind-mount source must be an absolute host path"),
            ));
        };
        let unresolvable =
            |e: paths::ResolveError| Block::new("bind_protected", param, format!("{source:?} {e}"));
        let raw = paths::resolve(self.host_root, source).map_err(unresolvable)?;
        let clean = paths::resolve(self.host_root, &lexical).map_err(unresolvable)?;
        let forms = [lexical.as_str(), clean.path.as_str(), raw.path.as_str()];
        for form in forms {
            if let Some(p) = paths::protected(form, &self.policy.protected_extra) {
                return Err(Block::new(
                    "bind_protected",
                    param,
                    format!("{source:?} is {form}, inside the protected {p}"),
                ));
            }
        }
        let guarded = paths::guarded(self.host_root, &self.policy.protected_extra);
        for form in forms {
            let near = |g: &&String| paths::is_under(form, g) || paths::is_under(g, form);
            let Some(g) = guarded.iter().find(near) else {
                continue;
            };
            let why = if paths::is_under(form, g) {
                format!("{source:?} is {form}, inside the protected {g}")
            } else {
                format!("{source:?} is {form}, which holds the protected {g}")
            };
            return Err(Block::new("bind_protected", param, why));
        }
        if let Some(kind) = raw.special.or(clean.special) {
            return Err(Block::new(
                "bind_protected",
                param,
                format!("{source:?} is {kind}: sockets and devices are never bind-mounted"),
            ));
        }
        let roots = self.roots(&self.policy.bind_roots);
        for form in forms {
            if !roots.iter().any(|r| paths::is_under(form, r)) {
                return Err(Block::new(
                    "bind_outside_roots",
                    param,
                    format!(
                        "{source:?} is {form}, outside the host policy's bind_roots ({})",
                        self.policy.bind_roots.join(", ")
                    ),
                ));
            }
        }
        let open = raw.open_dirs.iter().chain(&clean.open_dirs).next();
        let explicit = self.roots(&self.policy.explicit_bind_roots);
        let vouched = forms
            .iter()
            .all(|f| explicit.iter().any(|r| paths::is_under(f, r)));
        if let Some(dir) = open
            && !vouched
        {
            return Err(Block::new(
                "bind_open_dir",
                param,
                format!(
                    "{source:?} crosses {dir}, which others can write to (anyone there can swap it for a symlink); name its root in the host policy's bind_roots to allow it"
                ),
            ));
        }
        if raw.is_dir {
            let on_host = self.host_root.join(raw.path.trim_start_matches('/'));
            walk::check_dir(&on_host, &raw.path, walk::Bounds::DEFAULT)
                .map_err(|e| Block::new("bind_contents", param, format!("{source:?} {e}")))?;
        }
        Ok(())
    }

    /// `roots` and what each resolves to on the host.
    fn roots(&self, roots: &[String]) -> Vec<String> {
        let mut all = roots.to_vec();
        for r in roots {
            if let Ok(x) = paths::resolve(self.host_root, r) {
                all.push(x.path);
            }
        }
        all
    }

    /// A volume's driver and options: an allowed driver; for `local`, known options only, a bind
    /// (`o=bind`, `type=none`) judged by the bind rules, other mounts of an allowed type only.
    fn volume_use(&self, u: &VolumeUse<'_>) -> Result<(), Block> {
        let driver = u
            .driver
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .unwrap_or("local")
            .to_ascii_lowercase();
        if !self.policy.volume_drivers.contains(&driver) {
            return Err(Block::new(
                "volume_driver",
                &u.driver_param,
                format!(
                    "volume driver {driver:?} is not in the host policy's volume_drivers ({})",
                    self.policy.volume_drivers.join(", ")
                ),
            ));
        }
        if driver != "local" {
            return Ok(());
        }
        let (mut typ, mut flags, mut device) = (None, Vec::new(), None);
        // Keys are judged normalised; two spellings of one key (`device`, `device `) would let
        // one reach Docker while the other is checked, so they are refused outright.
        let mut seen = std::collections::HashSet::new();
        for k in u.opts.iter().map(|(k, _)| k.trim().to_ascii_lowercase()) {
            if !seen.insert(k.clone()) {
                return Err(Block::new(
                    "volume_options",
                    &u.param,
                    format!("the option {k:?} is given twice (in different spellings)"),
                ));
            }
        }
        for (k, v) in &u.opts {
            match k.trim().to_ascii_lowercase().as_str() {
                "type" => typ = Some(v.trim().to_ascii_lowercase()),
                "o" => flags.extend(v.split(',').map(|f| f.trim().to_ascii_lowercase())),
                "device" => device = Some(*v),
                "size" => {}
                other => {
                    return Err(Block::new(
                        "volume_options",
                        &u.param,
                        format!("{other:?} is not an option of the local volume driver"),
                    ));
                }
            }
        }
        let binds = flags.iter().any(|f| f == "bind" || f == "rbind")
            || matches!(typ.as_deref(), Some("none" | "bind" | "rbind"));
        if binds {
            let param = format!("{}.device", u.param);
            return match device {
                Some(d) => self.bind_source(&param, d),
                None => Ok(()),
            };
        }
        match (typ, device) {
            (Some(t), _) if !self.policy.volume_types.contains(&t) => Err(Block::new(
                "volume_type",
                &u.param,
                format!(
                    "a local volume of type {t:?} is not allowed (volume_types: {})",
                    self.policy.volume_types.join(", ")
                ),
            )),
            (None, Some(_)) => Err(Block::new(
                "volume_type",
                &u.param,
                "a local volume with a device needs an allowed type",
            )),
            _ => Ok(()),
        }
    }

    /// The checks that ask the engine.
    async fn refs<L: Lookup>(&self, v: &View<'_>, lookup: &L) -> Result<(), RpcError> {
        for (param, spec) in &v.volumes_from {
            let name = spec.split(':').next().unwrap_or_default();
            let c = lookup
                .container(&parsed(param, ContainerRef::parse(name))?)
                .await?
                .ok_or_else(|| not_found(param, "container", name))?;
            self.volumes_from(param, name, &c, lookup).await?;
        }
        for (param, ns, mode) in &v.namespaces {
            let m = mode.trim();
            let lower = m.to_ascii_lowercase();
            if ns.joinable() && lower.starts_with("container:") {
                self.join(param, *ns, &m["container:".len()..], lookup)
                    .await?;
            } else if *ns == Ns::Network
                && !matches!(lower.as_str(), "" | "bridge" | "default" | "none" | "host")
                && let Some(driver) = lookup
                    .network_driver(&parsed(param, NetworkRef::parse(m))?)
                    .await?
                && driver.eq_ignore_ascii_case("host")
            {
                return Err(Block::new(
                    "namespace",
                    param,
                    format!("network {m:?} is the host's network"),
                )
                .into());
            }
        }
        for u in &v.volumes {
            if let Some(name) = u.name
                && let Some(vol) = lookup
                    .volume(&parsed(&u.name_param, VolumeRef::parse(name))?)
                    .await?
            {
                self.existing_volume(&u.name_param, &vol)?;
            }
        }
        Ok(())
    }

    /// An existing volume, judged like one about to be created.
    fn existing_volume(&self, param: &str, vol: &Volume) -> Result<(), Block> {
        let use_ = VolumeUse {
            param: param.to_owned(),
            name_param: param.to_owned(),
            driver_param: param.to_owned(),
            name: None,
            driver: Some(vol.driver.as_str()),
            opts: vol
                .options
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        self.volume_use(&use_)
            .map_err(|b| Block::new(b.rule, param, format!("volume {}: {}", vol.name, b.why)))
    }

    /// `volumes_from` a container: not privileged, and its bind and volume mounts pass.
    async fn volumes_from<L: Lookup>(
        &self,
        param: &str,
        name: &str,
        c: &ContainerInspectResponse,
        lookup: &L,
    ) -> Result<(), RpcError> {
        let blocked = |why: String| -> RpcError {
            Block::new("volumes_from", param, format!("container {name} {why}")).into()
        };
        let privileged = c
            .host_config
            .as_ref()
            .and_then(|h| h.privileged)
            .unwrap_or(false);
        if privileged {
            return Err(blocked("is privileged".into()));
        }
        for m in c.mounts.iter().flatten() {
            match m.typ {
                Some(MountPointTypeEnum::BIND) => {
                    let source = m.source.as_deref().unwrap_or_default();
                    self.bind_source(param, source)
                        .map_err(|b| blocked(format!("mounts {source}: {}", b.why)))?;
                }
                Some(MountPointTypeEnum::VOLUME) => {
                    let Some(vol_name) = m.name.as_deref() else {
                        continue;
                    };
                    let vol_ref = parsed(param, VolumeRef::parse(vol_name))?;
                    if let Some(vol) = lookup.volume(&vol_ref).await? {
                        self.existing_volume(param, &vol)
                            .map_err(|b| blocked(format!("mounts {}", b.why)))?;
                    }
                }
                Some(MountPointTypeEnum::TMPFS) => {}
                other => {
                    return Err(blocked(format!(
                        "has a {} mount",
                        other.map(|t| t.to_string()).unwrap_or_default()
                    )));
                }
            }
        }
        Ok(())
    }

    /// `container:<target>` for `ns`: the target, and every container it joins in turn, is not
    /// privileged and does not use the host's namespace.
    async fn join<L: Lookup>(
        &self,
        param: &str,
        ns: Ns,
        target: &str,
        lookup: &L,
    ) -> Result<(), RpcError> {
        let mut name = target.trim().to_owned();
        for _ in 0..MAX_JOIN_DEPTH {
            let c = lookup
                .container(&parsed(param, ContainerRef::parse(&name))?)
                .await?
                .ok_or_else(|| not_found(param, "container", &name))?;
            let hc = c.host_config.unwrap_or_default();
            let block = |why: String| -> RpcError { Block::new("namespace", param, why).into() };
            if hc.privileged == Some(true) {
                return Err(block(format!(
                    "container {name} is privileged: its {} namespace is not joined",
                    ns.name()
                )));
            }
            let mode = ns.of(&hc);
            let lower = mode.trim().to_ascii_lowercase();
            if lower == "host" {
                return Err(block(format!(
                    "container {name} uses the host's {} namespace",
                    ns.name()
                )));
            }
            match lower.strip_prefix("container:") {
                Some(_) => name = mode.trim()["container:".len()..].to_owned(),
                None => return Ok(()),
            }
        }
        Err(Block::new(
            "namespace",
            param,
            format!("more than {MAX_JOIN_DEPTH} container: joins"),
        )
        .into())
    }
}

/// The sync rule on one namespace mode.
fn namespace(param: &str, ns: Ns, mode: &str) -> Result<(), Block> {
    let lower = mode.trim().to_ascii_lowercase();
    if lower == "host" {
        return Err(Block::new(
            "namespace",
            param,
            format!("{mode:?} would share the host's {} namespace", ns.name()),
        ));
    }
    if lower.starts_with("container:") {
        return if ns.joinable() && lower.len() > "container:".len() {
            Ok(())
        } else {
            Err(Block::new(
                "namespace",
                param,
                format!("{mode:?}: the {} namespace cannot be joined", ns.name()),
            ))
        };
    }
    if ns.safe(&lower) {
        Ok(())
    } else {
        Err(Block::new(
            "namespace",
            param,
            format!(
                "{mode:?} is not a {} namespace mode known to be safe",
                ns.name()
            ),
        ))
    }
}

fn not_found(param: &str, what: &str, name: &str) -> RpcError {
    RpcError::new(
        code::NOT_FOUND,
        format!("not found: {param}: {what} {name}"),
    )
    .with_data(json!({"param": param}))
}

#[cfg(test)]
mod tests;
