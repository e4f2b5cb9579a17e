//! The adversarial suite of the validation stage (issue 4, layer 5), against the real engine.
//!
//! One row per attack on `docker.containers.run` (and `docker.volumes.create`), each with the
//! exact error code and rule it must get. For every row the engine is asked, before and after,
//! for the containers and volumes carrying the row's unique name: a refused row must leave
//! nothing behind, and the rows that must pass really create (and start) their container, which
//! is removed afterwards. The handlers are called as the dispatcher calls them, through
//! `Shared::for_tests` and a `Ctx`, with the default host policy (or one narrowed to an image
//! pattern).
//!
//! Needs the engine and the local test image `tomo-test/busybox:latest`
//! (`scripts/docker-test-env`); without them it prints "SKIPPED: …" and passes, unless
//! `TOMO_REQUIRE_DOCKER=1`. Containers use network mode `none` and names starting with
//! `tomo-test-`; everything made is removed.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tomo_agent::Shared;
use tomo_agent::dispatch::Ctx;
use tomo_agent::docker::{DockerClient, Endpoint, containers, ops};
use tomo_agent::policy::HostPolicy;
use tomo_agent::stream::{Outgoing, Streams};
use tomo_proto::methods::{MountSpec, RunParams, VolumeBinding, VolumeCreateParams};
use tomo_proto::rpc::code;

const BASE: &str = "tomo-test/busybox:latest";
/// Stops at once on SIGTERM, unlike a bare `sleep` as PID 1.
const IDLE: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 1; done",
];
/// Label carried by every container a row makes, with the row's id.
const LABEL: &str = "tomo.test.adversarial";

/// Capabilities outside Docker's default set, each of which a row must see refused.
const DANGEROUS_CAPS: &[&str] = &[
    "ALL",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "NET_ADMIN",
    "SYS_RAWIO",
    "SYS_TIME",
    "BPF",
    "PERFMON",
    "DAC_READ_SEARCH",
    "SYS_BOOT",
    "SYS_RESOURCE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_TTY_CONFIG",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "SYSLOG",
    "LINUX_IMMUTABLE",
    "IPC_LOCK",
    "IPC_OWNER",
    "LEASE",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "CHECKPOINT_RESTORE",
    "NET_BROADCAST",
];

struct Env {
    docker: Docker,
    client: Arc<DockerClient>,
}

fn skip<T>(why: String) -> Option<T> {
    if std::env::var("TOMO_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("TOMO_REQUIRE_DOCKER=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

async fn env() -> Option<Env> {
    let client = Arc::new(DockerClient::new(Endpoint::from_env()));
    let docker = match client.client().await {
        Ok(d) => d,
        Err(e) => return skip(format!("no Docker engine: {}", e.message)),
    };
    if docker.inspect_image(BASE).await.is_err() {
        return skip(format!(
            "no test image {BASE} (run scripts/docker-test-env)"
        ));
    }
    Some(Env { docker, client })
}

/// A handler context with `policy`; the receiver must outlive the calls.
fn ctx(client: &Arc<DockerClient>, policy: HostPolicy) -> (Ctx, mpsc::Receiver<Outgoing>) {
    let (tx, rx) = mpsc::channel::<Outgoing>(1024);
    let mut shared = Shared::for_tests(Arc::clone(client), std::env::temp_dir());
    shared.policy = Arc::new(policy);
    let ctx = Ctx {
        shared: Arc::new(shared),
        streams: Streams::new(tx, CancellationToken::new()),
        replied: CancellationToken::new(),
    };
    (ctx, rx)
}

/// What a row must get: the error code and rule (and the param), or a running container.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Refused {
        code: i64,
        rule: &'static str,
        param: String,
    },
    Runs,
}

fn refused(rule: &'static str, param: &str) -> Want {
    Want::Refused {
        code: code::CONTAINER_BLOCKED,
        rule,
        param: param.to_owned(),
    }
}

/// Sets one namespace mode of the params.
type SetMode = fn(&mut RunParams, String);

/// A `docker.volumes.create` row: attack, driver, options, and the expected code and rule
/// (`None`: the volume must be created).
type VolumeCase<'a> = (
    &'a str,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    Option<(i64, &'a str)>,
);

struct Row {
    attack: String,
    params: RunParams,
    want: Want,
}

fn row(attack: impl Into<String>, want: Want, f: impl FnOnce(&mut RunParams)) -> Row {
    let mut params = RunParams {
        image: BASE.into(),
        command: Some(IDLE.iter().map(|s| (*s).to_owned()).collect()),
        network_mode: Some("none".into()),
        ..Default::default()
    };
    f(&mut params);
    Row {
        attack: attack.into(),
        params,
        want,
    }
}

fn bind_row(attack: &str, source: &str, want: Want) -> Row {
    row(format!("{attack}: volumes {source}"), want, |p| {
        p.volumes = vec![VolumeBinding {
            source: source.into(),
            target: "/mnt/x".into(),
            read_only: true,
        }];
    })
}

fn mount_row(attack: &str, kind: &str, source: &str, opts: &[(&str, &str)], want: Want) -> Row {
    row(format!("{attack}: mounts {kind} {source}"), want, |p| {
        p.mounts = vec![MountSpec {
            kind: kind.into(),
            source: Some(source.into()),
            target: "/mnt/x".into(),
            read_only: true,
            tmpfs_size: None,
            volume_driver_opts: opts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }];
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The rows with the default host policy. `dir` is this run's scratch directory under /tmp
/// (`link` in it points at /var/run); `prefix` names the fixtures.
fn rows(dir: &Path, prefix: &str) -> Vec<Row> {
    let d = dir.display();
    let mut rows = vec![row(
        "privileged",
        refused("privileged", "privileged"),
        |p| {
            p.privileged = true;
        },
    )];
    for cap in DANGEROUS_CAPS {
        rows.push(row(
            format!("cap_add {cap}"),
            refused("cap_add", "cap_add[0]"),
            |p| {
                p.cap_add = strings(&[cap]);
            },
        ));
    }
    for spelling in [
        "all",
        "cap_all",
        "Cap_All",
        "CAP_SYS_ADMIN",
        "sys_admin",
        " Sys_Admin ",
    ] {
        rows.push(row(
            format!("cap_add {spelling:?}"),
            refused("cap_add", "cap_add[1]"),
            |p| p.cap_add = strings(&["CHOWN", spelling]),
        ));
    }
    let modes: [(&str, SetMode); 6] = [
        ("pid_mode", |p, m| p.pid_mode = Some(m)),
        ("ipc_mode", |p, m| p.ipc_mode = Some(m)),
        ("uts_mode", |p, m| p.uts_mode = Some(m)),
        ("userns_mode", |p, m| p.userns_mode = Some(m)),
        ("cgroupns_mode", |p, m| p.cgroupns_mode = Some(m)),
        ("network_mode", |p, m| p.network_mode = Some(m)),
    ];
    for (param, set) in modes {
        for spelling in ["host", "HOST"] {
            rows.push(row(
                format!("{param} {spelling}"),
                refused("namespace", param),
                |p| set(p, spelling.to_owned()),
            ));
        }
    }
    rows.extend([
        row(
            "network_mode container:<privileged>",
            refused("namespace", "network_mode"),
            |p| p.network_mode = Some(format!("container:{prefix}-priv")),
        ),
        row(
            "pid_mode container:<privileged>",
            refused("namespace", "pid_mode"),
            |p| p.pid_mode = Some(format!("container:{prefix}-priv")),
        ),
        row("devices /dev/sda", refused("devices", "devices[0]"), |p| {
            p.devices = strings(&["/dev/sda"]);
        }),
        row("devices /dev/mem", refused("devices", "devices[0]"), |p| {
            p.devices = strings(&["/dev/mem:/dev/mem:rwm"]);
        }),
        row(
            "device_cgroup_rules a *:* rwm",
            refused("device_cgroup_rules", "device_cgroup_rules[0]"),
            |p| p.device_cgroup_rules = strings(&["a *:* rwm"]),
        ),
        row(
            "device_cgroup_rules b 8:* rw",
            refused("device_cgroup_rules", "device_cgroup_rules[0]"),
            |p| p.device_cgroup_rules = strings(&["b 8:* rw"]),
        ),
    ]);
    let security: &[(&str, &'static str)] = &[
        ("seccomp=unconfined", "seccomp"),
        ("seccomp:unconfined", "seccomp"),
        ("SECCOMP=Unconfined", "seccomp"),
        (" seccomp = unconfined ", "seccomp"),
        (r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#, "seccomp"),
        ("apparmor=unconfined", "apparmor"),
        ("apparmor:unconfined", "apparmor"),
        ("AppArmor=UNCONFINED", "apparmor"),
        ("label=disable", "label"),
        ("label:disable", "label"),
        ("LABEL=DISABLE", "label"),
        ("disable", "label"),
        ("label=type:spc_t", "label"),
        ("systempaths=unconfined", "systempaths"),
        ("no-new-privileges=false", "security_opt"),
    ];
    for (opt, rule) in security {
        rows.push(row(
            format!("security_opt {opt:?}"),
            refused(rule, "security_opt[1]"),
            |p| p.security_opt = strings(&["no-new-privileges", opt]),
        ));
    }
    rows.extend([
        row(
            "sysctls kernel.core_pattern",
            refused("sysctls", "sysctls.kernel.core_pattern"),
            |p| p.sysctls = BTreeMap::from([("kernel.core_pattern".into(), "|/tmp/x".into())]),
        ),
        row(
            "sysctls kernel/modprobe",
            refused("sysctls", "sysctls.kernel/modprobe"),
            |p| p.sysctls = BTreeMap::from([("kernel/modprobe".into(), "/tmp/x".into())]),
        ),
    ]);
    let socket_spellings = [
        "/var/run/docker.sock",
        "/var/run//docker.sock",
        "/var/run/./docker.sock",
        "/var/lib/../run/docker.sock",
        "/run/docker.sock",
        "/var/run/docker.sock/",
        "//var///run/docker.sock",
        "/tmp/../var/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/run/dbus/system_bus_socket",
    ];
    let link = format!("{d}/link/docker.sock");
    let link_through_missing = format!("{d}/missing/../link/docker.sock");
    let protected: Vec<&str> = socket_spellings
        .iter()
        .copied()
        .chain([
            link.as_str(),
            link_through_missing.as_str(),
            "/",
            "/etc",
            "/etc/",
            "/etc/shadow",
            "/root/.ssh",
            "/home",
            "/proc/1/root",
            "/sys",
            "/dev",
            "/usr/bin",
            "/lib",
            "/boot",
            "/tmp/../../etc",
        ])
        .collect();
    for source in &protected {
        rows.push(bind_row(
            "protected",
            source,
            refused("bind_protected", "volumes[0].source"),
        ));
        rows.push(mount_row(
            "protected",
            "bind",
            source,
            &[],
            refused("bind_protected", "mounts[0].source"),
        ));
    }
    for source in ["/ETC", "/srvx/data", "/opt-x"] {
        rows.push(bind_row(
            "outside the roots",
            source,
            refused("bind_outside_roots", "volumes[0].source"),
        ));
    }
    for source in ["relative/path", "~/x", "./x", "../x", "~"] {
        rows.push(bind_row(
            "relative",
            source,
            refused("bind_relative", "volumes[0].source"),
        ));
        rows.push(mount_row(
            "relative",
            "bind",
            source,
            &[],
            refused("bind_relative", "mounts[0].source"),
        ));
    }
    rows.push(mount_row(
        "BIND in capitals",
        "BIND",
        "/var/run/docker.sock",
        &[],
        refused("bind_protected", "mounts[0].source"),
    ));
    let volume = format!("{prefix}-bindvol");
    for (attack, opts) in [
        (
            "local volume o=bind device=/etc",
            vec![("o", "bind"), ("type", "none"), ("device", "/etc")],
        ),
        (
            "local volume O=RBIND device=/var/run",
            vec![("O", "RBIND"), ("device", "/var/run")],
        ),
        (
            "local volume type=none device=/",
            vec![("type", "none"), ("device", "/")],
        ),
    ] {
        rows.push(mount_row(
            attack,
            "volume",
            &volume,
            &opts,
            refused("bind_protected", "mounts[0].volume_driver_opts.device"),
        ));
    }
    rows.push(mount_row(
        "local volume of a host block device",
        "volume",
        &volume,
        &[("type", "ext4"), ("device", "/dev/sda1")],
        refused("volume_type", "mounts[0].volume_driver_opts"),
    ));
    rows.extend([
        row(
            "volumes_from a privileged container",
            refused("volumes_from", "volumes_from[0]"),
            |p| p.volumes_from = strings(&[&format!("{prefix}-priv")]),
        ),
        row(
            "volumes_from a container binding the Docker socket",
            refused("volumes_from", "volumes_from[0]"),
            |p| p.volumes_from = strings(&[&format!("{prefix}-sock:ro")]),
        ),
    ]);
    // Issue 12.1: a directory holding a host socket, and the parent of the agent's data
    // directory (`agent` in the scratch directory, protected by the test's policy).
    rows.extend([
        bind_row(
            "a directory holding a host socket",
            &format!("{d}/sockdir"),
            refused("bind_contents", "volumes[0].source"),
        ),
        bind_row(
            "the parent of the agent's data directory",
            &d.to_string(),
            refused("bind_protected", "volumes[0].source"),
        ),
        mount_row(
            "the agent's data directory",
            "bind",
            &format!("{d}/agent"),
            &[],
            refused("bind_protected", "mounts[0].source"),
        ),
    ]);
    // What must pass, and really run.
    let data = format!("{d}/data");
    rows.extend([
        bind_row("allowed", &data, Want::Runs),
        mount_row("allowed", "bind", &data, &[], Want::Runs),
        bind_row(
            "allowed named volume",
            &format!("{prefix}-named"),
            Want::Runs,
        ),
        row("cap_add NET_BIND_SERVICE", Want::Runs, |p| {
            p.cap_add = strings(&["NET_BIND_SERVICE", "cap_chown"]);
            p.cap_drop = strings(&["ALL"]);
        }),
        row("no-new-privileges", Want::Runs, |p| {
            p.security_opt = strings(&["no-new-privileges", "no-new-privileges:true"]);
        }),
        row("network none, ipc private", Want::Runs, |p| {
            p.ipc_mode = Some("private".into());
        }),
    ]);
    rows
}

/// Names of the containers carrying `LABEL=<id>`, and of the volumes whose name holds `id`.
async fn traces(docker: &Docker, id: &str, volume_prefix: &str) -> (Vec<String>, Vec<String>) {
    let label = format!("{LABEL}={id}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let list = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(list))
        .await
        .expect("list containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let filters = HashMap::from([("name", vec![volume_prefix])]);
    let list = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let volumes = docker
        .list_volumes(Some(list))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    (containers, volumes)
}

/// Removes every container and volume whose name holds `prefix`.
async fn cleanup(docker: &Docker, prefix: &str) {
    let filters = HashMap::from([("name", vec![prefix])]);
    let list = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in docker.list_containers(Some(list)).await.unwrap_or_default() {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let _ = docker
            .remove_container(&c.id.unwrap_or_default(), Some(options))
            .await;
    }
    let list = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let volumes = docker.list_volumes(Some(list)).await.ok();
    for v in volumes.and_then(|l| l.volumes).unwrap_or_default() {
        let _ = docker
            .remove_volume(
                &v.name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
    }
}

/// Runs `body` with a scratch directory `/tmp/<prefix>` (with `link -> /var/run` and `data/`),
/// then removes it and every container and volume named with `prefix`, even after a panic.
async fn with_fixtures<F, Fut>(e: &Env, prefix: &str, body: F)
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = Path::new("/tmp").join(prefix);
    std::fs::create_dir_all(dir.join("data")).expect("scratch dir");
    let _ = std::fs::remove_file(dir.join("link"));
    std::os::unix::fs::symlink("/var/run", dir.join("link")).expect("symlink to /var/run");
    let outcome = AssertUnwindSafe(body(dir.clone())).catch_unwind().await;
    cleanup(&e.docker, prefix).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A container created directly (never started, network none), to be named by other rows.
async fn fixture(docker: &Docker, name: &str, host_config: HostConfig) {
    let body = ContainerCreateBody {
        image: Some(BASE.into()),
        cmd: Some(vec!["true".into()]),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..host_config
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    docker
        .create_container(Some(options), body)
        .await
        .unwrap_or_else(|e| panic!("create fixture {name}: {e}"));
}

/// Runs one row and checks its answer and its traces on the engine. Returns a failure message.
async fn check_row(e: &Env, ctx: &Ctx, prefix: &str, i: usize, row: Row) -> Option<String> {
    let id = format!("{prefix}-r{i}");
    let mut p = row.params;
    p.name = Some(id.clone());
    p.labels.insert(LABEL.into(), id.clone());
    // The row's volume names all hold the prefix; those made by an allowed row are expected.
    let before = traces(&e.docker, &id, &format!("{prefix}-bindvol")).await;
    if before != (vec![], vec![]) {
        return Some(format!(
            "{}: traces before the call: {before:?}",
            row.attack
        ));
    }
    let got = containers::run(ctx.clone(), p).await;
    let after = traces(&e.docker, &id, &format!("{prefix}-bindvol")).await;
    match (&row.want, got) {
        (Want::Refused { code, rule, param }, Err(err)) => {
            let data = err.data.clone().unwrap_or_default();
            let got = (err.code, data["rule"].as_str(), data["param"].as_str());
            if got != (*code, Some(*rule), Some(param.as_str())) {
                return Some(format!(
                    "{}: want {code} {rule} {param}, got {got:?}: {}",
                    row.attack, err.message
                ));
            }
            if !err.message.contains(rule) {
                return Some(format!(
                    "{}: message names no rule: {}",
                    row.attack, err.message
                ));
            }
            if after != (vec![], vec![]) {
                return Some(format!("{}: refused but left {after:?}", row.attack));
            }
        }
        (Want::Refused { rule, .. }, Ok(r)) => {
            return Some(format!(
                "{}: want {rule}, but it ran as {}",
                row.attack, r.id
            ));
        }
        (Want::Runs, Ok(r)) => {
            if r.state != "running" || after.0 != vec![format!("/{id}")] {
                return Some(format!("{}: ran as {r:?}, traces {after:?}", row.attack));
            }
        }
        (Want::Runs, Err(err)) => {
            return Some(format!("{}: must run, got {}", row.attack, err.message));
        }
    }
    None
}

#[tokio::test]
async fn every_attack_on_run_is_refused_and_leaves_nothing() {
    let Some(e) = &env().await else { return };
    let prefix = &format!("tomo-test-adv-{}-run", std::process::id());
    with_fixtures(e, prefix, |dir| async move {
        fixture(
            &e.docker,
            &format!("{prefix}-priv"),
            HostConfig {
                privileged: Some(true),
                ..Default::default()
            },
        )
        .await;
        fixture(
            &e.docker,
            &format!("{prefix}-sock"),
            HostConfig {
                binds: Some(vec!["/var/run/docker.sock:/var/run/docker.sock:ro".into()]),
                ..Default::default()
            },
        )
        .await;
        std::fs::create_dir_all(dir.join("sockdir/run")).expect("sockdir");
        let _listener = std::os::unix::net::UnixListener::bind(dir.join("sockdir/run/s.sock"))
            .expect("a host socket");
        let policy = scratch_policy(&dir).protect(&dir.join("agent"));
        let (ctx, _rx) = ctx(&e.client, policy);
        let rows = rows(&dir, prefix);
        let total = rows.len();
        let mut failures = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            if let Some(f) = check_row(e, &ctx, prefix, i, row).await {
                failures.push(f);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {total} rows failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Issue 12.1: `/tmp` is no root by default, and the scratch directory under it, even
        // as the volume base, crosses `/tmp`, which every local user can write to.
        let (defaults, _rx2) = self::ctx(&e.client, HostPolicy::default_for(&dir));
        let data = format!("{}/data", dir.display());
        let open = bind_row(
            "a source under /tmp",
            &data,
            refused("bind_open_dir", "volumes[0].source"),
        );
        assert_eq!(check_row(e, &defaults, prefix, 999, open).await, None);
        let (defaults, _rx3) =
            self::ctx(&e.client, HostPolicy::default_for(Path::new("/srv/tomo")));
        let outside = bind_row(
            "a source under /tmp",
            &data,
            refused("bind_outside_roots", "volumes[0].source"),
        );
        assert_eq!(check_row(e, &defaults, prefix, 998, outside).await, None);
    })
    .await;
}

#[tokio::test]
async fn images_outside_the_policy_patterns_are_refused() {
    let Some(e) = &env().await else { return };
    let prefix = &format!("tomo-test-adv-{}-img", std::process::id());
    with_fixtures(e, prefix, |_| async move {
        let text = r#"images = ["docker.io/library/*", "ghcr.io/acme/*"]"#;
        let policy = HostPolicy::from_toml(text, Path::new("policy.toml"), Path::new("/srv/tomo"))
            .expect("policy");
        let (ctx, _rx) = ctx(&e.client, policy);
        let rows = vec![
            row(
                "image outside the patterns",
                refused("image", "image"),
                |_| {},
            ),
            row("image by id", refused("image", "image"), |p| {
                p.image = "sha256:0123456789abcdef0123456789abcdef".into();
            }),
            row("look-alike registry", refused("image", "image"), |p| {
                p.image = "ghcr.io/acme-evil/app".into();
            }),
        ];
        let mut failures = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            if let Some(f) = check_row(e, &ctx, prefix, i, row).await {
                failures.push(f);
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // The same policy lets the test image through once it names it.
        let text = r#"images = ["docker.io/tomo-test/*"]"#;
        let policy = HostPolicy::from_toml(text, Path::new("policy.toml"), Path::new("/srv/tomo"))
            .expect("policy");
        let (allowing, _rx2) = self::ctx(&e.client, policy);
        let ok = row("image inside the patterns", Want::Runs, |_| {});
        assert_eq!(check_row(e, &allowing, prefix, 99, ok).await, None);
    })
    .await;
}

#[tokio::test]
async fn local_volumes_that_bind_protected_paths_are_not_created() {
    let Some(e) = &env().await else { return };
    let prefix = &format!("tomo-test-adv-{}-vol", std::process::id());
    with_fixtures(e, prefix, |dir| async move {
        let (ctx, _rx) = ctx(&e.client, scratch_policy(&dir));
        let link = format!("{}/link", dir.display());
        let data = format!("{}/data", dir.display());
        // (attack, driver, options, expected code and rule, or None when it must be created)
        let rows: Vec<VolumeCase> = vec![
            (
                "o=bind device=/etc",
                None,
                vec![("o", "bind"), ("type", "none"), ("device", "/etc")],
                Some((code::CONTAINER_BLOCKED, "bind_protected")),
            ),
            (
                "o=rbind device=/var/run",
                None,
                vec![("o", "rbind"), ("device", "/var/run")],
                Some((code::CONTAINER_BLOCKED, "bind_protected")),
            ),
            (
                "type=none device=/",
                None,
                vec![("type", "none"), ("device", "/")],
                Some((code::CONTAINER_BLOCKED, "bind_protected")),
            ),
            (
                "O=Bind DEVICE=/var/lib/../run",
                Some("local"),
                vec![("O", "Bind"), ("DEVICE", "/var/lib/../run")],
                Some((code::CONTAINER_BLOCKED, "bind_protected")),
            ),
            (
                "bind through a symlink to /var/run",
                None,
                vec![("o", "bind"), ("device", link.as_str())],
                Some((code::CONTAINER_BLOCKED, "bind_protected")),
            ),
            (
                "bind relative",
                None,
                vec![("o", "bind"), ("device", "etc")],
                Some((code::CONTAINER_BLOCKED, "bind_relative")),
            ),
            (
                "bind outside the roots",
                None,
                vec![("o", "bind"), ("device", "/ETC")],
                Some((code::CONTAINER_BLOCKED, "bind_outside_roots")),
            ),
            (
                "host block device",
                None,
                vec![("type", "ext4"), ("device", "/dev/sda1")],
                Some((code::CONTAINER_BLOCKED, "volume_type")),
            ),
            (
                "unknown driver",
                Some("vieux/sshfs"),
                vec![],
                Some((code::CONTAINER_BLOCKED, "volume_driver")),
            ),
            (
                "bind under a root",
                None,
                vec![("o", "bind"), ("type", "none"), ("device", data.as_str())],
                None,
            ),
            (
                "tmpfs",
                None,
                vec![("type", "tmpfs"), ("device", "tmpfs")],
                None,
            ),
        ];
        let mut failures = Vec::new();
        for (i, (attack, driver, opts, want)) in rows.into_iter().enumerate() {
            let name = format!("{prefix}-v{i}");
            let exists = |names: &[String]| names.contains(&name);
            let before = traces(&e.docker, "-", &name).await.1;
            assert!(!exists(&before), "{attack}: exists before");
            let p = VolumeCreateParams {
                name: name.parse().expect("a volume name"),
                driver: driver.map(str::to_owned),
                driver_opts: opts
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                labels: BTreeMap::new(),
            };
            let got = ops::volumes_create(ctx.clone(), p).await;
            let after = exists(&traces(&e.docker, "-", &name).await.1);
            let failure = match (want, got) {
                (Some((c, rule)), Err(err)) => {
                    let data = err.data.clone().unwrap_or_default();
                    (err.code != c || data["rule"] != rule || after).then(|| {
                        format!(
                            "{attack}: want {c} {rule}, got {} {data} (created: {after})",
                            err.code
                        )
                    })
                }
                (Some((_, rule)), Ok(_)) => {
                    Some(format!("{attack}: want {rule}, but it was created"))
                }
                (None, Ok(_)) => (!after).then(|| format!("{attack}: answered but not created")),
                (None, Err(err)) => Some(format!("{attack}: must be created, got {}", err.message)),
            };
            failures.extend(failure);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

/// `docker.containers.update` recreates a container with its own configuration: one created
/// outside tomo that breaks the policy is refused before anything changes (same id, same name,
/// no parked copy).
#[tokio::test]
async fn update_does_not_recreate_a_container_that_breaks_the_policy() {
    let Some(e) = &env().await else { return };
    let prefix = &format!("tomo-test-adv-{}-upd", std::process::id());
    with_fixtures(e, prefix, |_| async move {
        let cases: [(&str, HostConfig, &str, &str); 3] = [
            (
                "priv",
                HostConfig {
                    privileged: Some(true),
                    ..Default::default()
                },
                "privileged",
                "HostConfig.Privileged",
            ),
            (
                "sock",
                HostConfig {
                    binds: Some(vec!["/var/run//docker.sock:/s".into()]),
                    ..Default::default()
                },
                "bind_protected",
                "HostConfig.Binds[0]",
            ),
            (
                "caps",
                HostConfig {
                    cap_add: Some(vec!["SYS_ADMIN".into()]),
                    ..Default::default()
                },
                "cap_add",
                "HostConfig.CapAdd[0]",
            ),
        ];
        let (ctx, _rx) = ctx(&e.client, HostPolicy::default_for(Path::new("/srv/tomo")));
        for (suffix, host_config, rule, param) in cases {
            let name = format!("{prefix}-{suffix}");
            fixture(&e.docker, &name, host_config).await;
            let before = e
                .docker
                .inspect_container(
                    &name,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .expect("inspect")
                .id;
            let err = containers::update(
                ctx.clone(),
                tomo_proto::methods::UpdateParams {
                    container: name.parse().expect("a container name"),
                    health_timeout: Some(5),
                    force: false,
                },
            )
            .await
            .expect_err("refused");
            let data = err.data.clone().unwrap_or_default();
            assert_eq!(
                (err.code, data["rule"].as_str(), data["param"].as_str()),
                (code::CONTAINER_BLOCKED, Some(rule), Some(param)),
                "{name}: {}",
                err.message
            );
            let filters = HashMap::from([("name", vec![name.as_str()])]);
            let list = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let now: Vec<_> = e
                .docker
                .list_containers(Some(list))
                .await
                .expect("list")
                .into_iter()
                .map(|c| (c.id, c.names))
                .collect();
            assert_eq!(
                now,
                vec![(before, Some(vec![format!("/{name}")]))],
                "{name}"
            );
        }
    })
    .await;
}

/// `docker.images.pull` of an image outside the policy's patterns is refused before the engine
/// is asked anything.
#[tokio::test]
async fn pulls_outside_the_policy_patterns_are_refused() {
    let Some(e) = &env().await else { return };
    let text = r#"images = ["docker.io/library/*"]"#;
    let policy = HostPolicy::from_toml(text, Path::new("policy.toml"), Path::new("/srv/tomo"))
        .expect("policy");
    let (ctx, _rx) = ctx(&e.client, policy);
    let image = format!("127.0.0.1:5055/tomo-test/adv-{}:x", std::process::id());
    let pulled = tomo_agent::docker::images::pull_handler(
        ctx,
        tomo_proto::methods::PullParams {
            image: image.parse().expect("an image ref"),
            auth: None,
            progress: false,
        },
    )
    .await;
    let Err(err) = pulled else {
        panic!("{image} must be refused")
    };
    let data = err.data.clone().unwrap_or_default();
    assert_eq!(
        (err.code, data["rule"].as_str(), data["param"].as_str()),
        (code::CONTAINER_BLOCKED, Some("image"), Some("image")),
        "{}",
        err.message
    );
    assert!(e.docker.inspect_image(&image).await.is_err(), "not pulled");
}

/// A policy whose only bind roots are `dir` (named explicitly, so the test's scratch directory
/// under `/tmp` may be crossed) and the volume base.
fn scratch_policy(dir: &Path) -> HostPolicy {
    let text = format!("bind_roots = [{:?}]", dir.display().to_string());
    HostPolicy::from_toml(&text, Path::new("policy.toml"), Path::new("/srv/tomo")).expect("policy")
}

/// State and start time of a container.
async fn state_of(docker: &Docker, name: &str) -> (bool, String) {
    let s = docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("inspect")
        .state
        .expect("state");
    (s.running.unwrap_or(false), s.started_at.unwrap_or_default())
}

/// Issue 12.1: a bind source checked at `run` as a plain directory, then replaced by a
/// symlink to `/etc` (or to the directory of the Docker socket), must not be mounted by a later
/// start, restart or update: each re-checks every bind source, resolved now, and refuses with
/// -32004 before the engine is asked to (re)start anything.
#[tokio::test]
async fn a_bind_source_swapped_for_a_symlink_is_refused_at_start_restart_and_update() {
    let Some(e) = &env().await else { return };
    let prefix = &format!("tomo-test-adv-{}-swap", std::process::id());
    with_fixtures(e, prefix, |dir| async move {
        let (ctx, _rx) = ctx(&e.client, scratch_policy(&dir));
        for (i, target) in ["/etc", "/var/run"].into_iter().enumerate() {
            let source = dir.join(format!("swap{i}"));
            std::fs::create_dir_all(&source).expect("bind dir");
            let name = format!("{prefix}-{i}");
            let mut p = row("swap", Want::Runs, |p| {
                p.volumes = vec![VolumeBinding {
                    source: source.display().to_string(),
                    target: "/mnt/x".into(),
                    read_only: true,
                }];
            })
            .params;
            p.name = Some(name.clone());
            let r = containers::run(ctx.clone(), p).await.expect("runs");
            assert_eq!(r.state, "running");
            // Swapped while it runs: the running container keeps what it had.
            std::fs::remove_dir(&source).expect("rmdir");
            std::os::unix::fs::symlink(target, &source).expect("symlink");
            let blocked = |what: &str, err: tomo_proto::rpc::RpcError| {
                let data = err.data.clone().unwrap_or_default();
                assert_eq!(
                    (err.code, data["rule"].as_str()),
                    (code::CONTAINER_BLOCKED, Some("bind_protected")),
                    "{what} of {name} with {target}: {}",
                    err.message
                );
                assert_eq!(data["param"], "HostConfig.Binds[0]", "{}", err.message);
            };
            let before = state_of(&e.docker, &name).await;
            let restart = tomo_proto::methods::StopParams {
                container: tomo_proto::refs::ContainerRef::parse(&name).expect("a valid name"),
                timeout: Some(1),
            };
            let err = ops::restart(ctx.clone(), restart)
                .await
                .expect_err("refused");
            blocked("restart", err);
            assert_eq!(
                state_of(&e.docker, &name).await,
                before,
                "a refused restart leaves {name} as it was"
            );
            let update = tomo_proto::methods::UpdateParams {
                container: tomo_proto::refs::ContainerRef::parse(&name).expect("a valid name"),
                health_timeout: Some(5),
                force: false,
            };
            let err = containers::update(ctx.clone(), update)
                .await
                .expect_err("refused");
            blocked("update", err);
            // Stopped, then started again: refused, and it stays stopped.
            let stop = tomo_proto::methods::StopParams {
                container: tomo_proto::refs::ContainerRef::parse(&name).expect("a valid name"),
                timeout: Some(1),
            };
            ops::stop(ctx.clone(), stop).await.expect("stops");
            let start = tomo_proto::methods::ContainerParams {
                container: tomo_proto::refs::ContainerRef::parse(&name).expect("a valid name"),
            };
            let err = ops::start(ctx.clone(), start).await.expect_err("refused");
            blocked("start", err);
            assert!(
                !state_of(&e.docker, &name).await.0,
                "{name} was started with {target} behind its bind"
            );
        }
    })
    .await;
}

/// Issue 12.1, the engine's own restarts: a container run with a plain directory as its bind
/// source and a restart policy, whose source is then swapped for a symlink to a protected path
/// (here the agent's data directory), is started again by the engine itself when its process
/// exits, without the agent being asked. The bind guard judges that start: the container is
/// killed, its restart policy set to `no`, and the refusal audited.
#[tokio::test]
async fn a_container_the_engine_restarts_by_itself_is_judged_again_and_killed() {
    let Some(e) = &env().await else { return };
    let prefix = &format!("tomo-test-adv-{}-guard", std::process::id());
    with_fixtures(e, prefix, |dir| async move {
        let data = dir.join("agent-data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("agent.key"), b"secret").expect("key");
        let policy = scratch_policy(&dir).protect(&data);
        let (ctx, _rx) = ctx(&e.client, policy.clone());
        let source = dir.join("guarded");
        std::fs::create_dir_all(&source).expect("bind dir");
        let name = format!("{prefix}-0");
        let mut p = row("guard", Want::Runs, |p| {
            p.volumes = vec![VolumeBinding {
                source: source.display().to_string(),
                target: "/mnt/x".into(),
                read_only: true,
            }];
        })
        .params;
        p.name = Some(name.clone());
        // Exits every second; the engine starts it again each time.
        p.command = Some(strings(&["sh", "-c", "sleep 1; exit 3"]));
        p.restart_policy = Some(tomo_proto::methods::RestartPolicy {
            name: "always".into(),
            max_retries: None,
        });
        containers::run(ctx.clone(), p).await.expect("runs");
        let audit_dir = dir.join("guard-audit");
        std::fs::create_dir_all(&audit_dir).expect("audit dir");
        let auditor = Arc::new(tomo_agent::audit::Auditor::new(&audit_dir));
        let guard = tomo_agent::docker::guard::BindGuard {
            id: tomo_agent::docker::guard::guard_id(&ctx.shared.data_dir),
            docker: Arc::clone(&e.client),
            policy: Arc::new(policy),
            host_root: "/".into(),
            auditor: Arc::clone(&auditor),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(guard.run(stop.clone()));
        // Nothing to say while the source is what was judged at `run`.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let inspect = |n: String| async move {
            e.docker
                .inspect_container(&n, None::<bollard::query_parameters::InspectContainerOptions>)
                .await
                .expect("inspect")
        };
        let c = inspect(name.clone()).await;
        assert!(
            c.restart_count.unwrap_or(0) >= 1,
            "the engine restarts it by itself: {:?}",
            c.restart_count
        );
        assert_eq!(
            c.host_config.and_then(|h| h.restart_policy).and_then(|r| r.name),
            Some(bollard::models::RestartPolicyNameEnum::ALWAYS),
            "a clean source is left alone"
        );
        // Swapped: the next start by the engine would mount the agent's data directory.
        std::fs::remove_dir(&source).expect("rmdir");
        std::os::unix::fs::symlink(&data, &source).expect("symlink");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let c = inspect(name.clone()).await;
            let policy = c
                .host_config
                .and_then(|h| h.restart_policy)
                .and_then(|r| r.name);
            let running = c.state.and_then(|s| s.running).unwrap_or(false);
            if policy == Some(bollard::models::RestartPolicyNameEnum::NO) && !running {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the engine kept starting {name} with the data directory behind its bind (policy {policy:?}, running {running})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Stays down, and the refusal is in the audit log.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let c = inspect(name.clone()).await;
        assert!(!c.state.and_then(|s| s.running).unwrap_or(false), "started again");
        let log = std::fs::read_to_string(auditor.path()).expect("audit log");
        // Tests share a data directory, so this guard may judge other tests' containers too:
        // the record of this one is what counts.
        let line = log
            .lines()
            .find(|l| l.contains("engine.start") && l.contains(&name))
            .unwrap_or_else(|| panic!("no engine.start record of {name}: {log}"));
        assert!(line.contains(r#""decision":"denied""#), "{line}");
        assert!(line.contains("bind_protected"), "{line}");
        stop.cancel();
        let _ = task.await;
    })
    .await;
}
