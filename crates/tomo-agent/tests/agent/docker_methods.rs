//! `docker.containers.run`, `get` and `update` and `docker.images.pull` against the real engine.
//!
//! They need the local test image `tomo-test/busybox:latest` and, for pulls and updates, the
//! registry on 127.0.0.1:5055 (`scripts/docker-test-env` makes both). Without them each test
//! prints "SKIPPED: …" and passes, unless `TOMO_REQUIRE_DOCKER=1`, when it fails. Containers use
//! network mode `none` and names starting with `tomo-test-`; everything made is removed.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerConfig, ContainerInspectResponse, MountPointTypeEnum};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, ListVolumesOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptions, RemoveImageOptionsBuilder,
    StartContainerOptions, TagImageOptionsBuilder, WaitContainerOptions,
};
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tomo_agent::Shared;
use tomo_agent::dispatch::Ctx;
use tomo_agent::docker::{DockerClient, Endpoint, containers, images};
use tomo_agent::stream::{Outgoing, Streams};
use tomo_proto::methods::{
    ContainerParams, Healthcheck, MountSpec, PullParams, PullPolicy, RestartPolicy, RunParams,
    Streamed, UpdateParams, VolumeBinding,
};
use tomo_proto::rpc::code;

const BASE: &str = "tomo-test/busybox:latest";
const REGISTRY: &str = "127.0.0.1:5055";
/// Stops at once on SIGTERM, unlike a bare `sleep` as PID 1.
const IDLE: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 1; done",
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

/// The engine and test image, and the registry when `registry`; `None` (skipped) without them.
async fn env(registry: bool) -> Option<Env> {
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
    if registry && tokio::net::TcpStream::connect(REGISTRY).await.is_err() {
        return skip(format!(
            "no test registry on {REGISTRY} (run scripts/docker-test-env)"
        ));
    }
    Some(Env { docker, client })
}

fn ctx(client: &Arc<DockerClient>) -> (Ctx, mpsc::Receiver<Outgoing>) {
    let (tx, rx) = mpsc::channel(1024);
    let shared = Shared::for_tests(Arc::clone(client), std::env::temp_dir());
    let ctx = Ctx {
        shared: Arc::new(shared),
        streams: Streams::new(tx, CancellationToken::new()),
        replied: CancellationToken::new(),
    };
    (ctx, rx)
}

/// A name prefix unique to this test and process.
fn prefix(test: &str) -> String {
    format!("tomo-test-dm-{}-{test}", std::process::id())
}

/// Runs `body`, then removes every container and volume whose name contains `prefix` and the
/// images in `images`, even when `body` panicked.
async fn with_cleanup<F>(e: &Env, prefix: &str, images: &[String], body: F)
where
    F: std::future::Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    cleanup(&e.docker, prefix, images).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn cleanup(docker: &Docker, prefix: &str, images: &[String]) {
    let filters = HashMap::from([("name", vec![prefix])]);
    let list = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    // Volumes the containers used: an update re-attaches anonymous volumes by name, and Docker
    // then keeps them on `rm -v`.
    let mut volumes = Vec::new();
    for c in docker.list_containers(Some(list)).await.unwrap_or_default() {
        let id = c.id.unwrap_or_default();
        if let Some(i) = inspect(docker, &id).await {
            volumes.extend(
                i.mounts
                    .into_iter()
                    .flatten()
                    .filter_map(|m| (m.typ == Some(MountPointTypeEnum::VOLUME)).then_some(m.name?)),
            );
        }
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let _ = docker.remove_container(&id, Some(options)).await;
    }
    let named = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let listed = docker.list_volumes(Some(named)).await.ok();
    volumes.extend(
        listed
            .and_then(|l| l.volumes)
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name),
    );
    for v in volumes {
        let _ = docker
            .remove_volume(&v, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await;
    }
    // Tags and digests of this test's registry repositories (pushing records a digest).
    let all = ListImagesOptionsBuilder::default().all(true).build();
    for image in docker.list_images(Some(all)).await.unwrap_or_default() {
        let refs = image.repo_tags.iter().chain(image.repo_digests.iter());
        for r in refs.filter(|r| r.contains(prefix)) {
            let _ = docker
                .remove_image(r, None::<RemoveImageOptions>, None)
                .await;
        }
    }
    for image in images {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        let _ = docker.remove_image(image, Some(options), None).await;
    }
}

async fn inspect(docker: &Docker, container: &str) -> Option<ContainerInspectResponse> {
    docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .ok()
}

/// Names of the containers whose name contains `prefix`.
async fn names(docker: &Docker, prefix: &str) -> Vec<String> {
    let filters = HashMap::from([("name", vec![prefix])]);
    let list = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut names: Vec<String> = docker
        .list_containers(Some(list))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|c| c.names?.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_owned())
        .collect();
    names.sort();
    names
}

/// Tags `source` as `repo:latest` and pushes it to the test registry.
async fn push(docker: &Docker, source: &str, repo: &str) {
    let tag = TagImageOptionsBuilder::default()
        .repo(repo)
        .tag("latest")
        .build();
    docker.tag_image(source, Some(tag)).await.expect("tag");
    let options = PushImageOptionsBuilder::default().tag("latest").build();
    let mut pushing = docker.push_image(repo, Some(options), None);
    while let Some(item) = pushing.next().await {
        let info = item.expect("push");
        assert!(info.error.is_none(), "push {repo}: {:?}", info.error);
    }
}

/// An image made from the base by running `script` in it; returns its id.
async fn derived_image(docker: &Docker, name: &str, script: &str) -> String {
    let body = bollard::models::ContainerCreateBody {
        image: Some(BASE.into()),
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
        .name(name)
        .build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .expect("create builder");
    docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
        .expect("start builder");
    let mut waiting = docker.wait_container(&created.id, None::<WaitContainerOptions>);
    while let Some(w) = waiting.next().await {
        w.expect("builder exits cleanly");
    }
    let commit = CommitContainerOptionsBuilder::default()
        .container(&created.id)
        .build();
    let config = ContainerConfig {
        cmd: Some(vec!["sh".into()]),
        ..Default::default()
    };
    let id = docker
        .commit_container(commit, config)
        .await
        .expect("commit")
        .id;
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    docker
        .remove_container(&created.id, Some(remove))
        .await
        .expect("remove builder");
    id
}

fn idle() -> Option<Vec<String>> {
    Some(IDLE.iter().map(|s| s.to_string()).collect())
}

fn healthcheck(test: &[&str]) -> Healthcheck {
    Healthcheck {
        test: test.iter().map(|s| s.to_string()).collect(),
        interval: Some(1),
        timeout: Some(1),
        retries: Some(1),
        start_period: None,
    }
}

#[tokio::test]
async fn run_maps_every_parameter_and_get_redacts() {
    let Some(e) = env(false).await else { return };
    let prefix = prefix("run");
    with_cleanup(&e, &prefix, &[], async {
        let (ctx, _rx) = ctx(&e.client);
        let name = format!("{prefix}-web");
        let volume = format!("{prefix}-data");
        let p = RunParams {
            image: BASE.into(),
            name: Some(name.clone()),
            command: idle(),
            env: BTreeMap::from([
                ("MODE".into(), "test".into()),
                ("DB_PASSWORD".into(), "hunter2".into()),
                (
                    "DATABASE_URL".into(),
                    "postgres://app:hunter2@db/app".into(),
                ),
            ]),
            volumes: vec![VolumeBinding {
                source: volume.clone(),
                target: "/data".into(),
                read_only: false,
            }],
            mounts: vec![
                MountSpec {
                    kind: "tmpfs".into(),
                    source: None,
                    target: "/scratch".into(),
                    read_only: false,
                    tmpfs_size: Some(1024 * 1024),
                    volume_driver_opts: BTreeMap::new(),
                },
                MountSpec {
                    kind: "volume".into(),
                    source: None,
                    target: "/anon".into(),
                    read_only: false,
                    tmpfs_size: None,
                    volume_driver_opts: BTreeMap::new(),
                },
            ],
            restart_policy: Some(RestartPolicy {
                name: "on-failure".into(),
                max_retries: Some(2),
            }),
            labels: BTreeMap::from([("tomo.test".into(), "run".into())]),
            memory: Some(64 * 1024 * 1024),
            cpus: Some(0.5),
            healthcheck: Some(healthcheck(&["CMD", "true"])),
            network_mode: Some("none".into()),
            workdir: Some("/tmp".into()),
            hostname: Some("tomo-web".into()),
            read_only_rootfs: true,
            cap_drop: vec!["NET_RAW".into()],
            security_opt: vec!["no-new-privileges".into()],
            ..Default::default()
        };
        let result = containers::run(ctx.clone(), p).await.expect("run");
        assert_eq!(result.name, name);
        assert_eq!(result.state, "running");
        assert!(!result.pulled, "the image is local");

        let i = inspect(&e.docker, &result.id).await.expect("inspect");
        let config = i.config.clone().unwrap_or_default();
        let host = i.host_config.clone().unwrap_or_default();
        let env = config.env.clone().unwrap_or_default();
        assert!(env.contains(&"MODE=test".to_owned()), "{env:?}");
        assert!(env.contains(&"DB_PASSWORD=hunter2".to_owned()), "{env:?}");
        assert_eq!(
            config
                .labels
                .as_ref()
                .and_then(|l| l.get("tomo.test"))
                .map(String::as_str),
            Some("run")
        );
        assert_eq!(config.cmd, idle());
        assert_eq!(config.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(config.hostname.as_deref(), Some("tomo-web"));
        let hc = config.healthcheck.clone().expect("healthcheck");
        assert_eq!(hc.interval, Some(1_000_000_000));
        assert_eq!(hc.retries, Some(1));
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.binds, Some(vec![format!("{volume}:/data")]));
        assert_eq!(host.cap_drop, Some(vec!["NET_RAW".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        let restart = host.restart_policy.clone().expect("restart policy");
        assert_eq!(restart.maximum_retry_count, Some(2));
        let mounts = i.mounts.clone().unwrap_or_default();
        let at = |target: &str| {
            mounts
                .iter()
                .find(|m| m.destination.as_deref() == Some(target))
                .unwrap_or_else(|| panic!("no mount at {target}: {mounts:?}"))
                .clone()
        };
        assert_eq!(at("/data").name.as_deref(), Some(volume.as_str()));
        assert_eq!(at("/anon").typ, Some(MountPointTypeEnum::VOLUME));
        assert_eq!(at("/scratch").typ, Some(MountPointTypeEnum::TMPFS));

        let details = containers::get(
            ctx.clone(),
            ContainerParams {
                container: name.clone().parse().expect("a container ref"),
            },
        )
        .await
        .expect("get");
        assert_eq!(details.id, result.id);
        assert_eq!(details.name, name);
        assert_eq!(details.env["DB_PASSWORD"], "***");
        assert_eq!(details.env["DATABASE_URL"], "postgres://app:***@db/app");
        assert_eq!(details.env["MODE"], "test");
        assert_eq!(details.memory, Some(64 * 1024 * 1024));
        assert_eq!(details.cpus, Some(0.5));
        assert_eq!(details.network_mode.as_deref(), Some("none"));
        assert!(details.state.running);
        assert!(
            details
                .mounts
                .iter()
                .any(|m| m.target == "/anon" && m.kind == "volume")
        );

        let missing = containers::get(
            ctx,
            ContainerParams {
                container: format!("{prefix}-nope").parse().expect("a container ref"),
            },
        )
        .await
        .expect_err("no such container");
        assert_eq!(missing.code, code::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn a_container_that_does_not_start_is_removed() {
    let Some(e) = env(false).await else { return };
    let prefix = prefix("nostart");
    with_cleanup(&e, &prefix, &[], async {
        let (ctx, _rx) = ctx(&e.client);
        let p = RunParams {
            image: BASE.into(),
            name: Some(format!("{prefix}-x")),
            command: Some(vec!["/nonexistent-binary".into()]),
            network_mode: Some("none".into()),
            ..Default::default()
        };
        let err = containers::run(ctx.clone(), p)
            .await
            .expect_err("cannot start");
        assert_eq!(err.code, code::DOCKER, "{}", err.message);
        assert!(err.message.contains("removed"), "{}", err.message);
        assert!(names(&e.docker, &prefix).await.is_empty());

        let never = RunParams {
            image: format!("{REGISTRY}/tomo-test/{prefix}-absent:latest"),
            pull: PullPolicy::Never,
            network_mode: Some("none".into()),
            ..Default::default()
        };
        let err = containers::run(ctx, never).await.expect_err("pull never");
        assert_eq!(err.code, code::NOT_FOUND, "{}", err.message);
    })
    .await;
}

#[tokio::test]
async fn run_pulls_a_missing_image_and_pull_streams_progress() {
    let Some(e) = env(true).await else { return };
    let prefix = prefix("pull");
    let repo = format!("{REGISTRY}/tomo-test/{prefix}");
    let reference = format!("{repo}:latest");
    with_cleanup(&e, &prefix, std::slice::from_ref(&reference), async {
        let (ctx, mut rx) = ctx(&e.client);
        push(&e.docker, BASE, &repo).await;
        let untag = || async {
            let options = RemoveImageOptionsBuilder::default().build();
            e.docker
                .remove_image(&reference, Some(options), None)
                .await
                .expect("untag");
        };
        untag().await;

        let p = RunParams {
            image: repo.parse().expect("an image ref"),
            name: Some(format!("{prefix}-c")),
            command: idle(),
            network_mode: Some("none".into()),
            ..Default::default()
        };
        let result = containers::run(ctx.clone(), p).await.expect("run");
        assert!(result.pulled, "the image was not local");
        assert_eq!(result.state, "running");

        // Without progress: one answer.
        let done = images::pull_handler(
            ctx.clone(),
            PullParams {
                image: repo.parse().expect("an image ref"),
                auth: None,
                progress: false,
            },
        )
        .await
        .expect("pull");
        let Streamed::Done(pulled) = done else {
            panic!("no stream asked for")
        };
        assert_eq!(pulled.image, reference);
        assert!(pulled.id.starts_with("sha256:"));

        // With progress: a stream of progress messages, then the result in stream.end.
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        e.docker
            .remove_container(&result.id, Some(remove))
            .await
            .expect("remove");
        untag().await;
        let opened = images::pull_handler(
            ctx.clone(),
            PullParams {
                image: repo.parse().expect("an image ref"),
                auth: None,
                progress: true,
            },
        )
        .await
        .expect("pull stream");
        let Streamed::Stream(opened) = opened else {
            panic!("a stream was asked for")
        };
        ctx.replied.cancel();
        let mut data = 0;
        let end = loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("stream frames in time")
                .expect("frame");
            let v: Value = serde_json::from_str(&frame.text).expect("json");
            assert_eq!(v["params"]["stream"], opened.stream.as_str());
            if v["method"] == "stream.data" {
                assert!(v["params"]["data"]["status"].is_string(), "{v}");
                ctx.streams.ack(&opened.stream, data);
                data += 1;
            } else {
                break v;
            }
        };
        assert_eq!(end["method"], "stream.end", "{end}");
        assert_eq!(end["params"]["reason"], "eof", "{end}");
        assert_eq!(end["params"]["result"]["image"], reference.as_str());
        assert_eq!(end["params"]["result"]["id"], pulled.id.as_str());
        assert!(data > 0, "some progress was sent");

        let missing = images::pull(
            &e.client,
            &format!("{REGISTRY}/tomo-test/{prefix}-absent")
                .parse()
                .expect("an image ref"),
            None,
            None,
        )
        .await
        .expect_err("absent");
        assert_eq!(missing.code, code::NOT_FOUND, "{}", missing.message);
    })
    .await;
}

/// A container running `repo:latest` with labels, env, a named and an anonymous volume.
fn updatable(name: &str, image: &str, volume: &str, check: &[&str]) -> RunParams {
    RunParams {
        image: image.into(),
        name: Some(name.into()),
        command: idle(),
        env: BTreeMap::from([("MODE".into(), "update".into())]),
        labels: BTreeMap::from([("tomo.test".into(), "update".into())]),
        volumes: vec![VolumeBinding {
            source: volume.into(),
            target: "/data".into(),
            read_only: false,
        }],
        mounts: vec![MountSpec {
            kind: "volume".into(),
            source: None,
            target: "/anon".into(),
            read_only: false,
            tmpfs_size: None,
            volume_driver_opts: BTreeMap::new(),
        }],
        healthcheck: Some(healthcheck(check)),
        network_mode: Some("none".into()),
        ..Default::default()
    }
}

fn volume_at(i: &ContainerInspectResponse, target: &str) -> Option<String> {
    i.mounts
        .iter()
        .flatten()
        .find(|m| m.destination.as_deref() == Some(target))
        .and_then(|m| m.name.clone())
}

#[tokio::test]
async fn update_recreates_with_the_new_image_and_the_same_configuration() {
    let Some(e) = env(true).await else { return };
    let prefix = prefix("update");
    let repo = format!("{REGISTRY}/tomo-test/{prefix}");
    let reference = format!("{repo}:latest");
    let v2 = derived_image(&e.docker, &format!("{prefix}-build"), "echo v2 > /marker").await;
    with_cleanup(&e, &prefix, &[reference.clone(), v2.clone()], async {
        let (ctx, _rx) = ctx(&e.client);
        push(&e.docker, BASE, &repo).await;
        let name = format!("{prefix}-app");
        let volume = format!("{prefix}-data");
        let run = updatable(&name, &reference, &volume, &["CMD", "true"]);
        let old = containers::run(ctx.clone(), run).await.expect("run");
        let before = inspect(&e.docker, &old.id).await.expect("inspect old");
        let anon = volume_at(&before, "/anon").expect("anonymous volume");

        push(&e.docker, &v2, &repo).await;
        let updated = containers::update(
            ctx.clone(),
            UpdateParams {
                container: name.clone().parse().expect("a container ref"),
                health_timeout: Some(60),
                force: false,
            },
        )
        .await
        .expect("update");
        assert_eq!(updated.name, name);
        assert_eq!(updated.old_id, old.id);
        assert_ne!(updated.new_id, old.id);
        assert!(updated.image_changed && updated.recreated);
        assert_eq!(updated.new_image_id, v2);
        assert_eq!(
            updated.old_image_id,
            before.image.clone().unwrap_or_default()
        );
        assert_eq!(updated.state, "running");

        let after = inspect(&e.docker, &name).await.expect("inspect new");
        assert_eq!(after.id.as_deref(), Some(updated.new_id.as_str()));
        assert_eq!(after.image.as_deref(), Some(v2.as_str()));
        let config = after.config.clone().unwrap_or_default();
        assert_eq!(config.image.as_deref(), Some(reference.as_str()));
        assert!(
            config
                .env
                .unwrap_or_default()
                .contains(&"MODE=update".to_owned())
        );
        assert_eq!(
            config
                .labels
                .as_ref()
                .and_then(|l| l.get("tomo.test"))
                .map(String::as_str),
            Some("update")
        );
        assert_eq!(config.cmd, idle());
        assert_eq!(volume_at(&after, "/data"), Some(volume.clone()));
        assert_eq!(
            volume_at(&after, "/anon"),
            Some(anon),
            "anonymous volume kept"
        );
        assert_eq!(
            after.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("none")
        );
        assert!(
            inspect(&e.docker, &old.id).await.is_none(),
            "old container gone"
        );
        assert_eq!(names(&e.docker, &prefix).await, vec![name.clone()]);

        // Issue 17: the same image again, without `force`: nothing is recreated, and the
        // answer says so (the container and its id stay).
        let unchanged = containers::update(
            ctx.clone(),
            UpdateParams {
                container: name.clone().parse().expect("a container ref"),
                health_timeout: None,
                force: false,
            },
        )
        .await
        .expect("an update of an unchanged image");
        assert!(
            !unchanged.image_changed && !unchanged.recreated,
            "{unchanged:?}"
        );
        assert_eq!(unchanged.new_id, updated.new_id);
        assert_eq!(unchanged.old_id, updated.new_id);
        assert_eq!(unchanged.state, "running");
        assert_eq!(
            inspect(&e.docker, &name).await.and_then(|c| c.id),
            Some(updated.new_id.clone()),
            "the same container"
        );

        // With `force`, twice at once: each is recreated in turn (the per-container lock keeps
        // them apart), neither is a change of image.
        let again = || {
            containers::update(
                ctx.clone(),
                UpdateParams {
                    container: name.clone().parse().expect("a container ref"),
                    health_timeout: None,
                    force: true,
                },
            )
        };
        let (first, second) = tokio::join!(again(), again());
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert!(!first.image_changed && !second.image_changed);
        assert!(first.recreated && second.recreated);
        let ids = [&updated.new_id, &first.new_id, &second.new_id];
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
        assert!(
            second.old_id == first.new_id || first.old_id == second.new_id,
            "one replaced the other: {first:?} {second:?}"
        );
        assert_eq!(names(&e.docker, &prefix).await, vec![name]);
    })
    .await;
}

#[tokio::test]
async fn a_failed_update_rolls_back_to_the_old_container() {
    let Some(e) = env(true).await else { return };
    let prefix = prefix("rollback");
    let repo = format!("{REGISTRY}/tomo-test/{prefix}");
    let reference = format!("{repo}:latest");
    let v1 = derived_image(&e.docker, &format!("{prefix}-build"), "touch /marker-ok").await;
    with_cleanup(&e, &prefix, &[reference.clone(), v1.clone()], async {
        let (ctx, _rx) = ctx(&e.client);
        push(&e.docker, &v1, &repo).await;
        let name = format!("{prefix}-app");
        let volume = format!("{prefix}-data");
        let run = updatable(
            &name,
            &reference,
            &volume,
            &["CMD", "test", "-f", "/marker-ok"],
        );
        let old = containers::run(ctx.clone(), run).await.expect("run");

        // The new version lacks the file its healthcheck looks for.
        push(&e.docker, BASE, &repo).await;
        let err = containers::update(
            ctx.clone(),
            UpdateParams {
                container: name.clone().parse().expect("a container ref"),
                health_timeout: Some(30),
                force: false,
            },
        )
        .await
        .expect_err("the new container is unhealthy");
        assert_eq!(err.code, code::DOCKER, "{}", err.message);
        assert!(
            err.message
                .contains("rolled back to the previous container"),
            "{}",
            err.message
        );
        let data = err.data.clone().expect("data");
        assert_eq!(data["rolled_back"], true, "{data}");
        assert!(
            data["reason"]
                .as_str()
                .is_some_and(|r| r.contains("unhealthy")),
            "{data}"
        );

        let back = inspect(&e.docker, &name).await.expect("old container");
        assert_eq!(
            back.id.as_deref(),
            Some(old.id.as_str()),
            "the old one is back"
        );
        assert_eq!(back.image.as_deref(), Some(v1.as_str()));
        assert_eq!(back.state.and_then(|s| s.running), Some(true));
        assert_eq!(names(&e.docker, &prefix).await, vec![name.clone()]);

        let bad = containers::update(
            ctx,
            UpdateParams {
                container: name.parse().expect("a container ref"),
                health_timeout: Some(601),
                force: false,
            },
        )
        .await
        .expect_err("timeout too long");
        assert_eq!(bad.code, code::INVALID_PARAMS);
        assert_eq!(bad.data, Some(json!({"param": "health_timeout"})));
    })
    .await;
}

/// Issue 12.2: a reference with `/`, `?`, `#` or `%` reached another Docker endpoint
/// (`../../info#` answered Docker's `/info` as a container, `<c>/export?` streamed the
/// container's export into the agent, `<c>#` cut the path). Every container, image, network and
/// volume reference is parsed before any Docker call: -32602 naming the parameter, and the
/// container it aimed at is untouched.
#[tokio::test]
async fn references_that_would_reach_another_endpoint_are_refused() {
    let Some(e) = env(false).await else { return };
    let prefix = prefix("refs");
    with_cleanup(&e, &prefix, &[], async {
        let (ctx, _rx) = ctx(&e.client);
        let c = format!("{prefix}-c");
        let p = RunParams {
            image: BASE.into(),
            name: Some(c.clone()),
            command: idle(),
            network_mode: Some("none".into()),
            ..Default::default()
        };
        containers::run(ctx.clone(), p).await.expect("run");
        let table = tomo_agent::handlers::table();
        let rows: Vec<(&str, Value, &str)> = vec![
            (
                "docker.containers.get",
                json!({"container": "../../info#"}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": format!("{c}/export?")}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": format!("../containers/{c}/export#")}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": format!("{c}?size=1")}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": "%2e%2e%2finfo"}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": ""}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": "-x"}),
                "container",
            ),
            (
                "docker.containers.get",
                json!({"container": "a".repeat(300)}),
                "container",
            ),
            (
                "docker.containers.start",
                json!({"container": format!("{c}#")}),
                "container",
            ),
            (
                "docker.containers.stop",
                json!({"container": format!("{c}?t=0")}),
                "container",
            ),
            (
                "docker.containers.restart",
                json!({"container": format!("{c}%3F")}),
                "container",
            ),
            (
                "docker.containers.remove",
                json!({"container": format!("{c}?force=1#"), "force": true}),
                "container",
            ),
            (
                "docker.containers.logs",
                json!({"container": format!("{c}#")}),
                "container",
            ),
            (
                "docker.containers.stats",
                json!({"container": format!("{c}?")}),
                "container",
            ),
            (
                "docker.containers.exec",
                json!({"container": format!("{c}#"), "cmd": ["true"]}),
                "container",
            ),
            (
                "docker.containers.update",
                json!({"container": "../../info#"}),
                "container",
            ),
            (
                "docker.images.remove",
                json!({"image": format!("{BASE}?force=1")}),
                "image",
            ),
            (
                "docker.images.remove",
                json!({"image": "../../info#"}),
                "image",
            ),
            ("docker.images.pull", json!({"image": "busybox#x"}), "image"),
            (
                "docker.networks.remove",
                json!({"name": "../../info#"}),
                "name",
            ),
            ("docker.networks.create", json!({"name": "n?x"}), "name"),
            (
                "docker.volumes.remove",
                json!({"name": "v?force=true"}),
                "name",
            ),
            ("docker.volumes.create", json!({"name": "v#"}), "name"),
            (
                "docker.containers.run",
                json!({"image": "busybox%23"}),
                "image",
            ),
            (
                "docker.containers.run",
                json!({"image": BASE, "name": "../x"}),
                "name",
            ),
            (
                "docker.containers.run",
                json!({"image": BASE, "volumes_from": ["../../info#"]}),
                "volumes_from[0]",
            ),
            (
                "docker.containers.run",
                json!({"image": BASE, "network_mode": "container:../../info#"}),
                "network_mode",
            ),
            (
                "docker.containers.run",
                json!({"image": BASE, "network_mode": "n?x"}),
                "network_mode",
            ),
        ];
        for (method, params, param) in rows {
            let got = table
                .call(ctx.clone(), method, Some(&params.to_string()))
                .await;
            let err = got.expect_err(&format!("{method} {params} must be refused"));
            assert_eq!(err.code, code::INVALID_PARAMS, "{method} {params}: {err:?}");
            let named = err.data.as_ref().and_then(|d| d["param"].as_str());
            assert_eq!(named, Some(param), "{method} {params}: {err:?}");
        }
        // Nothing reached the container: it still runs, under its name.
        let i = inspect(&e.docker, &c).await.expect("still there");
        assert_eq!(i.state.and_then(|s| s.running), Some(true));
    })
    .await;
}
