//! A real dockerd restart (issue 13.4), on a private engine so that the engine every other test
//! uses stays up: its own socket, data root, exec root (and so its own containerd), pid file; no
//! bridge, no iptables rules. The agent of the case talks to it through `DOCKER_HOST`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters as q;
use reqwest::Method;

use super::{Case, Fleet, eventually, ms};

/// A dockerd of our own, in its own process group.
struct PrivateEngine {
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl PrivateEngine {
    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Starts dockerd on `dir` (again, after a stop: same data) and waits until it answers.
    async fn start(&mut self) -> anyhow::Result<Docker> {
        let log = std::fs::File::create(self.dir.join(format!("dockerd-{}.log", self.starts)))?;
        self.starts += 1;
        let d = |p: &str| self.dir.join(p).display().to_string();
        let child = Command::new("dockerd")
            .args(["--host", &format!("unix://{}", d("docker.sock"))])
            .args(["--data-root", &d("data"), "--exec-root", &d("exec")])
            .args(["--pidfile", &d("docker.pid")])
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start dockerd")?;
        self.child = Some(child);
        let socket = self.socket().display().to_string();
        let t0 = Instant::now();
        loop {
            // bollard wants the socket to exist before it connects.
            if let Ok(docker) = Docker::connect_with_unix(&socket, 30, bollard::API_DEFAULT_VERSION)
                && docker.ping().await.is_ok()
            {
                return Ok(docker);
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "the private dockerd did not answer within 60 s (log in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, as `systemctl restart docker` does, and waits for dockerd to exit (it stops its
    /// containers first). Answers how long the shutdown took.
    async fn stop(&mut self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    let _ = child.wait();
                    anyhow::bail!("the private dockerd did not stop within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(t0.elapsed())
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // dockerd stops its containerd and containers on SIGTERM; wait for that.
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies `image` from the shared engine into the private one (`docker save | docker load`: no
/// registry).
fn copy_image(image: &str, socket: &Path) -> anyhow::Result<()> {
    let out = Command::new("sh")
        .args([
            "-c",
            "docker save \"$1\" | docker -H \"unix://$2\" load -q",
            "sh",
            image,
            &socket.display().to_string(),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "cannot copy {image} into the private engine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// dockerd is stopped (SIGTERM) and started again under a running agent, with a container whose
/// restart policy is `always`: the host's health turns `degraded` with the engine's error, a
/// call meanwhile is told the engine is unavailable, health is `healthy` again once the engine
/// answers, and the engine's start-up events (the container started again) reach the control
/// plane, each once.
pub(super) async fn engine_restarted(dir: &Path, image: &str) -> anyhow::Result<Option<Case>> {
    if !rustix::process::geteuid().is_root()
        || Command::new("dockerd").arg("--version").output().is_err()
    {
        println!("skip  a dockerd restart: needs root and dockerd to run a private engine");
        return Ok(None);
    }
    let base = dir.join("dockerd-restart");
    // A short path: the engine's unix sockets live under it (108 bytes at most).
    let engine_dir = tempfile::Builder::new()
        .prefix("tomo-chaos-dockerd-")
        .tempdir_in("/tmp")?;
    let mut engine = PrivateEngine {
        dir: engine_dir.path().to_owned(),
        child: None,
        starts: 0,
    };
    let docker = engine.start().await?;
    copy_image(image, &engine.socket())?;
    let name = format!("tomo-chaos-{}-restarted", std::process::id());
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        // Ends at once on SIGTERM, so that the engine's shutdown is quick.
        cmd: Some(
            [
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 1; done",
            ]
            .map(String::from)
            .to_vec(),
        ),
        labels: Some([(crate::fixtures::LABEL.to_owned(), "chaos".to_owned())].into()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(
            Some(q::CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await?
        .id;
    docker
        .start_container(&name, None::<q::StartContainerOptions>)
        .await?;
    let docker_host = format!("unix://{}", engine.socket().display());
    let f = Fleet::start_with_env(&base, None, &[("DOCKER_HOST", &docker_host)]).await?;
    let result = async {
        let health = |want: &'static str| {
            let f = &f;
            async move {
                let t0 = Instant::now();
                loop {
                    let h = f
                        .api
                        .send(Method::GET, &format!("/hosts/{}", f.host), None)
                        .await?;
                    if h["health"]["status"]["status"] == want {
                        return anyhow::Ok((t0.elapsed(), h));
                    }
                    ensure!(
                        t0.elapsed() < Duration::from_secs(30),
                        "the host's health was not {want} within 30 s: {h}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        health("healthy").await?;
        let sigterm_nanos = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos(),
        )?;
        let stop = {
            let shutdown = engine.stop();
            let degraded = health("degraded");
            let (shutdown, degraded) = tokio::join!(shutdown, degraded);
            (shutdown?, degraded?)
        };
        // From the SIGTERM; the engine answers its own pings for part of its shutdown.
        let (shutdown, (detection, h)) = stop;
        let engine_error = h["health"]["status"]["docker"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (s, v) = f
            .api
            .raw(
                Method::GET,
                &format!("/hosts/{}/containers", f.host),
                None,
                &[],
            )
            .await?;
        ensure!(!s.is_success(), "a list with the engine stopped answered {s}: {v}");
        let saw = format!(
            "health `degraded` ({engine_error}); a container list meanwhile: HTTP {s} {}",
            v["error"]["message"].as_str().unwrap_or_default()
        );
        // From the engine answering again.
        let docker = engine.start().await?;
        let (recovery, _) = health("healthy").await?;
        // The container's events from the SIGTERM on (its shutdown, then the engine's start-up
        // event of the container started again), in the engine's order.
        let actions = || async {
            let events = f
                .api
                .send(
                    Method::GET,
                    &format!("/hosts/{}/events?limit=1000", f.host),
                    None,
                )
                .await?;
            Ok::<_, anyhow::Error>(
                events
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| {
                        e["id"] == id.as_str()
                            && e["time_nanos"].as_i64().is_some_and(|t| t >= sigterm_nanos)
                    })
                    .filter_map(|e| e["action"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>(),
            )
        };
        let starts = || async {
            Ok::<_, anyhow::Error>(actions().await?.iter().filter(|a| *a == "start").count())
        };
        eventually(
            "the start-up event of the restarted container",
            Duration::from_secs(15),
            || async { Ok(starts().await? >= 1) },
        )
        .await?;
        let running = docker
            .inspect_container(&name, None::<q::InspectContainerOptions>)
            .await?
            .state
            .and_then(|s| s.running)
            .unwrap_or(false);
        ensure!(running, "the engine did not start {name} again");
        // Settled: a second look finds it still once (no replayed copy).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let n = starts().await?;
        ensure!(n == 1, "the start-up event was stored {n} times");
        let delivered = actions().await?.join(", ");
        let rm = q::RemoveContainerOptionsBuilder::new().force(true).build();
        docker.remove_container(&name, Some(rm)).await?;
        anyhow::Ok(Case {
            fault: "dockerd restarted (SIGTERM, then started again) under a running agent",
            operator_saw: saw,
            detection_ms: ms(detection),
            recovery_ms: ms(recovery),
            lost: format!(
                "nothing the engine kept: the container's events from the SIGTERM on stored once each ({delivered}); the engine's shutdown took {} ms",
                shutdown.as_millis()
            ),
        })
    }
    .await;
    f.stop().await;
    drop(engine);
    result.map(Some)
}
