//! `tomo-bench chaos` (`scripts/chaos`): faults injected into a real fleet, issue 13. The release
//! binaries run in their own processes (`tomo server`, `tomo-agent`), against the real Docker
//! engine and a real SQLite file, on loopback. Each case kills or freezes something for real
//! (SIGKILL, a TCP proxy that stops forwarding), then asserts what the operator saw and how
//! fast, that nothing acknowledged was lost or done twice, and that the fleet recovered without
//! a human. The figures go to `target/bench/chaos.json` and into docs/reliability.md.
//!
//! Unlike the benchmarks, a case that does not hold fails the run (exit status 1).
//!
//! The quick versions of these faults run in `./scripts/test` (in-process); these are the slow
//! and the real ones: a kill -9 of either binary and a 90 s dead-peer detection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters as q;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::procs::{AgentProc, Api, ServerProc};

mod dockerd;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Where to write the JSON report [default: target/bench/chaos.json].
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the black hole (it waits for the 90 s dead-peer detection).
    #[arg(long)]
    pub no_black_hole: bool,
}

/// One case's outcome, as docs/reliability.md reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub fault: &'static str,
    /// What the operator's call (or the fleet's view) said, and when after the fault.
    pub operator_saw: String,
    pub detection_ms: u64,
    /// From the restart (or the end of the fault) to the host online again.
    pub recovery_ms: u64,
    pub lost: String,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A fleet of one: a control plane and one agent on the local engine, in their own processes.
struct Fleet {
    dir: PathBuf,
    server: Option<ServerProc>,
    agent: Option<AgentProc>,
    agent_args: Vec<String>,
    api: Api,
    host: String,
    starts: u32,
}

impl Fleet {
    /// Starts both; the agent dials `agent_url` (the control plane's own by default).
    async fn start(
        dir: &Path,
        agent_url: Option<&dyn Fn(SocketAddr) -> String>,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(dir, agent_url, &[]).await
    }

    /// [`Fleet::start`] with extra environment variables for the agent (its engine, for one).
    async fn start_with_env(
        dir: &Path,
        agent_url: Option<&dyn Fn(SocketAddr) -> String>,
        agent_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let server = ServerProc::start(
            &dir.join("server"),
            "127.0.0.1:0".parse()?,
            &dir.join("server-0.log"),
            "info",
        )
        .await?;
        let token = server.first_token.clone().context("no admin token")?;
        let api = Api::new(&server.api_url, &server.ca_file, &token, 4)?;
        let code = api.create_code().await?;
        let url = agent_url.map_or_else(|| server.agent_url.clone(), |f| f(server.listen));
        let agent_args = crate::procs::agent_args(&server, url, dir, "tomo-chaos")?;
        let mut first = agent_args.clone();
        first.extend(["--register-code".to_owned(), code]);
        let mut agent =
            AgentProc::start_with_env(&first, &dir.join("agent.log"), agent_env).await?;
        agent.wait_connected(Duration::from_secs(30)).await?;
        let hosts = api.send(Method::GET, "/hosts", None).await?;
        let host = hosts[0]["id"].as_str().context("no host")?.to_owned();
        Ok(Self {
            dir: dir.to_owned(),
            server: Some(server),
            agent: Some(agent),
            agent_args,
            api,
            host,
            starts: 1,
        })
    }

    /// SIGKILL of the control plane.
    async fn kill_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill().await;
        }
    }

    /// Starts the control plane again on its directory and port.
    async fn restart_server(&mut self, listen: SocketAddr) -> anyhow::Result<()> {
        let log = self.dir.join(format!("server-{}.log", self.starts));
        self.starts += 1;
        self.server =
            Some(ServerProc::start(&self.dir.join("server"), listen, &log, "info").await?);
        Ok(())
    }

    /// 700 ms into `call` (a request the engine holds), kills the control plane, restarts it
    /// on its port and waits for the host: what the caller saw, how soon after the kill, and
    /// how soon the host was back after the restart.
    async fn kill_server_during(
        &mut self,
        call: tokio::task::JoinHandle<Answered>,
    ) -> anyhow::Result<(String, Duration, Duration)> {
        let listen = self.server.as_ref().context("server")?.listen;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let killed = Instant::now();
        self.kill_server().await;
        let (answered, r) = call.await?;
        let saw = match r {
            Ok((s, v)) => format!("HTTP {s}: {v}"),
            Err(e) => format!("the connection failed ({e})"),
        };
        let detection = answered.saturating_duration_since(killed);
        self.restart_server(listen).await?;
        let back = Instant::now();
        self.wait_status("online", Duration::from_secs(60)).await?;
        Ok((saw, detection, back.elapsed()))
    }

    async fn kill_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            a.kill().await;
        }
    }

    async fn restart_agent(&mut self) -> anyhow::Result<()> {
        let mut a = AgentProc::start(&self.agent_args, &self.dir.join("agent.log")).await?;
        a.wait_connected(Duration::from_secs(30)).await?;
        self.agent = Some(a);
        Ok(())
    }

    /// Waits until the control plane shows the host with `status`; returns how long it took.
    async fn wait_status(&self, status: &str, within: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            if let Ok((StatusCode::OK, h)) = self
                .api
                .raw(Method::GET, &format!("/hosts/{}", self.host), None, &[])
                .await
                && h["status"] == status
            {
                return Ok(t0.elapsed());
            }
            ensure!(
                t0.elapsed() < within,
                "the host was not {status} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The agent's audit records of `method` stored on the control plane.
    async fn audit_of(&self, method: &str) -> anyhow::Result<Vec<Value>> {
        let rows = self
            .api
            .send(
                Method::GET,
                &format!("/audit?host={}&limit=1000", self.host),
                None,
            )
            .await?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["method"] == method)
            .cloned()
            .collect())
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await;
        }
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// An answer to a request sent in the background, with when it came.
type Answered = (Instant, Result<(StatusCode, Value), reqwest::Error>);

/// POSTs `body` to `path` in the background (with an idempotency key when given), so that a
/// fault can strike while the request waits.
fn in_background(
    api: &Api,
    path: String,
    body: Option<Value>,
    key: Option<String>,
) -> tokio::task::JoinHandle<Answered> {
    let api = api.clone();
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = key
            .as_deref()
            .map(|k| vec![("idempotency-key", k)])
            .unwrap_or_default();
        let r = api.raw(Method::POST, &path, body.as_ref(), &headers).await;
        (Instant::now(), r)
    })
}

/// Creates and starts container `name` from `image` running `cmd`: isolated (network `none`),
/// labelled as the benchmarks' containers are.
async fn started(docker: &Docker, name: &str, image: &str, cmd: &[&str]) -> anyhow::Result<()> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
        labels: Some([(crate::fixtures::LABEL.to_owned(), "chaos".to_owned())].into()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(q::CreateContainerOptionsBuilder::new().name(name).build()),
            body,
        )
        .await
        .context("create")?;
    docker
        .start_container(name, None::<q::StartContainerOptions>)
        .await
        .context("start")?;
    Ok(())
}

/// A container that ignores SIGTERM, so that a stop with `timeout: 3` takes 3 s.
async fn stubborn(docker: &Docker, name: &str, image: &str) -> anyhow::Result<()> {
    let cmd = ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"];
    started(docker, name, image, &cmd).await
}

/// How many times the engine reported `action` for container `name` since `since` (Unix s).
async fn engine_events(
    docker: &Docker,
    name: &str,
    action: &str,
    since: i64,
) -> anyhow::Result<usize> {
    use futures_util::StreamExt as _;
    let until = tomo_common::now_secs() as i64 + 1;
    let filters = [("container", vec![name]), ("event", vec![action])]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    let opts = q::EventsOptionsBuilder::new()
        .since(&since.to_string())
        .until(&until.to_string())
        .filters(&filters)
        .build();
    let events: Vec<_> = docker.events(Some(opts)).collect().await;
    Ok(events.into_iter().filter(|e| e.is_ok()).count())
}

async fn remove(docker: &Docker, name: &str) {
    let rm = q::RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(name, Some(rm)).await;
}

/// Waits until container `name` is not running, at most `within`.
async fn wait_exited(docker: &Docker, name: &str, within: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let c = docker
            .inspect_container(name, None::<q::InspectContainerOptions>)
            .await?;
        if !c.state.and_then(|s| s.running).unwrap_or(true) {
            return Ok(());
        }
        ensure!(t0.elapsed() < within, "{name} still runs after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` says yes, at most `within`.
async fn eventually<F: Future<Output = anyhow::Result<bool>>>(
    what: &str,
    within: Duration,
    check: impl Fn() -> F,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        ensure!(t0.elapsed() < within, "never within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `stop` in flight when the control plane is killed: the operator is told at once, the stop
/// runs exactly once, the agent comes back when the control plane does, and its audit record of
/// the stop reaches the control plane.
async fn control_plane_killed_mid_command(
    dir: &Path,
    docker: &Docker,
    image: &str,
) -> anyhow::Result<Case> {
    let mut f = Fleet::start(&dir.join("cp-kill"), None).await?;
    let name = format!("tomo-chaos-{}-cpkill", std::process::id());
    stubborn(docker, &name, image).await?;
    let since = tomo_common::now_secs() as i64;
    let call = in_background(
        &f.api,
        format!("/hosts/{}/containers/{name}/stop", f.host),
        Some(json!({"timeout": 3})),
        None,
    );
    let (saw, detection, recovery) = f.kill_server_during(call).await?;
    wait_exited(docker, &name, Duration::from_secs(15)).await?;
    let stops = engine_events(docker, &name, "stop", since).await?;
    ensure!(stops == 1, "the engine stopped {name} {stops} times");
    eventually(
        "the agent's record of the stop on the control plane",
        Duration::from_secs(15),
        || async {
            Ok(f.audit_of("docker.containers.stop")
                .await?
                .iter()
                .any(|r| r["outcome"] == "ok"))
        },
    )
    .await?;
    remove(docker, &name).await;
    f.stop().await;
    Ok(Case {
        fault: "kill -9 of the control plane while a stop runs (3 s grace)",
        operator_saw: saw,
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing: the stop ran once (one engine `stop` event), its audit record reached the restarted control plane".into(),
    })
}

/// A `stop` in flight when the agent is killed: the operator is told at once, the agent's
/// restart records the outcome `unknown`, and both records reach the control plane.
async fn agent_killed_mid_command(
    dir: &Path,
    docker: &Docker,
    image: &str,
) -> anyhow::Result<Case> {
    let mut f = Fleet::start(&dir.join("agent-kill"), None).await?;
    let name = format!("tomo-chaos-{}-agentkill", std::process::id());
    stubborn(docker, &name, image).await?;
    let call = in_background(
        &f.api,
        format!("/hosts/{}/containers/{name}/stop", f.host),
        Some(json!({"timeout": 3})),
        None,
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed = Instant::now();
    f.kill_agent().await;
    let (answered, r) = call.await?;
    let saw = match r {
        Ok((s, v)) => format!(
            "HTTP {s}: {}",
            v["error"]["message"].as_str().unwrap_or_default()
        ),
        Err(e) => format!("the connection failed: {e}"),
    };
    let detection = answered.saturating_duration_since(killed);
    let back = Instant::now();
    f.restart_agent().await?;
    f.wait_status("online", Duration::from_secs(30)).await?;
    let recovery = back.elapsed();
    eventually(
        "admitted and unknown records of the stop",
        Duration::from_secs(15),
        || async {
            let rows = f.audit_of("docker.containers.stop").await?;
            let has = |o: &str| rows.iter().any(|r| r["outcome"] == o);
            Ok(has("admitted") && has("unknown"))
        },
    )
    .await?;
    remove(docker, &name).await;
    f.stop().await;
    Ok(Case {
        fault: "kill -9 of the agent while a stop runs",
        operator_saw: saw,
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing: the stop is on record as admitted, then `unknown` after the restart, on the control plane".into(),
    })
}

/// A run with an idempotency key whose answer is lost to a kill of the control plane: the retry
/// after the restart answers with the same container, and only one exists.
async fn run_retried_across_a_control_plane_kill(
    dir: &Path,
    docker: &Docker,
    image: &str,
) -> anyhow::Result<Case> {
    let mut f = Fleet::start(&dir.join("run-key"), None).await?;
    let label = format!("tomo.chaos.{}", std::process::id());
    let body = json!({"image": image, "command": ["sleep", "600"], "network_mode": "none",
                      "labels": {label.clone(): "1", crate::fixtures::LABEL: "chaos"}});
    let key = tomo_common::hex(&tomo_common::random_bytes::<16>());
    let listen = f.server.as_ref().context("server")?.listen;
    let call = in_background(
        &f.api,
        format!("/hosts/{}/containers", f.host),
        Some(body.clone()),
        Some(key.clone()),
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let killed = Instant::now();
    f.kill_server().await;
    let (_, first) = call.await?;
    let detection = killed.elapsed();
    f.restart_server(listen).await?;
    let back = Instant::now();
    f.wait_status("online", Duration::from_secs(60)).await?;
    let recovery = back.elapsed();
    let (s, retried) = f
        .api
        .raw(
            Method::POST,
            &format!("/hosts/{}/containers", f.host),
            Some(&body),
            &[("idempotency-key", &key)],
        )
        .await?;
    ensure!(s == StatusCode::OK, "the retry answered {s}: {retried}");
    let filters = [("label", vec![label.as_str()])]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    let listed = docker
        .list_containers(Some(
            q::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    for c in &listed {
        if let Some(id) = &c.id {
            remove(docker, id).await;
        }
    }
    ensure!(listed.len() == 1, "{} containers for one run", listed.len());
    ensure!(
        listed[0].id.as_deref() == retried["id"].as_str(),
        "the retry answered another container: {retried}"
    );
    f.stop().await;
    Ok(Case {
        fault: "kill -9 of the control plane during a `run` with an Idempotency-Key, then the operator's retry",
        operator_saw: match first {
            Ok((s, v)) => format!("first call: HTTP {s} {v}; the retry: the same container"),
            Err(e) => format!(
                "first call: the connection failed ({e}); the retry: the first run's container"
            ),
        },
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing, nothing twice: one container".into(),
    })
}

/// An approved action that runs when the control plane is killed: after the restart it is
/// `interrupted` (never run again), then settled from the agent's audit record, and the stop
/// ran once.
async fn control_plane_killed_mid_approval(
    dir: &Path,
    docker: &Docker,
    image: &str,
) -> anyhow::Result<Case> {
    let mut f = Fleet::start(&dir.join("approval-kill"), None).await?;
    let name = format!("tomo-chaos-{}-approval", std::process::id());
    stubborn(docker, &name, image).await?;
    let since = tomo_common::now_secs() as i64;
    let listen = f.server.as_ref().context("server")?.listen;
    let ca = f.server.as_ref().context("server")?.ca_file.clone();
    let created = f
        .api
        .send(
            Method::POST,
            "/tokens",
            Some(&json!({"name": "chaos-assistant", "role": "execute", "requires_approval": true})),
        )
        .await?;
    let secret = created["secret"].as_str().context("no secret")?;
    let asker = Api::new(&format!("https://{listen}"), &ca, secret, 1)?;
    let path = format!("/hosts/{}/containers/{name}/stop", f.host);
    let (s, pending) = asker
        .raw(Method::POST, &path, Some(&json!({"timeout": 3})), &[])
        .await?;
    ensure!(
        s == StatusCode::ACCEPTED,
        "the stop was not held for approval: {s} {pending}"
    );
    let id = pending["pending_action"]["id"]
        .as_str()
        .context("no action id")?
        .to_owned();
    let approve = in_background(&f.api, format!("/approvals/{id}/approve"), None, None);
    let (saw, detection, recovery) = f.kill_server_during(approve).await?;
    let saw = format!("the approver: {saw}");
    let first = f
        .api
        .send(Method::GET, &format!("/approvals/{id}"), None)
        .await?;
    let first_status = first["status"].as_str().unwrap_or_default().to_owned();
    ensure!(
        matches!(first_status.as_str(), "interrupted" | "done"),
        "after the restart the action is {first_status}: {first}"
    );
    eventually(
        "the interrupted action settled from the agent's audit",
        Duration::from_secs(20),
        || async {
            let a = f
                .api
                .send(Method::GET, &format!("/approvals/{id}"), None)
                .await?;
            Ok(a["status"] == "done")
        },
    )
    .await?;
    let (s, again) = f
        .api
        .raw(Method::POST, &format!("/approvals/{id}/approve"), None, &[])
        .await?;
    ensure!(
        s == StatusCode::CONFLICT,
        "approving it again answered {s}: {again}"
    );
    wait_exited(docker, &name, Duration::from_secs(15)).await?;
    let stops = engine_events(docker, &name, "stop", since).await?;
    ensure!(stops == 1, "the engine stopped {name} {stops} times");
    remove(docker, &name).await;
    f.stop().await;
    Ok(Case {
        fault: "kill -9 of the control plane while an approved stop runs",
        operator_saw: format!(
            "{saw}; after the restart the action was `{first_status}`, then `done` from the host's audit; approving it again: 409"
        ),
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing: the stop ran once and is never run again".into(),
    })
}

/// A `logs -f` open when the control plane is killed: the follower learns at once that its
/// connection broke, and once the control plane is back the stream opens again and flows.
async fn control_plane_killed_mid_stream(
    dir: &Path,
    docker: &Docker,
    image: &str,
) -> anyhow::Result<Case> {
    let mut f = Fleet::start(&dir.join("stream-kill"), None).await?;
    let name = format!("tomo-chaos-{}-ticks", std::process::id());
    let cmd = ["sh", "-c", "while true; do echo tick; sleep 0.2; done"];
    started(docker, &name, image, &cmd).await?;
    let listen = f.server.as_ref().context("server")?.listen;
    let path = format!(
        "/hosts/{}/containers/{name}/logs?follow=true&tail=1",
        f.host
    );
    let ticks = |mut resp: reqwest::Response| async move {
        let t0 = Instant::now();
        let mut text = String::new();
        while !text.contains("tick") {
            ensure!(
                t0.elapsed() < Duration::from_secs(15),
                "no line within 15 s: {text}"
            );
            match tokio::time::timeout(Duration::from_secs(15), resp.chunk()).await {
                Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
                other => bail!("the stream ended before a line: {other:?}"),
            }
        }
        Ok(resp)
    };
    let mut resp = ticks(f.api.open(&path).await?).await?;
    let killed = Instant::now();
    f.kill_server().await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => break "the stream ended".to_owned(),
            Ok(Err(e)) => break format!("the stream broke: {e}"),
            Err(_) => bail!("the follower was not told within 10 s"),
        }
    };
    let detection = killed.elapsed();
    f.restart_server(listen).await?;
    let back = Instant::now();
    f.wait_status("online", Duration::from_secs(60)).await?;
    ticks(f.api.open(&path).await?).await?;
    let recovery = back.elapsed();
    remove(docker, &name).await;
    f.stop().await;
    Ok(Case {
        fault: "kill -9 of the control plane while an operator follows a container's logs",
        operator_saw: format!("{ended} (the CLI: \"the connection to the control plane … broke in the middle of the stream …; it may have stopped or restarted\"); after the restart `logs -f` flows again"),
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing acknowledged: the lines of the outage are not sent to the cut follower; the container's log keeps them (`tomo logs` shows them)".into(),
    })
}

/// The control plane's disk fills (its data directory on a small tmpfs this case mounts): a
/// write answers 507 and changes nothing, and once space returns the next write is stored
/// without a restart. Needs root (to mount); skipped otherwise.
async fn control_plane_disk_full(dir: &Path) -> anyhow::Result<Option<Case>> {
    if !rustix::process::geteuid().is_root() {
        println!("skip  the control plane's disk full: needs root to mount a tmpfs");
        return Ok(None);
    }
    let base = dir.join("disk-full");
    let data = base.join("server");
    std::fs::create_dir_all(&data)?;
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=8m,mode=0700",
            "tomo-chaos",
            &data.display().to_string(),
        ])
        .status()?;
    ensure!(
        mounted.success(),
        "cannot mount a tmpfs on {}",
        data.display()
    );
    let unmount = || {
        let _ = std::process::Command::new("umount").arg(&data).status();
    };
    let result = async {
        let f = Fleet::start(&base, None).await?;
        let filler = data.join("filler");
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&filler)?;
            let chunk = vec![0u8; 64 * 1024];
            while file.write_all(&chunk).is_ok() {}
            let _ = file.sync_all();
        }
        // SQLite may still place a write or two in space its files already hold (a WAL it
        // reuses): such a write is stored, and acknowledged rightly. Write tokens until one is
        // refused; every one acknowledged must be there afterwards, and work.
        let full = Instant::now();
        let mut acknowledged = Vec::new();
        let (s, v) = loop {
            let name = format!("chaos-full-{}", acknowledged.len());
            let (s, v) = f
                .api
                .raw(Method::POST, "/tokens", Some(&json!({"name": name, "role": "read"})), &[])
                .await?;
            if !s.is_success() {
                break (s, v);
            }
            let secret = v["secret"].as_str().context("a token without its secret")?;
            acknowledged.push((name, secret.to_owned()));
            ensure!(acknowledged.len() < 200, "200 writes on a full disk were acknowledged");
        };
        let detection = full.elapsed();
        ensure!(s == StatusCode::INSUFFICIENT_STORAGE, "a write on a full disk answered {s}: {v}");
        let saw = format!(
            "HTTP {s} {} (after {} write(s) that still fitted in the store's files)",
            v["error"]["message"].as_str().unwrap_or_default(),
            acknowledged.len()
        );
        std::fs::remove_file(&filler)?;
        let freed = Instant::now();
        let (s, v) = f
            .api
            .raw(Method::POST, "/codes", Some(&json!({"ttl_secs": 600})), &[])
            .await?;
        ensure!(s == StatusCode::CREATED || s == StatusCode::OK, "the first write after space returned answered {s}: {v}");
        ensure!(v["code"].is_string(), "no code in {s}");
        let recovery = freed.elapsed();
        // What was acknowledged is there, and works.
        let hosts = f.api.send(Method::GET, "/hosts", None).await?;
        ensure!(hosts.as_array().is_some_and(|h| !h.is_empty()), "the host is gone: {hosts}");
        let tokens = f.api.send(Method::GET, "/tokens", None).await?;
        for (name, secret) in &acknowledged {
            ensure!(
                tokens.as_array().into_iter().flatten().any(|t| t["name"] == name.as_str()),
                "the acknowledged token {name} is missing: {tokens}"
            );
            let server = f.server.as_ref().context("server")?;
            let api = Api::new(&server.api_url, &server.ca_file, secret, 1)?;
            api.send(Method::GET, "/hosts", None)
                .await
                .with_context(|| format!("the acknowledged token {name} does not work"))?;
        }
        f.stop().await;
        Ok::<_, anyhow::Error>(Case {
            fault: "the control plane's disk fills (its data directory on an 8 MiB tmpfs), then space returns",
            operator_saw: format!("{saw}; after space returned the next write succeeded (a new code), no restart"),
            detection_ms: ms(detection),
            recovery_ms: ms(recovery),
            lost: "nothing acknowledged: the write refused on the full disk changed nothing, the next one was stored".into(),
        })
    }
    .await;
    unmount();
    result.map(Some)
}

/// Where Debian's `faketime` package puts its library.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The agent's clock 10 min ahead (the agent restarted under libfaketime): the host works,
/// commands are not refused `stale`, and the control plane shows the offset with a warning.
/// Skipped without the library (`apt-get install faketime`).
async fn agent_clock_ten_minutes_ahead(dir: &Path) -> anyhow::Result<Option<Case>> {
    if !Path::new(FAKETIME).is_file() {
        println!("skip  the agent's clock 10 min ahead: no {FAKETIME} (apt-get install faketime)");
        return Ok(None);
    }
    let mut f = Fleet::start(&dir.join("clock"), None).await?;
    f.kill_agent().await;
    let env = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME", "+600s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let started = Instant::now();
    let mut a = AgentProc::start_with_env(&f.agent_args, &f.dir.join("agent.log"), &env).await?;
    a.wait_connected(Duration::from_secs(30)).await?;
    f.agent = Some(a);
    f.wait_status("online", Duration::from_secs(30)).await?;
    let recovery = started.elapsed();
    let h = f
        .api
        .send(Method::GET, &format!("/hosts/{}", f.host), None)
        .await?;
    let offset = h["clock"]["offset_ms"]
        .as_i64()
        .context("no clock offset")?;
    ensure!(
        (590_000..=610_000).contains(&offset),
        "offset {offset} ms, not about +600 s: {h}"
    );
    let warning = h["clock"]["warning"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(warning.contains("clock skew"), "no clock warning: {h}");
    let t = Instant::now();
    let info = f.api.call(&f.host, "system.info", None).await?;
    let detection = t.elapsed();
    ensure!(info["hostname"].is_string(), "{info}");
    // A command too (it is signed in the agent's time, so not refused `stale`).
    let (s, v) = f
        .api
        .raw(
            Method::POST,
            &format!("/hosts/{}/rpc", f.host),
            Some(&json!({"method": "agent.update", "params": {}})),
            &[],
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v.get("result").is_some(),
        "a command was refused: {s} {v}"
    );
    f.stop().await;
    Ok(Some(Case {
        fault: "the agent's clock 10 min ahead (libfaketime)",
        operator_saw: format!(
            "the host online and working (a read and a command answered), `clock.offset_ms` {offset}, warning \"{warning}\""
        ),
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing: no call refused `stale`".into(),
    }))
}

/// 20 clients at once for 15 s, reads and commands through the API: no error, and the control
/// plane's memory stays flat.
async fn twenty_clients(dir: &Path) -> anyhow::Result<Case> {
    let f = Fleet::start(&dir.join("clients"), None).await?;
    let pid = f.server.as_ref().context("server")?.pid;
    // Warm up, then measure memory before and after.
    for _ in 0..50 {
        f.api.call(&f.host, "agent.ping", None).await?;
    }
    let before = crate::procs::Usage::of(pid)?.rss_kib;
    let until = Instant::now() + Duration::from_secs(15);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (api, host) = (f.api.clone(), f.host.clone());
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while Instant::now() < until {
                let method = if i % 4 == 0 {
                    "system.get_metrics"
                } else {
                    "agent.ping"
                };
                match api.call(&host, method, None).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (o, mut fl) = r?;
        ok += o;
        failed.append(&mut fl);
    }
    let after = crate::procs::Usage::of(pid)?.rss_kib;
    f.stop().await;
    ensure!(
        failed.is_empty(),
        "{} of {} calls failed, first: {}",
        failed.len(),
        ok + failed.len() as u64,
        failed[0]
    );
    ensure!(
        after < before + 32 * 1024,
        "the control plane grew from {before} KiB to {after} KiB"
    );
    Ok(Case {
        fault: "20 clients at once for 15 s (pings and metrics reads through the API)",
        operator_saw: format!(
            "{ok} calls, none failed; the control plane's RSS {before} KiB before, {after} KiB after"
        ),
        detection_ms: 0,
        recovery_ms: 0,
        lost: "nothing".into(),
    })
}

/// A TCP proxy between the agent and the control plane that can stop forwarding (a network
/// black hole: nothing is closed, nothing arrives). It listens before it knows where to: the
/// control plane's port is set once that runs.
struct Freezer {
    port: u16,
    to: std::sync::Arc<std::sync::OnceLock<SocketAddr>>,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Freezer {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (frozen, rx) = watch::channel(false);
        let to = std::sync::Arc::new(std::sync::OnceLock::<SocketAddr>::new());
        let dest = std::sync::Arc::clone(&to);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rx, dest) = (rx.clone(), std::sync::Arc::clone(&dest));
                tokio::spawn(async move {
                    let Some(to) = dest.get().copied() else {
                        return;
                    };
                    let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, rx.clone()) => {}
                        _ = pump(sr, cw, rx) => {}
                    }
                });
            }
        });
        Ok(Self {
            port,
            to,
            frozen,
            task,
        })
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding every byte while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The network between agent and control plane turns into a black hole: the control plane
/// marks the host offline after the dead-peer time, a call meanwhile fails in its timeout, and
/// once the network is back the agent reconnects by itself.
async fn network_black_hole(dir: &Path) -> anyhow::Result<Case> {
    let freezer = Freezer::start().await?;
    let (port, to) = (freezer.port, std::sync::Arc::clone(&freezer.to));
    let url = move |listen: SocketAddr| {
        let _ = to.set(listen);
        format!("wss://127.0.0.1:{port}/agent/ws")
    };
    let f = Fleet::start(&dir.join("black-hole"), Some(&url)).await?;
    let frozen = freezer.frozen.clone();
    frozen.send_replace(true);
    let cut = Instant::now();
    // A call during the black hole fails within its own timeout (the default 30 s).
    let (s, v) = f
        .api
        .raw(
            Method::POST,
            &format!("/hosts/{}/rpc", f.host),
            Some(&json!({"method": "agent.ping", "timeout_ms": 5000})),
            &[],
        )
        .await?;
    let saw = format!(
        "a ping meanwhile: HTTP {s} {}",
        v["error"]["message"]
            .as_str()
            .or(v["error"]["code"].as_str())
            .unwrap_or_default()
    );
    f.wait_status("offline", Duration::from_secs(150)).await?;
    let detection = cut.elapsed();
    frozen.send_replace(false);
    let back = Instant::now();
    f.wait_status("online", Duration::from_secs(120)).await?;
    let recovery = back.elapsed();
    f.stop().await;
    drop(freezer);
    Ok(Case {
        fault: "network black hole between agent and control plane (a proxy that stops forwarding, nothing closed)",
        operator_saw: format!("{saw}; the host offline after {} s", detection.as_secs()),
        detection_ms: ms(detection),
        recovery_ms: ms(recovery),
        lost: "nothing acknowledged: calls during the hole fail with their timeout".into(),
    })
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let docker = crate::fixtures::engine().await?;
    let image =
        std::env::var("TOMO_TEST_IMAGE").unwrap_or_else(|_| "tomo-test/busybox:latest".into());
    docker
        .inspect_image(&image)
        .await
        .with_context(|| format!("the test image {image} is missing (scripts/docker-test-env)"))?;
    let tmp = tempfile::Builder::new().prefix("tomo-chaos-").tempdir()?;
    let dir = tmp.path();
    let mut cases = Vec::new();
    let mut failed = Vec::new();
    // A case answers a `Case`, or `None` when it cannot run here (it says why).
    macro_rules! case {
        ($e:expr) => {
            match $e.await.map(Into::<Option<Case>>::into) {
                Ok(Some(c)) => {
                    println!(
                        "ok    {} — detected in {} ms, recovered in {} ms; lost: {}",
                        c.fault, c.detection_ms, c.recovery_ms, c.lost
                    );
                    println!("      the operator saw: {}", c.operator_saw);
                    cases.push(c);
                }
                Ok(None) => {}
                Err(e) => {
                    println!("FAIL  {e:#}");
                    failed.push(format!("{e:#}"));
                }
            }
        };
    }
    case!(control_plane_killed_mid_command(dir, &docker, &image));
    case!(agent_killed_mid_command(dir, &docker, &image));
    case!(run_retried_across_a_control_plane_kill(
        dir, &docker, &image
    ));
    case!(control_plane_killed_mid_approval(dir, &docker, &image));
    case!(control_plane_killed_mid_stream(dir, &docker, &image));
    case!(control_plane_disk_full(dir));
    case!(agent_clock_ten_minutes_ahead(dir));
    case!(dockerd::engine_restarted(dir, &image));
    case!(twenty_clients(dir));
    if !args.no_black_hole {
        case!(network_black_hole(dir));
    }
    let path = args
        .json
        .unwrap_or_else(|| crate::report::bench_dir().join("chaos.json"));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({"cases": cases, "failed": failed}))?,
    )?;
    println!("report: {}", path.display());
    if !failed.is_empty() {
        // Keep the logs of a failed run.
        let kept = tmp.keep();
        bail!(
            "{} case(s) failed; logs in {}",
            failed.len(),
            kept.display()
        );
    }
    Ok(())
}
