//! Issue 13.6: a run retried after its answer was lost created a second container. With an
//! `Idempotency-Key`, the agent runs the command once and answers a retry with the first
//! answer, across a restart of the control plane.

use std::time::Duration;

use bollard::query_parameters as q;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use tomo_agent::docker::Endpoint;

use crate::docker_env::DockerEnv;
use crate::support::{Fleet, RunningAgent};

/// A relay to the real engine whose connections wait, before they reach it, while the gate is
/// shut.
struct Gate {
    path: std::path::PathBuf,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    fn new(path: std::path::PathBuf) -> Self {
        let listener = tokio::net::UnixListener::bind(&path).expect("bind gate");
        let (open, gate) = watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    let mut engine =
                        match tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                            Ok(e) => e,
                            Err(_) => return,
                        };
                    // Every byte towards the engine waits for an open gate.
                    let (mut cr, mut cw) = client.split();
                    let (mut er, mut ew) = engine.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if gate.wait_for(|o| *o).await.is_err() {
                                return;
                            }
                            if ew.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut er, &mut cw);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Self { path, open, task }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `POST /hosts/{host}/containers` with an `Idempotency-Key`, as `token`.
async fn run_as(
    f: &Fleet,
    token: &str,
    host: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let r = f
        .http
        .post(format!("{}/api/v1/hosts/{host}/containers", f.info.api_url))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// [`run_as`] the fleet's admin token.
async fn run(f: &Fleet, host: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    run_as(f, &f.token, host, key, body).await
}

/// The ids of the containers that carry `label`.
async fn labelled(docker: &DockerEnv, label: &str) -> Vec<String> {
    let filters = [("label", vec![label])]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    let opts = q::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .docker
        .list_containers(Some(opts))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

#[tokio::test]
async fn a_run_retried_after_a_control_plane_restart_runs_once() {
    let Some(docker) = DockerEnv::get().await else {
        return;
    };
    let relay_dir = tempfile::tempdir().expect("tempdir");
    let gate = Gate::new(relay_dir.path().join("docker.sock"));
    let mut f = Fleet::start().await;
    let mut cfg = f.agent("idem", Some(f.code().await));
    cfg.docker = Endpoint::Unix(gate.path.display().to_string());
    let mut agent = RunningAgent::spawn(cfg);
    let host = agent.online().await;
    let label = DockerEnv::unique("idem");
    // No name: a second run would make a second container.
    let body = json!({"image": docker.image, "command": ["sleep", "600"], "network_mode": "none",
                      "labels": {label.clone(): "1"}});

    // A plain retry gets the first answer.
    let (s, first) = run(&f, &host, "key-plain", &body).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (s, again) = run(&f, &host, "key-plain", &body).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(labelled(&docker, &label).await.len(), 1);
    // Another token, even one with the same name, that sends the same key shares nothing with
    // the first: its call runs (and is its own).
    let (twin, _) = tomo_server::auth::mint_token(
        &*f.state.store,
        "test",
        tomo_proto::methods::Level::Admin,
        None,
    )
    .await
    .expect("token");
    let (s, theirs) = run_as(&f, &twin, &host, "key-plain", &body).await;
    assert_eq!(s, StatusCode::OK, "{theirs}");
    assert_ne!(
        theirs["id"], first["id"],
        "another token got this token's answer"
    );
    let theirs_id = theirs["id"].as_str().expect("id").to_owned();
    let rm = q::RemoveContainerOptionsBuilder::new().force(true).build();
    docker
        .docker
        .remove_container(&theirs_id, Some(rm))
        .await
        .expect("rm");
    // The same key for another run is refused, and nothing runs.
    let mut other = body.clone();
    other["command"] = json!(["sleep", "601"]);
    let (s, refused) = run(&f, &host, "key-plain", &other).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("idempotency key"),
        "{refused}"
    );
    assert_eq!(labelled(&docker, &label).await.len(), 1);
    // A key that is not a key is refused by the control plane.
    let (s, bad) = run(&f, &host, "not a key", &body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");

    // The answer is lost: the engine holds the run while the control plane stops.
    gate.open.send_replace(false);
    let pending = {
        let (http, url, token, host, body) = (
            f.http.clone(),
            f.info.api_url.clone(),
            f.token.clone(),
            host.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            http.post(format!("{url}/api/v1/hosts/{host}/containers"))
                .bearer_auth(token)
                .header("idempotency-key", "key-lost")
                .json(&body)
                .send()
                .await
        })
    };
    // Admitted on the agent (its audit record is the sign), then the control plane stops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = f
            .state
            .store
            .audit(Some(&host), None, None, 100)
            .await
            .expect("audit");
        let admitted = rows
            .iter()
            .filter(|r| {
                r.record.contains("\"admitted\"") && r.record.contains("docker.containers.run")
            })
            .count();
        // Four runs before (the first, its retry, the twin token's, the refused one), each
        // admitted; this one is the fifth.
        if admitted >= 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (addr, dir, token) = (
        f.info.local_addr.to_string(),
        f.dir.clone(),
        f.token.clone(),
    );
    f.stop().await;
    let _ = pending.await;
    // The run goes on without the control plane, and its answer has nowhere to go.
    gate.open.send_replace(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while labelled(&docker, &label).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut run never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let f2 = Fleet::start_in(&dir, &addr, |_| {}).await;
    f2.wait_status(&host, "online").await;
    // The operator retries with the key (and its token): the first run's container, not a third.
    let (s, retried) = run_as(&f2, &token, &host, "key-lost", &body).await;
    assert_eq!(s, StatusCode::OK, "{retried}");
    let ids = labelled(&docker, &label).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.iter().any(|id| retried["id"] == id.as_str()),
        "{retried} not among {ids:?}"
    );
    assert_ne!(retried["id"], first["id"]);

    let _ = agent.stop().await;
    for id in ids {
        let rm = q::RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.docker.remove_container(&id, Some(rm)).await;
    }
}
