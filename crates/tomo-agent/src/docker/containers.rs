//! `docker.containers.get`, `run` and `update`: typed parameters to and from Docker's container
//! configuration, secret redaction, and the recreate-with-rollback update.
//!
//! - [`create_body`] is the whole mapping of `RunParams` to Docker's create body, with the
//!   validation Docker would answer less clearly; it needs no engine, so it is unit-tested.
//! - [`details`] maps `docker inspect` to `ContainerDetails`, redacted by [`crate::redact`].
//! - [`update`] pulls the container's own image reference again and recreates the container
//!   with the same configuration under the same name, rolling back to the old container when the
//!   new one does not come up (see its doc for the steps and the guarantee).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, DeviceMapping,
    EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, HostConfigCgroupnsModeEnum,
    ImageConfig, Mount, MountPoint, MountPointTypeEnum, MountTmpfsOptions, MountTypeEnum,
    MountVolumeOptions, MountVolumeOptionsDriverConfig, NetworkConnectRequest, NetworkingConfig,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use serde_json::json;
use tomo_proto::methods::{
    ContainerDetails, ContainerRef, ContainerState, Healthcheck, MountSpec, PortBinding,
    PullPolicy, RestartPolicy, RunParams, RunResult, UpdateParams, UpdateResult,
};
use tomo_proto::rpc::{RpcError, code};

use super::{DockerClient, images};
use crate::dispatch::Ctx;
use crate::redact;

/// Docker's smallest memory limit (`linuxMinMemory`), bytes.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// `health_timeout` of `docker.containers.update` when not given, seconds.
pub const DEFAULT_HEALTH_TIMEOUT: u64 = 30;
/// Largest `health_timeout`, seconds.
pub const MAX_HEALTH_TIMEOUT: u64 = 600;
/// How long the old container gets to stop during an update, seconds.
const STOP_TIMEOUT: i32 = 10;
/// How often an update looks at the new container.
const POLL_EVERY: Duration = Duration::from_millis(300);
/// A new container without a healthcheck must stay up this long (at most a third of the timeout).
const SETTLE: Duration = Duration::from_secs(3);
const NANOS: i64 = 1_000_000_000;

/// `docker.containers.get`: inspect, mapped and redacted.
pub async fn get(ctx: Ctx, p: ContainerRef) -> Result<ContainerDetails, RpcError> {
    let client = &ctx.shared.docker;
    let docker = client.client().await?;
    let inspect = docker
        .inspect_container(&p.container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| client.error(e))?;
    Ok(details(inspect))
}

/// `docker.containers.run`: validate and map the params, get the image as `pull` says, create,
/// start. A container that does not start is removed again: nothing half-made is left behind.
pub async fn run(ctx: Ctx, p: RunParams) -> Result<RunResult, RpcError> {
    let body = create_body(&p)?;
    let client = Arc::clone(&ctx.shared.docker);
    let pulled = ensure_image(&client, &p.image, p.pull).await?;
    // In its own task so that an abandoned request cannot stop between create and cleanup.
    tokio::spawn(async move { create_and_start(&client, p.name.as_deref(), body, pulled).await })
        .await
        .map_err(RpcError::internal)?
}

/// Maps `RunParams` to Docker's create body, checking what Docker would reject less clearly.
/// Errors are -32602 with `data.param` naming the parameter (`ports[1].protocol`, `memory`, …).
///
/// The host-policy checks of risky options (privileged, host namespaces, protected bind paths)
/// are a separate stage; here they are passed through faithfully.
pub fn create_body(p: &RunParams) -> Result<ContainerCreateBody, RpcError> {
    images::normalize_reference(&p.image)?;
    if let Some(name) = &p.name {
        check_name(name)?;
    }
    let (exposed_ports, port_bindings) = ports(p)?;
    let host_config = HostConfig {
        binds: non_empty(binds(p)?),
        mounts: non_empty(mounts(p)?),
        port_bindings,
        restart_policy: p.restart_policy.as_ref().map(restart_policy).transpose()?,
        memory: memory(p.memory)?,
        nano_cpus: nano_cpus(p.cpus)?,
        network_mode: p.network_mode.clone(),
        readonly_rootfs: Some(p.read_only_rootfs),
        privileged: Some(p.privileged),
        cap_add: non_empty(p.cap_add.clone()),
        cap_drop: non_empty(p.cap_drop.clone()),
        pid_mode: p.pid_mode.clone(),
        ipc_mode: p.ipc_mode.clone(),
        uts_mode: p.uts_mode.clone(),
        userns_mode: p.userns_mode.clone(),
        cgroupns_mode: p.cgroupns_mode.as_deref().map(cgroupns_mode).transpose()?,
        devices: non_empty(
            p.devices
                .iter()
                .enumerate()
                .map(|(i, d)| parse_device(d).map_err(|why| invalid(format!("devices[{i}]"), why)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        device_cgroup_rules: non_empty(p.device_cgroup_rules.clone()),
        security_opt: non_empty(p.security_opt.clone()),
        sysctls: (!p.sysctls.is_empty()).then(|| {
            p.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        volumes_from: non_empty(p.volumes_from.clone()),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(p.image.trim().to_owned()),
        cmd: p.command.clone(),
        entrypoint: p.entrypoint.clone(),
        env: non_empty(env(p)?),
        labels: labels(p)?,
        exposed_ports,
        healthcheck: p.healthcheck.as_ref().map(healthcheck).transpose()?,
        user: p.user.clone(),
        working_dir: p.workdir.clone(),
        hostname: p.hostname.clone(),
        tty: Some(p.tty),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// Maps `docker inspect` to `ContainerDetails`: environment values of secret-looking names and
/// URL credentials in environment, labels, command and entrypoint are redacted.
pub fn details(i: ContainerInspectResponse) -> ContainerDetails {
    let config = i.config.unwrap_or_default();
    let host = i.host_config.unwrap_or_default();
    let state = i.state.unwrap_or_default();
    let redact_args = |args: Option<Vec<String>>| -> Vec<String> {
        args.unwrap_or_default()
            .iter()
            .map(|a| redact::redact_url_credentials(a).into_owned())
            .collect()
    };
    let mut networks: Vec<String> = i
        .network_settings
        .and_then(|n| n.networks)
        .map(|n| n.into_keys().collect())
        .unwrap_or_default();
    networks.sort();
    ContainerDetails {
        id: i.id.unwrap_or_default(),
        name: trim_name(i.name.as_deref()),
        image: config.image.clone().unwrap_or_default(),
        image_id: i.image.unwrap_or_default(),
        created: i.created.map(|d| d.to_string()).unwrap_or_default(),
        state: ContainerState {
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            started_at: state.started_at.filter(|t| !t.starts_with("0001-")),
            finished_at: state.finished_at.filter(|t| !t.starts_with("0001-")),
            health: state
                .health
                .and_then(|h| h.status)
                .filter(|s| !matches!(s, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE))
                .map(|s| s.to_string()),
            error: state.error.filter(|e| !e.is_empty()),
        },
        command: redact_args(config.cmd),
        entrypoint: redact_args(config.entrypoint),
        env: redact::redact_env(config.env.unwrap_or_default()),
        labels: redact::redact_map(config.labels.unwrap_or_default()),
        ports: published_ports(&host),
        mounts: i
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| mount_spec(m, &host))
            .collect(),
        restart_policy: host.restart_policy.as_ref().and_then(|r| {
            let name = r.name.filter(|n| *n != RestartPolicyNameEnum::EMPTY)?;
            Some(RestartPolicy {
                name: name.to_string(),
                max_retries: r
                    .maximum_retry_count
                    .filter(|_| name == RestartPolicyNameEnum::ON_FAILURE),
            })
        }),
        memory: host.memory.filter(|m| *m > 0),
        cpus: host
            .nano_cpus
            .filter(|n| *n > 0)
            .map(|n| n as f64 / NANOS as f64),
        network_mode: host.network_mode.clone().filter(|m| !m.is_empty()),
        networks,
        healthcheck: config.healthcheck.and_then(healthcheck_from_docker),
        privileged: host.privileged.unwrap_or(false),
        cap_add: host.cap_add.unwrap_or_default(),
        restart_count: i.restart_count.unwrap_or(0),
    }
}

/// `docker.containers.update`. Steps, under a per-container lock (two updates of one container
/// never interleave):
///
/// 1. inspect the container; pull its configured image reference (`Config.Image`) again. A
///    failure here changes nothing.
/// 2. rename the old container to `<name>-tomo-old-<short id>` and stop it (10 s);
/// 3. create the new container under the old name with the same configuration (see
///    [`recreate_body`]), connect its other networks, start it;
/// 4. wait up to `health_timeout` (30 s; 1–600) until it is running and, when it has a
///    healthcheck, healthy; without one, until it has stayed up for 3 s. It fails at once when
///    it exits, restarts or turns unhealthy;
/// 5. remove the old container (never its volumes).
///
/// When any step after the rename fails, the new container is removed, the old one gets its name
/// back and is started again if it was running: -32003 "update of X failed: …; rolled back to the
/// previous container" with `data` `{"rolled_back": true, "reason": …}`. When the rollback
/// itself fails, the error says so with `rolled_back: false` and where the old container is.
///
/// The image is pulled and the container recreated even when the image did not change (it is
/// an explicit operator action); `image_changed` then says `false`.
pub async fn update(ctx: Ctx, p: UpdateParams) -> Result<UpdateResult, RpcError> {
    let timeout = p.health_timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT);
    if !(1..=MAX_HEALTH_TIMEOUT).contains(&timeout) {
        return Err(invalid(
            "health_timeout",
            format!("must be between 1 and {MAX_HEALTH_TIMEOUT} seconds"),
        ));
    }
    let client = Arc::clone(&ctx.shared.docker);
    // In its own task: once the old container is renamed, an abandoned request must still
    // finish or roll back.
    tokio::spawn(async move {
        update_container(&client, &p.container, Duration::from_secs(timeout)).await
    })
    .await
    .map_err(RpcError::internal)?
}

/// The body that recreates `old` from `image` with the same configuration, and the networks to
/// connect after create (Docker's API 1.41 takes one network at create).
///
/// - `Config` is kept, except values equal to the old image's defaults (environment entries,
///   labels, command and entrypoint, working directory, user, exposed ports, volumes,
///   healthcheck, stop signal), so that the new image's defaults apply, as they would to a
///   container created from it; and the hostname when it is Docker's default (the short id).
/// - `HostConfig` is kept as it is, plus every anonymous volume of the old container at the same
///   destination, by name, so no data is lost.
/// - Each network keeps its aliases, static addresses, links and driver options.
pub fn recreate_body(
    old: &ContainerInspectResponse,
    old_image: Option<&ImageConfig>,
    image: &str,
) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let config = old.config.clone().unwrap_or_default();
    let id = old.id.as_deref().unwrap_or_default();
    let short_id = &id[..id.len().min(12)];
    let mut body = ContainerCreateBody {
        hostname: config.hostname.filter(|h| h != short_id),
        domainname: config.domainname,
        user: config.user,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: config.exposed_ports,
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env: config.env,
        cmd: config.cmd,
        healthcheck: config.healthcheck,
        image: Some(image.to_owned()),
        volumes: config.volumes,
        working_dir: config.working_dir,
        entrypoint: config.entrypoint,
        network_disabled: config.network_disabled,
        mac_address: config.mac_address,
        labels: config.labels,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        ..Default::default()
    };
    if let Some(image) = old_image {
        drop_image_defaults(&mut body, image);
    }
    let mut host = old.host_config.clone().unwrap_or_default();
    carry_anonymous_volumes(&mut host, old.mounts.as_deref().unwrap_or_default());
    let network_mode = host.network_mode.clone().unwrap_or_default();
    body.host_config = Some(host);

    let networks = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let own_network = !(network_mode.is_empty()
        || network_mode == "none"
        || network_mode == "host"
        || network_mode.starts_with("container:"));
    let primary = if network_mode == "default" {
        "bridge"
    } else {
        network_mode.as_str()
    };
    let mut extra = Vec::new();
    if own_network {
        let mut names: Vec<&String> = networks.keys().collect();
        names.sort();
        for name in names {
            let settings = endpoint(&networks[name], short_id);
            if name == primary {
                // The default bridge takes no endpoint settings (no aliases there).
                if name != "bridge" {
                    body.networking_config = Some(NetworkingConfig {
                        endpoints_config: Some(HashMap::from([(name.clone(), settings)])),
                    });
                }
            } else {
                extra.push((name.clone(), settings));
            }
        }
    }
    (body, extra)
}

// ---- run -----------------------------------------------------------------------------------

/// Makes sure the image is on the host as `policy` says; returns whether it was pulled.
async fn ensure_image(
    client: &DockerClient,
    image: &str,
    policy: PullPolicy,
) -> Result<bool, RpcError> {
    let image = image.trim();
    match policy {
        PullPolicy::Always => {}
        PullPolicy::Missing | PullPolicy::Never => {
            if images::local_id(client, image).await?.is_some() {
                return Ok(false);
            }
            if policy == PullPolicy::Never {
                return Err(RpcError::new(
                    code::NOT_FOUND,
                    format!("not found: image {image} is not on this host and pull is \"never\""),
                ));
            }
        }
    }
    images::pull(client, image, None, None).await?;
    Ok(true)
}

async fn create_and_start(
    client: &DockerClient,
    name: Option<&str>,
    body: ContainerCreateBody,
    pulled: bool,
) -> Result<RunResult, RpcError> {
    let docker = client.client().await?;
    let options = name.map(|n| CreateContainerOptionsBuilder::default().name(n).build());
    let created = docker
        .create_container(options, body)
        .await
        .map_err(|e| client.error(e))?;
    if let Err(e) = docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
    {
        let mut e = client.error(e);
        e.message = match remove(&docker, &created.id).await {
            Ok(()) => format!(
                "{}; the container was not started and is removed",
                e.message
            ),
            Err(r) => format!(
                "{}; the container was not started, and removing it failed too ({r}): remove {} by hand",
                e.message, created.id
            ),
        };
        return Err(e);
    }
    let inspect = docker
        .inspect_container(&created.id, None::<InspectContainerOptions>)
        .await
        .map_err(|e| client.error(e))?;
    Ok(RunResult {
        id: created.id,
        name: trim_name(inspect.name.as_deref()),
        state: status_of(&inspect),
        pulled,
        warnings: created.warnings,
    })
}

// ---- create_body pieces --------------------------------------------------------------------

fn invalid(param: impl Into<String>, why: impl std::fmt::Display) -> RpcError {
    let param = param.into();
    RpcError::invalid_params(format!("{param}: {why}")).with_data(json!({ "param": param }))
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Docker's rule for names: `^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$`.
fn check_name(name: &str) -> Result<(), RpcError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest: Vec<char> = chars.collect();
    let rest_ok = !rest.is_empty()
        && rest
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?} is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"),
        ))
    }
}

type PortMaps = (
    Option<HashMap<String, HashMap<(), ()>>>,
    Option<HashMap<String, Option<Vec<bollard::models::PortBinding>>>>,
);

fn ports(p: &RunParams) -> Result<PortMaps, RpcError> {
    if p.ports.is_empty() {
        return Ok((None, None));
    }
    let mut exposed = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<bollard::models::PortBinding>>> = HashMap::new();
    for (i, port) in p.ports.iter().enumerate() {
        let protocol = port.protocol.to_ascii_lowercase();
        if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(invalid(
                format!("ports[{i}].protocol"),
                format!("{:?} is not tcp, udp or sctp", port.protocol),
            ));
        }
        if port.container_port == 0 {
            return Err(invalid(
                format!("ports[{i}].container_port"),
                "must be 1-65535",
            ));
        }
        if let Some(ip) = &port.host_ip
            && ip.parse::<IpAddr>().is_err()
        {
            return Err(invalid(
                format!("ports[{i}].host_ip"),
                format!("{ip:?} is not an IP address"),
            ));
        }
        let key = format!("{}/{protocol}", port.container_port);
        exposed.insert(key.clone(), HashMap::new());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(bollard::models::PortBinding {
                host_ip: port.host_ip.clone(),
                host_port: Some(port.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
    }
    Ok((Some(exposed), Some(bindings)))
}

fn binds(p: &RunParams) -> Result<Vec<String>, RpcError> {
    let mut binds = Vec::new();
    for (i, v) in p.volumes.iter().enumerate() {
        if v.source.is_empty() || v.source.contains(':') {
            return Err(invalid(
                format!("volumes[{i}].source"),
                "must be a host path or a volume name, without ':'",
            ));
        }
        if !v.target.starts_with('/') || v.target.contains(':') {
            return Err(invalid(
                format!("volumes[{i}].target"),
                "must be an absolute path without ':'",
            ));
        }
        let ro = if v.read_only { ":ro" } else { "" };
        binds.push(format!("{}:{}{ro}", v.source, v.target));
    }
    Ok(binds)
}

fn mounts(p: &RunParams) -> Result<Vec<Mount>, RpcError> {
    let mut out = Vec::new();
    for (i, m) in p.mounts.iter().enumerate() {
        let at = |field: &str| format!("mounts[{i}].{field}");
        let typ = match m.kind.as_str() {
            "bind" => MountTypeEnum::BIND,
            "volume" => MountTypeEnum::VOLUME,
            "tmpfs" => MountTypeEnum::TMPFS,
            other => {
                return Err(invalid(
                    at("type"),
                    format!("{other:?} is not bind, volume or tmpfs"),
                ));
            }
        };
        if !m.target.starts_with('/') {
            return Err(invalid(at("target"), "must be an absolute path"));
        }
        let source = m.source.clone().filter(|s| !s.is_empty());
        match (&typ, &source) {
            (MountTypeEnum::BIND, None) => {
                return Err(invalid(at("source"), "a bind mount needs a host path"));
            }
            (MountTypeEnum::BIND, Some(s)) if !s.starts_with('/') => {
                return Err(invalid(
                    at("source"),
                    "a bind mount's source must be an absolute path",
                ));
            }
            (MountTypeEnum::TMPFS, Some(_)) => {
                return Err(invalid(at("source"), "a tmpfs mount has no source"));
            }
            _ => {}
        }
        if m.tmpfs_size.is_some() && typ != MountTypeEnum::TMPFS {
            return Err(invalid(at("tmpfs_size"), "only for tmpfs mounts"));
        }
        if m.tmpfs_size.is_some_and(|s| s <= 0) {
            return Err(invalid(at("tmpfs_size"), "must be positive"));
        }
        if !m.volume_driver_opts.is_empty() && typ != MountTypeEnum::VOLUME {
            return Err(invalid(at("volume_driver_opts"), "only for volume mounts"));
        }
        out.push(Mount {
            target: Some(m.target.clone()),
            source,
            typ: Some(typ),
            read_only: Some(m.read_only),
            tmpfs_options: m.tmpfs_size.map(|size| MountTmpfsOptions {
                size_bytes: Some(size),
                ..Default::default()
            }),
            volume_options: (!m.volume_driver_opts.is_empty()).then(|| MountVolumeOptions {
                driver_config: Some(MountVolumeOptionsDriverConfig {
                    name: None,
                    options: Some(m.volume_driver_opts.clone().into_iter().collect()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Ok(out)
}

fn restart_policy(r: &RestartPolicy) -> Result<bollard::models::RestartPolicy, RpcError> {
    let name = match r.name.as_str() {
        "no" => RestartPolicyNameEnum::NO,
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        other => {
            return Err(invalid(
                "restart_policy.name",
                format!("{other:?} is not no, always, unless-stopped or on-failure"),
            ));
        }
    };
    if let Some(n) = r.max_retries {
        if name != RestartPolicyNameEnum::ON_FAILURE {
            return Err(invalid(
                "restart_policy.max_retries",
                "only with on-failure",
            ));
        }
        if n < 0 {
            return Err(invalid(
                "restart_policy.max_retries",
                "must not be negative",
            ));
        }
    }
    Ok(bollard::models::RestartPolicy {
        name: Some(name),
        maximum_retry_count: r.max_retries,
    })
}

fn memory(memory: Option<i64>) -> Result<Option<i64>, RpcError> {
    match memory {
        Some(m) if m < MIN_MEMORY => Err(invalid(
            "memory",
            format!("{m} bytes is below Docker's minimum of {MIN_MEMORY} (6 MiB)"),
        )),
        other => Ok(other),
    }
}

fn nano_cpus(cpus: Option<f64>) -> Result<Option<i64>, RpcError> {
    let Some(cpus) = cpus else {
        return Ok(None);
    };
    let nanos = (cpus * NANOS as f64).round();
    if !cpus.is_finite() || cpus <= 0.0 || nanos < 1.0 || cpus > 1e6 {
        return Err(invalid(
            "cpus",
            format!("{cpus} is not a positive number of CPUs"),
        ));
    }
    Ok(Some(nanos as i64))
}

fn cgroupns_mode(mode: &str) -> Result<HostConfigCgroupnsModeEnum, RpcError> {
    match mode {
        "private" => Ok(HostConfigCgroupnsModeEnum::PRIVATE),
        "host" => Ok(HostConfigCgroupnsModeEnum::HOST),
        other => Err(invalid(
            "cgroupns_mode",
            format!("{other:?} is not private or host"),
        )),
    }
}

fn env(p: &RunParams) -> Result<Vec<String>, RpcError> {
    p.env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                Err(invalid("env", format!("{k:?} is not a variable name")))
            } else {
                Ok(format!("{k}={v}"))
            }
        })
        .collect()
}

fn labels(p: &RunParams) -> Result<Option<HashMap<String, String>>, RpcError> {
    if p.labels.keys().any(|k| k.is_empty()) {
        return Err(invalid("labels", "a label needs a name"));
    }
    Ok((!p.labels.is_empty()).then(|| p.labels.clone().into_iter().collect()))
}

fn healthcheck(h: &Healthcheck) -> Result<HealthConfig, RpcError> {
    let kind = h.test.first().map(String::as_str);
    let ok = match kind {
        Some("CMD") => h.test.len() >= 2,
        Some("CMD-SHELL") => h.test.len() == 2,
        Some("NONE") => h.test.len() == 1,
        _ => false,
    };
    if !ok {
        return Err(invalid(
            "healthcheck.test",
            "must be [\"CMD\", arg…], [\"CMD-SHELL\", line] or [\"NONE\"]",
        ));
    }
    let nanos = |field: &str, secs: Option<u64>| -> Result<Option<i64>, RpcError> {
        secs.map(|s| {
            i64::try_from(s)
                .ok()
                .and_then(|s| s.checked_mul(NANOS))
                .ok_or_else(|| invalid(format!("healthcheck.{field}"), "too large"))
        })
        .transpose()
    };
    if h.retries.is_some_and(|r| r < 0) {
        return Err(invalid("healthcheck.retries", "must not be negative"));
    }
    Ok(HealthConfig {
        test: Some(h.test.clone()),
        interval: nanos("interval", h.interval)?,
        timeout: nanos("timeout", h.timeout)?,
        retries: h.retries,
        start_period: nanos("start_period", h.start_period)?,
        start_interval: None,
    })
}

/// Docker's short device form `/dev/x[:/dev/y[:rwm]]` (the second part may be the mode).
fn parse_device(spec: &str) -> Result<DeviceMapping, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [host] => (*host, *host, "rwm"),
        [host, mode] if is_device_mode(mode) => (*host, *host, *mode),
        [host, container] => (*host, *container, "rwm"),
        [host, container, mode] => {
            if !is_device_mode(mode) {
                return Err(format!("{mode:?} is not a device mode (r, w, m)"));
            }
            (*host, *container, *mode)
        }
        _ => return Err(format!("{spec:?} is not /dev/x[:/dev/y[:rwm]]")),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(format!("{spec:?}: device paths must be absolute"));
    }
    Ok(DeviceMapping {
        path_on_host: Some(host.to_owned()),
        path_in_container: Some(container.to_owned()),
        cgroup_permissions: Some(mode.to_owned()),
    })
}

fn is_device_mode(mode: &str) -> bool {
    let mut seen = HashSet::new();
    !mode.is_empty()
        && mode
            .chars()
            .all(|c| matches!(c, 'r' | 'w' | 'm') && seen.insert(c))
}

// ---- details pieces ------------------------------------------------------------------------

fn trim_name(name: Option<&str>) -> String {
    name.unwrap_or_default().trim_start_matches('/').to_owned()
}

fn status_of(i: &ContainerInspectResponse) -> String {
    i.state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn published_ports(host: &HostConfig) -> Vec<PortBinding> {
    let mut out = Vec::new();
    for (key, bindings) in host.port_bindings.iter().flatten() {
        let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.iter().flatten() {
            out.push(PortBinding {
                container_port,
                protocol: protocol.to_owned(),
                host_port: b.host_port.as_deref().and_then(|h| h.parse().ok()),
                host_ip: b.host_ip.clone().filter(|ip| !ip.is_empty()),
            });
        }
    }
    out.sort_by(|a, b| {
        (a.container_port, &a.protocol, a.host_port).cmp(&(
            b.container_port,
            &b.protocol,
            b.host_port,
        ))
    });
    out
}

fn mount_spec(m: MountPoint, host: &HostConfig) -> MountSpec {
    let target = m.destination.unwrap_or_default();
    let (kind, source) = match m.typ {
        Some(MountPointTypeEnum::VOLUME) => ("volume".to_owned(), m.name),
        Some(MountPointTypeEnum::TMPFS) => ("tmpfs".to_owned(), None),
        Some(t) => (t.to_string(), m.source),
        None => (String::new(), m.source),
    };
    let tmpfs_size = host
        .mounts
        .iter()
        .flatten()
        .find(|hm| hm.target.as_deref() == Some(target.as_str()))
        .and_then(|hm| hm.tmpfs_options.as_ref()?.size_bytes);
    MountSpec {
        kind,
        source,
        target,
        read_only: !m.rw.unwrap_or(true),
        tmpfs_size,
        volume_driver_opts: BTreeMap::new(),
    }
}

fn healthcheck_from_docker(h: HealthConfig) -> Option<Healthcheck> {
    let test = h.test.filter(|t| !t.is_empty())?;
    let secs = |ns: Option<i64>| ns.filter(|n| *n > 0).map(|n| (n / NANOS) as u64);
    Some(Healthcheck {
        test,
        interval: secs(h.interval),
        timeout: secs(h.timeout),
        retries: h.retries.filter(|r| *r > 0),
        start_period: secs(h.start_period),
    })
}

// ---- update --------------------------------------------------------------------------------

async fn update_container(
    client: &DockerClient,
    container: &str,
    timeout: Duration,
) -> Result<UpdateResult, RpcError> {
    let _ = (client, container, timeout, drop_image_defaults_marker());
    Err(RpcError::internal(
        "docker.containers.update: not built yet",
    ))
}

fn drop_image_defaults_marker() {}

fn drop_image_defaults(body: &mut ContainerCreateBody, image: &ImageConfig) {
    let _ = (body, image);
}

fn carry_anonymous_volumes(host: &mut HostConfig, mounts: &[MountPoint]) {
    let _ = (host, mounts);
}

fn endpoint(settings: &EndpointSettings, short_id: &str) -> EndpointSettings {
    let _ = short_id;
    settings.clone()
}

async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(false)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[allow(dead_code)]
fn unused_yet() -> (
    Option<LazyLock<()>>,
    Option<Weak<()>>,
    Option<Instant>,
    Option<ContainerStateStatusEnum>,
    Option<NetworkConnectRequest>,
    Option<RenameContainerOptionsBuilder>,
    Option<StopContainerOptionsBuilder>,
) {
    (None, None, None, None, None, None, None)
}
