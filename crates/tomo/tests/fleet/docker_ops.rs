//! Host operations end to end: REST API → control plane → agent → the real Docker engine, with
//! every effect checked through the Docker API itself. Skipped loudly without an engine (and
//! failing instead with TOMO_REQUIRE_DOCKER=1, as in CI).

use std::time::{Duration, Instant};

use bollard::query_parameters as q;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tomo_agent::docker::Endpoint;

use crate::docker_env::DockerEnv;
use crate::support::{Fleet, RunningAgent};

/// A fleet with one agent on the local engine, and the engine for checks.
struct Env {
    fleet: Fleet,
    agent: RunningAgent,
    host: String,
    docker: DockerEnv,
    prefix: String,
    _volumes: tempfile::TempDir,
}

impl Env {
    async fn start(what: &str) -> Option<Self> {
        Self::start_with(what, DockerEnv::get().await?).await
    }

    async fn start_with(what: &str, docker: DockerEnv) -> Option<Self> {
        let fleet = Fleet::start().await;
        let mut cfg = fleet.agent("dockerhost", Some(fleet.code().await));
        cfg.docker = Endpoint::from_env();
        let volumes = tempfile::tempdir().expect("tempdir");
        cfg.volume_base = volumes.path().join("base");
        // The scratch directory is under /tmp, which others can write to: a bind source there
        // is allowed only under a root the host policy names itself.
        let policy = volumes.path().join("policy.toml");
        let text = format!(
            "bind_roots = [{:?}]\n",
            volumes.path().display().to_string()
        );
        std::fs::write(&policy, text).expect("policy");
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
        std::fs::set_permissions(&policy, mode).expect("policy mode");
        cfg.policy_path = Some(policy);
        let mut agent = RunningAgent::spawn(cfg);
        let host = agent.online().await;
        Some(Self {
            fleet,
            agent,
            host,
            docker,
            prefix: DockerEnv::unique(what),
            _volumes: volumes,
        })
    }

    /// `GET …/containers/{name}/logs?follow=true`, its answer to be read by the caller.
    async fn follow_logs(&self, name: &str) -> reqwest::Response {
        let url = format!(
            "{}/api/v1/hosts/{}/containers/{name}/logs?follow=true",
            self.fleet.info.api_url, self.host
        );
        self.fleet
            .http
            .get(url)
            .bearer_auth(&self.fleet.token)
            .send()
            .await
            .expect("logs")
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.fleet
            .api(method, &format!("/hosts/{}{path}", self.host), body)
            .await
    }

    /// A running container from the test image, network none, running `cmd`.
    async fn container(&self, suffix: &str, cmd: &[&str]) -> String {
        let name = format!("{}-{suffix}", self.prefix);
        let body = bollard::models::ContainerCreateBody {
            image: Some(self.docker.image.clone()),
            cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            labels: Some([("tomo.test".to_owned(), "1".to_owned())].into()),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .docker
            .create_container(
                Some(q::CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .expect("create");
        self.docker
            .docker
            .start_container(&name, None::<q::StartContainerOptions>)
            .await
            .expect("start");
        name
    }

    async fn state(&self, name: &str) -> Option<String> {
        let c = self
            .docker
            .docker
            .inspect_container(name, None::<q::InspectContainerOptions>)
            .await
            .ok()?;
        c.state.and_then(|s| s.status).map(|s| s.to_string())
    }

    /// Lines of an NDJSON answer, read until `until` says stop (or the answer ends).
    async fn lines(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        mut until: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let url = format!(
            "{}/api/v1/hosts/{}{path}",
            self.fleet.info.api_url, self.host
        );
        let mut req = self
            .fleet
            .http
            .request(method, url)
            .bearer_auth(&self.fleet.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let mut resp = req.send().await.expect("API");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let read = async {
            while let Some(chunk) = resp.chunk().await.expect("chunk") {
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let v: Value = serde_json::from_slice(&line).expect("NDJSON line");
                    let stop = until(&v);
                    out.push(v);
                    if stop {
                        return;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("stream in time");
        out
    }

    async fn finish(self) {
        self.docker.cleanup(&self.prefix).await;
        let _ = self.agent.stop().await;
    }
}

#[tokio::test]
async fn container_lifecycle_logs_stats_and_exec() {
    let Some(env) = Env::start("ops").await else {
        return;
    };
    let name = env
        .container(
            "life",
            &["sh", "-c", "echo hello; echo oops >&2; exec sleep 600"],
        )
        .await;

    // ps: running only by default, the label visible.
    let (s, list) = env.api(Method::GET, "/containers", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let mine = list
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["name"] == name.as_str())
        .expect("our container listed");
    assert_eq!(mine["state"], "running");
    assert_eq!(mine["labels"]["tomo.test"], "1");

    // stop (really stopped), start, restart.
    let (s, r) = env
        .api(
            Method::POST,
            &format!("/containers/{name}/stop"),
            Some(json!({"timeout": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "exited");
    assert_eq!(env.state(&name).await.as_deref(), Some("exited"));
    let (s, list) = env.api(Method::GET, "/containers", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !list
            .as_array()
            .expect("array")
            .iter()
            .any(|c| c["name"] == name.as_str())
    );
    let (s, list) = env.api(Method::GET, "/containers?all=true", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|c| c["name"] == name.as_str())
    );
    let (s, r) = env
        .api(Method::POST, &format!("/containers/{name}/start"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(env.state(&name).await.as_deref(), Some("running"));
    let (s, r) = env
        .api(
            Method::POST,
            &format!("/containers/{name}/restart"),
            Some(json!({"timeout": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "running");

    // Logs, one-shot: both streams, tail respected.
    let (s, logs) = env
        .api(Method::GET, &format!("/containers/{name}/logs"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{logs}");
    let chunks = logs["chunks"].as_array().expect("chunks");
    assert!(
        chunks
            .iter()
            .any(|c| c["source"] == "stdout" && c["text"] == "hello\n"),
        "{logs}"
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["source"] == "stderr" && c["text"] == "oops\n"),
        "{logs}"
    );
    assert_eq!(logs["truncated"], false);
    let (_, tail) = env
        .api(
            Method::GET,
            &format!("/containers/{name}/logs?tail=1"),
            None,
        )
        .await;
    assert_eq!(tail["chunks"].as_array().map(Vec::len), Some(1), "{tail}");

    // Stats, one sample: real figures from the engine.
    let (s, st) = env
        .api(Method::GET, &format!("/containers/{name}/stats"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["name"], name.as_str());
    assert!(st["memory_used"].as_u64().is_some_and(|m| m > 0), "{st}");
    assert!(st["pids"].as_u64().is_some_and(|p| p >= 1), "{st}");

    // Exec, one-shot: output and exit code.
    let (s, out) = env
        .api(
            Method::POST,
            &format!("/containers/{name}/exec"),
            Some(json!({"cmd": ["sh", "-c", "echo in-container; exit 3"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "in-container\n");
    assert_eq!(out["exit_code"], 3);

    // Errors: unknown container is a clear 404, bad params name the parameter.
    let (s, e) = env
        .api(
            Method::POST,
            "/containers/tomo-test-no-such-container/start",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["rpc"]["code"], -32014);
    let (s, e) = env
        .api(
            Method::POST,
            &format!("/containers/{name}/stop"),
            Some(json!({"timeout": "soon"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["rpc"]["data"]["param"], "timeout");

    // Remove: really gone.
    let (s, r) = env
        .api(
            Method::DELETE,
            &format!("/containers/{name}?force=true"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(env.state(&name).await, None);
    env.finish().await;
}

#[tokio::test]
async fn streams_follow_logs_and_stats_and_close_when_the_reader_leaves() {
    let Some(env) = Env::start("stream").await else {
        return;
    };
    let name = env
        .container(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
            ],
        )
        .await;
    // Follow the logs until 100 lines came, in order, with increasing sequence numbers.
    let mut ticks = 0;
    let lines = env
        .lines(
            Method::GET,
            &format!("/containers/{name}/logs?follow=true"),
            None,
            |l| {
                if let Some(text) = l["data"]["text"].as_str() {
                    ticks += text.matches("tick").count();
                }
                ticks >= 100
            },
        )
        .await;
    assert!(
        lines[0]["stream"].as_str().is_some(),
        "opening line: {}",
        lines[0]
    );
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert!(seqs.len() >= 2);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // The reader left: the control plane closes the stream on the agent, which frees it.
    let conn_streams = || {
        env.fleet
            .state
            .hub
            .stream_owner(&env.host, lines[0]["stream"].as_str().unwrap_or(""))
    };
    for _ in 0..100 {
        if conn_streams().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        conn_streams(),
        None,
        "stream still routed after the reader left"
    );

    // Stats stream: a few samples.
    let mut samples = 0;
    env.lines(
        Method::GET,
        &format!("/containers/{name}/stats?stream=true"),
        None,
        |l| {
            if l["data"]["name"] == name.as_str() {
                samples += 1;
            }
            samples >= 2
        },
    )
    .await;
    assert_eq!(samples, 2);
    env.finish().await;
}

#[tokio::test]
async fn interactive_exec_takes_input_and_reports_the_exit_code() {
    let Some(env) = Env::start("iexec").await else {
        return;
    };
    let name = env.container("shell", &["sleep", "600"]).await;
    let url = format!(
        "{}/api/v1/hosts/{}/stream",
        env.fleet.info.api_url, env.host
    );
    let body = json!({"method": "docker.containers.exec",
        "params": {"container": name, "cmd": ["sh"], "interactive": true}});
    let mut resp = env
        .fleet
        .http
        .post(url)
        .bearer_auth(&env.fleet.token)
        .json(&body)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut buf = Vec::new();
    let mut stream_id = None;
    let mut output = Vec::new();
    let mut end = None;
    let read = async {
        while let Some(chunk) = resp.chunk().await.expect("chunk") {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&line).expect("line");
                if let Some(id) = v["stream"].as_str() {
                    stream_id = Some(id.to_owned());
                    let input = tomo_common::b64(b"echo from-stdin-$((6*7))\nexit 7\n");
                    let (s, r) = env
                        .fleet
                        .rpc(
                            &env.host,
                            "stream.write",
                            Some(json!({"stream": id, "data_b64": input})),
                        )
                        .await;
                    assert_eq!(s, StatusCode::OK, "{r}");
                    assert_eq!(r["result"]["open"], true, "{r}");
                } else if let Some(b) = v["data"]["b64"].as_str() {
                    output.extend(tomo_common::unb64(b).expect("base64"));
                } else if v.get("end").is_some() {
                    end = Some(v);
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("session in time");
    assert!(stream_id.is_some());
    assert!(
        String::from_utf8_lossy(&output).contains("from-stdin-42"),
        "{}",
        String::from_utf8_lossy(&output)
    );
    let end = end.expect("end line");
    assert_eq!(end["end"]["result"]["exit_code"], 7, "{end}");
    env.finish().await;
}

#[tokio::test]
async fn images_networks_volumes_and_events() {
    let Some(env) = Env::start("objs").await else {
        return;
    };
    let (s, images) = env.api(Method::GET, "/images", None).await;
    assert_eq!(s, StatusCode::OK, "{images}");
    assert!(images.as_array().expect("array").iter().any(|i| {
        i["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == env.docker.image.as_str()))
    }));

    let net = format!("{}-net", env.prefix);
    let (s, r) = env
        .api(
            Method::POST,
            "/networks",
            Some(json!({"name": net, "internal": true, "labels": {"tomo.test": "1"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let n = env
        .docker
        .docker
        .inspect_network(&net, None::<q::InspectNetworkOptions>)
        .await
        .expect("network exists");
    assert_eq!(n.internal, Some(true));
    let (s, list) = env.api(Method::GET, "/networks", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|n| n["name"] == net.as_str())
    );
    let (s, r) = env
        .api(Method::DELETE, &format!("/networks/{net}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        env.docker
            .docker
            .inspect_network(&net, None::<q::InspectNetworkOptions>)
            .await
            .is_err()
    );

    let vol = format!("{}-vol", env.prefix);
    let (s, r) = env
        .api(
            Method::POST,
            "/volumes",
            Some(json!({"name": vol, "labels": {"tomo.test": "1"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let v = env
        .docker
        .docker
        .inspect_volume(&vol)
        .await
        .expect("volume exists");
    assert_eq!(v.labels.get("tomo.test").map(String::as_str), Some("1"));
    let (s, list) = env.api(Method::GET, "/volumes", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|v| v["name"] == vol.as_str())
    );
    let (s, r) = env
        .api(Method::DELETE, &format!("/volumes/{vol}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(env.docker.docker.inspect_volume(&vol).await.is_err());

    // Events: a container's life shows up, stored and readable.
    let name = env.container("evt", &["true"]).await;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let (s, events) = env.api(Method::GET, "/events?limit=1000", None).await;
        assert_eq!(s, StatusCode::OK, "{events}");
        seen = events
            .as_array()
            .expect("array")
            .iter()
            .filter(|e| e["attributes"]["name"] == name.as_str())
            .filter_map(|e| e["action"].as_str().map(str::to_owned))
            .collect();
        if seen.iter().any(|a| a == "die") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for action in ["create", "start", "die"] {
        assert!(
            seen.iter().any(|a| a == action),
            "{action} missing from {seen:?}"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn without_an_engine_docker_methods_fail_clearly_and_the_rest_works() {
    let fleet = Fleet::start().await;
    let mut cfg = fleet.agent("nodocker", Some(fleet.code().await));
    cfg.docker = Endpoint::Unix("/nonexistent/tomo-test/docker.sock".into());
    let mut agent = RunningAgent::spawn(cfg);
    let host = agent.online().await;
    let (s, e) = fleet
        .api(Method::GET, &format!("/hosts/{host}/containers"), None)
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{e}");
    assert_eq!(e["error"]["rpc"]["code"], -32003);
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Docker engine unavailable")),
        "{e}"
    );
    // Issue 13.8: the error says where the engine was looked for and what to check.
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unix:///nonexistent/tomo-test/docker.sock")
            && message.contains("dockerd"),
        "{e}"
    );
    let (s, r) = fleet.rpc(&host, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["result"]["pong"], true);
    let (s, r) = fleet.rpc(&host, "system.get_metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        r["result"]["memory"]["total"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{r}"
    );
    let _ = agent.stop().await;
}

#[tokio::test]
async fn agent_update_changes_settings_and_restart_comes_back() {
    let fleet = Fleet::start().await;
    let mut agent = RunningAgent::spawn(fleet.agent("tuned", Some(fleet.code().await)));
    let host = agent.online().await;
    let (s, r) = fleet
        .api(
            Method::POST,
            &format!("/hosts/{host}/agent/update"),
            Some(json!({"metrics_interval": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["metrics_interval"], 5);
    let (s, e) = fleet
        .api(
            Method::POST,
            &format!("/hosts/{host}/agent/update"),
            Some(json!({"health_interval": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["rpc"]["data"]["param"], "health_interval");
    let (s, e) = fleet
        .api(
            Method::POST,
            &format!("/hosts/{host}/agent/update"),
            Some(json!({"policy": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");

    let (s, r) = fleet
        .api(Method::POST, &format!("/hosts/{host}/agent/restart"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["restarting"], true);
    // The agent leaves its session and comes back with a new one.
    tokio::time::timeout(
        Duration::from_secs(10),
        agent
            .status
            .wait_for(|s| !matches!(s, tomo_agent::Status::Online { .. })),
    )
    .await
    .expect("the agent restarted in time")
    .expect("agent running");
    assert_eq!(agent.online().await, host);
    fleet.wait_status(&host, "online").await;
    let (s, r) = fleet.rpc(&host, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let _ = agent.stop().await;
}

/// A unix-socket relay to the real engine that can be taken down and brought back, standing in for
/// an engine that restarts (the shared test engine itself must not be restarted).
struct Relay {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    fn up(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind relay");
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        }));
    }

    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            // Aborting drops the listener and every relayed connection with it.
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A fleet with one online agent whose engine is reached through a [`Relay`] (up).
async fn relayed_agent(name: &str) -> (tempfile::TempDir, Relay, Fleet, RunningAgent, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay {
        path: dir.path().join("docker.sock"),
        task: None,
    };
    relay.up();
    let fleet = Fleet::start().await;
    let mut cfg = fleet.agent(name, Some(fleet.code().await));
    cfg.docker = Endpoint::Unix(relay.path.display().to_string());
    let mut agent = RunningAgent::spawn(cfg);
    let host = agent.online().await;
    (dir, relay, fleet, agent, host)
}

#[tokio::test]
async fn the_agent_finds_the_engine_again_after_it_went_away() {
    let Some(_docker) = DockerEnv::get().await else {
        return;
    };
    let (_dir, mut relay, fleet, agent, host) = relayed_agent("flaky").await;
    let path = format!("/hosts/{host}/containers?all=true");
    let (s, r) = fleet.api(Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{r}");

    relay.down();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, e) = fleet.api(Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{e}");
    assert_eq!(e["error"]["rpc"]["code"], -32003);
    let (s, _) = fleet.rpc(&host, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK, "the rest of the agent keeps working");

    relay.up();
    let (s, r) = fleet.api(Method::GET, &path, None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "Docker methods work again once the engine is back: {r}"
    );
    relay.down();
    let _ = agent.stop().await;
}

#[tokio::test]
async fn run_get_pull_and_update_through_the_api() {
    let Some(docker) = DockerEnv::with_registry().await else {
        return;
    };
    let Some(env) = Env::start_with("upd", docker).await else {
        return;
    };
    // A repository of our own in the local registry, version 1.
    let repo = format!("{}-app", env.prefix);
    let v1 = env.docker.push_variant(&repo, "latest", "one").await;
    let name = format!("{}-web", env.prefix);
    let data = env._volumes.path().join("bind");
    std::fs::create_dir_all(&data).expect("bind dir");
    // run: the image is not on the host yet (push_variant leaves only the registry copy? pull it
    // away to be sure), so the agent pulls it.
    let _ = env
        .docker
        .docker
        .remove_image(&v1, None::<q::RemoveImageOptions>, None)
        .await;
    let (s, r) = env
        .api(
            Method::POST,
            "/containers",
            Some(json!({
                "image": v1, "name": name, "command": ["sleep", "600"], "network_mode": "none",
                "labels": {"tomo.test": "1", "app": "web"}, "env": {"MODE": "prod", "DB_PASSWORD": "hunter2"},
                "memory": 64 * 1024 * 1024, "cpus": 0.5,
                "volumes": [{"source": data.display().to_string(), "target": "/data", "read_only": true}],
                "mounts": [{"type": "tmpfs", "target": "/scratch", "tmpfs_size": 1048576}],
                "restart_policy": {"name": "unless-stopped"},
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["pulled"], true, "{r}");
    assert_eq!(r["state"], "running");
    // The engine has it, with those labels, limits and mounts.
    let c = env
        .docker
        .docker
        .inspect_container(&name, None::<q::InspectContainerOptions>)
        .await
        .expect("container exists");
    let cfg = c.config.clone().expect("config");
    let hc = c.host_config.clone().expect("host config");
    assert_eq!(
        cfg.labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert!(
        hc.binds
            .unwrap_or_default()
            .iter()
            .any(|b| b.ends_with(":/data:ro"))
    );
    assert_eq!(
        hc.restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string())
            .as_deref(),
        Some("unless-stopped")
    );
    // get: the secret is redacted, the rest is there.
    let (s, g) = env
        .api(Method::GET, &format!("/containers/{name}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{g}");
    assert_eq!(g["env"]["DB_PASSWORD"], "***");
    assert_eq!(g["env"]["MODE"], "prod");
    assert_eq!(g["memory"], 64 * 1024 * 1024);
    let old_id = g["id"].as_str().expect("id").to_owned();

    // Pull with progress, as a stream that ends with the result.
    let v2 = env.docker.push_variant(&repo, "latest", "two").await;
    let _ = env
        .docker
        .docker
        .remove_image(&v2, None::<q::RemoveImageOptions>, None)
        .await;
    let lines = env
        .lines(
            Method::POST,
            "/images/pull",
            Some(json!({"image": v2, "progress": true})),
            |l| l.get("end").is_some(),
        )
        .await;
    let end = lines.last().expect("end line");
    assert_eq!(end["end"]["reason"], "eof", "{end}");
    assert!(
        end["end"]["result"]["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{end}"
    );
    assert!(
        lines.iter().any(|l| l["data"]["status"].is_string()),
        "progress lines"
    );

    // update: the container is recreated on the new image, same name and configuration.
    let (s, u) = env
        .api(
            Method::POST,
            &format!("/containers/{name}/update"),
            Some(json!({"health_timeout": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["image_changed"], true, "{u}");
    assert_eq!(u["recreated"], true, "{u}");
    assert_ne!(u["new_id"], old_id.as_str());
    // Issue 17: again, the image unchanged: not recreated, and said (`force` would).
    let (s, same) = env
        .api(
            Method::POST,
            &format!("/containers/{name}/update"),
            Some(json!({"health_timeout": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{same}");
    assert_eq!(
        (&same["recreated"], &same["image_changed"]),
        (&json!(false), &json!(false)),
        "{same}"
    );
    assert_eq!(same["new_id"], u["new_id"], "{same}");
    let c2 = env
        .docker
        .docker
        .inspect_container(&name, None::<q::InspectContainerOptions>)
        .await
        .expect("recreated");
    assert_ne!(c2.id.as_deref(), Some(old_id.as_str()));
    assert_eq!(c2.state.and_then(|s| s.running), Some(true));
    let cfg2 = c2.config.expect("config");
    assert_eq!(
        cfg2.labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("web")
    );
    assert!(
        cfg2.env
            .unwrap_or_default()
            .iter()
            .any(|e| e == "DB_PASSWORD=hunter2")
    );
    assert_eq!(c2.host_config.expect("hc").memory, Some(64 * 1024 * 1024));
    assert!(
        env.docker
            .docker
            .inspect_container(&old_id, None::<q::InspectContainerOptions>)
            .await
            .is_err(),
        "old one gone"
    );
    assert_eq!(env.docker.read_file(&name, "/marker").await, b"two");

    // images rm of an image in use fails clearly; force is not used.
    let (s, e) = env
        .api(
            Method::DELETE,
            &format!(
                "/images?image={}",
                v2.replace(':', "%3A").replace('/', "%2F")
            ),
            None,
        )
        .await;
    assert!(
        s == StatusCode::BAD_GATEWAY || s == StatusCode::CONFLICT,
        "{s} {e}"
    );
    let (s, r) = env
        .api(
            Method::DELETE,
            &format!("/containers/{name}?force=true"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, r) = env
        .api(
            Method::DELETE,
            &format!(
                "/images?image={}",
                v2.replace(':', "%3A").replace('/', "%2F")
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        env.docker.docker.inspect_image(&v2).await.is_err(),
        "image removed"
    );
    env.finish().await;
}

#[tokio::test]
async fn system_methods_through_the_api() {
    let Some(env) = Env::start("sys").await else {
        return;
    };
    let (s, info) = env.api(Method::GET, "/info", None).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!(info["docker"]["available"], true);
    assert!(info["docker"]["engine_id"].is_string());
    let (s, out) = env
        .api(
            Method::POST,
            "/system/exec",
            Some(json!({"command": "uptime"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["exit_code"], 0);
    assert!(
        out["stdout"]
            .as_str()
            .is_some_and(|o| o.contains("load average")),
        "{out}"
    );
    let (s, e) = env
        .api(
            Method::POST,
            "/system/exec",
            Some(json!({"command": "uptime; reboot"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["error"]["rpc"]["code"], -32005);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let (s, pf) = env
        .api(
            Method::POST,
            "/system/preflight_check",
            Some(json!({"ports": [port]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{pf}");
    assert_eq!(pf["ok"], false, "{pf}");
    let check = |n: &str| {
        pf["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|x| x["name"] == n).cloned())
    };
    assert_eq!(check("docker").map(|c| c["ok"].clone()), Some(json!(true)));
    assert_eq!(
        check(&format!("port:{port}")).map(|c| c["ok"].clone()),
        Some(json!(false))
    );
    let (s, pv) = env
        .api(
            Method::POST,
            "/system/prepare_volumes",
            Some(json!({"volumes": [{"path": "app/data", "mode": "0750"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{pv}");
    let made = pv["volumes"][0]["path"].as_str().expect("path").to_owned();
    assert_eq!(pv["volumes"][0]["mode"], "0750");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&made).expect("made").permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }
    let (s, e) = env
        .api(
            Method::POST,
            "/system/prepare_volumes",
            Some(json!({"volumes": [{"path": "../escape"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["rpc"]["data"]["param"], "volumes[0].path");
    env.finish().await;
}

/// Streams belong to the token that opened them: another token — even an admin token with the
/// same name — cannot close, acknowledge or write to them, by any route.
#[tokio::test]
async fn streams_belong_to_the_token_that_opened_them() {
    let Some(env) = Env::start("owner").await else {
        return;
    };
    let name = env
        .container(
            "talker",
            &["sh", "-c", "while true; do echo hi; sleep 0.2; done"],
        )
        .await;
    let mut resp = env.follow_logs(&name).await;
    let mut buf = Vec::new();
    let stream = loop {
        let chunk = resp.chunk().await.expect("chunk").expect("more");
        buf.extend_from_slice(&chunk);
        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let v: Value = serde_json::from_slice(&buf[..nl]).expect("line");
            break v["stream"].as_str().expect("stream id").to_owned();
        }
    };
    let (other, _) = tomo_server::auth::mint_token(
        &*env.fleet.state.store,
        "admin",
        tomo_proto::methods::Level::Admin,
        None,
    )
    .await
    .expect("token");
    for (method, params) in [
        ("stream.close", json!({"stream": stream})),
        ("stream.ack", json!({"stream": stream, "seq": u64::MAX})),
        (
            "stream.write",
            json!({"stream": stream, "data_b64": "eA=="}),
        ),
    ] {
        let body = json!({"method": method, "params": params});
        for route in ["rpc", "stream"] {
            let (s, v) = env
                .fleet
                .api_as(
                    &other,
                    Method::POST,
                    &format!("/hosts/{}/{route}", env.host),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} via /{route}: {v}");
        }
    }
    // The stream is still open for its owner, who can close it.
    assert!(
        env.fleet
            .state
            .hub
            .stream_owner(&env.host, &stream)
            .is_some()
    );
    let (s, v) = env
        .fleet
        .rpc(&env.host, "stream.close", Some(json!({"stream": stream})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"]["open"], json!(true), "{v}");
    drop(resp);
    env.finish().await;
}

/// Issue 12.2: `GET /hosts/H/containers/..%2F..%2Finfo%23` answered Docker's `/info` as a
/// container (the path decodes to `../../info#`, which bollard put into `/containers/{}/json`).
/// A reference that is not a Docker name or id is a 400 with the agent's -32602 naming the
/// param, for every route that takes one; the real container is untouched.
#[tokio::test]
async fn a_path_in_a_reference_reaches_no_other_docker_endpoint() {
    let Some(env) = Env::start("traverse").await else {
        return;
    };
    let name = env.container("victim", &["sleep", "300"]).await;
    let get = Method::GET;
    let post = Method::POST;
    let rows = [
        (get.clone(), "/containers/..%2F..%2Finfo%23".to_owned()),
        (get.clone(), format!("/containers/{name}%2Fexport%3F")),
        (
            get.clone(),
            format!("/containers/..%2Fcontainers%2F{name}%2Fexport%23"),
        ),
        (get.clone(), format!("/containers/{name}%3Fsize=1/logs")),
        (get.clone(), format!("/containers/{name}%23/stats")),
        (post.clone(), format!("/containers/{name}%23/stop")),
        (post.clone(), format!("/containers/{name}%3Ft=0/restart")),
        (Method::DELETE, format!("/containers/{name}%3Fforce=1%23")),
        (Method::DELETE, "/images?image=..%2F..%2Finfo%23".to_owned()),
        (Method::DELETE, "/networks/..%2F..%2Finfo%23".to_owned()),
        (Method::DELETE, "/volumes/x%3Fforce=true".to_owned()),
    ];
    for (method, path) in rows {
        let (status, body) = env.api(method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["rpc"]["code"], -32602,
            "{method} {path}: {body}"
        );
    }
    assert_eq!(env.state(&name).await.as_deref(), Some("running"));
    env.finish().await;
}

/// Issue 13.4: health stayed `healthy` through an engine outage (it was re-read only once a
/// minute, and pushed only on the agent's health timer). With the engine cut, the host's health
/// on the control plane turns `degraded` within 5 s (no call needed: the agent pings), and
/// `healthy` again within 5 s of it coming back.
#[tokio::test]
async fn health_follows_the_engine_within_5_seconds() {
    let Some(_docker) = DockerEnv::get().await else {
        return;
    };
    let (_dir, mut relay, fleet, agent, host) = relayed_agent("outage").await;
    let status = |want: &'static str| {
        let fleet = &fleet;
        let host = host.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_, h) = fleet
                    .api(Method::GET, &format!("/hosts/{host}"), None)
                    .await;
                if h["health"]["status"]["status"] == want {
                    return Instant::now();
                }
                assert!(Instant::now() < deadline, "not {want} within 5 s: {h}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    status("healthy").await;
    let cut = Instant::now();
    relay.down();
    let seen = status("degraded").await;
    eprintln!("degraded after {:?}", seen - cut);
    let back = Instant::now();
    relay.up();
    let seen = status("healthy").await;
    eprintln!("healthy again after {:?}", seen - back);
    relay.down();
    let _ = agent.stop().await;
}

/// The `(action, id)` of a host's stored events whose object id starts with `prefix`.
async fn events_of(fleet: &Fleet, host: &str, prefix: &str) -> Vec<(String, String)> {
    let (s, events) = fleet
        .api(
            Method::GET,
            &format!("/hosts/{host}/events?limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{events}");
    events
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (field("action"), field("id"))
        })
        .collect()
}

/// Waits (10 s at most) until the host's stored events under `prefix` are exactly `want`, in
/// order, each once; a missing or a duplicated event fails.
async fn events_become(fleet: &Fleet, host: &str, prefix: &str, want: &[(&str, String)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, id)| ((*a).to_owned(), id.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = events_of(fleet, host, prefix).await;
    while seen.len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = events_of(fleet, host, prefix).await;
    }
    // A copy would come in after the originals: give it time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen = events_of(fleet, host, prefix).await;
    assert_eq!(seen, want, "events stored for {prefix}");
}

async fn volume_events(docker: &DockerEnv, name: &str) {
    let body = bollard::models::VolumeCreateOptions {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    docker.docker.create_volume(body).await.expect("volume");
    docker
        .docker
        .remove_volume(name, None::<q::RemoveVolumeOptions>)
        .await
        .expect("volume rm");
}

/// Issue 13.4: events that happened while the engine was cut from the agent were never
/// delivered (the agent subscribed again from "now"). After the engine comes back they are
/// replayed from the last one read, each stored once.
#[tokio::test]
async fn engine_events_of_an_outage_are_replayed_once() {
    let Some(docker) = DockerEnv::get().await else {
        return;
    };
    let (_dir, mut relay, fleet, agent, host) = relayed_agent("replay").await;
    let prefix = DockerEnv::unique("evr");
    let (before, during) = (format!("{prefix}-before"), format!("{prefix}-during"));
    volume_events(&docker, &before).await;
    let mut want = vec![("create", before.clone()), ("destroy", before.clone())];
    events_become(&fleet, &host, &prefix, &want).await;

    relay.down();
    volume_events(&docker, &during).await;
    relay.up();
    want.extend([("create", during.clone()), ("destroy", during.clone())]);
    events_become(&fleet, &host, &prefix, &want).await;
    relay.down();
    let _ = agent.stop().await;
    docker.cleanup(&prefix).await;
}

/// Issue 13.4: events that happened while the agent had no session were lost. The control
/// plane's welcome names the newest event it holds, and the agent's new subscription starts
/// there: nothing is missing and nothing is stored twice.
#[tokio::test]
async fn engine_events_between_sessions_are_replayed_once() {
    let Some(docker) = DockerEnv::get().await else {
        return;
    };
    let fleet = Fleet::start().await;
    let mut cfg = fleet.agent("replay-session", Some(fleet.code().await));
    cfg.docker = Endpoint::from_env();
    let mut agent = RunningAgent::spawn(cfg.clone());
    let host = agent.online().await;
    let prefix = DockerEnv::unique("evs");
    let (before, offline) = (format!("{prefix}-before"), format!("{prefix}-offline"));
    volume_events(&docker, &before).await;
    let mut want = vec![("create", before.clone()), ("destroy", before.clone())];
    events_become(&fleet, &host, &prefix, &want).await;

    agent.stop().await.expect("agent stops");
    volume_events(&docker, &offline).await;
    // Offline for more than the second a subscription from "now" would still cover.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cfg.register_code = None;
    let mut agent = RunningAgent::spawn(cfg);
    assert_eq!(agent.online().await, host);
    want.extend([("create", offline.clone()), ("destroy", offline.clone())]);
    events_become(&fleet, &host, &prefix, &want).await;
    let _ = agent.stop().await;
    docker.cleanup(&prefix).await;
}

/// Issue 13.8: a stream cut by a control-plane restart ended by blaming the host ("the
/// connection to the host was lost"), or broke off. It ends with a line that names the control
/// plane's shutdown and what to do.
#[tokio::test]
async fn a_stream_cut_by_a_control_plane_stop_says_so() {
    let Some(mut env) = Env::start("cut").await else {
        return;
    };
    let name = env
        .container("cut", &["sh", "-c", "echo first; exec sleep 600"])
        .await;
    let mut resp = env.follow_logs(&name).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut text = String::new();
    while !text.contains("first") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("a line in time")
            .expect("body")
            .expect("not ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    env.fleet.stop().await;
    while let Ok(Some(chunk)) = resp.chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last: Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).expect("a last line");
    assert_eq!(last["end"]["reason"], "control_plane_shutdown", "{text}");
    let message = last["end"]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("control plane is shutting down")
            && message.contains("run the command again"),
        "{message}"
    );
    let _ = env.agent.stop().await;
    env.docker.cleanup(&env.prefix).await;
}

/// Red team, 2026-12-03: execs cut at the operator's wait freed their slots while their
/// processes went on in the container, so 20 ran at once past the limit of 5. An exec keeps its
/// slot until it ends (or its own deadline).
#[tokio::test]
async fn an_exec_cut_at_the_wait_keeps_its_slot() {
    let Some(env) = Env::start("execslot").await else {
        return;
    };
    let name = env.container("slots", &["sleep", "600"]).await;
    let exec = |n: usize| {
        json!({"method": "docker.containers.exec", "timeout_ms": 500,
               "params": {"container": name, "cmd": ["sh", "-c", format!("sleep 4; echo {n}")]}})
    };
    let path = format!("/hosts/{}/rpc", env.host);
    let cut = futures_util::future::join_all(
        (0..5).map(|n| env.fleet.api(Method::POST, &path, Some(exec(n)))),
    )
    .await;
    for (s, r) in &cut {
        assert_eq!(*s, StatusCode::GATEWAY_TIMEOUT, "{r}");
    }
    // Their processes still run: the five slots are still theirs.
    let (s, r) = env.fleet.api(Method::POST, &path, Some(exec(5))).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["error"]["code"],
        tomo_proto::rpc::code::RATE_LIMITED,
        "{r}"
    );
    let _ = env.agent.stop().await;
    env.docker.cleanup(&env.prefix).await;
}
